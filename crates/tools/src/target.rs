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
    cached: tokio::sync::Mutex<HashMap<String, Arc<Connection>>>,
}

impl Connections {
    /// Connections whose kubeconfig files live in `dir` (created).
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            cached: tokio::sync::Mutex::new(HashMap::new()),
        })
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
        write_private(&path, kubeconfig).map_err(|e| format!("writing the kubeconfig: {e}"))?;
        let client = client_from(kubeconfig).await?;
        let connection = Arc::new(Connection {
            fingerprint,
            kubeconfig: path,
            objects: Objects::new(client),
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

/// A client from a kubeconfig, failing fast when the target is down.
pub async fn client_from(kubeconfig: &[u8]) -> Result<Client, String> {
    let text = std::str::from_utf8(kubeconfig).map_err(|e| e.to_string())?;
    let parsed = kube::config::Kubeconfig::from_yaml(text).map_err(|e| e.to_string())?;
    let mut config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(20));
    Client::try_from(config).map_err(|e| e.to_string())
}
