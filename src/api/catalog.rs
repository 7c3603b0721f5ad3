//! `/api/v1/strategies` and `/api/v1/models` (catalog.md): ktrdr's shapes, with no `data`
//! envelope — the strategies list (v3 files included, unreadable ones listed with their error),
//! one strategy, its validation, its features, and the trained models.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{ApiPath as Path, ApiQuery as Query};
use crate::api::schemas::ErrorEnvelope;
use crate::catalog::features::Feature;
use crate::catalog::models::ModelInfo;
use crate::catalog::validate::{self, Issue, KNOWN_INDICATORS};
use crate::catalog::{Catalog, NameError, StrategyFile, StrategyInfo};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_strategies))
        .routes(routes!(list_strategies_slash))
        .routes(routes!(strategy))
        .routes(routes!(validate_strategy))
        .routes(routes!(strategy_features))
        .routes(routes!(list_models))
        .routes(routes!(list_models_slash))
}

#[derive(Serialize, ToSchema)]
pub struct StrategyList {
    pub success: bool,
    pub strategies: Vec<StrategyInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct Validation {
    pub success: bool,
    /// No issue of severity `error`.
    pub valid: bool,
    pub strategy_name: String,
    pub issues: Vec<Issue>,
    /// The indicator types a strategy may use, lower case, sorted.
    pub available_indicators: Vec<&'static str>,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct Features {
    pub success: bool,
    pub strategy_name: String,
    pub count: usize,
    pub features: Vec<Feature>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub success: bool,
    pub models: Vec<ModelInfo>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct VersionQuery {
    /// A model version of the strategy (404 when it has none such).
    version: Option<u32>,
}

/// The catalog's disk work, off the async threads.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(Catalog) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let catalog = state.catalog.clone();
    tokio::task::spawn_blocking(move || work(catalog)).await.map_err(|e| {
        ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "CATALOG_ERROR", "The catalog could not be read", &e)
    })
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "INVALID_STRATEGY_NAME", e.to_string()),
            NameError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "STRATEGY_NOT_FOUND", e.to_string()),
        }
    }
}

/// Strategies of the strategies folder, by file name; files that do not parse carry `error`.
#[utoipa::path(get, path = "/api/v1/strategies", tag = "catalog", responses((status = 200, body = StrategyList)))]
async fn list_strategies(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Serialised where it is built, off the async threads, from the cached files.
    let body = blocking(&state, |c| c.list_json()).await?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// The same list (ktrdr's clients ask with the slash).
#[utoipa::path(get, path = "/api/v1/strategies/", tag = "catalog", responses((status = 200, body = StrategyList)))]
async fn list_strategies_slash(state: State<AppState>) -> Result<Response, ApiError> {
    list_strategies(state).await
}

/// One strategy, by the `name` in its YAML.
#[utoipa::path(get, path = "/api/v1/strategies/{name}", tag = "catalog",
    params(("name" = String, Path, description = "The strategy's name"), VersionQuery),
    responses(
        (status = 200, body = StrategyInfo),
        (status = 404, description = "No such strategy, or no such version of it", body = ErrorEnvelope),
        (status = 422, description = "A version that is not a whole number", body = ErrorEnvelope),
    ))]
async fn strategy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<Json<StrategyInfo>, ApiError> {
    let wanted = name.clone();
    let found = blocking(&state, move |c| c.list().into_iter().find(|s| s.base.name == wanted)).await?;
    let info = found.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "STRATEGY_NOT_FOUND", format!("Strategy '{name}' not found"))
    })?;
    if let Some(version) = query.version
        && !info.models.available_versions.contains(&version)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "VERSION_NOT_FOUND",
            format!("Version {version} not found for strategy '{name}'"),
        ));
    }
    Ok(Json(info))
}

/// Validates `{name}.yaml`: shape, references (each problem with its YAML path), indicator
/// types, unused indicators.
#[utoipa::path(post, path = "/api/v1/strategies/validate/{name}", tag = "catalog",
    params(("name" = String, Path, description = "The strategy file's name, without .yaml")),
    responses(
        (status = 200, body = Validation),
        (status = 400, description = "A name that is not a plain file name", body = ErrorEnvelope),
        (status = 404, description = "No such strategy file", body = ErrorEnvelope),
    ))]
async fn validate_strategy(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Validation>, ApiError> {
    let file = strategy_file(&state, &name).await?;
    let issues = match &file.parsed {
        Ok(value) => validate::validate(value),
        Err(e) => vec![Issue {
            severity: "error",
            category: "structure",
            message: format!("Validation error in '': {e}"),
            details: None,
        }],
    };
    Ok(Json(validation(name, issues)))
}

/// `{name}.yaml`, parsed: 400 for a name that is not a plain file name, 404 for no such file.
async fn strategy_file(state: &AppState, name: &str) -> Result<Arc<StrategyFile>, ApiError> {
    let name = name.to_owned();
    Ok(blocking(state, move |c| c.file(&name)).await??)
}

/// ktrdr's validation answer.
fn validation(name: String, issues: Vec<Issue>) -> Validation {
    Validation {
        success: true,
        valid: !issues.iter().any(Issue::is_error),
        message: validate::summary(&name, &issues),
        strategy_name: name,
        issues,
        available_indicators: KNOWN_INDICATORS.to_vec(),
    }
}

/// The model inputs `{name}.yaml` resolves to, in ktrdr's order and ids.
#[utoipa::path(get, path = "/api/v1/strategies/{name}/features", tag = "catalog",
    params(("name" = String, Path, description = "The strategy file's name, without .yaml")),
    responses(
        (status = 200, body = Features),
        (status = 400, description = "Not a v3 strategy, or not a plain file name", body = ErrorEnvelope),
        (status = 404, description = "No such strategy file", body = ErrorEnvelope),
        (status = 422, description = "The strategy does not validate", body = ErrorEnvelope),
    ))]
async fn strategy_features(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Features>, ApiError> {
    let file = strategy_file(&state, &name).await?;
    let value: &Value = file.parsed.as_ref().map_err(|e| not_v3(&name, e))?;
    let issues = validate::validate(value);
    let errors: Vec<&Issue> = issues.iter().filter(|i| i.is_error()).collect();
    if errors
        .iter()
        .any(|i| i.message.starts_with("Missing required field") || i.message.starts_with("Validation error"))
    {
        return Err(not_v3(&name, &errors.iter().map(|i| i.message.as_str()).collect::<Vec<_>>().join("; ")));
    }
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(|i| format!("  - {}", i.message)).collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "STRATEGY_INVALID",
            format!("Strategy validation failed:\n{}", lines.join("\n")),
        ));
    }
    let features = crate::catalog::features::features(value);
    Ok(Json(Features { success: true, strategy_name: name, count: features.len(), features }))
}

fn not_v3(name: &str, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "STRATEGY_NOT_V3",
        format!("Strategy '{name}' is not v3 format or invalid: {why}"),
    )
}

/// Trained models of the models folder, newest first.
#[utoipa::path(get, path = "/api/v1/models", tag = "catalog", responses((status = 200, body = ModelList)))]
async fn list_models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let models = blocking(&state, |c| c.models()).await?;
    Ok(Json(ModelList { success: true, models }))
}

/// The same list, with the slash.
#[utoipa::path(get, path = "/api/v1/models/", tag = "catalog", responses((status = 200, body = ModelList)))]
async fn list_models_slash(state: State<AppState>) -> Result<Json<ModelList>, ApiError> {
    list_models(state).await
}
