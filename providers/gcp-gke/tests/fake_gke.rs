//! The GKE provider against the in-process GKE fake: the official client
//! speaking REST/JSON over plain HTTP to a loopback server, with a real
//! (test-only) service-account key signing its tokens offline.

use std::time::{Duration, Instant};

use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_core::cluster::{ClusterChange, ObservedCluster, differences, plan};
use fleetforge_core::{Credentials, ErrorKind, ExternalClient, ExternalState, Observation};
use fleetforge_provider_gcp_gke::GkeCloud;
use fleetforge_provider_gcp_gke::fake::FakeGke;

/// A key generated for these tests only; no Google account knows it.
const KEY: &[u8] = include_bytes!("fixtures/service-account.json");
const PROJECT: &str = "fleetforge-test";
const REGION: &str = "europe-west1";
const NAME: &str = "projects/fleetforge-test/locations/europe-west1/clusters/c1";

fn config(endpoint: &str) -> ProviderConfig {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "ProviderConfig",
        "metadata": {"name": "gcp"},
        "spec": {
            "provider": "gcp",
            "endpoint": endpoint,
            "defaults": {"region": REGION, "project": PROJECT},
        },
    }))
    .unwrap()
}

fn cluster(spec: serde_json::Value) -> Cluster {
    let mut spec = spec;
    spec["providerConfigRef"] = serde_json::json!({"name": "gcp"});
    serde_json::from_value(serde_json::json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "c1", "namespace": "team-a"},
        "spec": spec,
    }))
    .unwrap()
}

fn c1() -> Cluster {
    cluster(serde_json::json!({
        "version": "1.33",
        "provider": {"gcp": {"releaseChannel": "Regular"}},
        "tags": {"Team": "Platform"},
        "nodePools": [
            {"name": "system", "machineType": "e2-standard-4", "min": 1, "max": 3, "desired": 2},
        ],
    }))
}

async fn setup(delay: Duration) -> (FakeGke, GkeCloud) {
    let fake = FakeGke::start(delay).await.unwrap();
    let cloud = GkeCloud::connect(&config(fake.endpoint()), Credentials::Secret(KEY.to_vec()))
        .await
        .unwrap();
    (fake, cloud)
}

async fn observe(cloud: &GkeCloud, obj: &Cluster) -> Option<Observation<ObservedCluster>> {
    cloud.observe(obj, "c1").await.unwrap()
}

