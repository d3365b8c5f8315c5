/// mimalloc: glibc's allocator contends under many concurrent requests (see `make bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use qm_cli::client::{self, Context, Failure, Outcome, fleet, money, output, people};

/// Quartermaster: a control plane for fleets of GPU and compute instances across clouds.
#[derive(Parser)]
#[command(name = "qm", version)]
struct Cli {
    /// The api's URL (else the one `qm login` stored, else http://127.0.0.1:8003).
    #[arg(long, global = true, env = "QM_API_URL")]
    api_url: Option<String>,
    /// Listings as a table (default), json or yaml.
    #[arg(long, short, global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    /// Add the request id to errors.
    #[arg(long, short, global = true)]
    verbose: bool,
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
    /// Back up the database named by QM_DATABASE_URL into a new directory (dump + manifest).
    Backup {
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a `qm backup` directory into the (empty) database named by QM_DATABASE_URL.
    Restore {
        #[arg(long)]
        from: PathBuf,
        /// Replace a database that already holds a Quartermaster schema.
        #[arg(long)]
        force: bool,
    },
    /// Log in (password prompt, --password-stdin, or --api-key) and store the token (0600).
    Login(people::Login),
    /// Forget the stored token (and end the session).
    Logout,
    /// Who the stored token or QM_TOKEN is.
    Whoami,
    /// The catalog's offers, cheapest first, per hour and per month.
    Offers(fleet::OfferFilters),
    /// Deploy a model: --provider P (its cheapest offer), --provider P --zone Z --type T, or --gpu/--max-price.
    Deploy(fleet::Deploy),
    /// The instances that are not finished (--all: every one).
    #[command(alias = "instances")]
    Ps(fleet::Ps),
    /// One instance: its history, worker, GPUs and cost to date.
    Instance { id: String },
    /// Terminate instances.
    Down(fleet::Down),
    /// The live feed (-f to follow).
    Events {
        #[arg(long, short)]
        follow: bool,
    },
    /// The action log.
    Logs(fleet::Logs),
    /// Cost this month, the last 24 h per hour, a breakdown and (--forecast) the projection.
    Cost {
        #[arg(long, value_enum)]
        by: Option<money::By>,
        #[arg(long)]
        forecast: bool,
    },
    /// The organization's monthly budget.
    #[command(subcommand)]
    Budget(money::Budget),
    /// API keys (for scripts and the router).
    #[command(subcommand)]
    Keys(people::Keys),
    /// Users of your organization (admins).
    #[command(subcommand)]
    Users(people::Users),
    /// Organizations (platform admins).
    #[command(subcommand)]
    Orgs(people::Orgs),
    /// Pools: models served at a size that heal, scale and roll.
    #[command(subcommand)]
    Pools(fleet::Pools),
    /// Shell completions (bash, zsh, fish, ...) on standard output.
    Completions { shell: clap_complete::Shell },
    /// The man page (roff) on standard output.
    Man,
}

/// The API's URL and token: flags and QM_API_URL / QM_TOKEN first, then what `qm login` stored.
fn context(cli: &Cli) -> Outcome<Context> {
    let stored = client::config::load();
    let token = std::env::var("QM_TOKEN").ok().filter(|token| !token.is_empty());
    let stored_url = stored.as_ref().map(|credentials| credentials.api_url.clone());
    let base = cli.api_url.clone().or(stored_url).unwrap_or_else(|| client::config::DEFAULT_API_URL.into());
    // A stored token belongs to the api it was issued by.
    let token =
        token.or_else(|| stored.filter(|credentials| credentials.api_url == base).map(|credentials| credentials.token));
    Ok(Context { api: client::api::Api::new(&base, token, cli.verbose)?, output: output::Output::new(cli.output) })
}

async fn client_command(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Login(login) => {
            let stored = client::config::load().map(|credentials| credentials.api_url);
            let base = login
                .url
                .clone()
                .or_else(|| cli.api_url.clone())
                .or(stored)
                .unwrap_or_else(|| client::config::DEFAULT_API_URL.into());
            return people::login(&base, cli.verbose, login).await;
        }
        Command::Logout => return people::logout(context(cli).ok().as_ref()).await,
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "qm", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            return clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|error| Failure::Request(format!("cannot write the man page: {error}")));
        }
        _ => {}
    }
    let context = context(cli)?;
    match &cli.command {
        Command::Whoami => people::whoami(&context).await,
        Command::Offers(filters) => fleet::offers(&context, filters).await,
        Command::Deploy(deploy) => fleet::deploy(&context, deploy).await,
        Command::Ps(ps) => fleet::ps(&context, ps).await,
        Command::Instance { id } => fleet::instance(&context, id).await,
        Command::Down(down) => fleet::down(&context, down).await,
        Command::Events { follow } => fleet::events(&context, *follow).await,
        Command::Logs(logs) => fleet::logs(&context, logs).await,
        Command::Cost { by, forecast } => money::cost(&context, *by, *forecast).await,
        Command::Budget(budget) => money::budget(&context, budget).await,
        Command::Keys(keys) => people::keys(&context, keys).await,
        Command::Users(users) => people::users(&context, users).await,
        Command::Orgs(orgs) => people::orgs(&context, orgs).await,
        Command::Pools(pools) => fleet::pools(&context, pools).await,
        _ => Err(Failure::Usage("not a client command".into())),
    }
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
    let result: anyhow::Result<()> = runtime.block_on(async {
        match &cli.command {
            Command::Dev { data_dir, without } => qm_cli::dev::run(data_dir, without).await,
            Command::Seed { file } => qm_cli::seed::run(file.as_deref()).await,
            Command::Openapi => {
                println!("{}", qm_api::openapi::document().to_pretty_json()?);
                Ok(())
            }
            Command::Migrate => qm_cli::migrate::run().await,
            Command::Backup { to } => qm_cli::backup::backup(to).await,
            Command::Restore { from, force } => qm_cli::backup::restore(from, *force).await,
            _ => client_command(&cli).await.map_err(anyhow::Error::new),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.downcast_ref::<Failure>().map_or(1, Failure::exit_code);
            eprintln!("qm: {error:#}");
            ExitCode::from(code)
        }
    }
}
