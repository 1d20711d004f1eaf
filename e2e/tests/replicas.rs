//! Two replicas of the built controller, run with the chart's arguments
//! (leader election on) against one API server: one leads, the other
//! waits; killed with SIGKILL, the leader is replaced within the lease's
//! terms, no cluster is created twice at the (nop) provider, whose state
//! both replicas share as they would share one cloud account, and every
//! Cluster converges. Stopped with SIGTERM, as a rolling update does, a
//! leader gives the lease up and a waiting replica takes it at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_e2e::chart::{deployment_args, render};
use fleetforge_e2e::{
    Controller, fleetforge_bin, install, nop, run_ok, service_account_kubeconfig,
};
use fleetforge_testenv::{OwnedProcess, free_port, shared};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams};
use serde_json::json;

const CLUSTERS: usize = 12;

/// A replica as a pod of the chart's Deployment runs it, named `pod`.
fn replica(kubeconfig: &Path, namespace: &str, pod: &str, dir: &Path) -> Controller {
    let port = free_port().unwrap();
    let objects = render(&[
        "--set",
        &format!("controller.watchNamespace={namespace}"),
        // Few creates at once, so that the leader dies with some done and
        // some not yet started.
        "--set",
        "controller.concurrency=2",
    ]);
    let args = deployment_args(&objects, port);
    assert!(
        args.contains(&"--leader-elect=true".to_string()),
        "{args:?}"
    );
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

/// The lease's holder, when there is one.
async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("fleetforge")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

async fn await_holder(leases: &Api<Lease>, pod: &str, within: Duration, log: &str) -> Duration {
    let started = Instant::now();
    loop {
        if holder(leases)
            .await
            .is_some_and(|h| h.starts_with(&format!("{pod}_")))
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{pod} did not take the lease within {within:?} (holder {:?})\n{log}",
            holder(leases).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn journal(state: &Path) -> Vec<String> {
    std::fs::read_to_string(state.join(fleetforge_provider_nop::CREATES_LOG))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_standby_takes_over_from_a_killed_leader_and_nothing_is_created_twice() {
    install();
    let plane = shared();
    shared()
        .with_temp_ns(|client, ns| async move {
            let dir = tempfile::tempdir().unwrap();
            // Both replicas run as the generated least-privilege account.
            let kubeconfig =
                service_account_kubeconfig(plane, &client, &ns, &dir.path().join("account.kubeconfig")).await;
            let state = dir.path().join("cloud");
            let config_name = format!("replicas-{ns}");
            let configs: Api<ProviderConfig> = Api::all(client.clone());
            let nop_spec = json!({"createDelay": "1s", "stateDirectory": state.display().to_string()});
            nop::provider_config(&client, &config_name, nop_spec).await;

            let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
            let mut leader = replica(&kubeconfig, &ns, "fleetforge-a", dir.path());
            await_holder(&leases, "fleetforge-a", Duration::from_secs(60), &leader.process.log_tail()).await;
            let standby = replica(&kubeconfig, &ns, "fleetforge-b", dir.path());

            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            let names: Vec<String> = (0..CLUSTERS).map(|i| format!("c{i}")).collect();
            for name in &names {
                nop::cluster(&client, &ns, name, &config_name, json!({})).await;
            }

            // The leader dies with its work half done.
            let deadline = Instant::now() + Duration::from_secs(60);
            while journal(&state).len() < CLUSTERS / 3 {
                assert!(Instant::now() < deadline, "no creates: {}", leader.process.log_tail());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let before = leases.get("fleetforge").await.unwrap().spec.unwrap();
            run_ok(Command::new("kill").args(["-KILL", &leader.process.pid().to_string()]));
            let killed_at = journal(&state).len();
            let _ = leader.exited();
            assert!(
                holder(&leases).await.is_some_and(|h| h.starts_with("fleetforge-a_")),
                "the standby must not have led while the leader lived"
            );

            // The standby takes the lease once it expires: at most the
            // lease duration after the last renewal, plus its retry period.
            let duration = Duration::from_secs(before.lease_duration_seconds.unwrap() as u64);
            let failover = await_holder(
                &leases,
                "fleetforge-b",
                duration + Duration::from_secs(2 + 5),
                &standby.process.log_tail(),
            )
            .await;
            eprintln!(
                "failover: the standby held the lease {failover:?} after the leader's SIGKILL (lease {duration:?}; {killed_at} of {CLUSTERS} creates done at the kill)"
            );
            let after = leases.get("fleetforge").await.unwrap().spec.unwrap();
            assert_eq!(
                after.lease_transitions.unwrap_or(0),
                before.lease_transitions.unwrap_or(0) + 1,
                "one change of leader"
            );

            for name in &names {
                nop::await_ready(&client, &ns, name, &standby).await;
            }
            // One create call per cluster, over both replicas.
            let mut creates: BTreeMap<String, usize> = BTreeMap::new();
            for name in journal(&state) {
                *creates.entry(name).or_default() += 1;
            }
            assert_eq!(creates.len(), CLUSTERS, "{creates:?}");
            assert!(creates.values().all(|n| *n == 1), "a cluster was created twice: {creates:?}");
            // Creates the leader died in (how many depends on the moment).
            let events: Api<Event> = Api::namespaced(client.clone(), &ns);
            let events = events.list(&Default::default()).await.unwrap().items;
            let count = |reason: &str| events.iter().filter(|e| e.reason.as_deref() == Some(reason)).count();
            eprintln!(
                "interrupted creates: {} retried after the grace period, {} found and adopted",
                count("CreateRetried"),
                count("CreateConfirmed")
            );

            // A rolling update: a new replica waits, the leader is stopped
            // with SIGTERM and gives the lease up at once, well within
            // the lease duration a crash costs.
            let successor = replica(&kubeconfig, &ns, "fleetforge-c", dir.path());
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut standby = standby;
            let stopped_at = Instant::now();
            let status = standby.process.terminate(Duration::from_secs(30));
            assert!(status.is_some_and(|s| s.success()), "SIGTERM stops the leader cleanly: {status:?}\n{}", standby.process.log_tail());
            // Without the release it would take at least the lease
            // duration less one renewal period (13 s); half of it is
            // room enough for a retry period and the shutdown.
            let handover = await_holder(&leases, "fleetforge-c", duration / 2, &successor.process.log_tail()).await;
            eprintln!(
                "handover: the new replica held the lease {:?} after SIGTERM to the leader ({handover:?} after it exited)",
                stopped_at.elapsed()
            );
            let standby = successor;

            for name in &names {
                clusters.delete(name, &DeleteParams::default()).await.unwrap();
            }
            for name in &names {
                standby
                    .wait_for(&clusters, name, "deleted", |c: Option<&Cluster>| c.is_none())
                    .await;
            }
            let _ = configs.delete(&config_name, &DeleteParams::default()).await;
        })
        .await;
}