/// Observes until the cluster is `want` (None: gone), or fails with the last state.
async fn wait_for(
    cloud: &GkeCloud,
    obj: &Cluster,
    want: Option<ExternalState>,
) -> Option<Observation<ObservedCluster>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = observe(cloud, obj).await;
        if seen.as_ref().map(|o| o.state.clone()) == want {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {want:?}, last saw {:?}",
            seen.map(|o| o.state)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Plans against what GKE reports, starts the changes and waits for Ready;
/// returns what was planned.
async fn converge_once(cloud: &GkeCloud, obj: &Cluster) -> Vec<ClusterChange> {
    let observed = observe(cloud, obj).await.unwrap().resource;
    let changes = plan(&obj.spec, &observed).unwrap();
    if !changes.is_empty() {
        cloud.update(obj, "c1", &changes).await.unwrap();
        let busy = observe(cloud, obj).await.unwrap().state;
        assert_eq!(busy, ExternalState::Updating, "after {changes:?}");
        wait_for(cloud, obj, Some(ExternalState::Ready)).await;
    }
    changes
}

#[tokio::test]
async fn a_cluster_lives_from_create_through_day_two_to_delete() {
    let (fake, cloud) = setup(Duration::from_millis(150)).await;
    let mut obj = c1();
    assert_eq!(cloud.validate(&obj), Ok(()));
    assert!(observe(&cloud, &obj).await.is_none());

    cloud.create(&obj, "c1").await.unwrap();
    let first = observe(&cloud, &obj).await.unwrap();
    assert_eq!(first.state, ExternalState::Provisioning);
    assert_eq!(first.owner.as_deref(), Some("team-a/c1"));
    assert!(first.connection.is_none());
    let stored = fake.cluster(NAME).unwrap();
    assert_eq!(stored["resourceLabels"]["fleetforge-owner"], "team-a_c1");
    assert_eq!(stored["resourceLabels"]["team"], "platform");
    // The client sends enums by number (REGULAR = 2), which protobuf JSON
    // and so the REST API accept as well as names.
    let channel = &stored["releaseChannel"]["channel"];
    assert!(channel == 2 || channel == "REGULAR", "{channel}");
    assert_eq!(stored["initialClusterVersion"], "1.33");

    let ready = wait_for(&cloud, &obj, Some(ExternalState::Ready))
        .await
        .unwrap();
    assert!(
        ready
            .resource
            .version
            .as_deref()
            .unwrap()
            .starts_with("1.33.")
    );
    assert_eq!(
        ready.resource.endpoint.as_deref(),
        Some("https://203.0.113.7")
    );
    let pool = &ready.resource.node_pools[0];
    assert_eq!(
        (pool.name.as_str(), pool.machine_type.as_str()),
        ("system", "e2-standard-4")
    );
    assert_eq!((pool.min, pool.max, pool.desired), (1, 3, 2));
    let kubeconfig = ready.connection.unwrap().kubeconfig;
    assert!(
        kubeconfig.contains("\"server\": \"https://203.0.113.7\""),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains("\"token\": \"ey"),
        "a signed JWT bearer token"
    );
    assert!(plan(&obj.spec, &ready.resource).unwrap().is_empty());

    // A second pool: added by the plan, after the control plane.
    obj.spec.node_pools.push(
        serde_json::from_value(serde_json::json!(
            {"name": "workers", "machineType": "e2-standard-8", "min": 1, "max": 3, "desired": 1}
        ))
        .unwrap(),
    );
    let changes = converge_once(&cloud, &obj).await;
    assert!(matches!(&changes[..], [ClusterChange::AddNodePool(p)] if p.name == "workers"));

    // Scaling: bounds first, then the size, one GKE operation each.
    obj.spec.node_pools[1].max = 5;
    obj.spec.node_pools[1].desired = Some(3);
    assert!(matches!(
        &converge_once(&cloud, &obj).await[..],
        [ClusterChange::ScaleNodePool { .. }]
    ));
    assert!(matches!(
        &converge_once(&cloud, &obj).await[..],
        [ClusterChange::ScaleNodePool { .. }]
    ));
    let observed = observe(&cloud, &obj).await.unwrap().resource;
    let workers = observed
        .node_pools
        .iter()
        .find(|p| p.name == "workers")
        .unwrap();
    assert_eq!((workers.min, workers.max, workers.desired), (1, 5, 3));
    assert!(converge_once(&cloud, &obj).await.is_empty());

    // Someone resizes the pool in the console: a difference, then corrected.
    fake.set_pool_size(NAME, "workers", 7);
    let observed = observe(&cloud, &obj).await.unwrap().resource;
    let diffs = differences(&obj.spec, &observed);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(
        (
            diffs[0].field.as_str(),
            diffs[0].desired.as_str(),
            diffs[0].actual.as_str()
        ),
        ("nodePools[workers].desired", "3", "7")
    );
    converge_once(&cloud, &obj).await;
    assert!(differences(&obj.spec, &observe(&cloud, &obj).await.unwrap().resource).is_empty());

    // Upgrade: control plane first, then each pool.
    obj.spec.version = Some("1.34".into());
    let changes = converge_once(&cloud, &obj).await;
    assert_eq!(
        changes,
        vec![ClusterChange::UpgradeControlPlane { to: "1.34".into() }]
    );
    let observed = observe(&cloud, &obj).await.unwrap().resource;
    assert!(observed.version.as_deref().unwrap().starts_with("1.34."));
    for _ in 0..2 {
        let changes = converge_once(&cloud, &obj).await;
        assert!(
            matches!(&changes[0], ClusterChange::UpgradeNodePool { to, .. } if to == "1.34"),
            "{changes:?}"
        );
    }
    let observed = observe(&cloud, &obj).await.unwrap().resource;
    assert!(
        observed
            .node_pools
            .iter()
            .all(|p| p.version.as_deref().unwrap().starts_with("1.34."))
    );
    assert!(converge_once(&cloud, &obj).await.is_empty());

    // Removing a pool from the spec removes it from GKE.
    obj.spec.node_pools.pop();
    assert!(
        matches!(&converge_once(&cloud, &obj).await[..], [ClusterChange::RemoveNodePool { pool }] if pool == "workers")
    );
    assert_eq!(
        observe(&cloud, &obj)
            .await
            .unwrap()
            .resource
            .node_pools
            .len(),
        1
    );

    cloud.delete(&obj, "c1").await.unwrap();
    assert_eq!(
        observe(&cloud, &obj).await.unwrap().state,
        ExternalState::Deleting
    );
    wait_for(&cloud, &obj, None).await;
    cloud.delete(&obj, "c1").await.unwrap();
    let calls = fake.requests();
    for expected in [
        "POST /v1/projects/fleetforge-test/locations/europe-west1/clusters",
        "POST /v1/projects/fleetforge-test/locations/europe-west1/clusters/c1/nodePools",
        "POST /v1/projects/fleetforge-test/locations/europe-west1/clusters/c1/nodePools/workers:setAutoscaling",
        "POST /v1/projects/fleetforge-test/locations/europe-west1/clusters/c1/nodePools/workers:setSize",
        "POST /v1/projects/fleetforge-test/locations/europe-west1/clusters/c1:updateMaster",
        "PUT /v1/projects/fleetforge-test/locations/europe-west1/clusters/c1/nodePools/system",
        "DELETE /v1/projects/fleetforge-test/locations/europe-west1/clusters/c1/nodePools/workers",
        "DELETE /v1/projects/fleetforge-test/locations/europe-west1/clusters/c1",
    ] {
        assert!(
            calls.iter().any(|c| c == expected),
            "{expected} not in {calls:#?}"
        );
    }
}

#[tokio::test]
async fn a_cluster_made_elsewhere_is_imported_by_name_without_an_owner() {
    let (fake, cloud) = setup(Duration::ZERO).await;
    fake.put_cluster(
        PROJECT,
        REGION,
        serde_json::json!({
            "name": "legacy",
            "status": "RUNNING",
            "currentMasterVersion": "1.32.9-gke.1",
            "endpoint": "198.51.100.1",
            "masterAuth": {"clusterCaCertificate": "Zm9v"},
            "nodePools": [{
                "name": "default-pool",
                "config": {"machineType": "e2-medium", "imageType": "COS_CONTAINERD"},
                "initialNodeCount": 3,
                "version": "1.32.9-gke.1",
                "status": "RUNNING",
            }],
        }),
    );
    let obj =
        cluster(serde_json::json!({"managementPolicy": "ObserveOnly", "provider": {"gcp": {}}}));
    assert_eq!(cloud.validate(&obj), Ok(()));
    let seen = cloud.observe(&obj, "legacy").await.unwrap().unwrap();
    assert_eq!(seen.state, ExternalState::Ready);
    assert_eq!(seen.owner, None);
    assert_eq!(seen.resource.version.as_deref(), Some("1.32.9-gke.1"));
    let pool = &seen.resource.node_pools[0];
    assert_eq!(
        (pool.name.as_str(), pool.min, pool.max, pool.desired),
        ("default-pool", 3, 3, 3)
    );
    assert!(
        seen.connection
            .unwrap()
            .kubeconfig
            .contains("https://198.51.100.1")
    );
}

#[tokio::test]
async fn throttling_and_outages_are_retryable_and_name_their_wait() {
    let (fake, cloud) = setup(Duration::ZERO).await;
    let obj = c1();
    fake.fail_next(1, 429);
    let error = cloud.observe(&obj, "c1").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Throttled, "{}", error.message);
    assert_eq!(error.retry_after, Some(Duration::from_secs(3)));

    fake.fail_next(1, 503);
    let error = cloud.create(&obj, "c1").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable, "{}", error.message);
    assert!(
        observe(&cloud, &obj).await.is_none(),
        "the failed create made nothing"
    );

    // Nothing listens here: a transport failure.
    let closed = GkeCloud::connect(
        &config("http://127.0.0.1:9"),
        Credentials::Secret(KEY.to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(
        closed.observe(&obj, "c1").await.unwrap_err().kind,
        ErrorKind::Unavailable
    );
}

#[tokio::test]
async fn a_change_while_an_operation_runs_is_retried_later() {
    let (_fake, cloud) = setup(Duration::from_secs(30)).await;
    let obj = c1();
    cloud.create(&obj, "c1").await.unwrap();
    let upgrade = [ClusterChange::UpgradeControlPlane { to: "1.34".into() }];
    let error = cloud.update(&obj, "c1", &upgrade).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Throttled, "{}", error.message);
    assert!(
        error
            .retry_after
            .is_some_and(|d| d >= Duration::from_secs(1))
    );
    assert!(
        error.message.contains("incompatible operation"),
        "{}",
        error.message
    );
    // Creating it again is refused as existing, not as busy.
    assert_eq!(
        cloud.create(&obj, "c1").await.unwrap_err().kind,
        ErrorKind::AlreadyExists
    );
}

