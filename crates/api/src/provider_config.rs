//! `ProviderConfig`: one provider account and how to reach it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{SecretKeySelector, conditions_schema};

/// One provider account: which provider, where its credentials come from,
/// and the defaults and limits that apply to every object using it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "fleetforge.dev",
    version = "v1alpha1",
    kind = "ProviderConfig",
    doc = "One provider account (AWS, Google Cloud, Azure, local, or the nop test provider): where credentials come from, endpoint, defaults, rate limit and poll interval.",
    status = "ProviderConfigStatus",
    shortname = "ffpc",
    category = "fleetforge",
    printcolumn(name = "PROVIDER", type_ = "string", json_path = ".spec.provider"),
    printcolumn(
        name = "CREDENTIALS",
        type_ = "string",
        json_path = ".spec.credentials.source"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "USERS", type_ = "integer", json_path = ".status.users"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.nop) || self.provider == 'nop'").message("nop settings apply only to provider nop").field_path(".nop"),
    validation = Rule::new("self.provider == oldSelf.provider").message("provider is immutable; create another ProviderConfig").field_path(".provider"),
)]
pub struct ProviderConfigSpec {
    /// The provider: `aws` (EKS), `gcp` (GKE), `azure` (AKS), `local`
    /// (real local clusters run by kwokctl) or `nop` (an in-process fake for
    /// tests and benchmarks, never a real cloud).
    pub provider: ProviderKind,
    /// Where credentials come from. Defaults to the ambient identity.
    #[serde(default)]
    pub credentials: Credentials,
    /// Overrides the provider API endpoint (an emulator, a private endpoint,
    /// a proxy), for example `http://127.0.0.1:5000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://\S+$"), length(max = 2048))]
    pub endpoint: Option<String>,
    /// Values used when an object leaves them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<ProviderDefaults>,
    /// How often each object's external resource is re-read to find drift
    /// (jittered by up to 10%), as a duration such as `60s` or `5m`.
    #[serde(default = "default_poll_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("pollInterval must be at least 1s"))]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub poll_interval: String,
    /// Client-side limit on provider API calls, shared by every object that
    /// uses this ProviderConfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Behaviour of the `nop` test provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nop: Option<NopSettings>,
}

fn default_poll_interval() -> String {
    "60s".to_string()
}

/// The provider an account belongs to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Amazon Web Services: EKS clusters.
    Aws,
    /// Google Cloud: GKE clusters.
    Gcp,
    /// Microsoft Azure: AKS clusters.
    Azure,
    /// Real local clusters on the controller's machine, run by kwokctl.
    Local,
    /// In-process fake provider for tests and benchmarks.
    Nop,
}

impl ProviderKind {
    /// The name used in the API, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Aws => "aws",
            ProviderKind::Gcp => "gcp",
            ProviderKind::Azure => "azure",
            ProviderKind::Local => "local",
            ProviderKind::Nop => "nop",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a provider's credentials come from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.source != 'Secret' || has(self.secretRef)").message("secretRef is required when source is Secret").field_path(".secretRef"))]
pub struct Credentials {
    /// `Secret` reads them from `secretRef`; `Ambient` uses the identity the
    /// controller runs as (instance profile, workload identity, managed
    /// identity, environment).
    #[serde(default)]
    pub source: CredentialsSource,
    /// The Secret key holding the credentials: for AWS an INI profile or
    /// JSON with `aws_access_key_id`, `aws_secret_access_key` and optional
    /// `aws_session_token`; for GCP a service-account JSON key; for Azure
    /// JSON with `tenantId`, `clientId`, `clientSecret` and `subscriptionId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeySelector>,
}

/// See [`Credentials::source`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CredentialsSource {
    /// Read credentials from a Secret.
    Secret,
    /// Use the controller's ambient identity.
    #[default]
    Ambient,
}

/// Defaults for objects that use this account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderDefaults {
    /// Region for clusters that do not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// GCP project for clusters that do not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub project: Option<String>,
    /// Azure resource group for clusters that do not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 90))]
    pub resource_group: Option<String>,
}

/// A token bucket: sustained `qps` calls per second, bursts of `burst`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained calls per second (may be fractional, for example 0.5).
    #[x_kube(validation = Rule::new("self > 0.0").message("qps must be greater than 0"))]
    #[schemars(range(max = 10000))]
    pub qps: f64,
    /// Calls allowed at once after a quiet period.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 10000))]
    pub burst: u32,
}

fn default_burst() -> u32 {
    10
}

/// Behaviour of the `nop` provider's fake cloud. Per-object faults are
/// injected with annotations (see the nop provider's documentation).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NopSettings {
    /// How long a create call takes to return, as a duration such as `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub create_delay: Option<String>,
    /// Latency of every other call (observe, update, delete), such as `20ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub call_delay: Option<String>,
    /// How long a created cluster stays provisioning before it is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::common::DURATION_PATTERN))]
    pub ready_delay: Option<String>,
    /// Fraction of calls, 0 to 1, that fail with a transient error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub failure_rate: Option<f64>,
    /// Seed of the failure draw, for reproducible runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Directory on the controller's host where the fake cloud keeps its
    /// resources, so they outlive a controller restart (crash tests).
    /// Without it they live in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_directory: Option<String>,
}

/// Observed state of a ProviderConfig.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfigStatus {
    /// `Ready`: the credentials were read and the provider client built;
    /// `InUse`: which objects use the account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many Clusters use this account. While any does, deleting the
    /// ProviderConfig waits (the `fleetforge.dev/in-use` finalizer), and the
    /// `InUse` condition names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<i32>,
}
