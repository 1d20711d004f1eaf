//! What runs on a target: drift of a release's live objects from its
//! manifest, and the health checks a tool declares.
//!
//! Reads are served from what was read before while it is current: one
//! metadata-only watch per kind and namespace of the releases' objects says
//! which exist and at which resourceVersion, and an object is read in full
//! (a GET) only when it changed since, or to confirm that it is gone. In the
//! steady state drift costs no reads at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;

use fleetforge_api::tool_set::{HealthCheck, HealthCheckKind};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Client, Resource};
use serde_json::Value;

use crate::diff::{differences, identity, manifest_objects};

/// The API resources of one target, discovered once per kind, and its
/// objects as far as the releases are made of them.
pub struct Objects {
    client: Client,
    /// The same target for watches (a read timeout longer than a watch).
    watch_client: Client,
    /// Told when an object compared before changes or goes.
    notify: Option<Notify>,
    resources: Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>,
    /// Metadata watches by kind and namespace (empty for cluster-scoped
    /// kinds), started when a manifest first names them.
    watches: Mutex<HashMap<(GroupVersionKind, String), Watch>>,
}

/// What a metadata-only watch knows of one kind in one namespace.
#[derive(Debug, Default)]
struct Versions {
    /// Listed in full and following changes (false until then, and after
    /// the watch failed, until it has listed again).
    current: bool,
    /// resourceVersion by name, of every object there.
    versions: HashMap<String, String>,
    /// The same, while a (re)started watch lists.
    listing: HashMap<String, String>,
    /// Objects as last read in full (managedFields dropped), by name.
    read: HashMap<String, Value>,
}

impl Versions {
    /// The object as last read, if nothing changed it since.
    fn unchanged(&self, name: &str) -> Option<Value> {
        if !self.current {
            return None;
        }
        let version = self.versions.get(name)?;
        let read = self.read.get(name)?;
        (read
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            == Some(version.as_str()))
        .then(|| read.clone())
    }

    /// Takes in what the watch says; true when an object compared before
    /// has changed or gone since (a drift check is due).
    fn follow(
        &mut self,
        event: Result<watcher::Event<PartialObjectMeta<DynamicObject>>, watcher::Error>,
    ) -> bool {
        let identity = |meta: &PartialObjectMeta<DynamicObject>| {
            Some((
                meta.metadata.name.clone()?,
                meta.metadata.resource_version.clone()?,
            ))
        };
        match event {
            Ok(watcher::Event::Init) => {
                self.listing.clear();
                false
            }
            Ok(watcher::Event::InitApply(meta)) => {
                if let Some((name, version)) = identity(&meta) {
                    self.listing.insert(name, version);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                self.versions = std::mem::take(&mut self.listing);
                let versions = &self.versions;
                self.read.retain(|name, _| versions.contains_key(name));
                self.current = true;
                false
            }
            Ok(watcher::Event::Apply(meta)) => {
                let Some((name, version)) = identity(&meta) else {
                    return false;
                };
                let changed = self
                    .read
                    .get(&name)
                    .is_some_and(|read| changed_beyond_status(read, &meta.metadata));
                self.versions.insert(name, version);
                changed
            }
            Ok(watcher::Event::Delete(meta)) => {
                let Some((name, _)) = identity(&meta) else {
                    return false;
                };
                self.versions.remove(&name);
                self.read.remove(&name).is_some()
            }
            Err(_) => {
                self.current = false;
                false
            }
        }
    }
}

/// The least time between two notifications from one watch: a change is
/// told at once, later ones within the gap once at its end, so an object
/// rewritten many times a second does not make a pass of every change.
const NEWS_GAP: Duration = Duration::from_secs(2);

/// Leading-edge notifications at most once per gap, with the last change
/// within a gap told at its end (never lost).
#[derive(Debug)]
struct Throttle {
    gap: Duration,
    quiet_until: Option<tokio::time::Instant>,
    held: Option<tokio::time::Instant>,
}

impl Throttle {
    fn new(gap: Duration) -> Self {
        Self {
            gap,
            quiet_until: None,
            held: None,
        }
    }

    /// A change: true when it is to be told now, else it is held until
    /// the gap ends.
    fn now(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        match self.quiet_until {
            Some(until) if now < until => {
                self.held.get_or_insert(until);
                false
            }
            _ => {
                self.quiet_until = Some(now + self.gap);
                true
            }
        }
    }