#[tokio::test]
async fn validate_wants_a_gcp_block_a_project_and_a_region() {
    let (fake, cloud) = setup(Duration::ZERO).await;
    let field = |obj: &Cluster| cloud.validate(obj).unwrap_err().field;
    let pools = serde_json::json!([{"name": "p", "machineType": "e2-medium", "min": 1, "max": 1}]);
    assert_eq!(
        field(&cluster(serde_json::json!({"nodePools": pools}))),
        "spec.provider.gcp"
    );
    let aws = cluster(serde_json::json!({"nodePools": pools, "provider": {"aws": {
        "roleArn": "arn:aws:iam::123456789012:role/a", "nodeRoleArn": "arn:aws:iam::123456789012:role/b", "subnetIds": ["s"]}}}));
    assert_eq!(field(&aws), "spec.provider.gcp");
    assert_eq!(
        field(&cluster(serde_json::json!({"provider": {"gcp": {}}}))),
        "spec.nodePools"
    );

    let mut bare = config(fake.endpoint());
    bare.spec.defaults = None;
    let bare = GkeCloud::connect(&bare, Credentials::Secret(KEY.to_vec()))
        .await
        .unwrap();
    let refusal = bare
        .validate(&cluster(
            serde_json::json!({"nodePools": pools, "provider": {"gcp": {}}}),
        ))
        .unwrap_err();
    assert_eq!(refusal.field, "spec.provider.gcp.project");
    let refusal = bare
        .validate(&cluster(
            serde_json::json!({"nodePools": pools, "provider": {"gcp": {"project": "my-project"}}}),
        ))
        .unwrap_err();
    assert_eq!(refusal.field, "spec.region");
    let full = cluster(
        serde_json::json!({"region": "us-central1", "nodePools": pools, "provider": {"gcp": {"project": "my-project"}}}),
    );
    assert_eq!(bare.validate(&full), Ok(()));
}

#[tokio::test]
async fn credentials_never_show_in_errors() {
    let (fake, cloud) = setup(Duration::from_secs(30)).await;
    let key: serde_json::Value = serde_json::from_slice(KEY).unwrap();
    let private_key = key["private_key"].as_str().unwrap();
    let secret_line = private_key.lines().nth(1).unwrap();
    let obj = c1();
    let mut messages = Vec::new();
    fake.fail_next(1, 429);
    messages.push(cloud.observe(&obj, "c1").await.unwrap_err().message);
    cloud.create(&obj, "c1").await.unwrap();
    messages.push(cloud.delete(&obj, "c1").await.unwrap_err().message);
    let mut broken = key.clone();
    broken["private_key"] = serde_json::json!(private_key.replace("MII", "XXX"));
    let error = GkeCloud::connect(
        &config(fake.endpoint()),
        Credentials::Secret(broken.to_string().into_bytes()),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, ErrorKind::AuthFailed);
    messages.push(error.message);
    for message in messages {
        assert!(!message.contains(secret_line), "{message}");
        assert!(!message.contains("PRIVATE KEY"), "{message}");
    }
}
