//! fleetforge's finalizer on the kinds whose controllers clean up outside
//! the object (ToolInstalls, VirtualClusters, Environments): added by
//! server-side apply under the controller's field manager, so it is ours
//! alone, and removed by a merge patch that keeps everyone else's.

use std::fmt::Debug;

use fleetforge_api::{FIELD_MANAGER, FINALIZER};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Whether `obj` carries fleetforge's finalizer.
pub fn has<K: Resource>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds fleetforge's finalizer to `obj` unless it is there.
pub async fn ensure<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    ensure_named(api, obj, FINALIZER).await
}

/// Adds the finalizer `name` (one of fleetforge's) to `obj` unless it is
/// there.
pub async fn ensure_named<K>(api: &Api<K>, obj: &K, name: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    if obj.finalizers().iter().any(|f| f == name) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"finalizers": [name]},
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Removes fleetforge's finalizer from `obj`, keeping any others.
pub async fn remove<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    remove_named(api, obj, FINALIZER).await
}

/// Removes the finalizer `name` from `obj`, keeping any others.
pub async fn remove_named<K>(api: &Api<K>, obj: &K, name: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let others: Vec<&String> = obj.finalizers().iter().filter(|f| *f != name).collect();
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": others}})),
    )
    .await?;
    Ok(())
}
