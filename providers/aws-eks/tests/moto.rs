//! The EKS provider against moto, a real AWS emulator (no engine, no
//! Kubernetes): create, add and scale a node group, out-of-band changes,
//! import, delete.
//!
//! moto lacks UpdateClusterVersion and UpdateNodegroupVersion, so version
//! upgrades are not exercised here.

use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_core::cluster::{ClusterChange, FieldDiff, ObservedCluster, differences, plan};
use fleetforge_core::{Credentials, ErrorKind, ExternalClient, ExternalState, Observation};
use fleetforge_provider_aws_eks::connection::TOKEN_PREFIX;
use fleetforge_provider_aws_eks::{EksCloud, OWNER_TAG};
use fleetforge_testenv::moto::Moto;

const REGION: &str = "us-east-1";

fn cluster(pools: serde_json::Value) -> Cluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "c1", "namespace": "team-a"},
        "spec": {
            "providerConfigRef": {"name": "aws"},
            "version": "1.30",
            "nodePools": pools,
            "tags": {"team": "a"},
            "provider": {"aws": {
                "roleArn": "arn:aws:iam::123456789012:role/eks",
                "nodeRoleArn": "arn:aws:iam::123456789012:role/nodes",
                "subnetIds": ["subnet-0a", "subnet-0b"],
                "securityGroupIds": ["sg-0a"],
            }},
        },
    }))
    .expect("a valid Cluster")
}

fn workers(min: i32, max: i32, desired: i32) -> serde_json::Value {
    serde_json::json!([{"name": "workers", "machineType": "m7i.large", "min": min, "max": max, "desired": desired}])
}

async fn connect(moto: &Moto) -> EksCloud {
    let config: ProviderConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "ProviderConfig",
        "metadata": {"name": "aws"},
        "spec": {
            "provider": "aws",
            "endpoint": moto.url(),
            "defaults": {"region": REGION},
            "credentials": {"source": "Secret", "secretRef": {"namespace": "fleetforge-system", "name": "aws", "key": "credentials"}},
        },
    }))
    .expect("a valid ProviderConfig");
    let secret = br#"{"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}"#;
    EksCloud::connect(&config, Credentials::Secret(secret.to_vec()))
        .await
        .expect("connect")
}

async fn observe(cloud: &EksCloud, obj: &Cluster, name: &str) -> Observation<ObservedCluster> {
    cloud
        .observe(obj, name)
        .await
        .expect("observe")
        .expect("the cluster exists")
}

fn pool(observation: &Observation<ObservedCluster>) -> (i32, i32, i32, String) {
    let pool = observation
        .resource
        .node_pools
        .iter()
        .find(|p| p.name == "workers")
        .expect("pool workers");
    (pool.min, pool.max, pool.desired, pool.machine_type.clone())
}

