//! The fleet view, `fleetforge ui`: pages of the fleet (Clusters and
//! VirtualClusters, the tools matrix, environments, rollouts) rendered on
//! the server and kept live from watches made as the person looking.
//!
//! - [`view`]: what each page shows, as pure functions of the objects
//!   (aggregation, filter, sort, page), tested as tables;
//! - [`page`]: those view models as HTML, every value escaped ([`html`]);
//! - [`cache`]: the watches of one person and the stores they fill;
//! - [`auth`]: whose identity reads the fleet (the kubeconfig's, or each
//!   request's bearer token checked with TokenReview and
//!   SubjectAccessReview);
//! - `live` and `server`: the routes, and the Server-Sent Events that
//!   push a page's new rendering to it, which a small embedded script
//!   (`assets/app.js`) swaps in.

pub mod auth;
pub mod cache;
pub mod html;
mod live;
pub mod page;
mod server;
pub mod view;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::Client;
use kube::api::{Api, PostParams};

pub use auth::AuthMode;

/// Options of `fleetforge ui`.
#[derive(Debug, Clone, clap::Args)]
pub struct UiArgs {
    /// Address to serve on. With `--auth kubeconfig` it must be a
    /// loopback address: the view acts with your credentials.
    #[arg(long, default_value = "127.0.0.1:8090", env = "FLEETFORGE_UI_ADDR")]
    pub listen: SocketAddr,
    /// Show only these namespaces (repeat the flag); by default all.
    /// Someone who may list Clusters in a few namespaces only names them.
    #[arg(long = "namespace", short = 'n', value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// Whose identity reads the fleet: `kubeconfig` (yours, as kubectl
    /// proxy does) or `token` (each request's bearer token, checked with
    /// TokenReview and SubjectAccessReview: for running in a cluster).
    #[arg(long, value_enum, default_value = "kubeconfig")]
    pub auth: AuthMode,
    /// An open page gets at most one update per this many milliseconds.
    #[arg(long, default_value_t = 250)]
    pub debounce_ms: u64,
}

/// A random token for forms, from the kernel's generator.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Who the API server says this client is (a SelfSubjectReview, as
/// `kubectl auth whoami`), if it tells.
pub async fn whoami(client: &Client) -> Option<String> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

/// Runs `fleetforge ui` until interrupted.
pub async fn run(args: UiArgs) -> anyhow::Result<()> {
    let scopes: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    let config = kube::Config::infer()
        .await
        .context("no usable kubeconfig (set KUBECONFIG)")?;
    let sessions = match args.auth {
        AuthMode::Kubeconfig => {
            if !args.listen.ip().is_loopback() {
                bail!(
                    "--listen {}: with --auth kubeconfig the view reads and writes with your credentials, so it serves loopback only; use --auth token to serve others",
                    args.listen
                );
            }
            let client = Client::try_from(config)?;
            let user = whoami(&client).await;
            let source = match std::env::var("KUBECONFIG") {
                Ok(path) if !path.is_empty() => format!("kubeconfig {path}"),
                _ => "kubeconfig".to_string(),
            };
            let fleet = Arc::new(cache::Fleet::start(client, user.clone(), &scopes));
            auth::Sessions::Kubeconfig(auth::Session {
                fleet,
                user,
                source,
            })
        }
        AuthMode::Token => {
            auth::Sessions::Token(Box::new(auth::TokenSessions::new(config, scopes)?))
        }
    };
    let who = match &sessions {
        auth::Sessions::Kubeconfig(session) => format!(
            "reading as {}",
            session.user.as_deref().unwrap_or("the kubeconfig's user")
        ),
        auth::Sessions::Token(_) => "reading as each person's bearer token".to_string(),
    };
    let app = Arc::new(server::App {
        sessions,
        csrf: random_token()?,
        debounce: Duration::from_millis(args.debounce_ms),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    eprintln!("fleetforge ui: the fleet view is at http://{address}/ ({who})");
    // No graceful shutdown: open pages hold their event streams forever,
    // and nothing is written that an abrupt stop could leave half done.
    tokio::select! {
        served = axum::serve(listener, server::router(app)) => served?,
        _ = shutdown() => {}
    }
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
