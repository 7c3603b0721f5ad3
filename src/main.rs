//! The `ktrdr-ops` command line: `serve` (the default), `sim`, `migrate`, and the client commands
//! `ops`, `data`, `train` and `backtest`. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ktrdr_ops::cli::Client;
use ktrdr_ops::config::{Config, Sources};
use ktrdr_ops::ops::{PoolLimits, Store};
use ktrdr_ops::sim::worker::{AgentSettings, WorkerFleet, advertised_host};
use ktrdr_ops::sim::{SimSettings, Simulators};
use ktrdr_ops::telemetry::TraceSettings;
use ktrdr_ops::{app, telemetry};
use serde_json::json;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "ktrdr-ops",
    version,
    about = "Long-running data-load and training operations with live progress and cancellation"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// The client options, accepted before the subcommand too (`ktrdr-ops --url X ops list`).
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve(ServeArgs),
    /// Run the IB and training host simulators (default ports 5001 and 5002).
    Sim(SimArgs),
    /// Apply database migrations and exit.
    Migrate(MigrateArgs),
    /// List, show, watch or cancel operations of a running service.
    Ops {
        #[command(subcommand)]
        command: OpsCommand,
    },
    /// Load market data through a running service, with a progress bar.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The strategies of a running service (`strategies validate NAME` checks one; exit 1 when it
    /// does not validate).
    Strategies {
        #[command(subcommand)]
        command: Option<StrategiesCommand>,
    },
    /// The trained models of a running service.
    Models,
    /// The workers (training and backtesting) registered with a running service.
    Workers,
    /// Whether a running service and its database are well: exit 0, else 1 (2: unreachable).
    /// Made for container health checks.
    Health,
    /// Backtest a trained model of a strategy through a running service (on a registered
    /// backtest worker), with a progress bar and a table of the results.
    Backtest {
        /// A strategy name (`strategies/{STRATEGY}.yaml` on the service).
        strategy: String,
        #[arg(long, value_name = "DATE")]
        start: String,
        #[arg(long, value_name = "DATE")]
        end: String,
        /// A model folder (`models/{strategy}/{timeframe}_v3`; default: the newest trained).
        #[arg(short = 'm', long, value_name = "PATH")]
        model_path: Option<String>,
        /// Default: the strategy's first symbol.
        #[arg(long)]
        symbol: Option<String>,
        /// Default: the strategy's first timeframe.
        #[arg(long)]
        timeframe: Option<String>,
        #[arg(short = 'c', long, default_value_t = 100_000.0)]
        capital: f64,
        /// Per fill, as a fraction of the notional.
        #[arg(long, default_value_t = 0.001)]
        commission: f64,
        /// Per fill, as a fraction of the price.
        #[arg(long, default_value_t = 0.0005)]
        slippage: f64,
    },
    /// Train a strategy through a running service, with a progress bar.
    Train {
        /// A strategy name (`strategies/{STRATEGY}.yaml` on the service).
        strategy: String,
        /// Comma-separated symbols (default: the strategy's).
        #[arg(long, value_delimiter = ',')]
        symbols: Vec<String>,
        /// Comma-separated timeframes (default: the strategy's).
        #[arg(long, value_delimiter = ',')]
        timeframes: Vec<String>,
        #[arg(long, value_name = "DATE")]
        start: Option<String>,
        #[arg(long, value_name = "DATE")]
        end: Option<String>,
    },
}

#[derive(Args)]
struct ClientArgs {
    /// The service's base URL.
    #[arg(long, env = "KTRDR_API_URL", default_value = "http://127.0.0.1:8000", global = true)]
    url: String,
    /// The service's API token, if it needs one.
    #[arg(long, env = "KTRDR_API_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON records (for scripts) instead of text and progress bars.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum OpsCommand {
    /// Operations, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long = "type")]
        operation_type: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One operation's record.
    Show { id: String },
    /// Follow an operation with a progress bar until it ends (Ctrl-C stops watching; the
    /// operation goes on).
    Watch { id: String },
    /// Cancel an operation; answers once its work has stopped.
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue a cancelled or failed operation from its checkpoint (a new, linked operation),
    /// followed with a progress bar.
    Resume { id: String },
    /// Start a failed or cancelled operation's work again from scratch (a new, linked
    /// operation), followed with a progress bar.
    Retry { id: String },
}

