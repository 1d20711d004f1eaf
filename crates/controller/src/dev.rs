//! `fleetforge dev up` / `fleetforge dev down`: the whole platform on one
//! machine. `up` starts a management control plane (kwokctl, binary
//! runtime), installs the CRDs, starts the controller in the background,
//! applies a platform directory and follows its Clusters until they are
//! Ready; `down` stops the controller and removes every local cluster and
//! the management control plane. Both are idempotent.
//!
//! `up` also starts the fleet view (`fleetforge ui`, see `dev_ui`).
//!
//! Everything lives under the fleetforge home (`FLEETFORGE_HOME`, default
//! `~/.fleetforge`): `kubeconfig`, `controller.pid`, `controller.log`,
//! `ui.pid`, `ui.log`,
//! `management/` (the control plane), `clusters/` (the local provider's
//! clusters) and `kubeconfigs/` (one per Cluster, for people).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetforge_api::environment::EnvironmentPhase;
use fleetforge_api::{Cluster, Environment, ToolInstall, condition};
use fleetforge_provider_local::kubeconfig::Access;
use fleetforge_provider_local::kwokctl::{Kwokctl, Processes};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Client, ResourceExt};

use crate::home;
use crate::manifests::{self, Manifest};

/// The management control plane's kwokctl cluster name.
const MANAGEMENT: &str = "fleetforge";
/// The field manager of what `dev up` applies.
const FIELD_MANAGER: &str = "fleetforge-dev";

/// Options of `fleetforge dev up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The directory `scripts/install-tools` fills.
    #[arg(long, env = "FLEETFORGE_TOOLS_BIN", default_value = ".tools/bin")]
    pub tools_bin: PathBuf,
    /// A platform directory (or file) to apply, such as `examples/platform`.
    #[arg(long, value_name = "PATH")]
    pub apply: Option<PathBuf>,
    /// Address of the controller's /metrics, /healthz and /readyz.
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "FLEETFORGE_METRICS_ADDR"
    )]
    pub metrics_addr: SocketAddr,
    /// Address of the fleet view (`fleetforge ui`), started with the
    /// controller.
    #[arg(long, default_value = "127.0.0.1:8090", env = "FLEETFORGE_UI_ADDR")]
    pub ui_addr: SocketAddr,
    /// How long to wait for the applied Clusters to become Ready, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Print only the summary, not each change of a Cluster's phase (the
    /// default when the CI environment variable is set).
    #[arg(long)]
    pub quiet: bool,
}

/// Options of `fleetforge dev down`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {
    /// The directory `scripts/install-tools` fills.
    #[arg(long, env = "FLEETFORGE_TOOLS_BIN", default_value = ".tools/bin")]
    pub tools_bin: PathBuf,
}

/// The files and processes of one fleetforge home.
#[derive(Debug)]
struct Home {
    dir: PathBuf,
    management: Kwokctl,
    clusters: Kwokctl,
}

impl Home {
    fn open(tools_bin: &Path) -> anyhow::Result<Self> {
        let dir = std::path::absolute(home::dir())?;
        let bin = std::path::absolute(tools_bin)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            management: Kwokctl::new(&bin, &dir.join("management"))?,
            clusters: Kwokctl::new(&bin, &dir.join("clusters"))?,
            dir,
        })
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("controller.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("controller.log")
    }

    /// The controller's pid, if the one recorded still runs.
    fn controller_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("controller").then_some(pid)
    }
}

pub(crate) fn say(message: impl std::fmt::Display) {
    eprintln!("fleetforge dev: {message}");
}

