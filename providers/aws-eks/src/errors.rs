//! Turns AWS SDK errors into the engine's [`ProviderError`] kinds, with a
//! message that says what happened and what to do.

use std::time::Duration;

use aws_sdk_eks::config::http::HttpResponse;
use aws_sdk_eks::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use fleetforge_core::{ErrorKind, ProviderError};

/// How long to wait after throttling when AWS names no time.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);

/// The kind of an AWS error, from its error code, else its HTTP status.
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    match code {
        Some(
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "MissingAuthenticationTokenException"
            | "AccessDeniedException"
            | "AccessDenied"
            | "ExpiredTokenException"
            | "ExpiredToken"
            | "UnauthorizedOperation",
        ) => ErrorKind::AuthFailed,
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded",
        ) => ErrorKind::Throttled,
        Some("ResourceLimitExceededException" | "ServiceQuotaExceededException") => {
            ErrorKind::QuotaExceeded
        }
        Some(
            "InvalidParameterException"
            | "InvalidRequestException"
            | "ValidationException"
            | "UnsupportedAvailabilityZoneException",
        ) => ErrorKind::InvalidSpec,
        Some("ResourceNotFoundException" | "NotFoundException") => ErrorKind::NotFound,
        Some("ResourceInUseException") => ErrorKind::AlreadyExists,
        Some(
            "ServerException"
            | "ServiceUnavailableException"
            | "InternalFailure"
            | "InternalServerError",
        ) => ErrorKind::Unavailable,
        _ => match status {
            Some(401 | 403) => ErrorKind::AuthFailed,
            Some(404) => ErrorKind::NotFound,
            Some(429) => ErrorKind::Throttled,
            Some(500..=599) => ErrorKind::Unavailable,
            _ => ErrorKind::OperationFailed,
        },
    }
}

/// What a user can do about an error of `kind`.
fn advice(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::AuthFailed => {
            "check the ProviderConfig's credentials (the keys in its Secret, or the controller's ambient identity) and their IAM permissions for EKS"
        }
        ErrorKind::Throttled => "AWS asked to slow down; fleetforge retries later",
        ErrorKind::QuotaExceeded => {
            "raise the quota in AWS Service Quotas or remove unused EKS resources"
        }
        ErrorKind::InvalidSpec => "fix the Cluster's spec (spec.provider.aws, nodePools, version)",
        ErrorKind::NotFound => "it does not exist (any more) in this account and region",
        ErrorKind::AlreadyExists => {
            "a resource of that name exists or is busy; wait for it, or import it with the fleetforge.dev/external-name annotation"
        }
        ErrorKind::Unavailable => {
            "EKS could not be reached or failed; check the ProviderConfig's endpoint and the network; fleetforge retries later"
        }
        ErrorKind::OperationFailed => "see the AWS message; fleetforge retries later",
    }
}

