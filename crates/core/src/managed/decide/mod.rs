//! The engine's decisions, as pure functions of what is known: the object
//! (spec, annotations, status), its policies, the provider's observation and
//! its validation of the spec. A decision names the next provider call and
//! the metadata, status and events to write; [`super::pass`] carries it
//! out. Nothing here does I/O, so every rule is tested by a table (as
//! crossplane-runtime tests its managed reconciler).

mod converge;
mod decision;

use std::time::Duration;

use fleetforge_api::{DeletionPolicy, DriftPolicy, annotation, condition};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::conditions::Desired;
use crate::managed::{Managed, ManagedStatus, Phase};
use crate::provider::{ExternalState, Observation, Refusal};

use converge::converge;
use decision::second_of;
pub use decision::{Call, Decision, Facts, Mark, Metadata, Next, Note, Seen, StatusPlan};

/// `spec.paused`: nothing is called or changed; `Synced` says so.
pub fn paused<K: Managed>(facts: &Facts<'_, K>) -> Decision<K::Change> {
    let synced = Desired::no(
        condition::SYNCED,
        "ReconcilePaused",
        "spec.paused is true: no provider calls and no changes until it is false",
    );
    Decision::status(facts.synced_only(synced), Next::AwaitChange)
}

/// Deletion with `fleetforge.dev/force-remove: "true"`: the finalizer goes
/// without a provider call (the account may be gone or unreachable),
/// saying what may be left behind.
pub fn force_remove<K: Managed>(facts: &Facts<'_, K>) -> Decision<K::Change> {
    if !facts.has_finalizer() {
        return Decision::nothing();
    }
    let config = facts.obj.provider_config_name();
    let left = match facts.recorded_name() {
        Some(name)
            if facts.create_succeeded().is_some()
                || facts.annotation(annotation::CREATE_PENDING).is_some() =>
        {
            format!(
                "{name} at ProviderConfig {config} may be left behind: check the account and delete it there if it still exists"
            )
        }
        Some(name) => {
            format!("{name} at ProviderConfig {config} (imported or adopted) is left as it is")
        }
        None => "nothing was created at the provider".to_string(),
    };
    Decision::finish(Note::warning(
        "ForceRemoved",
        "Delete",
        format!(
            "{} is set: removing the finalizer without deleting at the provider; {left}",
            annotation::FORCE_REMOVE
        ),
    ))
}

/// A failed pass: `Synced=False` with the error's category, and a warning.
/// A deletion held by the error says how to let the object go anyway.
pub fn failed<K: Managed>(
    facts: &Facts<'_, K>,
    category: &str,
    message: &str,
) -> Decision<K::Change> {
    let mut message = message.to_string();
    if facts.obj.meta().deletion_timestamp.is_some() {
        message.push_str(&format!(
            "; the delete waits for this. To remove the object without deleting at the provider, annotate it {}=true",
            annotation::FORCE_REMOVE
        ));
    }
    let synced = Desired::no(condition::SYNCED, category, message.clone());
    Decision::status(facts.synced_only(synced), Next::Soon).note(Note::warning(
        category,
        "Reconcile",
        message,
    ))
}

/// Before the provider is asked: the name to observe, or (an import
/// without a name) what to say instead.
pub fn external_name<K: Managed>(facts: &Facts<'_, K>) -> Result<String, Box<Decision<K::Change>>> {
    if let Some(name) = facts.recorded_name() {
        return Ok(name);
    }
    if !facts.observe_only() {
        return Ok(facts.name());
    }
    let conditions = [
        Desired::no(
            condition::READY,
            "ExternalNameMissing",
            "nothing to observe yet",
        ),
        Desired::no(
            condition::SYNCED,
            "ExternalNameMissing",
            format!(
                "managementPolicy is ObserveOnly: set the annotation {} to the provider's name of the cluster to import",
                annotation::EXTERNAL_NAME
            ),
        ),
        facts.keep(condition::DRIFTED),
    ];
    Err(Box::new(Decision::status(
        facts.plan(Phase::Pending, conditions, false, None, None),
        Next::AwaitChange,
    )))
}

fn owns<K: Managed, O>(facts: &Facts<'_, K>, observation: &Observation<O>) -> bool {
    observation.owner.as_deref() == Some(&crate::provider::owner_of(facts.obj))
}

