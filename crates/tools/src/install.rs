//! The ToolInstall reconciler: installs a ToolSet's tools onto every
//! selected target with Helm, reports a state per target and per tool,
//! corrects drift, uninstalls from targets that leave the selection, and
//! from all of them when the ToolInstall is deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetforge_api::tool_install::{
    PlannedAction, PlannedChange, TargetStatus, ToolInstallSummary, ToolStatus, ValuesSourceKind,
};
use fleetforge_api::tool_set::ChartSource;
use fleetforge_api::{
    Cluster, DriftPolicy, DriftStatus, FIELD_MANAGER, Tool, ToolInstall, ToolSet, ToolState,
    VirtualCluster, annotation, condition,
};
use fleetforge_core::conditions::{self, Desired};
use fleetforge_core::events::{EventType, Recorder};
use fleetforge_core::finalizer;
use fleetforge_core::watch::scoped;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::SelectorExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::helm::{self, Helm, HelmError, OWNER_LABEL, Release, ReleaseRequest};
use crate::live::Seen;
use crate::metrics::ToolMetrics;
use crate::target::{Connection, Connections};
use crate::values::{self, TargetFacts};

/// Settings of the ToolInstall controller.
#[derive(Debug, Clone)]
pub struct ToolOptions {
    /// The `helm` binary.
    pub helm: PathBuf,
    /// Only ToolInstalls in this namespace (default: all).
    pub namespace: Option<String>,
    /// ToolInstalls reconciled at once.
    pub concurrency: u16,
    /// Where relative chart paths (`chart.path`) are resolved.
    pub charts_dir: PathBuf,
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    helm: Helm,
    charts_dir: PathBuf,
    /// Helm's home and the kubeconfig files; removed when the controller
    /// stops.
    _work: tempfile::TempDir,
    recorder: Recorder,
    connections: Connections,
    failures: Mutex<HashMap<String, Failure>>,
    metrics: Arc<ToolMetrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("helm", &self.helm)
            .finish_non_exhaustive()
    }
}

/// A failed install, retried with backoff until what is declared changes.
#[derive(Debug, Clone)]
struct Failure {
    fingerprint: u64,
    message: String,
    attempts: u32,
    retry_at: Instant,
}

/// Errors of one reconcile that are retried as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The management API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl fleetforge_runtime::ReconcileError for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesAPIError",
        }
    }
}

/// Runs the ToolInstall controller until the process stops, or says why
/// it cannot start.
pub async fn run(
    runtime: &fleetforge_runtime::Runtime,
    client: Client,
    options: ToolOptions,
    metrics: Arc<ToolMetrics>,
) -> Result<(), String> {
    let work = tempfile::Builder::new()
        .prefix("fleetforge-tools-")
        .tempdir()
        .map_err(|e| format!("creating the Helm work directory: {e}"))?;
    for dir in ["cache", "config", "data", "kubeconfigs"] {
        std::fs::create_dir_all(work.path().join(dir))
            .map_err(|e| format!("creating the Helm work directory: {e}"))?;
    }
    // Drift is looked at when it happens, not only at the next poll: the
    // targets' watches say which target had a compared object change.
    let (changed, changes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let connections = Connections::new(work.path().join("kubeconfigs"))
        .map_err(|e| format!("creating the kubeconfig directory: {e}"))?
        .notifying(changed);
    let context = Arc::new(Context {
        helm: Helm::new(options.helm.clone(), work.path().to_path_buf()),
        charts_dir: options.charts_dir.clone(),
        _work: work,
        recorder: Recorder::new(client.clone(), "fleetforge-tools"),
        client: client.clone(),
        connections,
        failures: Mutex::new(HashMap::new()),
        metrics,
    });

    let installs: Api<ToolInstall> = scoped(&client, options.namespace.as_deref());
    // Our own status writes do not trigger a pass: the poll re-reads.
    let (store, install_events) = fleetforge_core::watch::changes(installs);
    // A Cluster matters when its labels, readiness, endpoint or existence
    // change, not on every status refresh.
    let cluster_events = watcher(
        scoped::<Cluster>(&client, options.namespace.as_deref()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(cluster_hash, Default::default());
    let virtual_events = watcher(
        scoped::<VirtualCluster>(&client, options.namespace.as_deref()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(virtual_hash, Default::default());
    let set_events = watcher(
        Api::<ToolSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());

    let by_namespace = store.clone();
    let virtual_by_namespace = store.clone();
    let by_set = store.clone();
    let by_target = store.clone();
    let drifted = futures::stream::unfold(changes, |mut changes| async move {
        changes.recv().await.map(|target| (target, changes))
    })
    .flat_map(move |target: String| {
        let namespace = target.split_once('/').map(|(ns, _)| ns.to_string());
        futures::stream::iter(
            by_target
                .state()
                .into_iter()
                .filter(|ti| ti.namespace() == namespace)
                .map(|ti| ObjectRef::from_obj(&*ti))
                .collect::<Vec<_>>(),
        )
    });
    let controller = Controller::for_stream(install_events, store)
        .reconcile_on(drifted)
        .watches_stream(cluster_events, move |cluster: Cluster| {
            let namespace = cluster.namespace().unwrap_or_default();
            by_namespace
                .state()
                .into_iter()
                .filter(|ti| ti.namespace().as_deref() == Some(namespace.as_str()))
                .map(|ti| ObjectRef::from_obj(&*ti))
                .collect::<Vec<_>>()
        })
        .watches_stream(virtual_events, move |vc: VirtualCluster| {
            let namespace = vc.namespace().unwrap_or_default();
            virtual_by_namespace
                .state()
                .into_iter()
                .filter(|ti| ti.namespace().as_deref() == Some(namespace.as_str()))
                .map(|ti| ObjectRef::from_obj(&*ti))
                .collect::<Vec<_>>()
        })
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
        });
    runtime
        .run("ToolInstall", controller, context, reconcile)
        .await;
    Ok(())
}

fn cluster_hash(cluster: &Cluster) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    cluster.metadata.labels.hash(&mut hasher);
    cluster
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    cluster_ready(cluster).hash(&mut hasher);
    cluster
        .status
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .hash(&mut hasher);
    Some(hasher.finish())
}

fn virtual_hash(vc: &VirtualCluster) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    vc.metadata.labels.hash(&mut hasher);
    vc.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Object::Virtual(vc).ready().hash(&mut hasher);
    vc.spec.shared_tools.hash(&mut hasher);
    vc.status
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .hash(&mut hasher);
    Some(hasher.finish())
}

fn cluster_ready(cluster: &Cluster) -> bool {
    cluster
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, condition::READY))
}

