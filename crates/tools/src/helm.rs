//! The Helm driver: installs, upgrades and uninstalls releases with the
//! pinned `helm` CLI (real releases, visible to `helm list`), and reads
//! releases back from Helm's own storage (the `sh.helm.release.v1.*`
//! Secrets) so that observing every release of a target is one list call.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use fleetforge_api::tool_set::ChartSource;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams};
use serde::Deserialize;
use serde_json::Value;
use tracing::Instrument;

/// Label on a release (`helm --labels`) naming the ToolInstall that owns it,
/// as `<namespace>.<name>`.
pub const OWNER_LABEL: &str = "fleetforge.dev/tool-install";

/// helm commands at once by default.
pub const DEFAULT_PROCESSES: usize = 8;

/// How long one helm command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// A failed helm command or release read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelmError {
    /// helm ran and refused or failed; the message is helm's own.
    #[error("{0}")]
    Failed(String),
    /// helm could not be run at all.
    #[error("cannot run helm: {0}")]
    Unavailable(String),
    /// The target's API could not be reached.
    #[error("cannot reach the target: {0}")]
    Unreachable(String),
    /// The target answered but does not allow what was asked.
    #[error("{0}")]
    Forbidden(String),
}

/// The `helm` CLI with a private configuration and cache.
#[derive(Debug, Clone)]
pub struct Helm {
    binary: PathBuf,
    home: PathBuf,
    /// helm processes allowed at once, over every controller sharing this
    /// driver (each one is a Go program of tens of MB, and renders charts).
    processes: Arc<tokio::sync::Semaphore>,
}

/// One release to install or upgrade.
#[derive(Debug, Clone)]
pub struct ReleaseRequest<'a> {
    /// Release name.
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Create the namespace when it is missing (`--create-namespace`);
    /// false where the controller may act in the namespace but not create
    /// namespaces.
    pub create_namespace: bool,
    /// Where the chart comes from.
    pub chart: &'a ChartSource,
    /// The values, passed as one values file.
    pub values: &'a Value,
    /// Labels put on the release's storage (`helm --labels`).
    pub labels: &'a BTreeMap<String, String>,
}

impl Helm {
    /// Runs `binary` with its configuration, cache and data under `home`
    /// (never the user's own Helm setup).
    pub fn new(binary: PathBuf, home: PathBuf) -> Self {
        Self::with_processes(binary, home, DEFAULT_PROCESSES)
    }

    /// As [`Helm::new`], with at most `processes` helm commands at once.
    pub fn with_processes(binary: PathBuf, home: PathBuf, processes: usize) -> Self {
        Self {
            binary,
            home,
            processes: Arc::new(tokio::sync::Semaphore::new(processes.max(1))),
        }
    }

