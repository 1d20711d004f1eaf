//! The `local` provider: each Cluster is a real Kubernetes control plane on
//! the controller's host (etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler from `scripts/install-tools`), run by `kwokctl` with its
//! binary runtime, and each node-pool member is a Node simulated by the
//! cluster's kwok, so workloads installed later really run.
//!
//! What the provider keeps about a cluster besides kwokctl's own directory
//! (its owner and its pools' bounds) is a small JSON record next to it, the
//! equivalent of a cloud's tags.

pub mod kubeconfig;
pub mod kwokctl;
pub mod nodes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fleetforge_api::{Cluster, NodePool, ProviderConfig};
use fleetforge_core::cluster::{
    ClusterChange, FieldDiff, MinorVersion, ObservedCluster, ObservedNodePool,
};
use fleetforge_core::{
    ConnectionDetails, Credentials, ErrorKind, ExternalClient, ExternalState, MachineSize,
    Observation, ProviderError, ProviderFactory, Refusal,
};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};

use crate::kubeconfig::Access;
use crate::kwokctl::{KubeBuild, Kwokctl, KwokctlError, Processes};

/// The drift field that says whether the cluster's processes run.
const STATE_FIELD: &str = "state";

/// Where the local provider finds its binaries and keeps its clusters:
/// properties of the controller's host, not of a ProviderConfig.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The directory `scripts/install-tools` fills (`.tools/bin`).
    pub tools_bin: PathBuf,
    /// Where clusters live: kwokctl's work directory.
    pub work_dir: PathBuf,
}

/// Builds the [`LocalCloud`] every local ProviderConfig shares: they all
/// reach the same machine.
#[derive(Debug)]
pub struct LocalFactory {
    options: LocalOptions,
    cloud: Mutex<Option<Arc<LocalCloud>>>,
}

impl LocalFactory {
    /// A factory for clusters under `options.work_dir`.
    pub fn new(options: LocalOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            cloud: Mutex::new(None),
        })
    }
}

#[async_trait]
impl ProviderFactory<Cluster> for LocalFactory {
    async fn connect(
        &self,
        _config: &ProviderConfig,
        _credentials: Credentials,
    ) -> Result<Arc<dyn ExternalClient<Cluster>>, ProviderError> {
        let mut cloud = self.cloud.lock().expect("cloud");
        if let Some(cloud) = cloud.as_ref() {
            return Ok(cloud.clone());
        }
        let created = Arc::new(LocalCloud::new(&self.options)?);
        *cloud = Some(created.clone());
        Ok(created)
    }

    /// `standard-N`: N vCPUs, 4 GiB each (the kwok nodes' capacity).
    fn machine_size(&self, machine_type: &str) -> Option<MachineSize> {
        standard_size(machine_type)
    }
}

/// The clusters of one work directory.
#[derive(Debug)]
pub struct LocalCloud {
    kwokctl: Kwokctl,
    records: PathBuf,
    /// The version clusters get unless their spec names another.
    version: MinorVersion,
    /// Every version clusters can run (`scripts/install-tools` builds the
    /// current minor and the one before it).
    builds: BTreeMap<MinorVersion, KubeBuild>,
}

