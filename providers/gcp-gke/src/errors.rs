//! Turns google-cloud-rust errors into the engine's [`ProviderError`] kinds,
//! with a message that says what happened and what to do.
//!
//! GKE answers errors as `{"error": {"code", "message", "status"}}` with the
//! canonical gRPC code in `status` (AIP-193); the client parses that into an
//! [`rpc::Status`] and keeps the HTTP status and headers beside it.

use std::time::Duration;

use fleetforge_core::{ErrorKind, ProviderError};
use google_cloud_gax::error::Error;
use google_cloud_gax::error::rpc::{self, Code};

/// How long to wait after throttling when GKE names no time.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);

/// How long to wait when another operation holds the cluster. GKE gives no
/// Retry-After here; operations take minutes, so polling every few seconds
/// only burns quota.
const BUSY_WAIT: Duration = Duration::from_secs(15);

/// The kind of a GKE error from its canonical code, else its HTTP status,
/// with its message (to tell quota from rate limits and busy clusters).
pub fn classify(code: Option<Code>, status: Option<u16>, message: &str) -> ErrorKind {
    let lower = message.to_lowercase();
    // GKE's rate limits are quotas too ("Quota exceeded for quota metric
    // 'Requests' and limit 'Requests per minute'"): only others are quota.
    let quota = lower.contains("quota")
        && !lower.contains("per minute")
        && !lower.contains("per second")
        && !lower.contains("rate");
    if is_busy(code, status, &lower) {
        return ErrorKind::Throttled;
    }
    match code {
        Some(Code::Unauthenticated | Code::PermissionDenied) => ErrorKind::AuthFailed,
        Some(Code::ResourceExhausted) if quota => ErrorKind::QuotaExceeded,
        Some(Code::ResourceExhausted) => ErrorKind::Throttled,
        Some(Code::InvalidArgument | Code::OutOfRange) => ErrorKind::InvalidSpec,
        Some(Code::NotFound) => ErrorKind::NotFound,
        Some(Code::AlreadyExists) => ErrorKind::AlreadyExists,
        Some(Code::Unavailable | Code::Internal | Code::DeadlineExceeded) => ErrorKind::Unavailable,
        // FAILED_PRECONDITION for anything but a busy cluster, ABORTED, ...
        Some(code) if code != Code::Unknown && code != Code::Ok => ErrorKind::OperationFailed,
        _ => match status {
            Some(401 | 403) => ErrorKind::AuthFailed,
            Some(400) => ErrorKind::InvalidSpec,
            Some(404) => ErrorKind::NotFound,
            Some(409) => ErrorKind::AlreadyExists,
            Some(429) if quota => ErrorKind::QuotaExceeded,
            Some(429) => ErrorKind::Throttled,
            Some(500..=599) => ErrorKind::Unavailable,
            _ => ErrorKind::OperationFailed,
        },
    }
}

/// GKE runs one operation per cluster at a time and refuses a second with
/// FAILED_PRECONDITION (HTTP 400) "... operation ... is currently ..." /
/// "incompatible operation": not a bad spec, only a wait.
fn is_busy(code: Option<Code>, status: Option<u16>, lower: &str) -> bool {
    let precondition = code == Some(Code::FailedPrecondition)
        || (code.is_none() && matches!(status, Some(400 | 409)));
    precondition
        && lower.contains("operation")
        && (lower.contains("in progress")
            || lower.contains("currently")
            || lower.contains("incompatible"))
}

/// What a user can do about an error of `kind`.
fn advice(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::AuthFailed => {
            "check the ProviderConfig's credentials (the service-account key in its Secret, or the controller's ambient identity) and their IAM roles on the project (roles/container.admin)"
        }
        ErrorKind::Throttled => {
            "GKE asked to slow down or the cluster is busy with another operation; fleetforge retries later"
        }
        ErrorKind::QuotaExceeded => "raise the project's quota or remove unused resources",
        ErrorKind::InvalidSpec => {
            "fix the Cluster's spec (spec.provider.gcp, nodePools, version, region)"
        }
        ErrorKind::NotFound => "it does not exist (any more) in this project and location",
        ErrorKind::AlreadyExists => {
            "a resource of that name exists; wait for it, or import it with the fleetforge.dev/external-name annotation"
        }
        ErrorKind::Unavailable => {
            "GKE could not be reached or failed; check the ProviderConfig's endpoint and the network; fleetforge retries later"
        }
        ErrorKind::OperationFailed => "see the GKE message; fleetforge retries later",
    }
}

