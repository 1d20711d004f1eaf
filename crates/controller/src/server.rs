//! The controller's HTTP endpoints: `/metrics` (Prometheus text format),
//! `/healthz` (the process runs) and `/readyz` (it reached the API server
//! and every controller runs; otherwise it says which stopped).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// What the endpoints report on.
#[derive(Debug)]
pub struct Health {
    /// Whether the API server answered and every controller runs.
    pub readiness: Arc<fleetforge_runtime::Readiness>,
    /// The metrics registry.
    pub registry: Registry,
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr`, reporting which address it got (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    Ok(listener)
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &health.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.readiness.problem() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, problem),
    }
}
