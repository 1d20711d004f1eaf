//! The built controller managing AKS clusters through fleetforge's typed ARM
//! client, against the in-process ARM fake (no AKS emulator exists; the fake
//! does ARM's asynchronous operations and AKS's provisioning states):
//! create, Ready with status from AKS's answers, scale, upgrade (control
//! plane, then the pool), a pool resized out of band detected and
//! corrected, delete; the client secret appears nowhere.

use std::time::Duration;

use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_e2e::{
    Controller, assert_nowhere, assert_rate_limited, await_cluster, await_event, create_account,
    in_sync, install, service_account_kubeconfig,
};
use fleetforge_provider_azure_aks::fake::{CLIENT_SECRET, FakeAks};
use fleetforge_testenv::{await_condition, shared};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
const RESOURCE_GROUP: &str = "platform-clusters";

fn pool(c: &Cluster) -> Option<(Option<i32>, Option<String>)> {
    let pool = c
        .status
        .as_ref()?
        .node_pools
        .iter()
        .find(|p| p.name == "system")?;
    Some((pool.desired, pool.version.clone()))
}

#[tokio::test]
async fn an_aks_cluster_lives_scales_upgrades_is_corrected_and_goes() {
    install();
    let fake = FakeAks::start(Duration::from_millis(500)).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let endpoint = fake.url().to_string();
    let fake = &fake;
    shared()
        .with_temp_ns(|client, ns| async move {
            let kubeconfig = service_account_kubeconfig(shared(), &client, &ns, &work.path().join("sa.kubeconfig")).await;
            let controller = Controller::start(&kubeconfig, &ns, &work.path().join("controller.log"));
            create_account(&client, &ns, "azure", "credentials.json", &fake.secret_json(), json!({
                "endpoint": endpoint,
                "defaults": {"region": "westeurope", "resourceGroup": RESOURCE_GROUP},
            }))
            .await;

            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            let cluster: Cluster = serde_json::from_value(json!({
                "metadata": {"name": "analytics"},
                "spec": {
                    "providerConfigRef": {"name": format!("{ns}-azure")},
                    "version": "1.30",
                    "nodePools": [{"name": "system", "machineType": "Standard_D4s_v5", "min": 1, "max": 5, "desired": 2}],
                    "provider": {"azure": {"resourceGroup": RESOURCE_GROUP, "dnsPrefix": "analytics"}},
                },
            }))
            .unwrap();
            clusters.create(&PostParams::default(), &cluster).await.unwrap();

            let ready = await_cluster(&clusters, "analytics", "analytics Ready", &controller, |c| in_sync(c) && pool(c).is_some()).await;
            let status = ready.status.clone().unwrap();
            assert_eq!(status.provider.as_deref(), Some("azure"));
            assert_eq!(status.region.as_deref(), Some("westeurope"));
            assert!(status.version.as_deref().is_some_and(|v| v.starts_with("1.30")), "{status:?}");
            assert!(status.endpoint.is_some_and(|e| e.starts_with("https://")));
            assert!(Api::<Secret>::namespaced(client.clone(), &ns).get("analytics-kubeconfig").await.is_ok(), "the connection Secret is written");

            // Scale, then upgrade the control plane and the pool.
            clusters
                .patch("analytics", &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodePools": [
                    {"name": "system", "machineType": "Standard_D4s_v5", "min": 1, "max": 5, "desired": 3}
                ]}})))
                .await
                .unwrap();
            await_cluster(&clusters, "analytics", "system scaled to 3", &controller, |c| in_sync(c) && pool(c).is_some_and(|p| p.0 == Some(3))).await;
            clusters
                .patch("analytics", &PatchParams::default(), &Patch::Merge(json!({"spec": {"version": "1.31"}})))
                .await
                .unwrap();
            let upgraded = await_cluster(&clusters, "analytics", "analytics and its pool at 1.31", &controller, |c| {
                in_sync(c)
                    && c.status.as_ref().and_then(|s| s.version.as_deref()).is_some_and(|v| v.starts_with("1.31"))
                    && pool(c).and_then(|p| p.1).is_some_and(|v| v.starts_with("1.31"))
            })
            .await;
            assert!(upgraded.status.is_some());

            // A pool resized out of band: detected and corrected.
            assert!(fake.set_pool_count(RESOURCE_GROUP, "analytics", "system", 1));
            await_event(&client, &ns, "DriftDetected", "nodePools[system].desired: spec 3, actual 1", &controller).await;
            await_cluster(&clusters, "analytics", "system back at 3", &controller, |c| pool(c).is_some_and(|p| p.0 == Some(3))).await;

            // The client secret is in no log, event or status.
            let secret_part = CLIENT_SECRET;
            assert_nowhere(&client, &ns, "analytics", &work.path().join("controller.log"), secret_part).await;

            clusters.delete("analytics", &DeleteParams::default()).await.unwrap();
            let gone = await_condition(&clusters, "analytics", "analytics to be deleted", WAIT, |c: Option<&Cluster>| c.is_none()).await;
            assert!(gone.is_ok(), "{gone:?}\n{}", controller.process.log_tail());
            assert!(!fake.set_pool_count(RESOURCE_GROUP, "analytics", "system", 1), "AKS still has the cluster");
            Api::<ProviderConfig>::all(client.clone()).delete(&format!("{ns}-azure"), &DeleteParams::default()).await.unwrap();
        })
        .await;
}

#[tokio::test]
async fn aks_calls_keep_to_the_account_rate_limit() {
    install();
    let fake = FakeAks::start(Duration::from_millis(200)).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let endpoint = fake.url().to_string();
    let credentials = fake.secret_json();
    shared()
        .with_temp_ns(|client, ns| async move {
            let kubeconfig = service_account_kubeconfig(shared(), &client, &ns, &work.path().join("sa.kubeconfig")).await;
            let controller = Controller::start(&kubeconfig, &ns, &work.path().join("controller.log"));
            create_account(&client, &ns, "azure", "credentials.json", &credentials, json!({
                "endpoint": endpoint,
                "rateLimit": {"qps": 2.0, "burst": 2},
                "defaults": {"region": "westeurope", "resourceGroup": RESOURCE_GROUP},
            }))
            .await;
            assert_rate_limited(
                &client,
                &ns,
                &controller,
                "azure",
                &format!("{ns}-azure"),
                json!({"nodePools": [{"name": "system", "machineType": "Standard_D4s_v5", "min": 1, "max": 3, "desired": 1}]}),
            )
            .await;
            Api::<ProviderConfig>::all(client.clone()).delete(&format!("{ns}-azure"), &DeleteParams::default()).await.unwrap();
        })
        .await;
}
