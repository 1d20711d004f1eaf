//! One cache of clients to target clusters (the Clusters and
//! VirtualClusters fleetforge reaches through their kubeconfig Secrets),
//! keyed by the kubeconfig itself: a rotated kubeconfig is a new key, an
//! unchanged one is a cache hit. Building a client holds a lock on its own
//! key only; the map's lock is never held across an `.await`.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::OnceCell;

/// How long a request to a target may wait for an answer before the
/// target counts as down.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The same for watches, which are quiet while nothing changes: longer
/// than the API server's own end of a watch (kube's watcher asks for 290 s).
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(295);

/// Clients unused for this long, and held by nobody, are dropped.
const IDLE: Duration = Duration::from_secs(15 * 60);

/// Clients to one target.
#[derive(Clone)]
pub struct TargetClient {
    /// For requests (fails fast when the target is down).
    pub client: Client,
    /// For watches (a long read timeout).
    pub watch_client: Client,
    /// A fingerprint of the kubeconfig they were built from.
    pub fingerprint: u64,
}

impl std::fmt::Debug for TargetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetClient")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

struct Entry {
    client: Arc<OnceCell<Arc<TargetClient>>>,
    used: Instant,
}

/// The cache.
#[derive(Default)]
pub struct TargetClients {
    entries: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for TargetClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetClients")
            .field("cached", &self.len())
            .finish()
    }
}

/// The fingerprint of a kubeconfig.
pub fn fingerprint(kubeconfig: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    kubeconfig.hash(&mut hasher);
    hasher.finish()
}

impl TargetClients {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clients for `kubeconfig`, built once however many passes ask at
    /// the same time; a build that fails is not cached.
    pub async fn get(&self, kubeconfig: &[u8]) -> Result<Arc<TargetClient>, String> {
        let key = fingerprint(kubeconfig);
        let cell = {
            let mut entries = self.entries.lock().expect("target clients");
            let now = Instant::now();
            entries.retain(|k, e| {
                *k == key || now.duration_since(e.used) < IDLE || Arc::strong_count(&e.client) > 1
            });
            let entry = entries.entry(key).or_insert_with(|| Entry {
                client: Arc::new(OnceCell::new()),
                used: now,
            });
            entry.used = now;
            entry.client.clone()
        };
        cell.get_or_try_init(|| build(kubeconfig, key))
            .await
            .cloned()
    }

    /// Clients cached now.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("target clients").len()
    }

    /// Whether none is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn build(kubeconfig: &[u8], fingerprint: u64) -> Result<Arc<TargetClient>, String> {
    let config = config_from(kubeconfig).await?;
    Ok(Arc::new(TargetClient {
        client: client_with(config.clone(), READ_TIMEOUT)?,
        watch_client: client_with(config, WATCH_READ_TIMEOUT)?,
        fingerprint,
    }))
}

/// A client configuration from kubeconfig text.
pub async fn config_from(kubeconfig: &[u8]) -> Result<kube::Config, String> {
    let text = std::str::from_utf8(kubeconfig).map_err(|e| e.to_string())?;
    let parsed = kube::config::Kubeconfig::from_yaml(text).map_err(|e| e.to_string())?;
    kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .map_err(|e| e.to_string())
}

/// A client that connects within 5 s and waits `read_timeout` for answers.
pub fn client_with(mut config: kube::Config, read_timeout: Duration) -> Result<Client, String> {
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(read_timeout);
    Client::try_from(config).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(server: &str) -> Vec<u8> {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn one_client_per_kubeconfig_built_once_even_when_asked_at_once() {
        let clients = Arc::new(TargetClients::new());
        let a = kubeconfig("https://127.0.0.1:1");
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let clients = clients.clone();
                let a = a.clone();
                tokio::spawn(async move { clients.get(&a).await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for ask in asks {
            got.push(ask.await.unwrap());
        }
        assert!(got.iter().all(|c| Arc::ptr_eq(c, &got[0])));
        let b = clients
            .get(&kubeconfig("https://127.0.0.1:2"))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&b, &got[0]));
        assert_eq!(clients.len(), 2);
    }

    #[tokio::test]
    async fn a_kubeconfig_that_does_not_parse_is_an_error_and_not_cached() {
        let clients = TargetClients::new();
        assert!(clients.get(b"not: [a kubeconfig").await.is_err());
        let entry_has_no_client = clients
            .entries
            .lock()
            .unwrap()
            .values()
            .all(|e| e.client.get().is_none());
        assert!(entry_has_no_client);
    }
}
