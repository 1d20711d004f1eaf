//! The Helm chart (`deploy/chart/fleetforge`), rendered and installed with
//! the pinned helm, and the controller run the way its Deployment runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

use fleetforge_testenv::tools;
use serde_json::Value;

use crate::workspace_root;

/// The namespace the tests install the release into.
pub const RELEASE_NAMESPACE: &str = "fleetforge-system";

/// The chart's directory.
pub fn chart() -> PathBuf {
    workspace_root().join("deploy/chart/fleetforge")
}

/// Runs the pinned helm with its own cache and config directories.
pub fn helm(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join("fleetforge-e2e-chart-helm");
    Command::new(tools::binary("helm").expect("helm is built"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs")
}

/// `helm template` with `extra` arguments: the rendered objects.
pub fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "fleetforge",
        chart.to_str().unwrap(),
        "--namespace",
        RELEASE_NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let output = helm(&args);
    assert!(
        output.status.success(),
        "helm template {extra:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(Value::is_object)
        .collect()
}

/// The rendered objects of `kind`.
pub fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The chart's Deployment arguments, with what a pod would not have
/// replaced for a process on this machine: the metrics address (a free
/// loopback port) and the log format (human, for the test's log).
pub fn deployment_args(objects: &[Value], port: u16) -> Vec<String> {
    let container = &find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| !a.starts_with("--log-format"))
        .map(|a| {
            if a.starts_with("--metrics-addr=") {
                format!("--metrics-addr=127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect()
}
