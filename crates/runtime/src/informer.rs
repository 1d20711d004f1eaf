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
//!
//! An informer of sharded objects follows a [`Selection`]: when the shards
//! this replica owns change, its watch starts again with the new label
//! selector, and subscribers are told of objects that left the selection
//! ([`Change::Left`]; they still exist, another replica has them).

use std::collections::{HashMap, HashSet};
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
use tokio::sync::watch;

use crate::ready::{Gate, Opener, gate};
use crate::shards::Selection;

/// What a subscriber is told.
#[derive(Debug)]
pub enum Change<K> {
    /// The object as the store now holds it (created, changed, or listed).
    Applied(Arc<K>),
    /// The object is gone; its last state.
    Deleted(Arc<K>),
    /// The object left this informer's selection (it belongs to a shard
    /// another replica owns now); its last state here.
    Left(Arc<K>),
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
    selection: Option<watch::Receiver<Selection>>,
    everything_opener: Opener,
    everything: Gate,
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
        Self::with_selection(api, None)
    }

    /// An informer over `api` that watches only `selection` (all objects
    /// when None), starting again whenever it changes.
    pub fn selected(api: Api<K>, selection: watch::Receiver<Selection>) -> Arc<Self> {
        Self::with_selection(api, Some(selection))
    }

    fn with_selection(api: Api<K>, selection: Option<watch::Receiver<Selection>>) -> Arc<Self> {
        let (store, writer) = reflector::store::<K>();
        let (opener, listed) = gate();
        let (everything_opener, everything) = gate();
        Arc::new(Self {
            api,
            store,
            writer: Mutex::new(Some(writer)),
            subscribers: Mutex::new(Vec::new()),
            opener,
            listed,
            selection,
            everything_opener,
            everything,
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

    /// Opens once a list of every object (no selection) is in the cache:
    /// what controllers that need the whole fleet wait for.
    pub fn listed_everything(&self) -> Gate {
        self.everything.clone()
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
        let Some(mut writer) = self.writer.lock().expect("writer").take() else {
            return;
        };
        let mut selection = self.selection.clone();
        loop {
            let mut config = watcher::Config::default().any_semantic();
            let labels = selection
                .as_mut()
                .and_then(|s| s.borrow_and_update().label_selector());
            let whole = labels.is_none();
            if let Some(labels) = labels {
                config = config.labels(&labels);
            }
            let events = watcher(self.api.clone(), config)
                .default_backoff()
                .modify(|obj: &mut K| obj.managed_fields_mut().clear());
            let mut events = std::pin::pin!(events);
            loop {
                let reselected = async {
                    match selection.as_mut() {
                        Some(s) => s.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    event = events.next() => match event {
                        Some(event) => self.apply(&mut writer, event, whole),
                        None => return,
                    },
                    changed = reselected => {
                        if changed {
                            // Watch again with the new selector; the store
                            // is replaced when its list is in.
                            break;
                        }
                        // The selection will not change any more.
                        selection = None;
                    }
                }
            }
        }
    }

    /// Puts one watch event in the store and tells subscribers.
    fn apply(
        &self,
        writer: &mut reflector::store::Writer<K>,
        event: Result<watcher::Event<K>, watcher::Error>,
        whole: bool,
    ) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(kind = %K::kind(&K::DynamicType::default()), "watch: {e}");
                return;
            }
        };
        let before = matches!(event, watcher::Event::InitDone).then(|| self.store.state());
        writer.apply_watcher_event(&event);
        match event {
            watcher::Event::Apply(obj) => self.broadcast_applied(&obj),
            watcher::Event::Delete(obj) => {
                self.broadcast(|| Change::Deleted(Arc::new(obj.clone())));
            }
            watcher::Event::InitDone => {
                let now = self.store.state();
                let kept: HashSet<ObjectRef<K>> =
                    now.iter().map(|o| ObjectRef::from_obj(&**o)).collect();
                let mut subscribers = self.subscribers.lock().expect("subscribers");
                for obj in before.into_iter().flatten() {
                    if !kept.contains(&ObjectRef::from_obj(&*obj)) {
                        subscribers.retain(|s| s.send(Change::Left(obj.clone())).is_ok());
                    }
                }
                for obj in now {
                    subscribers.retain(|s| s.send(Change::Applied(obj.clone())).is_ok());
                }
                // Still under the lock: a subscriber comes either before
                // this list (and got it) or after the gate opened (and
                // catches up from the store).
                self.opener.open();
                if whole {
                    self.everything_opener.open();
                }
                drop(subscribers);
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
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
                // Should it come back, it is new here again.
                Change::Left(obj) => {
                    seen.remove(&ObjectRef::from_obj(&*obj));
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
