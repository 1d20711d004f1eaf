//! Connections to target clusters from their kubeconfig Secrets: a client,
//! and the kubeconfig as a private file for helm; reused while the Secret
//! is unchanged.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use crate::live::Objects;

/// A reachable target.
#[derive(Debug)]
pub struct Connection {
    fingerprint: u64,
    /// The kubeconfig, as a 0600 file.
    pub kubeconfig: PathBuf,
    /// The target's objects (and its client).
    pub objects: Objects,
}

/// Connections by `<namespace>/<name>` of the object whose Secret they come
/// from.
#[derive(Debug)]
pub struct Connections {
    dir: PathBuf,
    /// Told (with the target's key) when a compared object changes.
    notify: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    cached: tokio::sync::Mutex<HashMap<String, Arc<Connection>>>,
}

impl Connections {
    /// Connections whose kubeconfig files live in `dir` (created).
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            notify: None,
            cached: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Connections whose targets' watches send the target's key
    /// (`namespace/name`) to `changes` when an object a drift check
    /// compared changes or goes.
    pub fn notifying(mut self, changes: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        self.notify = Some(changes);
        self
    }

    /// The connection described by key `key` of Secret `secret` in
    /// `namespace`, for the object `name`.
    pub async fn connect(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        secret: &str,
        key: &str,
    ) -> Result<Arc<Connection>, String> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let found = secrets
            .get_opt(secret)
            .await
            .map_err(|e| format!("reading Secret {secret}: {e}"))?
            .ok_or_else(|| format!("waiting for the kubeconfig Secret {secret}"))?;
        let kubeconfig = found
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| format!("Secret {secret} has no key {key}"))?;
        self.connect_to(namespace, name, &kubeconfig.0)
            .await
            .map_err(|e| format!("the kubeconfig in Secret {secret} is unusable: {e}"))
    }

    /// The connection for a kubeconfig already in hand.
    pub async fn connect_to(
        &self,
        namespace: &str,
        name: &str,
        kubeconfig: &[u8],
    ) -> Result<Arc<Connection>, String> {
        let mut hasher = DefaultHasher::new();
        kubeconfig.hash(&mut hasher);
        let fingerprint = hasher.finish();
        let key = format!("{namespace}/{name}");
        let mut cached = self.cached.lock().await;
        if let Some(existing) = cached.get(&key)
            && existing.fingerprint == fingerprint
        {
            return Ok(existing.clone());
        }
        let path = self.dir.join(format!("{namespace}--{name}"));
        let (file, content) = (path.clone(), kubeconfig.to_vec());
        fleetforge_runtime::blocking(move || write_private(&file, &content))
            .await
            .map_err(|e| format!("writing the kubeconfig: {e}"))?;
        let config = config_from(kubeconfig).await?;
        let client = client_with(config.clone(), READ_TIMEOUT)?;
        let watch_client = client_with(config, WATCH_READ_TIMEOUT)?;
        let connection = Arc::new(Connection {
            fingerprint,
            kubeconfig: path,
            objects: Objects::new(
                client,
                watch_client,
                self.notify.clone().map(|changes| (changes, key.clone())),
            ),
        });
        cached.insert(key, connection.clone());
        Ok(connection)
    }

    /// Drops the connections (and files) of objects in `namespace` for
    /// which `keep` says no.
    pub async fn retain(&self, namespace: &str, keep: impl Fn(&str) -> bool) {
        let prefix = format!("{namespace}/");
        self.cached.lock().await.retain(|key, connection| {
            let Some(name) = key.strip_prefix(&prefix) else {
                return true;
            };
            let kept = keep(name);
            if !kept {
                let _ = std::fs::remove_file(&connection.kubeconfig);
            }
            kept
        });
    }
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)
}

/// How long a request may wait for an answer before the target counts as
/// down.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The same for watches, which are quiet while nothing changes: longer
/// than the API server's own end of a watch (kube's watcher asks for 290 s).
const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(295);

/// A client from a kubeconfig, failing fast when the target is down.
pub async fn client_from(kubeconfig: &[u8]) -> Result<Client, String> {
    client_with(config_from(kubeconfig).await?, READ_TIMEOUT)
}

async fn config_from(kubeconfig: &[u8]) -> Result<kube::Config, String> {
    let text = std::str::from_utf8(kubeconfig).map_err(|e| e.to_string())?;
    let parsed = kube::config::Kubeconfig::from_yaml(text).map_err(|e| e.to_string())?;
    kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .map_err(|e| e.to_string())
}

fn client_with(mut config: kube::Config, read_timeout: Duration) -> Result<Client, String> {
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(read_timeout);
    Client::try_from(config).map_err(|e| e.to_string())
}

/// A kubeconfig for the API server and identity of `config` (the
/// controller's own, however it was found: a kubeconfig file or in-cluster),
/// so that helm can act on the management cluster as the controller does.
/// The token, when the config reads it from a file, stays a file reference.
pub fn kubeconfig_of(config: &kube::Config) -> Result<String, String> {
    use base64::Engine;
    use kube::config::{Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let authority = config.root_cert.as_ref().map(|certificates| {
        let pem: String = certificates
            .iter()
            .map(|der| {
                let body = encode(der);
                let lines: Vec<&str> = body
                    .as_bytes()
                    .chunks(64)
                    .map(|line| std::str::from_utf8(line).unwrap_or_default())
                    .collect();
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                )
            })
            .collect();
        encode(pem.as_bytes())
    });
    let name = "management".to_string();
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(kube::config::Cluster {
                server: Some(config.cluster_url.to_string()),
                certificate_authority_data: authority,
                insecure_skip_tls_verify: config.accept_invalid_certs.then_some(true),
                tls_server_name: config.tls_server_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.clone(),
            auth_info: Some(config.auth_info.clone()),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(kube::config::Context {
                cluster: name.clone(),
                user: Some(name.clone()),
                namespace: Some(config.default_namespace.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(name),
        ..Default::default()
    };
    serde_saphyr::to_string(&kubeconfig).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_controllers_own_config_round_trips_through_a_kubeconfig() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        config.root_cert = Some(vec![vec![0x30, 0x82, 0x01, 0x0a], vec![1; 100]]);
        config.auth_info.token_file =
            Some("/var/run/secrets/kubernetes.io/serviceaccount/token".into());
        config.default_namespace = "fleetforge-system".into();
        let text = kubeconfig_of(&config).unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let back = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
            .await
            .unwrap();
        assert_eq!(back.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert_eq!(back.root_cert, config.root_cert);
        assert_eq!(back.default_namespace, "fleetforge-system");
        assert_eq!(back.auth_info.token_file, config.auth_info.token_file);
    }
}
