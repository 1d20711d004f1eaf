//! The runtime every fleetforge controller runs on, in the shape of
//! kube-rs' controller-rs: a controller brings its watches, its
//! `reconcile(Arc<K>, Arc<Context>) -> Result<Action, Error>` and its error
//! categories; the runtime owns the rest, the same for every controller:
//!
//! - one error trait ([`ReconcileError`]) whose category is both the
//!   condition reason and the metric label;
//! - one error policy: jittered exponential backoff per object with a cap,
//!   never shorter than a Retry-After the error carries ([`backoff`]);
//! - the same metrics under the same names ([`metrics`]);
//! - best-effort Events that never fail a pass ([`events`]);
//! - one cache of clients to target clusters, keyed by kubeconfig, with a
//!   lock per key ([`clients`]);
//! - a supervisor: a controller that stops ends the process, and `/readyz`
//!   names it ([`supervisor`]);
//! - shards: replicas share the fleet through Leases, each acting only on
//!   the objects of the shards it owns ([`shards`], [`sharding`]).

pub mod backoff;
pub mod clients;
pub mod controller;
pub mod error;
pub mod events;
pub mod informer;
pub mod metrics;
pub mod ready;
pub mod sharding;
pub mod shards;
pub mod status;
pub mod supervisor;

pub use controller::Runtime;
pub use error::ReconcileError;
pub use metrics::ControllerMetrics;
pub use supervisor::{Readiness, Supervisor};

/// Runs blocking work (file writes, decompression) off the async
/// executor's threads.
pub async fn blocking<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
