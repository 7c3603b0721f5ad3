//! Typed settings: `config/default.toml` < `config/{env}.toml` < `--config FILE` < environment
//! variables < command-line flags, validated once at start-up. Every key is documented in
//! `config/default.toml`; an invalid value is reported as one line naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use crate::time::HumanDuration;
use layers::{merge, read_table, set_key};

mod layers;

/// The compiled-in defaults; the same text as `config/default.toml`.
const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Prefix of the namespaced environment variables: `KTRDR_OPS__SECTION__KEY`.
const ENV_PREFIX: &str = "KTRDR_OPS__";

/// Names existing ktrdr deployments use, and the key each one sets. A namespaced
/// `KTRDR_OPS__...` variable for the same key wins over these.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("KTRDR_DATA_DIR", "data.dir"),
    ("IB_HOST_SERVICE_URL", "hosts.ib.url"),
    ("TRAINING_HOST_SERVICE_URL", "hosts.training.url"),
    ("KTRDR_OPS_API_TOKEN", "auth.api_token"),
    ("KTRDR_OPS_WORKER_TOKEN", "auth.worker_token"),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub data: DataConfig,
    pub training: TrainingConfig,
    pub operations: OperationsConfig,
    pub node: NodeConfig,
    pub hosts: HostsConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub sim: SimConfig,
    pub workers: WorkersConfig,
}

/// The training workers that register themselves (workers.md §3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    pub health_check_interval: HumanDuration,
    pub health_check_timeout: HumanDuration,
    pub health_check_failures: u32,
    pub removal_threshold: HumanDuration,
    pub trusted_networks: Vec<String>,
    pub allowed_networks: Vec<String>,
}

impl WorkersConfig {
    /// `trusted_networks`, parsed (checked at start).
    pub fn trusted(&self) -> Vec<ipnet::IpNet> {
        parse_networks(&self.trusted_networks).unwrap_or_default()
    }

    /// `allowed_networks`, parsed (checked at start).
    pub fn allowed(&self) -> Vec<ipnet::IpNet> {
        parse_networks(&self.allowed_networks).unwrap_or_default()
    }
}

/// CIDRs (a bare address is one host); the first that does not parse is the error.
fn parse_networks(list: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    list.iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("`{text}` is not a network (CIDR such as 10.0.0.0/8) or an address"))
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout: HumanDuration,
    pub cors_origins: Vec<String>,
    pub shutdown_deadline: HumanDuration,
    pub header_read_timeout: HumanDuration,
    pub max_connections: usize,
    pub max_streams: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: HumanDuration,
}

