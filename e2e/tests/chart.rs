//! The Helm chart (`deploy/chart/fleetforge`) and the image
//! (`scripts/image`), as a platform team installs them: the chart lints
//! clean, renders what a platform team expects (replicas with leader
//! election, probes, a locked-down pod) and refuses bad values naming the
//! field; the image holds exactly what its Dockerfile says and builds
//! reproducibly; and with the chart installed into a real API server, the
//! image pulled back from a registry and run as a pod (its entrypoint,
//! the chart's arguments and environment, the chart ServiceAccount's
//! token mounted where the kubelet puts it) brings nop Clusters to Ready.

use std::path::Path;
use std::time::Duration;

use fleetforge_api::{Cluster, condition};
use fleetforge_e2e::chart::{RELEASE_NAMESPACE, chart, deployment_args, find, helm, render};
use fleetforge_e2e::image::{self, Registry};
use fleetforge_e2e::nop;
use fleetforge_e2e::{Controller, kubectl, service_account_token, workspace_root};
use fleetforge_testenv::{await_condition, shared};
use kube::ResourceExt;
use kube::api::Api;
use serde_json::{Value, json};

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

    // The fleet view, when asked for: its own Deployment, whose pods the
    // controller's selector never picks up, locked down the same way, in
    // token mode (its RBAC is exercised in e2e/tests/ui.rs).
    let objects = render(&[
        "--set",
        "ui.enabled=true",
        "--set",
        "ui.namespaces={team-a}",
    ]);
    let deployments = find(&objects, "Deployment");
    assert_eq!(deployments.len(), 2);
    let (controller, ui) = (deployments[0], deployments[1]);
    assert_eq!(ui["metadata"]["name"], "fleetforge-ui");
    let ui_labels = &ui["spec"]["template"]["metadata"]["labels"];
    let controller_selector = controller["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(
        controller_selector
            .iter()
            .any(|(key, value)| ui_labels[key] != *value),
        "the controller's selector must not match the fleet view's pods"
    );
    let container = &ui["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!([
            "ui",
            "--auth=token",
            "--listen=0.0.0.0:8090",
            "--namespace=team-a"
        ])
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        ui["spec"]["template"]["spec"]["serviceAccountName"],
        "fleetforge-ui"
    );
    assert_eq!(find(&objects, "Service").len(), 2);
    assert_eq!(find(&objects, "ClusterRole").len(), 6);
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
        ("ui.port=0", "/ui/port"),
    ] {
        let output = helm(&["template", "x", chart.to_str().unwrap(), "--set", value]);
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value} was accepted");
        assert!(said.contains(field), "{value}: {said}");
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is not an array"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A pod's environment: the image's, then the container's from the chart
/// (the downward API's namespace resolved, as the kubelet would), then
/// the service host and port the kubelet adds, here the test API server.
fn pod_env(objects: &[Value], config: &Value, server: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = strings(&config["Env"])
        .into_iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let container = &find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(value), _) => value.clone(),
            (_, Value::String(path)) if path == "metadata.namespace" => {
                RELEASE_NAMESPACE.to_string()
            }
            (_, Value::String(path)) if path == "metadata.name" => "fleetforge-0".to_string(),
            _ => panic!("the test cannot resolve {var}"),
        };
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    }
    let address = server.strip_prefix("https://").unwrap();
    let (host, port) = address.rsplit_once(':').unwrap();
    env.push(("KUBERNETES_SERVICE_HOST".into(), host.into()));
    env.push(("KUBERNETES_SERVICE_PORT".into(), port.into()));
    env
}

/// Every path under `dir`, relative, sorted, directories ending in `/`.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.push(format!("{relative}/"));
                walk(root, &path, out);
            } else {
                out.push(relative);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The instructions of a Dockerfile, as (instruction, rest) pairs.
fn instructions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
            (word.to_string(), rest.to_string())
        })
        .collect()
}

