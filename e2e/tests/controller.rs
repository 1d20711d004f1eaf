//! The built `fleetforge controller`, run the way an operator runs it:
//! CRDs and RBAC applied with kubectl from `fleetforge crds` and `fleetforge
//! rbac`, the controller under its own service account's token (so a
//! missing RBAC verb fails here), and users working through kubectl.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetforge_api::{Cluster, annotation};
use fleetforge_e2e::nop::{
    await_ready, cluster as create_cluster, provider_config as create_provider_config,
};
use fleetforge_e2e::{Controller, admin_kubeconfig, install, kubectl, service_account_kubeconfig};
use fleetforge_testenv::{await_condition, shared};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn log_path(dir: &Path) -> PathBuf {
    dir.join("controller.log")
}

#[tokio::test]
async fn the_controller_runs_under_its_rbac_and_kubectl_shows_the_clusters() {
    install();
    let work = tempfile::tempdir().unwrap();
    shared()
        .with_temp_ns(|client, ns| async move {
            let kubeconfig = service_account_kubeconfig(shared(), &client, &ns, &work.path().join("sa.kubeconfig")).await;
            let mut controller = Controller::start(&kubeconfig, &ns, &log_path(work.path()));
            create_provider_config(&client, &ns, json!({})).await;
            create_cluster(&client, &ns, "dev-1", &ns, json!({})).await;
            let ready = await_ready(&client, &ns, "dev-1", &controller).await;
            assert!(ready.finalizers().contains(&fleetforge_api::FINALIZER.to_string()));

            // `kubectl get clusters` is useful without flags.
            let table = kubectl(&admin_kubeconfig(), &["get", "clusters", "-n", &ns]);
            let mut lines = table.lines();
            let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
            assert_eq!(header, ["NAME", "PROVIDER", "REGION", "VERSION", "PHASE", "READY", "DRIFT", "AGE"]);
            let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
            assert_eq!(&row[..7], ["dev-1", "nop", "nop-region-1", "1.36", "Ready", "True", "False"], "{table}");
            // ... and the short name and category work.
            assert!(kubectl(&admin_kubeconfig(), &["get", "ffc", "-n", &ns]).contains("dev-1"));
            assert!(kubectl(&admin_kubeconfig(), &["get", "fleetforge", "-n", &ns]).contains("cluster.fleetforge.dev/dev-1"));
            let described = kubectl(&admin_kubeconfig(), &["describe", "cluster", "dev-1", "-n", &ns]);
            assert!(described.contains("CreatedExternalResource"), "{described}");

            // ToolSets are validated: install order, or the cycle named.
            let sets: Api<fleetforge_api::ToolSet> = Api::all(client.clone());
            let chart = json!({"path": "/charts/x"});
            for (name, tools) in [
                (format!("{ns}-good"), json!([{"name": "knative", "chart": chart, "dependsOn": ["cert-manager"]}, {"name": "cert-manager", "chart": chart}])),
                (format!("{ns}-loop"), json!([{"name": "a", "chart": chart, "dependsOn": ["b"]}, {"name": "b", "chart": chart, "dependsOn": ["a"]}])),
            ] {
                let set: fleetforge_api::ToolSet =
                    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"tools": tools}})).unwrap();
                sets.create(&PostParams::default(), &set).await.unwrap();
            }
            let good = await_condition(&sets, &format!("{ns}-good"), "the ToolSet to be validated", WAIT, |s: Option<&fleetforge_api::ToolSet>| {
                s.and_then(|s| s.status.as_ref()).is_some_and(|s| s.tool_count == Some(2))
            })
            .await
            .unwrap()
            .unwrap();
            assert_eq!(good.status.unwrap().install_order, ["cert-manager", "knative"]);
            let looped = await_condition(&sets, &format!("{ns}-loop"), "the cyclic ToolSet to be refused", WAIT, |s: Option<&fleetforge_api::ToolSet>| {
                s.and_then(|s| s.status.as_ref())
                    .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "InvalidDependencies"))
            })
            .await
            .unwrap()
            .unwrap();
            let message = looped.status.unwrap().conditions[0].message.clone();
            assert_eq!(message, "dependsOn forms a cycle: a -> b -> a");
            let table = kubectl(&admin_kubeconfig(), &["get", "toolset", &format!("{ns}-good")]);
            let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
            assert_eq!(&row[1..3], ["2", "True"], "{table}");

            // Health and metrics.
            assert_eq!(controller.get("/healthz").0, 200);
            assert_eq!(controller.get("/readyz").0, 200);
            let (status, metrics) = controller.get("/metrics");
            assert_eq!(status, 200);
            // Every controller under the same names.
            for controller in ["Cluster", "ProviderConfig", "ToolSet", "ToolInstall", "ClusterProfile", "VirtualClusterProfile", "VirtualCluster", "Environment"] {
                assert!(
                    metrics.contains(&format!("fleetforge_objects{{controller=\"{controller}\"}}")),
                    "no objects gauge for {controller}:\n{metrics}"
                );
            }
            for line in [
                "fleetforge_reconciles_total{controller=\"Cluster\",result=\"ok\"}",
                "fleetforge_reconciles_total{controller=\"ToolSet\",result=\"ok\"}",
                "fleetforge_reconcile_duration_seconds_count{controller=\"Cluster\"}",
            ] {
                assert!(metrics.contains(line), "{line} missing:\n{metrics}");
            }
            assert!(
                metrics.contains("fleetforge_provider_calls_total{provider=\"nop\",verb=\"create\",outcome=\"ok\"} 1"),
                "{metrics}"
            );
            // The standard process metrics, with real values.
            let sample = |name: &str| -> f64 {
                metrics
                    .lines()
                    .find_map(|line| line.strip_prefix(&format!("{name} ")))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
            };
            assert!(sample("process_resident_memory_bytes") > 1e6);
            assert!(sample("process_cpu_seconds_total") > 0.0);
            assert!(sample("process_open_fds") > 0.0);
            assert!(sample("process_max_fds") >= sample("process_open_fds"));

            // Deleting through kubectl removes the cluster, then the object.
            kubectl(&admin_kubeconfig(), &["delete", "cluster", "dev-1", "-n", &ns, "--timeout=60s"]);
            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            assert!(clusters.get_opt("dev-1").await.unwrap().is_none());

            // SIGTERM: a clean exit that hands the lease back.
            let status = controller.process.terminate(Duration::from_secs(15));
            assert!(status.is_some_and(|s| s.success()), "exit: {status:?}\n{}", controller.process.log_tail());
            let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
            let lease = leases.get("fleetforge").await.unwrap();
            assert!(lease.spec.unwrap().holder_identity.is_none(), "the lease was not released");
        })
        .await;
}

