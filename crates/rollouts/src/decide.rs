//! The rollout's decisions as a pure function: from the spec, what each
//! target is now, what the last pass recorded and what a person asked, to
//! the status of every stage and target, the changes to write and the
//! events to tell. No API server, no clock: `now` comes in.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleetforge_api::fleet_rollout::{
    AbortPolicy, FleetRolloutSpec, FleetRolloutStatus, RolloutPhase, RolloutStage, RolloutState,
    StageStatus, TargetRolloutStatus,
};
use fleetforge_api::tool_target::TargetKind;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// What a target is now, as far as the rollout cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// Why it must not be changed (paused, observe-only, being deleted,
    /// newer already).
    pub skip: Option<String>,
    /// Its spec carries the rollout's change (the goal version, the
    /// declared tools).
    pub at_goal: bool,
    /// The change to write next when it is its turn: the next version step,
    /// or the tools' revision. `None` at the goal.
    pub next: Option<String>,
    /// Healthy with what its spec says now: observed as declared, Ready,
    /// not drifted, its tools deployed, its health checks passing.
    pub settled: bool,
    /// Waiting will not help (kstatus Stalled), and why.
    pub stalled: Option<String>,
    /// Why it is not settled, for people.
    pub unhealthy: Option<String>,
    /// What an abort with `Rollback` writes back, where the target allows.
    pub revert: Option<String>,
}

/// A target of the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `Cluster` or `ToolTarget`.
    pub kind: &'static str,
    /// The object the rollout writes to.
    pub name: String,
    /// The name stages match `names` against (the Cluster or
    /// VirtualCluster).
    pub target: String,
    /// The kind of that target.
    pub target_kind: TargetKind,
    /// The labels stages select by (the Cluster's or VirtualCluster's).
    pub labels: BTreeMap<String, String>,
    /// What it is now.
    pub facts: Facts,
}

/// What people asked through the rollout's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// A stage approved.
    pub approve: Option<String>,
    /// Resume a halted round.
    pub resume: bool,
    /// Abort the round.
    pub abort: Option<AbortPolicy>,
}

/// One pass's inputs.
#[derive(Clone)]
pub struct Inputs<'a> {
    /// The rollout's spec.
    pub spec: &'a FleetRolloutSpec,
    /// The change of this round (`version 1.35`, a generation).
    pub revision: String,
    /// What the last pass wrote (another revision's is ignored).
    pub recorded: &'a FleetRolloutStatus,
    /// The targets, in any order.
    pub candidates: Vec<Candidate>,
    /// The index of the stage a target belongs to (the first that selects
    /// it), if any.
    pub stage_of: &'a dyn Fn(&Candidate) -> Option<usize>,
    /// What people asked.
    pub requests: Requests,
    /// The time of the pass.
    pub now: Timestamp,
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("revision", &self.revision)
            .field("candidates", &self.candidates.len())
            .finish_non_exhaustive()
    }
}

/// A write to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `Cluster` or `ToolTarget`.
    pub kind: &'static str,
    /// The object.
    pub name: String,
    /// The version or revision to write.
    pub to: String,
    /// Whether this puts back what the rollout changed (an abort with
    /// `Rollback`).
    pub revert: bool,
}

/// An event to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Whether it is a warning.
    pub warning: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// What a pass decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status to record (conditions are the caller's).
    pub status: FleetRolloutStatus,
    /// Changes to write into targets, in order.
    pub writes: Vec<Write>,
    /// Events, in order.
    pub notices: Vec<Notice>,
    /// How soon to look again at the latest (a soak ending, a deadline).
    pub requeue: Option<Duration>,
}

/// Parses a Go-style duration of the spec (the schema's pattern).
pub fn duration(text: &str) -> Duration {
    text.parse::<kube::core::Duration>()
        .map(Duration::from)
        .unwrap_or_default()
}

fn elapsed(since: Option<&Time>, now: Timestamp) -> Duration {
    since
        .map(|t| now.duration_since(t.0))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
}

