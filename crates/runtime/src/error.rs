//! What a controller's error must say so that the runtime can handle it.

use std::time::Duration;

/// An error a reconcile returns: its short category is both the reason of
/// the condition a controller writes and the `category` label of
/// `fleetforge_reconcile_errors_total`; `retry_after` is how long the
/// failing peer asked to be left alone (a cloud's Retry-After).
pub trait ReconcileError: std::error::Error + Send + Sync + 'static {
    /// PascalCase, stable: a condition reason and a metric label.
    fn category(&self) -> &'static str;

    /// At least this long before the next attempt.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl ReconcileError for kube::Error {
    fn category(&self) -> &'static str {
        "KubernetesAPIError"
    }
}
