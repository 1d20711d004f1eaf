//! The generic managed-resource reconciler.
//!
//! One loop drives every managed kind through [`ExternalClient`]: it owns the
//! finalizer, the external-name annotation and the create-pending guard,
//! the `Ready`/`Synced`/`Drifted` conditions (server-side apply, one field
//! manager), `observedGeneration`, events, the deletion, management and
//! drift policies, backoff with jitter, the per-account rate limit and the
//! jittered drift poll. A provider only observes, creates, updates and
//! deletes.
//!
//! `observedGeneration` is the generation whose spec the external resource
//! matches. While it lags the object's generation, differences are changes
//! still to apply; once it has caught up, a new difference was made outside
//! fleetforge and is drift.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetforge_api::provider_config::CredentialsSource;
use fleetforge_api::{
    DeletionPolicy, DriftPolicy, DriftStatus, FIELD_MANAGER, FINALIZER, IN_USE_FINALIZER,
    ManagementPolicy, ProviderConfig, ProviderKind, annotation, condition, label,
};
use futures::Future;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::cluster::FieldDiff;
use crate::conditions::{self, Desired};
use crate::error::Error;
use crate::events::{EventType, Recorder};
use crate::metrics::{CallLabels, DriftLabels, Metrics};
use crate::provider::{
    ConnectionDetails, Credentials, ExternalClient, ExternalState, Observation, ProviderFactory,
    Refusal,
};
use crate::ratelimit::RateLimits;
use fleetforge_runtime::Runtime;
use fleetforge_runtime::ready::Gate;

/// The policies of a managed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    /// What deleting the object does to the external resource.
    pub deletion: DeletionPolicy,
    /// Whether fleetforge may change the external resource.
    pub management: ManagementPolicy,
    /// Whether drift is corrected or only reported.
    pub drift: DriftPolicy,
    /// Whether reconciling is suspended.
    pub paused: bool,
}

/// A managed object's phase, mapped by each kind onto its own enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not created yet.
    Pending,
    /// Being created.
    Provisioning,
    /// Running.
    Ready,
    /// A change is being applied.
    Updating,
    /// Being deleted.
    Deleting,
    /// Failed.
    Failed,
}

/// What the engine concluded, for a kind to turn into its status.
#[derive(Debug)]
pub struct StatusReport<'a, O> {
    /// Summary phase.
    pub phase: Phase,
    /// `Ready`, `Synced`, `Drifted`, with transition times settled.
    pub conditions: Vec<Condition>,
    /// The generation the external resource matches.
    pub observed_generation: Option<i64>,
    /// The fresh observation, when this reconcile made one.
    pub observed: Option<&'a O>,
    /// Current drift, if any.
    pub drift: Option<DriftStatus>,
    /// When the provider was last read.
    pub last_observed: Option<Time>,
}

/// A kind the engine can manage.
pub trait Managed:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// What a provider reports about the external resource.
    type Observed: Clone + Debug + Send + Sync + 'static;
    /// One planned change.
    type Change: Clone + Debug + std::fmt::Display + Send + Sync + 'static;
    /// The kind's name (metrics, logs).
    const KIND: &'static str;
    /// The selectable field (the CRD's `selectableFields`) holding the
    /// ProviderConfig's name, so its users can be listed by the API server.
    const PROVIDER_CONFIG_FIELD: &'static str;

    /// The object's policies.
    fn policies(&self) -> Policies;
    /// Name of the ProviderConfig the object uses.
    fn provider_config_name(&self) -> &str;
    /// Name of the Secret its connection details go to.
    fn connection_secret_name(&self) -> String;
    /// Conditions in the current status.
    fn conditions(&self) -> &[Condition];
    /// `status.observedGeneration`.
    fn status_observed_generation(&self) -> Option<i64>;
    /// Drift in the current status.
    fn reported_drift(&self) -> Option<&DriftStatus>;
    /// Differences between the spec and `observed`, for people.
    fn differences(&self, observed: &Self::Observed) -> Vec<FieldDiff>;
    /// The next changes towards the spec, or why the spec cannot be applied.
    fn plan(&self, observed: &Self::Observed) -> Result<Vec<Self::Change>, Refusal>;
    /// The current status as JSON.
    fn status_json(&self) -> serde_json::Value;
    /// The status for a report, as JSON.
    fn build_status(
        &self,
        report: StatusReport<'_, Self::Observed>,
        config: Option<&ProviderConfig>,
    ) -> serde_json::Value;
}

/// Provider factories by provider kind: the one place providers are
/// registered.
pub struct Providers<K: Managed> {
    factories: HashMap<ProviderKind, Arc<dyn ProviderFactory<K>>>,
}

impl<K: Managed> Default for Providers<K> {
    fn default() -> Self {
        Self {
            factories: HashMap::new(),
        }
    }
}

impl<K: Managed> Debug for Providers<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl<K: Managed> Providers<K> {
    /// Registers the factory for `kind`.
    pub fn register(mut self, kind: ProviderKind, factory: Arc<dyn ProviderFactory<K>>) -> Self {
        self.factories.insert(kind, factory);
        self
    }
}

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requeue interval while a resource is being created, updated or
    /// deleted.
    pub active_interval: Duration,
    /// How long a provider client (and the credentials it holds) is reused.
    pub client_ttl: Duration,
    /// Name reported as the source of events.
    pub reporter: String,
    /// Only manage objects in this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// How long after a successful create a resource the provider does not
    /// list is taken to be on its way (clouds are eventually consistent
    /// right after a create) rather than deleted out of band.
    pub creation_grace_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            active_interval: Duration::from_secs(5),
            client_ttl: Duration::from_secs(300),
            reporter: "fleetforge".to_string(),
            namespace: None,
            creation_grace_period: Duration::from_secs(30),
        }
    }
}

struct CachedClient<K: Managed> {
    client: Arc<dyn ExternalClient<K>>,
    resource_version: Option<String>,
    built: Instant,
}

/// The reconciler's shared context.
pub struct Engine<K: Managed> {
    client: Client,
    providers: Providers<K>,
    provider_configs: Store<ProviderConfig>,
    /// Open once the ProviderConfigs have been listed.
    provider_configs_listed: Gate,
    /// ProviderConfigs whose users may have changed (an object appeared
    /// that the config does not count yet, or one went).
    config_users_changed: tokio::sync::mpsc::UnboundedSender<String>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    rate_limits: RateLimits,
    clients: tokio::sync::Mutex<HashMap<String, CachedClient<K>>>,
    published: Mutex<HashMap<ObjectRef<K>, u64>>,
    /// The status this process last wrote for each object, until the next
    /// pass of that object. A pass that starts from a cached object
    /// predating our write works from what we wrote instead (the engine is
    /// the only status writer), so it neither rewrites the same status nor
    /// loses condition transition times.
    written: Mutex<HashMap<ObjectRef<K>, serde_json::Value>>,
    options: Options,
}

