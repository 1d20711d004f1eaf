//! What a ToolInstall asks for, as pure functions: which targets it
//! selects (from the controller's caches, no list per pass), the
//! ToolTarget it wants for each, and the summary of their states.

use std::collections::{BTreeMap, BTreeSet};

use fleetforge_api::tool_install::{FailingTarget, ToolInstallSummary};
use fleetforge_api::tool_target::{TargetKind, TargetRef, ToolTarget};
use fleetforge_api::{Cluster, Tool, ToolInstall, ToolState, VirtualCluster, condition, label};
use fleetforge_core::conditions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::values::TargetFacts;

/// Label on a ToolTarget naming its ToolInstall.
pub const INSTALL_LABEL: &str = "fleetforge.dev/tool-install";
/// Label on a ToolTarget naming its target.
pub const TARGET_LABEL: &str = "fleetforge.dev/target";
/// Label on a ToolTarget naming its target's kind.
pub const TARGET_KIND_LABEL: &str = "fleetforge.dev/target-kind";
/// The field manager of the ToolTargets a ToolInstall makes.
pub const CHILD_MANAGER: &str = "fleetforge-tools";
/// Failing targets a ToolInstall names in its status, at most.
pub const FAILING_NAMED: usize = 5;

/// A target: a Cluster or a VirtualCluster.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    /// A Cluster.
    Cluster(&'a Cluster),
    /// A VirtualCluster.
    Virtual(&'a VirtualCluster),
}

impl<'a> Object<'a> {
    /// Its kind.
    pub fn kind(&self) -> TargetKind {
        match self {
            Object::Cluster(_) => TargetKind::Cluster,
            Object::Virtual(_) => TargetKind::VirtualCluster,
        }
    }

    /// Its name.
    pub fn name(&self) -> String {
        match self {
            Object::Cluster(c) => c.name_any(),
            Object::Virtual(v) => v.name_any(),
        }
    }

    /// What its shard is computed from (its ToolTargets share it).
    pub fn shard_key(&self) -> String {
        match self {
            Object::Cluster(c) => fleetforge_core::shard::cluster_key(c).to_string(),
            Object::Virtual(v) => fleetforge_core::shard::virtual_cluster_key(v),
        }
    }

    /// Its labels.
    pub fn labels(&self) -> &'a BTreeMap<String, String> {
        match self {
            Object::Cluster(c) => c.labels(),
            Object::Virtual(v) => v.labels(),
        }
    }

    /// Its annotations.
    pub fn annotations(&self) -> &'a BTreeMap<String, String> {
        match self {
            Object::Cluster(c) => c.annotations(),
            Object::Virtual(v) => v.annotations(),
        }
    }

    /// Whether it is being deleted.
    pub fn deleting(&self) -> bool {
        match self {
            Object::Cluster(c) => c.metadata.deletion_timestamp.is_some(),
            Object::Virtual(v) => v.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Its Ready condition.
    pub fn ready_condition(
        &self,
    ) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        let conditions = match self {
            Object::Cluster(c) => &c.status.as_ref()?.conditions,
            Object::Virtual(v) => &v.status.as_ref()?.conditions,
        };
        conditions.iter().find(|c| c.type_ == condition::READY)
    }

    /// Whether it is Ready.
    pub fn ready(&self) -> bool {
        self.ready_condition().is_some_and(|c| c.status == "True")
    }

    /// The Secret holding its kubeconfig (key `value`).
    pub fn connection_secret(&self) -> String {
        match self {
            Object::Cluster(c) => c.spec.connection_secret_name(&c.name_any()),
            Object::Virtual(v) => v
                .spec
                .write_connection_secret_to_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| format!("{}-kubeconfig", v.name_any())),
        }
    }

    /// The provider it runs on (`nop` clusters take the nop driver).
    pub fn provider(&self) -> Option<&'a str> {
        match self {
            Object::Cluster(c) => c.status.as_ref()?.provider.as_deref(),
            Object::Virtual(_) => Some("vcluster"),
        }
    }

    /// Tools the target's host provides (VirtualCluster `sharedTools`).
    pub fn shared_tools(&self) -> &'a [String] {
        match self {
            Object::Cluster(_) => &[],
            Object::Virtual(v) => &v.spec.shared_tools,
        }
    }

    /// The host of a VirtualCluster (`management` for the management
    /// cluster itself); empty for a Cluster.
    pub fn host(&self) -> String {
        match self {
            Object::Cluster(_) => String::new(),
            Object::Virtual(v) => v
                .spec
                .host
                .cluster_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| "management".into()),
        }
    }

    /// The facts values may refer to.
    pub fn facts(&self) -> TargetFacts {
        match self {
            Object::Cluster(cluster) => {
                let status = cluster.status.clone().unwrap_or_default();
                TargetFacts {
                    kind: "Cluster".into(),
                    name: cluster.name_any(),
                    namespace: cluster.namespace().unwrap_or_default(),
                    provider: status.provider.unwrap_or_default(),
                    region: status
                        .region
                        .or(cluster.spec.region.clone())
                        .unwrap_or_default(),
                    version: status
                        .version
                        .or(cluster.spec.version.clone())
                        .unwrap_or_default(),
                    endpoint: status.endpoint.unwrap_or_default(),
                    labels: cluster.labels().clone(),
                    annotations: cluster.annotations().clone(),
                }
            }
            Object::Virtual(vc) => {
                let status = vc.status.clone().unwrap_or_default();
                TargetFacts {
                    kind: "VirtualCluster".into(),
                    name: vc.name_any(),
                    namespace: vc.namespace().unwrap_or_default(),
                    provider: "vcluster".into(),
                    region: String::new(),
                    version: status.version.unwrap_or_default(),
                    endpoint: status.endpoint.unwrap_or_default(),
                    labels: vc.labels().clone(),
                    annotations: vc.annotations().clone(),
                }
            }
        }
    }
}

