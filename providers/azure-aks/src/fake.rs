//! An in-process fake of the ARM and Microsoft Entra endpoints the AKS
//! provider calls, for tests (this crate's and the e2e crate's).
//!
//! It follows these reference sections, at api-version
//! [`API_VERSION`](crate::arm::API_VERSION):
//! - Microsoft identity platform, "OAuth 2.0 client credentials flow": `POST
//!   /{tenant}/oauth2/v2.0/token` with a form body; errors are
//!   `{"error", "error_description"}`.
//! - AKS REST "Managed Clusters": Get (200, or 404 `ResourceNotFound`),
//!   Create Or Update (201 on create, 200 on update, with
//!   `Azure-AsyncOperation`; `If-None-Match: *` on an existing cluster is
//!   412), Delete (202 with `Azure-AsyncOperation` and `Location`, 204 when
//!   absent), List Cluster Admin Credentials (`{"kubeconfigs": [{"name",
//!   "value"}]}`, values base64).
//! - AKS REST "Agent Pools": Get, Create Or Update, Delete, the same way.
//! - ARM "Track asynchronous Azure operations": the `Azure-AsyncOperation` URL
//!   answers `{"status": "InProgress" | "Succeeded"}`; the `Location` URL 202
//!   until done, then 204. The resource's `provisioningState` is
//!   `Creating`/`Updating`/`Upgrading`/`Scaling`/`Deleting` until the
//!   operation settles (after a configurable delay), then `Succeeded` (or
//!   gone). A change to a resource with an operation in progress is 409
//!   `OperationNotAllowed`; so are pool changes while the cluster is busy.
//! - ARM "Common error response": `{"error": {"code", "message"}}`.
//!
//! Fault injection ([`FakeAks::fail_next`]) answers the next ARM calls with
//! 429 (and `Retry-After`) or 500; [`FakeAks::set_pool_count`] changes a pool
//! out of band, the way someone in the portal would.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use crate::arm::{API_VERSION, ARM_SCOPE};

/// The tenant, client and subscription the fake accepts.
pub const TENANT_ID: &str = "00000000-0000-0000-0000-0000000000aa";
/// See [`TENANT_ID`].
pub const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000bb";
/// See [`TENANT_ID`].
pub const CLIENT_SECRET: &str = "fake~client~secret~0123456789";
/// See [`TENANT_ID`].
pub const SUBSCRIPTION_ID: &str = "00000000-0000-0000-0000-0000000000cc";

const TOKEN: &str = "fake-arm-access-token";

/// A failure the fake answers an ARM call with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 `TooManyRequests` with `Retry-After: <seconds>`.
    Throttle(u64),
    /// 500 `InternalServerError`.
    ServerError,
}

#[derive(Debug)]
struct Resource {
    /// What the client PUT (merged over the previous body), without state.
    body: Value,
    /// `provisioningState` while an operation runs, and when it settles.
    operation: Option<(String, Instant)>,
}

#[derive(Debug)]
struct Cluster {
    resource: Resource,
    pools: BTreeMap<String, Resource>,
}

#[derive(Debug, Default)]
struct Fake {
    base: String,
    settle: Duration,
    /// By (resource group, name), lower-cased as ARM names are.
    clusters: BTreeMap<(String, String), Cluster>,
    /// Operation id -> when it settles.
    operations: HashMap<String, Instant>,
    faults: VecDeque<Fault>,
    next_operation: u64,
    last_operation: Option<String>,
}

