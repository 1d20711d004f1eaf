//! `fleetforge-bench`: measures the controller against the performance
//! targets, in one run on a fresh local control plane (etcd +
//! kube-apiserver from `.tools/bin`), with the nop provider as the cloud.
//!
//! 1. The floor: a minimal client creates N Clusters and writes each one's
//!    Ready status (the same API writes a perfect controller would need).
//! 2. The real `fleetforge controller` binary converges N new Clusters to
//!    Ready; the ratio to the floor is the target (<= 1.5).
//! 3. Grown to M objects (default 10,000) and idle: controller memory,
//!    CPU while polling every 60 s, CPU when no poll is due, and provider
//!    reads per object per poll interval (from the controller's metrics).
//!
//! ```text
//! cargo build --release --bins
//! target/x86_64-unknown-linux-gnu/release/fleetforge-bench --clusters 1000 --idle-clusters 10000
//! ```

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fleetforge_api::{Cluster, ProviderConfig, condition};
use fleetforge_bench::{api_writes, api_writes_by_resource};
use fleetforge_testenv::{ControlPlane, OwnedProcess, free_port, pss_bytes, rss_bytes};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Clusters converged in the timed phase.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Objects in the idle phase.
    #[arg(long, default_value_t = 10_000)]
    idle_clusters: usize,
    /// Concurrent API requests of the benchmark's own client.
    #[arg(long, default_value_t = 32)]
    client_concurrency: usize,
    /// The controller's `--concurrency`.
    #[arg(long, default_value_t = 32)]
    controller_concurrency: u16,
    /// How long to measure steady polling at a 60 s interval.
    #[arg(long, default_value = "120", value_name = "SECONDS")]
    poll_window: u64,
    /// The fleetforge binary (default: next to this one).
    #[arg(long)]
    fleetforge: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fleetforge = match args.fleetforge.clone() {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("fleetforge"),
    };
    if !fleetforge.is_file() {
        bail!(
            "{} not found: run cargo build --release --bins",
            fleetforge.display()
        );
    }
    println!("machine: {} cores, {}", cores(), memory_total());
    let plane = ControlPlane::builder().start().await?;
    let client = plane.client().await?;
    fleetforge_core::crds::install(&client).await?;
    for ns in ["floor", "floor-same", "bench"] {
        create_namespace(&client, ns).await?;
    }

    // 1. The floor.
    let writes_before = api_writes(&client).await?;
    let floor = floor(&client, args.clusters, args.client_concurrency).await?;
    let floor_writes = api_writes(&client).await? - writes_before;
    println!(
        "floor: {} creates + status writes in {:.2} s ({:.0} objects/s, {:.2} API writes per object)",
        args.clusters,
        floor.as_secs_f64(),
        args.clusters as f64 / floor.as_secs_f64(),
        floor_writes / args.clusters as f64
    );

    // 1b. A minimal client making exactly the writes the controller makes
    // per object, to tell the engine's overhead from the design's writes.
    let writes_before = api_writes(&client).await?;
    let same = floor_same_writes(&client, args.clusters, args.client_concurrency).await?;
    let same_writes = api_writes(&client).await? - writes_before;
    println!(
        "floor with the controller's writes (create, a metadata apply, Secret, status, Event): {:.2} s ({:.0} objects/s, {:.2} API writes per object)",
        same.as_secs_f64(),
        args.clusters as f64 / same.as_secs_f64(),
        same_writes / args.clusters as f64
    );

    // 2. The controller on the same work.
    let configs: Api<ProviderConfig> = Api::all(client.clone());
    let config: ProviderConfig = serde_json::from_value(json!({
        "metadata": {"name": "bench-nop"},
        "spec": {"provider": "nop", "pollInterval": "60s"},
    }))?;
    configs.create(&PostParams::default(), &config).await?;
    let port = free_port()?;
    let log = plane.dir().join("fleetforge.log");
    let kubeconfig = plane.kubeconfig_path().to_string_lossy().to_string();
    let controller = OwnedProcess::spawn_with_env(
        "fleetforge",
        &fleetforge,
        &[
            "controller".into(),
            "--namespace=bench".into(),
            "--lease-namespace=bench".into(),
            format!("--metrics-addr=127.0.0.1:{port}"),
            format!("--concurrency={}", args.controller_concurrency),
        ],
        &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "warn")],
        &log,
    )?;
    wait_for_leadership(&client).await?;
    let by_resource_before = api_writes_by_resource(&client).await?;
    let converged = converge(&client, 0, args.clusters, args.client_concurrency).await?;
    // Let the last events land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_resource_after = api_writes_by_resource(&client).await?;
    let controller_writes =
        by_resource_after.values().sum::<f64>() - by_resource_before.values().sum::<f64>();
    let ratio = converged.as_secs_f64() / floor.as_secs_f64();
    println!(
        "controller: {} clusters created and Ready in {:.2} s ({:.0} objects/s, {:.2} API writes per object incl. the create); ratio to floor {:.2} (target <= 1.5)",
        args.clusters,
        converged.as_secs_f64(),
        args.clusters as f64 / converged.as_secs_f64(),
        controller_writes / args.clusters as f64,
        ratio
    );
    println!(
        "controller phase, API writes per object: {}",
        per_object(&by_resource_before, &by_resource_after, args.clusters)
    );
    println!(
        "ratio to the floor with the same writes: {:.2}",
        converged.as_secs_f64() / same.as_secs_f64()
    );
    println!(
        "controller after {} objects: RSS {:.1} MiB",
        args.clusters,
        mib(rss_bytes(controller.pid()).unwrap_or(0))
    );

    // 3. Grow to the idle size.
    let grow = converge(
        &client,
        args.clusters,
        args.idle_clusters,
        args.client_concurrency,
    )
    .await?;
    println!(
        "grew to {} objects, all Ready, in {:.1} s",
        args.idle_clusters,
        grow.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let pid = controller.pid();
    println!(
        "controller with {} objects idle: RSS {:.1} MiB, PSS {:.1} MiB (target RSS < 150 MB)",
        args.idle_clusters,
        mib(rss_bytes(pid).unwrap_or(0)),
        mib(pss_bytes(pid).unwrap_or(0))
    );

    let window = Duration::from_secs(args.poll_window);
    let reads_before = observe_calls(port)?;
    let cpu_before = cpu_seconds(pid)?;
    tokio::time::sleep(window).await;
    let cpu = (cpu_seconds(pid)? - cpu_before) / window.as_secs_f64();
    let reads = observe_calls(port)? - reads_before;
    let polls = window.as_secs_f64() / 60.0;
    println!(
        "steady polling (60 s interval) over {} s: CPU {:.1}% of one core; {:.0} observe calls = {:.3} reads per object per poll interval (target <= 1)",
        window.as_secs(),
        cpu * 100.0,
        reads,
        reads / (args.idle_clusters as f64 * polls)
    );

    configs
        .patch(
            "bench-nop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pollInterval": "1h"}})),
        )
        .await?;
    // Every object is re-read once when its account changes; let that pass.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let quiet = Duration::from_secs(30);
    let cpu_before = cpu_seconds(pid)?;
    let reads_before = observe_calls(port)?;
    tokio::time::sleep(quiet).await;
    let cpu = (cpu_seconds(pid)? - cpu_before) / quiet.as_secs_f64();
    let reads = observe_calls(port)? - reads_before;
    println!(
        "between polls (1 h interval) over {} s: CPU {:.2}% of one core, {reads:.0} observe calls; RSS {:.1} MiB",
        quiet.as_secs(),
        cpu * 100.0,
        mib(rss_bytes(pid).unwrap_or(0))
    );
    drop(controller);
    Ok(())
}

