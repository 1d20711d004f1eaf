//! What a decision is made of: the facts it starts from, and the call,
//! metadata, status, events and requeue it names.

use std::time::Duration;

use fleetforge_api::{
    DeletionPolicy, DriftStatus, FINALIZER, ManagementPolicy, annotation, condition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::conditions::Desired;
use crate::events::EventType;
use crate::managed::{Managed, ManagedStatus, Phase, Policies};
use crate::provider::{Observation, Refusal};

/// What a decision is made from, besides the provider's answers.
#[derive(Debug)]
pub struct Facts<'a, K: Managed> {
    /// The object as this pass sees it.
    pub obj: &'a K,
    /// Its policies.
    pub policies: Policies,
    /// The provider's name (`nop`, `aws`, ...), for messages.
    pub provider: &'a str,
    /// Now.
    pub now: Timestamp,
    /// How long a cluster not listed right after its create is waited for.
    pub creation_grace_period: Duration,
}

/// The provider call to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Call<C> {
    /// None.
    None,
    /// Create the external resource, after the create-pending mark of
    /// this start time is written.
    Create(Timestamp),
    /// Start these changes.
    Update(Vec<C>),
    /// Start deleting it.
    Delete,
}

/// A create marker annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Written before a create call, with its start time.
    Pending(Timestamp),
    /// Written when a create call failed.
    Failed(Timestamp),
}

/// The metadata fleetforge owns, to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// Whether the finalizer is wanted.
    pub finalizer: bool,
    /// The external name annotation.
    pub external_name: String,
    /// A new create marker; None keeps the markers there are.
    pub mark: Option<Mark>,
}

/// The status to write (when it differs from what is stored).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPlan {
    /// Phase.
    pub phase: Phase,
    /// `Ready`, `Synced`, `Drifted`.
    pub conditions: Vec<Desired>,
    /// Whether the status shows this pass's observation (else what was last
    /// seen).
    pub observed: bool,
    /// Drift to report.
    pub drift: Option<DriftStatus>,
    /// The generation the external resource matches.
    pub observed_generation: Option<i64>,
    /// A create that succeeded now (its start time); None keeps the value.
    pub create_succeeded: Option<Timestamp>,
}

/// An Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// Its reason.
    pub reason: String,
    /// The action it is about (`Create`, `Update`, ...).
    pub action: &'static str,
    /// What happened, for people.
    pub message: String,
}

impl Note {
    pub(super) fn normal(reason: &str, action: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason: reason.to_string(),
            action,
            message: message.into(),
        }
    }

    pub(super) fn warning(reason: &str, action: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            reason: reason.to_string(),
            action,
            message: message.into(),
        }
    }
}

/// When to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// At the (jittered) poll interval.
    Poll,
    /// Soon: something is on its way.
    Soon,
    /// At the latest after this long (sooner if the active interval is).
    Within(Duration),
    /// Only when the object changes.
    AwaitChange,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<C> {
    /// Metadata to apply first.
    pub metadata: Option<Metadata>,
    /// The provider call, after the metadata.
    pub call: Call<C>,
    /// The status, once the call is made.
    pub status: Option<StatusPlan>,
    /// Events, once the call is made.
    pub notes: Vec<Note>,
    /// New drift was found (the drift metric counts it).
    pub drift_found: bool,
    /// Publish the observation's connection details.
    pub publish_connection: bool,
    /// Deletion is done: the connection Secret and the finalizer go, with
    /// this event.
    pub finish_delete: Option<Note>,
    /// When to look again.
    pub next: Next,
}

impl<C> Decision<C> {
    pub(super) fn status(status: StatusPlan, next: Next) -> Self {
        Self {
            metadata: None,
            call: Call::None,
            status: Some(status),
            notes: Vec::new(),
            drift_found: false,
            publish_connection: false,
            finish_delete: None,
            next,
        }
    }

    pub(super) fn finish(note: Note) -> Self {
        Self {
            metadata: None,
            call: Call::None,
            status: None,
            notes: Vec::new(),
            drift_found: false,
            publish_connection: false,
            finish_delete: Some(note),
            next: Next::AwaitChange,
        }
    }

    pub(super) fn nothing() -> Self {
        Self {
            metadata: None,
            call: Call::None,
            status: None,
            notes: Vec::new(),
            drift_found: false,
            publish_connection: false,
            finish_delete: None,
            next: Next::AwaitChange,
        }
    }

    pub(super) fn note(mut self, note: Note) -> Self {
        self.notes.push(note);
        self
    }
}

