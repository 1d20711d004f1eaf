//! Fleet-wide progressive rollouts: the FleetRollout controller moves one
//! change over its targets stage by stage. Its decisions are the pure
//! function [`decide::decide`]; this module gathers what it needs from the
//! caches and carries the decision out: a version into a Cluster's spec,
//! tools into a ToolTarget's, with the rollout's own field manager.

pub mod decide;
pub mod facts;
pub mod metrics;
pub mod tools;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetforge_api::fleet_rollout::{AbortPolicy, FleetRolloutStatus};
use fleetforge_api::{
    Cluster, FIELD_MANAGER, FleetRollout, ROLLOUT_FIELD_MANAGER, ToolInstall, ToolSet, ToolTarget,
    VirtualCluster, annotation, condition,
};
use fleetforge_core::cluster::MinorVersion;
use fleetforge_core::conditions::{self, Desired};
use fleetforge_core::events::{EventType, Recorder};
use fleetforge_core::selector::Stages;
use fleetforge_core::watch::{Informers, scoped};
use fleetforge_runtime::Runtime;
use fleetforge_runtime::ready::{Gate, gate};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::decide::{Candidate, Decision, Inputs, Requests, Write};
pub use crate::metrics::RolloutMetrics;

/// How often a rollout is looked at when nothing wakes it.
const POLL: Duration = Duration::from_secs(60);

