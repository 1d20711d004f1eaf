//! Deciding for an external resource that exists: its state, its
//! differences from the spec, drift and the changes to make.

use fleetforge_api::{DriftPolicy, DriftStatus, ManagementPolicy, condition};

use crate::conditions::Desired;
use crate::managed::{Managed, Phase};
use crate::provider::{ExternalState, Observation};

use super::decision::{Call, Decision, Facts, Next, Note, Seen};
use super::{created, drift_note, refuse};

/// The external resource exists: publish how to reach it and bring it to
/// the spec, or report how it differs.
pub(super) fn converge<K: Managed>(
    facts: &Facts<'_, K>,
    seen: &Seen<'_, K::Observed>,
    observation: &Observation<K::Observed>,
) -> Decision<K::Change> {
    let mut decision = converge_state(facts, seen, observation);
    decision.publish_connection = observation.connection.is_some();
    if let Some(started) = seen.created_now {
        decision
            .notes
            .insert(0, created(seen.external_name, facts.provider));
        if let Some(status) = &mut decision.status {
            status.create_succeeded = Some(started);
        }
    }
    decision
}

fn converge_state<K: Managed>(
    facts: &Facts<'_, K>,
    seen: &Seen<'_, K::Observed>,
    observation: &Observation<K::Observed>,
) -> Decision<K::Change> {
    let name = seen.external_name;
    let waiting = |phase: Phase, ready: Desired, synced: &str, drift: Option<DriftStatus>, next| {
        let conditions = [
            ready,
            Desired::yes(condition::SYNCED, "ReconcileSuccess", synced),
            facts.keep(condition::DRIFTED),
        ];
        Decision::status(
            facts.plan(phase, conditions, true, drift, facts.kept_generation()),
            next,
        )
    };
    let ready = match &observation.state {
        ExternalState::Provisioning => {
            return waiting(
                Phase::Provisioning,
                Desired::no(
                    condition::READY,
                    "Creating",
                    format!("{name} is being created"),
                ),
                "waiting for the provider",
                None,
                Next::Soon,
            );
        }
        ExternalState::Updating => {
            return waiting(
                Phase::Updating,
                Desired::yes(
                    condition::READY,
                    "Updating",
                    format!("{name} is available while a change is applied"),
                ),
                "waiting for the provider to finish a change",
                facts.reported_drift().cloned(),
                Next::Soon,
            );
        }
        ExternalState::Deleting => {
            return waiting(
                Phase::Deleting,
                Desired::no(
                    condition::READY,
                    "Deleting",
                    format!("{name} is being deleted at the provider"),
                ),
                "waiting for the provider",
                None,
                Next::Soon,
            );
        }
        ExternalState::Failed(message) => {
            let conditions = [
                Desired::no(condition::READY, "ProviderFailed", message.clone()),
                Desired::no(
                    condition::SYNCED,
                    "ProviderFailed",
                    format!("the provider reports {name} failed: {message}"),
                ),
                facts.keep(condition::DRIFTED),
            ];
            return Decision::status(
                facts.plan(
                    Phase::Failed,
                    conditions,
                    true,
                    None,
                    facts.kept_generation(),
                ),
                Next::Poll,
            );
        }
        // A degraded resource exists but does not serve: it is converged
        // like a ready one (its drift reported or corrected), but it is not
        // Ready.
        ExternalState::Degraded(message) => (
            Desired::no(condition::READY, "Degraded", message.clone()),
            Phase::Failed,
        ),
        ExternalState::Ready => (
            Desired::yes(
                condition::READY,
                "Available",
                format!("{name} is available"),
            ),
            Phase::Ready,
        ),
    };
    let (ready, settled) = ready;
    let full = facts.policies.management == ManagementPolicy::Full;
    // A spec the provider cannot apply is refused whether or not the
    // resource happens to match it today.
    if full && let Err(refusal) = &seen.validation {
        return refuse(facts, refusal, settled, true);
    }
    let generation = facts.generation();
    let differences = facts.obj.differences(&observation.resource);
    if differences.is_empty() {
        let conditions = [
            ready,
            Desired::yes(
                condition::SYNCED,
                "ReconcileSuccess",
                "the external resource matches the spec",
            ),
            Desired::no(condition::DRIFTED, "NoDrift", "no drift"),
        ];
        let decision = Decision::status(
            facts.plan(settled, conditions, true, None, generation),
            Next::Poll,
        );
        if facts.drifted() && facts.policies.drift == DriftPolicy::Correct && full {
            return decision.note(Note::normal(
                "DriftCorrected",
                "Update",
                format!("{name} matches the spec again"),
            ));
        }
        return decision;
    }

    let fields: Vec<String> = differences.iter().map(ToString::to_string).collect();
    let is_drift = facts.spec_applied();
    let summary = fields.join("; ");
    let announce = |decision: Decision<K::Change>, reason: &str, action: &str| {
        if facts.new_drift(&fields) {
            let mut decision = decision.note(drift_note(&fields, reason, action));
            decision.drift_found = true;
            decision
        } else {
            decision
        }
    };

    if facts.observe_only() {
        let conditions = [
            ready,
            Desired::yes(
                condition::SYNCED,
                "ObserveOnly",
                "observed; fleetforge never changes an ObserveOnly resource",
            ),
            Desired::yes(condition::DRIFTED, "DriftDetected", summary),
        ];
        let status = facts.plan(
            settled,
            conditions,
            true,
            Some(facts.drift_status(&fields)),
            generation,
        );
        return announce(
            Decision::status(status, Next::Poll),
            "DriftDetected",
            "reported only (managementPolicy ObserveOnly)",
        );
    }
    let drift = is_drift.then(|| facts.drift_status(&fields));
    if is_drift && facts.policies.drift == DriftPolicy::Report {
        let conditions = [
            ready,
            Desired::yes(
                condition::SYNCED,
                "ReconcileSuccess",
                "drift reported, not corrected (driftPolicy Report)",
            ),
            Desired::yes(condition::DRIFTED, "DriftDetected", summary),
        ];
        return announce(
            Decision::status(
                facts.plan(settled, conditions, true, drift, generation),
                Next::Poll,
            ),
            "DriftDetected",
            "reported only (driftPolicy Report)",
        );
    }

    let changes = match facts.obj.plan(&observation.resource) {
        Ok(changes) => changes,
        Err(refusal) => return refuse(facts, &refusal, settled, true),
    };
    if changes.is_empty() {
        // Differences no change can remove (for example an unknown
        // provider version): report them, do not loop.
        let conditions = [
            ready,
            Desired::yes(
                condition::SYNCED,
                "ReconcileSuccess",
                format!("nothing to change; differences: {summary}"),
            ),
            Desired::no(condition::DRIFTED, "NoDrift", "no correctable drift"),
        ];
        return Decision::status(
            facts.plan(settled, conditions, true, None, generation),
            Next::Poll,
        );
    }
    let described: Vec<String> = changes.iter().map(ToString::to_string).collect();
    let drifted = if is_drift {
        Desired::yes(condition::DRIFTED, "DriftCorrecting", summary)
    } else {
        Desired::no(condition::DRIFTED, "NoDrift", "spec changes being applied")
    };
    let conditions = [
        ready,
        Desired::yes(
            condition::SYNCED,
            "ReconcileSuccess",
            format!("applying: {}", described.join("; ")),
        ),
        drifted,
    ];
    let mut decision = Decision::status(
        facts.plan(
            Phase::Updating,
            conditions,
            true,
            drift,
            facts.kept_generation(),
        ),
        Next::Soon,
    );
    if is_drift {
        decision = announce(decision, "DriftDetected", "correcting it");
    }
    decision.call = Call::Update(changes);
    decision.note(Note::normal(
        if is_drift {
            "CorrectingDrift"
        } else {
            "UpdatingExternalResource"
        },
        "Update",
        described.join("; "),
    ))
}