/// One pass over a ToolInstall.
async fn reconcile(ti: Arc<ToolInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = ti.namespace().unwrap_or_default();
    let api: Api<ToolInstall> = Api::namespaced(ctx.client.clone(), &namespace);
    if ti.metadata.deletion_timestamp.is_some() {
        return finalize(&ti, &ctx, &api).await;
    }
    finalizer::ensure(&api, &*ti).await?;
    let pass = Pass::new(&ti, &ctx);
    let tools = match pass.declared_tools().await {
        Ok(tools) => tools,
        Err((reason, message)) => return pass.blocked(&api, reason, message).await,
    };
    let inventory = Inventory::list(&ctx.client, &namespace).await?;
    forget_gone_targets(&ctx, &namespace, &inventory).await;
    // A selector that does not parse selects nothing we can trust: nothing
    // is installed or removed until it is fixed.
    let selection = match select(&ti, &inventory) {
        Ok(selection) => selection,
        Err(message) => return pass.blocked(&api, "InvalidSelector", message).await,
    };
    let values_from = pass.values_from().await?;

    let previous = ti.status.clone().unwrap_or_default();
    let selected: BTreeSet<(&str, &str)> = selection
        .iter()
        .map(|t| (t.kind, t.name.as_str()))
        .collect();
    let leaving: Vec<&TargetStatus> = previous
        .targets
        .iter()
        .filter(|t| !selected.contains(&(t.kind.as_str(), t.name.as_str())))
        .filter(|t| inventory.find(&t.kind, &t.name).is_some())
        .collect();

    // Futures are made up front and run at most `maxConcurrency` at once
    // (an async fn does nothing until polled).
    let concurrency = usize::try_from(ti.spec.max_concurrency.max(1)).unwrap_or(1);
    let syncs: Vec<_> = selection
        .iter()
        .map(|target| {
            let before = previous
                .targets
                .iter()
                .find(|t| t.kind == target.kind && t.name == target.name);
            pass.sync_target(target, &tools, &values_from, before)
        })
        .collect();
    let mut reports: Vec<TargetReport> = futures::stream::iter(syncs)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let removes: Vec<_> = leaving
        .into_iter()
        .map(|target| {
            pass.remove_target(target, inventory.find(&target.kind, &target.name), &tools)
        })
        .collect();
    let removals: Vec<TargetReport> = futures::stream::iter(removes)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    // A target that is gone keeps no status, but its events are told.
    let mut gone_events = Vec::new();
    for mut removal in removals {
        if removal.removed {
            gone_events.append(&mut removal.events);
        } else {
            reports.push(removal);
        }
    }
    reports.sort_by(|a, b| a.status.name.cmp(&b.status.name));

    let mut outcome = Outcome::from_reports(reports);
    outcome.events.extend(gone_events);
    let requeue = outcome.requeue(pass.poll_interval());
    for (type_, reason, note) in &outcome.events {
        ctx.recorder
            .publish(&ti.object_ref(&()), *type_, reason, "Install", note)
            .await;
    }
    pass.write_status(&api, outcome).await?;
    Ok(Action::requeue(requeue))
}

/// Deletion: uninstall from every target in status, then drop the finalizer.
async fn finalize(
    ti: &ToolInstall,
    ctx: &Context,
    api: &Api<ToolInstall>,
) -> Result<Action, Error> {
    if !finalizer::has(ti) {
        return Ok(Action::await_change());
    }
    let pass = Pass::new(ti, ctx);
    let tools = pass.declared_tools().await.unwrap_or_default();
    let inventory = Inventory::list(&ctx.client, &pass.namespace).await?;
    let previous = ti.status.clone().unwrap_or_default();
    let mut remaining = Vec::new();
    for target in &previous.targets {
        let object = inventory.find(&target.kind, &target.name);
        let mut report = pass.remove_target(target, object, &tools).await;
        for (type_, reason, note) in report.events.drain(..) {
            ctx.recorder
                .publish(&ti.object_ref(&()), type_, reason, "Delete", &note)
                .await;
        }
        if !report.removed {
            remaining.push(report);
        }
    }
    if remaining.is_empty() {
        let prefix = format!("{}/", pass.owner);
        ctx.failures
            .lock()
            .expect("failures")
            .retain(|key, _| !key.starts_with(&prefix));
        finalizer::remove(api, ti).await?;
        return Ok(Action::await_change());
    }
    let names: Vec<&str> = remaining.iter().map(|r| r.status.name.as_str()).collect();
    let note = format!(
        "cannot uninstall from {} yet; annotate with {}=true to remove without uninstalling",
        names.join(", "),
        annotation::FORCE_REMOVE
    );
    let outcome = Outcome::from_reports(remaining);
    ctx.recorder
        .publish(
            &ti.object_ref(&()),
            EventType::Warning,
            "UninstallBlocked",
            "Delete",
            &note,
        )
        .await;
    pass.write_status(api, outcome).await?;
    Ok(Action::requeue(Duration::from_secs(10)))
}

/// Drops the connections (and kubeconfig files) of targets in `namespace`
/// that no longer exist.
async fn forget_gone_targets(ctx: &Context, namespace: &str, inventory: &Inventory) {
    ctx.connections
        .retain(namespace, |key| {
            inventory
                .clusters
                .iter()
                .any(|c| connection_key(Object::Cluster(c)) == key)
                || inventory
                    .virtual_clusters
                    .iter()
                    .any(|v| connection_key(Object::Virtual(v)) == key)
        })
        .await;
}

/// The Clusters and VirtualClusters of a namespace.
#[derive(Debug)]
struct Inventory {
    clusters: Vec<Cluster>,
    virtual_clusters: Vec<VirtualCluster>,
}

impl Inventory {
    async fn list(client: &Client, namespace: &str) -> Result<Self, kube::Error> {
        let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
        let virtual_clusters: Api<VirtualCluster> = Api::namespaced(client.clone(), namespace);
        Ok(Self {
            clusters: clusters.list(&ListParams::default()).await?.items,
            virtual_clusters: virtual_clusters.list(&ListParams::default()).await?.items,
        })
    }

    /// The target of `kind` named `name`, unless it is gone or going.
    fn find(&self, kind: &str, name: &str) -> Option<Object<'_>> {
        let object = match kind {
            CLUSTER => self
                .clusters
                .iter()
                .find(|c| c.name_any() == name)
                .map(Object::Cluster),
            VIRTUAL_CLUSTER => self
                .virtual_clusters
                .iter()
                .find(|v| v.name_any() == name)
                .map(Object::Virtual),
            _ => None,
        }?;
        (!object.deleting()).then_some(object)
    }
}

const CLUSTER: &str = "Cluster";
const VIRTUAL_CLUSTER: &str = "VirtualCluster";

/// A target object: a Cluster or a VirtualCluster.
#[derive(Debug, Clone, Copy)]
enum Object<'a> {
    Cluster(&'a Cluster),
    Virtual(&'a VirtualCluster),
}

impl Object<'_> {
    fn name(&self) -> String {
        match self {
            Object::Cluster(c) => c.name_any(),
            Object::Virtual(v) => v.name_any(),
        }
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        match self {
            Object::Cluster(c) => c.labels(),
            Object::Virtual(v) => v.labels(),
        }
    }

    fn deleting(&self) -> bool {
        match self {
            Object::Cluster(c) => c.metadata.deletion_timestamp.is_some(),
            Object::Virtual(v) => v.metadata.deletion_timestamp.is_some(),
        }
    }

    fn ready_condition(
        &self,
    ) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        let conditions = match self {
            Object::Cluster(c) => &c.status.as_ref()?.conditions,
            Object::Virtual(v) => &v.status.as_ref()?.conditions,
        };
        conditions.iter().find(|c| c.type_ == condition::READY)
    }

    fn ready(&self) -> bool {
        self.ready_condition().is_some_and(|c| c.status == "True")
    }

    fn connection_secret(&self) -> String {
        match self {
            Object::Cluster(c) => c.spec.connection_secret_name(&c.name_any()),
            Object::Virtual(v) => v
                .spec
                .write_connection_secret_to_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| format!("{}-kubeconfig", v.name_any())),
        }
    }

    /// Tools the target's host provides (VirtualCluster `sharedTools`).
    fn shared_tools(&self) -> &[String] {
        match self {
            Object::Cluster(_) => &[],
            Object::Virtual(v) => &v.spec.shared_tools,
        }
    }

    fn host(&self) -> String {
        match self {
            Object::Cluster(_) => String::new(),
            Object::Virtual(v) => v
                .spec
                .host
                .cluster_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| "management".into()),
        }
    }

    /// The facts values may refer to.
    fn facts(&self) -> TargetFacts {
        match self {
            Object::Cluster(cluster) => facts(cluster),
            Object::Virtual(vc) => {
                let status = vc.status.clone().unwrap_or_default();
                TargetFacts {
                    kind: VIRTUAL_CLUSTER.into(),
                    name: vc.name_any(),
                    namespace: vc.namespace().unwrap_or_default(),
                    provider: "vcluster".into(),
                    region: String::new(),
                    version: status.version.unwrap_or_default(),
                    endpoint: status.endpoint.unwrap_or_default(),
                    labels: vc.labels().clone(),
                    annotations: vc.annotations().clone(),
                }
            }
        }
    }
}

