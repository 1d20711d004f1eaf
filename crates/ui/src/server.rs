//! The HTTP server: pages, their live streams, the environment actions,
//! the login form of token mode, the embedded script and style, and the
//! guards every response passes (loopback host names in kubeconfig mode,
//! a form token and same origin on every POST, a strict content policy).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use fleetforge_api::Environment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::Deserialize;

use crate::auth::{Refusal, Session, Sessions, TOKEN_COOKIE};
use crate::html::esc;
use crate::live::{self, View};
use crate::page::environments::Outcome;
use crate::page::{self, Viewer};
use crate::view::environments::{EXTENSIONS, EnvironmentsQuery, extended_ttl};

const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// Who is looking and their fleets.
    pub sessions: Sessions,
    /// The token every form carries back: random per process, so another
    /// site cannot forge a form that extends or deletes an environment.
    pub csrf: String,
    /// At most one update per open page per this interval.
    pub debounce: Duration,
}

/// The router of the fleet view.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page_handler))
        .route("/tools", get(page_handler))
        .route("/rollouts", get(page_handler))
        .route("/environments", get(page_handler))
        .route("/clusters/{namespace}/{name}", get(page_handler))
        .route("/virtualclusters/{namespace}/{name}", get(page_handler))
        .route("/tooltargets/{namespace}/{name}", get(page_handler))
        .route("/live", get(live_handler))
        .route("/live/", get(live_handler))
        .route("/live/{*path}", get(live_handler))
        .route(
            "/environments/{namespace}/{name}/{action}",
            post(environment_action),
        )
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route(
            "/assets/app.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/app.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Whether `host` (a Host header) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

/// Refuses what must not be served, and adds the security headers.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    // With the caller's own identity behind every answer, a page of
    // another site that resolves its name to 127.0.0.1 (DNS rebinding)
    // must get nothing.
    if !app.sessions.is_token() && !loopback_host(&host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "the fleet view answers only to localhost, 127.0.0.1 and [::1]\n",
        )
            .into_response();
    }
    if request.method() == axum::http::Method::POST
        && let Some(origin) = request.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("");
        let same = origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host);
        if !same {
            return (StatusCode::FORBIDDEN, "cross-origin form refused\n").into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not no-referrer: under it browsers send `Origin: null` with forms,
    // and the same-origin check above could not tell our forms apart.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn refusal_page(refusal: Refusal, token_mode: bool) -> Response {
    let login = if token_mode {
        r#"<p><a href="/login">Sign in</a></p>"#
    } else {
        ""
    };
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not signed in · fleetforge</title><link rel="stylesheet" href="/assets/app.css"></head><body><main id="main"><h1>fleetforge</h1><p class="notice notice-forbidden" role="alert">{}</p>{login}</main></body></html>"#,
        esc(&refusal.message)
    );
    let mut response = (refusal.status, Html(body)).into_response();
    if refusal.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fleetforge\""),
        );
    }
    response
}

fn viewer(app: &App, session: &Session) -> Viewer {
    Viewer {
        user: session.user.clone(),
        source: session.source.clone(),
        csrf: app.csrf.clone(),
    }
}

async fn page_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
) -> Response {
    let session = match app.sessions.session(&headers).await {
        Ok(session) => session,
        Err(refusal) => return refusal_page(refusal, app.sessions.is_token()),
    };
    let Some(view) = View::parse(uri.path(), &params) else {
        return (StatusCode::NOT_FOUND, "no such page\n").into_response();
    };
    // The first page shows the fleet, not "loading", unless the API
    // server is slow to list.
    session.fleet.await_loaded(Duration::from_secs(5)).await;
    let events = match &view {
        View::Object {
            kind,
            namespace,
            name,
        } => live::list_events(&session.fleet, *kind, namespace, name).await,
        _ => Ok(Vec::new()),
    };
    let viewer = viewer(&app, &session);
    let rendered = live::render(&view, &session.fleet, &viewer, &events);
    let mut src = format!("/live{}", uri.path());
    let since = live::fingerprint(&rendered.live);
    src.push_str(&match uri.query() {
        Some(q) => format!("?{q}&since={since}"),
        None => format!("?since={since}"),
    });
    Html(page::document(&rendered, &viewer, &src)).into_response()
}

async fn live_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Option<Path<String>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let session = match app.sessions.session(&headers).await {
        Ok(session) => session,
        Err(refusal) => return (refusal.status, refusal.message).into_response(),
    };
    let path = path.map(|Path(p)| p).unwrap_or_default();
    let Some(view) = View::parse(&path, &params) else {
        return (StatusCode::NOT_FOUND, "no such page\n").into_response();
    };
    // A reconnecting EventSource says what it last got.
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get("since").cloned())
        .unwrap_or_default();
    let viewer = viewer(&app, &session);
    let stream = live::follow_view(session.fleet.clone(), view, viewer, since, app.debounce);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    csrf: String,
    by: Option<String>,
}