impl LocalCloud {
    /// The clusters under `options.work_dir`.
    pub fn new(options: &LocalOptions) -> Result<Self, ProviderError> {
        let kwokctl = Kwokctl::new(&options.tools_bin, &options.work_dir)
            .map_err(|e| ProviderError::new(ErrorKind::Unavailable, e.to_string()))?;
        let version = MinorVersion::parse(kwokctl.kube_version()).ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Unavailable,
                format!(
                    "kube-apiserver reports version {:?}, not major.minor",
                    kwokctl.kube_version()
                ),
            )
        })?;
        let builds = kwokctl
            .builds()
            .iter()
            .filter_map(|b| Some((MinorVersion::parse(&b.version)?, b.clone())))
            .collect();
        Ok(Self {
            records: options.work_dir.join("fleetforge"),
            kwokctl,
            version,
            builds,
        })
    }

    /// The versions clusters can run, as `1.35 (v1.35.4), 1.36 (v1.36.3)`.
    fn supported(&self) -> String {
        self.builds
            .iter()
            .map(|(minor, build)| format!("{minor} ({})", build.version))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The build of `version` (`major.minor`), if it is one.
    fn build(&self, version: &str) -> Result<&KubeBuild, ProviderError> {
        MinorVersion::parse(version)
            .and_then(|minor| self.builds.get(&minor))
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::InvalidSpec,
                    format!(
                        "local clusters run {}; {version} is not built here",
                        self.supported()
                    ),
                )
            })
    }

    /// The version cluster `name` runs, as kwokctl last started it.
    fn running(&self, name: &str) -> String {
        self.kwokctl
            .version_of(name)
            .unwrap_or_else(|| self.kwokctl.kube_version().to_string())
    }

    /// The kwokctl driving this cloud.
    pub fn kwokctl(&self) -> &Kwokctl {
        &self.kwokctl
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.records.join(format!("{name}.json"))
    }

    // The record and kubeconfig files are read and written off the async
    // executor's threads.
    async fn read_record(&self, name: &str) -> Option<Record> {
        let path = self.record_path(name);
        let text = fleetforge_runtime::blocking(move || std::fs::read(path))
            .await
            .ok()?;
        serde_json::from_slice(&text).ok()
    }

    async fn write_record(&self, name: &str, record: &Record) -> Result<(), ProviderError> {
        let path = self.record_path(name);
        let records = self.records.clone();
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| failed(format!("encoding {}: {e}", path.display())))?;
        let target = path.clone();
        let written = fleetforge_runtime::blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&records)?;
            let partial = target.with_extension("json.partial");
            std::fs::write(&partial, text)?;
            std::fs::rename(&partial, &target)
        })
        .await;
        written.map_err(|e| failed(format!("writing {}: {e}", path.display())))
    }

    async fn access(&self, name: &str) -> Result<Access, ProviderError> {
        let path = self.kwokctl.kubeconfig_path(name);
        fleetforge_runtime::blocking(move || Access::read(&path))
            .await
            .map_err(|e| ProviderError::new(ErrorKind::Unavailable, e))
    }

    async fn client(&self, name: &str) -> Result<kube::Client, ProviderError> {
        self.access(name)
            .await?
            .client()
            .await
            .map_err(|e| ProviderError::new(ErrorKind::Unavailable, e))
    }

    /// Starts the processes of a cluster that is stopped or partly
    /// stopped.
    async fn restart(&self, name: &str) -> Result<(), ProviderError> {
        if self.kwokctl.processes(name) == Processes::Partial {
            self.kwokctl.stop(name).await.map_err(kwokctl_failed)?;
        }
        self.kwokctl.start(name).await.map_err(kwokctl_failed)
    }

    /// Gives `pool` `size` nodes and waits until they are Ready.
    async fn resize(
        &self,
        client: &kube::Client,
        pool: &RecordPool,
        size: usize,
    ) -> Result<(), ProviderError> {
        let api: Api<Node> = Api::all(client.clone());
        let selector = format!("{}={}", nodes::POOL_LABEL, pool.name);
        let existing: Vec<String> = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_failed)?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let (add, remove) = nodes::resize(&pool.name, &existing, size);
        // New members join at the version the pool's nodes run (the control
        // plane's, for a new pool).
        let kubelet = match self.pool_version(client, &pool.name).await? {
            Some(version) => version,
            None => {
                client
                    .apiserver_version()
                    .await
                    .map_err(kube_failed)?
                    .git_version
            }
        };
        for index in add {
            let node = nodes::node(&pool.name, &pool.machine_type, index, &kubelet);
            match api.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(kube_failed(e)),
            }
        }
        for name in remove {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(kube_failed(e)),
            }
        }
        self.await_nodes_ready(&api, &selector).await
    }

    /// The oldest kubelet version among `pool`'s nodes, if any reports
    /// one.
    async fn pool_version(
        &self,
        client: &kube::Client,
        pool: &str,
    ) -> Result<Option<String>, ProviderError> {
        let selector = format!("{}={pool}", nodes::POOL_LABEL);
        let list = Api::<Node>::all(client.clone())
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_failed)?;
        Ok(list
            .items
            .iter()
            .filter_map(nodes::kubelet_version)
            .min_by_key(|v| MinorVersion::parse(v))
            .map(str::to_string))
    }

    /// Upgrades `pool`'s nodes to `build` one at a time, surge first, as a
    /// managed node group rolls: a node at the new version joins and is
    /// Ready before an old one leaves (its pods are rescheduled).
    async fn roll_pool(
        &self,
        client: &kube::Client,
        pool: &RecordPool,
        build: &KubeBuild,
    ) -> Result<(), ProviderError> {
        let api: Api<Node> = Api::all(client.clone());
        let selector = format!("{}={}", nodes::POOL_LABEL, pool.name);
        let old: Vec<Node> = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_failed)?
            .items
            .into_iter()
            .filter(|n| nodes::kubelet_version(n) != Some(build.version.as_str()))
            .collect();
        for node in old {
            let names: Vec<String> = api
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                .map_err(kube_failed)?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            // A name not just taken by a node that left: kwok and the node
            // controller still hold the old node's state for a while, and
            // a new node under that name stayed Unknown for half a minute.
            let index = nodes::next_index(&pool.name, &names);
            let surge = nodes::node(&pool.name, &pool.machine_type, index, &build.version);
            match api.create(&PostParams::default(), &surge).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(kube_failed(e)),
            }
            self.await_nodes_ready(&api, &selector).await?;
            match api.delete(&node.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(kube_failed(e)),
            }
        }
        Ok(())
    }

    async fn await_nodes_ready(
        &self,
        api: &Api<Node>,
        selector: &str,
    ) -> Result<(), ProviderError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let list = api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(kube_failed)?;
            if list.items.iter().all(nodes::is_ready) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(failed(format!(
                    "nodes {selector} did not become Ready within 60s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What the cluster's API says about its version and pools.
    async fn observe_api(
        &self,
        name: &str,
        record: &Record,
    ) -> Result<(String, Vec<ObservedNodePool>, Vec<FieldDiff>), ProviderError> {
        let client = self.client(name).await?;
        let version = client
            .apiserver_version()
            .await
            .map_err(|e| ProviderError::new(ErrorKind::Unavailable, e.to_string()))?
            .git_version;
        let list = Api::<Node>::all(client)
            .list(&ListParams::default().labels(nodes::POOL_LABEL))
            .await
            .map_err(kube_failed)?;
        let label_drift = label_drift(&record.pools, &list.items);
        let mut counts: BTreeMap<String, PoolNodes> = BTreeMap::new();
        for node in &list.items {
            let labels = node.labels();
            let pool = labels[nodes::POOL_LABEL].clone();
            let entry = counts.entry(pool).or_default();
            entry.count += 1;
            entry.ready += i32::from(nodes::is_ready(node));
            entry.machine_type = entry
                .machine_type
                .take()
                .or_else(|| labels.get(nodes::MACHINE_TYPE_LABEL).cloned());
            // A pool runs the oldest version among its nodes.
            if let Some(kubelet) = nodes::kubelet_version(node)
                && entry
                    .version
                    .as_deref()
                    .is_none_or(|v| MinorVersion::parse(kubelet) < MinorVersion::parse(v))
            {
                entry.version = Some(kubelet.to_string());
            }
        }
        let version_of = |seen: &PoolNodes| seen.version.clone().unwrap_or_else(|| version.clone());
        let mut pools: Vec<ObservedNodePool> = record
            .pools
            .iter()
            .map(|pool| {
                let seen = counts.remove(&pool.name).unwrap_or_default();
                observed_pool(pool, &version_of(&seen), seen.count, seen.ready)
            })
            .collect();
        // Nodes of a pool the record does not know (added by hand) form a
        // pool too, so they show up as drift.
        for (pool, seen) in counts {
            let record = RecordPool {
                name: pool,
                machine_type: seen.machine_type.clone().unwrap_or_default(),
                min: 0,
                max: seen.count,
            };
            pools.push(observed_pool(
                &record,
                &version_of(&seen),
                seen.count,
                seen.ready,
            ));
        }
        Ok((version, pools, label_drift))
    }

    /// Puts the pool and machine-type labels of `pool` back on its nodes.
    async fn relabel(&self, client: &kube::Client, pool: &RecordPool) -> Result<(), ProviderError> {
        let api: Api<Node> = Api::all(client.clone());
        let selector = format!("{}={}", nodes::POOL_LABEL, pool.name);
        let list = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_failed)?;
        let patch = serde_json::json!({"metadata": {"labels": {
            nodes::MACHINE_TYPE_LABEL: pool.machine_type,
        }}});
        for node in list.items {
            api.patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(kube_failed)?;
        }
        Ok(())
    }
}

/// Pools some of whose nodes no longer carry the declared machine-type
/// label (someone relabelled them).
fn label_drift(pools: &[RecordPool], items: &[Node]) -> Vec<FieldDiff> {
    pools
        .iter()
        .filter_map(|pool| {
            let members: Vec<&Node> = items
                .iter()
                .filter(|n| n.labels().get(nodes::POOL_LABEL) == Some(&pool.name))
                .collect();
            let wrong = members
                .iter()
                .filter(|n| n.labels().get(nodes::MACHINE_TYPE_LABEL) != Some(&pool.machine_type))
                .count();
            (wrong > 0).then(|| {
                FieldDiff::new(
                    format!("nodePools[{}].nodeLabels", pool.name),
                    format!("{}={}", nodes::MACHINE_TYPE_LABEL, pool.machine_type),
                    format!("{wrong} of {} nodes differ", members.len()),
                )
            })
        })
        .collect()
}

/// What a pool's nodes say: how many, how many Ready, their machine type
/// and the oldest kubelet version among them.
#[derive(Debug, Default)]
struct PoolNodes {
    count: i32,
    ready: i32,
    machine_type: Option<String>,
    version: Option<String>,
}

fn observed_pool(pool: &RecordPool, version: &str, count: i32, ready: i32) -> ObservedNodePool {
    ObservedNodePool {
        name: pool.name.clone(),
        machine_type: pool.machine_type.clone(),
        version: Some(version.to_string()),
        min: pool.min,
        max: pool.max,
        desired: count,
        ready: Some(ready),
    }
}

/// What the provider keeps about a cluster: who owns it and the pools'
/// settings (the nodes themselves are in the cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    owner: Option<String>,
    pools: Vec<RecordPool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordPool {
    name: String,
    machine_type: String,
    min: i32,
    max: i32,
}

impl From<&NodePool> for RecordPool {
    fn from(pool: &NodePool) -> Self {
        Self {
            name: pool.name.clone(),
            machine_type: pool.machine_type.clone(),
            min: pool.min,
            max: pool.max,
        }
    }
}

/// The size a pool is given: the spec's `desired`, else its current size
/// kept within `min..=max`.
fn target_size(pool: &NodePool, current: usize) -> usize {
    match pool.desired {
        Some(desired) => desired.max(0) as usize,
        None => current.clamp(pool.min.max(0) as usize, pool.max.max(0) as usize),
    }
}

/// Pools whose node count left `min..=max` (only checked where the spec
/// leaves `desired` out; with `desired` the engine compares it).
fn bounds_drift(spec: &[NodePool], observed: &[ObservedNodePool]) -> Vec<FieldDiff> {
    spec.iter()
        .filter(|pool| pool.desired.is_none())
        .filter_map(|pool| {
            let actual = observed.iter().find(|p| p.name == pool.name)?;
            (actual.desired < pool.min || actual.desired > pool.max).then(|| {
                FieldDiff::new(
                    format!("nodePools[{}].nodes", pool.name),
                    format!("{}..{}", pool.min, pool.max),
                    actual.desired,
                )
            })
        })
        .collect()
}

fn failed(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::OperationFailed, message)
}

