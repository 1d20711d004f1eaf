//! Environments: an on-demand dev environment becomes a VirtualCluster (on
//! a shared host) or a Cluster of its own, owned by the Environment, with the
//! profile's tools; it is deleted when its time to live runs out, can be put
//! to sleep and woken, and a per-owner maximum holds requests back.

use std::sync::Arc;
use std::time::Duration;

use fleetforge_api::cluster::ClusterPhase;
use fleetforge_api::environment::{EnvironmentPhase, EnvironmentStatus, EnvironmentType, Estimate};
use fleetforge_api::virtual_cluster::VirtualClusterPhase;
use fleetforge_api::{
    Cluster, Environment, FIELD_MANAGER, Reference, ToolInstall, VirtualCluster, condition, label,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

mod estimate;

pub use estimate::estimate;

use fleetforge_core::conditions::{self, Desired};
use fleetforge_core::events::{EventType, Recorder};
use fleetforge_core::finalizer;
use fleetforge_core::watch::scoped;
use fleetforge_runtime::Runtime;
use fleetforge_runtime::clients::TargetClients;

/// Label on an Environment's Cluster or VirtualCluster naming it.
pub const ENVIRONMENT_LABEL: &str = "fleetforge.dev/environment";

/// Annotation holding when an environment was last woken (RFC 3339); it
/// restarts the idle clock of `sleepAfter`.
pub const WOKEN_AT: &str = "fleetforge.dev/woken-at";

/// Namespaces whose objects are the cluster's own, not signs of use.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// The field manager of the Clusters and VirtualClusters environments make.
const CHILD_MANAGER: &str = "fleetforge-environment";

/// Settings of the Environment controller.
#[derive(Debug, Clone)]
pub struct EnvironmentOptions {
    /// Only Environments in this namespace (default: all).
    pub namespace: Option<String>,
    /// Environments one owner may have in a namespace at once.
    pub max_per_owner: Option<u32>,
    /// Machine sizes of the providers, for the estimate.
    pub sizes: Arc<dyn fleetforge_core::MachineSizes>,
}

struct Context {
    client: Client,
    recorder: Recorder,
    options: EnvironmentOptions,
    /// Every Environment the controller watches (for the per-owner count).
    environments: reflector::Store<Environment>,
    /// The accounts dedicated environments name (for their provider).
    provider_configs: reflector::Store<fleetforge_api::ProviderConfig>,
    /// Clients into environments, by their kubeconfig.
    inside: Arc<TargetClients>,
}

/// Errors of a pass, retried with the runtime's backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The management API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl fleetforge_runtime::ReconcileError for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesAPIError",
        }
    }
}

/// Runs the Environment controller until the process stops; clients into
/// environments come from `clients`.
pub async fn run(
    runtime: &Runtime,
    client: Client,
    options: EnvironmentOptions,
    clients: Arc<TargetClients>,
) {
    let scope = options.namespace.as_deref();
    let (store, events) = fleetforge_core::watch::changes(scoped::<Environment>(&client, scope));
    let (provider_configs, configs_writer) = reflector::store();
    let configs = watcher(
        Api::<fleetforge_api::ProviderConfig>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(configs_writer)
    .applied_objects()
    .predicate_filter(kube::runtime::predicates::generation, Default::default());
    let naming = store.clone();
    let context = Arc::new(Context {
        provider_configs,
        recorder: Recorder::new(client.clone(), "fleetforge-environments"),
        client: client.clone(),
        options: options.clone(),
        environments: store.clone(),
        inside: clients,
    });
    // A new environment is Ready when its profile is: the child's profile
    // ToolInstall (labelled with the child's name, which is the
    // environment's) wakes it.
    let profile_of = |install: ToolInstall| {
        let name = install.labels().get(label::PROFILE_OF)?.clone();
        Some(reflector::ObjectRef::<Environment>::new(&name).within(&install.namespace()?))
    };
    let controller = Controller::for_stream(events, store)
        .owns(
            scoped::<VirtualCluster>(&client, scope),
            watcher::Config::default(),
        )
        .owns(
            scoped::<Cluster>(&client, scope),
            watcher::Config::default(),
        )
        .watches(
            scoped::<ToolInstall>(&client, scope),
            watcher::Config::default().labels(label::PROFILE_OF),
            profile_of,
        )
        // An account's provider decides its machine sizes: environments
        // naming it are estimated again when it changes.
        .watches_stream(configs, move |config: fleetforge_api::ProviderConfig| {
            let name = config.name_any();
            naming
                .state()
                .into_iter()
                .filter(|env| {
                    env.spec
                        .dedicated
                        .as_ref()
                        .is_some_and(|d| d.provider_config_ref.name == name)
                })
                .map(|env| reflector::ObjectRef::from_obj(&*env))
                .collect::<Vec<_>>()
        });
    runtime
        .run("Environment", controller, context, reconcile)
        .await;
}

/// A Go-style duration (`30m`, `8h`, `1h30m`), with an error that says
/// what one looks like.
fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<kube::core::Duration>()
        .map(Duration::from)
        .map_err(|_| format!("{text:?} is not a duration like 30m, 8h or 1h30m"))
}

