//! Provider accounts: a client per ProviderConfig, built from its
//! credentials and reused until the ProviderConfig changes or the client
//! is older than its time to live; and the ProviderConfig reconciler, which
//! says whether the account works (`Ready`) and which objects use it
//! (`InUse`, with the `fleetforge.dev/in-use` finalizer holding its
//! deletion while any does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetforge_api::provider_config::{CredentialsSource, ProviderConfigStatus};
use fleetforge_api::{FIELD_MANAGER, IN_USE_FINALIZER, ProviderConfig, annotation, condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};

use super::{Engine, Managed, Providers};
use crate::conditions::{self, Desired};
use crate::error::Error;
use crate::events::EventType;
use crate::provider::{Credentials, ExternalClient};

struct CachedClient<K: Managed> {
    client: Arc<dyn ExternalClient<K>>,
    resource_version: Option<String>,
    built: Instant,
}

type Slot<K> = Arc<tokio::sync::Mutex<Option<CachedClient<K>>>>;

/// Provider clients by ProviderConfig name. Building one holds that
/// ProviderConfig's own lock, never the map's.
pub struct Accounts<K: Managed> {
    client: Client,
    providers: Providers<K>,
    ttl: Duration,
    slots: Mutex<HashMap<String, Slot<K>>>,
}

impl<K: Managed> std::fmt::Debug for Accounts<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("providers", &self.providers)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<K: Managed> Accounts<K> {
    /// Accounts for `providers`, reading credentials through `client`.
    pub fn new(client: Client, providers: Providers<K>, ttl: Duration) -> Self {
        Self {
            client,
            providers,
            ttl,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A client for the account `config` describes, reused until the
    /// ProviderConfig changes or the client is older than the TTL.
    pub async fn connect(
        &self,
        config: &ProviderConfig,
    ) -> Result<Arc<dyn ExternalClient<K>>, Error> {
        let name = config.name_any();
        let slot = self
            .slots
            .lock()
            .expect("accounts")
            .entry(name)
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some(cached) = cached.as_ref()
            && cached.resource_version == config.resource_version()
            && cached.built.elapsed() < self.ttl
        {
            return Ok(cached.client.clone());
        }
        let factory = self
            .providers
            .get(config.spec.provider)
            .ok_or_else(|| Error::ProviderNotAvailable(config.spec.provider.to_string()))?;
        let credentials = self.credentials(config).await?;
        let client = factory.connect(config, credentials).await?;
        *cached = Some(CachedClient {
            client: client.clone(),
            resource_version: config.resource_version(),
            built: Instant::now(),
        });
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
pub async fn reconcile_provider_config<K: Managed>(
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

    let result = engine.accounts.connect(&config).await;
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
    let status = ProviderConfigStatus {
        conditions,
        observed_generation: generation,
        users: Some(count),
    };
    fleetforge_runtime::status::apply_if_changed(
        &api,
        &name,
        FIELD_MANAGER,
        config.status.as_ref(),
        &status,
    )
    .await?;
    // Credentials can change without the ProviderConfig changing.
    Ok(Action::requeue(engine.options.client_ttl))
}

/// The objects of kind `K` using ProviderConfig `name`, as namespace/name,
/// sorted. Read from the API server (metadata only, by the selectable field
/// [`Managed::PROVIDER_CONFIG_FIELD`]) rather than this process's cache,
/// which may hold only some namespaces or some shard of them.
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
}