async fn environment_action(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name, action)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let session = match app.sessions.session(&headers).await {
        Ok(session) => session,
        Err(refusal) => return refusal_page(refusal, app.sessions.is_token()),
    };
    if form.csrf != app.csrf {
        return (
            StatusCode::FORBIDDEN,
            "the form's token is not this server's: reload the page\n",
        )
            .into_response();
    }
    let envs: Api<Environment> = Api::namespaced(session.fleet.client.clone(), &namespace);
    let outcome = match action.as_str() {
        "extend" => extend(&envs, &name, form.by.as_deref().unwrap_or("")).await,
        "delete" => envs
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| format!("Deleting {namespace}/{name} and everything in it."))
            .map_err(describe),
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    match outcome {
        // After a POST, a redirect: reloading the page does not repeat it.
        Ok(_) => Redirect::to(&format!(
            "/environments?done={}&env={}",
            crate::html::url_encode(&action),
            crate::html::url_encode(&format!("{namespace}/{name}"))
        ))
        .into_response(),
        Err((status, message)) => {
            let viewer = viewer(&app, &session);
            let rendered = page::environments::render(
                &session.fleet.environments.listing(),
                &viewer,
                &EnvironmentsQuery::default(),
                Some(&Outcome::Refused(message)),
                Timestamp::now(),
            );
            let src = format!(
                "/live/environments?since={}",
                live::fingerprint(&rendered.live)
            );
            (status, Html(page::document(&rendered, &viewer, &src))).into_response()
        }
    }
}

fn describe(error: kube::Error) -> (StatusCode, String) {
    match error {
        kube::Error::Api(status) => (
            StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY),
            format!("The API server refused: {}", status.message),
        ),
        other => (
            StatusCode::BAD_GATEWAY,
            format!("The API server could not be reached: {other}"),
        ),
    }
}

async fn extend(
    envs: &Api<Environment>,
    name: &str,
    by: &str,
) -> Result<String, (StatusCode, String)> {
    let Some((label, duration)) = EXTENSIONS.iter().find(|(label, _)| *label == by) else {
        return Err((StatusCode::BAD_REQUEST, format!("Cannot extend by {by:?}.")));
    };
    let env = envs.get(name).await.map_err(describe)?;
    let created = env.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let expires = env
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
        .map(|t| t.0);
    let (Some(created), Some(expires)) = (created, expires) else {
        return Err((
            StatusCode::CONFLICT,
            format!("{name} has no expiry yet; try again in a moment."),
        ));
    };
    let ttl = extended_ttl(created, expires, *duration, Timestamp::now())
        .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    envs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"ttl": ttl}})),
    )
    .await
    .map_err(describe)?;
    Ok(format!("Extended {name} by {label} (ttl {ttl})."))
}

async fn login_form(State(app): State<Arc<App>>) -> Response {
    if !app.sessions.is_token() {
        return Redirect::to("/").into_response();
    }
    Html(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · fleetforge</title><link rel="stylesheet" href="/assets/app.css"></head><body><main id="main"><h1>Sign in to the fleet view</h1>
<p>Paste a Kubernetes bearer token (for example from <code>kubectl create token NAME</code>). Everything you see is read with it: you see what <code>kubectl get</code> would show you.</p>
<form method="post" action="/login"><input type="hidden" name="csrf" value="{}"><label>Token <input type="password" name="token" autocomplete="off" required></label> <button type="submit">Sign in</button></form></main></body></html>"#,
        esc(&app.csrf)
    ))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    csrf: String,
    token: String,
}

async fn login(State(app): State<Arc<App>>, Form(form): Form<LoginForm>) -> Response {
    if !app.sessions.is_token() {
        return Redirect::to("/").into_response();
    }
    if form.csrf != app.csrf {
        return (
            StatusCode::FORBIDDEN,
            "the form's token is not this server's: reload the page\n",
        )
            .into_response();
    }
    let token = form.token.trim().to_string();
    let valid = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b';');
    let mut headers = HeaderMap::new();
    if valid {
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    if let Err(refusal) = app.sessions.session(&headers).await {
        return refusal_page(refusal, true);
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict");
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "fleetforge_token=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_served_the_callers_identity() {
        let cases = [
            ("localhost:8090", true),
            ("127.0.0.1:8090", true),
            ("127.0.0.1", true),
            ("[::1]:8090", true),
            ("evil.example.com:8090", false),
            ("127.0.0.1.evil.example:8090", false),
            ("", false),
        ];
        for (host, want) in cases {
            assert_eq!(loopback_host(host), want, "{host}");
        }
    }
}
