//! fleetforge's state directory on this machine: `FLEETFORGE_HOME`, else
//! `~/.fleetforge`. The demo keeps its kubeconfig, logs, the management
//! control plane and the local provider's clusters there.

use std::path::PathBuf;

/// The state directory.
pub fn dir() -> PathBuf {
    if let Some(home) = std::env::var_os("FLEETFORGE_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".fleetforge")
}
