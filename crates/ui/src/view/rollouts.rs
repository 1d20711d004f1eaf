//! The rollouts page: each FleetRollout's change, phase, stage and
//! progress, its stages, and the targets that are not done (what
//! `fleetforge rollout status` prints).

use fleetforge_api::FleetRollout;
use fleetforge_api::fleet_rollout::{RolloutPhase, RolloutState, StageStatus};
use kube::ResourceExt;

/// One FleetRollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What it rolls out: `version 1.35`, `ToolSet dev`, `ToolInstall web`,
    /// and the round's revision when reported.
    pub change: String,
    /// Its phase (`Pending` until one is reported).
    pub phase: String,
    /// The stage being worked on.
    pub stage: String,
    /// Targets done (or skipped) and in all.
    pub done: u32,
    /// See `done`.
    pub total: u32,
    /// Each stage.
    pub stages: Vec<StageStatus>,
    /// Targets not done and not waiting: in flight, failed, skipped.
    pub targets: Vec<TargetLine>,
    /// Whether `spec.paused` is set.
    pub paused: bool,
}

/// A target that is not simply done or pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLine {
    /// `Cluster` or `ToolTarget`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its stage.
    pub stage: String,
    /// Where it is.
    pub state: String,
    /// Why, or what it waits for.
    pub message: String,
}

impl RolloutView {
    /// The view of a FleetRollout.
    pub fn from_rollout(rollout: &FleetRollout) -> Self {
        let status = rollout.status.clone().unwrap_or_default();
        let spec = &rollout.spec;
        let what = if let Some(version) = &spec.version {
            format!("version {version}")
        } else if let Some(set) = &spec.tool_set_ref {
            format!("ToolSet {}", set.name)
        } else if let Some(install) = &spec.tool_install_ref {
            format!("ToolInstall {}", install.name)
        } else {
            "nothing".to_string()
        };
        let change = match &status.revision {
            Some(revision) if !revision.contains(&what) => format!("{what} ({revision})"),
            _ => what,
        };
        let (done, total) = status
            .progress
            .as_deref()
            .and_then(|p| p.split_once('/'))
            .and_then(|(d, t)| Some((d.trim().parse().ok()?, t.trim().parse().ok()?)))
            .unwrap_or((0, 0));
        Self {
            namespace: rollout.namespace().unwrap_or_default(),
            name: rollout.name_any(),
            change,
            phase: status
                .phase
                .map_or_else(|| "Pending".to_string(), |p| phase_name(p).to_string()),
            stage: status.stage.clone().unwrap_or_default(),
            done,
            total,
            stages: status.stages.clone(),
            targets: status
                .targets
                .iter()
                .filter(|t| !matches!(t.state, RolloutState::Done | RolloutState::Pending))
                .map(|t| TargetLine {
                    kind: t.kind.clone(),
                    name: t.name.clone(),
                    stage: t.stage.clone(),
                    state: state_name(t.state).to_string(),
                    message: t.message.clone().unwrap_or_default(),
                })
                .collect(),
            paused: spec.paused,
        }
    }

    /// Progress in percent (0 with no targets).
    pub fn percent(&self) -> u32 {
        (self.done * 100).checked_div(self.total).unwrap_or(0)
    }
}

/// A phase as the API spells it.
pub fn phase_name(phase: RolloutPhase) -> &'static str {
    match phase {
        RolloutPhase::Progressing => "Progressing",
        RolloutPhase::Paused => "Paused",
        RolloutPhase::WaitingForApproval => "WaitingForApproval",
        RolloutPhase::Halted => "Halted",
        RolloutPhase::Completed => "Completed",
        RolloutPhase::Aborted => "Aborted",
    }
}

/// A stage's or target's state as the API spells it.
pub fn state_name(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Pending => "Pending",
        RolloutState::InProgress => "InProgress",
        RolloutState::Soaking => "Soaking",
        RolloutState::Done => "Done",
        RolloutState::Failed => "Failed",
        RolloutState::Skipped => "Skipped",
    }
}

