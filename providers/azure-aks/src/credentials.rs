//! Reads the service principal a ProviderConfig's Secret holds: JSON with
//! `tenantId`, `clientId`, `clientSecret`, `subscriptionId` and an optional
//! `authorityHost`.

use std::collections::HashMap;
use std::fmt;

use fleetforge_core::{ErrorKind, ProviderError};

/// The Microsoft Entra authority of the public cloud.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// A service principal's client credentials. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ServicePrincipal {
    /// Entra tenant (directory) ID.
    pub tenant_id: String,
    /// Application (client) ID.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Subscription the clusters live in.
    pub subscription_id: String,
    /// Where tokens come from: `authorityHost` from the Secret (a sovereign
    /// cloud, or a fake in tests), else the public cloud's authority.
    pub authority_host: String,
}

impl fmt::Debug for ServicePrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServicePrincipal")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("subscription_id", &self.subscription_id)
            .field("authority_host", &self.authority_host)
            .finish()
    }
}

const FIELDS: &str =
    "tenantId, clientId, clientSecret and subscriptionId (and optionally authorityHost)";

/// Reads `bytes` as the Secret's JSON. Errors are `AuthFailed` and name what
/// is missing, never a value.
pub fn parse(bytes: &[u8]) -> Result<ServicePrincipal, ProviderError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| invalid("it is not UTF-8 text"))?
        .trim();
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    // serde_json's messages quote no input, only positions.
    let map: HashMap<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
        invalid(&format!(
            "it is not a JSON object (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let field = |name: &str| {
        map.get(name)
            .and_then(serde_json::Value::as_str)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let required = |name: &str| field(name).ok_or_else(|| invalid(&format!("it has no {name}")));
    Ok(ServicePrincipal {
        tenant_id: required("tenantId")?,
        client_id: required("clientId")?,
        client_secret: required("clientSecret")?,
        subscription_id: required("subscriptionId")?,
        authority_host: field("authorityHost")
            .map(|h| h.trim_end_matches('/').to_string())
            .unwrap_or_else(|| PUBLIC_AUTHORITY_HOST.to_string()),
    })
}

fn invalid(why: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::AuthFailed,
        format!("the Azure credentials Secret cannot be read: {why}; store JSON with {FIELDS}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Qx8Q~not.a.real.secret~abcdefghijklmno";

    fn json(secret_field: &str) -> String {
        format!(
            r#"{{"tenantId":"t","clientId":"c","{secret_field}":"{SECRET}","subscriptionId":"s"}}"#
        )
    }

    #[test]
    fn a_service_principal_is_read_with_the_public_authority_by_default() {
        let principal = parse(json("clientSecret").as_bytes()).unwrap();
        assert_eq!(principal.tenant_id, "t");
        assert_eq!(principal.client_id, "c");
        assert_eq!(principal.client_secret, SECRET);
        assert_eq!(principal.subscription_id, "s");
        assert_eq!(principal.authority_host, PUBLIC_AUTHORITY_HOST);

        let custom = parse(
            br#"{"tenantId":"t","clientId":"c","clientSecret":"x","subscriptionId":"s","authorityHost":"http://127.0.0.1:8080/"}"#,
        )
        .unwrap();
        assert_eq!(custom.authority_host, "http://127.0.0.1:8080");
    }

    #[test]
    fn malformed_secrets_fail_as_auth_failed_without_their_content() {
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            vec![0xff, 0xfe],
            json("clientSecret")
                .trim_end_matches('}')
                .as_bytes()
                .to_vec(),
            json("secret").into_bytes(),
            format!("clientSecret={SECRET}").into_bytes(),
        ];
        for case in cases {
            let error = parse(&case).unwrap_err();
            assert_eq!(error.kind, ErrorKind::AuthFailed);
            assert!(!error.message.contains(SECRET), "{}", error.message);
            assert!(error.message.contains("clientSecret"), "{}", error.message);
        }
    }

    #[test]
    fn the_secret_never_prints() {
        let principal = parse(json("clientSecret").as_bytes()).unwrap();
        let shown = format!("{principal:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