impl DatabaseConfig {
    pub fn pool_limits(&self) -> crate::ops::PoolLimits {
        crate::ops::PoolLimits { max_connections: self.max_connections, acquire_timeout: self.acquire_timeout.0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dir: PathBuf,
    pub save_interval: HumanDuration,
    pub segment_attempts: u32,
    pub retry_base_delay: HumanDuration,
    pub tail_default_lookback: HumanDuration,
    pub frame_cache_rows: usize,
    pub wait_for_gateway: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub strategies_dir: PathBuf,
    pub models_dir: PathBuf,
    pub start_timeout: HumanDuration,
    pub poll_min: HumanDuration,
    pub poll_max: HumanDuration,
    pub poll_errors: u32,
    pub cancel_watch: HumanDuration,
    pub stop_attempts: u32,
    pub max_moves: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationsConfig {
    pub cancel_grace: HumanDuration,
    pub progress_persist_interval: HumanDuration,
    pub long_poll_max: HumanDuration,
    pub idempotency_ttl: HumanDuration,
    pub retention: HumanDuration,
    pub retention_sweep_interval: HumanDuration,
    pub checkpoint_retention: HumanDuration,
    pub resume_interrupted: bool,
    /// Per operation type; 0 means no limit.
    pub max_concurrent: BTreeMap<String, usize>,
    // How replicas sharing one PostgreSQL database coordinate (ignored with SQLite).
    pub lease_timeout: HumanDuration,
    pub heartbeat_interval: HumanDuration,
    pub takeover_scan_interval: HumanDuration,
    pub cancel_notify: bool,
    pub cancel_poll_interval: HumanDuration,
    pub max_active: usize,
    pub remote_poll_interval: HumanDuration,
    pub remote_cache_ttl: HumanDuration,
}

impl OperationsConfig {
    /// How long PostgreSQL lets a session of ours sit idle inside a transaction: well within a
    /// lease, so that a frozen replica's row locks are gone before its lease is.
    pub fn stuck_transaction_timeout(&self) -> std::time::Duration {
        (self.lease_timeout.0 / 2).max(std::time::Duration::from_millis(500))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsConfig {
    pub connect_timeout: HumanDuration,
    pub request_timeout: HumanDuration,
    pub retry_attempts: u32,
    pub retry_base_delay: HumanDuration,
    pub retry_max_delay: HumanDuration,
    pub health_timeout: HumanDuration,
    pub health_ttl: HumanDuration,
    pub stall_notice: HumanDuration,
    pub stop_confirm_wait: HumanDuration,
    pub ib: IbHostConfig,
    pub training: TrainingHostConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PacingMode {
    Ib,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IbHostConfig {
    pub url: String,
    pub pacing: PacingMode,
    pub pacing_rules: PacingRulesConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacingRulesConfig {
    pub min_gap: HumanDuration,
    pub window: HumanDuration,
    pub window_max: usize,
    pub identical_gap: HumanDuration,
    pub contract_window: HumanDuration,
    pub contract_max: usize,
    pub violation_backoff: HumanDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolSetting {
    Auto,
    Operations,
    Sessions,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingHostConfig {
    pub url: String,
    pub protocol: ProtocolSetting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimTrainingProtocol {
    Operations,
    Sessions,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub ib_listen: SocketAddr,
    pub training_listen: SocketAddr,
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    pub fail_rate: f64,
    pub fail_symbol: String,
    pub pacing: PacingMode,
    pub training_protocol: SimTrainingProtocol,
    pub training_pace_ms: u64,
    pub training_epochs: u32,
    pub training_batches: u32,
    pub training_fail_at_epoch: u32,
    pub training_ignore_cancel: bool,
    pub gateway_connected: bool,
    pub gateway_hang_ms: u64,
    pub training_status_delay_ms: u64,
    pub training_workers: usize,
    pub gpu_workers: usize,
    pub backtest_workers: usize,
    pub backtest_listen: SocketAddr,
    pub backtest_bars_per_second: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub api_token: String,
    pub worker_token: String,
    pub public_metrics: bool,
}

impl AuthConfig {
    /// Tokens shorter than this are easy to guess: a warning at start.
    pub const SHORT_TOKEN: usize = 16;

    /// The tokens that are set, by key, for the start-up warning about short ones.
    pub fn short_tokens(&self) -> Vec<&'static str> {
        [("auth.api_token", &self.api_token), ("auth.worker_token", &self.worker_token)]
            .into_iter()
            .filter(|(_, token)| !token.is_empty() && token.chars().count() < Self::SHORT_TOKEN)
            .map(|(key, _)| key)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

/// OpenTelemetry traces (README "Telemetry"); the standard `OTEL_*` variables apply besides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended); empty: see
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, and without either no traces are exported.
    pub otlp_endpoint: String,
    /// A trace's page for people, `{trace_id}` replaced (e.g. Jaeger's UI); empty: no link.
    pub trace_url: String,
}

/// A configuration problem, reported as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// Where settings come from, besides the compiled-in defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Folder holding `default.toml` and `{env}.toml` (default `./config`).
    pub config_dir: Option<PathBuf>,
    /// `--config FILE`: must exist when given.
    pub config_file: Option<PathBuf>,
    /// The process environment (tests pass their own).
    pub env: BTreeMap<String, String>,
    /// Command-line flags as `(dotted.key, value)`, applied last.
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// The real process environment and the conventional `./config` folder.
    pub fn from_process() -> Self {
        Self { env: std::env::vars().collect(), ..Self::default() }
    }

    /// Adds a command-line override when the flag was given.
    pub fn set(&mut self, key: &str, value: Option<impl ToString>) {
        if let Some(value) = value {
            self.overrides.push((key.to_owned(), value.to_string()));
        }
    }
}

impl Config {
    /// The compiled-in defaults alone: no files, no environment (tests start from here).
    pub fn defaults() -> Self {
        Self::layered(&Sources::default(), false).expect("compiled-in defaults are valid")
    }

    /// Loads and validates every layer.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Self::layered(sources, true)
    }

    fn layered(sources: &Sources, read_files: bool) -> Result<Self, ConfigError> {
        let defaults: Table = DEFAULTS.parse().map_err(|e| ConfigError::new("config/default.toml", format!("{e}")))?;
        let mut merged = defaults.clone();

        let dir = sources.config_dir.clone().unwrap_or_else(|| PathBuf::from("config"));
        let env_name = sources.env.get("KTRDR_OPS_ENV").cloned().unwrap_or_else(|| "local".to_owned());
        if !env_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(ConfigError::new("KTRDR_OPS_ENV", format!("`{env_name}` is not a plain name")));
        }
        for file in [dir.join("default.toml"), dir.join(format!("{env_name}.toml"))] {
            if read_files && file.is_file() {
                merge(&mut merged, read_table(&file)?);
            }
        }
        if let Some(file) = &sources.config_file {
            if !file.is_file() {
                return Err(ConfigError::new("--config", format!("{} does not exist", file.display())));
            }
            merge(&mut merged, read_table(file)?);
        }

        // Legacy names first, so that the namespaced variables win over them.
        for (name, key) in LEGACY_ENV {
            if let Some(value) = sources.env.get(*name) {
                set_key(&mut merged, &defaults, key, value, name)?;
            }
        }
        for (name, value) in &sources.env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                let key = rest.to_ascii_lowercase().replace("__", ".");
                set_key(&mut merged, &defaults, &key, value, name)?;
            }
        }
        for (key, value) in &sources.overrides {
            set_key(&mut merged, &defaults, key, value, key)?;
        }

        let config: Config = serde_path_to_error::deserialize(Value::Table(merged)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::new(key, e.into_inner().message().to_owned())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "database.url",
                format!("`{url}` is neither sqlite://PATH nor postgres://..."),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::new("database.max_connections", "must be at least 1"));
        }
        let urls = [
            ("hosts.ib.url", &self.hosts.ib.url, false),
            // Empty: trainings go to registered workers only.
            ("hosts.training.url", &self.hosts.training.url, true),
            // Empty: see OTEL_EXPORTER_OTLP_ENDPOINT; without either, no traces.
            ("telemetry.otlp_endpoint", &self.telemetry.otlp_endpoint, true),
        ];
        for (key, url, optional) in urls {
            if optional && url.is_empty() {
                continue;
            }
            let valid = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty());
            if !valid {
                return Err(ConfigError::new(key, format!("`{url}` is not an http:// or https:// URL")));
            }
        }
        if self.hosts.retry_attempts == 0 {
            return Err(ConfigError::new("hosts.retry_attempts", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.sim.fail_rate) {
            return Err(ConfigError::new("sim.fail_rate", format!("{} is not between 0 and 1", self.sim.fail_rate)));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError::new("server.body_limit_bytes", "must be at least 1024"));
        }
        let positive = [
            ("database.acquire_timeout", self.database.acquire_timeout),
            ("operations.progress_persist_interval", self.operations.progress_persist_interval),
            ("operations.cancel_grace", self.operations.cancel_grace),
            ("operations.lease_timeout", self.operations.lease_timeout),
            ("operations.heartbeat_interval", self.operations.heartbeat_interval),
            ("operations.takeover_scan_interval", self.operations.takeover_scan_interval),
            ("operations.cancel_poll_interval", self.operations.cancel_poll_interval),
            ("operations.remote_poll_interval", self.operations.remote_poll_interval),
            ("workers.health_check_interval", self.workers.health_check_interval),
            ("workers.health_check_timeout", self.workers.health_check_timeout),
            ("server.header_read_timeout", self.server.header_read_timeout),
        ];
        for (key, value) in positive {
            if value.0.is_zero() {
                return Err(ConfigError::new(key, "must be longer than zero"));
            }
        }
        for (key, token) in [("auth.api_token", &self.auth.api_token), ("auth.worker_token", &self.auth.worker_token)] {
            if !token.is_empty() && token.trim() != token {
                return Err(ConfigError::new(
                    key,
                    "is blank or begins or ends with white space: nobody could present it (leave it empty for no authentication)",
                ));
            }
        }
        for (key, list) in [
            ("workers.trusted_networks", &self.workers.trusted_networks),
            ("workers.allowed_networks", &self.workers.allowed_networks),
        ] {
            parse_networks(list).map_err(|message| ConfigError::new(key, message))?;
        }
        for (key, value) in [
            ("server.max_connections", self.server.max_connections),
            ("server.max_streams", self.server.max_streams),
            ("operations.max_active", self.operations.max_active),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.operations.heartbeat_interval.0 * 2 > self.operations.lease_timeout.0 {
            return Err(ConfigError::new(
                "operations.heartbeat_interval",
                "must be at most half of operations.lease_timeout (a lease must survive one missed renewal)",
            ));
        }
        Ok(())
    }

    /// This replica's name: `node.id`, else the host name.
    pub fn node_id(&self) -> String {
        if !self.node.id.is_empty() {
            return self.node.id.clone();
        }
        host_name().unwrap_or_else(|| "local".to_owned())
    }

    pub fn shutdown_deadline(&self) -> Duration {
        self.server.shutdown_deadline.0
    }
}

/// This machine's host name, if it has one.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            config_dir: Some(PathBuf::from("/nonexistent")),
            ..Sources::default()
        }
    }

    #[test]
    fn defaults_listen_on_loopback_8000_with_embedded_sqlite() {
        let config = Config::load(&env(&[])).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(config.database.url, "sqlite://./var/ktrdr-ops.db");
        assert_eq!(config.operations.cancel_grace.0, Duration::from_secs(2));
    }

    #[test]
    fn namespaced_env_beats_legacy_env_and_flags_beat_both() {
        let mut sources = env(&[
            ("DATABASE_URL", "postgres://legacy/db"),
            ("KTRDR_OPS__DATABASE__URL", "postgres://namespaced/db"),
            ("IB_HOST_SERVICE_URL", "http://ib:5001"),
            ("KTRDR_OPS__SERVER__BODY_LIMIT_BYTES", "2048"),
        ]);
        assert_eq!(Config::load(&sources).unwrap().database.url, "postgres://namespaced/db");
        sources.set("database.url", Some("sqlite://x.db"));
        let config = Config::load(&sources).unwrap();
        assert_eq!(config.database.url, "sqlite://x.db");
        assert_eq!(config.hosts.ib.url, "http://ib:5001");
        assert_eq!(config.server.body_limit_bytes, 2048);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Config::load(&env(&[("KTRDR_OPS__SERVER__LISTEN", "not-an-address")])).unwrap_err();
        assert_eq!(err.key, "server.listen");
        let err = Config::load(&env(&[("KTRDR_OPS__SERVER__BODY_LIMIT_BYTES", "lots")])).unwrap_err();
        assert_eq!(err.key, "server.body_limit_bytes");
        let err = Config::load(&env(&[("KTRDR_OPS__SERVER__NOPE", "1")])).unwrap_err();
        assert_eq!(err.key, "server.nope");
        let err = Config::load(&env(&[("KTRDR_OPS__OPERATIONS__CANCEL_GRACE", "soon")])).unwrap_err();
        assert_eq!(err.key, "operations.cancel_grace");
        let err = Config::load(&env(&[("TRAINING_HOST_SERVICE_URL", "ftp://x")])).unwrap_err();
        assert_eq!(err.key, "hosts.training.url");
    }

    #[test]
    fn config_files_layer_and_unknown_keys_in_them_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("staging.toml"), "[server]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        let mut sources = env(&[("KTRDR_OPS_ENV", "staging")]);
        sources.config_dir = Some(dir.path().to_owned());
        assert_eq!(Config::load(&sources).unwrap().server.listen.port(), 9000);

        let extra = dir.path().join("extra.toml");
        std::fs::write(&extra, "[server]\nlisen = \"0.0.0.0:9000\"\n").unwrap();
        sources.config_file = Some(extra);
        let err = Config::load(&sources).unwrap_err();
        assert_eq!(err.key, "server.lisen");
        assert!(err.message.contains("lisen"), "{err}");
    }
}
