//! End-to-end test helpers: the built `fleetforge` binary and the project's
//! scripts, run the way a user runs them.

use std::path::PathBuf;
use std::process::{Command, Output};

pub use fleetforge_testenv::tools::workspace_root;

/// The `fleetforge` binary cargo built next to this test binary
/// (`scripts/test` builds it before running the tests), or `FLEETFORGE_BIN`.
pub fn fleetforge_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLEETFORGE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in <target>/<profile>/deps");
    let bin = profile_dir.join("fleetforge");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build --bins, as scripts/test does)",
        bin.display()
    );
    bin
}

/// Runs `command`, panicking with its output when it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