    /// `helm upgrade --install`; returns helm's output.
    pub async fn upgrade(
        &self,
        kubeconfig: &Path,
        release: &ReleaseRequest<'_>,
    ) -> Result<String, HelmError> {
        let home = self.home.clone();
        let values = release.values.to_string();
        let values_file = fleetforge_runtime::blocking(move || {
            let file = tempfile::Builder::new()
                .prefix("values-")
                .suffix(".json")
                .tempfile_in(&home)?;
            std::fs::write(file.path(), values)?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| HelmError::Unavailable(format!("writing a values file: {e}")))?;
        let mut args: Vec<String> = vec!["upgrade".into(), "--install".into(), release.name.into()];
        args.extend(chart_args(release.chart));
        args.extend([
            "--namespace".into(),
            release.namespace.into(),
            // The declared values are the whole truth: without this, an
            // upgrade whose values are empty keeps the previous release's
            // values (helm's default), so taking a value away did nothing.
            "--reset-values".into(),
            "--history-max".into(),
            "5".into(),
            "--timeout".into(),
            "2m".into(),
            "--values".into(),
            values_file.path().display().to_string(),
        ]);
        if release.create_namespace {
            args.push("--create-namespace".into());
        }
        if !release.labels.is_empty() {
            let labels: Vec<String> = release
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            args.extend(["--labels".into(), labels.join(",")]);
        }
        self.run(kubeconfig, &args).await
    }

    /// `helm uninstall`; a release that is not there is not an error.
    pub async fn uninstall(
        &self,
        kubeconfig: &Path,
        name: &str,
        namespace: &str,
    ) -> Result<String, HelmError> {
        let args: Vec<String> = vec![
            "uninstall".into(),
            name.into(),
            "--namespace".into(),
            namespace.into(),
            "--ignore-not-found".into(),
            "--timeout".into(),
            "2m".into(),
        ];
        self.run(kubeconfig, &args).await
    }

    /// Runs helm, traced as a `helm <command>` span (a child of the
    /// reconcile that runs it) with the release it acts on.
    async fn run(&self, kubeconfig: &Path, args: &[String]) -> Result<String, HelmError> {
        let span = tracing::info_span!(
            "helm",
            otel.name = %format_args!("helm {}", args[0]),
            command = %args[0],
            release = args.get(1).map(String::as_str).unwrap_or_default(),
            otel.status_code = tracing::field::Empty,
        );
        let result = self
            .run_untraced(kubeconfig, args)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        result
    }

    async fn run_untraced(&self, kubeconfig: &Path, args: &[String]) -> Result<String, HelmError> {
        let _permit = self
            .processes
            .acquire()
            .await
            .map_err(|e| HelmError::Unavailable(e.to_string()))?;
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| HelmError::Unavailable(format!("{}: {e}", self.binary.display())))?;
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| HelmError::Failed(format!("helm {} timed out", args[0])))?
            .map_err(|e| HelmError::Unavailable(e.to_string()))?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        Err(HelmError::Failed(helm_message(&String::from_utf8_lossy(
            &output.stderr,
        ))))
    }
}

/// The arguments naming a chart: a path, an OCI reference, or a chart in a
/// repository, with its version.
fn chart_args(chart: &ChartSource) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(path) = &chart.path {
        args.push(path.clone());
    } else if let Some(oci) = &chart.oci {
        args.push(oci.clone());
    } else if let Some(repository) = &chart.repository {
        args.push(chart.name.clone().unwrap_or_default());
        args.extend(["--repo".to_string(), repository.clone()]);
    }
    if let Some(version) = &chart.version {
        args.extend(["--version".to_string(), version.clone()]);
    }
    args
}

/// Helm's error without its `Error: ` prefix and warnings, on one line.
fn helm_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("WARNING:"))
        .collect();
    let message = lines.join(" ");
    let message = message.strip_prefix("Error: ").unwrap_or(&message);
    if message.is_empty() {
        "helm failed without a message".to_string()
    } else {
        message.to_string()
    }
}

/// A release as Helm stores it, reduced to what fleetforge compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// Release name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Revision number.
    pub revision: i32,
    /// `deployed`, `failed`, `pending-install`, ...
    pub status: String,
    /// Helm's description of the last operation (the error when it failed).
    pub description: String,
    /// Name of the installed chart.
    pub chart_name: String,
    /// Version of the installed chart.
    pub chart_version: String,
    /// The values supplied at install (what `helm get values` shows).
    pub values: Value,
    /// The rendered manifest.
    pub manifest: String,
    /// The chart's `crds/` files, as one multi-document YAML: Helm applies
    /// them at install only (never upgrades or restores them), and they are
    /// not in the manifest.
    pub crds: String,
    /// The labels of the release's storage (`helm --labels` among them).
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct StoredRelease {
    name: String,
    namespace: String,
    version: i32,
    #[serde(default)]
    info: StoredInfo,
    #[serde(default)]
    chart: Option<StoredChart>,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    manifest: String,
}