fn kwokctl_failed(error: KwokctlError) -> ProviderError {
    match error {
        KwokctlError::MissingTool { .. } => {
            ProviderError::new(ErrorKind::Unavailable, error.to_string())
        }
        _ => failed(error.to_string()),
    }
}

fn kube_failed(error: kube::Error) -> ProviderError {
    ProviderError::new(ErrorKind::Unavailable, format!("cluster API: {error}"))
}

#[async_trait]
impl ExternalClient<Cluster> for LocalCloud {
    /// kwokctl cluster names are unique in the work directory: a create for a taken name fails as AlreadyExists.
    fn create_keyed_by_name(&self) -> bool {
        true
    }

    async fn observe(
        &self,
        obj: &Cluster,
        name: &str,
    ) -> Result<Option<Observation<ObservedCluster>>, ProviderError> {
        if !self.kwokctl.exists(name) {
            return Ok(None);
        }
        let record = self.read_record(name).await.unwrap_or(Record {
            owner: None,
            pools: Vec::new(),
        });
        let access = self.access(name).await.ok();
        let endpoint = access.as_ref().map(|a| a.server.clone());
        let connection = access.as_ref().map(|a| ConnectionDetails {
            kubeconfig: a.kubeconfig(name),
        });
        // While the API is down the pools cannot be seen: they are reported
        // as last set, so the only difference is the state (when given).
        let last_known = |state: Option<&str>, message: String| Observation {
            state: ExternalState::Degraded(message),
            owner: record.owner.clone(),
            connection: connection.clone(),
            resource: ObservedCluster {
                // What it ran when it was last started.
                version: Some(self.running(name)),
                endpoint: endpoint.clone(),
                node_pools: record
                    .pools
                    .iter()
                    .map(|pool| {
                        let spec = obj.spec.node_pools.iter().find(|p| p.name == pool.name);
                        let size = spec.and_then(|p| p.desired).unwrap_or(pool.min);
                        observed_pool(pool, &self.running(name), size, 0)
                    })
                    .collect(),
                provider_drift: state
                    .map(|state| FieldDiff::new(STATE_FIELD, "Running", state))
                    .into_iter()
                    .collect(),
            },
        };
        match self.kwokctl.processes(name) {
            Processes::Stopped => {
                return Ok(Some(last_known(
                    Some("Stopped"),
                    format!("{name} is stopped: none of its processes runs"),
                )));
            }
            Processes::Partial => {
                return Ok(Some(last_known(
                    Some("PartlyStopped"),
                    format!("{name} is partly stopped: some of its processes exited"),
                )));
            }
            Processes::Running => {}
        }
        let (version, node_pools, label_drift) = match self.observe_api(name, &record).await {
            Ok(seen) => seen,
            Err(error) => {
                return Ok(Some(last_known(
                    None,
                    format!("{name} runs but its API does not answer: {}", error.message),
                )));
            }
        };
        Ok(Some(Observation {
            state: ExternalState::Ready,
            owner: record.owner.clone(),
            connection,
            resource: ObservedCluster {
                provider_drift: bounds_drift(&obj.spec.node_pools, &node_pools)
                    .into_iter()
                    .chain(label_drift)
                    .collect(),
                version: Some(version),
                endpoint,
                node_pools,
            },
        }))
    }

