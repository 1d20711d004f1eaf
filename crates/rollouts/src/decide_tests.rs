//! The decisions, driven pass by pass over a simulated fleet: each
//! written version reaches its cluster a couple of passes later (unless
//! the cluster is made to fail), and time moves a second per pass.

use super::*;
use fleetforge_api::fleet_rollout::FailurePolicy;
use serde_json::json;

fn stage(name: &str, selector: serde_json::Value, extra: serde_json::Value) -> RolloutStage {
    let mut value = json!({"name": name, "selector": selector});
    value
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(value).unwrap()
}

fn spec(stages: Vec<RolloutStage>) -> FleetRolloutSpec {
    FleetRolloutSpec {
        version: Some("1.35".into()),
        tool_set_ref: None,
        tool_install_ref: None,
        stages,
        health_checks: vec![],
        failure_policy: FailurePolicy::default(),
        progress_deadline: "10s".into(),
        paused: false,
    }
}

/// The three stages of the issue: one canary, 20% of the fleet, the rest.
fn three_stages() -> Vec<RolloutStage> {
    vec![
        stage(
            "canary",
            json!({"matchLabels": {"ring": "canary"}}),
            json!({}),
        ),
        stage(
            "early",
            json!({"matchLabels": {"ring": "early"}}),
            json!({"maxInFlight": "50%"}),
        ),
        stage("rest", json!({}), json!({"maxInFlight": 5, "canaries": 1})),
    ]
}

#[derive(Debug, Clone)]
struct Sim {
    name: String,
    labels: BTreeMap<String, String>,
    spec: u32,
    running: u32,
    /// Pass at which the running version catches up with the spec.
    catches_up: Option<u32>,
    failing: bool,
    paused: bool,
}

struct World {
    targets: Vec<Sim>,
    status: FleetRolloutStatus,
    pass: u32,
    start: Timestamp,
    writes: Vec<(u32, String, String)>,
    notices: Vec<Notice>,
    /// Most targets of each stage whose spec was ahead of what runs.
    peak_changing: BTreeMap<String, usize>,
}

impl World {
    /// 30 clusters at 1.33: c00 the canary, c01..c06 early (20%), the rest.
    fn fleet(n: usize) -> Self {
        let targets = (0..n)
            .map(|i| {
                let ring = match i {
                    0 => "canary",
                    1..=6 => "early",
                    _ => "late",
                };
                Sim {
                    name: format!("c{i:02}"),
                    labels: [("ring".to_string(), ring.to_string())].into(),
                    spec: 33,
                    running: 33,
                    catches_up: None,
                    failing: false,
                    paused: false,
                }
            })
            .collect();
        Self {
            targets,
            status: FleetRolloutStatus::default(),
            pass: 0,
            start: Timestamp::from_second(1_800_000_000).unwrap(),
            writes: vec![],
            notices: vec![],
            peak_changing: BTreeMap::new(),
        }
    }

    fn target(&mut self, name: &str) -> &mut Sim {
        self.targets.iter_mut().find(|t| t.name == name).unwrap()
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.targets
            .iter()
            .map(|t| {
                let settled = t.running == t.spec && !t.failing;
                Candidate {
                    kind: "Cluster",
                    name: t.name.clone(),
                    target: t.name.clone(),
                    target_kind: TargetKind::Cluster,
                    labels: t.labels.clone(),
                    facts: Facts {
                        skip: t.paused.then(|| "paused".to_string()),
                        at_goal: t.spec == 35,
                        next: (t.spec < 35).then(|| format!("1.{}", t.spec + 1)),
                        settled,
                        stalled: None,
                        unhealthy: (!settled).then(|| format!("at 1.{}", t.running)),
                        revert: (t.running != t.spec).then(|| format!("1.{}", t.running)),
                    },
                }
            })
            .collect()
    }

