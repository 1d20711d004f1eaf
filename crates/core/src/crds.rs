//! Installs the fleetforge CustomResourceDefinitions into a cluster.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

/// Applies every CRD (server-side apply) and waits until each is
/// established, so objects of those kinds can be created right after.
pub async fn install(client: &Client) -> Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(fleetforge_api::FIELD_MANAGER).force();
    for crd in fleetforge_api::crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
    }
    for crd in fleetforge_api::crds() {
        let name = crd.name_any();
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        // A CRD that never establishes is reported by the first request using it.
        let _ = tokio::time::timeout(Duration::from_secs(30), established).await;
    }
    // Established is not yet discoverable: the API server publishes new
    // resources in its discovery documents a moment later, and a client
    // (kubectl) that reads discovery in between caches a list without them.
    let wanted = fleetforge_api::crds().len();
    let version = format!("{}/{}", fleetforge_api::GROUP, fleetforge_api::VERSION);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let served = client
            .list_api_group_resources(&version)
            .await
            .map(|list| {
                list.resources
                    .iter()
                    .filter(|r| !r.name.contains('/'))
                    .count()
            })
            .unwrap_or(0);
        let grouped = client.list_api_groups().await.is_ok_and(|groups| {
            groups
                .groups
                .iter()
                .any(|g| g.name == fleetforge_api::GROUP)
        });
        if (served >= wanted && grouped) || tokio::time::Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
