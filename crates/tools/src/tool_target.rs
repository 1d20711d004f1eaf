//! The ToolTarget controller: each ToolTarget (one ToolInstall's tools on
//! one target) is reconciled, retried and polled on its own. A change to
//! its target, or to a live object its drift check compared, wakes only
//! the ToolTargets of that target.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetforge_api::tool_target::{TargetKind, ToolTargetStatus};
use fleetforge_api::{
    Cluster, DriftPolicy, DriftStatus, FIELD_MANAGER, ToolState, ToolTarget, VirtualCluster,
    annotation, condition,
};
use fleetforge_core::conditions::{self, Desired};
use fleetforge_core::events::{EventType, Recorder};
use fleetforge_core::finalizer;
use fleetforge_runtime::ready::Gate;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use crate::driver::{Driver, HelmDriver, Session, Target};
use crate::nop::NopDriver;
use crate::select::{Object, target_key, worst};
use crate::sync::{Failures, Report, TargetPass, Told};

/// The drivers, chosen per target: `nop` clusters take the nop driver,
/// every other target the helm driver.
#[derive(Debug, Clone)]
pub struct Drivers {
    /// Real targets.
    pub helm: Arc<HelmDriver>,
    /// `nop` clusters.
    pub nop: Arc<NopDriver>,
}

impl Drivers {
    fn of(&self, object: Object<'_>) -> &dyn Driver {
        if object.provider() == Some("nop") {
            &self.nop
        } else {
            &*self.helm
        }
    }

    /// A session with target `object` in `namespace`, through its driver,
    /// with the kubeconfig of its connection Secret (read with `client`).
    pub async fn session(
        &self,
        client: &Client,
        namespace: &str,
        object: Object<'_>,
    ) -> Result<Arc<dyn Session>, String> {
        let driver = self.of(object);
        let key = target_key(
            namespace,
            &fleetforge_api::tool_target::TargetRef {
                kind: object.kind(),
                name: object.name(),
            },
        );
        // The nop driver needs no kubeconfig (nop clusters exist nowhere).
        let kubeconfig = if driver.name() == "nop" {
            Vec::new()
        } else {
            let name = object.connection_secret();
            let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(&name)
                .await
                .map_err(|e| format!("reading Secret {name}: {e}"))?
                .ok_or_else(|| format!("waiting for the kubeconfig Secret {name}"))?;
            secret
                .data
                .and_then(|mut d| d.remove("value"))
                .ok_or_else(|| format!("Secret {name} has no key value"))?
                .0
        };
        driver
            .session(Target {
                key: &key,
                kubeconfig: &kubeconfig,
                annotations: object.annotations(),
            })
            .await
            .map_err(|e| format!("the target's kubeconfig is unusable: {e}"))
    }
}

/// What every ToolTarget pass shares.
pub struct Context {
    /// The management cluster.
    pub client: Client,
    /// How targets are reached.
    pub drivers: Drivers,
    /// Where relative chart paths are resolved.
    pub charts_dir: PathBuf,
    /// Events.
    pub recorder: Recorder,
    /// Failed installs, retried with backoff.
    pub failures: Failures,
    /// The targets.
    pub clusters: Store<Cluster>,
    /// The targets.
    pub virtual_clusters: Store<VirtualCluster>,
    /// Open once both target caches have been listed.
    pub listed: (Gate, Gate),
    /// The ToolInstalls, for their `maxConcurrency`.
    pub installs: Store<fleetforge_api::ToolInstall>,
    /// Passes each ToolInstall runs at once (its `maxConcurrency`), by
    /// `namespace/name`, with the limit they were made for.
    pub slots:
        std::sync::Mutex<std::collections::HashMap<String, (i32, Arc<tokio::sync::Semaphore>)>>,
}

impl Context {
    /// A slot among the passes of `tt`'s ToolInstall (its
    /// `maxConcurrency`, 5 when the ToolInstall is not known).
    async fn slot(&self, tt: &ToolTarget) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let namespace = tt.namespace().unwrap_or_default();
        let install = &tt.spec.tool_install_ref.name;
        let limit = self
            .installs
            .get(&ObjectRef::new(install).within(&namespace))
            .map_or(5, |ti| ti.spec.max_concurrency.max(1));
        let semaphore = {
            let mut slots = self.slots.lock().expect("slots");
            let entry = slots
                .entry(format!("{namespace}/{install}"))
                .or_insert_with(|| (limit, Arc::new(tokio::sync::Semaphore::new(limit as usize))));
            if entry.0 != limit {
                *entry = (limit, Arc::new(tokio::sync::Semaphore::new(limit as usize)));
            }
            entry.1.clone()
        };
        semaphore.acquire_owned().await.ok()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("drivers", &self.drivers)
            .finish_non_exhaustive()
    }
}

/// Errors retried as a whole.
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

