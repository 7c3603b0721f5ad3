//! The batching writer: one task takes every write, groups what is waiting into one transaction
//! (group commit), writes state changes before throttled progress, and answers each caller.

use super::*;

pub(super) enum WriteCmd {
    Insert {
        row: Arc<Snapshot>,
        owner: String,
        idempotency: Option<(IdempotencyKey, i64)>,
        /// The operation this one resumes (at most one may).
        resumes: Option<String>,
        reply: oneshot::Sender<Result<Inserted, StoreError>>,
    },
    Save {
        rows: Vec<Arc<Snapshot>>,
        owner: String,
        reply: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// Retention: terminal operations last written before `finished_before`, and
    /// Idempotency-Keys created before `keys_before` (both Unix microseconds).
    Sweep {
        finished_before: i64,
        keys_before: i64,
        reply: oneshot::Sender<Result<(u64, u64), StoreError>>,
    },
}

/// What one command did.
enum Applied {
    Inserted(Inserted),
    Saved,
    Swept(u64, u64),
}

/// Applies queued writes in batches: one transaction per batch, replies after the commit. State
/// changes go first; progress fills the rest of a batch, at most [`MAX_BATCH_ROWS`] rows, so a
/// state change never waits behind more than one batch. If a batch fails as a whole, its
/// commands are retried one by one so one bad write cannot sink the others.
pub(super) async fn writer_loop(
    db: Db,
    mut urgent: mpsc::Receiver<WriteCmd>,
    mut background: mpsc::Receiver<WriteCmd>,
    figures: WriteFigures,
    closed: tokio_util::sync::CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    // A progress command that did not fit into the previous batch.
    let mut carried: Option<WriteCmd> = None;
    loop {
        let first = match urgent.try_recv() {
            Ok(cmd) => cmd,
            Err(_) => match carried.take() {
                Some(cmd) => cmd,
                None => tokio::select! {
                    biased;
                    Some(cmd) = urgent.recv() => cmd,
                    Some(cmd) = background.recv() => cmd,
                    // Closing: take no more commands, write those already queued, then end.
                    _ = closed.cancelled(), if !closing => {
                        closing = true;
                        urgent.close();
                        background.close();
                        continue;
                    }
                    else => return,
                },
            },
        };
        let mut rows = first.rows();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            let Ok(cmd) = urgent.try_recv() else { break };
            rows += cmd.rows();
            batch.push(cmd);
        }
        while batch.len() < MAX_BATCH && rows < MAX_BATCH_ROWS {
            let Some(cmd) = carried.take().or_else(|| background.try_recv().ok()) else {
                break;
            };
            if rows + cmd.rows() > MAX_BATCH_ROWS {
                carried = Some(cmd);
                break;
            }
            rows += cmd.rows();
            batch.push(cmd);
        }
        let began = std::time::Instant::now();
        let outcome = apply(&db, &batch).await;
        figures.transactions.record(began.elapsed().as_secs_f64());
        match &outcome {
            Ok(_) => figures.rows.increment(rows as u64),
            Err(_) => figures.failures.increment(1),
        }
        match outcome {
            Ok(results) => {
                for (cmd, result) in batch.drain(..).zip(results) {
                    reply(cmd, Ok(result));
                }
            }
            Err(_) if batch.len() > 1 => {
                for cmd in batch.drain(..) {
                    let result = apply(&db, std::slice::from_ref(&cmd)).await.map(|mut r| r.remove(0));
                    reply(cmd, result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed");
                for cmd in batch.drain(..) {
                    reply(cmd, Err(e.clone()));
                }
            }
        }
    }
}

impl WriteCmd {
    fn rows(&self) -> usize {
        match self {
            WriteCmd::Insert { .. } => 1,
            WriteCmd::Save { rows, .. } => rows.len().max(1),
            WriteCmd::Sweep { .. } => 1,
        }
    }
}

fn reply(cmd: WriteCmd, result: Result<Applied, StoreError>) {
    match cmd {
        WriteCmd::Insert { reply, .. } => {
            let _ = reply.send(result.map(|a| match a {
                Applied::Inserted(inserted) => inserted,
                _ => Inserted::New,
            }));
        }
        WriteCmd::Save { reply: Some(reply), .. } => {
            let _ = reply.send(result.map(|_| ()));
        }
        WriteCmd::Save { reply: None, .. } => {
            if let Err(e) = result {
                tracing::error!(error = %e, "background store write failed");
            }
        }
        WriteCmd::Sweep { reply, .. } => {
            let _ = reply.send(result.map(|a| match a {
                Applied::Swept(operations, keys) => (operations, keys),
                _ => (0, 0),
            }));
        }
    }
}

/// A second resume of the same operation writes nothing (`resumes` is unique).
const INSERT_OPERATION: &str = "INSERT INTO operations (operation_id, operation_type, status, created_at, updated_at, \
     version, record, job_state, owner_node, heartbeat_at, cancel_requested_at, cancel_reason, \
     parent_operation_id, resumes) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $5, $10, $11, $12, $13) \
     ON CONFLICT (resumes) DO NOTHING";

/// Newer versions only, from the operation's owner only (fencing: a replica whose operation was
/// taken over can no longer write it), and a terminal status is never replaced. A write renews
/// the owner's lease — unless the owner handed the operation over (`heartbeat_at = 0`): its last
/// writes while it stops must not make the others wait a whole lease before they take it.
const SAVE_OPERATION: &str = "UPDATE operations SET status = $2, updated_at = $3, version = $4, record = $5, \
     job_state = $6, owner_node = $7, heartbeat_at = CASE WHEN heartbeat_at = 0 THEN 0 ELSE $3 END, \
     cancel_requested_at = COALESCE($8, cancel_requested_at), cancel_reason = COALESCE($9, cancel_reason) \
     WHERE operation_id = $1 AND version < $4 AND (owner_node IS NULL OR owner_node = $7) \
       AND (status NOT IN ('completed', 'failed', 'cancelled') OR status = $2)";

const CLAIM_IDEMPOTENCY_KEY: &str = "INSERT INTO idempotency_keys (scope, idempotency_key, fingerprint, operation_id, created_at) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (scope, idempotency_key) DO UPDATE SET fingerprint = excluded.fingerprint, \
       operation_id = excluded.operation_id, created_at = excluded.created_at \
     WHERE idempotency_keys.created_at < $6";

async fn apply(db: &Db, batch: &[WriteCmd]) -> Result<Vec<Applied>, StoreError> {
    let (results, finished) = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        let mut finished: Vec<&str> = Vec::new();
        for cmd in batch {
            match cmd {
                WriteCmd::Insert { row, owner, idempotency, resumes, .. } => {
                    let c = Columns::of(row);
                    if let Some((key, expired_before)) = idempotency {
                        let claimed = sqlx::query(CLAIM_IDEMPOTENCY_KEY)
                            .bind(&key.scope)
                            .bind(&key.key)
                            .bind(&key.fingerprint)
                            .bind(&c.id)
                            .bind(c.created_at)
                            .bind(*expired_before)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        if claimed == 0 {
                            let row = sqlx::query(
                                "SELECT operation_id, fingerprint FROM idempotency_keys \
                                 WHERE scope = $1 AND idempotency_key = $2",
                            )
                            .bind(&key.scope)
                            .bind(&key.key)
                            .fetch_one(&mut *tx)
                            .await?;
                            results.push(Applied::Inserted(Inserted::Existing {
                                operation_id: row.try_get("operation_id")?,
                                fingerprint: row.try_get("fingerprint")?,
                            }));
                            continue;
                        }
                    }
                    let inserted = sqlx::query(INSERT_OPERATION)
                        .bind(&c.id)
                        .bind(&c.operation_type)
                        .bind(c.status)
                        .bind(c.created_at)
                        .bind(c.updated_at)
                        .bind(c.version)
                        .bind(&c.record)
                        .bind(&c.job_state)
                        .bind(owner.as_str())
                        .bind(c.cancel_requested_at)
                        .bind(&c.cancel_reason)
                        .bind(&c.parent_operation_id)
                        .bind(resumes)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if inserted == 0
                        && let Some(resumed) = resumes
                    {
                        let continuation: String =
                            sqlx::query_scalar(CONTINUATION_OF)
                                .bind(resumed)
                                .fetch_one(&mut *tx)
                                .await?;
                        results.push(Applied::Inserted(Inserted::AlreadyResumed { continuation }));
                        continue;
                    }
                    results.push(Applied::Inserted(Inserted::New));
                }
                WriteCmd::Sweep { finished_before, keys_before, .. } => {
                    let operations = sqlx::query(
                        "DELETE FROM operations WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at < $1",
                    )
                    .bind(*finished_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let keys = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                        .bind(*keys_before)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    results.push(Applied::Swept(operations, keys));
                }
                WriteCmd::Save { rows, owner, .. } => {
                    for row in rows {
                        let c = Columns::of(row);
                        sqlx::query(SAVE_OPERATION)
                            .bind(&c.id)
                            .bind(c.status)
                            .bind(c.updated_at)
                            .bind(c.version)
                            .bind(&c.record)
                            .bind(&c.job_state)
                            .bind(owner.as_str())
                            .bind(c.cancel_requested_at)
                            .bind(&c.cancel_reason)
                            .execute(&mut *tx)
                            .await?;
                        if row.is_terminal() {
                            finished.push(&row.record.operation_id);
                        }
                    }
                    results.push(Applied::Saved);
                }
            }
        }
        tx.commit().await?;
        (results, finished)
    });
    // Other replicas may be waiting for these (a cancel they passed on): announced after the
    // commit, so that whoever is woken reads them finished.
    if let Db::Postgres(pool) = db
        && !finished.is_empty()
    {
        let announce = sqlx::query("SELECT pg_notify($1, id) FROM unnest($2::text[]) AS id")
            .bind(Channel::Finished.name())
            .bind(&finished)
            .execute(pool)
            .await;
        if let Err(e) = announce {
            tracing::warn!(error = %e, "could not announce finished operations; waiting replicas will poll");
        }
    }
    Ok(results)
}
