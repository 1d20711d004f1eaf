//! Generated files checked into the repository match what the code
//! generates: a changed type without regenerated YAML fails here.

use std::collections::BTreeSet;
use std::path::Path;

use fleetforge_controller::crdgen;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

const FIX: &str = "run scripts/generate and commit the result";

/// `dir` holds exactly the CRDs the types generate.
fn assert_crds_in(dir: &Path) {
    let mut expected = BTreeSet::new();
    for (name, yaml) in crdgen::render().unwrap() {
        let path = dir.join(&name);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing: {FIX}", path.display()));
        assert!(
            on_disk == yaml,
            "{} differs from the types: {FIX}",
            path.display()
        );
        expected.insert(name);
    }
    let present: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        present,
        expected,
        "{} holds files no type generates: {FIX}",
        dir.display()
    );
}

/// `path` is the ClusterRoles the rules generate.
fn assert_rbac_in(path: &Path) {
    let on_disk = std::fs::read_to_string(path).unwrap();
    assert!(
        on_disk == fleetforge_controller::rbac::render().unwrap(),
        "{} differs from crates/controller/src/rbac.rs: {FIX}",
        path.display()
    );
}

#[test]
fn checked_in_crds_match_the_types() {
    assert_crds_in(&workspace_root().join("crds"));
}

#[test]
fn checked_in_rbac_matches_the_rules() {
    assert_rbac_in(&workspace_root().join("deploy/rbac/clusterroles.yaml"));
}

#[test]
fn the_chart_carries_the_same_crds_and_rbac() {
    let chart = workspace_root().join("deploy/chart/fleetforge");
    assert_crds_in(&chart.join("crds"));
    assert_rbac_in(&chart.join("templates/clusterroles.yaml"));
}
