//! How the tools controllers reach a target: a [`Driver`] opens a
//! [`Session`] per target, and a session lists, installs, upgrades and
//! uninstalls releases and looks at their live objects. The helm driver
//! (the pinned CLI, real releases visible to `helm list`) serves real
//! targets; the nop driver ([`crate::nop`]) serves `nop` clusters, for
//! benchmarks and fault tests, and is never presented as real.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fleetforge_api::tool_set::HealthCheck;
use fleetforge_runtime::clients::{TargetClients, fingerprint};
use kube::Client;
use serde_json::Value;

use crate::helm::{self, Helm, HelmError, Release, ReleaseRequest};
use crate::live::{Drift, Objects, Seen};
use crate::metrics::ToolMetrics;

/// A target's current releases by (namespace, name).
pub type Releases = BTreeMap<(String, String), Release>;

/// What a driver needs to know of a target.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// A key unique among targets (`namespace/Kind/name`); drift
    /// notifications carry it.
    pub key: &'a str,
    /// Its kubeconfig (empty for targets a driver reaches without one).
    pub kubeconfig: &'a [u8],
    /// Its annotations (the nop driver's faults come from them).
    pub annotations: &'a BTreeMap<String, String>,
}

/// Work on one target.
#[async_trait]
pub trait Session: Send + Sync + std::fmt::Debug {
    /// The current revision of every release (in `namespace` only, when
    /// given).
    async fn releases(&self, namespace: Option<&str>) -> Result<Releases, HelmError>;
    /// `helm upgrade --install`.
    async fn upgrade(&self, release: &ReleaseRequest<'_>) -> Result<(), HelmError>;
    /// `helm uninstall`; a release not there is not an error.
    async fn uninstall(&self, name: &str, namespace: &str) -> Result<(), HelmError>;
    /// How the release's live objects differ from it.
    async fn drift(&self, release: &Release, namespace: &str) -> Result<Drift, String>;
    /// Creates the chart's `crds/` objects that are gone.
    async fn restore(&self, crds: &[Value]) -> Result<(), String>;
    /// Why the tool is not healthy yet (empty when it is), and the reads
    /// that took.
    async fn unhealthy(
        &self,
        checks: &[HealthCheck],
        namespace: &str,
        seen: &Seen,
    ) -> Result<(Vec<String>, u64), String>;
    /// A client of the target's API, where there is one.
    fn client(&self) -> Option<&Client>;
}

/// Opens sessions with targets.
#[async_trait]
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// The driver's name (`helm`, `nop`), for metrics.
    fn name(&self) -> &'static str;
    /// A session with `target`, reused while its kubeconfig is unchanged.
    async fn session(&self, target: Target<'_>) -> Result<Arc<dyn Session>, String>;
    /// Drops what is kept for target `key` (it is gone).
    fn forget(&self, key: &str);
}

/// The helm driver.
#[derive(Debug)]
pub struct HelmDriver {
    /// Helm's home and the kubeconfig files; removed with the driver.
    _work: Option<tempfile::TempDir>,
    helm: Helm,
    kubeconfigs: PathBuf,
    clients: Arc<TargetClients>,
    notify: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    metrics: Arc<ToolMetrics>,
    sessions: Mutex<HashMap<String, Arc<HelmSession>>>,
}

impl HelmDriver {
    /// A driver running `helm` with kubeconfig files in `kubeconfigs`
    /// (created), clients from `clients`; `notify` is told (with the
    /// target's key) when a live object a drift check compared changes.
    pub fn new(
        helm: Helm,
        kubeconfigs: PathBuf,
        clients: Arc<TargetClients>,
        notify: Option<tokio::sync::mpsc::UnboundedSender<String>>,
        metrics: Arc<ToolMetrics>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&kubeconfigs)?;
        Ok(Self {
            _work: None,
            helm,
            kubeconfigs,
            clients,
            notify,
            metrics,
            sessions: Mutex::new(HashMap::new()),
        })
    }
}

