//! `fleetforge validate` as CI runs it on a platform repository: offline (no
//! cluster at all) on the examples and on a directory of typical mistakes,
//! and with `--server` against a control plane with the CRDs installed.

use std::path::Path;
use std::process::Command;

use fleetforge_e2e::{apply_generated, fleetforge_bin, kubectl, workspace_root};
use fleetforge_testenv::shared;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `fleetforge validate <args>` from the workspace root, with
/// KUBECONFIG pointing at `kubeconfig` (a missing file when offline, so
/// that any attempt to reach a cluster fails).
fn validate(args: &[&str], kubeconfig: &Path) -> Outcome {
    let output = Command::new(fleetforge_bin())
        .arg("validate")
        .args(args)
        .current_dir(workspace_root())
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("fleetforge runs");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 output"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 output"),
    }
}

fn offline(args: &[&str]) -> Outcome {
    validate(args, Path::new("/nonexistent/kubeconfig"))
}

#[test]
fn the_examples_are_valid() {
    for path in ["examples/platform", "examples/nop", "examples/environments"] {
        let outcome = offline(&[path]);
        assert_eq!(
            (outcome.code, outcome.stdout.as_str()),
            (Some(0), ""),
            "validate {path}; stderr:\n{}",
            outcome.stderr
        );
        assert!(
            outcome.stderr.contains(", 0 errors"),
            "summary of {path}: {}",
            outcome.stderr
        );
    }
}

#[test]
fn every_mistake_is_reported_on_its_own_line() {
    // (file, `Kind/name: field` or empty for a file that does not parse,
    // a fragment of the message)
    let expected = [
        (
            "drift-policy.yaml",
            "Cluster/bad-drift-policy: spec.driftPolicy",
            r#"Unsupported value: "Fix""#,
        ),
        (
            "duplicate-pool.yaml",
            "Cluster/duplicate-pool: spec.nodePools[1]",
            r#"Duplicate value: {"name":"workers"}"#,
        ),
        (
            "field-typo.yaml",
            "Cluster/field-typo: spec.nodepools",
            r#"did you mean "nodePools"?"#,
        ),
        (
            "min-greater-than-max.yaml",
            "Cluster/inverted-pool: spec.nodePools[0].min",
            "min must not be greater than max",
        ),
        (
            "nop-on-local.yaml",
            "ProviderConfig/local-with-nop: spec.nop",
            "nop settings apply only to provider nop",
        ),
        ("not-yaml.yaml", "", "not valid YAML"),
        (
            "version-patch.yaml",
            "Cluster/patch-version: spec.version",
            r#"Invalid value: "1.36.2""#,
        ),
    ];
    let outcome = offline(&["e2e/testdata/invalid"]);
    assert_eq!(outcome.code, Some(1), "stderr:\n{}", outcome.stderr);
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per mistake:\n{}",
        outcome.stdout
    );
    for (line, (file, object_and_field, fragment)) in lines.iter().zip(expected) {
        let prefix = match object_and_field {
            "" => format!("e2e/testdata/invalid/{file}: "),
            _ => format!("e2e/testdata/invalid/{file}: {object_and_field}: "),
        };
        assert!(
            line.starts_with(&prefix) && line.contains(fragment),
            "expected `{prefix}...{fragment}...`, got `{line}`"
        );
    }
    assert!(
        outcome
            .stderr
            .contains("validate: 6 documents in 7 files, 7 errors"),
        "summary: {}",
        outcome.stderr
    );
}

/// The server's lines about `file` in `stdout`.
fn lines_about<'a>(stdout: &'a str, file: &str) -> Vec<&'a str> {
    let prefix = format!("e2e/testdata/invalid/{file}: ");
    stdout.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[test]
fn the_server_accepts_the_examples_and_refuses_the_mistakes() {
    let kubeconfig = shared().kubeconfig_path();
    apply_generated(kubeconfig, &["crds"]);
    kubectl(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
    );

    // The Clusters' namespace does not exist yet, but the same directory
    // creates it: the dry run must not need it.
    let outcome = validate(&["--server", "examples/platform"], kubeconfig);
    assert_eq!(
        (outcome.code, outcome.stdout.as_str()),
        (Some(0), ""),
        "new objects; stderr:\n{}",
        outcome.stderr
    );

    // Each mistake is found by the server too, in its own words (identical
    // wording is printed once).
    let outcome = validate(&["--server", "e2e/testdata/invalid"], kubeconfig);
    assert_eq!(outcome.code, Some(1), "stderr:\n{}", outcome.stderr);
    for (file, server_says) in [
        ("version-patch.yaml", "spec.version in body should match"),
        (
            "field-typo.yaml",
            r#"strict decoding error: unknown field "spec.nodepools""#,
        ),
        (
            "min-greater-than-max.yaml",
            "Invalid value: min must not be greater than max",
        ),
        (
            "nop-on-local.yaml",
            "Invalid value: nop settings apply only to provider nop",
        ),
    ] {
        let lines = lines_about(&outcome.stdout, file);
        assert!(
            lines.len() == 2 && lines[1].contains(server_says),
            "{file}: offline, then the server saying `{server_says}`:\n{}",
            outcome.stdout
        );
    }

    // Objects that exist are checked by a dry-run apply instead.
    let platform = workspace_root().join("examples/platform");
    for path in [platform.join("namespaces.yaml"), platform] {
        let path = path.to_str().unwrap();
        kubectl(
            kubeconfig,
            &["apply", "--server-side", "--recursive", "-f", path],
        );
    }
    let outcome = validate(&["--server", "examples/platform"], kubeconfig);
    assert_eq!(
        (outcome.code, outcome.stdout.as_str()),
        (Some(0), ""),
        "existing objects; stderr:\n{}",
        outcome.stderr
    );
    // Only the server knows the object it would change: a transition rule.
    let moved = tempfile::tempdir().unwrap();
    let file = moved.path().join("dev-1.yaml");
    let dev_1 =
        std::fs::read_to_string(workspace_root().join("examples/platform/clusters/dev-1.yaml"))
            .unwrap()
            .replace("name: local", "name: aws-prod");
    std::fs::write(&file, dev_1).unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(
        offline(&[file]).code,
        Some(0),
        "offline, the change is valid"
    );
    let outcome = validate(&["--server", file], kubeconfig);
    assert_eq!(outcome.code, Some(1), "stderr:\n{}", outcome.stderr);
    assert_eq!(
        outcome.stdout.trim_end(),
        format!(
            "{file}: Cluster/dev-1: spec.providerConfigRef: Invalid value: providerConfigRef is immutable"
        ),
    );
}