    async fn create(&self, obj: &Cluster, name: &str) -> Result<(), ProviderError> {
        if self.kwokctl.exists(name) {
            return Err(ProviderError::new(
                ErrorKind::AlreadyExists,
                format!("a local cluster named {name} exists"),
            ));
        }
        let record = Record {
            owner: Some(fleetforge_core::owner_of(obj)),
            pools: obj.spec.node_pools.iter().map(RecordPool::from).collect(),
        };
        // The record goes first: a create interrupted half-way leaves a
        // cluster that is still known to be ours.
        self.write_record(name, &record).await?;
        let build = match obj.spec.version.as_deref() {
            Some(version) => self.build(version)?.clone(),
            None => self.build(&self.version.to_string())?.clone(),
        };
        if let Err(error) = self.kwokctl.create_at(name, &build, &[]).await {
            // Leave nothing half-made; the engine retries with backoff.
            if let Err(cleanup) = self.kwokctl.delete(name).await {
                tracing::warn!(cluster = name, error = %cleanup, "removing a failed create");
            }
            return Err(kwokctl_failed(error));
        }
        let access = self.access(name).await?;
        access.forget_kubectl_cache();
        let client = access
            .client()
            .await
            .map_err(|e| ProviderError::new(ErrorKind::Unavailable, e))?;
        for (pool, spec) in record.pools.iter().zip(&obj.spec.node_pools) {
            self.resize(&client, pool, target_size(spec, 0)).await?;
        }
        Ok(())
    }

