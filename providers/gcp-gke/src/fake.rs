//! An in-process GKE for tests: an HTTP server on 127.0.0.1 that speaks the
//! part of the Kubernetes Engine REST API v1 this provider calls, as
//! google-cloud-container-v1 sends it (paths from its `transport.rs`).
//!
//! It follows the REST reference sections `projects.locations.clusters`
//! (get, create, delete, updateMaster), `projects.locations.clusters.nodePools`
//! (get, create, delete, update, setSize, setAutoscaling),
//! `projects.locations.operations` (get), the `Cluster`, `NodePool` and
//! `Operation` resources (camelCase JSON, enum names as strings) and the
//! error body `{"error": {"code", "message", "status"}}` (AIP-193). The
//! client sends enums as numbers (protobuf JSON allows either); the fake
//! stores request fields as sent and answers statuses by name.
//!
//! Every mutation answers an `Operation` RUNNING and moves its resource to
//! PROVISIONING, RECONCILING or STOPPING for the operation delay, then to
//! RUNNING (or away); another mutation of the same cluster meanwhile gets
//! GKE's FAILED_PRECONDITION "running incompatible operation". Tests can
//! fail the next calls (429 with Retry-After, or 503), put clusters made
//! elsewhere, and resize a pool out of band. Authorization is not checked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as Shared;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The version a cluster gets when its request names none.
pub const DEFAULT_VERSION: &str = "1.33.5-gke.1080000";

/// A base64 PEM standing in for a cluster CA.
const FAKE_CA: &str =
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCmZha2UKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=";

/// The running fake. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeGke {
    endpoint: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    /// By resource name `projects/p/locations/l/clusters/c`.
    clusters: BTreeMap<String, Value>,
    /// By resource name `projects/p/locations/l/operations/o`.
    operations: BTreeMap<String, Value>,
    pending: Vec<Pending>,
    next_operation: u64,
    delay: Duration,
    faults: VecDeque<u16>,
    requests: Vec<String>,
}

#[derive(Debug)]
struct Pending {
    done_at: Instant,
    operation: String,
    cluster: String,
    finish: Finish,
}

#[derive(Debug)]
enum Finish {
    ClusterRunning,
    PoolRunning(String),
    RemoveCluster,
    RemovePool(String),
}

impl Drop for FakeGke {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGke {
    /// Starts a fake whose operations take `delay`.
    pub async fn start(delay: Duration) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            delay,
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            endpoint,
            state,
            server,
        })
    }

    /// The URL to put in a ProviderConfig's `spec.endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `count` calls answer HTTP `status`: 429 (RESOURCE_EXHAUSTED,
    /// `Retry-After: 3`) or anything else as 503 UNAVAILABLE.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.lock()
            .faults
            .extend(std::iter::repeat_n(status, count));
    }

    /// Stores `cluster` (GKE JSON) under `projects/{project}/locations/{location}`,
    /// as if made outside fleetforge.
    pub fn put_cluster(&self, project: &str, location: &str, cluster: Value) {
        let name = cluster["name"].as_str().unwrap_or_default().to_string();
        let key = format!("projects/{project}/locations/{location}/clusters/{name}");
        self.lock().clusters.insert(key, cluster);
    }

    /// The stored JSON of cluster `name` (`projects/p/locations/l/clusters/c`).
    pub fn cluster(&self, name: &str) -> Option<Value> {
        let mut state = self.lock();
        state.settle();
        state.clusters.get(name).cloned()
    }

    /// Resizes pool `pool` of cluster `name` behind the provider's back.
    pub fn set_pool_size(&self, name: &str, pool: &str, size: i32) {
        if let Some(pool) = self
            .lock()
            .clusters
            .get_mut(name)
            .and_then(|c| find_pool(c, pool))
        {
            pool["initialNodeCount"] = json!(size);
        }
    }

    /// `METHOD /path` of every call so far.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

