//! One real Kubernetes control plane on 127.0.0.1: etcd and kube-apiserver,
//! plus kube-controller-manager, kube-scheduler and kwok when workloads must
//! really run (Deployments becoming Available on simulated nodes).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::process::{OwnedProcess, free_port, pids_mentioning};
use crate::{Error, kwok, pki, tools};

const START_ATTEMPTS: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What to start; see [`ControlPlane::builder`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    workloads: bool,
}

impl Builder {
    /// Also start kube-controller-manager, kube-scheduler and kwok, and
    /// register one simulated node, so that workloads become Ready.
    pub fn workloads(mut self, workloads: bool) -> Self {
        self.workloads = workloads;
        self
    }

    /// Starts the control plane and waits until the API server is ready
    /// (and, with workloads, the simulated node is Ready). A port taken by
    /// someone else between choosing and binding is retried with new ports.
    pub async fn start(self) -> Result<ControlPlane, Error> {
        let mut attempt = 1;
        loop {
            match ControlPlane::start_once(&self).await {
                Err(e) if attempt < START_ATTEMPTS && e.is_port_conflict() => {
                    tracing::warn!(attempt, "control plane lost a port race, retrying: {e}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// A running control plane. Dropping it stops every process and removes its
/// data directory.
#[derive(Debug)]
pub struct ControlPlane {
    /// Started processes in start order; stopped in reverse.
    processes: Vec<OwnedProcess>,
    dir: PathBuf,
    kubeconfig_path: PathBuf,
    server: String,
}

impl ControlPlane {
    /// Configure a control plane to start.
    pub fn builder() -> Builder {
        Builder::default()
    }

    async fn start_once(options: &Builder) -> Result<Self, Error> {
        let dir = new_data_dir()?;
        let pki = pki::write(&dir.join("pki"))?;
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let apiserver_port = free_port()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig_path = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig_path, &server, &pki)?;

        let mut plane = ControlPlane {
            processes: Vec::new(),
            dir,
            kubeconfig_path,
            server,
        };
        plane.spawn(
            "etcd",
            &[
                "--name=testenv".into(),
                format!("--data-dir={}", plane.dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=testenv=http://127.0.0.1:{etcd_peer_port}"),
                // Test data is thrown away; fsync only costs time.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        plane.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={apiserver_port}"),
                format!("--cert-dir={}", plane.dir.join("apiserver").display()),
                path_flag("--tls-cert-file", &pki.serving_cert),
                path_flag("--tls-private-key-file", &pki.serving_key),
                path_flag("--client-ca-file", &pki.ca_cert),
                path_flag("--service-account-key-file", &pki.service_account_pub),
                path_flag(
                    "--service-account-signing-key-file",
                    &pki.service_account_key,
                ),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!(
                    "--service-cluster-ip-range={}",
                    pki::SERVICE_CLUSTER_IP_RANGE
                ),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
            ],
        )?;
        plane.await_ready(options).await?;

        if options.workloads {
            let kubeconfig = path_flag("--kubeconfig", &plane.kubeconfig_path);
            plane.spawn(
                "kube-controller-manager",
                &[
                    kubeconfig.clone(),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    path_flag(
                        "--service-account-private-key-file",
                        &pki.service_account_key,
                    ),
                    path_flag("--root-ca-file", &pki.ca_cert),
                    "--use-service-account-credentials=false".into(),
                    "--controllers=*".into(),
                    // kwok keeps node leases fresh; a long grace period keeps a
                    // briefly starved node from being tainted in a busy test run.
                    "--node-monitor-grace-period=10m".into(),
                ],
            )?;
            plane.spawn(
                "kube-scheduler",
                &[
                    kubeconfig.clone(),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                ],
            )?;
            let kwok_config = plane.dir.join("kwok.yaml");
            std::fs::write(&kwok_config, kwok::STAGES)
                .map_err(|e| Error::io("writing the kwok configuration", e))?;
            plane.spawn(
                "kwok",
                &[
                    kubeconfig,
                    path_flag("--config", &kwok_config),
                    "--manage-all-nodes=false".into(),
                    format!(
                        "--manage-nodes-with-annotation-selector={}=fake",
                        kwok::NODE_ANNOTATION
                    ),
                    "--node-lease-duration-seconds=40".into(),
                    "--cidr=10.244.0.1/16".into(),
                    "--node-ip=10.1.0.1".into(),
                ],
            )?;
            plane.add_node("kwok-node-0").await?;
        }
        Ok(plane)
    }

    fn spawn(&mut self, name: &str, args: &[String]) -> Result<(), Error> {
        let program = tools::binary(name)?;
        let log = self.dir.join(format!("{name}.log"));
        self.processes
            .push(OwnedProcess::spawn(name, &program, args, &log)?);
        Ok(())
    }

    async fn await_ready(&mut self, options: &Builder) -> Result<(), Error> {
        let client = self.client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for process in &mut self.processes {
                process.ensure_running()?;
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a static request is valid");
            let last = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: format!(
                        "kube-apiserver at {} (workloads: {})",
                        self.server, options.workloads
                    ),
                    waited: READY_TIMEOUT,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Registers a simulated node that kwok manages (workloads only) and waits
    /// until it is Ready.
    pub async fn add_node(&self, name: &str) -> Result<Node, Error> {
        let nodes: Api<Node> = Api::all(self.client().await?);
        nodes
            .create(&PostParams::default(), &kwok::node(name))
            .await?;
        let what = format!("node {name} to become Ready (kwok)");
        crate::await_condition(
            &nodes,
            name,
            &what.clone(),
            READY_TIMEOUT,
            |node: Option<&Node>| {
                node.and_then(|n| n.status.as_ref()?.conditions.as_ref())
                    .is_some_and(|conditions| {
                        conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
            },
        )
        .await?
        .ok_or_else(|| Error::NotReady {
            what,
            waited: READY_TIMEOUT,
            last: "the node was deleted".to_string(),
        })
    }

    /// A new client for this control plane, bound to the calling runtime
    /// (each `#[tokio::test]` has its own runtime, so clients are not shared).
    pub async fn client(&self) -> Result<Client, Error> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig_path)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// An admin client that records every request it makes, to count the
    /// API calls of the code under test.
    pub async fn counting_client(&self) -> Result<(Client, crate::Requests), Error> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig_path)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let requests = crate::Requests::default();
        let recorder = requests.clone();
        let client = kube::client::ClientBuilder::try_from(config)?
            .with_layer(&tower::util::MapRequestLayer::new(
                move |request: http::Request<kube::client::Body>| {
                    recorder.record(&request);
                    request
                },
            ))
            .build();
        Ok((client, requests))
    }

    /// Path of an admin kubeconfig, for kubectl, helm or a controller process.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Writes a kubeconfig at `path` that authenticates with a bearer
    /// `token` (a service account's), to run a process with exactly that
    /// identity's permissions.
    pub fn write_token_kubeconfig(&self, path: &Path, token: &str) -> Result<(), Error> {
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testenv", "cluster": {
                "server": self.server,
                "certificate-authority": self.dir.join("pki").join("ca.crt"),
            }}],
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "token"}}],
            "current-context": "testenv",
        });
        std::fs::write(path, kubeconfig.to_string())
            .map_err(|e| Error::io("writing a token kubeconfig", e))
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The data directory (certificates, etcd data, component logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names and process ids of the running components.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }

