//! `Cluster`: one managed Kubernetes cluster.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    ConnectionSecretRef, DeletionPolicy, DriftPolicy, DriftStatus, ManagementPolicy, NodePool,
    Reference, conditions_schema,
};

/// One managed Kubernetes cluster, kept converged with this spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetforge.dev",
    version = "v1alpha1",
    kind = "Cluster",
    doc = "A managed Kubernetes cluster (EKS, GKE, AKS or local) that fleetforge provisions and keeps converged with its spec.",
    namespaced,
    status = "ClusterStatus",
    shortname = "ffc",
    category = "fleetforge",
    selectable = ".spec.providerConfigRef.name",
    printcolumn(name = "PROVIDER", type_ = "string", json_path = ".status.provider"),
    printcolumn(name = "REGION", type_ = "string", json_path = ".status.region"),
    printcolumn(name = "VERSION", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
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
#[x_kube(
    validation = Rule::new("has(self.region) == has(oldSelf.region) && (!has(self.region) || self.region == oldSelf.region)").message("region is immutable: create a new Cluster to move regions").field_path(".region"),
    validation = Rule::new("self.providerConfigRef == oldSelf.providerConfigRef").message("providerConfigRef is immutable").field_path(".providerConfigRef"),
)]
pub struct ClusterSpec {
    /// The ProviderConfig (account) the cluster lives in.
    pub provider_config_ref: Reference,
    /// Region (or location) of the cluster, for example `eu-west-1`. Defaults
    /// to the ProviderConfig's default region. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = crate::common::DNS_LABEL_PATTERN))]
    pub region: Option<String>,
    /// Kubernetes version as `major.minor`, for example `1.33`. Upgrades go
    /// one minor version at a time, control plane first, then node pools;
    /// downgrades are refused. Defaults to the provider's default version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+$"))]
    pub version: Option<String>,
    /// Worker node pools, keyed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub node_pools: Vec<NodePool>,
    /// A ToolSet to install on the cluster once it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub profile: Option<String>,
    /// Provider-specific settings; set at most one block, matching the
    /// ProviderConfig's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ClusterProviderSpec>,
    /// Tags (AWS, Azure) or labels (GCP) put on the cloud resources, in
    /// addition to the ownership tags fleetforge adds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// `Delete` removes the cloud cluster with this object; `Orphan` leaves
    /// it running.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// `Full` manages the cluster; `ObserveOnly` imports an existing cluster
    /// named by the `fleetforge.dev/external-name` annotation and never
    /// changes it.
    #[serde(default)]
    pub management_policy: ManagementPolicy,
    /// `Correct` changes the cluster back when it drifts out of band;
    /// `Report` only reports the drift.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
    /// The Secret to write the kubeconfig to (key `value`). Defaults to
    /// `<cluster name>-kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_connection_secret_to_ref: Option<ConnectionSecretRef>,
    /// Stop reconciling: no provider calls and no changes until unpaused.
    #[serde(default)]
    pub paused: bool,
}

impl ClusterSpec {
    /// The connection Secret's name for a Cluster named `cluster`.
    pub fn connection_secret_name(&self, cluster: &str) -> String {
        self.write_connection_secret_to_ref
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| format!("{cluster}-kubeconfig"))
    }
}

/// Provider-specific cluster settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.aws) ? 1 : 0) + (has(self.gcp) ? 1 : 0) + (has(self.azure) ? 1 : 0) <= 1").message("set at most one of aws, gcp and azure"))]
pub struct ClusterProviderSpec {
    /// EKS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsClusterSpec>,
    /// GKE settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpClusterSpec>,
    /// AKS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureClusterSpec>,
}

impl ClusterProviderSpec {
    /// The names of the blocks that are set (`aws`, `gcp`, `azure`), in
    /// field order: what a provider checks against the one block it takes.
    pub fn blocks_set(&self) -> Vec<&'static str> {
        [
            ("aws", self.aws.is_some()),
            ("gcp", self.gcp.is_some()),
            ("azure", self.azure.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// EKS cluster settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsClusterSpec {
    /// IAM role the EKS control plane assumes.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"))]
    pub role_arn: String,
    /// IAM role of the managed node groups' instances.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"))]
    pub node_role_arn: String,
    /// Subnets for the control plane's network interfaces and the nodes (at
    /// least two, in different availability zones).
    #[schemars(length(min = 1, max = 16))]
    pub subnet_ids: Vec<String>,
    /// Extra security groups for the control plane's network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub security_group_ids: Vec<String>,
    /// Whether the API endpoint is reachable from the internet.
    #[serde(default = "default_true")]
    pub endpoint_public_access: bool,
    /// Whether the API endpoint is reachable from inside the VPC.
    #[serde(default)]
    pub endpoint_private_access: bool,
}

fn default_true() -> bool {
    true
}

/// GKE cluster settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcpClusterSpec {
    /// Project of the cluster; defaults to the ProviderConfig's project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$"))]
    pub project: Option<String>,
    /// VPC network; defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Subnetwork of that network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnetwork: Option<String>,
    /// Release channel; versions must be available in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_channel: Option<GkeReleaseChannel>,
}

/// GKE release channels.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum GkeReleaseChannel {
    /// Newest versions first.
    Rapid,
    /// The default balance.
    Regular,
    /// Versions proven longest.
    Stable,
    /// Regular versions, supported longer.
    Extended,
}

/// AKS cluster settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureClusterSpec {
    /// Resource group of the cluster; defaults to the ProviderConfig's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 90))]
    pub resource_group: Option<String>,
    /// DNS prefix of the API server's name; defaults to the cluster's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 54),
        regex(pattern = r"^[a-zA-Z0-9][-a-zA-Z0-9]*[a-zA-Z0-9]$")
    )]
    pub dns_prefix: Option<String>,
    /// Network plugin; defaults to `azure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_plugin: Option<AksNetworkPlugin>,
}

/// AKS network plugins.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AksNetworkPlugin {
    /// Azure CNI.
    Azure,
    /// kubenet.
    Kubenet,
    /// No plugin (bring your own CNI).
    None,
}

/// Lifecycle phase of a Cluster, as a summary for people; conditions carry
/// the detail.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClusterPhase {
    /// Not created yet (or waiting for its ProviderConfig).
    #[default]
    Pending,
    /// Being created.
    Provisioning,
    /// Running and matching the spec (or reporting drift).
    Ready,
    /// A change is being applied.
    Updating,
    /// Being deleted.
    Deleting,
    /// The provider reports the cluster failed, or the spec cannot be applied.
    Failed,
}

/// Observed state of a Cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Summary of where the cluster is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// `Ready`, `Synced` and `Drifted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The provider, from the ProviderConfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The region in effect (from the spec or the ProviderConfig's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The control plane's Kubernetes version, as the provider reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The API server URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Node pools as the provider reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_pools: Vec<NodePoolStatus>,
    /// The last drift found, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,
    /// When the provider was last read. Refreshed with every other status
    /// change, and at least every ten poll intervals when nothing changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observed: Option<Time>,
    /// The start of the last create call that succeeded: the time the
    /// `fleetforge.dev/create-pending` annotation recorded before it. A
    /// create-pending time later than this (and than `create-failed`) is a
    /// create whose outcome was never recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_succeeded: Option<Time>,
}

/// A node pool as the provider reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// Name of the pool.
    pub name: String,
    /// Machine type of its nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    /// Kubernetes version of its nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Scaling bounds and target as configured at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i32>,
    /// See `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i32>,
    /// See `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<i32>,
    /// Nodes ready now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<i32>,
}
