//! The Cluster kind in the engine: what providers report about a cluster,
//! how it differs from the spec, and the day-2 rules that turn a difference
//! into the next changes (pure functions).

use std::fmt;

use fleetforge_api::cluster::{ClusterPhase, ClusterStatus, NodePoolStatus};
use fleetforge_api::{Cluster, ClusterSpec, NodePool, ProviderConfig};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::managed::{Managed, ManagedStatus, Phase, Policies, StatusReport};
use crate::provider::Refusal;

/// What a provider reports about a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedCluster {
    /// Control-plane version as the provider reports it (`1.33`,
    /// `1.33.5`, `v1.33.5-eks-1234`, ...).
    pub version: Option<String>,
    /// API server URL.
    pub endpoint: Option<String>,
    /// Node pools.
    pub node_pools: Vec<ObservedNodePool>,
    /// Provider-specific settings that differ from the spec, as the
    /// provider found them (the engine cannot know those fields).
    pub provider_drift: Vec<FieldDiff>,
}

/// A node pool as the provider reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedNodePool {
    /// Name.
    pub name: String,
    /// Machine type.
    pub machine_type: String,
    /// Kubernetes version of the nodes.
    pub version: Option<String>,
    /// Lower scaling bound.
    pub min: i32,
    /// Upper scaling bound.
    pub max: i32,
    /// Current target size.
    pub desired: i32,
    /// Nodes ready now, when the provider knows.
    pub ready: Option<i32>,
}

/// One difference between the spec and the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// Path in the spec, for example `nodePools[workers].desired`.
    pub field: String,
    /// The spec's value.
    pub desired: String,
    /// The provider's value.
    pub actual: String,
}

impl FieldDiff {
    /// A difference in `field`.
    pub fn new(
        field: impl Into<String>,
        desired: impl fmt::Display,
        actual: impl fmt::Display,
    ) -> Self {
        Self {
            field: field.into(),
            desired: desired.to_string(),
            actual: actual.to_string(),
        }
    }
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: spec {}, actual {}",
            self.field, self.desired, self.actual
        )
    }
}

/// One step of bringing a cluster to its spec, for the provider to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChange {
    /// Upgrade the control plane by one minor version, to `to`.
    UpgradeControlPlane {
        /// Target `major.minor`.
        to: String,
    },
    /// Upgrade a pool's nodes to the control plane's version.
    UpgradeNodePool {
        /// Pool name.
        pool: String,
        /// Target `major.minor`.
        to: String,
    },
    /// Set a pool's scaling bounds and (when the spec sets it) size.
    ScaleNodePool {
        /// Pool name.
        pool: String,
        /// Lower bound.
        min: i32,
        /// Upper bound.
        max: i32,
        /// Size, when the spec pins it.
        desired: Option<i32>,
    },
    /// Create a pool.
    AddNodePool(NodePool),
    /// Delete a pool.
    RemoveNodePool {
        /// Pool name.
        pool: String,
    },
    /// Bring provider-specific settings back to the spec.
    ProviderSettings {
        /// What differs.
        fields: Vec<FieldDiff>,
    },
}

impl fmt::Display for ClusterChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterChange::UpgradeControlPlane { to } => {
                write!(f, "upgrade the control plane to {to}")
            }
            ClusterChange::UpgradeNodePool { pool, to } => {
                write!(f, "upgrade node pool {pool} to {to}")
            }
            ClusterChange::ScaleNodePool {
                pool,
                min,
                max,
                desired,
            } => match desired {
                Some(desired) => write!(
                    f,
                    "scale node pool {pool} to {desired} (min {min}, max {max})"
                ),
                None => write!(f, "set node pool {pool} bounds to min {min}, max {max}"),
            },
            ClusterChange::AddNodePool(pool) => write!(f, "add node pool {}", pool.name),
            ClusterChange::RemoveNodePool { pool } => write!(f, "remove node pool {pool}"),
            ClusterChange::ProviderSettings { fields } => {
                let names: Vec<&str> = fields.iter().map(|d| d.field.as_str()).collect();
                write!(f, "update provider settings {}", names.join(", "))
            }
        }
    }
}

