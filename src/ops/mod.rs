//! The generic async-operations core. It creates operations, runs each as a tokio task with a
//! progress reporter and a cancellation token, stores every state change, and answers "where is
//! operation X?" and "stop operation X". It knows no domain: domains register operation types
//! and implement [`job::Job`]. Depends on nothing domain-side.

pub mod feed;
pub mod fence;
pub mod job;
mod live;
pub mod orchestrator;
pub mod progress;
pub mod record;
pub mod snapshot;
pub mod store;

pub use job::{
    BoxedJob, Job, JobContext, JobError, JobResult, OperationHandle, OperationType, Reattach, RemoteStopHook,
    RemoteStopReport, Restart, ResumeRefused, Resumption, RowLabels, Steps,
};
pub use orchestrator::{
    CancelError, ContinueError, Lookup, NodeIdInUse, Orchestrator, Resumed, Settings, StartupCheck, SubmitError,
    Submitted,
};
pub use progress::{DefaultRenderer, ProgressReporter, Renderer, StepView};
pub use record::{OperationRecord, Status};
pub use snapshot::Snapshot;
pub use store::{
    Backend, Checkpoint, CheckpointKind, CheckpointStats, IdempotencyKey, ListFilter, PoolLimits, StatusCount, Store,
    StoreError,
};
