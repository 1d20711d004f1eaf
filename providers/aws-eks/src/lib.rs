//! The `aws` provider: each Cluster is an Amazon EKS cluster and each node
//! pool an EKS managed node group, driven through the official AWS SDK.
//!
//! Who owns a cluster is its `fleetforge.dev/owner` tag. Node groups need an
//! ACTIVE cluster, so `create` makes only the control plane: the spec's pools
//! then show up as absent and the engine's plan adds them with `update`.
//! Calls return as soon as AWS accepted them; the engine polls.

pub mod connection;
pub mod credentials;
pub mod errors;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_eks::config::retry::RetryConfig;
use aws_sdk_eks::config::timeout::TimeoutConfig;
use aws_sdk_eks::config::{Region, SharedHttpClient};
use aws_sdk_eks::types::{
    ClusterStatus, Nodegroup, NodegroupScalingConfig, NodegroupStatus, VpcConfigRequest,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use fleetforge_api::cluster::AwsClusterSpec;
use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_core::cluster::{
    ClusterChange, FieldDiff, ObservedCluster, ObservedNodePool, owned_tags, refuse_other_clouds,
};
use fleetforge_core::{
    ConnectionDetails, Credentials, ErrorKind, ExternalClient, ExternalState, MachineSize,
    Observation, ProviderError, ProviderFactory, Refusal,
};

use crate::errors::sdk_error;

/// The tag naming the object that created a cluster or node group, as
/// `<namespace>/<name>`.
pub const OWNER_TAG: &str = "fleetforge.dev/owner";

/// How long one EKS call may take, retries excluded (the engine retries).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a computed token is handed out again. EKS accepts a token for
/// 15 minutes after signing; reusing it for 10 keeps the kubeconfig (and its
/// Secret) stable across polls and leaves readers at least 5 minutes.
const TOKEN_REUSE: Duration = Duration::from_secs(600);

const PUBLIC_ACCESS_FIELD: &str = "provider.aws.endpointPublicAccess";
const PRIVATE_ACCESS_FIELD: &str = "provider.aws.endpointPrivateAccess";

/// Builds an [`EksCloud`] per ProviderConfig.
#[derive(Debug, Default)]
pub struct EksFactory;

impl EksFactory {
    /// A factory.
    pub fn new() -> Arc<Self> {
        Arc::new(Self)
    }
}

#[async_trait]
impl ProviderFactory<Cluster> for EksFactory {
    async fn connect(
        &self,
        config: &ProviderConfig,
        credentials: Credentials,
    ) -> Result<Arc<dyn ExternalClient<Cluster>>, ProviderError> {
        Ok(Arc::new(EksCloud::connect(config, credentials).await?))
    }

    /// `m7i.large`, `c6g.2xlarge`, `r7i.xlarge`.
    fn machine_size(&self, machine_type: &str) -> Option<MachineSize> {
        let (family, size) = machine_type.split_once('.')?;
        let vcpus: u64 = match size {
            "medium" => 1,
            "large" => 2,
            "xlarge" => 4,
            other => other.strip_suffix("xlarge")?.parse::<u64>().ok()? * 4,
        };
        let per = match family.chars().next()? {
            'm' | 't' => 4,
            'c' => 2,
            'r' => 8,
            _ => return None,
        };
        Some(MachineSize::new(vcpus, vcpus * per))
    }
}

/// The EKS clusters of one AWS account (one ProviderConfig), in any region.
pub struct EksCloud {
    endpoint: Option<String>,
    default_region: Option<String>,
    credentials: SharedCredentialsProvider,
    http: SharedHttpClient,
    /// One SDK client per region, made on first use.
    clients: Mutex<HashMap<String, aws_sdk_eks::Client>>,
    /// The last token per (region, cluster), with when it was made.
    tokens: Mutex<HashMap<(String, String), (Instant, String)>>,
}

impl fmt::Debug for EksCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EksCloud")
            .field("endpoint", &self.endpoint)
            .field("default_region", &self.default_region)
            .finish_non_exhaustive()
    }
}

