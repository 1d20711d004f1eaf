//! A small typed client for the parts of Azure Resource Manager the AKS
//! provider uses: `Microsoft.ContainerService/managedClusters` and their
//! `agentPools` at a pinned api-version, with client-credentials tokens from
//! Microsoft Entra.
//!
//! Calls return as soon as ARM accepted them (201/202 with an
//! `Azure-AsyncOperation` header); the engine polls the resource's
//! `provisioningState` rather than the operation. [`ArmClient::operation_status`]
//! reads an operation for callers that want it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetforge_core::{ErrorKind, ProviderError};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::credentials::ServicePrincipal;
use crate::errors::{arm_error, retry_after_seconds, scrub, token_error, transport_error};

/// The AKS REST api-version every call uses.
pub const API_VERSION: &str = "2024-09-01";

/// The public cloud's ARM endpoint.
pub const PUBLIC_ENDPOINT: &str = "https://management.azure.com";

/// The token scope for ARM.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// How long one call may take (the engine retries).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A token is renewed this long before Entra says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An ARM answer: its status, body and the headers the provider reads.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
    /// `Azure-AsyncOperation`: where the operation's status can be read.
    pub async_operation: Option<String>,
}

/// A managed cluster as ARM returns it (the fields the provider reads).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedCluster {
    /// Resource name.
    #[serde(default)]
    pub name: Option<String>,
    /// Azure region.
    #[serde(default)]
    pub location: Option<String>,
    /// Resource tags.
    #[serde(default)]
    pub tags: Option<HashMap<String, String>>,
    /// `properties`.
    #[serde(default)]
    pub properties: ManagedClusterProperties,
}

/// `properties` of a managed cluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterProperties {
    /// `Creating`, `Succeeded`, `Updating`, `Upgrading`, `Deleting`,
    /// `Failed`, ...
    #[serde(default)]
    pub provisioning_state: Option<String>,
    /// Whether the cluster runs or was stopped.
    #[serde(default)]
    pub power_state: Option<PowerState>,
    /// The requested version (`1.30` or `1.30.5`).
    #[serde(default)]
    pub kubernetes_version: Option<String>,
    /// The version running now.
    #[serde(default)]
    pub current_kubernetes_version: Option<String>,
    /// API server host name.
    #[serde(default)]
    pub fqdn: Option<String>,
    /// Every agent pool of the cluster.
    #[serde(default)]
    pub agent_pool_profiles: Option<Vec<AgentPoolProfile>>,
}

/// `powerState`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PowerState {
    /// `Running` or `Stopped`.
    #[serde(default)]
    pub code: Option<String>,
}

/// One agent pool, as listed in `agentPoolProfiles` (the same fields as an
/// agent pool's `properties`, plus its name).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolProfile {
    /// Pool name.
    #[serde(default)]
    pub name: String,
    /// VM size, for example `Standard_D4s_v5`.
    #[serde(default)]
    pub vm_size: Option<String>,
    /// Node count.
    #[serde(default)]
    pub count: Option<i32>,
    /// Whether the cluster autoscaler manages the count.
    #[serde(default)]
    pub enable_auto_scaling: Option<bool>,
    /// Autoscaler lower bound.
    #[serde(default)]
    pub min_count: Option<i32>,
    /// Autoscaler upper bound.
    #[serde(default)]
    pub max_count: Option<i32>,
    /// Requested Kubernetes version of the nodes.
    #[serde(default)]
    pub orchestrator_version: Option<String>,
    /// Kubernetes version running on the nodes.
    #[serde(default)]
    pub current_orchestrator_version: Option<String>,
    /// `Creating`, `Succeeded`, `Scaling`, `Upgrading`, `Deleting`, ...
    #[serde(default)]
    pub provisioning_state: Option<String>,
    /// `System` or `User`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Pool tags.
    #[serde(default)]
    pub tags: Option<HashMap<String, String>>,
}

/// The ARM client of one subscription.
pub struct ArmClient {
    http: HttpClient,
    endpoint: String,
    principal: ServicePrincipal,
    token: Mutex<Option<(Instant, String)>>,
}

