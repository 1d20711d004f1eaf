//! The `azure` provider: each Cluster is an Azure Kubernetes Service managed
//! cluster and each node pool an AKS agent pool.
//!
//! Client decision: a small typed client over the AKS REST API
//! ([`arm`], api-version [`arm::API_VERSION`]) on `hyper-util` with
//! `hyper-rustls` (rustls + ring, OS roots), not the `azure_mgmt_*` crates.
//! `azure_mgmt_containerservice` 0.10 sits on the older `azure_core` 0.10
//! line, which would bring a second HTTP and TLS stack (reqwest 0.11,
//! hyper 0.14) next to the workspace's; the current `azure_core` line has
//! no management-plane AKS client and defaults to reqwest with its own TLS
//! choice (native-tls, or rustls, depending on the version). The provider
//! needs seven REST calls and a client-credentials token, which are less
//! code than adapting either, and the ProviderConfig's `endpoint` maps
//! directly onto the ARM base URL (which is how the tests reach the fake).
//!
//! Authentication: a service principal from the Secret (see
//! [`credentials`]); the token authority is the Secret's optional
//! `authorityHost` (sovereign clouds, fakes), else the public cloud's. The
//! ambient identity (managed or workload identity) is not supported yet.
//!
//! Who owns a cluster is its [`OWNER_TAG`] tag (ARM tag names may not hold
//! `/`, so it is not `fleetforge.dev/owner` as on AWS). AKS needs a System
//! pool at creation, so `create` sends every spec pool, the first as the
//! System pool. Calls return as soon as ARM accepted them; the engine polls.

pub mod arm;
pub mod credentials;
pub mod errors;
#[cfg(feature = "fake")]
pub mod fake;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleetforge_api::cluster::{AksNetworkPlugin, AzureClusterSpec};
use fleetforge_api::{Cluster, NodePool, ProviderConfig};
use fleetforge_core::cluster::{
    ClusterChange, ObservedCluster, ObservedNodePool, owned_tags, refuse_other_clouds,
};
use fleetforge_core::{
    ConnectionDetails, Credentials, ErrorKind, ExternalClient, ExternalState, MachineSize,
    Observation, ProviderError, ProviderFactory, Refusal,
};
use serde_json::{Value, json};

use crate::arm::{AgentPoolProfile, ArmClient, ManagedCluster};

/// The tag naming the object that created a cluster, as
/// `<namespace>/<name>`.
pub const OWNER_TAG: &str = "fleetforge.dev-owner";

/// Pool tags keeping the spec's bounds of a pool the autoscaler does not
/// manage (AKS then accepts no `minCount`/`maxCount`).
pub const MIN_TAG: &str = "fleetforge.dev-min";
/// See [`MIN_TAG`].
pub const MAX_TAG: &str = "fleetforge.dev-max";

/// How long a fetched admin kubeconfig is handed out again, so that one
/// poll is one ARM read and the connection Secret stays stable.
const KUBECONFIG_REUSE: Duration = Duration::from_secs(600);

/// Resource group, cluster name and fqdn: a new fqdn is a new cluster.
type KubeconfigKey = (String, String, String);

/// Builds an [`AksCloud`] per ProviderConfig.
#[derive(Debug, Default)]
pub struct AksFactory;

impl AksFactory {
    /// A factory.
    pub fn new() -> Arc<Self> {
        Arc::new(Self)
    }
}

#[async_trait]
impl ProviderFactory<Cluster> for AksFactory {
    async fn connect(
        &self,
        config: &ProviderConfig,
        credentials: Credentials,
    ) -> Result<Arc<dyn ExternalClient<Cluster>>, ProviderError> {
        Ok(Arc::new(AksCloud::connect(config, credentials)?))
    }