/// The connection cache key of a target (Clusters and VirtualClusters may
/// share names).
fn connection_key(object: Object<'_>) -> String {
    match object {
        Object::Cluster(c) => c.name_any(),
        Object::Virtual(v) => format!("virtual.{}", v.name_any()),
    }
}

/// A target chosen by the selection; `object` is None when a name list
/// names an object that does not exist.
#[derive(Debug)]
struct Target<'a> {
    kind: &'static str,
    name: String,
    object: Option<Object<'a>>,
}

/// Clusters and VirtualClusters named or matched by label, not being
/// deleted, by kind and name; or why a selector cannot be used.
fn select<'a>(ti: &ToolInstall, inventory: &'a Inventory) -> Result<Vec<Target<'a>>, String> {
    let targets = &ti.spec.targets;
    let selector =
        |field: &str, s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
            s.as_ref()
                .map(|s| fleetforge_core::selector::parse(field, s))
                .transpose()
        };
    let mut chosen: BTreeMap<(&'static str, String), Option<Object<'a>>> = BTreeMap::new();
    let groups = [
        (
            CLUSTER,
            &targets.cluster_names,
            selector("spec.targets.clusterSelector", &targets.cluster_selector)?,
            inventory
                .clusters
                .iter()
                .map(Object::Cluster)
                .collect::<Vec<_>>(),
        ),
        (
            VIRTUAL_CLUSTER,
            &targets.virtual_cluster_names,
            selector(
                "spec.targets.virtualClusterSelector",
                &targets.virtual_cluster_selector,
            )?,
            inventory
                .virtual_clusters
                .iter()
                .map(Object::Virtual)
                .collect::<Vec<_>>(),
        ),
    ];
    for (kind, names, selector, objects) in groups {
        for name in names.iter().flatten() {
            chosen.insert((kind, name.clone()), None);
        }
        for object in objects {
            let key = (kind, object.name());
            let named = chosen.contains_key(&key);
            let labelled = selector
                .as_ref()
                .is_some_and(|s| s.matches(object.labels()));
            if object.deleting() {
                chosen.remove(&key);
            } else if named || labelled {
                chosen.insert(key, Some(object));
            }
        }
    }
    Ok(chosen
        .into_iter()
        .map(|((kind, name), object)| Target { kind, name, object })
        .collect())
}

