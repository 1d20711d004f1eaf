//! One watch and one cache of a kind per process, shared by every
//! controller that reads it (controller-runtime's shared informer).
//!
//! The Cluster engine, the tools fan-out and the profile controllers all
//! follow Clusters (and the last three VirtualClusters). Each used to run
//! its own watch with its own cache, so a fleet of 10,000 Clusters was held
//! up to three times. An [`Informer`] runs one watch, keeps one
//! [`Store`] (managed fields dropped: nothing here reads them), and hands
//! each subscriber every change as the same `Arc` the store holds.
//!
//! A subscriber sees every object once the first list is in (and again
//! after every relist, as a watch restart re-lists), then each apply and
//! delete; one subscribed after the first list first gets what the store
//! holds. Subscribers filter for what counts as a change to them with
//! [`Subscription::changes_by`], as `predicate_filter` does on a watch.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::ready::{Gate, Opener, gate};

/// What a subscriber is told.
#[derive(Debug)]
pub enum Change<K> {
    /// The object as the store now holds it (created, changed, or listed).
    Applied(Arc<K>),
    /// The object is gone; its last state.
    Deleted(Arc<K>),
}

/// One watch of kind `K` and its cache; see the module documentation.
pub struct Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    api: Api<K>,
    store: Store<K>,
    writer: Mutex<Option<reflector::store::Writer<K>>>,
    subscribers: Mutex<Vec<UnboundedSender<Change<K>>>>,
    opener: Opener,
    listed: Gate,
}

impl<K> Debug for Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("objects", &self.store.len())
            .finish_non_exhaustive()
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    /// An informer over `api` (all namespaces, or one); nothing is watched
    /// until [`Informer::run`].
    pub fn new(api: Api<K>) -> Arc<Self> {
        let (store, writer) = reflector::store::<K>();
        let (opener, listed) = gate();
        Arc::new(Self {
            api,
            store,
            writer: Mutex::new(Some(writer)),
            subscribers: Mutex::new(Vec::new()),
            opener,
            listed,
        })
    }

    /// The shared cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Opens once the first list is in the cache.
    pub fn listed(&self) -> Gate {
        self.listed.clone()
    }

    /// A new subscriber's stream of changes.
    pub fn subscribe(&self) -> Subscription<K> {
        let (sender, receiver) = unbounded_channel();
        let mut subscribers = self.subscribers.lock().expect("subscribers");
        // Under the lock, so nothing is broadcast between this catch-up
        // and joining the list.
        if self.listed.is_open() {
            for obj in self.store.state() {
                let _ = sender.send(Change::Applied(obj));
            }
        }
        subscribers.push(sender);
        Subscription { receiver }
    }

    /// Runs the watch until the process stops; a second call returns at
    /// once (there is one watch per informer).
    pub async fn run(self: Arc<Self>) {
        let Some(writer) = self.writer.lock().expect("writer").take() else {
            return;
        };
        let events = watcher(self.api.clone(), watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|obj: &mut K| obj.managed_fields_mut().clear())
            .reflect(writer);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(obj)) => self.broadcast_applied(&obj),
                Ok(watcher::Event::Delete(obj)) => {
                    self.broadcast(|| Change::Deleted(Arc::new(obj.clone())));
                }
                Ok(watcher::Event::InitDone) => {
                    let mut subscribers = self.subscribers.lock().expect("subscribers");
                    for obj in self.store.state() {
                        subscribers.retain(|s| s.send(Change::Applied(obj.clone())).is_ok());
                    }
                    // Still under the lock: a subscriber comes either
                    // before this list (and got it) or after the gate
                    // opened (and catches up from the store).
                    self.opener.open();
                    drop(subscribers);
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => tracing::warn!(kind = %K::kind(&K::DynamicType::default()), "watch: {e}"),
            }
        }
    }

    /// Tells every subscriber of `obj` as the store holds it.
    fn broadcast_applied(&self, obj: &K) {
        let key = ObjectRef::from_obj(obj);
        let Some(stored) = self.store.get(&key) else {
            return;
        };
        self.broadcast(|| Change::Applied(stored.clone()));
    }

    fn broadcast(&self, change: impl Fn() -> Change<K>) {
        self.subscribers
            .lock()
            .expect("subscribers")
            .retain(|s| s.send(change()).is_ok());
    }
}

/// One subscriber's changes, in order.
#[derive(Debug)]
pub struct Subscription<K> {
    receiver: UnboundedReceiver<Change<K>>,
}

impl<K> Subscription<K>
where
    K: Resource + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send,
{
    /// Every change, as a stream.
    pub fn into_stream(self) -> impl Stream<Item = Change<K>> + Send + 'static {
        futures::stream::unfold(self.receiver, |mut receiver| async move {
            receiver.recv().await.map(|change| (change, receiver))
        })
    }

    /// The objects whose `hash` changed since this subscriber last saw them
    /// (a new object always counts), for `Controller::for_shared_stream`;
    /// `deleted` is told of every deletion.
    pub fn changes_by(
        self,
        hash: fn(&K) -> Option<u64>,
        deleted: impl Fn(&K) + Send + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
        self.into_stream().filter_map(move |change| {
            let passed = match change {
                Change::Applied(obj) => {
                    let key = ObjectRef::from_obj(&*obj);
                    match hash(&obj) {
                        Some(h) if seen.insert(key, h) == Some(h) => None,
                        _ => Some(obj),
                    }
                }
                Change::Deleted(obj) => {
                    seen.remove(&ObjectRef::from_obj(&*obj));
                    deleted(&obj);
                    None
                }
            };
            futures::future::ready(passed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config_map(name: &str, generation: i64) -> Arc<ConfigMap> {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm.metadata.generation = Some(generation);
        Arc::new(cm)
    }

    fn generation(cm: &ConfigMap) -> Option<u64> {
        cm.metadata.generation.map(|g| g as u64)
    }

    #[tokio::test]
    async fn a_subscriber_sees_only_what_changed_for_it_and_is_told_of_deletions() {
        let (sender, receiver) = unbounded_channel();
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let told = deleted.clone();
        let changes = Subscription { receiver }.changes_by(generation, move |cm: &ConfigMap| {
            told.lock().unwrap().push(cm.name_any());
        });
        for change in [
            Change::Applied(config_map("a", 1)),
            Change::Applied(config_map("a", 1)), // a status write: no change
            Change::Applied(config_map("b", 1)),
            Change::Applied(config_map("a", 2)),
            Change::Deleted(config_map("b", 1)),
            Change::Applied(config_map("b", 1)), // made again: new
        ] {
            sender.send(change).unwrap();
        }
        drop(sender);
        let passed: Vec<(String, Option<i64>)> = changes
            .map(|cm| (cm.name_any(), cm.metadata.generation))
            .collect()
            .await;
        assert_eq!(
            passed,
            [
                ("a".to_string(), Some(1)),
                ("b".to_string(), Some(1)),
                ("a".to_string(), Some(2)),
                ("b".to_string(), Some(1)),
            ]
        );
        assert_eq!(*deleted.lock().unwrap(), ["b"]);
    }
}
