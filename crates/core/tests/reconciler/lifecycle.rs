//! Create, import, delete, orphan and pause; names taken by others; a
//! create not listed yet; a restart of a converged engine.

use super::harness::*;

#[tokio::test]
async fn a_cluster_is_created_and_reported_ready() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({}), json!({})).await;
        let ready = h
            .wait_for_condition("web", condition::READY, "True", "Available")
            .await;

        let status = ready.status.clone().unwrap();
        assert_eq!(status.provider.as_deref(), Some("nop"));
        assert_eq!(status.region.as_deref(), Some("nop-region-1"));
        assert_eq!(status.version.as_deref(), Some("1.36"));
        assert_eq!(status.phase, Some(fleetforge_api::ClusterPhase::Ready));
        assert_eq!(status.observed_generation, ready.metadata.generation);
        assert_eq!(status.endpoint.as_deref(), Some("https://web.nop.invalid"));
        assert_eq!(status.node_pools[0].desired, Some(2));
        assert!(status.last_observed.is_some());
        let conditions = conditions_of(&ready);
        assert!(
            conditions
                .iter()
                .any(|(t, s, ..)| t == condition::SYNCED && s == "True")
        );
        assert!(
            conditions
                .iter()
                .any(|(t, s, ..)| t == condition::DRIFTED && s == "False")
        );

        assert!(
            ready
                .finalizers()
                .contains(&fleetforge_api::FINALIZER.to_string())
        );
        let annotations = ready.annotations();
        assert_eq!(
            annotations
                .get(annotation::EXTERNAL_NAME)
                .map(String::as_str),
            Some("web")
        );
        // The create's start stays in its annotation; its success is in
        // status (one write fewer than a second annotation).
        let started = annotations
            .get(annotation::CREATE_PENDING)
            .expect("the create's start");
        let succeeded = status
            .create_succeeded
            .as_ref()
            .expect("the create's success");
        assert_eq!(succeeded.0, started.parse().unwrap());

        let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.namespace);
        let secret = secrets.get("web-kubeconfig").await.unwrap();
        let kubeconfig = String::from_utf8(secret.data.unwrap()["value"].0.clone()).unwrap();
        assert!(kubeconfig.contains("https://web.nop.invalid"));
        let owner = &secret.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Cluster", "web")
        );

        h.wait_for_event("web", "CreatedExternalResource").await;
        let cloud = h.cloud().await;
        assert_eq!(cloud.calls.snapshot().1, 1, "exactly one create call");
        assert_eq!(cloud.names(), vec!["web".to_string()]);
    })
    .await;
}

#[tokio::test]
async fn a_cluster_deleted_out_of_band_is_recreated() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::with_ready_web(client, ns).await;
        let cloud = h.cloud().await;
        cloud.remove("web");

        let note = h.wait_for_event("web", "ExternalResourceMissing").await;
        assert!(note.contains("recreating"), "{note}");
        h.wait_for("web", "the cluster to be recreated", |_| {
            cloud.get("web").is_some()
        })
        .await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        assert_eq!(
            cloud.calls.snapshot().1,
            2,
            "created once, then recreated once"
        );
    })
    .await;
}

#[tokio::test]
async fn deleting_removes_the_external_cluster_then_the_finalizer() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::with_ready_web(client, ns).await;
        let cloud = h.cloud().await;
        h.clusters()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("web").await;
        assert!(
            cloud.get("web").is_none(),
            "the external cluster must be gone first"
        );
        let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.namespace);
        assert!(secrets.get_opt("web-kubeconfig").await.unwrap().is_none());
        assert_eq!(cloud.calls.snapshot().3, 1, "one delete call");
    })
    .await;
}

#[tokio::test]
async fn orphaning_keeps_the_external_cluster() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        let created = h
            .create("web", json!({"deletionPolicy": "Orphan"}), json!({}))
            .await;
        let ready = h
            .wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        assert!(
            ready.finalizers().is_empty(),
            "nothing to clean up, so no finalizer"
        );
        let cloud = h.cloud().await;
        h.clusters()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("web").await;
        assert!(cloud.get("web").is_some());
        assert_eq!(cloud.calls.snapshot().3, 0);
        assert_eq!(
            cloud.get("web").unwrap().owner,
            Some(format!("{}/{}", h.namespace, created.name_any()))
        );
    })
    .await;
}

