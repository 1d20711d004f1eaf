//! How to reach a GKE cluster: a kubeconfig with the cluster's endpoint, its
//! CA and a bearer token from the ProviderConfig's own Google credentials,
//! so readers need no `gke-gcloud-auth-plugin`.
//!
//! The token is whatever google-cloud-auth hands out for those credentials:
//! an OAuth access token for ADC, and for a service-account key a JWT the
//! library signs itself (scope `cloud-platform`). Tokens last an hour;
//! each poll refreshes the Secret with the library's current one.

/// A kubeconfig for the cluster `name` at `server`, trusting the base64 PEM
/// `certificate_authority_data`, authenticating with `token`.
pub fn kubeconfig(
    name: &str,
    server: &str,
    certificate_authority_data: &str,
    token: &str,
) -> String {
    // A YAML document built as JSON (JSON is YAML): every value is quoted
    // and escaped correctly whatever the cluster name holds.
    let document = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": name,
            "cluster": {
                "server": server,
                "certificate-authority-data": certificate_authority_data,
            },
        }],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}