/// What every pass shares.
pub struct Context {
    /// The management cluster.
    pub client: Client,
    /// Events.
    pub recorder: Recorder,
    /// Every FleetRollout.
    pub rollouts: Store<FleetRollout>,
    /// Every Cluster.
    pub clusters: Store<Cluster>,
    /// Every VirtualCluster.
    pub virtual_clusters: Store<VirtualCluster>,
    /// Every ToolTarget.
    pub tool_targets: Store<ToolTarget>,
    /// Every ToolInstall.
    pub tool_installs: Store<ToolInstall>,
    /// Every ToolSet.
    pub tool_sets: Store<ToolSet>,
    /// Open once every cache above has been listed.
    pub listed: Vec<Gate>,
    /// Targets by state.
    pub metrics: Arc<RolloutMetrics>,
    /// How targets are reached for the rollout's health checks.
    pub drivers: Option<fleetforge_tools::Drivers>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Errors retried with the runtime's backoff.
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

/// What admission cannot check of the stages: a percentage of
/// `maxInFlight` from 1% to 100%.
pub fn check_stages(stages: &[fleetforge_api::fleet_rollout::RolloutStage]) -> Result<(), String> {
    for (i, stage) in stages.iter().enumerate() {
        if let IntOrString::String(text) = &stage.max_in_flight {
            let percent = text.strip_suffix('%').and_then(|n| n.parse::<u32>().ok());
            if !percent.is_some_and(|p| (1..=100).contains(&p)) {
                return Err(format!(
                    "spec.stages[{i}].maxInFlight: {text:?} is not a percentage from 1% to 100%"
                ));
            }
        }
    }
    Ok(())
}

/// What people asked through `rollout`'s annotations.
pub fn requests(rollout: &FleetRollout) -> Requests {
    let annotations = rollout.annotations();
    Requests {
        approve: annotations.get(annotation::APPROVE).cloned(),
        resume: annotations.contains_key(annotation::RESUME),
        abort: annotations
            .get(annotation::ABORT)
            .and_then(|a| match a.as_str() {
                "Leave" => Some(AbortPolicy::Leave),
                "Rollback" => Some(AbortPolicy::Rollback),
                _ => None,
            }),
    }
}

/// Why a rollout cannot go on: a condition reason and a message naming
/// the field or object at fault.
pub type Refused = (&'static str, String);

/// What a rollout would do: its change and the targets of each stage.
#[derive(Debug)]
pub struct Preview {
    /// The round's change.
    pub revision: String,
    /// Each stage's targets, in the order they are taken.
    pub stages: Vec<Vec<Candidate>>,
}

/// The round's change and its targets, or why there are none to be had.
#[derive(Debug)]
pub struct Round {
    /// `version 1.35`, or the generation of a ToolSet or ToolInstall.
    pub revision: String,
    /// The targets.
    pub candidates: Vec<Candidate>,
    /// For a tool rollout, the ToolTarget each write applies.
    pub tool_changes: tools::ToolChanges,
}

impl Context {
    /// The change `rollout` makes now and every target it may touch.
    pub fn round(&self, rollout: &FleetRollout) -> Result<Round, Refused> {
        let namespace = rollout.namespace().unwrap_or_default();
        if let Some(version) = &rollout.spec.version {
            let goal = MinorVersion::parse(version).ok_or((
                "InvalidVersion",
                format!("spec.version: {version:?} is not a major.minor version"),
            ))?;
            return Ok(Round {
                revision: format!("version {goal}"),
                candidates: self.cluster_candidates(&namespace, goal),
                tool_changes: tools::ToolChanges::default(),
            });
        }
        tools::round(self, rollout)
    }

    fn cluster_candidates(&self, namespace: &str, goal: MinorVersion) -> Vec<Candidate> {
        let tool_targets = self.tool_targets.state();
        self.clusters
            .state()
            .iter()
            .filter(|c| c.namespace().as_deref() == Some(namespace))
            .map(|cluster| {
                let name = cluster.name_any();
                let tools: Vec<&ToolTarget> = tool_targets
                    .iter()
                    .filter(|tt| {
                        tt.namespace().as_deref() == Some(namespace)
                            && tt.spec.target.kind
                                == fleetforge_api::tool_target::TargetKind::Cluster
                            && tt.spec.target.name == name
                            && tt.metadata.deletion_timestamp.is_none()
                    })
                    .map(|tt| &**tt)
                    .collect();
                Candidate {
                    kind: "Cluster",
                    target: name.clone(),
                    target_kind: fleetforge_api::tool_target::TargetKind::Cluster,
                    name,
                    labels: cluster.labels().clone(),
                    facts: facts::cluster_facts(cluster, goal, &tools),
                }
            })
            .collect()
    }
}

impl Context {
    /// A context over the objects given instead of watched caches, for
    /// `fleetforge plan`: what a rollout would do to a world that is not
    /// applied yet.
    pub fn over(
        client: Client,
        clusters: Vec<Cluster>,
        virtual_clusters: Vec<VirtualCluster>,
        tool_targets: Vec<ToolTarget>,
        tool_installs: Vec<ToolInstall>,
        tool_sets: Vec<ToolSet>,
    ) -> Self {
        fn filled<K>(objects: Vec<K>) -> Store<K>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let (store, mut writer) = reflector::store::<K>();
            for object in objects {
                writer.apply_watcher_event(&watcher::Event::Apply(object));
            }
            store
        }
        Self {
            recorder: Recorder::new(client.clone(), "fleetforge-plan"),
            client,
            rollouts: filled(Vec::new()),
            clusters: filled(clusters),
            virtual_clusters: filled(virtual_clusters),
            tool_targets: filled(tool_targets),
            tool_installs: filled(tool_installs),
            tool_sets: filled(tool_sets),
            listed: Vec::new(),
            metrics: Arc::default(),
            drivers: None,
        }
    }

    /// The stages `rollout` would go through, each with its targets (in
    /// the order the controller takes them), and the round's change.
    pub fn preview(&self, rollout: &FleetRollout) -> Result<Preview, Refused> {
        check_stages(&rollout.spec.stages).map_err(|m| ("InvalidSpec", m))?;
        let stages = Stages::parse(&rollout.spec.stages).map_err(|m| ("InvalidSelector", m))?;
        let round = self.round(rollout)?;
        let stage_of = |c: &Candidate| stages.of(&c.target, &c.labels);
        let members = decide::assign(&rollout.spec, &round.candidates, &stage_of)
            .into_iter()
            .map(|stage| stage.into_iter().cloned().collect())
            .collect();
        Ok(Preview {
            revision: round.revision,
            stages: members,
        })
    }
}

/// One pass over a FleetRollout.
pub async fn reconcile(rollout: Arc<FleetRollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    for gate in &ctx.listed {
        gate.wait().await;
    }
    if rollout.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget(&rollout);
        return Ok(Action::await_change());
    }
    let namespace = rollout.namespace().unwrap_or_default();
    let api: Api<FleetRollout> = Api::namespaced(ctx.client.clone(), &namespace);
    let recorded = rollout.status.clone().unwrap_or_default();
    let refused = |reason: &'static str, message: String| (reason, message);
    let stages = check_stages(&rollout.spec.stages)
        .map_err(|m| refused("InvalidSpec", m))
        .and_then(|()| {
            Stages::parse(&rollout.spec.stages).map_err(|m| refused("InvalidSelector", m))
        });
    let round = stages.and_then(|s| ctx.round(&rollout).map(|r| (s, r)));
    let (stages, mut round) = match round {
        Ok(ok) => ok,
        Err((reason, message)) => {
            let mut status = recorded.clone();
            status.observed_generation = rollout.metadata.generation;
            status.conditions = conditions::merge(
                &recorded.conditions,
                &[
                    Desired::no(condition::READY, reason, message.clone()),
                    Desired::no(condition::SYNCED, reason, message.clone()),
                ],
                rollout.metadata.generation,
                &conditions::now(),
            );
            write_status(&api, &rollout, &recorded, &status).await?;
            if conditions::message(&recorded.conditions, condition::SYNCED)
                != Some(message.as_str())
            {
                publish(&ctx, &rollout, true, reason, &message).await;
            }
            return Ok(Action::requeue(POLL));
        }
    };
    check_health(&ctx, &rollout, &recorded, &mut round.candidates).await;
    let stage_of = move |c: &Candidate| stages.of(&c.target, &c.labels);
    let requests = requests(&rollout);
    let decision = decide::decide(&Inputs {
        spec: &rollout.spec,
        revision: round.revision.clone(),
        recorded: &recorded,
        candidates: std::mem::take(&mut round.candidates),
        stage_of: &stage_of,
        requests: requests.clone(),
        now: Timestamp::now(),
    });
    carry_out(&ctx, &rollout, &namespace, &decision, &round.tool_changes).await?;