/// A Kubernetes `major.minor` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinorVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl MinorVersion {
    /// Reads the `major.minor` prefix of `1.33`, `1.33.5`, `v1.33.5-eks-...`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let mut parts = text.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

impl fmt::Display for MinorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Every difference between `spec` and `observed`, for people (status,
/// events, the drift list).
pub fn differences(spec: &ClusterSpec, observed: &ObservedCluster) -> Vec<FieldDiff> {
    let mut diffs = Vec::new();
    let want = spec.version.as_deref().and_then(MinorVersion::parse);
    if let Some(want) = want {
        let have = observed.version.as_deref().and_then(MinorVersion::parse);
        if have != Some(want) {
            diffs.push(FieldDiff::new("version", want, show(have)));
        }
    }
    for pool in &spec.node_pools {
        let Some(actual) = observed.node_pools.iter().find(|p| p.name == pool.name) else {
            diffs.push(FieldDiff::new(
                pool_field(&pool.name, ""),
                "present",
                "absent",
            ));
            continue;
        };
        if pool.machine_type != actual.machine_type {
            diffs.push(FieldDiff::new(
                pool_field(&pool.name, ".machineType"),
                &pool.machine_type,
                &actual.machine_type,
            ));
        }
        if pool.min != actual.min {
            diffs.push(FieldDiff::new(
                pool_field(&pool.name, ".min"),
                pool.min,
                actual.min,
            ));
        }
        if pool.max != actual.max {
            diffs.push(FieldDiff::new(
                pool_field(&pool.name, ".max"),
                pool.max,
                actual.max,
            ));
        }
        if let Some(desired) = pool.desired
            && desired != actual.desired
        {
            diffs.push(FieldDiff::new(
                pool_field(&pool.name, ".desired"),
                desired,
                actual.desired,
            ));
        }
        if let Some(want) = want {
            let have = actual.version.as_deref().and_then(MinorVersion::parse);
            if have.is_some_and(|have| have != want) {
                diffs.push(FieldDiff::new(
                    pool_field(&pool.name, ".version"),
                    want,
                    show(have),
                ));
            }
        }
    }
    for actual in &observed.node_pools {
        if !spec.node_pools.iter().any(|p| p.name == actual.name) {
            diffs.push(FieldDiff::new(
                pool_field(&actual.name, ""),
                "absent",
                "present",
            ));
        }
    }
    diffs.extend(observed.provider_drift.iter().cloned());
    diffs
}

fn show(version: Option<MinorVersion>) -> String {
    version.map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

fn pool_field(pool: &str, rest: &str) -> String {
    format!("nodePools[{pool}]{rest}")
}

/// Refuses a `spec.provider` block other than `own` (the block the calling
/// provider takes, for example `aws`, whose managed service is `service`),
/// naming the block the spec must carry instead. Which blocks exist is the
/// API's business ([`ClusterProviderSpec::blocks_set`]), not the engine's.
///
/// [`ClusterProviderSpec::blocks_set`]: fleetforge_api::ClusterProviderSpec::blocks_set
pub fn refuse_other_clouds(spec: &ClusterSpec, own: &str, service: &str) -> Result<(), Refusal> {
    let set = spec
        .provider
        .as_ref()
        .map(|block| block.blocks_set())
        .unwrap_or_default();
    let article = if own.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    match set.into_iter().find(|cloud| *cloud != own) {
        Some(cloud) => Err(Refusal {
            reason: "InvalidSpec",
            field: format!("spec.provider.{own}"),
            message: format!(
                "a Cluster on {article} {own} ProviderConfig takes {service} settings: replace spec.provider.{cloud} with spec.provider.{own}, or use a ProviderConfig for {cloud}"
            ),
        }),
        None => Ok(()),
    }
}

/// `spec.tags` plus the ownership tag `owner_tag` naming `obj` (see
/// [`crate::provider::owner_of`]), which the spec cannot override.
pub fn owned_tags(obj: &Cluster, owner_tag: &str) -> std::collections::HashMap<String, String> {
    let mut tags: std::collections::HashMap<String, String> = obj
        .spec
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tags.insert(owner_tag.to_string(), crate::provider::owner_of(obj));
    tags
}

/// The next changes that bring the cluster to `spec`, by the day-2 rules:
/// the control plane is upgraded alone and first, one minor version at a
/// time; node pools follow it; downgrades, skipped minor versions and
/// machine-type changes are refused with the field to fix.
pub fn plan(spec: &ClusterSpec, observed: &ObservedCluster) -> Result<Vec<ClusterChange>, Refusal> {
    let mut changes = Vec::new();
    if let Some(text) = spec.version.as_deref() {
        let want = MinorVersion::parse(text).ok_or_else(|| Refusal {
            reason: "InvalidVersion",
            field: "spec.version".into(),
            message: format!("{text:?} is not a major.minor version"),
        })?;
        if let Some(have) = observed.version.as_deref().and_then(MinorVersion::parse) {
            if let Some(step) = control_plane_step(want, have)? {
                return Ok(vec![step]);
            }
            for pool in &observed.node_pools {
                let pool_version = pool.version.as_deref().and_then(MinorVersion::parse);
                let in_spec = spec.node_pools.iter().any(|p| p.name == pool.name);
                if in_spec && pool_version.is_some_and(|v| v < want) {
                    changes.push(ClusterChange::UpgradeNodePool {
                        pool: pool.name.clone(),
                        to: want.to_string(),
                    });
                }
            }
        }
    }
    for pool in &spec.node_pools {
        match observed.node_pools.iter().find(|p| p.name == pool.name) {
            None => changes.push(ClusterChange::AddNodePool(pool.clone())),
            Some(actual) if actual.machine_type != pool.machine_type => {
                return Err(Refusal {
                    reason: "MachineTypeImmutable",
                    field: format!("spec.nodePools[{}].machineType", pool.name),
                    message: format!(
                        "node pool {} runs {}; a pool's machine type cannot change: add a pool with another name and the new type, then remove this one",
                        pool.name, actual.machine_type
                    ),
                });
            }
            Some(actual) => {
                let desired_differs = pool.desired.is_some_and(|d| d != actual.desired);
                if pool.min != actual.min || pool.max != actual.max || desired_differs {
                    changes.push(ClusterChange::ScaleNodePool {
                        pool: pool.name.clone(),
                        min: pool.min,
                        max: pool.max,
                        desired: pool.desired,
                    });
                }
            }
        }
    }
    for actual in &observed.node_pools {
        if !spec.node_pools.iter().any(|p| p.name == actual.name) {
            changes.push(ClusterChange::RemoveNodePool {
                pool: actual.name.clone(),
            });
        }
    }
    if !observed.provider_drift.is_empty() {
        changes.push(ClusterChange::ProviderSettings {
            fields: observed.provider_drift.clone(),
        });
    }
    Ok(changes)
}

impl ObservedCluster {
    /// What the engine last observed, as its status recorded it.
    pub fn from_status(status: &ClusterStatus) -> Self {
        Self {
            version: status.version.clone(),
            endpoint: status.endpoint.clone(),
            node_pools: status
                .node_pools
                .iter()
                .map(|p| ObservedNodePool {
                    name: p.name.clone(),
                    machine_type: p.machine_type.clone().unwrap_or_default(),
                    version: p.version.clone(),
                    min: p.min.unwrap_or_default(),
                    max: p.max.unwrap_or_default(),
                    desired: p.desired.unwrap_or_default(),
                    ready: p.ready,
                })
                .collect(),
            provider_drift: Vec::new(),
        }
    }

    /// The cluster as it will be once `change` is carried out.
    pub fn apply(&mut self, change: &ClusterChange) {
        match change {
            ClusterChange::UpgradeControlPlane { to } => self.version = Some(to.clone()),
            ClusterChange::UpgradeNodePool { pool, to } => {
                for p in self.node_pools.iter_mut().filter(|p| &p.name == pool) {
                    p.version = Some(to.clone());
                }
            }
            ClusterChange::ScaleNodePool {
                pool,
                min,
                max,
                desired,
            } => {
                for p in self.node_pools.iter_mut().filter(|p| &p.name == pool) {
                    (p.min, p.max) = (*min, *max);
                    p.desired = desired.unwrap_or(p.desired).clamp(*min, *max);
                }
            }
            ClusterChange::AddNodePool(pool) => self.node_pools.push(ObservedNodePool {
                name: pool.name.clone(),
                machine_type: pool.machine_type.clone(),
                version: self.version.clone(),
                min: pool.min,
                max: pool.max,
                desired: pool.initial_count(),
                ready: None,
            }),
            ClusterChange::RemoveNodePool { pool } => self.node_pools.retain(|p| &p.name != pool),
            ClusterChange::ProviderSettings { .. } => self.provider_drift.clear(),
        }
    }
}

/// Every pass the engine would make to bring `observed` to `spec`, each
/// the changes of one [`plan`], until nothing is left to change, and the
/// refusal that stops it early, if one does: what `fleetforge plan`
/// prints.
pub fn passes(
    spec: &ClusterSpec,
    observed: &ObservedCluster,
) -> (Vec<Vec<ClusterChange>>, Option<Refusal>) {
    let mut observed = observed.clone();
    let mut passes = Vec::new();
    // Each pass moves the version at most one step: a handful suffice.
    for _ in 0..16 {
        match plan(spec, &observed) {
            Ok(changes) if changes.is_empty() => return (passes, None),
            Ok(changes) => {
                for change in &changes {
                    observed.apply(change);
                }
                passes.push(changes);
            }
            Err(refusal) => return (passes, Some(refusal)),
        }
    }
    (passes, None)
}

/// The control-plane upgrade to do first, if any, or why none may be done.
fn control_plane_step(
    want: MinorVersion,
    have: MinorVersion,
) -> Result<Option<ClusterChange>, Refusal> {
    let refuse = |reason, message| Refusal {
        reason,
        field: "spec.version".into(),
        message,
    };
    if want == have {
        return Ok(None);
    }
    if want.major != have.major {
        return Err(refuse(
            "VersionSkew",
            format!(
                "the cluster runs {have}; changing the major version to {want} is not supported"
            ),
        ));
    }
    if want < have {
        return Err(refuse(
            "VersionDowngrade",
            format!("the cluster runs {have}; downgrading to {want} is not supported"),
        ));
    }
    if want.minor > have.minor + 1 {
        let next = MinorVersion {
            major: have.major,
            minor: have.minor + 1,
        };
        return Err(refuse(
            "VersionSkew",
            format!(
                "the cluster runs {have}; {want} skips {next}: upgrade one minor version at a time (set {next} first)"
            ),
        ));
    }
    Ok(Some(ClusterChange::UpgradeControlPlane {
        to: want.to_string(),
    }))
}

impl ManagedStatus for ClusterStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }

    fn drift(&self) -> Option<&fleetforge_api::DriftStatus> {
        self.drift.as_ref()
    }

    fn phase(&self) -> Phase {
        match self.phase {
            None | Some(ClusterPhase::Pending) => Phase::Pending,
            Some(ClusterPhase::Provisioning) => Phase::Provisioning,
            Some(ClusterPhase::Ready) => Phase::Ready,
            Some(ClusterPhase::Updating) => Phase::Updating,
            Some(ClusterPhase::Deleting) => Phase::Deleting,
            Some(ClusterPhase::Failed) => Phase::Failed,
        }
    }

    fn last_observed(&self) -> Option<&Time> {
        self.last_observed.as_ref()
    }

    fn create_succeeded(&self) -> Option<&Time> {
        self.create_succeeded.as_ref()
    }
}

