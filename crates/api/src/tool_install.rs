//! `ToolInstall`: a ToolSet (or inline tools) installed onto selected targets.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DriftPolicy, Reference, conditions_schema, free_form_object};
use crate::tool_set::Tool;

/// Installs a ToolSet, or inline tools, onto every selected target and keeps
/// the releases there as declared.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetforge.dev",
    version = "v1alpha1",
    kind = "ToolInstall",
    doc = "Installs a ToolSet (or inline tools) onto Clusters and VirtualClusters chosen by name or label, with common values and per-cluster overrides, and corrects drift.",
    namespaced,
    status = "ToolInstallStatus",
    shortname = "ti",
    category = "fleetforge",
    printcolumn(
        name = "TARGETS",
        type_ = "integer",
        json_path = ".status.summary.targets"
    ),
    printcolumn(
        name = "DEPLOYED",
        type_ = "integer",
        json_path = ".status.summary.deployed"
    ),
    printcolumn(
        name = "PENDING",
        type_ = "integer",
        json_path = ".status.summary.pending"
    ),
    printcolumn(
        name = "FAILED",
        type_ = "integer",
        json_path = ".status.summary.failed"
    ),
    printcolumn(
        name = "DRIFT",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Drifted\")].status"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.toolSetRef) != has(self.tools)").message("set exactly one of toolSetRef and tools"))]
pub struct ToolInstallSpec {
    /// The ToolSet to install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_set_ref: Option<Reference>,
    /// Tools declared inline instead of a ToolSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50))]
    pub tools: Option<Vec<Tool>>,
    /// Where to install: every Cluster and VirtualCluster (in this
    /// namespace) matched by any of the fields.
    pub targets: Targets,
    /// Values per tool name, merged over the tool's own values. Values may
    /// refer to facts of each target (see the README, "Values templated from
    /// the target").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::common::values_by_tool")]
    pub values: BTreeMap<String, serde_json::Value>,
    /// Values for one tool on one cluster, merged last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["cluster".into(), "tool".into()]))]
    pub value_overrides: Vec<ValueOverride>,
    /// Values read from Secrets or ConfigMaps in this namespace, merged
    /// after `values` and before `valueOverrides`, so that credentials never
    /// sit in a spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub values_from: Vec<ValuesFrom>,
    /// `Correct` repairs releases that drift; `Report` only reports.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
    /// Stop changing targets; status keeps being observed.
    #[serde(default)]
    pub suspend: bool,
    /// Fill status with what would change (install, upgrade with a values
    /// diff, uninstall) and change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Targets worked on at once.
    #[serde(default = "default_max_concurrency")]
    #[schemars(range(min = 1, max = 100))]
    pub max_concurrency: i32,
    /// How often every release is re-read and compared with what is
    /// declared (the drift poll), as a Go duration; jittered by 10%.
    #[serde(default = "default_poll_interval")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("pollInterval must be at least 1s"))]
    pub poll_interval: String,
}

fn default_poll_interval() -> String {
    "60s".to_string()
}

fn default_max_concurrency() -> i32 {
    5
}

/// Which targets a ToolInstall selects; at least one field must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clusterNames) || has(self.clusterSelector) || has(self.virtualClusterNames) || has(self.virtualClusterSelector)").message("select at least one target: clusterNames, clusterSelector, virtualClusterNames or virtualClusterSelector"))]
pub struct Targets {
    /// Clusters by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub cluster_names: Option<Vec<String>>,
    /// Clusters by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::label_selector_schema")]
    pub cluster_selector: Option<LabelSelector>,
    /// VirtualClusters by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub virtual_cluster_names: Option<Vec<String>>,
    /// VirtualClusters by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::label_selector_schema")]
    pub virtual_cluster_selector: Option<LabelSelector>,
}

/// Values for one tool on one cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueOverride {
    /// Name of the target Cluster or VirtualCluster.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// Name of the tool.
    #[schemars(length(min = 1, max = 53))]
    pub tool: String,
    /// Values merged over everything else for this tool on this cluster.
    #[schemars(schema_with = "free_form_object")]
    pub values: serde_json::Value,
}

/// Values of a tool read from a Secret or ConfigMap key holding YAML.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValuesFrom {
    /// Name of the tool the values are for.
    #[schemars(length(min = 1, max = 53))]
    pub tool: String,
    /// Kind of the source.
    pub kind: ValuesSourceKind,
    /// Name of the Secret or ConfigMap, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the values as YAML.
    #[serde(default = "default_values_key")]
    pub key: String,
    /// Whether a missing source is ignored instead of failing the tool.
    #[serde(default)]
    pub optional: bool,
}

fn default_values_key() -> String {
    "values.yaml".to_string()
}

/// Kinds that can hold values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ValuesSourceKind {
    /// A Secret.
    #[default]
    Secret,
    /// A ConfigMap.
    ConfigMap,
}

/// State of one tool on one target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ToolState {
    /// Installed with the declared chart version and values, and healthy.
    Deployed,
    /// Installed, but the chart version or values differ from what is
    /// declared (common values merged with the target's overrides).
    Stale,
    /// Installed as declared, but its live objects differ from the release's
    /// manifest (changed or deleted out of band); corrected unless
    /// `driftPolicy` is `Report`.
    Drifted,
    /// Not installed.
    NotInstalled,
    /// The last install or upgrade failed; the message says why.
    Failed,
    /// Waiting: for a dependency, a free worker, or the target to be Ready.
    Pending,
    /// The target cannot be reached.
    Unknown,
    /// Provided by the host cluster and shared into the virtual cluster.
    Shared,
}

/// Observed state of a ToolInstall.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolInstallStatus {
    /// `Ready` (every target deployed), `Synced` and `Drifted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Counts over all targets. The state of each target and tool is in
    /// its ToolTarget (`kubectl get tooltargets -l
    /// fleetforge.dev/tool-install=<name>`), so this status stays the same
    /// size however many targets there are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<ToolInstallSummary>,
    /// The first few targets that failed or cannot be reached, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub failing: Vec<FailingTarget>,
}

/// A target whose tools failed or cannot be reached.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailingTarget {
    /// `Cluster` or `VirtualCluster`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The tool at fault, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Its state.
    pub state: ToolState,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Counts of targets by their worst tool state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolInstallSummary {
    /// Targets selected.
    pub targets: i32,
    /// Targets with every tool deployed (or shared).
    pub deployed: i32,
    /// Targets with a stale tool.
    pub stale: i32,
    /// Targets with a drifted tool.
    #[serde(default)]
    pub drifted: i32,
    /// Targets with a failed tool.
    pub failed: i32,
    /// Targets still pending.
    pub pending: i32,
    /// Targets that cannot be reached.
    pub unknown: i32,
}

/// State of one tool on one target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolStatus {
    /// Name of the tool.
    pub name: String,
    /// Its state.
    pub state: ToolState,
    /// Chart version installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<String>,
    /// Helm release revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i32>,
    /// Why the tool is in this state (Helm's message when it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For `DRIFTED`: the live objects and fields that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// One change a dry run found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    /// Name of the target.
    pub target: String,
    /// Name of the tool.
    pub tool: String,
    /// What would be done.
    pub action: PlannedAction,
    /// For upgrades: the values that would change, as a unified diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_diff: Option<String>,
}

/// Kinds of change.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PlannedAction {
    /// A new release.
    Install,
    /// A new revision of an existing release.
    Upgrade,
    /// Removal of a release.
    Uninstall,
}
