//! The built controller managing EKS clusters on moto (a real AWS
//! emulator in server mode, on loopback), under its own RBAC: create with a
//! node group, Ready with the cloud's own values in status, scale, a node
//! group changed out of band through the AWS SDK detected and corrected,
//! delete; and the credentials planted in the Secret appear nowhere. A
//! second test holds six clusters to the account's rate limit.
//!
//! moto does not implement UpdateClusterVersion or UpdateNodegroupVersion;
//! those two go to a loopback stub in front of moto that speaks the EKS wire
//! format for them (`fleetforge_testenv::eks_upgrades`), so the upgrade is
//! exercised too: control plane first, then the node group.

use std::time::Duration;

use aws_sdk_eks::types::NodegroupScalingConfig;
use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_core::Credentials;
use fleetforge_e2e::{
    Controller, assert_nowhere, assert_rate_limited, await_cluster, await_event, create_account,
    in_sync, install, service_account_kubeconfig,
};
use fleetforge_provider_aws_eks::EksCloud;
use fleetforge_testenv::eks_upgrades::EksUpgradeStub;
use fleetforge_testenv::moto::Moto;
use fleetforge_testenv::{await_condition, shared};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Planted in the credentials Secret; must never show up anywhere else.
const PLANTED: &str = "planted-secret-value-7f3a9c";

fn credentials() -> String {
    json!({"aws_access_key_id": "AKIAFLEETFORGETEST", "aws_secret_access_key": PLANTED}).to_string()
}

fn pool_desired(cluster: &Cluster) -> Option<i32> {
    cluster
        .status
        .as_ref()?
        .node_pools
        .iter()
        .find(|p| p.name == "workers")
        .and_then(|p| p.desired)
}