#[tokio::test]
async fn an_existing_cluster_is_imported_observe_only() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        // Nothing to observe until an external name is given.
        h.create(
            "imported",
            json!({"managementPolicy": "ObserveOnly"}),
            json!({}),
        )
        .await;
        let waiting = h
            .wait_for_condition(
                "imported",
                condition::SYNCED,
                "False",
                "ExternalNameMissing",
            )
            .await;
        assert!(message_of(&waiting, condition::SYNCED).contains(annotation::EXTERNAL_NAME));

        let cloud = h.cloud().await;
        cloud.put(NopCluster {
            name: "legacy".into(),
            owner: None,
            version: "1.35".into(),
            node_pools: vec![NopPool {
                name: "workers".into(),
                machine_type: "standard-2".into(),
                version: "1.35".into(),
                min: 1,
                max: 5,
                desired: 2,
            }],
            ready_at: 0,
            busy_until: 0,
            deleted_at: None,
            visible_at: 0,
        });
        h.clusters()
            .patch(
                "imported",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {annotation::EXTERNAL_NAME: "legacy"}}}),
                ),
            )
            .await
            .unwrap();
        h.wait_for_condition("imported", condition::READY, "True", "Available")
            .await;
        let imported = h
            .wait_for_condition("imported", condition::DRIFTED, "True", "DriftDetected")
            .await;
        assert_eq!(
            imported.status.clone().unwrap().version.as_deref(),
            Some("1.35")
        );
        assert!(
            message_of(&imported, condition::DRIFTED).contains("version: spec 1.36, actual 1.35")
        );
        assert!(imported.finalizers().is_empty());
        let (_, creates, updates, deletes) = cloud.calls.snapshot();
        assert_eq!(
            (creates, updates, deletes),
            (0, 0, 0),
            "ObserveOnly never writes to the provider"
        );

        h.clusters()
            .delete("imported", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("imported").await;
        assert!(cloud.get("legacy").is_some());
    })
    .await;
}

#[tokio::test]
async fn a_paused_cluster_is_left_alone() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({"paused": true}), json!({})).await;
        h.wait_for_condition("web", condition::SYNCED, "False", "ReconcilePaused")
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            h.nop
                .cloud(&h.config)
                .is_none_or(|c| c.calls.snapshot() == (0, 0, 0, 0))
        );
        h.patch_spec("web", json!({"paused": false})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_name_taken_by_someone_else_is_neither_adopted_nor_deleted() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("probe", json!({}), json!({})).await;
        h.wait_for_condition("probe", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        cloud.put(NopCluster {
            name: "taken".into(),
            owner: Some("other-team/taken".into()),
            version: "1.36".into(),
            node_pools: vec![],
            ready_at: 0,
            busy_until: 0,
            deleted_at: None,
            visible_at: 0,
        });
        h.create("taken", json!({}), json!({})).await;
        let refused = h
            .wait_for_condition("taken", condition::SYNCED, "False", "AlreadyExists")
            .await;
        assert!(message_of(&refused, condition::SYNCED).contains("other-team/taken"));
        h.clusters()
            .delete("taken", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("taken").await;
        assert!(cloud.get("taken").is_some());
        assert_eq!(cloud.calls.snapshot().3, 0);
    })
    .await;
}

#[tokio::test]
async fn a_cluster_not_listed_right_after_its_create_is_waited_for_not_recreated() {
    with_temp_ns(|client, ns| async move {
        // The fake cloud does not list the cluster for 2 s after its
        // create, inside the harness's 3 s creation grace period.
        let h = Harness::start(client, ns, json!({})).await;
        h.create(
            "web",
            json!({}),
            json!({"nop.fleetforge.dev/visible-after": "2s"}),
        )
        .await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        assert_eq!(cloud.calls.snapshot().1, 1, "exactly one create call");
        let events = h.events("web").await;
        assert!(
            !events.iter().any(|(r, _)| r == "ExternalResourceMissing"),
            "an eventually consistent read is not an out-of-band deletion: {events:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_restart_of_a_converged_engine_writes_nothing() {
    with_temp_ns(|client, ns| async move {
        let mut h =
            Harness::start(client.clone(), ns.clone(), json!({"pollInterval": "30s"})).await;
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        for name in &names {
            h.create(name, json!({}), json!({})).await;
        }
        for name in &names {
            h.wait_for_condition(name, condition::READY, "True", "Available")
                .await;
        }
        let cloud = h.cloud().await;
        let observed: Vec<u64> = names.iter().map(|n| cloud.observes_of(n)).collect();
        h.restart().await;
        // Every cluster is looked at again by the new engine.
        let deadline = Instant::now() + WAIT;
        while names
            .iter()
            .zip(&observed)
            .any(|(n, o)| cloud.observes_of(n) <= *o)
        {
            assert!(
                Instant::now() < deadline,
                "the restarted engine did not observe every cluster"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Applies count even when they change nothing: the API server
        // still does the work, and a fleet restarts all at once.
        let writes: Vec<_> = h
            .requests
            .all()
            .into_iter()
            .filter(|(method, path)| {
                [
                    http::Method::POST,
                    http::Method::PATCH,
                    http::Method::PUT,
                    http::Method::DELETE,
                ]
                .contains(method)
                    && path.contains(&format!("/namespaces/{ns}/"))
            })
            .collect();
        assert!(
            writes.is_empty(),
            "a restart of a converged engine wrote: {writes:#?}"
        );
    })
    .await;
}