    async fn update(
        &self,
        obj: &Cluster,
        name: &str,
        changes: &[ClusterChange],
    ) -> Result<(), ProviderError> {
        let wants_restart = changes.iter().any(|change| {
            matches!(change, ClusterChange::ProviderSettings { fields }
                if fields.iter().any(|f| f.field == STATE_FIELD))
        });
        if wants_restart {
            self.restart(name).await?;
        }
        let mut record = self.read_record(name).await.unwrap_or(Record {
            owner: Some(fleetforge_core::owner_of(obj)),
            pools: Vec::new(),
        });
        let client = self.client(name).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let size_of = |pool: &str| {
            let nodes = nodes.clone();
            let selector = format!("{}={pool}", nodes::POOL_LABEL);
            async move {
                nodes
                    .list_metadata(&ListParams::default().labels(&selector))
                    .await
                    .map(|l| l.items.len())
                    .map_err(kube_failed)
            }
        };
        for change in changes {
            match change {
                ClusterChange::UpgradeControlPlane { to } => {
                    let build = self.build(to)?.clone();
                    self.kwokctl
                        .upgrade(name, &build)
                        .await
                        .map_err(kwokctl_failed)?;
                    // The engine observes the new version on its next look;
                    // nothing else in this pass may use the old client.
                    return Ok(());
                }
                ClusterChange::UpgradeNodePool { pool, to } => {
                    let build = self.build(to)?.clone();
                    let Some(entry) = record.pools.iter().find(|p| &p.name == pool).cloned() else {
                        continue;
                    };
                    self.roll_pool(&client, &entry, &build).await?;
                }
                ClusterChange::AddNodePool(pool) => {
                    let entry = RecordPool::from(pool);
                    record.pools.retain(|p| p.name != pool.name);
                    record.pools.push(entry.clone());
                    self.write_record(name, &record).await?;
                    let size = target_size(pool, size_of(&pool.name).await?);
                    self.resize(&client, &entry, size).await?;
                }
                ClusterChange::ScaleNodePool { pool, .. } => {
                    let Some(spec) = obj.spec.node_pools.iter().find(|p| &p.name == pool) else {
                        continue;
                    };
                    let entry = RecordPool::from(spec);
                    record.pools.retain(|p| &p.name != pool);
                    record.pools.push(entry.clone());
                    self.write_record(name, &record).await?;
                    let size = target_size(spec, size_of(pool).await?);
                    self.resize(&client, &entry, size).await?;
                }
                ClusterChange::RemoveNodePool { pool } => {
                    let entry = RecordPool {
                        name: pool.clone(),
                        machine_type: String::new(),
                        min: 0,
                        max: 0,
                    };
                    self.resize(&client, &entry, 0).await?;
                    record.pools.retain(|p| &p.name != pool);
                    self.write_record(name, &record).await?;
                }
                ClusterChange::ProviderSettings { fields } => {
                    // `state` was handled first; `nodePools[x].nodes` means a
                    // pool left its bounds: bring it back into them;
                    // `nodePools[x].nodeLabels`: its nodes were relabelled.
                    for field in fields {
                        if let Some(pool) = field
                            .field
                            .strip_prefix("nodePools[")
                            .and_then(|r| r.strip_suffix("].nodeLabels"))
                            && let Some(spec) = obj.spec.node_pools.iter().find(|p| p.name == pool)
                        {
                            self.relabel(&client, &RecordPool::from(spec)).await?;
                            continue;
                        }
                        let Some(pool) = field
                            .field
                            .strip_prefix("nodePools[")
                            .and_then(|r| r.strip_suffix("].nodes"))
                        else {
                            continue;
                        };
                        let Some(spec) = obj.spec.node_pools.iter().find(|p| p.name == pool) else {
                            continue;
                        };
                        let size = target_size(spec, size_of(pool).await?);
                        self.resize(&client, &RecordPool::from(spec), size).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn delete(&self, _obj: &Cluster, name: &str) -> Result<(), ProviderError> {
        self.kwokctl.delete(name).await.map_err(kwokctl_failed)?;
        match std::fs::remove_file(self.record_path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(format!("removing the record of {name}: {e}"))),
        }
    }

    fn validate(&self, obj: &Cluster) -> Result<(), Refusal> {
        if let Some(text) = obj.spec.version.as_deref()
            && MinorVersion::parse(text).is_none_or(|v| !self.builds.contains_key(&v))
        {
            return Err(Refusal {
                reason: "UnsupportedVersion",
                field: "spec.version".into(),
                message: format!(
                    "the local provider runs the Kubernetes versions scripts/install-tools built, {}; set spec.version to one of them or leave it out ({})",
                    self.supported(),
                    self.version
                ),
            });
        }
        if let Some(block) = &obj.spec.provider {
            let named = [
                ("aws", block.aws.is_some()),
                ("gcp", block.gcp.is_some()),
                ("azure", block.azure.is_some()),
            ];
            if let Some((cloud, _)) = named.iter().find(|(_, set)| *set) {
                return Err(Refusal {
                    reason: "InvalidSpec",
                    field: format!("spec.provider.{cloud}"),
                    message: format!(
                        "a Cluster on the local provider takes no {cloud} settings; remove spec.provider.{cloud} or use a ProviderConfig for {cloud}"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, min: i32, max: i32, desired: Option<i32>) -> NodePool {
        NodePool {
            name: name.into(),
            machine_type: "standard".into(),
            min,
            max,
            desired,
        }
    }

    fn observed(name: &str, count: i32) -> ObservedNodePool {
        ObservedNodePool {
            name: name.into(),
            desired: count,
            ..ObservedNodePool::default()
        }
    }

    #[test]
    fn the_spec_size_wins_else_the_current_size_within_bounds() {
        assert_eq!(target_size(&pool("a", 1, 5, Some(3)), 0), 3);
        assert_eq!(target_size(&pool("a", 1, 5, None), 0), 1);
        assert_eq!(target_size(&pool("a", 1, 5, None), 4), 4);
        assert_eq!(target_size(&pool("a", 1, 5, None), 9), 5);
    }

    #[test]
    fn relabelled_nodes_are_drift() {
        let pools = [RecordPool::from(&pool("a", 1, 3, None))];
        let mut nodes = vec![
            nodes::node("a", "standard", 0, "v1.36.3"),
            nodes::node("a", "standard", 1, "v1.36.3"),
        ];
        assert!(label_drift(&pools, &nodes).is_empty());
        nodes[1]
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(nodes::MACHINE_TYPE_LABEL.into(), "huge".into());
        let drift = label_drift(&pools, &nodes);
        assert_eq!(
            drift[0].to_string(),
            "nodePools[a].nodeLabels: spec node.kubernetes.io/instance-type=standard, actual 1 of 2 nodes differ"
        );
    }

    #[test]
    fn a_pool_without_desired_drifts_only_outside_its_bounds() {
        let spec = [pool("a", 2, 4, None), pool("b", 1, 3, Some(2))];
        assert!(bounds_drift(&spec, &[observed("a", 3), observed("b", 0)]).is_empty());
        let drift = bounds_drift(&spec, &[observed("a", 1)]);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].field, "nodePools[a].nodes");
        assert_eq!(
            drift[0].to_string(),
            "nodePools[a].nodes: spec 2..4, actual 1"
        );
    }
}

/// `standard-N`: N vCPUs, 4 GiB each.
pub fn standard_size(machine_type: &str) -> Option<MachineSize> {
    let n: u64 = machine_type.strip_prefix("standard-")?.parse().ok()?;
    Some(MachineSize::new(n, n * 4))
}

#[cfg(test)]
mod machine_sizes {
    use super::*;

    #[test]
    fn standard_n_is_n_vcpus_and_4_gib_each() {
        assert_eq!(standard_size("standard-2"), Some(MachineSize::new(2, 8)));
        assert_eq!(standard_size("gpu-a100-8"), None);
    }
}
