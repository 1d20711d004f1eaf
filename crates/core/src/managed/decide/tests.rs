//! The engine's decisions as a table, in the style of crossplane-runtime's
//! `reconciler_modern_test.go`: an object (spec, annotations, status), the
//! provider's answer, and what the engine must do. No API server.

use std::time::Duration;

use fleetforge_api::{Cluster, annotation};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::cluster::{ObservedCluster, ObservedNodePool};
use crate::provider::ConnectionDetails;

const NOW: i64 = 1_800_000_000;

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

fn ago(seconds: i64) -> String {
    Timestamp::from_second(NOW - seconds).unwrap().to_string()
}

/// A Cluster `web` in `team`, generation 2, with a pool of 2 workers and
/// `extra` merged over it (metadata, spec, status).
fn cluster(extra: Value) -> Cluster {
    let mut base = json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "web", "namespace": "team", "uid": "u-1", "generation": 2},
        "spec": {"providerConfigRef": {"name": "acct"}, "version": "1.36",
                 "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": 2}]},
    });
    merge(&mut base, extra);
    serde_json::from_value(base).unwrap()
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (k, v) in extra {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, extra) => *base = extra,
    }
}

/// Created and converged at generation 2 (a created cluster with the
/// finalizer, matching status).
fn converged(extra: Value) -> Cluster {
    let mut base = json!({
        "metadata": {"finalizers": [fleetforge_api::FINALIZER],
                     "annotations": {annotation::EXTERNAL_NAME: "web", annotation::CREATE_PENDING: ago(3600)}},
        "status": {"phase": "Ready", "observedGeneration": 2, "createSucceeded": ago(3600),
                   "conditions": [cond("Ready", "True", "Available"), cond("Synced", "True", "ReconcileSuccess"), cond("Drifted", "False", "NoDrift")]},
    });
    merge(&mut base, extra);
    cluster(base)
}

fn cond(type_: &str, status: &str, reason: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": "", "lastTransitionTime": ago(7200)})
}

fn observed(
    state: ExternalState,
    owner: Option<&str>,
    desired: i32,
) -> Observation<ObservedCluster> {
    Observation {
        state,
        owner: owner.map(str::to_string),
        connection: Some(ConnectionDetails {
            kubeconfig: "kubeconfig".into(),
        }),
        resource: ObservedCluster {
            version: Some("1.36".into()),
            endpoint: Some("https://web".into()),
            node_pools: vec![ObservedNodePool {
                name: "workers".into(),
                machine_type: "standard-2".into(),
                version: Some("1.36".into()),
                min: 1,
                max: 5,
                desired,
                ready: Some(desired),
            }],
            provider_drift: Vec::new(),
        },
    }
}

fn ours(state: ExternalState, desired: i32) -> Observation<ObservedCluster> {
    observed(state, Some("team/web"), desired)
}

fn facts(obj: &Cluster) -> Facts<'_, Cluster> {
    Facts {
        obj,
        policies: obj.policies(),
        provider: "nop",
        now: now(),
        creation_grace_period: Duration::from_secs(30),
    }
}

fn seen<'a>(
    observation: Option<&'a Observation<ObservedCluster>>,
    created_now: Option<Timestamp>,
) -> Seen<'a, ObservedCluster> {
    Seen {
        external_name: "web",
        observation,
        validation: Ok(()),
        created_now,
        create_keyed_by_name: false,
    }
}

/// As [`seen`], from a provider that keys creates by name.
fn seen_keyed(observation: Option<&Observation<ObservedCluster>>) -> Seen<'_, ObservedCluster> {
    Seen {
        create_keyed_by_name: true,
        ..seen(observation, None)
    }
}

/// A decision, flattened for comparison.
#[derive(Debug, PartialEq)]
struct Summary {
    call: String,
    mark: String,
    phase: Option<Phase>,
    ready: String,
    synced: String,
    drifted: String,
    notes: Vec<String>,
    next: Next,
}

