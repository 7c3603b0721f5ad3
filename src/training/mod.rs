//! The training domain: strategies, the validated training request, the training job (which
//! hands the work to the training host and follows it) and its renderer.

mod follow;
pub mod job;
mod placement;
pub mod renderer;
pub mod strategy;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::request::{Symbol, parse_timeframe};
use crate::hosts::training::{StartRequest, TrainingClient};
use crate::invalid::Invalid;
use crate::ops::job::BoxFuture;
use crate::ops::{Checkpoint, OperationType, Restart, ResumeRefused};
use crate::time;
use job::{TrainingJob, TrainingReattach, TrainingSettings};
use strategy::Strategy;

pub const OPERATION_TYPE: &str = "training";
const MAX_SERIES: usize = 50;

/// The body of `POST /api/v1/trainings/start`, as sent. Unknown fields are refused (422 naming
/// them); `task_id` and `detailed_analytics` are what ktrdr's clients send beyond what we use.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainingBody {
    /// A strategy file's name: `{strategies_dir}/{strategy_name}.yaml`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub strategy_name: String,
    #[serde(default)]
    pub symbols: Option<Vec<String>>,
    #[serde(default)]
    pub timeframes: Option<Vec<String>>,
    #[serde(default)]
    pub start_date: Option<String>,
    #[serde(default)]
    pub end_date: Option<String>,
    /// Accepted for ktrdr compatibility; the operation id is the task id.
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub detailed_analytics: bool,
}

/// A training as the operation's `metadata` stores it (api.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRequest {
    pub strategy_name: String,
    pub symbols: Vec<String>,
    pub timeframes: Vec<String>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub model_type: String,
    pub parameters: TrainingParameters,
}

/// `metadata.parameters` of a training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TrainingParameters {
    /// From the strategy, when it says.
    #[serde(default)]
    pub epochs: Option<u32>,
    #[serde(default)]
    pub detailed_analytics: bool,
}

/// A validated training: the strategy it trains and the request the operation stores.
#[derive(Debug, Clone)]
pub struct TrainingSpec {
    pub strategy: Strategy,
    pub request: TrainingRequest,
}

fn date(field: &str, text: &Option<String>) -> Result<Option<String>, Invalid> {
    match text.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => time::parse_timestamp(t)
            .map(|ts| Some(ts.format("%Y-%m-%d").to_string()))
            .ok_or_else(|| Invalid::new(field, format!("{field} `{t}` is not a date (use YYYY-MM-DD)"))),
    }
}