    let mut status = decision.status.clone();
    status.observed_generation = rollout.metadata.generation;
    status.conditions = conditions::merge(
        &recorded.conditions,
        &round_conditions(&status),
        rollout.metadata.generation,
        &conditions::now(),
    );
    write_status(&api, &rollout, &recorded, &status).await?;
    ctx.metrics.record(&rollout, &status);
    for notice in &decision.notices {
        publish(
            &ctx,
            &rollout,
            notice.warning,
            notice.reason,
            &notice.message,
        )
        .await;
    }
    consume_requests(&api, &rollout, &requests).await?;
    let next = decision
        .requeue
        .map_or(POLL, |d| d.clamp(Duration::from_secs(1), POLL));
    Ok(Action::requeue(next))
}

/// Runs the rollout's health checks on the targets in flight that are
/// otherwise healthy (those are the only ones whose health decides
/// anything), through the target's tool driver; a check that fails, or
/// a target that cannot be reached, keeps the target unsettled.
async fn check_health(
    ctx: &Context,
    rollout: &FleetRollout,
    recorded: &FleetRolloutStatus,
    candidates: &mut [Candidate],
) {
    use fleetforge_api::fleet_rollout::RolloutState;
    use fleetforge_api::tool_target::TargetKind;
    use fleetforge_tools::select::Object;
    let (checks, Some(drivers)) = (&rollout.spec.health_checks, &ctx.drivers) else {
        return;
    };
    if checks.is_empty() {
        return;
    }
    let namespace = rollout.namespace().unwrap_or_default();
    let same_round = |c: &Candidate| {
        recorded.targets.iter().any(|t| {
            t.kind == c.kind
                && t.name == c.name
                && matches!(t.state, RolloutState::InProgress | RolloutState::Soaking)
        })
    };
    for candidate in candidates
        .iter_mut()
        .filter(|c| c.facts.settled && c.facts.at_goal)
    {
        if !same_round(candidate) {
            continue;
        }
        let reference = ObjectRef::new(&candidate.target).within(&namespace);
        let (cluster, virtual_cluster) = match candidate.target_kind {
            TargetKind::Cluster => (ctx.clusters.get(&reference), None),
            TargetKind::VirtualCluster => (
                None,
                ctx.virtual_clusters
                    .get(&ObjectRef::new(&candidate.target).within(&namespace)),
            ),
        };
        let object = match (&cluster, &virtual_cluster) {
            (Some(c), _) => Object::Cluster(c),
            (_, Some(v)) => Object::Virtual(v),
            _ => continue,
        };
        let verdict = match drivers.session(&ctx.client, &namespace, object).await {
            Ok(session) => session
                .unhealthy(checks, "default", &Default::default())
                .await
                .map(|(reasons, _)| reasons),
            Err(e) => Err(e),
        };
        let why = match verdict {
            Ok(reasons) if reasons.is_empty() => continue,
            Ok(reasons) => format!("health checks: {}", reasons.join("; ")),
            Err(e) => format!("health checks: {e}"),
        };
        candidate.facts.settled = false;
        candidate.facts.unhealthy = Some(why);
    }
}

