//! The watch a fleetforge controller's own kind starts from: every change a
//! person or another controller makes to the spec or the metadata triggers
//! a pass, while the controller's own status writes do not (its poll
//! re-observes); managed fields are dropped from the cache.

use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use fleetforge_api::{Cluster, ToolTarget, VirtualCluster};
use fleetforge_runtime::informer::Informer;
use fleetforge_runtime::shards::Selection;
use tokio::sync::watch;

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// The process's one informer of each kind several controllers follow:
/// Clusters (the engine, the tools fan-out, the profile controller),
/// VirtualClusters (their controller, the tools fan-out, the profile
/// controller) and ToolTargets (their controller, the ToolInstalls'
/// summaries, rollouts). Made before the controllers, run beside them.
/// Sharded, each watches what the replica's [`Selection`] says.
#[derive(Debug, Clone)]
pub struct Informers {
    /// The Clusters in scope.
    pub clusters: Arc<Informer<Cluster>>,
    /// The VirtualClusters in scope.
    pub virtual_clusters: Arc<Informer<VirtualCluster>>,
    /// The ToolTargets in scope.
    pub tool_targets: Arc<Informer<ToolTarget>>,
}

impl Informers {
    /// Informers of every object in `namespace` (all when None).
    pub fn new(client: &Client, namespace: Option<&str>) -> Self {
        Self {
            clusters: Informer::new(scoped(client, namespace)),
            virtual_clusters: Informer::new(scoped(client, namespace)),
            tool_targets: Informer::new(scoped(client, namespace)),
        }
    }

    /// Informers of the objects in `namespace` (all when None) that
    /// `selection` selects, as it changes.
    pub fn selected(
        client: &Client,
        namespace: Option<&str>,
        selection: &watch::Receiver<Selection>,
    ) -> Self {
        Self {
            clusters: Informer::selected(scoped(client, namespace), selection.clone()),
            virtual_clusters: Informer::selected(scoped(client, namespace), selection.clone()),
            tool_targets: Informer::selected(scoped(client, namespace), selection.clone()),
        }
    }

    /// Waits until each cache holds every object (after the replica's
    /// selection became all).
    pub async fn listed_everything(&self) {
        self.clusters.listed_everything().wait().await;
        self.virtual_clusters.listed_everything().wait().await;
        self.tool_targets.listed_everything().wait().await;
    }

    /// Runs every watch until the process stops.
    pub async fn run(&self) {
        tokio::join!(
            self.clusters.clone().run(),
            self.virtual_clusters.clone().run(),
            self.tool_targets.clone().run()
        );
    }
}

/// The objects of kind K in `namespace`, or in every namespace when None
/// (a controller started with or without `--namespace`).
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// What in an object triggers a pass: its generation (the spec), its
/// annotations and finalizers, and whether it is being deleted.
pub fn change_hash<K: Resource>(obj: &K) -> Option<u64> {
    let meta = obj.meta();
    let mut hasher = DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// A cache of the objects `api` sees, and the stream of those that changed
/// by [`change_hash`], for `Controller::for_stream`.
pub fn changes<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    changes_by(api, change_hash::<K>)
}

/// As [`changes`], with `hash` saying what counts as a change.
pub fn changes_by<K>(
    api: Api<K>,
    hash: fn(&K) -> Option<u64>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    changes_and_deletions(api, hash, |_: &K| {})
}

/// As [`changes_by`], also telling `deleted` of every object the watch
/// sees go (a deletion is no change to reconcile, but others may count
/// what is left).
pub fn changes_and_deletions<K>(
    api: Api<K>,
    hash: fn(&K) -> Option<u64>,
    deleted: impl Fn(&K) + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|obj: &mut K| obj.managed_fields_mut().clear())
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(obj)) = event {
                deleted(obj);
            }
        })
        .applied_objects()
        .predicate_filter(hash, Default::default());
    (store, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetforge_api::Environment;

    #[test]
    fn status_changes_do_not_count_spec_and_metadata_changes_do() {
        let mut env: Environment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "generation": 1},
            "spec": {"type": "virtual", "owner": "alice"},
        }))
        .unwrap();
        let before = change_hash(&env);
        env.status = Some(Default::default());
        assert_eq!(change_hash(&env), before);
        env.metadata.generation = Some(2);
        let after_spec = change_hash(&env);
        assert_ne!(after_spec, before);
        env.metadata.annotations = Some([("k".to_string(), "v".to_string())].into());
        assert_ne!(change_hash(&env), after_spec);
    }
}
