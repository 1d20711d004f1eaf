//! `VirtualCluster`: a vcluster installed through its Helm chart on a host.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConnectionSecretRef, Reference, conditions_schema, free_form_object};

/// A virtual cluster (vcluster) running on a host cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetforge.dev",
    version = "v1alpha1",
    kind = "VirtualCluster",
    doc = "A virtual cluster (vcluster, installed through its Helm chart) on a host: a fleetforge Cluster or the management cluster itself.",
    namespaced,
    status = "VirtualClusterStatus",
    shortname = "vcl",
    category = "fleetforge",
    printcolumn(name = "HOST", type_ = "string", json_path = ".status.host"),
    printcolumn(name = "VERSION", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.host == oldSelf.host").message("host is immutable").field_path(".host"))]
pub struct VirtualClusterSpec {
    /// Where the virtual cluster runs; empty means the management cluster.
    #[serde(default)]
    pub host: VirtualClusterHost,
    /// Namespace on the host for the vcluster's release; defaults to
    /// `vcluster-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = crate::common::DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
    /// The vcluster chart; defaults to the catalog's pinned upstream chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<VirtualClusterChart>,
    /// Helm values for the vcluster chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub values: Option<serde_json::Value>,
    /// A ToolSet to install inside the virtual cluster once it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub profile: Option<String>,
    /// Tools already on the host (for example an ingress controller or
    /// cert-manager) that the virtual cluster uses instead of installing
    /// its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub shared_tools: Vec<String>,
    /// The Secret to write the kubeconfig to (key `value`). Defaults to
    /// `<name>-kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_connection_secret_to_ref: Option<ConnectionSecretRef>,
    /// Stop reconciling until unpaused.
    #[serde(default)]
    pub paused: bool,
}

/// The host of a virtual cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterHost {
    /// A Cluster in the same namespace; when left out, the management
    /// cluster hosts the virtual cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<Reference>,
}

/// A Helm chart in a repository.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterChart {
    /// Chart repository URL (or `oci://` registry, or a local path).
    #[schemars(length(min = 1, max = 4096))]
    pub repository: String,
    /// Chart name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Chart version.
    #[schemars(length(min = 1, max = 128))]
    pub version: String,
}

/// Lifecycle phase of a VirtualCluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VirtualClusterPhase {
    /// Waiting for its host.
    #[default]
    Pending,
    /// The release is being installed.
    Provisioning,
    /// Its API server answers.
    Ready,
    /// Scaled to zero.
    Sleeping,
    /// Being deleted.
    Deleting,
    /// Installation failed.
    Failed,
}

/// Observed state of a VirtualCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterStatus {
    /// Summary phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VirtualClusterPhase>,
    /// `Ready`, `Synced` and `Drifted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The host: a Cluster's name, or `management`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Version of the installed vcluster chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The virtual cluster's API server URL, as reachable by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}