/// When the environment expires: its creation plus `ttl`.
pub fn expires_at(created: Timestamp, ttl: &str) -> Result<Timestamp, String> {
    let ttl = parse_duration(ttl).map_err(|e| format!("spec.ttl: {e}"))?;
    let ttl = SignedDuration::try_from(ttl).map_err(|e| format!("spec.ttl: {e}"))?;
    created
        .checked_add(ttl)
        .map_err(|e| format!("spec.ttl: {e}"))
}

/// The newest sign of use known without looking inside: creation, the
/// last wake, or the activity recorded earlier.
fn known_activity(env: &Environment) -> Timestamp {
    let created = env.creation_timestamp().map(|t| t.0);
    let woken = env
        .annotations()
        .get(WOKEN_AT)
        .and_then(|at| at.parse::<Timestamp>().ok());
    let recorded = env
        .status
        .as_ref()
        .and_then(|s| s.last_activity.as_ref())
        .map(|t| t.0);
    [created, woken, recorded]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_else(Timestamp::now)
}

/// The newest creation or change (a managed-fields time) among objects
/// outside the system namespaces.
pub fn newest_change<'a>(objects: impl IntoIterator<Item = &'a ObjectMeta>) -> Option<Timestamp> {
    objects
        .into_iter()
        .filter(|meta| {
            !meta
                .namespace
                .as_deref()
                .is_some_and(|ns| SYSTEM_NAMESPACES.contains(&ns))
        })
        .flat_map(|meta| {
            let changes = meta
                .managed_fields
                .iter()
                .flatten()
                .filter_map(|entry| entry.time.as_ref().map(|t| t.0));
            meta.creation_timestamp.iter().map(|t| t.0).chain(changes)
        })
        .max()
}

/// When an environment idle since `activity` falls asleep, given its
/// `sleepAfter`.
fn bedtime(activity: Timestamp, sleep_after: &str) -> Result<Timestamp, String> {
    let after = parse_duration(sleep_after).map_err(|e| format!("spec.sleepAfter: {e}"))?;
    let after = SignedDuration::try_from(after).map_err(|e| format!("spec.sleepAfter: {e}"))?;
    activity
        .checked_add(after)
        .map_err(|e| format!("spec.sleepAfter: {e}"))
}

/// The newest change to workloads inside a virtual environment, read
/// through its kubeconfig Secret; None when it cannot be read (asleep, not
/// yet there, unreachable).
async fn activity_inside(ctx: &Context, namespace: &str, name: &str) -> Option<Timestamp> {
    let inside = client_inside(ctx, namespace, name).await?;
    let mut metas = Vec::new();
    metas.extend(metadata_of::<Pod>(&inside).await?);
    metas.extend(metadata_of::<Service>(&inside).await?);
    metas.extend(metadata_of::<Deployment>(&inside).await?);
    metas.extend(metadata_of::<StatefulSet>(&inside).await?);
    newest_change(&metas)
}