/// Runs the managed reconciler for kind `K`, and the ProviderConfig
/// reconciler, on `runtime` until the process stops.
pub async fn run<K: Managed>(
    runtime: &Runtime,
    client: Client,
    providers: Providers<K>,
    metrics: Arc<Metrics>,
    options: Options,
) {
    let (config_store, config_writer) = reflector::store::<ProviderConfig>();
    let objects: Api<K> = match &options.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    // Reconcile on what users and we change in spec and metadata; our own
    // status writes and create markers do not trigger another pass. An
    // object that goes makes its ProviderConfig count its users again.
    let (users_changed, users_changes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let gone = users_changed.clone();
    let (object_store, object_events) =
        crate::watch::changes_and_deletions(objects, trigger_hash::<K>, move |obj: &K| {
            let _ = gone.send(obj.provider_config_name().to_string());
        });
    let engine = Arc::new(Engine {
        recorder: Recorder::new(client.clone(), &options.reporter),
        client: client.clone(),
        providers,
        provider_configs_listed: Gate::of(&config_store),
        provider_configs: config_store,
        config_users_changed: users_changed,
        metrics,
        rate_limits: RateLimits::default(),
        clients: tokio::sync::Mutex::new(HashMap::new()),
        published: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        options,
    });

    let configs: Api<ProviderConfig> = Api::all(client.clone());
    let config_events = watcher(configs, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|obj: &mut ProviderConfig| obj.managed_fields_mut().clear())
        .reflect(config_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());

    let users = object_store.clone();
    let objects_controller = Controller::for_stream(object_events, object_store).watches_stream(
        config_events,
        move |config: ProviderConfig| {
            let name = config.name_any();
            users
                .state()
                .into_iter()
                .filter(|obj| obj.provider_config_name() == name)
                .map(|obj| ObjectRef::from(&*obj))
                .collect::<Vec<_>>()
        },
    );
    let objects_controller =
        runtime.run(K::KIND, objects_controller, engine.clone(), reconcile::<K>);

    let users_changes = futures::stream::unfold(users_changes, |mut changes| async move {
        changes
            .recv()
            .await
            .map(|name| (ObjectRef::<ProviderConfig>::new(&name), changes))
    });
    let configs: Api<ProviderConfig> = Api::all(client.clone());
    let configs_controller = Controller::new(configs, watcher::Config::default().any_semantic())
        .reconcile_on(users_changes);
    let configs_controller = runtime.run(
        "ProviderConfig",
        configs_controller,
        engine,
        reconcile_provider_config::<K>,
    );
    tokio::join!(objects_controller, configs_controller);
}

/// What in an object should trigger a reconcile: the spec (generation),
/// annotations (an import's external name, fault injection), finalizers and
/// deletion. Our own create markers are left out: the pass that writes them
/// decides when to look again, and a failed create must wait out its backoff
/// rather than be re-triggered by its own `create-failed` mark.
fn trigger_hash<K: Resource>(obj: &K) -> Option<u64> {
    const MARKERS: [&str; 3] = [
        annotation::CREATE_PENDING,
        annotation::CREATE_SUCCEEDED,
        annotation::CREATE_FAILED,
    ];
    let meta = obj.meta();
    let mut hasher = DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    for (key, value) in meta.annotations.iter().flatten() {
        if !MARKERS.contains(&key.as_str()) {
            (key, value).hash(&mut hasher);
        }
    }
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// One reconcile of `obj`; a failure is also told in status and an event.
pub async fn reconcile<K: Managed>(obj: Arc<K>, engine: Arc<Engine<K>>) -> Result<Action, Error> {
    // Before the first list of ProviderConfigs is in, every object would
    // look like its account is missing (and write that, then undo it).
    engine.provider_configs_listed.wait().await;
    let obj = engine.with_written_status(obj);
    let mut pass = Pass::new(&engine, &obj);
    let result = pass.run().await;
    if let Err(error) = &result {
        pass.report_error(error).await;
    }
    result
}

/// The state of one reconcile of one object.
struct Pass<'a, K: Managed> {
    engine: &'a Engine<K>,
    obj: &'a K,
    api: Api<K>,
    name: String,
    namespace: String,
    /// Set once the ProviderConfig is found.
    config: Option<Arc<ProviderConfig>>,
}

/// How one provider call is made: which verb, for metrics.
#[derive(Clone, Copy)]
enum Verb {
    Observe,
    Create,
    Update,
    Delete,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Observe => "observe",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }
}

/// The outcome annotation written after a create call.
enum CreateMark {
    Pending,
    Succeeded,
    Failed,
}

impl<'a, K: Managed> Pass<'a, K> {
    fn new(engine: &'a Engine<K>, obj: &'a K) -> Self {
        let namespace = obj.namespace().unwrap_or_default();
        Self {
            engine,
            obj,
            api: Api::namespaced(engine.client.clone(), &namespace),
            name: obj.name_any(),
            namespace,
            config: None,
        }
    }

    async fn run(&mut self) -> Result<Action, Error> {
        let policies = self.obj.policies();
        let deleting = self.obj.meta().deletion_timestamp.is_some();
        self.config = self.provider_config().ok();
        if deleting && self.force_remove_asked() {
            return self.force_remove().await;
        }
        if policies.paused {
            let conditions = [
                self.keep(condition::READY),
                Desired::no(
                    condition::SYNCED,
                    "ReconcilePaused",
                    "spec.paused is true: no provider calls and no changes until it is false",
                ),
                self.keep(condition::DRIFTED),
            ];
            self.write_status(
                self.current_phase(),
                &conditions,
                None,
                None,
                self.obj.status_observed_generation(),
            )
            .await?;
            return Ok(Action::await_change());
        }
        if deleting {
            return self.delete(policies).await;
        }
        let config = self.provider_config()?;
        if !config.finalizers().iter().any(|f| f == IN_USE_FINALIZER) {
            // Its users are counted (and its deletion held) by its own
            // reconcile; tell it there is one more.
            let _ = self.engine.config_users_changed.send(config.name_any());
        }
        let provider = self.engine.connect(&config).await?;
        self.apply(&*provider, policies).await
    }

    fn force_remove_asked(&self) -> bool {
        self.obj
            .annotations()
            .get(annotation::FORCE_REMOVE)
            .is_some_and(|v| v == "true")
    }

    /// Deletion with `fleetforge.dev/force-remove: "true"`: the finalizer
    /// goes without a provider call (the account may be gone or
    /// unreachable), saying what may be left behind.
    async fn force_remove(&self) -> Result<Action, Error> {
        if !self.has_finalizer() {
            return Ok(Action::await_change());
        }
        let annotations = self.obj.annotations();
        let left = match annotations.get(annotation::EXTERNAL_NAME) {
            Some(name)
                if annotations.contains_key(annotation::CREATE_SUCCEEDED)
                    || annotations.contains_key(annotation::CREATE_PENDING) =>
            {
                format!(
                    "{name} at ProviderConfig {} may be left behind: check the account and delete it there if it still exists",
                    self.obj.provider_config_name()
                )
            }
            Some(name) => format!(
                "{name} at ProviderConfig {} (imported or adopted) is left as it is",
                self.obj.provider_config_name()
            ),
            None => "nothing was created at the provider".to_string(),
        };
        self.finish_delete(
            EventType::Warning,
            "ForceRemoved",
            format!(
                "{} is set: removing the finalizer without deleting at the provider; {left}",
                annotation::FORCE_REMOVE
            ),
        )
        .await
    }