    /// `Standard_D4s_v5`, `Standard_E8as_v5`, `Standard_F16s_v2`.
    fn machine_size(&self, machine_type: &str) -> Option<MachineSize> {
        let rest = machine_type.strip_prefix("Standard_")?;
        let family = rest.chars().next()?;
        let n: u64 = rest[1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()?;
        let per = match family {
            'D' | 'B' => 4,
            'E' => 8,
            'F' => 2,
            _ => return None,
        };
        Some(MachineSize::new(n, n * per))
    }
}

/// The AKS clusters of one Azure subscription (one ProviderConfig).
pub struct AksCloud {
    arm: ArmClient,
    default_region: Option<String>,
    default_resource_group: Option<String>,
    /// The last admin kubeconfig per cluster, with when it was fetched.
    kubeconfigs: Mutex<HashMap<KubeconfigKey, (Instant, String)>>,
}

impl fmt::Debug for AksCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AksCloud")
            .field("arm", &self.arm)
            .field("default_region", &self.default_region)
            .field("default_resource_group", &self.default_resource_group)
            .finish_non_exhaustive()
    }
}

impl AksCloud {
    /// A client for the subscription `config` describes: its `endpoint`
    /// (ARM's base URL; a fake, a private endpoint), its defaults, and the
    /// service principal in `credentials`.
    pub fn connect(
        config: &ProviderConfig,
        credentials: Credentials,
    ) -> Result<Self, ProviderError> {
        let principal = match credentials {
            Credentials::Secret(bytes) => credentials::parse(&bytes)?,
            Credentials::Ambient => {
                return Err(ProviderError::new(
                    ErrorKind::AuthFailed,
                    "the azure provider does not support the ambient identity (managed or workload identity) yet; store a service principal as JSON with tenantId, clientId, clientSecret and subscriptionId in a Secret and set credentials.source: Secret",
                ));
            }
        };
        let defaults = config.spec.defaults.as_ref();
        Ok(Self {
            arm: ArmClient::new(config.spec.endpoint.as_deref(), principal)?,
            default_region: defaults.and_then(|d| d.region.clone()),
            default_resource_group: defaults.and_then(|d| d.resource_group.clone()),
            kubeconfigs: Mutex::new(HashMap::new()),
        })
    }

    /// The ARM client, for callers that need a call the trait does not make.
    pub fn arm(&self) -> &ArmClient {
        &self.arm
    }

    fn resource_group_of(&self, obj: &Cluster) -> Result<String, ProviderError> {
        azure_spec(obj)
            .and_then(|a| a.resource_group.clone())
            .or_else(|| self.default_resource_group.clone())
            .ok_or_else(|| {
                ProviderError::new(ErrorKind::InvalidSpec, missing_resource_group_message())
            })
    }

    fn region_of(&self, obj: &Cluster) -> Result<String, ProviderError> {
        obj.spec
            .region
            .clone()
            .or_else(|| self.default_region.clone())
            .ok_or_else(|| ProviderError::new(ErrorKind::InvalidSpec, missing_region_message()))
    }

