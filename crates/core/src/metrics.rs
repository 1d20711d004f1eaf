//! Prometheus metrics of the managed engine beyond those of every
//! controller (`fleetforge_runtime::metrics`): provider calls and drift.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

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
    /// `fleetforge_provider_calls_total`.
    pub provider_calls: Family<CallLabels, Counter>,
    /// `fleetforge_drift_detected_total`: new drift found.
    pub drift_detected: Family<DriftLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `fleetforge` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            provider_calls: Family::default(),
            drift_detected: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("fleetforge");
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
        metrics
    }
}

impl Default for Metrics {
    /// Metrics registered nowhere (tests, tools).
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}