impl EksCloud {
    /// A client for the account `config` describes: its `endpoint` (an
    /// emulator, a private endpoint), its default region, and `credentials`
    /// (static keys from a Secret, or the ambient AWS credential chain).
    pub async fn connect(
        config: &ProviderConfig,
        credentials: Credentials,
    ) -> Result<Self, ProviderError> {
        // rustls with ring, like the rest of the workspace, instead of the
        // SDK's default aws-lc build.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let default_region = config.spec.defaults.as_ref().and_then(|d| d.region.clone());
        let credentials = match credentials {
            Credentials::Secret(bytes) => {
                let keys = credentials::parse(&bytes)?;
                SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
                    keys.access_key_id,
                    keys.secret_access_key,
                    keys.session_token,
                    None,
                    "fleetforge-secret",
                ))
            }
            Credentials::Ambient => {
                let mut loader =
                    aws_config::defaults(BehaviorVersion::latest()).http_client(http.clone());
                if let Some(region) = &default_region {
                    loader = loader.region(Region::new(region.clone()));
                }
                loader.load().await.credentials_provider().ok_or_else(|| {
                    ProviderError::new(
                        ErrorKind::AuthFailed,
                        "no ambient AWS credentials were found (environment, profile, web identity, container or instance role); give the controller an AWS identity or use credentials from a Secret",
                    )
                })?
            }
        };
        Ok(Self {
            endpoint: config.spec.endpoint.clone(),
            default_region,
            credentials,
            http,
            clients: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The region `obj` lives in: its own, else the ProviderConfig's default.
    fn region_of(&self, obj: &Cluster) -> Result<String, ProviderError> {
        obj.spec
            .region
            .clone()
            .or_else(|| self.default_region.clone())
            .ok_or_else(|| ProviderError::new(ErrorKind::InvalidSpec, missing_region_message()))
    }

    /// The SDK client for `region`.
    pub fn client(&self, region: &str) -> aws_sdk_eks::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let mut builder = aws_sdk_eks::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .region(Region::new(region.to_string()))
                    .credentials_provider(self.credentials.clone())
                    .http_client(self.http.clone())
                    // The engine owns backoff and rate limits: one engine
                    // call is one AWS call.
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .operation_timeout(CALL_TIMEOUT)
                            .build(),
                    );
                if let Some(endpoint) = &self.endpoint {
                    builder = builder.endpoint_url(endpoint);
                }
                aws_sdk_eks::Client::from_conf(builder.build())
            })
            .clone()
    }

    /// Every node group of cluster `name`, described.
    async fn node_groups(
        &self,
        client: &aws_sdk_eks::Client,
        name: &str,
    ) -> Result<Vec<Nodegroup>, ProviderError> {
        let mut names = Vec::new();
        let mut next_token = None;
        loop {
            let page = client
                .list_nodegroups()
                .cluster_name(name)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("ListNodegroups {name}"), &e))?;
            names.extend(page.nodegroups().iter().cloned());
            next_token = page.next_token().map(str::to_string);
            if next_token.is_none() {
                break;
            }
        }
        let mut groups = Vec::with_capacity(names.len());
        for group in names {
            match client
                .describe_nodegroup()
                .cluster_name(name)
                .nodegroup_name(&group)
                .send()
                .await
            {
                Ok(out) => groups.extend(out.nodegroup),
                // Deleted between the list and the describe.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_not_found_exception()) => {}
                Err(e) => return Err(sdk_error(&format!("DescribeNodegroup {name}/{group}"), &e)),
            }
        }
        Ok(groups)
    }

    /// A bearer token for cluster `name`, reused while it is fresh.
    async fn token(&self, region: &str, name: &str) -> Result<String, ProviderError> {
        let key = (region.to_string(), name.to_string());
        if let Some((made, token)) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && made.elapsed() < TOKEN_REUSE
        {
            return Ok(token.clone());
        }
        let credentials = self.credentials.provide_credentials().await.map_err(|e| {
            ProviderError::new(
                ErrorKind::AuthFailed,
                format!(
                    "could not load the AWS credentials to sign the cluster's access token ({e}); check the ProviderConfig's credentials"
                ),
            )
        })?;
        let token = connection::token(name, region, &credentials, SystemTime::now())?;
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), token.clone()));
        Ok(token)
    }

    async fn apply(
        &self,
        client: &aws_sdk_eks::Client,
        obj: &Cluster,
        name: &str,
        change: &ClusterChange,
    ) -> Result<(), ProviderError> {
        match change {
            ClusterChange::AddNodePool(pool) => {
                let aws = aws_spec(obj)?;
                let result = client
                    .create_nodegroup()
                    .cluster_name(name)
                    .nodegroup_name(&pool.name)
                    .node_role(&aws.node_role_arn)
                    .set_subnets(Some(aws.subnet_ids.clone()))
                    .scaling_config(scaling(pool.min, pool.max, pool.initial_count()))
                    .instance_types(&pool.machine_type)
                    // The plan adds pools only once the control plane runs
                    // the spec's version; without one, EKS uses the
                    // cluster's.
                    .set_version(obj.spec.version.clone())
                    .set_tags(Some(owned_tags(obj, OWNER_TAG)))
                    .send()
                    .await;
                match result {
                    Ok(_) => Ok(()),
                    // An earlier attempt created it.
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_resource_in_use_exception()) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(sdk_error(
                        &format!("CreateNodegroup {name}/{}", pool.name),
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
                let desired = match desired {
                    Some(desired) => *desired,
                    // EKS needs a size within the new bounds: keep the
                    // current one, moved into them.
                    None => {
                        let current = client
                            .describe_nodegroup()
                            .cluster_name(name)
                            .nodegroup_name(pool)
                            .send()
                            .await
                            .map_err(|e| {
                                sdk_error(&format!("DescribeNodegroup {name}/{pool}"), &e)
                            })?
                            .nodegroup
                            .and_then(|g| g.scaling_config?.desired_size)
                            .unwrap_or(*min);
                        current.clamp(*min, (*max).max(*min))
                    }
                };
                client
                    .update_nodegroup_config()
                    .cluster_name(name)
                    .nodegroup_name(pool)
                    .scaling_config(scaling(*min, *max, desired))
                    .send()
                    .await
                    .map_err(|e| sdk_error(&format!("UpdateNodegroupConfig {name}/{pool}"), &e))?;
                Ok(())
            }
            ClusterChange::RemoveNodePool { pool } => {
                let result = client
                    .delete_nodegroup()
                    .cluster_name(name)
                    .nodegroup_name(pool)
                    .send()
                    .await;
                match result {
                    Ok(_) => Ok(()),
                    // Already gone, or already being deleted.
                    Err(e)
                        if e.as_service_error().is_some_and(|e| {
                            e.is_resource_not_found_exception() || e.is_resource_in_use_exception()
                        }) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(sdk_error(&format!("DeleteNodegroup {name}/{pool}"), &e)),
                }
            }
            ClusterChange::UpgradeControlPlane { to } => {
                client
                    .update_cluster_version()
                    .name(name)
                    .version(to)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&format!("UpdateClusterVersion {name} to {to}"), &e))?;
                Ok(())
            }
            ClusterChange::UpgradeNodePool { pool, to } => {
                client
                    .update_nodegroup_version()
                    .cluster_name(name)
                    .nodegroup_name(pool)
                    .version(to)
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(&format!("UpdateNodegroupVersion {name}/{pool} to {to}"), &e)
                    })?;
                Ok(())
            }
            ClusterChange::ProviderSettings { .. } => {
                let aws = aws_spec(obj)?;
                client
                    .update_cluster_config()
                    .name(name)
                    .resources_vpc_config(
                        VpcConfigRequest::builder()
                            .endpoint_public_access(aws.endpoint_public_access)
                            .endpoint_private_access(aws.endpoint_private_access)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| sdk_error(&format!("UpdateClusterConfig {name}"), &e))?;
                Ok(())
            }
        }
    }
}

