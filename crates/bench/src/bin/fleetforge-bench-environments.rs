//! `fleetforge-bench-environments`: N virtual dev environments on one real
//! local host Cluster, each with a one-chart profile inside. Runs the built
//! controller against a fresh management control plane and, in the same
//! run, times
//!
//! 1. the by-hand way, one environment after the other: `helm upgrade
//!    --install` of the vcluster chart on the host, wait for its `vc-<name>`
//!    Secret, `helm upgrade --install --wait` of the profile's chart inside
//!    (then everything is removed again), and
//! 2. N Environments requested at once, until every one is Ready (its
//!    profile installed);
//!
//! then puts them all to sleep and wakes them (time, and the memory the
//! sleeping control planes give back), and deletes them.
//!
//! The virtual clusters' API servers are the test stand-in's (a real
//! kube-apiserver and etcd per virtual cluster, started by kwokctl when the
//! chart's StatefulSet appears; see e2e/src/vcluster.rs), because vcluster's
//! container cannot run here.
//!
//! ```text
//! cargo build --release --bins
//! target/x86_64-unknown-linux-gnu/release/fleetforge-bench-environments --environments 6
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fleetforge_api::environment::EnvironmentPhase;
use fleetforge_api::{Cluster, Environment, condition};
use fleetforge_bench::{
    apply, chart_dir, helm, local_provider_config, management_plane, start_controller,
};
use fleetforge_e2e::vcluster::SyncerStandIn;
use fleetforge_testenv::{OwnedProcess, free_port, pids_mentioning};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Virtual environments to request.
    #[arg(long, default_value_t = 6)]
    environments: usize,
    /// The fleetforge binary (default: next to this one).
    #[arg(long)]
    fleetforge: Option<PathBuf>,
}

const NAMESPACE: &str = "bench";

