//! The fleetforge API (`fleetforge.dev/v1alpha1`): custom resource types,
//! their schemas and CEL rules. Types only, no I/O.

// kube's `printcolumn(name = .., type_ = .., json_path = ..)` attributes
// repeat `type_ = "string"` by design; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod cluster;
pub mod common;
pub mod environment;
pub mod fleet_rollout;
pub mod provider_config;
pub mod schema;
pub mod tool_install;
pub mod tool_set;
pub mod tool_target;
pub mod virtual_cluster;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use cluster::{Cluster, ClusterPhase, ClusterProviderSpec, ClusterSpec, ClusterStatus};
pub use common::{
    DeletionPolicy, DriftPolicy, DriftStatus, ManagementPolicy, NodePool, Reference, condition,
};
pub use environment::{Environment, EnvironmentSpec, EnvironmentStatus};
pub use fleet_rollout::{FleetRollout, FleetRolloutSpec, FleetRolloutStatus};
pub use provider_config::{ProviderConfig, ProviderConfigSpec, ProviderKind};
pub use tool_install::{ToolInstall, ToolInstallSpec, ToolInstallStatus, ToolState};
pub use tool_set::{Tool, ToolSet, ToolSetSpec};
pub use tool_target::{ToolTarget, ToolTargetSpec, ToolTargetStatus};
pub use virtual_cluster::{VirtualCluster, VirtualClusterSpec, VirtualClusterStatus};

/// The API group.
pub const GROUP: &str = "fleetforge.dev";
/// The API version.
pub const VERSION: &str = "v1alpha1";
/// The field manager of every write fleetforge makes.
pub const FIELD_MANAGER: &str = "fleetforge";
/// The field manager of the changes a FleetRollout writes into its targets
/// (a Cluster's `spec.version`, a ToolTarget's tools), so that
/// `kubectl get -o yaml --show-managed-fields` tells who set them.
pub const ROLLOUT_FIELD_MANAGER: &str = "fleetforge-rollout";
/// The finalizer that keeps an object until its external resource is gone.
pub const FINALIZER: &str = "fleetforge.dev/finalizer";
/// The finalizer that keeps a ProviderConfig while objects use it, so that
/// they can still reach their account to be deleted.
pub const IN_USE_FINALIZER: &str = "fleetforge.dev/in-use";

/// Annotations with a meaning to fleetforge.
pub mod annotation {
    /// The external resource's name at the provider. Set it to import an
    /// existing resource; fleetforge sets it when it creates one.
    pub const EXTERNAL_NAME: &str = "fleetforge.dev/external-name";
    /// Written just before a create call whose outcome is not yet recorded.
    pub const CREATE_PENDING: &str = "fleetforge.dev/create-pending";
    /// When the last create call succeeded.
    pub const CREATE_SUCCEEDED: &str = "fleetforge.dev/create-succeeded";
    /// When the last create call failed.
    pub const CREATE_FAILED: &str = "fleetforge.dev/create-failed";
    /// `"true"` lets an object go without cleaning up what cannot be
    /// reached, so that its finalizer never hangs on a lost account or
    /// cluster. On a ToolInstall: targets that cannot be reached are dropped
    /// without uninstalling (on deletion, or when they leave the
    /// selection). On a Cluster being deleted: the finalizer is dropped
    /// without deleting the external cluster, with a Warning event naming
    /// what may be left behind.
    pub const FORCE_REMOVE: &str = "fleetforge.dev/force-remove";
    /// On a FleetRollout: approves the stage it names (its `pause` gate).
    /// The controller records the approval in status and removes the
    /// annotation.
    pub const APPROVE: &str = "fleetforge.dev/approve";
    /// On a FleetRollout: any value resumes a halted round, retrying its
    /// failed targets. Removed once acted on.
    pub const RESUME: &str = "fleetforge.dev/resume";
    /// On a FleetRollout: `Leave` or `Rollback` aborts the current round
    /// (see `AbortPolicy`). Removed once recorded in status.
    pub const ABORT: &str = "fleetforge.dev/abort";
    /// On a ToolTarget a FleetRollout changed: the tools and values it had
    /// before, which an abort with `Rollback` puts back.
    pub const ROLLOUT_PREVIOUS: &str = "fleetforge.dev/rollout-previous";
    /// On a ToolTarget: the FleetRollout, and the change of its round,
    /// that last set its tools.
    pub const ROLLOUT: &str = "fleetforge.dev/rollout";
}

/// Labels fleetforge puts on the objects it creates.
pub mod label {
    /// `app.kubernetes.io/managed-by: fleetforge`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The owning object's name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// On a profile's ToolInstall: the Cluster or VirtualCluster (in the
    /// same namespace) whose `spec.profile` made it.
    pub const PROFILE_OF: &str = "fleetforge.dev/profile-of";
}

/// Every CustomResourceDefinition of the API, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        ProviderConfig::crd(),
        Cluster::crd(),
        VirtualCluster::crd(),
        ToolSet::crd(),
        ToolInstall::crd(),
        ToolTarget::crd(),
        Environment::crd(),
        FleetRollout::crd(),
    ]
    .into_iter()
    .map(schema::with_kubernetes_formats)
    .collect()
}
