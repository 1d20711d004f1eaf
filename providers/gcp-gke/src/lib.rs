//! The `gcp` provider: each Cluster is a GKE Standard cluster and each node
//! pool a GKE node pool, driven through the official Google Cloud Rust
//! client (`google-cloud-container-v1`, REST/JSON).
//!
//! Who owns a cluster is its `fleetforge-owner` resource label (see
//! [`labels`]). GKE needs a node pool at creation, so `create` makes the
//! control plane with the spec's first pool; the others show up as absent
//! and the engine's plan adds them with `update`. GKE runs one operation per
//! cluster at a time, so `update` starts only the first change it is given:
//! the engine plans the rest again once the cluster is Ready. Calls return
//! as soon as GKE accepted them; the engine polls.

pub mod credentials;
pub mod errors;
#[cfg(feature = "fake")]
pub mod fake;
pub mod labels;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleetforge_api::cluster::{GcpClusterSpec, GkeReleaseChannel};
use fleetforge_api::{Cluster, ManagementPolicy, NodePool, ProviderConfig};
use fleetforge_core::cluster::{
    ClusterChange, ObservedCluster, ObservedNodePool, refuse_other_clouds,
};
use fleetforge_core::{
    ConnectionDetails, Credentials, ErrorKind, ExternalClient, ExternalState, MachineSize,
    Observation, ProviderError, ProviderFactory, Refusal,
};
use google_cloud_auth::credentials::AccessTokenCredentials;
use google_cloud_container_v1::client::ClusterManager;
use google_cloud_container_v1::model::{
    self, NodeConfig, NodePoolAutoscaling, ReleaseChannel, cluster, node_pool, release_channel,
};
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::NeverRetry;

use crate::errors::gax_error;
use crate::labels::{OWNER_LABEL, decode_owner, labels};

/// How long one GKE call may take (the engine retries, the client does not).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a [`GkeCloud`] per ProviderConfig.
#[derive(Debug, Default)]
pub struct GkeFactory;

impl GkeFactory {
    /// A factory.
    pub fn new() -> Arc<Self> {
        Arc::new(Self)
    }
}

#[async_trait]
impl ProviderFactory<Cluster> for GkeFactory {
    async fn connect(
        &self,
        config: &ProviderConfig,
        credentials: Credentials,
    ) -> Result<Arc<dyn ExternalClient<Cluster>>, ProviderError> {
        Ok(Arc::new(GkeCloud::connect(config, credentials).await?))
    }

    /// `e2-standard-4`, `n2-highmem-8`, `c3-highcpu-22`.
    fn machine_size(&self, machine_type: &str) -> Option<MachineSize> {
        let parts: Vec<&str> = machine_type.split('-').collect();
        let [_, shape, n] = parts.as_slice() else {
            return None;
        };
        let n: u64 = n.parse().ok()?;
        let per = match *shape {
            "standard" => 4,
            "highmem" => 8,
            "highcpu" => 1,
            _ => return None,
        };
        Some(MachineSize::new(n, n * per))
    }
}

/// The GKE clusters one set of Google credentials (one ProviderConfig) can
/// reach, in any project and location.
pub struct GkeCloud {
    client: ClusterManager,
    credentials: AccessTokenCredentials,
    default_region: Option<String>,
    default_project: Option<String>,
}

impl fmt::Debug for GkeCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GkeCloud")
            .field("default_region", &self.default_region)
            .field("default_project", &self.default_project)
            .finish_non_exhaustive()
    }
}

/// Where a cluster lives and what it is called in the GKE API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterName {
    /// `projects/{project}/locations/{location}`.
    pub parent: String,
    /// `projects/{project}/locations/{location}/clusters/{name}`.
    pub name: String,
}

impl ClusterName {
    /// The cluster `cluster` in `project` and `location`.
    pub fn new(project: &str, location: &str, cluster: &str) -> Self {
        let parent = format!("projects/{project}/locations/{location}");
        let name = format!("{parent}/clusters/{cluster}");
        Self { parent, name }
    }

    /// The resource name of its node pool `pool`.
    pub fn pool(&self, pool: &str) -> String {
        format!("{}/nodePools/{pool}", self.name)
    }
}

