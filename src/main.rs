//! The `ktrdr-ops` command line: `serve` (the default) and `migrate`. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ktrdr_ops::config::{Config, Sources};
use ktrdr_ops::ops::Store;
use ktrdr_ops::{app, telemetry};

#[derive(Parser)]
#[command(
    name = "ktrdr-ops",
    version,
    about = "Long-running data-load and training operations with live progress and cancellation"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(MigrateArgs),
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Address and port to listen on (server.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
    /// Folder of the market-data cache (data.dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Default)]
struct MigrateArgs {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Default)]
struct CommonArgs {
    /// sqlite://PATH or postgres://... (database.url).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// An extra config file, applied over config/default.toml and config/{env}.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format (log.format).
    #[arg(long, value_name = "pretty|json")]
    log_format: Option<String>,
}

impl CommonArgs {
    fn sources(&self) -> Sources {
        let mut sources = Sources::from_process();
        sources.config_file = self.config.clone();
        sources.set("database.url", self.database_url.as_ref());
        sources.set("log.format", self.log_format.as_ref());
        sources
    }
}

/// Exit code for configuration errors.
const EXIT_CONFIG: u8 = 2;

fn load(sources: &Sources) -> Result<Config, ExitCode> {
    Config::load(sources).map_err(|e| {
        eprintln!("ktrdr-ops: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    ktrdr_ops::memory::limit_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ktrdr-ops: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Migrate(args)) => {
            let config = match load(&args.common.sources()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(config.log.format, &config.log.filter);
            runtime.block_on(migrate(config))
        }
        Some(Command::Serve(args)) => run_serve(&runtime, args),
        None => run_serve(&runtime, cli.serve),
    }
}

fn run_serve(runtime: &tokio::runtime::Runtime, args: ServeArgs) -> ExitCode {
    let mut sources = args.common.sources();
    sources.set("server.listen", args.listen.as_ref());
    sources.set("data.dir", args.data_dir.as_ref().map(|d| d.display()));
    let config = match load(&sources) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(config.log.format, &config.log.filter);
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let server = match app::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ktrdr-ops: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    server.wait().await;
    ExitCode::SUCCESS
}

async fn migrate(config: Config) -> ExitCode {
    match Store::open(&config.database.url, 1).await {
        Ok(store) => {
            println!("ktrdr-ops: {} database is up to date", store.kind());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ktrdr-ops: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM or ctrl-c.
async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
