//! The least-privilege RBAC the controller runs under, as data. `fleetforge
//! rbac` renders it into `deploy/rbac/`; the end-to-end tests run the
//! controller under exactly these rules, so a missing verb fails a test.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::ObjectMeta;

/// Name of the ClusterRole with everything but leader election.
pub const CONTROLLER_ROLE: &str = "fleetforge";
/// Name of the ClusterRole for leader election, bound by a RoleBinding in
/// the lease's namespace only.
pub const LEADER_ELECTION_ROLE: &str = "fleetforge-leader-election";
/// Name of the ClusterRole for VirtualClusters hosted on the management
/// cluster, bound by a RoleBinding in each namespace that may have them.
pub const VCLUSTER_HOST_ROLE: &str = "fleetforge-vcluster-host";

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

fn role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "fleetforge".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        rules: Some(rules),
        ..ClusterRole::default()
    }
}

/// The ClusterRoles, each rule with the reason it is needed.
pub fn cluster_roles() -> Vec<ClusterRole> {
    vec![
        role(
            CONTROLLER_ROLE,
            vec![
                // Watch Clusters; apply the finalizer and external-name
                // annotations (server-side apply is a patch).
                rule(
                    "fleetforge.dev",
                    &["clusters"],
                    &["get", "list", "watch", "patch"],
                ),
                rule("fleetforge.dev", &["clusters/status"], &["patch"]),
                // Read accounts; report whether their credentials work;
                // hold their deletion while they are used (a finalizer).
                rule(
                    "fleetforge.dev",
                    &["providerconfigs"],
                    &["get", "list", "watch", "patch"],
                ),
                rule("fleetforge.dev", &["providerconfigs/status"], &["patch"]),
                // Validate ToolSets and report their install order.
                rule("fleetforge.dev", &["toolsets"], &["get", "list", "watch"]),
                rule("fleetforge.dev", &["toolsets/status"], &["patch"]),
                // Install tools: ToolInstalls' finalizer and status; a
                // Cluster's profile creates, updates and deletes its own.
                rule(
                    "fleetforge.dev",
                    &["toolinstalls"],
                    &["get", "list", "watch", "create", "patch", "delete"],
                ),
                rule("fleetforge.dev", &["toolinstalls/status"], &["patch"]),
                // One ToolTarget per (ToolInstall, target): made, applied
                // and pruned by the ToolInstall controller; finalizer and
                // status by the ToolTarget controller.
                rule(
                    "fleetforge.dev",
                    &["tooltargets"],
                    &["get", "list", "watch", "create", "patch", "delete"],
                ),
                rule("fleetforge.dev", &["tooltargets/status"], &["patch"]),
                // VirtualClusters: finalizer and status (the vcluster itself
                // is installed with the host Cluster's own kubeconfig).
                rule(
                    "fleetforge.dev",
                    &["virtualclusters"],
                    &["get", "list", "watch", "patch"],
                ),
                rule("fleetforge.dev", &["virtualclusters/status"], &["patch"]),
                // Environments: finalizer, status, expiry (deleting one);
                // their Clusters and VirtualClusters are created, applied
                // and deleted by the Environment controller.
                rule(
                    "fleetforge.dev",
                    &["environments"],
                    &["get", "list", "watch", "patch", "delete"],
                ),
                rule("fleetforge.dev", &["environments/status"], &["patch"]),
                rule(
                    "fleetforge.dev",
                    &["clusters", "virtualclusters"],
                    &["create", "delete"],
                ),
                // FleetRollouts: status, and the annotations a person
                // sets to approve, resume or abort are removed once acted
                // on. The rollout writes its change into Clusters and
                // ToolTargets (patch, above).
                rule(
                    "fleetforge.dev",
                    &["fleetrollouts"],
                    &["get", "list", "watch", "patch"],
                ),
                rule("fleetforge.dev", &["fleetrollouts/status"], &["patch"]),
                // Read credentials and targets' kubeconfigs; write and
                // remove connection Secrets.
                rule("", &["secrets"], &["get", "create", "patch", "delete"]),
                // Tool values from ConfigMaps (`valuesFrom`).
                rule("", &["configmaps"], &["get"]),
                // Events for `kubectl describe`, and their series counts.
                rule("events.k8s.io", &["events"], &["create", "patch"]),
            ],
        ),
        // Not bound by default: bound with a RoleBinding in a namespace, it
        // lets the controller install (as itself) VirtualClusters with no
        // host Cluster there, on the management cluster: the vcluster
        // chart's objects and Helm's release Secrets in that namespace only.
        role(
            VCLUSTER_HOST_ROLE,
            vec![
                rule(
                    "",
                    &[
                        "secrets",
                        "configmaps",
                        "services",
                        "serviceaccounts",
                        "persistentvolumeclaims",
                    ],
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                ),
                rule("", &["pods", "endpoints"], &["get", "list", "watch"]),
                rule(
                    "apps",
                    &["statefulsets", "deployments"],
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                ),
                // vcluster's syncer gets a Role of its own in the namespace;
                // granting it needs `bind` and `escalate` here.
                rule(
                    "rbac.authorization.k8s.io",
                    &["roles", "rolebindings"],
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete", "bind",
                        "escalate",
                    ],
                ),
                rule(
                    "networking.k8s.io",
                    &["networkpolicies", "ingresses"],
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                ),
                rule(
                    "policy",
                    &["poddisruptionbudgets"],
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                ),
            ],
        ),
        role(
            LEADER_ELECTION_ROLE,
            // Leader election; sharing shards: list the group's Leases,
            // remove its membership Lease when a replica leaves.
            vec![rule(
                "coordination.k8s.io",
                &["leases"],
                &["get", "list", "create", "update", "delete"],
            )],
        ),
    ]
}

/// The ClusterRoles as one YAML stream.
pub fn render() -> anyhow::Result<String> {
    let header = "# Generated by scripts/generate (`fleetforge rbac`) from crates/controller/src/rbac.rs; do not edit.\n";
    let mut out = String::from(header);
    for role in cluster_roles() {
        let mut value = serde_json::to_value(&role)?;
        value["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
        value["kind"] = "ClusterRole".into();
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&value)?);
    }
    Ok(out)
}
