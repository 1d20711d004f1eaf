//! Status conditions whose `lastTransitionTime` moves only when their status
//! flips, so that re-writing unchanged conditions changes nothing.
//!
//! Every kind's list also carries the two conditions of the kstatus
//! conventions that Flux's `wait`, kpt and Argo CD's health checks read,
//! derived here from `Ready` and `Synced` so no controller can forget them:
//! `Reconciling` (true while the object is on its way) and `Stalled` (true
//! when waiting will not help: the spec is refused, unsupported, or names
//! something missing, until a person changes it).

use fleetforge_api::condition::{READY, RECONCILING, STALLED, SYNCED};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition as the engine decides it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Condition type (`Ready`, `Synced`, `Drifted`).
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// Machine-readable reason, in PascalCase.
    pub reason: String,
    /// What a person should know.
    pub message: String,
}

impl Desired {
    /// A condition of `type_` that holds.
    pub fn yes(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A condition of `type_` that does not hold.
    pub fn no(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The current time, truncated to whole seconds as the API stores it, so
/// that a written and re-read timestamp compare equal.
pub fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Reasons of a `Ready` or `Synced` condition that waiting does not change:
/// the object is `Stalled` until its spec (or what it names) is fixed. Every
/// other false reason is progress, retried with backoff: `Reconciling`.
pub const STALLED_REASONS: &[&str] = &[
    // The spec, or the cloud's answer to it, is invalid.
    "InvalidSpec",
    "InvalidSelector",
    "InvalidVersion",
    "InvalidDependencies",
    "UnsupportedVersion",
    "MachineTypeImmutable",
    // A reference names something missing or unusable.
    "ProviderConfigNotFound",
    "ProviderNotAvailable",
    "CredentialsUnavailable",
    "AuthFailed",
    // A name is taken by something that is not ours; a quota is reached.
    "AlreadyExists",
    "QuotaExceeded",
];

/// `Reconciling` and `Stalled` for `desired` (see the module's text): the
/// first false `Ready` or `Synced` decides, by its reason.
fn kstatus(desired: &[Desired]) -> [Desired; 2] {
    let failing = [READY, SYNCED]
        .iter()
        .filter_map(|type_| desired.iter().find(|d| d.type_ == *type_ && !d.status))
        .collect::<Vec<_>>();
    let stalled = failing
        .iter()
        .find(|d| STALLED_REASONS.contains(&d.reason.as_str()));
    match (stalled, failing.first()) {
        (Some(d), _) => [
            Desired::no(RECONCILING, "Stalled", "waiting will not help; see Stalled"),
            Desired::yes(STALLED, d.reason.clone(), d.message.clone()),
        ],
        (None, Some(d)) => [
            Desired::yes(RECONCILING, d.reason.clone(), d.message.clone()),
            Desired::no(STALLED, "Progressing", "retried until it converges"),
        ],
        (None, None) => [
            Desired::no(RECONCILING, "Converged", "nothing is in progress"),
            Desired::no(STALLED, "Converged", "nothing is in progress"),
        ],
    }
}

/// Builds the condition list from `desired`, keeping each existing
/// condition's `lastTransitionTime` when its status did not change.
/// Conditions of other types in `existing` are dropped: the engine owns the
/// whole list. A list with `Ready` gets `Reconciling` and `Stalled` too.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let derived = desired
        .iter()
        .any(|d| d.type_ == READY)
        .then(|| kstatus(desired));
    desired
        .iter()
        .chain(derived.iter().flatten())
        .map(|d| {
            let status = if d.status { "True" } else { "False" };
            let last_transition_time = existing
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                // The API limits messages to 32768 bytes.
                message: truncate(&d.message, 4096),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition `type_` as it stands in `conditions`, to be written
/// again unchanged (false, not determined yet, when there is none).
pub fn current(conditions: &[Condition], type_: &'static str) -> Desired {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| Desired {
            type_,
            status: c.status == "True",
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .unwrap_or_else(|| Desired::no(type_, "Pending", "not determined yet"))
}

/// Whether the condition of `type_` holds in `conditions`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The message of the condition of `type_` in `conditions`, if it is there.
pub fn message<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.as_str())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn transition_time_is_kept_while_status_holds_and_moves_when_it_flips() {
        let first = merge(
            &[],
            &[Desired::yes("Ready", "Available", "up")],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));

        let same = merge(
            &first,
            &[Desired::yes("Ready", "Available", "still up")],
            Some(2),
            &at(200),
        );
        assert_eq!(same[0].last_transition_time, at(100));
        assert_eq!(same[0].message, "still up");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge(
            &same,
            &[Desired::no("Ready", "Deleting", "going")],
            Some(2),
            &at(300),
        );
        assert_eq!(flipped[0].last_transition_time, at(300));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let message = "é".repeat(5000);
        let merged = merge(&[], &[Desired::no("Synced", "X", message)], None, &at(1));
        assert!(merged[0].message.len() <= 4096 + 3);
        assert!(merged[0].message.ends_with("..."));
    }

    #[test]
    fn now_has_whole_seconds() {
        assert_eq!(now().0.subsec_nanosecond(), 0);
    }

    #[test]
    fn a_conditions_message_is_found_by_its_type() {
        let merged = merge(
            &[],
            &[
                Desired::no("Ready", "Provisioning", "waiting for the Cluster"),
                Desired::yes("Synced", "Synced", "applied"),
            ],
            Some(1),
            &at(10),
        );
        assert_eq!(message(&merged, "Ready"), Some("waiting for the Cluster"));
        assert_eq!(message(&merged, "Drifted"), None);
    }

    fn state(merged: &[Condition], type_: &str) -> (String, String) {
        let c = merged.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn reconciling_and_stalled_follow_ready_and_synced_by_reason() {
        let t = |s: &str, r: &str| (s.to_string(), r.to_string());
        let cases = [
            // (Ready, Synced) -> (Reconciling, Stalled)
            (
                Desired::yes("Ready", "Available", "up"),
                Desired::yes("Synced", "ReconcileSuccess", ""),
                t("False", "Converged"),
                t("False", "Converged"),
            ),
            (
                Desired::no("Ready", "Creating", "the cloud is creating it"),
                Desired::yes("Synced", "ReconcileSuccess", ""),
                t("True", "Creating"),
                t("False", "Progressing"),
            ),
            (
                Desired::no("Ready", "Unavailable", "the API answered 503"),
                Desired::no("Synced", "Unavailable", "503"),
                t("True", "Unavailable"),
                t("False", "Progressing"),
            ),
            // A refused change of a cluster that still runs: Ready, but
            // stalled until the spec is fixed.
            (
                Desired::yes("Ready", "Available", "up"),
                Desired::no("Synced", "MachineTypeImmutable", "pool a"),
                t("False", "Stalled"),
                t("True", "MachineTypeImmutable"),
            ),
            (
                Desired::no("Ready", "ProviderConfigNotFound", "no ProviderConfig aws"),
                Desired::no("Synced", "ProviderConfigNotFound", "no ProviderConfig aws"),
                t("False", "Stalled"),
                t("True", "ProviderConfigNotFound"),
            ),
        ];
        for (ready, synced, reconciling, stalled) in cases {
            let merged = merge(&[], &[ready.clone(), synced.clone()], Some(3), &at(5));
            assert_eq!(merged.len(), 4);
            assert_eq!(
                state(&merged, "Reconciling"),
                reconciling,
                "{ready:?} {synced:?}"
            );
            assert_eq!(state(&merged, "Stalled"), stalled, "{ready:?} {synced:?}");
            assert!(merged.iter().all(|c| c.observed_generation == Some(3)));
        }
        // Lists without Ready (none today) get nothing added.
        assert_eq!(
            merge(&[], &[Desired::yes("Synced", "X", "")], None, &at(1)).len(),
            1
        );
    }
}