impl<'a, K: Managed> Facts<'a, K> {
    pub(super) fn status(&self) -> Option<&'a K::Status> {
        self.obj.status()
    }

    pub(super) fn name(&self) -> String {
        self.obj.name_any()
    }

    pub(super) fn annotation(&self, key: &str) -> Option<&'a String> {
        self.obj.meta().annotations.as_ref()?.get(key)
    }

    pub(super) fn time_of(&self, key: &str) -> Option<Timestamp> {
        self.annotation(key)?.parse().ok()
    }

    /// The external name recorded on the object.
    pub fn recorded_name(&self) -> Option<String> {
        self.annotation(annotation::EXTERNAL_NAME).cloned()
    }

    pub(super) fn observe_only(&self) -> bool {
        self.policies.management == ManagementPolicy::ObserveOnly
    }

    /// Whether the object should carry the finalizer (it may delete at
    /// the provider).
    pub fn wants_finalizer(&self) -> bool {
        !self.observe_only() && self.policies.deletion == DeletionPolicy::Delete
    }

    /// Whether the object carries the finalizer.
    pub fn has_finalizer(&self) -> bool {
        self.obj.finalizers().iter().any(|f| f == FINALIZER)
    }

    /// The start of the last create that succeeded (from status, or from
    /// the annotation older versions wrote).
    pub(super) fn create_succeeded(&self) -> Option<Timestamp> {
        let in_status = self
            .status()
            .and_then(|s| s.create_succeeded())
            .map(|t| t.0);
        in_status.max(self.time_of(annotation::CREATE_SUCCEEDED))
    }

    /// A create started at this time whose outcome was never recorded.
    pub(super) fn unresolved_create(&self) -> Option<Timestamp> {
        let pending = self.time_of(annotation::CREATE_PENDING)?;
        let resolved = self
            .create_succeeded()
            .max(self.time_of(annotation::CREATE_FAILED));
        resolved.is_none_or(|at| at < pending).then_some(pending)
    }

    /// Whether the external resource matched the current spec before: then
    /// a new difference is drift, not a pending change.
    pub(super) fn spec_applied(&self) -> bool {
        let observed = self.status().and_then(|s| s.observed_generation());
        observed.is_some() && observed == self.obj.meta().generation
    }

    pub(super) fn generation(&self) -> Option<i64> {
        self.obj.meta().generation
    }

    pub(super) fn kept_generation(&self) -> Option<i64> {
        self.status().and_then(|s| s.observed_generation())
    }

    pub(super) fn reported_drift(&self) -> Option<&'a DriftStatus> {
        self.status().and_then(|s| s.drift())
    }

    pub(super) fn phase(&self) -> Phase {
        self.status().map(|s| s.phase()).unwrap_or_default()
    }

    pub(super) fn drifted(&self) -> bool {
        self.status().is_some_and(|s| {
            s.conditions()
                .iter()
                .any(|c| c.type_ == condition::DRIFTED && c.status == "True")
        })
    }

    /// The existing condition of `type_`, unchanged (or false, not
    /// determined yet).
    pub(super) fn keep(&self, type_: &'static str) -> Desired {
        crate::conditions::current(self.status().map_or(&[], |s| s.conditions()), type_)
    }

    pub(super) fn drift_status(&self, fields: &[String]) -> DriftStatus {
        let known = self.reported_drift().filter(|d| d.fields == fields);
        DriftStatus {
            fields: fields.to_vec(),
            last_detected: known
                .and_then(|d| d.last_detected.clone())
                .or_else(|| Some(second_of(self.now))),
        }
    }

    /// Whether `fields` are drift not reported yet (told once).
    pub(super) fn new_drift(&self, fields: &[String]) -> bool {
        self.reported_drift().is_none_or(|d| d.fields != fields)
    }

    /// The plan keeping the conditions and phase there are, `Synced`
    /// replaced.
    pub(super) fn synced_only(&self, synced: Desired) -> StatusPlan {
        StatusPlan {
            phase: self.phase(),
            conditions: vec![
                self.keep(condition::READY),
                synced,
                self.keep(condition::DRIFTED),
            ],
            observed: false,
            drift: self.reported_drift().cloned(),
            observed_generation: self.kept_generation(),
            create_succeeded: None,
        }
    }

    pub(super) fn plan(
        &self,
        phase: Phase,
        conditions: [Desired; 3],
        observed: bool,
        drift: Option<DriftStatus>,
        observed_generation: Option<i64>,
    ) -> StatusPlan {
        StatusPlan {
            phase,
            conditions: conditions.into(),
            observed,
            drift,
            observed_generation,
            create_succeeded: None,
        }
    }
}

pub(super) fn second_of(now: Timestamp) -> Time {
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// What the provider said about `external_name`, and whether it would
/// apply the spec.
#[derive(Debug)]
pub struct Seen<'a, O> {
    /// The name observed.
    pub external_name: &'a str,
    /// Its observation; None when the provider does not list it.
    pub observation: Option<&'a Observation<O>>,
    /// The provider's verdict on the spec.
    pub validation: Result<(), Refusal>,
    /// This pass created it, with the create's start time.
    pub created_now: Option<Timestamp>,
    /// The provider keys a create by the external name, so a repeated
    /// create cannot make a second resource
    /// ([`crate::ExternalClient::create_keyed_by_name`]).
    pub create_keyed_by_name: bool,
}
