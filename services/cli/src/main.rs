/// mimalloc: glibc's allocator contends under many concurrent requests (see `make bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Quartermaster: a control plane for fleets of GPU and compute instances across clouds.
#[derive(Parser)]
#[command(name = "qm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in one process: SQLite in the data directory, the in-process bus, the
    /// local and sim providers, an admin bootstrapped on first start.
    Dev {
        /// Where the database and the generated admin password live.
        #[arg(long, default_value = "./.qm", env = "QM_DATA_DIR")]
        data_dir: PathBuf,
        /// Leave a service out (repeatable): `--without orchestrator` shows commands waiting on
        /// the bus until an orchestrator runs.
        #[arg(long, value_parser = ["orchestrator", "finops", "router"])]
        without: Vec<String>,
    },
    /// Apply the catalog seed to the database named by QM_DATABASE_URL (idempotent).
    Seed {
        /// A seed file instead of the built-in seeds/catalog.json.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Print the API's OpenAPI document.
    Openapi,
    /// Apply pending migrations to the database named by QM_DATABASE_URL, then exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("qm: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev { data_dir, without } => qm_cli::dev::run(&data_dir, &without).await,
            Command::Seed { file } => qm_cli::seed::run(file.as_deref()).await,
            Command::Openapi => {
                println!("{}", qm_api::openapi::document().to_pretty_json()?);
                Ok(())
            }
            Command::Migrate => qm_cli::migrate::run().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("qm: {error:#}");
            ExitCode::FAILURE
        }
    }
}