/// What one pass found and did on one target.
#[derive(Debug, Default)]
struct TargetReport {
    status: TargetStatus,
    drift: Vec<String>,
    plan: Vec<PlannedChange>,
    events: Vec<(EventType, &'static str, String)>,
    retry: Option<Duration>,
    removed: bool,
}

/// The whole pass, ready to be written as status.
#[derive(Debug, Default)]
struct Outcome {
    targets: Vec<TargetStatus>,
    drift: Vec<String>,
    plan: Vec<PlannedChange>,
    events: Vec<(EventType, &'static str, String)>,
    retry: Option<Duration>,
    blocked: Option<(&'static str, String)>,
}

impl Outcome {
    fn from_reports(reports: Vec<TargetReport>) -> Self {
        let mut outcome = Outcome::default();
        for report in reports {
            outcome.targets.push(report.status);
            outcome.drift.extend(report.drift);
            outcome.plan.extend(report.plan);
            outcome.events.extend(report.events);
            outcome.retry = match (outcome.retry, report.retry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        outcome
    }

    /// When to look again: soon while something is on its way, at the
    /// failure backoff for failed tools, else at the poll interval.
    fn requeue(&self, poll: Duration) -> Duration {
        let states = self
            .targets
            .iter()
            .flat_map(|t| t.tools.iter().map(|s| s.state));
        let mut next = fleetforge_core::managed::jittered(poll, 0.1);
        for state in states {
            let soon = match state {
                ToolState::Pending => Duration::from_secs(3),
                ToolState::Unknown => Duration::from_secs(15),
                _ => continue,
            };
            next = next.min(soon);
        }
        self.retry.map_or(next, |retry| next.min(retry))
    }

    fn summary(&self) -> ToolInstallSummary {
        let mut summary = ToolInstallSummary {
            targets: count(self.targets.len()),
            ..ToolInstallSummary::default()
        };
        for target in &self.targets {
            let states: Vec<ToolState> = target.tools.iter().map(|t| t.state).collect();
            let has = |s: ToolState| states.contains(&s);
            if has(ToolState::Failed) {
                summary.failed += 1;
            } else if has(ToolState::Unknown) {
                summary.unknown += 1;
            } else if has(ToolState::Pending) || has(ToolState::NotInstalled) {
                summary.pending += 1;
            } else if has(ToolState::Stale) {
                summary.stale += 1;
            } else if has(ToolState::Drifted) {
                summary.drifted += 1;
            } else {
                summary.deployed += 1;
            }
        }
        summary
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// One reconcile of one ToolInstall.
struct Pass<'a> {
    ti: &'a ToolInstall,
    ctx: &'a Context,
    namespace: String,
    owner: String,
}

impl<'a> Pass<'a> {
    fn new(ti: &'a ToolInstall, ctx: &'a Context) -> Self {
        let namespace = ti.namespace().unwrap_or_default();
        let owner = format!("{namespace}.{}", ti.name_any());
        Self {
            ti,
            ctx,
            namespace,
            owner,
        }
    }

    fn poll_interval(&self) -> Duration {
        self.ti
            .spec
            .poll_interval
            .parse::<kube::core::Duration>()
            .map(Duration::from)
            .unwrap_or(Duration::from_secs(60))
    }

    fn force_remove(&self) -> bool {
        self.ti
            .annotations()
            .get(annotation::FORCE_REMOVE)
            .is_some_and(|v| v == "true")
    }

    /// What is declared cannot be used: `Ready` and `Synced` say why, the
    /// targets keep the states they had, and nothing is changed on them.
    async fn blocked(
        &self,
        api: &Api<ToolInstall>,
        reason: &'static str,
        message: String,
    ) -> Result<Action, Error> {
        let previous = self.ti.status.clone().unwrap_or_default();
        let status = Outcome {
            targets: previous.targets.clone(),
            blocked: Some((reason, message.clone())),
            ..Outcome::default()
        };
        self.write_status(api, status).await?;
        self.ctx
            .recorder
            .publish(
                &self.ti.object_ref(&()),
                EventType::Warning,
                reason,
                "Resolve",
                &message,
            )
            .await;
        Ok(Action::requeue(Duration::from_secs(30)))
    }

    /// The tools in installation order, or why they cannot be had.
    async fn declared_tools(&self) -> Result<Vec<Tool>, (&'static str, String)> {
        let tools = match (&self.ti.spec.tool_set_ref, &self.ti.spec.tools) {
            (_, Some(tools)) => tools.clone(),
            (Some(reference), None) => {
                let sets: Api<ToolSet> = Api::all(self.ctx.client.clone());
                match sets.get_opt(&reference.name).await {
                    Ok(Some(set)) => set.spec.tools,
                    Ok(None) => {
                        return Err((
                            "ToolSetNotFound",
                            format!("spec.toolSetRef: ToolSet {} does not exist", reference.name),
                        ));
                    }
                    Err(e) => return Err(("ToolSetUnreadable", e.to_string())),
                }
            }
            (None, None) => return Err(("NoTools", "set toolSetRef or tools".into())),
        };
        let order = fleetforge_core::toolset::install_order(&tools)
            .map_err(|e| ("InvalidDependencies", e.to_string()))?;
        Ok(order
            .iter()
            .filter_map(|name| tools.iter().find(|t| &t.name == name).cloned())
            .map(|mut tool| {
                if let Some(path) = &tool.chart.path {
                    tool.chart.path = Some(self.ctx.charts_dir.join(path).display().to_string());
                }
                tool
            })
            .collect())
    }

    /// Values from Secrets and ConfigMaps, per tool in declared order; a
    /// source that cannot be used becomes an error for its tool.
    async fn values_from(&self) -> Result<BTreeMap<String, Result<Vec<Value>, String>>, Error> {
        let mut by_tool: BTreeMap<String, Result<Vec<Value>, String>> = BTreeMap::new();
        for (index, source) in self.ti.spec.values_from.iter().enumerate() {
            let field = format!("spec.valuesFrom[{index}]");
            let text = match source.kind {
                ValuesSourceKind::Secret => {
                    let api: Api<Secret> =
                        Api::namespaced(self.ctx.client.clone(), &self.namespace);
                    api.get_opt(&source.name).await?.map(|s| {
                        s.data.and_then(|d| {
                            d.get(&source.key)
                                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        })
                    })
                }
                ValuesSourceKind::ConfigMap => {
                    let api: Api<ConfigMap> =
                        Api::namespaced(self.ctx.client.clone(), &self.namespace);
                    api.get_opt(&source.name)
                        .await?
                        .map(|c| c.data.and_then(|d| d.get(&source.key).cloned()))
                }
            };
            let entry = by_tool
                .entry(source.tool.clone())
                .or_insert_with(|| Ok(Vec::new()));
            let Ok(layers) = entry else { continue };
            let parsed = match text {
                None | Some(None) if source.optional => continue,
                None => Err(format!(
                    "{field}: {:?} {} does not exist",
                    source.kind, source.name
                )),
                Some(None) => Err(format!(
                    "{field}: {:?} {} has no key {}",
                    source.kind, source.name, source.key
                )),
                Some(Some(text)) => serde_saphyr::from_str::<Value>(&text)
                    .map_err(|e| {
                        format!(
                            "{field}: key {} of {} is not YAML: {e}",
                            source.key, source.name
                        )
                    })
                    .and_then(|v| match v {
                        Value::Object(_) => Ok(v),
                        Value::Null => Ok(json!({})),
                        _ => Err(format!(
                            "{field}: key {} of {} is not a map",
                            source.key, source.name
                        )),
                    }),
            };
            match parsed {
                Ok(values) => layers.push(values),
                Err(message) => *entry = Err(message),
            }
        }
        Ok(by_tool)
    }

    /// The tool's values on one target: tool, common, valuesFrom, override,
    /// then templated.
    fn desired_values(
        &self,
        tool: &Tool,
        target: &str,
        facts: &TargetFacts,
        values_from: &BTreeMap<String, Result<Vec<Value>, String>>,
    ) -> Result<Value, String> {
        let empty = json!({});
        let mut layers: Vec<&Value> = vec![tool.values.as_ref().unwrap_or(&empty)];
        if let Some(common) = self.ti.spec.values.get(&tool.name) {
            layers.push(common);
        }
        match values_from.get(&tool.name) {
            Some(Ok(sources)) => layers.extend(sources.iter()),
            Some(Err(message)) => return Err(message.clone()),
            None => {}
        }
        layers.extend(
            self.ti
                .spec
                .value_overrides
                .iter()
                .filter(|o| o.cluster == target && o.tool == tool.name)
                .map(|o| &o.values),
        );
        values::render(&values::merged(layers), facts).map_err(|e| e.to_string())
    }

    async fn sync_target(
        &self,
        target: &Target<'_>,
        tools: &[Tool],
        values_from: &BTreeMap<String, Result<Vec<Value>, String>>,
        before: Option<&TargetStatus>,
    ) -> TargetReport {
        let mut report = TargetReport {
            status: TargetStatus {
                kind: target.kind.into(),
                name: target.name.clone(),
                tools: Vec::new(),
            },
            ..TargetReport::default()
        };
        let waiting = |state: ToolState, message: String| -> Vec<ToolStatus> {
            tools
                .iter()
                .map(|tool| {
                    // A target that had tools and cannot be reached now is
                    // UNKNOWN; one that never had them is still PENDING.
                    let had = previous_state(before, &tool.name).is_some_and(|s| {
                        !matches!(s, ToolState::Pending | ToolState::NotInstalled)
                    });
                    let state = if state == ToolState::Pending && had {
                        ToolState::Unknown
                    } else {
                        state
                    };
                    tool_status(before, &tool.name, state, Some(message.clone()))
                })
                .collect()
        };
        let Some(object) = target.object else {
            report.status.tools = waiting(
                ToolState::Pending,
                format!(
                    "no {} {} in namespace {}",
                    target.kind, target.name, self.namespace
                ),
            );
            return report;
        };
        if !object.ready() {
            let why = object
                .ready_condition()
                .map(|c| format!(": {}", c.message))
                .unwrap_or_default();
            report.status.tools = waiting(
                ToolState::Pending,
                format!(
                    "waiting for {} {} to be Ready{why}",
                    target.kind, target.name
                ),
            );
            return report;
        }
        let connection = match self.connect(object).await {
            Ok(connection) => connection,
            Err(message) => {
                report.status.tools = waiting(ToolState::Pending, message);
                return report;
            }
        };
        self.ctx.metrics.target_reads.inc();
        let releases = match helm::releases(connection.objects.client()).await {
            Ok(releases) => releases,
            Err(e) => {
                report.status.tools = waiting(ToolState::Unknown, e.to_string());
                return report;
            }
        };
        let facts = object.facts();
        let mut deployed: BTreeSet<String> = BTreeSet::new();
        for tool in tools {
            if object.shared_tools().contains(&tool.name) {
                // The host's own install serves this virtual cluster.
                deployed.insert(tool.name.clone());
                report.status.tools.push(tool_status(
                    before,
                    &tool.name,
                    ToolState::Shared,
                    Some(format!("provided by the host Cluster {}", object.host())),
                ));
                continue;
            }
            let blocked_by = tool
                .depends_on
                .iter()
                .find(|d| !deployed.contains(*d))
                .cloned();
            let desired = self.desired_values(tool, &target.name, &facts, values_from);
            let outcome = self
                .sync_tool(
                    &target.name,
                    tool,
                    desired,
                    &connection,
                    &releases,
                    blocked_by.as_deref(),
                    before,
                )
                .await;
            if outcome.status.state == ToolState::Deployed {
                deployed.insert(tool.name.clone());
            }
            report.drift.extend(
                outcome
                    .drift
                    .iter()
                    .map(|d| format!("{}/{}: {d}", target.name, tool.name)),
            );
            report.plan.extend(outcome.plan);
            report.events.extend(outcome.events);
            report.retry = match (report.retry, outcome.retry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            report.status.tools.push(outcome.status);
        }
        report
    }

    #[allow(clippy::too_many_arguments)]
    async fn sync_tool(
        &self,
        target: &str,
        tool: &Tool,
        desired: Result<Value, String>,
        connection: &Connection,
        releases: &BTreeMap<(String, String), Release>,
        blocked_by: Option<&str>,
        before: Option<&TargetStatus>,
    ) -> ToolOutcome {
        let namespace = tool.namespace.clone().unwrap_or_else(|| tool.name.clone());
        let release = releases.get(&(namespace.clone(), tool.name.clone()));
        let status = |state: ToolState, message: Option<String>| {
            let mut status = tool_status(before, &tool.name, state, message);
            status.chart_version = release.map(|r| r.chart_version.clone());
            status.revision = release.map(|r| r.revision);
            status
        };
        let desired = match desired {
            Ok(values) => values,
            Err(message) => {
                return ToolOutcome {
                    events: vec![(
                        EventType::Warning,
                        "ValuesInvalid",
                        format!("{target}/{}: {message}", tool.name),
                    )],
                    ..ToolOutcome::new(status(ToolState::Failed, Some(message)))
                };
            }
        };
        if let Some(owner) = release.and_then(|r| r.labels.get(OWNER_LABEL))
            && owner != &self.owner
        {
            let message = format!(
                "release {namespace}/{} belongs to ToolInstall {owner}; it is left alone",
                tool.name
            );
            return ToolOutcome::new(status(ToolState::Failed, Some(message)));
        }

        let observed = observe(release, &desired, &tool.chart);
        let mut drift = Vec::new();
        let mut seen = Seen::default();
        let mut missing_crds = Vec::new();
        let needs_change = match &observed {
            Observed::AsDeclared => {
                let release = release.expect("a release is installed");
                match connection
                    .objects
                    .drift(&release.manifest, &release.crds, &namespace)
                    .await
                {
                    Ok(found) => {
                        self.ctx.metrics.target_reads.inc_by(found.reads);
                        (drift, seen, missing_crds) = (found.found, found.seen, found.missing_crds);
                    }
                    Err(e) => {
                        return ToolOutcome::new(status(
                            ToolState::Unknown,
                            Some(format!("cannot read the release's objects: {e}")),
                        ));
                    }
                }
                !drift.is_empty()
            }
            Observed::Busy(_) => false,
            Observed::Missing | Observed::Stale(_) | Observed::Failed(_) => true,
        };
        let correct = self.ti.spec.drift_policy == DriftPolicy::Correct;

        if !needs_change || (!drift.is_empty() && !correct) {
            if let Observed::Busy(what) = observed {
                return ToolOutcome::new(status(ToolState::Pending, Some(what)));
            }
            if !drift.is_empty() {
                let mut outcome = ToolOutcome::new(status(
                    ToolState::Drifted,
                    Some(format!(
                        "live objects differ from the release: {}",
                        drift.join("; ")
                    )),
                ));
                outcome.status.drift = drift.clone();
                outcome.events.push((
                    EventType::Warning,
                    "DriftDetected",
                    format!("{target}/{}: {}", tool.name, drift.join("; ")),
                ));
                outcome.drift = drift;
                return outcome;
            }
            return self
                .health(target, tool, &namespace, connection, &seen, status)
                .await;
        }

        // Something to change.
        let (action, state, message) = match &observed {
            Observed::Missing => (PlannedAction::Install, ToolState::NotInstalled, None),
            Observed::Stale(why) => (PlannedAction::Upgrade, ToolState::Stale, Some(why.clone())),
            Observed::Failed(why) => (PlannedAction::Upgrade, ToolState::Failed, Some(why.clone())),
            _ => (
                PlannedAction::Upgrade,
                ToolState::Drifted,
                Some(format!(
                    "live objects differ from the release: {}",
                    drift.join("; ")
                )),
            ),
        };
        let pending = |why: String| {
            let mut outcome = ToolOutcome::new(status(
                state,
                Some(match &message {
                    Some(m) => format!("{m}; {why}"),
                    None => why,
                }),
            ));
            outcome.status.drift = drift.clone();
            outcome
        };
        if self.ti.spec.dry_run {
            let mut outcome = pending("dry run: nothing is changed".into());
            outcome.plan.push(PlannedChange {
                target: target.to_string(),
                tool: tool.name.clone(),
                action,
                values_diff: release
                    .filter(|r| !values_equal(&r.values, &desired))
                    .map(|r| values::diff(&r.values, &desired)),
            });
            return outcome;
        }
        if self.ti.spec.suspend {
            return pending("suspended: nothing is changed".into());
        }
        if let Some(dependency) = blocked_by {
            let mut outcome = pending(format!("waiting for {dependency}"));
            if state == ToolState::NotInstalled {
                outcome.status.state = ToolState::Pending;
            }
            return outcome;
        }
        let key = format!("{}/{target}/{}", self.owner, tool.name);
        let fingerprint = fingerprint(&desired, &tool.chart);
        if let Some(failure) = self.failure(&key, fingerprint) {
            let mut outcome = ToolOutcome::new(status(ToolState::Failed, Some(failure.message)));
            outcome.retry = Some(failure.retry_at.saturating_duration_since(Instant::now()));
            return outcome;
        }

        // Helm puts back what its templates made, not its crds/.
        if let Err(e) = connection.objects.restore(&missing_crds).await {
            return ToolOutcome::new(status(
                ToolState::Failed,
                Some(format!("restoring the chart's crds/: {e}")),
            ));
        }
        let labels: BTreeMap<String, String> =
            [(OWNER_LABEL.to_string(), self.owner.clone())].into();
        let request = ReleaseRequest {
            name: &tool.name,
            namespace: &namespace,
            create_namespace: true,
            chart: &tool.chart,
            values: &desired,
            labels: &labels,
        };
        let result = self
            .ctx
            .helm
            .upgrade(&connection.kubeconfig, &request)
            .await;
        self.ctx.metrics.helm("upgrade", result.is_ok());
        match result {
            Ok(_) => {
                self.ctx.failures.lock().expect("failures").remove(&key);
                let what = match (&observed, drift.is_empty()) {
                    (Observed::Missing, _) => format!("installed {}", tool.name),
                    (_, false) => format!("corrected drift of {}: {}", tool.name, drift.join("; ")),
                    _ => format!("upgraded {}", tool.name),
                };
                let reason = match (&observed, drift.is_empty()) {
                    (Observed::Missing, _) => "Installed",
                    (_, false) => "DriftCorrected",
                    _ => "Upgraded",
                };
                // What was read before the change is stale now.
                let mut outcome = self
                    .health(
                        target,
                        tool,
                        &namespace,
                        connection,
                        &Seen::default(),
                        |state, message| {
                            let mut s = tool_status(before, &tool.name, state, message);
                            s.chart_version = declared_version(&tool.chart);
                            s.revision = Some(release.map_or(1, |r| r.revision + 1));
                            s
                        },
                    )
                    .await;
                outcome
                    .events
                    .push((EventType::Normal, reason, format!("{target}: {what}")));
                if !drift.is_empty() {
                    outcome.events.insert(
                        0,
                        (
                            EventType::Warning,
                            "DriftDetected",
                            format!("{target}/{}: {}", tool.name, drift.join("; ")),
                        ),
                    );
                    outcome.drift = drift;
                }
                outcome
            }
            Err(e) => {
                let message = e.to_string();
                let failure = self.record_failure(&key, fingerprint, &message);
                let mut outcome =
                    ToolOutcome::new(status(ToolState::Failed, Some(message.clone())));
                outcome.retry = Some(failure.retry_at.saturating_duration_since(Instant::now()));
                outcome.events.push((
                    EventType::Warning,
                    if matches!(e, HelmError::Unreachable(_)) {
                        "TargetUnreachable"
                    } else {
                        "InstallFailed"
                    },
                    format!("{target}/{}: {message}", tool.name),
                ));
                outcome
            }
        }
    }

    /// DEPLOYED when every health check passes, else PENDING saying why.
    async fn health(
        &self,
        target: &str,
        tool: &Tool,
        namespace: &str,
        connection: &Connection,
        seen: &Seen,
        status: impl Fn(ToolState, Option<String>) -> ToolStatus,
    ) -> ToolOutcome {
        if tool.health.is_empty() {
            return ToolOutcome::new(status(ToolState::Deployed, None));
        }
        let checked = connection
            .objects
            .unhealthy(&tool.health, namespace, seen)
            .await;
        if let Ok((_, reads)) = &checked {
            self.ctx.metrics.target_reads.inc_by(*reads);
        }
        match checked {
            Ok((reasons, _)) if reasons.is_empty() => {
                ToolOutcome::new(status(ToolState::Deployed, None))
            }
            Ok((reasons, _)) => ToolOutcome::new(status(
                ToolState::Pending,
                Some(format!("installed; waiting for {}", reasons.join("; "))),
            )),
            Err(e) => ToolOutcome::new(status(
                ToolState::Unknown,
                Some(format!(
                    "cannot check the health of {} on {target}: {e}",
                    tool.name
                )),
            )),
        }
    }

    /// Uninstalls our releases from a target that left the selection (or
    /// from every target on deletion), dependents first.
    async fn remove_target(
        &self,
        target: &TargetStatus,
        object: Option<Object<'_>>,
        tools: &[Tool],
    ) -> TargetReport {
        let mut report = TargetReport {
            status: target.clone(),
            ..TargetReport::default()
        };
        // A target that is gone (or going) takes its releases with it.
        let Some(object) = object else {
            report.removed = true;
            return report;
        };
        let unreachable = |report: &mut TargetReport, message: String, force: bool| {
            if force {
                report.removed = true;
                report.events.push((
                    EventType::Warning,
                    "ForceRemoved",
                    format!("{}: dropped without uninstalling ({message})", target.name),
                ));
            } else {
                for tool in &mut report.status.tools {
                    tool.state = ToolState::Unknown;
                    tool.message = Some(format!("uninstall waits for the target: {message}"));
                }
            }
        };
        let connection = match self.connect(object).await {
            Ok(connection) => connection,
            Err(message) => {
                unreachable(&mut report, message, self.force_remove());
                return report;
            }
        };
        let releases = match helm::releases(connection.objects.client()).await {
            Ok(releases) => releases,
            Err(e) => {
                unreachable(&mut report, e.to_string(), self.force_remove());
                return report;
            }
        };
        self.ctx.metrics.target_reads.inc();
        // Ours, newest tools first; tools no longer declared are found by
        // their owner label.
        let mut ours: Vec<&Release> = releases
            .values()
            .filter(|r| r.labels.get(OWNER_LABEL) == Some(&self.owner))
            .collect();
        let rank = |name: &str| {
            tools
                .iter()
                .position(|t| t.name == name)
                .unwrap_or(usize::MAX)
        };
        ours.sort_by_key(|r| std::cmp::Reverse(rank(&r.name)));
        if self.ti.spec.dry_run && self.ti.metadata.deletion_timestamp.is_none() {
            report.plan = ours
                .iter()
                .map(|r| PlannedChange {
                    target: target.name.clone(),
                    tool: r.name.clone(),
                    action: PlannedAction::Uninstall,
                    values_diff: None,
                })
                .collect();
            return report;
        }
        if self.ti.spec.suspend && self.ti.metadata.deletion_timestamp.is_none() {
            return report;
        }
        for release in ours {
            let result = self
                .ctx
                .helm
                .uninstall(&connection.kubeconfig, &release.name, &release.namespace)
                .await;
            self.ctx.metrics.helm("uninstall", result.is_ok());
            if let Err(e) = result {
                if let Some(tool) = report
                    .status
                    .tools
                    .iter_mut()
                    .find(|t| t.name == release.name)
                {
                    tool.state = ToolState::Failed;
                    tool.message = Some(format!("uninstall failed: {e}"));
                }
                report.events.push((
                    EventType::Warning,
                    "UninstallFailed",
                    format!("{}/{}: {e}", target.name, release.name),
                ));
                report.retry = Some(Duration::from_secs(15));
                return report;
            }
            report.events.push((
                EventType::Normal,
                "Uninstalled",
                format!("{}: uninstalled {}", target.name, release.name),
            ));
        }
        report.removed = true;
        report
    }

    /// A connection to the target from its kubeconfig Secret, reused while
    /// the Secret is unchanged.
    async fn connect(&self, object: Object<'_>) -> Result<Arc<Connection>, String> {
        let secret = object.connection_secret();
        self.ctx
            .connections
            .connect(
                &self.ctx.client,
                &self.namespace,
                &connection_key(object),
                &secret,
                "value",
            )
            .await
    }

    fn failure(&self, key: &str, fingerprint: u64) -> Option<Failure> {
        let failures = self.ctx.failures.lock().expect("failures");
        failures
            .get(key)
            .filter(|f| f.fingerprint == fingerprint && f.retry_at > Instant::now())
            .cloned()
    }

    fn record_failure(&self, key: &str, fingerprint: u64, message: &str) -> Failure {
        let mut failures = self.ctx.failures.lock().expect("failures");
        let attempts = failures
            .get(key)
            .filter(|f| f.fingerprint == fingerprint)
            .map_or(1, |f| f.attempts + 1);
        let delay = Duration::from_secs(15)
            .saturating_mul(1 << attempts.min(6).saturating_sub(1))
            .min(Duration::from_secs(600));
        let failure = Failure {
            fingerprint,
            message: message.to_string(),
            attempts,
            retry_at: Instant::now() + delay,
        };
        failures.insert(key.to_string(), failure.clone());
        failure
    }

    async fn write_status(&self, api: &Api<ToolInstall>, outcome: Outcome) -> Result<(), Error> {
        let previous = self.ti.status.clone().unwrap_or_default();
        let generation = self.ti.metadata.generation;
        let summary = outcome.summary();
        let mut desired = Vec::new();
        let (synced, ready) = match &outcome.blocked {
            Some((reason, message)) => (
                Desired::no(condition::SYNCED, *reason, message.clone()),
                Desired::no(condition::READY, *reason, message.clone()),
            ),
            None => {
                let failed = summary.failed > 0;
                let synced = if failed {
                    Desired::no(
                        condition::SYNCED,
                        "InstallFailed",
                        failed_message(&outcome.targets),
                    )
                } else if self.ti.spec.dry_run {
                    Desired::yes(
                        condition::SYNCED,
                        "DryRun",
                        format!("{} changes planned, none made", outcome.plan.len()),
                    )
                } else if self.ti.spec.suspend {
                    Desired::yes(
                        condition::SYNCED,
                        "Suspended",
                        "suspended: no changes are made",
                    )
                } else {
                    Desired::yes(condition::SYNCED, "Synced", "every target is handled")
                };
                let ready = if summary.deployed == summary.targets {
                    Desired::yes(
                        condition::READY,
                        "Deployed",
                        format!(
                            "{} of {} targets deployed",
                            summary.deployed, summary.targets
                        ),
                    )
                } else {
                    Desired::no(
                        condition::READY,
                        "NotDeployed",
                        format!(
                            "{} of {} targets deployed ({} pending, {} stale, {} drifted, {} failed, {} unknown)",
                            summary.deployed,
                            summary.targets,
                            summary.pending,
                            summary.stale,
                            summary.drifted,
                            summary.failed,
                            summary.unknown
                        ),
                    )
                };
                (synced, ready)
            }
        };
        desired.push(ready);
        desired.push(synced);
        let drift = if outcome.drift.is_empty() {
            desired.push(Desired::no(
                condition::DRIFTED,
                "NoDrift",
                "releases match what is declared",
            ));
            None
        } else {
            let reason = if self.ti.spec.drift_policy == DriftPolicy::Correct {
                "Corrected"
            } else {
                "Reported"
            };
            desired.push(Desired::yes(
                condition::DRIFTED,
                reason,
                outcome.drift.join("; "),
            ));
            let first = previous
                .drift
                .as_ref()
                .and_then(|d| d.last_detected.clone())
                .filter(|_| conditions::is_true(&previous.conditions, condition::DRIFTED));
            Some(DriftStatus {
                fields: outcome.drift.clone(),
                last_detected: Some(first.unwrap_or_else(conditions::now)),
            })
        };
        let conditions = conditions::merge(
            &previous.conditions,
            &desired,
            generation,
            &conditions::now(),
        );
        let status = json!({
            "conditions": conditions,
            "observedGeneration": generation,
            "summary": summary,
            "targets": outcome.targets,
            "plan": outcome.plan,
            "drift": drift,
        });
        // Empty fields are left out: server-side apply removes what this
        // manager applied before and omits now.
        let status = strip_empty(&status);
        let current = serde_json::to_value(&previous).unwrap_or_default();
        if status == strip_empty(&current) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": "fleetforge.dev/v1alpha1",
            "kind": "ToolInstall",
            "status": status,
        });
        api.patch_status(
            &self.ti.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }
}

/// What one tool's pass found and did.
#[derive(Debug)]
struct ToolOutcome {
    status: ToolStatus,
    drift: Vec<String>,
    plan: Vec<PlannedChange>,
    events: Vec<(EventType, &'static str, String)>,
    retry: Option<Duration>,
}

impl ToolOutcome {
    fn new(status: ToolStatus) -> Self {
        Self {
            status,
            drift: Vec::new(),
            plan: Vec::new(),
            events: Vec::new(),
            retry: None,
        }
    }
}

/// A release compared with what is declared, before its live objects.
#[derive(Debug, Clone, PartialEq)]
enum Observed {
    /// No release.
    Missing,
    /// Deployed with the declared chart and values.
    AsDeclared,
    /// Deployed, but another chart version or other values.
    Stale(String),
    /// The last operation failed.
    Failed(String),
    /// An operation is in progress.
    Busy(String),
}

fn observe(release: Option<&Release>, desired: &Value, chart: &ChartSource) -> Observed {
    let Some(release) = release else {
        return Observed::Missing;
    };
    match release.status.as_str() {
        "deployed" => {}
        status if status.starts_with("pending") || status == "uninstalling" => {
            return Observed::Busy(format!("helm operation in progress ({status})"));
        }
        status => return Observed::Failed(format!("release is {status}: {}", release.description)),
    }
    if let Some(why) = version_mismatch(chart, &release.chart_version) {
        return Observed::Stale(why);
    }
    if !values_equal(&release.values, desired) {
        return Observed::Stale("installed values differ from the declared values".into());
    }
    Observed::AsDeclared
}

/// Why the installed chart version is not the declared one, if it is not.
fn version_mismatch(chart: &ChartSource, installed: &str) -> Option<String> {
    let declared = declared_version(chart)?;
    let installed_version = semver::Version::parse(installed.trim_start_matches('v')).ok();
    let matches = match semver::Version::parse(declared.trim_start_matches('v')) {
        Ok(exact) => installed_version.is_some_and(|v| v == exact),
        Err(_) => match semver::VersionReq::parse(&declared) {
            Ok(range) => installed_version.is_some_and(|v| range.matches(&v)),
            Err(_) => declared == installed,
        },
    };
    (!matches).then(|| format!("chart version {installed} is installed, {declared} is declared"))
}

/// The declared chart version: `chart.version`, or for a chart directory
/// the version in its Chart.yaml.
fn declared_version(chart: &ChartSource) -> Option<String> {
    if let Some(version) = &chart.version {
        return Some(version.clone());
    }
    let path = Path::new(chart.path.as_ref()?).join("Chart.yaml");
    let text = std::fs::read_to_string(path).ok()?;
    let chart: Value = serde_saphyr::from_str(&text).ok()?;
    chart.get("version").map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Values equal as Helm sees them: Helm stores numbers as floats, so `1`
/// and `1.0` are the same value.
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| values_equal(v, w))
        }
        (x, y) => x == y,
    }
}

fn fingerprint(values: &Value, chart: &ChartSource) -> u64 {
    let mut hasher = DefaultHasher::new();
    values.to_string().hash(&mut hasher);
    format!("{chart:?}").hash(&mut hasher);
    hasher.finish()
}

fn previous_state(before: Option<&TargetStatus>, tool: &str) -> Option<ToolState> {
    before?
        .tools
        .iter()
        .find(|t| t.name == tool)
        .map(|t| t.state)
}

/// A tool's status, keeping `lastTransitionTime` while the state holds.
fn tool_status(
    before: Option<&TargetStatus>,
    tool: &str,
    state: ToolState,
    message: Option<String>,
) -> ToolStatus {
    let since = before
        .and_then(|b| b.tools.iter().find(|t| t.name == tool))
        .filter(|t| t.state == state)
        .and_then(|t| t.last_transition_time.clone());
    ToolStatus {
        name: tool.to_string(),
        state,
        chart_version: None,
        revision: None,
        message,
        drift: Vec::new(),
        last_transition_time: Some(since.unwrap_or_else(conditions::now)),
    }
}

fn failed_message(targets: &[TargetStatus]) -> String {
    let failed: Vec<String> = targets
        .iter()
        .flat_map(|t| {
            t.tools
                .iter()
                .filter(|s| s.state == ToolState::Failed)
                .map(move |s| {
                    format!(
                        "{}/{}: {}",
                        t.name,
                        s.name,
                        s.message.as_deref().unwrap_or("failed")
                    )
                })
        })
        .collect();
    failed.join("; ")
}

/// The facts of a Cluster values may refer to.
fn facts(cluster: &Cluster) -> TargetFacts {
    let status = cluster.status.clone().unwrap_or_default();
    TargetFacts {
        kind: "Cluster".into(),
        name: cluster.name_any(),
        namespace: cluster.namespace().unwrap_or_default(),
        provider: status.provider.unwrap_or_default(),
        region: status
            .region
            .or(cluster.spec.region.clone())
            .unwrap_or_default(),
        version: status
            .version
            .or(cluster.spec.version.clone())
            .unwrap_or_default(),
        endpoint: status.endpoint.unwrap_or_default(),
        labels: cluster.labels().clone(),
        annotations: cluster.annotations().clone(),
    }
}

/// A JSON value without nulls and empty lists or maps (except where a list
/// element is itself empty).
fn strip_empty(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), strip_empty(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_empty).collect()),
        other => other.clone(),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_release(status: &str, version: &str, values: Value) -> Release {
        Release {
            name: "web".into(),
            namespace: "web".into(),
            revision: 2,
            status: status.into(),
            description: "Upgrade complete".into(),
            chart_name: "web".into(),
            chart_version: version.into(),
            values,
            manifest: String::new(),
            crds: String::new(),
            labels: BTreeMap::new(),
        }
    }

    fn mk_chart(version: Option<&str>) -> ChartSource {
        ChartSource {
            repository: Some("https://charts.example.com".into()),
            name: Some("web".into()),
            version: version.map(str::to_string),
            ..ChartSource::default()
        }
    }

    #[test]
    fn a_release_is_compared_by_status_version_and_values() {
        let values = json!({"replicas": 2});
        let chart = mk_chart(Some("0.2.0"));
        assert_eq!(observe(None, &values, &chart), Observed::Missing);
        assert_eq!(
            observe(
                Some(&mk_release("deployed", "0.2.0", json!({"replicas": 2.0}))),
                &values,
                &chart
            ),
            Observed::AsDeclared
        );
        assert!(matches!(
            observe(Some(&mk_release("deployed", "0.1.0", values.clone())), &values, &chart),
            Observed::Stale(why) if why == "chart version 0.1.0 is installed, 0.2.0 is declared"
        ));
        assert!(matches!(
            observe(
                Some(&mk_release("deployed", "0.2.0", json!({"replicas": 3}))),
                &values,
                &chart
            ),
            Observed::Stale(_)
        ));
        assert!(matches!(
            observe(Some(&mk_release("failed", "0.2.0", values.clone())), &values, &chart),
            Observed::Failed(why) if why == "release is failed: Upgrade complete"
        ));
        assert!(matches!(
            observe(
                Some(&mk_release("pending-upgrade", "0.2.0", values.clone())),
                &values,
                &chart
            ),
            Observed::Busy(_)
        ));
    }

    #[test]
    fn versions_match_exactly_by_range_or_not_at_all_when_undeclared() {
        assert_eq!(
            version_mismatch(&mk_chart(Some("v1.19.1")), "v1.19.1"),
            None
        );
        assert_eq!(version_mismatch(&mk_chart(Some("1.19.1")), "v1.19.1"), None);
        assert_eq!(version_mismatch(&mk_chart(Some("~1.19")), "1.19.4"), None);
        assert!(version_mismatch(&mk_chart(Some("~1.19")), "1.20.0").is_some());
        assert_eq!(version_mismatch(&mk_chart(None), "9.9.9"), None);
    }

    #[test]
    fn the_version_of_a_chart_directory_comes_from_its_chart_yaml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Chart.yaml"),
            "apiVersion: v2\nname: web\nversion: 0.3.1\n",
        )
        .unwrap();
        let chart = ChartSource {
            path: Some(dir.path().display().to_string()),
            ..ChartSource::default()
        };
        assert_eq!(declared_version(&chart).as_deref(), Some("0.3.1"));
        assert!(version_mismatch(&chart, "0.3.0").is_some());
    }