/// A minimal client doing the API writes of a perfect controller: create
/// each Cluster and write its Ready status once.
async fn floor(client: &Client, count: usize, concurrency: usize) -> anyhow::Result<Duration> {
    let api: Api<Cluster> = Api::namespaced(client.clone(), "floor");
    let started = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("c{i}");
                api.create(&PostParams::default(), &cluster(&name)).await?;
                let status = json!({
                    "apiVersion": "fleetforge.dev/v1alpha1",
                    "kind": "Cluster",
                    "status": {
                        "phase": "Ready",
                        "provider": "nop",
                        "version": "1.36",
                        "observedGeneration": 1,
                        "conditions": [
                            {"type": condition::READY, "status": "True", "reason": "Available", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                            {"type": condition::SYNCED, "status": "True", "reason": "ReconcileSuccess", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                            {"type": condition::DRIFTED, "status": "False", "reason": "NoDrift", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                        ],
                    },
                });
                api.patch_status(&name, &PatchParams::apply("floor").force(), &Patch::Apply(&status))
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(started.elapsed())
}

/// The controller's writes for one new Cluster, made by a minimal client:
/// create, finalizer + external name + create-pending, create-succeeded,
/// the connection Secret, the Ready status, and the creation Event.
async fn floor_same_writes(
    client: &Client,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let ns = "floor-same";
    let api: Api<Cluster> = Api::namespaced(client.clone(), ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let (api, secrets, events) = (api.clone(), secrets.clone(), events.clone());
            async move {
                let name = format!("c{i}");
                let params = PatchParams::apply("floor").force();
                let created = api.create(&PostParams::default(), &cluster(&name)).await?;
                let metadata = json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
                    "metadata": {"name": name, "finalizers": ["fleetforge.dev/finalizer"],
                        "annotations": {"fleetforge.dev/external-name": name, "fleetforge.dev/create-pending": "2026-01-01T00:00:00Z"}},
                });
                api.patch(&name, &params, &Patch::Apply(&metadata)).await?;
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("{name}-kubeconfig")},
                    "data": {"value": "a3ViZWNvbmZpZw=="},
                });
                secrets.patch(&format!("{name}-kubeconfig"), &params, &Patch::Apply(&secret)).await?;
                let status = json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
                    "status": {"phase": "Ready", "observedGeneration": 1, "conditions": [
                        {"type": condition::READY, "status": "True", "reason": "Available", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    ]},
                });
                api.patch_status(&name, &params, &Patch::Apply(&status)).await?;
                let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}.created")},
                    "eventTime": "2026-01-01T00:00:00.000000Z",
                    "reportingController": "floor", "reportingInstance": "floor",
                    "action": "Create", "reason": "CreatedExternalResource", "type": "Normal",
                    "regarding": {"apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster", "namespace": ns,
                        "name": name, "uid": created.uid()},
                }))
                .map_err(kube::Error::SerdeError)?;
                events.create(&PostParams::default(), &event).await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(started.elapsed())
}

