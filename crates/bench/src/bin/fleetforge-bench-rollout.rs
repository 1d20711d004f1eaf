//! `fleetforge-bench-rollout`: what a fleet upgrade costs the controller.
//! The built controller, on a fresh control plane, with N nop Clusters at
//! 1.33 (the nop provider, never presented as real), rolls them to 1.35
//! with a FleetRollout of three stages (one canary, then 20% of the fleet
//! five at a time, then the rest twenty at a time). Measures the time to
//! Completed, the controller's CPU time and RSS over the rollout, the
//! FleetRollout controller's passes, the API writes by resource, and the
//! FleetRollout's size as stored.
//!
//! ```text
//! cargo build --release --bins
//! target/x86_64-unknown-linux-gnu/release/fleetforge-bench-rollout --clusters 100
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use fleetforge_api::fleet_rollout::RolloutPhase;
use fleetforge_api::{Cluster, FleetRollout, condition};
use fleetforge_bench::{
    api_writes_by_resource, apply, controller_metric, controller_metric_where, management_plane,
    start_controller, wait_until,
};
use fleetforge_testenv::free_port;
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, ListParams};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// nop Clusters to upgrade.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
}

const NAMESPACE: &str = "fleet";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let work = tempfile::tempdir()?;
    let (plane, client) = management_plane(NAMESPACE).await?;
    let port = free_port()?;
    let controller = start_controller(&plane, None, port, work.path())?;
    apply::<fleetforge_api::ProviderConfig>(
        &client,
        None,
        json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "nop"},
            "spec": {"provider": "nop", "pollInterval": "60s"},
        }),
    )
    .await?;
    let early = args.clusters / 5;
    stream::iter(0..args.clusters)
        .map(|i| {
            let ring = match i {
                0 => "canary",
                i if i <= early => "early",
                _ => "late",
            };
            apply::<Cluster>(&client, Some(NAMESPACE), json!({
                "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": format!("c{i:04}"), "labels": {"ring": ring}},
                "spec": {"providerConfigRef": {"name": "nop"}, "version": "1.33",
                         "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 1}]},
            }))
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), NAMESPACE);
    let at = |version: &'static str| {
        let clusters = clusters.clone();
        let n = args.clusters;
        async move || -> anyhow::Result<bool> {
            let list = clusters.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .filter(|c| {
                    c.status.as_ref().is_some_and(|s| {
                        s.version.as_deref() == Some(version)
                            && s.observed_generation == c.metadata.generation
                            && fleetforge_core::conditions::is_true(&s.conditions, condition::READY)
                    })
                })
                .count()
                == n)
        }
    };
    wait_until(
        "every Cluster Ready at 1.33",
        Duration::from_secs(600),
        at("1.33"),
    )
    .await?;
    println!("{} nop Clusters Ready at 1.33", args.clusters);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let cpu_before = controller_metric(port, "process_cpu_seconds_total")?;
    let passes_before = controller_metric_where(
        port,
        "fleetforge_reconciles_total",
        "controller=\"FleetRollout\"",
    )?;
    let writes_before = api_writes_by_resource(&client).await?;
    let started = Instant::now();
    apply::<FleetRollout>(
        &client,
        Some(NAMESPACE),
        json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "FleetRollout",
            "metadata": {"name": "upgrade"},
            "spec": {"version": "1.35", "progressDeadline": "5m", "stages": [
                {"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
                {"name": "early", "selector": {"matchLabels": {"ring": "early"}}, "maxInFlight": 5},
                {"name": "rest", "selector": {}, "maxInFlight": 20},
            ]},
        }),
    )
    .await?;
    let rollouts: Api<FleetRollout> = Api::namespaced(client.clone(), NAMESPACE);
    let completed = wait_until(
        "the rollout Completed",
        Duration::from_secs(1800),
        async || {
            let rollout = rollouts.get("upgrade").await?;
            Ok(rollout
                .status
                .as_ref()
                .is_some_and(|s| s.phase == Some(RolloutPhase::Completed)))
        },
    )
    .await;
    if let Err(e) = completed {
        bail!("{e}\n{}", controller.log_tail());
    }
    let elapsed = started.elapsed();
    let cpu = controller_metric(port, "process_cpu_seconds_total")? - cpu_before;
    let passes = controller_metric_where(
        port,
        "fleetforge_reconciles_total",
        "controller=\"FleetRollout\"",
    )? - passes_before;
    let writes_after = api_writes_by_resource(&client).await?;
    let writes: Vec<String> = writes_after
        .iter()
        .filter_map(|(key, count)| {
            let delta = count - writes_before.get(key).copied().unwrap_or(0.0);
            (delta > 0.0).then(|| format!("{key} {delta}"))
        })
        .collect();
    wait_until(
        "every Cluster Ready at 1.35",
        Duration::from_secs(120),
        at("1.35"),
    )
    .await?;
    let rss = fleetforge_testenv::rss_bytes(controller.pid()).unwrap_or(0) as f64 / 1048576.0;
    let request = http::Request::get(format!(
        "/apis/fleetforge.dev/v1alpha1/namespaces/{NAMESPACE}/fleetrollouts/upgrade"
    ))
    .body(Vec::new())?;
    let size = client.request_text(request).await?.len();
    println!(
        "{} nop Clusters 1.33 -> 1.35 (two steps each) in three stages: Completed in {:.1}s; controller CPU {cpu:.1}s over it, RSS {rss:.0} MiB after; {passes} FleetRollout passes; the FleetRollout as stored {:.1} KiB",
        args.clusters,
        elapsed.as_secs_f64(),
        size as f64 / 1024.0
    );
    println!("API writes during the rollout: {}", writes.join(", "));
    drop(controller);
    drop(plane);
    Ok(())
}
