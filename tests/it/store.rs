//! The store suite, run on SQLite always and on PostgreSQL when `KTRDR_OPS_TEST_DATABASE_URL`
//! names a server (`.ci/run` sets it; without it these show as ignored, with the reason).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{ServiceProcess, TestApp, TestDb, json_of};
use ktrdr_ops::ops::record::Outcome;
use ktrdr_ops::ops::{IdempotencyKey, ListFilter, OperationRecord, Snapshot, Status, Store};
use serde_json::{Map, json};

async fn open(db: &TestDb) -> Store {
    Store::open(&db.url, ktrdr_ops::ops::PoolLimits::new(4), Duration::from_secs(5), &Default::default())
        .await
        .expect("the store opens")
}

fn record(id: &str, kind: &str) -> OperationRecord {
    let mut metadata = Map::new();
    metadata.insert("n".into(), json!(id));
    OperationRecord::new(id.to_owned(), kind.to_owned(), metadata, 1)
}

fn snap(r: &OperationRecord) -> Arc<Snapshot> {
    Arc::new(Snapshot::new(r.clone(), Some(json!({ "resume": r.version }))))
}

async fn inserted_records_read_back_whole(db: TestDb) {
    let store = open(&db).await;
    let r = record("op_a_1", "a");
    store.insert(snap(&r), "node-1", None).await.unwrap();
    let back = store.get("op_a_1").await.unwrap().unwrap();
    assert_eq!(back.record, r);
    assert_eq!(back.job_state, Some(json!({ "resume": 1 })));
    assert!(store.get("op_missing").await.unwrap().is_none());
}

async fn only_newer_versions_replace_a_row(db: TestDb) {
    let store = open(&db).await;
    let mut r = record("op_a_1", "a");
    store.insert(snap(&r), "n", None).await.unwrap();
    r.version = 5;
    r.start(ktrdr_ops::time::now()).unwrap();
    store.save(vec![snap(&r)], "n").await.unwrap();
    let mut stale = r.clone();
    stale.version = 3;
    stale.progress.percentage = 1.0;
    store.save(vec![snap(&stale)], "n").await.unwrap();
    let back = store.get("op_a_1").await.unwrap().unwrap();
    assert_eq!(back.record.version, 5);
    assert_eq!(back.record.progress.percentage, 0.0);
}

async fn a_terminal_status_is_never_replaced_in_the_store(db: TestDb) {
    let store = open(&db).await;
    let mut r = record("op_a_1", "a");
    store.insert(snap(&r), "n", None).await.unwrap();
    r.start(ktrdr_ops::time::now()).unwrap();
    let mut cancelled = r.clone();
    cancelled.finish(Outcome::Cancelled { reason: "stop".into() }, ktrdr_ops::time::now()).unwrap();
    cancelled.version = 3;
    store.save(vec![snap(&cancelled)], "n").await.unwrap();
    // A late "completed" with a higher version (work that finished after the cancel).
    let mut late = r.clone();
    late.finish(Outcome::Completed(json!({ "late": true })), ktrdr_ops::time::now()).unwrap();
    late.version = 9;
    store.save(vec![snap(&late)], "n").await.unwrap();
    let back = store.get("op_a_1").await.unwrap().unwrap();
    assert_eq!(back.record.status, Status::Cancelled);
    assert_eq!(back.record.result_summary, None);
    // The same terminal status may still be updated (e.g. the remote-stop report).
    let mut report = cancelled.clone();
    report.version = 10;
    report.warnings.push("host acknowledged".into());
    store.save(vec![snap(&report)], "n").await.unwrap();
    assert_eq!(store.get("op_a_1").await.unwrap().unwrap().record.warnings, vec!["host acknowledged".to_owned()]);
}

