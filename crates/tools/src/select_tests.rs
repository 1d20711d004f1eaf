use super::*;
use fleetforge_api::tool_install::ToolStatus;
use fleetforge_api::tool_target::ToolTargetStatus;

fn mk_cluster(name: &str, labels: &[(&str, &str)], deleting: bool) -> Cluster {
    let mut cluster: Cluster = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "platform",
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "spec": {"providerConfigRef": {"name": "local"}},
    }))
    .unwrap();
    if deleting {
        cluster.metadata.deletion_timestamp = Some(conditions::now());
    }
    cluster
}

fn mk_install(targets: Value) -> ToolInstall {
    serde_json::from_value(json!({
        "metadata": {"name": "tools", "namespace": "platform", "uid": "u-ti"},
        "spec": {"tools": [], "targets": targets,
                 "values": {"web": {"replicas": 2}},
                 "valueOverrides": [{"cluster": "named", "tool": "web", "values": {"replicas": 3}},
                                    {"cluster": "other", "tool": "web", "values": {"replicas": 4}}]},
    }))
    .unwrap()
}

fn chosen(selection: &Selection, objects: &[Object<'_>]) -> Vec<(TargetKind, String, bool)> {
    selection
        .targets(objects)
        .into_iter()
        .map(|(t, o)| (t.kind, t.name, o.is_some()))
        .collect()
}

#[test]
fn targets_are_chosen_by_name_or_label_and_a_missing_name_is_kept() {
    let ti = mk_install(json!({
        "clusterNames": ["named", "missing", "going"],
        "clusterSelector": {"matchLabels": {"tier": "dev"}},
    }));
    let clusters = [
        mk_cluster("named", &[], false),
        mk_cluster("labelled", &[("tier", "dev")], false),
        mk_cluster("other", &[("tier", "prod")], false),
        mk_cluster("going", &[("tier", "dev")], true),
    ];
    let objects: Vec<Object<'_>> = clusters.iter().map(Object::Cluster).collect();
    let selection = Selection::of(&ti).unwrap();
    assert_eq!(
        chosen(&selection, &objects),
        [
            (TargetKind::Cluster, "labelled".to_string(), true),
            (TargetKind::Cluster, "missing".to_string(), false),
            (TargetKind::Cluster, "named".to_string(), true),
        ]
    );
    assert!(selection.selects(Object::Cluster(&clusters[1])));
    assert!(!selection.selects(Object::Cluster(&clusters[2])));
    assert!(
        !selection.selects(Object::Cluster(&clusters[3])),
        "a target going is never selected"
    );
}

#[test]
fn virtual_clusters_are_chosen_by_their_own_fields_and_keep_their_kind() {
    let ti = mk_install(json!({
        "clusterNames": ["same"],
        "virtualClusterSelector": {"matchLabels": {"team": "a"}},
    }));
    let virtual_clusters: Vec<VirtualCluster> = ["same", "other"]
        .iter()
        .map(|name| {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "platform", "labels": {"team": if *name == "same" { "a" } else { "b" }}},
                "spec": {"sharedTools": ["ingress"]},
            }))
            .unwrap()
        })
        .collect();
    let cluster = mk_cluster("same", &[], false);
    let mut objects = vec![Object::Cluster(&cluster)];
    objects.extend(virtual_clusters.iter().map(Object::Virtual));
    let selection = Selection::of(&ti).unwrap();
    assert_eq!(
        chosen(&selection, &objects),
        [
            (TargetKind::Cluster, "same".to_string(), true),
            (TargetKind::VirtualCluster, "same".to_string(), true),
        ]
    );
    let virtual_same = Object::Virtual(&virtual_clusters[0]);
    assert_eq!(virtual_same.shared_tools(), ["ingress"]);
    assert_eq!(virtual_same.facts().kind, "VirtualCluster");
    assert_eq!(
        target_key(
            "platform",
            &TargetRef {
                kind: TargetKind::VirtualCluster,
                name: "same".into()
            }
        ),
        "platform/VirtualCluster/same"
    );
}