impl GkeCloud {
    /// A client for the account `config` describes: its `endpoint` (a fake,
    /// a private endpoint), its default project and region, and
    /// `credentials` (a service-account key from a Secret, or ADC).
    pub async fn connect(
        config: &ProviderConfig,
        credentials: Credentials,
    ) -> Result<Self, ProviderError> {
        let credentials = credentials::load(credentials).await?;
        let mut builder = ClusterManager::builder()
            .with_credentials(credentials.clone())
            // The engine owns backoff and rate limits: one engine call is
            // one GKE call.
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(CALL_TIMEOUT);
        if let Some(endpoint) = &config.spec.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        let client = builder.build().await.map_err(|e| {
            ProviderError::new(
                ErrorKind::Unavailable,
                format!(
                    "could not build the GKE client ({e}); check the ProviderConfig's endpoint"
                ),
            )
        })?;
        let defaults = config.spec.defaults.as_ref();
        Ok(Self {
            client,
            credentials,
            default_region: defaults.and_then(|d| d.region.clone()),
            default_project: defaults.and_then(|d| d.project.clone()),
        })
    }

    /// The GKE client, for calls this provider does not make itself.
    pub fn client(&self) -> &ClusterManager {
        &self.client
    }

    /// The resource names of `obj`'s cluster, called `external_name`.
    pub fn cluster_name(
        &self,
        obj: &Cluster,
        external_name: &str,
    ) -> Result<ClusterName, ProviderError> {
        let project = gcp_spec(obj)
            .and_then(|g| g.project.clone())
            .or_else(|| self.default_project.clone())
            .ok_or_else(|| ProviderError::new(ErrorKind::InvalidSpec, missing_project_message()))?;
        let location = obj
            .spec
            .region
            .clone()
            .or_else(|| self.default_region.clone())
            .ok_or_else(|| ProviderError::new(ErrorKind::InvalidSpec, missing_region_message()))?;
        Ok(ClusterName::new(&project, &location, external_name))
    }