#[derive(Subcommand)]
enum StrategiesCommand {
    /// Validate a strategy file: its shape, its references, its indicator types.
    Validate { name: String },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Start a data load and follow it (Ctrl-C cancels it).
    Load {
        symbol: String,
        timeframe: String,
        /// local, tail, backfill or full.
        #[arg(long, default_value = "tail")]
        mode: String,
        #[arg(long, value_name = "DATE")]
        start: Option<String>,
        #[arg(long, value_name = "DATE")]
        end: Option<String>,
    },
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
    /// Folder of strategy files (training.strategies_dir).
    #[arg(long, value_name = "DIR")]
    strategies_dir: Option<PathBuf>,
    /// Start the IB and training simulators in-process on free ports and use them as the hosts.
    #[arg(long)]
    sim: bool,
    /// Base URL of the IB host service (hosts.ib.url).
    #[arg(long, value_name = "URL")]
    ib_url: Option<String>,
    /// Base URL of the training host service (hosts.training.url).
    #[arg(long, value_name = "URL")]
    training_url: Option<String>,
    /// IB pacing on our side (hosts.ib.pacing): `ib` by default, `off` by default under --sim.
    #[arg(long, value_name = "ib|off")]
    ib_pacing: Option<String>,
    /// Under --sim: training simulators serving as registered workers (sim.training_workers, 1).
    #[arg(long, value_name = "N")]
    sim_training_workers: Option<usize>,
    /// Under --sim: backtest simulators serving as registered workers (sim.backtest_workers, 1).
    #[arg(long, value_name = "N")]
    sim_backtest_workers: Option<usize>,
    #[command(flatten)]
    knobs: SimKnobArgs,
}

#[derive(Args, Default)]
struct SimArgs {
    /// Where the IB simulator listens (sim.ib_listen). With --training-workers an IB simulator
    /// starts only when this is given.
    #[arg(long, value_name = "ADDR:PORT")]
    ib_listen: Option<String>,
    /// Where the training simulator listens (sim.training_listen).
    #[arg(long, value_name = "ADDR:PORT")]
    training_listen: Option<String>,
    /// The data folder the training simulator checks (data.dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve N training simulators as workers registering with --backend-url, on the ports
    /// from --training-listen's upward (port 0: free ports). 0: one plain training host.
    #[arg(long, value_name = "N", default_value_t = 0)]
    training_workers: usize,
    /// Serve N backtest simulators as `backtesting` workers registering with --backend-url, on
    /// the ports from --backtest-listen's upward (port 0: free ports).
    #[arg(long, value_name = "N", default_value_t = 0)]
    backtest_workers: usize,
    /// Where the first backtest simulator listens (sim.backtest_listen).
    #[arg(long, value_name = "ADDR:PORT")]
    backtest_listen: Option<String>,
    /// The service the workers register with (with or without `/api/v1`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8000")]
    backend_url: String,
    /// The host name workers advertise in their endpoint URL (ktrdr's
    /// KTRDR_WORKER_PUBLIC_BASE_URL); default: the listen address, or this machine's name
    /// when it listens on all addresses.
    #[arg(long, value_name = "HOST")]
    worker_host: Option<String>,
    #[command(flatten)]
    knobs: SimKnobArgs,
    /// An extra config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format (log.format).
    #[arg(long, value_name = "pretty|json")]
    log_format: Option<String>,
}

/// The simulators' knobs (the same names on `sim` and `serve --sim`).
#[derive(Args, Default)]
struct SimKnobArgs {
    /// Latency added to every IB answer, in milliseconds (sim.latency_ms).
    #[arg(long, value_name = "N")]
    sim_latency_ms: Option<u64>,
    /// Share of IB historical requests failing with a transient error, 0–1 (sim.fail_rate).
    #[arg(long, value_name = "F")]
    sim_fail_rate: Option<f64>,
    /// Time per training batch in milliseconds (sim.training_pace_ms).
    #[arg(long, value_name = "N")]
    sim_training_pace_ms: Option<u64>,
    /// Training host generation to simulate (sim.training_protocol).
    #[arg(long, value_name = "sessions|operations")]
    sim_training_protocol: Option<String>,
    /// Acknowledge training stops but keep training (sim.training_ignore_cancel).
    #[arg(long)]
    sim_ignore_cancel: bool,
    /// Start with the IB gateway disconnected: data calls hang, then fail (sim.gateway_connected).
    #[arg(long)]
    sim_gateway_down: bool,
    /// How long data calls hang while the gateway is down, in milliseconds (sim.gateway_hang_ms).
    #[arg(long, value_name = "N")]
    sim_gateway_hang_ms: Option<u64>,
    /// The first K simulated training workers advertise a GPU (sim.gpu_workers).
    #[arg(long, value_name = "K")]
    sim_gpu_workers: Option<usize>,
}

