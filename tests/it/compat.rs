//! Records stored by an earlier version (before jobs declared their request and state types)
//! still load: `tests/fixtures/previous-version.sql` is the SQLite store that version wrote
//! (`tests/fixtures/make-previous-version-db.sh` remakes it), with finished operations of every
//! type and a training and a data load cut off by `kill -9`.

use std::collections::HashMap;

use ktrdr_ops::data::job::LoadState;
use ktrdr_ops::data::request::LoadSpec;
use ktrdr_ops::dummy::DummyRequest;
use ktrdr_ops::training::TrainingRequest;
use ktrdr_ops::training::job::TrainingState;
use serde_json::Value;
use sqlx::Row;

use crate::common::{TestApp, TestDb};

const PREVIOUS_VERSION: &str = include_str!("../fixtures/previous-version.sql");

/// A SQLite test database holding what the earlier version wrote; its rows as (type, record, state).
async fn previous_version_db() -> (TestDb, Vec<(String, Value, Option<Value>)>) {
    let db = TestDb::sqlite();
    let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", db.url)).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(PREVIOUS_VERSION)).execute(&pool).await.unwrap();
    let rows = sqlx::query("SELECT operation_type, record, job_state FROM operations").fetch_all(&pool).await.unwrap();
    let rows = rows
        .iter()
        .map(|row| {
            let record: String = row.get("record");
            let state: Option<String> = row.get("job_state");
            (
                row.get("operation_type"),
                serde_json::from_str(&record).unwrap(),
                state.map(|s| serde_json::from_str(&s).unwrap()),
            )
        })
        .collect();
    pool.close().await;
    (db, rows)
}

#[tokio::test]
async fn every_request_and_state_the_previous_version_stored_reads_as_its_jobs_types() {
    let (_db, rows) = previous_version_db().await;
    let mut seen = HashMap::new();
    for (kind, record, state) in rows {
        let metadata = record["metadata"].clone();
        match kind.as_str() {
            "data_load" => {
                let spec: LoadSpec = serde_json::from_value(metadata.clone()).unwrap();
                assert_eq!(serde_json::to_value(&spec).unwrap(), metadata, "read back and written again unchanged");
                if let Some(state) = state {
                    let state: LoadState = serde_json::from_value(state).unwrap();
                    assert!(state.planned.start < state.planned.end);
                }
            }
            "training" => {
                let request: TrainingRequest = serde_json::from_value(metadata.clone()).unwrap();
                assert_eq!(serde_json::to_value(&request).unwrap(), metadata);
                let state: TrainingState = serde_json::from_value(state.expect("the host session")).unwrap();
                assert_eq!(state.session_id, record["operation_id"].as_str().unwrap());
            }
            "dummy" => {
                let request: DummyRequest = serde_json::from_value(metadata.clone()).unwrap();
                assert_eq!(serde_json::to_value(&request).unwrap(), metadata);
            }
            other => panic!("an operation type the fixture should not hold: {other}"),
        }
        *seen.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "the fixture holds every operation type: {seen:?}");
}

#[tokio::test]
async fn the_previous_versions_operations_are_served_listed_and_their_unfinished_work_settled() {
    let (db, rows) = previous_version_db().await;
    let app = TestApp::spawn_on_with_sim(db, |_| {}).await;
    let (status, list) = app.get("/api/v1/operations?limit=100").await;
    assert_eq!(status, 200, "{list}");
    let listed: HashMap<&str, &Value> =
        list["data"].as_array().unwrap().iter().map(|row| (row["operation_id"].as_str().unwrap(), row)).collect();
    assert_eq!(listed.len(), rows.len());
    for (kind, record, _) in &rows {
        let id = record["operation_id"].as_str().unwrap();
        let (status, body) = app.get(&format!("/api/v1/operations/{id}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["metadata"], record["metadata"], "metadata served as stored");
        let expected_symbol = match kind.as_str() {
            "data_load" => record["metadata"]["symbol"].clone(),
            "training" => record["metadata"]["symbols"][0].clone(),
            _ => Value::Null,
        };
        assert_eq!(listed[id]["symbol"], expected_symbol, "list row of {id}");
    }
    // Left running by the kill: the training is re-attached to its host session (which this
    // test's simulator never had, so the host says it lost it), the data load is interrupted.
    for (kind, record, _) in rows.iter().filter(|(_, r, _)| r["status"] == "running") {
        let id = record["operation_id"].as_str().unwrap();
        let body = app.wait_for_status(id, "failed", std::time::Duration::from_secs(20)).await;
        let error = body["error_message"].as_str().unwrap();
        match kind.as_str() {
            "training" => assert!(error.contains(&format!("lost session {id}")), "re-attached: {error}"),
            _ => assert!(error.starts_with("interrupted"), "{error}"),
        }
    }
}