    fn step(&mut self, spec: &FleetRolloutSpec, requests: Requests) -> Decision {
        self.pass += 1;
        for t in &mut self.targets {
            if t.catches_up.is_some_and(|p| p <= self.pass) && !t.failing {
                t.running = t.spec;
                t.catches_up = None;
            }
        }
        let stages = fleetforge_core::selector::Stages::parse(&spec.stages).unwrap();
        let stage_of = |c: &Candidate| stages.of(&c.target, &c.labels);
        let decision = decide(&Inputs {
            spec,
            revision: "version 1.35".into(),
            recorded: &self.status,
            candidates: self.candidates(),
            stage_of: &stage_of,
            requests,
            now: self.start + SignedDuration::from_secs(self.pass as i64),
        });
        for write in &decision.writes {
            let pass = self.pass;
            let to: u32 = write.to.trim_start_matches("1.").parse().unwrap();
            let t = self.target(&write.name);
            t.spec = to;
            t.catches_up = Some(pass + 2);
            self.writes
                .push((pass, write.name.clone(), write.to.clone()));
        }
        // What the fleet itself shows: clusters asked to run a version
        // they do not run yet, per stage.
        for stage in &decision.status.stages {
            let changing = decision
                .status
                .targets
                .iter()
                .filter(|t| t.stage == stage.name)
                .filter(|t| {
                    let sim = self.targets.iter().find(|s| s.name == t.name).unwrap();
                    sim.spec != sim.running
                })
                .count();
            let peak = self.peak_changing.entry(stage.name.clone()).or_default();
            *peak = (*peak).max(changing);
        }
        self.notices.extend(decision.notices.clone());
        self.status = decision.status.clone();
        decision
    }

    fn run(&mut self, spec: &FleetRolloutSpec, passes: u32) {
        for _ in 0..passes {
            self.step(spec, Requests::default());
        }
    }

    fn state_of(&self, name: &str) -> RolloutState {
        self.status
            .targets
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .state
    }

    fn first_write_of(&self, name: &str) -> Option<u32> {
        self.writes
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(p, _, _)| *p)
    }
}

#[test]
fn a_fleet_is_upgraded_stage_by_stage_one_minor_at_a_time_within_its_limits() {
    let spec = spec(three_stages());
    let mut world = World::fleet(30);
    world.run(&spec, 200);
    assert_eq!(world.status.phase, Some(RolloutPhase::Completed));
    assert_eq!(world.status.progress.as_deref(), Some("30/30"));
    for t in &world.targets {
        assert_eq!((t.spec, t.running), (35, 35), "{}", t.name);
        let steps: Vec<&str> = world
            .writes
            .iter()
            .filter(|(_, n, _)| n == &t.name)
            .map(|(_, _, to)| to.as_str())
            .collect();
        assert_eq!(
            steps,
            ["1.34", "1.35"],
            "{} goes one minor at a time",
            t.name
        );
    }
    // Stages in order: nothing of a stage is written before the one before
    // it is done.
    let last_of = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| {
                world
                    .writes
                    .iter()
                    .rev()
                    .find(|(_, w, _)| w == n)
                    .map(|(p, _, _)| *p)
            })
            .max()
            .unwrap()
    };
    let early: Vec<String> = (1..=6).map(|i| format!("c{i:02}")).collect();
    let early: Vec<&str> = early.iter().map(String::as_str).collect();
    let first_early = early
        .iter()
        .filter_map(|n| world.first_write_of(n))
        .min()
        .unwrap();
    assert!(
        last_of(&["c00"]) < first_early,
        "the canary finishes before the early stage starts"
    );
    let first_late = (7..30)
        .filter_map(|i| world.first_write_of(&format!("c{i:02}")))
        .min()
        .unwrap();
    assert!(last_of(&early) < first_late);
    // maxInFlight, from what the fleet showed: 1, 50% of 6, and 5 (with
    // the rest stage's own canary alone first).
    assert_eq!(world.peak_changing["canary"], 1);
    assert_eq!(world.peak_changing["early"], 3);
    assert_eq!(world.peak_changing["rest"], 5);
    // ...and from what the rollout recorded.
    let reasons: Vec<&str> = world.notices.iter().map(|n| n.reason).collect();
    assert_eq!(reasons.first(), Some(&"RoundStarted"));
    assert_eq!(reasons.iter().filter(|r| **r == "StageDone").count(), 3);
    assert_eq!(reasons.last(), Some(&"Completed"));
}

