//! Turns ARM and Microsoft Entra error responses into the engine's
//! [`ProviderError`] kinds, with a message that says what happened and what
//! to do.
//!
//! ARM errors are `{"error": {"code", "message"}}` (the ARM "Common error
//! response" contract); Entra token errors are OAuth 2.0 errors,
//! `{"error", "error_description"}`.

use std::time::Duration;

use fleetforge_core::{ErrorKind, ProviderError};

/// How long to wait after throttling when ARM names no time.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);

/// How long to wait when the resource is busy with another operation and
/// ARM names no time: AKS operations take minutes, not milliseconds.
const DEFAULT_BUSY_WAIT: Duration = Duration::from_secs(10);

/// The kind of an ARM error, from its status and code (and message, for the
/// codes AKS reuses).
pub fn classify(status: u16, code: &str, message: &str) -> ErrorKind {
    let message = message.to_lowercase();
    if code.to_lowercase().contains("quota")
        || (code == "OperationNotAllowed" && message.contains("quota"))
    {
        return ErrorKind::QuotaExceeded;
    }
    match (status, code) {
        (401 | 403, _)
        | (
            _,
            "AuthenticationFailed"
            | "AuthorizationFailed"
            | "InvalidAuthenticationToken"
            | "ExpiredAuthenticationToken"
            | "LinkedAuthorizationFailed",
        ) => ErrorKind::AuthFailed,
        (429, _) => ErrorKind::Throttled,
        (404, _) => ErrorKind::NotFound,
        // Another operation runs on the cluster or pool: retry later.
        (409, _) => ErrorKind::Unavailable,
        (400, "OperationNotAllowed") if message.contains("in progress") => ErrorKind::Unavailable,
        (400 | 422, _) => ErrorKind::InvalidSpec,
        (500..=599, _) => ErrorKind::Unavailable,
        _ => ErrorKind::OperationFailed,
    }
}

/// What a user can do about an error of `kind`.
fn advice(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::AuthFailed => {
            "check the ProviderConfig's service principal (the tenantId, clientId and clientSecret in its Secret) and its role assignments on the subscription or resource group"
        }
        ErrorKind::Throttled => "Azure asked to slow down; fleetforge retries later",
        ErrorKind::QuotaExceeded => {
            "request more quota for the subscription and region, or use a smaller or different VM size"
        }
        ErrorKind::InvalidSpec => {
            "fix the Cluster's spec (spec.provider.azure, nodePools, version, region)"
        }
        ErrorKind::NotFound => {
            "it does not exist (any more) in this subscription and resource group"
        }
        ErrorKind::AlreadyExists => {
            "a resource of that name exists; import it with the fleetforge.dev/external-name annotation"
        }
        ErrorKind::Unavailable => {
            "Azure could not be reached, failed, or is busy with another operation on this resource; check the ProviderConfig's endpoint and the network; fleetforge retries later"
        }
        ErrorKind::OperationFailed => "see the Azure message; fleetforge retries later",
    }
}

/// Parses a `Retry-After` header given in seconds.
pub fn retry_after_seconds(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn with_wait(error: ProviderError, status: u16, retry_after: Option<Duration>) -> ProviderError {
    match error.kind {
        ErrorKind::Throttled => error.retry_after(retry_after.unwrap_or(DEFAULT_THROTTLE_WAIT)),
        ErrorKind::Unavailable if status == 409 || status == 400 => {
            error.retry_after(retry_after.unwrap_or(DEFAULT_BUSY_WAIT))
        }
        _ => match retry_after {
            Some(after) => error.retry_after(after),
            None => error,
        },
    }
}

/// The error for the ARM call `action` (for example `GET managedCluster
/// c1`) that answered `status` with `body`.
pub fn arm_error(
    action: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ProviderError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (code, message) = (field("code"), field("message"));
    let kind = classify(status, &code, &message);
    let mut what = format!("HTTP {status}");
    if !code.is_empty() {
        what.push_str(&format!(" {code}"));
    }
    if !message.is_empty() {
        what.push_str(&format!(": {message}"));
    }
    with_wait(
        ProviderError::new(
            kind,
            format!("AKS {action} failed ({what}); {}", advice(kind)),
        ),
        status,
        retry_after,
    )
}

/// The error for a token request that Microsoft Entra answered with
/// `status` and `body`.
pub fn token_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> ProviderError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let kind = match status {
        429 => ErrorKind::Throttled,
        500..=599 => ErrorKind::Unavailable,
        // invalid_client, unauthorized_client, invalid_request, ...: the
        // credentials are wrong.
        _ => ErrorKind::AuthFailed,
    };
    let mut what = format!("HTTP {status}");
    let (code, description) = (field("error"), field("error_description"));
    if !code.is_empty() {
        what.push_str(&format!(" {code}"));
    }
    if !description.is_empty() {
        what.push_str(&format!(": {description}"));
    }
    with_wait(
        ProviderError::new(
            kind,
            format!(
                "getting an Azure access token from Microsoft Entra failed ({what}); {}",
                advice(kind)
            ),
        ),
        status,
        retry_after,
    )
}

