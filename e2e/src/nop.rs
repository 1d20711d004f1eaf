//! Objects on the `nop` provider, as the controller tests make them.

use fleetforge_api::{Cluster, ProviderConfig, condition};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::Controller;

/// Creates the nop ProviderConfig `name` (poll 2 s) with `spec.nop` = `nop`.
pub async fn provider_config(client: &Client, name: &str, nop: Value) {
    let configs: Api<ProviderConfig> = Api::all(client.clone());
    let config: ProviderConfig = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"provider": "nop", "pollInterval": "2s", "defaults": {"region": "nop-region-1"}, "nop": nop},
    }))
    .unwrap();
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

/// Creates Cluster `namespace/name` on ProviderConfig `config`: one pool
/// of 1 to 3 nodes, 2 wanted.
pub async fn cluster(
    client: &Client,
    namespace: &str,
    name: &str,
    config: &str,
    annotations: Value,
) {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let cluster: Cluster = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "providerConfigRef": {"name": config},
            "version": "1.36",
            "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 2}],
        },
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
}

/// Whether the Cluster says `Ready=True`.
pub fn is_ready(cluster: Option<&Cluster>) -> bool {
    cluster.and_then(|c| c.status.as_ref()).is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True")
    })
}

/// Waits until Cluster `namespace/name` is Ready, panicking with the
/// controller's log when it does not come.
pub async fn await_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    controller: &Controller,
) -> Cluster {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    controller
        .wait_for(
            &clusters,
            name,
            &format!("Cluster {name} to be Ready"),
            is_ready,
        )
        .await
        .expect("a Ready Cluster exists")
}