/// The target a ToolTarget names, from the cache, unless it is gone.
fn find<'a>(
    kind: TargetKind,
    clusters: &'a Option<Arc<Cluster>>,
    virtual_clusters: &'a Option<Arc<VirtualCluster>>,
) -> Option<Object<'a>> {
    match kind {
        TargetKind::Cluster => clusters.as_deref().map(Object::Cluster),
        TargetKind::VirtualCluster => virtual_clusters.as_deref().map(Object::Virtual),
    }
}

/// One pass over a ToolTarget.
pub async fn reconcile(tt: Arc<ToolTarget>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.listed.0.wait().await;
    ctx.listed.1.wait().await;
    let namespace = tt.namespace().unwrap_or_default();
    let api: Api<ToolTarget> = Api::namespaced(ctx.client.clone(), &namespace);
    let target = &tt.spec.target;
    let (cluster, virtual_cluster) = match target.kind {
        TargetKind::Cluster => (
            ctx.clusters
                .get(&ObjectRef::new(&target.name).within(&namespace)),
            None,
        ),
        TargetKind::VirtualCluster => (
            None,
            ctx.virtual_clusters
                .get(&ObjectRef::new(&target.name).within(&namespace)),
        ),
    };
    let object = find(target.kind, &cluster, &virtual_cluster).filter(|o| !o.deleting());
    let pass = TargetPass {
        tt: &tt,
        client: &ctx.client,
        failures: &ctx.failures,
        charts_dir: &ctx.charts_dir,
    };
    if tt.metadata.deletion_timestamp.is_some() {
        return finalize(&tt, &ctx, &api, &pass, object).await;
    }
    finalizer::ensure(&api, &*tt).await?;

    // At most `maxConcurrency` targets of one ToolInstall at once.
    let _slot = ctx.slot(&tt).await;
    let report = match object {
        None => pass.waiting(
            ToolState::Pending,
            &format!(
                "no {} {} in namespace {namespace}",
                target.kind, target.name
            ),
        ),
        Some(object) if !object.ready() => {
            let why = object
                .ready_condition()
                .map(|c| format!(": {}", c.message))
                .unwrap_or_default();
            pass.waiting(
                ToolState::Pending,
                &format!(
                    "waiting for {} {} to be Ready{why}",
                    target.kind, target.name
                ),
            )
        }
        Some(object) => match ctx.drivers.session(&ctx.client, &namespace, object).await {
            Err(message) => pass.waiting(ToolState::Pending, &message),
            Ok(session) => {
                let values_from = pass.values_from().await?;
                pass.sync(object, &*session, &values_from).await
            }
        },
    };
    let requeue = requeue(&report, poll_interval(&tt));
    publish(&ctx, &tt, &report.events, "Install").await;
    write_status(&tt, &api, report).await?;
    Ok(Action::requeue(requeue))
}

/// Deletion: uninstall from the target, then drop the finalizer. A target
/// gone (or going) takes its releases with it; one that cannot be reached
/// holds the finalizer until `fleetforge.dev/force-remove` says to drop it.
async fn finalize(
    tt: &ToolTarget,
    ctx: &Context,
    api: &Api<ToolTarget>,
    pass: &TargetPass<'_>,
    object: Option<Object<'_>>,
) -> Result<Action, Error> {
    if !finalizer::has(tt) {
        return Ok(Action::await_change());
    }
    let namespace = tt.namespace().unwrap_or_default();
    let force = tt
        .annotations()
        .get(annotation::FORCE_REMOVE)
        .is_some_and(|v| v == "true");
    let outcome = match object {
        None => Ok(Vec::new()),
        Some(object) => match ctx.drivers.session(&ctx.client, &namespace, object).await {
            Ok(session) if !tt.spec.dry_run && !tt.spec.suspend => pass.remove(&*session).await,
            Ok(_) => Ok(Vec::new()),
            Err(message) => Err((message, Vec::new())),
        },
    };
    match outcome {
        Ok(events) => {
            publish(ctx, tt, &events, "Delete").await;
            finalizer::remove(api, tt).await?;
            Ok(Action::await_change())
        }
        Err((message, events)) if force => {
            publish(ctx, tt, &events, "Delete").await;
            let note = format!(
                "{}: dropped without uninstalling ({message})",
                tt.spec.target.name
            );
            publish(
                ctx,
                tt,
                &[(EventType::Warning, "ForceRemoved", note)],
                "Delete",
            )
            .await;
            finalizer::remove(api, tt).await?;
            Ok(Action::await_change())
        }
        Err((message, mut events)) => {
            events.push((
                EventType::Warning,
                "UninstallBlocked",
                format!(
                    "cannot uninstall from {} yet ({message}); annotate the ToolInstall with {}=true to remove without uninstalling",
                    tt.spec.target.name,
                    annotation::FORCE_REMOVE
                ),
            ));
            publish(ctx, tt, &events, "Delete").await;
            Ok(Action::requeue(Duration::from_secs(15)))
        }
    }
}

