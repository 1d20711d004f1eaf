//! The ToolInstall controller: it selects targets from the controller's
//! caches, keeps one ToolTarget per selected target (made, kept in step,
//! pruned when the target leaves), and sums their states up in a status
//! that stays the same size however large the fleet. The work on each
//! target is the ToolTarget controller's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetforge_api::tool_target::{TargetRef, ToolTarget};
use fleetforge_api::{
    Cluster, FIELD_MANAGER, FleetRollout, Tool, ToolInstall, ToolSet, VirtualCluster, annotation,
    condition,
};
use fleetforge_core::conditions::{self, Desired};
use fleetforge_core::events::{EventType, Recorder};
use fleetforge_core::finalizer;
use fleetforge_runtime::ready::Gate;
use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::select::{
    CHILD_MANAGER, INSTALL_LABEL, Object, Selection, child_is_current, desired_child, hold,
    summarize, target_key,
};

/// ToolTargets written at once by one pass.
const WRITES_AT_ONCE: usize = 16;

/// What every ToolInstall pass shares.
pub struct Context {
    /// The management cluster.
    pub client: Client,
    /// Events.
    pub recorder: Recorder,
    /// Every ToolInstall.
    pub installs: Store<ToolInstall>,
    /// The targets.
    pub clusters: Store<Cluster>,
    /// The targets.
    pub virtual_clusters: Store<VirtualCluster>,
    /// The ToolSets.
    pub tool_sets: Store<ToolSet>,
    /// Every ToolTarget.
    pub children: Store<ToolTarget>,
    /// Every FleetRollout (they hold tools back).
    pub rollouts: Store<FleetRollout>,
    /// Open once every cache above has been listed.
    pub listed: Vec<Gate>,
    /// The ToolInstalls that selected each target (by `namespace/Kind/name`)
    /// at their last pass: a target's change wakes only the ToolInstalls
    /// whose selection it enters or leaves.
    pub selected: Mutex<HashMap<String, HashSet<ObjectRef<ToolInstall>>>>,
    /// The shards replicas share, for the shard label of each ToolTarget.
    pub shards: Arc<fleetforge_runtime::shards::Shards>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
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

impl Context {
    /// The ToolInstalls to wake for a change of `object` (or its deletion):
    /// those whose selection it enters or leaves.
    pub fn installs_for(
        &self,
        object: Object<'_>,
        namespace: &str,
        gone: bool,
    ) -> Vec<ObjectRef<ToolInstall>> {
        let key = target_key(
            namespace,
            &TargetRef {
                kind: object.kind(),
                name: object.name(),
            },
        );
        let before = self
            .selected
            .lock()
            .expect("selected")
            .get(&key)
            .cloned()
            .unwrap_or_default();
        self.installs
            .state()
            .iter()
            .filter(|ti| ti.namespace().as_deref() == Some(namespace))
            .filter_map(|ti| {
                let reference = ObjectRef::from_obj(&**ti);
                let now =
                    !gone && Selection::of(ti).is_ok_and(|selection| selection.selects(object));
                (now != before.contains(&reference)).then_some(reference)
            })
            .collect()
    }

    /// Records that `install` selects exactly `targets` now.
    fn record_selection(&self, install: &ObjectRef<ToolInstall>, targets: &BTreeSet<String>) {
        let mut selected = self.selected.lock().expect("selected");
        selected.retain(|key, installs| {
            if !targets.contains(key) {
                installs.remove(install);
            }
            !installs.is_empty()
        });
        for key in targets {
            selected
                .entry(key.clone())
                .or_default()
                .insert(install.clone());
        }
    }

    fn children_of(&self, ti: &ToolInstall) -> Vec<Arc<ToolTarget>> {
        let namespace = ti.namespace();
        let name = ti.name_any();
        self.children
            .state()
            .into_iter()
            .filter(|tt| {
                tt.namespace() == namespace
                    && tt.labels().get(INSTALL_LABEL) == Some(&name)
                    && tt.spec.tool_install_ref.name == name
            })
            .collect()
    }

