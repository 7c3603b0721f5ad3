//! The operations dashboard (`/` and `/ui`): one self-contained page compiled into the binary —
//! no build step, no CDN, works offline. It lists operations, follows every change over
//! `/api/v1/operations/events`, cancels, shows a record's details (with a chart of a training's
//! epochs) and starts loads and trainings.

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;

const PAGE: &str = include_str!("dashboard.html");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(root)).routes(routes!(ui))
}

fn page() -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

/// The operations dashboard.
#[utoipa::path(get, path = "/", tag = "service", security(()),
    responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
async fn root() -> Response {
    page()
}

/// The operations dashboard (the same page).
#[utoipa::path(get, path = "/ui", tag = "service", security(()),
    responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
async fn ui() -> Response {
    page()
}