fn scaling(min: i32, max: i32, desired: i32) -> NodegroupScalingConfig {
    NodegroupScalingConfig::builder()
        .min_size(min)
        .max_size(max)
        .desired_size(desired)
        .build()
}

fn missing_region_message() -> String {
    "no region: set spec.region, or spec.defaults.region in the ProviderConfig".to_string()
}

fn aws_spec(obj: &Cluster) -> Result<&AwsClusterSpec, ProviderError> {
    obj.spec
        .provider
        .as_ref()
        .and_then(|p| p.aws.as_ref())
        .ok_or_else(|| ProviderError::new(ErrorKind::InvalidSpec, missing_aws_message()))
}

fn missing_aws_message() -> String {
    "an EKS cluster needs spec.provider.aws with roleArn, nodeRoleArn and subnetIds".to_string()
}

fn joined_issues<'a>(messages: impl Iterator<Item = Option<&'a str>>) -> String {
    messages.flatten().collect::<Vec<_>>().join("; ")
}

/// The life-cycle state of a cluster in status `cluster` with `groups`.
fn state(
    status: Option<&ClusterStatus>,
    cluster_issues: &str,
    groups: &[Nodegroup],
) -> ExternalState {
    let why = |default: String| {
        if cluster_issues.is_empty() {
            default
        } else {
            cluster_issues.to_string()
        }
    };
    match status {
        Some(ClusterStatus::Creating | ClusterStatus::Pending) => {
            return ExternalState::Provisioning;
        }
        Some(ClusterStatus::Deleting) => return ExternalState::Deleting,
        Some(ClusterStatus::Updating) => return ExternalState::Updating,
        Some(ClusterStatus::Failed) => {
            return ExternalState::Failed(why("EKS reports the cluster FAILED".to_string()));
        }
        Some(ClusterStatus::Active) => {}
        other => {
            let shown = other.map_or("no status", |s| s.as_str());
            return ExternalState::Degraded(why(format!("EKS reports the cluster as {shown}")));
        }
    }
    let status_of = |g: &Nodegroup| g.status().cloned();
    let moving: Vec<NodegroupStatus> = groups
        .iter()
        .filter_map(status_of)
        .filter(|s| {
            matches!(
                s,
                NodegroupStatus::Creating | NodegroupStatus::Updating | NodegroupStatus::Deleting
            )
        })
        .collect();
    if !moving.is_empty() {
        let none_active = !groups
            .iter()
            .any(|g| g.status() == Some(&NodegroupStatus::Active));
        // The first pools of a new cluster: still being provisioned.
        if none_active && moving.iter().all(|s| *s == NodegroupStatus::Creating) {
            return ExternalState::Provisioning;
        }
        return ExternalState::Updating;
    }
    let broken: Vec<String> = groups
        .iter()
        .filter(|g| {
            matches!(
                g.status(),
                Some(
                    NodegroupStatus::CreateFailed
                        | NodegroupStatus::DeleteFailed
                        | NodegroupStatus::Degraded
                )
            )
        })
        .map(|g| {
            let issues = joined_issues(
                g.health()
                    .map(|h| h.issues())
                    .unwrap_or_default()
                    .iter()
                    .map(|i| i.message()),
            );
            let status = g.status().map_or("", |s| s.as_str());
            let name = g.nodegroup_name().unwrap_or_default();
            if issues.is_empty() {
                format!("node group {name} is {status}")
            } else {
                format!("node group {name} is {status}: {issues}")
            }
        })
        .collect();
    if !broken.is_empty() {
        return ExternalState::Degraded(broken.join("; "));
    }
    ExternalState::Ready
}