fn find_pool<'a>(cluster: &'a mut Value, pool: &str) -> Option<&'a mut Value> {
    cluster["nodePools"]
        .as_array_mut()?
        .iter_mut()
        .find(|p| p["name"] == pool)
}

fn int(value: &Value) -> i64 {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// The patch version GKE would pick for `requested` (`""`, `1.34`, `1.34.1-gke.2`).
fn resolve_version(requested: &str) -> String {
    match requested.split('.').count() {
        _ if requested.is_empty() || requested == "latest" => DEFAULT_VERSION.to_string(),
        2 => format!("{requested}.5-gke.1080000"),
        _ => requested.to_string(),
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": code}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("Not found: {name}."),
    )
}

impl State {
    /// Finishes every operation whose time has come.
    fn settle(&mut self) {
        let now = Instant::now();
        let (done, running): (Vec<Pending>, Vec<Pending>) =
            self.pending.drain(..).partition(|p| p.done_at <= now);
        self.pending = running;
        for pending in done {
            let cluster = &pending.cluster;
            match &pending.finish {
                Finish::RemoveCluster => {
                    self.clusters.remove(cluster);
                }
                Finish::ClusterRunning => {
                    if let Some(c) = self.clusters.get_mut(cluster) {
                        c["status"] = json!("RUNNING");
                        for pool in c["nodePools"].as_array_mut().into_iter().flatten() {
                            pool["status"] = json!("RUNNING");
                        }
                    }
                }
                Finish::PoolRunning(pool) => {
                    if let Some(p) = self
                        .clusters
                        .get_mut(cluster)
                        .and_then(|c| find_pool(c, pool))
                    {
                        p["status"] = json!("RUNNING");
                    }
                }
                Finish::RemovePool(pool) => {
                    if let Some(pools) = self
                        .clusters
                        .get_mut(cluster)
                        .and_then(|c| c["nodePools"].as_array_mut())
                    {
                        pools.retain(|p| p["name"] != pool.as_str());
                    }
                }
            }
            if let Some(op) = self.operations.get_mut(&pending.operation) {
                op["status"] = json!("DONE");
            }
        }
    }

    /// GKE's refusal while another operation holds `cluster`.
    fn busy(&self, cluster: &str) -> Option<Response> {
        let pending = self.pending.iter().find(|p| p.cluster == cluster)?;
        let id = pending.operation.rsplit('/').next().unwrap_or_default();
        Some(error(
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            &format!("Cluster is running incompatible operation {id}. Please wait and try again."),
        ))
    }

    /// Records a RUNNING operation of `kind` on `target` and answers it.
    fn start(
        &mut self,
        parent: &str,
        cluster: &str,
        kind: &str,
        target: &str,
        finish: Finish,
    ) -> Response {
        self.next_operation += 1;
        let location = parent.rsplit('/').next().unwrap_or_default();
        let name = format!("{parent}/operations/operation-{}", self.next_operation);
        let operation = json!({
            "name": format!("operation-{}", self.next_operation),
            "zone": location,
            "location": location,
            "operationType": kind,
            "status": "RUNNING",
            "selfLink": format!("https://container.googleapis.com/v1/{name}"),
            "targetLink": format!("https://container.googleapis.com/v1/{target}"),
        });
        self.operations.insert(name.clone(), operation.clone());
        self.pending.push(Pending {
            done_at: Instant::now() + self.delay,
            operation: name,
            cluster: cluster.to_string(),
            finish,
        });
        ok(&operation)
    }
}

async fn handle(
    Shared(state): Shared<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.requests.push(format!("{method} {}", uri.path()));
    if let Some(status) = state.faults.pop_front() {
        if status == 429 {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Too many requests: rate limit exceeded; try again later.",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("3"));
            return response;
        }
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The service is currently unavailable.",
        );
    }
    state.settle();
    let path = uri.path().strip_prefix("/v1/").unwrap_or_default();
    let (path, verb) = path.split_once(':').unwrap_or((path, ""));
    let segments: Vec<&str> = path.split('/').collect();
    match (method.as_str(), verb, segments.as_slice()) {
        ("GET", "", ["projects", _, "locations", _, "operations", _]) => {
            match state.operations.get(path) {
                Some(op) => ok(op),
                None => not_found(path),
            }
        }
        ("POST", "", ["projects", _, "locations", _, "clusters"]) => {
            let parent = path.trim_end_matches("/clusters");
            create_cluster(&mut state, parent, body)
        }
        (_, _, ["projects", _, "locations", _, "clusters", _]) => {
            let parent = path.split("/clusters/").next().unwrap_or_default();
            cluster_call(&mut state, method.as_str(), verb, parent, path, &body)
        }
        ("POST", "", ["projects", _, "locations", _, "clusters", _, "nodePools"]) => {
            let cluster = path.trim_end_matches("/nodePools");
            create_pool(&mut state, cluster, body)
        }
        (
            _,
            _,
            [
                "projects",
                _,
                "locations",
                _,
                "clusters",
                _,
                "nodePools",
                pool,
            ],
        ) => {
            let cluster = path.split("/nodePools/").next().unwrap_or_default();
            pool_call(&mut state, method.as_str(), verb, cluster, pool, &body)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no route {method} {}", uri.path()),
        ),
    }
}

