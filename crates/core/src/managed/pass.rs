//! One pass over one object: gather the facts, ask [`super::decide`] what
//! to do, and do it: the metadata apply, the provider call, the status
//! apply, the connection Secret and the events. After a call the Secret
//! goes first (whoever sees Ready finds it), then status and events
//! together.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fleetforge_api::{
    FIELD_MANAGER, FINALIZER, IN_USE_FINALIZER, ProviderConfig, annotation, label,
};
use futures::Future;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tracing::Instrument;

use super::decide::{self, Call, Decision, Facts, Mark, Metadata, Next, Note, Seen, StatusPlan};
use super::{Engine, Managed, ManagedStatus, StatusReport};
use crate::conditions;
use crate::error::Error;
use crate::metrics::{CallLabels, DriftLabels};
use crate::provider::{ConnectionDetails, ExternalClient, Observation, ProviderError};

/// One reconcile of `obj`; a failure is also told in status and an event.
pub async fn reconcile<K: Managed>(obj: Arc<K>, engine: Arc<Engine<K>>) -> Result<Action, Error> {
    // Before the first list of ProviderConfigs is in, every object would
    // look like its account is missing (and write that, then undo it).
    engine.provider_configs_listed.wait().await;
    let obj = engine.with_written(obj);
    let pass = Pass::new(&engine, &obj);
    let result = pass.run().await;
    if let Err(error) = &result {
        let decision = decide::failed(&pass.facts(), error.category(), &error.to_string());
        if let Err(e) = pass.carry_out(decision, None).await {
            tracing::warn!(name = %pass.name, "could not record the error in status: {e}");
        }
    }
    result
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

struct Pass<'a, K: Managed> {
    engine: &'a Engine<K>,
    obj: &'a K,
    api: Api<K>,
    name: String,
    namespace: String,
    config: Option<Arc<ProviderConfig>>,
}

impl<'a, K: Managed> Pass<'a, K> {
    fn new(engine: &'a Engine<K>, obj: &'a K) -> Self {
        let namespace = obj.namespace().unwrap_or_default();
        let config = engine
            .provider_configs
            .get(&ObjectRef::new(obj.provider_config_name()));
        Self {
            engine,
            obj,
            api: Api::namespaced(engine.client.clone(), &namespace),
            name: obj.name_any(),
            namespace,
            config,
        }
    }