impl SimKnobArgs {
    fn apply(&self, sources: &mut Sources) {
        sources.set("sim.latency_ms", self.sim_latency_ms);
        sources.set("sim.fail_rate", self.sim_fail_rate);
        sources.set("sim.training_pace_ms", self.sim_training_pace_ms);
        sources.set("sim.training_protocol", self.sim_training_protocol.as_ref());
        if self.sim_ignore_cancel {
            sources.set("sim.training_ignore_cancel", Some("true"));
        }
        if self.sim_gateway_down {
            sources.set("sim.gateway_connected", Some("false"));
        }
        sources.set("sim.gateway_hang_ms", self.sim_gateway_hang_ms);
        sources.set("sim.gpu_workers", self.sim_gpu_workers);
    }
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

/// The command line. The service's options belong before no subcommand or after `serve`; the
/// client options (global) go anywhere.
fn parse_command_line() -> Cli {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    if let Some(sub) = matches.subcommand_name() {
        let serve_options = ServeArgs::augment_args(clap::Command::new("serve"));
        let misplaced = serve_options
            .get_arguments()
            .find(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine));
        if let Some(arg) = misplaced {
            let name = arg.get_long().map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"));
            command
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("{name} is an option of `serve`, not of `{sub}`: write `ktrdr-ops serve {name} …`"),
                )
                .exit();
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
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
    let cli = parse_command_line();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
            let _logs = telemetry::init(config.log.format, &config.log.filter, None);
            runtime.block_on(migrate(config))
        }
        Some(Command::Serve(args)) => run_serve(&runtime, args),
        Some(Command::Ops { command }) => runtime.block_on(run_client(cli.client, |c| async move {
            match command {
                OpsCommand::List { status, operation_type, limit } => c.list(status, operation_type, limit).await,
                OpsCommand::Show { id } => c.show(&id).await,
                OpsCommand::Watch { id } => c.follow(&id, ktrdr_ops::cli::OnCtrlC::StopWatching).await,
                OpsCommand::Cancel { id, reason } => c.cancel(&id, reason).await,
                OpsCommand::Resume { id } => {
                    c.start_and_follow(&format!("/api/v1/operations/{id}/resume"), json!({})).await
                }
                OpsCommand::Retry { id } => {
                    c.start_and_follow(&format!("/api/v1/operations/{id}/retry"), json!({})).await
                }
            }
        })),
        Some(Command::Data { command: DataCommand::Load { symbol, timeframe, mode, start, end } }) => {
            let body =
                json!({ "symbol": symbol, "timeframe": timeframe, "mode": mode, "start_date": start, "end_date": end });
            runtime.block_on(run_client(
                cli.client,
                |c| async move { c.start_and_follow("/api/v1/data/load", body).await },
            ))
        }
        Some(Command::Train { strategy, symbols, timeframes, start, end }) => {
            let body = json!({
                "strategy_name": strategy, "symbols": (!symbols.is_empty()).then_some(symbols),
                "timeframes": (!timeframes.is_empty()).then_some(timeframes), "start_date": start, "end_date": end,
            });
            runtime.block_on(run_client(cli.client, |c| async move {
                c.start_and_follow("/api/v1/trainings/start", body).await
            }))
        }
        Some(Command::Backtest {
            strategy,
            start,
            end,
            model_path,
            symbol,
            timeframe,
            capital,
            commission,
            slippage,
        }) => {
            let body = json!({
                "strategy_name": strategy, "start_date": start, "end_date": end, "initial_capital": capital,
                "commission": commission, "slippage": slippage, "model_path": model_path, "symbol": symbol,
                "timeframe": timeframe,
            });
            runtime.block_on(run_client(cli.client, |c| async move {
                c.start_and_follow("/api/v1/backtests/start", body).await
            }))
        }
        Some(Command::Strategies { command }) => runtime.block_on(run_client(cli.client, |c| async move {
            match command {
                None => c.strategies().await,
                Some(StrategiesCommand::Validate { name }) => c.validate_strategy(&name).await,
            }
        })),
        Some(Command::Models) => runtime.block_on(run_client(cli.client, |c| async move { c.models().await })),
        Some(Command::Workers) => runtime.block_on(run_client(cli.client, |c| async move { c.workers().await })),
        Some(Command::Health) => runtime.block_on(run_client(cli.client, |c| async move { c.health().await })),
        Some(Command::Sim(args)) => run_sim(&runtime, args),
        None => run_serve(&runtime, cli.serve),
    }
}

fn run_serve(runtime: &tokio::runtime::Runtime, args: ServeArgs) -> ExitCode {
    let mut sources = args.common.sources();
    sources.set("server.listen", args.listen.as_ref());
    sources.set("data.dir", args.data_dir.as_ref().map(|d| d.display()));
    sources.set("training.strategies_dir", args.strategies_dir.as_ref().map(|d| d.display()));
    sources.set("hosts.ib.url", args.ib_url.as_ref());
    sources.set("hosts.training.url", args.training_url.as_ref());
    // The simulators do not pace, so neither need we — unless asked to.
    let pacing = args.ib_pacing.clone().or_else(|| args.sim.then(|| "off".to_owned()));
    sources.set("hosts.ib.pacing", pacing.as_ref());
    sources.set("sim.training_workers", args.sim_training_workers);
    sources.set("sim.backtest_workers", args.sim_backtest_workers);
    args.knobs.apply(&mut sources);
    let config = match load(&sources) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let traces = TraceSettings { otlp_endpoint: &config.telemetry.otlp_endpoint, service_name: "ktrdr-ops" };
    let exporting = telemetry::init(config.log.format, &config.log.filter, Some(traces));
    let code = runtime.block_on(serve(config, app::Options { with_simulators: args.sim }));
    exporting.shutdown();
    code
}

