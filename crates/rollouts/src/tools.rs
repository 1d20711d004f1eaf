//! Tool rollouts: a change of a ToolSet (to every ToolInstall installing
//! it) or of one ToolInstall moves into its ToolTargets target by target.
//! While a rollout governs a ToolInstall, the ToolInstall controller keeps
//! each ToolTarget's tools as they are ([`fleetforge_tools::select::hold`]);
//! the rollout writes the ToolTarget the ToolInstall controller would have
//! written (the same [`desired_child`]), noting the tools it had before
//! for a rollback.

use std::collections::BTreeMap;

use fleetforge_api::tool_target::{TargetKind, ToolTargetSpec};
use fleetforge_api::{FleetRollout, ToolInstall, ToolTarget, annotation};
use fleetforge_tools::install::{declared_tools, governs};
use fleetforge_tools::select::{INSTALL_LABEL, current_rollout_part, desired_child, rollout_part};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use crate::decide::{Candidate, Facts};
use crate::facts::tool_target_unhealthy;
use crate::{Context, Refused, Round};

/// The ToolTargets a FleetRollout writes: what it writes forward, and back
/// on a rollback.
#[derive(Debug, Clone, Default)]
pub struct ToolChanges(BTreeMap<String, (Value, Option<Value>)>);

impl ToolChanges {
    /// The ToolTarget to apply for `name`, forward or back.
    pub fn object(&self, name: &str, revert: bool) -> Option<&Value> {
        self.0.get(name).and_then(
            |(forward, back)| {
                if revert { back.as_ref() } else { Some(forward) }
            },
        )
    }
}

/// The round of a tool rollout: its change, its ToolTargets as candidates,
/// and what to write into each.
pub(crate) fn round(ctx: &Context, rollout: &FleetRollout) -> Result<Round, Refused> {
    let namespace = rollout.namespace().unwrap_or_default();
    let set_generation = |name: &str| {
        ctx.tool_sets
            .get(&ObjectRef::new(name))
            .map(|set| set.metadata.generation.unwrap_or_default())
    };
    let revision = match (&rollout.spec.tool_set_ref, &rollout.spec.tool_install_ref) {
        (Some(set), _) => format!(
            "ToolSet {} generation {}",
            set.name,
            set_generation(&set.name).ok_or((
                "ToolSetNotFound",
                format!("spec.toolSetRef: ToolSet {} does not exist", set.name),
            ))?
        ),
        (None, Some(install)) => {
            let ti = ctx
                .tool_installs
                .get(&ObjectRef::new(&install.name).within(&namespace))
                .ok_or((
                    "ToolInstallNotFound",
                    format!(
                        "spec.toolInstallRef: ToolInstall {} does not exist in {namespace}",
                        install.name
                    ),
                ))?;
            let mut revision = format!(
                "ToolInstall {} generation {}",
                install.name,
                ti.metadata.generation.unwrap_or_default()
            );
            if let (None, Some(set)) = (&ti.spec.tools, &ti.spec.tool_set_ref)
                && let Some(generation) = set_generation(&set.name)
            {
                revision.push_str(&format!(" (ToolSet {} generation {generation})", set.name));
            }
            revision
        }
        (None, None) => return Err(("InvalidSpec", "no change to roll out".into())),
    };

    let tool_targets = ctx.tool_targets.state();
    let mut candidates = Vec::new();
    let mut changes = ToolChanges::default();
    for ti in ctx.tool_installs.state() {
        if !governs(rollout, &ti) {
            continue;
        }
        let tools = declared_tools(&ti, |name| ctx.tool_sets.get(&ObjectRef::new(name))).map_err(
            |(reason, message)| (reason, format!("ToolInstall {}: {message}", ti.name_any())),
        )?;
        for tt in tool_targets.iter().filter(|tt| child_of(tt, &ti)) {
            // The shard stays as the ToolInstall controller wrote it.
            let shard = tt
                .labels()
                .get(fleetforge_runtime::shards::SHARD_LABEL)
                .and_then(|s| s.parse().ok());
            let desired = desired_child(&ti, &tools, &tt.spec.target, shard);
            let (candidate, forward, back) = candidate(ctx, rollout, &revision, tt, desired);
            changes.0.insert(candidate.name.clone(), (forward, back));
            candidates.push(candidate);
        }
    }
    Ok(Round {
        revision,
        candidates,
        tool_changes: changes,
    })
}