/// The decision of a pass over an object that is not being deleted, once
/// the provider was asked.
pub fn decide<K: Managed>(
    facts: &Facts<'_, K>,
    seen: &Seen<'_, K::Observed>,
) -> Decision<K::Change> {
    if seen.created_now.is_none()
        && let Some(started) = facts.unresolved_create()
    {
        return resolve_pending_create(facts, seen, started);
    }
    let recorded = facts.recorded_name().is_some();
    match seen.observation {
        None => missing(facts, seen, recorded),
        Some(observation) => {
            if !recorded && !owns(facts, observation) {
                // Found under the default name before we recorded it:
                // adopt it only if it says it is ours.
                return already_exists(facts, seen.external_name, observation);
            }
            let mut decision = converge(facts, seen, observation);
            // Right after a create, the metadata went with its mark.
            let written = seen.created_now.is_some();
            if !written && (!recorded || facts.wants_finalizer() != facts.has_finalizer()) {
                decision.metadata = Some(Metadata {
                    finalizer: facts.wants_finalizer(),
                    external_name: seen.external_name.to_string(),
                    mark: None,
                });
            }
            decision
        }
    }
}

/// A create was started but its outcome was never recorded (the
/// controller stopped in between). Adopt the resource if it exists and is
/// ours. If nothing is listed and the provider keys creates by name, wait
/// out the creation grace period (the call may have landed and not be
/// listed yet) and then create again: a second call cannot duplicate it.
/// Otherwise ask a person, never create a second one.
fn resolve_pending_create<K: Managed>(
    facts: &Facts<'_, K>,
    seen: &Seen<'_, K::Observed>,
    started: Timestamp,
) -> Decision<K::Change> {
    let name = seen.external_name;
    match seen.observation {
        Some(observation) if owns(facts, observation) => {
            let mut decision = converge(facts, seen, observation).note(Note::normal(
                "CreateConfirmed",
                "Create",
                format!(
                    "the create of {name} started at {started} was interrupted; the cluster exists and is owned by this object, so it is adopted"
                ),
            ));
            if let Some(status) = &mut decision.status {
                status.create_succeeded = Some(started);
            }
            decision
        }
        Some(observation) => already_exists(facts, name, observation),
        None if seen.create_keyed_by_name => {
            let since = Duration::try_from(facts.now.duration_since(started)).unwrap_or_default();
            let grace = facts.creation_grace_period;
            if since < grace {
                let message = format!(
                    "the create of {name} started at {started} was interrupted and the provider does not list it yet; it is created again if it is still not listed after the creation grace period ({}s)",
                    grace.as_secs()
                );
                return await_listing(facts, message, since, None);
            }
            let mut decision = missing(facts, seen, false);
            decision.notes.insert(
                0,
                Note::normal(
                    "CreateRetried",
                    "Create",
                    format!(
                        "the create of {name} started at {started} was interrupted and left nothing at provider {} within the creation grace period; creating it again (names are unique there, so this cannot make a second one)",
                        facts.provider
                    ),
                ),
            );
            decision
        }
        None => {
            let message = format!(
                "a create of {name} was started at {started} but its outcome was not recorded, and the provider does not list it (yet). To avoid a duplicate nothing is created: check the provider for {name}; if it exists, keep the {} annotation and remove {}; if it does not, remove {} to create it",
                annotation::EXTERNAL_NAME,
                annotation::CREATE_PENDING,
                annotation::CREATE_PENDING,
            );
            let conditions = [
                Desired::no(
                    condition::READY,
                    "CreatePendingUnknown",
                    "the outcome of a create is unknown",
                ),
                Desired::no(condition::SYNCED, "CreatePendingUnknown", message.clone()),
                facts.keep(condition::DRIFTED),
            ];
            Decision::status(
                facts.plan(Phase::Pending, conditions, false, None, None),
                Next::Poll,
            )
            .note(Note::warning("CreatePendingUnknown", "Create", message))
        }
    }
}

/// Not listed yet, within the creation grace period (clouds are
/// eventually consistent right after a create): Provisioning, looked at
/// again when the period is over.
fn await_listing<K: Managed>(
    facts: &Facts<'_, K>,
    message: String,
    since: Duration,
    observed_generation: Option<i64>,
) -> Decision<K::Change> {
    let conditions = [
        Desired::no(condition::READY, "Creating", message),
        Desired::yes(condition::SYNCED, "ReconcileSuccess", "create requested"),
        facts.keep(condition::DRIFTED),
    ];
    let left = facts.creation_grace_period.saturating_sub(since) + Duration::from_millis(100);
    Decision::status(
        facts.plan(
            Phase::Provisioning,
            conditions,
            false,
            None,
            observed_generation,
        ),
        Next::Within(left),
    )
}

