//! `fleetforge-bench-tools`: one ToolSet of three charts onto N real local
//! clusters. Runs the built controller against a fresh management control
//! plane, lets it create the clusters, then in the same run times
//!
//! 1. a sequential `helm upgrade --install --wait` loop over every cluster
//!    and chart (the baseline; its releases are then uninstalled), and
//! 2. a ToolInstall of the same charts until every target is DEPLOYED
//!    (healthy), with `maxConcurrency` targets at once;
//!
//! then measures the steady state: target API reads and helm commands per
//! poll, from the controller's metrics. Everything is deleted at the end.
//!
//! ```text
//! cargo build --release --bins
//! target/x86_64-unknown-linux-gnu/release/fleetforge-bench-tools --clusters 20 --max-concurrency 10
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fleetforge_api::{Cluster, ToolInstall, condition};
use fleetforge_bench::{
    apply, chart_dir, helm, local_provider_config, management_plane, start_controller,
};
use fleetforge_testenv::{free_port, pids_mentioning};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Local clusters to install onto.
    #[arg(long, default_value_t = 10)]
    clusters: usize,
    /// The ToolInstall's maxConcurrency.
    #[arg(long, default_value_t = 10)]
    max_concurrency: i32,
    /// The ToolInstall's poll interval in the steady-state measurement.
    #[arg(long, default_value_t = 10)]
    poll_seconds: u64,
    /// Polls to measure the steady state over.
    #[arg(long, default_value_t = 3)]
    polls: u64,
    /// The fleetforge binary (default: next to this one).
    #[arg(long)]
    fleetforge: Option<PathBuf>,
}

const NAMESPACE: &str = "bench";
const CHARTS: [&str; 3] = ["widgets", "web", "cache"];

fn release_namespace(chart: &str) -> &'static str {
    match chart {
        "widgets" => "widgets",
        _ => "apps",
    }
}