#[tokio::test]
async fn a_controller_that_cannot_run_ends_the_process_saying_why() {
    install();
    let work = tempfile::tempdir().unwrap();
    shared()
        .with_temp_ns(|client, ns| async move {
            let kubeconfig = service_account_kubeconfig(
                shared(),
                &client,
                &ns,
                &work.path().join("sa.kubeconfig"),
            )
            .await;
            // The tools and VirtualCluster controllers need a work
            // directory for helm; with none to be had, the process ends
            // (non-zero, so that Kubernetes restarts it) saying why.
            let missing = work.path().join("no-such-dir");
            let mut controller = Controller::start_with_env(
                &kubeconfig,
                &ns,
                &log_path(work.path()),
                &[("TMPDIR", missing.to_str().unwrap())],
            );
            let deadline = std::time::Instant::now() + WAIT;
            let exited = loop {
                if let Some(exited) = controller.exited() {
                    break exited;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the controller kept running without its ToolInstall controller"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            assert!(!exited.contains("exit status: 0"), "{exited}");
            let log = std::fs::read_to_string(log_path(work.path())).unwrap();
            assert!(log.contains("creating the Helm work directory"), "{log}");
        })
        .await;
}

#[tokio::test]
async fn a_crash_between_create_and_its_record_leaves_exactly_one_cluster() {
    install();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("nop-state");
    shared()
        .with_temp_ns(|client, ns| async move {
            let kubeconfig = service_account_kubeconfig(
                shared(),
                &client,
                &ns,
                &work.path().join("sa.kubeconfig"),
            )
            .await;
            create_provider_config(&client, &ns, json!({"stateDirectory": state})).await;
            let mut first = Controller::start(&kubeconfig, &ns, &work.path().join("first.log"));
            // The fake cloud aborts the process right after storing the
            // cluster, before the controller can record that it created it.
            create_cluster(
                &client,
                &ns,
                "crashy",
                &ns,
                json!({"nop.fleetforge.dev/crash-after-create": "true"}),
            )
            .await;
            let deadline = Instant::now() + WAIT;
            let exit = loop {
                if let Some(status) = first.process.exit_status() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "the controller did not crash:\n{}",
                    first.process.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(!exit.success(), "{exit:?}");

            let stored = |dir: &Path| -> Vec<String> {
                let mut names: Vec<String> = std::fs::read_dir(dir)
                    .unwrap()
                    .filter_map(|e| {
                        e.unwrap()
                            .file_name()
                            .to_string_lossy()
                            .strip_suffix(".json")
                            .map(str::to_string)
                    })
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                names.sort();
                names
            };
            assert_eq!(stored(&state), ["crashy"]);
            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            let crashed = clusters.get("crashy").await.unwrap();
            let annotations = crashed.annotations();
            assert!(
                annotations.contains_key(annotation::CREATE_PENDING),
                "{annotations:?}"
            );
            assert!(
                crashed
                    .status
                    .as_ref()
                    .and_then(|s| s.create_succeeded.as_ref())
                    .is_none(),
                "the crash came before the create's success was recorded"
            );

            // A new controller finds the pending create, sees the cluster is
            // its own and adopts it: no second create (which would abort again).
            let second = Controller::start(&kubeconfig, &ns, &work.path().join("second.log"));
            let ready = await_ready(&client, &ns, "crashy", &second).await;
            // The adoption records the create's success against its start.
            let started = &ready.annotations()[annotation::CREATE_PENDING];
            let succeeded = ready
                .status
                .as_ref()
                .and_then(|s| s.create_succeeded.as_ref())
                .expect("the create's success");
            assert_eq!(succeeded.0, started.parse().unwrap());
            assert_eq!(stored(&state), ["crashy"]);
            let events: Api<Event> = Api::namespaced(client.clone(), &ns);
            let reasons: Vec<String> = events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|e| e.reason)
                .collect();
            assert!(
                reasons.iter().any(|r| r == "CreateConfirmed"),
                "{reasons:?}"
            );
            let mut second = second;
            assert!(
                second.process.exit_status().is_none(),
                "the second controller must not crash"
            );
            clusters
                .delete("crashy", &DeleteParams::default())
                .await
                .unwrap();
            await_condition(
                &clusters,
                "crashy",
                "crashy to be deleted",
                WAIT,
                |c: Option<&Cluster>| c.is_none(),
            )
            .await
            .unwrap();
            assert!(stored(&state).is_empty());
        })
        .await;
}
