//! VirtualClusters on a real local host Cluster, through the built
//! controller under its RBAC: the (stand-in) vcluster chart becomes a real
//! Helm release on the host; once the syncer stand-in has written
//! `vc-<name>`, the VirtualCluster is Ready and its connection Secret
//! reaches a real API server; deleting it uninstalls the release, removes
//! the namespace and the Secret. What is simulated is said in
//! `e2e/src/vcluster.rs`.

use std::time::Duration;

use fleetforge_api::virtual_cluster::VirtualClusterPhase;
use fleetforge_api::{ToolInstall, ToolState, VirtualCluster};
use fleetforge_e2e::local::{
    Cleanup, apply, chart as local_chart, delete_clusters, helm, release_names, start,
    target_client,
};
use fleetforge_e2e::vcluster::{SyncerStandIn, host_with_syncer};
use fleetforge_e2e::{await_event, install, workspace_root};
use fleetforge_testenv::{await_condition, shared};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

#[tokio::test]
async fn a_virtual_cluster_comes_up_on_its_host_and_goes_without_a_trace() {
    install();
    let work = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(work.path().to_path_buf());
    shared()
        .with_temp_ns(|client, ns| async move {
            let controller = start(&client, &ns, work.path()).await;
            let (host_kubeconfig, _syncer) = host_with_syncer(&client, &ns, "host", work.path(), &controller).await;

            let chart = workspace_root().join("e2e/charts/vcluster");
            let set = format!("inside-{ns}");
            apply(
                &client,
                None,
                json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolSet",
                    "metadata": {"name": set},
                    "spec": {"tools": [
                        {"name": "widgets", "chart": local_chart("widgets")},
                        {"name": "cache", "chart": local_chart("cache"), "dependsOn": ["widgets"],
                         "health": [{"kind": "Deployment", "name": "cache"}]},
                    ]},
                }),
            )
            .await;
            apply(
                &client,
                Some(&ns),
                json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "VirtualCluster",
                    "metadata": {"name": "team-a"},
                    "spec": {
                        "host": {"clusterRef": {"name": "host"}},
                        "chart": {"repository": chart.display().to_string(), "name": "vcluster", "version": "0.1.0"},
                        "values": {"controlPlane": {"statefulSet": {"highAvailability": {"replicas": 1}}}},
                        // widgets comes from the host; cache is installed inside.
                        "sharedTools": ["widgets", "ingress-nginx"],
                        "profile": set,
                    },
                }),
            )
            .await;
            let api: Api<VirtualCluster> = Api::namespaced(client.clone(), &ns);
            let vc = controller.wait_for(&api, "team-a", "the virtual cluster to be Ready", |vc: Option<&VirtualCluster>| {
                vc.and_then(|v| v.status.as_ref()).is_some_and(|s| s.phase == Some(VirtualClusterPhase::Ready))
            }).await.unwrap();
            let status = vc.status.unwrap();
            assert_eq!(status.host.as_deref(), Some("host"));
            assert_eq!(status.version.as_deref(), Some("0.1.0"));
            assert!(status.endpoint.as_deref().unwrap_or_default().starts_with("https://127.0.0.1:"), "{status:?}");
            await_event(&client, &ns, "Installed", "installed the vcluster chart 0.1.0 into vcluster-team-a on host", &controller).await;

            // A real release on the host, with the declared values.
            assert_eq!(release_names(&host_kubeconfig), ["team-a"]);

            // The connection Secret reaches the virtual cluster's own API:
            // a namespace made there is not on the host.
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let secret = secrets.get("team-a-kubeconfig").await.unwrap();
            let kubeconfig = work.path().join("team-a.kubeconfig");
            std::fs::write(&kubeconfig, &secret.data.unwrap()["value"].0).unwrap();
            let inside = target_client(&kubeconfig).await;
            let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": "only-inside"}})).unwrap();
            Api::<Namespace>::all(inside.clone()).create(&PostParams::default(), &namespace).await.unwrap();
            let host = target_client(&host_kubeconfig).await;
            assert!(Api::<Namespace>::all(host.clone()).get_opt("only-inside").await.unwrap().is_none());
            assert!(Api::<Namespace>::all(host.clone()).get_opt("vcluster-team-a").await.unwrap().is_some());

            // The profile: cache DEPLOYED inside, widgets SHARED from the
            // host (not installed twice); the chart was told to sync
            // ingresses to the host for the shared ingress controller.
            let installs: Api<ToolInstall> = Api::namespaced(client.clone(), &ns);
            let targets: Api<fleetforge_api::ToolTarget> = Api::namespaced(client.clone(), &ns);
            let target = controller.wait_for(&targets, "team-a-profile-virtualcluster-team-a", "the profile inside the virtual cluster", |tt: Option<&fleetforge_api::ToolTarget>| {
                tt.and_then(|t| t.status.as_ref()).is_some_and(|s| {
                    s.tools.iter().any(|t| t.name == "cache" && t.state == ToolState::Deployed)
                })
            }).await.unwrap();
            assert_eq!(target.spec.target.kind, fleetforge_api::tool_target::TargetKind::VirtualCluster);
            let profile = controller.wait_for(&installs, "team-a-profile", "the profile counted", |ti: Option<&ToolInstall>| {
                ti.and_then(|t| t.status.as_ref()).and_then(|s| s.summary.as_ref()).is_some_and(|s| s.deployed == 1)
            }).await.unwrap();
            let widgets = target.status.as_ref().unwrap().tools.iter().find(|t| t.name == "widgets").unwrap();
            assert_eq!(widgets.state, ToolState::Shared);
            assert_eq!(widgets.message.as_deref(), Some("provided by the host Cluster host"));
            assert_eq!(release_names(&kubeconfig), ["cache"]);
            assert_eq!(profile.status.as_ref().unwrap().summary.as_ref().unwrap().deployed, 1);
            let values = fleetforge_e2e::local::release_values(&host_kubeconfig, "team-a", "vcluster-team-a");
            assert_eq!(values["sync"]["toHost"]["ingresses"]["enabled"], true, "{values}");

            // Deleting uninstalls the release and removes its namespace and
            // the connection Secret.
            api.delete("team-a", &DeleteParams::default()).await.unwrap();
            controller.wait_for(&api, "team-a", "the VirtualCluster to go", |vc: Option<&VirtualCluster>| vc.is_none()).await;
            assert!(release_names(&host_kubeconfig).is_empty());
            assert!(secrets.get_opt("team-a-kubeconfig").await.unwrap().is_none());
            let namespaces: Api<Namespace> = Api::all(host.clone());
            let removed = await_condition(&namespaces, "vcluster-team-a", "the host namespace to go", Duration::from_secs(60), |n: Option<&Namespace>| n.is_none()).await;
            assert!(removed.is_ok(), "{removed:?}");

            delete_clusters(&client, &ns, &["host"]).await;
        })
        .await;
}

