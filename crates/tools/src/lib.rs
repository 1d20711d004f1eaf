//! Tools on clusters: the drivers that reach targets (the pinned `helm`
//! CLI, and the nop driver), values merging and templating, and the
//! controllers that install ToolSets onto Clusters and VirtualClusters:
//! the ToolInstall controller selects targets and keeps one ToolTarget per
//! target; the ToolTarget controller installs, upgrades, corrects and
//! uninstalls on its target. A Cluster's `profile` makes a ToolInstall.

pub mod diff;
pub mod driver;
pub mod helm;
pub mod install;
pub mod live;
pub mod metrics;
pub mod nop;
pub mod profile;
pub mod select;
pub mod sync;
pub mod target;
pub mod tool_target;
pub mod values;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use fleetforge_api::tool_target::TargetRef;
use fleetforge_api::{FleetRollout, ToolInstall, ToolSet, ToolTarget};
use fleetforge_core::events::Recorder;
use fleetforge_core::watch::{Informers, scoped};
use fleetforge_runtime::Runtime;
use fleetforge_runtime::clients::TargetClients;
use fleetforge_runtime::informer::Change;
use fleetforge_runtime::ready::gate;
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

pub use metrics::ToolMetrics;
pub use sync::values_equal;
pub use tool_target::Drivers;

use crate::select::{INSTALL_LABEL, Object, target_key};

/// Settings of the tools controllers.
#[derive(Debug, Clone)]
pub struct ToolOptions {
    /// The `helm` binary.
    pub helm: PathBuf,
    /// Only ToolInstalls in this namespace (default: all).
    pub namespace: Option<String>,
    /// Where relative chart paths (`chart.path`) are resolved.
    pub charts_dir: PathBuf,
    /// helm processes at once, over every target.
    pub max_helm_processes: usize,
}

/// The drivers of a process: one helm driver (its helm processes capped
/// for every controller that installs charts: tools and VirtualClusters)
/// and the nop driver; and the stream of targets whose compared live
/// objects changed.
pub fn drivers(
    helm: PathBuf,
    max_helm_processes: usize,
    clients: Arc<TargetClients>,
    metrics: Arc<ToolMetrics>,
) -> Result<(Drivers, UnboundedReceiver<String>), String> {
    let (changed, changes) = unbounded_channel::<String>();
    let helm = driver::HelmDriver::start(
        helm,
        max_helm_processes,
        clients,
        Some(changed),
        metrics.clone(),
    )?;
    Ok((
        Drivers {
            helm: Arc::new(helm),
            nop: nop::NopDriver::new(metrics),
        },
        changes,
    ))
}

/// Runs the ToolInstall and ToolTarget controllers until the process
/// stops, with the drivers given (tests and benchmarks hold on to the nop
/// driver), reading targets from the process's `targets` informers (their
/// runner runs them); `drifted` carries the keys of targets whose compared
/// objects changed.
pub async fn run_with(
    runtime: &Runtime,
    client: Client,
    targets: &Informers,
    options: ToolOptions,
    drivers: Drivers,
    drifted: UnboundedReceiver<String>,
) {
    tokio::join!(
        run_installs(runtime, client.clone(), targets, &options),
        run_targets(runtime, client, targets, &options, drivers, drifted),
    );
}

/// The ToolInstalls in scope, cached, and the stream of those whose spec
/// or metadata changed.
fn tool_installs(
    client: &Client,
    options: &ToolOptions,
) -> (
    reflector::Store<ToolInstall>,
    impl Stream<Item = Result<ToolInstall, watcher::Error>> + Send + 'static,
) {
    fleetforge_core::watch::changes(scoped::<ToolInstall>(client, options.namespace.as_deref()))
}

