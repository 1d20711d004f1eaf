//! ProviderConfigs: missing, unreadable credentials, in use, gone.

use super::harness::*;

#[tokio::test]
async fn a_missing_provider_config_is_reported_and_picked_up_when_created() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client.clone(), ns.clone(), json!({})).await;
        let late = format!("{ns}-late");
        h.create(
            "web",
            json!({"providerConfigRef": {"name": late}}),
            json!({}),
        )
        .await;
        let waiting = h
            .wait_for_condition("web", condition::SYNCED, "False", "ProviderConfigNotFound")
            .await;
        assert!(message_of(&waiting, condition::SYNCED).contains(&late));
        let configs: Api<ProviderConfig> = Api::all(client);
        let config: ProviderConfig = serde_json::from_value(
            json!({"metadata": {"name": late}, "spec": {"provider": "nop"}}),
        )
        .unwrap();
        configs
            .create(&PostParams::default(), &config)
            .await
            .unwrap();
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
    })
    .await;
}

#[tokio::test]
async fn unreadable_credentials_are_reported_without_their_content() {
    with_temp_ns(|client, ns| async move {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds"},
            "stringData": {"token": "planted-secret-value-7f3a"},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        let h = Harness::start(
            client.clone(),
            ns.clone(),
            json!({"credentials": {"source": "Secret", "secretRef": {"namespace": ns, "name": "creds", "key": "wrong-key"}}}),
        )
        .await;
        h.create("web", json!({}), json!({})).await;
        let failed = h.wait_for_condition("web", condition::SYNCED, "False", "CredentialsUnavailable").await;
        let message = message_of(&failed, condition::SYNCED);
        assert!(message.contains("has no key wrong-key"), "{message}");

        let configs: Api<ProviderConfig> = Api::all(client.clone());
        let config = await_condition(&configs, &h.config, "the ProviderConfig to report Ready=False", WAIT, |c: Option<&ProviderConfig>| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"))
        })
        .await
        .unwrap()
        .unwrap();
        let everything = format!(
            "{}{:?}",
            serde_json::to_string(&config).unwrap(),
            h.events("web").await
        ) + &serde_json::to_string(&failed).unwrap();
        assert!(!everything.contains("planted-secret-value-7f3a"), "a credential leaked into status or events");

        // With the right key, the account works.
        configs
            .patch(&h.config, &PatchParams::default(), &Patch::Merge(json!({"spec": {"credentials": {"secretRef": {"key": "token"}}}})))
            .await
            .unwrap();
        h.wait_for_condition("web", condition::READY, "True", "Available").await;
        let _ = shared();
    })
    .await;
}

#[tokio::test]
async fn a_provider_config_in_use_is_kept_until_its_clusters_are_gone() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client.clone(), ns.clone(), json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let configs: Api<ProviderConfig> = Api::all(client.clone());
        let in_use = await_condition(
            &configs,
            &h.config,
            "the ProviderConfig to count its user",
            WAIT,
            |c: Option<&ProviderConfig>| {
                c.is_some_and(|c| {
                    c.finalizers()
                        .contains(&fleetforge_api::IN_USE_FINALIZER.to_string())
                        && c.status.as_ref().is_some_and(|s| s.users == Some(1))
                })
            },
        )
        .await
        .unwrap()
        .unwrap();
        let condition = in_use
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == condition::IN_USE)
            .unwrap();
        assert_eq!(condition.message, format!("used by 1 Cluster: {ns}/web"));

        // Deleting it waits, saying why; the Cluster can still be deleted
        // through it, and then it goes.
        configs
            .delete(&h.config, &DeleteParams::default())
            .await
            .unwrap();
        await_condition(
            &configs,
            &h.config,
            "the ProviderConfig to say its deletion waits",
            WAIT,
            |c: Option<&ProviderConfig>| {
                c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == condition::IN_USE
                            && c.reason == "DeletionBlocked"
                            && c.message.contains(&format!("{ns}/web"))
                    })
                })
            },
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            configs.get_opt(&h.config).await.unwrap().is_some(),
            "deleted while in use"
        );
        h.clusters()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("web").await;
        assert!(
            h.cloud().await.get("web").is_none(),
            "the cluster was deleted at the provider"
        );
        await_condition(
            &configs,
            &h.config,
            "the unused ProviderConfig to go",
            WAIT,
            |c: Option<&ProviderConfig>| c.is_none(),
        )
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_cluster_whose_account_is_gone_can_be_force_removed() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client.clone(), ns.clone(), json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        // The account goes anyway (its protection removed by hand). The
        // in-use finalizer is added by the ProviderConfig's own pass, which
        // may not have run yet: then the delete alone removes it, and the
        // patch finds nothing (CI saw that 404).
        let configs: Api<ProviderConfig> = Api::all(client.clone());
        configs
            .delete(&h.config, &DeleteParams::default())
            .await
            .unwrap();
        match configs
            .patch(
                &h.config,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => panic!("removing the ProviderConfig's finalizers: {error}"),
        }
        await_condition(
            &configs,
            &h.config,
            "the ProviderConfig to go",
            WAIT,
            |c: Option<&ProviderConfig>| c.is_none(),
        )
        .await
        .unwrap();

        // The delete cannot reach the provider: it waits and says how to
        // let the Cluster go.
        h.clusters()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        let stuck = h
            .wait_for_condition("web", condition::SYNCED, "False", "ProviderConfigNotFound")
            .await;
        let message = message_of(&stuck, condition::SYNCED);
        assert!(
            message.contains("fleetforge.dev/force-remove=true"),
            "{message}"
        );

        h.clusters()
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {annotation::FORCE_REMOVE: "true"}}}),
                ),
            )
            .await
            .unwrap();
        h.wait_until_gone("web").await;
        let note = h.wait_for_event("web", "ForceRemoved").await;
        assert!(
            note.contains("web at ProviderConfig") && note.contains("may be left behind"),
            "{note}"
        );
        assert!(
            h.cloud().await.get("web").is_some(),
            "force-remove makes no provider call"
        );
        let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.namespace);
        assert!(secrets.get_opt("web-kubeconfig").await.unwrap().is_none());
    })
    .await;
}
