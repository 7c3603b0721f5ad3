//! The backtest domain (backtesting.md): ktrdr's backtest request checked at the edge — the
//! strategy read for symbol and timeframe, the dates in order, the model found when none is
//! named — then handed to a registered `backtesting` worker and followed to its end ([`job`]).

pub mod job;
mod placement;
pub mod renderer;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::request::{Symbol, parse_timeframe};
use crate::fleet::pool::WorkerPool;
use crate::invalid::Invalid;
use crate::ops::OperationType;
use crate::time;
use crate::training::strategy::{Strategy, validate_name};
use job::{BacktestJob, BacktestReattach, BacktestSettings};

pub const OPERATION_TYPE: &str = "backtesting";
/// The worker type backtests go to.
pub const BACKTEST_WORKER: &str = "backtesting";

/// The body of `POST /api/v1/backtests/start` (backtesting.md §1.1).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BacktestBody {
    /// A strategy file's name: `{strategies_dir}/{strategy_name}.yaml`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub strategy_name: String,
    /// Default: the strategy's first symbol.
    #[serde(default)]
    pub symbol: Option<String>,
    /// Default: the strategy's first timeframe.
    #[serde(default)]
    pub timeframe: Option<String>,
    /// `YYYY-MM-DD` (the start of that day) or a date-time.
    pub start_date: String,
    /// `YYYY-MM-DD` (the whole day is included) or a date-time.
    pub end_date: String,
    #[serde(default = "default_capital")]
    pub initial_capital: f64,
    /// A fraction of the notional per fill (0.001 = 0.1 %).
    #[serde(default = "default_commission")]
    pub commission: f64,
    /// A fraction of the price per fill.
    #[serde(default = "default_slippage")]
    pub slippage: f64,
    /// A model folder inside the models folder (`models/{strategy}/{timeframe}_v3`); default:
    /// `{strategy}/{timeframe}_latest`, the newest trained.
    #[serde(default)]
    pub model_path: Option<String>,
}

/// ktrdr's defaults of a backtest (backtesting.md §1.1), for the request and the worker alike.
pub(crate) fn default_capital() -> f64 {
    100_000.0
}
pub(crate) fn default_commission() -> f64 {
    0.001
}
pub(crate) fn default_slippage() -> f64 {
    0.0005
}

/// A backtest as the operation's `metadata` stores it (ktrdr's shape, backtesting.md §1.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacktestRequest {
    pub symbol: String,
    pub timeframe: String,
    /// Always `backtesting`.
    pub mode: String,
    /// `YYYY-MM-DDTHH:MM:SS` (UTC), as the worker is sent them.
    pub start_date: String,
    pub end_date: String,
    pub parameters: BacktestParameters,
}

/// `metadata.parameters` of a backtest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacktestParameters {
    pub strategy_name: String,
    pub initial_capital: f64,
    pub commission: f64,
    pub slippage: f64,
    /// As the worker resolves it: `models/{strategy}/{folder}`.
    pub model_path: String,
    /// The strategy's timeframes (the worker's `timeframes`).
    pub timeframes: Vec<String>,
}

/// Where a request's problem is answered: 404 for what does not exist, 400 for a path that
/// leaves its folder, 422 for the rest.
#[derive(Debug)]
pub enum Refusal {
    Invalid(Invalid),
    StrategyNotFound(String),
    ModelNotFound(String),
    OutsideFolder(Invalid),
}

impl From<Invalid> for Refusal {
    fn from(e: Invalid) -> Self {
        Refusal::Invalid(e)
    }
}

/// `2024-01-01T00:00:00`: a date alone is the start of its day, or (`end`) its last second.
fn date_time(field: &str, text: &str, end: bool) -> Result<(String, i64), Invalid> {
    let text = text.trim();
    let ts = time::parse_timestamp(text).ok_or_else(|| {
        Invalid::new(field, format!("{field} `{text}` is not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)"))
    })?;
    let date_only = !text.contains(['T', ' ', ':']);
    // A date's last second always exists (chrono's last date ends at 23:59:59 too).
    let ts = if end && date_only { ts + chrono::Duration::seconds(86_399) } else { ts };
    Ok((ts.format("%Y-%m-%dT%H:%M:%S").to_string(), ts.timestamp()))
}

