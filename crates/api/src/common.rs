//! Types shared by several kinds: references, policies, conditions, node pools.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go-style duration such as `60s`, `1h30m` or `8h`.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
/// A lowercase RFC 1123 label, as Kubernetes object names of that kind.
pub(crate) const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A reference to an object of a known kind by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Reference {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where the connection details (a kubeconfig) are written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ConnectionSecretRef {
    /// Name of the Secret, in the namespace of this object. The kubeconfig is
    /// stored under the key `value`, as Cluster API does.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret in a given namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretKeySelector {
    /// Namespace of the Secret.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What happens to the external resource when this object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the external resource, then remove this object.
    #[default]
    Delete,
    /// Leave the external resource running and only remove this object.
    Orphan,
}

/// How much of the external resource fleetforge may change.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, update and delete the external resource to match the spec.
    #[default]
    Full,
    /// Only observe an existing resource (named by the
    /// `fleetforge.dev/external-name` annotation) and report its state and
    /// any difference from the spec; never write to the provider.
    ObserveOnly,
}

/// What to do when the external resource drifts from the spec out of band.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DriftPolicy {
    /// Report the drift (condition, event, metric) and change the external
    /// resource back to the spec.
    #[default]
    Correct,
    /// Report the drift only.
    Report,
}

/// A group of identical worker nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.min <= self.max").message("min must not be greater than max").field_path(".min"),
    validation = Rule::new("!has(self.desired) || (self.min <= self.desired && self.desired <= self.max)").message("desired must lie between min and max").field_path(".desired"),
)]
pub struct NodePool {
    /// Name of the pool, unique within the cluster; the provider's node group
    /// or agent pool carries it.
    #[schemars(length(min = 1, max = 40), regex(pattern = crate::common::DNS_LABEL_PATTERN))]
    pub name: String,
    /// Machine (instance) type of the nodes, in the provider's terms, for
    /// example `m7i.large` (AWS), `e2-standard-4` (GCP), `Standard_D4s_v5`
    /// (Azure) or `standard-2` (local). Changing it replaces the pool.
    #[schemars(length(min = 1, max = 100))]
    pub machine_type: String,
    /// Fewest nodes the pool may scale down to.
    #[schemars(range(min = 0, max = 1000))]
    pub min: i32,
    /// Most nodes the pool may scale up to.
    #[schemars(range(min = 0, max = 1000))]
    pub max: i32,
    /// Nodes to run now. When left out, the pool is created with `min`
    /// nodes and the provider (or a cluster autoscaler) may move the count
    /// within `min` and `max` without it counting as drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub desired: Option<i32>,
}

impl NodePool {
    /// The node count a new pool starts with: `desired`, else `min`.
    pub fn initial_count(&self) -> i32 {
        self.desired.unwrap_or(self.min)
    }
}

/// Drift found between the spec and the provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftStatus {
    /// The fields that differ, as paths in the spec with the two values, for
    /// example `nodePools[workers].desired: spec 3, actual 5`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// When this drift was first detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_detected: Option<Time>,
}

/// Condition types written by fleetforge.
pub mod condition {
    /// The external resource exists and is usable.
    pub const READY: &str = "Ready";
    /// kstatus: the object is on its way to what its spec asks (derived
    /// from a false `Ready` or `Synced` whose reason is progress).
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: waiting will not help; the spec, or what it names, must be
    /// fixed by a person (derived from a false `Ready` or `Synced`).
    pub const STALLED: &str = "Stalled";
    /// The last reconcile applied the spec (or, for observe-only objects,
    /// observed the resource) without error.
    pub const SYNCED: &str = "Synced";
    /// The external resource differs from the spec by a change made outside
    /// fleetforge.
    pub const DRIFTED: &str = "Drifted";
    /// On a ProviderConfig: objects use the account, so it is kept (its
    /// deletion waits) until none does.
    pub const IN_USE: &str = "InUse";
}

/// The schema of a condition list: a list-map keyed by `type`, so that
/// server-side apply merges conditions by type.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Values per tool name: each a free-form object.
pub(crate) fn values_by_tool(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let values = free_form_object(generator);
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": values,
    })
}

/// A free-form object (Helm values and the like): any fields are kept.
pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The operators a label selector requirement may use.
pub const SELECTOR_OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// The schema of a label selector, refusing at admission what Kubernetes
/// cannot parse: an operator other than [`SELECTOR_OPERATORS`] (the enum
/// names the field and the allowed values), values with `Exists` or
/// `DoesNotExist`, none with `In` or `NotIn`. The lists are bounded so the
/// rule's cost is known.
pub(crate) fn label_selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let mut schema =
        serde_json::to_value(<LabelSelector>::json_schema(generator)).expect("a schema serialises");
    // Used for optional fields: null is as good as absent.
    schema["nullable"] = true.into();
    if let Some(labels) = schema.pointer_mut("/properties/matchLabels") {
        labels["maxProperties"] = 64.into();
    }
    if let Some(expressions) = schema.pointer_mut("/properties/matchExpressions") {
        expressions["maxItems"] = 32.into();
        let requirement = &mut expressions["items"];
        requirement["properties"]["operator"]["enum"] = serde_json::json!(SELECTOR_OPERATORS);
        requirement["properties"]["key"]["maxLength"] = 317.into();
        requirement["properties"]["values"]["maxItems"] = 64.into();
        requirement["properties"]["values"]["items"]["maxLength"] = 63.into();
        requirement["x-kubernetes-validations"] = serde_json::json!([{
            "rule": "self.operator == 'In' || self.operator == 'NotIn' ? has(self.values) && size(self.values) > 0 : !has(self.values) || size(self.values) == 0",
            "message": "In and NotIn need at least one value; Exists and DoesNotExist take none",
        }]);
    }
    schemars::Schema::try_from(schema).expect("a selector schema is an object")
}