/// `fleetforge dev up`.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let home = Home::open(&args.tools_bin)?;
    let quiet = args.quiet || std::env::var_os("CI").is_some();

    if home.management.exists(MANAGEMENT) {
        match home.management.processes(MANAGEMENT) {
            Processes::Running => say("management control plane runs"),
            state => {
                say(format!(
                    "management control plane is {state:?}: starting it"
                ));
                if state == Processes::Partial {
                    home.management.stop(MANAGEMENT).await?;
                }
                home.management.start(MANAGEMENT).await?;
            }
        }
    } else {
        say(
            "starting the management control plane (etcd, kube-apiserver, kube-controller-manager)",
        );
        let started = Instant::now();
        // A quota on a kind whose CRD was installed moments before it is
        // only counted at the next full quota sync (every 5 minutes by
        // default); until then it refuses every request of that kind.
        home.management
            .create(
                MANAGEMENT,
                &[
                    "--disable",
                    "kube-scheduler",
                    "--extra-args",
                    "kube-controller-manager=resource-quota-sync-period=15s",
                ],
            )
            .await?;
        say(format!(
            "  started in {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }
    let access =
        Access::read(&home.management.kubeconfig_path(MANAGEMENT)).map_err(anyhow::Error::msg)?;
    access.forget_kubectl_cache();
    write_private(&home.kubeconfig(), &access.kubeconfig(MANAGEMENT))?;
    let client = access.client().await.map_err(anyhow::Error::msg)?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the management control plane")?;
    say(format!(
        "management control plane {} at {}",
        version.git_version, access.server
    ));

    say("installing the fleetforge CRDs");
    fleetforge_core::crds::install(&client).await?;
    // Whatever kubectl cached about this address (an earlier control plane
    // on the same port, or this one before its CRDs) is stale now.
    access.forget_kubectl_cache();
    start_controller(&home, &args)?;
    crate::dev_ui::start(&home.dir, &home.kubeconfig(), args.ui_addr)?;

    let mut clusters = Vec::new();
    if let Some(path) = &args.apply {
        say(format!("applying {}", path.display()));
        clusters = apply(&client, path).await?;
        await_clusters(&client, &clusters, Duration::from_secs(args.timeout), quiet).await?;
        await_tools(&client, Duration::from_secs(args.timeout)).await?;
        await_environments(&client, Duration::from_secs(args.timeout)).await?;
    }

    // The accounts first (a cloud one is not Ready until its Secret
    // exists, and says so), then the clusters.
    let kubectl = home.management.bin().join("kubectl");
    for args in [
        &[
            "get",
            "providerconfigs",
            "-o",
            "custom-columns=PROVIDERCONFIG:.metadata.name,PROVIDER:.spec.provider,READY:.status.conditions[?(@.type==\"Ready\")].status,MESSAGE:.status.conditions[?(@.type==\"Ready\")].message",
        ][..],
        &["get", "clusters", "--all-namespaces"][..],
        &["get", "toolinstalls", "--all-namespaces"][..],
        &["get", "environments", "--all-namespaces"][..],
    ] {
        let table = Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", home.kubeconfig())
            .output()
            .with_context(|| format!("running {}", kubectl.display()))?;
        eprintln!();
        eprint!("{}", String::from_utf8_lossy(&table.stdout));
    }
    if !clusters.is_empty() {
        eprintln!();
        eprintln!(
            "Reach each cluster with its kubeconfig (also in the Secret named by spec.writeConnectionSecretToRef):"
        );
        for path in write_cluster_kubeconfigs(&client, &home, &clusters).await? {
            eprintln!("  kubectl --kubeconfig {} get nodes", path.display());
        }
    }
    let environments = write_environment_kubeconfigs(&client, &home).await?;
    if !environments.is_empty() {
        eprintln!();
        eprintln!(
            "Use each Ready environment with its kubeconfig; request more with `fleetforge env request NAME -n platform --profile dev --ttl 1h`:"
        );
        for path in environments {
            eprintln!(
                "  kubectl --kubeconfig {} get toolinstalls,nodes",
                path.display()
            );
        }
    }
    eprintln!();
    eprintln!(
        "The controller logs to {}; stop everything with `fleetforge dev down` (scripts/demo down).",
        home.log_file().display()
    );
    println!("export KUBECONFIG={}", home.kubeconfig().display());
    say(format!(
        "the fleet view is at http://{}/ (log {})",
        args.ui_addr,
        crate::dev_ui::log_file(&home.dir).display()
    ));
    Ok(())
}

/// `fleetforge dev down`.
pub async fn down(args: DownArgs) -> anyhow::Result<()> {
    let home = Home::open(&args.tools_bin)?;
    crate::dev_ui::stop(&home.dir)?;
    stop_controller(&home)?;
    for name in home.clusters.clusters() {
        say(format!("deleting local cluster {name}"));
        home.clusters.delete(&name).await?;
    }
    remove_all(&home.dir.join("clusters"))?;
    remove_all(&home.dir.join("kubeconfigs"))?;
    if home.management.exists(MANAGEMENT) {
        say("deleting the management control plane");
        home.management.delete(MANAGEMENT).await?;
    }
    remove_all(&home.dir.join("management"))?;
    match std::fs::remove_file(home.kubeconfig()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    say("stopped");
    Ok(())
}

fn remove_all(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("removing {}", path.display())))
        }
        _ => Ok(()),
    }
}

pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn start_controller(home: &Home, args: &UpArgs) -> anyhow::Result<()> {
    if let Some(pid) = home.controller_pid() {
        if runs_this_binary(pid) {
            say(format!("controller runs (pid {pid})"));
            return Ok(());
        }
        // Rebuilt since it started: run the new code.
        say(format!(
            "controller (pid {pid}) runs an older build: restarting it"
        ));
        stop_controller(home)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.log_file())?;
    let exe = std::env::current_exe().context("finding the fleetforge binary")?;
    let mut child = Command::new(exe)
        .arg("controller")
        // The only controller of this management plane: without a Lease
        // to lose it keeps running through an API server that is away for
        // a while (a laptop suspend, a restart of the plane), where a
        // leader would exit and, detached, nothing would restart it.
        .arg("--leader-elect=false")
        .arg("--metrics-addr")
        .arg(args.metrics_addr.to_string())
        .arg("--tools-bin")
        .arg(home.management.bin())
        .arg("--local-work-dir")
        .arg(home.dir.join("clusters"))
        // Relative chart paths in the applied platform repo are relative
        // to it.
        .arg("--charts-dir")
        .arg(
            args.apply
                .as_deref()
                .map(|p| {
                    if p.is_dir() {
                        p.to_path_buf()
                    } else {
                        p.parent().unwrap_or(p).to_path_buf()
                    }
                })
                .unwrap_or_else(|| PathBuf::from(".")),
        )
        .env("KUBECONFIG", home.kubeconfig())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal does not stop it.
        .process_group(0)
        .spawn()
        .context("starting the controller")?;
    let pid = child.id();
    std::fs::write(home.pid_file(), format!("{pid}\n"))?;
    say(format!(
        "starting the controller without leader election, as the only one (pid {pid}, log {}, metrics http://{}/metrics)",
        home.log_file().display(),
        args.metrics_addr
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http_ok(args.metrics_addr, "/readyz") {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the controller exited ({status}); see {}",
                home.log_file().display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the controller did not become ready in 30s; see {}",
                home.log_file().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether process `pid` runs the same executable as this process (a
/// rebuilt binary replaces the file, so the old process's link reads
/// `... (deleted)`).
pub(crate) fn runs_this_binary(pid: u32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe"));
    let ours = std::fs::read_link("/proc/self/exe");
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
}

fn stop_controller(home: &Home) -> anyhow::Result<()> {
    let Some(pid) = home.controller_pid() else {
        let _ = std::fs::remove_file(home.pid_file());
        return Ok(());
    };
    say(format!("stopping the controller (pid {pid})"));
    signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    while home.controller_pid().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if home.controller_pid().is_some() {
        signal(pid, "KILL");
    }
    std::fs::remove_file(home.pid_file())?;
    Ok(())
}

pub(crate) fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// A plain HTTP/1.0 GET on loopback answering 200.
pub(crate) fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// Applies every manifest under `path` (server-side apply, Namespaces and
/// ProviderConfigs first) and returns the Clusters among them.
async fn apply(client: &Client, path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let (mut manifests, errors) = manifests::load(path);
    if let Some(error) = errors.first() {
        bail!("{error}");
    }
    manifests.sort_by_key(|m| match m.kind() {
        "Namespace" => 0,
        "ProviderConfig" => 1,
        _ => 2,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut resources: BTreeMap<String, (ApiResource, Scope)> = BTreeMap::new();
    let mut clusters = Vec::new();
    for manifest in &manifests {
        let (resource, scope) = match resources.get(manifest.api_version()) {
            Some(found) if found.0.kind == manifest.kind() => found.clone(),
            _ => {
                let found = resolve(client, manifest).await?;
                resources.insert(manifest.api_version().to_string(), found.clone());
                found
            }
        };
        let namespace = manifest.namespace().unwrap_or("default");
        let api: Api<DynamicObject> = match scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(manifest.name(), &params, &Patch::Apply(&manifest.value))
            .await
            .with_context(|| format!("{}: {manifest}", manifest.file.display()))?;
        if manifest.kind() == "Cluster" && manifest.api_version().starts_with("fleetforge.dev/") {
            clusters.push((namespace.to_string(), manifest.name().to_string()));
        }
    }
    say(format!("  applied {} objects", manifests.len()));
    Ok(clusters)
}

async fn resolve(client: &Client, manifest: &Manifest) -> anyhow::Result<(ApiResource, Scope)> {
    let (group, version) = match manifest.api_version().split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", manifest.api_version()),
    };
    let gvk = GroupVersionKind::gvk(group, version, manifest.kind());
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| {
            format!(
                "{}: {manifest}: the API server does not serve {}",
                manifest.file.display(),
                manifest.api_version()
            )
        })?;
    Ok((resource, capabilities.scope))
}

/// Follows the Clusters until every one is Ready, printing each change of
/// phase (unless `quiet`); fails after `timeout` naming those not Ready.
async fn await_clusters(
    client: &Client,
    wanted: &[(String, String)],
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    say(format!(
        "waiting for {} clusters to become Ready (up to {}s)",
        wanted.len(),
        timeout.as_secs()
    ));
    let started = Instant::now();
    let api: Api<Cluster> = Api::all(client.clone());
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let list = api.list(&ListParams::default()).await?;
        let mut waiting = Vec::new();
        for (namespace, name) in wanted {
            let key = format!("{namespace}/{name}");
            let found = list
                .items
                .iter()
                .find(|c| c.namespace().as_deref() == Some(namespace) && &c.name_any() == name);
            let (ready, line) = match found {
                Some(cluster) => describe(cluster),
                None => (false, "not found".to_string()),
            };
            if !ready {
                waiting.push(format!("{key}: {line}"));
            }
            if shown.get(&key) != Some(&line) {
                if !quiet {
                    say(format!(
                        "  [{:>5.1}s] {key}: {line}",
                        started.elapsed().as_secs_f64()
                    ));
                }
                shown.insert(key, line);
            }
        }
        if waiting.is_empty() {
            say(format!(
                "all {} clusters Ready after {:.1}s",
                wanted.len(),
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "not Ready after {}s:\n  {}",
                timeout.as_secs(),
                waiting.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until every Cluster with a profile has its ToolInstall and every
/// ToolInstall is Ready, or one fails (its status says why).
async fn await_tools(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let clusters: Api<Cluster> = Api::all(client.clone());
    let installs: Api<ToolInstall> = Api::all(client.clone());
    let mut announced = false;
    loop {
        let profiled: Vec<(String, String)> = clusters
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|c| c.spec.profile.is_some())
            .map(|c| {
                (
                    c.namespace().unwrap_or_default(),
                    fleetforge_tools::profile::install_name(&c.name_any()),
                )
            })
            .collect();
        let list = installs.list(&ListParams::default()).await?.items;
        if list.is_empty() && profiled.is_empty() {
            return Ok(());
        }
        if !announced {
            say(format!(
                "waiting for tools: {} ToolInstalls",
                list.len().max(profiled.len())
            ));
            announced = true;
        }
        let state = |ti: &ToolInstall, type_: &str| {
            ti.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
                .map(|c| c.status == "True")
        };
        let all_created = profiled.iter().all(|(namespace, name)| {
            list.iter()
                .any(|ti| ti.namespace().as_deref() == Some(namespace) && &ti.name_any() == name)
        });
        let settled = list.iter().all(|ti| {
            state(ti, condition::READY) == Some(true) || state(ti, condition::SYNCED) == Some(false)
        });
        if all_created && settled {
            say(format!(
                "tools settled after {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > timeout {
            say("tools are still on their way; see `kubectl get toolinstalls -A`");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until every Environment is Ready (or Failed), saying how each
/// goes; one that is not there in time is left to the user, not an error.
async fn await_environments(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let environments: Api<Environment> = Api::all(client.clone());
    let started = Instant::now();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let list = environments.list(&ListParams::default()).await?.items;
        if list.is_empty() {
            return Ok(());
        }
        let mut settled = true;
        for env in &list {
            let key = format!("{}/{}", env.namespace().unwrap_or_default(), env.name_any());
            let status = env.status.clone().unwrap_or_default();
            let phase = status.phase.unwrap_or_default();
            settled &= matches!(phase, EnvironmentPhase::Ready | EnvironmentPhase::Failed);
            let message =
                fleetforge_core::conditions::message(&status.conditions, condition::READY)
                    .unwrap_or_default();
            let line = format!("{phase:?} ({message})");
            if last.get(&key) != Some(&line) {
                say(format!(
                    "  [{:5.1}s] environment {key}: {line}",
                    started.elapsed().as_secs_f64()
                ));
                last.insert(key, line);
            }
        }
        if settled {
            return Ok(());
        }
        if started.elapsed() > timeout {
            say("environments are still on their way; see `kubectl get environments -A`");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Writes each Ready Environment's kubeconfig under `kubeconfigs/` in the
/// home (`env.<namespace>.<name>.yaml`, as `fleetforge env request` does).
async fn write_environment_kubeconfigs(
    client: &Client,
    home: &Home,
) -> anyhow::Result<Vec<PathBuf>> {
    let dir = home.dir.join("kubeconfigs");
    std::fs::create_dir_all(&dir)?;
    let mut written = Vec::new();
    for env in Api::<Environment>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let status = env.status.clone().unwrap_or_default();
        let (Some(EnvironmentPhase::Ready), Some(secret)) =
            (status.phase, status.kubeconfig_secret_ref)
        else {
            continue;
        };
        let namespace = env.namespace().unwrap_or_default();
        let found = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get(&secret.name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{}", secret.name))?;
        let Some(value) = found.data.as_ref().and_then(|d| d.get("value")) else {
            continue;
        };
        let path = dir.join(format!("env.{namespace}.{}.yaml", env.name_any()));
        write_private(&path, &String::from_utf8_lossy(&value.0))?;
        written.push(path);
    }
    Ok(written)
}

/// Whether the Cluster is Ready, and a line saying where it is.
fn describe(cluster: &Cluster) -> (bool, String) {
    let Some(status) = &cluster.status else {
        return (false, "Pending".to_string());
    };
    let phase = status
        .phase
        .map_or_else(|| "Pending".to_string(), |p| format!("{p:?}"));
    let find = |kind: &str| status.conditions.iter().find(|c| c.type_ == kind);
    let ready = find(condition::READY).is_some_and(|c| c.status == "True");
    let detail = match find(condition::SYNCED) {
        Some(synced) if synced.status == "False" => {
            format!("{} ({}: {})", phase, synced.reason, synced.message)
        }
        _ => match find(condition::READY) {
            Some(c) => format!("{phase} ({})", c.message),
            None => phase,
        },
    };
    (ready, detail)
}

/// Writes each Cluster's kubeconfig (from its connection Secret) under
/// `kubeconfigs/` in the home, readable only by this user.
async fn write_cluster_kubeconfigs(
    client: &Client,
    home: &Home,
    clusters: &[(String, String)],
) -> anyhow::Result<Vec<PathBuf>> {
    let dir = home.dir.join("kubeconfigs");
    std::fs::create_dir_all(&dir)?;
    let mut written = Vec::new();
    for (namespace, name) in clusters {
        let cluster = Api::<Cluster>::namespaced(client.clone(), namespace)
            .get(name)
            .await?;
        let secret_name = cluster.spec.connection_secret_name(name);
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(&secret_name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{secret_name}"))?;
        let Some(value) = secret.data.as_ref().and_then(|d| d.get("value")) else {
            bail!("Secret {namespace}/{secret_name} has no key `value`");
        };
        let path = dir.join(format!("{namespace}.{name}.yaml"));
        write_private(&path, &String::from_utf8_lossy(&value.0))?;
        written.push(path);
    }
    Ok(written)
}
