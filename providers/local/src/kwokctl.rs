//! Drives `kwokctl` with the binary runtime: every control-plane binary is
//! given explicitly, because kwokctl downloads whatever it is not given and
//! this must work on machines with no internet access.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The binaries a local cluster is made of, all expected in one directory
/// (the `.tools/bin` that `scripts/install-tools` fills).
const REQUIRED: [&str; 7] = [
    "kwokctl",
    "kwok",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// A kwokctl failure, with the end of its output.
#[derive(Debug, thiserror::Error)]
pub enum KwokctlError {
    /// A binary is missing from the tools directory.
    #[error(
        "{path} is missing: run scripts/install-tools (or point --tools-bin at the directory it fills)"
    )]
    MissingTool {
        /// The missing file.
        path: PathBuf,
    },
    /// kwokctl could not be started.
    #[error("running {what}: {source}")]
    Spawn {
        /// The command.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// kwokctl exited with an error.
    #[error("{what} failed ({status}): {output}")]
    Failed {
        /// The command.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its output.
        output: String,
    },
    /// kwokctl did not finish in time.
    #[error("{what} did not finish within {timeout:?}")]
    Timeout {
        /// The command.
        what: String,
        /// The limit.
        timeout: Duration,
    },
}

/// Whether a cluster's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processes {
    /// Every component kwokctl started is alive.
    Running,
    /// Some components are alive, some are not.
    Partial,
    /// None is alive.
    Stopped,
}

/// The control-plane components whose binaries a Kubernetes version
/// brings (etcd, kwok and kubectl are shared by every version).
const VERSIONED: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// A Kubernetes version a cluster can run: its full name (`v1.35.4`) and
/// the directory of its control-plane binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeBuild {
    /// As the API server reports it, such as `v1.35.4`.
    pub version: String,
    /// Where its kube-apiserver, kube-controller-manager and
    /// kube-scheduler are.
    pub dir: PathBuf,
}

/// kwokctl pointed at one tools directory and one work directory.
#[derive(Debug, Clone)]
pub struct Kwokctl {
    bin: PathBuf,
    work_dir: PathBuf,
    kube_version: String,
    /// Every Kubernetes version clusters can run: the tools directory's,
    /// and each under `<tools directory>/../versions/<major.minor>/`.
    builds: Vec<KubeBuild>,
}

impl Kwokctl {
    /// kwokctl using the binaries in `bin`, keeping clusters under
    /// `work_dir`. Fails when a binary is missing.
    pub fn new(bin: &Path, work_dir: &Path) -> Result<Self, KwokctlError> {
        for name in REQUIRED {
            let path = bin.join(name);
            if !path.is_file() {
                return Err(KwokctlError::MissingTool { path });
            }
        }
        let default_version = kube_version(&bin.join("kube-apiserver"))?;
        let mut builds = vec![KubeBuild {
            version: default_version.clone(),
            dir: bin.to_path_buf(),
        }];
        let versions = bin.parent().map(|p| p.join("versions"));
        if let Some(Ok(entries)) = versions.map(std::fs::read_dir) {
            let mut dirs: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
            dirs.sort();
            for dir in dirs {
                if VERSIONED.iter().all(|name| dir.join(name).is_file()) {
                    let version = kube_version(&dir.join("kube-apiserver"))?;
                    if builds.iter().all(|b| b.version != version) {
                        builds.push(KubeBuild { version, dir });
                    }
                }
            }
        }
        Ok(Self {
            bin: bin.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
            kube_version: default_version,
            builds,
        })
    }

    /// The Kubernetes version of the built binaries, such as `v1.36.3`:
    /// what a cluster runs unless asked for another.
    pub fn kube_version(&self) -> &str {
        &self.kube_version
    }

    /// Every Kubernetes version clusters can run, the default first.
    pub fn builds(&self) -> &[KubeBuild] {
        &self.builds
    }