    /// Starts one change; `Ok` when GKE accepted it or it is done already.
    async fn apply(
        &self,
        obj: &Cluster,
        cluster: &ClusterName,
        change: &ClusterChange,
    ) -> Result<(), ProviderError> {
        match change {
            ClusterChange::AddNodePool(pool) => {
                let result = self
                    .client
                    .create_node_pool()
                    .set_parent(&cluster.name)
                    .set_node_pool(node_pool(obj, pool))
                    .send()
                    .await;
                match result {
                    Ok(_) => Ok(()),
                    // An earlier attempt created it.
                    Err(e) if code_of(&e) == Some(Code::AlreadyExists) => Ok(()),
                    Err(e) => Err(gax_error(
                        &format!("CreateNodePool {}", cluster.pool(&pool.name)),
                        &e,
                    )),
                }
            }
            ClusterChange::ScaleNodePool {
                pool,
                min,
                max,
                desired,
            } => {
                let name = cluster.pool(pool);
                let current = self
                    .client
                    .get_node_pool()
                    .set_name(&name)
                    .send()
                    .await
                    .map_err(|e| gax_error(&format!("GetNodePool {name}"), &e))?;
                let bounds = current.autoscaling.as_ref().map_or((0, 0, false), |a| {
                    (a.min_node_count, a.max_node_count, a.enabled)
                });
                // Bounds first, then the size, each its own operation: the
                // plan asks again for whatever is still different.
                if bounds != (*min, *max, true) {
                    self.client
                        .set_node_pool_autoscaling()
                        .set_name(&name)
                        .set_autoscaling(autoscaling(*min, *max))
                        .send()
                        .await
                        .map_err(|e| gax_error(&format!("SetNodePoolAutoscaling {name}"), &e))?;
                } else if let Some(desired) = desired {
                    self.client
                        .set_node_pool_size()
                        .set_name(&name)
                        .set_node_count(*desired)
                        .send()
                        .await
                        .map_err(|e| gax_error(&format!("SetNodePoolSize {name}"), &e))?;
                }
                Ok(())
            }
            ClusterChange::RemoveNodePool { pool } => {
                let name = cluster.pool(pool);
                match self.client.delete_node_pool().set_name(&name).send().await {
                    Ok(_) => Ok(()),
                    Err(e) if code_of(&e) == Some(Code::NotFound) => Ok(()),
                    Err(e) => Err(gax_error(&format!("DeleteNodePool {name}"), &e)),
                }
            }
            ClusterChange::UpgradeControlPlane { to } => {
                // GKE takes `1.X` and picks that minor's default patch.
                self.client
                    .update_master()
                    .set_name(&cluster.name)
                    .set_master_version(to)
                    .send()
                    .await
                    .map_err(|e| {
                        gax_error(&format!("UpdateMaster {} to {to}", cluster.name), &e)
                    })?;
                Ok(())
            }
            ClusterChange::UpgradeNodePool { pool, to } => {
                let name = cluster.pool(pool);
                // UpdateNodePool requires the image type: keep the pool's.
                let current = self
                    .client
                    .get_node_pool()
                    .set_name(&name)
                    .send()
                    .await
                    .map_err(|e| gax_error(&format!("GetNodePool {name}"), &e))?;
                let image_type = current.config.map(|c| c.image_type).unwrap_or_default();
                self.client
                    .update_node_pool()
                    .set_name(&name)
                    .set_node_version(to)
                    .set_image_type(image_type)
                    .send()
                    .await
                    .map_err(|e| gax_error(&format!("UpdateNodePool {name} to {to}"), &e))?;
                Ok(())
            }
            // observe reports no provider-specific drift yet, so the engine
            // never plans this.
            ClusterChange::ProviderSettings { fields } => Err(ProviderError::new(
                ErrorKind::OperationFailed,
                format!(
                    "the GKE provider cannot change {} on an existing cluster; recreate the cluster to change them",
                    fields
                        .iter()
                        .map(|f| f.field.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

fn code_of(error: &google_cloud_gax::error::Error) -> Option<Code> {
    error.status().map(|s| s.code)
}

fn gcp_spec(obj: &Cluster) -> Option<&GcpClusterSpec> {
    obj.spec.provider.as_ref().and_then(|p| p.gcp.as_ref())
}

fn missing_region_message() -> String {
    "no location: set spec.region (a GKE region or zone), or spec.defaults.region in the ProviderConfig".to_string()
}

fn missing_project_message() -> String {
    "no GCP project: set spec.provider.gcp.project, or spec.defaults.project in the ProviderConfig"
        .to_string()
}

fn autoscaling(min: i32, max: i32) -> NodePoolAutoscaling {
    NodePoolAutoscaling::new()
        .set_enabled(true)
        .set_min_node_count(min)
        .set_max_node_count(max)
}

/// The GKE node pool for the spec's `pool`, autoscaled within its bounds.
/// Counts are per zone, as GKE counts them.
fn node_pool(obj: &Cluster, pool: &NodePool) -> model::NodePool {
    model::NodePool::new()
        .set_name(&pool.name)
        .set_config(
            NodeConfig::new()
                .set_machine_type(&pool.machine_type)
                .set_resource_labels(labels(obj)),
        )
        .set_initial_node_count(pool.initial_count())
        .set_autoscaling(autoscaling(pool.min, pool.max))
}

fn release_channel(channel: GkeReleaseChannel) -> ReleaseChannel {
    ReleaseChannel::new().set_channel(match channel {
        GkeReleaseChannel::Rapid => release_channel::Channel::Rapid,
        GkeReleaseChannel::Regular => release_channel::Channel::Regular,
        GkeReleaseChannel::Stable => release_channel::Channel::Stable,
        GkeReleaseChannel::Extended => release_channel::Channel::Extended,
    })
}

fn status_name(name: Option<&str>) -> &str {
    name.unwrap_or("an unknown status")
}

/// The life-cycle state of `gke`, its node pools included.
fn state(gke: &model::Cluster) -> ExternalState {
    let message = cluster_message(gke);
    let why = |default: String| {
        if message.is_empty() {
            default
        } else {
            message.clone()
        }
    };
    match &gke.status {
        cluster::Status::Provisioning => return ExternalState::Provisioning,
        cluster::Status::Reconciling => return ExternalState::Updating,
        cluster::Status::Stopping => return ExternalState::Deleting,
        cluster::Status::Error => {
            return ExternalState::Failed(why("GKE reports the cluster in ERROR".to_string()));
        }
        cluster::Status::Degraded => {
            return ExternalState::Degraded(why("GKE reports the cluster DEGRADED".to_string()));
        }
        cluster::Status::Running => {}
        other => {
            return ExternalState::Degraded(why(format!(
                "GKE reports the cluster as {}",
                status_name(other.name())
            )));
        }
    }
    // A pool being created, changed or deleted holds the cluster's one
    // operation; deleting pools is not deleting the cluster.
    if gke.node_pools.iter().any(|p| {
        matches!(
            p.status,
            node_pool::Status::Provisioning
                | node_pool::Status::Reconciling
                | node_pool::Status::Stopping
        )
    }) {
        return ExternalState::Updating;
    }
    let broken: Vec<String> = gke
        .node_pools
        .iter()
        .filter(|p| {
            matches!(
                p.status,
                node_pool::Status::Error | node_pool::Status::RunningWithError
            )
        })
        .map(|p| {
            let status = status_name(p.status.name());
            let message = pool_message(p);
            if message.is_empty() {
                format!("node pool {} is {status}", p.name)
            } else {
                format!("node pool {} is {status}: {message}", p.name)
            }
        })
        .collect();
    if !broken.is_empty() {
        return ExternalState::Degraded(broken.join("; "));
    }
    ExternalState::Ready
}

/// Why GKE says a cluster is in its status: its conditions' messages, else
/// `statusMessage`, deprecated in favour of conditions but still filled.
#[allow(deprecated)]
fn cluster_message(gke: &model::Cluster) -> String {
    joined(&gke.conditions, &gke.status_message)
}

/// [`cluster_message`] for a node pool.
#[allow(deprecated)]
fn pool_message(pool: &model::NodePool) -> String {
    joined(&pool.conditions, &pool.status_message)
}

fn joined(conditions: &[model::StatusCondition], fallback: &str) -> String {
    let messages: Vec<&str> = conditions
        .iter()
        .map(|c| c.message.as_str())
        .filter(|m| !m.is_empty())
        .collect();
    if messages.is_empty() {
        fallback.to_string()
    } else {
        messages.join("; ")
    }
}

/// `pool` as the engine sees it. GKE's NodePool carries no current size:
/// `desired` is its `initialNodeCount`, which SetNodePoolSize also sets on
/// the fake; real GKE keeps the live size in the pool's instance groups
/// (Compute API), which this provider does not read yet.
fn observed_pool(pool: &model::NodePool) -> ObservedNodePool {
    let (min, max) = match &pool.autoscaling {
        Some(a) if a.enabled => (a.min_node_count, a.max_node_count),
        _ => (pool.initial_node_count, pool.initial_node_count),
    };
    ObservedNodePool {
        name: pool.name.clone(),
        machine_type: pool
            .config
            .as_ref()
            .map(|c| c.machine_type.clone())
            .unwrap_or_default(),
        version: (!pool.version.is_empty()).then(|| pool.version.clone()),
        min,
        max,
        desired: pool.initial_node_count,
        // GKE does not report ready nodes; the cluster's API would.
        ready: None,
    }
}

#[async_trait]
impl ExternalClient<Cluster> for GkeCloud {
    /// GKE cluster names are unique in a location: a create for a taken name fails with ALREADY_EXISTS.
    fn create_keyed_by_name(&self) -> bool {
        true
    }

    async fn observe(
        &self,
        obj: &Cluster,
        external_name: &str,
    ) -> Result<Option<Observation<ObservedCluster>>, ProviderError> {
        let name = self.cluster_name(obj, external_name)?;
        let gke = match self.client.get_cluster().set_name(&name.name).send().await {
            Ok(gke) => gke,
            Err(e) if code_of(&e) == Some(Code::NotFound) => return Ok(None),
            Err(e) if e.http_status_code() == Some(404) => return Ok(None),
            Err(e) => return Err(gax_error(&format!("GetCluster {}", name.name), &e)),
        };
        let reachable = matches!(
            gke.status,
            cluster::Status::Running | cluster::Status::Reconciling | cluster::Status::Degraded
        );
        let server = (!gke.endpoint.is_empty()).then(|| format!("https://{}", gke.endpoint));
        let ca = gke
            .master_auth
            .as_ref()
            .map(|a| a.cluster_ca_certificate.as_str())
            .filter(|ca| !ca.is_empty());
        // A kubeconfig with the cluster's endpoint, its CA and a bearer token
        // from the ProviderConfig's own Google credentials, so readers need no
        // `gke-gcloud-auth-plugin`. The token is whatever google-cloud-auth
        // hands out: an OAuth access token for ADC, and for a service-account
        // key a JWT the library signs itself (scope `cloud-platform`). Tokens
        // last an hour; each poll refreshes the Secret with the current one.
        let connection = match (reachable, &server, ca) {
            (true, Some(server), Some(ca)) => {
                let token = self.credentials.access_token().await.map_err(|_| {
                    ProviderError::new(
                        ErrorKind::AuthFailed,
                        "could not get an access token for the cluster's kubeconfig; check the ProviderConfig's credentials",
                    )
                })?;
                Some(ConnectionDetails {
                    kubeconfig: ConnectionDetails::bearer(external_name, server, ca, &token.token)
                        .kubeconfig,
                })
            }
            _ => None,
        };
        Ok(Some(Observation {
            state: state(&gke),
            owner: gke
                .resource_labels
                .get(OWNER_LABEL)
                .map(|value| decode_owner(value, obj)),
            connection,
            resource: ObservedCluster {
                version: (!gke.current_master_version.is_empty())
                    .then(|| gke.current_master_version.clone()),
                endpoint: server,
                node_pools: gke.node_pools.iter().map(observed_pool).collect(),
                provider_drift: Vec::new(),
            },
        }))
    }

    async fn create(&self, obj: &Cluster, external_name: &str) -> Result<(), ProviderError> {
        let name = self.cluster_name(obj, external_name)?;
        let first =
            obj.spec.node_pools.first().ok_or_else(|| {
                ProviderError::new(ErrorKind::InvalidSpec, missing_pool_message())
            })?;
        let mut gke = model::Cluster::new()
            .set_name(external_name)
            .set_resource_labels(labels(obj))
            .set_node_pools([node_pool(obj, first)]);
        if let Some(version) = &obj.spec.version {
            gke = gke.set_initial_cluster_version(version);
        }
        if let Some(gcp) = gcp_spec(obj) {
            if let Some(network) = &gcp.network {
                gke = gke.set_network(network);
            }
            if let Some(subnetwork) = &gcp.subnetwork {
                gke = gke.set_subnetwork(subnetwork);
            }
            if let Some(channel) = gcp.release_channel {
                gke = gke.set_release_channel(release_channel(channel));
            }
        }
        self.client
            .create_cluster()
            .set_parent(&name.parent)
            .set_cluster(gke)
            .send()
            .await
            .map_err(|e| gax_error(&format!("CreateCluster {}", name.name), &e))?;
        Ok(())
    }

    async fn update(
        &self,
        obj: &Cluster,
        external_name: &str,
        changes: &[ClusterChange],
    ) -> Result<(), ProviderError> {
        let name = self.cluster_name(obj, external_name)?;
        // One operation per cluster at a time: start the first change; the
        // engine plans the others again after it.
        match changes.first() {
            Some(change) => self.apply(obj, &name, change).await,
            None => Ok(()),
        }
    }

    async fn delete(&self, obj: &Cluster, external_name: &str) -> Result<(), ProviderError> {
        let name = self.cluster_name(obj, external_name)?;
        // DeleteCluster deletes the node pools with the cluster.
        match self
            .client
            .delete_cluster()
            .set_name(&name.name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some(Code::NotFound) => Ok(()),
            Err(e) if e.http_status_code() == Some(404) => Ok(()),
            Err(e) => Err(gax_error(&format!("DeleteCluster {}", name.name), &e)),
        }
    }

    fn validate(&self, obj: &Cluster) -> Result<(), Refusal> {
        let refuse = |field: &str, message: String| Refusal {
            reason: "InvalidSpec",
            field: field.to_string(),
            message,
        };
        refuse_other_clouds(&obj.spec, "gcp", "GKE")?;
        let Some(gcp) = gcp_spec(obj) else {
            return Err(refuse(
                "spec.provider.gcp",
                "a GKE cluster needs spec.provider.gcp (project, and optionally network, subnetwork, releaseChannel)".to_string(),
            ));
        };
        if gcp.project.is_none() && self.default_project.is_none() {
            return Err(refuse(
                "spec.provider.gcp.project",
                missing_project_message(),
            ));
        }
        if obj.spec.region.is_none() && self.default_region.is_none() {
            return Err(refuse("spec.region", missing_region_message()));
        }
        if obj.spec.management_policy == ManagementPolicy::Full && obj.spec.node_pools.is_empty() {
            return Err(refuse("spec.nodePools", missing_pool_message()));
        }
        Ok(())
    }
}

fn missing_pool_message() -> String {
    "GKE creates a cluster with at least one node pool: add one to spec.nodePools".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, status: node_pool::Status) -> model::NodePool {
        model::NodePool::new().set_name(name).set_status(status)
    }

    fn gke(status: cluster::Status, pools: Vec<model::NodePool>) -> model::Cluster {
        model::Cluster::new()
            .set_status(status)
            .set_node_pools(pools)
    }

    #[test]
    fn cluster_statuses_map_to_external_states() {
        use cluster::Status;
        assert_eq!(
            state(&gke(Status::Provisioning, vec![])),
            ExternalState::Provisioning
        );
        assert_eq!(state(&gke(Status::Running, vec![])), ExternalState::Ready);
        assert_eq!(
            state(&gke(Status::Reconciling, vec![])),
            ExternalState::Updating
        );
        assert_eq!(
            state(&gke(Status::Stopping, vec![])),
            ExternalState::Deleting
        );
        let failed = gke(Status::Error, vec![])
            .set_conditions([model::StatusCondition::new().set_message("no IPs left in subnet")]);
        assert_eq!(
            state(&failed),
            ExternalState::Failed("no IPs left in subnet".into())
        );
        assert!(matches!(
            state(&gke(Status::Degraded, vec![])),
            ExternalState::Degraded(_)
        ));
    }

    #[test]
    fn pools_in_motion_make_the_cluster_busy_but_never_deleting() {
        use node_pool::Status;
        for moving in [Status::Provisioning, Status::Reconciling, Status::Stopping] {
            let cluster = gke(
                cluster::Status::Running,
                vec![pool("a", Status::Running), pool("b", moving)],
            );
            assert_eq!(state(&cluster), ExternalState::Updating);
        }
        let broken = gke(cluster::Status::Running, vec![pool("gpu", Status::Error)]);
        assert_eq!(
            state(&broken),
            ExternalState::Degraded("node pool gpu is ERROR".into())
        );
    }

    #[test]
    fn a_pool_without_autoscaling_is_pinned_at_its_size() {
        let fixed = pool("p", node_pool::Status::Running).set_initial_node_count(3);
        let seen = observed_pool(&fixed);
        assert_eq!((seen.min, seen.max, seen.desired), (3, 3, 3));
        let scaled = fixed.set_autoscaling(autoscaling(1, 5));
        let seen = observed_pool(&scaled);
        assert_eq!((seen.min, seen.max, seen.desired), (1, 5, 3));
    }
}

#[cfg(test)]
mod machine_sizes {
    use super::*;

    #[test]
    fn gce_machine_types_are_sized_by_shape() {
        let gke = GkeFactory::new();
        assert_eq!(
            gke.machine_size("e2-standard-4"),
            Some(MachineSize::new(4, 16))
        );
        assert_eq!(
            gke.machine_size("n2-highmem-8"),
            Some(MachineSize::new(8, 64))
        );
        assert_eq!(gke.machine_size("a2-ultragpu-1g"), None);
    }
}