    /// Whether a FleetRollout holds the tools of `ti` on the target `name`
    /// with `labels`: then only the rollout moves them (see
    /// [`crate::select::ROLLOUT_FIELDS`]).
    fn held(&self, ti: &ToolInstall, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.rollouts.state().iter().any(|rollout| {
            governs(rollout, ti)
                && fleetforge_core::selector::Stages::parse(&rollout.spec.stages)
                    .is_ok_and(|stages| stages.of(name, labels).is_some())
        })
    }
}

/// Whether `rollout` rolls out the changes of `ti`'s tools: it names `ti`,
/// or the ToolSet `ti` installs.
pub fn governs(rollout: &FleetRollout, ti: &ToolInstall) -> bool {
    if rollout.metadata.deletion_timestamp.is_some() || rollout.namespace() != ti.namespace() {
        return false;
    }
    let by_install = rollout
        .spec
        .tool_install_ref
        .as_ref()
        .is_some_and(|r| r.name == ti.name_any());
    let by_set = ti.spec.tools.is_none()
        && rollout.spec.tool_set_ref.is_some()
        && rollout.spec.tool_set_ref == ti.spec.tool_set_ref;
    by_install || by_set
}

/// The tools of `ti` in installation order, its ToolSet found by
/// `tool_set`, or why they cannot be had.
pub fn declared_tools(
    ti: &ToolInstall,
    tool_set: impl Fn(&str) -> Option<Arc<ToolSet>>,
) -> Result<Vec<Tool>, (&'static str, String)> {
    let tools = match (&ti.spec.tool_set_ref, &ti.spec.tools) {
        (_, Some(tools)) => tools.clone(),
        (Some(reference), None) => match tool_set(&reference.name) {
            Some(set) => set.spec.tools.clone(),
            None => {
                return Err((
                    "ToolSetNotFound",
                    format!("spec.toolSetRef: ToolSet {} does not exist", reference.name),
                ));
            }
        },
        (None, None) => return Err(("NoTools", "set toolSetRef or tools".into())),
    };
    let order = fleetforge_core::toolset::install_order(&tools)
        .map_err(|e| ("InvalidDependencies", e.to_string()))?;
    Ok(order
        .iter()
        .filter_map(|name| tools.iter().find(|t| &t.name == name).cloned())
        .collect())
}

/// One pass over a ToolInstall.
pub async fn reconcile(ti: Arc<ToolInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    for gate in &ctx.listed {
        gate.wait().await;
    }
    let namespace = ti.namespace().unwrap_or_default();
    let api: Api<ToolInstall> = Api::namespaced(ctx.client.clone(), &namespace);
    let children: Api<ToolTarget> = Api::namespaced(ctx.client.clone(), &namespace);
    let reference = ObjectRef::from_obj(&*ti);
    if ti.metadata.deletion_timestamp.is_some() {
        return finalize(&ti, &ctx, &api, &children, &reference).await;
    }
    finalizer::ensure(&api, &*ti).await?;
    let tools = match declared_tools(&ti, |name| ctx.tool_sets.get(&ObjectRef::new(name))) {
        Ok(tools) => tools,
        Err((reason, message)) => return blocked(&ti, &ctx, &api, reason, message).await,
    };
    // A selector that does not parse selects nothing we can trust: nothing
    // is made or removed until it is fixed.
    let selection = match Selection::of(&ti) {
        Ok(selection) => selection,
        Err(message) => return blocked(&ti, &ctx, &api, "InvalidSelector", message).await,
    };
    let clusters = ctx.clusters.state();
    let virtual_clusters = ctx.virtual_clusters.state();
    let here = |o: &Option<String>| o.as_deref() == Some(namespace.as_str());
    let objects: Vec<Object<'_>> = clusters
        .iter()
        .filter(|c| here(&c.metadata.namespace))
        .map(|c| Object::Cluster(c))
        .chain(
            virtual_clusters
                .iter()
                .filter(|v| here(&v.metadata.namespace))
                .map(|v| Object::Virtual(v)),
        )
        .collect();
    let chosen = selection.targets(&objects);
    ctx.record_selection(
        &reference,
        &chosen.keys().map(|t| target_key(&namespace, t)).collect(),
    );

    // One ToolTarget per target, written only when it differs.
    let existing: BTreeMap<TargetRef, Arc<ToolTarget>> = ctx
        .children_of(&ti)
        .into_iter()
        .map(|tt| (tt.spec.target.clone(), tt))
        .collect();
    let params = PatchParams::apply(CHILD_MANAGER).force();
    let writes: Vec<_> = chosen
        .iter()
        .filter_map(|(target, object)| {
            let child = existing.get(target);
            // A ToolTarget is in its target's shard.
            let shard = ctx.shards.count().and_then(|count| match object {
                Some(object) => Some(fleetforge_runtime::shards::shard_of(
                    &object.shard_key(),
                    count,
                )),
                // A named target that does not exist: any replica may say
                // so; it moves to its target's shard once that appears.
                None => child
                    .and_then(|tt| fleetforge_runtime::shards::by_label(&**tt, count))
                    .or_else(|| {
                        Some(fleetforge_runtime::shards::shard_of(
                            &target_key(&namespace, target),
                            count,
                        ))
                    }),
            });
            let mut desired = desired_child(&ti, &tools, target, shard);
            // Under a FleetRollout the child keeps its tools until the
            // rollout moves them.
            if let (Some(child), Some(object)) = (child, object)
                && ctx.held(&ti, &target.name, object.labels())
            {
                hold(&mut desired, child);
            }
            let current = child.is_some_and(|tt| child_is_current(tt, &desired));
            (!current).then_some(desired)
        })
        .map(|desired| {
            let (children, params) = (&children, &params);
            async move {
                let name = desired["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                children
                    .patch(&name, params, &Patch::Apply(&desired))
                    .await
                    .map(|_| ())
            }
        })
        .collect();
    let pruned: Vec<_> = existing
        .iter()
        .filter(|(target, tt)| {
            !chosen.contains_key(*target) && tt.metadata.deletion_timestamp.is_none()
        })
        .map(|(_, tt)| {
            let children = &children;
            async move {
                match children
                    .delete(&tt.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .collect();
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(writes)
        .buffer_unordered(WRITES_AT_ONCE)
        .chain(futures::stream::iter(pruned).buffer_unordered(WRITES_AT_ONCE))
        .collect()
        .await;
    for result in results {
        result?;
    }

    let mine = ctx.children_of(&ti);
    let current: Vec<&ToolTarget> = mine
        .iter()
        .filter(|tt| chosen.contains_key(&tt.spec.target))
        .map(|tt| &**tt)
        .collect();
    write_status(&ti, &api, summary_conditions(&ti, &current, chosen.len())).await?;
    // Children wake this pass when they change; the poll is a safety net.
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The status a pass writes.
struct Summary {
    summary: fleetforge_api::tool_install::ToolInstallSummary,
    failing: Vec<fleetforge_api::tool_install::FailingTarget>,
    conditions: Vec<Desired>,
}

fn summary_conditions(ti: &ToolInstall, children: &[&ToolTarget], selected: usize) -> Summary {
    let (summary, failing) = summarize(children, selected);
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
    let failed_message = || {
        failing
            .iter()
            .map(|f| {
                format!(
                    "{}{}: {}",
                    f.name,
                    f.tool
                        .as_deref()
                        .map(|t| format!("/{t}"))
                        .unwrap_or_default(),
                    f.message.as_deref().unwrap_or("failed")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let synced = if summary.failed > 0 {
        Desired::no(condition::SYNCED, "InstallFailed", failed_message())
    } else if ti.spec.dry_run {
        Desired::yes(
            condition::SYNCED,
            "DryRun",
            "dry run: each ToolTarget's status.plan says what would change",
        )
    } else if ti.spec.suspend {
        Desired::yes(
            condition::SYNCED,
            "Suspended",
            "suspended: no changes are made",
        )
    } else {
        Desired::yes(
            condition::SYNCED,
            "Synced",
            "every target has its ToolTarget",
        )
    };
    let drifted = if summary.drifted > 0 {
        let names: Vec<String> = children
            .iter()
            .filter(|tt| {
                conditions::is_true(
                    &tt.status
                        .as_ref()
                        .map(|s| s.conditions.clone())
                        .unwrap_or_default(),
                    condition::DRIFTED,
                )
            })
            .take(crate::select::FAILING_NAMED)
            .map(|tt| tt.spec.target.name.clone())
            .collect();
        Desired::yes(
            condition::DRIFTED,
            "Drifted",
            format!("{} targets drifted: {}", summary.drifted, names.join(", ")),
        )
    } else {
        Desired::no(
            condition::DRIFTED,
            "NoDrift",
            "releases match what is declared",
        )
    };
    Summary {
        summary,
        failing,
        conditions: vec![ready, synced, drifted],
    }
}

async fn write_status(
    ti: &ToolInstall,
    api: &Api<ToolInstall>,
    summary: Summary,
) -> Result<(), Error> {
    let previous = ti.status.clone().unwrap_or_default();
    let generation = ti.metadata.generation;
    let status = fleetforge_api::ToolInstallStatus {
        conditions: conditions::merge(
            &previous.conditions,
            &summary.conditions,
            generation,
            &conditions::now(),
        ),
        observed_generation: generation,
        summary: Some(summary.summary),
        failing: summary.failing,
    };
    fleetforge_runtime::status::apply_if_changed(
        api,
        &ti.name_any(),
        FIELD_MANAGER,
        Some(&previous),
        &status,
    )
    .await?;
    Ok(())
}

/// What is declared cannot be used: `Ready` and `Synced` say why, the
/// ToolTargets stay as they are, and nothing is changed on them.
async fn blocked(
    ti: &ToolInstall,
    ctx: &Context,
    api: &Api<ToolInstall>,
    reason: &'static str,
    message: String,
) -> Result<Action, Error> {
    let previous = ti.status.clone().unwrap_or_default();
    let summary = Summary {
        summary: previous.summary.clone().unwrap_or_default(),
        failing: previous.failing.clone(),
        conditions: vec![
            Desired::no(condition::READY, reason, message.clone()),
            Desired::no(condition::SYNCED, reason, message.clone()),
            conditions::current(&previous.conditions, condition::DRIFTED),
        ],
    };
    write_status(ti, api, summary).await?;
    ctx.recorder
        .publish(
            &ti.object_ref(&()),
            EventType::Warning,
            reason,
            "Resolve",
            &message,
        )
        .await;
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Deletion: every ToolTarget goes (each uninstalls from its target), then
/// the finalizer.
async fn finalize(
    ti: &ToolInstall,
    ctx: &Context,
    api: &Api<ToolInstall>,
    children: &Api<ToolTarget>,
    reference: &ObjectRef<ToolInstall>,
) -> Result<Action, Error> {
    if !finalizer::has(ti) {
        return Ok(Action::await_change());
    }
    let mine = ctx.children_of(ti);
    if mine.is_empty() {
        ctx.record_selection(reference, &BTreeSet::new());
        finalizer::remove(api, ti).await?;
        return Ok(Action::await_change());
    }
    let force = ti.annotations().get(annotation::FORCE_REMOVE);
    for tt in &mine {
        // The force-remove annotation reaches the ToolTargets, whose own
        // finalizers decide.
        if let Some(force) = force
            && tt.annotations().get(annotation::FORCE_REMOVE) != Some(force)
        {
            let patch = json!({"metadata": {"annotations": {annotation::FORCE_REMOVE: force}}});
            children
                .patch(
                    &tt.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        if tt.metadata.deletion_timestamp.is_none() {
            match children
                .delete(&tt.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::requeue(Duration::from_secs(5)))
}