/// Writes the decided changes into the targets.
async fn carry_out(
    ctx: &Context,
    rollout: &FleetRollout,
    namespace: &str,
    decision: &Decision,
    tool_changes: &tools::ToolChanges,
) -> Result<(), Error> {
    let params = PatchParams::apply(ROLLOUT_FIELD_MANAGER).force();
    // A ToolTarget has one writer of its spec, whoever carries the change:
    // the ToolInstall controller's field manager, so that what one drops
    // the other does not keep.
    let child_params = PatchParams::apply(fleetforge_tools::select::CHILD_MANAGER).force();
    for write in &decision.writes {
        match write.kind {
            "Cluster" => {
                let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), namespace);
                let patch = json!({
                    "apiVersion": Cluster::api_version(&()),
                    "kind": "Cluster",
                    "metadata": {"name": write.name},
                    "spec": {"version": write.to},
                });
                clusters
                    .patch(&write.name, &params, &Patch::Apply(&patch))
                    .await?;
                announce(ctx, rollout, write).await;
            }
            _ => {
                let Some(object) = tool_changes.object(&write.name, write.revert) else {
                    continue;
                };
                let tool_targets: Api<ToolTarget> = Api::namespaced(ctx.client.clone(), namespace);
                tool_targets
                    .patch(&write.name, &child_params, &Patch::Apply(object))
                    .await?;
                announce(ctx, rollout, write).await;
            }
        }
    }
    Ok(())
}

async fn announce(ctx: &Context, rollout: &FleetRollout, write: &Write) {
    let message = if write.revert {
        format!("{} {}: rolled back to {}", write.kind, write.name, write.to)
    } else {
        format!("{} {}: changed to {}", write.kind, write.name, write.to)
    };
    let reason = if write.revert {
        "TargetRolledBack"
    } else {
        "TargetChanged"
    };
    publish(ctx, rollout, false, reason, &message).await;
}

fn round_conditions(status: &FleetRolloutStatus) -> Vec<Desired> {
    use fleetforge_api::fleet_rollout::RolloutPhase;
    let progress = status.progress.clone().unwrap_or_default();
    let stage = status.stage.clone().unwrap_or_default();
    let ready = match status.phase {
        Some(RolloutPhase::Completed) => Desired::yes(
            condition::READY,
            "Completed",
            format!(
                "{} rolled out: {progress}",
                status.revision.clone().unwrap_or_default()
            ),
        ),
        Some(RolloutPhase::Halted) => Desired::no(
            condition::READY,
            "Halted",
            format!("halted in stage {stage} at {progress}: resume or abort"),
        ),
        Some(RolloutPhase::Aborted) => Desired::no(
            condition::READY,
            "Aborted",
            format!("aborted in stage {stage} at {progress}"),
        ),
        Some(RolloutPhase::Paused) => {
            Desired::no(condition::READY, "Paused", format!("paused at {progress}"))
        }
        Some(RolloutPhase::WaitingForApproval) => Desired::no(
            condition::READY,
            "WaitingForApproval",
            format!("stage {stage} waits for approval: fleetforge rollout approve NAME {stage}"),
        ),
        _ => Desired::no(
            condition::READY,
            "Progressing",
            format!("stage {stage}: {progress} done"),
        ),
    };
    vec![
        ready,
        Desired::yes(
            condition::SYNCED,
            "Synced",
            "the round's targets were read and its changes written",
        ),
    ]
}