/// The connection Secret of the child `name` (VirtualCluster or Cluster).
fn kubeconfig_secret(name: &str) -> String {
    format!("{name}-kubeconfig")
}

/// A client for the environment whose kubeconfig is Secret `name`, from
/// the shared cache (built once per kubeconfig).
async fn client_inside(ctx: &Context, namespace: &str, name: &str) -> Option<Client> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()??;
    let text = secret.data?.get("value")?.0.clone();
    match ctx.inside.get(&text).await {
        Ok(target) => Some(target.client.clone()),
        Err(e) => {
            tracing::debug!(
                namespace,
                name,
                "the environment's kubeconfig is unusable: {e}"
            );
            None
        }
    }
}

/// The metadata of every object of one kind, in all namespaces.
async fn metadata_of<K>(client: &Client) -> Option<Vec<ObjectMeta>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = Api::<K>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .ok()?;
    Some(list.items.into_iter().map(|o| o.metadata).collect())
}

/// The Cluster or VirtualCluster of an environment; `asleep` scales a
/// virtual one to zero.
fn child(env: &Environment, asleep: bool) -> Value {
    let name = env.name_any();
    let owner = env.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let metadata = json!({
        "name": name,
        "labels": {label::MANAGED_BY: "fleetforge", label::INSTANCE: name, ENVIRONMENT_LABEL: name},
        "annotations": {"fleetforge.dev/owner": env.spec.owner},
        "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
    });
    match env.spec.kind {
        EnvironmentType::Virtual => {
            let settings = env.spec.r#virtual.clone().unwrap_or_default();
            let mut spec = json!({
                "host": settings.host,
                "sharedTools": settings.shared_tools,
            });
            if let Some(chart) = settings.chart {
                spec["chart"] = json!(chart);
            }
            if let Some(profile) = &env.spec.profile {
                spec["profile"] = json!(profile);
            }
            // Sleep is the vcluster scaled to zero.
            if asleep {
                spec["values"] =
                    json!({"controlPlane": {"statefulSet": {"highAvailability": {"replicas": 0}}}});
            }
            json!({"apiVersion": "fleetforge.dev/v1alpha1", "kind": "VirtualCluster", "metadata": metadata, "spec": spec})
        }
        EnvironmentType::Dedicated => {
            let settings = env.spec.dedicated.clone().unwrap_or_default();
            // Sleep is every node pool scaled to zero; the control plane
            // and what was installed stay, and waking scales them back.
            let mut pools = settings.node_pools;
            if asleep {
                for pool in &mut pools {
                    pool.min = 0;
                    pool.desired = Some(0);
                }
            }
            let mut spec = json!({
                "providerConfigRef": settings.provider_config_ref,
                "nodePools": pools,
            });
            for (field, value) in [
                ("region", settings.region),
                ("version", settings.version),
                ("profile", env.spec.profile.clone()),
            ] {
                if let Some(value) = value {
                    spec[field] = json!(value);
                }
            }
            json!({"apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster", "metadata": metadata, "spec": spec})
        }
    }
}

/// Where an environment's Cluster or VirtualCluster stands.
struct Child {
    ready: bool,
    sleeping: bool,
    /// It refused its spec (phase Failed): the environment fails with it.
    failed: bool,
    /// Its Ready condition's message (Synced's when it failed).
    message: String,
}

impl Child {
    fn of_virtual(vc: &VirtualCluster) -> Self {
        let status = vc.status.clone().unwrap_or_default();
        let current = status.observed_generation == vc.metadata.generation;
        Self::from(
            &status.conditions,
            conditions::is_true(&status.conditions, condition::READY) && current,
            status.phase == Some(VirtualClusterPhase::Sleeping),
            status.phase == Some(VirtualClusterPhase::Failed) && current,
            "VirtualCluster",
        )
    }

