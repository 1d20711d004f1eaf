//! Prometheus metrics of the tools controller.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of a helm command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HelmLabels {
    /// `upgrade` or `uninstall`.
    pub command: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// The tools controller's metrics.
#[derive(Debug, Default)]
pub struct ToolMetrics {
    /// `fleetforge_tool_target_reads_total`: reads of targets' APIs while
    /// observing releases (the release list, live objects, health checks).
    pub target_reads: Counter,
    /// `fleetforge_helm_commands_total`.
    pub helm_commands: Family<HelmLabels, Counter>,
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
            "helm_commands",
            "helm commands run, by command and outcome",
            metrics.helm_commands.clone(),
        );
        metrics
    }

    /// Counts one helm command.
    pub fn helm(&self, command: &'static str, ok: bool) {
        self.helm_commands
            .get_or_create(&HelmLabels {
                command,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}