    /// Resident memory of all components together, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.processes
            .iter()
            .filter_map(OwnedProcess::rss_bytes)
            .sum()
    }

    /// The tail of a component's log, for diagnosing a failed test.
    pub fn log_tail(&self, name: &str) -> Option<String> {
        self.processes
            .iter()
            .find(|p| p.name() == name)
            .map(OwnedProcess::log_tail)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(process) = self.processes.pop() {
            drop(process);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_flag(flag: &str, path: &Path) -> String {
    format!("{flag}={}", path.display())
}

/// The root under which control planes keep their data:
/// `FLEETFORGE_TESTENV_DIR` or `<tmp>/fleetforge-testenv`.
pub fn data_root() -> PathBuf {
    std::env::var_os("FLEETFORGE_TESTENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("fleetforge-testenv"))
}

/// A fresh `<root>/<pid>-<n>` directory. Directories of test binaries that no
/// longer run (shared control planes are never dropped) are removed first.
fn new_data_dir() -> Result<PathBuf, Error> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let root = data_root();
    std::fs::create_dir_all(&root).map_err(|e| Error::io("creating the testenv root", e))?;
    remove_stale_dirs(&root);
    let dir = root.join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating a data directory", e))?;
    Ok(dir)
}

fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let owner_alive = Path::new(&format!("/proc/{pid}")).exists();
        let path = entry.path();
        // A directory still used by a live process (of a dead owner, during
        // the moment its children take to die) is left for the next run.
        if !owner_alive && pids_mentioning(&path.to_string_lossy()).is_empty() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

fn write_kubeconfig(path: &Path, server: &str, pki: &pki::Pki) -> Result<(), Error> {
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": server,
            "certificate-authority": pki.ca_cert,
        }}],
        "users": [{"name": "admin", "user": {
            "client-certificate": pki.admin_cert,
            "client-key": pki.admin_key,
        }}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "admin"}}],
        "current-context": "testenv",
    });
    std::fs::write(path, kubeconfig.to_string()).map_err(|e| Error::io("writing the kubeconfig", e))
}
