//! Google credentials from a ProviderConfig: a service-account JSON key from
//! a Secret, or Application Default Credentials.
//!
//! google-cloud-auth signs a service account's access token locally (a
//! self-signed JWT, no OAuth token exchange), so a key is checked here by
//! signing one token: a bad key fails `connect`, not the first GKE call.
//! Messages never repeat the Secret's content, only which field is wrong.

use fleetforge_core::{Credentials, ErrorKind, ProviderError};
use google_cloud_auth::credentials::{AccessTokenCredentials, service_account};

/// Fields a service-account key must have, each a non-empty string.
const REQUIRED_FIELDS: [&str; 4] = [
    "client_email",
    "private_key",
    "private_key_id",
    "project_id",
];

/// Makes rustls' ring provider the process default. google-cloud-auth is
/// built without its aws-lc-rs default and signs with the default provider.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is what we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Access-token credentials for `credentials`.
pub async fn load(credentials: Credentials) -> Result<AccessTokenCredentials, ProviderError> {
    install_crypto_provider();
    match credentials {
        Credentials::Secret(bytes) => {
            let key = parse_key(&bytes)?;
            let built = service_account::Builder::new(key)
                .build_access_token_credentials()
                .map_err(|_| auth_failed("it is not a service-account key"))?;
            // The auth library's own error text may quote the key: keep it out.
            built.access_token().await.map_err(|_| {
                auth_failed("its private_key could not sign a token (it must be a PKCS#8 PEM RSA key)")
            })?;
            Ok(built)
        }
        Credentials::Ambient => google_cloud_auth::credentials::Builder::default()
            .build_access_token_credentials()
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::AuthFailed,
                    format!(
                        "no Application Default Credentials were found ({e}); give the controller a Google identity (workload identity, GOOGLE_APPLICATION_CREDENTIALS) or use a service-account key from a Secret"
                    ),
                )
            }),
    }
}

/// The key document in `bytes`, checked for the fields signing needs.
fn parse_key(bytes: &[u8]) -> Result<serde_json::Value, ProviderError> {
    let key: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|_| auth_failed("it is not JSON (a service-account key is a JSON document)"))?;
    let Some(fields) = key.as_object() else {
        return Err(auth_failed("it is not a JSON object"));
    };
    if let Some(kind) = fields.get("type").and_then(|t| t.as_str())
        && kind != "service_account"
    {
        return Err(auth_failed(&format!(
            "its type is {kind:?}; fleetforge takes a service_account key"
        )));
    }
    for field in REQUIRED_FIELDS {
        if fields
            .get(field)
            .and_then(|v| v.as_str())
            .is_none_or(str::is_empty)
        {
            return Err(auth_failed(&format!("it has no {field}")));
        }
    }
    Ok(key)
}

fn auth_failed(why: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::AuthFailed,
        format!(
            "the ProviderConfig's Secret does not hold a usable GCP service-account key: {why}; put the JSON key downloaded from IAM in the Secret"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn error_for(bytes: &[u8]) -> ProviderError {
        load(Credentials::Secret(bytes.to_vec())).await.unwrap_err()
    }

    #[tokio::test]
    async fn malformed_keys_fail_as_auth_failed_without_their_content() {
        for (bytes, needle) in [
            (&b"hunter2-not-json"[..], "hunter2"),
            (br#"["hunter2"]"#, "hunter2"),
            (
                br#"{"type":"authorized_user","refresh_token":"hunter2"}"#,
                "hunter2",
            ),
            (
                br#"{"client_email":"a@b","private_key_id":"k","private_key":""}"#,
                "a@b",
            ),
        ] {
            let error = error_for(bytes).await;
            assert_eq!(error.kind, ErrorKind::AuthFailed, "{}", error.message);
            assert!(!error.message.contains(needle), "{}", error.message);
        }
    }

    #[tokio::test]
    async fn a_key_whose_private_key_cannot_sign_is_refused_without_it() {
        let key = serde_json::json!({
            "type": "service_account",
            "client_email": "sa@p.iam.gserviceaccount.com",
            "private_key_id": "k1",
            "project_id": "p",
            "private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n",
        });
        let error = error_for(key.to_string().as_bytes()).await;
        assert_eq!(error.kind, ErrorKind::AuthFailed);
        assert!(
            !error.message.contains("c2VjcmV0LWJ5dGVz"),
            "{}",
            error.message
        );
        assert!(error.message.contains("private_key"), "{}", error.message);
    }

    #[tokio::test]
    async fn a_real_key_signs_tokens_offline() {
        let bytes = include_bytes!("../tests/fixtures/service-account.json");
        let credentials = load(Credentials::Secret(bytes.to_vec())).await.unwrap();
        let token = credentials.access_token().await.unwrap();
        // A self-signed JWT: header.claims.signature.
        assert_eq!(token.token.split('.').count(), 3);
    }
}
