//! Prometheus metrics of the tools controller.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of a call of a tool driver.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverLabels {
    /// `helm` or `nop`.
    pub driver: &'static str,
    /// `upgrade`, `uninstall`, `releases`, ...
    pub verb: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// The tools controller's metrics.
#[derive(Debug, Default)]
pub struct ToolMetrics {
    /// `fleetforge_tool_target_reads_total`: reads of targets' APIs while
    /// observing releases (the release list, live objects, health checks).
    pub target_reads: Counter,
    /// `fleetforge_tool_driver_calls_total`: installs, upgrades and
    /// uninstalls (helm commands for the helm driver).
    pub driver_calls: Family<DriverLabels, Counter>,
}

impl ToolMetrics {
    /// Creates the metrics and registers them under `fleetforge_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("fleetforge");
        registry.register(
            "tool_target_reads",
            "Reads of target clusters' APIs while observing releases",
            metrics.target_reads.clone(),
        );
        registry.register(
            "tool_driver_calls",
            "Calls of the tool drivers (helm commands for helm), by driver, verb and outcome",
            metrics.driver_calls.clone(),
        );
        metrics
    }

    /// Counts one call of `driver`.
    pub fn driver_call(&self, driver: &'static str, verb: &'static str, ok: bool) {
        self.driver_calls
            .get_or_create(&DriverLabels {
                driver,
                verb,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}