/// A running fake; it stops when dropped.
#[derive(Debug)]
pub struct FakeAks {
    url: String,
    state: Arc<Mutex<Fake>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAks {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeAks {
    /// Starts a fake on 127.0.0.1 whose operations settle after `settle`.
    pub async fn start(settle: Duration) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(Fake {
            base: url.clone(),
            settle,
            ..Fake::default()
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = tokio::spawn(async move {
            // The fake ends with the test; a serve error has nobody to go to.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, state, server })
    }

    /// The base URL: the ProviderConfig's `endpoint` and the Secret's
    /// `authorityHost`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Secret JSON the fake accepts, pointing the authority at it.
    pub fn secret_json(&self) -> String {
        json!({
            "tenantId": TENANT_ID,
            "clientId": CLIENT_ID,
            "clientSecret": CLIENT_SECRET,
            "subscriptionId": SUBSCRIPTION_ID,
            "authorityHost": self.url,
        })
        .to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers the next `calls` ARM calls with `fault`.
    pub fn fail_next(&self, calls: usize, fault: Fault) {
        self.lock().faults.extend(std::iter::repeat_n(fault, calls));
    }

    /// Sets pool `pool`'s node count out of band; false when there is no
    /// such pool.
    pub fn set_pool_count(
        &self,
        resource_group: &str,
        cluster: &str,
        pool: &str,
        count: i32,
    ) -> bool {
        let mut fake = self.lock();
        let key = (resource_group.to_lowercase(), cluster.to_lowercase());
        match fake
            .clusters
            .get_mut(&key)
            .and_then(|c| c.pools.get_mut(pool))
        {
            Some(pool) => {
                pool.body["count"] = json!(count);
                true
            }
            None => false,
        }
    }

    /// The `Azure-AsyncOperation` URL of the last operation started.
    pub fn last_async_operation(&self) -> Option<String> {
        self.lock().last_operation.clone()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

fn ok(status: StatusCode, body: &Value, headers: Vec<(&'static str, String)>) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn token(segments: &[&str], body: &[u8]) -> Response {
    let oauth = |status: StatusCode, code: &str, description: &str| {
        (
            status,
            [("content-type", "application/json")],
            json!({"error": code, "error_description": description}).to_string(),
        )
            .into_response()
    };
    if segments.first() != Some(&TENANT_ID) {
        return oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS90002: Tenant not found.",
        );
    }
    let form = form(body);
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        return oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != Some(CLIENT_ID) || field("client_secret") != Some(CLIENT_SECRET) {
        return oauth(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    if field("scope") != Some(ARM_SCOPE) {
        return oauth(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid.",
        );
    }
    ok(
        StatusCode::OK,
        &json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": TOKEN}),
        Vec::new(),
    )
}

async fn handle(
    State(state): State<Arc<Mutex<Fake>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    if segments.len() == 4 && segments[1..] == ["oauth2", "v2.0", "token"] && method == Method::POST
    {
        return token(&segments, &body);
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(TOKEN) {
        return error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        );
    }
    let api_version = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("api-version="));
    if api_version != Some(API_VERSION) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{}' is invalid; the fake supports '{API_VERSION}'.",
                api_version.unwrap_or_default()
            ),
        );
    }
    let mut fake = state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fault) = fake.faults.pop_front() {
        return match fault {
            Fault::Throttle(seconds) => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "The request is being throttled.",
                );
                if let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string()) {
                    response.headers_mut().insert("retry-after", value);
                }
                response
            }
            Fault::ServerError => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "An internal error occurred.",
            ),
        };
    }
    if segments.first() != Some(&"subscriptions") || segments.get(1) != Some(&SUBSCRIPTION_ID) {
        return error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            "The subscription could not be found.",
        );
    }
    fake.settle_all();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let if_none_match = headers.get("if-none-match").is_some();
    match (method, &segments[2..]) {
        (
            m,
            [
                "providers",
                "Microsoft.ContainerService",
                "locations",
                _,
                kind,
                id,
            ],
        ) if m == Method::GET => {
            let Some(done) = fake.operations.get(*id).copied() else {
                return error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "The operation was not found.",
                );
            };
            let finished = Instant::now() >= done;
            match *kind {
                "operations" => ok(
                    StatusCode::OK,
                    &json!({"name": id, "status": if finished { "Succeeded" } else { "InProgress" }}),
                    Vec::new(),
                ),
                _ if finished => StatusCode::NO_CONTENT.into_response(),
                _ => StatusCode::ACCEPTED.into_response(),
            }
        }
        (
            m,
            [
                "resourceGroups",
                rg,
                "providers",
                "Microsoft.ContainerService",
                "managedClusters",
                name,
            ],
        ) => fake.cluster_call(&m, rg, name, body, if_none_match),
        (
            m,
            [
                "resourceGroups",
                rg,
                "providers",
                "Microsoft.ContainerService",
                "managedClusters",
                name,
                "listClusterAdminCredential",
            ],
        ) if m == Method::POST => fake.credentials(rg, name),
        (
            m,
            [
                "resourceGroups",
                rg,
                "providers",
                "Microsoft.ContainerService",
                "managedClusters",
                name,
                "agentPools",
                pool,
            ],
        ) => fake.pool_call(&m, rg, name, pool, body),
        _ => error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found.",
        ),
    }
}

