fn main() -> std::process::ExitCode {
    qm_runtime::entrypoint::run("qm-finops", |dependencies, shutdown| async move {
        let address = dependencies.settings.finops_addr;
        qm_finops::build(dependencies, address, shutdown).await
    })
}
