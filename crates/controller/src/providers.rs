//! The one place providers are registered: a new provider is a crate under
//! `providers/` and one line here.

use std::sync::Arc;

use fleetforge_api::{Cluster, ProviderKind};
use fleetforge_core::Providers;
use fleetforge_provider_aws_eks::EksFactory;
use fleetforge_provider_azure_aks::AksFactory;
use fleetforge_provider_gcp_gke::GkeFactory;
use fleetforge_provider_local::{LocalFactory, LocalOptions};
use fleetforge_provider_nop::NopFactory;

/// Every provider this binary can manage Clusters with.
pub fn clusters(local: &LocalOptions) -> Providers<Cluster> {
    Providers::default()
        .register(ProviderKind::Aws, EksFactory::new() as Arc<_>)
        .register(ProviderKind::Azure, AksFactory::new() as Arc<_>)
        .register(ProviderKind::Gcp, GkeFactory::new() as Arc<_>)
        .register(ProviderKind::Nop, NopFactory::new() as Arc<_>)
        .register(
            ProviderKind::Local,
            LocalFactory::new(local.clone()) as Arc<_>,
        )
}