fn already_exists<K: Managed>(
    facts: &Facts<'_, K>,
    name: &str,
    observation: &Observation<K::Observed>,
) -> Decision<K::Change> {
    let owner = observation
        .owner
        .as_deref()
        .unwrap_or("nobody (no fleetforge owner tag)");
    let message = format!(
        "a cluster named {name} already exists at provider {} and belongs to {owner}, not {}/{}: import it with managementPolicy ObserveOnly and the {} annotation, or give this Cluster another name",
        facts.provider,
        facts.obj.namespace().unwrap_or_default(),
        facts.name(),
        annotation::EXTERNAL_NAME
    );
    let conditions = [
        Desired::no(condition::READY, "AlreadyExists", "the name is taken"),
        Desired::no(condition::SYNCED, "AlreadyExists", message.clone()),
        facts.keep(condition::DRIFTED),
    ];
    Decision::status(
        facts.plan(Phase::Failed, conditions, false, None, None),
        Next::Poll,
    )
    .note(Note::warning("AlreadyExists", "Create", message))
}

/// The external resource is not listed: create it, wait for it, or report
/// it.
fn missing<K: Managed>(
    facts: &Facts<'_, K>,
    seen: &Seen<'_, K::Observed>,
    recorded: bool,
) -> Decision<K::Change> {
    let name = seen.external_name;
    let provider = facts.provider;
    if let Some(started) = seen.created_now {
        let conditions = [
            Desired::no(
                condition::READY,
                "Creating",
                format!("{name} is being created"),
            ),
            Desired::yes(condition::SYNCED, "ReconcileSuccess", "create requested"),
            Desired::no(condition::DRIFTED, "NoDrift", "no drift"),
        ];
        let mut status = facts.plan(
            Phase::Provisioning,
            conditions,
            false,
            None,
            facts.kept_generation(),
        );
        status.create_succeeded = Some(started);
        return Decision::status(status, Next::Soon).note(created(name, provider));
    }
    if facts.observe_only() {
        let message = format!("no cluster named {name} at provider {provider}");
        let conditions = [
            Desired::no(condition::READY, "NotFound", message.clone()),
            Desired::no(condition::SYNCED, "NotFound", message),
            facts.keep(condition::DRIFTED),
        ];
        return Decision::status(
            facts.plan(Phase::Pending, conditions, false, None, None),
            Next::Poll,
        );
    }
    let created_at = facts.create_succeeded().filter(|_| recorded);
    let mut notes = Vec::new();
    let mut drift_found = false;
    if let Some(created_at) = created_at {
        // Clouds are eventually consistent right after a create.
        let since = Duration::try_from(facts.now.duration_since(created_at)).unwrap_or_default();
        let grace = facts.creation_grace_period;
        if since < grace {
            let message = format!(
                "{name} was created at {created_at} and the provider does not list it yet; it is taken as deleted only after the creation grace period ({}s)",
                grace.as_secs()
            );
            return await_listing(facts, message, since, facts.kept_generation());
        }
        // It existed, and something outside removed it.
        let fields = vec![format!("{name}: spec present, actual absent")];
        let announce = facts.new_drift(&fields);
        if facts.spec_applied() && facts.policies.drift == DriftPolicy::Report {
            let conditions = [
                Desired::no(
                    condition::READY,
                    "NotFound",
                    format!("{name} was deleted outside fleetforge"),
                ),
                Desired::yes(
                    condition::SYNCED,
                    "ReconcileSuccess",
                    "drift reported, not corrected (driftPolicy Report)",
                ),
                Desired::yes(
                    condition::DRIFTED,
                    "ExternalResourceMissing",
                    format!("{name} no longer exists at provider {provider}"),
                ),
            ];
            let mut decision = Decision::status(
                facts.plan(
                    Phase::Failed,
                    conditions,
                    false,
                    Some(facts.drift_status(&fields)),
                    facts.kept_generation(),
                ),
                Next::Poll,
            );
            if announce {
                decision.drift_found = true;
                decision = decision.note(drift_note(
                    &fields,
                    "ExternalResourceMissing",
                    "reported only (driftPolicy Report)",
                ));
            }
            return decision;
        }
        // Told even when the spec has changed since the last pass: it
        // existed, and something outside removed it.
        if announce {
            drift_found = true;
            notes.push(drift_note(
                &fields,
                "ExternalResourceMissing",
                "recreating it",
            ));
        }
    }
    if let Err(refusal) = &seen.validation {
        return refuse(facts, refusal, Phase::Pending, false);
    }
    // Whole seconds, as status keeps times: the success recorded later
    // must compare equal to this start.
    let started = second_of(facts.now).0;
    Decision {
        metadata: Some(Metadata {
            finalizer: facts.wants_finalizer(),
            external_name: name.to_string(),
            mark: Some(Mark::Pending(started)),
        }),
        call: Call::Create(started),
        status: None,
        notes,
        drift_found,
        publish_connection: false,
        finish_delete: None,
        next: Next::Soon,
    }
}

