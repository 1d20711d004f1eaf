//! `fleetforge controller`: runs every controller against the current
//! kubeconfig (or the in-cluster service account) until SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use fleetforge_api::{Cluster, VirtualCluster};
use fleetforge_core::{Metrics, Options};
use fleetforge_provider_local::LocalOptions;
use fleetforge_runtime::clients::TargetClients;
use fleetforge_runtime::ready::gate;
use fleetforge_runtime::sharding::{Membership, ShardMetrics, Timing as ShardTiming};
use fleetforge_runtime::shards::Shards;
use fleetforge_runtime::{ControllerMetrics, Readiness, Runtime, Supervisor};
use kube::Client;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

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
    /// Share the fleet between replicas in this many shards (0: one
    /// leader does all the work). Every replica runs with the same value;
    /// each acts on the Clusters and ToolTargets of the shards it owns,
    /// and the leader also runs the controllers that need the whole
    /// fleet. Needs --leader-elect.
    #[arg(long, env = "FLEETFORGE_SHARDS", default_value_t = 0)]
    pub shards: u32,
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
    /// helm processes at once, over every target (tools and
    /// VirtualClusters share them).
    #[arg(long, default_value_t = fleetforge_tools::helm::DEFAULT_PROCESSES)]
    pub max_helm_processes: usize,
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

