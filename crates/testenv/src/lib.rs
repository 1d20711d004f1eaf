//! Starts real Kubernetes control planes for tests: etcd and kube-apiserver
//! built by `scripts/install-tools`, on 127.0.0.1, with generated
//! certificates; optionally kube-controller-manager, kube-scheduler and kwok
//! so that workloads really become Available on simulated nodes.
//!
//! ```no_run
//! # async fn example() -> Result<(), fleetforge_testenv::Error> {
//! use fleetforge_testenv::with_temp_ns;
//! with_temp_ns(|client, namespace| async move {
//!     // create objects in `namespace` through `client` ...
//! })
//! .await;
//! # Ok(()) }
//! ```
//!
//! One control plane of each flavour is shared per test binary
//! ([`shared`], [`shared_with_workloads`]); each test works in its own
//! temporary namespace. Child processes die with the test binary.

mod control_plane;
pub mod eks_upgrades;
mod kwok;
pub mod moto;
mod pki;
mod process;
pub mod tools;

use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use control_plane::{Builder, ControlPlane, data_root};
pub use kwok::{NODE_ANNOTATION, node};
pub use process::{OwnedProcess, free_port, pids_mentioning, pss_bytes, rss_bytes};

/// The requests a [`ControlPlane::counting_client`] made: method and path
/// (with the query), in order.
#[derive(Debug, Clone, Default)]
pub struct Requests(std::sync::Arc<std::sync::Mutex<Vec<(http::Method, String)>>>);

impl Requests {
    fn record<B>(&self, request: &http::Request<B>) {
        let path = request
            .uri()
            .path_and_query()
            .map_or_else(String::new, |p| p.to_string());
        self.0
            .lock()
            .expect("requests")
            .push((request.method().clone(), path));
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<(http::Method, String)> {
        self.0.lock().expect("requests").clone()
    }

    /// How many requests so far had `method` and a path containing `part`.
    pub fn count(&self, method: &http::Method, part: &str) -> usize {
        self.0
            .lock()
            .expect("requests")
            .iter()
            .filter(|(m, path)| m == method && path.contains(part))
            .count()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.0.lock().expect("requests").clear();
    }
}

/// Label on every namespace [`with_temp_ns`] creates.
pub const TEMP_NAMESPACE_LABEL: &str = "fleetforge.dev/testenv";

/// Everything that can go wrong starting or using a test control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is missing: run scripts/install-tools to build the pinned Kubernetes binaries")]
    MissingTool { path: std::path::PathBuf },
    #[error("could not start {name} (is setpriv from util-linux installed?): {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} exited ({status}); its log ends with:\n{log_tail}")]
    Exited {
        name: String,
        status: String,
        log_tail: String,
    },
    #[error("timed out after {waited:?} waiting for {what}; last seen: {last}")]
    NotReady {
        what: String,
        waited: Duration,
        last: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("reading the generated kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    fn io(context: &'static str, source: std::io::Error) -> Self {
        Error::Io { context, source }
    }

    /// True when a component failed because its port was taken.
    fn is_port_conflict(&self) -> bool {
        matches!(self, Error::Exited { log_tail, .. } if log_tail.contains("address already in use"))
    }
}

/// The control plane (etcd + kube-apiserver) shared by all tests of this
/// test binary, started on first use.
pub fn shared() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(|| start_blocking(ControlPlane::builder()))
}

/// The shared control plane with kube-controller-manager, kube-scheduler and
/// kwok, for tests whose workloads must become Ready.
pub fn shared_with_workloads() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(|| start_blocking(ControlPlane::builder().workloads(true)))
}

/// Starts a control plane from any context, async or not: on its own thread
/// with its own runtime, because the caller's runtime belongs to one test.
fn start_blocking(builder: Builder) -> ControlPlane {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a runtime to start the control plane")
            .block_on(builder.start())
    })
    .join()
    .expect("the control-plane start thread panicked")
    .unwrap_or_else(|e| panic!("starting the test control plane: {e}"))
}

/// Runs `test` with a client of the [`shared`] control plane and a new
/// namespace, and deletes the namespace afterwards, also when `test` panics.
pub async fn with_temp_ns<F, Fut>(test: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    shared().with_temp_ns(test).await;
}

impl ControlPlane {
    /// Runs `test` with a client and a new namespace on this control plane,
    /// and deletes the namespace afterwards, also when `test` panics.
    pub async fn with_temp_ns<F, Fut>(&self, test: F)
    where
        F: FnOnce(Client, String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let client = self
            .client()
            .await
            .expect("a client for the test control plane");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let name = temp_namespace_name();
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEMP_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating temporary namespace {name}: {e}"));
        let outcome = AssertUnwindSafe(test(client, name.clone()))
            .catch_unwind()
            .await;
        if let Err(e) = namespaces.delete(&name, &DeleteParams::default()).await {
            tracing::warn!("deleting temporary namespace {name}: {e}");
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A namespace name from the running test's name (cargo names each test
/// thread after its test) and a counter: readable in logs, unique per binary.
fn temp_namespace_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let test = std::thread::current()
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test")
        .to_ascii_lowercase();
    let mut slug: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    slug = slug.trim_matches('-').to_string();
    format!("t-{slug}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Waits until `condition` holds for the object `name` (it receives `None`
/// while the object does not exist) and returns the object as it was then
/// (`None` when it did not exist, as when awaiting a deletion). On timeout the
/// error says what was awaited and shows the object as last seen.
pub async fn await_condition<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    condition: impl Fn(Option<&K>) -> bool,
) -> Result<Option<K>, Error>
where
    K: Resource + Clone + Debug + DeserializeOwned + Serialize + Send + 'static,
{
    let wait =
        kube::runtime::wait::await_condition(api.clone(), name, |obj: Option<&K>| condition(obj));
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(e)) => Err(Error::NotReady {
            what: what.to_string(),
            waited: timeout,
            last: format!("the watch failed: {e}"),
        }),
        Err(_) => {
            let last = match api.get_opt(name).await {
                Ok(Some(obj)) => serde_json::to_string(&obj).unwrap_or_default(),
                Ok(None) => "the object does not exist".to_string(),
                Err(e) => format!("could not read the object: {e}"),
            };
            Err(Error::NotReady {
                what: what.to_string(),
                waited: timeout,
                last,
            })
        }
    }
}
