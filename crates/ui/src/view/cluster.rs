//! The page of one Cluster or VirtualCluster: node pools (declared and
//! reported), conditions with their reasons, drift, the tools on it with
//! their states, recent Events, and the connection Secret's name (never
//! its contents: the fleet view reads no Secret at all).

use fleetforge_api::tool_target::TargetKind;
use fleetforge_api::{Cluster, VirtualCluster};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use super::fleet::FleetRow;
use super::tools::{ToolCell, ToolTargetSummary};

/// A node pool: what the spec asks and what the provider reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRow {
    /// The pool's name.
    pub name: String,
    /// Machine type (reported, else declared).
    pub machine_type: String,
    /// Nodes asked for (`desired`, else `min..max` when left to an
    /// autoscaler).
    pub desired: String,
    /// Nodes the provider reports (its `desired`).
    pub actual: String,
    /// Nodes ready.
    pub ready: String,
    /// The pool's Kubernetes version.
    pub version: String,
}

/// A condition, as `kubectl describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionRow {
    /// `Ready`, `Synced`, `Drifted`...
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why, in one word.
    pub reason: String,
    /// Why, for people.
    pub message: String,
    /// When the status last changed.
    pub since: Option<Timestamp>,
}

/// An Event about the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// `Normal` or `Warning`.
    pub type_: String,
    /// Its reason.
    pub reason: String,
    /// Its note.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
    /// When it last happened.
    pub last: Option<Timestamp>,
}

impl EventRow {
    /// The row of a core/v1 Event (events.k8s.io ones are served as
    /// these too).
    pub fn from_event(event: &Event) -> Self {
        let last = event
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or_else(|| event.last_timestamp.as_ref().map(|t| t.0))
            .or_else(|| event.event_time.as_ref().map(|t| t.0))
            .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let count = event
            .series
            .as_ref()
            .and_then(|s| s.count)
            .or(event.count)
            .unwrap_or(1);
        Self {
            type_: event.type_.clone().unwrap_or_else(|| "Normal".into()),
            reason: event.reason.clone().unwrap_or_default(),
            message: event.message.clone().unwrap_or_default(),
            count,
            last,
        }
    }
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterDetail {
    /// Its fleet row (provider, region, version, phase, ready, drift).
    pub row: FleetRow,
    /// The API server URL reported.
    pub endpoint: String,
    /// Policies and settings worth seeing at a glance, as (name, value).
    pub settings: Vec<(&'static str, String)>,
    /// Node pools (Clusters only).
    pub pools: Vec<PoolRow>,
    /// Conditions, Ready first.
    pub conditions: Vec<ConditionRow>,
    /// Drift: the fields that differ.
    pub drift: Vec<String>,
    /// Since when the drift was seen.
    pub drift_since: Option<Timestamp>,
    /// Tools on it: (ToolInstall, ToolTarget, the tool's state).
    pub tools: Vec<(String, String, ToolCell)>,
    /// The connection Secret's name.
    pub connection_secret: String,
}

fn conditions(list: &[Condition]) -> Vec<ConditionRow> {
    let order = |t: &str| match t {
        "Ready" => 0,
        "Synced" => 1,
        "Drifted" => 2,
        _ => 3,
    };
    let mut rows: Vec<ConditionRow> = list
        .iter()
        .map(|c| ConditionRow {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            since: Some(c.last_transition_time.0),
        })
        .collect();
    rows.sort_by(|a, b| {
        order(&a.type_)
            .cmp(&order(&b.type_))
            .then(a.type_.cmp(&b.type_))
    });
    rows
}

fn tools_on(
    kind: TargetKind,
    name: &str,
    targets: &[&ToolTargetSummary],
) -> Vec<(String, String, ToolCell)> {
    let mut tools: Vec<(String, String, ToolCell)> = targets
        .iter()
        .filter(|t| t.target_kind == kind && t.target == name)
        .flat_map(|t| {
            t.tools
                .iter()
                .map(|cell| (t.install.clone(), t.name.clone(), cell.clone()))
        })
        .collect();
    tools.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.tool.cmp(&b.2.tool)));
    tools
}

