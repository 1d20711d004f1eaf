//! The rollouts' metric: targets of each rollout by state.

use fleetforge_api::FleetRollout;
use fleetforge_api::fleet_rollout::{FleetRolloutStatus, RolloutState};
use kube::ResourceExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a count of a rollout's targets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The rollout's namespace.
    pub namespace: String,
    /// The rollout's name.
    pub rollout: String,
    /// `Pending`, `InProgress`, `Soaking`, `Done`, `Failed` or `Skipped`.
    pub state: &'static str,
}

const STATES: [(RolloutState, &str); 6] = [
    (RolloutState::Pending, "Pending"),
    (RolloutState::InProgress, "InProgress"),
    (RolloutState::Soaking, "Soaking"),
    (RolloutState::Done, "Done"),
    (RolloutState::Failed, "Failed"),
    (RolloutState::Skipped, "Skipped"),
];

/// The rollouts' metrics.
#[derive(Debug, Default)]
pub struct RolloutMetrics {
    /// `fleetforge_rollout_targets{namespace,rollout,state}`.
    pub targets: Family<TargetLabels, Gauge>,
}

impl RolloutMetrics {
    /// Creates the metrics and registers them under `fleetforge_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.sub_registry_with_prefix("fleetforge").register(
            "rollout_targets",
            "Targets of each FleetRollout's current round, by state",
            metrics.targets.clone(),
        );
        metrics
    }

    /// Records the counts of `status`.
    pub fn record(&self, rollout: &FleetRollout, status: &FleetRolloutStatus) {
        for (state, name) in STATES {
            let count = status.targets.iter().filter(|t| t.state == state).count();
            self.targets
                .get_or_create(&labels(rollout, name))
                .set(count as i64);
        }
    }

    /// Drops the counts of a rollout that is going.
    pub fn forget(&self, rollout: &FleetRollout) {
        for (_, name) in STATES {
            self.targets.remove(&labels(rollout, name));
        }
    }
}

fn labels(rollout: &FleetRollout, state: &'static str) -> TargetLabels {
    TargetLabels {
        namespace: rollout.namespace().unwrap_or_default(),
        rollout: rollout.name_any(),
        state,
    }
}
