//! The `nop` provider: an in-process fake "cloud" for tests and benchmarks,
//! in the spirit of Crossplane's provider-nop. It is never a real cloud: its
//! clusters are records in memory (or, with `spec.nop.stateDirectory`, JSON
//! files that outlive a controller restart) and their kubeconfigs point at
//! `*.nop.invalid`. With a state directory, every create call is also
//! journalled there (`creates.log`, one external name per line, appended
//! by every process that shares the directory), so a test can tell that no
//! cluster was created twice across restarts or replicas; a call made while
//! another call on the same object is in progress, in this process or
//! another, is journalled in `concurrent.log`.
//!
//! Behaviour comes from the ProviderConfig's `spec.nop` (call latency,
//! create latency, time to become ready, a seeded failure rate) and from
//! annotations on each Cluster:
//!
//! | annotation | effect |
//! |---|---|
//! | `nop.fleetforge.dev/fail-observe: "N"` (also `fail-create`, `fail-update`, `fail-delete`) | the first N such calls for this object fail |
//! | `nop.fleetforge.dev/fail-kind: Throttled` | the kind of those failures (default `OperationFailed`; `Throttled` asks to retry after 1 s) |
//! | `nop.fleetforge.dev/retry-after: "3s"` | how long a `Throttled` failure asks to wait (its Retry-After) |
//! | `nop.fleetforge.dev/visible-after: "3s"` | a created cluster is not found by observe for this long, as an eventually consistent cloud right after a create |
//! | `nop.fleetforge.dev/out-of-band: "<change>"` | before the next observe, the fake cloud changes the cluster as someone outside fleetforge would: `delete`, `scale <pool>=<n>`, `version <major.minor>`, `remove-pool <pool>`; each distinct value applies once |
//! | `nop.fleetforge.dev/crash-after-create: "true"` | the process aborts right after a create is stored, before the controller can record it (crash tests) |

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_core::cluster::{ClusterChange, ObservedCluster, ObservedNodePool};
use fleetforge_core::{
    ConnectionDetails, Credentials, ErrorKind, ExternalClient, ExternalState, Observation,
    ProviderError, ProviderFactory, Refusal,
};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

/// Prefix of the nop provider's fault-injection annotations.
pub const ANNOTATION_PREFIX: &str = "nop.fleetforge.dev/";
/// The journal of create calls in a state directory.
pub const CREATES_LOG: &str = "creates.log";
/// The journal of calls made while another call on the same object was in
/// progress (`<namespace>_<name> <verb>` per line), by any process sharing
/// the state directory: replicas must never act on one object at once.
pub const CONCURRENT_LOG: &str = "concurrent.log";
/// The Kubernetes version a cluster gets when its spec names none.
pub const DEFAULT_VERSION: &str = "1.36";

/// Builds (and keeps) one fake cloud per ProviderConfig, so its clusters
/// survive the engine rebuilding its client.
#[derive(Debug, Default)]
pub struct NopFactory {
    clouds: Mutex<HashMap<String, Arc<NopCloud>>>,
}

impl NopFactory {
    /// A new factory with no clouds.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The fake cloud of ProviderConfig `config_name`, once connected.
    pub fn cloud(&self, config_name: &str) -> Option<Arc<NopCloud>> {
        self.clouds
            .lock()
            .expect("clouds")
            .get(config_name)
            .cloned()
    }
}

#[async_trait]
impl ProviderFactory<Cluster> for NopFactory {
    async fn connect(
        &self,
        config: &ProviderConfig,
        _credentials: Credentials,
    ) -> Result<Arc<dyn ExternalClient<Cluster>>, ProviderError> {
        let settings = Settings::from_config(config)?;
        let mut clouds = self.clouds.lock().expect("clouds");
        let cloud = clouds
            .entry(config.name_any())
            .or_insert_with(|| Arc::new(NopCloud::new(settings.state_directory.clone())));
        cloud.configure(settings);
        Ok(cloud.clone())
    }

    /// `standard-N`, as the local provider names machines: N vCPUs, 4 GiB
    /// each.
    fn machine_size(&self, machine_type: &str) -> Option<fleetforge_core::MachineSize> {
        let n: u64 = machine_type.strip_prefix("standard-")?.parse().ok()?;
        Some(fleetforge_core::MachineSize::new(n, n * 4))
    }
}