#[test]
fn the_rest_stage_canary_goes_alone_first() {
    let spec = spec(three_stages());
    let mut world = World::fleet(30);
    world.run(&spec, 200);
    let late: Vec<(u32, String)> = (7..30)
        .map(|i| format!("c{i:02}"))
        .map(|n| (world.first_write_of(&n).unwrap(), n))
        .collect();
    let canary = late.iter().min().unwrap();
    assert_eq!(
        canary.1, "c07",
        "the stage's first target by name is its canary"
    );
    let canary_done = world
        .writes
        .iter()
        .rev()
        .find(|(_, n, _)| n == "c07")
        .unwrap()
        .0;
    assert!(
        late.iter()
            .filter(|(_, n)| n != "c07")
            .all(|(p, _)| *p > canary_done),
        "{late:?}"
    );
}

#[test]
fn a_failing_canary_halts_with_nothing_beyond_it_touched_and_resumes() {
    let spec = spec(three_stages());
    let mut world = World::fleet(30);
    world.target("c00").failing = true;
    world.run(&spec, 40);
    assert_eq!(world.status.phase, Some(RolloutPhase::Halted));
    assert_eq!(world.state_of("c00"), RolloutState::Failed);
    let stages: Vec<RolloutState> = world.status.stages.iter().map(|s| s.state).collect();
    assert_eq!(
        stages,
        [
            RolloutState::Failed,
            RolloutState::Pending,
            RolloutState::Pending
        ],
        "the stage that halted says so, even with every target finished"
    );
    let message = world.status.targets[0].message.clone().unwrap();
    assert!(
        message.contains("not healthy 10s after its change"),
        "{message}"
    );
    assert_eq!(
        world.writes.len(),
        1,
        "only the canary was written: {:?}",
        world.writes
    );
    assert!(
        world
            .notices
            .iter()
            .any(|n| n.reason == "Halted" && n.warning)
    );

    // Halted stays halted while the fault lasts...
    world.run(&spec, 20);
    assert_eq!(world.writes.len(), 1);
    // ...and resumes when asked once it is cleared.
    world.target("c00").failing = false;
    world.step(
        &spec,
        Requests {
            resume: true,
            ..Requests::default()
        },
    );
    world.run(&spec, 200);
    assert_eq!(world.status.phase, Some(RolloutPhase::Completed));
    assert!(world.targets.iter().all(|t| t.running == 35));
}

#[test]
fn failures_within_the_tolerance_do_not_halt() {
    let mut spec = spec(three_stages());
    spec.failure_policy.max_failures = 1;
    let mut world = World::fleet(30);
    world.target("c03").failing = true;
    world.run(&spec, 300);
    assert_eq!(world.status.phase, Some(RolloutPhase::Completed));
    assert_eq!(world.state_of("c03"), RolloutState::Failed);
    assert_eq!(world.status.progress.as_deref(), Some("29/30"));
}

#[test]
fn an_abort_starts_nothing_more_and_a_rollback_reverts_what_has_not_moved() {
    let spec = spec(three_stages());
    let mut world = World::fleet(30);
    world.target("c00").failing = true; // its control plane never moves
    world.run(&spec, 3);
    assert_eq!(world.target("c00").spec, 34);
    world.step(
        &spec,
        Requests {
            abort: Some(AbortPolicy::Rollback),
            ..Requests::default()
        },
    );
    assert_eq!(world.status.phase, Some(RolloutPhase::Aborted));
    assert_eq!(world.target("c00").spec, 33, "reverted");
    assert_eq!(world.state_of("c00"), RolloutState::Skipped);
    world.target("c00").failing = false;
    world.run(&spec, 50);
    assert_eq!(world.status.phase, Some(RolloutPhase::Aborted));
    assert!(
        world.targets.iter().all(|t| t.spec == 33),
        "nothing more was started"
    );
}

