//! End-to-end test helpers: the built `fleetforge` binary and the project's
//! scripts, run the way a user runs them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fleetforge_testenv::{ControlPlane, OwnedProcess, free_port, tools};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

pub mod browser;
pub mod chart;
pub mod fleet_view;
pub mod image;
pub mod local;
pub mod nop;
pub mod vcluster;

pub use fleetforge_testenv::tools::workspace_root;

/// The `fleetforge` binary cargo built next to this test binary
/// (`scripts/test` builds it before running the tests), or `FLEETFORGE_BIN`.
pub fn fleetforge_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLEETFORGE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in <target>/<profile>/deps");
    let bin = profile_dir.join("fleetforge");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build --bins, as scripts/test does)",
        bin.display()
    );
    bin
}

/// The admin kubeconfig of the test binary's shared control plane.
pub fn admin_kubeconfig() -> PathBuf {
    fleetforge_testenv::shared().kubeconfig_path().to_path_buf()
}

/// Installs the CRDs and the ClusterRoles into the shared control plane with
/// kubectl, from `fleetforge crds` and `fleetforge rbac`, once per test
/// binary.
pub fn install() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        apply_generated(&admin_kubeconfig(), &["crds"]);
        kubectl(
            &admin_kubeconfig(),
            &[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ],
        );
        apply_generated(&admin_kubeconfig(), &["rbac"]);
    });
}

/// Runs `command`, panicking with its output when it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs the built kubectl with `kubeconfig`.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let output = run_ok(
        Command::new(tools::binary("kubectl").expect("kubectl is built"))
            .args(args)
            .env("KUBECONFIG", kubeconfig),
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

/// Pipes `fleetforge <args>` into `kubectl apply --server-side -f -`, as a
/// user installs the CRDs and the RBAC.
pub fn apply_generated(kubeconfig: &Path, args: &[&str]) {
    let generated = run_ok(Command::new(fleetforge_bin()).args(args));
    let mut apply = Command::new(tools::binary("kubectl").expect("kubectl is built"))
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    apply
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&generated.stdout)
        .expect("kubectl reads the manifests");
    let output = apply.wait_with_output().expect("kubectl finishes");
    assert!(
        output.status.success(),
        "kubectl apply of `fleetforge {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Creates the `fleetforge` ServiceAccount in `namespace`, binds it to the
/// generated ClusterRoles (leader election in `namespace` only), and writes
/// a kubeconfig with its token to `path`: the controller then runs with
/// exactly the permissions `deploy/rbac` grants.
pub async fn service_account_kubeconfig(
    plane: &ControlPlane,
    client: &Client,
    namespace: &str,
    path: &Path,
) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply("fleetforge-e2e").force();
    let account =
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "fleetforge"}});
    accounts
        .patch("fleetforge", &params, &Patch::Apply(&account))
        .await
        .unwrap();
    let subject = json!([{"kind": "ServiceAccount", "name": "fleetforge", "namespace": namespace}]);
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    let binding_name = format!("fleetforge-e2e-{namespace}");
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": binding_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "fleetforge"},
        "subjects": subject,
    });
    bindings
        .patch(&binding_name, &params, &Patch::Apply(&binding))
        .await
        .unwrap();
    let role_bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(client.clone(), namespace);
    let lease_binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "fleetforge-leader-election"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "fleetforge-leader-election"},
        "subjects": subject,
    });
    role_bindings
        .patch(
            "fleetforge-leader-election",
            &params,
            &Patch::Apply(&lease_binding),
        )
        .await
        .unwrap();
    token_kubeconfig(plane, client, namespace, "fleetforge", path).await
}

/// Writes a kubeconfig to `path` with a token of the existing ServiceAccount
/// `namespace/account` (a TokenRequest, as the kubelet gets for a pod).
pub async fn token_kubeconfig(
    plane: &ControlPlane,
    client: &Client,
    namespace: &str,
    account: &str,
    path: &Path,
) -> PathBuf {
    let token = service_account_token(client, namespace, account).await;
    plane.write_token_kubeconfig(path, &token).unwrap();
    path.to_path_buf()
}

/// A token of the existing ServiceAccount `namespace/account`, from a
/// TokenRequest, as the kubelet gets one for a pod.
pub async fn service_account_token(client: &Client, namespace: &str, account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}})).unwrap();
    let issued: TokenRequest = accounts
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .unwrap();
    issued
        .status
        .and_then(|s| s.token)
        .expect("a token is issued")
}

/// A running `fleetforge controller`, stopped when dropped.
#[derive(Debug)]
pub struct Controller {
    /// The process.
    pub process: OwnedProcess,
    /// Port of /metrics, /healthz, /readyz on 127.0.0.1.
    pub port: u16,
}