#[derive(Debug, Clone, Default)]
struct Settings {
    create_delay: Duration,
    call_delay: Duration,
    ready_delay: Duration,
    failure_rate: f64,
    seed: u64,
    state_directory: Option<PathBuf>,
}

impl Settings {
    fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let nop = config.spec.nop.clone().unwrap_or_default();
        let duration = |field: &str, text: Option<String>| -> Result<Duration, ProviderError> {
            text.map_or(Ok(Duration::ZERO), |t| {
                kube::core::Duration::from_str(&t)
                    .map(Duration::from)
                    .map_err(|e| {
                        ProviderError::new(ErrorKind::InvalidSpec, format!("spec.nop.{field}: {e}"))
                    })
            })
        };
        Ok(Self {
            create_delay: duration("createDelay", nop.create_delay)?,
            call_delay: duration("callDelay", nop.call_delay)?,
            ready_delay: duration("readyDelay", nop.ready_delay)?,
            failure_rate: nop.failure_rate.unwrap_or(0.0),
            seed: nop.seed.unwrap_or(0x5EED),
            state_directory: nop.state_directory.map(PathBuf::from),
        })
    }
}

/// A cluster in the fake cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NopCluster {
    /// Its name (the external name).
    pub name: String,
    /// The ownership tag: `<namespace>/<name>` of the creating object.
    pub owner: Option<String>,
    /// Control-plane version.
    pub version: String,
    /// Node pools.
    pub node_pools: Vec<NopPool>,
    /// Unix milliseconds when it becomes ready.
    pub ready_at: u64,
    /// Unix milliseconds until which a change is in progress.
    pub busy_until: u64,
    /// Unix milliseconds when a requested deletion completes.
    pub deleted_at: Option<u64>,
    /// Unix milliseconds before which observing does not find it, as a
    /// cloud's eventually consistent reads right after a create.
    #[serde(default)]
    pub visible_at: u64,
}

/// A node pool in the fake cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NopPool {
    /// Name.
    pub name: String,
    /// Machine type.
    pub machine_type: String,
    /// Node version.
    pub version: String,
    /// Lower bound.
    pub min: i32,
    /// Upper bound.
    pub max: i32,
    /// Size.
    pub desired: i32,
}

/// The duration in the annotation `nop.fleetforge.dev/<name>`, zero when
/// absent or not a duration.
fn annotation_duration(obj: &Cluster, name: &str) -> Duration {
    obj.annotations()
        .get(&format!("{ANNOTATION_PREFIX}{name}"))
        .and_then(|t| kube::core::Duration::from_str(t).ok())
        .map_or(Duration::ZERO, Duration::from)
}

/// Counts of calls by verb.
#[derive(Debug, Default)]
pub struct Calls {
    /// observe calls.
    pub observe: AtomicU64,
    /// create calls.
    pub create: AtomicU64,
    /// update calls.
    pub update: AtomicU64,
    /// delete calls.
    pub delete: AtomicU64,
}

impl Calls {
    /// `(observe, create, update, delete)` now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.observe.load(Ordering::Relaxed),
            self.create.load(Ordering::Relaxed),
            self.update.load(Ordering::Relaxed),
            self.delete.load(Ordering::Relaxed),
        )
    }
}

/// One fake account.
#[derive(Debug)]
pub struct NopCloud {
    settings: Mutex<Settings>,
    state_directory: Option<PathBuf>,
    clusters: Mutex<HashMap<String, NopCluster>>,
    /// Calls by verb, over all clusters.
    pub calls: Calls,
    observes_by_name: Mutex<HashMap<String, u64>>,
    faults_used: Mutex<HashMap<(String, &'static str), u32>>,
    out_of_band_applied: Mutex<HashMap<String, String>>,
    rng: AtomicU64,
}

impl NopCloud {
    fn new(state_directory: Option<PathBuf>) -> Self {
        if let Some(dir) = &state_directory {
            let _ = std::fs::create_dir_all(dir);
        }
        Self {
            settings: Mutex::new(Settings::default()),
            state_directory,
            clusters: Mutex::new(HashMap::new()),
            calls: Calls::default(),
            observes_by_name: Mutex::new(HashMap::new()),
            faults_used: Mutex::new(HashMap::new()),
            out_of_band_applied: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(0),
        }
    }

