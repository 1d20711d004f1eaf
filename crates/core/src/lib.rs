//! The fleetforge engine: one generic managed reconciler that drives every
//! kind through a provider trait. It knows Kubernetes, but no cloud: a
//! provider is a crate under `providers/` implementing [`ExternalClient`].

pub mod cluster;
pub mod conditions;
pub mod crds;
pub mod error;
pub mod finalizer;
pub mod managed;
pub mod metrics;
pub mod provider;
pub mod ratelimit;
pub mod selector;
pub mod shard;
pub mod toolset;
pub mod watch;

pub use error::Error;
pub use fleetforge_runtime::events;
pub use managed::{Engine, MachineSizes, Managed, ManagedStatus, Options, Providers, run};
pub use metrics::Metrics;
pub use provider::{
    ConnectionDetails, Credentials, ErrorKind, ExternalClient, ExternalState, MachineSize,
    Observation, ProviderError, ProviderFactory, Refusal, owner_of,
};