    /// The admin kubeconfig of `name`, reused while it is fresh.
    async fn kubeconfig(
        &self,
        resource_group: &str,
        name: &str,
        fqdn: &str,
    ) -> Result<Option<String>, ProviderError> {
        let key = (
            resource_group.to_string(),
            name.to_string(),
            fqdn.to_string(),
        );
        if let Some((made, text)) = self
            .kubeconfigs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && made.elapsed() < KUBECONFIG_REUSE
        {
            return Ok(Some(text.clone()));
        }
        let Some(text) = self.arm.admin_kubeconfig(resource_group, name).await? else {
            return Ok(None);
        };
        self.kubeconfigs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), text.clone()));
        Ok(Some(text))
    }

    async fn apply(
        &self,
        obj: &Cluster,
        resource_group: &str,
        name: &str,
        change: &ClusterChange,
    ) -> Result<(), ProviderError> {
        match change {
            ClusterChange::AddNodePool(pool) => {
                let body = json!({
                    "properties": pool_properties(pool, "User", obj.spec.version.as_deref()),
                });
                self.arm
                    .put_pool(resource_group, name, &pool.name, &body)
                    .await
                    .map(drop)
            }
            ClusterChange::ScaleNodePool {
                pool,
                min,
                max,
                desired,
            } => {
                let mut properties = self.existing_pool(resource_group, name, pool).await?;
                let current = properties
                    .get("count")
                    .and_then(Value::as_i64)
                    .and_then(|c| i32::try_from(c).ok());
                set_scaling(&mut properties, *min, *max, *desired, current);
                self.arm
                    .put_pool(
                        resource_group,
                        name,
                        pool,
                        &json!({"properties": properties}),
                    )
                    .await
                    .map(drop)
            }
            ClusterChange::RemoveNodePool { pool } => {
                self.arm.delete_pool(resource_group, name, pool).await
            }
            ClusterChange::UpgradeControlPlane { to } => {
                let mut body = self
                    .arm
                    .get_cluster_json(resource_group, name)
                    .await?
                    .ok_or_else(|| {
                        ProviderError::new(
                            ErrorKind::NotFound,
                            format!(
                                "AKS cluster {resource_group}/{name} does not exist (any more)"
                            ),
                        )
                    })?;
                let properties = body
                    .get_mut("properties")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| {
                        ProviderError::new(
                            ErrorKind::OperationFailed,
                            format!(
                                "AKS returned cluster {resource_group}/{name} without properties"
                            ),
                        )
                    })?;
                properties.insert("kubernetesVersion".into(), Value::String(to.clone()));
                // AKS upgrades every pool with the control plane unless each
                // pool pins its version: pin them where they are, so pools
                // follow one at a time through UpgradeNodePool.
                if let Some(Value::Array(pools)) = properties.get_mut("agentPoolProfiles") {
                    for pool in pools.iter_mut().filter_map(Value::as_object_mut) {
                        let running = pool
                            .get("currentOrchestratorVersion")
                            .or_else(|| pool.get("orchestratorVersion"))
                            .cloned();
                        if let Some(running) = running {
                            pool.insert("orchestratorVersion".into(), running);
                        }
                    }
                }
                self.arm
                    .put_cluster(resource_group, name, &body, false)
                    .await
                    .map(drop)
            }
            ClusterChange::UpgradeNodePool { pool, to } => {
                let mut properties = self.existing_pool(resource_group, name, pool).await?;
                properties.insert("orchestratorVersion".into(), Value::String(to.clone()));
                self.arm
                    .put_pool(
                        resource_group,
                        name,
                        pool,
                        &json!({"properties": properties}),
                    )
                    .await
                    .map(drop)
            }
            ClusterChange::ProviderSettings { fields } => {
                // Never planned: observe reports no provider drift yet.
                let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
                Err(ProviderError::new(
                    ErrorKind::InvalidSpec,
                    format!(
                        "the azure provider cannot change {} on an existing cluster",
                        names.join(", ")
                    ),
                ))
            }
        }
    }

    /// The `properties` of agent pool `pool` as ARM holds them, for a
    /// read-modify-write PUT (only `properties` is writable).
    async fn existing_pool(
        &self,
        resource_group: &str,
        name: &str,
        pool: &str,
    ) -> Result<serde_json::Map<String, Value>, ProviderError> {
        let body = self
            .arm
            .get_pool_json(resource_group, name, pool)
            .await?
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::NotFound,
                    format!(
                        "AKS agent pool {resource_group}/{name}/{pool} does not exist (any more)"
                    ),
                )
            })?;
        match body {
            Value::Object(mut body) => match body.remove("properties") {
                Some(Value::Object(properties)) => Ok(properties),
                _ => Err(ProviderError::new(
                    ErrorKind::OperationFailed,
                    format!(
                        "AKS returned agent pool {resource_group}/{name}/{pool} without properties"
                    ),
                )),
            },
            _ => Err(ProviderError::new(
                ErrorKind::OperationFailed,
                format!(
                    "AKS returned agent pool {resource_group}/{name}/{pool} as something other than an object"
                ),
            )),
        }
    }
}

