//! `FleetRollout`: one change (a Kubernetes version, or a ToolSet's or
//! ToolInstall's tools) rolled over selected targets in stages, with
//! canaries, a cap on targets in flight, a soak time, a health gate per
//! target and a person's approval where asked (as TKGI's `upgrade-clusters
//! --canaries --max-in-flight`, Sveltos' ClusterPromotion and Argo CD's
//! RollingSync do).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Reference, conditions_schema};
use crate::tool_set::HealthCheck;

/// Rolls one change over the selected targets stage by stage. It stands as
/// the strategy for its change: a new `version`, or a new generation of
/// the ToolSet or ToolInstall it names, starts a new round.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetforge.dev",
    version = "v1alpha1",
    kind = "FleetRollout",
    doc = "Rolls one change (a Kubernetes version of Clusters, or the tools of a ToolSet or ToolInstall) over the selected targets in stages, with canaries, maxInFlight, a soak time, a health gate per target, pauses and a failure policy.",
    namespaced,
    status = "FleetRolloutStatus",
    shortname = "fro",
    category = "fleetforge",
    printcolumn(name = "CHANGE", type_ = "string", json_path = ".status.revision"),
    printcolumn(name = "STAGE", type_ = "string", json_path = ".status.stage"),
    printcolumn(name = "PROGRESS", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.version) ? 1 : 0) + (has(self.toolSetRef) ? 1 : 0) + (has(self.toolInstallRef) ? 1 : 0) == 1").message("set exactly one of version, toolSetRef and toolInstallRef: one rollout changes one thing"),
    validation = Rule::new("self.stages.all(s, self.stages.exists_one(o, o.name == s.name))").message("stage names must be unique").field_path(".stages"),
)]
pub struct FleetRolloutSpec {
    /// The Kubernetes version (`major.minor`) to bring the selected Clusters
    /// to. The rollout writes each Cluster's `spec.version` (with its own
    /// field manager, `fleetforge-rollout`), one minor version at a time:
    /// a Cluster at 1.33 goes to 1.34, then, once healthy there, to 1.35.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+$"))]
    pub version: Option<String>,
    /// Roll out changes of this ToolSet: to the ToolTargets of every
    /// ToolInstall in this namespace that installs it (profiles too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_set_ref: Option<Reference>,
    /// Roll out changes of this ToolInstall (its tools or ToolSet, values,
    /// overrides) to its ToolTargets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_install_ref: Option<Reference>,
    /// The stages, in order. A target (a Cluster or VirtualCluster, in this
    /// namespace) belongs to the first stage that selects it; targets that
    /// no stage selects are left alone. A stage starts once the one before
    /// it is done.
    #[schemars(length(min = 1, max = 20))]
    pub stages: Vec<RolloutStage>,
    /// Objects that must be ready in each target cluster, besides its own
    /// health (Ready, not drifted, its tools DEPLOYED), before the target
    /// counts as healthy; read through the target's kubeconfig. A check's
    /// namespace defaults to `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub health_checks: Vec<HealthCheck>,
    /// When to stop starting targets.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// How long a target may take, after its change was written, to pass
    /// its health gate before it counts as failed (a Go duration).
    #[serde(default = "default_progress_deadline")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub progress_deadline: String,
    /// Start no more targets; those in flight finish.
    #[serde(default)]
    pub paused: bool,
}

fn default_progress_deadline() -> String {
    "30m".to_string()
}

/// One stage: which targets, how many at once, canaries, soak, a gate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.selector) || has(self.names)").message("select targets with selector, names or both (an empty selector {} selects every target left)"))]
pub struct RolloutStage {
    /// Name of the stage, shown in status and events.
    #[schemars(length(min = 1, max = 63), regex(pattern = crate::common::DNS_LABEL_PATTERN))]
    pub name: String,
    /// Targets by label (`{}` selects every target no earlier stage took).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::label_selector_schema")]
    pub selector: Option<LabelSelector>,
    /// Targets by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub names: Option<Vec<String>>,
    /// Targets changed at once in this stage: a count, or a percentage of
    /// the stage's targets (rounded down, at least 1). A target is in
    /// flight from its change until it is done (healthy through `soak`) or
    /// failed.
    #[serde(default = "default_max_in_flight")]
    #[schemars(schema_with = "max_in_flight_schema")]
    pub max_in_flight: IntOrString,
    /// The first N targets of the stage (by name) go first, alone; the rest
    /// start only once every canary is done.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub canaries: i32,
    /// How long a target must stay healthy after its change before it
    /// counts as done (a Go duration).
    #[serde(default = "default_soak")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub soak: String,
    /// Wait for a person before the stage starts: `fleetforge rollout
    /// approve NAME STAGE` (the annotation `fleetforge.dev/approve: STAGE`).
    #[serde(default)]
    pub pause: bool,
}