fn run_sim(runtime: &tokio::runtime::Runtime, args: SimArgs) -> ExitCode {
    let mut sources = Sources::from_process();
    sources.config_file = args.config.clone();
    sources.set("log.format", args.log_format.as_ref());
    sources.set("sim.ib_listen", args.ib_listen.as_ref());
    sources.set("sim.training_listen", args.training_listen.as_ref());
    sources.set("sim.backtest_listen", args.backtest_listen.as_ref());
    sources.set("data.dir", args.data_dir.as_ref().map(|d| d.display()));
    args.knobs.apply(&mut sources);
    let config = match load(&sources) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The simulators' spans show under a service name of their own, beside the service's.
    let traces = TraceSettings { otlp_endpoint: &config.telemetry.otlp_endpoint, service_name: "ktrdr-ops-sim" };
    let exporting = telemetry::init(config.log.format, &config.log.filter, Some(traces));
    let code = runtime.block_on(async move {
        let settings =
            SimSettings::from_config(&config.sim, config.data.dir.clone(), config.training.models_dir.clone());
        let workers = |count: usize, gpu_workers: usize, listen| {
            (count > 0).then(|| WorkerFleet {
                count,
                gpu_workers,
                backend_url: args.backend_url.clone(),
                advertised_host: args.worker_host.clone().unwrap_or_else(|| advertised_host(listen)),
                agent: AgentSettings {
                    worker_token: Some(config.auth.worker_token.clone()),
                    ..AgentSettings::default()
                },
                id_prefix: None,
            })
        };
        let fleet = workers(args.training_workers, config.sim.gpu_workers, config.sim.training_listen);
        let backtesters = workers(args.backtest_workers, 0, config.sim.backtest_listen);
        // Workers alone need no IB simulator (a second worker process would clash on its port):
        // one is started when asked for, or when no worker is.
        let no_workers = fleet.is_none() && backtesters.is_none();
        let ib_listen = (args.ib_listen.is_some() || no_workers).then_some(config.sim.ib_listen);
        let started = Simulators::start(settings, ib_listen, config.sim.training_listen, fleet.as_ref()).await;
        let started = match (started, &backtesters) {
            (Ok(mut simulators), Some(backtesters)) => {
                simulators.serve_backtest_workers(config.sim.backtest_listen, backtesters).await.map(|()| simulators)
            }
            (started, _) => started,
        };
        match started {
            Ok(simulators) => {
                let backend = (!no_workers).then_some(args.backend_url.as_str());
                println!("{}", simulators.banner(backend));
                app::wait_for_signal().await;
                simulators.shutdown().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ktrdr-ops: cannot start the simulators: {e}");
                ExitCode::FAILURE
            }
        }
    });
    exporting.shutdown();
    code
}

async fn run_client<F, Fut>(args: ClientArgs, command: F) -> ExitCode
where
    F: FnOnce(Arc<Client>) -> Fut,
    Fut: Future<Output = ktrdr_ops::cli::Outcome>,
{
    match Client::new(&args.url, args.token, args.json) {
        Ok(client) => command(Arc::new(client)).await.exit_code(),
        Err(e) => {
            eprintln!("ktrdr-ops: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config, options: app::Options) -> ExitCode {
    let server = match app::start(config, options).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ktrdr-ops: {e}");
            // A configuration mistake, like an invalid setting.
            let code = if matches!(e, app::StartError::NodeIdInUse(_)) { 2 } else { 1 };
            return ExitCode::from(code);
        }
    };
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        app::wait_for_signal().await;
        shutdown.cancel();
    });
    server.wait().await;
    ExitCode::SUCCESS
}

async fn migrate(config: Config) -> ExitCode {
    let metrics = ktrdr_ops::metrics::Metrics::default();
    match Store::open(
        &config.database.url,
        PoolLimits { max_connections: 1, ..config.database.pool_limits() },
        config.operations.stuck_transaction_timeout(),
        &metrics,
    )
    .await
    {
        Ok(store) => {
            println!("ktrdr-ops: {} database is up to date", store.backend().as_str());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ktrdr-ops: {e}");
            ExitCode::FAILURE
        }
    }
}
