//! Day 2: drift, version upgrades one minor at a time, node pools, and
//! specs the provider cannot apply.

use super::harness::*;

#[tokio::test]
async fn drift_is_detected_reported_and_corrected() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::with_ready_web(client, ns).await;
        let cloud = h.cloud().await;
        cloud.mutate("web", |c| c.node_pools[0].desired = 5);

        let note = h.wait_for_event("web", "DriftDetected").await;
        assert!(
            note.contains("nodePools[workers].desired: spec 2, actual 5"),
            "{note}"
        );
        h.wait_for_event("web", "CorrectingDrift").await;
        h.wait_for_event("web", "DriftCorrected").await;
        let corrected = h
            .wait_for_condition("web", condition::DRIFTED, "False", "NoDrift")
            .await;
        assert_eq!(pool_desired(&cloud, "web"), 2);
        assert!(corrected.status.unwrap().drift.is_none());
        let metrics =
            h.metrics
                .drift_detected
                .get_or_create(&fleetforge_core::metrics::DriftLabels {
                    kind: "Cluster",
                    provider: "nop",
                });
        assert_eq!(metrics.get(), 1);
    })
    .await;
}

#[tokio::test]
async fn drift_is_only_reported_under_drift_policy_report() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({"driftPolicy": "Report"}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available").await;
        let cloud = h.cloud().await;
        cloud.mutate("web", |c| c.node_pools[0].desired = 5);

        let drifted = h.wait_for_condition("web", condition::DRIFTED, "True", "DriftDetected").await;
        assert!(message_of(&drifted, condition::DRIFTED).contains("nodePools[workers].desired: spec 2, actual 5"));
        let drift = drifted.status.clone().unwrap().drift.unwrap();
        assert_eq!(drift.fields, vec!["nodePools[workers].desired: spec 2, actual 5"]);
        assert!(drift.last_detected.is_some());
        h.wait_for_event("web", "DriftDetected").await;
        // Several polls later the cloud still has the drifted size.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(pool_desired(&cloud, "web"), 5);
        assert_eq!(cloud.calls.snapshot().2, 0, "no update call");
        // A spec change is still applied, and re-asserts the whole spec.
        h.patch_spec("web", json!({"nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": 3}]})).await;
        h.wait_for_condition("web", condition::DRIFTED, "False", "NoDrift").await;
        assert_eq!(pool_desired(&cloud, "web"), 3);
    })
    .await;
}

#[tokio::test]
async fn a_skipped_minor_version_is_refused_and_upgrades_go_control_plane_first() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({"version": "1.34"}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;

        h.patch_spec("web", json!({"version": "1.36"})).await;
        let refused = h
            .wait_for_condition("web", condition::SYNCED, "False", "VersionSkew")
            .await;
        let message = message_of(&refused, condition::SYNCED);
        assert!(message.starts_with("spec.version:"), "{message}");
        assert!(message.contains("skips 1.35"), "{message}");
        h.wait_for_event("web", "VersionSkew").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(cloud.calls.snapshot().2, 0, "nothing was changed");

        h.patch_spec("web", json!({"version": "1.35"})).await;
        let upgraded = h
            .wait_for("web", "the control plane and pool at 1.35, in sync", |c| {
                let status = c.status.clone().unwrap_or_default();
                status.version.as_deref() == Some("1.35")
                    && status.node_pools.first().and_then(|p| p.version.as_deref()) == Some("1.35")
                    && status.observed_generation == c.metadata.generation
            })
            .await;
        assert!(
            conditions_of(&upgraded)
                .iter()
                .any(|(t, s, ..)| t == condition::SYNCED && s == "True")
        );
        // Two update calls: the control plane alone, then the pool.
        assert_eq!(cloud.calls.snapshot().2, 2);
        let notes: Vec<String> = h
            .events("web")
            .await
            .into_iter()
            .filter(|(r, _)| r == "UpdatingExternalResource")
            .map(|(_, n)| n)
            .collect();
        assert!(
            notes
                .iter()
                .any(|n| n == "upgrade the control plane to 1.35"),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n == "upgrade node pool workers to 1.35"),
            "{notes:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn node_pools_are_scaled_added_and_removed() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::with_ready_web(client, ns).await;
        h.patch_spec(
            "web",
            json!({"nodePools": [
                {"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": 4},
                {"name": "batch", "machineType": "standard-8", "min": 0, "max": 3},
            ]}),
        )
        .await;
        let scaled = h
            .wait_for("web", "workers at 4 and a batch pool", |c| {
                let pools = c.status.clone().unwrap_or_default().node_pools;
                pools.iter().any(|p| p.name == "workers" && p.desired == Some(4))
                    && pools.iter().any(|p| p.name == "batch")
                    && c.status.as_ref().unwrap().observed_generation == c.metadata.generation
            })
            .await;
        assert_eq!(scaled.status.unwrap().node_pools.len(), 2);
        h.patch_spec("web", json!({"nodePools": [{"name": "batch", "machineType": "standard-8", "min": 0, "max": 3}]})).await;
        h.wait_for("web", "only the batch pool", |c| {
            let pools = c.status.clone().unwrap_or_default().node_pools;
            pools.len() == 1 && pools[0].name == "batch"
        })
        .await;
        let cloud = h.cloud().await;
        assert_eq!(cloud.get("web").unwrap().node_pools.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_spec_the_provider_cannot_apply_is_refused_on_an_existing_cluster() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::with_ready_web(client, ns).await;
        let cloud = h.cloud().await;
        let before = cloud.calls.snapshot();

        // Nothing in the external cluster differs, yet the nop provider
        // takes no provider block: refused, named, and nothing changed.
        let aws = json!({"aws": {
            "roleArn": "arn:aws:iam::123456789012:role/eks",
            "nodeRoleArn": "arn:aws:iam::123456789012:role/nodes",
            "subnetIds": ["subnet-1", "subnet-2"],
        }});
        h.patch_spec("web", json!({"provider": aws})).await;
        let refused = h
            .wait_for_condition("web", condition::SYNCED, "False", "InvalidSpec")
            .await;
        let message = message_of(&refused, condition::SYNCED);
        assert!(message.starts_with("spec.provider:"), "{message}");
        assert!(
            conditions_of(&refused)
                .iter()
                .any(|(t, s, ..)| t == condition::READY && s == "True"),
            "the cluster itself is still usable"
        );
        h.wait_for_event("web", "InvalidSpec").await;
        assert_eq!(cloud.calls.snapshot().1, before.1, "no create");
        assert_eq!(cloud.calls.snapshot().2, before.2, "no update");

        h.patch_spec("web", json!({"provider": null})).await;
        h.wait_for_condition("web", condition::SYNCED, "True", "ReconcileSuccess")
            .await;
    })
    .await;
}
