//! `spec.profile` of Clusters and VirtualClusters: one naming a ToolSet gets
//! a ToolInstall of that set, owned by it, once it is Ready; it goes when
//! the profile is removed or the owner is deleted.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use fleetforge_api::{Cluster, ToolInstall, VirtualCluster, condition, label};
use fleetforge_core::conditions;
use fleetforge_runtime::informer::Informer;
use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// The field manager of profile ToolInstalls (their spec belongs to the
/// Cluster's profile, not to the ToolInstall reconciler).
const FIELD_MANAGER: &str = "fleetforge-profile";

/// Label on a profile ToolInstall naming its Cluster.
pub use fleetforge_api::label::PROFILE_OF;

/// The name of the ToolInstall a profile creates for its owner.
pub fn install_name(cluster: &str) -> String {
    format!("{cluster}-profile")
}

/// What a profile owner offers.
pub trait Profiled:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The name of the profile controller of this kind (metrics, logs).
    const CONTROLLER: &'static str;
    /// `spec.profile`.
    fn profile(&self) -> Option<&str>;
    /// Whether the Ready condition holds.
    fn ready(&self) -> bool;
    /// The ToolInstall targets naming this object.
    fn targets(&self) -> Value;
}

impl Profiled for Cluster {
    const CONTROLLER: &'static str = "ClusterProfile";

    fn profile(&self) -> Option<&str> {
        self.spec.profile.as_deref()
    }

    fn ready(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, condition::READY))
    }

    fn targets(&self) -> Value {
        json!({"clusterNames": [self.name_any()]})
    }
}

impl Profiled for VirtualCluster {
    const CONTROLLER: &'static str = "VirtualClusterProfile";

    fn profile(&self) -> Option<&str> {
        self.spec.profile.as_deref()
    }

    fn ready(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, condition::READY))
    }

    fn targets(&self) -> Value {
        json!({"virtualClusterNames": [self.name_any()]})
    }
}

/// What every reconcile shares: the client, and the profile ToolInstalls
/// as the watch last saw them, so that deciding whether one exists costs
/// no request.
struct Context {
    client: Client,
    installs: Store<ToolInstall>,
    listed: fleetforge_runtime::ready::Gate,
}

/// Runs until the process stops, for the objects of kind `K` the
/// process's informer `objects` follows (its runner runs it).
pub async fn run<K: Profiled>(
    runtime: &fleetforge_runtime::Runtime,
    client: Client,
    objects: &Informer<K>,
    namespace: Option<String>,
) {
    let store = objects.store();
    let events = objects
        .subscribe()
        .changes_by(profile_hash::<K>, |_: &K| {});
    // Only profile ToolInstalls (labelled with their owner), metadata and
    // all: a deleted one is made again by its owner's next pass.
    let (installs, install_writer) = reflector::store::<ToolInstall>();
    let (listed_opener, listed) = fleetforge_runtime::ready::gate();
    let install_events = watcher(
        fleetforge_core::watch::scoped::<ToolInstall>(&client, namespace.as_deref()),
        watcher::Config::default().labels(PROFILE_OF).any_semantic(),
    )
    .default_backoff()
    .modify(|ti: &mut ToolInstall| ti.managed_fields_mut().clear())
    .reflect(install_writer)
    .inspect(listed_opener.on_listed())
    .touched_objects()
    .predicate_filter(
        |ti: &ToolInstall| Some(u64::from(ti.metadata.deletion_timestamp.is_some())),
        Default::default(),
    );
    let context = Arc::new(Context {
        client,
        listed,
        installs,
    });
    let controller = Controller::for_shared_stream(events, store).owns_stream(install_events);
    runtime
        .run(K::CONTROLLER, controller, context, reconcile::<K>)
        .await;
}

fn profile_hash<K: Profiled>(object: &K) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    object.profile().hash(&mut hasher);
    object.ready().hash(&mut hasher);
    object.meta().deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

async fn reconcile<K: Profiled>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let installs: Api<ToolInstall> = Api::namespaced(ctx.client.clone(), &namespace);
    let install = install_name(&name);
    // The cache is complete once its first list is in; before, every
    // profile ToolInstall would look missing.
    if !ctx.listed.wait().await {
        return Ok(Action::await_change());
    }
    let existing = ctx
        .installs
        .get(&ObjectRef::new(&install).within(&namespace));
    match (object.profile(), object.meta().deletion_timestamp.is_some()) {
        (Some(profile), false) => {
            // Created once the owner is Ready; kept (and kept in step with
            // the profile) afterwards, even while it is not Ready, so that
            // its status shows the target as UNKNOWN.
            if object.ready() || existing.is_some() {
                installs
                    .patch(
                        &install,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(desired(&*object, profile)),
                    )
                    .await?;
            }
        }
        _ => {
            if let Some(existing) = existing
                && existing.labels().get(PROFILE_OF) == Some(&name)
                && existing.metadata.deletion_timestamp.is_none()
            {
                match installs.delete(&install, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(Action::await_change())
}

/// The profile ToolInstall of `object`.
pub fn desired<K: Profiled>(object: &K, profile: &str) -> Value {
    let name = object.name_any();
    let owner = object.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "ToolInstall",
        "metadata": {
            "name": install_name(&name),
            "labels": {
                label::MANAGED_BY: "fleetforge",
                label::INSTANCE: name,
                PROFILE_OF: name,
            },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "toolSetRef": {"name": profile},
            "targets": object.targets(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_install_targets_its_cluster_and_is_owned_by_it() {
        let cluster: Cluster = serde_json::from_value(json!({
            "metadata": {"name": "dev-1", "namespace": "platform", "uid": "u-1"},
            "spec": {"providerConfigRef": {"name": "local"}, "profile": "dev"},
        }))
        .unwrap();
        let install = desired(&cluster, "dev");
        assert_eq!(install["metadata"]["name"], "dev-1-profile");
        assert_eq!(install["spec"]["toolSetRef"]["name"], "dev");
        assert_eq!(install["spec"]["targets"]["clusterNames"], json!(["dev-1"]));
        let owner = &install["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Cluster");
        assert_eq!(owner["uid"], "u-1");
        assert_eq!(owner["controller"], true);
        assert_eq!(install["metadata"]["labels"][PROFILE_OF], "dev-1");
        let typed: ToolInstall = serde_json::from_value(install).unwrap();
        assert_eq!(typed.spec.max_concurrency, 5);
    }
}