async fn lists_filter_page_and_count_newest_first(db: TestDb) {
    let store = open(&db).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        let mut r = record(&format!("op_{kind}_{i}"), kind);
        r.created_at += chrono::Duration::milliseconds(i);
        r.metadata.insert("symbol".into(), json!(if i == 4 { "Brk_B" } else { "AAPL" }));
        if i < 3 {
            r.start(ktrdr_ops::time::now()).unwrap();
            r.finish(Outcome::Completed(json!({})), ktrdr_ops::time::now()).unwrap();
        }
        store.insert(snap(&r), "n", None).await.unwrap();
        ids.push(r.operation_id);
    }
    let all = store.list(&ListFilter { limit: 100, ..ListFilter::default() }).await.unwrap();
    assert_eq!(all.total_count, 7);
    assert_eq!(all.active_count, 4);
    let order: Vec<_> = all.operations.iter().map(|s| s.record.operation_id.clone()).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(order, newest_first);

    let page = store.list(&ListFilter { limit: 2, offset: 2, ..ListFilter::default() }).await.unwrap();
    assert_eq!(page.operations.len(), 2);
    assert_eq!(page.operations[0].record.operation_id, newest_first[2]);
    let even = store
        .list(&ListFilter { limit: 100, operation_type: Some("even".into()), ..ListFilter::default() })
        .await
        .unwrap();
    assert_eq!(even.total_count, 4);
    let completed =
        store.list(&ListFilter { limit: 100, status: Some(Status::Completed), ..ListFilter::default() }).await.unwrap();
    assert_eq!(completed.total_count, 3);
    let active = store.list(&ListFilter { limit: 100, active_only: true, ..ListFilter::default() }).await.unwrap();
    assert_eq!(active.total_count, 4);
    assert_eq!(store.unfinished(None).await.unwrap().len(), 4);
    assert_eq!(store.unfinished(Some("other-node")).await.unwrap().len(), 0);

    // Search (the id or the request, any case, wildcards literal), a type left out, oldest first.
    let found = |search: &str| {
        let filter = ListFilter { limit: 100, search: Some(search.into()), ..ListFilter::default() };
        let store = store.clone();
        async move {
            let page = store.list(&filter).await.unwrap();
            page.operations.iter().map(|s| s.record.operation_id.clone()).collect::<Vec<_>>()
        }
    };
    assert_eq!(found("brk_b").await, ["op_even_4"], "by the request's symbol");
    assert_eq!(found("ODD_5").await, ["op_odd_5"], "by the id");
    assert_eq!(found("brk%b").await, Vec::<String>::new(), "% is a character, not a wildcard");
    assert_eq!(found("op_even_").await.len(), 4);
    let odd = store
        .list(&ListFilter {
            limit: 100,
            exclude_type: Some("even".into()),
            oldest_first: true,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let order: Vec<_> = odd.operations.iter().map(|s| s.record.operation_id.as_str()).collect();
    assert_eq!((order, odd.total_count), (vec!["op_odd_1", "op_odd_3", "op_odd_5"], 3));
    let counts = store.count_by_status(ktrdr_ops::time::now() - chrono::Duration::hours(1)).await.unwrap();
    let count = |kind: &str, status: &str| {
        counts.iter().find(|c| c.operation_type == kind && c.status == status).map(|c| c.count)
    };
    assert_eq!(
        (count("even", "completed"), count("even", "pending"), count("odd", "pending")),
        (Some(2), Some(2), Some(2))
    );
    assert_eq!(count("odd", "completed"), Some(1));
}

async fn an_idempotency_key_claims_once_until_it_expires(db: TestDb) {
    let store = open(&db).await;
    let key = IdempotencyKey { scope: "POST /x".into(), key: "k".into(), fingerprint: "{}".into() };
    let now = ktrdr_ops::time::now();
    let expired_before = now - chrono::Duration::hours(24);
    let first = store.insert(snap(&record("op_a_1", "a")), "n", Some((key.clone(), expired_before))).await.unwrap();
    assert_eq!(first, ktrdr_ops::ops::store::Inserted::New);
    let second = store.insert(snap(&record("op_a_2", "a")), "n", Some((key.clone(), expired_before))).await.unwrap();
    assert_eq!(
        second,
        ktrdr_ops::ops::store::Inserted::Existing { operation_id: "op_a_1".into(), fingerprint: "{}".into() }
    );
    assert!(store.get("op_a_2").await.unwrap().is_none(), "nothing written for the duplicate");
    assert_eq!(
        store.find_idempotency("POST /x", "k", expired_before).await.unwrap(),
        Some(("op_a_1".into(), "{}".into()))
    );
    // Once the key's time is up, it may start a new operation.
    let later = now + chrono::Duration::hours(1);
    let third = store.insert(snap(&record("op_a_3", "a")), "n", Some((key, later))).await.unwrap();
    assert_eq!(third, ktrdr_ops::ops::store::Inserted::New);
}

async fn many_concurrent_writes_all_land(db: TestDb) {
    let store = open(&db).await;
    let writes = (0..500).map(|i| {
        let store = store.clone();
        async move {
            let r = record(&format!("op_a_{i}"), "a");
            store.insert(snap(&r), "n", None).await.unwrap();
            let mut r = r;
            r.version = 2;
            r.start(ktrdr_ops::time::now()).unwrap();
            store.save(vec![snap(&r)], "n").await.unwrap();
        }
    });
    futures_util::future::join_all(writes).await;
    let page =
        store.list(&ListFilter { limit: 1, status: Some(Status::Running), ..ListFilter::default() }).await.unwrap();
    assert_eq!(page.total_count, 500);
}

async fn the_api_runs_and_cancels_operations_on_this_backend(db: TestDb) {
    let app = TestApp::spawn_with(db, |_| {}).await;
    let done = app.start_dummy(3, 10).await;
    let record = app.wait_for_status(&done, "completed", Duration::from_secs(10)).await;
    assert_eq!(record["result_summary"]["iterations_completed"], 3);
    let running = app.start_dummy(1000, 20).await;
    app.wait_for_status(&running, "running", Duration::from_secs(5)).await;
    let (status, body) = app.delete(&format!("/api/v1/operations/{running}")).await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = app.get("/api/v1/operations").await;
    assert_eq!(list["total_count"], 2);
    assert_eq!(list["active_count"], 0);
}

async fn a_killed_service_leaves_nothing_running_on_this_backend(db: TestDb) {
    let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", &db.url];
    let env = [("KTRDR_OPS__NODE__ID", "node-a")];
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&args, &env).await;
    let (_, body) = json_of(
        http.post(service.url("/api/v1/dummy/start"))
            .json(&json!({ "iterations": 1000, "interval_ms": 50 }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let id = body["data"]["operation_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(150)).await;
    service.kill9().await;
    let service = ServiceProcess::start(&args, &env).await;
    let (_, body) = json_of(http.get(service.url(&format!("/api/v1/operations/{id}"))).send().await.unwrap()).await;
    assert_eq!(body["data"]["status"], "failed");
    assert_eq!(body["data"]["error_message"], "interrupted: service restarted before the operation finished");
}

async fn checkpoints_are_replaced_listed_and_expire_by_age(db: TestDb) {
    use ktrdr_ops::ops::{Checkpoint, CheckpointKind};
    let store = open(&db).await;
    let now = ktrdr_ops::time::now();
    let checkpoint = |id: &str, kind, days_ago: i64, epoch: u64| Checkpoint {
        operation_id: id.to_owned(),
        operation_type: "training".to_owned(),
        kind,
        created_at: now - chrono::Duration::days(days_ago),
        state: json!({ "epoch": epoch }),
        artifacts_path: None,
        artifacts_size_bytes: 100,
    };
    store.put_checkpoint(&checkpoint("op_old", CheckpointKind::Periodic, 40, 3)).await.unwrap();
    store.put_checkpoint(&checkpoint("op_new", CheckpointKind::Periodic, 1, 1)).await.unwrap();
    // A save replaces the operation's checkpoint.
    store.put_checkpoint(&checkpoint("op_new", CheckpointKind::Cancellation, 0, 2)).await.unwrap();
    let back = store.checkpoint("op_new").await.unwrap().unwrap();
    assert_eq!((back.kind, back.state["epoch"].as_u64()), (CheckpointKind::Cancellation, Some(2)));
    let all = store.checkpoints(None).await.unwrap();
    assert_eq!(all.iter().map(|c| c.operation_id.as_str()).collect::<Vec<_>>(), ["op_new", "op_old"], "newest first");
    let stats = store.checkpoint_stats().await.unwrap();
    assert_eq!((stats.total, stats.total_size_bytes), (2, 200));
    let older = store.checkpoints(Some(now - chrono::Duration::days(30))).await.unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(store.delete_checkpoints_before(now - chrono::Duration::days(30)).await.unwrap(), 1);
    assert!(store.checkpoint("op_old").await.unwrap().is_none(), "expired");
    assert!(store.delete_checkpoint("op_new").await.unwrap());
    assert!(!store.delete_checkpoint("op_new").await.unwrap(), "only once");
}

/// A worker still held by an operation that ended (its release was lost with the replica that
/// would have freed it) is freed once the operation has been over a while — not before (the soak
/// found a worker busy for good with an ended training: seed 20261205).
async fn a_worker_held_by_an_ended_operation_is_freed_a_while_later(db: TestDb) {
    let store = open(&db).await;
    let capabilities = json!({});
    store.register_worker("w1", "training", "http://127.0.0.1:9", &capabilities, None).await.unwrap();
    let mut r = record("op_t_1", "training");
    store.insert(snap(&r), "n", None).await.unwrap();
    assert!(store.claim_worker("w1", "op_t_1").await.unwrap());
    let now = ktrdr_ops::time::now();
    assert_eq!(store.free_workers_of_finished_operations(now).await.unwrap(), 0, "still running");
    r.start(now).unwrap();
    r.finish(Outcome::Failed("lost".into()), now).unwrap();
    r.version = 3;
    store.save(vec![snap(&r)], "n").await.unwrap();
    let before_it_ended = now - chrono::Duration::seconds(30);
    assert_eq!(store.free_workers_of_finished_operations(before_it_ended).await.unwrap(), 0, "not yet");
    assert_eq!(store.worker("w1").await.unwrap().unwrap().status, "busy");
    let later = ktrdr_ops::time::now() + chrono::Duration::seconds(1);
    assert_eq!(store.free_workers_of_finished_operations(later).await.unwrap(), 1);
    let worker = store.worker("w1").await.unwrap().unwrap();
    assert_eq!((worker.status.as_str(), worker.current_operation_id), ("available", None));
}

/// A replica that stops hands its operations over by giving up their leases; its heartbeats and
/// its last writes, still going while it stops, must not renew them — or the others wait a whole
/// lease before taking over (the SIGTERM handover test timed out so under the full suite's load).
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the PostgreSQL store suite did NOT run"
)]
async fn a_lease_handed_over_is_not_renewed_by_the_replica_that_stops() {
    let db = TestDb::postgres().await;
    let store = open(&db).await;
    let replicas = store.replicas().expect("PostgreSQL is shared by replicas");
    let lease = chrono::Duration::seconds(15);
    let mut r = record("op_a_1", "a");
    store.insert(snap(&r), "node-a", None).await.unwrap();
    r.start(ktrdr_ops::time::now()).unwrap();
    r.version = 2;
    store.save(vec![snap(&r)], "node-a").await.unwrap();
    assert_eq!(replicas.release("node-a", &["op_a_1".to_owned()]).await.unwrap(), 1);
    let now = ktrdr_ops::time::now();
    let renewed = store.heartbeat("node-a", now, now + lease).await.unwrap();
    assert!(renewed.is_empty(), "a lease handed over was renewed: {renewed:?}");
    r.version = 3;
    store.save(vec![snap(&r)], "node-a").await.unwrap();
    let claimed = replicas.claim_stale("node-b", ktrdr_ops::time::now() - lease, 50).await.unwrap();
    assert_eq!(claimed.len(), 1, "the other replica could not take the operation at once");
    assert_eq!(claimed[0].previous_owner, "node-a");
    assert_eq!(claimed[0].stored.record.version, 3, "the last write before the takeover is kept");
}

macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::TestDb::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(
                    not(postgres_tests),
                    ignore = "KTRDR_OPS_TEST_DATABASE_URL is not set: the PostgreSQL store suite did NOT run"
                )]
                async fn $name() {
                    super::$name(super::TestDb::postgres().await).await
                }
            )*
        }
    };
}

store_suite!(
    inserted_records_read_back_whole,
    only_newer_versions_replace_a_row,
    a_terminal_status_is_never_replaced_in_the_store,
    lists_filter_page_and_count_newest_first,
    an_idempotency_key_claims_once_until_it_expires,
    many_concurrent_writes_all_land,
    checkpoints_are_replaced_listed_and_expire_by_age,
    the_api_runs_and_cancels_operations_on_this_backend,
    a_killed_service_leaves_nothing_running_on_this_backend,
    a_worker_held_by_an_ended_operation_is_freed_a_while_later,
);
