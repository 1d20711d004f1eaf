//! The profile controller on the real kube-apiserver: a Cluster's
//! `spec.profile` becomes a ToolInstall once it is Ready, and goes with
//! the profile; deciding costs no reads of ToolInstalls (a cache of the
//! profile ToolInstalls answers).

use std::time::Duration;

use fleetforge_api::{Cluster, ToolInstall};
use fleetforge_runtime::informer::Informer;
use fleetforge_testenv::{await_condition, shared, with_temp_ns};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn ready_cluster(clusters: &Api<Cluster>, name: &str, profile: Option<&str>) {
    let mut spec = json!({"providerConfigRef": {"name": "nop"}});
    if let Some(profile) = profile {
        spec["profile"] = json!(profile);
    }
    let cluster: Cluster =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    let status = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "Available", "message": "up",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    clusters
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

#[tokio::test]
async fn profiles_become_tool_installs_without_reading_tool_installs() {
    with_temp_ns(|admin, ns| async move {
        fleetforge_core::crds::install(&admin).await.unwrap();
        let (client, requests) = shared().counting_client().await.unwrap();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let runtime = fleetforge_runtime::Runtime::new(Default::default(), stopping);
        let namespace = ns.clone();
        tokio::spawn(async move {
            let clusters = Informer::new(Api::<Cluster>::namespaced(client.clone(), &namespace));
            tokio::select! {
                () = fleetforge_tools::profile::run::<Cluster>(&runtime, client, &clusters, Some(namespace.clone())) => {}
                () = clusters.clone().run() => {}
            }
        });
        let clusters: Api<Cluster> = Api::namespaced(admin.clone(), &ns);
        for i in 0..5 {
            ready_cluster(&clusters, &format!("plain-{i}"), None).await;
        }
        ready_cluster(&clusters, "tooled", Some("dev")).await;
        let installs: Api<ToolInstall> = Api::namespaced(admin.clone(), &ns);
        let made = await_condition(
            &installs,
            "tooled-profile",
            "the profile ToolInstall",
            WAIT,
            |ti: Option<&ToolInstall>| ti.is_some(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(made.spec.tool_set_ref.unwrap().name, "dev");

        // The profile goes: so does its ToolInstall.
        clusters
            .patch(
                "tooled",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"profile": null}})),
            )
            .await
            .unwrap();
        await_condition(
            &installs,
            "tooled-profile",
            "the profile ToolInstall to go",
            WAIT,
            |ti: Option<&ToolInstall>| ti.is_none(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reads = requests.count(&http::Method::GET, "/toolinstalls/");
        assert_eq!(
            reads,
            0,
            "ToolInstalls read one by one: {:?}",
            requests.all()
        );
        let _ = stop.send(true);
    })
    .await;
}