fn time(now: Timestamp) -> Time {
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The in-flight cap of `stage` with `targets` targets.
pub fn max_in_flight(stage: &RolloutStage, targets: usize) -> usize {
    match &stage.max_in_flight {
        IntOrString::Int(n) => (*n).max(1) as usize,
        IntOrString::String(text) => {
            let percent: usize = text.trim_end_matches('%').parse().unwrap_or(100);
            (targets * percent / 100).max(1)
        }
    }
}

/// The members of each stage, in name order.
pub fn assign<'c>(
    spec: &FleetRolloutSpec,
    candidates: &'c [Candidate],
    stage_of: &dyn Fn(&Candidate) -> Option<usize>,
) -> Vec<Vec<&'c Candidate>> {
    let mut stages: Vec<Vec<&Candidate>> = vec![Vec::new(); spec.stages.len()];
    for candidate in candidates {
        if let Some(members) = stage_of(candidate).and_then(|i| stages.get_mut(i)) {
            members.push(candidate);
        }
    }
    for stage in &mut stages {
        stage.sort_by(|a, b| (&a.target, &a.name).cmp(&(&b.target, &b.name)));
    }
    stages
}

/// One pass of the rollout.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let Inputs {
        spec,
        recorded,
        requests,
        now,
        ..
    } = inputs;
    let now = *now;
    let same_round = recorded.revision.as_deref() == Some(inputs.revision.as_str());
    let before: HashMap<(&str, &str), &TargetRolloutStatus> = if same_round {
        recorded
            .targets
            .iter()
            .map(|t| ((t.kind.as_str(), t.name.as_str()), t))
            .collect()
    } else {
        HashMap::new()
    };
    let mut approved = if same_round {
        recorded.approved.clone()
    } else {
        Vec::new()
    };
    if let Some(stage) = &requests.approve
        && spec.stages.iter().any(|s| &s.name == stage)
        && !approved.contains(stage)
    {
        approved.push(stage.clone());
    }
    let recorded_abort = if same_round { recorded.aborted } else { None };
    // A halted round takes no further steps either, until resumed.
    let was_halted = same_round && recorded.phase == Some(RolloutPhase::Halted) && !requests.resume;
    let aborted = recorded_abort.or(requests.abort);
    let deadline = duration(&spec.progress_deadline);

    let mut notices = Vec::new();
    let mut writes = Vec::new();
    let mut requeue: Option<Duration> = None;
    let mut soon = |d: Duration| {
        requeue = Some(requeue.map_or(d, |r| r.min(d)));
    };

    // Each target's state, before starting anything new.
    let stages = assign(spec, &inputs.candidates, inputs.stage_of);
    let mut rows: Vec<Vec<TargetRolloutStatus>> = Vec::new();
    for (stage, members) in spec.stages.iter().zip(&stages) {
        let soak = duration(&stage.soak);
        let mut row = Vec::new();
        for candidate in members {
            let last = before
                .get(&(candidate.kind, candidate.name.as_str()))
                .copied();
            let (status, write) = progress(
                candidate,
                last,
                &stage.name,
                Timing {
                    soak,
                    deadline,
                    now,
                },
                Round {
                    resume: requests.resume,
                    may_step: aborted.is_none() && !was_halted,
                    aborted: aborted.is_some(),
                },
            );
            if let Some(write) = write {
                writes.push(write);
            }
            match status.state {
                RolloutState::Soaking => {
                    soon(soak.saturating_sub(elapsed(status.since.as_ref(), now)));
                }
                RolloutState::InProgress => {
                    soon(deadline.saturating_sub(elapsed(status.since.as_ref(), now)));
                }
                _ => {}
            }
            row.push(status);
        }
        rows.push(row);
    }

    let failed = rows
        .iter()
        .flatten()
        .filter(|t| t.state == RolloutState::Failed)
        .count();
    let halted = failed > spec.failure_policy.max_failures.max(0) as usize;
    let finished = |t: &TargetRolloutStatus| {
        matches!(
            t.state,
            RolloutState::Done | RolloutState::Skipped | RolloutState::Failed
        )
    };
    let current = rows.iter().position(|row| !row.iter().all(finished));

    // Start what may start: only in the current stage, and only while the
    // round goes on.
    let mut waiting_for_approval = false;
    if let Some(index) = current
        && aborted.is_none()
        && !halted
        && !spec.paused
    {
        let stage = &spec.stages[index];
        let untouched = rows[index]
            .iter()
            .all(|t| t.state == RolloutState::Pending || finished(t));
        if stage.pause && !approved.contains(&stage.name) && untouched {
            waiting_for_approval = true;
        } else {
            let members = &stages[index];
            let row = &mut rows[index];
            let live: Vec<usize> = (0..row.len())
                .filter(|&i| row[i].state != RolloutState::Skipped)
                .collect();
            let canaries: Vec<usize> = live
                .iter()
                .copied()
                .take(stage.canaries.max(0) as usize)
                .collect();
            let canaries_done = canaries.iter().all(|&i| finished(&row[i]));
            let (eligible, cap) = if canaries_done {
                (live.clone(), max_in_flight(stage, live.len()))
            } else {
                (canaries.clone(), canaries.len())
            };
            let in_flight = row.iter().filter(|t| in_flight_state(t.state)).count();
            let mut room = cap.saturating_sub(in_flight);
            for i in eligible {
                if room == 0 {
                    break;
                }
                let candidate = members[i];
                if row[i].state != RolloutState::Pending {
                    continue;
                }
                let Some(to) = candidate.facts.next.clone() else {
                    continue;
                };
                writes.push(Write {
                    kind: candidate.kind,
                    name: candidate.name.clone(),
                    to: to.clone(),
                    revert: false,
                });
                row[i].state = RolloutState::InProgress;
                row[i].since = Some(time(now));
                row[i].step = Some(to);
                row[i].message = None;
                room -= 1;
                soon(deadline);
            }
        }
    }

    // An abort with Rollback puts back what the round changed.
    if aborted == Some(AbortPolicy::Rollback) {
        for (row, members) in rows.iter_mut().zip(&stages) {
            for (status, candidate) in row.iter_mut().zip(members) {
                // What it touched, and what it rolled back already but
                // that moved since (a version whose upgrade call was on
                // its way is kept at what its control plane runs).
                let touched = match status.state {
                    RolloutState::Pending => false,
                    RolloutState::Skipped => status.step.is_some(),
                    _ => true,
                };
                let revert = candidate.facts.revert.clone().filter(|to| {
                    status.state != RolloutState::Skipped || status.step.as_ref() != Some(to)
                });
                if let (true, Some(to)) = (touched, revert) {
                    writes.push(Write {
                        kind: candidate.kind,
                        name: candidate.name.clone(),
                        to: to.clone(),
                        revert: true,
                    });
                    status.state = RolloutState::Skipped;
                    status.step = Some(to.clone());
                    status.since = Some(time(now));
                    status.message = Some(format!("rolled back to {to}"));
                }
            }
        }
    }

    let stage_statuses: Vec<StageStatus> = spec
        .stages
        .iter()
        .zip(&rows)
        .map(|(stage, row)| {
            let count = |f: &dyn Fn(&TargetRolloutStatus) -> bool| {
                row.iter().filter(|t| f(t)).count() as i32
            };
            let done = count(&|t| matches!(t.state, RolloutState::Done | RolloutState::Skipped));
            let failed = count(&|t| t.state == RolloutState::Failed);
            let in_flight = count(&|t| in_flight_state(t.state));
            let touched = row
                .iter()
                .any(|t| !matches!(t.state, RolloutState::Pending | RolloutState::Skipped));
            let state = if halted && failed > 0 {
                RolloutState::Failed
            } else if row.iter().all(finished) {
                RolloutState::Done
            } else if touched {
                RolloutState::InProgress
            } else {
                RolloutState::Pending
            };
            StageStatus {
                name: stage.name.clone(),
                state,
                targets: row.len() as i32,
                done,
                in_flight,
                failed,
            }
        })
        .collect();

    let phase = if aborted.is_some() {
        RolloutPhase::Aborted
    } else if halted {
        RolloutPhase::Halted
    } else if current.is_none() {
        RolloutPhase::Completed
    } else if spec.paused {
        RolloutPhase::Paused
    } else if waiting_for_approval {
        RolloutPhase::WaitingForApproval
    } else {
        RolloutPhase::Progressing
    };
    let targets: Vec<TargetRolloutStatus> = rows.into_iter().flatten().collect();
    let total = targets.len();
    let done = targets
        .iter()
        .filter(|t| matches!(t.state, RolloutState::Done | RolloutState::Skipped))
        .count();
    let status = FleetRolloutStatus {
        conditions: recorded.conditions.clone(),
        observed_generation: recorded.observed_generation,
        phase: Some(phase),
        revision: Some(inputs.revision.clone()),
        stage: current
            .or(spec.stages.len().checked_sub(1))
            .map(|i| spec.stages[i].name.clone()),
        progress: Some(format!("{done}/{total}")),
        stages: stage_statuses,
        targets,
        approved,
        aborted,
    };
    tell(
        recorded,
        same_round,
        &status,
        &inputs.revision,
        failed,
        &mut notices,
    );
    Decision {
        status,
        writes,
        notices,
        requeue,
    }
}