fn summary(decision: &Decision<crate::cluster::ClusterChange>) -> Summary {
    let condition = |type_: &str| {
        decision
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .map(|c| format!("{} {}", if c.status { "True" } else { "False" }, c.reason))
            .unwrap_or_default()
    };
    Summary {
        call: match &decision.call {
            Call::None => "none".into(),
            Call::Create(_) => "create".into(),
            Call::Update(changes) => format!(
                "update {}",
                changes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Call::Delete => "delete".into(),
        },
        mark: match decision.metadata.as_ref().and_then(|m| m.mark) {
            Some(Mark::Pending(_)) => "pending".into(),
            Some(Mark::Failed(_)) => "failed".into(),
            None if decision.metadata.is_some() => "metadata".into(),
            None => String::new(),
        },
        phase: decision.status.as_ref().map(|s| s.phase),
        ready: condition("Ready"),
        synced: condition("Synced"),
        drifted: condition("Drifted"),
        notes: decision.notes.iter().map(|n| n.reason.clone()).collect(),
        next: decision.next,
    }
}

fn expect(
    call: &str,
    mark: &str,
    phase: Option<Phase>,
    [ready, synced, drifted]: [&str; 3],
    notes: &[&str],
    next: Next,
) -> Summary {
    Summary {
        call: call.into(),
        mark: mark.into(),
        phase,
        ready: ready.into(),
        synced: synced.into(),
        drifted: drifted.into(),
        notes: notes.iter().map(|n| n.to_string()).collect(),
        next,
    }
}

#[test]
fn decisions_for_objects_that_are_not_being_deleted() {
    let fresh = cluster(json!({}));
    let pending_unresolved = cluster(json!({"metadata": {
        "annotations": {annotation::EXTERNAL_NAME: "web", annotation::CREATE_PENDING: ago(60)},
        "finalizers": [fleetforge_api::FINALIZER]}}));
    let pending_recent = cluster(json!({"metadata": {
        "annotations": {annotation::EXTERNAL_NAME: "web", annotation::CREATE_PENDING: ago(5)},
        "finalizers": [fleetforge_api::FINALIZER]}}));
    let just_created = converged(json!({"status": {"createSucceeded": ago(5)}}));
    let drifted_before = converged(json!({"status": {"conditions": [
        cond("Ready", "True", "Available"), cond("Synced", "True", "ReconcileSuccess"), cond("Drifted", "True", "DriftCorrecting")]}}));
    let report = converged(json!({"spec": {"driftPolicy": "Report"}}));
    let reported = converged(json!({"spec": {"driftPolicy": "Report"},
        "status": {"drift": {"fields": ["nodePools[workers].desired: spec 2, actual 4"]}}}));
    let spec_changed = converged(json!({"metadata": {"generation": 3}}));
    let skip_minor = converged(json!({"metadata": {"generation": 3}, "spec": {"version": "1.38"}}));
    let import_unnamed = cluster(json!({"spec": {"managementPolicy": "ObserveOnly"}}));
    let import = converged(
        json!({"spec": {"managementPolicy": "ObserveOnly"}, "metadata": {"finalizers": []}}),
    );
    let steady = converged(json!({}));

    let ready = ours(ExternalState::Ready, 2);
    let scaled = ours(ExternalState::Ready, 4);
    let theirs = observed(ExternalState::Ready, Some("other/web"), 2);
    let untagged = observed(ExternalState::Ready, None, 2);
    let provisioning = ours(ExternalState::Provisioning, 2);
    let failed = ours(ExternalState::Failed("quota".into()), 2);
    let degraded = ours(ExternalState::Degraded("stopped".into()), 2);
    let started = Some(Timestamp::from_second(NOW - 1).unwrap());

    use Next::*;
    use Phase::*;
    let cases: Vec<(&str, &Cluster, Seen<'_, ObservedCluster>, Summary)> = vec![
        (
            "new, not listed: mark pending, then create",
            &fresh,
            seen(None, None),
            expect("create", "pending", None, ["", "", ""], &[], Soon),
        ),
        (
            "just created and already up: one status, Ready, and the create told",
            &fresh,
            seen(Some(&ready), started),
            expect(
                "none",
                "",
                Some(Ready),
                ["True Available", "True ReconcileSuccess", "False NoDrift"],
                &["CreatedExternalResource"],
                Poll,
            ),
        ),
        (
            "just created, not listed yet: Provisioning",
            &fresh,
            seen(None, started),
            expect(
                "none",
                "",
                Some(Provisioning),
                ["False Creating", "True ReconcileSuccess", "False NoDrift"],
                &["CreatedExternalResource"],
                Soon,
            ),
        ),
        (
            "created 5 s ago and not listed: within the grace period, wait",
            &just_created,
            seen(None, None),
            expect(
                "none",
                "",
                Some(Provisioning),
                ["False Creating", "True ReconcileSuccess", "False NoDrift"],
                &[],
                Within(Duration::from_millis(25_100)),
            ),
        ),
        (
            "created an hour ago and gone: drift, recreate",
            &steady,
            seen(None, None),
            expect(
                "create",
                "pending",
                None,
                ["", "", ""],
                &["ExternalResourceMissing"],
                Soon,
            ),
        ),
        (
            "gone under driftPolicy Report: reported, not recreated",
            &report,
            seen(None, None),
            expect(
                "none",
                "",
                Some(Failed),
                [
                    "False NotFound",
                    "True ReconcileSuccess",
                    "True ExternalResourceMissing",
                ],
                &["ExternalResourceMissing"],
                Poll,
            ),
        ),
        (
            "a create whose outcome was not recorded, found ours: adopted",
            &pending_unresolved,
            seen(Some(&ready), None),
            expect(
                "none",
                "",
                Some(Ready),
                ["True Available", "True ReconcileSuccess", "False NoDrift"],
                &["CreateConfirmed"],
                Poll,
            ),
        ),
        (
            "a create whose outcome was not recorded, not listed: ask a person, never a second create",
            &pending_unresolved,
            seen(None, None),
            expect(
                "none",
                "",
                Some(Pending),
                [
                    "False CreatePendingUnknown",
                    "False CreatePendingUnknown",
                    "False Pending",
                ],
                &["CreatePendingUnknown"],
                Poll,
            ),
        ),
        (
            "a create whose outcome was not recorded, not listed, names unique at the provider, within the grace period: wait",
            &pending_recent,
            seen_keyed(None),
            expect(
                "none",
                "",
                Some(Provisioning),
                ["False Creating", "True ReconcileSuccess", "False Pending"],
                &[],
                Within(Duration::from_millis(25_100)),
            ),
        ),
        (
            "a create whose outcome was not recorded, not listed, names unique at the provider, past the grace period: create again",
            &pending_unresolved,
            seen_keyed(None),
            expect(
                "create",
                "pending",
                None,
                ["", "", ""],
                &["CreateRetried"],
                Soon,
            ),
        ),
        (
            "a create whose outcome was not recorded, found ours, names unique at the provider: adopted, not created again",
            &pending_unresolved,
            seen_keyed(Some(&ready)),
            expect(
                "none",
                "",
                Some(Ready),
                ["True Available", "True ReconcileSuccess", "False NoDrift"],
                &["CreateConfirmed"],
                Poll,
            ),
        ),
        (
            "a create whose outcome was not recorded, found someone else's",
            &pending_unresolved,
            seen(Some(&theirs), None),
            expect(
                "none",
                "",
                Some(Failed),
                [
                    "False AlreadyExists",
                    "False AlreadyExists",
                    "False Pending",
                ],
                &["AlreadyExists"],
                Poll,
            ),
        ),
        (
            "the default name is taken by a cluster without our tag: not adopted",
            &fresh,
            seen(Some(&untagged), None),
            expect(
                "none",
                "",
                Some(Failed),
                [
                    "False AlreadyExists",
                    "False AlreadyExists",
                    "False Pending",
                ],
                &["AlreadyExists"],
                Poll,
            ),
        ),
        (
            "found ours under the default name before recording it: adopted, name recorded",
            &fresh,
            seen(Some(&ready), None),
            expect(
                "none",
                "metadata",
                Some(Ready),
                ["True Available", "True ReconcileSuccess", "False NoDrift"],
                &[],
                Poll,
            ),
        ),
        (
            "converged: nothing to do",
            &steady,
            seen(Some(&ready), None),
            expect(
                "none",
                "",
                Some(Ready),
                ["True Available", "True ReconcileSuccess", "False NoDrift"],
                &[],
                Poll,
            ),
        ),
        (
            "drift corrected since the last pass: told",
            &drifted_before,
            seen(Some(&ready), None),
            expect(
                "none",
                "",
                Some(Ready),
                ["True Available", "True ReconcileSuccess", "False NoDrift"],
                &["DriftCorrected"],
                Poll,
            ),
        ),
        (
            "scaled out of band: drift, corrected",
            &steady,
            seen(Some(&scaled), None),
            expect(
                "update scale node pool workers to 2 (min 1, max 5)",
                "",
                Some(Updating),
                [
                    "True Available",
                    "True ReconcileSuccess",
                    "True DriftCorrecting",
                ],
                &["DriftDetected", "CorrectingDrift"],
                Soon,
            ),
        ),
        (
            "scaled out of band under driftPolicy Report: reported only",
            &report,
            seen(Some(&scaled), None),
            expect(
                "none",
                "",
                Some(Ready),
                [
                    "True Available",
                    "True ReconcileSuccess",
                    "True DriftDetected",
                ],
                &["DriftDetected"],
                Poll,
            ),
        ),
        (
            "the same drift reported again: no second event",
            &reported,
            seen(Some(&scaled), None),
            expect(
                "none",
                "",
                Some(Ready),
                [
                    "True Available",
                    "True ReconcileSuccess",
                    "True DriftDetected",
                ],
                &[],
                Poll,
            ),
        ),
        (
            "a spec change is applied, not drift",
            &spec_changed,
            seen(Some(&scaled), None),
            expect(
                "update scale node pool workers to 2 (min 1, max 5)",
                "",
                Some(Updating),
                ["True Available", "True ReconcileSuccess", "False NoDrift"],
                &["UpdatingExternalResource"],
                Soon,
            ),
        ),
        (
            "a skipped minor version is refused naming the field",
            &skip_minor,
            seen(Some(&ready), None),
            expect(
                "none",
                "",
                Some(Ready),
                ["True Available", "False VersionSkew", "False NoDrift"],
                &["VersionSkew"],
                Poll,
            ),
        ),
        (
            "still being created at the provider",
            &steady,
            seen(Some(&provisioning), None),
            expect(
                "none",
                "",
                Some(Provisioning),
                ["False Creating", "True ReconcileSuccess", "False NoDrift"],
                &[],
                Soon,
            ),
        ),
        (
            "failed at the provider",
            &steady,
            seen(Some(&failed), None),
            expect(
                "none",
                "",
                Some(Failed),
                [
                    "False ProviderFailed",
                    "False ProviderFailed",
                    "False NoDrift",
                ],
                &[],
                Poll,
            ),
        ),
        (
            "degraded: converged, but not Ready",
            &steady,
            seen(Some(&degraded), None),
            expect(
                "none",
                "",
                Some(Failed),
                ["False Degraded", "True ReconcileSuccess", "False NoDrift"],
                &[],
                Poll,
            ),
        ),
        (
            "an import that differs: reported, never changed",
            &import,
            seen(Some(&scaled), None),
            expect(
                "none",
                "",
                Some(Ready),
                ["True Available", "True ObserveOnly", "True DriftDetected"],
                &["DriftDetected"],
                Poll,
            ),
        ),
    ];
    for (case, obj, seen, expected) in &cases {
        assert_eq!(summary(&decide(&facts(obj), seen)), *expected, "{case}");
    }

    // An import without a name has nothing to observe.
    let unnamed = external_name(&facts(&import_unnamed)).unwrap_err();
    assert_eq!(
        summary(&unnamed),
        expect(
            "none",
            "",
            Some(Pending),
            [
                "False ExternalNameMissing",
                "False ExternalNameMissing",
                "False Pending"
            ],
            &[],
            AwaitChange
        )
    );
    assert_eq!(external_name(&facts(&fresh)).unwrap(), "web");
}

#[test]
fn a_refusal_is_told_once_and_a_create_records_its_success_in_status() {
    let refused = converged(
        json!({"metadata": {"generation": 3}, "spec": {"version": "1.38"},
        "status": {"conditions": [cond("Ready", "True", "Available"),
            {"type": "Synced", "status": "False", "reason": "VersionSkew", "lastTransitionTime": ago(60),
             "message": "spec.version: the cluster runs 1.36; 1.38 skips 1.37: upgrade one minor version at a time (set 1.37 first)"},
            cond("Drifted", "False", "NoDrift")]}}),
    );
    let ready = ours(ExternalState::Ready, 2);
    let again = decide(&facts(&refused), &seen(Some(&ready), None));
    assert_eq!(summary(&again).synced, "False VersionSkew");
    assert!(again.notes.is_empty(), "{:?}", again.notes);

    let fresh = cluster(json!({}));
    let started = Timestamp::from_second(NOW - 1).unwrap();
    let after = decide(&facts(&fresh), &seen(Some(&ready), Some(started)));
    assert_eq!(after.status.unwrap().create_succeeded, Some(started));
    assert!(after.publish_connection);
    assert!(
        after.metadata.is_none(),
        "the create's own mark carried the metadata"
    );

    // A provider refusal before a create: nothing is created.
    let mut refusing = seen(None, None);
    refusing.validation = Err(Refusal {
        reason: "UnsupportedVersion",
        field: "spec.version".into(),
        message: "local clusters run 1.36 only".into(),
    });
    let decision = decide(&facts(&fresh), &refusing);
    assert_eq!(summary(&decision).call, "none");
    assert_eq!(summary(&decision).synced, "False UnsupportedVersion");
}

#[test]
fn decisions_for_paused_force_removed_failed_and_deleted_objects() {
    let paused_obj = converged(json!({"spec": {"paused": true}}));
    assert_eq!(
        summary(&paused(&facts(&paused_obj))),
        expect(
            "none",
            "",
            Some(Phase::Ready),
            ["True Available", "False ReconcilePaused", "False NoDrift"],
            &[],
            Next::AwaitChange
        )
    );

    let going_away = converged(json!({"metadata": {"deletionTimestamp": ago(10)}}));
    let forced = force_remove(&facts(&going_away));
    let note = forced.finish_delete.expect("the finalizer goes");
    assert_eq!(note.reason, "ForceRemoved");
    assert!(
        note.message
            .contains("web at ProviderConfig acct may be left behind"),
        "{}",
        note.message
    );
    let no_finalizer = cluster(json!({"metadata": {"deletionTimestamp": ago(10)}}));
    assert!(force_remove(&facts(&no_finalizer)).finish_delete.is_none());

    let error = failed(
        &facts(&going_away),
        "ProviderConfigNotFound",
        "ProviderConfig acct not found",
    );
    let synced = error.status.as_ref().unwrap().conditions[1].clone();
    assert_eq!(synced.reason, "ProviderConfigNotFound");
    assert!(
        synced
            .message
            .ends_with("annotate it fleetforge.dev/force-remove=true"),
        "{}",
        synced.message
    );
    assert_eq!(error.notes[0].reason, "ProviderConfigNotFound");

    // Deletion: what needs the provider, and what does not.
    assert!(
        delete_target(&facts(&no_finalizer))
            .unwrap_err()
            .finish_delete
            .is_none()
    );
    let orphan = converged(
        json!({"spec": {"deletionPolicy": "Orphan"}, "metadata": {"deletionTimestamp": ago(10)}}),
    );
    let went = delete_target(&facts(&orphan))
        .unwrap_err()
        .finish_delete
        .unwrap();
    assert_eq!(went.message, "web orphaned; removing the finalizer");
    let never = cluster(
        json!({"metadata": {"deletionTimestamp": ago(10), "finalizers": [fleetforge_api::FINALIZER]}}),
    );
    let went = delete_target(&facts(&never))
        .unwrap_err()
        .finish_delete
        .unwrap();
    assert_eq!(went.message, "web never created; removing the finalizer");
    assert_eq!(delete_target(&facts(&going_away)).unwrap(), "web");

    let ready = ours(ExternalState::Ready, 2);
    let going = ours(ExternalState::Deleting, 2);
    let theirs = observed(ExternalState::Ready, Some("other/web"), 2);
    let start = deleting_decision(&going_away, Some(&ready));
    assert_eq!(start.call, "delete");
    assert_eq!(start.notes, ["DeletingExternalResource"]);
    assert_eq!(start.phase, Some(Phase::Deleting));
    let waiting = deleting_decision(&going_away, Some(&going));
    assert_eq!(waiting.call, "none");
    assert!(waiting.notes.is_empty());
    let gone = deleting(&facts(&going_away), "web", None)
        .finish_delete
        .unwrap();
    assert_eq!(gone.message, "web deleted; removing the finalizer");
    let clash = deleting(&facts(&going_away), "web", Some(&theirs))
        .finish_delete
        .unwrap();
    assert_eq!(
        clash.message,
        "web left alone: it is not owned by this object; removing the finalizer"
    );
}

fn deleting_decision(obj: &Cluster, observation: Option<&Observation<ObservedCluster>>) -> Summary {
    summary(&deleting(&facts(obj), "web", observation))
}
