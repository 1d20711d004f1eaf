//! FleetRollouts on real local clusters, with the built controller under
//! its RBAC: four clusters created at the previous Kubernetes minor with a
//! profile's tools are upgraded in two stages, for real (each control plane
//! restarted on the newer binaries with its etcd data, each pool's nodes
//! replaced by nodes of the new version), and keep their tools and
//! workloads; then a chart version bump of the profile rolls over them in
//! two stages, and the stage whose targets fail the rollout's health check
//! halts it.

use std::path::Path;
use std::time::{Duration, Instant};

use fleetforge_api::fleet_rollout::{RolloutPhase, RolloutState};
use fleetforge_api::{Cluster, FleetRollout, ToolState, ToolTarget};
use fleetforge_e2e::local::{
    Cleanup, apply, await_clusters_ready, start, target_client, target_kubeconfig,
};
use fleetforge_e2e::{Controller, install, kubectl, workspace_root};
use fleetforge_testenv::{await_condition, shared};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const PREVIOUS: &str = "1.35";
const CURRENT: &str = "1.36";
const ROLLOUT_WAIT: Duration = Duration::from_secs(600);

fn cache_chart(path: &Path) -> Value {
    json!({"path": path.display().to_string()})
}

/// The profile: the project's cache chart, healthy when its Deployment is.
fn profile(name: &str, chart: &Path) -> Value {
    json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolSet",
        "metadata": {"name": name},
        "spec": {"tools": [
            {"name": "cache", "chart": cache_chart(chart), "namespace": "apps",
             "health": [{"kind": "Deployment", "name": "cache"}]},
        ]},
    })
}