fn observed_pool(group: &Nodegroup) -> ObservedNodePool {
    let scaling = group.scaling_config();
    ObservedNodePool {
        name: group.nodegroup_name().unwrap_or_default().to_string(),
        machine_type: group.instance_types().first().cloned().unwrap_or_default(),
        version: group.version().map(str::to_string),
        min: scaling.and_then(|s| s.min_size()).unwrap_or_default(),
        max: scaling.and_then(|s| s.max_size()).unwrap_or_default(),
        desired: scaling.and_then(|s| s.desired_size()).unwrap_or_default(),
        // EKS does not report ready nodes; the cluster's API would.
        ready: None,
    }
}

/// Endpoint access settings that differ from the spec.
fn endpoint_drift(aws: &AwsClusterSpec, cluster: &aws_sdk_eks::types::Cluster) -> Vec<FieldDiff> {
    let Some(vpc) = cluster.resources_vpc_config() else {
        return Vec::new();
    };
    let mut drift = Vec::new();
    if vpc.endpoint_public_access() != aws.endpoint_public_access {
        drift.push(FieldDiff::new(
            PUBLIC_ACCESS_FIELD,
            aws.endpoint_public_access,
            vpc.endpoint_public_access(),
        ));
    }
    if vpc.endpoint_private_access() != aws.endpoint_private_access {
        drift.push(FieldDiff::new(
            PRIVATE_ACCESS_FIELD,
            aws.endpoint_private_access,
            vpc.endpoint_private_access(),
        ));
    }
    drift
}