#[test]
fn the_image_holds_exactly_what_its_dockerfile_says_and_builds_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry.log"));
    let reference = format!("{}/fleetforge:e2e", registry.host);
    let built = image::build(&dir.path().join("a"), Some(&reference));
    assert!(built.digest.starts_with("sha256:"), "{built:?}");

    // The same inputs give the same image, to the byte.
    let again = image::build(&dir.path().join("b"), None);
    assert_eq!(
        built.digest, again.digest,
        "two builds of the same binary differ"
    );

    // The Dockerfile kept for Docker users is the one scripts/image writes.
    let written = std::fs::read_to_string(built.out.join("Dockerfile")).unwrap();
    let kept = std::fs::read_to_string(workspace_root().join("deploy/image/Dockerfile")).unwrap();
    assert_eq!(
        kept, written,
        "deploy/image/Dockerfile is stale: copy target/image/Dockerfile there after scripts/image"
    );

    // What the registry serves is what that Dockerfile builds: its
    // context's files, user, environment, entrypoint and command.
    let config = image::config(&reference);
    let steps = instructions(&written);
    assert_eq!(steps[0], ("FROM".to_string(), "scratch".to_string()));
    let mut env = Vec::new();
    for (word, rest) in &steps[1..] {
        match word.as_str() {
            "COPY" => assert_eq!(rest, "rootfs/ /"),
            "ENV" => env.push(rest.clone()),
            "USER" => assert_eq!(config["User"], rest.as_str()),
            "ENTRYPOINT" => assert_eq!(
                config["Entrypoint"],
                serde_json::from_str::<Value>(rest).unwrap()
            ),
            "CMD" => assert_eq!(config["Cmd"], serde_json::from_str::<Value>(rest).unwrap()),
            other => panic!("the test does not know the instruction {other}"),
        }
    }
    assert_eq!(strings(&config["Env"]), env);
    assert_eq!(
        config["User"],
        image::IMAGE_USER,
        "the image runs as non-root"
    );

    let unpacked = dir.path().join("unpacked");
    let entries = image::unpack(&reference, &unpacked);
    assert_eq!(entries, tree(&built.out.join("rootfs")));
    // The binary, the pinned helm, CA certificates: nothing else.
    assert_eq!(
        entries,
        [
            "etc/",
            "etc/ssl/",
            "etc/ssl/certs/",
            "etc/ssl/certs/ca-certificates.crt",
            "tmp/",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/fleetforge",
            "usr/local/bin/helm",
        ]
    );
    for file in ["usr/local/bin/fleetforge", "usr/local/bin/helm"] {
        assert_eq!(
            std::fs::read(unpacked.join(file)).unwrap(),
            std::fs::read(built.out.join("rootfs").join(file)).unwrap(),
            "{file} came back changed"
        );
    }
    let size: u64 = tree(&built.out.join("oci/blobs/sha256"))
        .iter()
        .map(|blob| {
            std::fs::metadata(built.out.join("oci/blobs/sha256").join(blob))
                .unwrap()
                .len()
        })
        .sum();
    eprintln!(
        "image {}: {} MiB compressed",
        built.digest,
        size / (1024 * 1024)
    );
}

#[tokio::test]
async fn installed_with_helm_the_image_run_as_a_pod_brings_clusters_to_ready() {
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

    // The controller as a pod of the chart runs it: the image pulled back
    // from a registry, its entrypoint with the chart's arguments and
    // environment, in-cluster configuration from the account's token.
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry.log"));
    let reference = format!("{}/fleetforge:e2e", registry.host);
    image::build(&dir.path().join("image"), Some(&reference));
    let rootfs = dir.path().join("rootfs");
    image::unpack(&reference, &rootfs);
    let config = image::config(&reference);
    let token = service_account_token(&client, RELEASE_NAMESPACE, "fleetforge").await;
    let account = dir.path().join("serviceaccount");
    image::service_account_files(
        &account,
        &token,
        &plane.dir().join("pki/ca.crt"),
        RELEASE_NAMESPACE,
    );
    let port = fleetforge_testenv::free_port().unwrap();
    let objects = render(&[]);
    let mut command = strings(&config["Entrypoint"]);
    command.extend(deployment_args(&objects, port));
    let process = image::run_in_pod(
        "fleetforge pod",
        &rootfs,
        &account,
        &command,
        &pod_env(&objects, &config, plane.server()),
        &dir.path().join("controller.log"),
    );
    let controller = Controller { process, port };

    nop::provider_config(&client, "chart-nop", json!({})).await;
    kubectl(kubeconfig, &["create", "namespace", "chart-users"]);
    for name in ["a", "b", "c"] {
        nop::cluster(&client, "chart-users", name, "chart-nop", json!({})).await;
    }
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), "chart-users");
    for name in ["a", "b", "c"] {
        let ready = nop::await_ready(&client, "chart-users", name, &controller).await;
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
    nop::cluster(
        &client,
        "chart-users",
        "orphan",
        "no-such-account",
        json!({}),
    )
    .await;
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
    drop(registry);
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