/// A fraction in `[0, 0.5)`.
fn fraction(field: &str, value: f64) -> Result<f64, Invalid> {
    if value.is_finite() && (0.0..0.5).contains(&value) {
        return Ok(value);
    }
    Err(Invalid::new(
        field,
        format!("{field} is a fraction per fill, from 0 to below 0.5 (0.001 = 0.1 %): got {value}"),
    ))
}

/// The model folder the worker is sent, relative to the models folder: the one named (it must
/// stay inside the folder) or `{strategy}/{timeframe}_latest`.
fn model_folder(models_dir: &Path, named: Option<&str>, strategy: &str, timeframe: &str) -> Result<PathBuf, Refusal> {
    let relative = match named.map(str::trim).filter(|p| !p.is_empty()) {
        None => PathBuf::from(strategy).join(format!("{timeframe}_latest")),
        Some(text) => {
            let path = Path::new(text);
            let path = match path.strip_prefix(models_dir) {
                Ok(inside) => inside,
                Err(_) => path.strip_prefix("models").unwrap_or(path),
            };
            if path.is_absolute() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(Refusal::OutsideFolder(
                    Invalid::new("model_path", format!("model_path `{text}` is not inside the models folder"))
                        .code("MODEL_PATH_OUTSIDE"),
                ));
            }
            path.to_owned()
        }
    };
    let folder = models_dir.join(&relative);
    // Links are followed, and must not lead out either.
    match (folder.canonicalize(), models_dir.canonicalize()) {
        (Ok(real), Ok(dir)) if real.starts_with(&dir) && real.is_dir() => Ok(relative),
        (Ok(real), Ok(dir)) if !real.starts_with(&dir) => Err(Refusal::OutsideFolder(
            Invalid::new("model_path", format!("model `{}` links outside the models folder", relative.display()))
                .code("MODEL_PATH_OUTSIDE"),
        )),
        _ if named.is_none() => Err(Refusal::ModelNotFound(format!(
            "strategy `{strategy}` has no trained {timeframe} model (no {} in the models folder): train it first, \
             or name one in model_path",
            relative.display()
        ))),
        _ => Err(Refusal::ModelNotFound(format!("model `{}` was not found in the models folder", relative.display()))),
    }
}

/// A validated backtest: the strategy and the request the operation stores.
#[derive(Debug, Clone)]
pub struct BacktestSpec {
    pub strategy: Strategy,
    pub request: BacktestRequest,
}

