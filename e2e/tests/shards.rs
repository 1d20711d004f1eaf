//! Three replicas of the built controller, run with the chart's arguments
//! and `controller.shards` set, share a fleet of nop Clusters (twelve
//! accounts) and a ToolInstall over all of them through Leases: every
//! replica takes a share of the shards and works only on its share; one
//! replica killed with SIGKILL loses its shards to the others within the
//! lease duration, and every Cluster and ToolTarget still converges,
//! including changes made after the kill. The nop provider, whose state all
//! replicas share as they would one cloud, journals any call made while
//! another call on the same object was in progress: there must be none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fleetforge_api::{Cluster, ProviderConfig, ToolInstall, ToolState, ToolTarget};
use fleetforge_e2e::chart::{deployment_args, render};
use fleetforge_e2e::{
    Controller, fleetforge_bin, install, nop, run_ok, service_account_kubeconfig,
};
use fleetforge_testenv::{OwnedProcess, free_port, shared};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const SHARDS: u32 = 12;
const ACCOUNTS: usize = 12;
const PER_ACCOUNT: usize = 20;
const WAIT: Duration = Duration::from_secs(240);

fn replica(kubeconfig: &Path, namespace: &str, pod: &str, dir: &Path) -> Controller {
    let port = free_port().unwrap();
    let objects = render(&[
        "--set",
        &format!("controller.watchNamespace={namespace}"),
        "--set",
        &format!("controller.shards={SHARDS}"),
    ]);
    let args = deployment_args(&objects, port);
    assert!(args.contains(&format!("--shards={SHARDS}")), "{args:?}");
    let kubeconfig = kubeconfig.to_string_lossy().to_string();
    let process = OwnedProcess::spawn_with_env(
        pod,
        &fleetforge_bin(),
        &args,
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("POD_NAMESPACE", namespace),
            ("POD_NAME", pod),
            ("RUST_LOG", "info"),
        ],
        &dir.join(format!("{pod}.log")),
    )
    .unwrap();
    Controller { process, port }
}