    fn facts(&self) -> Facts<'_, K> {
        Facts {
            obj: self.obj,
            policies: self.obj.policies(),
            provider: self.provider_name(),
            now: Timestamp::now(),
            creation_grace_period: self.engine.options.creation_grace_period,
        }
    }

    fn provider_name(&self) -> &'static str {
        self.config
            .as_ref()
            .map_or("unknown", |c| c.spec.provider.as_str())
    }

    fn config(&self) -> Result<&Arc<ProviderConfig>, Error> {
        self.config.as_ref().ok_or_else(|| {
            Error::ProviderConfigNotFound(self.obj.provider_config_name().to_string())
        })
    }

    async fn run(&self) -> Result<Action, Error> {
        let facts = self.facts();
        let deleting = self.obj.meta().deletion_timestamp.is_some();
        if deleting && self.force_remove_asked() {
            return self.carry_out(decide::force_remove(&facts), None).await;
        }
        if facts.policies.paused {
            return self.carry_out(decide::paused(&facts), None).await;
        }
        if deleting {
            let name = match decide::delete_target(&facts) {
                Ok(name) => name,
                Err(decision) => return self.carry_out(*decision, None).await,
            };
            let provider = self.connect().await?;
            let observation = self.observe(&*provider, &name).await?;
            let decision = decide::deleting(&facts, &name, observation.as_ref());
            return self
                .act(decision, &*provider, &name, observation.as_ref())
                .await;
        }
        let name = match decide::external_name(&facts) {
            Ok(name) => name,
            Err(decision) => return self.carry_out(*decision, None).await,
        };
        let provider = self.connect().await?;
        let validation = provider.validate(self.obj);
        let observation = self.observe(&*provider, &name).await?;
        let seen = Seen {
            external_name: &name,
            observation: observation.as_ref(),
            validation: validation.clone(),
            created_now: None,
            create_keyed_by_name: provider.create_keyed_by_name(),
        };
        let decision = decide::decide(&facts, &seen);
        let Call::Create(started) = decision.call else {
            return self
                .act(decision, &*provider, &name, observation.as_ref())
                .await;
        };
        // Create, then look once more right away: a resource that is
        // already up gets one status write instead of Provisioning now and
        // Ready a pass later.
        if let Some(metadata) = &decision.metadata {
            self.write_metadata(metadata).await?;
        }
        let created = self
            .call(Verb::Create, || provider.create(self.obj, &name))
            .await;
        if let Err(error) = created {
            self.write_metadata(&Metadata {
                finalizer: facts.wants_finalizer(),
                external_name: name.clone(),
                mark: Some(Mark::Failed(Timestamp::now())),
            })
            .await?;
            return Err(error);
        }
        let observation = self.observe(&*provider, &name).await?;
        let seen = Seen {
            external_name: &name,
            observation: observation.as_ref(),
            validation,
            created_now: Some(started),
            create_keyed_by_name: provider.create_keyed_by_name(),
        };
        let mut after = decide::decide(&facts, &seen);
        after.notes.splice(0..0, decision.notes);
        after.drift_found |= decision.drift_found;
        self.act(after, &*provider, &name, observation.as_ref())
            .await
    }

    fn force_remove_asked(&self) -> bool {
        self.obj
            .annotations()
            .get(annotation::FORCE_REMOVE)
            .is_some_and(|v| v == "true")
    }

    async fn connect(&self) -> Result<Arc<dyn ExternalClient<K>>, Error> {
        let config = self.config()?;
        if !config.finalizers().iter().any(|f| f == IN_USE_FINALIZER)
            && self.obj.meta().deletion_timestamp.is_none()
        {
            // Its users are counted (and its deletion held) by its own
            // reconcile; tell it there is one more.
            let _ = self.engine.config_users_changed.send(config.name_any());
        }
        self.engine.accounts.connect(config).await
    }

    async fn observe(
        &self,
        provider: &dyn ExternalClient<K>,
        name: &str,
    ) -> Result<Option<Observation<K::Observed>>, Error> {
        self.call(Verb::Observe, || provider.observe(self.obj, name))
            .await
    }

    fn poll_interval(&self) -> Duration {
        self.config
            .as_ref()
            .and_then(|c| kube::core::Duration::from_str(&c.spec.poll_interval).ok())
            .map_or(Duration::from_secs(60), Duration::from)
    }

    fn requeue(&self, next: Next) -> Action {
        let soon = self
            .engine
            .options
            .active_interval
            .min(self.poll_interval());
        match next {
            Next::Poll => Action::requeue(super::jittered(self.poll_interval(), 0.1)),
            Next::Soon => Action::requeue(soon),
            Next::Within(limit) => Action::requeue(soon.min(limit)),
            Next::AwaitChange => Action::await_change(),
        }
    }

    async fn call<T, F>(&self, verb: Verb, call: impl FnOnce() -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, ProviderError>>,
    {
        let config = self.config()?;
        self.engine
            .rate_limits
            .acquire(&config.name_any(), config.spec.rate_limit.as_ref())
            .await;
        // A child span of the reconcile: `provider <verb>`.
        let span = tracing::info_span!(
            "provider",
            otel.name = %format_args!("provider {}", verb.as_str()),
            provider = self.provider_name(),
            verb = verb.as_str(),
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result = call().instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind.reason(),
        };
        span.record("outcome", outcome);
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
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

    /// Carries out a decision: its metadata, its provider call, then what
    /// it records.
    async fn act(
        &self,
        mut decision: Decision<K::Change>,
        provider: &dyn ExternalClient<K>,
        name: &str,
        observation: Option<&Observation<K::Observed>>,
    ) -> Result<Action, Error> {
        if let Some(metadata) = decision.metadata.take() {
            self.write_metadata(&metadata).await?;
        }
        match &decision.call {
            Call::Update(changes) => {
                self.call(Verb::Update, || provider.update(self.obj, name, changes))
                    .await?;
            }
            Call::Delete => {
                self.call(Verb::Delete, || provider.delete(self.obj, name))
                    .await?;
            }
            // A create goes through [`Pass::run`], which observes again.
            Call::Create(_) | Call::None => {}
        }
        self.carry_out(decision, observation).await
    }

    /// Records a decision: metadata, the drift metric, then status,
    /// connection Secret and events (or the end of a deletion).
    async fn carry_out(
        &self,
        decision: Decision<K::Change>,
        observation: Option<&Observation<K::Observed>>,
    ) -> Result<Action, Error> {
        if let Some(metadata) = &decision.metadata {
            self.write_metadata(metadata).await?;
        }
        if decision.drift_found {
            self.engine
                .metrics
                .drift_detected
                .get_or_create(&DriftLabels {
                    kind: K::KIND,
                    provider: self.provider_name(),
                })
                .inc();
        }
        if let Some(note) = &decision.finish_delete {
            self.finish_delete(note).await?;
            return Ok(self.requeue(decision.next));
        }
        let connection = observation
            .filter(|_| decision.publish_connection)
            .and_then(|o| o.connection.as_ref());
        let observed = observation.map(|o| &o.resource);
        // The connection Secret first: whoever sees Ready finds it. Status
        // and events then go out together.
        if let Some(connection) = connection {
            self.publish_connection(connection).await?;
        }
        let (status, ()) = tokio::join!(
            async {
                match &decision.status {
                    Some(plan) => self.write_status(plan, observed).await,
                    None => Ok(()),
                }
            },
            self.publish(&decision.notes),
        );
        status?;
        Ok(self.requeue(decision.next))
    }

    async fn publish(&self, notes: &[Note]) {
        let regarding = self.obj.object_ref(&());
        for note in notes {
            self.engine
                .recorder
                .publish(
                    &regarding,
                    note.type_,
                    &note.reason,
                    note.action,
                    &note.message,
                )
                .await;
        }
    }

    /// Writes the status by server-side apply, only when it changed (or the
    /// last observation time is older than ten poll intervals).
    async fn write_status(
        &self,
        plan: &StatusPlan,
        observed: Option<&K::Observed>,
    ) -> Result<(), Error> {
        let now = conditions::now();
        let current = self.obj.status().cloned().unwrap_or_default();
        let generation = self.obj.meta().generation;
        let conditions =
            conditions::merge(current.conditions(), &plan.conditions, generation, &now);
        let observed = observed.filter(|_| plan.observed);
        let last_observed = current.last_observed().cloned();
        let create_succeeded = plan
            .create_succeeded
            .map(|t| Time(Timestamp::from_second(t.as_second()).unwrap_or(t)))
            .or_else(|| current.create_succeeded().cloned());
        let report = |last_observed| StatusReport {
            phase: plan.phase,
            conditions: conditions.clone(),
            observed_generation: plan.observed_generation,
            observed,
            drift: plan.drift.clone(),
            last_observed,
            create_succeeded: create_succeeded.clone(),
        };
        let candidate = self
            .obj
            .build_status(report(last_observed.clone()), self.config.as_deref());
        let stale = last_observed.as_ref().is_none_or(|t| {
            let age = Timestamp::now().duration_since(t.0);
            age.as_secs() > (self.poll_interval() * 10).as_secs() as i64
        });
        let refresh = stale && observed.is_some();
        if candidate == current && self.obj.status().is_some() && !refresh {
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
        let returned = self
            .api
            .patch_status(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.engine.remember_write(returned);
        Ok(())
    }

    /// Applies the metadata fleetforge owns: the finalizer and its
    /// annotations. Server-side apply removes what a previous apply set and
    /// this one leaves out (a marker a new one replaces, a finalizer no
    /// longer wanted), and never touches anyone else's fields.
    async fn write_metadata(&self, metadata: &Metadata) -> Result<(), Error> {
        let mut annotations = BTreeMap::new();
        annotations.insert(
            annotation::EXTERNAL_NAME.to_string(),
            metadata.external_name.clone(),
        );
        match metadata.mark {
            Some(Mark::Pending(at)) => {
                annotations.insert(annotation::CREATE_PENDING.to_string(), at.to_string());
            }
            Some(Mark::Failed(at)) => {
                annotations.insert(annotation::CREATE_FAILED.to_string(), at.to_string());
            }
            None => {
                let existing = self.obj.annotations();
                for key in [
                    annotation::CREATE_PENDING,
                    annotation::CREATE_SUCCEEDED,
                    annotation::CREATE_FAILED,
                ] {
                    if let Some(value) = existing.get(key) {
                        annotations.insert(key.to_string(), value.clone());
                    }
                }
            }
        }
        let finalizers: Vec<&str> = if metadata.finalizer {
            vec![FINALIZER]
        } else {
            vec![]
        };
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
        let returned = self
            .api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.engine.remember_write(returned);
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
        let published = |engine: &Engine<K>| {
            engine
                .published
                .lock()
                .expect("published map")
                .insert(key.clone(), hash);
        };
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
            published(self.engine);
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
        published(self.engine);
        Ok(())
    }

    /// Removes the connection Secret and the finalizer, telling why.
    async fn finish_delete(&self, note: &Note) -> Result<(), Error> {
        let secrets: Api<Secret> = Api::namespaced(self.engine.client.clone(), &self.namespace);
        match secrets
            .delete(&self.obj.connection_secret_name(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        self.engine.forget(self.obj);
        self.publish(std::slice::from_ref(note)).await;
        let external_name = self
            .obj
            .annotations()
            .get(annotation::EXTERNAL_NAME)
            .cloned()
            .unwrap_or_else(|| self.name.clone());
        self.write_metadata(&Metadata {
            finalizer: false,
            external_name,
            mark: None,
        })
        .await
    }
}