fn child_of(tt: &ToolTarget, ti: &ToolInstall) -> bool {
    let name = ti.name_any();
    tt.namespace() == ti.namespace()
        && tt.labels().get(INSTALL_LABEL) == Some(&name)
        && tt.spec.tool_install_ref.name == name
}

/// The rollout part of a desired ToolTarget, read through the type so that
/// it compares with a stored one.
fn goal_of(desired: &Value) -> Value {
    serde_json::from_value::<ToolTargetSpec>(desired["spec"].clone())
        .ok()
        .and_then(|spec| serde_json::to_value(spec).ok())
        .map_or_else(
            || rollout_part(&desired["spec"]),
            |spec| rollout_part(&spec),
        )
}

fn candidate(
    ctx: &Context,
    rollout: &FleetRollout,
    revision: &str,
    tt: &ToolTarget,
    desired: Value,
) -> (Candidate, Value, Option<Value>) {
    let namespace = tt.namespace().unwrap_or_default();
    let target = &tt.spec.target;
    let (labels, target_going) = match target.kind {
        TargetKind::Cluster => ctx
            .clusters
            .get(&ObjectRef::new(&target.name).within(&namespace))
            .map(|c| (c.labels().clone(), c.metadata.deletion_timestamp.is_some())),
        TargetKind::VirtualCluster => ctx
            .virtual_clusters
            .get(&ObjectRef::new(&target.name).within(&namespace))
            .map(|v| (v.labels().clone(), v.metadata.deletion_timestamp.is_some())),
    }
    .unwrap_or_default();
    let goal = goal_of(&desired);
    let current = current_rollout_part(tt);
    let at_goal = goal == current;
    let unhealthy = tool_target_unhealthy(tt);
    let status_current = tt
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == tt.metadata.generation);
    let stalled = tt
        .status
        .as_ref()
        .filter(|_| status_current)
        .and_then(|s| {
            s.tools
                .iter()
                .find(|t| t.state == fleetforge_api::ToolState::Failed)
        })
        .map(|t| {
            format!(
                "tool {} FAILED: {}",
                t.name,
                t.message.as_deref().unwrap_or("no message")
            )
        });
    let previous = tt.annotations().get(annotation::ROLLOUT_PREVIOUS).cloned();
    let skip = if tt.metadata.deletion_timestamp.is_some() || target_going {
        Some("being deleted".to_string())
    } else if tt.spec.suspend {
        Some("suspended (its ToolInstall's spec.suspend)".to_string())
    } else {
        None
    };
    let facts = Facts {
        skip,
        at_goal,
        next: (!at_goal).then(|| revision.to_string()),
        settled: unhealthy.is_none(),
        stalled,
        unhealthy,
        revert: previous.as_ref().map(|_| "the previous tools".to_string()),
    };

    let mut forward = desired.clone();
    forward["metadata"]["annotations"][annotation::ROLLOUT] =
        json!(format!("{}: {revision}", rollout.name_any()));
    // The tools it had before, unless it has this round's already (a
    // repeated write must not lose them).
    let before = if at_goal {
        previous.clone()
    } else {
        Some(current.to_string())
    };
    if let Some(before) = before {
        forward["metadata"]["annotations"][annotation::ROLLOUT_PREVIOUS] = json!(before);
    }
    let back = previous
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .map(|part| {
            let mut back = desired;
            for (field, value) in part.as_object().into_iter().flatten() {
                back["spec"][field] = value.clone();
            }
            back["metadata"]["annotations"][annotation::ROLLOUT] =
                json!(format!("{}: rolled back", rollout.name_any()));
            back
        });
    let candidate = Candidate {
        kind: "ToolTarget",
        name: tt.name_any(),
        target: target.name.clone(),
        target_kind: target.kind,
        labels,
        facts,
    };
    (candidate, forward, back)
}