    /// A dedicated environment's Cluster; `asleep` says whether its pools
    /// were asked to be at zero.
    fn of_cluster(cluster: &Cluster, asleep: bool) -> Self {
        let status = cluster.status.clone().unwrap_or_default();
        let current = status.observed_generation == cluster.metadata.generation;
        let ready = conditions::is_true(&status.conditions, condition::READY);
        // Asleep once the spec asks for no nodes and the provider has
        // none left.
        let scaled_to_zero = asleep
            && !cluster.spec.node_pools.is_empty()
            && cluster.spec.node_pools.iter().all(|p| p.desired == Some(0))
            && status
                .node_pools
                .iter()
                .all(|p| p.ready.unwrap_or(0) == 0 && p.desired.unwrap_or(0) == 0);
        Self::from(
            &status.conditions,
            ready,
            ready && current && scaled_to_zero,
            status.phase == Some(ClusterPhase::Failed),
            "Cluster",
        )
    }

    fn from(
        conditions_of: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
        ready: bool,
        sleeping: bool,
        failed: bool,
        kind: &str,
    ) -> Self {
        let type_ = if failed {
            condition::SYNCED
        } else {
            condition::READY
        };
        let message = conditions::message(conditions_of, type_)
            .map_or_else(|| format!("waiting for the {kind}"), str::to_string);
        Self {
            ready,
            sleeping,
            failed,
            message,
        }
    }
}

/// Why a new environment's profile is not there yet, or None when it is
/// (or there is none). Once the environment has been Ready, its tools'
/// later states are the ToolInstall's to report, not a reason to demote it.
async fn tools_pending(env: &Environment, client: &Client) -> Result<Option<String>, kube::Error> {
    let Some(profile) = &env.spec.profile else {
        return Ok(None);
    };
    let was = env.status.as_ref().and_then(|s| s.phase);
    if matches!(
        was,
        Some(EnvironmentPhase::Ready | EnvironmentPhase::Sleeping)
    ) {
        return Ok(None);
    }
    let install = format!("{}-profile", env.name_any());
    let namespace = env.namespace().unwrap_or_default();
    let found = Api::<ToolInstall>::namespaced(client.clone(), &namespace)
        .get_opt(&install)
        .await?;
    let status = found.and_then(|ti| ti.status).unwrap_or_default();
    if conditions::is_true(&status.conditions, condition::READY) {
        return Ok(None);
    }
    let detail = conditions::message(&status.conditions, condition::READY)
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Ok(Some(format!(
        "installing the {profile} profile (ToolInstall {install}){detail}"
    )))
}

/// Whether the owner already has `max` older environments in the namespace.
fn over_quota<'a>(
    env: &Environment,
    all: impl IntoIterator<Item = &'a Environment>,
    max: u32,
) -> Option<String> {
    let key = |e: &Environment| (e.creation_timestamp().map(|t| t.0), e.name_any());
    let mine = key(env);
    let older = all
        .into_iter()
        .filter(|e| e.namespace() == env.namespace())
        .filter(|e| e.spec.owner == env.spec.owner && e.metadata.deletion_timestamp.is_none())
        .filter(|e| key(e) < mine)
        .count();
    (older >= max as usize).then(|| {
        format!(
            "owner {} already has {older} environments, the per-owner maximum is {max}; delete one or wait for one to expire",
            env.spec.owner
        )
    })
}