async fn write_status(
    api: &Api<FleetRollout>,
    rollout: &FleetRollout,
    recorded: &FleetRolloutStatus,
    status: &FleetRolloutStatus,
) -> Result<(), Error> {
    fleetforge_runtime::status::apply_if_changed(
        api,
        &rollout.name_any(),
        FIELD_MANAGER,
        Some(recorded).filter(|_| rollout.status.is_some()),
        status,
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    rollout: &FleetRollout,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let type_ = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.recorder
        .publish(&rollout.object_ref(&()), type_, reason, "Rollout", message)
        .await;
}

/// Removes the annotations a person set to ask something, once the status
/// written records the answer (as Argo CD removes its refresh annotation).
async fn consume_requests(
    api: &Api<FleetRollout>,
    rollout: &FleetRollout,
    requests: &Requests,
) -> Result<(), Error> {
    let mut remove = serde_json::Map::new();
    for key in [annotation::APPROVE, annotation::RESUME, annotation::ABORT] {
        if rollout.annotations().contains_key(key) {
            remove.insert(key.into(), serde_json::Value::Null);
        }
    }
    if remove.is_empty() {
        return Ok(());
    }
    tracing::debug!(rollout = %rollout.name_any(), ?requests, "requests recorded");
    api.patch(
        &rollout.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": remove}})),
    )
    .await?;
    Ok(())
}

/// Runs the FleetRollout controller until the process stops.
pub async fn run(
    runtime: &Runtime,
    client: Client,
    targets: &Informers,
    namespace: Option<&str>,
    metrics: Arc<RolloutMetrics>,
    drivers: Option<fleetforge_tools::Drivers>,
) {
    let (rollout_store, rollout_writer) = reflector::store::<FleetRollout>();
    let (opener, rollouts_listed) = gate();
    let rollout_events = watcher(
        scoped::<FleetRollout>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|r: &mut FleetRollout| r.managed_fields_mut().clear())
    .reflect(rollout_writer)
    .inspect(opener.on_listed())
    .applied_objects()
    .predicate_filter(fleetforge_core::watch::change_hash, Default::default());

    let (tt_store, tt_writer) = reflector::store::<ToolTarget>();
    let (tt_opener, tts_listed) = gate();
    let tt_events = watcher(
        scoped::<ToolTarget>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|tt: &mut ToolTarget| tt.managed_fields_mut().clear())
    .reflect(tt_writer)
    .inspect(tt_opener.on_listed())
    .touched_objects();
    let (ti_store, ti_writer) = reflector::store::<ToolInstall>();
    let (ti_opener, tis_listed) = gate();
    let ti_events = watcher(
        scoped::<ToolInstall>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|ti: &mut ToolInstall| ti.managed_fields_mut().clear())
    .reflect(ti_writer)
    .inspect(ti_opener.on_listed())
    .applied_objects()
    .predicate_filter(kube::runtime::predicates::generation, Default::default());
    let (set_store, set_writer) = reflector::store::<ToolSet>();
    let (set_opener, sets_listed) = gate();
    let set_events = watcher(
        Api::<ToolSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(set_writer)
    .inspect(set_opener.on_listed())
    .applied_objects()
    .predicate_filter(kube::runtime::predicates::generation, Default::default());

    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "fleetforge-rollouts"),
        client,
        rollouts: rollout_store.clone(),
        clusters: targets.clusters.store(),
        virtual_clusters: targets.virtual_clusters.store(),
        tool_targets: tt_store,
        tool_installs: ti_store,
        tool_sets: set_store,
        listed: vec![
            rollouts_listed,
            targets.clusters.listed(),
            targets.virtual_clusters.listed(),
            tts_listed,
            tis_listed,
            sets_listed,
        ],
        metrics,
        drivers,
    });
    // Any change of a target (its status too) may move a rollout in its
    // namespace on; the controller's debounce folds bursts into one pass.
    let in_namespace = |store: Store<FleetRollout>| {
        move |namespace: Option<String>| {
            store
                .state()
                .into_iter()
                .filter(|r| r.namespace() == namespace)
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        }
    };
    let by_cluster = in_namespace(rollout_store.clone());
    let by_tool_target = in_namespace(rollout_store.clone());
    let by_install = in_namespace(rollout_store.clone());
    let by_set = rollout_store.clone();
    let clusters = targets
        .clusters
        .subscribe()
        .into_stream()
        .map(|change| match change {
            fleetforge_runtime::informer::Change::Applied(c)
            | fleetforge_runtime::informer::Change::Deleted(c)
            | fleetforge_runtime::informer::Change::Left(c) => c,
        });
    let controller = Controller::for_stream(rollout_events, rollout_store)
        .watches_shared_stream(clusters, move |c: Arc<Cluster>| by_cluster(c.namespace()))
        .watches_stream(tt_events, move |tt: ToolTarget| {
            by_tool_target(tt.namespace())
        })
        .watches_stream(ti_events, move |ti: ToolInstall| by_install(ti.namespace()))
        .watches_stream(set_events, move |set: ToolSet| {
            let name = set.name_any();
            by_set
                .state()
                .into_iter()
                .filter(|r| {
                    r.spec.tool_set_ref.as_ref().is_some_and(|s| s.name == name)
                        || r.spec.tool_install_ref.is_some()
                })
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        });
    runtime
        .run("FleetRollout", controller, ctx, reconcile)
        .await;
}

/// Labels by which a target is selected, for callers that hold only the
/// target's name.
pub fn labels_of(
    clusters: &Store<Cluster>,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, String> {
    clusters
        .get(&ObjectRef::new(name).within(namespace))
        .map(|c| c.labels().clone())
        .unwrap_or_default()
}