/// The sum of the samples of `metric` whose labels contain `labels`.
fn metric(controller: &Controller, metric: &str, labels: &str) -> f64 {
    let (_, body) = controller.get("/metrics");
    body.lines()
        .filter(|l| l.starts_with(metric) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Holders of the shard Leases, by shard (expired ones count as held: the
/// Lease still names them).
async fn shard_holders(leases: &Api<Lease>) -> BTreeMap<u32, String> {
    leases
        .list(&ListParams::default().labels("fleetforge.dev/lease-role=shard"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|l| {
            let shard = l.labels().get("fleetforge.dev/shard")?.parse().ok()?;
            let holder = l.spec?.holder_identity.filter(|h| !h.is_empty())?;
            Some((shard, holder))
        })
        .collect()
}

/// Waits until every shard is held and `pods` all hold some: returns
/// the holders.
async fn await_spread(leases: &Api<Lease>, pods: &[&str], logs: &str) -> BTreeMap<u32, String> {
    let started = Instant::now();
    loop {
        let holders = shard_holders(leases).await;
        let spread = holders.len() == SHARDS as usize
            && pods
                .iter()
                .all(|pod| holders.values().any(|h| h.starts_with(&format!("{pod}_"))))
            && holders
                .values()
                .all(|h| pods.iter().any(|pod| h.starts_with(&format!("{pod}_"))));
        if spread {
            return holders;
        }
        assert!(
            started.elapsed() < WAIT,
            "the shards were not spread over {pods:?}: {holders:?}\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn journal(state: &Path, log: &str) -> Vec<String> {
    std::fs::read_to_string(state.join(log))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn await_all<K>(
    api: &Api<K>,
    what: &str,
    count: usize,
    done: impl Fn(&K) -> bool,
    logs: impl Fn() -> String,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let started = Instant::now();
    loop {
        let items = api.list(&ListParams::default()).await.unwrap().items;
        let finished = items.iter().filter(|o| done(o)).count();
        if items.len() == count && finished == count {
            eprintln!("{what}: {count} after {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: {finished} of {count} ({} exist)\n{}",
            items.len(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn deployed(tt: &ToolTarget) -> bool {
    tt.status.as_ref().is_some_and(|s| {
        s.observed_generation == tt.metadata.generation && s.state == Some(ToolState::Deployed)
    })
}

fn scaled_to(desired: i32) -> impl Fn(&Cluster) -> bool {
    move |c: &Cluster| {
        nop::is_ready(Some(c))
            && c.status.as_ref().is_some_and(|s| {
                s.node_pools
                    .iter()
                    .any(|p| p.name == "workers" && p.desired == Some(desired))
            })
    }
}

#[tokio::test]
async fn three_replicas_share_the_fleet_and_absorb_one_killed() {
    install();
    let plane = shared();
    plane
        .with_temp_ns(|client, ns| async move {
            let dir = tempfile::tempdir().unwrap();
            let kubeconfig = service_account_kubeconfig(
                plane,
                &client,
                &ns,
                &dir.path().join("account.kubeconfig"),
            )
            .await;
            let state = dir.path().join("cloud");
            std::fs::create_dir_all(&state).unwrap();
            let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("shards-{ns}-{i}")).collect();
            for account in &accounts {
                // Calls take a while, so that two replicas acting on one
                // object at once would overlap in the journal.
                nop::provider_config(
                    &client,
                    account,
                    json!({"callDelay": "20ms", "createDelay": "200ms", "stateDirectory": state.display().to_string()}),
                )
                .await;
            }

            let pods = ["fleetforge-a", "fleetforge-b", "fleetforge-c"];
            let mut replicas: Vec<Controller> = pods
                .iter()
                .map(|pod| replica(&kubeconfig, &ns, pod, dir.path()))
                .collect();
            let logs = |replicas: &[Controller]| {
                replicas
                    .iter()
                    .map(|r| r.process.log_tail())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
            let holders = await_spread(&leases, &pods, &logs(&replicas)).await;
            eprintln!("shards: {holders:?}");

            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            let mut names = Vec::new();
            for (a, account) in accounts.iter().enumerate() {
                for i in 0..PER_ACCOUNT {
                    let name = format!("c{a}-{i}");
                    nop::cluster(&client, &ns, &name, account, json!({})).await;
                    names.push(name);
                }
            }
            let total = names.len();
            let installs: Api<ToolInstall> = Api::namespaced(client.clone(), &ns);
            let ti: ToolInstall = serde_json::from_value(json!({
                "metadata": {"name": "fleet"},
                "spec": {
                    "tools": [{"name": "base", "chart": {"repository": "https://charts.example.com", "name": "base", "version": "1.0.0"}}],
                    "targets": {"clusterSelector": {}},
                    "pollInterval": "1h",
                },
            }))
            .unwrap();
            installs.create(&PostParams::default(), &ti).await.unwrap();

            await_all(&clusters, "Clusters Ready", total, |c| nop::is_ready(Some(c)), || logs(&replicas)).await;
            let tool_targets: Api<ToolTarget> = Api::namespaced(client.clone(), &ns);
            await_all(&tool_targets, "ToolTargets DEPLOYED", total, deployed, || logs(&replicas)).await;

            // The work was split: every replica reconciled Clusters and
            // ToolTargets, each only those of its shards.
            for (pod, replica) in pods.iter().zip(&replicas) {
                let clusters_done = metric(replica, "fleetforge_reconciles_total", "controller=\"Cluster\"");
                let targets_done = metric(replica, "fleetforge_reconciles_total", "controller=\"ToolTarget\"");
                let owned = metric(replica, "fleetforge_shard_owned", "");
                let cached = metric(replica, "fleetforge_objects", "controller=\"Cluster\"");
                eprintln!("{pod}: {owned} shards, {cached} Clusters its own, {clusters_done} Cluster passes, {targets_done} ToolTarget passes");
                assert!(clusters_done > 0.0 && targets_done > 0.0, "{pod} did no work\n{}", logs(&replicas));
                assert!(owned >= 1.0 && owned < f64::from(SHARDS), "{pod} owns {owned} shards");
            }
            let labelled = clusters.list(&ListParams::default().labels("fleetforge.dev/shard")).await.unwrap().items.len();
            assert_eq!(labelled, total, "every Cluster carries its shard");

            // One replica that is not the leader dies; its shards go to the
            // others once its Leases expire.
            let leader = leases.get("fleetforge").await.unwrap().spec.unwrap().holder_identity.unwrap();
            let victim = pods.iter().position(|p| !leader.starts_with(&format!("{p}_"))).unwrap();
            let victim_pod = pods[victim];
            let its_shards: BTreeSet<u32> = shard_holders(&leases)
                .await
                .into_iter()
                .filter(|(_, h)| h.starts_with(&format!("{victim_pod}_")))
                .map(|(s, _)| s)
                .collect();
            assert!(!its_shards.is_empty());
            run_ok(Command::new("kill").args(["-KILL", &replicas[victim].process.pid().to_string()]));
            let killed_at = Instant::now();
            let _ = replicas[victim].exited();
            let survivors: Vec<&str> = pods.iter().copied().filter(|p| *p != victim_pod).collect();

            // Meanwhile every Cluster is scaled, those of the dead
            // replica's shards too.
            for name in &names {
                clusters
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 3}]}})),
                    )
                    .await
                    .unwrap();
            }
            let alive: Vec<Controller> = replicas.drain(..).enumerate().filter(|(i, _)| *i != victim).map(|(_, r)| r).collect();
            await_spread(&leases, &survivors, &logs(&alive)).await;
            let failover = killed_at.elapsed();
            eprintln!("failover: shards {its_shards:?} of {victim_pod} taken over {failover:?} after its SIGKILL");
            // Lease duration (15 s) plus a retry period and a round.
            assert!(failover < Duration::from_secs(15 + 2 + 5), "took {failover:?}");
            await_all(&clusters, "Clusters scaled after the kill", total, scaled_to(3), || logs(&alive)).await;
            await_all(&tool_targets, "ToolTargets DEPLOYED after the kill", total, deployed, || logs(&alive)).await;

            // Never two calls on one object at once, and one create each.
            let overlaps = journal(&state, fleetforge_provider_nop::CONCURRENT_LOG);
            assert!(overlaps.is_empty(), "calls overlapped on one object: {overlaps:?}");
            let mut creates: BTreeMap<String, usize> = BTreeMap::new();
            for name in journal(&state, fleetforge_provider_nop::CREATES_LOG) {
                *creates.entry(name).or_default() += 1;
            }
            assert_eq!(creates.len(), total);
            assert!(creates.values().all(|n| *n == 1), "a cluster was created twice");

            installs.delete("fleet", &DeleteParams::default()).await.unwrap();
            for name in &names {
                clusters.delete(name, &DeleteParams::default()).await.unwrap();
            }
            await_all(&clusters, "Clusters deleted", 0, |_| true, || logs(&alive)).await;
            let configs: Api<ProviderConfig> = Api::all(client.clone());
            for account in &accounts {
                let _ = configs.delete(account, &DeleteParams::default()).await;
            }
        })
        .await;
}
