//! The AKS provider against the in-process ARM fake (no engine, no
//! Kubernetes): create, scale, out-of-band changes, pools added and removed,
//! upgrades, delete, import, throttling, and secrets kept out of errors.

use std::time::Duration;

use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_core::cluster::{ClusterChange, FieldDiff, ObservedCluster, differences, plan};
use fleetforge_core::{Credentials, ErrorKind, ExternalClient, ExternalState, Observation};
use fleetforge_provider_azure_aks::fake::{CLIENT_SECRET, FakeAks, Fault};
use fleetforge_provider_azure_aks::{AksCloud, OWNER_TAG};
use serde_json::json;

const RG: &str = "rg1";
const SETTLE: Duration = Duration::from_millis(300);

fn cluster(version: &str, pools: serde_json::Value) -> Cluster {
    serde_json::from_value(json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "c1", "namespace": "team-a"},
        "spec": {
            "providerConfigRef": {"name": "azure"},
            "region": "westeurope",
            "version": version,
            "nodePools": pools,
            "tags": {"team": "a"},
            "provider": {"azure": {"resourceGroup": RG}},
        },
    }))
    .expect("a valid Cluster")
}

fn system(max: i32, desired: i32) -> serde_json::Value {
    json!({"name": "system", "machineType": "Standard_D4s_v5", "min": 1, "max": max, "desired": desired})
}

fn config(endpoint: &str) -> ProviderConfig {
    serde_json::from_value(json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "ProviderConfig",
        "metadata": {"name": "azure"},
        "spec": {
            "provider": "azure",
            "endpoint": endpoint,
            "credentials": {"source": "Secret", "secretRef": {"namespace": "fleetforge-system", "name": "azure", "key": "credentials"}},
        },
    }))
    .expect("a valid ProviderConfig")
}

async fn start() -> (FakeAks, AksCloud) {
    let fake = FakeAks::start(SETTLE).await.expect("the fake starts");
    let cloud = AksCloud::connect(
        &config(fake.url()),
        Credentials::Secret(fake.secret_json().into_bytes()),
    )
    .expect("connect");
    (fake, cloud)
}

async fn observe(cloud: &AksCloud, obj: &Cluster, name: &str) -> Observation<ObservedCluster> {
    cloud
        .observe(obj, name)
        .await
        .expect("observe")
        .expect("the cluster exists")
}

/// Observes until `done` holds, for at most 10 s.
async fn wait_for(
    cloud: &AksCloud,
    obj: &Cluster,
    name: &str,
    what: &str,
    done: impl Fn(&Option<Observation<ObservedCluster>>) -> bool,
) -> Option<Observation<ObservedCluster>> {
    let mut last = None;
    for _ in 0..100 {
        last = cloud.observe(obj, name).await.expect("observe");
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last seen {last:?}");
}

async fn wait_ready(cloud: &AksCloud, obj: &Cluster) -> Observation<ObservedCluster> {
    wait_for(cloud, obj, "c1", "Ready", |o| {
        o.as_ref().is_some_and(|o| o.state == ExternalState::Ready)
    })
    .await
    .expect("the cluster exists")
}

fn pool(seen: &Observation<ObservedCluster>, name: &str) -> (i32, i32, i32, Option<String>) {
    let pool = seen
        .resource
        .node_pools
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("pool {name} in {:?}", seen.resource.node_pools));
    (pool.min, pool.max, pool.desired, pool.version.clone())
}