async fn reconcile(env: Arc<Environment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = env.namespace().unwrap_or_default();
    let name = env.name_any();
    let api: Api<Environment> = Api::namespaced(ctx.client.clone(), &namespace);
    if env.metadata.deletion_timestamp.is_some() {
        return finalize(&env, &ctx, &api).await;
    }
    finalizer::ensure(&api, &*env).await?;
    let created = env
        .creation_timestamp()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let pools = env
        .spec
        .dedicated
        .as_ref()
        .map(|d| d.node_pools.clone())
        .unwrap_or_default();
    let provider = env
        .spec
        .dedicated
        .as_ref()
        .and_then(|d| {
            ctx.provider_configs
                .get(&reflector::ObjectRef::new(&d.provider_config_ref.name))
        })
        .map(|c| c.spec.provider);
    let estimate = estimate(env.spec.kind, &pools, |machine_type| {
        provider.and_then(|kind| ctx.options.sizes.machine_size(kind, machine_type))
    });
    let expires = match expires_at(created, &env.spec.ttl) {
        Ok(at) => at,
        Err(message) => {
            let status = Status::failed("InvalidTTL", message);
            write_status(&env, &api, status, None, Some(estimate)).await?;
            return Ok(Action::await_change());
        }
    };
    let now = Timestamp::now();
    if now >= expires {
        ctx.recorder
            .publish(
                &env.object_ref(&()),
                EventType::Normal,
                "Expired",
                "Delete",
                &format!(
                    "ttl {} ran out at {expires}: deleting {name} and everything in it",
                    env.spec.ttl
                ),
            )
            .await;
        write_status(&env, &api, Status::expired(), Some(expires), Some(estimate)).await?;
        api.delete(&name, &DeleteParams::default()).await?;
        return Ok(Action::await_change());
    }
    let until_expiry = Duration::try_from(expires.duration_since(now)).unwrap_or_default();

    if let Some(max) = ctx.options.max_per_owner {
        let all = ctx.environments.state();
        if let Some(message) = over_quota(&env, all.iter().map(|e| &**e), max) {
            if env.status.as_ref().and_then(|s| s.phase) != Some(EnvironmentPhase::Pending) {
                ctx.recorder
                    .publish(
                        &env.object_ref(&()),
                        EventType::Warning,
                        "QuotaExceeded",
                        "Admit",
                        &message,
                    )
                    .await;
            }
            write_status(
                &env,
                &api,
                Status::held("QuotaExceeded", message),
                Some(expires),
                Some(estimate.clone()),
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(30).min(until_expiry)));
        }
    }
    let estimate = Some(estimate);

    // Sleep: asked for, or idle for sleepAfter. Activity is read inside
    // only while the environment is up (a sleeping one has no API).
    let mut activity = known_activity(&env);
    let mut bed = None;
    if let (Some(after), EnvironmentType::Virtual) = (&env.spec.sleep_after, env.spec.kind) {
        if env.status.as_ref().and_then(|s| s.phase) == Some(EnvironmentPhase::Ready) {
            let secret = kubeconfig_secret(&name);
            if let Some(seen) = activity_inside(&ctx, &namespace, &secret).await {
                activity = activity.max(seen);
            }
        }
        match bedtime(activity, after) {
            Ok(at) => bed = Some(at),
            Err(message) => {
                let status = Status::failed("InvalidSleepAfter", message);
                write_status(&env, &api, status, Some(expires), estimate).await?;
                return Ok(Action::await_change());
            }
        }
    }
    let idle = bed.is_some_and(|at| now >= at);
    let asleep = env.spec.sleep || idle;

    let child = child(&env, asleep);
    // Its own field manager: the child's reconciler applies the child's
    // metadata as `fleetforge`, and one manager's apply drops the fields
    // the other set.
    // The apply answers with the child as it now stands.
    let params = PatchParams::apply(CHILD_MANAGER).force();
    let child = match env.spec.kind {
        EnvironmentType::Virtual => Child::of_virtual(
            &Api::<VirtualCluster>::namespaced(ctx.client.clone(), &namespace)
                .patch(&name, &params, &Patch::Apply(&child))
                .await?,
        ),
        EnvironmentType::Dedicated => Child::of_cluster(
            &Api::<Cluster>::namespaced(ctx.client.clone(), &namespace)
                .patch(&name, &params, &Patch::Apply(&child))
                .await?,
            asleep,
        ),
    };
    let status = match child {
        child if child.failed => Status::failed("ChildFailed", child.message),
        child if child.sleeping && idle && !env.spec.sleep => Status::sleeping(format!(
            "asleep (scaled to zero) after {} idle, last activity at {activity}; `fleetforge env wake {name}` wakes it",
            env.spec.sleep_after.as_deref().unwrap_or_default()
        )),
        child if child.sleeping => Status::sleeping(format!(
            "asleep (scaled to zero); set spec.sleep to false (`fleetforge env wake {name}`) to wake it"
        )),
        child if child.ready && asleep => Status::provisioning("going to sleep".into()),
        child if child.ready => match tools_pending(&env, &ctx.client).await? {
            Some(waiting) => Status::provisioning(waiting),
            None => Status::ready(child.message),
        },
        child => Status::provisioning(child.message),
    };
    let settled = matches!(
        status.phase,
        EnvironmentPhase::Ready | EnvironmentPhase::Sleeping
    );
    let status_phase_failed = status.phase == EnvironmentPhase::Failed;
    if settled && env.status.as_ref().and_then(|s| s.phase) != Some(status.phase) {
        ctx.recorder
            .publish(
                &env.object_ref(&()),
                EventType::Normal,
                if status.phase == EnvironmentPhase::Ready {
                    "Ready"
                } else {
                    "Sleeping"
                },
                "Reconcile",
                &if status.phase == EnvironmentPhase::Ready {
                    format!("{name} is Ready; kubeconfig in Secret {name}-kubeconfig; expires at {expires}")
                } else {
                    status.ready.message.clone()
                },
            )
            .await;
    }
    let mut status = status;
    if env.spec.sleep_after.is_some() {
        status.last_activity = Some(activity);
    }
    write_status(&env, &api, status, Some(expires), estimate).await?;
    // A failed child reports its own changes (it is watched).
    let mut next = if settled || status_phase_failed {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(3)
    };
    if let (Some(at), false) = (bed, asleep) {
        let until_bed = Duration::try_from(at.duration_since(now)).unwrap_or_default();
        next = next.min(until_bed + Duration::from_secs(1));
    }
    Ok(Action::requeue(
        next.min(until_expiry + Duration::from_secs(1)),
    ))
}