async fn publish(ctx: &Context, tt: &ToolTarget, events: &[Told], action: &str) {
    let regarding = tt.object_ref(&());
    for (type_, reason, note) in events {
        ctx.recorder
            .publish(&regarding, *type_, reason, action, note)
            .await;
    }
}

fn poll_interval(tt: &ToolTarget) -> Duration {
    tt.spec
        .poll_interval
        .parse::<kube::core::Duration>()
        .map(Duration::from)
        .unwrap_or(Duration::from_secs(60))
}

/// When to look again: soon while something is on its way, at the
/// failure backoff for failed tools, else at the poll interval.
fn requeue(report: &Report, poll: Duration) -> Duration {
    let mut next = fleetforge_runtime::backoff::jittered(poll, 0.1);
    for tool in &report.tools {
        let soon = match tool.state {
            ToolState::Pending => Duration::from_secs(3),
            ToolState::Unknown => Duration::from_secs(15),
            _ => continue,
        };
        next = next.min(soon);
    }
    report.retry.map_or(next, |retry| next.min(retry))
}

/// The status of a pass: conditions, the worst state, the tools.
pub fn status_of(tt: &ToolTarget, report: Report) -> ToolTargetStatus {
    let previous = tt.status.clone().unwrap_or_default();
    let generation = tt.metadata.generation;
    let state = worst(report.tools.iter().map(|t| t.state));
    let total = report.tools.len();
    let deployed = report
        .tools
        .iter()
        .filter(|t| matches!(t.state, ToolState::Deployed | ToolState::Shared))
        .count();
    let failed: Vec<String> = report
        .tools
        .iter()
        .filter(|t| t.state == ToolState::Failed)
        .map(|t| format!("{}: {}", t.name, t.message.as_deref().unwrap_or("failed")))
        .collect();
    let ready = if total > 0 && deployed == total {
        Desired::yes(
            condition::READY,
            "Deployed",
            format!("{deployed} of {total} tools deployed"),
        )
    } else {
        let waiting = report
            .tools
            .iter()
            .find(|t| !matches!(t.state, ToolState::Deployed | ToolState::Shared))
            .map(|t| {
                format!(
                    ": {} {:?}{}",
                    t.name,
                    t.state,
                    t.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        Desired::no(
            condition::READY,
            "NotDeployed",
            format!("{deployed} of {total} tools deployed{waiting}"),
        )
    };
    let synced = if !failed.is_empty() {
        Desired::no(condition::SYNCED, "InstallFailed", failed.join("; "))
    } else if tt.spec.dry_run {
        Desired::yes(
            condition::SYNCED,
            "DryRun",
            format!("{} changes planned, none made", report.plan.len()),
        )
    } else if tt.spec.suspend {
        Desired::yes(
            condition::SYNCED,
            "Suspended",
            "suspended: no changes are made",
        )
    } else {
        Desired::yes(
            condition::SYNCED,
            "Synced",
            "the target's tools are handled",
        )
    };
    let (drifted, drift) = if report.drift.is_empty() {
        (
            Desired::no(
                condition::DRIFTED,
                "NoDrift",
                "releases match what is declared",
            ),
            None,
        )
    } else {
        let reason = if tt.spec.drift_policy == DriftPolicy::Correct {
            "Corrected"
        } else {
            "Reported"
        };
        let first = previous
            .drift
            .as_ref()
            .and_then(|d| d.last_detected.clone())
            .filter(|_| conditions::is_true(&previous.conditions, condition::DRIFTED));
        (
            Desired::yes(condition::DRIFTED, reason, report.drift.join("; ")),
            Some(DriftStatus {
                fields: report.drift.clone(),
                last_detected: Some(first.unwrap_or_else(conditions::now)),
            }),
        )
    };
    ToolTargetStatus {
        conditions: conditions::merge(
            &previous.conditions,
            &[ready, synced, drifted],
            generation,
            &conditions::now(),
        ),
        observed_generation: generation,
        state: Some(state),
        deployed: Some(format!("{deployed}/{total}")),
        tools: report.tools,
        plan: report.plan,
        drift,
        last_observed: previous.last_observed,
    }
}

async fn write_status(tt: &ToolTarget, api: &Api<ToolTarget>, report: Report) -> Result<(), Error> {
    let status = status_of(tt, report);
    fleetforge_runtime::status::apply_if_changed(
        api,
        &tt.name_any(),
        FIELD_MANAGER,
        tt.status.as_ref(),
        &status,
    )
    .await?;
    Ok(())
}

/// The ToolTargets of the target named by `key` (`namespace/Kind/name`),
/// among `all`.
pub fn children_of(all: &[Arc<ToolTarget>], key: &str) -> Vec<ObjectRef<ToolTarget>> {
    all.iter()
        .filter(|tt| target_key(&tt.namespace().unwrap_or_default(), &tt.spec.target) == key)
        .map(|tt| ObjectRef::from_obj(&**tt))
        .collect()
}
