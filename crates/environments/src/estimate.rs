//! What an environment will take before it is provisioned: node pools
//! times the provider's machine sizes, or a vcluster's requests.

use fleetforge_api::NodePool;
use fleetforge_api::environment::{EnvironmentType, Estimate};
use fleetforge_core::MachineSize;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The control plane of a vcluster, as its chart requests it (syncer
/// 200m / 256Mi; vcluster chart defaults).
const VCLUSTER_REQUESTS: MachineSize = MachineSize {
    millicores: 200,
    mebibytes: 256,
};

/// The size of an environment: node pools at their initial size times
/// `size` of their machine type (the provider's), or a vcluster's
/// requests. An estimate is information: pools of machine types the
/// provider does not know are named and left out, never a reason not to
/// provision.
pub fn estimate(
    kind: EnvironmentType,
    pools: &[NodePool],
    size: impl Fn(&str) -> Option<MachineSize>,
) -> Estimate {
    let mut unknown = Vec::new();
    let total = match kind {
        EnvironmentType::Virtual => VCLUSTER_REQUESTS,
        EnvironmentType::Dedicated => {
            let mut total = MachineSize {
                millicores: 0,
                mebibytes: 0,
            };
            for pool in pools {
                let Some(one) = size(&pool.machine_type) else {
                    unknown.push(format!(
                        "nodePools[{}].machineType: {}",
                        pool.name, pool.machine_type
                    ));
                    continue;
                };
                let count = u64::try_from(pool.initial_count()).unwrap_or(0);
                total.millicores += one.millicores * count;
                total.mebibytes += one.mebibytes * count;
            }
            total
        }
    };
    let vcpu = if total.millicores % 1000 == 0 {
        format!("{}", total.millicores / 1000)
    } else {
        format!("{}m", total.millicores)
    };
    let memory = if total.mebibytes % 1024 == 0 {
        format!("{}Gi", total.mebibytes / 1024)
    } else {
        format!("{}Mi", total.mebibytes)
    };
    Estimate {
        vcpu: Some(Quantity(vcpu)),
        memory: Some(Quantity(memory)),
        unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_pool(machine_type: &str, min: i32, desired: Option<i32>) -> NodePool {
        NodePool {
            name: "workers".into(),
            machine_type: machine_type.into(),
            min,
            max: 10,
            desired,
        }
    }

    /// `standard-N`, N vCPUs and 4 GiB each, as the local provider names
    /// them.
    fn local(machine_type: &str) -> Option<MachineSize> {
        let n: u64 = machine_type.strip_prefix("standard-")?.parse().ok()?;
        Some(MachineSize::new(n, n * 4))
    }

    #[test]
    fn an_estimate_adds_pools_at_their_initial_size() {
        let pools = [
            mk_pool("standard-2", 1, Some(3)),
            mk_pool("standard-4", 2, None),
        ];
        let estimate = estimate(EnvironmentType::Dedicated, &pools, local);
        assert_eq!(estimate.vcpu, Some(Quantity("14".into())));
        assert_eq!(estimate.memory, Some(Quantity("56Gi".into())));
        assert!(estimate.unknown.is_empty());
        let virtual_estimate = super::estimate(EnvironmentType::Virtual, &[], local);
        assert_eq!(virtual_estimate.vcpu, Some(Quantity("200m".into())));
        assert_eq!(virtual_estimate.memory, Some(Quantity("256Mi".into())));
    }

    #[test]
    fn an_unknown_machine_type_is_named_and_left_out_of_the_estimate() {
        let partial = estimate(
            EnvironmentType::Dedicated,
            &[
                mk_pool("standard-2", 1, None),
                mk_pool("quantum-9000", 1, None),
            ],
            local,
        );
        assert_eq!(partial.vcpu, Some(Quantity("2".into())));
        assert_eq!(partial.memory, Some(Quantity("8Gi".into())));
        assert_eq!(
            partial.unknown,
            ["nodePools[workers].machineType: quantum-9000"]
        );
    }
}