impl ClusterDetail {
    /// The page of a Cluster, with the ToolTargets of its namespace.
    pub fn of_cluster(cluster: &Cluster, targets: &[&ToolTargetSummary]) -> Self {
        let row = FleetRow::from_cluster(cluster);
        let status = cluster.status.clone().unwrap_or_default();
        let mut pools: Vec<PoolRow> = cluster
            .spec
            .node_pools
            .iter()
            .map(|pool| {
                let reported = status.node_pools.iter().find(|p| p.name == pool.name);
                let text = |v: Option<i32>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
                PoolRow {
                    name: pool.name.clone(),
                    machine_type: reported
                        .and_then(|p| p.machine_type.clone())
                        .unwrap_or_else(|| pool.machine_type.clone()),
                    desired: match pool.desired {
                        Some(d) => d.to_string(),
                        None => format!("{}..{}", pool.min, pool.max),
                    },
                    actual: text(reported.and_then(|p| p.desired)),
                    ready: text(reported.and_then(|p| p.ready)),
                    version: reported
                        .and_then(|p| p.version.clone())
                        .unwrap_or_else(|| "-".into()),
                }
            })
            .collect();
        // Pools the provider reports that the spec no longer has (being
        // removed, or added out of band).
        for reported in &status.node_pools {
            if !cluster
                .spec
                .node_pools
                .iter()
                .any(|p| p.name == reported.name)
            {
                pools.push(PoolRow {
                    name: reported.name.clone(),
                    machine_type: reported.machine_type.clone().unwrap_or_default(),
                    desired: "not declared".into(),
                    actual: reported.desired.map(|n| n.to_string()).unwrap_or_default(),
                    ready: reported.ready.map(|n| n.to_string()).unwrap_or_default(),
                    version: reported.version.clone().unwrap_or_default(),
                });
            }
        }
        let drift = status.drift.clone().unwrap_or_default();
        Self {
            endpoint: status.endpoint.clone().unwrap_or_default(),
            settings: vec![
                (
                    "ProviderConfig",
                    cluster.spec.provider_config_ref.name.clone(),
                ),
                (
                    "Declared version",
                    cluster
                        .spec
                        .version
                        .clone()
                        .unwrap_or_else(|| "provider default".into()),
                ),
                (
                    "Profile",
                    cluster
                        .spec
                        .profile
                        .clone()
                        .unwrap_or_else(|| "none".into()),
                ),
                ("Drift policy", format!("{:?}", cluster.spec.drift_policy)),
                (
                    "Management policy",
                    format!("{:?}", cluster.spec.management_policy),
                ),
                (
                    "Deletion policy",
                    format!("{:?}", cluster.spec.deletion_policy),
                ),
                ("Paused", cluster.spec.paused.to_string()),
            ],
            pools,
            conditions: conditions(&status.conditions),
            drift: if row.drifted {
                drift.fields
            } else {
                Vec::new()
            },
            drift_since: drift.last_detected.map(|t| t.0).filter(|_| row.drifted),
            tools: tools_on(TargetKind::Cluster, &row.name, targets),
            connection_secret: cluster.spec.connection_secret_name(&row.name),
            row,
        }
    }

    /// The page of a VirtualCluster, with the ToolTargets of its namespace.
    pub fn of_virtual_cluster(vc: &VirtualCluster, targets: &[&ToolTargetSummary]) -> Self {
        let row = FleetRow::from_virtual_cluster(vc);
        let status = vc.status.clone().unwrap_or_default();
        let connection_secret = vc
            .spec
            .write_connection_secret_to_ref
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| format!("{}-kubeconfig", row.name));
        Self {
            endpoint: status.endpoint.clone().unwrap_or_default(),
            settings: vec![
                ("Host", row.region.clone()),
                (
                    "Profile",
                    vc.spec.profile.clone().unwrap_or_else(|| "none".into()),
                ),
                (
                    "Shared tools",
                    if vc.spec.shared_tools.is_empty() {
                        "none".into()
                    } else {
                        vc.spec.shared_tools.join(", ")
                    },
                ),
                ("Paused", vc.spec.paused.to_string()),
            ],
            pools: Vec::new(),
            conditions: conditions(&status.conditions),
            drift: Vec::new(),
            drift_since: None,
            tools: tools_on(TargetKind::VirtualCluster, &row.name, targets),
            connection_secret,
            row,
        }
    }
}