impl Managed for Cluster {
    type Observed = ObservedCluster;
    type Change = ClusterChange;
    type Status = ClusterStatus;

    const KIND: &'static str = "Cluster";
    const PROVIDER_CONFIG_FIELD: &'static str = "spec.providerConfigRef.name";

    fn policies(&self) -> Policies {
        Policies {
            deletion: self.spec.deletion_policy,
            management: self.spec.management_policy,
            drift: self.spec.drift_policy,
            paused: self.spec.paused,
        }
    }

    fn provider_config_name(&self) -> &str {
        &self.spec.provider_config_ref.name
    }

    fn connection_secret_name(&self) -> String {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        self.spec.connection_secret_name(name)
    }

    fn status(&self) -> Option<&ClusterStatus> {
        self.status.as_ref()
    }

    fn set_status(&mut self, status: ClusterStatus) {
        self.status = Some(status);
    }

    fn differences(&self, observed: &ObservedCluster) -> Vec<FieldDiff> {
        differences(&self.spec, observed)
    }

    fn plan(&self, observed: &ObservedCluster) -> Result<Vec<ClusterChange>, Refusal> {
        plan(&self.spec, observed)
    }

    fn build_status(
        &self,
        report: StatusReport<'_, ObservedCluster>,
        config: Option<&ProviderConfig>,
    ) -> ClusterStatus {
        let region = self
            .spec
            .region
            .clone()
            .or_else(|| config.and_then(|c| c.spec.defaults.as_ref()?.region.clone()));
        let previous = self.status.clone().unwrap_or_default();
        ClusterStatus {
            phase: Some(match report.phase {
                Phase::Pending => ClusterPhase::Pending,
                Phase::Provisioning => ClusterPhase::Provisioning,
                Phase::Ready => ClusterPhase::Ready,
                Phase::Updating => ClusterPhase::Updating,
                Phase::Deleting => ClusterPhase::Deleting,
                Phase::Failed => ClusterPhase::Failed,
            }),
            conditions: report.conditions,
            observed_generation: report.observed_generation,
            provider: config
                .map(|c| c.spec.provider.to_string())
                .or(previous.provider),
            region,
            // Without a fresh observation, keep what was last seen.
            version: match report.observed {
                Some(o) => o.version.clone(),
                None => previous.version,
            },
            endpoint: match report.observed {
                Some(o) => o.endpoint.clone(),
                None => previous.endpoint,
            },
            node_pools: match report.observed {
                Some(o) => o.node_pools.iter().map(pool_status).collect(),
                None => previous.node_pools,
            },
            drift: report.drift,
            last_observed: report.last_observed,
            create_succeeded: report.create_succeeded,
        }
    }
}

