/// mimalloc: glibc's allocator contends under many concurrent requests (see `make bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    qm_runtime::entrypoint::run("qm-api", |dependencies, shutdown| async move {
        let address = dependencies.settings.api_addr;
        qm_api::build(dependencies, address, shutdown).await
    })
}