/// Runs the ToolInstall controller: targets selected from the whole
/// fleet's caches, one ToolTarget kept per target. Where replicas share
/// the fleet, one of them runs it (it must see every target).
pub async fn run_installs(
    runtime: &Runtime,
    client: Client,
    targets: &Informers,
    options: &ToolOptions,
) {
    let scope = options.namespace.as_deref();
    let (install_store, install_events) = tool_installs(&client, options);
    let (rollout_store, rollout_writer) = reflector::store::<FleetRollout>();
    let (rollouts_opener, rollouts_listed) = gate();
    let (set_store, set_writer) = reflector::store::<ToolSet>();
    let (wake_install, installs_woken) = unbounded_channel::<ObjectRef<ToolInstall>>();
    let (sets_opener, sets_listed) = gate();

    // A ToolTarget's every change (its status too) may change its
    // ToolInstall's summary.
    let children = targets.tool_targets.subscribe().into_stream();
    let parent_of_child = wake_install.clone();
    let children_changed = children.for_each(move |change| {
        if let Change::Applied(tt) | Change::Deleted(tt) = change
            && let (Some(install), Some(namespace)) =
                (tt.labels().get(INSTALL_LABEL), tt.namespace())
        {
            let _ = parent_of_child.send(ObjectRef::new(install).within(&namespace));
        }
        futures::future::ready(())
    });
    let set_events = watcher(
        Api::<ToolSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(set_writer)
    .inspect(sets_opener.on_listed())
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());

    // A FleetRollout that comes, changes or goes holds or releases the
    // tools of the ToolInstalls it governs.
    let rollout_events = watcher(
        scoped::<FleetRollout>(&client, scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|r: &mut FleetRollout| r.managed_fields_mut().clear())
    .reflect(rollout_writer)
    .inspect(rollouts_opener.on_listed())
    .filter_map({
        // Its status moves often during a round: only a change of its
        // spec or metadata, or its deletion, is news here.
        let mut seen: HashMap<ObjectRef<FleetRollout>, Option<u64>> = HashMap::new();
        move |event| {
            let passed = match event {
                Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => {
                    let hash = fleetforge_core::watch::change_hash(&r);
                    (seen.insert(ObjectRef::from_obj(&r), hash) != Some(hash)).then_some(Ok(r))
                }
                Ok(watcher::Event::Delete(r)) => {
                    seen.remove(&ObjectRef::from_obj(&r));
                    Some(Ok(r))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(passed)
        }
    });

    let parent = Arc::new(install::Context {
        recorder: Recorder::new(client.clone(), "fleetforge-tools"),
        client: client.clone(),
        installs: install_store.clone(),
        listed: vec![
            targets.clusters.listed(),
            targets.virtual_clusters.listed(),
            sets_listed,
            targets.tool_targets.listed(),
            rollouts_listed,
        ],
        clusters: targets.clusters.store(),
        virtual_clusters: targets.virtual_clusters.store(),
        tool_sets: set_store,
        children: targets.tool_targets.store(),
        rollouts: rollout_store,
        selected: Mutex::new(HashMap::new()),
        shards: runtime.shards().clone(),
    });

    let by_set = install_store.clone();
    let by_rollout = install_store.clone();
    let installs = Controller::for_stream(install_events, install_store)
        .watches_stream(set_events, move |set: ToolSet| {
            let name = set.name_any();
            by_set
                .state()
                .into_iter()
                .filter(|ti| {
                    ti.spec
                        .tool_set_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
                })
                .map(|ti| ObjectRef::from_obj(&*ti))
                .collect::<Vec<_>>()
        })
        .watches_stream(rollout_events, move |mut rollout: FleetRollout| {
            // Gone or going, it releases what it held.
            rollout.metadata.deletion_timestamp = None;
            by_rollout
                .state()
                .into_iter()
                .filter(|ti| install::governs(&rollout, ti))
                .map(|ti| ObjectRef::from_obj(&*ti))
                .collect::<Vec<_>>()
        })
        .reconcile_on(receive(installs_woken));

    let router = InstallRouter {
        parent: parent.clone(),
        wake_install,
    };
    let clusters = targets.clusters.subscribe().into_stream();
    let virtual_clusters = targets.virtual_clusters.subscribe().into_stream();
    let stopped = runtime.stopped();
    let routing = async {
        tokio::select! {
            _ = async {
                tokio::join!(
                    router.route(clusters, |c| Object::Cluster(c)),
                    router.route(virtual_clusters, |v| Object::Virtual(v)),
                    children_changed,
                )
            } => {}
            () = stopped => {}
        }
    };
    tokio::join!(
        runtime.run("ToolInstall", installs, parent, install::reconcile),
        routing,
    );
}

/// Runs the ToolTarget controller: the tools of one ToolInstall on one
/// target each. Where replicas share the fleet, each runs it for the
/// ToolTargets of its shards (a ToolTarget is in its target's shard).
pub async fn run_targets(
    runtime: &Runtime,
    client: Client,
    targets: &Informers,
    options: &ToolOptions,
    drivers: Drivers,
    drifted: UnboundedReceiver<String>,
) {
    // The ToolInstalls, for their maxConcurrency; the cache is all this
    // part reads, so their changes are no work here.
    let (install_store, install_events) = tool_installs(&client, options);
    let installs_cached = install_events.for_each(|_| futures::future::ready(()));
    let (wake_child, children_woken) = unbounded_channel::<ObjectRef<ToolTarget>>();
    let child = Arc::new(tool_target::Context {
        client: client.clone(),
        drivers,
        charts_dir: options.charts_dir.clone(),
        recorder: Recorder::new(client.clone(), "fleetforge-tools"),
        failures: Default::default(),
        listed: (targets.clusters.listed(), targets.virtual_clusters.listed()),
        installs: install_store,
        slots: Default::default(),
        clusters: targets.clusters.store(),
        virtual_clusters: targets.virtual_clusters.store(),
    });
    let child_events = targets
        .tool_targets
        .subscribe()
        .changes_by(fleetforge_core::watch::change_hash, |_: &ToolTarget| {});
    let children = Controller::for_shared_stream(child_events, targets.tool_targets.store())
        .reconcile_on(receive(children_woken));

    let router = TargetRouter {
        children: targets.tool_targets.store(),
        wake_child,
        seen: Mutex::new(HashMap::new()),
    };
    let clusters = targets.clusters.subscribe().into_stream();
    let virtual_clusters = targets.virtual_clusters.subscribe().into_stream();
    let stopped = runtime.stopped();
    // The routes run as long as their streams (which never end by
    // themselves, but for the drift channel of a driver that has none).
    let routing = async {
        tokio::select! {
            _ = async {
                tokio::join!(
                    router.route(clusters, |c| Object::Cluster(c)),
                    router.route(virtual_clusters, |v| Object::Virtual(v)),
                    router.drift(drifted),
                    installs_cached,
                )
            } => {}
            () = stopped => {}
        }
    };
    tokio::join!(
        runtime.run_sharded(
            "ToolTarget",
            children,
            child,
            fleetforge_runtime::shards::by_label::<ToolTarget>,
            tool_target::reconcile,
        ),
        routing,
    );
}

fn receive<K>(rx: UnboundedReceiver<ObjectRef<K>>) -> impl Stream<Item = ObjectRef<K>> + Send
where
    K: Resource<DynamicType = ()> + Send + 'static,
{
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
}

/// Turns changes of targets into passes of exactly the ToolInstalls whose
/// selection they enter or leave.
struct InstallRouter {
    parent: Arc<install::Context>,
    wake_install: UnboundedSender<ObjectRef<ToolInstall>>,
}

impl InstallRouter {
    async fn route<K>(
        &self,
        changes: impl Stream<Item = Change<K>>,
        object: for<'a> fn(&'a K) -> Object<'a>,
    ) where
        K: Resource + ResourceExt,
    {
        let mut changes = std::pin::pin!(changes);
        while let Some(change) = changes.next().await {
            let (target, gone) = match &change {
                Change::Applied(k) => (k, false),
                Change::Deleted(k) => (k, true),
                // Not seen by this replica any more (never where the whole
                // fleet is watched, as here).
                Change::Left(_) => continue,
            };
            let namespace = target.namespace().unwrap_or_default();
            for install in self.parent.installs_for(object(target), &namespace, gone) {
                let _ = self.wake_install.send(install);
            }
        }
    }
}

/// Turns changes of targets (and of their live objects) into passes of
/// exactly the ToolTargets they concern.
struct TargetRouter {
    children: reflector::Store<ToolTarget>,
    wake_child: UnboundedSender<ObjectRef<ToolTarget>>,
    /// What each target looked like to its ToolTargets, by key.
    seen: Mutex<HashMap<String, u64>>,
}

impl TargetRouter {
    async fn route<K>(
        &self,
        changes: impl Stream<Item = Change<K>>,
        object: for<'a> fn(&'a K) -> Object<'a>,
    ) where
        K: Resource + ResourceExt,
    {
        let mut changes = std::pin::pin!(changes);
        while let Some(change) = changes.next().await {
            let (target, gone) = match &change {
                Change::Applied(k) => (k, false),
                Change::Deleted(k) => (k, true),
                // Another replica's now, with its ToolTargets; should it
                // come back, it is new here.
                Change::Left(k) => {
                    let key = target_key(
                        &k.namespace().unwrap_or_default(),
                        &TargetRef {
                            kind: object(k).kind(),
                            name: object(k).name(),
                        },
                    );
                    self.seen.lock().expect("seen").remove(&key);
                    continue;
                }
            };
            self.changed(
                object(target),
                &target.namespace().unwrap_or_default(),
                gone,
            );
        }
    }

    fn changed(&self, object: Object<'_>, namespace: &str, gone: bool) {
        let key = target_key(
            namespace,
            &TargetRef {
                kind: object.kind(),
                name: object.name(),
            },
        );
        // What a ToolTarget's work depends on: readiness, how to reach it,
        // its facts (labels, annotations) and what its host shares.
        let mut hasher = DefaultHasher::new();
        gone.hash(&mut hasher);
        object.deleting().hash(&mut hasher);
        object.ready().hash(&mut hasher);
        object.provider().hash(&mut hasher);
        object.labels().hash(&mut hasher);
        object.annotations().hash(&mut hasher);
        object.shared_tools().hash(&mut hasher);
        object.facts().endpoint.hash(&mut hasher);
        object.connection_secret().hash(&mut hasher);
        let hash = hasher.finish();
        {
            let mut seen = self.seen.lock().expect("seen");
            if gone {
                seen.remove(&key);
            } else if seen.insert(key.clone(), hash) == Some(hash) {
                return;
            }
        }
        self.wake_children_of(&key);
    }

    fn wake_children_of(&self, key: &str) {
        for child in tool_target::children_of(&self.children.state(), key) {
            let _ = self.wake_child.send(child);
        }
    }

    async fn drift(&self, mut drifted: UnboundedReceiver<String>) {
        while let Some(key) = drifted.recv().await {
            self.wake_children_of(&key);
        }
    }
}