/// The error for the failed EKS call `action` (for example
/// `DescribeCluster c1`).
pub fn sdk_error<E>(action: &str, error: &SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (kind, what) = match error {
        SdkError::TimeoutError(_) => (ErrorKind::Unavailable, "timed out".to_string()),
        SdkError::DispatchFailure(failure) => {
            // Credentials are resolved just before sending, so a failure to
            // load them is reported as a dispatch failure too.
            let chain = DisplayErrorContext(error).to_string();
            let kind = if !failure.is_io()
                && !failure.is_timeout()
                && chain.to_lowercase().contains("credential")
            {
                ErrorKind::AuthFailed
            } else {
                ErrorKind::Unavailable
            };
            (kind, format!("could not be sent: {chain}"))
        }
        SdkError::ConstructionFailure(_) => (
            ErrorKind::InvalidSpec,
            format!("could not be built: {}", DisplayErrorContext(error)),
        ),
        _ => {
            let status = error.raw_response().map(|r| r.status().as_u16());
            let code = error.code();
            let kind = classify(code, status);
            let mut what = String::new();
            if let Some(code) = code {
                what.push_str(code);
            } else if let Some(status) = status {
                what.push_str(&format!("HTTP {status}"));
            }
            // A modelled error built without metadata still displays itself.
            let message = error
                .message()
                .map(str::to_string)
                .or_else(|| error.as_service_error().map(ToString::to_string));
            if let Some(message) = message {
                if !what.is_empty() {
                    what.push_str(": ");
                }
                what.push_str(&message);
            }
            (kind, what)
        }
    };
    let mut result = ProviderError::new(
        kind,
        format!("EKS {action} failed ({what}); {}", advice(kind)),
    );
    if kind == ErrorKind::Throttled {
        let header = error
            .raw_response()
            .and_then(|r| r.headers().get("retry-after"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        result = result.retry_after(header.unwrap_or(DEFAULT_THROTTLE_WAIT));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_eks::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_eks::operation::describe_cluster::DescribeClusterError;
    use aws_sdk_eks::types::error::ResourceNotFoundException;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn response(status: u16, retry_after: Option<&str>) -> HttpResponse {
        let mut response =
            HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        if let Some(value) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", value.to_string());
        }
        response
    }

    fn service(code: &str, status: u16, retry_after: Option<&str>) -> ProviderError {
        let error = DescribeClusterError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("the AWS message")
                .build(),
        );
        sdk_error(
            "DescribeCluster c1",
            &SdkError::service_error(error, response(status, retry_after)),
        )
    }

    #[test]
    fn codes_map_to_kinds() {
        let table = [
            ("UnrecognizedClientException", 403, ErrorKind::AuthFailed),
            ("InvalidSignatureException", 403, ErrorKind::AuthFailed),
            ("AccessDeniedException", 403, ErrorKind::AuthFailed),
            ("ExpiredTokenException", 403, ErrorKind::AuthFailed),
            ("ThrottlingException", 400, ErrorKind::Throttled),
            ("TooManyRequestsException", 429, ErrorKind::Throttled),
            (
                "ResourceLimitExceededException",
                400,
                ErrorKind::QuotaExceeded,
            ),
            ("InvalidParameterException", 400, ErrorKind::InvalidSpec),
            ("InvalidRequestException", 400, ErrorKind::InvalidSpec),
            ("ResourceNotFoundException", 404, ErrorKind::NotFound),
            ("ResourceInUseException", 409, ErrorKind::AlreadyExists),
            ("ServerException", 500, ErrorKind::Unavailable),
            ("SomethingNew", 503, ErrorKind::Unavailable),
            ("SomethingNew", 400, ErrorKind::OperationFailed),
        ];
        for (code, status, kind) in table {
            let error = service(code, status, None);
            assert_eq!(error.kind, kind, "{code}");
            assert!(
                error.message.starts_with("EKS DescribeCluster c1 failed ("),
                "{}",
                error.message
            );
            assert!(error.message.contains(code), "{}", error.message);
            assert!(
                error.message.contains("the AWS message"),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn throttling_waits_as_asked_or_one_second() {
        assert_eq!(
            service("ThrottlingException", 400, None).retry_after,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            service("TooManyRequestsException", 429, Some("7")).retry_after,
            Some(Duration::from_secs(7))
        );
        assert_eq!(service("ServerException", 500, Some("7")).retry_after, None);
    }

    #[test]
    fn a_modelled_not_found_error_is_not_found() {
        let error = DescribeClusterError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .message("No cluster found for name: c1.")
                .build(),
        );
        let mapped = sdk_error(
            "DescribeCluster c1",
            &SdkError::service_error(error, response(404, None)),
        );
        assert_eq!(mapped.kind, ErrorKind::NotFound);
        assert!(
            mapped.message.contains("No cluster found"),
            "{}",
            mapped.message
        );
    }

    #[test]
    fn transport_failures_are_unavailable() {
        let timeout: SdkError<DescribeClusterError, HttpResponse> =
            SdkError::timeout_error("operation timeout (all attempts including retries) occurred");
        let mapped = sdk_error("ListNodegroups c1", &timeout);
        assert_eq!(mapped.kind, ErrorKind::Unavailable);
        assert!(mapped.message.contains("timed out"), "{}", mapped.message);

        let refused: SdkError<DescribeClusterError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let mapped = sdk_error("ListNodegroups c1", &refused);
        assert_eq!(mapped.kind, ErrorKind::Unavailable);
        assert!(
            mapped.message.contains("could not be sent"),
            "{}",
            mapped.message
        );
        assert!(mapped.message.contains("endpoint"), "{}", mapped.message);
    }

    #[test]
    fn missing_credentials_are_auth_failed() {
        let error: SdkError<DescribeClusterError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(
                "failed to load credentials: no providers in chain provided credentials".into(),
                None,
            ));
        let mapped = sdk_error("DescribeCluster c1", &error);
        assert_eq!(mapped.kind, ErrorKind::AuthFailed, "{}", mapped.message);
        assert!(
            mapped.message.contains("no providers in chain"),
            "{}",
            mapped.message
        );
    }

    #[test]
    fn statuses_decide_when_there_is_no_code() {
        assert_eq!(classify(None, Some(403)), ErrorKind::AuthFailed);
        assert_eq!(classify(None, Some(429)), ErrorKind::Throttled);
        assert_eq!(classify(None, Some(502)), ErrorKind::Unavailable);
        assert_eq!(classify(None, None), ErrorKind::OperationFailed);
    }
}