fn not_found(kind: &str, name: &str, rg: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.ContainerService/{kind}/{name}' under resource group '{rg}' was not found."
        ),
    )
}

fn busy(what: &str, state: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        "OperationNotAllowed",
        &format!(
            "Operation is not allowed because there's an in progress {state} operation on {what}; please wait for it to finish."
        ),
    )
}

/// Overlays `patch`'s fields on `base` (one level deep for `properties`).
fn merge(base: &mut Value, patch: &Value) {
    if let (Value::Object(base), Value::Object(patch)) = (base, patch) {
        for (key, value) in patch {
            match (base.get_mut(key), value) {
                (Some(Value::Object(old)), Value::Object(new)) if key == "properties" => {
                    old.extend(new.clone());
                }
                _ => {
                    base.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

fn running(version: &Value) -> Value {
    match version.as_str() {
        Some(v) if v.matches('.').count() == 1 => json!(format!("{v}.3")),
        Some(v) => json!(v),
        None => json!("1.30.3"),
    }
}

impl Fake {
    /// Starts an operation; returns its headers.
    fn operation(
        &mut self,
        location: &str,
        with_location: bool,
    ) -> (Instant, Vec<(&'static str, String)>) {
        self.next_operation += 1;
        let id = format!("op-{:06}", self.next_operation);
        let done = Instant::now() + self.settle;
        self.operations.insert(id.clone(), done);
        let prefix = format!(
            "{}/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.ContainerService/locations/{location}",
            self.base
        );
        let status = format!("{prefix}/operations/{id}?api-version={API_VERSION}");
        self.last_operation = Some(status.clone());
        let mut headers = vec![("azure-asyncoperation", status)];
        if with_location {
            headers.push((
                "location",
                format!("{prefix}/operationresults/{id}?api-version={API_VERSION}"),
            ));
        }
        (done, headers)
    }

    /// Finishes the operations whose time has come.
    fn settle_all(&mut self) {
        let now = Instant::now();
        let done = |r: &Resource| r.operation.as_ref().is_some_and(|(_, at)| now >= *at);
        let deleting = |r: &Resource| r.operation.as_ref().is_some_and(|(s, _)| s == "Deleting");
        self.clusters
            .retain(|_, c| !(done(&c.resource) && deleting(&c.resource)));
        for cluster in self.clusters.values_mut() {
            cluster.pools.retain(|_, p| !(done(p) && deleting(p)));
            for pool in cluster.pools.values_mut() {
                if done(pool) {
                    pool.operation = None;
                    pool.body["currentOrchestratorVersion"] =
                        running(&pool.body["orchestratorVersion"]);
                }
            }
            if done(&cluster.resource) {
                cluster.resource.operation = None;
                let props = &mut cluster.resource.body["properties"];
                props["currentKubernetesVersion"] = running(&props["kubernetesVersion"]);
            }
        }
    }

    fn render_pool(name: &str, pool: &Resource) -> Value {
        let mut props = pool.body.clone();
        props["provisioningState"] = json!(
            pool.operation
                .as_ref()
                .map_or("Succeeded", |(s, _)| s.as_str())
        );
        props["powerState"] = json!({"code": "Running"});
        if let Value::Object(map) = &mut props {
            map.retain(|_, v| !v.is_null());
            map.insert("name".into(), json!(name));
        }
        props
    }

    fn render_cluster(&self, rg: &str, name: &str, cluster: &Cluster) -> Value {
        let mut body = cluster.resource.body.clone();
        body["id"] = json!(format!(
            "/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}"
        ));
        body["name"] = json!(name);
        body["type"] = json!("Microsoft.ContainerService/ManagedClusters");
        let props = &mut body["properties"];
        props["provisioningState"] = json!(
            cluster
                .resource
                .operation
                .as_ref()
                .map_or("Succeeded", |(s, _)| s.as_str())
        );
        props["powerState"] = json!({"code": "Running"});
        props["agentPoolProfiles"] = Value::Array(
            cluster
                .pools
                .iter()
                .map(|(n, p)| Fake::render_pool(n, p))
                .collect(),
        );
        body
    }

    fn cluster_call(
        &mut self,
        method: &Method,
        rg: &str,
        name: &str,
        body: Value,
        if_none_match: bool,
    ) -> Response {
        let key = (rg.to_lowercase(), name.to_lowercase());
        let busy_state = self
            .clusters
            .get(&key)
            .and_then(|c| c.resource.operation.as_ref().map(|(s, _)| s.clone()));
        match *method {
            Method::GET => match self.clusters.get(&key) {
                Some(cluster) => ok(
                    StatusCode::OK,
                    &self.render_cluster(rg, name, cluster),
                    Vec::new(),
                ),
                None => not_found("managedClusters", name, rg),
            },
            Method::DELETE => {
                let Some(location) = self.clusters.get(&key).map(|c| {
                    c.resource.body["location"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                }) else {
                    return StatusCode::NO_CONTENT.into_response();
                };
                if busy_state.as_deref().is_some_and(|s| s != "Deleting") {
                    return busy(
                        &format!("managed cluster {name}"),
                        busy_state.as_deref().unwrap_or_default(),
                    );
                }
                let (done, headers) = self.operation(&location, true);
                if let Some(cluster) = self.clusters.get_mut(&key) {
                    cluster.resource.operation = Some(("Deleting".into(), done));
                }
                ok(StatusCode::ACCEPTED, &Value::Null, headers)
            }
            Method::PUT if self.clusters.contains_key(&key) => {
                if if_none_match {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "PreconditionFailed",
                        "The resource already exists.",
                    );
                }
                if let Some(state) = busy_state {
                    return busy(&format!("managed cluster {name}"), &state);
                }
                let location = body["location"].as_str().unwrap_or_default().to_string();
                let (done, headers) = self.operation(&location, false);
                let Some(cluster) = self.clusters.get_mut(&key) else {
                    return not_found("managedClusters", name, rg);
                };
                let old_version = cluster.resource.body["properties"]["kubernetesVersion"].clone();
                let mut patch = body.clone();
                let profiles = patch["properties"]
                    .as_object_mut()
                    .and_then(|p| p.remove("agentPoolProfiles"));
                merge(&mut cluster.resource.body, &patch);
                let new_version = cluster.resource.body["properties"]["kubernetesVersion"].clone();
                let upgrading = new_version != old_version;
                cluster.resource.operation = Some((
                    if upgrading { "Upgrading" } else { "Updating" }.into(),
                    done,
                ));
                // A pool follows the control plane unless its profile pins
                // orchestratorVersion.
                let pinned: HashMap<String, Value> = profiles
                    .as_ref()
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        Some((
                            p["name"].as_str()?.to_string(),
                            p["orchestratorVersion"].clone(),
                        ))
                    })
                    .collect();
                if upgrading {
                    for (pool_name, pool) in cluster.pools.iter_mut() {
                        let version = match pinned.get(pool_name) {
                            Some(v) if !v.is_null() => v.clone(),
                            _ => new_version.clone(),
                        };
                        if pool.body["orchestratorVersion"] != version {
                            pool.body["orchestratorVersion"] = version;
                            pool.operation = Some(("Upgrading".into(), done));
                        }
                    }
                }
                ok(
                    StatusCode::OK,
                    &self.render_cluster(rg, name, &self.clusters[&key]),
                    headers,
                )
            }
            Method::PUT => {
                let location = body["location"].as_str().unwrap_or_default().to_string();
                let profiles = body["properties"]["agentPoolProfiles"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if location.is_empty() {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidParameter",
                        "The value of parameter location is invalid.",
                    );
                }
                if !profiles.iter().any(|p| p["mode"] == "System") {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidParameter",
                        "A managed cluster needs at least one agent pool in System mode.",
                    );
                }
                let (done, headers) = self.operation(&location, false);
                let mut resource = body.clone();
                if let Some(props) = resource["properties"].as_object_mut() {
                    props.remove("agentPoolProfiles");
                    props.entry("kubernetesVersion").or_insert(json!("1.30"));
                    let prefix = props
                        .get("dnsPrefix")
                        .and_then(Value::as_str)
                        .unwrap_or(name)
                        .to_string();
                    props.insert(
                        "fqdn".into(),
                        json!(format!("{prefix}-f4k3.hcp.{location}.azmk8s.io")),
                    );
                }
                let version = resource["properties"]["kubernetesVersion"].clone();
                let pools = profiles
                    .into_iter()
                    .map(|mut p| {
                        let pool_name = p["name"].as_str().unwrap_or_default().to_string();
                        if let Some(map) = p.as_object_mut() {
                            map.remove("name");
                            map.entry("orchestratorVersion").or_insert(version.clone());
                        }
                        (
                            pool_name,
                            Resource {
                                body: p,
                                operation: Some(("Creating".into(), done)),
                            },
                        )
                    })
                    .collect();
                let cluster = Cluster {
                    resource: Resource {
                        body: resource,
                        operation: Some(("Creating".into(), done)),
                    },
                    pools,
                };
                let rendered = self.render_cluster(rg, name, &cluster);
                self.clusters.insert(key, cluster);
                ok(StatusCode::CREATED, &rendered, headers)
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "The method is not allowed.",
            ),
        }
    }

    fn pool_call(
        &mut self,
        method: &Method,
        rg: &str,
        name: &str,
        pool: &str,
        body: Value,
    ) -> Response {
        let key = (rg.to_lowercase(), name.to_lowercase());
        let Some(cluster) = self.clusters.get(&key) else {
            return not_found("managedClusters", name, rg);
        };
        let location = cluster.resource.body["location"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let cluster_busy = cluster.resource.operation.as_ref().map(|(s, _)| s.clone());
        let pool_busy = cluster
            .pools
            .get(pool)
            .and_then(|p| p.operation.as_ref().map(|(s, _)| s.clone()));
        let exists = cluster.pools.contains_key(pool);
        let render = |fake: &Fake| {
            let cluster = &fake.clusters[&key];
            let mut props = Fake::render_pool(pool, &cluster.pools[pool]);
            if let Value::Object(map) = &mut props {
                map.remove("name");
            }
            json!({
                "id": format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}/agentPools/{pool}"),
                "name": pool,
                "type": "Microsoft.ContainerService/managedClusters/agentPools",
                "properties": props,
            })
        };
        if *method == Method::GET {
            return if exists {
                ok(StatusCode::OK, &render(self), Vec::new())
            } else {
                not_found("agentPools", pool, rg)
            };
        }
        if let Some(state) = pool_busy.or(cluster_busy) {
            if *method == Method::DELETE && state == "Deleting" {
                return ok(StatusCode::ACCEPTED, &Value::Null, Vec::new());
            }
            return busy(&format!("managed cluster {name}"), &state);
        }
        match *method {
            Method::DELETE if !exists => StatusCode::NO_CONTENT.into_response(),
            Method::DELETE => {
                let systems = cluster
                    .pools
                    .iter()
                    .filter(|(n, p)| p.body["mode"] == "System" && n.as_str() != pool)
                    .count();
                if cluster.pools[pool].body["mode"] == "System" && systems == 0 {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "OperationNotAllowed",
                        "The last System agent pool of a cluster cannot be deleted.",
                    );
                }
                let (done, headers) = self.operation(&location, true);
                if let Some(p) = self
                    .clusters
                    .get_mut(&key)
                    .and_then(|c| c.pools.get_mut(pool))
                {
                    p.operation = Some(("Deleting".into(), done));
                }
                ok(StatusCode::ACCEPTED, &Value::Null, headers)
            }
            Method::PUT => {
                let props = body["properties"].clone();
                if !props.is_object() {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidParameter",
                        "properties are required.",
                    );
                }
                let auto = props["enableAutoScaling"] == json!(true);
                let (min, max) = (props["minCount"].as_i64(), props["maxCount"].as_i64());
                if auto && !matches!((min, max), (Some(lo), Some(hi)) if lo <= hi) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidParameter",
                        "minCount and maxCount are required, with minCount <= maxCount, when enableAutoScaling is true.",
                    );
                }
                if !auto && (min.is_some() || max.is_some()) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidParameter",
                        "minCount and maxCount must be null when enableAutoScaling is false.",
                    );
                }
                let old = cluster.pools.get(pool).map(|p| p.body.clone());
                if let Some(old) = &old
                    && props.get("vmSize").is_some_and(|v| *v != old["vmSize"])
                {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "PropertyChangeNotAllowed",
                        "Changing property 'vmSize' is not allowed.",
                    );
                }
                let version = cluster.resource.body["properties"]["kubernetesVersion"].clone();
                let (done, headers) = self.operation(&location, false);
                let mut new = old.clone().unwrap_or_else(|| json!({}));
                if let (Value::Object(new), Value::Object(props)) = (&mut new, props) {
                    for (k, v) in props {
                        new.insert(k, v);
                    }
                    new.entry("orchestratorVersion").or_insert(version);
                }
                let state = match &old {
                    None => "Creating",
                    Some(old) if old["orchestratorVersion"] != new["orchestratorVersion"] => {
                        "Upgrading"
                    }
                    Some(old) if old["count"] != new["count"] => "Scaling",
                    Some(_) => "Updating",
                };
                if let Some(cluster) = self.clusters.get_mut(&key) {
                    cluster.pools.insert(
                        pool.to_string(),
                        Resource {
                            body: new,
                            operation: Some((state.into(), done)),
                        },
                    );
                }
                let status = if old.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                ok(status, &render(self), headers)
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "The method is not allowed.",
            ),
        }
    }

    fn credentials(&self, rg: &str, name: &str) -> Response {
        let key = (rg.to_lowercase(), name.to_lowercase());
        let Some(cluster) = self.clusters.get(&key) else {
            return not_found("managedClusters", name, rg);
        };
        let fqdn = cluster.resource.body["properties"]["fqdn"]
            .as_str()
            .unwrap_or_default();
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://{fqdn}:443\n    certificate-authority-data: ZmFrZQ==\nusers:\n- name: clusterAdmin_{rg}_{name}\n  user:\n    token: fake-admin-token\ncontexts:\n- name: {name}-admin\n  context:\n    cluster: {name}\n    user: clusterAdmin_{rg}_{name}\ncurrent-context: {name}-admin\n"
        );
        let value = base64::engine::general_purpose::STANDARD.encode(kubeconfig);
        ok(
            StatusCode::OK,
            &json!({"kubeconfigs": [{"name": "clusterAdmin", "value": value}]}),
            Vec::new(),
        )
    }
}