fn created(name: &str, provider: &str) -> Note {
    Note::normal(
        "CreatedExternalResource",
        "Create",
        format!("created {name} at provider {provider}"),
    )
}

fn drift_note(fields: &[String], reason: &str, action: &str) -> Note {
    Note::warning(
        reason,
        "Observe",
        format!(
            "changed outside fleetforge, {action}: {}",
            fields.join("; ")
        ),
    )
}

/// A spec the engine or provider will not apply: `Synced=False` naming the
/// field, an event (once), and the next look at the poll interval (not a
/// retry storm: nothing changes until the spec does).
fn refuse<K: Managed>(
    facts: &Facts<'_, K>,
    refusal: &Refusal,
    phase: Phase,
    observed: bool,
) -> Decision<K::Change> {
    let message = refusal.to_string();
    let already = facts.status().is_some_and(|s| {
        s.conditions().iter().any(|c| {
            c.type_ == condition::SYNCED && c.reason == refusal.reason && c.message == message
        })
    });
    let mut status = facts.synced_only(Desired::no(
        condition::SYNCED,
        refusal.reason,
        message.clone(),
    ));
    status.phase = phase;
    status.observed = observed;
    let decision = Decision::status(status, Next::Poll);
    if already {
        decision
    } else {
        decision.note(Note::warning(refusal.reason, "Update", message))
    }
}

/// Deletion, before the provider is asked: the name to look up, or (no
/// finalizer, nothing of ours at the provider) what to do without it, so
/// that an orphaned or never-created object goes even when its account is
/// gone.
pub fn delete_target<K: Managed>(facts: &Facts<'_, K>) -> Result<String, Box<Decision<K::Change>>> {
    if !facts.has_finalizer() {
        return Err(Box::new(Decision::nothing()));
    }
    let keep_external = facts.policies.deletion == DeletionPolicy::Orphan || facts.observe_only();
    match facts.recorded_name().filter(|_| !keep_external) {
        Some(name) => Ok(name),
        None => Err(Box::new(deleted(
            facts,
            if keep_external {
                "orphaned"
            } else {
                "never created"
            },
        ))),
    }
}

fn deleted<K: Managed>(facts: &Facts<'_, K>, what: &str) -> Decision<K::Change> {
    let name = facts.recorded_name().unwrap_or_else(|| facts.name());
    Decision::finish(Note::normal(
        "DeletedExternalResource",
        "Delete",
        format!("{name} {what}; removing the finalizer"),
    ))
}

/// Deletion, once the provider was asked about `name`.
pub fn deleting<K: Managed>(
    facts: &Facts<'_, K>,
    name: &str,
    observation: Option<&Observation<K::Observed>>,
) -> Decision<K::Change> {
    let Some(observation) = observation else {
        return deleted(facts, "deleted");
    };
    if !owns(facts, observation) {
        // Never delete what is not ours (an adopted name clash).
        return deleted(facts, "left alone: it is not owned by this object");
    }
    let conditions = [
        Desired::no(
            condition::READY,
            "Deleting",
            format!("{name} is being deleted"),
        ),
        Desired::yes(condition::SYNCED, "ReconcileSuccess", "delete requested"),
        facts.keep(condition::DRIFTED),
    ];
    let mut decision = Decision::status(
        facts.plan(
            Phase::Deleting,
            conditions,
            true,
            None,
            facts.kept_generation(),
        ),
        Next::Soon,
    );
    if observation.state != ExternalState::Deleting {
        decision.call = Call::Delete;
        decision = decision.note(Note::normal(
            "DeletingExternalResource",
            "Delete",
            format!("deleting {name} at provider {}", facts.provider),
        ));
    }
    decision
}

#[cfg(test)]
mod tests;
