//! The test bed itself: a real API server answers, workloads become Available
//! through the real controller-manager, scheduler and kwok, waits explain
//! themselves, and no process outlives its owner.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetforge_testenv::{
    ControlPlane, await_condition, pids_mentioning, shared, shared_with_workloads, with_temp_ns,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test]
async fn the_api_server_is_the_pinned_real_one() {
    let client = shared().client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.36.3");
    assert_eq!(version.minor, "36");
}

#[tokio::test]
async fn temporary_namespaces_hold_objects_and_are_deleted_after_the_test() {
    let mut used = String::new();
    with_temp_ns(|client, namespace| {
        used = namespace.clone();
        async move {
            let config_maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": "greeting"},
                "data": {"hello": "world"},
            }))
            .unwrap();
            config_maps
                .create(&PostParams::default(), &cm)
                .await
                .unwrap();
            let read = config_maps.get("greeting").await.unwrap();
            assert_eq!(read.data.unwrap()["hello"], "world");
        }
    })
    .await;
    assert!(
        used.starts_with("t-temporary-namespaces-hold-objects"),
        "{used}"
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
        Api::all(shared().client().await.unwrap());
    // Without a controller-manager the namespace stays Terminating, which
    // proves the deletion was requested.
    let namespace = namespaces.get_opt(&used).await.unwrap();
    assert!(
        namespace.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()),
        "namespace {used} was not deleted"
    );
}

#[tokio::test]
async fn await_condition_times_out_saying_what_it_waited_for_and_saw() {
    with_temp_ns(|client, namespace| async move {
        let config_maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "never-ready"},
            "data": {"state": "still-waiting"},
        }))
        .unwrap();
        config_maps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
        let error = await_condition(
            &config_maps,
            "never-ready",
            "ConfigMap never-ready to say done",
            Duration::from_secs(2),
            |cm: Option<&ConfigMap>| {
                cm.and_then(|cm| cm.data.as_ref()?.get("state"))
                    .is_some_and(|s| s == "done")
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("waiting for ConfigMap never-ready to say done"),
            "{error}"
        );
        assert!(error.contains("still-waiting"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_deployment_becomes_available_on_simulated_nodes() {
    shared_with_workloads()
        .with_temp_ns(|client, namespace| async move {
            let deployments: Api<Deployment> = Api::namespaced(client, &namespace);
            let deployment: Deployment = serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
                    },
                },
            }))
            .unwrap();
            deployments
                .create(&PostParams::default(), &deployment)
                .await
                .unwrap();
            let available = await_condition(
                &deployments,
                "web",
                "Deployment web to be Available with 2 ready replicas",
                Duration::from_secs(120),
                |d: Option<&Deployment>| {
                    let Some(status) = d.and_then(|d| d.status.as_ref()) else {
                        return false;
                    };
                    status.ready_replicas == Some(2)
                        && status
                            .conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Available" && c.status == "True")
                },
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(available.status.unwrap().available_replicas, Some(2));
        })
        .await;
}

#[tokio::test]
async fn dropping_a_control_plane_stops_every_process_and_removes_its_data() {
    let plane = ControlPlane::builder().start().await.unwrap();
    let dir = plane.dir().to_path_buf();
    let pids: Vec<u32> = plane.processes().into_iter().map(|(_, pid)| pid).collect();
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    assert!(plane.rss_bytes() > 0);
    drop(plane);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived its control plane"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// How the probe's test binary ends.
#[derive(Clone, Copy, Debug)]
enum ProbeEnd {
    /// The binary exits normally without dropping the shared control planes.
    Exit,
    /// The binary is killed with SIGKILL: nothing of ours runs at all.
    Killed,
}

#[test]
fn no_process_outlives_a_test_binary_that_exits() {
    assert_probe_leaves_nothing(ProbeEnd::Exit);
}

#[test]
fn no_process_outlives_a_test_binary_that_is_killed() {
    assert_probe_leaves_nothing(ProbeEnd::Killed);
}

/// Runs this test binary again, restricted to `leak_probe`, which starts the
/// shared control plane with workloads and ends as `end` says; then checks
/// that no process mentioning the probe's data root is left.
fn assert_probe_leaves_nothing(end: ProbeEnd) {
    let root = tempfile::tempdir().unwrap();
    let root_text = root.path().to_string_lossy().to_string();
    let mut probe = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "leak_probe", "--ignored", "--nocapture"])
        .env("FLEETFORGE_TESTENV_DIR", root.path())
        .env("FLEETFORGE_LEAK_PROBE", format!("{end:?}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(probe.stdout.take().unwrap());
    let mut ready = false;
    for line in stdout.lines() {
        if line.unwrap().starts_with("PROBE READY") {
            ready = true;
            break;
        }
    }
    assert!(ready, "the probe never started its control plane");
    let running = pids_mentioning(&root_text);
    assert!(
        running.len() >= 5,
        "expected etcd, kube-apiserver, controller-manager, scheduler and kwok, found {running:?}"
    );
    match end {
        // Closing its stdin tells the probe to exit.
        ProbeEnd::Exit => drop(probe.stdin.take()),
        ProbeEnd::Killed => probe.kill().unwrap(),
    }
    probe.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = pids_mentioning(&root_text);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left after the probe ended ({end:?}): {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Not a test of its own: the child half of the checks above.
#[test]
#[ignore = "run by no_process_outlives_* as a child process"]
fn leak_probe() {
    let Ok(end) = std::env::var("FLEETFORGE_LEAK_PROBE") else {
        return;
    };
    let plane = shared_with_workloads();
    println!("PROBE READY {}", plane.dir().display());
    // Wait for the parent to count our processes (it closes stdin, or kills us).
    let _ = std::io::stdin().read_line(&mut String::new());
    if end == "Exit" {
        std::process::exit(0);
    }
}
