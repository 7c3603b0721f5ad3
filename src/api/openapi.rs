//! The OpenAPI 3.1 document (generated from the handlers' annotations and the answer types),
//! served at `/api/v1/openapi.json`, and a self-contained human page at `/docs` that renders it
//! (no download at build or run time).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ktrdr-ops",
        description = "Long-running market-data and training operations with live progress and instant cancellation. \
                       Wire-compatible with the ktrdr backend's operations API.",
        license(name = "MIT")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "operations", description = "Any operation: progress, events, cancellation, results"),
        (name = "data", description = "Market-data loads and the cache"),
        (name = "trainings", description = "Model trainings on the training host"),
        (name = "backtests", description = "Backtests of trained models on the registered backtest workers"),
        (name = "catalog", description = "Strategy files (list, validation, features) and trained models"),
        (name = "service", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// `Authorization: Bearer <token>` when `auth.api_token` is set.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The finished document, set once the router is assembled.
pub type Document = Arc<OnceLock<Bytes>>;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json)).routes(routes!(docs))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi_json(State(state): State<AppState>) -> Response {
    let body = state.openapi.get().cloned().unwrap_or_default();
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// A page that renders this document for people.
#[utoipa::path(get, path = "/docs", tag = "service", security(()),
    responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
async fn docs() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ktrdr-ops API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#1b1b1b;background:#fff}
h1{font-size:1.5rem} h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ccc}
.op{border:1px solid #ddd;border-radius:6px;margin:.6rem 0;padding:.4rem .8rem}
.m{display:inline-block;min-width:4.5rem;font-weight:700} .GET{color:#05620b}.POST{color:#0b3d91}.DELETE{color:#9b1111}
code,pre{font-family:ui-monospace,monospace;font-size:13px} pre{background:#f5f5f5;padding:.5rem;overflow:auto}
label{display:block;margin:.5rem 0} input{font:inherit;padding:.2rem}
</style></head><body>
<h1>ktrdr-ops API</h1>
<p>Generated from <a href="/api/v1/openapi.json"><code>/api/v1/openapi.json</code></a>.</p>
<label>API token (only if the service requires one): <input id="token" type="password" autocomplete="off"></label>
<div id="out">Loading…</div>
<script>
const out = document.getElementById('out'), token = document.getElementById('token');
token.value = sessionStorage.getItem('ktrdr-token') || '';
token.addEventListener('change', () => { sessionStorage.setItem('ktrdr-token', token.value); load(); });
function esc(s){return String(s ?? '').replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function ref(s){ if(!s) return ''; if(s.$ref) return s.$ref.split('/').pop(); if(s.type==='array') return ref(s.items)+'[]'; return s.type || 'object'; }
async function load(){
  const headers = token.value ? {Authorization: 'Bearer ' + token.value} : {};
  const r = await fetch('/api/v1/openapi.json', {headers});
  if(!r.ok){ out.textContent = 'Could not load the document: HTTP ' + r.status + (r.status===401?' (enter the API token)':''); return; }
  const doc = await r.json(); let html = '<p>' + esc(doc.info.description) + '</p>';
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) for (const [method, op] of Object.entries(item)) {
    (byTag[(op.tags||['other'])[0]] ||= []).push([method.toUpperCase(), path, op]);
  }
  for (const [tag, ops] of Object.entries(byTag)) {
    html += '<h2>' + esc(tag) + '</h2>';
    for (const [m, path, op] of ops) {
      const params = (op.parameters||[]).map(p => '<code>' + esc(p.name) + '</code> (' + esc(p.in) + ')').join(', ');
      const body = op.requestBody ? ref(Object.values(op.requestBody.content)[0].schema) : '';
      const responses = Object.entries(op.responses).map(([code, r]) => code + (r.content ? ' ' + esc(ref(Object.values(r.content)[0].schema)) : '')).join(' · ');
      html += '<div class="op"><span class="m ' + m + '">' + m + '</span><code>' + esc(path) + '</code><br>' + esc(op.description || op.summary || '') +
        (params ? '<br>Parameters: ' + params : '') + (body ? '<br>Body: <code>' + esc(body) + '</code>' : '') + '<br>Answers: ' + responses + '</div>';
    }
  }
  html += '<h2>Schemas</h2>';
  for (const [name, s] of Object.entries(doc.components.schemas)) html += '<details><summary><code>' + esc(name) + '</code></summary><pre>' + esc(JSON.stringify(s, null, 2)) + '</pre></details>';
  out.innerHTML = html;
}
load();
</script></body></html>"#;