/// The key of a target among all targets: `namespace/Kind/name`.
pub fn target_key(namespace: &str, target: &TargetRef) -> String {
    format!("{namespace}/{}/{}", target.kind, target.name)
}

/// A ToolInstall's selectors, parsed.
#[derive(Debug)]
pub struct Selection {
    clusters: (BTreeSet<String>, Option<Selector>),
    virtual_clusters: (BTreeSet<String>, Option<Selector>),
}

impl Selection {
    /// The selection of `ti`, or why a selector cannot be used.
    pub fn of(ti: &ToolInstall) -> Result<Self, String> {
        let targets = &ti.spec.targets;
        let parse = |field: &str, s: &Option<LabelSelector>| {
            s.as_ref()
                .map(|s| fleetforge_core::selector::parse(field, s))
                .transpose()
        };
        let names = |n: &Option<Vec<String>>| n.iter().flatten().cloned().collect();
        Ok(Self {
            clusters: (
                names(&targets.cluster_names),
                parse("spec.targets.clusterSelector", &targets.cluster_selector)?,
            ),
            virtual_clusters: (
                names(&targets.virtual_cluster_names),
                parse(
                    "spec.targets.virtualClusterSelector",
                    &targets.virtual_cluster_selector,
                )?,
            ),
        })
    }

    /// Whether `object` (not being deleted) is selected.
    pub fn selects(&self, object: Object<'_>) -> bool {
        if object.deleting() {
            return false;
        }
        let (names, selector) = match object.kind() {
            TargetKind::Cluster => &self.clusters,
            TargetKind::VirtualCluster => &self.virtual_clusters,
        };
        names.contains(&object.name())
            || selector
                .as_ref()
                .is_some_and(|s| s.matches(object.labels()))
    }

