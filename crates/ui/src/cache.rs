//! The objects a person may see, kept current by watches made as that
//! person: one watch per kind and scope (all namespaces, or each
//! namespace asked for), each feeding a [`Store`] and bumping one change
//! counter that open pages follow. A watch the API server refuses (403)
//! or does not serve (404) is recorded as such and retried slowly and
//! quietly, never as an error loop; other failures back off to 30 s.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fleetforge_api::{Cluster, Environment, FleetRollout, ToolInstall, ToolTarget, VirtualCluster};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::view::tools::{ToolInstallSummary, ToolTargetSummary};
use crate::view::{Access, Listing, ScopeAccess};

/// How long a refused or unserved watch waits before asking again
/// (permissions and CRDs change rarely; a person who was just granted
/// access sees it within this).
const RECHECK: Duration = Duration::from_secs(30);
/// Longest backoff after other failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Scope<T> {
    namespace: Option<String>,
    access: Access,
    objects: HashMap<String, Arc<T>>,
    /// Objects of a relist in progress, swapped in when it completes so
    /// that a page never shows half a list.
    relist: Option<HashMap<String, Arc<T>>>,
}

/// The objects of one kind from every watched scope.
#[derive(Debug)]
pub struct Store<T> {
    scopes: RwLock<Vec<Scope<T>>>,
}

impl<T> Store<T> {
    /// An empty store for `scopes` (`None`: all namespaces).
    pub fn new(scopes: &[Option<String>]) -> Self {
        Self {
            scopes: RwLock::new(
                scopes
                    .iter()
                    .map(|namespace| Scope {
                        namespace: namespace.clone(),
                        access: Access::Loading,
                        objects: HashMap::new(),
                        relist: None,
                    })
                    .collect(),
            ),
        }
    }

    /// The objects and the state of each scope's watch, now.
    pub fn listing(&self) -> Listing<T> {
        let scopes = self.scopes.read().expect("store lock");
        Listing {
            items: scopes
                .iter()
                .flat_map(|s| s.objects.values().cloned())
                .collect(),
            access: scopes
                .iter()
                .map(|s| ScopeAccess {
                    namespace: s.namespace.clone(),
                    access: s.access.clone(),
                })
                .collect(),
        }
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        let scopes = self.scopes.read().expect("store lock");
        scopes.iter().map(|s| s.objects.len()).sum()
    }

    /// Whether no object is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_scope<R>(&self, index: usize, f: impl FnOnce(&mut Scope<T>) -> R) -> R {
        let mut scopes = self.scopes.write().expect("store lock");
        f(&mut scopes[index])
    }
}

fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// What a watch error means for the page.
fn access_of(error: &watcher::Error) -> Access {
    let api_error = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some(status.as_ref().clone()),
            other => return Access::Failing(other.to_string()),
        },
        watcher::Error::WatchError(status) => Some(status.as_ref().clone()),
        watcher::Error::NoResourceVersion => None,
    };
    match api_error {
        Some(status) if status.code == 403 => Access::Forbidden(status.message),
        Some(status) if status.code == 404 => Access::NotServed(status.message),
        Some(status) if status.code == 401 => {
            Access::Forbidden(format!("not authenticated: {}", status.message))
        }
        Some(status) => Access::Failing(status.message),
        None => Access::Failing(error.to_string()),
    }
}

