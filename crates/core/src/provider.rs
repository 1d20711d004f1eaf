//! The provider interface: what a provider implements, and what it reports.
//!
//! A provider knows one cloud: how to observe, create, update and delete an
//! external resource, and how to build a kubeconfig for it. Everything else
//! (finalizers, external names, the create-pending guard, conditions,
//! events, policies, backoff, rate limits, the drift poll) is the engine's.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleetforge_api::ProviderConfig;

use crate::managed::Managed;

/// How a provider call failed, in terms the engine and users act on. Each
/// kind is also the `reason` of the condition it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Credentials are missing, malformed, expired or not allowed.
    AuthFailed,
    /// An account quota or limit was reached.
    QuotaExceeded,
    /// The provider asked us to slow down.
    Throttled,
    /// The resource (or something it needs) does not exist.
    NotFound,
    /// The provider refused the request as invalid.
    InvalidSpec,
    /// A resource with that name exists and is not ours.
    AlreadyExists,
    /// The provider accepted the operation but it failed.
    OperationFailed,
    /// The provider could not be reached or answered with a server error.
    Unavailable,
}

impl ErrorKind {
    /// The condition reason and metric label for this kind.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::AuthFailed => "AuthFailed",
            ErrorKind::QuotaExceeded => "QuotaExceeded",
            ErrorKind::Throttled => "Throttled",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::InvalidSpec => "InvalidSpec",
            ErrorKind::AlreadyExists => "AlreadyExists",
            ErrorKind::OperationFailed => "OperationFailed",
            ErrorKind::Unavailable => "Unavailable",
        }
    }
}

/// A failed provider call. The message is shown to users in conditions and
/// events, so providers must never put credentials in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// What kind of failure it was.
    pub kind: ErrorKind,
    /// What happened, for people.
    pub message: String,
    /// How long the provider asked us to wait (a Retry-After header).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, asking the caller to wait `after` before retrying.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

/// A spec the engine or provider will not apply, with the field to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Condition reason, for example `VersionSkew` or `UnsupportedVersion`.
    pub reason: &'static str,
    /// The spec field at fault, for example `spec.version`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Where the external resource is in its life, as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalState {
    /// Being created.
    Provisioning,
    /// Usable.
    Ready,
    /// A change is in progress; no other change may start.
    Updating,
    /// Being deleted.
    Deleting,
    /// It exists but does not serve (stopped, unreachable, unhealthy),
    /// with why. Its spec is still converged, so a correction (restarting
    /// it, for example) can be planned as drift.
    Degraded(String),
    /// The provider reports it failed, with its message.
    Failed(String),
}

/// How to reach a resource: written to its connection Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionDetails {
    /// A kubeconfig document.
    pub kubeconfig: String,
}

impl ConnectionDetails {
    /// A kubeconfig for cluster `name` at `server`, trusting the base64 PEM
    /// `certificate_authority_data` and authenticating with the bearer
    /// `token` (the form EKS, GKE and AKS endpoints take).
    pub fn bearer(name: &str, server: &str, certificate_authority_data: &str, token: &str) -> Self {
        // A YAML document built as JSON (JSON is YAML): every value is quoted
        // and escaped correctly whatever the cluster name holds.
        let document = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": certificate_authority_data,
                },
            }],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        });
        let mut kubeconfig = serde_json::to_string_pretty(&document).unwrap_or_default();
        kubeconfig.push('\n');
        Self { kubeconfig }
    }
}

/// The value of the ownership tag a provider puts on what it creates for
/// `obj`: `<namespace>/<name>`. The engine adopts an external resource only
/// when its tag names the object ([`Observation::owner`]).
pub fn owner_of<K: kube::Resource>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

impl fmt::Debug for ConnectionDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Kubeconfigs hold credentials; never print them.
        f.write_str("ConnectionDetails { kubeconfig: <redacted> }")
    }
}

/// What a provider found when it looked at an external resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation<O> {
    /// Life-cycle state.
    pub state: ExternalState,
    /// The owner recorded in the resource's ownership tag
    /// (`<namespace>/<name>` of the object that created it), if any.
    pub owner: Option<String>,
    /// How to connect, once the resource can be connected to.
    pub connection: Option<ConnectionDetails>,
    /// Kind-specific attributes (for a cluster: version, endpoint, pools).
    pub resource: O,
}

