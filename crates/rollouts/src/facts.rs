//! What a target is now, as the rollout's decisions need it (pure
//! functions of the cached objects).

use fleetforge_api::tool_install::ToolState;
use fleetforge_api::{Cluster, ManagementPolicy, ToolTarget, condition};
use fleetforge_core::cluster::MinorVersion;
use fleetforge_core::conditions;

use crate::decide::Facts;

/// Why `cluster` is not healthy with what its spec says, if it is not:
/// its status must be for its current generation, its control plane and
/// node pools at its version, Ready, not drifted, and its tools deployed.
pub fn cluster_unhealthy(cluster: &Cluster, tools: &[&ToolTarget]) -> Option<String> {
    let Some(status) = &cluster.status else {
        return Some("no status yet".into());
    };
    if status.observed_generation != cluster.metadata.generation {
        return Some(format!(
            "applying generation {} (at {})",
            cluster.metadata.generation.unwrap_or_default(),
            status.observed_generation.unwrap_or_default()
        ));
    }
    let want = spec_version(cluster);
    if let Some(want) = want {
        let have = status.version.as_deref().and_then(MinorVersion::parse);
        if have != Some(want) {
            return Some(format!(
                "control plane at {}, spec {want}",
                status.version.as_deref().unwrap_or("unknown")
            ));
        }
        for pool in &status.node_pools {
            let have = pool.version.as_deref().and_then(MinorVersion::parse);
            if have.is_some_and(|have| have != want) {
                return Some(format!(
                    "node pool {} at {}, spec {want}",
                    pool.name,
                    pool.version.as_deref().unwrap_or("unknown")
                ));
            }
        }
    }
    if !conditions::is_true(&status.conditions, condition::READY) {
        return Some(format!(
            "not Ready: {}",
            conditions::message(&status.conditions, condition::READY).unwrap_or("no condition yet")
        ));
    }
    if conditions::is_true(&status.conditions, condition::DRIFTED) {
        return Some(format!(
            "drifted: {}",
            conditions::message(&status.conditions, condition::DRIFTED).unwrap_or_default()
        ));
    }
    tools.iter().find_map(|tt| tool_target_unhealthy(tt))
}

/// Why the tools of `tt` are not all deployed for its current spec, if so.
pub fn tool_target_unhealthy(tt: &ToolTarget) -> Option<String> {
    let name = tt.metadata.name.as_deref().unwrap_or_default();
    let Some(status) = &tt.status else {
        return Some(format!("tools of {name}: no status yet"));
    };
    if status.observed_generation != tt.metadata.generation {
        return Some(format!("tools of {name}: applying a new spec"));
    }
    let worst = status.state.unwrap_or(ToolState::Pending);
    if !matches!(worst, ToolState::Deployed | ToolState::Shared) {
        let tool = status
            .tools
            .iter()
            .find(|t| !matches!(t.state, ToolState::Deployed | ToolState::Shared));
        return Some(match tool {
            Some(tool) => format!(
                "tool {} on {} is {}{}",
                tool.name,
                tt.spec.target.name,
                state_name(tool.state),
                tool.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            None => format!("tools of {name} are {}", state_name(worst)),
        });
    }
    if conditions::is_true(&status.conditions, condition::DRIFTED) {
        return Some(format!("tools of {name} drifted"));
    }
    None
}

fn state_name(state: ToolState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The version `cluster` is meant to run: its spec's, else what it runs.
fn spec_version(cluster: &Cluster) -> Option<MinorVersion> {
    cluster
        .spec
        .version
        .as_deref()
        .or(cluster.status.as_ref().and_then(|s| s.version.as_deref()))
        .and_then(MinorVersion::parse)
}

/// Why a Cluster must not be changed by a rollout, if so.
fn cluster_skip(cluster: &Cluster) -> Option<String> {
    if cluster.metadata.deletion_timestamp.is_some() {
        return Some("being deleted".into());
    }
    if cluster.spec.paused {
        return Some("paused (spec.paused)".into());
    }
    if cluster.spec.management_policy == ManagementPolicy::ObserveOnly {
        return Some("observe-only (managementPolicy ObserveOnly)".into());
    }
    None
}

/// A Cluster's facts for a rollout to version `goal`: its next step is
/// one minor version past its spec's, never past the goal.
pub fn cluster_facts(cluster: &Cluster, goal: MinorVersion, tools: &[&ToolTarget]) -> Facts {
    let mut facts = Facts {
        skip: cluster_skip(cluster),
        ..Facts::default()
    };
    let Some(have) = spec_version(cluster) else {
        facts.skip = facts
            .skip
            .or_else(|| Some("its version is not known yet".into()));
        return facts;
    };
    if have.major != goal.major {
        facts.skip = facts.skip.or_else(|| {
            Some(format!(
                "runs {have}: another major version than {goal} is not supported"
            ))
        });
    }
    if have > goal {
        facts.skip = facts
            .skip
            .or_else(|| Some(format!("runs {have}, newer than {goal}")));
    }
    facts.at_goal = have == goal;
    if !facts.at_goal {
        facts.next = Some(
            MinorVersion {
                major: have.major,
                minor: have.minor + 1,
            }
            .to_string(),
        );
    }
    facts.unhealthy = cluster_unhealthy(cluster, tools);
    facts.settled = facts.unhealthy.is_none();
    facts.stalled = cluster
        .status
        .as_ref()
        .filter(|s| conditions::is_true(&s.conditions, condition::STALLED))
        .map(|s| {
            conditions::message(&s.conditions, condition::STALLED)
                .unwrap_or("stalled")
                .to_string()
        });
    // Rolling back sets the spec to what the control plane runs: an
    // upgrade that has not moved it is taken back, one that has (a
    // downgrade is refused) is kept. The status may lag the provider, so
    // this is looked at again on every pass of an aborted round.
    let running = cluster
        .status
        .as_ref()
        .and_then(|s| s.version.as_deref())
        .and_then(MinorVersion::parse);
    facts.revert = running.filter(|r| *r != have).map(|r| r.to_string());
    facts
}