/// Follows `api` with `config` into scope `index` of `store`, making each
/// object slim with `slim`, and bumps `changes` on every change. Runs
/// until its task is aborted.
pub async fn follow<K, T>(
    api: Api<K>,
    config: watcher::Config,
    store: Arc<Store<T>>,
    index: usize,
    slim: fn(K) -> T,
    changes: watch::Sender<u64>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    T: Send + Sync + 'static,
{
    let notify = || changes.send_modify(|n| *n = n.wrapping_add(1));
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut stream = watcher(api.clone(), config.clone()).boxed();
        let mut wait = backoff;
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::Init) => {
                    store.with_scope(index, |s| s.relist = Some(HashMap::new()));
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    let key = key(&obj);
                    let obj = Arc::new(slim(obj));
                    store.with_scope(index, |s| {
                        s.relist.get_or_insert_with(HashMap::new).insert(key, obj)
                    });
                }
                Ok(watcher::Event::InitDone) => {
                    store.with_scope(index, |s| {
                        s.objects = s.relist.take().unwrap_or_default();
                        s.access = Access::Ready;
                    });
                    backoff = Duration::from_secs(1);
                    notify();
                }
                Ok(watcher::Event::Apply(obj)) => {
                    let key = key(&obj);
                    let obj = Arc::new(slim(obj));
                    store.with_scope(index, |s| s.objects.insert(key, obj));
                    notify();
                }
                Ok(watcher::Event::Delete(obj)) => {
                    let key = key(&obj);
                    store.with_scope(index, |s| s.objects.remove(&key));
                    notify();
                }
                Err(error) => {
                    let access = access_of(&error);
                    wait = match access {
                        Access::Forbidden(_) | Access::NotServed(_) => RECHECK,
                        _ => backoff,
                    };
                    let changed = store.with_scope(index, |s| {
                        let changed = s.access != access;
                        // What a person may no longer list, they no longer
                        // see; objects of a failing watch stay, marked stale.
                        if matches!(access, Access::Forbidden(_) | Access::NotServed(_)) {
                            s.objects.clear();
                        }
                        s.relist = None;
                        s.access = access.clone();
                        changed
                    });
                    if changed {
                        tracing::info!(kind = %K::kind(&Default::default()), ?access, "watch not serving");
                        notify();
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A Cluster as kept: without managed fields or kubectl's copy of the
/// last applied object, which are most of an object's size and never shown.
pub fn slim_cluster(mut cluster: Cluster) -> Cluster {
    slim_meta(&mut cluster);
    cluster
}

fn slim_meta<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

fn slim_virtual_cluster(mut vc: VirtualCluster) -> VirtualCluster {
    slim_meta(&mut vc);
    // Chart values can be large and are not shown.
    vc.spec.values = None;
    vc
}

fn slim_environment(mut env: Environment) -> Environment {
    slim_meta(&mut env);
    env
}

fn slim_rollout(mut rollout: FleetRollout) -> FleetRollout {
    slim_meta(&mut rollout);
    rollout
}

fn slim_tool_target(tt: ToolTarget) -> ToolTargetSummary {
    ToolTargetSummary::from_tool_target(&tt)
}

fn slim_tool_install(ti: ToolInstall) -> ToolInstallSummary {
    ToolInstallSummary::from_tool_install(&ti)
}

/// One person's view of the fleet: their client and what their watches
/// hold. Dropping it stops the watches.
pub struct Fleet {
    /// The person's client: every read and write is made with it.
    pub client: Client,
    /// Their Kubernetes user name, if the API server told it.
    pub user: Option<String>,
    /// Clusters.
    pub clusters: Arc<Store<Cluster>>,
    /// VirtualClusters.
    pub virtual_clusters: Arc<Store<VirtualCluster>>,
    /// ToolInstalls (summaries).
    pub tool_installs: Arc<Store<ToolInstallSummary>>,
    /// ToolTargets (summaries).
    pub tool_targets: Arc<Store<ToolTargetSummary>>,
    /// Environments.
    pub environments: Arc<Store<Environment>>,
    /// FleetRollouts.
    pub rollouts: Arc<Store<FleetRollout>>,
    changes: watch::Sender<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("user", &self.user)
            .field("clusters", &self.clusters.len())
            .field("tool_targets", &self.tool_targets.len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Starts the watches of every kind, as `client`, in `scopes` (`None`:
    /// all namespaces).
    pub fn start(client: Client, user: Option<String>, scopes: &[Option<String>]) -> Self {
        let (changes, _) = watch::channel(0u64);
        let mut fleet = Self {
            clusters: Arc::new(Store::new(scopes)),
            virtual_clusters: Arc::new(Store::new(scopes)),
            tool_installs: Arc::new(Store::new(scopes)),
            tool_targets: Arc::new(Store::new(scopes)),
            environments: Arc::new(Store::new(scopes)),
            rollouts: Arc::new(Store::new(scopes)),
            changes,
            tasks: Vec::new(),
            client,
            user,
        };
        for (index, scope) in scopes.iter().enumerate() {
            fleet.spawn(scope, index, fleet.clusters.clone(), slim_cluster);
            fleet.spawn(
                scope,
                index,
                fleet.virtual_clusters.clone(),
                slim_virtual_cluster,
            );
            fleet.spawn(scope, index, fleet.tool_installs.clone(), slim_tool_install);
            fleet.spawn(scope, index, fleet.tool_targets.clone(), slim_tool_target);
            fleet.spawn(scope, index, fleet.environments.clone(), slim_environment);
            fleet.spawn(scope, index, fleet.rollouts.clone(), slim_rollout);
        }
        fleet
    }

    fn spawn<K, T>(
        &mut self,
        scope: &Option<String>,
        index: usize,
        store: Arc<Store<T>>,
        slim: fn(K) -> T,
    ) where
        K: Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + 'static,
        K::DynamicType: Default,
        T: Send + Sync + 'static,
    {
        let api: Api<K> = match scope {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        self.tasks.push(tokio::spawn(follow(
            api,
            watcher::Config::default(),
            store,
            index,
            slim,
            self.changes.clone(),
        )));
    }

    /// A receiver that sees every change to any store.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until every watch has listed once (or been refused), up to
    /// `within`; the first page then shows the fleet, not "loading".
    pub async fn await_loaded(&self, within: Duration) {
        let mut changes = self.subscribe();
        let loaded = || {
            self.clusters.listing().loaded()
                && self.virtual_clusters.listing().loaded()
                && self.tool_installs.listing().loaded()
                && self.tool_targets.listing().loaded()
                && self.environments.listing().loaded()
                && self.rollouts.listing().loaded()
        };
        let _ = tokio::time::timeout(within, async {
            while !loaded() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16, message: &str) -> Box<Status> {
        Box::new(Status {
            code,
            message: message.to_string(),
            ..Status::default()
        })
    }

    #[test]
    fn watch_errors_become_what_the_page_says() {
        let cases = [
            (
                watcher::Error::InitialListFailed(kube::Error::Api(status(
                    403,
                    "clusters is forbidden",
                ))),
                Access::Forbidden("clusters is forbidden".into()),
            ),
            (
                watcher::Error::InitialListFailed(kube::Error::Api(status(
                    404,
                    "the server could not find",
                ))),
                Access::NotServed("the server could not find".into()),
            ),
            (
                watcher::Error::WatchError(status(410, "too old resource version")),
                Access::Failing("too old resource version".into()),
            ),
            (
                watcher::Error::WatchStartFailed(kube::Error::Api(status(401, "Unauthorized"))),
                Access::Forbidden("not authenticated: Unauthorized".into()),
            ),
        ];
        for (error, want) in cases {
            assert_eq!(access_of(&error), want, "{error}");
        }
    }

    #[test]
    fn slim_objects_drop_what_is_never_shown() {
        let cluster: Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
            "metadata": {
                "name": "c", "namespace": "n",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"providerConfigRef": {"name": "nop"}},
        }))
        .unwrap();
        let slim = slim_cluster(cluster);
        assert!(
            slim.metadata
                .managed_fields
                .as_ref()
                .is_none_or(|m| m.is_empty())
        );
        assert_eq!(slim.annotations().keys().collect::<Vec<_>>(), ["keep"]);
    }

    #[test]
    fn a_store_lists_every_scope_and_its_access() {
        let store: Store<u32> = Store::new(&[Some("a".into()), Some("b".into())]);
        assert!(!store.listing().loaded());
        store.with_scope(0, |s| {
            s.objects.insert("a/x".into(), Arc::new(1));
            s.access = Access::Ready;
        });
        store.with_scope(1, |s| s.access = Access::Forbidden("no".into()));
        let listing = store.listing();
        assert!(listing.loaded());
        assert_eq!(listing.items.len(), 1);
        assert_eq!(listing.access[1].scope_text(), "in namespace b");
        assert_eq!(store.len(), 1);
    }
}