fn pool_status(pool: &ObservedNodePool) -> NodePoolStatus {
    NodePoolStatus {
        name: pool.name.clone(),
        machine_type: Some(pool.machine_type.clone()),
        version: pool.version.clone(),
        min: Some(pool.min),
        max: Some(pool.max),
        desired: Some(pool.desired),
        ready: pool.ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetforge_api::Reference;

    #[test]
    fn another_clouds_block_is_refused_naming_the_one_to_use() {
        let mut spec: ClusterSpec = serde_json::from_value(serde_json::json!({
            "providerConfigRef": {"name": "x"},
            "provider": {"gcp": {"project": "p"}},
        }))
        .unwrap();
        assert!(refuse_other_clouds(&spec, "gcp", "GKE").is_ok());
        let refusal = refuse_other_clouds(&spec, "aws", "EKS").unwrap_err();
        assert_eq!(refusal.field, "spec.provider.aws");
        assert_eq!(
            refusal.message,
            "a Cluster on an aws ProviderConfig takes EKS settings: replace spec.provider.gcp with spec.provider.aws, or use a ProviderConfig for gcp"
        );
        spec.provider = None;
        assert!(refuse_other_clouds(&spec, "azure", "AKS").is_ok());
    }

    fn mk_pool(name: &str, min: i32, max: i32, desired: Option<i32>) -> NodePool {
        NodePool {
            name: name.into(),
            machine_type: "standard-2".into(),
            min,
            max,
            desired,
        }
    }

    fn mk_spec(version: Option<&str>, pools: Vec<NodePool>) -> ClusterSpec {
        ClusterSpec {
            provider_config_ref: Reference { name: "nop".into() },
            region: None,
            version: version.map(str::to_string),
            node_pools: pools,
            profile: None,
            provider: None,
            tags: Default::default(),
            deletion_policy: Default::default(),
            management_policy: Default::default(),
            drift_policy: Default::default(),
            write_connection_secret_to_ref: None,
            paused: false,
        }
    }

    fn mk_observed(version: &str, pools: &[(&str, i32, i32, i32, &str)]) -> ObservedCluster {
        ObservedCluster {
            version: Some(version.into()),
            endpoint: None,
            node_pools: pools
                .iter()
                .map(|(name, min, max, desired, v)| ObservedNodePool {
                    name: name.to_string(),
                    machine_type: "standard-2".into(),
                    version: Some(v.to_string()),
                    min: *min,
                    max: *max,
                    desired: *desired,
                    ready: Some(*desired),
                })
                .collect(),
            provider_drift: vec![],
        }
    }

    #[test]
    fn the_passes_to_a_spec_go_control_plane_first_then_pools_and_stop_at_a_refusal() {
        let mut spec = mk_spec(
            Some("1.34"),
            vec![
                mk_pool("workers", 1, 5, Some(4)),
                mk_pool("gpu", 0, 2, None),
            ],
        );
        let observed = mk_observed(
            "1.33",
            &[("workers", 1, 3, 2, "1.33"), ("old", 1, 1, 1, "1.33")],
        );
        let (passes, refusal) = passes(&spec, &observed);
        assert_eq!(refusal, None);
        let shown: Vec<Vec<String>> = passes
            .iter()
            .map(|p| p.iter().map(|c| c.to_string()).collect())
            .collect();
        assert_eq!(
            shown,
            [
                vec!["upgrade the control plane to 1.34".to_string()],
                vec![
                    "upgrade node pool workers to 1.34".into(),
                    "scale node pool workers to 4 (min 1, max 5)".into(),
                    "add node pool gpu".into(),
                    "remove node pool old".into(),
                ],
            ]
        );
        spec.node_pools[0].machine_type = "standard-8".into();
        let (passes, refusal) = super::passes(&spec, &observed);
        assert_eq!(passes.len(), 1, "the control plane still goes first");
        assert_eq!(
            refusal.map(|r| (r.reason, r.field)),
            Some((
                "MachineTypeImmutable",
                "spec.nodePools[workers].machineType".to_string()
            ))
        );
    }

    #[test]
    fn versions_parse_from_every_provider_format() {
        let v = |s| MinorVersion::parse(s).map(|v| v.to_string());
        assert_eq!(v("1.33").as_deref(), Some("1.33"));
        assert_eq!(v("1.33.5").as_deref(), Some("1.33"));
        assert_eq!(v("v1.33.5-eks-1234").as_deref(), Some("1.33"));
        assert_eq!(v("1.30.2-gke.1587003").as_deref(), Some("1.30"));
        assert_eq!(v("latest"), None);
        assert!(MinorVersion::parse("1.9").unwrap() < MinorVersion::parse("1.10").unwrap());
    }

    #[test]
    fn a_matching_cluster_has_no_differences_and_no_changes() {
        let spec = mk_spec(Some("1.33"), vec![mk_pool("workers", 1, 3, Some(2))]);
        let observed = mk_observed("1.33.4", &[("workers", 1, 3, 2, "1.33.4")]);
        assert!(differences(&spec, &observed).is_empty());
        assert_eq!(plan(&spec, &observed), Ok(vec![]));
    }

    #[test]
    fn the_control_plane_is_upgraded_alone_and_first() {
        let spec = mk_spec(Some("1.34"), vec![mk_pool("workers", 1, 5, Some(4))]);
        let observed = mk_observed("1.33", &[("workers", 1, 3, 2, "1.33")]);
        assert_eq!(
            plan(&spec, &observed),
            Ok(vec![ClusterChange::UpgradeControlPlane {
                to: "1.34".into()
            }])
        );
    }

    #[test]
    fn node_pools_follow_the_control_plane() {
        let spec = mk_spec(Some("1.34"), vec![mk_pool("workers", 1, 3, Some(2))]);
        let observed = mk_observed("1.34", &[("workers", 1, 3, 2, "1.33")]);
        assert_eq!(
            plan(&spec, &observed),
            Ok(vec![ClusterChange::UpgradeNodePool {
                pool: "workers".into(),
                to: "1.34".into()
            }])
        );
        let diffs = differences(&spec, &observed);
        assert_eq!(
            diffs,
            vec![FieldDiff::new("nodePools[workers].version", "1.34", "1.33")]
        );
    }

    #[test]
    fn a_skipped_minor_version_is_refused_naming_the_next_one() {
        let spec = mk_spec(Some("1.35"), vec![]);
        let refusal = plan(&spec, &mk_observed("1.33", &[])).unwrap_err();
        assert_eq!(refusal.reason, "VersionSkew");
        assert_eq!(refusal.field, "spec.version");
        assert!(
            refusal.message.contains("skips 1.34"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn downgrades_and_major_changes_are_refused() {
        let down = plan(&mk_spec(Some("1.32"), vec![]), &mk_observed("1.33", &[])).unwrap_err();
        assert_eq!(down.reason, "VersionDowngrade");
        let major = plan(&mk_spec(Some("2.0"), vec![]), &mk_observed("1.33", &[])).unwrap_err();
        assert_eq!(major.reason, "VersionSkew");
    }

    #[test]
    fn pools_are_added_removed_and_scaled() {
        let spec = mk_spec(
            None,
            vec![
                mk_pool("workers", 1, 5, Some(4)),
                mk_pool("gpu", 0, 2, None),
            ],
        );
        let observed = mk_observed(
            "1.33",
            &[("workers", 1, 3, 2, "1.33"), ("old", 1, 1, 1, "1.33")],
        );
        let changes = plan(&spec, &observed).unwrap();
        assert_eq!(
            changes,
            vec![
                ClusterChange::ScaleNodePool {
                    pool: "workers".into(),
                    min: 1,
                    max: 5,
                    desired: Some(4)
                },
                ClusterChange::AddNodePool(mk_pool("gpu", 0, 2, None)),
                ClusterChange::RemoveNodePool { pool: "old".into() },
            ]
        );
        let described: Vec<String> = differences(&spec, &observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            described,
            vec![
                "nodePools[workers].max: spec 5, actual 3",
                "nodePools[workers].desired: spec 4, actual 2",
                "nodePools[gpu]: spec present, actual absent",
                "nodePools[old]: spec absent, actual present",
            ]
        );
    }

    #[test]
    fn an_unpinned_size_may_move_within_bounds_without_drift() {
        let spec = mk_spec(None, vec![mk_pool("workers", 1, 5, None)]);
        let observed = mk_observed("1.33", &[("workers", 1, 5, 4, "1.33")]);
        assert!(differences(&spec, &observed).is_empty());
        assert_eq!(plan(&spec, &observed), Ok(vec![]));
    }

    #[test]
    fn a_machine_type_change_is_refused_naming_the_pool_field() {
        let mut pool = mk_pool("workers", 1, 3, Some(2));
        pool.machine_type = "standard-8".into();
        let refusal = plan(
            &mk_spec(None, vec![pool]),
            &mk_observed("1.33", &[("workers", 1, 3, 2, "1.33")]),
        )
        .unwrap_err();
        assert_eq!(refusal.reason, "MachineTypeImmutable");
        assert_eq!(refusal.field, "spec.nodePools[workers].machineType");
    }

    #[test]
    fn provider_specific_drift_becomes_a_provider_settings_change() {
        let mut observed = mk_observed("1.33", &[]);
        observed.provider_drift = vec![FieldDiff::new(
            "provider.aws.endpointPublicAccess",
            true,
            false,
        )];
        let changes = plan(&mk_spec(None, vec![]), &observed).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].to_string(),
            "update provider settings provider.aws.endpointPublicAccess"
        );
    }
}
