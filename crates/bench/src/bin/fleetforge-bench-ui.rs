//! `fleetforge-bench-ui`: the fleet view at fleet size. The built
//! controller, on a fresh control plane, with N nop Clusters and T
//! ToolInstalls of one tool each (the nop tool driver: releases in
//! memory, never presented as real), every ToolInstall selecting every
//! Cluster (N x T ToolTargets), some tools failing. Then the built
//! `fleetforge ui` serves them, and headless chromium measures:
//!
//! 1. first contentful paint (and time to first byte) of the fleet page
//!    and of the tools matrix (by tool and by ToolInstall), median of
//!    several fresh loads;
//! 2. how long a change takes to reach an open page (a label added to one
//!    Cluster while the page filters on it);
//! 3. the server's memory (RSS, and its peak) once loaded and after the
//!    pages were served.
//!
//! ```text
//! cargo build --release --bins
//! target/x86_64-unknown-linux-gnu/release/fleetforge-bench-ui --clusters 1000 --tool-installs 20
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use fleetforge_api::{Cluster, ToolInstall, condition};
use fleetforge_bench::{apply, management_plane, start_controller};
use fleetforge_e2e::browser::Browser;
use fleetforge_testenv::{OwnedProcess, free_port};
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// nop Clusters.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// ToolInstalls, one tool each, each selecting every Cluster.
    #[arg(long, default_value_t = 20)]
    tool_installs: usize,
    /// Clusters on which one tool fails (the first ones, `tool-3`).
    #[arg(long, default_value_t = 10)]
    failing: usize,
    /// Fresh loads of each page measured (the median is reported).
    #[arg(long, default_value_t = 7)]
    loads: usize,
    /// Each ToolInstall's maxConcurrency.
    #[arg(long, default_value_t = 100)]
    max_concurrency: i32,
}

const NAMESPACE: &str = "fleet";

async fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done().await? {
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(started.elapsed())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Peak resident memory (VmHWM) of a process.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Navigation and paint timings of the page just loaded, in ms from the
/// start of the navigation.
const TIMINGS: &str = "const nav = performance.getEntriesByType('navigation')[0]; const fcp = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint'); return {ttfb: nav.responseStart, response: nav.responseEnd, dom: nav.domContentLoadedEventEnd, fcp: fcp ? fcp.startTime : null, bytes: document.documentElement.outerHTML.length, rows: document.querySelectorAll('#live table.fleet tbody tr, #live table.matrix tbody tr').length, cells: document.querySelectorAll('#live td.cell').length};";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn measure(browser: &Browser, url: &str, loads: usize) -> anyhow::Result<String> {
    let mut fcp = Vec::new();
    let mut ttfb = Vec::new();
    let mut last = Value::Null;
    for _ in 0..loads {
        // A blank page between loads, so each is a fresh navigation.
        browser.navigate("about:blank");
        browser.navigate(url);
        // The load event can come before the first paint (headless
        // chromium paints on its own schedule): ask until it is there.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (timings, paint) = loop {
            let timings = browser.execute(TIMINGS, json!([]));
            if let Some(paint) = timings["fcp"].as_f64() {
                break (timings, paint);
            }
            if Instant::now() > deadline {
                bail!("no first-contentful-paint for {url} within 10 s: {timings}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        fcp.push(paint);
        ttfb.push(timings["ttfb"].as_f64().unwrap_or_default());
        last = timings;
    }
    Ok(format!(
        "first contentful paint {:.0} ms (median of {loads}; min {:.0}, max {:.0}), first byte {:.0} ms; {} KiB of HTML, {} rows, {} matrix cells",
        median(fcp.clone()),
        fcp.iter().cloned().fold(f64::INFINITY, f64::min),
        fcp.iter().cloned().fold(0.0, f64::max),
        median(ttfb),
        last["bytes"].as_u64().unwrap_or_default() / 1024,
        last["rows"],
        last["cells"],
    ))
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
            "spec": {"provider": "nop", "pollInterval": "300s", "defaults": {"region": "nop-region-1"}},
        }),
    )
    .await?;
    let names: Vec<String> = (0..args.clusters).map(|i| format!("c{i:04}")).collect();
    let started = Instant::now();
    stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let annotations = if i < args.failing {
                json!({"nop.fleetforge.dev/tool-fail": "tool-3"})
            } else {
                json!({})
            };
            apply::<Cluster>(&client, Some(NAMESPACE), json!({
                "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": name, "labels": {"fleet": "yes", "group": format!("g{}", i % 10)}, "annotations": annotations},
                "spec": {"providerConfigRef": {"name": "nop"}, "version": "1.36",
                         "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 1}]},
            }))
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), NAMESPACE);
    wait_until(
        "every nop Cluster Ready",
        Duration::from_secs(900),
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
        "{} nop Clusters Ready in {:.1}s",
        args.clusters,
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    for i in 0..args.tool_installs {
        apply::<ToolInstall>(&client, Some(NAMESPACE), json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolInstall",
            "metadata": {"name": format!("install-{i:02}")},
            "spec": {"tools": [{"name": format!("tool-{i}"), "chart": {"repository": "https://charts.example.com", "name": format!("tool-{i}"), "version": "1.0.0"}}],
                     "targets": {"clusterSelector": {"matchLabels": {"fleet": "yes"}}},
                     "maxConcurrency": args.max_concurrency, "pollInterval": "300s"},
        }))
        .await?;
    }
    let installs: Api<ToolInstall> = Api::namespaced(client.clone(), NAMESPACE);
    let settled = wait_until(
        "every ToolTarget settled",
        Duration::from_secs(3600),
        async || {
            let list = installs.list(&ListParams::default()).await?;
            let settled: i32 = list
                .items
                .iter()
                .filter_map(|ti| ti.status.as_ref()?.summary.as_ref())
                .map(|s| s.deployed + s.failed)
                .sum();
            Ok(settled as usize == args.clusters * args.tool_installs)
        },
    )
    .await;
    if let Err(e) = settled {
        bail!("{e}\n{}", controller.log_tail());
    }
    println!(
        "{} ToolInstalls x {} Clusters: {} ToolTargets DEPLOYED or FAILED in {:.1}s; controller RSS {:.0} MiB",
        args.tool_installs,
        args.clusters,
        args.clusters * args.tool_installs,
        started.elapsed().as_secs_f64(),
        mib(controller.rss_bytes().unwrap_or(0))
    );

    // The fleet view, as the admin.
    let ui_port = free_port()?;
    let fleetforge = std::env::current_exe()?.with_file_name("fleetforge");
    let started = Instant::now();
    let mut ui = OwnedProcess::spawn_with_env(
        "fleetforge-ui",
        &fleetforge,
        &[
            "ui".into(),
            "--listen".into(),
            format!("127.0.0.1:{ui_port}"),
        ],
        &[("KUBECONFIG", &plane.kubeconfig_path().display().to_string())],
        &work.path().join("ui.log"),
    )?;
    ui.await_listening(ui_port, Duration::from_secs(30))?;
    let base = format!("http://127.0.0.1:{ui_port}");
    let browser = Browser::start(&work.path().join("browser"), 1400, 1000);
    browser.navigate(&format!("{base}/tools"));
    let loading = "return document.querySelector('.notice-loading') === null && document.querySelectorAll('#live td.cell').length > 0;";
    browser.wait_for(
        "the fleet view to have listed everything",
        Duration::from_secs(120),
        loading,
        |v| *v == json!(true),
    );
    println!(
        "fleet view: listed {} Clusters and {} ToolTargets {:.1}s after start; RSS {:.0} MiB",
        args.clusters,
        args.clusters * args.tool_installs,
        started.elapsed().as_secs_f64(),
        mib(ui.rss_bytes().unwrap_or(0))
    );

    for (what, path) in [
        ("fleet page (50 rows)", "/".to_string()),
        ("fleet page (200 rows)", "/?per_page=200".to_string()),
        (
            "fleet page filtered (text, sorted by age)",
            "/?q=c09&sort=-age".to_string(),
        ),
        ("tools matrix by tool (50 targets)", "/tools".to_string()),
        (
            "tools matrix by ToolInstall (50 targets)",
            "/tools?by=install".to_string(),
        ),
        (
            "tools matrix, FAILED only",
            "/tools?state=FAILED".to_string(),
        ),
        ("a cluster's page", "/clusters/fleet/c0000".to_string()),
    ] {
        println!(
            "{what}: {}",
            measure(&browser, &format!("{base}{path}"), args.loads)?
        );
    }

    // A change reaching an open page: a label added to one Cluster while
    // the page filters on it.
    let mut latencies = Vec::new();
    for (i, name) in names.iter().skip(args.clusters / 2).take(5).enumerate() {
        let label = format!("probe{i}");
        browser.navigate(&format!("{base}/?labels={label}%3Dyes"));
        browser.wait_for(
            "the page to be live",
            Duration::from_secs(20),
            "return document.getElementById('live-status').textContent;",
            |v| v == "live",
        );
        // Let the page's own first rendering pass: a person's change does
        // not come the instant the page opened.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        clusters
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {label: "yes"}}})),
            )
            .await?;
        browser.wait_for(
            "the labelled cluster on the open page",
            Duration::from_secs(30),
            "return document.querySelectorAll('#live table.fleet tbody tr[data-key]').length;",
            |v| v == 1,
        );
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "a change on an open page of {} clusters: median {:.0} ms (of {}, max {:.0})",
        args.clusters,
        median(latencies.clone()),
        latencies.len(),
        latencies.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "fleet view RSS {:.0} MiB, peak {:.0} MiB",
        mib(ui.rss_bytes().unwrap_or(0)),
        mib(peak_rss(ui.pid()))
    );
    drop(browser);
    drop(ui);
    drop(controller);
    drop(plane);
    Ok(())
}