    fn configure(&self, settings: Settings) {
        let mut current = self.settings.lock().expect("settings");
        if current.seed != settings.seed || self.rng.load(Ordering::Relaxed) == 0 {
            self.rng.store(settings.seed.max(1), Ordering::Relaxed);
        }
        *current = settings;
    }

    fn settings(&self) -> Settings {
        self.settings.lock().expect("settings").clone()
    }

    /// A cluster by name.
    pub fn get(&self, name: &str) -> Option<NopCluster> {
        match &self.state_directory {
            Some(dir) => {
                let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
                serde_json::from_str(&text).ok()
            }
            None => self.clusters.lock().expect("clusters").get(name).cloned(),
        }
    }

    /// Stores a cluster (what an out-of-band actor does, too).
    pub fn put(&self, cluster: NopCluster) {
        match &self.state_directory {
            Some(dir) => {
                let path = dir.join(format!("{}.json", cluster.name));
                let partial = dir.join(format!(".{}.json.partial", cluster.name));
                let text = serde_json::to_string_pretty(&cluster).expect("a cluster serializes");
                // Write then rename, so a crash never leaves half a record.
                if std::fs::write(&partial, text).is_ok() {
                    let _ = std::fs::rename(&partial, &path);
                }
            }
            None => {
                self.clusters
                    .lock()
                    .expect("clusters")
                    .insert(cluster.name.clone(), cluster);
            }
        }
    }

    /// Appends `name` to the state directory's `creates.log`.
    fn journal_create(&self, name: &str) {
        self.journal(CREATES_LOG, name);
    }