    fn provider_config(&self) -> Result<Arc<ProviderConfig>, Error> {
        let name = self.obj.provider_config_name();
        self.engine
            .provider_configs
            .get(&ObjectRef::new(name))
            .ok_or_else(|| Error::ProviderConfigNotFound(name.to_string()))
    }

    fn provider_name(&self) -> &'static str {
        self.config
            .as_ref()
            .map_or("unknown", |c| c.spec.provider.as_str())
    }

    fn poll_interval(&self) -> Duration {
        self.config
            .as_ref()
            .and_then(|c| kube::core::Duration::from_str(&c.spec.poll_interval).ok())
            .map_or(Duration::from_secs(60), Duration::from)
    }

    /// Requeue at the poll interval, jittered by up to 10% either way.
    fn poll(&self) -> Action {
        Action::requeue(jittered(self.poll_interval(), 0.1))
    }

    fn soon(&self) -> Action {
        Action::requeue(self.soon_duration())
    }

    fn soon_duration(&self) -> Duration {
        self.engine
            .options
            .active_interval
            .min(self.poll_interval())
    }

    async fn call<T, F>(&self, verb: Verb, call: impl FnOnce() -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, crate::provider::ProviderError>>,
    {
        let config = self
            .config
            .as_ref()
            .expect("calls are made after the config is found");
        self.engine
            .rate_limits
            .acquire(&config.name_any(), config.spec.rate_limit.as_ref())
            .await;
        let result = call().await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind.reason(),
        };
        self.engine
            .metrics
            .provider_calls
            .get_or_create(&CallLabels {
                provider: self.provider_name(),
                verb: verb.as_str(),
                outcome,
            })
            .inc();
        result.map_err(Error::Provider)
    }

    async fn apply(
        &self,
        provider: &dyn ExternalClient<K>,
        policies: Policies,
    ) -> Result<Action, Error> {
        let observe_only = policies.management == ManagementPolicy::ObserveOnly;
        let wants_finalizer = !observe_only && policies.deletion == DeletionPolicy::Delete;
        let annotations = self.obj.annotations();
        let recorded_name = annotations.get(annotation::EXTERNAL_NAME).cloned();

        if annotations.contains_key(annotation::CREATE_PENDING) {
            return self
                .resolve_pending_create(provider, recorded_name, wants_finalizer)
                .await;
        }

        let Some(external_name) = recorded_name
            .clone()
            .or_else(|| (!observe_only).then(|| self.name.clone()))
        else {
            let conditions = [
                Desired::no(
                    condition::READY,
                    "ExternalNameMissing",
                    "nothing to observe yet",
                ),
                Desired::no(
                    condition::SYNCED,
                    "ExternalNameMissing",
                    format!(
                        "managementPolicy is ObserveOnly: set the annotation {} to the provider's name of the cluster to import",
                        annotation::EXTERNAL_NAME
                    ),
                ),
                self.keep(condition::DRIFTED),
            ];
            self.write_status(Phase::Pending, &conditions, None, None, None)
                .await?;
            return Ok(Action::await_change());
        };

        let observation = self
            .call(Verb::Observe, || provider.observe(self.obj, &external_name))
            .await?;
        match observation {
            None => {
                self.missing(
                    provider,
                    policies,
                    &external_name,
                    recorded_name.is_some(),
                    wants_finalizer,
                )
                .await
            }
            Some(observation) => {
                if recorded_name.is_none() {
                    // Found under the default name before we recorded it:
                    // adopt it only if it says it is ours.
                    if !self.owns(&observation) {
                        return self.already_exists(&external_name, &observation).await;
                    }
                    self.write_metadata(wants_finalizer, &external_name, None)
                        .await?;
                } else if wants_finalizer != self.has_finalizer() {
                    self.write_metadata(wants_finalizer, &external_name, None)
                        .await?;
                }
                self.converge(provider, policies, &external_name, &observation)
                    .await
            }
        }
    }

    /// The external resource does not exist: create it, or report it.
    async fn missing(
        &self,
        provider: &dyn ExternalClient<K>,
        policies: Policies,
        external_name: &str,
        existed: bool,
        wants_finalizer: bool,
    ) -> Result<Action, Error> {
        let provider_name = self.provider_name();
        if policies.management == ManagementPolicy::ObserveOnly {
            let message = format!("no cluster named {external_name} at provider {provider_name}");
            let conditions = [
                Desired::no(condition::READY, "NotFound", message.clone()),
                Desired::no(condition::SYNCED, "NotFound", message),
                self.keep(condition::DRIFTED),
            ];
            self.write_status(Phase::Pending, &conditions, None, None, None)
                .await?;
            return Ok(self.poll());
        }
        let created_at = self
            .obj
            .annotations()
            .get(annotation::CREATE_SUCCEEDED)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let deleted_out_of_band = existed && created_at.is_some();
        let grace = self.engine.options.creation_grace_period;
        let since_create = created_at
            .and_then(|at| Duration::try_from(Timestamp::now().duration_since(at)).ok())
            .unwrap_or(Duration::MAX);
        if deleted_out_of_band && since_create < grace {
            let conditions = [
                Desired::no(
                    condition::READY,
                    "Creating",
                    format!(
                        "{external_name} was created at {} and the provider does not list it yet; it is taken as deleted only after the creation grace period ({}s)",
                        created_at.map(|t| t.to_string()).unwrap_or_default(),
                        grace.as_secs()
                    ),
                ),
                Desired::yes(condition::SYNCED, "ReconcileSuccess", "create requested"),
                self.keep(condition::DRIFTED),
            ];
            self.write_status(
                Phase::Provisioning,
                &conditions,
                None,
                None,
                self.obj.status_observed_generation(),
            )
            .await?;
            let left = grace - since_create + Duration::from_millis(100);
            return Ok(Action::requeue(self.soon_duration().min(left)));
        }
        if deleted_out_of_band {
            let fields = vec![format!("{external_name}: spec present, actual absent")];
            let drift = self.drift_status(&fields);
            let in_sync = self.spec_applied();
            if in_sync && policies.drift == DriftPolicy::Report {
                self.announce_drift(
                    &fields,
                    "ExternalResourceMissing",
                    "reported only (driftPolicy Report)",
                )
                .await;
                let conditions = [
                    Desired::no(
                        condition::READY,
                        "NotFound",
                        format!("{external_name} was deleted outside fleetforge"),
                    ),
                    Desired::yes(
                        condition::SYNCED,
                        "ReconcileSuccess",
                        "drift reported, not corrected (driftPolicy Report)",
                    ),
                    Desired::yes(
                        condition::DRIFTED,
                        "ExternalResourceMissing",
                        format!("{external_name} no longer exists at provider {provider_name}"),
                    ),
                ];
                self.write_status(
                    Phase::Failed,
                    &conditions,
                    None,
                    Some(drift),
                    self.obj.status_observed_generation(),
                )
                .await?;
                return Ok(self.poll());
            }
            // Said even when the spec has changed since the last pass (or
            // this copy of the object predates the status that said so): it
            // existed, and something outside removed it.
            self.announce_drift(&fields, "ExternalResourceMissing", "recreating it")
                .await;
        }
        if let Err(refusal) = provider.validate(self.obj) {
            return self.refuse(&refusal, Phase::Pending, None).await;
        }

        self.write_metadata(wants_finalizer, external_name, Some(CreateMark::Pending))
            .await?;
        let created = self
            .call(Verb::Create, || provider.create(self.obj, external_name))
            .await;
        if let Err(error) = created {
            self.write_metadata(wants_finalizer, external_name, Some(CreateMark::Failed))
                .await?;
            return Err(error);
        }
        self.write_metadata(wants_finalizer, external_name, Some(CreateMark::Succeeded))
            .await?;
        self.event(
            EventType::Normal,
            "CreatedExternalResource",
            "Create",
            format!("created {external_name} at provider {provider_name}"),
        )
        .await;
        // Look once more right away: a resource that is already up gets one
        // status write instead of Provisioning now and Ready a pass later.
        match self
            .call(Verb::Observe, || provider.observe(self.obj, external_name))
            .await?
        {
            Some(observation) => {
                self.converge(provider, policies, external_name, &observation)
                    .await
            }
            None => {
                let conditions = [
                    Desired::no(
                        condition::READY,
                        "Creating",
                        format!("{external_name} is being created"),
                    ),
                    Desired::yes(condition::SYNCED, "ReconcileSuccess", "create requested"),
                    Desired::no(condition::DRIFTED, "NoDrift", "no drift"),
                ];
                self.write_status(
                    Phase::Provisioning,
                    &conditions,
                    None,
                    None,
                    self.obj.status_observed_generation(),
                )
                .await?;
                Ok(self.soon())
            }
        }
    }

    /// A create was started but its outcome was never recorded (the
    /// controller stopped in between). Adopt the resource if it exists and
    /// is ours; otherwise ask a person, never create a second one.
    async fn resolve_pending_create(
        &self,
        provider: &dyn ExternalClient<K>,
        recorded_name: Option<String>,
        wants_finalizer: bool,
    ) -> Result<Action, Error> {
        let external_name = recorded_name.unwrap_or_else(|| self.name.clone());
        let observation = self
            .call(Verb::Observe, || provider.observe(self.obj, &external_name))
            .await?;
        match observation {
            Some(observation) if self.owns(&observation) => {
                self.write_metadata(wants_finalizer, &external_name, Some(CreateMark::Succeeded))
                    .await?;
                self.event(
                    EventType::Normal,
                    "CreateConfirmed",
                    "Create",
                    format!(
                        "the create of {external_name} started at {} was interrupted; the cluster exists and is owned by this object, so it is adopted",
                        self.obj.annotations().get(annotation::CREATE_PENDING).cloned().unwrap_or_default()
                    ),
                )
                .await;
                Ok(self.soon())
            }
            Some(observation) => self.already_exists(&external_name, &observation).await,
            None => {
                let message = format!(
                    "a create of {external_name} was started at {} but its outcome was not recorded, and the provider does not list it (yet). To avoid a duplicate nothing is created: check the provider for {external_name}; if it exists, keep the {} annotation and remove {}; if it does not, remove {} to create it",
                    self.obj
                        .annotations()
                        .get(annotation::CREATE_PENDING)
                        .cloned()
                        .unwrap_or_default(),
                    annotation::EXTERNAL_NAME,
                    annotation::CREATE_PENDING,
                    annotation::CREATE_PENDING,
                );
                self.event(
                    EventType::Warning,
                    "CreatePendingUnknown",
                    "Create",
                    message.clone(),
                )
                .await;
                let conditions = [
                    Desired::no(
                        condition::READY,
                        "CreatePendingUnknown",
                        "the outcome of a create is unknown",
                    ),
                    Desired::no(condition::SYNCED, "CreatePendingUnknown", message),
                    self.keep(condition::DRIFTED),
                ];
                self.write_status(Phase::Pending, &conditions, None, None, None)
                    .await?;
                Ok(self.poll())
            }
        }
    }

    async fn already_exists(
        &self,
        external_name: &str,
        observation: &Observation<K::Observed>,
    ) -> Result<Action, Error> {
        let owner = observation
            .owner
            .as_deref()
            .unwrap_or("nobody (no fleetforge owner tag)");
        let message = format!(
            "a cluster named {external_name} already exists at provider {} and belongs to {owner}, not {}/{}: import it with managementPolicy ObserveOnly and the {} annotation, or give this Cluster another name",
            self.provider_name(),
            self.namespace,
            self.name,
            annotation::EXTERNAL_NAME
        );
        self.event(
            EventType::Warning,
            "AlreadyExists",
            "Create",
            message.clone(),
        )
        .await;
        let conditions = [
            Desired::no(condition::READY, "AlreadyExists", "the name is taken"),
            Desired::no(condition::SYNCED, "AlreadyExists", message),
            self.keep(condition::DRIFTED),
        ];
        self.write_status(Phase::Failed, &conditions, None, None, None)
            .await?;
        Ok(self.poll())
    }

    /// The external resource exists: publish how to reach it and bring it
    /// to the spec, or report how it differs.
    async fn converge(
        &self,
        provider: &dyn ExternalClient<K>,
        policies: Policies,
        external_name: &str,
        observation: &Observation<K::Observed>,
    ) -> Result<Action, Error> {
        if let Some(connection) = &observation.connection {
            self.publish_connection(connection).await?;
        }
        let observed = Some(&observation.resource);
        let generation = self.obj.meta().generation;
        match &observation.state {
            ExternalState::Provisioning => {
                let conditions = [
                    Desired::no(
                        condition::READY,
                        "Creating",
                        format!("{external_name} is being created"),
                    ),
                    Desired::yes(
                        condition::SYNCED,
                        "ReconcileSuccess",
                        "waiting for the provider",
                    ),
                    self.keep(condition::DRIFTED),
                ];
                self.write_status(
                    Phase::Provisioning,
                    &conditions,
                    observed,
                    None,
                    self.obj.status_observed_generation(),
                )
                .await?;
                return Ok(self.soon());
            }
            ExternalState::Updating => {
                let conditions = [
                    Desired::yes(
                        condition::READY,
                        "Updating",
                        format!("{external_name} is available while a change is applied"),
                    ),
                    Desired::yes(
                        condition::SYNCED,
                        "ReconcileSuccess",
                        "waiting for the provider to finish a change",
                    ),
                    self.keep(condition::DRIFTED),
                ];
                self.write_status(
                    Phase::Updating,
                    &conditions,
                    observed,
                    self.obj.reported_drift().cloned(),
                    self.obj.status_observed_generation(),
                )
                .await?;
                return Ok(self.soon());
            }
            ExternalState::Deleting => {
                let conditions = [
                    Desired::no(
                        condition::READY,
                        "Deleting",
                        format!("{external_name} is being deleted at the provider"),
                    ),
                    Desired::yes(
                        condition::SYNCED,
                        "ReconcileSuccess",
                        "waiting for the provider",
                    ),
                    self.keep(condition::DRIFTED),
                ];
                self.write_status(
                    Phase::Deleting,
                    &conditions,
                    observed,
                    None,
                    self.obj.status_observed_generation(),
                )
                .await?;
                return Ok(self.soon());
            }
            ExternalState::Failed(message) => {
                let conditions = [
                    Desired::no(condition::READY, "ProviderFailed", message.clone()),
                    Desired::no(
                        condition::SYNCED,
                        "ProviderFailed",
                        format!("the provider reports {external_name} failed: {message}"),
                    ),
                    self.keep(condition::DRIFTED),
                ];
                self.write_status(
                    Phase::Failed,
                    &conditions,
                    observed,
                    None,
                    self.obj.status_observed_generation(),
                )
                .await?;
                return Ok(self.poll());
            }
            ExternalState::Ready | ExternalState::Degraded(_) => {}
        }

        let differences = self.obj.differences(&observation.resource);
        // A degraded resource exists but does not serve: it is converged like
        // a ready one (its drift reported or corrected), but it is not Ready.
        let (ready, settled) = match &observation.state {
            ExternalState::Degraded(message) => (
                Desired::no(condition::READY, "Degraded", message.clone()),
                Phase::Failed,
            ),
            _ => (
                Desired::yes(
                    condition::READY,
                    "Available",
                    format!("{external_name} is available"),
                ),
                Phase::Ready,
            ),
        };
        // A spec the provider cannot apply is refused whether or not the
        // resource happens to match it today.
        if policies.management == ManagementPolicy::Full
            && let Err(refusal) = provider.validate(self.obj)
        {
            return self.refuse(&refusal, settled, observed).await;
        }
        if differences.is_empty() {
            if self
                .obj
                .conditions()
                .iter()
                .any(|c| c.type_ == condition::DRIFTED && c.status == "True")
                && policies.drift == DriftPolicy::Correct
                && policies.management == ManagementPolicy::Full
            {
                self.event(
                    EventType::Normal,
                    "DriftCorrected",
                    "Update",
                    format!("{external_name} matches the spec again"),
                )
                .await;
            }
            let conditions = [
                ready,
                Desired::yes(
                    condition::SYNCED,
                    "ReconcileSuccess",
                    "the external resource matches the spec",
                ),
                Desired::no(condition::DRIFTED, "NoDrift", "no drift"),
            ];
            self.write_status(settled, &conditions, observed, None, generation)
                .await?;
            return Ok(self.poll());
        }

        let fields: Vec<String> = differences.iter().map(ToString::to_string).collect();
        let is_drift = self.spec_applied();
        let drift = is_drift.then(|| self.drift_status(&fields));
        let summary = fields.join("; ");

        if policies.management == ManagementPolicy::ObserveOnly {
            self.announce_drift(
                &fields,
                "DriftDetected",
                "reported only (managementPolicy ObserveOnly)",
            )
            .await;
            let conditions = [
                ready,
                Desired::yes(
                    condition::SYNCED,
                    "ObserveOnly",
                    "observed; fleetforge never changes an ObserveOnly resource",
                ),
                Desired::yes(condition::DRIFTED, "DriftDetected", summary),
            ];
            let drift = self.drift_status(&fields);
            self.write_status(settled, &conditions, observed, Some(drift), generation)
                .await?;
            return Ok(self.poll());
        }
        if is_drift && policies.drift == DriftPolicy::Report {
            self.announce_drift(
                &fields,
                "DriftDetected",
                "reported only (driftPolicy Report)",
            )
            .await;
            let conditions = [
                ready,
                Desired::yes(
                    condition::SYNCED,
                    "ReconcileSuccess",
                    "drift reported, not corrected (driftPolicy Report)",
                ),
                Desired::yes(condition::DRIFTED, "DriftDetected", summary),
            ];
            self.write_status(settled, &conditions, observed, drift, generation)
                .await?;
            return Ok(self.poll());
        }

        let changes = match self.obj.plan(&observation.resource) {
            Ok(changes) => changes,
            Err(refusal) => return self.refuse(&refusal, settled, observed).await,
        };
        if changes.is_empty() {
            // Differences no change can remove (for example an unknown
            // provider version): report them, do not loop.
            let conditions = [
                ready,
                Desired::yes(
                    condition::SYNCED,
                    "ReconcileSuccess",
                    format!("nothing to change; differences: {summary}"),
                ),
                Desired::no(condition::DRIFTED, "NoDrift", "no correctable drift"),
            ];
            self.write_status(settled, &conditions, observed, None, generation)
                .await?;
            return Ok(self.poll());
        }
        if is_drift {
            self.announce_drift(&fields, "DriftDetected", "correcting it")
                .await;
        }
        self.call(Verb::Update, || {
            provider.update(self.obj, external_name, &changes)
        })
        .await?;
        let described: Vec<String> = changes.iter().map(ToString::to_string).collect();
        self.event(
            EventType::Normal,
            if is_drift {
                "CorrectingDrift"
            } else {
                "UpdatingExternalResource"
            },
            "Update",
            described.join("; "),
        )
        .await;
        let drifted = if is_drift {
            Desired::yes(condition::DRIFTED, "DriftCorrecting", summary)
        } else {
            Desired::no(condition::DRIFTED, "NoDrift", "spec changes being applied")
        };
        let conditions = [
            ready,
            Desired::yes(
                condition::SYNCED,
                "ReconcileSuccess",
                format!("applying: {}", described.join("; ")),
            ),
            drifted,
        ];
        self.write_status(
            Phase::Updating,
            &conditions,
            observed,
            drift,
            self.obj.status_observed_generation(),
        )
        .await?;
        Ok(self.soon())
    }

    /// A spec the engine or provider will not apply: `Synced=False` naming
    /// the field, an event, and the next look at the poll interval (not a
    /// retry storm: nothing changes until the spec does).
    async fn refuse(
        &self,
        refusal: &Refusal,
        phase: Phase,
        observed: Option<&K::Observed>,
    ) -> Result<Action, Error> {
        let message = refusal.to_string();
        let already = self.obj.conditions().iter().any(|c| {
            c.type_ == condition::SYNCED && c.reason == refusal.reason && c.message == message
        });
        if !already {
            self.event(
                EventType::Warning,
                refusal.reason,
                "Update",
                message.clone(),
            )
            .await;
        }
        let conditions = [
            self.keep(condition::READY),
            Desired::no(condition::SYNCED, refusal.reason, message),
            self.keep(condition::DRIFTED),
        ];
        self.write_status(
            phase,
            &conditions,
            observed,
            self.obj.reported_drift().cloned(),
            self.obj.status_observed_generation(),
        )
        .await?;
        Ok(self.poll())
    }

    /// Deletion: the external resource first (when this object created
    /// it and the policy says so), then the connection Secret and the
    /// finalizer. The provider is reached only when there is something to
    /// delete there, so an orphaned or never-created object goes even when
    /// its account is gone.
    async fn delete(&self, policies: Policies) -> Result<Action, Error> {
        if !self.has_finalizer() {
            return Ok(Action::await_change());
        }
        let annotations = self.obj.annotations();
        let external_name = annotations.get(annotation::EXTERNAL_NAME).cloned();
        let keep_external = policies.deletion == DeletionPolicy::Orphan
            || policies.management == ManagementPolicy::ObserveOnly;
        let Some(external_name) = external_name.filter(|_| !keep_external) else {
            let what = if keep_external {
                "orphaned"
            } else {
                "never created"
            };
            return self.finish_deleted(what).await;
        };
        let config = self.provider_config()?;
        let provider = self.engine.connect(&config).await?;
        let provider = &*provider;
        let observation = self
            .call(Verb::Observe, || provider.observe(self.obj, &external_name))
            .await?;
        match observation {
            None => self.finish_deleted("deleted").await,
            Some(observation) if !self.owns(&observation) => {
                // Never delete what is not ours (an adopted name clash).
                self.finish_deleted("left alone: it is not owned by this object")
                    .await
            }
            Some(observation) => {
                if observation.state != ExternalState::Deleting {
                    self.call(Verb::Delete, || provider.delete(self.obj, &external_name))
                        .await?;
                    self.event(
                        EventType::Normal,
                        "DeletingExternalResource",
                        "Delete",
                        format!(
                            "deleting {external_name} at provider {}",
                            self.provider_name()
                        ),
                    )
                    .await;
                }
                let conditions = [
                    Desired::no(
                        condition::READY,
                        "Deleting",
                        format!("{external_name} is being deleted"),
                    ),
                    Desired::yes(condition::SYNCED, "ReconcileSuccess", "delete requested"),
                    self.keep(condition::DRIFTED),
                ];
                self.write_status(
                    Phase::Deleting,
                    &conditions,
                    Some(&observation.resource),
                    None,
                    self.obj.status_observed_generation(),
                )
                .await?;
                Ok(self.soon())
            }
        }
    }

    /// The external resource is `what` (deleted, orphaned, ...): the
    /// connection Secret and the finalizer go.
    async fn finish_deleted(&self, what: &str) -> Result<Action, Error> {
        let external_name = self
            .obj
            .annotations()
            .get(annotation::EXTERNAL_NAME)
            .cloned()
            .unwrap_or_else(|| self.name.clone());
        self.finish_delete(
            EventType::Normal,
            "DeletedExternalResource",
            format!("{external_name} {what}; removing the finalizer"),
        )
        .await
    }

    /// Removes the connection Secret and the finalizer, telling why.
    async fn finish_delete(
        &self,
        type_: EventType,
        reason: &str,
        note: String,
    ) -> Result<Action, Error> {
        let secrets: Api<Secret> = Api::namespaced(self.engine.client.clone(), &self.namespace);
        match secrets
            .delete(&self.obj.connection_secret_name(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let key = ObjectRef::from(self.obj);
        self.engine
            .published
            .lock()
            .expect("published map")
            .remove(&key);
        self.engine
            .written
            .lock()
            .expect("written map")
            .remove(&key);
        self.event(type_, reason, "Delete", note).await;
        let external_name = self
            .obj
            .annotations()
            .get(annotation::EXTERNAL_NAME)
            .cloned()
            .unwrap_or_else(|| self.name.clone());
        self.write_metadata(false, &external_name, None).await?;
        Ok(Action::await_change())
    }

    fn has_finalizer(&self) -> bool {
        self.obj.finalizers().iter().any(|f| f == FINALIZER)
    }

    fn owns(&self, observation: &Observation<K::Observed>) -> bool {
        observation.owner.as_deref() == Some(&crate::provider::owner_of(self.obj))
    }

    /// Whether the external resource matched the current spec before: then
    /// a new difference is drift, not a pending change.
    fn spec_applied(&self) -> bool {
        self.obj.status_observed_generation().is_some()
            && self.obj.status_observed_generation() == self.obj.meta().generation
    }

    fn drift_status(&self, fields: &[String]) -> DriftStatus {
        let known = self.obj.reported_drift().filter(|d| d.fields == fields);
        DriftStatus {
            fields: fields.to_vec(),
            last_detected: known
                .and_then(|d| d.last_detected.clone())
                .or_else(|| Some(conditions::now())),
        }
    }

    /// Event and metric for drift, once per distinct set of differences.
    async fn announce_drift(&self, fields: &[String], reason: &str, action: &str) {
        if self
            .obj
            .reported_drift()
            .is_some_and(|d| d.fields == fields)
        {
            return;
        }
        self.engine
            .metrics
            .drift_detected
            .get_or_create(&DriftLabels {
                kind: K::KIND,
                provider: self.provider_name(),
            })
            .inc();
        self.event(
            EventType::Warning,
            reason,
            "Observe",
            format!(
                "changed outside fleetforge, {action}: {}",
                fields.join("; ")
            ),
        )
        .await;
    }

    /// The existing condition of `type_`, unchanged (or Unknown-as-false).
    fn keep(&self, type_: &'static str) -> Desired {
        self.obj
            .conditions()
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| Desired {
                type_,
                status: c.status == "True",
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .unwrap_or_else(|| Desired::no(type_, "Pending", "not determined yet"))
    }

    fn current_phase(&self) -> Phase {
        match self.obj.status_json().get("phase").and_then(|p| p.as_str()) {
            Some("Provisioning") => Phase::Provisioning,
            Some("Ready") => Phase::Ready,
            Some("Updating") => Phase::Updating,
            Some("Deleting") => Phase::Deleting,
            Some("Failed") => Phase::Failed,
            _ => Phase::Pending,
        }
    }

    /// Writes the status by server-side apply, only when it changed (or the
    /// last observation time is older than ten poll intervals).
    async fn write_status(
        &self,
        phase: Phase,
        desired: &[Desired],
        observed: Option<&K::Observed>,
        drift: Option<DriftStatus>,
        observed_generation: Option<i64>,
    ) -> Result<(), Error> {
        let now = conditions::now();
        let generation = self.obj.meta().generation;
        let conditions = conditions::merge(self.obj.conditions(), desired, generation, &now);
        let current = self.obj.status_json();
        let last_observed = current
            .get("lastObserved")
            .and_then(|t| serde_json::from_value::<Time>(t.clone()).ok());
        let report = |last_observed| StatusReport {
            phase,
            conditions: conditions.clone(),
            observed_generation,
            observed,
            drift: drift.clone(),
            last_observed,
        };
        let candidate = self
            .obj
            .build_status(report(last_observed.clone()), self.config.as_deref());
        let stale = last_observed.as_ref().is_none_or(|t| {
            let age = Timestamp::now().duration_since(t.0);
            age.as_secs() > (self.poll_interval() * 10).as_secs() as i64
        });
        let refresh = stale && observed.is_some();
        if candidate == current && !refresh {
            return Ok(());
        }
        let last_observed = if observed.is_some() {
            Some(now)
        } else {
            last_observed
        };
        let status = self
            .obj
            .build_status(report(last_observed), self.config.as_deref());
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": &status,
        });
        self.api
            .patch_status(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.engine
            .written
            .lock()
            .expect("written map")
            .insert(ObjectRef::from(self.obj), status);
        Ok(())
    }

    /// Applies the metadata fleetforge owns: the finalizer and its
    /// annotations. Server-side apply removes what a previous apply set and
    /// this one leaves out (a resolved create-pending marker, a finalizer no
    /// longer wanted), and never touches anyone else's fields.
    async fn write_metadata(
        &self,
        finalizer: bool,
        external_name: &str,
        mark: Option<CreateMark>,
    ) -> Result<(), Error> {
        let existing = self.obj.annotations();
        let mut annotations = BTreeMap::new();
        annotations.insert(
            annotation::EXTERNAL_NAME.to_string(),
            external_name.to_string(),
        );
        let now = Timestamp::now().to_string();
        match mark {
            Some(CreateMark::Pending) => {
                annotations.insert(annotation::CREATE_PENDING.to_string(), now);
            }
            Some(CreateMark::Succeeded) => {
                annotations.insert(annotation::CREATE_SUCCEEDED.to_string(), now);
            }
            Some(CreateMark::Failed) => {
                annotations.insert(annotation::CREATE_FAILED.to_string(), now);
            }
            None => {
                for key in [annotation::CREATE_SUCCEEDED, annotation::CREATE_FAILED] {
                    if let Some(value) = existing.get(key) {
                        annotations.insert(key.to_string(), value.clone());
                    }
                }
            }
        }
        let finalizers: Vec<&str> = if finalizer { vec![FINALIZER] } else { vec![] };
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "finalizers": finalizers,
                "annotations": annotations,
            },
        });
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    /// Writes the connection Secret when its content differs from what this
    /// process last wrote, or (after a restart) from what is stored.
    async fn publish_connection(&self, connection: &ConnectionDetails) -> Result<(), Error> {
        let secret_name = self.obj.connection_secret_name();
        let mut hasher = DefaultHasher::new();
        secret_name.hash(&mut hasher);
        connection.kubeconfig.hash(&mut hasher);
        let hash = hasher.finish();
        let key = ObjectRef::from(self.obj);
        if self
            .engine
            .published
            .lock()
            .expect("published map")
            .get(&key)
            == Some(&hash)
        {
            return Ok(());
        }
        let owner = self.obj.controller_owner_ref(&());
        let secrets: Api<Secret> = Api::namespaced(self.engine.client.clone(), &self.namespace);
        // Not written by this process yet (it restarted, or leadership
        // moved): read what is stored, and write only when it differs.
        let stored = secrets.get_opt(&secret_name).await?;
        let current = stored.as_ref().is_some_and(|stored| {
            let value = stored.data.as_ref().and_then(|d| d.get("value"));
            let owned = stored
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == owner.as_ref().map(|w| &w.uid));
            value.is_some_and(|v| v.0 == connection.kubeconfig.as_bytes())
                && owned
                && stored.labels().get(label::INSTANCE) == Some(&self.name)
        });
        if current {
            self.engine
                .published
                .lock()
                .expect("published map")
                .insert(key, hash);
            return Ok(());
        }
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name,
                "namespace": self.namespace,
                "labels": {
                    label::MANAGED_BY: "fleetforge",
                    label::INSTANCE: self.name,
                },
                "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
            },
            "type": "fleetforge.dev/kubeconfig",
            "data": {
                "value": k8s_openapi::ByteString(connection.kubeconfig.as_bytes().to_vec()),
            },
        });
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        self.engine
            .published
            .lock()
            .expect("published map")
            .insert(key, hash);
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let regarding = self.obj.object_ref(&());
        self.engine
            .recorder
            .publish(&regarding, type_, reason, action, &note)
            .await;
    }

    /// After a failed reconcile: `Synced=False` with the error's category,
    /// and a warning event.
    async fn report_error(&self, error: &Error) {
        let mut message = error.to_string();
        if self.obj.meta().deletion_timestamp.is_some() {
            message.push_str(&format!(
                "; the delete waits for this. To remove the object without deleting at the provider, annotate it {}=true",
                annotation::FORCE_REMOVE
            ));
        }
        let conditions = [
            self.keep(condition::READY),
            Desired::no(condition::SYNCED, error.category(), message.clone()),
            self.keep(condition::DRIFTED),
        ];
        let phase = self.current_phase();
        if let Err(e) = self
            .write_status(
                phase,
                &conditions,
                None,
                self.obj.reported_drift().cloned(),
                self.obj.status_observed_generation(),
            )
            .await
        {
            tracing::warn!(name = %self.name, "could not record the error in status: {e}");
        }
        self.event(EventType::Warning, error.category(), "Reconcile", message)
            .await;
    }
}

