//! The Helm chart (`deploy/chart/fleetforge`) with the pinned helm: it
//! lints clean, renders what a platform team expects (replicas with leader
//! election, probes, a locked-down pod), refuses bad values naming the
//! field, and installed into a real API server its ServiceAccount and
//! RBAC are enough for the built controller, run with that account's
//! token and the chart's own arguments, to bring nop Clusters to Ready.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use fleetforge_api::{Cluster, ProviderConfig, condition};
use fleetforge_e2e::{Controller, kubectl, token_kubeconfig, workspace_root};
use fleetforge_testenv::{await_condition, shared, tools};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const RELEASE_NAMESPACE: &str = "fleetforge-system";

fn chart() -> PathBuf {
    workspace_root().join("deploy/chart/fleetforge")
}

fn helm(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join("fleetforge-e2e-chart-helm");
    Command::new(tools::binary("helm").expect("helm is built"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs")
}

/// `helm template` with `extra` arguments: the rendered objects.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "fleetforge",
        chart.to_str().unwrap(),
        "--namespace",
        RELEASE_NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let output = helm(&args);
    assert!(
        output.status.success(),
        "helm template {extra:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(Value::is_object)
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn the_chart_lints_clean_and_renders_a_locked_down_deployment_with_leader_election() {
    let chart = chart();
    let lint = helm(&["lint", "--strict", chart.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&lint.stdout);
    assert!(lint.status.success(), "helm lint: {said}");
    assert!(
        !said.contains("[WARNING]") && !said.contains("[INFO]") && !said.contains("[ERROR]"),
        "helm lint has something to say: {said}"
    );

    let objects = render(&[]);
    let deployment = find(&objects, "Deployment");
    assert_eq!(deployment.len(), 1);
    let deployment = deployment[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "fleetforge");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[1], "controller", "{args:?}");
    assert!(args.contains(&"--leader-elect=true"), "{args:?}");
    assert!(args.contains(&"--metrics-addr=0.0.0.0:8080"), "{args:?}");
    let env = container["env"].as_array().unwrap();
    let pod_namespace = env.iter().find(|e| e["name"] == "POD_NAMESPACE").unwrap();
    assert_eq!(
        pod_namespace["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        container["image"], "ghcr.io/fleetforge/fleetforge:0.1.0",
        "the tag defaults to the appVersion"
    );

    // What else a default install makes, and what it does not.
    assert_eq!(find(&objects, "ClusterRole").len(), 3);
    assert_eq!(find(&objects, "PodDisruptionBudget").len(), 1);
    assert_eq!(find(&objects, "Service").len(), 1);
    assert!(find(&objects, "ServiceMonitor").is_empty());
    assert!(find(&objects, "NetworkPolicy").is_empty());
    let bindings = find(&objects, "RoleBinding");
    assert_eq!(bindings.len(), 1, "leader election only");
    assert_eq!(bindings[0]["metadata"]["namespace"], RELEASE_NAMESPACE);

    // A ServiceMonitor where the prometheus-operator's kind exists; the
    // vcluster-host role where asked; a digest wins over the tag.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let objects = render(&[
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--set",
        "vclusterHostNamespaces={dev-envs,team-a}",
        "--set",
        &format!("image.digest={digest}"),
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "replicas=1",
    ]);
    assert_eq!(find(&objects, "ServiceMonitor").len(), 1);
    assert_eq!(find(&objects, "NetworkPolicy").len(), 1);
    assert!(
        find(&objects, "PodDisruptionBudget").is_empty(),
        "one replica cannot keep one available through a drain"
    );
    let hosts: Vec<&Value> = find(&objects, "RoleBinding")
        .into_iter()
        .filter(|b| b["roleRef"]["name"] == "fleetforge-vcluster-host")
        .map(|b| &b["metadata"]["namespace"])
        .collect();
    assert_eq!(hosts, [&json!("dev-envs"), &json!("team-a")]);
    assert_eq!(
        find(&objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("ghcr.io/fleetforge/fleetforge@{digest}")
    );
}

#[test]
fn bad_values_fail_at_install_naming_the_field() {
    let chart = chart();
    for (value, field) in [
        ("replicas=-1", "/replicas"),
        ("controller.logFormat=xml", "/controller/logFormat"),
        ("image.digest=latest", "/image/digest"),
        (
            "controller.creationGracePeriod=soon",
            "/controller/creationGracePeriod",
        ),
        (
            "tracing.otlpEndpoint=collector:4318",
            "/tracing/otlpEndpoint",
        ),
        ("replica=2", "replica"),
    ] {
        let output = helm(&["template", "x", chart.to_str().unwrap(), "--set", value]);
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value} was accepted");
        assert!(said.contains(field), "{value}: {said}");
    }
}

async fn nop_cluster(client: &Client, namespace: &str, name: &str) {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let cluster: Cluster = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "providerConfigRef": {"name": "chart-nop"},
            "version": "1.36",
            "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 1}],
        },
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
}

/// The chart's Deployment arguments, with what a pod would not have
/// replaced for a process on this machine: the metrics address (a free
/// loopback port) and the log format (human, for the test's log).
fn deployment_args(objects: &[Value], port: u16) -> Vec<String> {
    let container = &find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| !a.starts_with("--log-format"))
        .map(|a| {
            if a.starts_with("--metrics-addr=") {
                format!("--metrics-addr=127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect()
}

#[tokio::test]
async fn installed_with_helm_the_charts_account_is_enough_to_bring_clusters_to_ready() {
    let plane = shared();
    let kubeconfig = plane.kubeconfig_path();
    let client = plane.client().await.unwrap();
    let chart = chart();
    let started = std::time::Instant::now();
    let install = helm(&[
        "install",
        "fleetforge",
        chart.to_str().unwrap(),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert!(
        install.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    eprintln!("helm install took {:?}", started.elapsed());
    kubectl(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
    );

    // The controller as the chart runs it: its arguments, its account's
    // token, its lease in the release's namespace.
    let dir = tempfile::tempdir().unwrap();
    let account = token_kubeconfig(
        plane,
        &client,
        RELEASE_NAMESPACE,
        "fleetforge",
        &dir.path().join("account.kubeconfig"),
    )
    .await;
    let port = fleetforge_testenv::free_port().unwrap();
    let args = deployment_args(&render(&[]), port);
    let account_str = account.to_string_lossy().to_string();
    let process = fleetforge_testenv::OwnedProcess::spawn_with_env(
        "fleetforge",
        &fleetforge_e2e::fleetforge_bin(),
        &args,
        &[
            ("KUBECONFIG", account_str.as_str()),
            ("POD_NAMESPACE", RELEASE_NAMESPACE),
            ("RUST_LOG", "info"),
        ],
        &dir.path().join("controller.log"),
    )
    .unwrap();
    let controller = Controller { process, port };

    let configs: Api<ProviderConfig> = Api::all(client.clone());
    let config: ProviderConfig = serde_json::from_value(json!({
        "metadata": {"name": "chart-nop"},
        "spec": {"provider": "nop", "pollInterval": "2s", "defaults": {"region": "nop-region-1"}},
    }))
    .unwrap();
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    kubectl(kubeconfig, &["create", "namespace", "chart-users"]);
    for name in ["a", "b", "c"] {
        nop_cluster(&client, "chart-users", name).await;
    }
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), "chart-users");
    for name in ["a", "b", "c"] {
        let ready = controller
            .wait_for(&clusters, name, "Ready under the chart's account", |c| {
                c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == condition::READY && c.status == "True")
                })
            })
            .await
            .unwrap();
        // kstatus: converged objects say so to Flux, kpt and Argo CD.
        let status = ready.status.clone().unwrap();
        assert_eq!(status.observed_generation, ready.metadata.generation);
        for kind in [condition::RECONCILING, condition::STALLED] {
            let c = status.conditions.iter().find(|c| c.type_ == kind);
            assert_eq!(
                c.map(|c| c.status.as_str()),
                Some("False"),
                "{}: {kind}",
                ready.name_any()
            );
        }
    }
    let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    assert!(
        lease.get_opt("fleetforge").await.unwrap().is_some(),
        "the leader's lease is in the release's namespace"
    );

    // A Cluster naming a ProviderConfig that does not exist is Stalled,
    // not in progress forever.
    let missing: Cluster = serde_json::from_value(json!({
        "metadata": {"name": "orphan"},
        "spec": {
            "providerConfigRef": {"name": "no-such-account"},
            "version": "1.36",
            "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 1}],
        },
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &missing)
        .await
        .unwrap();
    let stalled = await_condition(
        &clusters,
        "orphan",
        "Stalled",
        Duration::from_secs(60),
        |c| {
            c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == condition::STALLED && c.status == "True")
            })
        },
    )
    .await;
    if let Err(e) = stalled {
        panic!("{e}\n{}", controller.process.log_tail());
    }
    drop(controller);
    let uninstall = helm(&[
        "uninstall",
        "fleetforge",
        "--namespace",
        RELEASE_NAMESPACE,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert!(uninstall.status.success());
}