/// The error for a call `action` that could not be sent or answered.
pub fn transport_error(action: &str, error: &dyn std::fmt::Display) -> ProviderError {
    ProviderError::new(
        ErrorKind::Unavailable,
        format!(
            "AKS {action} could not be sent ({error}); {}",
            advice(ErrorKind::Unavailable)
        ),
    )
}

/// `error` with every occurrence of `secret` removed from its message: a
/// service may echo what it was sent, and messages reach users.
pub fn scrub(mut error: ProviderError, secret: &str) -> ProviderError {
    if !secret.is_empty() && error.message.contains(secret) {
        error.message = error.message.replace(secret, "<redacted>");
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(status: u16, code: &str, message: &str) -> ProviderError {
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        arm_error(
            "GET managedCluster c1",
            status,
            body.to_string().as_bytes(),
            None,
        )
    }

    #[test]
    fn statuses_and_codes_map_to_kinds() {
        let table = [
            (401, "InvalidAuthenticationToken", "", ErrorKind::AuthFailed),
            (403, "AuthorizationFailed", "", ErrorKind::AuthFailed),
            (429, "TooManyRequests", "", ErrorKind::Throttled),
            (400, "InvalidParameter", "vmSize", ErrorKind::InvalidSpec),
            (400, "QuotaExceeded", "", ErrorKind::QuotaExceeded),
            (
                400,
                "ErrCode_InsufficientVCPUQuota",
                "",
                ErrorKind::QuotaExceeded,
            ),
            (
                409,
                "OperationNotAllowed",
                "Provisioning of resource(s) for container service c1 failed: quota of cores exceeded",
                ErrorKind::QuotaExceeded,
            ),
            (404, "ResourceNotFound", "", ErrorKind::NotFound),
            (404, "ResourceGroupNotFound", "", ErrorKind::NotFound),
            (
                409,
                "OperationNotAllowed",
                "Operation is not allowed: another operation (Updating) is in progress",
                ErrorKind::Unavailable,
            ),
            (500, "InternalServerError", "", ErrorKind::Unavailable),
            (503, "", "", ErrorKind::Unavailable),
            (412, "PreconditionFailed", "", ErrorKind::OperationFailed),
        ];
        for (status, code, message, kind) in table {
            let error = arm(status, code, message);
            assert_eq!(error.kind, kind, "{status} {code} {message}");
            assert!(
                error
                    .message
                    .starts_with("AKS GET managedCluster c1 failed (HTTP "),
                "{}",
                error.message
            );
            assert!(error.message.contains(code), "{}", error.message);
        }
    }

    #[test]
    fn throttling_and_busy_resources_wait() {
        assert_eq!(
            arm(429, "TooManyRequests", "").retry_after,
            Some(Duration::from_secs(1))
        );
        let asked = arm_error("PUT x", 429, b"", retry_after_seconds(Some(" 7 ")));
        assert_eq!(asked.kind, ErrorKind::Throttled);
        assert_eq!(asked.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            arm(409, "OperationNotAllowed", "in progress").retry_after,
            Some(DEFAULT_BUSY_WAIT)
        );
        assert_eq!(arm(500, "InternalServerError", "").retry_after, None);
        assert_eq!(
            retry_after_seconds(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }

    #[test]
    fn bodies_that_are_not_arm_errors_still_classify_by_status() {
        let error = arm_error("GET x", 502, b"<html>bad gateway</html>", None);
        assert_eq!(error.kind, ErrorKind::Unavailable);
        assert!(error.message.contains("HTTP 502"), "{}", error.message);
    }

    #[test]
    fn token_errors_are_auth_failures_unless_transient() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        let error = token_error(401, body, None);
        assert_eq!(error.kind, ErrorKind::AuthFailed);
        assert!(error.message.contains("AADSTS7000215"), "{}", error.message);
        assert_eq!(token_error(400, b"{}", None).kind, ErrorKind::AuthFailed);
        assert_eq!(token_error(429, b"", None).kind, ErrorKind::Throttled);
        assert_eq!(token_error(503, b"", None).kind, ErrorKind::Unavailable);
    }

    #[test]
    fn echoed_secrets_are_scrubbed() {
        let secret = "Qx8Q~super-secret";
        let body = format!(
            r#"{{"error":"invalid_request","error_description":"client_secret={secret} is malformed"}}"#
        );
        let error = scrub(token_error(400, body.as_bytes(), None), secret);
        assert!(!error.message.contains(secret), "{}", error.message);
        assert!(error.message.contains("<redacted>"), "{}", error.message);
    }
}