/// A VirtualCluster with no host Cluster runs on the management cluster, in
/// its own namespace, installed by the controller as itself: refused by
/// the API server until the namespace grants `fleetforge-vcluster-host`,
/// then Ready; deleting it leaves the namespace and nothing of the vcluster.
#[tokio::test]
async fn a_virtual_cluster_on_the_management_cluster_needs_its_namespace_to_allow_it() {
    install();
    let work = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(work.path().to_path_buf());
    shared()
        .with_temp_ns(|client, ns| async move {
            let controller = start(&client, &ns, work.path()).await;
            let admin = fleetforge_e2e::admin_kubeconfig();
            let _syncer = SyncerStandIn::start(&admin, &work.path().join("virtual")).await;
            let chart = workspace_root().join("e2e/charts/vcluster");
            apply(
                &client,
                Some(&ns),
                json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "VirtualCluster",
                    "metadata": {"name": "beside"},
                    "spec": {"chart": {"repository": chart.display().to_string(), "name": "vcluster", "version": "0.1.0"}},
                }),
            )
            .await;
            let api: Api<VirtualCluster> = Api::namespaced(client.clone(), &ns);
            let refused = controller.wait_for(&api, "beside", "the management cluster to refuse", |vc: Option<&VirtualCluster>| {
                vc.and_then(|v| v.status.as_ref()).is_some_and(|s| s.phase == Some(VirtualClusterPhase::Failed))
            }).await.unwrap();
            let message = &refused.status.unwrap().conditions.iter().find(|c| c.type_ == "Synced").unwrap().message.clone();
            assert!(message.starts_with(&format!("the controller may not install into namespace {ns} of the management cluster")) && message.ends_with("(deploy/rbac/vcluster-host-binding.yaml)"), "{message}");

            // The namespace allows it: bind the role, and nudge the object.
            let binding = json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "fleetforge-vcluster-host"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "fleetforge-vcluster-host"},
                "subjects": [{"kind": "ServiceAccount", "name": "fleetforge", "namespace": ns}],
            });
            Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &ns)
                .patch("fleetforge-vcluster-host", &PatchParams::apply("e2e"), &Patch::Apply(&binding))
                .await
                .unwrap();
            api.patch("beside", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"e2e/retry": "1"}}})))
                .await
                .unwrap();
            let vc = controller.wait_for(&api, "beside", "the virtual cluster to be Ready", |vc: Option<&VirtualCluster>| {
                vc.and_then(|v| v.status.as_ref()).is_some_and(|s| s.phase == Some(VirtualClusterPhase::Ready))
            }).await.unwrap();
            assert_eq!(vc.status.unwrap().host.as_deref(), Some("management"));
            await_event(&client, &ns, "Installed", &format!("installed the vcluster chart 0.1.0 into {ns} on management"), &controller).await;
            let releases: Value = serde_json::from_str(&helm(&admin, &["list", "-n", &ns, "-o", "json"])).unwrap();
            assert_eq!(releases[0]["name"], "beside", "{releases}");
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let kubeconfig = work.path().join("beside.kubeconfig");
            std::fs::write(&kubeconfig, &secrets.get("beside-kubeconfig").await.unwrap().data.unwrap()["value"].0).unwrap();
            target_client(&kubeconfig).await.apiserver_version().await.expect("the virtual cluster answers");
            // No namespace deletion will take the control plane's volume
            // claim here: the StatefulSet is told to delete it with itself.
            let set = Api::<StatefulSet>::namespaced(client.clone(), &ns).get("beside").await.unwrap();
            let retention = set.spec.unwrap().persistent_volume_claim_retention_policy.unwrap();
            assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));

            api.delete("beside", &DeleteParams::default()).await.unwrap();
            controller.wait_for(&api, "beside", "the VirtualCluster to go", |vc: Option<&VirtualCluster>| vc.is_none()).await;
            let releases: Value = serde_json::from_str(&helm(&admin, &["list", "-n", &ns, "-o", "json"])).unwrap();
            assert_eq!(releases, json!([]));
            for name in ["vc-beside", "beside-kubeconfig"] {
                assert!(secrets.get_opt(name).await.unwrap().is_none(), "{name} remains");
            }
            assert!(Api::<Namespace>::all(client.clone()).get_opt(&ns).await.unwrap().is_some(), "the namespace stays");
        })
        .await;
}