/// The status a pass decides.
struct Status {
    phase: EnvironmentPhase,
    ready: Desired,
    synced: Desired,
    /// The newest sign of use, for environments that sleep when idle.
    last_activity: Option<Timestamp>,
}

impl Status {
    fn ready(message: String) -> Self {
        Self {
            phase: EnvironmentPhase::Ready,
            ready: Desired::yes(condition::READY, "Available", message),
            synced: Desired::yes(
                condition::SYNCED,
                "Synced",
                "the environment matches its spec",
            ),
            last_activity: None,
        }
    }

    fn provisioning(message: String) -> Self {
        Self {
            phase: EnvironmentPhase::Provisioning,
            ready: Desired::no(condition::READY, "Provisioning", message),
            synced: Desired::yes(
                condition::SYNCED,
                "Synced",
                "the environment's cluster is requested",
            ),
            last_activity: None,
        }
    }

    fn sleeping(message: String) -> Self {
        Self {
            phase: EnvironmentPhase::Sleeping,
            ready: Desired::no(condition::READY, "Sleeping", message),
            synced: Desired::yes(
                condition::SYNCED,
                "Synced",
                "the environment matches its spec",
            ),
            last_activity: None,
        }
    }

    fn held(reason: &str, message: String) -> Self {
        Self {
            phase: EnvironmentPhase::Pending,
            ready: Desired::no(condition::READY, reason, message.clone()),
            synced: Desired::no(condition::SYNCED, reason, message),
            last_activity: None,
        }
    }

    fn failed(reason: &str, message: String) -> Self {
        Self {
            phase: EnvironmentPhase::Failed,
            ready: Desired::no(condition::READY, reason, message.clone()),
            synced: Desired::no(condition::SYNCED, reason, message),
            last_activity: None,
        }
    }

    fn expired() -> Self {
        Self {
            phase: EnvironmentPhase::Expired,
            ready: Desired::no(condition::READY, "Expired", "the time to live ran out"),
            synced: Desired::yes(condition::SYNCED, "Expired", "deleting"),
            last_activity: None,
        }
    }
}