    /// The targets chosen among `objects`, by kind and name; a name listed
    /// but not found (or going) is kept, with no object.
    pub fn targets<'a>(&self, objects: &[Object<'a>]) -> BTreeMap<TargetRef, Option<Object<'a>>> {
        let mut chosen = BTreeMap::new();
        for (kind, (names, _)) in [
            (TargetKind::Cluster, &self.clusters),
            (TargetKind::VirtualCluster, &self.virtual_clusters),
        ] {
            for name in names {
                chosen.insert(
                    TargetRef {
                        kind,
                        name: name.clone(),
                    },
                    None,
                );
            }
        }
        for object in objects {
            let key = TargetRef {
                kind: object.kind(),
                name: object.name(),
            };
            if object.deleting() {
                chosen.remove(&key);
            } else if self.selects(*object) {
                chosen.insert(key, Some(*object));
            }
        }
        chosen
    }
}

/// The name of the ToolTarget of `install` on `target`:
/// `<install>-<kind>-<target>`, shortened with a hash past 253 characters.
pub fn child_name(install: &str, target: &TargetRef) -> String {
    let kind = match target.kind {
        TargetKind::Cluster => "cluster",
        TargetKind::VirtualCluster => "virtualcluster",
    };
    let name = format!("{install}-{kind}-{}", target.name);
    if name.len() <= 253 {
        return name;
    }
    let hash = fleetforge_runtime::clients::fingerprint(name.as_bytes());
    let mut end = 236;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash:016x}", name[..end].trim_end_matches(['-', '.']))
}

/// The ToolTarget `ti` wants on `target`, as applied (server-side apply
/// with [`CHILD_MANAGER`]): the tools in install order, this target's
/// overrides only, owned by the ToolInstall.
pub fn desired_child(
    ti: &ToolInstall,
    tools: &[Tool],
    target: &TargetRef,
    shard: Option<u32>,
) -> Value {
    let install = ti.name_any();
    let owner = ti.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let overrides: Vec<_> = ti
        .spec
        .value_overrides
        .iter()
        .filter(|o| o.cluster == target.name)
        .collect();
    let mut annotations = serde_json::Map::new();
    if let Some(force) = ti
        .annotations()
        .get(fleetforge_api::annotation::FORCE_REMOVE)
    {
        annotations.insert(
            fleetforge_api::annotation::FORCE_REMOVE.into(),
            json!(force),
        );
    }
    let mut labels = json!({
        label::MANAGED_BY: "fleetforge",
        label::INSTANCE: install,
        INSTALL_LABEL: install,
        TARGET_LABEL: target.name,
        TARGET_KIND_LABEL: target.kind.as_str(),
    });
    // Replicas that share the fleet watch their shards by it.
    if let Some(shard) = shard {
        labels[fleetforge_runtime::shards::SHARD_LABEL] = json!(shard.to_string());
    }
    json!({
        "apiVersion": "fleetforge.dev/v1alpha1",
        "kind": "ToolTarget",
        "metadata": {
            "name": child_name(&install, target),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "toolInstallRef": {"name": install},
            "target": target,
            "tools": tools,
            "values": ti.spec.values,
            "valueOverrides": overrides,
            "valuesFrom": ti.spec.values_from,
            "driftPolicy": ti.spec.drift_policy,
            "suspend": ti.spec.suspend,
            "dryRun": ti.spec.dry_run,
            "pollInterval": ti.spec.poll_interval,
        },
    })
}

/// The fields of a ToolTarget's spec a FleetRollout moves: what is
/// installed and with which values.
pub const ROLLOUT_FIELDS: [&str; 4] = ["tools", "values", "valueOverrides", "valuesFrom"];

/// The [`ROLLOUT_FIELDS`] of a ToolTarget `spec` (as JSON), absent ones as
/// their defaults, so that two specs compare equal exactly when they
/// install the same.
pub fn rollout_part(spec: &Value) -> Value {
    let defaults = [json!([]), json!({}), json!([]), json!([])];
    let fields: serde_json::Map<String, Value> = ROLLOUT_FIELDS
        .iter()
        .zip(defaults)
        .map(|(field, default)| {
            let value = spec.get(*field).cloned().filter(|v| !v.is_null());
            (field.to_string(), value.unwrap_or(default))
        })
        .collect();
    Value::Object(fields)
}