    /// When a held change is to be told.
    fn held(&self) -> Option<tokio::time::Instant> {
        self.held
    }

    /// The held change was told.
    fn released(&mut self) {
        self.held = None;
        self.quiet_until = Some(tokio::time::Instant::now() + self.gap);
    }
}

/// Whether `now` changed the object `read` in more than its status: its
/// generation (the spec, for kinds that have one), labels or annotations,
/// or anything at all for kinds without a generation.
fn changed_beyond_status(read: &Value, now: &kube::api::ObjectMeta) -> bool {
    let before = read.get("metadata").unwrap_or(&Value::Null);
    let text = |key: &str| before.get(key).and_then(Value::as_str);
    if text("resourceVersion") == now.resource_version.as_deref() {
        return false;
    }
    let generation = before.get("generation").and_then(Value::as_i64);
    if generation.is_none() || generation != now.generation {
        return true;
    }
    let map = |value: Option<&Value>| {
        value
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}))
    };
    let as_value = |m: &Option<std::collections::BTreeMap<String, String>>| {
        serde_json::to_value(m.clone().unwrap_or_default()).unwrap_or(Value::Null)
    };
    map(before.get("labels")) != as_value(&now.labels)
        || map(before.get("annotations")) != as_value(&now.annotations)
}

/// A metadata-only watch. It ends at its first error (and is started again
/// when next needed), and stops when dropped with its target's connection.
struct Watch {
    versions: Arc<Mutex<Versions>>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a watch says that a compared object changed: the channel and the
/// target's key (`namespace/name` of the Cluster or VirtualCluster).
pub type Notify = (tokio::sync::mpsc::UnboundedSender<String>, String);

impl Watch {
    fn start(api: Api<PartialObjectMeta<DynamicObject>>, notify: Option<Notify>) -> Self {
        let versions = Arc::new(Mutex::new(Versions::default()));
        let followed = versions.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
            let mut news = Throttle::new(NEWS_GAP);
            let tell = || {
                if let Some((changes, target)) = &notify {
                    let _ = changes.send(target.clone());
                }
            };
            loop {
                let held = news.held();
                let event = tokio::select! {
                    event = events.next() => event,
                    () = tokio::time::sleep_until(held.unwrap_or_else(tokio::time::Instant::now)), if held.is_some() => {
                        news.released();
                        tell();
                        continue;
                    }
                };
                let Some(event) = event else { break };
                let failed = event.is_err();
                let changed = followed.lock().expect("versions").follow(event);
                if changed && news.now() {
                    tell();
                }
                // What happened meanwhile is unknown: end, and let the next
                // drift check start afresh (reading in full until then).
                if failed {
                    if news.held().is_some() {
                        tell();
                    }
                    break;
                }
            }
        });
        Self { versions, task }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").finish_non_exhaustive()
    }
}

impl Objects {
    /// Objects of the target `client` talks to; `watch_client` is the same
    /// target with a read timeout fit for watches; `notify` is told when an
    /// object compared before changes or goes.
    pub fn new(client: Client, watch_client: Client, notify: Option<Notify>) -> Self {
        Self {
            client,
            watch_client,
            notify,
            resources: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
        }
    }

    /// What the watch of `gvk` in `namespace` (empty: cluster-scoped)
    /// knows; the watch is started on first use.
    fn versions(
        &self,
        gvk: &GroupVersionKind,
        namespace: &str,
        resource: &ApiResource,
    ) -> Arc<Mutex<Versions>> {
        let key = (gvk.clone(), namespace.to_string());
        let mut watches = self.watches.lock().expect("watches");
        // A watch that failed has ended: start again with a fresh list.
        if watches.get(&key).is_some_and(|w| w.task.is_finished()) {
            watches.remove(&key);
        }
        watches
            .entry(key)
            .or_insert_with(|| {
                let api = match namespace {
                    "" => Api::all_with(self.watch_client.clone(), resource),
                    namespace => {
                        Api::namespaced_with(self.watch_client.clone(), namespace, resource)
                    }
                };
                Watch::start(api, self.notify.clone())
            })
            .versions
            .clone()
    }

