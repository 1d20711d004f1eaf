//! `Environment`: an on-demand dev environment with a time to live.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{NodePool, Reference, conditions_schema};
use crate::virtual_cluster::{VirtualClusterChart, VirtualClusterHost};

/// An on-demand dev environment: a virtual cluster or a dedicated cluster
/// with a profile's tools, deleted when its time to live runs out.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetforge.dev",
    version = "v1alpha1",
    kind = "Environment",
    doc = "An on-demand dev environment (a virtual or a dedicated cluster with a profile's tools) that is deleted when its time to live runs out.",
    namespaced,
    status = "EnvironmentStatus",
    shortname = "ffenv",
    category = "fleetforge",
    printcolumn(name = "TYPE", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "OWNER", type_ = "string", json_path = ".spec.owner"),
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "TTL", type_ = "string", json_path = ".spec.ttl"),
    // A string, not a date: kubectl prints a date as an age, and a time to
    // come as `<invalid>`.
    printcolumn(name = "EXPIRES", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type == 'dedicated' ? has(self.dedicated) : !has(self.dedicated)").message("dedicated is required for type dedicated and not allowed for type virtual").field_path(".dedicated"),
    validation = Rule::new("self.type == 'virtual' || !has(self.virtual)").message("virtual is only allowed for type virtual").field_path(".virtual"),
    validation = Rule::new("self.type == 'virtual' || !has(self.sleepAfter)").message("sleepAfter is only supported for type virtual").field_path(".sleepAfter"),
    validation = Rule::new("self.type == oldSelf.type").message("type is immutable").field_path(".type"),
    validation = Rule::new("self.owner == oldSelf.owner").message("owner is immutable").field_path(".owner"),
)]
pub struct EnvironmentSpec {
    /// `virtual` runs a VirtualCluster on a shared host; `dedicated` creates
    /// a Cluster of its own.
    #[serde(rename = "type")]
    pub kind: EnvironmentType,
    /// Who the environment belongs to (a user or team name); per-owner
    /// limits count by it.
    #[schemars(length(min = 1, max = 253))]
    pub owner: String,
    /// The ToolSet to install in the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub profile: Option<String>,
    /// Time to live from creation, such as `8h` or `30m`; extend it by
    /// editing this field.
    #[serde(default = "default_ttl")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub ttl: String,
    /// Put a virtual environment to sleep (scaled to zero) after it has been
    /// idle this long: no workload (Pod, Deployment, StatefulSet, Service
    /// outside kube-system) created or changed inside. Waking it (setting
    /// the annotation `fleetforge.dev/woken-at`, as `fleetforge env wake`
    /// does) restarts the clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub sleep_after: Option<String>,
    /// Sleep now (true) or wake (false). A virtual environment's vcluster
    /// is scaled to zero; a dedicated one's node pools go to zero nodes
    /// (its control plane and what is installed stay) and come back on
    /// wake.
    #[serde(default)]
    pub sleep: bool,
    /// Settings of a dedicated environment's Cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated: Option<DedicatedEnvironment>,
    /// Settings of a virtual environment's VirtualCluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#virtual: Option<VirtualEnvironment>,
}

fn default_ttl() -> String {
    "8h".to_string()
}

/// Kinds of environment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnvironmentType {
    /// A VirtualCluster on a shared host.
    Virtual,
    /// A Cluster of its own.
    Dedicated,
}

/// The Cluster a dedicated environment gets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DedicatedEnvironment {
    /// The ProviderConfig (account) to create the cluster in.
    pub provider_config_ref: Reference,
    /// Region; defaults to the ProviderConfig's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Kubernetes version as `major.minor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+$"))]
    pub version: Option<String>,
    /// Node pools of the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub node_pools: Vec<NodePool>,
}

/// The VirtualCluster a virtual environment gets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualEnvironment {
    /// Where it runs; empty means the management cluster.
    #[serde(default)]
    pub host: VirtualClusterHost,
    /// The vcluster chart; defaults to the pinned upstream chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<VirtualClusterChart>,
    /// Tools of the host the virtual cluster uses instead of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub shared_tools: Vec<String>,
}

/// Lifecycle phase of an Environment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EnvironmentPhase {
    /// Accepted, not started (or waiting for quota).
    #[default]
    Pending,
    /// Its cluster and tools are being created.
    Provisioning,
    /// Usable: the kubeconfig Secret works.
    Ready,
    /// Scaled to zero until woken.
    Sleeping,
    /// Its time to live ran out; everything is being deleted.
    Expired,
    /// Being deleted.
    Deleting,
    /// Could not be provisioned.
    Failed,
}

/// Observed state of an Environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// Summary phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<EnvironmentPhase>,
    /// `Ready` and `Synced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the environment will be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The newest sign of use seen (a workload created or changed inside,
    /// a wake, or creation); `sleepAfter` counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<Time>,
    /// The Secret holding the kubeconfig (key `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<Reference>,
    /// Estimated size, known before anything is provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
}

/// Estimated compute of an environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// Virtual CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<Quantity>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Node pools whose machine type is not in fleetforge's size table, as
    /// `nodePools[<name>].machineType: <type>`. They are left out of the
    /// figures above; the environment is provisioned all the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}