    fn mk_target(name: &str, states: &[ToolState]) -> TargetStatus {
        TargetStatus {
            kind: "Cluster".into(),
            name: name.into(),
            tools: states
                .iter()
                .enumerate()
                .map(|(i, s)| tool_status(None, &format!("t{i}"), *s, None))
                .collect(),
        }
    }

    #[test]
    fn the_summary_counts_each_target_by_its_worst_tool() {
        let outcome = Outcome {
            targets: vec![
                mk_target("a", &[ToolState::Deployed, ToolState::Deployed]),
                mk_target("b", &[ToolState::Deployed, ToolState::Failed]),
                mk_target("c", &[ToolState::Stale, ToolState::Pending]),
                mk_target("d", &[ToolState::Drifted]),
                mk_target("e", &[ToolState::Unknown, ToolState::Stale]),
                mk_target("f", &[ToolState::Shared, ToolState::Deployed]),
            ],
            ..Outcome::default()
        };
        assert_eq!(
            outcome.summary(),
            ToolInstallSummary {
                targets: 6,
                deployed: 2,
                stale: 0,
                drifted: 1,
                failed: 1,
                pending: 1,
                unknown: 1,
            }
        );
    }

    #[test]
    fn pending_work_is_looked_at_again_soon_and_settled_work_at_the_poll() {
        let poll = Duration::from_secs(60);
        let settled = Outcome {
            targets: vec![mk_target("a", &[ToolState::Deployed])],
            ..Outcome::default()
        };
        assert!(settled.requeue(poll) >= Duration::from_secs(54));
        let pending = Outcome {
            targets: vec![mk_target("a", &[ToolState::Deployed, ToolState::Pending])],
            ..Outcome::default()
        };
        assert_eq!(pending.requeue(poll), Duration::from_secs(3));
        let failed = Outcome {
            targets: vec![mk_target("a", &[ToolState::Failed])],
            retry: Some(Duration::from_secs(30)),
            ..Outcome::default()
        };
        assert_eq!(failed.requeue(poll), Duration::from_secs(30));
    }