/// A copy of the cache chart at another chart version.
fn chart_at(version: &str, into: &Path) -> std::path::PathBuf {
    let from = workspace_root().join("e2e/charts/cache");
    let to = into.join(format!("cache-{version}"));
    std::fs::create_dir_all(to.join("templates")).unwrap();
    for file in ["values.yaml", "templates/cache.yaml"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    let chart = std::fs::read_to_string(from.join("Chart.yaml")).unwrap();
    let chart: String = chart
        .lines()
        .map(|l| {
            if l.starts_with("version:") {
                format!("version: {version}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(to.join("Chart.yaml"), chart + "\n").unwrap();
    to
}

async fn rollout_in(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    controller: &Controller,
    done: impl Fn(&FleetRollout) -> bool,
) -> FleetRollout {
    let api: Api<FleetRollout> = Api::namespaced(client.clone(), ns);
    match await_condition(
        &api,
        name,
        what,
        ROLLOUT_WAIT,
        |r: Option<&FleetRollout>| r.is_some_and(&done),
    )
    .await
    {
        Ok(found) => found.unwrap(),
        Err(e) => panic!("{e}\n{}", controller.process.log_tail()),
    }
}

fn phase(r: &FleetRollout) -> Option<RolloutPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

fn deployed(tt: &ToolTarget) -> bool {
    tt.status.as_ref().is_some_and(|s| {
        s.observed_generation == tt.metadata.generation && s.state == Some(ToolState::Deployed)
    })
}

async fn tool_targets(client: &Client, ns: &str) -> Vec<ToolTarget> {
    Api::<ToolTarget>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn local_clusters_are_upgraded_in_stages_and_a_chart_bump_halts_on_a_failing_check() {
    install();
    let work = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(work.path().to_path_buf());
    shared()
        .with_temp_ns(|client, ns| async move {
            let controller = start(&client, &ns, work.path()).await;
            let set = format!("cache-{ns}");
            let first_chart = chart_at("0.1.0", work.path());
            apply(&client, None, profile(&set, &first_chart)).await;
            let config = format!("local-{ns}");
            apply(&client, None, json!({
                "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ProviderConfig",
                "metadata": {"name": config},
                "spec": {"provider": "local", "pollInterval": "5s", "defaults": {"region": "local"}},
            }))
            .await;
            let names = ["a1", "a2", "b1", "b2"];
            for name in names {
                let ring = if name.starts_with('a') { "first" } else { "second" };
                apply(&client, Some(&ns), json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
                    "metadata": {"name": name, "labels": {"ring": ring}},
                    "spec": {
                        "providerConfigRef": {"name": config},
                        "version": PREVIOUS,
                        "profile": set,
                        "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 2, "max": 2}],
                    },
                }))
                .await;
            }
            await_clusters_ready(&client, &ns, &names, &controller).await;
            let mut kubeconfigs = Vec::new();
            for name in names {
                let kubeconfig = target_kubeconfig(&client, &ns, name, work.path()).await;
                let inside = target_client(&kubeconfig).await;
                let version = inside.apiserver_version().await.unwrap().git_version;
                assert!(version.starts_with(&format!("v{PREVIOUS}.")), "{name} runs {version}");
                kubeconfigs.push((name, kubeconfig, inside));
            }
            let tts = |client: Client, ns: String| async move { tool_targets(&client, &ns).await };
            let deadline = Instant::now() + ROLLOUT_WAIT;
            while !(tts(client.clone(), ns.clone()).await.len() == 4
                && tts(client.clone(), ns.clone()).await.iter().all(deployed))
            {
                assert!(Instant::now() < deadline, "the profile was never DEPLOYED everywhere\n{}", controller.process.log_tail());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }

            // The version rollout: the first ring, then the second two at once.
            let started = Instant::now();
            apply_rollout(&client, &ns, json!({
                "metadata": {"name": "upgrade"},
                "spec": {"version": CURRENT, "progressDeadline": "5m", "stages": [
                    {"name": "first", "selector": {"matchLabels": {"ring": "first"}}},
                    {"name": "second", "selector": {}, "maxInFlight": 2},
                ]},
            }))
            .await;
            let done = rollout_in(&client, &ns, "upgrade", "the upgrade Completed", &controller, |r| {
                phase(r) == Some(RolloutPhase::Completed)
            })
            .await;
            eprintln!("4 local clusters {PREVIOUS} -> {CURRENT} in two stages: {:?}", started.elapsed());
            assert_eq!(done.status.unwrap().progress.as_deref(), Some("4/4"));
            for (name, kubeconfig, inside) in &kubeconfigs {
                let version = inside.apiserver_version().await.unwrap().git_version;
                assert!(version.starts_with(&format!("v{CURRENT}.")), "{name} runs {version}");
                let nodes = Api::<Node>::all(inside.clone()).list(&ListParams::default()).await.unwrap();
                assert_eq!(nodes.items.len(), 2, "{name}: the pool keeps its size");
                for node in &nodes.items {
                    let status = node.status.clone().unwrap();
                    let kubelet = status.node_info.unwrap().kubelet_version;
                    assert!(kubelet.starts_with(&format!("v{CURRENT}.")), "{name}: a node reports {kubelet}");
                    assert!(
                        status.conditions.unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"),
                        "{name}: a node is not Ready"
                    );
                }
                // The profile's workload survived the restart and the new nodes.
                let cache = Api::<Deployment>::namespaced(inside.clone(), "apps").get("cache").await.unwrap();
                assert_eq!(cache.status.unwrap().available_replicas, Some(1), "{name}");
                let releases = kubectl(kubeconfig, &["get", "secrets", "-n", "apps", "-l", "owner=helm", "-o", "name"]);
                assert!(releases.contains("sh.helm.release.v1.cache."), "{name}: {releases}");
            }
            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            for name in names {
                let cluster = clusters.get(name).await.unwrap();
                assert_eq!(cluster.spec.version.as_deref(), Some(CURRENT));
                assert!(cluster.status.unwrap().version.unwrap().starts_with(&format!("v{CURRENT}.")));
            }
            assert!(tool_targets(&client, &ns).await.iter().all(deployed), "tools still DEPLOYED");

            // A chart bump in two stages, gated by a check that only the
            // first ring passes (its clusters run the probe).
            for (name, kubeconfig, _) in &kubeconfigs {
                if name.starts_with('a') {
                    kubectl(kubeconfig, &["create", "deployment", "probe", "--image=registry.invalid/probe:1", "-n", "default"]);
                }
            }
            apply_rollout(&client, &ns, json!({
                "metadata": {"name": "chart"},
                "spec": {
                    "toolSetRef": {"name": set},
                    "progressDeadline": "40s",
                    "healthChecks": [{"kind": "Deployment", "name": "probe", "namespace": "default"}],
                    "stages": [
                        {"name": "first", "selector": {"matchLabels": {"ring": "first"}}},
                        {"name": "second", "selector": {}, "maxInFlight": 2},
                    ],
                },
            }))
            .await;
            rollout_in(&client, &ns, "chart", "the chart rollout's first round Completed", &controller, |r| {
                phase(r) == Some(RolloutPhase::Completed)
            })
            .await;
            let second_chart = chart_at("0.2.0", work.path());
            apply(&client, None, profile(&set, &second_chart)).await;
            let halted = rollout_in(&client, &ns, "chart", "the chart rollout Halted", &controller, |r| {
                phase(r) == Some(RolloutPhase::Halted)
            })
            .await;
            let status = halted.status.unwrap();
            let state_of = |cluster: &str| {
                status
                    .targets
                    .iter()
                    .find(|t| t.name == format!("{cluster}-profile-cluster-{cluster}"))
                    .unwrap()
                    .clone()
            };
            for name in ["a1", "a2"] {
                assert_eq!(state_of(name).state, RolloutState::Done, "{status:?}");
            }
            let failed = state_of("b1");
            assert_eq!(failed.state, RolloutState::Failed, "{status:?}");
            assert!(
                failed.message.as_deref().unwrap_or_default().contains("Deployment probe does not exist"),
                "{failed:?}"
            );
            let stages: Vec<(String, RolloutState)> =
                status.stages.iter().map(|s| (s.name.clone(), s.state)).collect();
            assert_eq!(
                stages,
                [("first".to_string(), RolloutState::Done), ("second".to_string(), RolloutState::Failed)]
            );
            // The first ring runs the new chart version.
            for tt in tool_targets(&client, &ns).await {
                let chart = tt.status.as_ref().and_then(|s| s.tools.first()).and_then(|t| t.chart_version.clone());
                if tt.spec.target.name.starts_with('a') {
                    assert_eq!(chart.as_deref(), Some("0.2.0"), "{}", tt.spec.target.name);
                }
            }
        })
        .await;
}

async fn apply_rollout(client: &Client, ns: &str, mut object: Value) {
    object["apiVersion"] = json!("fleetforge.dev/v1alpha1");
    object["kind"] = json!("FleetRollout");
    let rollout: FleetRollout = serde_json::from_value(object).unwrap();
    Api::<FleetRollout>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &rollout)
        .await
        .unwrap();
}