    /// Appends `line` to `log` in the state directory (one short
    /// `O_APPEND` write, so lines of several processes never interleave).
    fn journal(&self, log: &str, line: &str) {
        let Some(dir) = &self.state_directory else {
            return;
        };
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(log))
            .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "nop: journalling to {log}");
        }
    }

    /// Removes a cluster immediately.
    pub fn remove(&self, name: &str) {
        match &self.state_directory {
            Some(dir) => {
                let _ = std::fs::remove_file(dir.join(format!("{name}.json")));
            }
            None => {
                self.clusters.lock().expect("clusters").remove(name);
            }
        }
    }

    /// Names of every cluster.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.state_directory {
            Some(dir) => std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| {
                            let name = e.ok()?.file_name().to_string_lossy().into_owned();
                            name.strip_suffix(".json")
                                .filter(|n| !n.starts_with('.'))
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default(),
            None => self
                .clusters
                .lock()
                .expect("clusters")
                .keys()
                .cloned()
                .collect(),
        };
        names.sort();
        names
    }

    /// Observe calls made for the cluster `name`.
    pub fn observes_of(&self, name: &str) -> u64 {
        self.observes_by_name
            .lock()
            .expect("observes")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Applies a change to a stored cluster, as someone outside fleetforge.
    pub fn mutate(&self, name: &str, change: impl FnOnce(&mut NopCluster)) -> bool {
        let Some(mut cluster) = self.get(name) else {
            return false;
        };
        change(&mut cluster);
        self.put(cluster);
        true
    }

    /// Runs the behaviour every call shares: latency, injected faults from
    /// annotations, and the random failure rate. The returned guard marks
    /// the call in progress until it is dropped (see [`CONCURRENT_LOG`]).
    async fn enter(
        &self,
        obj: &Cluster,
        verb: &'static str,
        counter: &AtomicU64,
    ) -> Result<Option<std::fs::File>, ProviderError> {
        counter.fetch_add(1, Ordering::Relaxed);
        let call = self.mark_call(obj, verb);
        let settings = self.settings();
        let delay = if verb == "create" {
            settings.create_delay
        } else {
            settings.call_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let annotations = obj.annotations();
        if let Some(limit) = annotations
            .get(&format!("{ANNOTATION_PREFIX}fail-{verb}"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            let mut used = self.faults_used.lock().expect("faults");
            let count = used
                .entry((obj.uid().unwrap_or_default(), verb))
                .or_insert(0);
            if *count < limit {
                *count += 1;
                let kind = annotations
                    .get(&format!("{ANNOTATION_PREFIX}fail-kind"))
                    .map_or(ErrorKind::OperationFailed, |k| parse_kind(k));
                let error = ProviderError::new(
                    kind,
                    format!("nop: injected {verb} failure {count} of {limit}"),
                );
                return Err(if kind == ErrorKind::Throttled {
                    let after = Some(annotation_duration(obj, "retry-after"))
                        .filter(|d| !d.is_zero())
                        .unwrap_or(Duration::from_secs(1));
                    error.retry_after(after)
                } else {
                    error
                });
            }
        }
        if settings.failure_rate > 0.0 && self.draw() < settings.failure_rate {
            return Err(ProviderError::new(
                ErrorKind::Unavailable,
                format!("nop: random {verb} failure"),
            ));
        }
        Ok(call)
    }

    /// With a state directory, holds an exclusive lock on the object's
    /// file under `calls/` for the call; when another call (of any
    /// process) holds it, the overlap is appended to [`CONCURRENT_LOG`].
    fn mark_call(&self, obj: &Cluster, verb: &str) -> Option<std::fs::File> {
        let dir = self.state_directory.as_ref()?.join("calls");
        let object = format!("{}_{}", obj.namespace().unwrap_or_default(), obj.name_any());
        let file = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(dir.join(format!("{object}.lock")))
            })
            .inspect_err(|e| tracing::warn!(error = %e, "nop: marking a call"))
            .ok()?;
        match file.try_lock() {
            Ok(()) => Some(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                self.journal(CONCURRENT_LOG, &format!("{object} {verb}"));
                None
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(error = %e, "nop: marking a call");
                None
            }
        }
    }

    /// A uniform draw in [0, 1) from the seeded generator (SplitMix64).
    fn draw(&self) -> f64 {
        let mut x = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Applies a pending `out-of-band` annotation once.
    fn apply_out_of_band(&self, obj: &Cluster, external_name: &str) {
        let Some(change) = obj
            .annotations()
            .get(&format!("{ANNOTATION_PREFIX}out-of-band"))
        else {
            return;
        };
        let key = obj.uid().unwrap_or_default();
        {
            let mut applied = self.out_of_band_applied.lock().expect("out-of-band");
            if applied.get(&key) == Some(change) {
                return;
            }
            applied.insert(key, change.clone());
        }
        let mut words = change.split_whitespace();
        match (words.next(), words.next()) {
            (Some("delete"), _) => self.remove(external_name),
            (Some("version"), Some(version)) => {
                self.mutate(external_name, |c| c.version = version.to_string());
            }
            (Some("remove-pool"), Some(pool)) => {
                self.mutate(external_name, |c| c.node_pools.retain(|p| p.name != pool));
            }
            (Some("scale"), Some(assignment)) => {
                if let Some((pool, size)) = assignment.split_once('=')
                    && let Ok(size) = size.parse::<i32>()
                {
                    self.mutate(external_name, |c| {
                        for p in c.node_pools.iter_mut().filter(|p| p.name == pool) {
                            p.desired = size;
                            p.max = p.max.max(size);
                        }
                    });
                }
            }
            _ => tracing::warn!("nop: unknown out-of-band change {change:?}"),
        }
    }
}

fn parse_kind(text: &str) -> ErrorKind {
    match text {
        "AuthFailed" => ErrorKind::AuthFailed,
        "QuotaExceeded" => ErrorKind::QuotaExceeded,
        "Throttled" => ErrorKind::Throttled,
        "NotFound" => ErrorKind::NotFound,
        "InvalidSpec" => ErrorKind::InvalidSpec,
        "AlreadyExists" => ErrorKind::AlreadyExists,
        "Unavailable" => ErrorKind::Unavailable,
        _ => ErrorKind::OperationFailed,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn kubeconfig(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://{name}.nop.invalid\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\nusers:\n- name: {name}\n  user:\n    token: nop-not-a-real-token\n"
    )
}

#[async_trait]
impl ExternalClient<Cluster> for NopCloud {
    /// Names are unique in a fake account: a create for a taken name succeeds for the same owner and fails as AlreadyExists for another.
    fn create_keyed_by_name(&self) -> bool {
        true
    }

    async fn observe(
        &self,
        obj: &Cluster,
        external_name: &str,
    ) -> Result<Option<Observation<ObservedCluster>>, ProviderError> {
        self.apply_out_of_band(obj, external_name);
        *self
            .observes_by_name
            .lock()
            .expect("observes")
            .entry(external_name.to_string())
            .or_insert(0) += 1;
        let _call = self.enter(obj, "observe", &self.calls.observe).await?;
        let now = now_ms();
        let Some(cluster) = self.get(external_name).filter(|c| now >= c.visible_at) else {
            return Ok(None);
        };
        let state = match cluster.deleted_at {
            Some(at) if at <= now => {
                self.remove(external_name);
                return Ok(None);
            }
            Some(_) => ExternalState::Deleting,
            None if now < cluster.ready_at => ExternalState::Provisioning,
            None if now < cluster.busy_until => ExternalState::Updating,
            None => ExternalState::Ready,
        };
        let ready = state == ExternalState::Ready || state == ExternalState::Updating;
        Ok(Some(Observation {
            owner: cluster.owner.clone(),
            connection: Some(ConnectionDetails {
                kubeconfig: kubeconfig(external_name),
            }),
            resource: ObservedCluster {
                version: Some(cluster.version.clone()),
                endpoint: Some(format!("https://{external_name}.nop.invalid")),
                node_pools: cluster
                    .node_pools
                    .iter()
                    .map(|p| ObservedNodePool {
                        name: p.name.clone(),
                        machine_type: p.machine_type.clone(),
                        version: Some(p.version.clone()),
                        min: p.min,
                        max: p.max,
                        desired: p.desired,
                        ready: Some(if ready { p.desired } else { 0 }),
                    })
                    .collect(),
                provider_drift: Vec::new(),
            },
            state,
        }))
    }

    async fn create(&self, obj: &Cluster, external_name: &str) -> Result<(), ProviderError> {
        let _call = self.enter(obj, "create", &self.calls.create).await?;
        self.journal_create(external_name);
        let owner = fleetforge_core::owner_of(obj);
        if let Some(existing) = self.get(external_name) {
            if existing.owner.as_deref() == Some(&owner) {
                return Ok(());
            }
            return Err(ProviderError::new(
                ErrorKind::AlreadyExists,
                format!("nop: a cluster named {external_name} already exists"),
            ));
        }
        let version = obj
            .spec
            .version
            .clone()
            .unwrap_or_else(|| DEFAULT_VERSION.to_string());
        let now = now_ms();
        self.put(NopCluster {
            name: external_name.to_string(),
            owner: Some(owner),
            node_pools: obj
                .spec
                .node_pools
                .iter()
                .map(|p| NopPool {
                    name: p.name.clone(),
                    machine_type: p.machine_type.clone(),
                    version: version.clone(),
                    min: p.min,
                    max: p.max,
                    desired: p.initial_count(),
                })
                .collect(),
            version,
            ready_at: now + self.settings().ready_delay.as_millis() as u64,
            busy_until: 0,
            deleted_at: None,
            visible_at: now + annotation_duration(obj, "visible-after").as_millis() as u64,
        });
        if obj
            .annotations()
            .get(&format!("{ANNOTATION_PREFIX}crash-after-create"))
            .is_some_and(|v| v == "true")
        {
            tracing::error!(
                "nop: crash-after-create is set: aborting the process after creating {external_name}"
            );
            std::process::abort();
        }
        Ok(())
    }

    async fn update(
        &self,
        obj: &Cluster,
        external_name: &str,
        changes: &[ClusterChange],
    ) -> Result<(), ProviderError> {
        let _call = self.enter(obj, "update", &self.calls.update).await?;
        let ready_delay = self.settings().ready_delay.as_millis() as u64;
        let found = self.mutate(external_name, |cluster| {
            for change in changes {
                match change {
                    ClusterChange::UpgradeControlPlane { to } => cluster.version = to.clone(),
                    ClusterChange::UpgradeNodePool { pool, to } => {
                        for p in cluster.node_pools.iter_mut().filter(|p| &p.name == pool) {
                            p.version = to.clone();
                        }
                    }
                    ClusterChange::ScaleNodePool {
                        pool,
                        min,
                        max,
                        desired,
                    } => {
                        for p in cluster.node_pools.iter_mut().filter(|p| &p.name == pool) {
                            p.min = *min;
                            p.max = *max;
                            p.desired = desired.unwrap_or(p.desired).clamp(*min, *max);
                        }
                    }
                    ClusterChange::AddNodePool(pool) => cluster.node_pools.push(NopPool {
                        name: pool.name.clone(),
                        machine_type: pool.machine_type.clone(),
                        version: cluster.version.clone(),
                        min: pool.min,
                        max: pool.max,
                        desired: pool.initial_count(),
                    }),
                    ClusterChange::RemoveNodePool { pool } => {
                        cluster.node_pools.retain(|p| &p.name != pool)
                    }
                    ClusterChange::ProviderSettings { .. } => {}
                }
            }
            cluster.busy_until = now_ms() + ready_delay;
        });
        if found {
            Ok(())
        } else {
            Err(ProviderError::new(
                ErrorKind::NotFound,
                format!("nop: no cluster named {external_name}"),
            ))
        }
    }

    async fn delete(&self, obj: &Cluster, external_name: &str) -> Result<(), ProviderError> {
        let _call = self.enter(obj, "delete", &self.calls.delete).await?;
        let ready_delay = self.settings().ready_delay.as_millis() as u64;
        if ready_delay == 0 {
            self.remove(external_name);
        } else {
            self.mutate(external_name, |c| {
                c.deleted_at = Some(now_ms() + ready_delay)
            });
        }
        Ok(())
    }

    fn validate(&self, obj: &Cluster) -> Result<(), Refusal> {
        if obj.spec.provider.is_some() {
            return Err(Refusal {
                reason: "InvalidSpec",
                field: "spec.provider".into(),
                message: "the nop provider takes no provider-specific block".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetforge_api::{ClusterSpec, NodePool, Reference};

    fn mk_cluster(name: &str) -> Cluster {
        let mut cluster = Cluster::new(
            name,
            ClusterSpec {
                provider_config_ref: Reference { name: "nop".into() },
                region: None,
                version: Some("1.35".into()),
                node_pools: vec![NodePool {
                    name: "workers".into(),
                    machine_type: "standard-2".into(),
                    min: 1,
                    max: 3,
                    desired: Some(2),
                }],
                profile: None,
                provider: None,
                tags: Default::default(),
                deletion_policy: Default::default(),
                management_policy: Default::default(),
                drift_policy: Default::default(),
                write_connection_secret_to_ref: None,
                paused: false,
            },
        );
        cluster.metadata.namespace = Some("team-a".into());
        cluster.metadata.uid = Some(format!("uid-{name}"));
        cluster
    }

    #[tokio::test]
    async fn a_created_cluster_is_observed_with_its_spec_and_owner() {
        let cloud = NopCloud::new(None);
        cloud.configure(Settings::default());
        let cluster = mk_cluster("dev");
        cloud.create(&cluster, "dev").await.unwrap();
        let seen = cloud.observe(&cluster, "dev").await.unwrap().unwrap();
        assert_eq!(seen.state, ExternalState::Ready);
        assert_eq!(seen.owner.as_deref(), Some("team-a/dev"));
        assert_eq!(seen.resource.version.as_deref(), Some("1.35"));
        assert_eq!(seen.resource.node_pools[0].desired, 2);
        assert_eq!(cloud.calls.snapshot(), (1, 1, 0, 0));
    }

    #[tokio::test]
    async fn injected_failures_run_out_after_n_calls() {
        let cloud = NopCloud::new(None);
        cloud.configure(Settings::default());
        let mut cluster = mk_cluster("dev");
        cluster
            .annotations_mut()
            .insert(format!("{ANNOTATION_PREFIX}fail-create"), "2".into());
        cluster
            .annotations_mut()
            .insert(format!("{ANNOTATION_PREFIX}fail-kind"), "Throttled".into());
        let first = cloud.create(&cluster, "dev").await.unwrap_err();
        assert_eq!(first.kind, ErrorKind::Throttled);
        assert_eq!(first.retry_after, Some(Duration::from_secs(1)));
        assert!(cloud.create(&cluster, "dev").await.is_err());
        cloud.create(&cluster, "dev").await.unwrap();
    }

    #[tokio::test]
    async fn out_of_band_changes_apply_once_per_value() {
        let cloud = NopCloud::new(None);
        cloud.configure(Settings::default());
        let mut cluster = mk_cluster("dev");
        cloud.create(&cluster, "dev").await.unwrap();
        cluster.annotations_mut().insert(
            format!("{ANNOTATION_PREFIX}out-of-band"),
            "scale workers=3".into(),
        );
        let seen = cloud.observe(&cluster, "dev").await.unwrap().unwrap();
        assert_eq!(seen.resource.node_pools[0].desired, 3);
        // Corrected by someone; the same annotation does not scale it again.
        cloud.mutate("dev", |c| c.node_pools[0].desired = 2);
        let seen = cloud.observe(&cluster, "dev").await.unwrap().unwrap();
        assert_eq!(seen.resource.node_pools[0].desired, 2);
        cluster
            .annotations_mut()
            .insert(format!("{ANNOTATION_PREFIX}out-of-band"), "delete".into());
        assert!(cloud.observe(&cluster, "dev").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn overlapping_calls_on_one_object_are_journalled_from_any_instance() {
        let dir = tempfile::tempdir().unwrap();
        let slow = Settings {
            call_delay: Duration::from_millis(200),
            ..Settings::default()
        };
        // Two instances, as two replicas sharing one account.
        let (a, b) = (
            NopCloud::new(Some(dir.path().to_path_buf())),
            NopCloud::new(Some(dir.path().to_path_buf())),
        );
        a.configure(slow.clone());
        b.configure(slow);
        let (dev, web) = (mk_cluster("dev"), mk_cluster("web"));
        // One after the other, and two objects at once: no overlap.
        a.observe(&dev, "dev").await.unwrap();
        b.observe(&dev, "dev").await.unwrap();
        let (x, y) = tokio::join!(a.observe(&dev, "dev"), b.observe(&web, "web"));
        x.unwrap();
        y.unwrap();
        assert!(!dir.path().join(CONCURRENT_LOG).exists());
        // One object from both at once.
        let (x, y) = tokio::join!(a.observe(&dev, "dev"), b.observe(&dev, "dev"));
        x.unwrap();
        y.unwrap();
        let overlaps = std::fs::read_to_string(dir.path().join(CONCURRENT_LOG)).unwrap();
        assert_eq!(overlaps.lines().count(), 1, "{overlaps}");
        assert!(overlaps.ends_with("_dev observe\n"), "{overlaps}");
    }

    #[tokio::test]
    async fn a_state_directory_keeps_clusters_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = mk_cluster("dev");
        {
            let cloud = NopCloud::new(Some(dir.path().to_path_buf()));
            cloud.configure(Settings::default());
            cloud.create(&cluster, "dev").await.unwrap();
        }
        let cloud = NopCloud::new(Some(dir.path().to_path_buf()));
        cloud.configure(Settings::default());
        assert_eq!(cloud.names(), vec!["dev".to_string()]);
        assert!(cloud.observe(&cluster, "dev").await.unwrap().is_some());
        // A second create call is journalled even though it changes
        // nothing: the journal counts calls, across instances.
        cloud.create(&cluster, "dev").await.unwrap();
        let journal = std::fs::read_to_string(dir.path().join(CREATES_LOG)).unwrap();
        assert_eq!(journal, "dev\ndev\n");
    }

    #[tokio::test]
    async fn the_failure_rate_is_reproducible_from_its_seed() {
        let run = || async {
            let cloud = NopCloud::new(None);
            cloud.configure(Settings {
                failure_rate: 0.3,
                seed: 42,
                ..Settings::default()
            });
            let cluster = mk_cluster("dev");
            let mut outcomes = Vec::new();
            for _ in 0..50 {
                outcomes.push(cloud.observe(&cluster, "dev").await.is_err());
            }
            outcomes
        };
        let first = run().await;
        assert_eq!(first, run().await);
        let failures = first.iter().filter(|f| **f).count();
        assert!(
            (5..=25).contains(&failures),
            "{failures} of 50 failed at rate 0.3"
        );
    }
}