#[derive(Deserialize, Default)]
struct StoredInfo {
    #[serde(default)]
    status: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct StoredChart {
    metadata: StoredChartMetadata,
    /// Null (not absent) when the chart has no files.
    #[serde(default)]
    files: Option<Vec<StoredFile>>,
}

/// A file of the stored chart; `data` is base64.
#[derive(Deserialize)]
struct StoredFile {
    name: String,
    #[serde(default)]
    data: String,
}

/// The chart's `crds/*.yaml|yml|json` files (as Helm picks them), joined
/// into one multi-document YAML.
fn crds_of(files: &[StoredFile]) -> String {
    let mut documents = Vec::new();
    for file in files {
        let lower = file.name.to_ascii_lowercase();
        let manifest = [".yaml", ".yml", ".json"]
            .iter()
            .any(|e| lower.ends_with(e));
        if !file.name.starts_with("crds/") || !manifest {
            continue;
        }
        match base64::engine::general_purpose::STANDARD.decode(&file.data) {
            Ok(bytes) => documents.push(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => tracing::warn!(file = %file.name, "a chart file is not base64: {e}"),
        }
    }
    documents.join("\n---\n")
}

#[derive(Deserialize)]
struct StoredChartMetadata {
    name: String,
    #[serde(default)]
    version: String,
}

/// Decodes one `sh.helm.release.v1.*` Secret's `release` key: base64 of a
/// gzipped JSON document (inside the Secret's own base64).
pub fn decode_release(secret: &Secret) -> Result<Release, String> {
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get("release"))
        .ok_or("the Secret has no release key")?;
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(&data.0)
        .map_err(|e| format!("release is not base64: {e}"))?;
    let mut json = Vec::new();
    if compressed.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut json)
            .map_err(|e| format!("release is not valid gzip: {e}"))?;
    } else {
        json = compressed;
    }
    let stored: StoredRelease =
        serde_json::from_slice(&json).map_err(|e| format!("release is not valid JSON: {e}"))?;
    let (chart_name, chart_version, crds) = stored
        .chart
        .map(|c| {
            let crds = crds_of(c.files.as_deref().unwrap_or_default());
            (c.metadata.name, c.metadata.version, crds)
        })
        .unwrap_or_default();
    Ok(Release {
        name: stored.name,
        namespace: stored.namespace,
        revision: stored.version,
        status: stored.info.status,
        description: stored.info.description,
        chart_name,
        chart_version,
        values: match stored.config {
            Some(Value::Null) | None => Value::Object(Default::default()),
            Some(values) => values,
        },
        manifest: stored.manifest,
        crds,
        labels: secret.metadata.labels.clone().unwrap_or_default(),
    })
}

/// The current revision of every release on a target, keyed by (namespace,
/// name): one list call over Helm's storage Secrets.
pub async fn releases(client: &Client) -> Result<BTreeMap<(String, String), Release>, HelmError> {
    releases_in(client, None).await
}

/// As [`releases`], in one namespace only (or all when None): for an
/// identity that may read Secrets in that namespace but not everywhere.
pub async fn releases_in(
    client: &Client,
    namespace: Option<&str>,
) -> Result<BTreeMap<(String, String), Release>, HelmError> {
    let secrets: Api<Secret> = fleetforge_core::watch::scoped(client, namespace);
    let list = secrets
        .list(&ListParams::default().labels("owner=helm,status!=superseded"))
        .await
        .map_err(|e| match e {
            kube::Error::Api(response) if response.code == 403 => {
                HelmError::Forbidden(response.message)
            }
            other => HelmError::Unreachable(other.to_string()),
        })?;
    // Releases are gzipped JSON, often megabytes: decoded off the async
    // executor's threads.
    Ok(fleetforge_runtime::blocking(move || current_releases(&list.items)).await)
}