async fn write_status(
    env: &Environment,
    api: &Api<Environment>,
    status: Status,
    expires: Option<Timestamp>,
    estimate: Option<Estimate>,
) -> Result<(), kube::Error> {
    let previous = env.status.clone().unwrap_or_default();
    let generation = env.metadata.generation;
    let conditions = conditions::merge(
        &previous.conditions,
        &[status.ready, status.synced],
        generation,
        &conditions::now(),
    );
    // Whole seconds, as the API server keeps times.
    let whole = |at: Timestamp| Time(Timestamp::from_second(at.as_second()).unwrap_or(at));
    let desired = EnvironmentStatus {
        phase: Some(status.phase),
        conditions,
        observed_generation: generation,
        expires_at: expires.map(whole),
        last_activity: status.last_activity.map(whole),
        kubeconfig_secret_ref: Some(Reference {
            name: kubeconfig_secret(&env.name_any()),
        }),
        estimate,
    };
    fleetforge_runtime::status::apply_if_changed(
        api,
        &env.name_any(),
        FIELD_MANAGER,
        Some(&previous),
        &desired,
    )
    .await?;
    Ok(())
}

/// Deletes the environment `name`'s child of kind K, if it is there and
/// carries the environment's label; true while it is still there.
async fn remove_child<K>(client: &Client, namespace: &str, name: &str) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let children: Api<K> = Api::namespaced(client.clone(), namespace);
    let Some(child) = children.get_opt(name).await? else {
        return Ok(false);
    };
    if child.labels().get(ENVIRONMENT_LABEL).map(String::as_str) != Some(name) {
        return Ok(false);
    }
    if child.meta().deletion_timestamp.is_none() {
        children.delete(name, &DeleteParams::default()).await?;
    }
    Ok(true)
}

