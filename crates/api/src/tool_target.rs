//! `ToolTarget`: the tools of one ToolInstall on one target. The
//! ToolInstall creates one per selected Cluster or VirtualCluster (as
//! Sveltos keeps a ClusterSummary per profile and cluster, or an Argo CD
//! ApplicationSet an Application per cluster); each is reconciled, retried
//! and rolled out on its own, and its status stays the size of one target.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DriftPolicy, DriftStatus, Reference, conditions_schema};
use crate::tool_install::{PlannedChange, ToolState, ToolStatus, ValueOverride, ValuesFrom};
use crate::tool_set::Tool;

/// The tools of one ToolInstall on one Cluster or VirtualCluster, kept as
/// declared. Made and owned by its ToolInstall; edit the ToolInstall, not
/// this.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetforge.dev",
    version = "v1alpha1",
    kind = "ToolTarget",
    doc = "The tools of one ToolInstall on one target (a Cluster or VirtualCluster): made and owned by the ToolInstall, reconciled on its own, with the state of each tool there.",
    namespaced,
    status = "ToolTargetStatus",
    shortname = "tt",
    category = "fleetforge",
    selectable = ".spec.target.name",
    printcolumn(
        name = "INSTALL",
        type_ = "string",
        json_path = ".spec.toolInstallRef.name"
    ),
    printcolumn(name = "KIND", type_ = "string", json_path = ".spec.target.kind"),
    printcolumn(name = "TARGET", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(name = "STATE", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "DEPLOYED", type_ = "string", json_path = ".status.deployed"),
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
pub struct ToolTargetSpec {
    /// The ToolInstall this belongs to.
    pub tool_install_ref: Reference,
    /// The Cluster or VirtualCluster, in this namespace.
    pub target: TargetRef,
    /// The tools, in installation order (`dependsOn` first).
    #[schemars(length(max = 50))]
    pub tools: Vec<Tool>,
    /// Values per tool name, merged over the tool's own values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::common::values_by_tool")]
    pub values: BTreeMap<String, serde_json::Value>,
    /// This target's overrides, merged last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub value_overrides: Vec<ValueOverride>,
    /// Values read from Secrets or ConfigMaps in this namespace, merged
    /// after `values` and before `valueOverrides`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub values_from: Vec<ValuesFrom>,
    /// `Correct` repairs releases that drift; `Report` only reports.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
    /// Stop changing the target.
    #[serde(default)]
    pub suspend: bool,
    /// Report what would change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// How often the releases are re-read and compared.
    #[serde(default = "default_poll_interval")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub poll_interval: String,
}

fn default_poll_interval() -> String {
    "60s".to_string()
}

/// A target of a ToolInstall.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub struct TargetRef {
    /// `Cluster` or `VirtualCluster`.
    pub kind: TargetKind,
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The kinds a ToolInstall installs onto.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
pub enum TargetKind {
    /// A Cluster.
    #[default]
    Cluster,
    /// A VirtualCluster.
    VirtualCluster,
}

impl TargetKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Cluster => "Cluster",
            TargetKind::VirtualCluster => "VirtualCluster",
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tools' state on the target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolTargetStatus {
    /// `Ready` (every tool deployed), `Synced` and `Drifted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec these states are for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The worst state among the tools (`FAILED` before `UNKNOWN` before
    /// `DRIFTED` before `STALE` before `PENDING`...), `DEPLOYED` when all
    /// are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ToolState>,
    /// Tools deployed (or shared) out of all, as `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<String>,
    /// State per tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolStatus>,
    /// With `dryRun`: what would change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedChange>,
    /// The last drift found, as `<tool>: <object> <field>: chart X, live Y`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,
    /// When the releases were last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observed: Option<Time>,
}
