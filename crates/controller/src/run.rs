//! `fleetforge controller`: runs every controller against the current
//! kubeconfig (or the in-cluster service account) until SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use fleetforge_api::Cluster;
use fleetforge_core::{Metrics, Options};
use fleetforge_provider_local::LocalOptions;
use kube::Client;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

use crate::leader::{Candidate, Timing};
use crate::server::{self, Health};

/// Options of `fleetforge controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "FLEETFORGE_METRICS_ADDR"
    )]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so that only one replica acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "fleetforge")]
    pub lease_name: String,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Only manage objects in this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// Where the local provider finds kwokctl, kwok, etcd, kube-apiserver,
    /// kube-controller-manager, kube-scheduler and kubectl, and tools find
    /// helm (the directory `scripts/install-tools` fills; helm falls back
    /// to `PATH`).
    #[arg(long, env = "FLEETFORGE_TOOLS_BIN", default_value = ".tools/bin")]
    pub tools_bin: PathBuf,
    /// Where the local provider keeps its clusters (default:
    /// `$FLEETFORGE_HOME/clusters`, `FLEETFORGE_HOME` defaulting to
    /// `~/.fleetforge`).
    #[arg(long, env = "FLEETFORGE_LOCAL_WORK_DIR")]
    pub local_work_dir: Option<PathBuf>,
    /// Where relative chart paths of tools (`chart.path`) are resolved,
    /// typically the platform repo's checkout (default: the working
    /// directory).
    #[arg(long, env = "FLEETFORGE_CHARTS_DIR", default_value = ".")]
    pub charts_dir: PathBuf,
    /// How long after a create a cluster the provider does not list yet is
    /// waited for (clouds are eventually consistent right after a create)
    /// before it counts as deleted out of band and is created again.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub creation_grace_period: Duration,
    /// Environments one owner may have in a namespace at once (no limit
    /// when left out); requests over it wait, saying so.
    #[arg(long, env = "FLEETFORGE_MAX_ENVIRONMENTS_PER_OWNER")]
    pub max_environments_per_owner: Option<u32>,
}

impl ControllerArgs {
    /// The local provider's settings.
    pub fn local(&self) -> LocalOptions {
        LocalOptions {
            tools_bin: absolute(&self.tools_bin),
            work_dir: absolute(
                &self
                    .local_work_dir
                    .clone()
                    .unwrap_or_else(|| crate::home::dir().join("clusters")),
            ),
        }
    }
}

/// `helm` from the tools directory, else from `PATH`.
fn helm_binary(tools_bin: &Path) -> PathBuf {
    let pinned = absolute(&tools_bin.join("helm"));
    if pinned.is_file() {
        pinned
    } else {
        PathBuf::from("helm")
    }
}

/// A duration flag such as `30s`, `2m` or `1h30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<kube::core::Duration>()
        .map(Duration::from)
        .map_err(|e| format!("{text:?} is not a duration like 30s or 2m: {e}"))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Runs until SIGTERM or SIGINT (returning Ok) or until leadership is lost