    /// The client of the target.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn resource(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, ApiCapabilities), kube::Error> {
        if let Some(found) = self.resources.lock().expect("resources").get(gvk) {
            return Ok(found.clone());
        }
        let found = kube::discovery::pinned_kind(&self.client, gvk).await?;
        self.resources
            .lock()
            .expect("resources")
            .insert(gvk.clone(), found.clone());
        Ok(found)
    }

    /// The differences between a release and what runs: objects of its
    /// manifest deleted or holding other values in fields the chart sets,
    /// and objects of its chart's `crds/` deleted (only their presence is
    /// checked: Helm never upgrades them). An object is read only when its
    /// watch says it changed (or is gone, to be sure); what was compared is
    /// kept for the health checks, and the reads made are counted.
    pub async fn drift(
        &self,
        manifest: &str,
        crds: &str,
        namespace: &str,
    ) -> Result<Drift, kube::Error> {
        let mut drift = Drift::default();
        let crds = if crds.trim().is_empty() {
            Vec::new()
        } else {
            manifest_objects(crds)
        };
        let objects = manifest_objects(manifest)
            .into_iter()
            .map(|object| (object, true))
            .chain(crds.into_iter().map(|object| (object, false)));
        for (object, compared) in objects {
            let Some((gvk, name, object_namespace)) = identity(&object) else {
                continue;
            };
            let (resource, capabilities) = self.resource(&gvk).await?;
            let (api, key_namespace): (Api<DynamicObject>, &str) = match capabilities.scope {
                Scope::Cluster => (Api::all_with(self.client.clone(), &resource), ""),
                Scope::Namespaced => {
                    let ns = object_namespace.as_deref().unwrap_or(namespace);
                    (Api::namespaced_with(self.client.clone(), ns, &resource), ns)
                }
            };
            let label = format!("{}/{name}", gvk.kind);
            let versions = self.versions(&gvk, key_namespace, &resource);
            let known = versions.lock().expect("versions").unchanged(&name);
            let live = match known {
                Some(live) => Some(live),
                None => {
                    drift.reads += 1;
                    tracing::debug!(object = %label, namespace = key_namespace, "reading in full: changed, unknown or gone");
                    let read = api.get_opt(&name).await?.map(|live| {
                        let mut live = serde_json::to_value(&live).unwrap_or(Value::Null);
                        if let Some(meta) = live.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            meta.remove("managedFields");
                        }
                        live
                    });
                    if let Some(live) = &read {
                        versions
                            .lock()
                            .expect("versions")
                            .read
                            .insert(name.clone(), live.clone());
                    }
                    read
                }
            };
            match live {
                None if compared => drift.found.push(format!("{label}: deleted")),
                None => {
                    drift
                        .found
                        .push(format!("{label}: deleted (from the chart's crds/)"));
                    drift.missing_crds.push(object);
                }
                Some(live) => {
                    if compared {
                        for difference in differences(&object, &live) {
                            drift.found.push(format!("{label} {difference}"));
                        }
                    }
                    drift.seen.0.insert(
                        (gvk.kind.clone(), key_namespace.to_string(), name.clone()),
                        live,
                    );
                }
            }
        }
        Ok(drift)
    }

    /// Creates again the objects of a chart's `crds/` that are gone: Helm
    /// applies them at install only, so an upgrade would not.
    pub async fn restore(&self, objects: &[Value]) -> Result<(), kube::Error> {
        for object in objects {
            let Some((gvk, _, object_namespace)) = identity(object) else {
                continue;
            };
            let (resource, capabilities) = self.resource(&gvk).await?;
            let api: Api<DynamicObject> = match (capabilities.scope, object_namespace) {
                (Scope::Namespaced, Some(namespace)) => {
                    Api::namespaced_with(self.client.clone(), &namespace, &resource)
                }
                _ => Api::all_with(self.client.clone(), &resource),
            };
            let wanted: DynamicObject =
                serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
            match api.create(&kube::api::PostParams::default(), &wanted).await {
                Ok(_) => {}
                // Put back meanwhile (by someone, or an earlier pass).
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Why the tool is not healthy yet, one reason per failing check (empty
    /// when every check passes), and how many objects had to be read: an
    /// object the drift check has just read is not read again.
    pub async fn unhealthy(
        &self,
        checks: &[HealthCheck],
        namespace: &str,
        seen: &Seen,
    ) -> Result<(Vec<String>, u64), kube::Error> {
        let mut reasons = Vec::new();
        let mut reads = 0;
        for check in checks {
            let ns = match check.kind {
                HealthCheckKind::CustomResourceDefinition => "",
                _ => check.namespace.as_deref().unwrap_or(namespace),
            };
            let name = check.name.as_str();
            let kind = match check.kind {
                HealthCheckKind::Deployment => "Deployment",
                HealthCheckKind::StatefulSet => "StatefulSet",
                HealthCheckKind::DaemonSet => "DaemonSet",
                HealthCheckKind::CustomResourceDefinition => "CustomResourceDefinition",
            };
            let known = seen.get(kind, ns, name);
            if known.is_none() {
                reads += 1;
            }
            let verdict = match check.kind {
                HealthCheckKind::Deployment => read::<Deployment>(&self.client, ns, name, known)
                    .await?
                    .map(|d| deployment_ready(&d)),
                HealthCheckKind::StatefulSet => read::<StatefulSet>(&self.client, ns, name, known)
                    .await?
                    .map(|s| stateful_set_ready(&s)),
                HealthCheckKind::DaemonSet => read::<DaemonSet>(&self.client, ns, name, known)
                    .await?
                    .map(|d| daemon_set_ready(&d)),
                HealthCheckKind::CustomResourceDefinition => match known {
                    Some(value) => serde_json::from_value(value.clone()).ok(),
                    None => {
                        Api::<CustomResourceDefinition>::all(self.client.clone())
                            .get_opt(name)
                            .await?
                    }
                }
                .map(|c| crd_established(&c)),
            };
            match verdict {
                None => reasons.push(format!("{:?} {name} does not exist", check.kind)),
                Some(Err(why)) => reasons.push(format!("{:?} {name}: {why}", check.kind)),
                Some(Ok(())) => {}
            }
        }
        Ok((reasons, reads))
    }
}

/// What a drift check found.
#[derive(Debug, Default)]
pub struct Drift {
    /// The differences, one line each (`Deployment/web: deleted`).
    pub found: Vec<String>,
    /// What was compared, for the health checks.
    pub seen: Seen,
    /// Reads of the target made for it.
    pub reads: u64,
    /// Objects of the chart's `crds/` that are gone, to be created again.
    pub missing_crds: Vec<Value>,
}

/// Objects read from a target in this pass, by kind, namespace (empty for
/// cluster-scoped kinds) and name.
#[derive(Debug, Default)]
pub struct Seen(HashMap<(String, String, String), Value>);

impl Seen {
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.0
            .get(&(kind.to_string(), namespace.to_string(), name.to_string()))
    }
}

/// The object as already read, else as read now.
async fn read<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    known: Option<&Value>,
) -> Result<Option<K>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    if let Some(value) = known
        && let Ok(object) = serde_json::from_value(value.clone())
    {
        return Ok(Some(object));
    }
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
}