    /// The Kubernetes version cluster `name` was last started with, as
    /// kwokctl recorded it (`kubeVersion` in its `kwok.yaml`).
    pub fn version_of(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.cluster_dir(name).join("kwok.yaml")).ok()?;
        text.lines().find_map(|line| {
            line.trim()
                .strip_prefix("kubeVersion:")
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    }

    /// The directory holding the binaries.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The directory kwokctl keeps cluster `name` in.
    pub fn cluster_dir(&self, name: &str) -> PathBuf {
        self.work_dir.join("clusters").join(name)
    }

    /// Whether kwokctl knows cluster `name` (created, running or not).
    pub fn exists(&self, name: &str) -> bool {
        self.cluster_dir(name).join("kwok.yaml").is_file()
    }

    /// The clusters under the work directory.
    pub fn clusters(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.work_dir.join("clusters")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| self.exists(name))
            .collect();
        names.sort();
        names
    }

    /// Whether the processes of cluster `name` are alive, by the pid files
    /// kwokctl keeps.
    pub fn processes(&self, name: &str) -> Processes {
        let pids = self.pids(name);
        let alive = pids.iter().filter(|pid| process_alive(**pid)).count();
        match alive {
            0 => Processes::Stopped,
            n if n == pids.len() => Processes::Running,
            _ => Processes::Partial,
        }
    }

