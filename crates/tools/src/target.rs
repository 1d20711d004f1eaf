//! The controller's own identity as a kubeconfig, for helm to act on the
//! management cluster as the controller does (VirtualClusters hosted
//! there).

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
