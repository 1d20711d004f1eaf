//! The local provider against real kwokctl clusters (no engine): create,
//! observe, scale, out-of-band damage, restart and delete, and that no
//! process of a deleted cluster is left.

use std::time::Duration;

use fleetforge_api::Cluster;
use fleetforge_core::cluster::{ClusterChange, FieldDiff, ObservedCluster};
use fleetforge_core::{ExternalClient, ExternalState, Observation};
use fleetforge_provider_local::kwokctl::Processes;
use fleetforge_provider_local::{LocalCloud, LocalOptions};
use fleetforge_testenv::{pids_mentioning, tools};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams};

fn cluster(desired: i32, version: Option<&str>) -> Cluster {
    let mut spec = serde_json::json!({
        "providerConfigRef": {"name": "local"},
        "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": desired}],
    });
    if let Some(version) = version {
        spec["version"] = version.into();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "c1", "namespace": "team-a"},
        "spec": spec,
    }))
    .expect("a valid Cluster")
}

async fn observe(cloud: &LocalCloud, obj: &Cluster) -> Observation<ObservedCluster> {
    cloud
        .observe(obj, "c1")
        .await
        .expect("observe")
        .expect("the cluster exists")
}

fn workers(observation: &Observation<ObservedCluster>) -> (i32, Option<i32>) {
    let pool = observation
        .resource
        .node_pools
        .iter()
        .find(|p| p.name == "workers")
        .expect("pool workers");
    (pool.desired, pool.ready)
}

/// Kills what a cluster under `dir` still runs when a test fails half-way
/// (kwokctl's processes outlive the test process).
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in pids_mentioning(&self.0.display().to_string()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[tokio::test]
async fn a_local_cluster_lives_scales_recovers_and_goes() {
    let work = tempfile::tempdir().unwrap();
    let _guard = KillOnDrop(work.path().to_path_buf());
    let options = LocalOptions {
        tools_bin: tools::bin_dir(),
        work_dir: work.path().to_path_buf(),
    };
    let cloud = LocalCloud::new(&options).expect("the tools are installed");
    let obj = cluster(2, None);

    assert!(cloud.observe(&obj, "c1").await.unwrap().is_none());
    cloud.create(&obj, "c1").await.expect("create");

    let seen = observe(&cloud, &obj).await;
    assert_eq!(seen.state, ExternalState::Ready);
    assert_eq!(seen.owner.as_deref(), Some("team-a/c1"));
    assert_eq!(workers(&seen), (2, Some(2)), "two Ready nodes");
    assert!(seen.resource.version.as_deref().unwrap().starts_with("v1."));
    assert!(seen.resource.provider_drift.is_empty());

    // The connection's kubeconfig stands alone and reaches the cluster.
    let kubeconfig = seen.connection.as_ref().unwrap().kubeconfig.clone();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        Some(
            config
                .cluster_url
                .to_string()
                .trim_end_matches('/')
                .to_string()
        ),
        seen.resource.endpoint
    );
    let client = kube::Client::try_from(config).unwrap();
    let nodes: Api<Node> = Api::all(client);
    let node = nodes.get("workers-1").await.unwrap();
    assert_eq!(
        node.metadata.labels.unwrap()["node.kubernetes.io/instance-type"],
        "standard-2"
    );

    // A node deleted out of band shows as a smaller pool; scaling restores it.
    nodes
        .delete("workers-1", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(workers(&observe(&cloud, &obj).await).0, 1);
    let bigger = cluster(3, None);
    cloud
        .update(
            &bigger,
            "c1",
            &[ClusterChange::ScaleNodePool {
                pool: "workers".into(),
                min: 1,
                max: 5,
                desired: Some(3),
            }],
        )
        .await
        .expect("scale");
    assert_eq!(workers(&observe(&cloud, &bigger).await), (3, Some(3)));

    // A relabelled node is drift; correcting it puts the label back.
    let relabel =
        serde_json::json!({"metadata": {"labels": {"node.kubernetes.io/instance-type": "huge"}}});
    nodes
        .patch(
            "workers-0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&relabel),
        )
        .await
        .unwrap();
    let drift = observe(&cloud, &bigger).await.resource.provider_drift;
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].field, "nodePools[workers].nodeLabels");
    cloud
        .update(
            &bigger,
            "c1",
            &[ClusterChange::ProviderSettings { fields: drift }],
        )
        .await
        .expect("relabel");
    assert!(
        observe(&cloud, &bigger)
            .await
            .resource
            .provider_drift
            .is_empty()
    );

    // Stopped out of band: degraded, with the state as drift to correct.
    cloud.kwokctl().stop("c1").await.unwrap();
    let seen = observe(&cloud, &bigger).await;
    assert!(
        matches!(seen.state, ExternalState::Degraded(_)),
        "{:?}",
        seen.state
    );
    assert_eq!(
        seen.resource.provider_drift,
        vec![FieldDiff::new("state", "Running", "Stopped")]
    );
    cloud
        .update(
            &bigger,
            "c1",
            &[ClusterChange::ProviderSettings {
                fields: seen.resource.provider_drift.clone(),
            }],
        )
        .await
        .expect("restart");
    let seen = observe(&cloud, &bigger).await;
    assert_eq!(seen.state, ExternalState::Ready);
    assert_eq!(workers(&seen).0, 3, "the nodes survived the restart");

    // Only the built version is accepted.
    let refusal = cloud.validate(&cluster(2, Some("1.20"))).unwrap_err();
    assert_eq!(refusal.reason, "UnsupportedVersion");
    assert_eq!(refusal.field, "spec.version");

    let pids = cloud.kwokctl().pids("c1");
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok"
    );
    cloud.delete(&bigger, "c1").await.expect("delete");
    assert!(cloud.observe(&bigger, "c1").await.unwrap().is_none());
    assert_eq!(cloud.kwokctl().processes("c1"), Processes::Stopped);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = pids_mentioning(&work.path().display().to_string());
    assert!(
        left.is_empty(),
        "processes of the deleted cluster remain: {left:?}"
    );
}