/// A provider's client for one account, for resources of kind `K`.
#[async_trait]
pub trait ExternalClient<K: Managed>: Send + Sync {
    /// Reads the external resource named `external_name`; `None` when it
    /// does not exist. One call per object per poll.
    async fn observe(
        &self,
        obj: &K,
        external_name: &str,
    ) -> Result<Option<Observation<K::Observed>>, ProviderError>;

    /// Creates the external resource under `external_name`, tagged as owned
    /// by `obj`. May return before the resource is ready.
    async fn create(&self, obj: &K, external_name: &str) -> Result<(), ProviderError>;

    /// Starts the given changes (the engine plans them; see
    /// [`Managed::plan`]). May return before they complete.
    async fn update(
        &self,
        obj: &K,
        external_name: &str,
        changes: &[K::Change],
    ) -> Result<(), ProviderError>;

    /// Starts deleting the external resource. Deleting one that is already
    /// gone is not an error.
    async fn delete(&self, obj: &K, external_name: &str) -> Result<(), ProviderError>;

    /// Refuses, before any call, a spec this provider cannot apply (an
    /// unsupported version, a missing provider block, ...).
    fn validate(&self, _obj: &K) -> Result<(), Refusal> {
        Ok(())
    }

    /// Whether a create is keyed by the external name: names are unique
    /// in the account (as cluster names are in an EKS region, a GKE
    /// location or an AKS resource group), so calling create again for a
    /// name can never make a second resource; at worst it fails as
    /// already existing. The engine then retries a create whose outcome
    /// was lost (the controller died during the call) once the creation
    /// grace period has passed with nothing listed, instead of waiting
    /// for a person. False (the default) keeps that decision with a
    /// person, for kinds a repeated call could duplicate.
    fn create_keyed_by_name(&self) -> bool {
        false
    }
}

/// The secret material a ProviderConfig points at. Never printed.
#[derive(Clone)]
pub enum Credentials {
    /// The bytes of the referenced Secret key.
    Secret(Vec<u8>),
    /// Use the controller's ambient identity.
    Ambient,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Secret(_) => f.write_str("Credentials::Secret(<redacted>)"),
            Credentials::Ambient => f.write_str("Credentials::Ambient"),
        }
    }
}

/// The size of one machine (node) type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineSize {
    /// vCPUs, in millicores.
    pub millicores: u64,
    /// Memory, in MiB.
    pub mebibytes: u64,
}

impl MachineSize {
    /// `vcpus` vCPUs and `gibibytes` GiB.
    pub fn new(vcpus: u64, gibibytes: u64) -> Self {
        Self {
            millicores: vcpus * 1000,
            mebibytes: gibibytes * 1024,
        }
    }
}

/// Builds clients for one provider kind from a ProviderConfig.
#[async_trait]
pub trait ProviderFactory<K: Managed>: Send + Sync {
    /// A client for the account `config` describes.
    async fn connect(
        &self,
        config: &ProviderConfig,
        credentials: Credentials,
    ) -> Result<Arc<dyn ExternalClient<K>>, ProviderError>;

    /// The size of `machine_type` in this provider's naming, when known
    /// (for estimates before anything is provisioned).
    fn machine_size(&self, _machine_type: &str) -> Option<MachineSize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_kubeconfig_names_server_ca_and_token() {
        let details = ConnectionDetails::bearer(
            "c1",
            "https://ABC.gr7.us-east-1.eks.amazonaws.com",
            "Q0E=",
            "k8s-aws-v1.x",
        );
        let doc: serde_json::Value = serde_json::from_str(&details.kubeconfig).unwrap();
        assert_eq!(
            doc["clusters"][0]["cluster"]["server"],
            "https://ABC.gr7.us-east-1.eks.amazonaws.com"
        );
        assert_eq!(
            doc["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(doc["users"][0]["user"]["token"], "k8s-aws-v1.x");
        assert_eq!(doc["current-context"], "c1");
    }
}
