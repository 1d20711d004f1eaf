//! Which shard each target is in, and the labels that let replicas watch
//! only their shards.
//!
//! A Cluster is in its ProviderConfig's shard: one replica then holds an
//! account's rate limit and counts its users whole, at the price of an
//! account being the smallest unit replicas share (see the README). A
//! VirtualCluster is in the shard of its own namespace and name. A
//! ToolTarget is in its target's shard, so a replica's ToolTargets find
//! their targets in its own caches.
//!
//! The replica that watches the whole fleet writes [`SHARD_LABEL`] on every
//! Cluster and VirtualCluster whose label is missing or wrong (the
//! ToolInstall controller writes it on ToolTargets as it makes them): the
//! other replicas' watches select by it.

use std::sync::Arc;

use fleetforge_api::{Cluster, VirtualCluster};
use fleetforge_runtime::informer::{Change, Informer};
use fleetforge_runtime::shards::{SHARD_LABEL, shard_of};
use futures::{Stream, StreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::watch::Informers;

/// What a Cluster's shard is computed from: its account.
pub fn cluster_key(cluster: &Cluster) -> &str {
    &cluster.spec.provider_config_ref.name
}

/// What a VirtualCluster's shard is computed from: itself.
pub fn virtual_cluster_key(vc: &VirtualCluster) -> String {
    format!("{}/{}", vc.namespace().unwrap_or_default(), vc.name_any())
}

/// Attempts at one label before waiting for the object's next change.
const ATTEMPTS: u32 = 5;

/// Keeps [`SHARD_LABEL`] right on every Cluster and VirtualCluster the
/// (whole-fleet) `informers` see, until their streams end.
pub async fn label(client: Client, informers: &Informers, count: u32) {
    tokio::join!(
        label_kind(client.clone(), &informers.clusters, count, |c: &Cluster| {
            cluster_key(c).to_string()
        }),
        label_kind(
            client,
            &informers.virtual_clusters,
            count,
            virtual_cluster_key
        ),
    );
}

async fn label_kind<K>(
    client: Client,
    informer: &Arc<Informer<K>>,
    count: u32,
    key: fn(&K) -> String,
) where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let changes = informer.subscribe().into_stream();
    label_changes(client, changes, count, key).await;
}

async fn label_changes<K>(
    client: Client,
    changes: impl Stream<Item = Change<K>>,
    count: u32,
    key: fn(&K) -> String,
) where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut changes = std::pin::pin!(changes);
    while let Some(change) = changes.next().await {
        let Change::Applied(obj) = change else {
            continue;
        };
        let shard = shard_of(&key(&obj), count).to_string();
        if obj.labels().get(SHARD_LABEL) == Some(&shard) || obj.meta().deletion_timestamp.is_some()
        {
            continue;
        }
        let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"labels": {SHARD_LABEL: shard}}});
        for attempt in 1..=ATTEMPTS {
            match api
                .patch(
                    &obj.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                // Gone meanwhile: nothing to label.
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 404 => break,
                Err(e) => {
                    tracing::warn!(
                        kind = %K::kind(&K::DynamicType::default()),
                        name = %obj.name_any(),
                        attempt,
                        "labelling the object's shard: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}