impl fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.endpoint)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for path
/// segments and form values.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl ArmClient {
    /// A client for `endpoint` (ARM's public endpoint when `None`),
    /// authenticating as `principal`.
    pub fn new(endpoint: Option<&str>, principal: ServicePrincipal) -> Result<Self, ProviderError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "no TLS root certificates could be loaded to reach Azure ({e}); install the system CA certificates"
                    ),
                )
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(https),
            endpoint: endpoint
                .unwrap_or(PUBLIC_ENDPOINT)
                .trim_end_matches('/')
                .to_string(),
            principal,
            token: Mutex::new(None),
        })
    }

    /// The subscription the client works in.
    pub fn subscription_id(&self) -> &str {
        &self.principal.subscription_id
    }

    /// The ARM path of managed cluster `name` in `resource_group`.
    pub fn cluster_path(&self, resource_group: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerService/managedClusters/{}",
            encode(&self.principal.subscription_id),
            encode(resource_group),
            encode(name)
        )
    }

    /// The ARM path of agent pool `pool` of cluster `name`.
    pub fn pool_path(&self, resource_group: &str, name: &str, pool: &str) -> String {
        format!(
            "{}/agentPools/{}",
            self.cluster_path(resource_group, name),
            encode(pool)
        )
    }

    async fn send(
        &self,
        action: &str,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Response, ProviderError> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport_error(action, &e))?;
        let call = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| transport_error(action, &e))?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let status = response.status().as_u16();
            let retry_after = retry_after_seconds(header("retry-after").as_deref());
            let async_operation = header("azure-asyncoperation");
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport_error(action, &e))?
                .to_bytes();
            Ok(Response {
                status,
                body,
                retry_after,
                async_operation,
            })
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(transport_error(action, &"timed out")),
        }
    }

    /// An access token for ARM, reused until shortly before it expires.
    async fn access_token(&self) -> Result<String, ProviderError> {
        if let Some((until, token)) = self
            .token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let p = &self.principal;
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            p.authority_host,
            encode(&p.tenant_id)
        );
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
            encode(&p.client_id),
            encode(&p.client_secret),
            encode(ARM_SCOPE)
        );
        let headers = [(
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        )];
        let response = self
            .send(
                "token request",
                Method::POST,
                &url,
                &headers,
                form.into_bytes(),
            )
            .await?;
        if response.status != 200 {
            return Err(token_error(
                response.status,
                &response.body,
                response.retry_after,
            ));
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default)]
            expires_in: Option<serde_json::Value>,
        }
        let token: Token = serde_json::from_slice(&response.body).map_err(|e| {
            ProviderError::new(
                ErrorKind::AuthFailed,
                format!("Microsoft Entra answered the token request with no access token ({e})"),
            )
        })?;
        // v2.0 sends a number; v1.0 sent a string.
        let lifetime = token
            .expires_in
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .map_or(Duration::ZERO, Duration::from_secs);
        let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((until, token.access_token.clone()));
        Ok(token.access_token)
    }

    /// Calls ARM: `method` on `path` (under the endpoint, without the
    /// api-version) with an optional JSON `body` and extra `headers`. Any
    /// status is returned; only failures to get a token or to reach ARM are
    /// errors. The secret never appears in an error.
    pub async fn call(
        &self,
        action: &str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        extra: &[(&str, String)],
    ) -> Result<Response, ProviderError> {
        let result = async {
            let token = self.access_token().await?;
            let separator = if path.contains('?') { '&' } else { '?' };
            let url = if path.starts_with("http://") || path.starts_with("https://") {
                path.to_string()
            } else {
                format!(
                    "{}{path}{separator}api-version={API_VERSION}",
                    self.endpoint
                )
            };
            let mut headers = vec![("authorization", format!("Bearer {token}"))];
            headers.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
            let bytes = match body {
                Some(body) => {
                    headers.push(("content-type", "application/json".to_string()));
                    body.to_string().into_bytes()
                }
                None => Vec::new(),
            };
            let response = self.send(action, method, &url, &headers, bytes).await?;
            if response.status == 401 {
                // Revoked or expired early: get a new token next time.
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Ok(response)
        }
        .await;
        result.map_err(|e| scrub(e, &self.principal.client_secret))
    }

    /// `call`, with any status but `ok` turned into an error.
    async fn expect(
        &self,
        action: &str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        extra: &[(&str, String)],
        ok: &[u16],
    ) -> Result<Response, ProviderError> {
        let response = self.call(action, method, path, body, extra).await?;
        if ok.contains(&response.status) {
            Ok(response)
        } else {
            Err(scrub(
                arm_error(
                    action,
                    response.status,
                    &response.body,
                    response.retry_after,
                ),
                &self.principal.client_secret,
            ))
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        action: &str,
        response: &Response,
    ) -> Result<T, ProviderError> {
        serde_json::from_slice(&response.body).map_err(|e| {
            ProviderError::new(
                ErrorKind::OperationFailed,
                format!("AKS {action} returned a body that could not be read ({e})"),
            )
        })
    }

    /// Managed cluster `name`, raw; `None` when it does not exist.
    pub async fn get_cluster_json(
        &self,
        resource_group: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, ProviderError> {
        let action = format!("GET managedCluster {resource_group}/{name}");
        let path = self.cluster_path(resource_group, name);
        let response = self
            .expect(&action, Method::GET, &path, None, &[], &[200, 404])
            .await?;
        if response.status == 404 {
            return Ok(None);
        }
        Self::decode(&action, &response).map(Some)
    }

    /// Managed cluster `name`; `None` when it does not exist.
    pub async fn get_cluster(
        &self,
        resource_group: &str,
        name: &str,
    ) -> Result<Option<ManagedCluster>, ProviderError> {
        let Some(json) = self.get_cluster_json(resource_group, name).await? else {
            return Ok(None);
        };
        serde_json::from_value(json).map(Some).map_err(|e| {
            ProviderError::new(
                ErrorKind::OperationFailed,
                format!("AKS GET managedCluster {resource_group}/{name} returned a cluster that could not be read ({e})"),
            )
        })
    }

    /// Creates (with `create_only`, failing with `AlreadyExists` when it
    /// exists) or replaces managed cluster `name` with `body`.
    pub async fn put_cluster(
        &self,
        resource_group: &str,
        name: &str,
        body: &serde_json::Value,
        create_only: bool,
    ) -> Result<Response, ProviderError> {
        let action = format!("PUT managedCluster {resource_group}/{name}");
        let path = self.cluster_path(resource_group, name);
        let extra = if create_only {
            vec![("if-none-match", "*".to_string())]
        } else {
            Vec::new()
        };
        let response = self
            .call(&action, Method::PUT, &path, Some(body), &extra)
            .await?;
        match response.status {
            200 | 201 => Ok(response),
            412 if create_only => Err(ProviderError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "AKS cluster {resource_group}/{name} already exists; import it with the fleetforge.dev/external-name annotation, or choose another name"
                ),
            )),
            status => Err(scrub(
                arm_error(&action, status, &response.body, response.retry_after),
                &self.principal.client_secret,
            )),
        }
    }

    /// Starts deleting managed cluster `name`; one that is gone is fine.
    pub async fn delete_cluster(
        &self,
        resource_group: &str,
        name: &str,
    ) -> Result<(), ProviderError> {
        let action = format!("DELETE managedCluster {resource_group}/{name}");
        let path = self.cluster_path(resource_group, name);
        self.expect(
            &action,
            Method::DELETE,
            &path,
            None,
            &[],
            &[200, 202, 204, 404],
        )
        .await
        .map(drop)
    }

    /// Agent pool `pool`, raw; `None` when it does not exist.
    pub async fn get_pool_json(
        &self,
        resource_group: &str,
        name: &str,
        pool: &str,
    ) -> Result<Option<serde_json::Value>, ProviderError> {
        let action = format!("GET agentPool {resource_group}/{name}/{pool}");
        let path = self.pool_path(resource_group, name, pool);
        let response = self
            .expect(&action, Method::GET, &path, None, &[], &[200, 404])
            .await?;
        if response.status == 404 {
            return Ok(None);
        }
        Self::decode(&action, &response).map(Some)
    }

    /// Creates or updates agent pool `pool` with `body`.
    pub async fn put_pool(
        &self,
        resource_group: &str,
        name: &str,
        pool: &str,
        body: &serde_json::Value,
    ) -> Result<Response, ProviderError> {
        let action = format!("PUT agentPool {resource_group}/{name}/{pool}");
        let path = self.pool_path(resource_group, name, pool);
        self.expect(&action, Method::PUT, &path, Some(body), &[], &[200, 201])
            .await
    }

    /// Starts deleting agent pool `pool`; one that is gone is fine.
    pub async fn delete_pool(
        &self,
        resource_group: &str,
        name: &str,
        pool: &str,
    ) -> Result<(), ProviderError> {
        let action = format!("DELETE agentPool {resource_group}/{name}/{pool}");
        let path = self.pool_path(resource_group, name, pool);
        self.expect(
            &action,
            Method::DELETE,
            &path,
            None,
            &[],
            &[200, 202, 204, 404],
        )
        .await
        .map(drop)
    }

    /// The first admin kubeconfig of cluster `name`, decoded
    /// (`listClusterAdminCredential`).
    pub async fn admin_kubeconfig(
        &self,
        resource_group: &str,
        name: &str,
    ) -> Result<Option<String>, ProviderError> {
        use base64::Engine;
        let action = format!("POST listClusterAdminCredential {resource_group}/{name}");
        let path = format!(
            "{}/listClusterAdminCredential",
            self.cluster_path(resource_group, name)
        );
        let response = self
            .expect(&action, Method::POST, &path, None, &[], &[200])
            .await?;
        #[derive(Deserialize)]
        struct Results {
            #[serde(default)]
            kubeconfigs: Vec<Credential>,
        }
        #[derive(Deserialize)]
        struct Credential {
            value: String,
        }
        let results: Results = Self::decode(&action, &response)?;
        let Some(first) = results.kubeconfigs.first() else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(first.value.trim())
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::OperationFailed,
                    format!("AKS {action} returned a kubeconfig that is not base64 ({e})"),
                )
            })?;
        String::from_utf8(bytes).map(Some).map_err(|_| {
            ProviderError::new(
                ErrorKind::OperationFailed,
                format!("AKS {action} returned a kubeconfig that is not UTF-8"),
            )
        })
    }

    /// The `status` of the asynchronous operation at `url` (an
    /// `Azure-AsyncOperation` header): `InProgress`, `Succeeded`, `Failed`
    /// or `Canceled`.
    pub async fn operation_status(&self, url: &str) -> Result<String, ProviderError> {
        let action = "GET operation status";
        let response = self
            .expect(action, Method::GET, url, None, &[], &[200])
            .await?;
        #[derive(Deserialize)]
        struct Status {
            status: String,
        }
        Self::decode::<Status>(action, &response).map(|s| s.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("rg-1_a.b~"), "rg-1_a.b~");
        assert_eq!(encode("a b/c?d&e=f"), "a%20b%2Fc%3Fd%26e%3Df");
        assert_eq!(
            encode(ARM_SCOPE),
            "https%3A%2F%2Fmanagement.azure.com%2F.default"
        );
    }

    #[test]
    fn a_cluster_is_read_from_arm_json() {
        let cluster: ManagedCluster = serde_json::from_value(serde_json::json!({
            "name": "c1",
            "location": "westeurope",
            "tags": null,
            "properties": {
                "provisioningState": "Succeeded",
                "powerState": {"code": "Running"},
                "kubernetesVersion": "1.30",
                "currentKubernetesVersion": "1.30.5",
                "fqdn": "c1-abc.hcp.westeurope.azmk8s.io",
                "agentPoolProfiles": [{
                    "name": "system", "vmSize": "Standard_D4s_v5", "count": 3,
                    "enableAutoScaling": true, "minCount": 1, "maxCount": 5,
                    "orchestratorVersion": "1.30", "currentOrchestratorVersion": "1.30.5",
                    "provisioningState": "Succeeded", "mode": "System"
                }]
            }
        }))
        .unwrap();
        assert_eq!(cluster.tags, None);
        let pools = cluster.properties.agent_pool_profiles.unwrap();
        assert_eq!(pools[0].max_count, Some(5));
        assert_eq!(pools[0].mode.as_deref(), Some("System"));
    }
}