#[tokio::test]
async fn an_aks_cluster_lives_scales_drifts_upgrades_and_goes() {
    let (fake, cloud) = start().await;
    let obj = cluster("1.30", json!([system(3, 2)]));
    assert_eq!(cloud.validate(&obj), Ok(()));

    // Create: every spec pool at once, the first as the System pool.
    assert!(cloud.observe(&obj, "c1").await.unwrap().is_none());
    cloud.create(&obj, "c1").await.expect("create");
    let operation = fake
        .last_async_operation()
        .expect("an Azure-AsyncOperation");
    assert_eq!(
        cloud.arm().operation_status(&operation).await.unwrap(),
        "InProgress"
    );
    let seen = observe(&cloud, &obj, "c1").await;
    assert_eq!(seen.state, ExternalState::Provisioning);
    assert_eq!(seen.owner.as_deref(), Some("team-a/c1"));
    assert!(seen.connection.is_none());
    let again = cloud.create(&obj, "c1").await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::AlreadyExists, "{}", again.message);

    let seen = wait_ready(&cloud, &obj).await;
    assert_eq!(
        cloud.arm().operation_status(&operation).await.unwrap(),
        "Succeeded"
    );
    assert_eq!(seen.resource.version.as_deref(), Some("1.30.3"));
    let endpoint = seen.resource.endpoint.clone().expect("an endpoint");
    assert!(endpoint.starts_with("https://c1-"), "{endpoint}");
    let kubeconfig = seen.connection.clone().expect("a kubeconfig").kubeconfig;
    assert!(kubeconfig.contains(&endpoint), "{kubeconfig}");
    assert_eq!(pool(&seen, "system"), (1, 3, 2, Some("1.30.3".into())));
    assert_eq!(differences(&obj.spec, &seen.resource), vec![]);
    assert_eq!(plan(&obj.spec, &seen.resource), Ok(vec![]));

    // Scale through the plan.
    let obj = cluster("1.30", json!([system(5, 3)]));
    let changes = plan(&obj.spec, &seen.resource).unwrap();
    assert_eq!(
        changes,
        vec![ClusterChange::ScaleNodePool {
            pool: "system".into(),
            min: 1,
            max: 5,
            desired: Some(3)
        }]
    );
    cloud.update(&obj, "c1", &changes).await.expect("scale");
    assert_eq!(
        observe(&cloud, &obj, "c1").await.state,
        ExternalState::Updating
    );
    // A second change while the pool scales: busy, retried later.
    let busy = cloud.update(&obj, "c1", &changes).await.unwrap_err();
    assert_eq!(busy.kind, ErrorKind::Unavailable, "{}", busy.message);
    assert!(busy.retry_after.is_some());
    assert!(
        busy.message.contains("OperationNotAllowed"),
        "{}",
        busy.message
    );
    let seen = wait_ready(&cloud, &obj).await;
    assert_eq!(pool(&seen, "system"), (1, 5, 3, Some("1.30.3".into())));

    // Someone scales the pool out of band: seen, and corrected.
    assert!(fake.set_pool_count(RG, "c1", "system", 1));
    let seen = observe(&cloud, &obj, "c1").await;
    assert_eq!(
        differences(&obj.spec, &seen.resource),
        vec![FieldDiff::new("nodePools[system].desired", 3, 1)]
    );
    let changes = plan(&obj.spec, &seen.resource).unwrap();
    cloud.update(&obj, "c1", &changes).await.expect("correct");
    let seen = wait_ready(&cloud, &obj).await;
    assert_eq!(pool(&seen, "system").2, 3);

    // Add a pool the autoscaler manages.
    let with_gpu = cluster(
        "1.30",
        json!([system(5, 3), {"name": "gpu", "machineType": "Standard_NC6s_v3", "min": 0, "max": 2}]),
    );
    let changes = plan(&with_gpu.spec, &seen.resource).unwrap();
    assert_eq!(
        changes,
        vec![ClusterChange::AddNodePool(
            with_gpu.spec.node_pools[1].clone()
        )]
    );
    cloud.update(&with_gpu, "c1", &changes).await.expect("add");
    assert_eq!(
        observe(&cloud, &with_gpu, "c1").await.state,
        ExternalState::Updating
    );
    let seen = wait_ready(&cloud, &with_gpu).await;
    assert_eq!(pool(&seen, "gpu"), (0, 2, 0, Some("1.30.3".into())));
    assert_eq!(plan(&with_gpu.spec, &seen.resource), Ok(vec![]));

    // Remove it: the cluster is Updating, never Deleting.
    let changes = plan(&obj.spec, &seen.resource).unwrap();
    assert_eq!(
        changes,
        vec![ClusterChange::RemoveNodePool { pool: "gpu".into() }]
    );
    cloud.update(&obj, "c1", &changes).await.expect("remove");
    assert_eq!(
        observe(&cloud, &obj, "c1").await.state,
        ExternalState::Updating
    );
    let seen = wait_ready(&cloud, &obj).await;
    assert_eq!(seen.resource.node_pools.len(), 1, "{:?}", seen.resource);

    // Upgrade: the control plane alone, then the pool.
    let next = cluster("1.31", json!([system(5, 3)]));
    let changes = plan(&next.spec, &seen.resource).unwrap();
    assert_eq!(
        changes,
        vec![ClusterChange::UpgradeControlPlane { to: "1.31".into() }]
    );
    cloud.update(&next, "c1", &changes).await.expect("upgrade");
    assert_eq!(
        observe(&cloud, &next, "c1").await.state,
        ExternalState::Updating
    );
    let seen = wait_ready(&cloud, &next).await;
    assert_eq!(seen.resource.version.as_deref(), Some("1.31.3"));
    assert_eq!(
        pool(&seen, "system").3.as_deref(),
        Some("1.30.3"),
        "the pool stays pinned"
    );
    let changes = plan(&next.spec, &seen.resource).unwrap();
    assert_eq!(
        changes,
        vec![ClusterChange::UpgradeNodePool {
            pool: "system".into(),
            to: "1.31".into()
        }]
    );
    cloud
        .update(&next, "c1", &changes)
        .await
        .expect("upgrade the pool");
    let seen = wait_ready(&cloud, &next).await;
    assert_eq!(pool(&seen, "system"), (1, 5, 3, Some("1.31.3".into())));
    assert_eq!(plan(&next.spec, &seen.resource), Ok(vec![]));

    // Delete: Deleting, then gone; again is fine.
    cloud.delete(&next, "c1").await.expect("delete");
    assert_eq!(
        observe(&cloud, &next, "c1").await.state,
        ExternalState::Deleting
    );
    wait_for(&cloud, &next, "c1", "the cluster gone", Option::is_none).await;
    cloud
        .delete(&next, "c1")
        .await
        .expect("delete a missing cluster");
}