/// Sets a pool's scaling: a pinned `desired` count (or `min == max`) turns
/// the autoscaler off, which AKS then requires without bounds, so the spec's
/// bounds go into tags; otherwise the autoscaler runs within `min..=max`.
fn set_scaling(
    properties: &mut serde_json::Map<String, Value>,
    min: i32,
    max: i32,
    desired: Option<i32>,
    current: Option<i32>,
) {
    let autoscale = desired.is_none() && min < max;
    if autoscale {
        let count = current.unwrap_or(min).clamp(min, max);
        properties.insert("enableAutoScaling".into(), json!(true));
        properties.insert("minCount".into(), json!(min));
        properties.insert("maxCount".into(), json!(max));
        properties.insert("count".into(), json!(count));
    } else {
        properties.insert("enableAutoScaling".into(), json!(false));
        properties.insert("minCount".into(), Value::Null);
        properties.insert("maxCount".into(), Value::Null);
        properties.insert("count".into(), json!(desired.unwrap_or(min)));
    }
    let tags = properties
        .entry("tags")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !tags.is_object() {
        *tags = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(tags) = tags {
        tags.insert(MIN_TAG.into(), json!(min.to_string()));
        tags.insert(MAX_TAG.into(), json!(max.to_string()));
    }
}

/// An agent pool's `properties` for spec pool `pool` in `mode`.
fn pool_properties(pool: &NodePool, mode: &str, version: Option<&str>) -> Value {
    let mut properties = serde_json::Map::new();
    properties.insert("mode".into(), json!(mode));
    properties.insert("vmSize".into(), json!(pool.machine_type));
    properties.insert("osType".into(), json!("Linux"));
    properties.insert("type".into(), json!("VirtualMachineScaleSets"));
    if let Some(version) = version {
        properties.insert("orchestratorVersion".into(), json!(version));
    }
    set_scaling(
        &mut properties,
        pool.min,
        pool.max,
        pool.desired,
        Some(pool.initial_count()),
    );
    Value::Object(properties)
}

/// The body that creates cluster `name` from `obj`.
fn cluster_body(obj: &Cluster, name: &str, region: &str) -> Value {
    let azure = azure_spec(obj).cloned().unwrap_or_default();
    let plugin = match azure.network_plugin.unwrap_or(AksNetworkPlugin::Azure) {
        AksNetworkPlugin::Azure => "azure",
        AksNetworkPlugin::Kubenet => "kubenet",
        AksNetworkPlugin::None => "none",
    };
    let pools: Vec<Value> = obj
        .spec
        .node_pools
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let mode = if i == 0 { "System" } else { "User" };
            let mut profile = pool_properties(pool, mode, obj.spec.version.as_deref());
            if let Value::Object(map) = &mut profile {
                map.insert("name".into(), json!(pool.name));
            }
            profile
        })
        .collect();
    let mut properties = json!({
        "dnsPrefix": azure.dns_prefix.unwrap_or_else(|| name.to_string()),
        "networkProfile": {"networkPlugin": plugin},
        "agentPoolProfiles": pools,
    });
    if let (Some(version), Value::Object(map)) = (&obj.spec.version, &mut properties) {
        map.insert("kubernetesVersion".into(), json!(version));
    }
    json!({
        "location": region,
        "tags": owned_tags(obj, OWNER_TAG),
        "identity": {"type": "SystemAssigned"},
        "properties": properties,
    })
}

fn azure_spec(obj: &Cluster) -> Option<&AzureClusterSpec> {
    obj.spec.provider.as_ref().and_then(|p| p.azure.as_ref())
}

fn missing_region_message() -> String {
    "no region: set spec.region (an Azure location such as westeurope), or spec.defaults.region in the ProviderConfig".to_string()
}

fn missing_resource_group_message() -> String {
    "no resource group: set spec.provider.azure.resourceGroup, or spec.defaults.resourceGroup in the ProviderConfig".to_string()
}

fn is_moving(state: &str) -> bool {
    matches!(
        state,
        "Creating" | "Updating" | "Upgrading" | "Scaling" | "Deleting" | "Starting" | "Stopping"
    )
}