/// `projects.locations.clusters.create`.
fn create_cluster(state: &mut State, parent: &str, body: Value) -> Response {
    let mut cluster = body["cluster"].clone();
    let Some(id) = cluster["name"].as_str().map(str::to_string) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Cluster.name is required.",
        );
    };
    let name = format!("{parent}/clusters/{id}");
    if state.clusters.contains_key(&name) {
        return error(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            &format!("Already exists: {name}."),
        );
    }
    if cluster["nodePools"].as_array().is_none_or(Vec::is_empty)
        && int(&cluster["initialNodeCount"]) == 0
    {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Cluster.initial_node_count must be greater than zero.",
        );
    }
    let version = resolve_version(
        cluster["initialClusterVersion"]
            .as_str()
            .unwrap_or_default(),
    );
    let location = parent.rsplit('/').next().unwrap_or_default();
    for pool in cluster["nodePools"].as_array_mut().into_iter().flatten() {
        pool["status"] = json!("PROVISIONING");
        pool["version"] = json!(version);
    }
    cluster["status"] = json!("PROVISIONING");
    cluster["location"] = json!(location);
    cluster["zone"] = json!(location);
    cluster["endpoint"] = json!("203.0.113.7");
    cluster["masterAuth"] = json!({"clusterCaCertificate": FAKE_CA});
    cluster["currentMasterVersion"] = json!(version);
    cluster["selfLink"] = json!(format!("https://container.googleapis.com/v1/{name}"));
    state.clusters.insert(name.clone(), cluster);
    state.start(
        parent,
        &name,
        "CREATE_CLUSTER",
        &name,
        Finish::ClusterRunning,
    )
}

/// `projects.locations.clusters.get`, `.delete` and `.updateMaster`.
fn cluster_call(
    state: &mut State,
    method: &str,
    verb: &str,
    parent: &str,
    name: &str,
    body: &Value,
) -> Response {
    if !state.clusters.contains_key(name) {
        return not_found(name);
    }
    if method == "GET" && verb.is_empty() {
        return ok(&state.clusters[name]);
    }
    if let Some(busy) = state.busy(name) {
        return busy;
    }
    let Some(cluster) = state.clusters.get_mut(name) else {
        return not_found(name);
    };
    match (method, verb) {
        ("DELETE", "") => {
            cluster["status"] = json!("STOPPING");
            state.start(parent, name, "DELETE_CLUSTER", name, Finish::RemoveCluster)
        }
        ("POST", "updateMaster") => {
            let version = resolve_version(body["masterVersion"].as_str().unwrap_or_default());
            cluster["currentMasterVersion"] = json!(version);
            cluster["status"] = json!("RECONCILING");
            state.start(parent, name, "UPGRADE_MASTER", name, Finish::ClusterRunning)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no route {method} {name}:{verb}"),
        ),
    }
}

