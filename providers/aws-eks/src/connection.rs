//! How to reach an EKS cluster: a kubeconfig whose bearer token is computed
//! in-process the way `aws eks get-token` does it, with no CLI or exec
//! plugin on the reader's side.
//!
//! The token is `k8s-aws-v1.` followed by the unpadded base64url of an STS
//! `GetCallerIdentity` URL presigned with SigV4, whose signed headers include
//! `x-k8s-aws-id: <cluster>`. EKS (aws-iam-authenticator) calls that URL to
//! learn who holds the token, and accepts it for 15 minutes after signing.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningParams, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_core::{ErrorKind, ProviderError};

/// Prefix of every EKS bearer token.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";

/// The header that binds a token to one cluster.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";

/// How long the presigned URL says it is valid; EKS itself accepts a token
/// for 15 minutes from its signing time regardless.
const PRESIGNED_EXPIRY: Duration = Duration::from_secs(60);

/// A bearer token for cluster `cluster` in `region`, signed with
/// `credentials` at `now`.
pub fn token(
    cluster: &str,
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<String, ProviderError> {
    let url = presigned_url(cluster, region, credentials, now)?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(url)))
}

fn presigned_url(
    cluster: &str,
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<String, ProviderError> {
    let unsigned =
        format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGNED_EXPIRY);
    let params: SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| signing_failed(&e))?
        .into();
    let request = SignableRequest::new(
        "GET",
        unsigned.as_str(),
        [(CLUSTER_ID_HEADER, cluster)].into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| signing_failed(&e))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| signing_failed(&e))?
        .into_parts();
    let mut signed = http::Request::builder()
        .uri(unsigned.as_str())
        .body(())
        .map_err(|e| signing_failed(&e))?;
    instructions.apply_to_request_http1x(&mut signed);
    Ok(signed.uri().to_string())
}

fn signing_failed(error: &dyn std::fmt::Display) -> ProviderError {
    ProviderError::new(
        ErrorKind::OperationFailed,
        format!(
            "could not sign the EKS access token ({error}); check the region and the credentials' form"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(token: &str) -> String {
        let payload = token.strip_prefix(TOKEN_PREFIX).expect("token prefix");
        assert!(!payload.contains('='), "no padding: {payload}");
        String::from_utf8(URL_SAFE_NO_PAD.decode(payload).expect("base64url")).unwrap()
    }

    #[test]
    fn a_token_is_a_presigned_sts_url_bound_to_the_cluster() {
        let credentials = Credentials::new("AKIDEXAMPLE", "SECRETEXAMPLE", None, None, "test");
        let token = token("prod-eu", "eu-west-1", &credentials, SystemTime::now()).unwrap();
        let url = decode(&token);
        assert!(
            url.starts_with(
                "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
            ),
            "{url}"
        );
        assert!(url.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"), "{url}");
        assert!(url.contains("X-Amz-Credential=AKIDEXAMPLE%2F"), "{url}");
        assert!(url.contains("%2Feu-west-1%2Fsts%2Faws4_request"), "{url}");
        assert!(url.contains("X-Amz-Expires=60"), "{url}");
        assert!(
            url.contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"),
            "{url}"
        );
        let signature = url
            .split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Signature="))
            .expect("a signature");
        assert_eq!(signature.len(), 64);
        assert!(!url.contains("SECRETEXAMPLE"));
    }

    #[test]
    fn a_session_token_is_signed_into_the_url() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "SECRETEXAMPLE",
            Some("SESSION".into()),
            None,
            "test",
        );
        let url = decode(&token("c", "us-east-1", &credentials, SystemTime::now()).unwrap());
        assert!(url.contains("X-Amz-Security-Token=SESSION"), "{url}");
    }

    #[test]
    fn the_token_depends_on_the_cluster_and_the_time() {
        let credentials = Credentials::new("AKIDEXAMPLE", "SECRETEXAMPLE", None, None, "test");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = token("a", "us-east-1", &credentials, at).unwrap();
        assert_eq!(a, token("a", "us-east-1", &credentials, at).unwrap());
        assert_ne!(a, token("b", "us-east-1", &credentials, at).unwrap());
        let later = at + Duration::from_secs(1);
        assert_ne!(a, token("a", "us-east-1", &credentials, later).unwrap());
        assert!(
            decode(&a).contains("X-Amz-Date=20270115T080000Z"),
            "{}",
            decode(&a)
        );
    }
}