impl<K: Managed> Debug for Engine<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kind", &K::KIND)
            .field("providers", &self.providers)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<K: Managed> Engine<K> {
    /// `obj` with the status this process last wrote, when the watch cache
    /// has not caught up with that write yet. Only the next pass needs it
    /// (it is the one that can start before the watch delivers our write),
    /// so the entry is taken, which keeps the map to the objects written in
    /// the last moments.
    fn with_written_status(&self, obj: Arc<K>) -> Arc<K> {
        let key = ObjectRef::from(&*obj);
        let Some(status) = self.written.lock().expect("written map").remove(&key) else {
            return obj;
        };
        if status == obj.status_json() {
            return obj;
        }
        let mut value = match serde_json::to_value(&*obj) {
            Ok(value) => value,
            Err(_) => return obj,
        };
        value["status"] = status;
        serde_json::from_value(value).map(Arc::new).unwrap_or(obj)
    }

    /// A client for the account `config` describes, reused until the
    /// ProviderConfig changes or the client is older than the client TTL.
    async fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn ExternalClient<K>>, Error> {
        let name = config.name_any();
        let mut clients = self.clients.lock().await;
        if let Some(cached) = clients.get(&name)
            && cached.resource_version == config.resource_version()
            && cached.built.elapsed() < self.options.client_ttl
        {
            return Ok(cached.client.clone());
        }
        let factory = self
            .providers
            .factories
            .get(&config.spec.provider)
            .ok_or_else(|| Error::ProviderNotAvailable(config.spec.provider.to_string()))?;
        let credentials = self.credentials(config).await?;
        let client = factory.connect(config, credentials).await?;
        clients.insert(
            name,
            CachedClient {
                client: client.clone(),
                resource_version: config.resource_version(),
                built: Instant::now(),
            },
        );
        Ok(client)
    }

    /// Reads the credentials a ProviderConfig points at. Messages name the
    /// Secret and key, never their content.
    async fn credentials(&self, config: &ProviderConfig) -> Result<Credentials, Error> {
        let credentials = &config.spec.credentials;
        if credentials.source == CredentialsSource::Ambient {
            return Ok(Credentials::Ambient);
        }
        let Some(reference) = &credentials.secret_ref else {
            return Err(Error::Credentials(format!(
                "ProviderConfig {}: spec.credentials.secretRef is required with source Secret",
                config.name_any()
            )));
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &reference.namespace);
        let secret = secrets.get_opt(&reference.name).await?.ok_or_else(|| {
            Error::Credentials(format!(
                "ProviderConfig {}: Secret {}/{} not found",
                config.name_any(),
                reference.namespace,
                reference.name
            ))
        })?;
        let value = secret
            .data
            .and_then(|mut data| data.remove(&reference.key))
            .ok_or_else(|| {
                Error::Credentials(format!(
                    "ProviderConfig {}: Secret {}/{} has no key {}",
                    config.name_any(),
                    reference.namespace,
                    reference.name,
                    reference.key
                ))
            })?;
        Ok(Credentials::Secret(value.0))
    }
}