/// The rollout part of `tt`'s spec as it stands.
pub fn current_rollout_part(tt: &ToolTarget) -> Value {
    rollout_part(&serde_json::to_value(&tt.spec).unwrap_or_default())
}

/// Keeps, in `desired` (from [`desired_child`]), the tools `child` has
/// now, and what the FleetRollout that holds them noted on it.
pub fn hold(desired: &mut Value, child: &ToolTarget) {
    let current = current_rollout_part(child);
    for field in ROLLOUT_FIELDS {
        desired["spec"][field] = current[field].clone();
    }
    for key in [
        fleetforge_api::annotation::ROLLOUT,
        fleetforge_api::annotation::ROLLOUT_PREVIOUS,
    ] {
        if let Some(value) = child.annotations().get(key) {
            desired["metadata"]["annotations"][key] = json!(value);
        }
    }
}

/// Whether `existing` already is what `desired` (from [`desired_child`])
/// asks: then nothing is written.
pub fn child_is_current(existing: &ToolTarget, desired: &Value) -> bool {
    let Ok(spec) = serde_json::from_value(desired["spec"].clone()) else {
        return false;
    };
    let labels_match = desired["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| existing.labels().get(k).map(String::as_str) == v.as_str());
    let annotations_match = desired["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| existing.annotations().get(k).map(String::as_str) == v.as_str())
        && existing
            .annotations()
            .contains_key(fleetforge_api::annotation::FORCE_REMOVE)
            == desired["metadata"]["annotations"]
                .get(fleetforge_api::annotation::FORCE_REMOVE)
                .is_some();
    existing.spec == spec && labels_match && annotations_match
}

/// The worst state of a target's tools, the one it is counted by.
pub fn worst(states: impl IntoIterator<Item = ToolState>) -> ToolState {
    let rank = |s: ToolState| match s {
        ToolState::Failed => 0,
        ToolState::Unknown => 1,
        ToolState::Drifted => 2,
        ToolState::Stale => 3,
        ToolState::NotInstalled => 4,
        ToolState::Pending => 5,
        ToolState::Deployed | ToolState::Shared => 6,
    };
    states
        .into_iter()
        .min_by_key(|s| rank(*s))
        .unwrap_or(ToolState::Pending)
}

/// Counts of `children` (the ToolTargets of one ToolInstall, and the
/// targets selected but without one yet) by their worst tool, and the
/// first failing ones.
pub fn summarize(
    children: &[&ToolTarget],
    selected: usize,
) -> (ToolInstallSummary, Vec<FailingTarget>) {
    let mut summary = ToolInstallSummary {
        targets: count(selected),
        ..ToolInstallSummary::default()
    };
    let mut failing = Vec::new();
    let mut seen = 0;
    for child in children {
        let status = child.status.clone().unwrap_or_default();
        let current = status.observed_generation == child.metadata.generation;
        let state = match status.state {
            Some(state) if current => state,
            _ => ToolState::Pending,
        };
        seen += 1;
        match state {
            ToolState::Deployed | ToolState::Shared => summary.deployed += 1,
            ToolState::Stale | ToolState::NotInstalled => summary.stale += 1,
            ToolState::Drifted => summary.drifted += 1,
            ToolState::Failed => summary.failed += 1,
            ToolState::Unknown => summary.unknown += 1,
            ToolState::Pending => summary.pending += 1,
        }
        if matches!(state, ToolState::Failed | ToolState::Unknown) && failing.len() < FAILING_NAMED
        {
            let tool = status.tools.iter().find(|t| t.state == state);
            failing.push(FailingTarget {
                kind: child.spec.target.kind.as_str().to_string(),
                name: child.spec.target.name.clone(),
                tool: tool.map(|t| t.name.clone()),
                state,
                message: tool.and_then(|t| t.message.clone()).or_else(|| {
                    conditions::message(&status.conditions, condition::READY).map(str::to_string)
                }),
            });
        }
    }
    // Selected targets whose ToolTarget is not made yet.
    summary.pending += count(selected.saturating_sub(seen));
    (summary, failing)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