#[test]
fn a_selector_that_does_not_parse_is_an_error_not_an_empty_selection() {
    let ti = mk_install(json!({
        "clusterNames": ["named"],
        "clusterSelector": {"matchExpressions": [{"key": "tier", "operator": "Equals", "values": ["dev"]}]},
    }));
    let error = Selection::of(&ti).unwrap_err();
    assert!(
        error.starts_with("spec.targets.clusterSelector.matchExpressions[0].operator"),
        "{error}"
    );
}

#[test]
fn a_target_gets_its_own_tool_target_with_only_its_overrides() {
    let ti = mk_install(json!({"clusterNames": ["named"]}));
    let target = TargetRef {
        kind: TargetKind::Cluster,
        name: "named".into(),
    };
    let child = desired_child(&ti, &[], &target, None);
    assert_eq!(child["metadata"]["name"], "tools-cluster-named");
    assert_eq!(child["metadata"]["labels"][INSTALL_LABEL], "tools");
    assert_eq!(child["metadata"]["ownerReferences"][0]["uid"], "u-ti");
    assert_eq!(
        child["spec"]["valueOverrides"],
        json!([{"cluster": "named", "tool": "web", "values": {"replicas": 3}}])
    );
    assert_eq!(child["spec"]["values"]["web"]["replicas"], 2);
    let typed: ToolTarget = serde_json::from_value(child.clone()).unwrap();
    assert!(
        child_is_current(&typed, &child),
        "written once, it is current"
    );
    let mut changed = ti.clone();
    changed.spec.suspend = true;
    assert!(!child_is_current(
        &typed,
        &desired_child(&changed, &[], &target, None)
    ));

    let long = TargetRef {
        kind: TargetKind::VirtualCluster,
        name: "x".repeat(250),
    };
    let name = child_name("tools", &long);
    assert!(name.len() <= 253, "{}", name.len());
    assert_ne!(
        name,
        child_name(
            "tools",
            &TargetRef {
                kind: TargetKind::VirtualCluster,
                name: "y".repeat(250)
            }
        )
    );
}

fn mk_child(name: &str, state: Option<ToolState>, current: bool) -> ToolTarget {
    let mut child: ToolTarget = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "platform", "generation": 2},
        "spec": {"toolInstallRef": {"name": "tools"}, "target": {"kind": "Cluster", "name": name}, "tools": []},
    }))
    .unwrap();
    child.status = Some(ToolTargetStatus {
        observed_generation: Some(if current { 2 } else { 1 }),
        state,
        tools: vec![ToolStatus {
            name: "web".into(),
            state: state.unwrap_or(ToolState::Pending),
            chart_version: None,
            revision: None,
            message: Some("boom".into()),
            drift: Vec::new(),
            last_transition_time: None,
        }],
        ..ToolTargetStatus::default()
    });
    child
}

#[test]
fn the_summary_counts_each_target_by_its_worst_tool_and_names_the_first_failing() {
    let children = [
        mk_child("a", Some(ToolState::Deployed), true),
        mk_child("b", Some(ToolState::Failed), true),
        mk_child("c", Some(ToolState::Deployed), false),
        mk_child("d", Some(ToolState::Drifted), true),
    ];
    let refs: Vec<&ToolTarget> = children.iter().collect();
    // Five selected: one has no ToolTarget yet.
    let (summary, failing) = summarize(&refs, 5);
    assert_eq!(
        (
            summary.targets,
            summary.deployed,
            summary.failed,
            summary.drifted,
            summary.pending
        ),
        (5, 1, 1, 1, 2),
        "a ToolTarget not yet at its generation counts as pending"
    );
    assert_eq!(failing.len(), 1);
    assert_eq!(
        (
            failing[0].name.as_str(),
            failing[0].tool.as_deref(),
            failing[0].message.as_deref()
        ),
        ("b", Some("web"), Some("boom"))
    );
    assert_eq!(
        worst([ToolState::Deployed, ToolState::Stale, ToolState::Unknown]),
        ToolState::Unknown
    );
    assert_eq!(
        worst([ToolState::Shared, ToolState::Deployed]),
        ToolState::Shared
    );
}