fn metric(port: u16, name: &str) -> anyhow::Result<f64> {
    fleetforge_bench::controller_metric(port, name)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let (plane, client) = management_plane(NAMESPACE).await?;

    let port = free_port()?;
    let controller = start_controller(&plane, args.fleetforge.as_deref(), port, work.path())?;

    local_provider_config(&client).await?;
    let names: Vec<String> = (0..args.clusters).map(|i| format!("c{i:02}")).collect();
    for name in &names {
        apply::<Cluster>(&client, Some(NAMESPACE), json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name, "labels": {"bench": "tools"}},
            "spec": {"providerConfigRef": {"name": "local"}, "version": "1.36",
                     "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 1}]},
        }))
        .await?;
    }
    let started = Instant::now();
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), NAMESPACE);
    loop {
        let ready = clusters
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|c| {
                c.status.as_ref().is_some_and(|s| {
                    fleetforge_core::conditions::is_true(&s.conditions, condition::READY)
                })
            })
            .count();
        if ready == names.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60 + 20 * args.clusters as u64) {
            bail!(
                "only {ready} of {} clusters Ready:\n{}",
                names.len(),
                controller.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "{} local clusters Ready after {:.1}s",
        names.len(),
        started.elapsed().as_secs_f64()
    );

    // The baseline: sequential helm, waiting for each release to be healthy.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let mut kubeconfigs = Vec::new();
    for name in &names {
        let secret = secrets.get(&format!("{name}-kubeconfig")).await?;
        let path = work.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, &secret.data.context("no data")?["value"].0)?;
        kubeconfigs.push(path);
    }
    let helm_home = work.path().join("helm");
    let started = Instant::now();
    for (name, kubeconfig) in names.iter().zip(&kubeconfigs) {
        for chart in CHARTS {
            let values = work.path().join(format!("{name}-{chart}.json"));
            std::fs::write(
                &values,
                json!({"host": format!("{name}.bench.example.com")}).to_string(),
            )?;
            helm(
                kubeconfig,
                &helm_home,
                &[
                    "upgrade",
                    "--install",
                    chart,
                    &chart_dir(chart).display().to_string(),
                    "--namespace",
                    release_namespace(chart),
                    "--create-namespace",
                    "--values",
                    &values.display().to_string(),
                    "--wait",
                    "--timeout",
                    "2m",
                ],
            )?;
        }
    }
    let sequential = started.elapsed();
    println!(
        "sequential helm upgrade --install --wait: {} clusters x {} charts in {:.1}s",
        names.len(),
        CHARTS.len(),
        sequential.as_secs_f64()
    );
    for kubeconfig in &kubeconfigs {
        for chart in CHARTS.iter().rev() {
            helm(
                kubeconfig,
                &helm_home,
                &[
                    "uninstall",
                    chart,
                    "--namespace",
                    release_namespace(chart),
                    "--wait",
                ],
            )?;
        }
    }

    // fleetforge: the same charts as one ToolSet, onto every cluster.
    let chart = |c: &str| json!({"path": chart_dir(c).display().to_string()});
    apply::<fleetforge_api::ToolSet>(&client, None, json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolSet",
        "metadata": {"name": "bench"},
        "spec": {"tools": [
            {"name": "widgets", "chart": chart("widgets"),
             "health": [{"kind": "CustomResourceDefinition", "name": "widgets.e2e.fleetforge.dev"}, {"kind": "Deployment", "name": "widget-operator"}]},
            {"name": "web", "namespace": "apps", "chart": chart("web"), "dependsOn": ["widgets"],
             "values": {"host": "{{ cluster.name }}.bench.example.com"},
             "health": [{"kind": "Deployment", "name": "web"}]},
            {"name": "cache", "namespace": "apps", "chart": chart("cache"), "health": [{"kind": "Deployment", "name": "cache"}]},
        ]},
    }))
    .await?;
    let reads_before = metric(port, "fleetforge_tool_target_reads_total")?;
    let started = Instant::now();
    apply::<ToolInstall>(&client, Some(NAMESPACE), json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolInstall",
        "metadata": {"name": "bench"},
        "spec": {"toolSetRef": {"name": "bench"}, "targets": {"clusterSelector": {"matchLabels": {"bench": "tools"}}},
                 "maxConcurrency": args.max_concurrency, "pollInterval": format!("{}s", args.poll_seconds)},
    }))
    .await?;
    let installs: Api<ToolInstall> = Api::namespaced(client.clone(), NAMESPACE);
    loop {
        let ti = installs.get("bench").await?;
        let deployed = ti
            .status
            .as_ref()
            .and_then(|s| s.summary.as_ref())
            .map_or(0, |s| s.deployed);
        if deployed as usize == names.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "{deployed} of {} deployed after 600s:\n{}",
                names.len(),
                controller.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let fanout = started.elapsed();
    let reads_install = metric(port, "fleetforge_tool_target_reads_total")? - reads_before;
    println!(
        "fleetforge ToolInstall (maxConcurrency {}): {} clusters x {} charts DEPLOYED (healthy) in {:.1}s; {:.2}x the sequential loop's speed; {reads_install} target reads on the way",
        args.max_concurrency,
        names.len(),
        CHARTS.len(),
        fanout.as_secs_f64(),
        sequential.as_secs_f64() / fanout.as_secs_f64()
    );

    // Steady state.
    tokio::time::sleep(Duration::from_secs(args.poll_seconds)).await;
    let reads = metric(port, "fleetforge_tool_target_reads_total")?;
    let helms = metric(port, "fleetforge_tool_driver_calls_total")?;
    let window = Duration::from_secs(args.poll_seconds * args.polls);
    tokio::time::sleep(window).await;
    let reads = metric(port, "fleetforge_tool_target_reads_total")? - reads;
    let helms = metric(port, "fleetforge_tool_driver_calls_total")? - helms;
    let releases = (names.len() * CHARTS.len()) as f64;
    println!(
        "steady state over {} polls of {}s: {reads} target reads ({:.2} per release per poll, {:.2} per cluster per poll), {helms} helm commands",
        args.polls,
        args.poll_seconds,
        reads / releases / args.polls as f64,
        reads / names.len() as f64 / args.polls as f64
    );
    println!(
        "controller RSS {:.0} MiB",
        fleetforge_testenv::rss_bytes(controller.pid()).unwrap_or(0) as f64 / 1048576.0
    );

    // Drift: a Deployment deleted out of band on the first cluster, until
    // it is back (found by the target's watch, not the poll).
    let target = fleetforge_runtime::clients::TargetClients::new()
        .get(&std::fs::read(&kubeconfigs[0])?)
        .await
        .map_err(anyhow::Error::msg)?
        .client
        .clone();
    let deployments: Api<Deployment> = Api::namespaced(target, release_namespace("web"));
    let before = deployments.get("web").await?.metadata.uid;
    let started = Instant::now();
    deployments.delete("web", &DeleteParams::default()).await?;
    // Back: a Deployment of that name again, a new object.
    while deployments
        .get_opt("web")
        .await?
        .is_none_or(|d| d.metadata.uid == before)
    {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the deleted Deployment did not come back within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a Deployment deleted out of band on {}: back in {:.1}s (pollInterval {}s)",
        names[0],
        started.elapsed().as_secs_f64(),
        args.poll_seconds
    );

    // Clean up: uninstall everywhere, delete the clusters.
    let started = Instant::now();
    installs.delete("bench", &DeleteParams::default()).await?;
    while installs.get_opt("bench").await?.is_some() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "ToolInstall deleted (uninstalled everywhere) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for name in &names {
        clusters.delete(name, &DeleteParams::default()).await?;
    }
    while !clusters
        .list(&ListParams::default())
        .await?
        .items
        .is_empty()
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(controller);
    let left = pids_mentioning(&work.path().join("clusters").display().to_string());
    if !left.is_empty() {
        bail!("processes left: {left:?}");
    }
    Ok(())
}
