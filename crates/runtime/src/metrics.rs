//! The metrics every controller has, under the same names, labelled by
//! controller: reconciles by result, errors by category, durations, passes
//! running now, and the objects each controller knows.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The controller, for example `Cluster` or `ToolInstall`.
    pub controller: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: &'static str,
    /// The error's category (also its condition reason).
    pub category: &'static str,
}

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller.
    pub controller: &'static str,
}

type Count = Box<dyn Fn() -> usize + Send + Sync>;

/// `fleetforge_objects{controller}`: read at every scrape from each
/// controller's cache.
#[derive(Default)]
struct Objects(Mutex<Vec<(&'static str, Count)>>);

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .0
            .lock()
            .expect("object counts")
            .iter()
            .map(|(n, _)| *n)
            .collect();
        f.debug_tuple("Objects").field(&names).finish()
    }
}

impl Collector for ObjectsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.0.lock().expect("object counts");
        let mut family = encoder.encode_descriptor(
            "fleetforge_objects",
            "Objects each controller knows (its cache)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (controller, count) in counts.iter() {
            let labels = ControllerLabels { controller };
            let gauge = ConstGauge::new(i64::try_from(count()).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ObjectsCollector(Arc<Objects>);

/// The metrics of every controller.
#[derive(Debug)]
pub struct ControllerMetrics {
    /// `fleetforge_reconciles_total{controller,result}`.
    pub reconciles: Family<ResultLabels, Counter>,
    /// `fleetforge_reconcile_errors_total{controller,category}`.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// `fleetforge_reconcile_duration_seconds{controller}`.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// `fleetforge_reconciles_in_flight{controller}`.
    pub in_flight: Family<ControllerLabels, Gauge>,
    objects: Arc<Objects>,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            in_flight: Family::default(),
            objects: Arc::default(),
        };
        registry.register_collector(Box::new(ObjectsCollector(metrics.objects.clone())));
        let registry = registry.sub_registry_with_prefix("fleetforge");
        registry.register(
            "reconciles",
            "Reconciles finished, by controller and result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by controller",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, by controller",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// Reports `count()` as the objects `controller` knows, at each scrape.
    pub fn count_objects(
        &self,
        controller: &'static str,
        count: impl Fn() -> usize + Send + Sync + 'static,
    ) {
        let mut counts = self.objects.0.lock().expect("object counts");
        counts.retain(|(name, _)| *name != controller);
        counts.push((controller, Box::new(count)));
    }
}

impl Default for ControllerMetrics {
    /// Metrics registered nowhere (tests).
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_controller_shows_under_the_same_names() {
        let mut registry = Registry::default();
        let metrics = ControllerMetrics::register(&mut registry);
        for controller in ["Cluster", "ToolInstall"] {
            metrics
                .reconciles
                .get_or_create(&ResultLabels {
                    controller,
                    result: "ok",
                })
                .inc();
            metrics
                .reconcile_duration
                .get_or_create(&ControllerLabels { controller })
                .observe(0.01);
        }
        metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: "ToolInstall",
                category: "KubernetesAPIError",
            })
            .inc();
        metrics.count_objects("Cluster", || 7);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "fleetforge_reconciles_total{controller=\"Cluster\",result=\"ok\"} 1",
            "fleetforge_reconciles_total{controller=\"ToolInstall\",result=\"ok\"} 1",
            "fleetforge_reconcile_errors_total{controller=\"ToolInstall\",category=\"KubernetesAPIError\"} 1",
            "fleetforge_reconcile_duration_seconds_count{controller=\"Cluster\"} 1",
            "fleetforge_objects{controller=\"Cluster\"} 7",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
