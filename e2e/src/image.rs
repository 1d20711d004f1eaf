//! The container image `scripts/image` builds, handled the way a cluster
//! would without a container runtime: pushed to and pulled from a real
//! registry (`crane registry serve` on loopback), unpacked from its layers,
//! and its entrypoint run in a private mount and PID namespace with a
//! read-only root, a `/tmp` emptyDir and the service-account files mounted
//! where the kubelet puts them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleetforge_testenv::OwnedProcess;
use serde_json::Value;

use crate::{run_ok, workspace_root};

/// Where Kubernetes mounts a pod's service-account token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// The user the image runs as.
pub const IMAGE_USER: &str = "65532:65532";

/// crane, as scripts/install-tools builds it.
pub fn crane() -> PathBuf {
    let path = workspace_root().join(".tools/crane/crane");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-tools",
        path.display()
    );
    path
}

/// A registry on a loopback port, in memory, stopped when dropped.
#[derive(Debug)]
pub struct Registry {
    _process: OwnedProcess,
    /// `127.0.0.1:<port>`.
    pub host: String,
}

impl Registry {
    /// Starts `crane registry serve` on a free loopback port, logging to
    /// `log`, and waits until it answers.
    pub fn start(log: &Path) -> Self {
        let port = fleetforge_testenv::free_port().unwrap();
        let host = format!("127.0.0.1:{port}");
        let args = [
            "registry".to_string(),
            "serve".into(),
            "--address".into(),
            host.clone(),
        ];
        let mut process =
            OwnedProcess::spawn_with_env("crane registry", &crane(), &args, &[], log).unwrap();
        process
            .await_listening(port, Duration::from_secs(20))
            .unwrap();
        Self {
            _process: process,
            host,
        }
    }
}

/// What `scripts/image` wrote.
#[derive(Debug)]
pub struct Built {
    /// Its output directory (`rootfs/`, `Dockerfile`, `oci/`, `digest`).
    pub out: PathBuf,
    /// The image's manifest digest.
    pub digest: String,
}

/// Runs `scripts/image` on the built (debug, static) fleetforge binary,
/// into `out`, pushing to `push` when given.
pub fn build(out: &Path, push: Option<&str>) -> Built {
    let mut command = Command::new(workspace_root().join("scripts/image"));
    command
        .arg("--binary")
        .arg(crate::fleetforge_bin())
        .arg("--out")
        .arg(out);
    if let Some(reference) = push {
        command.args(["--push", reference]);
    }
    let started = Instant::now();
    let stdout = stdout_of(&mut command);
    eprintln!("scripts/image took {:?}", started.elapsed());
    Built {
        out: out.to_path_buf(),
        digest: stdout.trim().to_string(),
    }
}

/// `crane <args>` against plain-HTTP registries: its standard output.
pub fn crane_run(args: &[&str]) -> String {
    stdout_of(Command::new(crane()).arg("--insecure").args(args))
}

fn stdout_of(command: &mut Command) -> String {
    String::from_utf8(run_ok(command).stdout).expect("the output is UTF-8")
}

/// The image config (`config` of `crane config`: Entrypoint, Cmd, User,
/// Env, ...).
pub fn config(reference: &str) -> Value {
    let text = crane_run(&["config", reference]);
    let config: Value = serde_json::from_str(&text).unwrap();
    config["config"].clone()
}

/// Pulls `reference` and unpacks its layers, flattened, into `dir`;
/// returns the paths it held, sorted, directories ending in `/`.
pub fn unpack(reference: &str, dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let tar = dir.with_extension("tar");
    run_ok(
        Command::new(crane())
            .args(["--insecure", "export", reference])
            .arg(&tar),
    );
    let listing = stdout_of(Command::new("tar").arg("-tf").arg(&tar));
    run_ok(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir));
    std::fs::remove_file(&tar).unwrap();
    let mut entries: Vec<String> = listing
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/'))
        .filter(|l| !l.is_empty())
        .map(|l| {
            if dir.join(l).is_dir() {
                format!("{l}/")
            } else {
                l.to_string()
            }
        })
        .collect();
    entries.sort();
    entries
}

/// A pod's service-account volume: token, CA and namespace, readable by
/// the image's user.
pub fn service_account_files(dir: &Path, token: &str, ca: &Path, namespace: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    std::fs::copy(ca, dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("namespace"), namespace).unwrap();
}

/// Runs the image unpacked at `rootfs` as a pod would: `command` (the
/// entrypoint and arguments) as the image's user, with only `env`, under
/// a read-only root, a tmpfs `/tmp`, its own `/proc`, and `service_account`
/// bind-mounted read-only at [`SERVICE_ACCOUNT_DIR`]. It shares the host's
/// network, so `KUBERNETES_SERVICE_HOST` can be the test API server. Needs
/// root (for the namespaces and mounts); stops with the returned process:
/// the whole PID namespace goes when its first process is killed.
pub fn run_in_pod(
    name: &str,
    rootfs: &Path,
    service_account: &Path,
    command: &[String],
    env: &[(String, String)],
    log: &Path,
) -> OwnedProcess {
    assert!(
        is_root(),
        "running the image needs root (mount and PID namespaces); run the end-to-end tests as root"
    );
    // The mount points a container runtime creates.
    for dir in ["proc", "dev", SERVICE_ACCOUNT_DIR] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    // `sh` stays PID 1 of the namespace (no exec), so killing `unshare`
    // (--kill-child) takes every process in it.
    let script = r#"set -e
root=$1; account=$2; shift 2
mount --bind "$root" "$root"
mount -t tmpfs -o mode=1777,size=256m tmpfs "$root/tmp"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --bind "$account" "$root/var/run/secrets/kubernetes.io/serviceaccount"
mount -o remount,bind,ro "$root/var/run/secrets/kubernetes.io/serviceaccount"
mount -o remount,bind,ro "$root"
env -i "$@"
exit $?
"#;
    let mut args: Vec<String> = [
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "pod",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(rootfs.display().to_string());
    args.push(service_account.display().to_string());
    args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    // `env -i` clears PATH before chroot runs: it is named by its path.
    args.push(on_path("chroot").display().to_string());
    args.push(format!("--userspec={IMAGE_USER}"));
    args.push(rootfs.display().to_string());
    args.extend(command.iter().cloned());
    OwnedProcess::spawn_with_env(name, Path::new("unshare"), &args, &[], log).unwrap()
}

fn on_path(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

fn is_root() -> bool {
    stdout_of(Command::new("id").arg("-u")).trim() == "0"
}
