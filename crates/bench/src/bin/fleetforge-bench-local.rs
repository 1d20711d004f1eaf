//! `fleetforge-bench-local`: what a local-provider cluster costs. Creates N
//! clusters through the local provider exactly as the controller does (one
//! pool of `--nodes` kwok nodes each, all requested at once), and reports
//! each create's time, the wall time for all of them, and each cluster's
//! memory once settled; with `--upgrade-from 1.35`, the clusters are
//! created at that minor and each is then upgraded to the default one, as
//! the engine does (the control plane, then the pool, node by node), each
//! step timed; then deletes them and checks nothing is left.
//!
//! ```text
//! cargo build --release --bins
//! target/x86_64-unknown-linux-gnu/release/fleetforge-bench-local --clusters 4 --nodes 3
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use fleetforge_api::Cluster;
use fleetforge_core::ExternalClient;
use fleetforge_provider_local::{LocalCloud, LocalOptions};
use fleetforge_testenv::{pids_mentioning, pss_bytes, rss_bytes, tools};
use futures::future::join_all;

#[derive(Debug, Parser)]
struct Args {
    /// Clusters to create at once.
    #[arg(long, default_value_t = 4)]
    clusters: usize,
    /// Nodes in each cluster's one pool.
    #[arg(long, default_value_t = 3)]
    nodes: i32,
    /// Seconds to let the clusters settle before reading memory.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Where the binaries are (default: the workspace's .tools/bin).
    #[arg(long)]
    tools_bin: Option<PathBuf>,
    /// Create the clusters at this `major.minor` and time their upgrade to
    /// the default version.
    #[arg(long)]
    upgrade_from: Option<String>,
}

fn cluster(name: &str, nodes: i32, version: Option<&str>) -> anyhow::Result<Cluster> {
    let mut spec = serde_json::json!({
        "providerConfigRef": {"name": "local"},
        "nodePools": [{"name": "workers", "machineType": "standard-2", "min": nodes, "max": nodes, "desired": nodes}],
    });
    if let Some(version) = version {
        spec["version"] = version.into();
    }
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": spec,
    }))?)
}

/// Upgrades cluster `name` to `to` as the engine does, one pass per
/// change of the engine's plan, and returns how long the control plane and
/// the node pool took.
async fn upgrade(
    cloud: &LocalCloud,
    obj: &Cluster,
    name: &str,
    to: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let mut target = obj.clone();
    target.spec.version = Some(to.to_string());
    let mut times = Vec::new();
    loop {
        let seen = cloud
            .observe(&target, name)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?
            .ok_or_else(|| anyhow::anyhow!("{name} is gone"))?;
        let changes = fleetforge_core::cluster::plan(&target.spec, &seen.resource)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        if changes.is_empty() {
            break;
        }
        let t = Instant::now();
        cloud
            .update(&target, name, &changes)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        times.push(t.elapsed());
        if times.len() > 4 {
            bail!("{name}: still changing after {} passes", times.len());
        }
    }
    match times.as_slice() {
        [control_plane, pool] => Ok((*control_plane, *pool)),
        other => bail!(
            "{name}: expected two passes (control plane, pool), took {}",
            other.len()
        ),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let options = LocalOptions {
        tools_bin: args.tools_bin.clone().unwrap_or_else(tools::bin_dir),
        work_dir: work.path().to_path_buf(),
    };
    let cloud = LocalCloud::new(&options).map_err(|e| anyhow::anyhow!(e.message))?;
    let objects: Vec<(String, Cluster)> = (0..args.clusters)
        .map(|i| {
            let name = format!("bench-{i}");
            cluster(&name, args.nodes, args.upgrade_from.as_deref()).map(|c| (name, c))
        })
        .collect::<anyhow::Result<_>>()?;

    let started = Instant::now();
    let creates = objects.iter().map(|(name, obj)| {
        let cloud = &cloud;
        async move {
            let t = Instant::now();
            let result = cloud.create(obj, name).await;
            (name.clone(), t.elapsed(), started.elapsed(), result)
        }
    });
    let results = join_all(creates).await;
    let wall = started.elapsed();
    println!(
        "{} clusters of {} nodes, requested at once: all Ready after {:.1}s",
        args.clusters,
        args.nodes,
        wall.as_secs_f64()
    );
    println!("cluster   create call   done at");
    for (name, took, done_at, result) in &results {
        if let Err(e) = result {
            bail!("{name}: {e}");
        }
        println!(
            "{name:<9} {:>9.1}s {:>9.1}s",
            took.as_secs_f64(),
            done_at.as_secs_f64()
        );
    }

    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    println!("memory {}s after the last create (MiB):", args.settle);
    let mut rss_total = 0;
    let mut pss_total = 0;
    for (name, obj) in &objects {
        let seen = cloud
            .observe(obj, name)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let ready = seen.is_some_and(|o| o.state == fleetforge_core::ExternalState::Ready);
        let pids = cloud.kwokctl().pids(name);
        let mut parts = Vec::new();
        let (mut rss, mut pss) = (0, 0);
        for pid in &pids {
            let (r, p) = (rss_bytes(*pid).unwrap_or(0), pss_bytes(*pid).unwrap_or(0));
            rss += r;
            pss += p;
            parts.push(format!(
                "{} {:.0}/{:.0}",
                process_name(*pid),
                mib(r),
                mib(p)
            ));
        }
        rss_total += rss;
        pss_total += pss;
        println!(
            "{name}: ready={ready} RSS {:.0} PSS {:.0} ({})",
            mib(rss),
            mib(pss),
            parts.join(", ")
        );
    }
    println!(
        "total: RSS {:.0} MiB, PSS {:.0} MiB; per cluster PSS {:.0} MiB",
        mib(rss_total),
        mib(pss_total),
        mib(pss_total) / args.clusters as f64
    );

    if args.upgrade_from.is_some() {
        let to = cloud
            .kwokctl()
            .kube_version()
            .trim_start_matches('v')
            .to_string();
        let to: String = to.split('.').take(2).collect::<Vec<_>>().join(".");
        for (name, obj) in &objects {
            let started = Instant::now();
            let (control_plane, pool) = upgrade(&cloud, obj, name, &to).await?;
            println!(
                "{name}: upgraded to {to} in {:.1}s: control plane (stop, new binaries, start on the same etcd) {:.1}s, pool of {} nodes rolled {:.1}s",
                started.elapsed().as_secs_f64(),
                control_plane.as_secs_f64(),
                args.nodes,
                pool.as_secs_f64()
            );
        }
    }

    let started = Instant::now();
    for (name, obj) in &objects {
        cloud
            .delete(obj, name)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    println!("deleted all in {:.1}s", started.elapsed().as_secs_f64());
    let left = pids_mentioning(&work.path().display().to_string());
    if !left.is_empty() {
        bail!("processes left: {left:?}");
    }
    Ok(())
}