/// The error for the failed GKE call `action` (for example `GetCluster
/// projects/p/locations/l/clusters/c`).
pub fn gax_error(action: &str, error: &Error) -> ProviderError {
    let status: Option<&rpc::Status> = error.status();
    let http_status = error.http_status_code();
    let (kind, what) = if error.is_authentication() {
        // Built from the credentials' own error, which never carries the
        // key; still, keep only the category.
        (
            ErrorKind::AuthFailed,
            "no access token could be obtained".to_string(),
        )
    } else if error.is_timeout() {
        (ErrorKind::Unavailable, "timed out".to_string())
    } else if error.is_connect() || error.is_io() || error.is_transport() {
        (
            ErrorKind::Unavailable,
            format!("could not be sent: {error}"),
        )
    } else if error.is_binding() || error.is_serialization() {
        (
            ErrorKind::InvalidSpec,
            format!("could not be built: {error}"),
        )
    } else if let Some(status) = status {
        let kind = classify(Some(status.code), http_status, &status.message);
        let mut what = status.code.name().to_string();
        if let Some(http) = http_status {
            what.push_str(&format!(" (HTTP {http})"));
        }
        if !status.message.is_empty() {
            what.push_str(": ");
            what.push_str(&status.message);
        }
        (kind, what)
    } else if let Some(http) = http_status {
        let body = error
            .http_payload()
            .map(|b| {
                String::from_utf8_lossy(b)
                    .chars()
                    .take(200)
                    .collect::<String>()
            })
            .unwrap_or_default();
        (
            classify(None, Some(http), &body),
            format!("HTTP {http}: {body}"),
        )
    } else {
        (ErrorKind::OperationFailed, error.to_string())
    };
    let mut result = ProviderError::new(
        kind,
        format!("GKE {action} failed ({what}); {}", advice(kind)),
    );
    if kind == ErrorKind::Throttled {
        let lower = what.to_lowercase();
        let fallback = if is_busy(status.map(|s| s.code), http_status, &lower) {
            BUSY_WAIT
        } else {
            DEFAULT_THROTTLE_WAIT
        };
        let header = error
            .http_headers()
            .and_then(|h| h.get("retry-after"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        result = result.retry_after(header.unwrap_or(fallback));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_codes_map_to_kinds() {
        let cases = [
            (Code::Unauthenticated, 401, "", ErrorKind::AuthFailed),
            (Code::PermissionDenied, 403, "", ErrorKind::AuthFailed),
            (
                Code::ResourceExhausted,
                429,
                "rate limit",
                ErrorKind::Throttled,
            ),
            (
                Code::ResourceExhausted,
                429,
                "Quota 'CPUS' exceeded",
                ErrorKind::QuotaExceeded,
            ),
            (
                Code::ResourceExhausted,
                429,
                "Quota exceeded for quota metric 'Requests' and limit 'Requests per minute'",
                ErrorKind::Throttled,
            ),
            (Code::InvalidArgument, 400, "bad", ErrorKind::InvalidSpec),
            (Code::NotFound, 404, "", ErrorKind::NotFound),
            (Code::AlreadyExists, 409, "", ErrorKind::AlreadyExists),
            (Code::Unavailable, 503, "", ErrorKind::Unavailable),
            (Code::Internal, 500, "", ErrorKind::Unavailable),
            (
                Code::FailedPrecondition,
                400,
                "no",
                ErrorKind::OperationFailed,
            ),
            (
                Code::FailedPrecondition,
                400,
                "Cluster is running incompatible operation operation-123",
                ErrorKind::Throttled,
            ),
            (
                Code::FailedPrecondition,
                400,
                "Operation operation-1 is currently upgrading cluster c",
                ErrorKind::Throttled,
            ),
        ];
        for (code, http, message, kind) in cases {
            assert_eq!(
                classify(Some(code), Some(http), message),
                kind,
                "{code:?} {message}"
            );
        }
    }

    #[test]
    fn bare_http_statuses_map_to_kinds() {
        for (http, kind) in [
            (401, ErrorKind::AuthFailed),
            (403, ErrorKind::AuthFailed),
            (400, ErrorKind::InvalidSpec),
            (404, ErrorKind::NotFound),
            (409, ErrorKind::AlreadyExists),
            (429, ErrorKind::Throttled),
            (502, ErrorKind::Unavailable),
            (418, ErrorKind::OperationFailed),
        ] {
            assert_eq!(classify(None, Some(http), ""), kind, "{http}");
        }
    }

    #[test]
    fn throttling_takes_retry_after_or_one_second() {
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", http::HeaderValue::from_static("7"));
        let status = rpc::Status::default()
            .set_code(Code::ResourceExhausted)
            .set_message("slow down");
        let error = Error::service_with_http_metadata(status.clone(), Some(429), Some(headers));
        let mapped = gax_error("GetCluster c", &error);
        assert_eq!(mapped.kind, ErrorKind::Throttled);
        assert_eq!(mapped.retry_after, Some(Duration::from_secs(7)));

        let error = Error::service_with_http_metadata(status, Some(429), None);
        assert_eq!(
            gax_error("GetCluster c", &error).retry_after,
            Some(DEFAULT_THROTTLE_WAIT)
        );
    }
}
