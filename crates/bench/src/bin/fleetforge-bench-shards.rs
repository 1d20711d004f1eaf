//! `fleetforge-bench-shards`: replicas sharing a fleet. On a fresh control
//! plane, R built controllers run with `--shards K` (leader election on),
//! and N nop Clusters over A accounts (nop provider, no latency) are
//! created; then a ToolInstall of one tool over T of them (nop tool
//! driver); then one replica that does not lead is killed with SIGKILL.
//! Measures, in one run:
//!
//! 1. the time until every Cluster is Ready (compare with `--replicas 1
//!    --shards 0`, one replica doing everything);
//! 2. each replica's shards, accounts, Cluster passes (its share of the
//!    reconciles), the Clusters it owns and its RSS;
//! 3. the time until the T ToolTargets are DEPLOYED, and each replica's
//!    ToolTarget passes;
//! 4. failover: the time from the SIGKILL until every shard is held by a
//!    survivor.
//!
//! ```text
//! cargo build --release --bins
//! target/x86_64-unknown-linux-gnu/release/fleetforge-bench-shards --clusters 10000 --replicas 4
//! ```

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fleetforge_api::{Cluster, ToolState, ToolTarget, condition};
use fleetforge_bench::{
    apply, controller_metric, controller_metric_where, management_plane, wait_until,
};
use fleetforge_runtime::shards::shard_of;
use fleetforge_testenv::{OwnedProcess, free_port, tools};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// nop Clusters.
    #[arg(long, default_value_t = 10_000)]
    clusters: usize,
    /// nop accounts (ProviderConfigs) the Clusters are spread over.
    #[arg(long, default_value_t = 32)]
    accounts: usize,
    /// Controller replicas.
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Shards (`--shards`; 0: one leader does everything).
    #[arg(long, default_value_t = 32)]
    shards: u32,
    /// Targets of the ToolInstall (the first Clusters); 0 for none.
    #[arg(long, default_value_t = 1000)]
    tool_targets: usize,
}

const NAMESPACE: &str = "shards";

struct Replica {
    name: String,
    port: u16,
    process: OwnedProcess,
}

/// Counts the objects of `api` for which `done` holds, from a watch.
fn count_where<K>(api: Api<K>, done: fn(&K) -> bool) -> Arc<Mutex<HashSet<String>>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let counted = seen.clone();
    tokio::spawn(async move {
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let mut events = std::pin::pin!(events);
        while let Some(Ok(obj)) = events.next().await {
            let mut seen = counted.lock().unwrap();
            if done(&obj) {
                seen.insert(obj.name_any());
            } else {
                seen.remove(&obj.name_any());
            }
        }
    });
    seen
}