#[test]
fn a_rollback_keeps_a_control_plane_that_moved_after_all_at_what_it_runs() {
    let spec = spec(three_stages());
    let mut world = World::fleet(30);
    world.target("c00").failing = true;
    world.run(&spec, 3);
    world.step(
        &spec,
        Requests {
            abort: Some(AbortPolicy::Rollback),
            ..Requests::default()
        },
    );
    assert_eq!(world.target("c00").spec, 33);
    // The upgrade call was on its way: the control plane runs 1.34 now,
    // and cannot be downgraded.
    let c00 = world.target("c00");
    c00.running = 34;
    c00.catches_up = None;
    c00.failing = false;
    world.run(&spec, 5);
    assert_eq!(world.target("c00").spec, 34, "kept at what it runs");
    let status = world
        .status
        .targets
        .iter()
        .find(|t| t.name == "c00")
        .unwrap();
    assert_eq!(status.message.as_deref(), Some("rolled back to 1.34"));
    let writes = world.writes.len();
    world.run(&spec, 20);
    assert_eq!(world.writes.len(), writes, "and left alone after");
}

#[test]
fn a_stage_with_pause_waits_for_approval() {
    let mut stages = three_stages();
    stages[1].pause = true;
    let spec = spec(stages);
    let mut world = World::fleet(30);
    world.run(&spec, 30);
    assert_eq!(world.status.phase, Some(RolloutPhase::WaitingForApproval));
    assert_eq!(world.status.stage.as_deref(), Some("early"));
    assert_eq!(world.first_write_of("c01"), None);
    world.step(
        &spec,
        Requests {
            approve: Some("early".into()),
            ..Requests::default()
        },
    );
    assert_eq!(world.status.approved, ["early"]);
    world.run(&spec, 200);
    assert_eq!(world.status.phase, Some(RolloutPhase::Completed));
}

#[test]
fn a_target_counts_as_done_only_after_its_soak() {
    let mut stages = three_stages();
    stages[0].soak = "20s".into();
    let spec = spec(stages);
    let mut world = World::fleet(30);
    world.run(&spec, 8);
    assert_eq!(world.target("c00").running, 35);
    assert_eq!(world.state_of("c00"), RolloutState::Soaking);
    assert_eq!(world.first_write_of("c01"), None);
    world.run(&spec, 25);
    assert_eq!(world.state_of("c00"), RolloutState::Done);
    assert!(world.first_write_of("c01").is_some());
}

#[test]
fn paused_rollouts_and_skipped_targets() {
    let mut paused = spec(three_stages());
    paused.paused = true;
    let mut world = World::fleet(30);
    world.target("c10").paused = true;
    world.run(&paused, 10);
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    assert!(world.writes.is_empty());
    world.run(&spec(three_stages()), 200);
    assert_eq!(world.status.phase, Some(RolloutPhase::Completed));
    assert_eq!(world.state_of("c10"), RolloutState::Skipped);
    assert_eq!(world.target("c10").spec, 33);
}

#[test]
fn a_new_round_forgets_the_last_and_targets_already_there_are_done() {
    let spec = spec(three_stages());
    let mut world = World::fleet(5);
    for t in &mut world.targets {
        t.spec = 35;
        t.running = 35;
    }
    world.status.revision = Some("version 1.34".into());
    world.status.aborted = Some(AbortPolicy::Leave);
    world.run(&spec, 1);
    assert_eq!(world.status.phase, Some(RolloutPhase::Completed));
    assert_eq!(world.status.aborted, None);
    assert!(world.writes.is_empty());
    assert!(
        world
            .status
            .targets
            .iter()
            .all(|t| t.message.as_deref() == Some("already had the change"))
    );
}

#[test]
fn max_in_flight_as_a_percentage_rounds_down_but_is_at_least_one() {
    let mut s = stage("s", json!({}), json!({"maxInFlight": "20%"}));
    assert_eq!(max_in_flight(&s, 30), 6);
    assert_eq!(max_in_flight(&s, 3), 1);
    s.max_in_flight = IntOrString::Int(4);
    assert_eq!(max_in_flight(&s, 3), 4);
}