fn in_flight_state(state: RolloutState) -> bool {
    matches!(state, RolloutState::InProgress | RolloutState::Soaking)
}

/// What the round allows a target in flight.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Failed targets are retried.
    resume: bool,
    /// The next step of a target on its way may be written.
    may_step: bool,
    /// The round was aborted: what it rolled back stays so.
    aborted: bool,
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    soak: Duration,
    deadline: Duration,
    now: Timestamp,
}

/// Where one target is now, from its facts and what was recorded, and the
/// next step to write for a target in flight.
fn progress(
    candidate: &Candidate,
    last: Option<&TargetRolloutStatus>,
    stage: &str,
    timing: Timing,
    round: Round,
) -> (TargetRolloutStatus, Option<Write>) {
    let Round {
        resume,
        may_step,
        aborted,
    } = round;
    let Timing {
        soak,
        deadline,
        now,
    } = timing;
    let facts = &candidate.facts;
    let mut status = TargetRolloutStatus {
        kind: candidate.kind.to_string(),
        name: candidate.name.clone(),
        stage: stage.to_string(),
        state: RolloutState::Pending,
        step: last.and_then(|l| l.step.clone()),
        since: last.and_then(|l| l.since.clone()),
        message: None,
    };
    let at = |state: RolloutState, status: &mut TargetRolloutStatus| {
        if last.is_none_or(|l| l.state != state) {
            status.since = Some(time(now));
        }
        status.state = state;
    };
    if let Some(reason) = &facts.skip {
        let sticky = last.is_some_and(|l| l.state == RolloutState::Skipped);
        at(RolloutState::Skipped, &mut status);
        status.message = Some(reason.clone());
        if sticky {
            status.message = last.and_then(|l| l.message.clone()).or(status.message);
        }
        return (status, None);
    }
    let mut state = last.map_or(RolloutState::Pending, |l| l.state);
    if state == RolloutState::Failed {
        if !resume {
            status.state = RolloutState::Failed;
            status.message = last.and_then(|l| l.message.clone());
            return (status, None);
        }
        // Retried: the deadline starts again.
        state = RolloutState::InProgress;
        status.since = Some(time(now));
    }
    match state {
        RolloutState::Done => {
            status.state = RolloutState::Done;
            status.message = last.and_then(|l| l.message.clone());
            (status, None)
        }
        RolloutState::Skipped if aborted => {
            status.state = RolloutState::Skipped;
            status.message = last.and_then(|l| l.message.clone());
            (status, None)
        }
        RolloutState::Pending | RolloutState::Skipped => {
            if facts.at_goal && facts.settled {
                at(RolloutState::Done, &mut status);
                status.message = Some("already had the change".into());
            } else if facts.at_goal {
                // Changed by someone else (or created with the change):
                // in flight like the rest, under the same deadline.
                at(RolloutState::InProgress, &mut status);
                status.message = facts.unhealthy.clone();
            } else {
                status.state = RolloutState::Pending;
                status.since = None;
                status.step = None;
            }
            (status, None)
        }
        RolloutState::InProgress | RolloutState::Soaking => {
            if let Some(stalled) = &facts.stalled {
                at(RolloutState::Failed, &mut status);
                status.message = Some(format!("stalled: {stalled}"));
                return (status, None);
            }
            // One it did not change (created with the change, or changed
            // by someone else) is done once healthy, without a soak.
            let ours = last.is_some_and(|l| l.step.is_some());
            if facts.at_goal && facts.settled && !ours {
                at(RolloutState::Done, &mut status);
                status.message = Some("already had the change".into());
                return (status, None);
            }
            if facts.at_goal && facts.settled {
                if state != RolloutState::Soaking {
                    status.since = Some(time(now));
                }
                if elapsed(status.since.as_ref(), now) >= soak {
                    status.state = RolloutState::Done;
                    status.since = Some(time(now));
                } else {
                    status.state = RolloutState::Soaking;
                }
                return (status, None);
            }
            if state == RolloutState::Soaking {
                at(RolloutState::Failed, &mut status);
                status.message = Some(format!(
                    "unhealthy while soaking: {}",
                    facts.unhealthy.as_deref().unwrap_or("not settled")
                ));
                return (status, None);
            }
            status.state = RolloutState::InProgress;
            if facts.settled
                && let Some(next) = facts.next.clone()
                && may_step
            {
                // A step on the way (1.34 of 1.33 -> 1.35) is done: the
                // next one, with a fresh deadline.
                status.since = Some(time(now));
                status.step = Some(next.clone());
                let write = Write {
                    kind: candidate.kind,
                    name: candidate.name.clone(),
                    to: next,
                    revert: false,
                };
                return (status, Some(write));
            }
            if elapsed(status.since.as_ref(), now) > deadline {
                at(RolloutState::Failed, &mut status);
                status.message = Some(format!(
                    "not healthy {} after its change: {}",
                    humantime(deadline),
                    facts.unhealthy.as_deref().unwrap_or("not settled")
                ));
                return (status, None);
            }
            status.message = facts.unhealthy.clone();
            (status, None)
        }
        RolloutState::Failed => unreachable!("resumed above"),
    }
}