fn default_max_in_flight() -> IntOrString {
    IntOrString::Int(1)
}

fn default_soak() -> String {
    "0s".to_string()
}

fn max_in_flight_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // Value validations apply to the type they are for: `minimum` to a
    // count, `pattern` to a percentage.
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "minimum": 1,
        "pattern": "^(100|[1-9][0-9]?)%$",
        "default": 1
    })
}

/// When a rollout halts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Failed targets tolerated: the rollout halts when more fail. `0`
    /// (the default) halts on the first failure. A halted rollout starts
    /// nothing until resumed (`fleetforge rollout resume`, which retries
    /// the failed targets) or aborted.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub max_failures: i32,
}

/// What an abort does (`fleetforge rollout abort NAME [--rollback]`, the
/// annotation `fleetforge.dev/abort`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AbortPolicy {
    /// Start nothing more; targets stay as they are.
    Leave,
    /// Start nothing more, and put back what the rollout changed where the
    /// target allows: a tool change is reverted to the previous tools; a
    /// version whose control plane has not been upgraded yet is reverted
    /// (an upgraded control plane cannot be downgraded and stays).
    Rollback,
}

/// Where the rollout is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Targets are being changed.
    Progressing,
    /// `spec.paused`: nothing more is started.
    Paused,
    /// A stage with `pause` waits for a person's approval.
    WaitingForApproval,
    /// More targets failed than `failurePolicy.maxFailures` allows.
    Halted,
    /// Every selected target is done (or skipped, or failed within the
    /// tolerance).
    Completed,
    /// Aborted by a person.
    Aborted,
}

/// Where a stage or target is in the rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RolloutState {
    /// Not started.
    Pending,
    /// Its change is written; not healthy yet.
    InProgress,
    /// Healthy with the change, for less than the stage's soak.
    Soaking,
    /// Healthy with the change through the soak, or already had it.
    Done,
    /// Stalled, not healthy within the progress deadline, or unhealthy
    /// while soaking.
    Failed,
    /// Not changed: it cannot or must not be (paused, observe-only,
    /// newer already, being deleted).
    Skipped,
}

/// Observed state of a FleetRollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRolloutStatus {
    /// `Ready` (the round is complete), `Synced`, and the kstatus pair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the round is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// The change of this round: `version 1.35`, or the generation of the
    /// ToolSet or ToolInstall being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The stage being worked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Targets done (or skipped) out of all, as `12/30`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Each stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// Each target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000))]
    pub targets: Vec<TargetRolloutStatus>,
    /// Stages with `pause` a person approved in this round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved: Vec<String>,
    /// Set when a person aborted this round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<AbortPolicy>,
}

/// One stage's progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage's name.
    pub name: String,
    /// `Pending`, `InProgress` or `Done` (`Failed` when it halted the
    /// rollout).
    pub state: RolloutState,
    /// Targets in the stage.
    pub targets: i32,
    /// Of which done or skipped.
    pub done: i32,
    /// Of which in flight (in progress or soaking).
    pub in_flight: i32,
    /// Of which failed.
    pub failed: i32,
}

/// One target's progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRolloutStatus {
    /// `Cluster`, or `ToolTarget` for tool rollouts.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The stage it belongs to.
    pub stage: String,
    /// Where it is.
    pub state: RolloutState,
    /// For a version rollout, the version its spec was last given (a step
    /// on the way, or the goal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// When it entered this state (or its last step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Why it failed, or was skipped, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