    /// The process ids kwokctl recorded for cluster `name`.
    pub fn pids(&self, name: &str) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.cluster_dir(name).join("pids")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|text| text.trim().parse().ok())
            .collect()
    }

    /// Processes still running from cluster `name`'s directory, pid file
    /// or not: `kwokctl stop` removes the pid files and signals the
    /// processes, but does not wait for them to exit.
    pub fn lingering(&self, name: &str) -> Vec<u32> {
        let dir = format!("{}/", self.cluster_dir(name).display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != std::process::id() && process_alive(*pid))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    // kwokctl itself names the work directory, not the
                    // cluster's; only the cluster's own processes match.
                    cmdline.contains(&dir) && !cmdline.contains("kwokctl")
                })
            })
            .collect()
    }

    /// Waits up to 15 s for what is left of a stopped cluster to exit,
    /// then kills it: a process still holding its ports or its etcd data
    /// would keep the cluster from starting again.
    async fn await_exit(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.lingering(name);
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(cluster = name, pids = ?left, "killing processes that outlived a stop");
                for pid in left {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The kubeconfig kwokctl wrote for cluster `name` (it refers to
    /// certificate files by path).
    pub fn kubeconfig_path(&self, name: &str) -> PathBuf {
        self.cluster_dir(name).join("kubeconfig.yaml")
    }

    /// Creates and starts cluster `name` and waits until it serves.
    /// `extra` are further `create cluster` flags.
    ///
    /// kwokctl picks each component's port by probing for one nobody
    /// listens on, so two clusters starting at once (in this process or
    /// another, in any work directory) can pick the same ports. Starts are
    /// therefore taken one at a time on the whole host, under a file lock.
    pub async fn create(&self, name: &str, extra: &[&str]) -> Result<(), KwokctlError> {
        let build = self.builds[0].clone();
        self.create_at(name, &build, extra).await
    }

    /// As [`Kwokctl::create`], running the control plane of `build`.
    pub async fn create_at(
        &self,
        name: &str,
        build: &KubeBuild,
        extra: &[&str],
    ) -> Result<(), KwokctlError> {
        // `--kubeconfig=` keeps kwokctl from adding the cluster to (and
        // switching the current context of) $KUBECONFIG or ~/.kube/config.
        let mut args = vec![
            "create",
            "cluster",
            "--name",
            name,
            "--wait",
            "2m",
            "--kubeconfig=",
        ];
        args.extend_from_slice(extra);
        let _lock = host_lock().await?;
        self.run_at(build, &args, Duration::from_secs(180)).await
    }

    /// Upgrades (or changes) the control plane of cluster `name` to
    /// `build`, for real: the cluster stops, its kube-apiserver,
    /// kube-controller-manager and kube-scheduler become `build`'s, and it
    /// starts again on the same etcd data. kwokctl runs each component
    /// through a link in the cluster's `bin/` and records the version in
    /// its `kwok.yaml`: both are changed while the cluster is stopped.
    pub async fn upgrade(&self, name: &str, build: &KubeBuild) -> Result<(), KwokctlError> {
        let before = self.version_of(name).unwrap_or_default();
        self.stop(name).await?;
        self.await_exit(name).await;
        let dir = self.cluster_dir(name);
        let failed = |what: String| {
            move |source: std::io::Error| KwokctlError::Spawn {
                what: what.clone(),
                source,
            }
        };
        for component in VERSIONED {
            let link = dir.join("bin").join(component);
            if std::fs::symlink_metadata(&link).is_err() {
                continue;
            }
            std::fs::remove_file(&link).map_err(failed(format!("removing {}", link.display())))?;
            std::os::unix::fs::symlink(build.dir.join(component), &link)
                .map_err(failed(format!("linking {}", link.display())))?;
        }
        let config = dir.join("kwok.yaml");
        let text = std::fs::read_to_string(&config)
            .map_err(failed(format!("reading {}", config.display())))?;
        let text = retarget(&text, &before, &build.version);
        std::fs::write(&config, text).map_err(failed(format!("writing {}", config.display())))?;
        self.start(name).await
    }

    /// Starts the processes of a stopped cluster `name` (one start at a
    /// time on the host, as for [`Kwokctl::create`]).
    pub async fn start(&self, name: &str) -> Result<(), KwokctlError> {
        self.await_exit(name).await;
        let _lock = host_lock().await?;
        self.run(
            &["start", "cluster", "--name", name, "--wait", "2m"],
            Duration::from_secs(180),
        )
        .await
    }

    /// Stops the processes of cluster `name`, keeping its data.
    pub async fn stop(&self, name: &str) -> Result<(), KwokctlError> {
        self.run(
            &["stop", "cluster", "--name", name],
            Duration::from_secs(60),
        )
        .await
    }

    /// Stops cluster `name` and removes its data. Deleting a cluster that
    /// does not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), KwokctlError> {
        if !self.cluster_dir(name).exists() {
            return Ok(());
        }
        // kwokctl removes the cluster from the kubeconfig it is given
        // (default ~/.kube/config) and refuses an empty path: give it one
        // of its own, which create never wrote to.
        let unused = self.work_dir.join("kubeconfig.unused");
        let unused = format!("--kubeconfig={}", unused.display());
        self.run(
            &["delete", "cluster", "--name", name, &unused],
            Duration::from_secs(60),
        )
        .await?;
        // A half-created cluster can leave a directory kwokctl does not
        // recognise; it is ours, so remove it too.
        match tokio::fs::remove_dir_all(self.cluster_dir(name)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(KwokctlError::Spawn {
                what: format!("removing {}", self.cluster_dir(name).display()),
                source,
            }),
        }
    }

    async fn run(&self, args: &[&str], timeout: Duration) -> Result<(), KwokctlError> {
        let build = self.builds[0].clone();
        self.run_at(&build, args, timeout).await
    }

    async fn run_at(
        &self,
        build: &KubeBuild,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(), KwokctlError> {
        let what = format!("kwokctl {}", args.join(" "));
        let mut command = self.command(build);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| KwokctlError::Spawn {
            what: what.clone(),
            source,
        })?;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| KwokctlError::Timeout {
                what: what.clone(),
                timeout,
            })?
            .map_err(|source| KwokctlError::Spawn {
                what: what.clone(),
                source,
            })?;
        if output.status.success() {
            tracing::debug!(command = %what, "kwokctl done");
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Err(KwokctlError::Failed {
            what,
            status: output.status,
            output: last_lines(&text, 5),
        })
    }

    /// kwokctl with its environment: every binary (the control plane of
    /// `build`), the version they are, the binary runtime, and the work
    /// directory.
    fn command(&self, build: &KubeBuild) -> Command {
        let mut command = Command::new(self.bin.join("kwokctl"));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.bin.clone()];
        paths.extend(std::env::split_paths(&path));
        command
            .env("KWOK_WORKDIR", &self.work_dir)
            .env("KWOK_RUNTIME", "binary")
            .env("KWOK_KUBE_VERSION", &build.version)
            .env(
                "KWOK_KUBE_APISERVER_BINARY",
                build.dir.join("kube-apiserver"),
            )
            .env(
                "KWOK_KUBE_CONTROLLER_MANAGER_BINARY",
                build.dir.join("kube-controller-manager"),
            )
            .env(
                "KWOK_KUBE_SCHEDULER_BINARY",
                build.dir.join("kube-scheduler"),
            )
            .env("KWOK_KUBECTL_BINARY", self.bin.join("kubectl"))
            .env("KWOK_ETCD_BINARY", self.bin.join("etcd"))
            .env("KWOK_CONTROLLER_BINARY", self.bin.join("kwok"))
            .env(
                "PATH",
                std::env::join_paths(paths).unwrap_or_else(|_| path.clone()),
            );
        command
    }
}