/// Creates Clusters `from..to` in `bench` and waits until all of them are
/// Ready; returns the time from the first create to the last Ready.
async fn converge(
    client: &Client,
    from: usize,
    to: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let api: Api<Cluster> = Api::namespaced(client.clone(), "bench");
    let wanted: HashSet<String> = (from..to).map(|i| format!("c{i}")).collect();
    let watch = {
        let api = api.clone();
        let wanted = wanted.clone();
        tokio::spawn(async move {
            let mut ready = HashSet::new();
            let mut events = watcher(api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(cluster) = events.try_next().await? {
                let name = cluster.name_any();
                if wanted.contains(&name) && is_ready(&cluster) {
                    ready.insert(name);
                    if ready.len() == wanted.len() {
                        return Ok::<_, watcher::Error>(Instant::now());
                    }
                }
            }
            Ok(Instant::now())
        })
    };
    // Let the watch start before the first create.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    stream::iter(from..to)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &cluster(&format!("c{i}")))
                    .await
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let finished = tokio::time::timeout(Duration::from_secs(1800), watch)
        .await
        .context("clusters did not become Ready within 30 minutes")???;
    Ok(finished - started)
}

fn cluster(name: &str) -> Cluster {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "providerConfigRef": {"name": "bench-nop"},
            "version": "1.36",
            "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 2}],
        },
    }))
    .expect("a valid Cluster")
}

fn is_ready(cluster: &Cluster) -> bool {
    cluster.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True")
    })
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

async fn wait_for_leadership(client: &Client) -> anyhow::Result<()> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "bench");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(lease) = leases.get_opt("fleetforge").await?
            && lease.spec.and_then(|s| s.holder_identity).is_some()
        {
            // The watches start right after the lease is taken.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the controller did not take the lease")
}

/// Mutating requests the API server has served (its own metrics).
fn per_object(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    objects: usize,
) -> String {
    after
        .iter()
        .filter_map(|(key, count)| {
            let delta = count - before.get(key).copied().unwrap_or(0.0);
            (delta > 0.0).then(|| format!("{key} {:.2}", delta / objects as f64))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Total observe calls from the controller's /metrics.
fn observe_calls(port: u16) -> anyhow::Result<f64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with("fleetforge_provider_calls_total{") && l.contains("verb=\"observe\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// User + system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat format")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn memory_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}