/// Runs until SIGTERM or SIGINT (returning Ok), until leadership is lost,
/// or until a controller stops by itself (both returning an error, so that
/// the process is restarted).
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
    let controller_metrics = Arc::new(ControllerMetrics::register(&mut registry));
    let metrics = Arc::new(Metrics::register(&mut registry));
    let tool_metrics = Arc::new(fleetforge_tools::ToolMetrics::register(&mut registry));
    let rollout_metrics = Arc::new(fleetforge_rollouts::RolloutMetrics::register(&mut registry));
    let shard_metrics = ShardMetrics::register(&mut registry);
    let readiness = Arc::new(Readiness::default());
    let health = Arc::new(Health {
        readiness: readiness.clone(),
        registry,
    });

    let (stop, stopping) = watch::channel(false);
    tokio::spawn(forward_signals(stop.clone()));
    let runtime =
        Runtime::new(controller_metrics, stopping.clone()).with_concurrency(args.concurrency);

    let listener = server::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let server = tokio::spawn(server::serve(listener, health.clone(), runtime.stopped()));

    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    readiness.set_connected();

    if args.shards > 0 && !args.leader_elect {
        anyhow::bail!(
            "--shards {} needs --leader-elect=true: one replica runs the controllers that need the whole fleet",
            args.shards
        );
    }
    let shards = if args.shards > 0 {
        Shards::new(args.shards)
    } else {
        Shards::whole()
    };
    let runtime = runtime.with_shards(shards.clone());
    let identity = identity();
    let candidate = args.leader_elect.then(|| {
        Candidate::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Timing::default(),
        )
    });
    // Opens once this replica leads (and, sharded, watches the whole
    // fleet): the controllers that need every object wait for it.
    let (lead, leading) = gate();
    let lost = Arc::new(AtomicBool::new(false));
    // One watch and one cache per kind, however many controllers read it;
    // sharded, of the shards this replica owns until it leads.
    let informers = match shards.count() {
        Some(_) => fleetforge_core::watch::Informers::selected(
            &client,
            args.namespace.as_deref(),
            &shards.selection(),
        ),
        None => fleetforge_core::watch::Informers::new(&client, args.namespace.as_deref()),
    };
    match (&candidate, shards.count()) {
        (Some(candidate), None) => {
            tokio::select! {
                () = candidate.acquire() => {}
                () = runtime.stopped() => return Ok(()),
            }
            lead.open();
            hold(candidate.clone(), &runtime, &stop, &lost);
        }
        (Some(candidate), Some(_)) => {
            // Every replica works on its shards at once; the one that wins
            // the election also runs the fleet-wide controllers.
            let (candidate, runtime, stop, lost) = (
                candidate.clone(),
                runtime.clone(),
                stop.clone(),
                lost.clone(),
            );
            let (shards, informers) = (shards.clone(), informers.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = candidate.acquire() => {}
                    () = runtime.stopped() => return,
                }
                shards.watch_everything();
                tokio::select! {
                    () = informers.listed_everything() => {}
                    () = runtime.stopped() => return,
                }
                tracing::info!("watching the whole fleet: starting the fleet-wide controllers");
                lead.open();
                hold(candidate, &runtime, &stop, &lost);
            });
        }
        (None, _) => {
            tracing::info!(
                "leader election is off (--leader-elect=false): this process acts as the only controller, and keeps running while the API server is unreachable"
            );
            lead.open();
        }
    }
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("all"),
        shards = args.shards,
        "starting controllers"
    );
    let mut supervisor = Supervisor::new(readiness, stopping);
    // Starts `controller` once this replica leads; stopping before, it
    // never starts.
    let fleet_wide = |controller: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), String>> + Send>,
    >| {
        let (leading, stopped) = (leading.clone(), runtime.stopped());
        async move {
            tokio::select! {
                _ = leading.wait() => controller.await,
                () = stopped => Ok(()),
            }
        }
    };
    let targets = Arc::new(TargetClients::new());
    {
        let informers = informers.clone();
        let stopped = runtime.stopped();
        supervisor.spawn("informers", async move {
            tokio::select! {
                () = informers.run() => {}
                () = stopped => {}
            }
            Ok(())
        });
    }
    if let Some(count) = shards.count() {
        let membership = Membership::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            ShardTiming::default(),
            shards.clone(),
            shard_metrics,
        );
        let stopped = runtime.stopped();
        supervisor.spawn("Sharding", async move {
            membership.run(stopped).await;
            Ok(())
        });
        let (client, informers) = (client.clone(), informers.clone());
        supervisor.spawn(
            "ShardLabels",
            fleet_wide(Box::pin(async move {
                fleetforge_core::shard::label(client, &informers, count).await;
                Ok(())
            })),
        );
    }
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        let providers = crate::providers::clusters(&args.local());
        let options = Options {
            creation_grace_period: args.creation_grace_period,
            ..Options::default()
        };
        let clusters = informers.clusters.clone();
        supervisor.spawn("Cluster", async move {
            fleetforge_core::run::<Cluster>(
                &runtime, client, &clusters, providers, metrics, options,
            )
            .await;
            Ok(())
        });
    }
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        supervisor.spawn(
            "ToolSet",
            fleet_wide(Box::pin(async move {
                fleetforge_core::toolset::run(&runtime, client).await;
                Ok(())
            })),
        );
    }
    let (drivers, drifted) = fleetforge_tools::drivers(
        helm_binary(&args.tools_bin),
        args.max_helm_processes,
        targets.clone(),
        tool_metrics,
    )
    .map_err(anyhow::Error::msg)?;
    let tool_options = fleetforge_tools::ToolOptions {
        helm: helm_binary(&args.tools_bin),
        namespace: args.namespace.clone(),
        charts_dir: absolute(&args.charts_dir),
        max_helm_processes: args.max_helm_processes,
    };
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        let (options, informers) = (tool_options.clone(), informers.clone());
        supervisor.spawn(
            "ToolInstall",
            fleet_wide(Box::pin(async move {
                fleetforge_tools::run_installs(&runtime, client, &informers, &options).await;
                Ok(())
            })),
        );
    }
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        let (options, informers, drivers) = (tool_options, informers.clone(), drivers.clone());
        supervisor.spawn("ToolTarget", async move {
            fleetforge_tools::run_targets(&runtime, client, &informers, &options, drivers, drifted)
                .await;
            Ok(())
        });
    }
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        let namespace = args.namespace.clone();
        let clusters = informers.clusters.clone();
        supervisor.spawn(
            "ClusterProfile",
            fleet_wide(Box::pin(async move {
                fleetforge_tools::profile::run::<Cluster>(&runtime, client, &clusters, namespace)
                    .await;
                Ok(())
            })),
        );
    }
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        let namespace = args.namespace.clone();
        let virtual_clusters = informers.virtual_clusters.clone();
        supervisor.spawn(
            "VirtualClusterProfile",
            fleet_wide(Box::pin(async move {
                fleetforge_tools::profile::run::<VirtualCluster>(
                    &runtime,
                    client,
                    &virtual_clusters,
                    namespace,
                )
                .await;
                Ok(())
            })),
        );
    }
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        let options = fleetforge_provider_vcluster::VirtualClusterOptions {
            charts_dir: absolute(&args.charts_dir),
            management_kubeconfig,
        };
        let (helm, targets) = (drivers.helm.clone(), targets.clone());
        let virtual_clusters = informers.virtual_clusters.clone();
        supervisor.spawn(
            "VirtualCluster",
            fleet_wide(Box::pin(async move {
                fleetforge_provider_vcluster::run(
                    &runtime,
                    client,
                    &virtual_clusters,
                    options,
                    helm,
                    targets,
                )
                .await
            })),
        );
    }
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        let namespace = args.namespace.clone();
        let informers = informers.clone();
        let drivers = drivers.clone();
        supervisor.spawn(
            "FleetRollout",
            fleet_wide(Box::pin(async move {
                fleetforge_rollouts::run(
                    &runtime,
                    client,
                    &informers,
                    namespace.as_deref(),
                    rollout_metrics,
                    Some(drivers),
                )
                .await;
                Ok(())
            })),
        );
    }
    {
        let (runtime, client) = (runtime.clone(), client.clone());
        let options = fleetforge_environments::EnvironmentOptions {
            namespace: args.namespace.clone(),
            max_per_owner: args.max_environments_per_owner,
            sizes: Arc::new(crate::providers::clusters(&args.local())),
        };
        supervisor.spawn(
            "Environment",
            fleet_wide(Box::pin(async move {
                fleetforge_environments::run(&runtime, client, options, targets).await;
                Ok(())
            })),
        );
    }
    let supervised = supervisor.wait().await;
    let _ = stop.send(true);
    if let Err(stopped) = supervised {
        // /readyz says which for the moment the server still answers.
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        anyhow::bail!("{stopped}");
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
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    tracing::info!("stopped");
    Ok(())
}

/// Holds the leadership until it is lost, then stops every controller
/// (the process then fails, to be restarted).
fn hold(
    candidate: Candidate,
    runtime: &Runtime,
    stop: &watch::Sender<bool>,
    lost: &Arc<AtomicBool>,
) {
    let (lost, stop, stopped) = (lost.clone(), stop.clone(), runtime.stopped());
    tokio::spawn(async move {
        tokio::select! {
            () = stopped => {}
            () = candidate.hold() => {
                lost.store(true, Ordering::Relaxed);
                let _ = stop.send(true);
            }
        }
    });
}

/// Turns SIGTERM and SIGINT into the stop signal.
async fn forward_signals(stop: watch::Sender<bool>) {
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
    let _ = stop.send(true);
}

/// This replica's name in the Lease: the pod (host) name and process id.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| "fleetforge".to_string());
    format!("{host}_{}", std::process::id())
}