/// The life-cycle state of `cluster`, from its and its pools'
/// `provisioningState` and its `powerState`.
fn state(cluster: &ManagedCluster) -> ExternalState {
    let properties = &cluster.properties;
    match properties.provisioning_state.as_deref() {
        Some("Creating") => return ExternalState::Provisioning,
        Some("Deleting") => return ExternalState::Deleting,
        Some(s) if is_moving(s) || s == "Migrating" || s == "Canceling" => {
            return ExternalState::Updating;
        }
        Some("Failed") => {
            return ExternalState::Failed(
                "AKS reports provisioningState Failed; see the cluster's activity log in Azure"
                    .to_string(),
            );
        }
        Some("Succeeded") => {}
        other => {
            return ExternalState::Degraded(format!(
                "AKS reports provisioningState {}",
                other.unwrap_or("(none)")
            ));
        }
    }
    let pools = properties
        .agent_pool_profiles
        .as_deref()
        .unwrap_or_default();
    let pool_state = |p: &AgentPoolProfile| p.provisioning_state.clone().unwrap_or_default();
    let moving: Vec<String> = pools
        .iter()
        .map(pool_state)
        .filter(|s| is_moving(s))
        .collect();
    if !moving.is_empty() {
        let none_settled = !pools.iter().any(|p| pool_state(p) == "Succeeded");
        // The first pools of a new cluster: still being provisioned.
        if none_settled && moving.iter().all(|s| s == "Creating") {
            return ExternalState::Provisioning;
        }
        // Pools being deleted are not the cluster being deleted.
        return ExternalState::Updating;
    }
    let failed: Vec<String> = pools
        .iter()
        .filter(|p| pool_state(p) == "Failed")
        .map(|p| format!("agent pool {} is Failed", p.name))
        .collect();
    if !failed.is_empty() {
        return ExternalState::Degraded(failed.join("; "));
    }
    if properties
        .power_state
        .as_ref()
        .and_then(|p| p.code.as_deref())
        == Some("Stopped")
    {
        return ExternalState::Degraded(
            "AKS reports the cluster Stopped; start it (az aks start) to use it".to_string(),
        );
    }
    ExternalState::Ready
}

fn observed_pool(pool: &AgentPoolProfile) -> ObservedNodePool {
    let count = pool.count.unwrap_or_default();
    let tag = |name: &str| {
        pool.tags
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.parse().ok())
    };
    let (min, max) = if pool.enable_auto_scaling == Some(true) {
        (
            pool.min_count.unwrap_or(count),
            pool.max_count.unwrap_or(count),
        )
    } else {
        (tag(MIN_TAG).unwrap_or(count), tag(MAX_TAG).unwrap_or(count))
    };
    ObservedNodePool {
        name: pool.name.clone(),
        machine_type: pool.vm_size.clone().unwrap_or_default(),
        version: pool
            .current_orchestrator_version
            .clone()
            .or_else(|| pool.orchestrator_version.clone()),
        min,
        max,
        desired: count,
        // ARM does not report ready nodes; the cluster's API would.
        ready: None,
    }
}

/// Whether `name` is a valid AKS (Linux) agent pool name.
fn valid_pool_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 12
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

#[async_trait]
impl ExternalClient<Cluster> for AksCloud {
    /// AKS cluster names are unique in a resource group: the create is a PUT to the cluster's own URL.
    fn create_keyed_by_name(&self) -> bool {
        true
    }

    async fn observe(
        &self,
        obj: &Cluster,
        name: &str,
    ) -> Result<Option<Observation<ObservedCluster>>, ProviderError> {
        let resource_group = self.resource_group_of(obj)?;
        let Some(cluster) = self.arm.get_cluster(&resource_group, name).await? else {
            return Ok(None);
        };
        let state = state(&cluster);
        let properties = &cluster.properties;
        let reachable = matches!(state, ExternalState::Ready | ExternalState::Updating);
        let connection = match (reachable, properties.fqdn.as_deref()) {
            (true, Some(fqdn)) => self
                .kubeconfig(&resource_group, name, fqdn)
                .await?
                .map(|kubeconfig| ConnectionDetails { kubeconfig }),
            _ => None,
        };
        Ok(Some(Observation {
            state,
            owner: cluster
                .tags
                .as_ref()
                .and_then(|t| t.get(OWNER_TAG))
                .cloned(),
            connection,
            resource: ObservedCluster {
                version: properties
                    .current_kubernetes_version
                    .clone()
                    .or_else(|| properties.kubernetes_version.clone()),
                endpoint: properties.fqdn.as_ref().map(|f| format!("https://{f}")),
                node_pools: properties
                    .agent_pool_profiles
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(observed_pool)
                    .collect(),
                // dnsPrefix and the network plugin cannot change on an AKS
                // cluster; nothing else of spec.provider.azure is read back.
                provider_drift: Vec::new(),
            },
        }))
    }

    async fn create(&self, obj: &Cluster, name: &str) -> Result<(), ProviderError> {
        let resource_group = self.resource_group_of(obj)?;
        let region = self.region_of(obj)?;
        let body = cluster_body(obj, name, &region);
        self.arm
            .put_cluster(&resource_group, name, &body, true)
            .await
            .map(drop)
    }