    #[test]
    fn a_state_keeps_its_transition_time_while_it_holds() {
        let mut before = mk_target("a", &[ToolState::Deployed]);
        let old = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1000).unwrap(),
        );
        before.tools[0].last_transition_time = Some(old.clone());
        assert_eq!(
            tool_status(Some(&before), "t0", ToolState::Deployed, None).last_transition_time,
            Some(old.clone())
        );
        assert_ne!(
            tool_status(Some(&before), "t0", ToolState::Stale, None).last_transition_time,
            Some(old)
        );
    }

    #[test]
    fn virtual_clusters_are_chosen_by_their_own_fields_and_keep_their_kind() {
        let ti: ToolInstall = serde_json::from_value(json!({
            "metadata": {"name": "tools", "namespace": "platform"},
            "spec": {"tools": [], "targets": {
                "clusterNames": ["same"],
                "virtualClusterSelector": {"matchLabels": {"team": "a"}},
            }},
        }))
        .unwrap();
        let virtual_clusters: Vec<VirtualCluster> = ["same", "other"]
            .iter()
            .map(|name| {
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "platform", "labels": {"team": if *name == "same" { "a" } else { "b" }}},
                    "spec": {"sharedTools": ["ingress"]},
                }))
                .unwrap()
            })
            .collect();
        let inventory = Inventory {
            clusters: vec![mk_cluster("same", &[], false)],
            virtual_clusters,
        };
        let chosen: Vec<(&str, String)> = select(&ti, &inventory)
            .unwrap()
            .into_iter()
            .map(|t| (t.kind, t.name))
            .collect();
        assert_eq!(
            chosen,
            [
                (CLUSTER, "same".to_string()),
                (VIRTUAL_CLUSTER, "same".to_string())
            ]
        );
        let virtual_same = inventory.find(VIRTUAL_CLUSTER, "same").unwrap();
        assert_eq!(virtual_same.shared_tools(), ["ingress"]);
        assert_eq!(connection_key(virtual_same), "virtual.same");
        assert_eq!(virtual_same.facts().kind, "VirtualCluster");
    }

    fn mk_cluster(name: &str, labels: &[(&str, &str)], deleting: bool) -> Cluster {
        let mut cluster: Cluster = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "platform",
                "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
            "spec": {"providerConfigRef": {"name": "local"}},
        }))
        .unwrap();
        if deleting {
            cluster.metadata.deletion_timestamp = Some(conditions::now());
        }
        cluster
    }

    #[test]
    fn targets_are_chosen_by_name_or_label_and_a_missing_name_is_kept() {
        let ti: ToolInstall = serde_json::from_value(json!({
            "metadata": {"name": "tools", "namespace": "platform"},
            "spec": {"tools": [], "targets": {
                "clusterNames": ["named", "missing", "going"],
                "clusterSelector": {"matchLabels": {"tier": "dev"}},
            }},
        }))
        .unwrap();
        let clusters = [
            mk_cluster("named", &[], false),
            mk_cluster("labelled", &[("tier", "dev")], false),
            mk_cluster("other", &[("tier", "prod")], false),
            mk_cluster("going", &[("tier", "dev")], true),
        ];
        let inventory = Inventory {
            clusters: clusters.to_vec(),
            virtual_clusters: Vec::new(),
        };
        let chosen: Vec<(String, bool)> = select(&ti, &inventory)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.object.is_some()))
            .collect();
        assert_eq!(
            chosen,
            [
                ("labelled".to_string(), true),
                ("missing".to_string(), false),
                ("named".to_string(), true),
            ]
        );
    }

    #[test]
    fn a_selector_that_does_not_parse_is_an_error_not_an_empty_selection() {
        let ti: ToolInstall = serde_json::from_value(json!({
            "metadata": {"name": "tools", "namespace": "platform"},
            "spec": {"tools": [], "targets": {
                "clusterNames": ["named"],
                "clusterSelector": {"matchExpressions": [{"key": "tier", "operator": "Equals", "values": ["dev"]}]},
            }},
        }))
        .unwrap();
        let inventory = Inventory {
            clusters: vec![mk_cluster("named", &[("tier", "dev")], false)],
            virtual_clusters: Vec::new(),
        };
        let error = select(&ti, &inventory).unwrap_err();
        assert!(
            error.starts_with("spec.targets.clusterSelector.matchExpressions[0].operator"),
            "{error}"
        );
    }
}