/// Checks a ProviderConfig: its provider is available, its credentials can
/// be read and a client built (`Ready`); and counts the objects that use it
/// (`InUse`, `status.users`). While any does, the `fleetforge.dev/in-use`
/// finalizer holds its deletion, so that they can still reach the account
/// to be deleted themselves.
async fn reconcile_provider_config<K: Managed>(
    config: Arc<ProviderConfig>,
    engine: Arc<Engine<K>>,
) -> Result<Action, Error> {
    let name = config.name_any();
    let api: Api<ProviderConfig> = Api::all(engine.client.clone());
    let users = users_of::<K>(&engine.client, &name).await?;
    let deleting = config.metadata.deletion_timestamp.is_some();
    let held = config.finalizers().iter().any(|f| f == IN_USE_FINALIZER);
    if users.is_empty() && held {
        crate::finalizer::remove_named(&api, &*config, IN_USE_FINALIZER).await?;
    } else if !users.is_empty() && !held && !deleting {
        crate::finalizer::ensure_named(&api, &*config, IN_USE_FINALIZER).await?;
    }
    if deleting && users.is_empty() {
        return Ok(Action::await_change());
    }
    let in_use = usage_condition(K::KIND, &users, deleting);
    if deleting {
        engine
            .recorder
            .publish(
                &config.object_ref(&()),
                EventType::Warning,
                "DeletionBlocked",
                "Delete",
                &in_use.message,
            )
            .await;
    }

    let result = engine.connect(&config).await;
    let ready = match &result {
        Ok(_) => Desired::yes(
            condition::READY,
            "Available",
            "credentials read and provider client built",
        ),
        Err(e) => Desired::no(condition::READY, e.category(), e.to_string()),
    };
    let existing = config
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    let generation = config.metadata.generation;
    let conditions = conditions::merge(existing, &[ready, in_use], generation, &conditions::now());
    let count = i32::try_from(users.len()).unwrap_or(i32::MAX);
    let current = config.status.clone().unwrap_or_default();
    if current.conditions != conditions
        || current.observed_generation != generation
        || current.users != Some(count)
    {
        let patch = json!({
            "apiVersion": ProviderConfig::api_version(&()),
            "kind": "ProviderConfig",
            "status": {"conditions": conditions, "observedGeneration": generation, "users": count},
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    // Credentials can change without the ProviderConfig changing.
    Ok(Action::requeue(engine.options.client_ttl))
}

/// The objects of kind `K` using ProviderConfig `name`, as namespace/name,
/// sorted. Read from the API server (metadata only, by the selectable field
/// [`Managed::PROVIDER_CONFIG_FIELD`]) rather than this process's cache, which
/// may hold only some namespaces or some shard of them.
async fn users_of<K: Managed>(client: &Client, name: &str) -> Result<Vec<String>, Error> {
    let api: Api<K> = Api::all(client.clone());
    let mut params = kube::api::ListParams::default()
        .fields(&format!("{}={name}", K::PROVIDER_CONFIG_FIELD))
        .limit(500);
    let mut users = Vec::new();
    loop {
        let page = api.list_metadata(&params).await?;
        users.extend(page.items.iter().map(|obj| {
            format!(
                "{}/{}",
                obj.metadata.namespace.as_deref().unwrap_or_default(),
                obj.metadata.name.as_deref().unwrap_or_default()
            )
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    users.sort();
    Ok(users)
}

/// The `InUse` condition of a ProviderConfig used by `users` (namespace/
/// name, sorted) of kind `kind`; the first few are named.
pub fn usage_condition(kind: &str, users: &[String], deleting: bool) -> Desired {
    const NAMED: usize = 10;
    if users.is_empty() {
        return Desired::no(
            condition::IN_USE,
            "Unused",
            format!("no {kind} uses this account"),
        );
    }
    let mut named = users
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if users.len() > NAMED {
        named.push_str(&format!(" and {} more", users.len() - NAMED));
    }
    let plural = if users.len() == 1 { "" } else { "s" };
    let used = format!("used by {} {kind}{plural}: {named}", users.len());
    if deleting {
        Desired::yes(
            condition::IN_USE,
            "DeletionBlocked",
            format!(
                "deletion waits until no {kind} uses this account (delete them first, or annotate each with {}=true to let it go without deleting at the provider); {used}",
                annotation::FORCE_REMOVE
            ),
        )
    } else {
        Desired::yes(condition::IN_USE, "InUse", used)
    }
}

/// `base` moved randomly by up to `fraction` of itself either way, so that
/// objects created together do not poll together.
pub fn jittered(base: Duration, fraction: f64) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    // SplitMix64 finaliser: a well-mixed 64-bit value from the counter.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(1.0 + fraction * (2.0 * unit - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_config_names_its_first_users_and_says_why_deletion_waits() {
        let users: Vec<String> = (0..12).map(|i| format!("team/c{i:02}")).collect();
        let used = usage_condition("Cluster", &users[..1], false);
        assert!(used.status);
        assert_eq!(used.reason, "InUse");
        assert_eq!(used.message, "used by 1 Cluster: team/c00");
        let many = usage_condition("Cluster", &users, true);
        assert_eq!(many.reason, "DeletionBlocked");
        assert!(
            many.message.contains("used by 12 Clusters: team/c00, "),
            "{}",
            many.message
        );
        assert!(
            many.message.ends_with("team/c09 and 2 more"),
            "{}",
            many.message
        );
        assert!(many.message.contains("fleetforge.dev/force-remove=true"));
        let unused = usage_condition("Cluster", &[], false);
        assert!(!unused.status);
        assert_eq!(unused.reason, "Unused");
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let base = Duration::from_secs(60);
        let samples: Vec<Duration> = (0..1000).map(|_| jittered(base, 0.1)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_secs(54) && *d <= Duration::from_secs(66))
        );
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 900,
            "jitter should spread polls: {} distinct",
            distinct.len()
        );
    }
}