impl TrainingSpec {
    pub fn from_body(body: &TrainingBody, strategies_dir: &std::path::Path) -> Result<TrainingSpec, Invalid> {
        strategy::validate_name(&body.strategy_name)?;
        let strategy = Strategy::load(strategies_dir, &body.strategy_name)?;
        let symbols = match &body.symbols {
            Some(list) if !list.is_empty() => list.clone(),
            _ => strategy.symbols.clone(),
        };
        if symbols.is_empty() {
            return Err(Invalid::new(
                "symbols",
                format!("no symbols given, and strategy `{}` names none", strategy.name),
            ));
        }
        let timeframes = match &body.timeframes {
            Some(list) if !list.is_empty() => list.clone(),
            _ => strategy.timeframes.clone(),
        };
        if timeframes.is_empty() {
            return Err(Invalid::new(
                "timeframes",
                format!("no timeframes given, and strategy `{}` names none", strategy.name),
            ));
        }
        if symbols.len() > MAX_SERIES || timeframes.len() > MAX_SERIES {
            return Err(Invalid::new("symbols", format!("at most {MAX_SERIES} symbols and {MAX_SERIES} timeframes")));
        }
        let symbols = symbols
            .iter()
            .map(|s| {
                Symbol::parse(s).map(|s| s.as_str().to_owned()).map_err(|e| Invalid { field: "symbols".into(), ..e })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeframes = timeframes
            .iter()
            .map(|t| {
                parse_timeframe(t)
                    .map(|t| t.as_str().to_owned())
                    .map_err(|e| Invalid { field: "timeframes".into(), ..e })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (start_date, end_date) = (date("start_date", &body.start_date)?, date("end_date", &body.end_date)?);
        if let (Some(s), Some(e)) = (&start_date, &end_date)
            && s > e
        {
            return Err(Invalid::new("start_date", format!("start_date ({s}) is after end_date ({e})")));
        }
        let request = TrainingRequest {
            strategy_name: strategy.name.clone(),
            symbols,
            timeframes,
            start_date,
            end_date,
            model_type: strategy.model_type.clone(),
            parameters: TrainingParameters { epochs: strategy.epochs, detailed_analytics: body.detailed_analytics },
        };
        Ok(TrainingSpec { strategy, request })
    }
}

/// What the API and the orchestrator need to run trainings.
#[derive(Clone)]
pub struct TrainingService {
    pub client: Arc<TrainingClient>,
    /// The registered workers trainings go to, when there are any.
    pub pool: Option<Arc<crate::fleet::pool::WorkerPool>>,
    pub settings: TrainingSettings,
}

impl TrainingService {
    pub fn operation_type(&self) -> OperationType {
        OperationType::of::<TrainingJob>(Arc::new(renderer::TrainingRenderer))
            .reattached_by(TrainingReattach {
                client: self.client.clone(),
                settings: self.settings.clone(),
                pool: self.pool.clone(),
            })
            .restarted_by(self.clone())
    }

    /// The job of a new training (its operation id becomes the host's task id when it runs).
    pub fn job(&self, spec: &TrainingSpec) -> TrainingJob {
        let request = start_request_of(spec);
        TrainingJob {
            asked: spec.request.clone(),
            start: Some(request),
            session: None,
            total_epochs: spec.strategy.epochs,
            client: self.client.clone(),
            settings: self.settings.clone(),
            pool: self.pool.clone(),
            worker: None,
        }
    }
}

/// A stored training request made valid again against the strategy file as it is now (re-read
/// and validated, off the async threads).
async fn spec_now(request: TrainingRequest, strategies_dir: PathBuf) -> Result<TrainingSpec, String> {
    let body = TrainingBody {
        strategy_name: request.strategy_name,
        symbols: Some(request.symbols),
        timeframes: Some(request.timeframes),
        start_date: request.start_date,
        end_date: request.end_date,
        task_id: None,
        detailed_analytics: request.parameters.detailed_analytics,
    };
    tokio::task::spawn_blocking(move || TrainingSpec::from_body(&body, &strategies_dir))
        .await
        .map_err(|e| format!("could not read the strategy: {e}"))?
        .map_err(|e| format!("the training cannot start again: {}", e.message))
}

/// The host request of a stored training, from its strategy file as it is now.
pub(crate) async fn start_request(request: TrainingRequest, strategies_dir: PathBuf) -> Result<StartRequest, String> {
    Ok(start_request_of(&spec_now(request, strategies_dir).await?))
}

/// The host request of a validated training (its task id is set when it runs).
fn start_request_of(spec: &TrainingSpec) -> StartRequest {
    StartRequest {
        task_id: String::new(),
        strategy_name: spec.strategy.name.clone(),
        strategy_yaml: spec.strategy.yaml.clone(),
        symbols: spec.request.symbols.clone(),
        timeframes: spec.request.timeframes.clone(),
        start_date: spec.request.start_date.clone().unwrap_or_default(),
        end_date: spec.request.end_date.clone().unwrap_or_default(),
        model_type: spec.strategy.model_type.clone(),
        epochs: spec.strategy.epochs,
    }
}

/// A retry trains again from the strategy file as it is now (re-read and validated); a resume has
/// the host train on from its checkpoint.
impl Restart<TrainingJob> for TrainingService {
    fn retry(&self, request: TrainingRequest) -> BoxFuture<Result<TrainingJob, String>> {
        let service = self.clone();
        Box::pin(async move {
            let spec = spec_now(request, service.settings.strategies_dir.clone()).await?;
            Ok(service.job(&spec))
        })
    }

    /// Asks the host to train on from its checkpoint (the remote work keeps its id), then follows
    /// it under the new operation like a re-attached one. A host that cannot is said to the user.
    fn resume(
        &self,
        request: TrainingRequest,
        state: Option<job::TrainingState>,
        checkpoint: Option<Checkpoint>,
    ) -> BoxFuture<Result<TrainingJob, ResumeRefused>> {
        let service = self.clone();
        Box::pin(async move {
            let Some(state) = state else {
                let never = "the training never reached its host, so there is nothing to resume: retry it instead";
                return Err(ResumeRefused::Cannot(never.into()));
            };
            if state.protocol == crate::hosts::training::Protocol::Sessions {
                let old = "the training host (sessions generation) cannot resume a training: retry it instead";
                return Err(ResumeRefused::Cannot(old.into()));
            }
            if checkpoint.is_none() {
                return Err(ResumeRefused::NoCheckpoint);
            }
            // The worker that saved the checkpoint trains on.
            let client = job::client_of(state.worker.as_ref(), service.pool.as_ref(), &service.client)
                .map_err(ResumeRefused::Cannot)?;
            let token = tokio_util::sync::CancellationToken::new();
            let session = client.resume(&state.session_id, &token).await.map_err(ResumeRefused::Cannot)?;
            Ok(TrainingJob {
                total_epochs: request.parameters.epochs.filter(|t| *t > 0),
                asked: request,
                start: None,
                session: Some(session),
                client: service.client.clone(),
                settings: service.settings.clone(),
                pool: service.pool.clone(),
                worker: state.worker,
            })
        })
    }
}