impl Controller {
    /// Waits up to [`local::WAIT`] until `condition` holds for object `name`
    /// of `api` (`what` says what for), returning the object as then seen;
    /// panics with this controller's log tail when it does not come.
    pub async fn wait_for<K>(
        &self,
        api: &Api<K>,
        name: &str,
        what: &str,
        condition: impl Fn(Option<&K>) -> bool,
    ) -> Option<K>
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize
            + Send
            + 'static,
    {
        match fleetforge_testenv::await_condition(api, name, what, local::WAIT, condition).await {
            Ok(found) => found,
            Err(e) => panic!("{e}\n{}", self.process.log_tail()),
        }
    }

    /// Starts the controller for `namespace` with `kubeconfig`, its lease in
    /// `namespace`, logging to `log`.
    pub fn start(kubeconfig: &Path, namespace: &str, log: &Path) -> Self {
        Self::start_with_env(kubeconfig, namespace, log, &[])
    }

    /// As [`Controller::start`], with more environment (for example
    /// `FLEETFORGE_LOCAL_WORK_DIR`).
    pub fn start_with_env(
        kubeconfig: &Path,
        namespace: &str,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port().unwrap();
        let args = vec![
            "controller".to_string(),
            format!("--namespace={namespace}"),
            format!("--lease-namespace={namespace}"),
            format!("--metrics-addr=127.0.0.1:{port}"),
        ];
        let kubeconfig = kubeconfig.to_string_lossy().to_string();
        let mut all_env = vec![("KUBECONFIG", kubeconfig.as_str()), ("RUST_LOG", "info")];
        all_env.extend_from_slice(env);
        let process =
            OwnedProcess::spawn_with_env("fleetforge", &fleetforge_bin(), &args, &all_env, log)
                .unwrap();
        Self { process, port }
    }

    /// Once the process has exited: how, with its log's tail.
    pub fn exited(&mut self) -> Option<String> {
        self.process.ensure_running().err().map(|e| e.to_string())
    }