/// The newest revision of each release among Helm's storage Secrets.
fn current_releases(items: &[Secret]) -> BTreeMap<(String, String), Release> {
    let mut current: BTreeMap<(String, String), Release> = BTreeMap::new();
    for secret in items {
        let release = match decode_release(secret) {
            Ok(release) => release,
            Err(e) => {
                tracing::warn!(
                    secret = secret.metadata.name.as_deref().unwrap_or_default(),
                    "skipping an unreadable Helm release: {e}"
                );
                continue;
            }
        };
        let key = (release.namespace.clone(), release.name.clone());
        if current
            .get(&key)
            .is_none_or(|seen| seen.revision < release.revision)
        {
            current.insert(key, release);
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use k8s_openapi::ByteString;
    use serde_json::json;
    use std::io::Write;

    fn mk_secret(release: &Value) -> Secret {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(release.to_string().as_bytes()).unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        Secret {
            metadata: kube::api::ObjectMeta {
                labels: Some([("owner".to_string(), "helm".to_string())].into()),
                ..Default::default()
            },
            data: Some([("release".to_string(), ByteString(encoded.into_bytes()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_stored_release_decodes_to_chart_values_and_manifest() {
        let secret = mk_secret(&json!({
            "name": "web", "namespace": "apps", "version": 3,
            "info": {"status": "deployed", "description": "Upgrade complete"},
            "chart": {"metadata": {"name": "web", "version": "0.2.0"}, "templates": [], "files": null},
            "config": {"replicas": 2},
            "manifest": "---\nkind: ConfigMap\n",
        }));
        let release = decode_release(&secret).unwrap();
        assert_eq!(release.revision, 3);
        assert_eq!(release.status, "deployed");
        assert_eq!(release.chart_version, "0.2.0");
        assert_eq!(release.values, json!({"replicas": 2}));
        assert_eq!(release.manifest, "---\nkind: ConfigMap\n");
        assert_eq!(release.labels["owner"], "helm");
        assert_eq!(release.crds, "");
    }

    #[test]
    fn a_charts_crds_directory_is_kept_apart_from_its_manifest() {
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let secret = mk_secret(&json!({
            "name": "widgets", "namespace": "widgets", "version": 1,
            "chart": {
                "metadata": {"name": "widgets", "version": "0.1.0"},
                "files": [
                    {"name": "crds/gadgets.yaml", "data": b64("kind: CustomResourceDefinition\nmetadata:\n  name: gadgets.example.com\n")},
                    {"name": "crds/README.md", "data": b64("not a manifest")},
                    {"name": "files/crds.yaml", "data": b64("kind: ConfigMap\n")},
                    {"name": "crds/gizmos.JSON", "data": b64("{\"kind\": \"CustomResourceDefinition\"}")},
                ],
            },
            "manifest": "---\nkind: Deployment\n",
        }));
        let release = decode_release(&secret).unwrap();
        assert_eq!(
            release.crds,
            "kind: CustomResourceDefinition\nmetadata:\n  name: gadgets.example.com\n\n---\n{\"kind\": \"CustomResourceDefinition\"}"
        );
        assert_eq!(release.manifest, "---\nkind: Deployment\n");
    }

    #[test]
    fn a_release_without_values_has_an_empty_map() {
        let secret = mk_secret(&json!({
            "name": "web", "namespace": "apps", "version": 1, "config": null,
        }));
        assert_eq!(decode_release(&secret).unwrap().values, json!({}));
    }

    #[test]
    fn chart_arguments_name_the_source_and_version() {
        let repo = ChartSource {
            repository: Some("https://charts.jetstack.io".into()),
            name: Some("cert-manager".into()),
            version: Some("v1.19.1".into()),
            ..ChartSource::default()
        };
        assert_eq!(
            chart_args(&repo),
            [
                "cert-manager",
                "--repo",
                "https://charts.jetstack.io",
                "--version",
                "v1.19.1"
            ]
        );
        let path = ChartSource {
            path: Some("/charts/web".into()),
            ..ChartSource::default()
        };
        assert_eq!(chart_args(&path), ["/charts/web"]);
    }

    #[test]
    fn helm_messages_lose_the_prefix_and_warnings() {
        let stderr = "WARNING: Kubernetes configuration file is group-readable.\nError: INSTALLATION FAILED: execution error at (web/templates/x.yaml:1:4): refused\n";
        assert_eq!(
            helm_message(stderr),
            "INSTALLATION FAILED: execution error at (web/templates/x.yaml:1:4): refused"
        );
    }
}
