//! Finds the binaries `scripts/install-tools` built.

use std::path::{Path, PathBuf};

use crate::Error;

/// The directory holding kube-apiserver, etcd, kwok, kubectl, helm, ...:
/// `FLEETFORGE_TOOLS_BIN` if set, else `.tools/bin` at the workspace root.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEETFORGE_TOOLS_BIN") {
        return PathBuf::from(dir);
    }
    workspace_root().join(".tools").join("bin")
}

/// The workspace root, derived from this crate's location (`crates/testenv`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testenv sits two levels below the workspace root")
        .to_path_buf()
}

/// The path of one tool, or an error telling how to build it.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingTool { path })
    }
}