    /// GETs `path` from the controller's HTTP endpoint: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("the endpoint listens");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

/// The sum of `fleetforge_provider_calls_total` for `provider`.
pub fn provider_calls(controller: &Controller, provider: &str) -> f64 {
    let (_, metrics) = controller.get("/metrics");
    let prefix = format!("fleetforge_provider_calls_total{{provider=\"{provider}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The account rate limit every rate-limit test configures: 2 calls a
/// second, bursts of 2.
pub const RATE_LIMIT: f64 = 2.0;

/// Creates six Clusters with `spec` (providerConfigRef filled in) on
/// ProviderConfig `config`, which must poll every second under
/// `rateLimit: {qps: 2, burst: 2}` (six clusters would otherwise make six
/// calls or more a second); measures `provider`'s calls over 10 s from the
/// controller's metrics and asserts they keep to the limit without being
/// starved; then deletes the clusters. Returns the measured rate.
pub async fn assert_rate_limited(
    client: &Client,
    namespace: &str,
    controller: &Controller,
    provider: &str,
    config: &str,
    spec: serde_json::Value,
) -> f64 {
    let clusters: Api<fleetforge_api::Cluster> = Api::namespaced(client.clone(), namespace);
    let names: Vec<String> = (0..6).map(|i| format!("limited-{i}")).collect();
    for name in &names {
        let mut spec = spec.clone();
        spec["providerConfigRef"] = json!({"name": config});
        let cluster: fleetforge_api::Cluster =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
                .expect("a valid Cluster");
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .expect("the Cluster is created");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = provider_calls(controller, provider);
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let calls = provider_calls(controller, provider) - before;
    let rate = calls / window.as_secs_f64();
    eprintln!("{calls} {provider} calls in {window:?}: {rate:.2}/s with qps 2, burst 2");
    assert!(
        rate <= RATE_LIMIT + 2.0 / window.as_secs_f64() + 0.1,
        "{calls} {provider} calls in {window:?} exceed the limit\n{}",
        controller.process.log_tail()
    );
    assert!(
        rate >= RATE_LIMIT / 2.0,
        "the limit should be used, not starved: {calls} calls in {window:?}\n{}",
        controller.process.log_tail()
    );
    for name in &names {
        clusters
            .delete(name, &Default::default())
            .await
            .expect("the Cluster is deleted");
    }
    for name in &names {
        let gone = fleetforge_testenv::await_condition(
            &clusters,
            name,
            "the rate-limited clusters to be deleted",
            Duration::from_secs(90),
            |c: Option<&fleetforge_api::Cluster>| c.is_none(),
        )
        .await;
        assert!(gone.is_ok(), "{gone:?}\n{}", controller.process.log_tail());
    }
    rate
}

/// Waits up to 90 s for Cluster `name` to satisfy `done`, panicking with
/// the controller's log when it does not.
pub async fn await_cluster(
    api: &Api<fleetforge_api::Cluster>,
    name: &str,
    what: &str,
    controller: &Controller,
    done: impl Fn(&fleetforge_api::Cluster) -> bool,
) -> fleetforge_api::Cluster {
    let found = fleetforge_testenv::await_condition(
        api,
        name,
        what,
        Duration::from_secs(90),
        |c: Option<&fleetforge_api::Cluster>| c.is_some_and(&done),
    )
    .await;
    match found {
        Ok(cluster) => cluster.expect("the cluster exists"),
        Err(e) => panic!("{e}\ncontroller log:\n{}", controller.process.log_tail()),
    }
}

/// Waits up to 60 s for an event `reason` in `namespace` whose note
/// contains `fragment`.
pub async fn await_event(
    client: &Client,
    namespace: &str,
    reason: &str,
    fragment: &str,
    controller: &Controller,
) {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    for _ in 0..120 {
        let list = events
            .list(&Default::default())
            .await
            .expect("events are listed");
        if list.items.iter().any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.note.as_deref().is_some_and(|n| n.contains(fragment))
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "no {reason} event saying {fragment:?}\n{}",
        controller.process.log_tail()
    );
}

/// Asserts that `secret` appears in none of what a user or operator sees:
/// the controller's log at `log`, the events of `namespace`, the status of
/// Cluster `cluster` and of every ProviderConfig.
pub async fn assert_nowhere(
    client: &Client,
    namespace: &str,
    cluster: &str,
    log: &Path,
    secret: &str,
) {
    let log = std::fs::read_to_string(log).expect("the controller log is readable");
    assert!(!log.is_empty());
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    let events = serde_json::to_string(
        &events
            .list(&Default::default())
            .await
            .expect("events")
            .items,
    )
    .expect("events serialize");
    let clusters: Api<fleetforge_api::Cluster> = Api::namespaced(client.clone(), namespace);
    let status = serde_json::to_string(&clusters.get(cluster).await.expect("the cluster").status)
        .expect("status serializes");
    let configs: Api<fleetforge_api::ProviderConfig> = Api::all(client.clone());
    let configs: Vec<_> = configs
        .list(&Default::default())
        .await
        .expect("ProviderConfigs")
        .items
        .into_iter()
        .map(|c| c.status)
        .collect();
    let configs = serde_json::to_string(&configs).expect("statuses serialize");
    for (what, text) in [
        ("log", &log),
        ("events", &events),
        ("Cluster status", &status),
        ("ProviderConfig status", &configs),
    ] {
        assert!(!text.contains(secret), "the secret leaked into the {what}");
    }
}

/// Whether the Cluster's status describes its current generation and it is
/// Ready.
pub fn in_sync(cluster: &fleetforge_api::Cluster) -> bool {
    cluster.status.as_ref().is_some_and(|s| {
        s.observed_generation == cluster.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == fleetforge_api::condition::READY && c.status == "True")
    })
}

/// Creates a cloud account for the tests in `namespace`: the Secret
/// `<provider>-credentials` holding `secret` under `key`, and the
/// ProviderConfig `<namespace>-<provider>` reading it, polling every second,
/// with `spec` merged over that (endpoint, defaults, rateLimit, ...).
pub async fn create_account(
    client: &Client,
    namespace: &str,
    provider: &str,
    key: &str,
    secret: &str,
    spec: serde_json::Value,
) -> fleetforge_api::ProviderConfig {
    let secret_name = format!("{provider}-credentials");
    let object: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": secret_name},
        "stringData": {key: secret},
    }))
    .expect("a valid Secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
        .expect("the Secret is created");
    let mut merged = json!({
        "provider": provider,
        "pollInterval": "1s",
        "credentials": {"source": "Secret", "secretRef": {"namespace": namespace, "name": secret_name, "key": key}},
    });
    if let (Some(merged), Some(spec)) = (merged.as_object_mut(), spec.as_object()) {
        merged.extend(spec.clone());
    }
    let config: fleetforge_api::ProviderConfig = serde_json::from_value(json!({
        "metadata": {"name": format!("{namespace}-{provider}")},
        "spec": merged,
    }))
    .expect("a valid ProviderConfig");
    Api::<fleetforge_api::ProviderConfig>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("the ProviderConfig is created")
}
