//! `scripts/demo` as a user runs it: it leaves a working management control
//! plane with the CRDs and a running controller, reachable through the
//! printed KUBECONFIG; a second run is idempotent; `scripts/demo down` stops
//! every process.

use std::process::Command;
use std::time::{Duration, Instant};

use fleetforge_e2e::{fleetforge_bin, run_ok, workspace_root};
use fleetforge_testenv::{free_port, pids_mentioning, tools};

fn demo(home: &std::path::Path, port: u16, args: &[&str]) -> String {
    let output = run_ok(
        Command::new(workspace_root().join("scripts/demo"))
            .args(args)
            .env("FLEETFORGE_HOME", home)
            .env("FLEETFORGE_BIN", fleetforge_bin())
            .env("FLEETFORGE_METRICS_ADDR", format!("127.0.0.1:{port}")),
    );
    String::from_utf8(output.stdout).unwrap()
}

fn kubeconfig_from(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("export KUBECONFIG="))
        .unwrap_or_else(|| panic!("no `export KUBECONFIG=` line in:\n{stdout}"))
        .to_string()
}

#[test]
fn demo_starts_a_reachable_control_plane_and_down_stops_it() {
    let home = tempfile::tempdir().unwrap();
    let home_text = home.path().to_string_lossy().to_string();
    let port = free_port().unwrap();

    let kubeconfig = kubeconfig_from(&demo(home.path(), port, &[]));
    assert!(kubeconfig.starts_with(&home_text), "{kubeconfig}");
    let kubectl = tools::binary("kubectl").unwrap();
    let version = run_ok(
        Command::new(&kubectl)
            .args(["version", "-o", "json"])
            .env("KUBECONFIG", &kubeconfig),
    );
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.36.3");
    assert!(!pids_mentioning(&home_text).is_empty());
    // The CRDs are installed and the controller runs.
    let explained = run_ok(
        Command::new(&kubectl)
            .args(["explain", "cluster.spec.nodePools"])
            .env("KUBECONFIG", &kubeconfig),
    );
    assert!(String::from_utf8_lossy(&explained.stdout).contains("machineType"));
    let pid: u32 = std::fs::read_to_string(home.path().join("controller.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Running it again keeps the same control plane and controller.
    assert_eq!(kubeconfig_from(&demo(home.path(), port, &[])), kubeconfig);
    run_ok(
        Command::new(&kubectl)
            .args(["get", "--raw", "/readyz"])
            .env("KUBECONFIG", &kubeconfig),
    );
    let again: u32 = std::fs::read_to_string(home.path().join("controller.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(again, pid);

    demo(home.path(), port, &["down"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap()
                .is_empty(),
        "the controller outlived `scripts/demo down`"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pids_mentioning(&home_text).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes left after `scripts/demo down`: {:?}",
            pids_mentioning(&home_text)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
