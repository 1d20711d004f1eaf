//! `ToolSet`: a curated, versioned set of tools (Helm charts), a profile.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{conditions_schema, free_form_object};

/// A curated set of tools, each a Helm chart, installed together onto
/// clusters by a ToolInstall (or a Cluster's `profile`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetforge.dev",
    version = "v1alpha1",
    kind = "ToolSet",
    doc = "A curated, versioned set of tools (Helm charts) for one kind of cluster, such as the dev, build, run or view profile.",
    status = "ToolSetStatus",
    shortname = "ts",
    category = "fleetforge",
    printcolumn(name = "TOOLS", type_ = "integer", json_path = ".status.toolCount"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "DESCRIPTION",
        type_ = "string",
        json_path = ".spec.description",
        priority = 1
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.tools.all(t, !has(t.dependsOn) || t.dependsOn.all(d, self.tools.exists(o, o.name == d)))").message("every dependsOn entry must name a tool of this set").field_path(".tools"))]
pub struct ToolSetSpec {
    /// What the set is for, shown by `kubectl get toolsets -o wide`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The tools, keyed by name.
    #[schemars(length(min = 1, max = 50))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub tools: Vec<Tool>,
}

/// One tool: a Helm chart, where it goes, and how to know it is healthy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    /// Name of the tool, unique in its set; also the Helm release name.
    #[schemars(length(min = 1, max = 53), regex(pattern = crate::common::DNS_LABEL_PATTERN))]
    pub name: String,
    /// The chart to install.
    pub chart: ChartSource,
    /// Namespace the release is installed into (created when missing);
    /// defaults to the tool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = crate::common::DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
    /// Helm values of the tool. A ToolInstall's values and per-cluster
    /// overrides are merged over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub values: Option<serde_json::Value>,
    /// Tools of the same set that must be installed and healthy first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub depends_on: Vec<String>,
    /// Objects that must be ready before the tool counts as healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub health: Vec<HealthCheck>,
}

/// Where a chart comes from: exactly one of `repository`, `oci` or `path`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.repository) ? 1 : 0) + (has(self.oci) ? 1 : 0) + (has(self.path) ? 1 : 0) == 1").message("set exactly one of repository, oci and path"),
    validation = Rule::new("!has(self.repository) || has(self.name)").message("name is required with repository").field_path(".name"),
)]
pub struct ChartSource {
    /// URL of a Helm chart repository, for example `https://charts.jetstack.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://\S+$"))]
    pub repository: Option<String>,
    /// An OCI chart reference, for example
    /// `oci://ghcr.io/knative/charts/knative-operator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^oci://\S+$"))]
    pub oci: Option<String>,
    /// A chart directory or archive on the controller's file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
    /// Chart name in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Chart version (a SemVer version or range); the latest when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub version: Option<String>,
}

/// An object that must be ready for a tool to be healthy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Kind of the object.
    pub kind: HealthCheckKind,
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the object; defaults to the tool's namespace. Not used
    /// for CustomResourceDefinitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Kinds a health check understands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HealthCheckKind {
    /// Available with all replicas updated.
    Deployment,
    /// All replicas ready and current.
    StatefulSet,
    /// Scheduled and ready on every node it targets.
    DaemonSet,
    /// Established.
    CustomResourceDefinition,
}

/// Observed state of a ToolSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolSetStatus {
    /// `Ready`: the set is valid (for example, `dependsOn` has no cycle).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of tools in the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_count: Option<i32>,
    /// Tool names in installation order (dependencies first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install_order: Vec<String>,
}