impl BacktestSpec {
    /// Checks the body against the strategy and models folders (blocking: reads files).
    pub fn from_body(body: &BacktestBody, strategies_dir: &Path, models_dir: &Path) -> Result<BacktestSpec, Refusal> {
        validate_name(&body.strategy_name)?;
        let strategy = Strategy::load(strategies_dir, &body.strategy_name).map_err(|e| match e.code {
            "STRATEGY_NOT_FOUND" => Refusal::StrategyNotFound(e.message),
            crate::training::strategy::OUTSIDE_FOLDER => Refusal::OutsideFolder(e),
            _ => Refusal::Invalid(e),
        })?;
        let given = |text: &Option<String>| text.as_deref().map(str::trim).map(str::to_owned);
        let symbol = given(&body.symbol).or_else(|| strategy.symbols.first().cloned()).unwrap_or_default();
        let timeframe = given(&body.timeframe).or_else(|| strategy.timeframes.first().cloned()).unwrap_or_default();
        if symbol.is_empty() || timeframe.is_empty() {
            let field = if symbol.is_empty() { "symbol" } else { "timeframe" };
            return Err(Invalid::new(
                field,
                format!(
                    "Symbol and timeframe must be provided or defined in strategy config (`{}` names no {field})",
                    strategy.name
                ),
            )
            .into());
        }
        let symbol = Symbol::parse(&symbol).map_err(|e| Invalid { field: "symbol".into(), ..e })?;
        let timeframe = parse_timeframe(&timeframe).map_err(|e| Invalid { field: "timeframe".into(), ..e })?;
        let (start_date, start) = date_time("start_date", &body.start_date, false)?;
        let (end_date, end) = date_time("end_date", &body.end_date, true)?;
        if start > end {
            return Err(Invalid::new(
                "start_date",
                format!("start_date ({start_date}) is after end_date ({end_date})"),
            )
            .into());
        }
        if !(body.initial_capital.is_finite() && body.initial_capital > 0.0) {
            return Err(Invalid::new("initial_capital", "Initial capital must be positive").into());
        }
        let commission = fraction("commission", body.commission)?;
        let slippage = fraction("slippage", body.slippage)?;
        let folder = model_folder(models_dir, body.model_path.as_deref(), &strategy.name, timeframe.as_str())?;
        let timeframes = if strategy.timeframes.is_empty() {
            vec![timeframe.as_str().to_owned()]
        } else {
            strategy.timeframes.clone()
        };
        let request = BacktestRequest {
            symbol: symbol.as_str().to_owned(),
            timeframe: timeframe.as_str().to_owned(),
            mode: "backtesting".into(),
            start_date,
            end_date,
            parameters: BacktestParameters {
                strategy_name: strategy.name.clone(),
                initial_capital: body.initial_capital,
                commission,
                slippage,
                model_path: Path::new("models").join(folder).to_string_lossy().into_owned(),
                timeframes,
            },
        };
        Ok(BacktestSpec { strategy, request })
    }
}

/// What the API and the orchestrator need to run backtests.
#[derive(Clone)]
pub struct BacktestService {
    pub pool: Arc<WorkerPool>,
    pub settings: BacktestSettings,
}

impl BacktestService {
    pub fn operation_type(&self) -> OperationType {
        OperationType::of::<BacktestJob>(Arc::new(renderer::BacktestRenderer))
            .reattached_by(BacktestReattach { service: self.clone() })
            .restarted_by(self.clone())
    }

    /// The job of a new backtest.
    pub fn job(&self, request: BacktestRequest) -> BacktestJob {
        BacktestJob { request, pool: self.pool.clone(), settings: self.settings.clone(), running: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_date_times_and_a_date_alone_ends_with_its_day() {
        assert_eq!(date_time("s", "2024-01-01", false).unwrap().0, "2024-01-01T00:00:00");
        assert_eq!(date_time("e", "2024-01-01", true).unwrap().0, "2024-01-01T23:59:59");
        assert_eq!(date_time("e", "2024-01-01T12:30:00Z", true).unwrap().0, "2024-01-01T12:30:00");
        assert_eq!(date_time("e", "2024-13-01", true).unwrap_err().field, "e");
        assert_eq!(date_time("e", "+262142-12-31", true).unwrap().0, "+262142-12-31T23:59:59");
        assert!(fraction("c", -0.001).is_err() && fraction("c", f64::NAN).is_err() && fraction("c", 0.0).is_ok());
    }

    #[test]
    fn models_are_found_or_refused_but_never_outside_their_folder() {
        let dir = std::env::temp_dir().join(format!("bt-spec-models-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("s/1h_v1")).unwrap();
        std::fs::create_dir_all(dir.join("s/1h_latest")).unwrap();
        assert_eq!(model_folder(&dir, None, "s", "1h").unwrap(), Path::new("s/1h_latest"));
        assert_eq!(model_folder(&dir, Some("models/s/1h_v1"), "s", "1h").unwrap(), Path::new("s/1h_v1"));
        assert!(matches!(model_folder(&dir, None, "s", "4h"), Err(Refusal::ModelNotFound(_))));
        for outside in ["../x", "/etc", "models/../../etc"] {
            assert!(
                matches!(model_folder(&dir, Some(outside), "s", "1h"), Err(Refusal::OutsideFolder(_))),
                "{outside}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
