//! A loopback stub for the two EKS operations moto does not implement,
//! `UpdateClusterVersion` and `UpdateNodegroupVersion`, in front of moto:
//! every other request is forwarded to moto unchanged. It speaks the EKS
//! REST wire format (the paths and JSON of the EKS API reference):
//!
//! - `POST /clusters/{name}/updates` with `{"version": ...}` and
//!   `POST /clusters/{name}/node-groups/{group}/update-version` with
//!   `{"version": ...}` answer `{"update": {...}}` (type `VersionUpdate`,
//!   status `InProgress`);
//! - `GET /clusters/{name}` and `GET /clusters/{name}/node-groups/{group}`
//!   are moto's answers with `version` replaced by the upgraded one, and
//!   `status` `UPDATING` while the upgrade runs (`duration`), as EKS does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::Error;

/// What the stub remembers: the upgraded version of each cluster and node
/// group, and until when the upgrade is in progress.
#[derive(Debug, Default)]
struct Upgrades {
    clusters: HashMap<String, (String, Instant)>,
    groups: HashMap<(String, String), (String, Instant)>,
}

#[derive(Debug, Clone)]
struct Stub {
    moto: String,
    duration: Duration,
    upgrades: Arc<Mutex<Upgrades>>,
    client: Client<HttpConnector, Body>,
}

/// The stub, serving until dropped.
#[derive(Debug)]
pub struct EksUpgradeStub {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl EksUpgradeStub {
    /// Serves on a free loopback port in front of moto at `moto_url`; an
    /// upgrade stays `UPDATING` for `duration`.
    pub async fn start(moto_url: &str, duration: Duration) -> Result<Self, Error> {
        let stub = Stub {
            moto: moto_url.trim_end_matches('/').to_string(),
            duration,
            upgrades: Arc::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|e| Error::io("binding the EKS upgrade stub", e))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("reading the EKS upgrade stub's address", e))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().fallback(handle).with_state(stub);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            url: format!("http://{address}"),
            stop: Some(stop),
        })
    }

    /// The URL to give the SDK as its endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for EksUpgradeStub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `/clusters/{name}/...` split into its segments.
fn segments(uri: &Uri) -> Vec<String> {
    uri.path()
        .trim_matches('/')
        .split('/')
        .map(ToString::to_string)
        .collect()
}

async fn handle(State(stub): State<Stub>, request: Request) -> Response {
    let method = request.method().clone();
    let path = segments(request.uri());
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["clusters", cluster, "updates"]) => {
            let cluster = cluster.to_string();
            let Some(version) = requested_version(request).await else {
                return (StatusCode::BAD_REQUEST, "version is required").into_response();
            };
            stub.upgrades
                .lock()
                .expect("upgrades")
                .clusters
                .insert(cluster, (version.clone(), Instant::now() + stub.duration));
            update_response(&version)
        }
        ("POST", ["clusters", cluster, "node-groups", group, "update-version"]) => {
            let key = (cluster.to_string(), group.to_string());
            let Some(version) = requested_version(request).await else {
                return (StatusCode::BAD_REQUEST, "version is required").into_response();
            };
            stub.upgrades
                .lock()
                .expect("upgrades")
                .groups
                .insert(key, (version.clone(), Instant::now() + stub.duration));
            update_response(&version)
        }
        ("GET", ["clusters", cluster]) => {
            let upgrade = stub
                .upgrades
                .lock()
                .expect("upgrades")
                .clusters
                .get(*cluster)
                .cloned();
            forward(&stub, request, "cluster", upgrade).await
        }
        ("GET", ["clusters", cluster, "node-groups", group]) => {
            let upgrade = stub
                .upgrades
                .lock()
                .expect("upgrades")
                .groups
                .get(&(cluster.to_string(), group.to_string()))
                .cloned();
            forward(&stub, request, "nodegroup", upgrade).await
        }
        _ => forward(&stub, request, "", None).await,
    }
}

/// The `version` of an update request's JSON body, if it asks for one.
async fn requested_version(request: Request) -> Option<String> {
    let body = request.into_body().collect().await.ok()?.to_bytes();
    let body: Value = serde_json::from_slice(&body).ok()?;
    body["version"].as_str().map(ToString::to_string)
}

fn update_response(version: &str) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let body = json!({"update": {
        "id": format!("{:x}", (now * 1000.0) as u64),
        "status": "InProgress",
        "type": "VersionUpdate",
        "params": [{"type": "Version", "value": version}],
        "createdAt": now,
        "errors": [],
    }});
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Sends `request` to moto; for a describe (`field` names the object in the
/// answer) overlays an upgrade's version and status.
async fn forward(
    stub: &Stub,
    request: Request,
    field: &str,
    upgrade: Option<(String, Instant)>,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let target = format!(
        "{}{}",
        stub.moto,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let Ok(uri) = target.parse::<Uri>() else {
        return (StatusCode::BAD_GATEWAY, "bad target").into_response();
    };
    parts.uri = uri;
    parts.headers.remove("host");
    let answer = match stub.client.request(Request::from_parts(parts, body)).await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let (parts, body) = answer.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return (StatusCode::BAD_GATEWAY, "reading moto's answer").into_response();
    };
    let bytes = match upgrade {
        Some((version, until)) if parts.status.is_success() => {
            overlay(&bytes, field, &version, Instant::now() < until).unwrap_or(bytes)
        }
        _ => bytes,
    };
    let mut response = Response::from_parts(parts, Body::from(bytes));
    response.headers_mut().remove("content-length");
    response
}

fn overlay(bytes: &Bytes, field: &str, version: &str, updating: bool) -> Option<Bytes> {
    let mut body: Value = serde_json::from_slice(bytes).ok()?;
    let object = body.get_mut(field)?;
    object["version"] = json!(version);
    if updating {
        object["status"] = json!("UPDATING");
    }
    Some(Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_the_version_and_the_status_while_updating() {
        let moto = Bytes::from(r#"{"cluster":{"name":"a","version":"1.30","status":"ACTIVE"}}"#);
        let during: Value =
            serde_json::from_slice(&overlay(&moto, "cluster", "1.31", true).unwrap()).unwrap();
        assert_eq!(during["cluster"]["version"], "1.31");
        assert_eq!(during["cluster"]["status"], "UPDATING");
        let after: Value =
            serde_json::from_slice(&overlay(&moto, "cluster", "1.31", false).unwrap()).unwrap();
        assert_eq!(after["cluster"]["status"], "ACTIVE");
        assert!(overlay(&Bytes::from("not json"), "cluster", "1.31", false).is_none());
    }
}
