//! `fleetforge-bench-fleet`: tools at fleet scale. The built controller,
//! on a fresh control plane, with N nop Clusters (the nop provider) and a
//! ToolInstall of T tools over all of them (the nop tool driver: releases
//! in memory, never presented as real). Measures, in one run:
//!
//! 1. the time until every target's ToolTarget is DEPLOYED and the
//!    ToolInstall counts them all;
//! 2. the controller's RSS and the ToolInstall's size as stored;
//! 3. the steady state: API writes and driver calls while nothing changes;
//! 4. one target's label change (out of the selection, then back): the
//!    driver calls and API writes it causes, and on which targets.
//!
//! ```text
//! cargo build --release --bins
//! target/x86_64-unknown-linux-gnu/release/fleetforge-bench-fleet --clusters 1000 --tools 5
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use fleetforge_api::{Cluster, ToolInstall, condition};
use fleetforge_bench::{
    api_writes, api_writes_by_resource, apply, controller_metric, management_plane,
    start_controller, wait_until,
};
use fleetforge_testenv::free_port;
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// nop Clusters (targets).
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Tools in the ToolInstall.
    #[arg(long, default_value_t = 5)]
    tools: usize,
    /// The ToolInstall's maxConcurrency.
    #[arg(long, default_value_t = 100)]
    max_concurrency: i32,
}

const NAMESPACE: &str = "fleet";

fn writes_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> String {
    let lines: Vec<String> = after
        .iter()
        .filter_map(|(key, count)| {
            let delta = count - before.get(key).copied().unwrap_or(0.0);
            (delta > 0.0).then(|| format!("{key} {delta}"))
        })
        .collect();
    if lines.is_empty() {
        "none".into()
    } else {
        lines.join(", ")
    }
}

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
            "spec": {"provider": "nop", "pollInterval": "300s"},
        }),
    )
    .await?;
    let names: Vec<String> = (0..args.clusters).map(|i| format!("c{i:04}")).collect();
    let started = Instant::now();
    stream::iter(names.iter())
        .map(|name| {
            apply::<Cluster>(&client, Some(NAMESPACE), json!({
                "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": name, "labels": {"fleet": "yes"}},
                "spec": {"providerConfigRef": {"name": "nop"}, "version": "1.36",
                         "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 1}]},
            }))
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), NAMESPACE);
    let ready = wait_until(
        "every nop Cluster Ready",
        Duration::from_secs(600),
        async || {
            let list = clusters.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .filter(|c| {
                    c.status.as_ref().is_some_and(|s| {
                        fleetforge_core::conditions::is_true(&s.conditions, condition::READY)
                    })
                })
                .count()
                == args.clusters)
        },
    )
    .await?;
    println!(
        "{} nop Clusters Ready in {:.1}s (from the first create)",
        args.clusters,
        (started.elapsed()).as_secs_f64().max(ready.as_secs_f64())
    );

    let tools: Vec<serde_json::Value> = (0..args.tools)
        .map(|i| {
            let mut tool = json!({"name": format!("tool-{i}"), "chart": {"repository": "https://charts.example.com", "name": format!("tool-{i}"), "version": "1.0.0"},
                                  "values": {"replicas": 1}});
            if i > 0 {
                tool["dependsOn"] = json!(["tool-0"]);
            }
            tool
        })
        .collect();
    let writes_before = api_writes(&client).await?;
    let calls_before = controller_metric(port, "fleetforge_tool_driver_calls_total")?;
    apply::<ToolInstall>(&client, Some(NAMESPACE), json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolInstall",
        "metadata": {"name": "fleet"},
        "spec": {"tools": tools, "targets": {"clusterSelector": {"matchLabels": {"fleet": "yes"}}},
                 "values": {"tool-0": {"fleet": "{{ cluster.name }}"}},
                 "maxConcurrency": args.max_concurrency, "pollInterval": "300s"},
    }))
    .await?;
    let installs: Api<ToolInstall> = Api::namespaced(client.clone(), NAMESPACE);
    let counted = |targets: usize| {
        let installs = installs.clone();
        async move || -> anyhow::Result<bool> {
            let ti = installs.get("fleet").await?;
            Ok(ti
                .status
                .as_ref()
                .and_then(|s| s.summary.as_ref())
                .is_some_and(|s| s.targets as usize == targets && s.deployed as usize == targets))
        }
    };
    let deployed = wait_until(
        "every target DEPLOYED",
        Duration::from_secs(900),
        counted(args.clusters),
    )
    .await;
    let deployed = match deployed {
        Ok(deployed) => deployed,
        Err(e) => bail!("{e}\n{}", controller.log_tail()),
    };
    let writes = api_writes(&client).await? - writes_before;
    let calls = controller_metric(port, "fleetforge_tool_driver_calls_total")? - calls_before;
    println!(
        "ToolInstall of {} tools over {} targets: all DEPLOYED in {:.1}s (target <= 60 s); {:.2} API writes and {:.2} driver calls per target",
        args.tools,
        args.clusters,
        deployed.as_secs_f64(),
        writes / args.clusters as f64,
        calls / args.clusters as f64
    );
    let rss = fleetforge_testenv::rss_bytes(controller.pid()).unwrap_or(0) as f64 / 1048576.0;
    let request = http::Request::get(format!(
        "/apis/fleetforge.dev/v1alpha1/namespaces/{NAMESPACE}/toolinstalls/fleet"
    ))
    .body(Vec::new())?;
    let size = client.request_text(request).await?.len();
    println!(
        "controller RSS {rss:.0} MiB (target < 200 MB); the ToolInstall as stored: {:.1} KiB (target < 100 KiB)",
        size as f64 / 1024.0
    );

    // Steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = api_writes_by_resource(&client).await?;
    let calls_before = controller_metric(port, "fleetforge_tool_driver_calls_total")?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = api_writes_by_resource(&client).await?;
    let calls = controller_metric(port, "fleetforge_tool_driver_calls_total")? - calls_before;
    println!(
        "steady state over 20 s: API writes: {}; driver calls: {calls}",
        writes_between(&before, &after)
    );

    // One target leaves the selection, then comes back.
    let before = api_writes_by_resource(&client).await?;
    let calls_before = controller_metric(port, "fleetforge_tool_driver_calls_total")?;
    let started = Instant::now();
    clusters
        .patch(
            &names[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"fleet": null}}})),
        )
        .await?;
    wait_until(
        "the target out",
        Duration::from_secs(120),
        counted(args.clusters - 1),
    )
    .await?;
    let out = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api_writes_by_resource(&client).await?;
    let calls = controller_metric(port, "fleetforge_tool_driver_calls_total")? - calls_before;
    println!(
        "{} out of the selection: counted out in {:.1}s; driver calls {calls} (its {} uninstalls and the release list); API writes: {}",
        names[0],
        out.as_secs_f64(),
        args.tools,
        writes_between(&before, &after)
    );
    let before = after;
    let calls_before = controller_metric(port, "fleetforge_tool_driver_calls_total")?;
    let started = Instant::now();
    clusters
        .patch(
            &names[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"fleet": "yes"}}})),
        )
        .await?;
    wait_until(
        "the target back",
        Duration::from_secs(120),
        counted(args.clusters),
    )
    .await?;
    let back = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api_writes_by_resource(&client).await?;
    let calls = controller_metric(port, "fleetforge_tool_driver_calls_total")? - calls_before;
    println!(
        "{} back: DEPLOYED and counted in {:.1}s; driver calls {calls}; API writes: {}",
        names[0],
        back.as_secs_f64(),
        writes_between(&before, &after)
    );
    drop(controller);
    drop(plane);
    Ok(())
}
