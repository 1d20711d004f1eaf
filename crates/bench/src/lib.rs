//! What the local benchmarks share: the built controller started against a
//! benchmark's own control plane, and the `helm` CLI of the baselines.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;
use fleetforge_testenv::{ControlPlane, OwnedProcess, tools};

/// A fresh management control plane with fleetforge's CRDs and the
/// namespace `namespace`, and an admin client of it.
pub async fn management_plane(namespace: &str) -> anyhow::Result<(ControlPlane, kube::Client)> {
    let plane = ControlPlane::builder().start().await?;
    let client = plane.client().await?;
    fleetforge_core::crds::install(&client).await?;
    let namespace_object = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace},
    });
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            namespace,
            &kube::api::PatchParams::apply("bench"),
            &kube::api::Patch::Apply(&namespace_object),
        )
        .await?;
    Ok((plane, client))
}

/// Server-side applies `object` (kind `K`) as the benchmark, in
/// `namespace` or cluster-wide.
pub async fn apply<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    object: serde_json::Value,
) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()>,
{
    use anyhow::Context;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let resource = kube::api::ApiResource::erase::<K>(&());
    let api: kube::Api<kube::api::DynamicObject> = match namespace {
        Some(namespace) => kube::Api::namespaced_with(client.clone(), namespace, &resource),
        None => kube::Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &kube::api::PatchParams::apply("bench").force(),
        &kube::api::Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

/// The ProviderConfig `local` both benchmarks' clusters use.
pub async fn local_provider_config(client: &kube::Client) -> anyhow::Result<()> {
    apply::<fleetforge_api::ProviderConfig>(
        client,
        None,
        serde_json::json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "local"},
            "spec": {"provider": "local", "pollInterval": "60s", "defaults": {"region": "local"}},
        }),
    )
    .await
}

/// Starts `fleetforge controller` (the binary next to the running one
/// unless `binary` names another) against `plane`, without leader
/// election, its metrics on 127.0.0.1:`port`, local clusters and its log
/// under `work`.
pub fn start_controller(
    plane: &ControlPlane,
    binary: Option<&Path>,
    port: u16,
    work: &Path,
) -> anyhow::Result<OwnedProcess> {
    let fleetforge = match binary {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("fleetforge"),
    };
    Ok(OwnedProcess::spawn_with_env(
        "fleetforge",
        &fleetforge,
        &[
            "controller".into(),
            "--leader-elect=false".into(),
            format!("--metrics-addr=127.0.0.1:{port}"),
            format!("--tools-bin={}", tools::bin_dir().display()),
            format!("--local-work-dir={}", work.join("clusters").display()),
        ],
        &[
            ("KUBECONFIG", &plane.kubeconfig_path().display().to_string()),
            (
                "RUST_LOG",
                &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ],
        &work.join("controller.log"),
    )?)
}

/// Runs the pinned `helm` against `kubeconfig` with its own configuration
/// and cache under `home`.
pub fn helm(kubeconfig: &Path, home: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(tools::binary("helm")?)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()?;
    if !output.status.success() {
        bail!(
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A chart of the project's own (`e2e/charts/<name>`).
pub fn chart_dir(name: &str) -> PathBuf {
    tools::workspace_root().join("e2e/charts").join(name)
}

/// Mutating requests the API server has served.
pub async fn api_writes(client: &kube::Client) -> anyhow::Result<f64> {
    Ok(api_writes_by_resource(client).await?.values().sum())
}

/// Mutating requests served, by `resource[/subresource] VERB`.
pub async fn api_writes_by_resource(
    client: &kube::Client,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let label = |line: &str, name: &str| -> String {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    let mut writes = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let verb = label(line, "verb");
        if !["POST", "PATCH", "PUT", "APPLY", "DELETE"].contains(&verb.as_str()) {
            continue;
        }
        let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok()) else {
            continue;
        };
        let sub = label(line, "subresource");
        let resource = match sub.as_str() {
            "" => label(line, "resource"),
            sub => format!("{}/{sub}", label(line, "resource")),
        };
        *writes.entry(format!("{resource} {verb}")).or_insert(0.0) += count;
    }
    Ok(writes)
}

/// The sum of the samples of metric `name` whose labels contain `labels`
/// (for example `controller="FleetRollout"`) the controller serves on
/// 127.0.0.1:`port`.
pub fn controller_metric_where(port: u16, name: &str, labels: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The sum of the samples of metric `name` (over its labels) the
/// controller serves on 127.0.0.1:`port`.
pub fn controller_metric(port: u16, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Polls `done` every 250 ms until it says true, failing after `limit`
/// with `what`; the time it took.
pub async fn wait_until(
    what: &str,
    limit: std::time::Duration,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<std::time::Duration> {
    let started = std::time::Instant::now();
    while !done().await? {
        if started.elapsed() > limit {
            anyhow::bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Ok(started.elapsed())
}
