//! Prometheus metrics of the engine, served by the controller at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind, for example `Cluster`.
    pub kind: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind.
    pub kind: &'static str,
    /// The error category (a condition reason).
    pub category: &'static str,
}

/// Labels of a provider call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The provider (`aws`, `gcp`, `azure`, `local`, `nop`).
    pub provider: &'static str,
    /// `observe`, `create`, `update` or `delete`.
    pub verb: &'static str,
    /// `ok` or an error category.
    pub outcome: &'static str,
}

/// Labels of detected drift.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// The kind.
    pub kind: &'static str,
    /// The provider.
    pub provider: &'static str,
}

/// The engine's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// `fleetforge_reconciles_total`.
    pub reconciles: Family<KindLabels, Counter>,
    /// `fleetforge_reconcile_errors_total`.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// `fleetforge_reconcile_duration_seconds`.
    pub reconcile_duration: Family<KindLabels, Histogram>,
    /// `fleetforge_reconciles_in_flight`: reconciles running now.
    pub in_flight: Family<KindLabels, Gauge>,
    /// `fleetforge_provider_calls_total`.
    pub provider_calls: Family<CallLabels, Counter>,
    /// `fleetforge_drift_detected_total`: new drift found.
    pub drift_detected: Family<DriftLabels, Counter>,
    /// `fleetforge_managed_objects`: objects of each kind in the cache.
    pub managed_objects: Family<KindLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `fleetforge` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            in_flight: Family::default(),
            provider_calls: Family::default(),
            drift_detected: Family::default(),
            managed_objects: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("fleetforge");
        registry.register(
            "reconciles",
            "Reconciles started",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now",
            metrics.in_flight.clone(),
        );
        registry.register(
            "provider_calls",
            "Calls to provider APIs, by provider, verb and outcome",
            metrics.provider_calls.clone(),
        );
        registry.register(
            "drift_detected",
            "Times new drift between a spec and its provider was found",
            metrics.drift_detected.clone(),
        );
        registry.register(
            "managed_objects",
            "Objects of each kind known to the controller",
            metrics.managed_objects.clone(),
        );
        metrics
    }
}

impl Default for Metrics {
    /// Metrics registered nowhere (tests, tools).
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}