/// The rollouts, those needing a person first (halted, waiting for
/// approval), then in flight, then finished; by name within each.
pub fn rollouts(items: &[&FleetRollout]) -> Vec<RolloutView> {
    let rank = |phase: &str| match phase {
        "Halted" => 0,
        "WaitingForApproval" => 1,
        "Progressing" | "Paused" | "Pending" => 2,
        _ => 3,
    };
    let mut views: Vec<RolloutView> = items.iter().map(|r| RolloutView::from_rollout(r)).collect();
    views.sort_by(|a, b| {
        rank(&a.phase)
            .cmp(&rank(&b.phase))
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| a.name.cmp(&b.name))
    });
    views
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_rollout(name: &str, spec: serde_json::Value, status: serde_json::Value) -> FleetRollout {
        let mut spec = spec;
        spec["stages"] =
            json!([{"name": "canary", "names": ["c0"]}, {"name": "rest", "selector": {}}]);
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "FleetRollout",
            "metadata": {"name": name, "namespace": "fleet"},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn reads_change_progress_stages_and_targets() {
        let rollout = mk_rollout(
            "to-1-37",
            json!({"version": "1.37"}),
            json!({
                "phase": "Halted", "revision": "version 1.37", "stage": "canary", "progress": "3/30",
                "stages": [
                    {"name": "canary", "state": "Failed", "targets": 1, "done": 0, "inFlight": 0, "failed": 1},
                    {"name": "rest", "state": "Pending", "targets": 29, "done": 3, "inFlight": 0, "failed": 0},
                ],
                "targets": [
                    {"kind": "Cluster", "name": "c0", "stage": "canary", "state": "Failed", "message": "not healthy within 30m"},
                    {"kind": "Cluster", "name": "c1", "stage": "rest", "state": "Done"},
                    {"kind": "Cluster", "name": "c2", "stage": "rest", "state": "Pending"},
                    {"kind": "Cluster", "name": "c3", "stage": "rest", "state": "Soaking"},
                ],
            }),
        );
        let view = RolloutView::from_rollout(&rollout);
        assert_eq!(view.change, "version 1.37");
        assert_eq!(
            (
                view.phase.as_str(),
                view.stage.as_str(),
                view.done,
                view.total
            ),
            ("Halted", "canary", 3, 30)
        );
        assert_eq!(view.percent(), 10);
        assert_eq!(view.stages.len(), 2);
        let targets: Vec<(&str, &str)> = view
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.state.as_str()))
            .collect();
        assert_eq!(targets, [("c0", "Failed"), ("c3", "Soaking")]);
        assert_eq!(view.targets[0].message, "not healthy within 30m");

        let tools = mk_rollout(
            "tools",
            json!({"toolSetRef": {"name": "dev"}}),
            json!({"revision": "generation 4"}),
        );
        let view = RolloutView::from_rollout(&tools);
        assert_eq!(view.change, "ToolSet dev (generation 4)");
        assert_eq!((view.phase.as_str(), view.percent()), ("Pending", 0));
    }

    #[test]
    fn those_needing_a_person_come_first() {
        let items = [
            mk_rollout(
                "a-done",
                json!({"version": "1.36"}),
                json!({"phase": "Completed"}),
            ),
            mk_rollout(
                "b-halted",
                json!({"version": "1.36"}),
                json!({"phase": "Halted"}),
            ),
            mk_rollout(
                "c-going",
                json!({"version": "1.36"}),
                json!({"phase": "Progressing"}),
            ),
            mk_rollout(
                "d-waiting",
                json!({"version": "1.36"}),
                json!({"phase": "WaitingForApproval"}),
            ),
        ];
        let refs: Vec<&FleetRollout> = items.iter().collect();
        let names: Vec<String> = rollouts(&refs).into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["b-halted", "d-waiting", "c-going", "a-done"]);
    }
}