impl HelmDriver {
    /// A driver running the `helm` at `binary`, at most `processes` at
    /// once, in a private work directory (its configuration, cache and the
    /// kubeconfig files) removed when the driver goes.
    pub fn start(
        binary: PathBuf,
        processes: usize,
        clients: Arc<TargetClients>,
        notify: Option<tokio::sync::mpsc::UnboundedSender<String>>,
        metrics: Arc<ToolMetrics>,
    ) -> Result<Self, String> {
        let failed = |e: std::io::Error| format!("creating the Helm work directory: {e}");
        let work = tempfile::Builder::new()
            .prefix("fleetforge-helm-")
            .tempdir()
            .map_err(failed)?;
        for dir in ["cache", "config", "data"] {
            std::fs::create_dir_all(work.path().join(dir)).map_err(failed)?;
        }
        let helm = Helm::with_processes(binary, work.path().to_path_buf(), processes);
        let mut driver = Self::new(
            helm,
            work.path().join("kubeconfigs"),
            clients,
            notify,
            metrics,
        )
        .map_err(failed)?;
        driver._work = Some(work);
        Ok(driver)
    }
}

#[async_trait]
impl Driver for HelmDriver {
    fn name(&self) -> &'static str {
        "helm"
    }

    async fn session(&self, target: Target<'_>) -> Result<Arc<dyn Session>, String> {
        let print = fingerprint(target.kubeconfig);
        if let Some(session) = self.sessions.lock().expect("sessions").get(target.key)
            && session.fingerprint == print
        {
            return Ok(session.clone());
        }
        let clients = self.clients.get(target.kubeconfig).await?;
        let file = self.kubeconfigs.join(target.key.replace('/', "--"));
        let (path, content) = (file.clone(), target.kubeconfig.to_vec());
        fleetforge_runtime::blocking(move || write_private(&path, &content))
            .await
            .map_err(|e| format!("writing the kubeconfig: {e}"))?;
        let session = Arc::new(HelmSession {
            fingerprint: print,
            kubeconfig: file,
            objects: Objects::new(
                clients.client.clone(),
                clients.watch_client.clone(),
                self.notify
                    .clone()
                    .map(|notify| (notify, target.key.to_string())),
            ),
            helm: self.helm.clone(),
            metrics: self.metrics.clone(),
        });
        self.sessions
            .lock()
            .expect("sessions")
            .insert(target.key.to_string(), session.clone());
        Ok(session)
    }

    fn forget(&self, key: &str) {
        if let Some(session) = self.sessions.lock().expect("sessions").remove(key) {
            let _ = std::fs::remove_file(&session.kubeconfig);
        }
    }
}

/// A helm session: the kubeconfig as a file for helm, and the target's
/// live objects (with their watches).
#[derive(Debug)]
struct HelmSession {
    fingerprint: u64,
    kubeconfig: PathBuf,
    objects: Objects,
    helm: Helm,
    metrics: Arc<ToolMetrics>,
}

#[async_trait]
impl Session for HelmSession {
    async fn releases(&self, namespace: Option<&str>) -> Result<Releases, HelmError> {
        self.metrics.target_reads.inc();
        helm::releases_in(self.objects.client(), namespace).await
    }

    async fn upgrade(&self, release: &ReleaseRequest<'_>) -> Result<(), HelmError> {
        let result = self.helm.upgrade(&self.kubeconfig, release).await;
        self.metrics.driver_call("helm", "upgrade", result.is_ok());
        result.map(|_| ())
    }

    async fn uninstall(&self, name: &str, namespace: &str) -> Result<(), HelmError> {
        let result = self.helm.uninstall(&self.kubeconfig, name, namespace).await;
        self.metrics
            .driver_call("helm", "uninstall", result.is_ok());
        result.map(|_| ())
    }

    async fn drift(&self, release: &Release, namespace: &str) -> Result<Drift, String> {
        let drift = self
            .objects
            .drift(&release.manifest, &release.crds, namespace)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.target_reads.inc_by(drift.reads);
        Ok(drift)
    }

    async fn restore(&self, crds: &[Value]) -> Result<(), String> {
        self.objects.restore(crds).await.map_err(|e| e.to_string())
    }

    async fn unhealthy(
        &self,
        checks: &[HealthCheck],
        namespace: &str,
        seen: &Seen,
    ) -> Result<(Vec<String>, u64), String> {
        let checked = self
            .objects
            .unhealthy(checks, namespace, seen)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.target_reads.inc_by(checked.1);
        Ok(checked)
    }

    fn client(&self) -> Option<&Client> {
        Some(self.objects.client())
    }
}

fn write_private(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)
}