    async fn update(
        &self,
        obj: &Cluster,
        name: &str,
        changes: &[ClusterChange],
    ) -> Result<(), ProviderError> {
        let resource_group = self.resource_group_of(obj)?;
        for change in changes {
            self.apply(obj, &resource_group, name, change).await?;
        }
        Ok(())
    }

    async fn delete(&self, obj: &Cluster, name: &str) -> Result<(), ProviderError> {
        let resource_group = self.resource_group_of(obj)?;
        // AKS deletes the agent pools with the cluster.
        self.arm.delete_cluster(&resource_group, name).await
    }

    fn validate(&self, obj: &Cluster) -> Result<(), Refusal> {
        let refuse = |field: &str, message: String| Refusal {
            reason: "InvalidSpec",
            field: field.to_string(),
            message,
        };
        refuse_other_clouds(&obj.spec, "azure", "AKS")?;
        if azure_spec(obj).is_none() {
            return Err(refuse(
                "spec.provider.azure",
                "an AKS cluster needs spec.provider.azure (with resourceGroup, unless the ProviderConfig sets defaults.resourceGroup)".to_string(),
            ));
        }
        if azure_spec(obj)
            .and_then(|a| a.resource_group.as_ref())
            .is_none()
            && self.default_resource_group.is_none()
        {
            return Err(refuse(
                "spec.provider.azure.resourceGroup",
                missing_resource_group_message(),
            ));
        }
        if obj.spec.region.is_none() && self.default_region.is_none() {
            return Err(refuse("spec.region", missing_region_message()));
        }
        let Some(system) = obj.spec.node_pools.first() else {
            return Err(refuse(
                "spec.nodePools",
                "an AKS cluster needs at least one node pool; the first is its System pool"
                    .to_string(),
            ));
        };
        if let Some(pool) = obj
            .spec
            .node_pools
            .iter()
            .find(|p| !valid_pool_name(&p.name))
        {
            return Err(refuse(
                &format!("spec.nodePools[{}].name", pool.name),
                format!(
                    "AKS agent pool names are 1 to 12 lowercase letters and digits, starting with a letter; rename node pool {}",
                    pool.name
                ),
            ));
        }
        if system.min < 1 {
            return Err(refuse(
                &format!("spec.nodePools[{}].min", system.name),
                format!(
                    "node pool {} is the cluster's System pool (the first) and needs min of at least 1",
                    system.name
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(spec: Value) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": "c1", "namespace": "team-a"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn config(defaults: Value) -> ProviderConfig {
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1",
            "kind": "ProviderConfig",
            "metadata": {"name": "azure"},
            "spec": {"provider": "azure", "defaults": defaults},
        }))
        .unwrap()
    }

    const SECRET: &str = "Qx8Q~not-a-real-secret";

    fn secret() -> Credentials {
        Credentials::Secret(
            format!(
                r#"{{"tenantId":"t","clientId":"c","clientSecret":"{SECRET}","subscriptionId":"s"}}"#
            )
            .into_bytes(),
        )
    }

    fn managed(state: &str, power: &str, pools: &[(&str, &str)]) -> ManagedCluster {
        serde_json::from_value(json!({
            "properties": {
                "provisioningState": state,
                "powerState": {"code": power},
                "agentPoolProfiles": pools.iter().map(|(name, state)| json!({"name": name, "provisioningState": state})).collect::<Vec<_>>(),
            }
        }))
        .unwrap()
    }

    #[test]
    fn cluster_states_map_to_external_states() {
        let ok = [("system", "Succeeded")];
        assert_eq!(
            state(&managed("Creating", "Running", &[])),
            ExternalState::Provisioning
        );
        assert_eq!(
            state(&managed("Succeeded", "Running", &ok)),
            ExternalState::Ready
        );
        for moving in ["Updating", "Upgrading", "Scaling"] {
            assert_eq!(
                state(&managed(moving, "Running", &ok)),
                ExternalState::Updating
            );
        }
        assert_eq!(
            state(&managed("Deleting", "Running", &ok)),
            ExternalState::Deleting
        );
        assert!(matches!(
            state(&managed("Failed", "Running", &ok)),
            ExternalState::Failed(_)
        ));
        assert!(matches!(
            state(&managed("Succeeded", "Stopped", &ok)),
            ExternalState::Degraded(m) if m.contains("Stopped")
        ));
    }

    #[test]
    fn moving_pools_make_the_cluster_busy_but_never_deleting() {
        assert_eq!(
            state(&managed("Succeeded", "Running", &[("system", "Creating")])),
            ExternalState::Provisioning
        );
        assert_eq!(
            state(&managed(
                "Succeeded",
                "Running",
                &[("system", "Succeeded"), ("gpu", "Creating")]
            )),
            ExternalState::Updating
        );
        assert_eq!(
            state(&managed(
                "Succeeded",
                "Running",
                &[("system", "Succeeded"), ("gpu", "Deleting")]
            )),
            ExternalState::Updating
        );
        assert_eq!(
            state(&managed(
                "Succeeded",
                "Running",
                &[("system", "Succeeded"), ("gpu", "Failed")]
            )),
            ExternalState::Degraded("agent pool gpu is Failed".into())
        );
    }

    #[test]
    fn pools_report_autoscaler_bounds_or_tagged_bounds() {
        let auto: AgentPoolProfile = serde_json::from_value(json!({
            "name": "system", "vmSize": "Standard_D4s_v5", "count": 2,
            "enableAutoScaling": true, "minCount": 1, "maxCount": 5,
            "orchestratorVersion": "1.30", "currentOrchestratorVersion": "1.30.5",
        }))
        .unwrap();
        assert_eq!(
            observed_pool(&auto),
            ObservedNodePool {
                name: "system".into(),
                machine_type: "Standard_D4s_v5".into(),
                version: Some("1.30.5".into()),
                min: 1,
                max: 5,
                desired: 2,
                ready: None,
            }
        );
        let fixed: AgentPoolProfile = serde_json::from_value(json!({
            "name": "work", "vmSize": "Standard_D4s_v5", "count": 3,
            "enableAutoScaling": false, "tags": {MIN_TAG: "1", MAX_TAG: "5"},
        }))
        .unwrap();
        let seen = observed_pool(&fixed);
        assert_eq!((seen.min, seen.max, seen.desired), (1, 5, 3));
        let untagged: AgentPoolProfile =
            serde_json::from_value(json!({"name": "x", "count": 4})).unwrap();
        let seen = observed_pool(&untagged);
        assert_eq!((seen.min, seen.max, seen.desired), (4, 4, 4));
    }

    #[test]
    fn scaling_pins_a_count_or_runs_the_autoscaler() {
        let mut props = serde_json::Map::new();
        set_scaling(&mut props, 1, 5, Some(3), Some(2));
        assert_eq!(props["enableAutoScaling"], json!(false));
        assert_eq!(props["count"], json!(3));
        assert_eq!(props["minCount"], Value::Null);
        assert_eq!(props["tags"][MIN_TAG], json!("1"));
        assert_eq!(props["tags"][MAX_TAG], json!("5"));

        set_scaling(&mut props, 2, 4, None, Some(7));
        assert_eq!(props["enableAutoScaling"], json!(true));
        assert_eq!(
            (&props["minCount"], &props["maxCount"], &props["count"]),
            (&json!(2), &json!(4), &json!(4))
        );
    }

    #[test]
    fn the_create_body_has_a_system_pool_the_owner_and_the_defaults() {
        let obj = cluster(json!({
            "providerConfigRef": {"name": "azure"},
            "version": "1.30",
            "tags": {"team": "a", OWNER_TAG: "someone/else"},
            "provider": {"azure": {"resourceGroup": "rg"}},
            "nodePools": [
                {"name": "system", "machineType": "Standard_D4s_v5", "min": 1, "max": 3},
                {"name": "gpu", "machineType": "Standard_NC6s_v3", "min": 0, "max": 2, "desired": 1},
            ],
        }));
        let body = cluster_body(&obj, "c1", "westeurope");
        assert_eq!(body["location"], "westeurope");
        assert_eq!(body["identity"]["type"], "SystemAssigned");
        assert_eq!(body["tags"][OWNER_TAG], "team-a/c1");
        assert_eq!(body["tags"]["team"], "a");
        let props = &body["properties"];
        assert_eq!(props["dnsPrefix"], "c1");
        assert_eq!(props["kubernetesVersion"], "1.30");
        assert_eq!(props["networkProfile"]["networkPlugin"], "azure");
        let pools = props["agentPoolProfiles"].as_array().unwrap();
        assert_eq!(pools[0]["name"], "system");
        assert_eq!(pools[0]["mode"], "System");
        assert_eq!(pools[0]["enableAutoScaling"], true);
        assert_eq!(pools[0]["count"], 1);
        assert_eq!(pools[1]["mode"], "User");
        assert_eq!(pools[1]["count"], 1);
        assert_eq!(pools[1]["orchestratorVersion"], "1.30");
    }

    #[tokio::test]
    async fn validate_needs_an_azure_block_a_resource_group_a_region_and_pools() {
        let cloud = AksCloud::connect(&config(json!({"region": "westeurope"})), secret()).unwrap();
        let pools =
            json!([{"name": "system", "machineType": "Standard_D4s_v5", "min": 1, "max": 3}]);
        let field = |spec: Value| cloud.validate(&cluster(spec)).map_err(|r| r.field);

        assert_eq!(
            field(json!({"providerConfigRef": {"name": "azure"}, "nodePools": pools})),
            Err("spec.provider.azure".into())
        );
        assert_eq!(
            field(
                json!({"providerConfigRef": {"name": "azure"}, "provider": {"gcp": {}}, "nodePools": pools})
            ),
            Err("spec.provider.azure".into())
        );
        assert_eq!(
            field(
                json!({"providerConfigRef": {"name": "azure"}, "provider": {"azure": {}}, "nodePools": pools})
            ),
            Err("spec.provider.azure.resourceGroup".into())
        );
        let good = json!({"providerConfigRef": {"name": "azure"}, "provider": {"azure": {"resourceGroup": "rg"}}, "nodePools": pools});
        assert_eq!(field(good.clone()), Ok(()));
        let mut no_pools = good.clone();
        no_pools["nodePools"] = json!([]);
        assert_eq!(field(no_pools), Err("spec.nodePools".into()));
        let mut dashed = good.clone();
        dashed["nodePools"][0]["name"] = json!("sys-pool");
        assert_eq!(field(dashed), Err("spec.nodePools[sys-pool].name".into()));
        let mut empty_system = good.clone();
        empty_system["nodePools"][0]["min"] = json!(0);
        assert_eq!(
            field(empty_system),
            Err("spec.nodePools[system].min".into())
        );

        let bare = AksCloud::connect(&config(json!({"resourceGroup": "rg"})), secret()).unwrap();
        let spec = json!({"providerConfigRef": {"name": "azure"}, "provider": {"azure": {}}, "nodePools": pools});
        assert_eq!(
            bare.validate(&cluster(spec.clone())).unwrap_err().field,
            "spec.region"
        );
        let mut regional = spec;
        regional["region"] = json!("westeurope");
        assert_eq!(bare.validate(&cluster(regional)), Ok(()));
    }

    #[tokio::test]
    async fn ambient_credentials_are_not_supported_yet() {
        let error = AksCloud::connect(&config(json!({})), Credentials::Ambient).unwrap_err();
        assert_eq!(error.kind, ErrorKind::AuthFailed);
        assert!(error.message.contains("not support"), "{}", error.message);
    }

    #[tokio::test]
    async fn the_secret_never_prints() {
        let cloud = AksCloud::connect(&config(json!({})), secret()).unwrap();
        let shown = format!("{cloud:?}");
        assert!(!shown.contains(SECRET), "{shown}");
    }
}

#[cfg(test)]
mod machine_sizes {
    use super::*;

    #[test]
    fn azure_sizes_are_read_from_family_and_vcpus() {
        let aks = AksFactory::new();
        assert_eq!(
            aks.machine_size("Standard_D4s_v5"),
            Some(MachineSize::new(4, 16))
        );
        assert_eq!(
            aks.machine_size("Standard_E8as_v5"),
            Some(MachineSize::new(8, 64))
        );
        assert_eq!(aks.machine_size("Standard_NC6"), None);
    }
}