#[tokio::test]
async fn an_eks_cluster_on_moto_lives_scales_is_corrected_and_goes() {
    install();
    let moto = Moto::start().expect("moto runs from .tools/venv");
    let stub = EksUpgradeStub::start(moto.url(), Duration::from_secs(2))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let endpoint = stub.url().to_string();
    shared()
        .with_temp_ns(|client, ns| async move {
            let kubeconfig = service_account_kubeconfig(shared(), &client, &ns, &work.path().join("sa.kubeconfig")).await;
            let controller = Controller::start(&kubeconfig, &ns, &work.path().join("controller.log"));

            let config = create_account(&client, &ns, "aws", "credentials", &credentials(), json!({
                "endpoint": endpoint,
                "pollInterval": "2s",
                "defaults": {"region": "us-east-1"},
            }))
            .await;

            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            let cluster: Cluster = serde_json::from_value(json!({
                "metadata": {"name": "prod-1"},
                "spec": {
                    "providerConfigRef": {"name": format!("{ns}-aws")},
                    "version": "1.30",
                    "nodePools": [{"name": "workers", "machineType": "m5.large", "min": 1, "max": 5, "desired": 2}],
                    "provider": {"aws": {
                        "roleArn": "arn:aws:iam::123456789012:role/eks-cluster",
                        "nodeRoleArn": "arn:aws:iam::123456789012:role/eks-nodes",
                        "subnetIds": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
                    }},
                },
            }))
            .unwrap();
            clusters.create(&PostParams::default(), &cluster).await.unwrap();

            // Ready, with the node group, and status from EKS's answers.
            let ready = await_cluster(&clusters, "prod-1", "prod-1 Ready with its node group", &controller, |c| {
                pool_desired(c) == Some(2) && in_sync(c)
            })
            .await;
            let status = ready.status.clone().unwrap();
            assert_eq!(status.provider.as_deref(), Some("aws"));
            assert_eq!(status.region.as_deref(), Some("us-east-1"));
            assert_eq!(status.version.as_deref(), Some("1.30"));
            assert!(status.endpoint.is_some_and(|e| e.starts_with("https://")));
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let connection = secrets.get("prod-1-kubeconfig").await.unwrap();
            let kubeconfig = String::from_utf8(connection.data.unwrap()["value"].0.clone()).unwrap();
            assert!(kubeconfig.contains("k8s-aws-v1."), "an in-process EKS token");

            // Scale through the spec.
            clusters
                .patch("prod-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodePools": [
                    {"name": "workers", "machineType": "m5.large", "min": 1, "max": 5, "desired": 3}
                ]}})))
                .await
                .unwrap();
            await_cluster(&clusters, "prod-1", "workers scaled to 3", &controller, |c| {
                pool_desired(c) == Some(3) && c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation
            })
            .await;

            // Upgrade: the control plane first, then the node group.
            clusters
                .patch("prod-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"version": "1.31"}})))
                .await
                .unwrap();
            let upgraded = await_cluster(&clusters, "prod-1", "prod-1 and its node group at 1.31", &controller, |c| {
                c.status.as_ref().is_some_and(|s| {
                    s.version.as_deref() == Some("1.31")
                        && s.node_pools.iter().all(|p| p.version.as_deref() == Some("1.31"))
                        && s.observed_generation == c.metadata.generation
                })
            })
            .await;
            assert_eq!(upgraded.status.unwrap().phase, Some(fleetforge_api::ClusterPhase::Ready));
            let steps: Vec<String> = Api::<Event>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("UpdatingExternalResource"))
                .filter_map(|e| e.note)
                .collect();
            assert!(steps.iter().any(|n| n == "upgrade the control plane to 1.31"), "{steps:?}");
            assert!(steps.iter().any(|n| n == "upgrade node pool workers to 1.31"), "{steps:?}");

            // Out of band, through the AWS SDK: detected and corrected.
            let cloud = EksCloud::connect(&config, Credentials::Secret(credentials().into_bytes())).await.unwrap();
            cloud
                .client("us-east-1")
                .update_nodegroup_config()
                .cluster_name("prod-1")
                .nodegroup_name("workers")
                .scaling_config(NodegroupScalingConfig::builder().min_size(1).max_size(5).desired_size(1).build())
                .send()
                .await
                .unwrap();
            await_event(&client, &ns, "DriftDetected", "nodePools[workers].desired: spec 3, actual 1", &controller).await;
            let group = cloud
                .client("us-east-1")
                .describe_nodegroup()
                .cluster_name("prod-1")
                .nodegroup_name("workers");
            let mut corrected = None;
            for _ in 0..60 {
                corrected = group.clone().send().await.unwrap().nodegroup.and_then(|g| g.scaling_config?.desired_size);
                if corrected == Some(3) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert_eq!(corrected, Some(3), "the node group was not scaled back");

            // The planted credential is in no log, event or status.
            assert_nowhere(&client, &ns, "prod-1", &work.path().join("controller.log"), PLANTED).await;

            // Delete: node groups, then the cluster, then the object.
            clusters.delete("prod-1", &DeleteParams::default()).await.unwrap();
            let gone = await_condition(&clusters, "prod-1", "prod-1 to be deleted", Duration::from_secs(90), |c: Option<&Cluster>| c.is_none()).await;
            assert!(gone.is_ok(), "{gone:?}\n{}", controller.process.log_tail());
            let left = cloud.client("us-east-1").list_clusters().send().await.unwrap();
            assert!(left.clusters().is_empty(), "EKS still lists {:?}", left.clusters());
            Api::<ProviderConfig>::all(client.clone())
                .delete(&format!("{ns}-aws"), &DeleteParams::default())
                .await
                .unwrap();
        })
        .await;
    drop(stub);
    drop(moto);
}

#[tokio::test]
async fn eks_calls_keep_to_the_account_rate_limit() {
    install();
    let moto = Moto::start().expect("moto runs from .tools/venv");
    let work = tempfile::tempdir().unwrap();
    let endpoint = moto.url().to_string();
    shared()
        .with_temp_ns(|client, ns| async move {
            let kubeconfig = service_account_kubeconfig(
                shared(),
                &client,
                &ns,
                &work.path().join("sa.kubeconfig"),
            )
            .await;
            let controller =
                Controller::start(&kubeconfig, &ns, &work.path().join("controller.log"));
            // Two calls a second for the whole account, polled every second
            // by six clusters: without the limit they would make 6+ a second.
            create_account(
                &client,
                &ns,
                "aws",
                "credentials",
                &credentials(),
                json!({
                    "endpoint": endpoint,
                    "rateLimit": {"qps": 2.0, "burst": 2},
                    "defaults": {"region": "us-east-1"},
                }),
            )
            .await;
            assert_rate_limited(
                &client,
                &ns,
                &controller,
                "aws",
                &format!("{ns}-aws"),
                json!({"provider": {"aws": {
                    "roleArn": "arn:aws:iam::123456789012:role/eks-cluster",
                    "nodeRoleArn": "arn:aws:iam::123456789012:role/eks-nodes",
                    "subnetIds": ["subnet-0a1b2c3d"],
                }}}),
            )
            .await;
            Api::<ProviderConfig>::all(client.clone())
                .delete(&format!("{ns}-aws"), &DeleteParams::default())
                .await
                .unwrap();
        })
        .await;
    drop(moto);
}