/// The most recent `limit` events, newest first.
pub fn recent_events(events: &[Event], limit: usize) -> Vec<EventRow> {
    let mut rows: Vec<EventRow> = events.iter().map(EventRow::from_event).collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.last));
    rows.truncate(limit);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::tools::tests::mk_tool_target;
    use fleetforge_api::ToolState;
    use serde_json::json;

    fn cluster() -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "web", "namespace": "fleet"},
            "spec": {
                "providerConfigRef": {"name": "nop"}, "version": "1.36", "profile": "dev",
                "nodePools": [
                    {"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": 2},
                    {"name": "auto", "machineType": "standard-4", "min": 0, "max": 3},
                ],
            },
            "status": {
                "phase": "Ready", "provider": "nop", "version": "1.36",
                "nodePools": [
                    {"name": "workers", "machineType": "standard-2", "desired": 5, "ready": 5, "version": "1.36"},
                    {"name": "legacy", "machineType": "old-1", "desired": 1, "ready": 1},
                ],
                "conditions": [
                    {"type": "Synced", "status": "True", "reason": "ReconcileSuccess", "message": "", "lastTransitionTime": "2026-12-01T10:00:00Z"},
                    {"type": "Drifted", "status": "True", "reason": "DriftDetected", "message": "1 field", "lastTransitionTime": "2026-12-01T10:05:00Z"},
                    {"type": "Ready", "status": "True", "reason": "Available", "message": "", "lastTransitionTime": "2026-12-01T10:00:00Z"},
                ],
                "drift": {"fields": ["nodePools[workers].desired: spec 2, actual 5"], "lastDetected": "2026-12-01T10:05:00Z"},
            },
        }))
        .unwrap()
    }

    #[test]
    fn pools_conditions_drift_tools_and_secret_name() {
        let tts = [
            mk_tool_target(
                "fleet",
                "web-profile",
                "web",
                &[("web", Some("FAILED"), Some("boom"))],
            ),
            mk_tool_target(
                "fleet",
                "other",
                "not-web",
                &[("web", Some("DEPLOYED"), None)],
            ),
        ];
        let summaries: Vec<ToolTargetSummary> = tts
            .iter()
            .map(ToolTargetSummary::from_tool_target)
            .collect();
        let refs: Vec<&ToolTargetSummary> = summaries.iter().collect();
        let detail = ClusterDetail::of_cluster(&cluster(), &refs);
        let pools: Vec<(&str, &str, &str, &str)> = detail
            .pools
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.desired.as_str(),
                    p.actual.as_str(),
                    p.ready.as_str(),
                )
            })
            .collect();
        assert_eq!(
            pools,
            [
                ("workers", "2", "5", "5"),
                ("auto", "0..3", "-", "-"),
                ("legacy", "not declared", "1", "1")
            ]
        );
        let types: Vec<&str> = detail.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Synced", "Drifted"]);
        assert_eq!(
            detail.drift,
            ["nodePools[workers].desired: spec 2, actual 5"]
        );
        assert!(detail.drift_since.is_some());
        assert_eq!(detail.tools.len(), 1);
        assert_eq!(detail.tools[0].2.state, ToolState::Failed);
        assert_eq!(detail.connection_secret, "web-kubeconfig");
    }

    #[test]
    fn drift_fields_show_only_while_drifted() {
        let mut corrected = cluster();
        let status = corrected.status.as_mut().unwrap();
        status.conditions.retain(|c| c.type_ != "Drifted");
        let detail = ClusterDetail::of_cluster(&corrected, &[]);
        assert!(detail.drift.is_empty());
        assert!(detail.drift_since.is_none());
    }

    #[test]
    fn events_newest_first() {
        let event = |reason: &str, at: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": reason, "namespace": "fleet"},
                "involvedObject": {"kind": "Cluster", "name": "web"},
                "reason": reason, "message": format!("{reason} happened"), "type": "Normal",
                "lastTimestamp": at, "count": 2,
            }))
            .unwrap()
        };
        let events = [
            event("Created", "2026-12-01T10:00:00Z"),
            event("DriftDetected", "2026-12-01T10:05:00Z"),
            event("DriftCorrected", "2026-12-01T10:06:00Z"),
        ];
        let rows = recent_events(&events, 2);
        let reasons: Vec<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["DriftCorrected", "DriftDetected"]);
        assert_eq!(rows[0].count, 2);
    }
}