/// Deletion: delete the child and wait until it is gone (its own finalizer
/// removes the cluster or the vcluster release), then drop ours.
async fn finalize(
    env: &Environment,
    ctx: &Context,
    api: &Api<Environment>,
) -> Result<Action, Error> {
    if !finalizer::has(env) {
        return Ok(Action::await_change());
    }
    let namespace = env.namespace().unwrap_or_default();
    let name = env.name_any();
    let remaining = match env.spec.kind {
        EnvironmentType::Virtual => {
            remove_child::<VirtualCluster>(&ctx.client, &namespace, &name).await?
        }
        EnvironmentType::Dedicated => {
            remove_child::<Cluster>(&ctx.client, &namespace, &name).await?
        }
    };
    if remaining {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    // Its client in the shared cache goes once it is idle.
    finalizer::remove(api, env).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_creation_plus_ttl() {
        let created = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            expires_at(created, "1h30m").unwrap(),
            Timestamp::from_second(1_000 + 5_400).unwrap()
        );
        assert_eq!(
            expires_at(created, "soon").unwrap_err(),
            "spec.ttl: \"soon\" is not a duration like 30m, 8h or 1h30m"
        );
    }

    fn mk_env(name: &str, owner: &str, second: i64) -> Environment {
        let mut env: Environment = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "dev"},
            "spec": {"type": "virtual", "owner": owner},
        }))
        .unwrap();
        env.metadata.creation_timestamp = Some(Time(Timestamp::from_second(second).unwrap()));
        env
    }

    #[test]
    fn the_per_owner_maximum_holds_back_the_newest_requests() {
        let all = [
            mk_env("a1", "alice", 1),
            mk_env("a2", "alice", 2),
            mk_env("b1", "bob", 3),
            mk_env("a3", "alice", 4),
        ];
        assert_eq!(over_quota(&all[1], &all, 2), None);
        let held = over_quota(&all[3], &all, 2).unwrap();
        assert!(
            held.starts_with("owner alice already has 2 environments, the per-owner maximum is 2"),
            "{held}"
        );
        assert_eq!(over_quota(&all[2], &all, 1), None);
    }

    #[test]
    fn a_virtual_environment_asks_for_a_vcluster_that_sleeps_on_request() {
        let mut env: Environment = serde_json::from_value(json!({
            "metadata": {"name": "mine", "namespace": "dev", "uid": "u-1"},
            "spec": {"type": "virtual", "owner": "alice", "profile": "dev", "sleep": true,
                     "virtual": {"host": {"clusterRef": {"name": "host"}}, "sharedTools": ["cert-manager"]}},
        }))
        .unwrap();
        let vc = child(&env, env.spec.sleep);
        assert_eq!(vc["kind"], "VirtualCluster");
        assert_eq!(vc["spec"]["profile"], "dev");
        assert_eq!(vc["spec"]["host"]["clusterRef"]["name"], "host");
        assert_eq!(
            vc["spec"]["values"]["controlPlane"]["statefulSet"]["highAvailability"]["replicas"],
            0
        );
        assert_eq!(vc["metadata"]["ownerReferences"][0]["kind"], "Environment");
        env.spec.sleep = false;
        assert!(child(&env, false)["spec"].get("values").is_none());
    }

    #[test]
    fn a_dedicated_environment_sleeps_with_its_node_pools_at_zero() {
        let env: Environment = serde_json::from_value(json!({
            "metadata": {"name": "own", "namespace": "dev", "uid": "u-2"},
            "spec": {"type": "dedicated", "owner": "bob", "sleep": true,
                     "dedicated": {"providerConfigRef": {"name": "local"},
                                   "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 2}]}},
        }))
        .unwrap();
        let asleep = child(&env, true);
        assert_eq!(asleep["kind"], "Cluster");
        assert_eq!(
            asleep["spec"]["nodePools"],
            json!([{"name": "workers", "machineType": "standard-2", "min": 0, "max": 3, "desired": 0}])
        );
        let awake = child(&env, false);
        assert_eq!(awake["spec"]["nodePools"][0]["min"], 1);
        assert_eq!(awake["spec"]["nodePools"][0]["desired"], 2);

        // Sleeping once the provider has no nodes left, not before.
        let mut cluster: Cluster = serde_json::from_value(json!({
            "metadata": {"name": "own", "namespace": "dev", "generation": 3},
            "spec": asleep["spec"],
            "status": {"observedGeneration": 3, "phase": "Ready",
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": "up",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                       "nodePools": [{"name": "workers", "desired": 0, "ready": 1}]},
        }))
        .unwrap();
        assert!(!Child::of_cluster(&cluster, true).sleeping);
        cluster.status.as_mut().unwrap().node_pools[0].ready = Some(0);
        assert!(Child::of_cluster(&cluster, true).sleeping);
        assert!(!Child::of_cluster(&cluster, false).sleeping);
    }

    #[test]
    fn activity_is_the_newest_workload_change_outside_the_system_namespaces() {
        let meta = |namespace: &str, created: i64, changed: Option<i64>| -> ObjectMeta {
            serde_json::from_value(json!({
                "namespace": namespace,
                "creationTimestamp": Time(Timestamp::from_second(created).unwrap()),
                "managedFields": changed.map(|at| vec![json!({"manager": "kubectl", "operation": "Update",
                    "time": Time(Timestamp::from_second(at).unwrap())})]).unwrap_or_default(),
            }))
            .unwrap()
        };
        let objects = [
            meta("kube-system", 900, Some(950)),
            meta("default", 100, None),
            meta("app", 200, Some(400)),
        ];
        assert_eq!(newest_change(&objects), Timestamp::from_second(400).ok());
        assert_eq!(newest_change(&objects[..1]), None);
    }

    #[test]
    fn an_idle_environment_sleeps_sleep_after_its_last_activity_and_a_wake_restarts_the_clock() {
        let activity = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            bedtime(activity, "30m").unwrap(),
            Timestamp::from_second(2_800).unwrap()
        );
        assert!(
            bedtime(activity, "later")
                .unwrap_err()
                .starts_with("spec.sleepAfter: ")
        );
        let mut env = mk_env("a1", "alice", 1_000);
        assert_eq!(known_activity(&env), activity);
        env.metadata.annotations =
            Some([(WOKEN_AT.to_string(), "1970-01-01T00:30:00Z".to_string())].into());
        assert_eq!(known_activity(&env), Timestamp::from_second(1_800).unwrap());
    }
}