async fn holders(leases: &Api<Lease>) -> anyhow::Result<BTreeMap<u32, String>> {
    Ok(leases
        .list(&ListParams::default().labels("fleetforge.dev/lease-role=shard"))
        .await?
        .items
        .into_iter()
        .filter_map(|l| {
            let shard = l.labels().get("fleetforge.dev/shard")?.parse().ok()?;
            let holder = l.spec?.holder_identity.filter(|h| !h.is_empty())?;
            Some((shard, holder))
        })
        .collect())
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / 1024.0 / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "machine: {} cores; {} Clusters over {} accounts, {} replicas, {} shards",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.clusters,
        args.accounts,
        args.replicas,
        args.shards
    );
    let work = tempfile::tempdir()?;
    let (plane, client) = management_plane(NAMESPACE).await?;
    let binary = std::env::current_exe()?.with_file_name("fleetforge");
    let mut replicas = Vec::new();
    for i in 0..args.replicas {
        let name = format!("bench-{i}");
        let port = free_port()?;
        let process = OwnedProcess::spawn_with_env(
            &name,
            &binary,
            &[
                "controller".into(),
                "--leader-elect=true".into(),
                format!("--lease-namespace={NAMESPACE}"),
                format!("--shards={}", args.shards),
                format!("--metrics-addr=127.0.0.1:{port}"),
                format!("--tools-bin={}", tools::bin_dir().display()),
            ],
            &[
                ("KUBECONFIG", &plane.kubeconfig_path().display().to_string()),
                ("POD_NAME", &name),
                ("RUST_LOG", "warn"),
            ],
            &work.path().join(format!("{name}.log")),
        )?;
        replicas.push(Replica {
            name,
            port,
            process,
        });
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    if args.shards > 0 {
        let (leases, shards, n) = (leases.clone(), args.shards as usize, args.replicas);
        let spread = wait_until("every shard held", Duration::from_secs(120), async || {
            let held = holders(&leases).await?;
            let owners: HashSet<&String> = held.values().collect();
            Ok(held.len() == shards && owners.len() == n)
        })
        .await?;
        println!(
            "shards spread over {} replicas in {spread:.1?}",
            args.replicas
        );
    }
    let accounts: Vec<String> = (0..args.accounts)
        .map(|a| format!("account-{a:02}"))
        .collect();
    for account in &accounts {
        apply::<fleetforge_api::ProviderConfig>(
            &client,
            None,
            json!({
                "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ProviderConfig",
                "metadata": {"name": account},
                "spec": {"provider": "nop", "pollInterval": "10m"},
            }),
        )
        .await?;
    }

    let clusters: Api<Cluster> = Api::namespaced(client.clone(), NAMESPACE);
    let ready = count_where(clusters.clone(), |c: &Cluster| {
        c.status
            .as_ref()
            .is_some_and(|s| fleetforge_core::conditions::is_true(&s.conditions, condition::READY))
    });
    let started = Instant::now();
    let accounts_ref = &accounts;
    stream::iter(0..args.clusters)
        .map(|i| {
            let tools = if i < args.tool_targets { "yes" } else { "no" };
            apply::<Cluster>(&client, Some(NAMESPACE), json!({
                "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": format!("c{i:05}"), "labels": {"tools": tools}},
                "spec": {"providerConfigRef": {"name": accounts_ref[i % accounts_ref.len()]}, "version": "1.36",
                         "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 1}]},
            }))
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let created = started.elapsed();
    let n = args.clusters;
    let counted = ready.clone();
    wait_until(
        "every Cluster Ready",
        Duration::from_secs(3600),
        async || Ok(counted.lock().unwrap().len() >= n),
    )
    .await?;
    let all_ready = started.elapsed();
    println!(
        "{n} Clusters created in {created:.1?}, all Ready {all_ready:.1?} after the first create ({:.0} per second)",
        n as f64 / all_ready.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let held = if args.shards > 0 {
        holders(&leases).await?
    } else {
        BTreeMap::new()
    };
    let leader = leases
        .get_opt("fleetforge")
        .await?
        .and_then(|l| l.spec?.holder_identity)
        .unwrap_or_default();
    println!("| replica | shards | accounts | Clusters owned | Cluster passes | share | RSS |");
    println!("|---|---|---|---|---|---|---|");
    let total_passes: f64 = replicas
        .iter()
        .map(|r| {
            controller_metric_where(
                r.port,
                "fleetforge_reconciles_total",
                "controller=\"Cluster\"",
            )
            .unwrap_or(0.0)
        })
        .sum();
    for r in &replicas {
        let identity_prefix = format!("{}_", r.name);
        let shards: Vec<u32> = held
            .iter()
            .filter(|(_, h)| h.starts_with(&identity_prefix))
            .map(|(s, _)| *s)
            .collect();
        let own_accounts = accounts
            .iter()
            .filter(|a| args.shards == 0 || shards.contains(&shard_of(a, args.shards)))
            .count();
        let passes = controller_metric_where(
            r.port,
            "fleetforge_reconciles_total",
            "controller=\"Cluster\"",
        )?;
        let owned =
            controller_metric_where(r.port, "fleetforge_objects", "controller=\"Cluster\"")?;
        let rss = controller_metric(r.port, "process_resident_memory_bytes")?;
        let lead = if leader.starts_with(&identity_prefix) {
            " (leader)"
        } else {
            ""
        };
        println!(
            "| {}{lead} | {} | {own_accounts} | {owned} | {passes} | {:.0}% | {} |",
            r.name,
            shards.len(),
            100.0 * passes / total_passes.max(1.0),
            mib(rss)
        );
    }

    if args.tool_targets > 0 {
        let tool_targets: Api<ToolTarget> = Api::namespaced(client.clone(), NAMESPACE);
        let deployed = count_where(tool_targets, |tt: &ToolTarget| {
            tt.status.as_ref().is_some_and(|s| {
                s.observed_generation == tt.metadata.generation
                    && s.state == Some(ToolState::Deployed)
            })
        });
        let started = Instant::now();
        apply::<fleetforge_api::ToolInstall>(
            &client,
            Some(NAMESPACE),
            json!({
                "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolInstall",
                "metadata": {"name": "fleet"},
                "spec": {
                    "tools": [{"name": "base", "chart": {"repository": "https://charts.example.com", "name": "base", "version": "1.0.0"}}],
                    "targets": {"clusterSelector": {"matchLabels": {"tools": "yes"}}},
                    "maxConcurrency": 100,
                    "pollInterval": "1h",
                },
            }),
        )
        .await?;
        let t = args.tool_targets;
        wait_until(
            "every ToolTarget DEPLOYED",
            Duration::from_secs(1800),
            async || Ok(deployed.lock().unwrap().len() >= t),
        )
        .await?;
        let passes: Vec<String> = replicas
            .iter()
            .map(|r| {
                let p = controller_metric_where(
                    r.port,
                    "fleetforge_reconciles_total",
                    "controller=\"ToolTarget\"",
                )
                .unwrap_or(0.0);
                format!("{} {p}", r.name)
            })
            .collect();
        println!(
            "{t} ToolTargets DEPLOYED {:.1?} after the ToolInstall's apply; ToolTarget passes: {}",
            started.elapsed(),
            passes.join(", ")
        );
    }

    if args.shards > 0 && args.replicas > 1 {
        let victim = replicas
            .iter()
            .position(|r| !leader.starts_with(&format!("{}_", r.name)))
            .unwrap_or(0);
        let victim_name = replicas[victim].name.clone();
        let pid = replicas[victim].process.pid().to_string();
        Command::new("kill").args(["-KILL", &pid]).status()?;
        let killed = Instant::now();
        let prefix = format!("{victim_name}_");
        let shards = args.shards as usize;
        let failover = wait_until(
            "the killed replica's shards taken",
            Duration::from_secs(120),
            async || {
                let held = holders(&leases).await?;
                Ok(held.len() == shards && held.values().all(|h| !h.starts_with(&prefix)))
            },
        )
        .await?;
        println!(
            "failover: {victim_name} killed; every shard held by a survivor {failover:.1?} later ({:.1?} since the kill)",
            killed.elapsed()
        );
    }
    drop(replicas);
    Ok(())
}
