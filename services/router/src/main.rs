fn main() -> std::process::ExitCode {
    qm_runtime::entrypoint::run("qm-router", |dependencies, shutdown| async move {
        let address = dependencies.settings.router_addr;
        qm_router::build(dependencies, address, shutdown).await
    })
}