#[tokio::test]
async fn an_eks_cluster_lives_scales_drifts_and_goes() {
    let moto = Moto::start().expect("moto starts (run scripts/install-tools)");
    let cloud = connect(&moto).await;
    let obj = cluster(workers(1, 3, 2));
    assert_eq!(cloud.validate(&obj), Ok(()));

    // Create: the control plane only; the pool shows as absent.
    assert!(cloud.observe(&obj, "c1").await.unwrap().is_none());
    cloud.create(&obj, "c1").await.expect("create");
    let seen = observe(&cloud, &obj, "c1").await;
    assert_eq!(
        seen.state,
        ExternalState::Ready,
        "moto makes clusters ACTIVE at once"
    );
    assert_eq!(seen.owner.as_deref(), Some("team-a/c1"));
    assert_eq!(seen.resource.version.as_deref(), Some("1.30"));
    assert!(seen.resource.endpoint.is_some());
    assert!(
        seen.resource.provider_drift.is_empty(),
        "{:?}",
        seen.resource.provider_drift
    );
    let kubeconfig = seen.connection.expect("a kubeconfig").kubeconfig;
    assert!(kubeconfig.contains(TOKEN_PREFIX), "{kubeconfig}");
    assert!(kubeconfig.contains(seen.resource.endpoint.as_deref().unwrap()));
    let changes = plan(&obj.spec, &seen.resource).unwrap();
    assert_eq!(
        changes,
        vec![ClusterChange::AddNodePool(obj.spec.node_pools[0].clone())]
    );

    let again = cloud.create(&obj, "c1").await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::AlreadyExists, "{}", again.message);

    // The token is reused between polls, so the kubeconfig is stable.
    let next = observe(&cloud, &obj, "c1").await;
    assert_eq!(next.connection.unwrap().kubeconfig, kubeconfig);

    // Add the pool through update.
    cloud
        .update(&obj, "c1", &changes)
        .await
        .expect("add the pool");
    let seen = observe(&cloud, &obj, "c1").await;
    assert_eq!(seen.state, ExternalState::Ready);
    assert_eq!(pool(&seen), (1, 3, 2, "m7i.large".to_string()));
    assert_eq!(plan(&obj.spec, &seen.resource), Ok(vec![]));
    let client = cloud.client(REGION);
    let group = client
        .describe_nodegroup()
        .cluster_name("c1")
        .nodegroup_name("workers")
        .send()
        .await
        .unwrap()
        .nodegroup
        .unwrap();
    assert_eq!(group.tags().unwrap()[OWNER_TAG], "team-a/c1");
    assert_eq!(group.tags().unwrap()["team"], "a");
    assert_eq!(group.subnets(), ["subnet-0a", "subnet-0b"]);
    assert_eq!(
        group.node_role(),
        Some("arn:aws:iam::123456789012:role/nodes")
    );
    // Adding it again (a retried call) is not an error.
    cloud.update(&obj, "c1", &changes).await.expect("add again");

    // Scale through the plan.
    let obj = cluster(workers(1, 5, 3));
    let changes = plan(&obj.spec, &seen.resource).unwrap();
    assert_eq!(
        changes,
        vec![ClusterChange::ScaleNodePool {
            pool: "workers".into(),
            min: 1,
            max: 5,
            desired: Some(3)
        }]
    );
    cloud.update(&obj, "c1", &changes).await.expect("scale");
    let seen = observe(&cloud, &obj, "c1").await;
    assert_eq!(pool(&seen), (1, 5, 3, "m7i.large".to_string()));

    // Someone scales the node group out of band: seen, and corrected.
    client
        .update_nodegroup_config()
        .cluster_name("c1")
        .nodegroup_name("workers")
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .min_size(1)
                .max_size(5)
                .desired_size(1)
                .build(),
        )
        .send()
        .await
        .expect("UpdateNodegroupConfig out of band");
    let seen = observe(&cloud, &obj, "c1").await;
    assert_eq!(pool(&seen), (1, 5, 1, "m7i.large".to_string()));
    assert_eq!(
        differences(&obj.spec, &seen.resource),
        vec![FieldDiff::new("nodePools[workers].desired", 3, 1)]
    );
    let changes = plan(&obj.spec, &seen.resource).unwrap();
    cloud.update(&obj, "c1", &changes).await.expect("correct");
    assert_eq!(
        pool(&observe(&cloud, &obj, "c1").await),
        (1, 5, 3, "m7i.large".to_string())
    );

    // Someone closes the public endpoint: provider drift, corrected.
    client
        .update_cluster_config()
        .name("c1")
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .endpoint_public_access(false)
                .endpoint_private_access(true)
                .build(),
        )
        .send()
        .await
        .expect("UpdateClusterConfig out of band");
    let seen = observe(&cloud, &obj, "c1").await;
    assert_eq!(
        seen.resource.provider_drift,
        vec![
            FieldDiff::new("provider.aws.endpointPublicAccess", true, false),
            FieldDiff::new("provider.aws.endpointPrivateAccess", false, true),
        ]
    );
    let changes = plan(&obj.spec, &seen.resource).unwrap();
    assert!(matches!(
        changes.as_slice(),
        [ClusterChange::ProviderSettings { .. }]
    ));
    cloud
        .update(&obj, "c1", &changes)
        .await
        .expect("correct the endpoint");
    let seen = observe(&cloud, &obj, "c1").await;
    assert!(
        seen.resource.provider_drift.is_empty(),
        "{:?}",
        seen.resource.provider_drift
    );

    // Version upgrades (UpgradeControlPlane, UpgradeNodePool) are skipped:
    // moto implements neither UpdateClusterVersion nor
    // UpdateNodegroupVersion.

    // Import a cluster made outside fleetforge: found by name, no owner.
    client
        .create_cluster()
        .name("imported")
        .role_arn("arn:aws:iam::123456789012:role/eks")
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .subnet_ids("subnet-0a")
                .endpoint_public_access(true)
                .build(),
        )
        .send()
        .await
        .expect("CreateCluster out of band");
    let imported = observe(&cloud, &obj, "imported").await;
    assert_eq!(imported.state, ExternalState::Ready);
    assert_eq!(imported.owner, None);
    assert!(imported.resource.node_pools.is_empty());

    // Delete: node groups first, then the cluster, one call at a time.
    cloud
        .delete(&obj, "c1")
        .await
        .expect("delete the node groups");
    let seen = observe(&cloud, &obj, "c1").await;
    assert!(
        seen.resource.node_pools.is_empty(),
        "{:?}",
        seen.resource.node_pools
    );
    assert_ne!(seen.state, ExternalState::Deleting);
    cloud.delete(&obj, "c1").await.expect("delete the cluster");
    assert!(cloud.observe(&obj, "c1").await.unwrap().is_none());
    cloud
        .delete(&obj, "c1")
        .await
        .expect("deleting a missing cluster is Ok");
}

#[tokio::test]
async fn wrong_calls_map_to_error_kinds() {
    let moto = Moto::start().expect("moto starts (run scripts/install-tools)");
    let cloud = connect(&moto).await;
    let obj = cluster(workers(1, 3, 2));
    // A node group on a cluster that does not exist.
    let error = cloud
        .update(
            &obj,
            "missing",
            &[ClusterChange::AddNodePool(obj.spec.node_pools[0].clone())],
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotFound, "{}", error.message);
    assert!(
        error.message.contains("CreateNodegroup missing/workers"),
        "{}",
        error.message
    );

    // Nothing listens on the endpoint.
    let port = fleetforge_testenv::free_port().unwrap();
    let config: ProviderConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "ProviderConfig",
        "metadata": {"name": "aws"},
        "spec": {"provider": "aws", "endpoint": format!("http://127.0.0.1:{port}"), "defaults": {"region": REGION}},
    }))
    .unwrap();
    let secret = b"[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n";
    let closed = EksCloud::connect(&config, Credentials::Secret(secret.to_vec()))
        .await
        .unwrap();
    let error = closed.observe(&obj, "c1").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable, "{}", error.message);
}
