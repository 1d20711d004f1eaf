//! Status written by server-side apply, and only when it differs from
//! what is stored: a pass that changes nothing writes nothing.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Applies `status` to object `name` of `api` as `field_manager` unless it
/// equals `stored`; true when it wrote.
pub async fn apply_if_changed<K, S>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    stored: Option<&S>,
    status: &S,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if stored == Some(status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}