/// (returning an error, so that the process restarts as a candidate).
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("connecting to Kubernetes (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    // helm acts on the management cluster (virtual clusters hosted there)
    // with the controller's own identity.
    let management_kubeconfig = match fleetforge_tools::target::kubeconfig_of(&config) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::warn!("virtual clusters on the management cluster are off: {e}");
            None
        }
    };
    let client = Client::try_from(config)
        .context("connecting to Kubernetes (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
    let metrics = Arc::new(Metrics::register(&mut registry));
    let tool_metrics = Arc::new(fleetforge_tools::ToolMetrics::register(&mut registry));
    let health = Arc::new(Health {
        ready: AtomicBool::new(false),
        registry,
    });

    let (stop, _) = broadcast::channel::<()>(1);
    let stopped = |stop: &broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    tokio::spawn(forward_signals(stop.clone()));

    let listener = server::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let server = tokio::spawn(server::serve(listener, health.clone(), stopped(&stop)));

    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    health.ready.store(true, Ordering::Relaxed);

    let candidate = args.leader_elect.then(|| {
        Candidate::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity(),
            Timing::default(),
        )
    });
    match &candidate {
        Some(candidate) => tokio::select! {
            () = candidate.acquire() => {}
            () = stopped(&stop) => return Ok(()),
        },
        None => tracing::info!(
            "leader election is off (--leader-elect=false): this process acts as the only controller, and keeps running while the API server is unreachable"
        ),
    }

    // Stop the engine on a signal, or when leadership is lost (renewing
    // runs as its own task: the engine's shutdown future must be Sync).
    let lost = Arc::new(AtomicBool::new(false));
    let (engine_stop, engine_stopped) = tokio::sync::oneshot::channel::<()>();
    let (toolsets_stop, toolsets_stopped) = tokio::sync::oneshot::channel::<()>();
    let (installs_stop, installs_stopped) = tokio::sync::oneshot::channel::<()>();
    let (profiles_stop, profiles_stopped) = tokio::sync::oneshot::channel::<()>();
    let (virtual_stop, virtual_stopped) = tokio::sync::oneshot::channel::<()>();
    let (environments_stop, environments_stopped) = tokio::sync::oneshot::channel::<()>();
    let (virtual_profiles_stop, virtual_profiles_stopped) = tokio::sync::oneshot::channel::<()>();
    {
        let candidate = candidate.clone();
        let lost = lost.clone();
        let signal = stopped(&stop);
        tokio::spawn(async move {
            match candidate {
                Some(candidate) => tokio::select! {
                    () = signal => {}
                    () = candidate.hold() => lost.store(true, Ordering::Relaxed),
                },
                None => signal.await,
            }
            let _ = engine_stop.send(());
            let _ = toolsets_stop.send(());
            let _ = installs_stop.send(());
            let _ = profiles_stop.send(());
            let _ = virtual_stop.send(());
            let _ = environments_stop.send(());
            let _ = virtual_profiles_stop.send(());
        });
    }
    let shutdown = async move {
        let _ = engine_stopped.await;
    };
    let options = Options {
        concurrency: args.concurrency,
        namespace: args.namespace.clone(),
        creation_grace_period: args.creation_grace_period,
        ..Options::default()
    };
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("all"),
        "starting controllers"
    );
    let toolsets = fleetforge_core::toolset::run(client.clone(), async move {
        let _ = toolsets_stopped.await;
    });
    let installs = fleetforge_tools::run(
        client.clone(),
        fleetforge_tools::ToolOptions {
            helm: helm_binary(&args.tools_bin),
            namespace: args.namespace.clone(),
            concurrency: args.concurrency,
            charts_dir: absolute(&args.charts_dir),
        },
        tool_metrics,
        async move {
            let _ = installs_stopped.await;
        },
    );
    let cluster_profiles = fleetforge_tools::profile::run::<Cluster>(
        client.clone(),
        args.namespace.clone(),
        async move {
            let _ = profiles_stopped.await;
        },
    );
    let virtual_profiles = fleetforge_tools::profile::run::<fleetforge_api::VirtualCluster>(
        client.clone(),
        args.namespace.clone(),
        async move {
            let _ = virtual_profiles_stopped.await;
        },
    );
    let profiles = async move { tokio::join!(cluster_profiles, virtual_profiles) };
    let virtual_clusters = fleetforge_provider_vcluster::run(
        client.clone(),
        fleetforge_provider_vcluster::VirtualClusterOptions {
            helm: helm_binary(&args.tools_bin),
            namespace: args.namespace.clone(),
            charts_dir: absolute(&args.charts_dir),
            management_kubeconfig,
        },
        async move {
            let _ = virtual_stopped.await;
        },
    );
    let environments = fleetforge_core::environment::run(
        client.clone(),
        fleetforge_core::environment::EnvironmentOptions {
            namespace: args.namespace.clone(),
            max_per_owner: args.max_environments_per_owner,
        },
        async move {
            let _ = environments_stopped.await;
        },
    );
    let clusters = fleetforge_core::run::<Cluster>(
        client,
        crate::providers::clusters(&args.local()),
        metrics,
        options,
        shutdown,
    );
    let (_, _, installs, _, virtual_clusters, _) = tokio::join!(
        clusters,
        toolsets,
        installs,
        profiles,
        virtual_clusters,
        environments
    );
    if let Err(e) = installs {
        anyhow::bail!("the ToolInstall controller could not start: {e}");
    }
    if let Err(e) = virtual_clusters {
        anyhow::bail!("the VirtualCluster controller could not start: {e}");
    }

    if lost.load(Ordering::Relaxed) {
        anyhow::bail!(
            "lost leadership of lease {}/{}",
            args.lease_namespace,
            args.lease_name
        );
    }
    if let Some(candidate) = &candidate {
        candidate.release().await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    tracing::info!("stopped");
    Ok(())
}

/// Turns SIGTERM and SIGINT into a stop broadcast.
async fn forward_signals(stop: broadcast::Sender<()>) {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    let _ = stop.send(());
}

/// This replica's name in the Lease: the pod (host) name and process id.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| "fleetforge".to_string());
    format!("{host}_{}", std::process::id())
}