#[async_trait]
impl ExternalClient<Cluster> for EksCloud {
    /// EKS cluster names are unique in a region: CreateCluster for a taken name fails with ResourceInUseException.
    fn create_keyed_by_name(&self) -> bool {
        true
    }

    async fn observe(
        &self,
        obj: &Cluster,
        name: &str,
    ) -> Result<Option<Observation<ObservedCluster>>, ProviderError> {
        let region = self.region_of(obj)?;
        let client = self.client(&region);
        let cluster = match client.describe_cluster().name(name).send().await {
            Ok(out) => out.cluster,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                None
            }
            Err(e) => return Err(sdk_error(&format!("DescribeCluster {name}"), &e)),
        };
        let Some(cluster) = cluster else {
            return Ok(None);
        };
        let groups = self.node_groups(&client, name).await?;
        let issues = joined_issues(
            cluster
                .health()
                .map(|h| h.issues())
                .unwrap_or_default()
                .iter()
                .map(|i| i.message()),
        );
        let state = state(cluster.status(), &issues, &groups);
        let reachable = matches!(
            cluster.status(),
            Some(ClusterStatus::Active | ClusterStatus::Updating)
        );
        let ca = cluster.certificate_authority().and_then(|c| c.data());
        let connection = match (reachable, cluster.endpoint(), ca) {
            (true, Some(server), Some(ca)) => {
                let token = self.token(&region, name).await?;
                Some(ConnectionDetails {
                    kubeconfig: ConnectionDetails::bearer(name, server, ca, &token).kubeconfig,
                })
            }
            _ => None,
        };
        let provider_drift = obj
            .spec
            .provider
            .as_ref()
            .and_then(|p| p.aws.as_ref())
            .map(|aws| endpoint_drift(aws, &cluster))
            .unwrap_or_default();
        Ok(Some(Observation {
            state,
            owner: cluster.tags().and_then(|t| t.get(OWNER_TAG)).cloned(),
            connection,
            resource: ObservedCluster {
                version: cluster.version().map(str::to_string),
                endpoint: cluster.endpoint().map(str::to_string),
                node_pools: groups.iter().map(observed_pool).collect(),
                provider_drift,
            },
        }))
    }

    async fn create(&self, obj: &Cluster, name: &str) -> Result<(), ProviderError> {
        let aws = aws_spec(obj)?;
        let region = self.region_of(obj)?;
        let mut vpc = VpcConfigRequest::builder()
            .set_subnet_ids(Some(aws.subnet_ids.clone()))
            .endpoint_public_access(aws.endpoint_public_access)
            .endpoint_private_access(aws.endpoint_private_access);
        if !aws.security_group_ids.is_empty() {
            vpc = vpc.set_security_group_ids(Some(aws.security_group_ids.clone()));
        }
        self.client(&region)
            .create_cluster()
            .name(name)
            .set_version(obj.spec.version.clone())
            .role_arn(&aws.role_arn)
            .resources_vpc_config(vpc.build())
            .set_tags(Some(owned_tags(obj, OWNER_TAG)))
            .send()
            .await
            .map_err(|e| sdk_error(&format!("CreateCluster {name} in {region}"), &e))?;
        Ok(())
    }

    async fn update(
        &self,
        obj: &Cluster,
        name: &str,
        changes: &[ClusterChange],
    ) -> Result<(), ProviderError> {
        let client = self.client(&self.region_of(obj)?);
        for change in changes {
            self.apply(&client, obj, name, change).await?;
        }
        Ok(())
    }

    async fn delete(&self, obj: &Cluster, name: &str) -> Result<(), ProviderError> {
        let client = self.client(&self.region_of(obj)?);
        let status = match client.describe_cluster().name(name).send().await {
            Ok(out) => out.cluster.and_then(|c| c.status),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                return Ok(());
            }
            Err(e) => return Err(sdk_error(&format!("DescribeCluster {name}"), &e)),
        };
        if status == Some(ClusterStatus::Deleting) {
            return Ok(());
        }
        let groups = client
            .list_nodegroups()
            .cluster_name(name)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("ListNodegroups {name}"), &e))?
            .nodegroups
            .unwrap_or_default();
        // A cluster with node groups cannot be deleted: delete them first and
        // come back (the engine calls again while the cluster is not yet
        // Deleting).
        if !groups.is_empty() {
            for pool in groups {
                self.apply(&client, obj, name, &ClusterChange::RemoveNodePool { pool })
                    .await?;
            }
            return Ok(());
        }
        match client.delete_cluster().name(name).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|e| {
                    e.is_resource_not_found_exception() || e.is_resource_in_use_exception()
                }) =>
            {
                // Gone already; or busy (a node group appeared, an update
                // runs): the next poll tries again.
                Ok(())
            }
            Err(e) => Err(sdk_error(&format!("DeleteCluster {name}"), &e)),
        }
    }

    fn validate(&self, obj: &Cluster) -> Result<(), Refusal> {
        let refuse = |field: &str, message: String| Refusal {
            reason: "InvalidSpec",
            field: field.to_string(),
            message,
        };
        refuse_other_clouds(&obj.spec, "aws", "EKS")?;
        let block = obj.spec.provider.as_ref();
        if block.and_then(|b| b.aws.as_ref()).is_none() {
            return Err(refuse("spec.provider.aws", missing_aws_message()));
        }
        if obj.spec.region.is_none() && self.default_region.is_none() {
            return Err(refuse("spec.region", missing_region_message()));
        }
        if let Some(pool) = obj.spec.node_pools.iter().find(|p| p.max < 1) {
            return Err(refuse(
                &format!("spec.nodePools[{}].max", pool.name),
                format!(
                    "an EKS node group needs max of at least 1 (node pool {} has {}); raise max, or remove the pool",
                    pool.name, pool.max
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_eks::types::{Issue, NodegroupHealth};

    fn group(name: &str, status: NodegroupStatus) -> Nodegroup {
        Nodegroup::builder()
            .nodegroup_name(name)
            .status(status)
            .instance_types("m7i.large")
            .version("1.33")
            .scaling_config(scaling(1, 3, 2))
            .build()
    }

    fn cluster(value: serde_json::Value) -> Cluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetforge.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": "c1", "namespace": "team-a"},
            "spec": value,
        }))
        .unwrap()
    }

    fn aws() -> serde_json::Value {
        serde_json::json!({
            "roleArn": "arn:aws:iam::123456789012:role/eks",
            "nodeRoleArn": "arn:aws:iam::123456789012:role/nodes",
            "subnetIds": ["subnet-a", "subnet-b"],
        })
    }

    async fn cloud(default_region: Option<&str>) -> EksCloud {
        let mut spec = serde_json::json!({"provider": "aws"});
        if let Some(region) = default_region {
            spec["defaults"] = serde_json::json!({"region": region});
        }
        let config: ProviderConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetforge.dev/v1alpha1",
            "kind": "ProviderConfig",
            "metadata": {"name": "aws"},
            "spec": spec,
        }))
        .unwrap();
        EksCloud::connect(
            &config,
            Credentials::Secret(b"aws_access_key_id=A\naws_secret_access_key=B".to_vec()),
        )
        .await
        .unwrap()
    }

    #[test]
    fn cluster_states_map_to_external_states() {
        let active = Some(&ClusterStatus::Active);
        assert_eq!(
            state(Some(&ClusterStatus::Creating), "", &[]),
            ExternalState::Provisioning
        );
        assert_eq!(
            state(Some(&ClusterStatus::Updating), "", &[]),
            ExternalState::Updating
        );
        assert_eq!(
            state(Some(&ClusterStatus::Deleting), "", &[]),
            ExternalState::Deleting
        );
        assert_eq!(
            state(Some(&ClusterStatus::Failed), "subnet-a is gone", &[]),
            ExternalState::Failed("subnet-a is gone".into())
        );
        assert_eq!(state(active, "", &[]), ExternalState::Ready);
        assert_eq!(
            state(active, "", &[group("a", NodegroupStatus::Active)]),
            ExternalState::Ready
        );
    }

    #[test]
    fn moving_node_groups_make_the_cluster_busy() {
        let active = Some(&ClusterStatus::Active);
        assert_eq!(
            state(active, "", &[group("a", NodegroupStatus::Creating)]),
            ExternalState::Provisioning
        );
        assert_eq!(
            state(
                active,
                "",
                &[
                    group("a", NodegroupStatus::Active),
                    group("b", NodegroupStatus::Creating)
                ]
            ),
            ExternalState::Updating
        );
        // Deleting node groups is not deleting the cluster: the engine must
        // call delete again to remove the cluster once they are gone.
        assert_eq!(
            state(active, "", &[group("a", NodegroupStatus::Deleting)]),
            ExternalState::Updating
        );
    }

    #[test]
    fn a_failed_node_group_degrades_the_cluster_with_its_issues() {
        let mut broken = group("gpu", NodegroupStatus::CreateFailed);
        broken.health = Some(
            NodegroupHealth::builder()
                .issues(
                    Issue::builder()
                        .message("no capacity for p5.48xlarge")
                        .build(),
                )
                .build(),
        );
        assert_eq!(
            state(Some(&ClusterStatus::Active), "", &[broken]),
            ExternalState::Degraded(
                "node group gpu is CREATE_FAILED: no capacity for p5.48xlarge".into()
            )
        );
    }

    #[test]
    fn a_node_group_is_reported_as_a_pool() {
        let pool = observed_pool(&group("workers", NodegroupStatus::Active));
        assert_eq!(
            pool,
            ObservedNodePool {
                name: "workers".into(),
                machine_type: "m7i.large".into(),
                version: Some("1.33".into()),
                min: 1,
                max: 3,
                desired: 2,
                ready: None,
            }
        );
    }

    #[test]
    fn tags_carry_the_owner_which_the_spec_cannot_override() {
        let obj = cluster(serde_json::json!({
            "providerConfigRef": {"name": "aws"},
            "tags": {"team": "a", OWNER_TAG: "someone/else"},
        }));
        let tags = owned_tags(&obj, OWNER_TAG);
        assert_eq!(tags["team"], "a");
        assert_eq!(tags[OWNER_TAG], "team-a/c1");
    }

    #[tokio::test]
    async fn validate_needs_an_aws_block_and_a_region() {
        let with_region = cloud(Some("us-east-1")).await;
        let refusal = with_region
            .validate(&cluster(
                serde_json::json!({"providerConfigRef": {"name": "aws"}}),
            ))
            .unwrap_err();
        assert_eq!(
            (refusal.reason, refusal.field.as_str()),
            ("InvalidSpec", "spec.provider.aws")
        );

        let refusal = with_region
            .validate(&cluster(serde_json::json!({
                "providerConfigRef": {"name": "aws"},
                "provider": {"gcp": {}},
            })))
            .unwrap_err();
        assert_eq!(refusal.field, "spec.provider.aws");
        assert!(
            refusal.message.contains("spec.provider.gcp"),
            "{}",
            refusal.message
        );

        let good = cluster(serde_json::json!({
            "providerConfigRef": {"name": "aws"},
            "provider": {"aws": aws()},
        }));
        assert_eq!(with_region.validate(&good), Ok(()));

        let without_region = cloud(None).await;
        let refusal = without_region.validate(&good).unwrap_err();
        assert_eq!(refusal.field, "spec.region");
        let mut regional = good.clone();
        regional.spec.region = Some("eu-west-1".into());
        assert_eq!(without_region.validate(&regional), Ok(()));

        let zero = cluster(serde_json::json!({
            "providerConfigRef": {"name": "aws"},
            "provider": {"aws": aws()},
            "nodePools": [{"name": "idle", "machineType": "t3.small", "min": 0, "max": 0}],
        }));
        assert_eq!(
            with_region.validate(&zero).unwrap_err().field,
            "spec.nodePools[idle].max"
        );
    }

    #[tokio::test]
    async fn a_malformed_secret_fails_connect_as_auth_failed() {
        let config: ProviderConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetforge.dev/v1alpha1",
            "kind": "ProviderConfig",
            "metadata": {"name": "aws"},
            "spec": {"provider": "aws"},
        }))
        .unwrap();
        let error = EksCloud::connect(&config, Credentials::Secret(b"hunter2".to_vec()))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::AuthFailed);
        assert!(!error.message.contains("hunter2"), "{}", error.message);
    }
}

#[cfg(test)]
mod machine_sizes {
    use super::*;

    #[test]
    fn ec2_sizes_are_read_from_family_and_size() {
        let eks = EksFactory::new();
        assert_eq!(eks.machine_size("m7i.large"), Some(MachineSize::new(2, 8)));
        assert_eq!(
            eks.machine_size("c6g.2xlarge"),
            Some(MachineSize::new(8, 16))
        );
        assert_eq!(eks.machine_size("p4d.24xlarge"), None);
    }
}
