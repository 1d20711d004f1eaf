//! The simulated nodes of a local cluster: one Node object per pool
//! member, run by the cluster's kwok (which makes it Ready and runs the
//! pods scheduled onto it).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};
use kube::api::ObjectMeta;

/// The label naming a node's pool.
pub const POOL_LABEL: &str = "fleetforge.dev/node-pool";
/// The well-known label naming a node's machine type.
pub const MACHINE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";

/// Node `index` of `pool`: `<pool>-<index>`.
pub fn node_name(pool: &str, index: usize) -> String {
    format!("{pool}-{index}")
}

/// The kubelet version a node reports, when it is a Kubernetes version
/// (kwok reports its own, `kwok-0.8.0`, for nodes created without one).
pub fn kubelet_version(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|info| info.kubelet_version.as_str())
        .filter(|v| v.starts_with('v'))
}

/// A Node for member `index` of `pool`, its kubelet reporting
/// `kubelet_version` (kwok keeps what the node was created with).
pub fn node(pool: &str, machine_type: &str, index: usize, kubelet_version: &str) -> Node {
    let name = node_name(pool, index);
    let labels = [
        (POOL_LABEL, pool),
        (MACHINE_TYPE_LABEL, machine_type),
        ("kubernetes.io/hostname", &name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("type", "kwok"),
    ];
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            annotations: Some(BTreeMap::from([(
                "kwok.x-k8s.io/node".to_string(),
                "fake".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                kubelet_version: kubelet_version.to_string(),
                kube_proxy_version: kubelet_version.to_string(),
                architecture: "amd64".into(),
                operating_system: "linux".into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

/// Which members to add (by index) and which nodes to remove (by name) so
/// that `pool`, whose nodes are now `existing`, has `size` members. New
/// members fill the lowest free indexes; the highest go first.
pub fn resize(pool: &str, existing: &[String], size: usize) -> (Vec<usize>, Vec<String>) {
    let indexes: BTreeSet<usize> = existing
        .iter()
        .filter_map(|name| name.strip_prefix(pool)?.strip_prefix('-')?.parse().ok())
        .collect();
    // Nodes of the pool not named by the scheme count as members too.
    let mut members: Vec<(usize, String)> = existing
        .iter()
        .map(|name| {
            let index = name
                .strip_prefix(pool)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.parse().ok())
                .unwrap_or(usize::MAX);
            (index, name.clone())
        })
        .collect();
    members.sort();
    if members.len() >= size {
        let remove = members
            .split_off(size)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        return (Vec::new(), remove);
    }
    let add = (0..)
        .filter(|i| !indexes.contains(i))
        .take(size - members.len())
        .collect();
    (add, Vec::new())
}

/// An index past every member of `pool` among `existing`, for a node
/// that joins while others leave (a rolling replacement).
pub fn next_index(pool: &str, existing: &[String]) -> usize {
    existing
        .iter()
        .filter_map(|name| {
            name.strip_prefix(pool)?
                .strip_prefix('-')?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |max| max + 1)
}

/// Whether a Node reports the condition Ready=True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn grows_into_the_lowest_free_indexes() {
        let (add, remove) = resize("w", &names(&["w-0", "w-2"]), 4);
        assert_eq!(add, vec![1, 3]);
        assert!(remove.is_empty());
    }

    #[test]
    fn shrinks_from_the_highest_index() {
        let (add, remove) = resize("w", &names(&["w-0", "w-10", "w-2"]), 1);
        assert!(add.is_empty());
        assert_eq!(remove, names(&["w-2", "w-10"]));
    }

    #[test]
    fn unnamed_members_count_and_go_first() {
        let (add, remove) = resize("w", &names(&["w-0", "other"]), 1);
        assert!(add.is_empty());
        assert_eq!(remove, names(&["other"]));
        assert_eq!(resize("w", &names(&["other"]), 2), (vec![0], vec![]));
    }

    #[test]
    fn a_joining_node_takes_an_index_past_every_member() {
        assert_eq!(next_index("w", &names(&["w-1", "w-2"])), 3);
        assert_eq!(next_index("w", &names(&[])), 0);
        assert_eq!(next_index("w", &names(&["other"])), 0);
    }

    #[test]
    fn a_node_carries_its_pool_and_machine_type() {
        let node = node("workers", "standard-4", 3, "v1.35.4");
        assert_eq!(kubelet_version(&node), Some("v1.35.4"));
        let labels = node.metadata.labels.unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("workers-3"));
        assert_eq!(labels[POOL_LABEL], "workers");
        assert_eq!(labels[MACHINE_TYPE_LABEL], "standard-4");
    }
}