/// Takes the host-wide lock that serialises cluster starts; released when
/// the returned file is dropped.
async fn host_lock() -> Result<std::fs::File, KwokctlError> {
    let path = std::env::temp_dir().join("fleetforge-kwokctl-start.lock");
    let what = format!("locking {}", path.display());
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| KwokctlError::Spawn {
        what: what.clone(),
        source: std::io::Error::other(e),
    })?;
    locked.map_err(|source| KwokctlError::Spawn { what, source })
}

/// A cluster's `kwok.yaml` at another Kubernetes version: its
/// `kubeVersion` and the `version` of its versioned components.
fn retarget(config: &str, from: &str, to: &str) -> String {
    let (from_bare, to_bare) = (from.trim_start_matches('v'), to.trim_start_matches('v'));
    let mut component: Option<&str> = None;
    let mut out = String::with_capacity(config.len());
    // A component's `name:` may come after its `version:` (kwokctl writes
    // keys in order), so each component's lines are gathered first.
    let mut pending: Vec<String> = Vec::new();
    let flush = |pending: &mut Vec<String>, component: Option<&str>, out: &mut String| {
        let versioned = component.is_some_and(|c| VERSIONED.contains(&c));
        for line in pending.drain(..) {
            let trimmed = line.trim_start();
            if versioned && trimmed == format!("version: {from_bare}") {
                let indent = &line[..line.len() - trimmed.len()];
                out.push_str(&format!("{indent}version: {to_bare}\n"));
            } else {
                out.push_str(&line);
                out.push('\n');
            }
        }
    };
    for line in config.lines() {
        let trimmed = line.trim_start();
        // A new component (a list item at the top), or another top-level
        // key or document: what came before is complete.
        if line.len() == trimmed.len() && !trimmed.is_empty() {
            flush(&mut pending, component, &mut out);
            component = None;
        }
        if let Some(name) = trimmed.strip_prefix("name: ")
            && line.starts_with("  ")
            && !line.starts_with("   ")
        {
            component = VERSIONED.iter().copied().find(|c| *c == name.trim());
        }
        if trimmed.starts_with("kubeVersion:") && !from.is_empty() {
            let indent = &line[..line.len() - trimmed.len()];
            pending.push(format!("{indent}kubeVersion: {to}"));
            continue;
        }
        pending.push(line.to_string());
    }
    flush(&mut pending, component, &mut out);
    out
}

/// `kube-apiserver --version` prints `Kubernetes v1.36.3`.
fn kube_version(apiserver: &Path) -> Result<String, KwokctlError> {
    let what = format!("{} --version", apiserver.display());
    let output = std::process::Command::new(apiserver)
        .arg("--version")
        .output()
        .map_err(|source| KwokctlError::Spawn {
            what: what.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.split_whitespace().nth(1) {
        Some(version) if output.status.success() => Ok(version.to_string()),
        _ => Err(KwokctlError::Failed {
            what,
            status: output.status,
            output: last_lines(&text, 2),
        }),
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) is not alive.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }

    #[test]
    fn a_config_is_retargeted_to_another_version_for_its_control_plane_only() {
        let config = "components:\n- args:\n  - --a\n  binary: /c/bin/etcd\n  name: etcd\n  version: 3.6.8\n- args:\n  - --b\n  binary: /c/bin/kube-apiserver\n  name: kube-apiserver\n  version: 1.35.4\n- binary: /c/bin/kwok-controller\n  name: kwok-controller\n  version: 0.8.0\noptions:\n  kubeVersion: v1.35.4\n  runtime: binary\n";
        let out = retarget(config, "v1.35.4", "v1.36.3");
        assert!(
            out.contains("  name: kube-apiserver\n  version: 1.36.3\n"),
            "{out}"
        );
        assert!(out.contains("  name: etcd\n  version: 3.6.8\n"), "{out}");
        assert!(out.contains("  kubeVersion: v1.36.3\n"), "{out}");
        assert!(out.contains("version: 0.8.0"), "{out}");
        assert_eq!(out.lines().count(), config.lines().count());
    }

    #[test]
    fn missing_binaries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = Kwokctl::new(dir.path(), dir.path()).unwrap_err();
        assert!(error.to_string().contains("kwokctl is missing"), "{error}");
    }
}
