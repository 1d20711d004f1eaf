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

#[test]
fn checked_in_crds_match_the_types() {
    let dir = workspace_root().join("crds");
    let fix = "run `cargo run --bin fleetforge -- crds --write crds/` and commit the result";
    let mut expected = BTreeSet::new();
    for (name, yaml) in crdgen::render().unwrap() {
        let path = dir.join(&name);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing: {fix}", path.display()));
        assert!(
            on_disk == yaml,
            "{} differs from the types: {fix}",
            path.display()
        );
        expected.insert(name);
    }
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        present, expected,
        "crds/ holds files no type generates: {fix}"
    );
}

#[test]
fn checked_in_rbac_matches_the_rules() {
    let path = workspace_root().join("deploy/rbac/clusterroles.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(
        on_disk == fleetforge_controller::rbac::render().unwrap(),
        "{} differs from crates/controller/src/rbac.rs: run `cargo run --bin fleetforge -- rbac > deploy/rbac/clusterroles.yaml`",
        path.display()
    );
}