/// Server-side applies `object` of kind K, in `namespace` (None for
/// cluster-scoped kinds).
/// Resident memory of every process of the virtual clusters' API servers.
fn virtual_rss(dir: &Path) -> u64 {
    pids_mentioning(&dir.display().to_string())
        .into_iter()
        .filter_map(fleetforge_testenv::rss_bytes)
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Waits until every environment named is in `phase`, returning when each
/// got there (seconds after `started`).
async fn await_all(
    envs: &Api<Environment>,
    names: &[String],
    phase: EnvironmentPhase,
    started: Instant,
    controller: &OwnedProcess,
) -> anyhow::Result<Vec<f64>> {
    let mut reached: Vec<Option<f64>> = vec![None; names.len()];
    while reached.iter().any(Option::is_none) {
        for (i, name) in names.iter().enumerate() {
            if reached[i].is_some() {
                continue;
            }
            let env = envs.get(name).await?;
            let current = env.status.as_ref().is_some_and(|s| {
                s.phase == Some(phase) && s.observed_generation == env.metadata.generation
            });
            if current {
                reached[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        if started.elapsed() > Duration::from_secs(120 + 30 * names.len() as u64) {
            bail!(
                "not all {phase:?} after {:.0}s: {reached:?}\n{}",
                started.elapsed().as_secs_f64(),
                controller.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(reached.into_iter().flatten().collect())
}

fn spread(times: &[f64]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "first {:.1}s, median {:.1}s, last {:.1}s",
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let (plane, client) = management_plane(NAMESPACE).await?;
    let port = free_port()?;
    let controller = start_controller(&plane, args.fleetforge.as_deref(), port, work.path())?;

    // The host: one real local cluster, with the syncer stand-in on it.
    local_provider_config(&client).await?;
    apply::<Cluster>(&client, Some(NAMESPACE), json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "host"},
        "spec": {"providerConfigRef": {"name": "local"}, "version": "1.36",
                 "nodePools": [{"name": "workers", "machineType": "standard-4", "min": 1, "max": 1}]},
    }))
    .await?;
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    while !clusters
        .get("host")
        .await?
        .status
        .is_some_and(|s| fleetforge_core::conditions::is_true(&s.conditions, condition::READY))
    {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the host is not Ready:\n{}", controller.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let host_kubeconfig = work.path().join("host.kubeconfig");
    std::fs::write(
        &host_kubeconfig,
        &secrets
            .get("host-kubeconfig")
            .await?
            .data
            .context("no data")?["value"]
            .0,
    )?;
    let virtual_dir = work.path().join("virtual");
    let syncer = SyncerStandIn::start(&host_kubeconfig, &virtual_dir).await;
    let host = fleetforge_runtime::clients::TargetClients::new()
        .get(&std::fs::read(&host_kubeconfig)?)
        .await
        .map_err(anyhow::Error::msg)?
        .client
        .clone();
    let vcluster = chart_dir("vcluster").display().to_string();
    let cache = chart_dir("cache").display().to_string();
    let names: Vec<String> = (0..args.environments)
        .map(|i| format!("env{i:02}"))
        .collect();

    // By hand, one after the other.
    let helm_home = work.path().join("helm");
    let started = Instant::now();
    for name in &names {
        let namespace = format!("vcluster-{name}");
        helm(
            &host_kubeconfig,
            &helm_home,
            &[
                "upgrade",
                "--install",
                name,
                &vcluster,
                "--namespace",
                &namespace,
                "--create-namespace",
            ],
        )?;
        let host_secrets: Api<Secret> = Api::namespaced(host.clone(), &namespace);
        let config = loop {
            if let Some(secret) = host_secrets.get_opt(&format!("vc-{name}")).await? {
                break secret.data.context("no data")?["config"].0.clone();
            }
            if started.elapsed() > Duration::from_secs(60 * names.len() as u64) {
                bail!("no vc-{name} Secret");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let inside = work.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&inside, config)?;
        helm(
            &inside,
            &helm_home,
            &[
                "upgrade",
                "--install",
                "cache",
                &cache,
                "--namespace",
                "apps",
                "--create-namespace",
                "--wait",
                "--timeout",
                "2m",
            ],
        )?;
    }
    let by_hand = started.elapsed();
    println!(
        "by hand, one after the other: {} virtual clusters with their profile in {:.1}s",
        names.len(),
        by_hand.as_secs_f64()
    );
    for name in &names {
        helm(
            &host_kubeconfig,
            &helm_home,
            &[
                "uninstall",
                name,
                "--namespace",
                &format!("vcluster-{name}"),
                "--wait",
            ],
        )?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(host.clone());
        namespaces
            .delete(&format!("vcluster-{name}"), &DeleteParams::default())
            .await?;
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(host.clone());
    for name in &names {
        while namespaces
            .get_opt(&format!("vcluster-{name}"))
            .await?
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    while !pids_mentioning(&virtual_dir.display().to_string()).is_empty() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // fleetforge: every environment requested at once.
    apply::<fleetforge_api::ToolSet>(
        &client,
        None,
        json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolSet",
            "metadata": {"name": "bench-env"},
            "spec": {"tools": [{"name": "cache", "namespace": "apps", "chart": {"path": cache},
                                "health": [{"kind": "Deployment", "name": "cache"}]}]},
        }),
    )
    .await?;
    let envs: Api<Environment> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        apply::<Environment>(&client, Some(NAMESPACE), json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": name},
            "spec": {"type": "virtual", "owner": format!("dev{i}"), "ttl": "2h", "profile": "bench-env",
                     "virtual": {"host": {"clusterRef": {"name": "host"}},
                                 "chart": {"repository": vcluster, "name": "vcluster", "version": "0.1.0"}}},
        }))
        .await?;
    }
    let ready = await_all(&envs, &names, EnvironmentPhase::Ready, started, &controller).await?;
    let fleet = started.elapsed();
    println!(
        "fleetforge, requested at once: {} environments Ready (profile installed) in {:.1}s ({}); {:.2}x the by-hand loop's speed",
        names.len(),
        fleet.as_secs_f64(),
        spread(&ready),
        by_hand.as_secs_f64() / fleet.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let awake = virtual_rss(&virtual_dir);
    println!(
        "awake: the virtual clusters' API servers hold {:.0} MiB ({:.0} MiB each); controller RSS {:.0} MiB",
        mib(awake),
        mib(awake) / names.len() as f64,
        mib(fleetforge_testenv::rss_bytes(controller.pid()).unwrap_or(0))
    );

    // Sleep and wake.
    let started = Instant::now();
    for name in &names {
        envs.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sleep": true}})),
        )
        .await?;
    }
    let slept = await_all(
        &envs,
        &names,
        EnvironmentPhase::Sleeping,
        started,
        &controller,
    )
    .await?;
    let started_wait = Instant::now();
    while virtual_rss(&virtual_dir) > awake / 10 && started_wait.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let asleep = virtual_rss(&virtual_dir);
    println!(
        "sleep: all {} Sleeping in {:.1}s ({}); their API servers then hold {:.0} MiB, {:.0} MiB given back",
        names.len(),
        started.elapsed().as_secs_f64(),
        spread(&slept),
        mib(asleep),
        mib(awake.saturating_sub(asleep))
    );
    let started = Instant::now();
    for name in &names {
        envs.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sleep": false}})),
        )
        .await?;
    }
    let woken = await_all(&envs, &names, EnvironmentPhase::Ready, started, &controller).await?;
    println!(
        "wake: all {} Ready again in {:.1}s ({})",
        names.len(),
        started.elapsed().as_secs_f64(),
        spread(&woken)
    );
    println!(
        "controller RSS {:.0} MiB",
        mib(fleetforge_testenv::rss_bytes(controller.pid()).unwrap_or(0))
    );

    // Delete: everything goes, on the host too.
    let started = Instant::now();
    for name in &names {
        envs.delete(name, &DeleteParams::default()).await?;
    }
    while !envs.list(&ListParams::default()).await?.items.is_empty() {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("environments not deleted:\n{}", controller.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "delete: all {} gone (releases uninstalled, host namespaces removed) in {:.1}s",
        names.len(),
        started.elapsed().as_secs_f64()
    );
    drop(syncer);
    clusters.delete("host", &DeleteParams::default()).await?;
    while clusters.get_opt("host").await?.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(controller);
    let left = pids_mentioning(&work.path().display().to_string());
    if !left.is_empty() {
        bail!("processes left: {left:?}");
    }
    Ok(())
}
