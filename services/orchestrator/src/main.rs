fn main() -> std::process::ExitCode {
    qm_runtime::entrypoint::run("qm-orchestrator", |dependencies, shutdown| async move {
        let address = dependencies.settings.orchestrator_addr;
        qm_orchestrator::build(dependencies, address, shutdown).await
    })
}