/// `projects.locations.clusters.nodePools.create`.
fn create_pool(state: &mut State, cluster_name: &str, body: Value) -> Response {
    let mut pool = body["nodePool"].clone();
    let id = pool["name"].as_str().unwrap_or_default().to_string();
    let Some(cluster) = state.clusters.get(cluster_name) else {
        return not_found(cluster_name);
    };
    let version = cluster["currentMasterVersion"].clone();
    if cluster["nodePools"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == id.as_str()))
    {
        return error(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            &format!("Already exists: {cluster_name}/nodePools/{id}."),
        );
    }
    if let Some(busy) = state.busy(cluster_name) {
        return busy;
    }
    pool["status"] = json!("PROVISIONING");
    if pool["version"].as_str().is_none_or(str::is_empty) {
        pool["version"] = version;
    } else {
        pool["version"] = json!(resolve_version(
            pool["version"].as_str().unwrap_or_default()
        ));
    }
    let Some(cluster) = state.clusters.get_mut(cluster_name) else {
        return not_found(cluster_name);
    };
    if !cluster["nodePools"].is_array() {
        cluster["nodePools"] = json!([]);
    }
    if let Some(pools) = cluster["nodePools"].as_array_mut() {
        pools.push(pool);
    }
    let parent = cluster_name
        .split("/clusters/")
        .next()
        .unwrap_or_default()
        .to_string();
    let target = format!("{cluster_name}/nodePools/{id}");
    state.start(
        &parent,
        cluster_name,
        "CREATE_NODE_POOL",
        &target,
        Finish::PoolRunning(id),
    )
}

/// `projects.locations.clusters.nodePools.get`, `.delete`, `.update`,
/// `.setSize` and `.setAutoscaling`.
fn pool_call(
    state: &mut State,
    method: &str,
    verb: &str,
    cluster_name: &str,
    id: &str,
    body: &Value,
) -> Response {
    let target = format!("{cluster_name}/nodePools/{id}");
    let exists = state
        .clusters
        .get_mut(cluster_name)
        .and_then(|c| find_pool(c, id))
        .map(|p| p.clone());
    let Some(current) = exists else {
        return not_found(&target);
    };
    if method == "GET" && verb.is_empty() {
        return ok(&current);
    }
    if let Some(busy) = state.busy(cluster_name) {
        return busy;
    }
    let Some(pool) = state
        .clusters
        .get_mut(cluster_name)
        .and_then(|c| find_pool(c, id))
    else {
        return not_found(&target);
    };
    let (kind, finish) = match (method, verb) {
        ("DELETE", "") => {
            pool["status"] = json!("STOPPING");
            ("DELETE_NODE_POOL", Finish::RemovePool(id.to_string()))
        }
        ("PUT", "") => {
            pool["version"] = json!(resolve_version(
                body["nodeVersion"].as_str().unwrap_or_default()
            ));
            if let Some(image) = body["imageType"].as_str().filter(|i| !i.is_empty()) {
                pool["config"]["imageType"] = json!(image);
            }
            pool["status"] = json!("RECONCILING");
            ("UPGRADE_NODES", Finish::PoolRunning(id.to_string()))
        }
        ("POST", "setSize") => {
            pool["initialNodeCount"] = json!(int(&body["nodeCount"]));
            pool["status"] = json!("RECONCILING");
            ("SET_NODE_POOL_SIZE", Finish::PoolRunning(id.to_string()))
        }
        ("POST", "setAutoscaling") => {
            pool["autoscaling"] = body["autoscaling"].clone();
            pool["status"] = json!("RECONCILING");
            ("UPDATE_CLUSTER", Finish::PoolRunning(id.to_string()))
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("no route {method} {target}:{verb}"),
            );
        }
    };
    let parent = cluster_name
        .split("/clusters/")
        .next()
        .unwrap_or_default()
        .to_string();
    state.start(&parent, cluster_name, kind, &target, finish)
}