/// `90s` as `1m30s`.
pub fn humantime(duration: Duration) -> String {
    let d = SignedDuration::try_from(duration).unwrap_or_default();
    let secs = d.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Events for what changed since the last pass: a round started, a stage
/// started or finished, the rollout halted, completed or was aborted.
fn tell(
    recorded: &FleetRolloutStatus,
    same_round: bool,
    status: &FleetRolloutStatus,
    revision: &str,
    failed: usize,
    notices: &mut Vec<Notice>,
) {
    let note = |warning, reason, message: String| Notice {
        warning,
        reason,
        message,
    };
    if !same_round {
        notices.push(note(
            false,
            "RoundStarted",
            format!(
                "rolling out {revision} over {} targets in {} stages",
                status.targets.len(),
                status.stages.len()
            ),
        ));
    }
    for stage in &status.stages {
        let before = recorded
            .stages
            .iter()
            .find(|s| s.name == stage.name && same_round)
            .map(|s| s.state);
        if before == Some(stage.state) {
            continue;
        }
        match stage.state {
            RolloutState::InProgress if before != Some(RolloutState::Failed) => notices.push(note(
                false,
                "StageStarted",
                format!("stage {} started ({} targets)", stage.name, stage.targets),
            )),
            RolloutState::Done => notices.push(note(
                false,
                "StageDone",
                format!(
                    "stage {} done: {} of {} targets changed or skipped, {} failed",
                    stage.name, stage.done, stage.targets, stage.failed
                ),
            )),
            _ => {}
        }
    }
    let phase_before = recorded.phase.filter(|_| same_round);
    if phase_before != status.phase {
        let failing: Vec<&str> = status
            .targets
            .iter()
            .filter(|t| t.state == RolloutState::Failed)
            .take(3)
            .map(|t| t.name.as_str())
            .collect();
        match status.phase {
            Some(RolloutPhase::Halted) => notices.push(note(
                true,
                "Halted",
                format!(
                    "halted: {failed} targets failed ({}); resume with `fleetforge rollout resume` or abort",
                    failing.join(", ")
                ),
            )),
            Some(RolloutPhase::Completed) => notices.push(note(
                false,
                "Completed",
                format!("{revision} rolled out: {}", status.progress.as_deref().unwrap_or_default()),
            )),
            Some(RolloutPhase::Aborted) => notices.push(note(
                true,
                "Aborted",
                format!(
                    "aborted ({:?}) at {}",
                    status.aborted.unwrap_or(AbortPolicy::Leave),
                    status.progress.as_deref().unwrap_or_default()
                ),
            )),
            Some(RolloutPhase::WaitingForApproval) => notices.push(note(
                false,
                "WaitingForApproval",
                format!(
                    "stage {} waits for approval: fleetforge rollout approve <name> {}",
                    status.stage.as_deref().unwrap_or_default(),
                    status.stage.as_deref().unwrap_or_default()
                ),
            )),
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
