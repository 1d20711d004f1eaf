//! The engine's error type; each variant has a short category that is both
//! a metric label and a condition reason.

use crate::provider::ProviderError;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A provider call failed.
    #[error("{0}")]
    Provider(#[from] ProviderError),
    /// The referenced ProviderConfig does not exist.
    #[error("ProviderConfig {0} not found")]
    ProviderConfigNotFound(String),
    /// The ProviderConfig's credentials could not be read.
    #[error("{0}")]
    Credentials(String),
    /// No provider of that kind is built into this controller.
    #[error("provider {0} is not available in this build of fleetforge")]
    ProviderNotAvailable(String),
    /// A value could not be encoded.
    #[error("encoding: {0}")]
    Encoding(#[from] serde_json::Error),
}

impl Error {
    /// Short category: metric label and condition reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesAPIError",
            Error::Provider(e) => e.kind.reason(),
            Error::ProviderConfigNotFound(_) => "ProviderConfigNotFound",
            Error::Credentials(_) => "CredentialsUnavailable",
            Error::ProviderNotAvailable(_) => "ProviderNotAvailable",
            Error::Encoding(_) => "EncodingError",
        }
    }
}

impl fleetforge_runtime::ReconcileError for Error {
    fn category(&self) -> &'static str {
        Error::category(self)
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Provider(e) => e.retry_after,
            _ => None,
        }
    }
}
