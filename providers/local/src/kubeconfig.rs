//! Turns the kubeconfig kwokctl writes (which names certificate files on
//! this host) into one that stands alone, with the certificates inline, so
//! it can be stored in a Secret and used anywhere on this machine.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::config::Kubeconfig;

/// What a client needs to reach one local cluster. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Access {
    /// The API server URL, such as `https://127.0.0.1:32764`.
    pub server: String,
    ca: Vec<u8>,
    certificate: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Reads the kubeconfig at `path` and the files it names.
    pub fn read(path: &Path) -> Result<Self, String> {
        let config = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cluster = config
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .ok_or_else(|| format!("{}: no cluster", path.display()))?;
        let user = config
            .auth_infos
            .first()
            .and_then(|u| u.auth_info.as_ref())
            .ok_or_else(|| format!("{}: no user", path.display()))?;
        let server = cluster
            .server
            .clone()
            .ok_or_else(|| format!("{}: no server", path.display()))?;
        let file = |name: &Option<String>, what: &str| -> Result<Vec<u8>, String> {
            let name = name
                .as_deref()
                .ok_or_else(|| format!("{}: no {what} file", path.display()))?;
            std::fs::read(name).map_err(|e| format!("{name}: {e}"))
        };
        Ok(Self {
            server,
            ca: file(&cluster.certificate_authority, "certificate-authority")?,
            certificate: file(&user.client_certificate, "client-certificate")?,
            key: file(&user.client_key, "client-key")?,
        })
    }

    /// A standalone kubeconfig whose cluster, user and context are all
    /// called `name`.
    pub fn kubeconfig(&self, name: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {name}
  user:
    client-certificate-data: {certificate}
    client-key-data: {key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
current-context: {name}
",
            server = self.server,
            ca = STANDARD.encode(&self.ca),
            certificate = STANDARD.encode(&self.certificate),
            key = STANDARD.encode(&self.key),
        )
    }

    /// Removes what kubectl cached about the API of whatever server had
    /// this cluster's address before (`~/.kube/cache/discovery/<host>_<port>`,
    /// or under `KUBECACHEDIR`). Local clusters reuse ports, and kubectl
    /// trusts a cached API list for hours: without this, `kubectl get
    /// clusters` on a new management plane can answer that the server has
    /// no such resource type.
    pub fn forget_kubectl_cache(&self) {
        let Some(cache) = std::env::var_os("KUBECACHEDIR")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/cache")))
        else {
            return;
        };
        let address = self
            .server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .replace(':', "_");
        let stale = cache.join("discovery").join(address);
        match std::fs::remove_dir_all(&stale) {
            Ok(()) => tracing::debug!(path = %stale.display(), "removed a stale kubectl cache"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %stale.display(), "removing a stale kubectl cache: {e}")
            }
        }
    }

    /// A client for the cluster.
    pub async fn client(&self) -> Result<kube::Client, String> {
        let kubeconfig =
            Kubeconfig::from_yaml(&self.kubeconfig("local")).map_err(|e| e.to_string())?;
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        config.connect_timeout = Some(std::time::Duration::from_secs(3));
        config.read_timeout = Some(std::time::Duration::from_secs(10));
        kube::Client::try_from(config).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlines_the_files_a_kubeconfig_names() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("ca.crt", "CA"),
            ("admin.crt", "CERT"),
            ("admin.key", "KEY"),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let d = dir.path().display();
        let path = dir.path().join("kubeconfig.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: {d}/ca.crt
    server: https://127.0.0.1:4443
  name: kwok-a
users:
- name: kwok-a
  user:
    client-certificate: {d}/admin.crt
    client-key: {d}/admin.key
contexts:
- context: {{cluster: kwok-a, user: kwok-a}}
  name: kwok-a
current-context: kwok-a
"
            ),
        )
        .unwrap();
        let access = Access::read(&path).unwrap();
        assert_eq!(access.server, "https://127.0.0.1:4443");
        let text = access.kubeconfig("dev-1");
        assert!(
            !text.contains(&d.to_string()),
            "no file paths remain:\n{text}"
        );
        let parsed = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("dev-1"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(STANDARD.encode("CA").as_str())
        );
        assert!(!format!("{access:?}").contains("KEY"));
    }

    #[test]
    fn a_missing_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig.yaml");
        std::fs::write(
            &path,
            "apiVersion: v1
kind: Config
clusters:
- cluster: {server: 'https://127.0.0.1:1', certificate-authority: /nonexistent/ca.crt}
  name: a
users:
- name: a
  user: {client-certificate: /nonexistent/a.crt, client-key: /nonexistent/a.key}
",
        )
        .unwrap();
        let error = Access::read(&path).unwrap_err();
        assert!(error.contains("/nonexistent/ca.crt"), "{error}");
    }
}