#[tokio::test]
async fn a_cluster_made_elsewhere_is_imported_without_an_owner() {
    let (_fake, cloud) = start().await;
    let body = json!({
        "location": "westeurope",
        "tags": {"team": "b"},
        "properties": {
            "dnsPrefix": "legacy",
            "kubernetesVersion": "1.29",
            "agentPoolProfiles": [{"name": "nodes", "mode": "System", "vmSize": "Standard_D2s_v5", "count": 2}],
        },
    });
    cloud
        .arm()
        .put_cluster(RG, "legacy", &body, true)
        .await
        .expect("PUT out of band");
    let obj = cluster("1.29", json!([]));
    let seen = wait_for(&cloud, &obj, "legacy", "Ready", |o| {
        o.as_ref().is_some_and(|o| o.state == ExternalState::Ready)
    })
    .await
    .expect("the cluster exists");
    assert_eq!(seen.owner, None);
    assert!(!seen.owner.iter().any(|o| o.contains(OWNER_TAG)));
    assert_eq!(pool(&seen, "nodes"), (2, 2, 2, Some("1.29.3".into())));
}

#[tokio::test]
async fn throttling_and_server_errors_map_to_retryable_kinds() {
    let (fake, cloud) = start().await;
    let obj = cluster("1.30", json!([system(3, 2)]));
    fake.fail_next(1, Fault::Throttle(7));
    let error = cloud.observe(&obj, "c1").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Throttled, "{}", error.message);
    assert_eq!(error.retry_after, Some(Duration::from_secs(7)));

    fake.fail_next(1, Fault::ServerError);
    let error = cloud.create(&obj, "c1").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable, "{}", error.message);

    // The faults are used up.
    assert!(cloud.observe(&obj, "c1").await.unwrap().is_none());

    // A pool on a cluster that does not exist.
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
        error.message.contains("PUT agentPool rg1/missing/system"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn wrong_credentials_fail_as_auth_failed_without_the_secret() {
    let fake = FakeAks::start(SETTLE).await.unwrap();
    let wrong = "Wr0ng~secret~value~that~must~not~leak";
    let secret = fake.secret_json().replace(CLIENT_SECRET, wrong);
    assert!(secret.contains(wrong));
    let cloud = AksCloud::connect(
        &config(fake.url()),
        Credentials::Secret(secret.into_bytes()),
    )
    .unwrap();
    let obj = cluster("1.30", json!([system(3, 2)]));
    let error = cloud.observe(&obj, "c1").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::AuthFailed, "{}", error.message);
    assert!(error.message.contains("AADSTS7000215"), "{}", error.message);
    assert!(!error.message.contains(wrong), "{}", error.message);
    assert!(!format!("{cloud:?}").contains(wrong));

    // Nothing listens on the endpoint.
    drop(fake);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let secret = json!({"tenantId": "t", "clientId": "c", "clientSecret": wrong, "subscriptionId": "s", "authorityHost": closed});
    let cloud = AksCloud::connect(
        &config(&closed),
        Credentials::Secret(secret.to_string().into_bytes()),
    )
    .unwrap();
    let error = cloud.observe(&obj, "c1").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable, "{}", error.message);
    assert!(!error.message.contains(wrong), "{}", error.message);
}