fn deployment_ready(deployment: &Deployment) -> Result<(), String> {
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    if status.observed_generation < deployment.metadata.generation {
        return Err("the rollout is not observed yet".into());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < wanted || available < wanted {
        return Err(format!(
            "{available} of {wanted} replicas available, {updated} updated"
        ));
    }
    Ok(())
}

fn stateful_set_ready(set: &StatefulSet) -> Result<(), String> {
    let wanted = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = set.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < wanted {
        return Err(format!("{ready} of {wanted} replicas ready"));
    }
    if status.current_revision != status.update_revision {
        return Err("an update is rolling out".into());
    }
    Ok(())
}

fn daemon_set_ready(set: &DaemonSet) -> Result<(), String> {
    let status = set.status.clone().unwrap_or_default();
    if status.number_ready < status.desired_number_scheduled {
        return Err(format!(
            "{} of {} pods ready",
            status.number_ready, status.desired_number_scheduled
        ));
    }
    Ok(())
}

fn crd_established(crd: &CustomResourceDefinition) -> Result<(), String> {
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    if established {
        Ok(())
    } else {
        Err("not established".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(name: &str, version: &str) -> PartialObjectMeta<DynamicObject> {
        use kube::core::PartialObjectMetaExt;
        kube::api::ObjectMeta {
            name: Some(name.into()),
            resource_version: Some(version.into()),
            ..Default::default()
        }
        .into_response_partial()
    }

    fn read(name: &str, version: &str) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": version}, "spec": {"replicas": 1}})
    }

    #[tokio::test(start_paused = true)]
    async fn news_is_told_at_once_then_at_most_once_per_gap_and_never_lost() {
        let gap = Duration::from_secs(2);
        let mut news = Throttle::new(gap);
        let start = tokio::time::Instant::now();
        assert!(news.now(), "the first change is told at once");
        assert_eq!(news.held(), None);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(!news.now(), "within the gap: held");
        assert!(!news.now(), "and again: still one held");
        assert_eq!(news.held(), Some(start + gap));
        tokio::time::advance(Duration::from_millis(1500)).await;
        news.released();
        assert_eq!(news.held(), None);
        assert!(!news.now(), "a new gap began with the release");
        tokio::time::advance(gap).await;
        news.released();
        tokio::time::advance(gap).await;
        assert!(news.now(), "after a quiet gap, told at once again");
    }

    #[test]
    fn an_object_read_before_is_reused_only_while_its_watch_says_it_is_unchanged_and_a_change_is_news()
     {
        use watcher::Event;
        let mut versions = Versions::default();
        versions.read.insert("web".into(), read("web", "5"));
        // Until the watch has listed, nothing is trusted.
        assert_eq!(versions.unchanged("web"), None);
        versions.follow(Ok(Event::Init));
        versions.follow(Ok(Event::InitApply(meta("web", "5"))));
        versions.follow(Ok(Event::InitApply(meta("api", "7"))));
        assert_eq!(versions.unchanged("web"), None);
        versions.follow(Ok(Event::InitDone));
        assert_eq!(versions.unchanged("web"), Some(read("web", "5")));
        // Never read in full: read it.
        assert_eq!(versions.unchanged("api"), None);

        // Changed since it was read: read again, and a drift check is due;
        // a change to what no drift check compared is not a reason.
        assert!(versions.follow(Ok(Event::Apply(meta("web", "9")))));
        assert_eq!(versions.unchanged("web"), None);
        assert!(!versions.follow(Ok(Event::Apply(meta("api", "8")))));
        versions.read.insert("web".into(), read("web", "9"));
        assert_eq!(versions.unchanged("web"), Some(read("web", "9")));

        // A failed watch is not trusted until it has listed again; what
        // was not listed again is forgotten.
        versions.follow(Err(watcher::Error::NoResourceVersion));
        assert_eq!(versions.unchanged("web"), None);
        versions.follow(Ok(Event::Init));
        versions.follow(Ok(Event::InitApply(meta("api", "7"))));
        versions.follow(Ok(Event::InitDone));
        assert_eq!(versions.unchanged("web"), None);
        assert!(versions.read.is_empty());

        // Only its status changed (same generation, labels, annotations):
        // read again when next compared, but no reason for a pass.
        versions.read.insert(
            "api".into(),
            json!({"metadata": {"name": "api", "resourceVersion": "8", "generation": 1, "labels": {"app": "api"}}}),
        );
        let mut status_only = meta("api", "10");
        status_only.metadata.generation = Some(1);
        status_only.metadata.labels = Some([("app".to_string(), "api".to_string())].into());
        assert!(!versions.follow(Ok(Event::Apply(status_only.clone()))));
        let mut relabelled = status_only.clone();
        relabelled.metadata.resource_version = Some("11".into());
        relabelled.metadata.labels = None;
        assert!(versions.follow(Ok(Event::Apply(relabelled))));
        let mut respecified = status_only;
        respecified.metadata.resource_version = Some("12".into());
        respecified.metadata.generation = Some(2);
        assert!(versions.follow(Ok(Event::Apply(respecified))));

        // Deleted: gone from both, and a drift check is due.
        versions.read.insert("api".into(), read("api", "12"));
        assert_eq!(versions.unchanged("api"), Some(read("api", "12")));
        assert!(versions.follow(Ok(Event::Delete(meta("api", "13")))));
        assert_eq!(versions.unchanged("api"), None);
        assert!(versions.read.is_empty());
    }

    #[test]
    fn a_deployment_is_ready_when_every_replica_is_updated_and_available() {
        let mut deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 1},
        }))
        .unwrap();
        assert_eq!(
            deployment_ready(&deployment).unwrap_err(),
            "1 of 2 replicas available, 2 updated"
        );
        deployment.status.as_mut().unwrap().available_replicas = Some(2);
        assert!(deployment_ready(&deployment).is_ok());
        deployment.metadata.generation = Some(3);
        assert!(deployment_ready(&deployment).is_err());
    }
}
