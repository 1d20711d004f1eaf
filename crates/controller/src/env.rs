//! `fleetforge env`: dev environments on demand, for the people who use
//! them. `request` creates an Environment, follows it to Ready and writes
//! its kubeconfig; `list`, `extend`, `sleep`, `wake` and `delete` do what
//! they say. Every error is one line naming what is wrong.
//!
//! Defaults come from the platform: a virtual environment runs on the
//! Cluster labelled `fleetforge.dev/environments: "true"` in the namespace
//! (or `--host`), a dedicated one in the ProviderConfig so labelled (or
//! `--provider-config`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetforge_api::environment::EnvironmentPhase;
use fleetforge_api::{Cluster, Environment, ProviderConfig, ToolSet, condition};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::home;

/// Label of the Cluster that hosts virtual environments and of the
/// ProviderConfig dedicated environments are created in.
pub const DEFAULTS_LABEL: &str = "fleetforge.dev/environments";
/// Annotation `env wake` sets: the idle clock of `sleepAfter` restarts then.
pub use fleetforge_environments::WOKEN_AT;

/// Options every `fleetforge env` command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Namespace of the environments (default: the kubeconfig context's).
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
}

/// `fleetforge env` commands.
#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Request an environment, follow it to Ready and write its kubeconfig.
    Request(Box<RequestArgs>),
    /// List environments with their phase, owner and expiry.
    List,
    /// Give an environment a new time to live (counted from its creation).
    Extend {
        /// The environment.
        name: String,
        /// New time to live from creation, such as `12h`.
        #[arg(long)]
        ttl: String,
    },
    /// Put an environment to sleep: a virtual one's vcluster, or a
    /// dedicated one's node pools, scaled to zero.
    Sleep {
        /// The environment.
        name: String,
    },
    /// Wake a sleeping environment (and restart its idle clock).
    Wake {
        /// The environment.
        name: String,
    },
    /// Delete an environment and everything in it, and wait until it is gone.
    Delete {
        /// The environment.
        name: String,
    },
}

/// Options of `fleetforge env request`.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestArgs {
    /// Name of the environment.
    pub name: String,
    /// The ToolSet to install in it.
    #[arg(long)]
    pub profile: Option<String>,
    /// Time to live, such as `8h` or `30m`.
    #[arg(long, default_value = "8h")]
    pub ttl: String,
    /// Put it to sleep after this long idle (virtual environments only).
    #[arg(long)]
    pub sleep_after: Option<String>,
    /// A Cluster of its own. Without --dedicated or --virtual the platform
    /// decides: virtual when a Cluster in the namespace hosts environments,
    /// else dedicated in the labelled ProviderConfig.
    #[arg(long, conflicts_with = "virtual")]
    pub dedicated: bool,
    /// A virtual cluster, never a dedicated one.
    #[arg(long)]
    pub r#virtual: bool,
    /// Who it belongs to (default: who the API server says you are, as
    /// `kubectl auth whoami` shows; else $USER).
    #[arg(long)]
    pub owner: Option<String>,
    /// The host Cluster of a virtual environment.
    #[arg(long)]
    pub host: Option<String>,
    /// Host tools a virtual environment shares instead of installing its own.
    #[arg(long, value_delimiter = ',')]
    pub shared_tools: Vec<String>,
    /// The vcluster chart of a virtual environment: a repository URL, an
    /// `oci://` registry or a path (default: the pinned upstream chart).
    #[arg(long, requires = "chart_version")]
    pub chart: Option<String>,
    /// The version of `--chart`.
    #[arg(long, requires = "chart")]
    pub chart_version: Option<String>,
    /// The ProviderConfig of a dedicated environment.
    #[arg(long)]
    pub provider_config: Option<String>,
    /// Machine type of a dedicated environment's nodes.
    #[arg(long, default_value = "standard-2")]
    pub machine_type: String,
    /// Nodes of a dedicated environment.
    #[arg(long, default_value_t = 1)]
    pub nodes: i32,
    /// Where to write the kubeconfig (default:
    /// $FLEETFORGE_HOME/kubeconfigs/env.<namespace>.<name>.yaml).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Keep a request the per-owner maximum holds back queued instead of
    /// withdrawing it.
    #[arg(long)]
    pub queue: bool,
    /// How long to wait for Ready, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

fn say(message: impl std::fmt::Display) {
    eprintln!("fleetforge env: {message}");
}

/// Runs one `fleetforge env` command.
pub async fn run(common: Common, command: EnvCommand) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("no usable kubeconfig (set KUBECONFIG)")?;
    let namespace = common
        .namespace
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    let envs: Api<Environment> = Api::namespaced(client.clone(), &namespace);
    match command {
        EnvCommand::Request(args) => request(&client, &namespace, *args).await,
        EnvCommand::List => list(&envs).await,
        EnvCommand::Extend { name, ttl } => {
            let env = existing(&envs, &name).await?;
            let created = env
                .creation_timestamp()
                .map_or_else(Timestamp::now, |t| t.0);
            let expires = fleetforge_environments::expires_at(created, &ttl)
                .map_err(|e| anyhow::anyhow!("--ttl: {}", e.trim_start_matches("spec.ttl: ")))?;
            if expires <= Timestamp::now() {
                bail!("--ttl: {ttl} from its creation ({created}) has already run out");
            }
            patch_spec(&envs, &name, json!({"ttl": ttl})).await?;
            println!("{name} now expires at {expires}");
            Ok(())
        }
        EnvCommand::Sleep { name } => {
            existing(&envs, &name).await?;
            patch_spec(&envs, &name, json!({"sleep": true})).await?;
            follow(&envs, &name, Duration::from_secs(300), |phase| {
                phase == EnvironmentPhase::Sleeping
            })
            .await?;
            println!("{name} is asleep; `fleetforge env wake {name}` wakes it");
            Ok(())
        }
        EnvCommand::Wake { name } => {
            existing(&envs, &name).await?;
            let patch = json!({
                "metadata": {"annotations": {WOKEN_AT: Timestamp::now().to_string()}},
                "spec": {"sleep": false},
            });
            envs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            follow(&envs, &name, Duration::from_secs(300), |phase| {
                phase == EnvironmentPhase::Ready
            })
            .await?;
            println!("{name} is awake");
            Ok(())
        }
        EnvCommand::Delete { name } => {
            existing(&envs, &name).await?;
            envs.delete(&name, &DeleteParams::default()).await?;
            say(format!("deleting {name} and everything in it"));
            let started = Instant::now();
            while envs.get_opt(&name).await?.is_some() {
                if started.elapsed() > Duration::from_secs(600) {
                    bail!(
                        "{name} is still being deleted; see `kubectl describe environment {name}`"
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            println!("{name} is gone");
            Ok(())
        }
    }
}

async fn existing(envs: &Api<Environment>, name: &str) -> anyhow::Result<Environment> {
    envs.get_opt(name).await?.with_context(|| {
        format!("no environment {name} in this namespace (see `fleetforge env list`)")
    })
}

async fn patch_spec(envs: &Api<Environment>, name: &str, spec: Value) -> anyhow::Result<()> {
    envs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .map_err(admission_error)?;
    Ok(())
}

/// The API server's message, without the envelope around it.
fn admission_error(error: kube::Error) -> anyhow::Error {
    match error {
        kube::Error::Api(response) => anyhow::anyhow!("{}", response.message),
        other => other.into(),
    }
}

/// The Environment a request asks for.
pub fn manifest(args: &RequestArgs, placement: &Placement, owner: &str) -> Value {
    let target = &placement.target;
    let mut spec = json!({"owner": owner, "ttl": args.ttl});
    if let Some(profile) = &args.profile {
        spec["profile"] = json!(profile);
    }
    if placement.dedicated {
        spec["type"] = json!("dedicated");
        spec["dedicated"] = json!({
            "providerConfigRef": {"name": target},
            "nodePools": [{"name": "workers", "machineType": args.machine_type, "min": args.nodes, "max": args.nodes}],
        });
    } else {
        spec["type"] = json!("virtual");
        spec["virtual"] =
            json!({"host": {"clusterRef": {"name": target}}, "sharedTools": args.shared_tools});
        if let (Some(repository), Some(version)) = (&args.chart, &args.chart_version) {
            spec["virtual"]["chart"] =
                json!({"repository": repository, "name": "vcluster", "version": version});
        }
        if let Some(after) = &args.sleep_after {
            spec["sleepAfter"] = json!(after);
        }
    }
    json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": args.name},
        "spec": spec,
    })
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    /// A Cluster of its own (else a virtual cluster).
    pub dedicated: bool,
    /// The ProviderConfig (dedicated) or host Cluster (virtual).
    pub target: String,
    /// Said to the requester when the platform chose for them.
    pub note: Option<String>,
}

/// Decides where a request goes from its flags and the Clusters (`hosts`)
/// and ProviderConfigs (`accounts`) the platform labelled for environments.
pub fn placement(
    args: &RequestArgs,
    hosts: &[String],
    accounts: &[String],
) -> anyhow::Result<Placement> {
    let wants_virtual = args.r#virtual
        || args.host.is_some()
        || args.chart.is_some()
        || args.sleep_after.is_some()
        || !args.shared_tools.is_empty();
    let dedicated_in = |chosen: bool| -> anyhow::Result<Placement> {
        let target = match &args.provider_config {
            Some(name) => name.clone(),
            None => the_labelled(accounts.to_vec(), "ProviderConfig", "--provider-config")?,
        };
        let note = chosen.then(|| {
            format!(
                "no Cluster in this namespace hosts virtual environments (label {DEFAULTS_LABEL}=true); requesting a dedicated cluster in ProviderConfig {target}"
            )
        });
        Ok(Placement {
            dedicated: true,
            target,
            note,
        })
    };
    if args.dedicated {
        if wants_virtual {
            bail!(
                "--dedicated: --host, --chart, --shared-tools and --sleep-after are for virtual environments"
            );
        }
        return dedicated_in(false);
    }
    let no_account = accounts.is_empty() && args.provider_config.is_none();
    if wants_virtual || !hosts.is_empty() || no_account {
        let target = match &args.host {
            Some(name) => name.clone(),
            None => the_labelled(hosts.to_vec(), "Cluster", "--host")?,
        };
        return Ok(Placement {
            dedicated: false,
            target,
            note: None,
        });
    }
    dedicated_in(true)
}

/// The one object labelled as the environments' default, by name.
fn the_labelled(names: Vec<String>, what: &str, flag: &str) -> anyhow::Result<String> {
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("{flag}: no {what} is labelled {DEFAULTS_LABEL}=true; name one with {flag}"),
        many => bail!(
            "{flag}: several {what}s are labelled {DEFAULTS_LABEL}=true ({}); name one with {flag}",
            many.join(", ")
        ),
    }
}

async fn request(client: &Client, namespace: &str, args: RequestArgs) -> anyhow::Result<()> {
    fleetforge_environments::expires_at(Timestamp::now(), &args.ttl)
        .map_err(|e| anyhow::anyhow!("--ttl: {}", e.trim_start_matches("spec.ttl: ")))?;
    if let Some(profile) = &args.profile {
        let toolsets: Api<ToolSet> = Api::all(client.clone());
        if toolsets.get_opt(profile).await?.is_none() {
            let known: Vec<String> = toolsets
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            bail!(
                "--profile: unknown profile {profile} (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let labelled = ListParams::default().labels(&format!("{DEFAULTS_LABEL}=true"));
    let hosts = names(
        Api::<Cluster>::namespaced(client.clone(), namespace)
            .list(&labelled)
            .await?
            .items,
    );
    let accounts = names(
        Api::<ProviderConfig>::all(client.clone())
            .list(&labelled)
            .await?
            .items,
    );
    let placement = placement(&args, &hosts, &accounts)?;
    if let Some(note) = &placement.note {
        say(note);
    }
    let target = placement.target.clone();
    let owner = match &args.owner {
        Some(owner) => owner.clone(),
        None => match whoami(client).await {
            Some(name) => name,
            None => std::env::var("USER").unwrap_or_else(|_| "unknown".to_string()),
        },
    };
    let envs: Api<Environment> = Api::namespaced(client.clone(), namespace);
    let manifest: Environment = serde_json::from_value(manifest(&args, &placement, &owner))?;
    // A quota the quota controller has not counted yet refuses everything
    // until it has (up to a minute after the quota or the CRD appears:
    // "status unknown for quota"); wait that out.
    let started = Instant::now();
    loop {
        match envs.create(&PostParams::default(), &manifest).await {
            Ok(_) => break,
            Err(kube::Error::Api(response))
                if response.message.contains("status unknown for quota")
                    && started.elapsed() < Duration::from_secs(90) =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(admission_error(error)),
        }
    }
    let name = &args.name;
    say(format!(
        "requested {name} ({} on {target}, owner {owner}, ttl {})",
        if placement.dedicated {
            "dedicated"
        } else {
            "virtual"
        },
        args.ttl
    ));

    let env = follow(&envs, name, Duration::from_secs(args.timeout), |phase| {
        matches!(
            phase,
            EnvironmentPhase::Ready | EnvironmentPhase::Pending | EnvironmentPhase::Failed
        )
    })
    .await?;
    let status = env.status.clone().unwrap_or_default();
    let message = fleetforge_core::conditions::message(&status.conditions, condition::READY)
        .unwrap_or_default();
    match status.phase {
        Some(EnvironmentPhase::Pending) if args.queue => {
            println!("{name} waits its turn: {message}");
            return Ok(());
        }
        Some(EnvironmentPhase::Pending) => {
            envs.delete(name, &DeleteParams::default()).await?;
            bail!("quota: {message} (request withdrawn; --queue keeps it waiting)");
        }
        Some(EnvironmentPhase::Failed) => bail!("{name} failed: {message}"),
        _ => {}
    }
    let secret_name = status
        .kubeconfig_secret_ref
        .map_or_else(|| format!("{name}-kubeconfig"), |r| r.name);
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&secret_name)
        .await
        .with_context(|| format!("reading Secret {secret_name}"))?;
    let Some(value) = secret.data.as_ref().and_then(|d| d.get("value")) else {
        bail!("Secret {secret_name} has no key `value`");
    };
    let path = match args.kubeconfig_out {
        Some(path) => path,
        None => {
            let dir = home::dir().join("kubeconfigs");
            std::fs::create_dir_all(&dir)?;
            dir.join(format!("env.{namespace}.{name}.yaml"))
        }
    };
    crate::dev::write_private(&path, &String::from_utf8_lossy(&value.0))?;
    let expires = status
        .expires_at
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    println!(
        "{name} is Ready (expires at {expires}); its kubeconfig is in {}",
        path.display()
    );
    println!("  export KUBECONFIG={}", path.display());
    println!("  kubectl get namespaces");
    Ok(())
}

/// The user name the API server authenticates this client as (a
/// SelfSubjectReview, as `kubectl auth whoami`), if it tells.
async fn whoami(client: &Client) -> Option<String> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

fn names<K: ResourceExt>(items: Vec<K>) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

/// Follows an Environment, printing each change of its phase or message,
/// until `done` says its phase is final for the caller.
async fn follow(
    envs: &Api<Environment>,
    name: &str,
    timeout: Duration,
    done: impl Fn(EnvironmentPhase) -> bool,
) -> anyhow::Result<Environment> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let env = existing(envs, name).await?;
        let status = env.status.clone().unwrap_or_default();
        // A status written for an older spec says nothing about this one.
        let current = status.observed_generation == env.metadata.generation;
        if let (Some(phase), true) = (status.phase, current) {
            let message =
                fleetforge_core::conditions::message(&status.conditions, condition::READY)
                    .unwrap_or_default();
            let line = format!("{name}: {phase:?} ({message})");
            if line != last {
                say(&line);
                last = line;
            }
            if done(phase) {
                return Ok(env);
            }
        }
        if started.elapsed() > timeout {
            bail!(
                "{name} is not there after {}s ({last}); see `kubectl describe environment {name}`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn list(envs: &Api<Environment>) -> anyhow::Result<()> {
    let items = envs.list(&ListParams::default()).await?.items;
    println!(
        "{:<24} {:<10} {:<16} {:<13} {:<22} ESTIMATE",
        "NAME", "TYPE", "OWNER", "PHASE", "EXPIRES"
    );
    for env in items {
        let status = env.status.clone().unwrap_or_default();
        let estimate = status
            .estimate
            .map(|e| {
                format!(
                    "{} vCPU, {}",
                    e.vcpu.map(|q| q.0).unwrap_or_default(),
                    e.memory.map(|q| q.0).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        println!(
            "{:<24} {:<10} {:<16} {:<13} {:<22} {estimate}",
            env.name_any(),
            format!("{:?}", env.spec.kind).to_lowercase(),
            env.spec.owner,
            status.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            status
                .expires_at
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        request: RequestArgs,
    }

    fn parse(args: &[&str]) -> RequestArgs {
        Cli::parse_from(std::iter::once("request").chain(args.iter().copied())).request
    }

    #[test]
    fn a_virtual_request_names_its_host_and_shared_tools() {
        let args = parse(&[
            "mine",
            "--chart",
            "oci://ghcr.io/loft-sh/charts",
            "--chart-version",
            "0.36.0",
            "--profile",
            "dev",
            "--ttl",
            "4h",
            "--shared-tools",
            "cert-manager,contour",
            "--sleep-after",
            "30m",
        ]);
        let placement = placement(&args, &["hosts".into()], &["local".into()]).unwrap();
        assert_eq!(placement.note, None);
        let env: Environment =
            serde_json::from_value(manifest(&args, &placement, "alice")).unwrap();
        assert_eq!(env.name_any(), "mine");
        assert_eq!(env.spec.owner, "alice");
        assert_eq!(env.spec.ttl, "4h");
        assert_eq!(env.spec.sleep_after.as_deref(), Some("30m"));
        let settings = env.spec.r#virtual.unwrap();
        assert_eq!(settings.host.cluster_ref.unwrap().name, "hosts");
        assert_eq!(settings.shared_tools, ["cert-manager", "contour"]);
        let chart = settings.chart.unwrap();
        assert_eq!(
            (
                chart.repository.as_str(),
                chart.name.as_str(),
                chart.version.as_str()
            ),
            ("oci://ghcr.io/loft-sh/charts", "vcluster", "0.36.0")
        );
        assert!(env.spec.dedicated.is_none());
    }

    #[test]
    fn a_dedicated_request_gets_one_pool_in_its_provider_config() {
        let args = parse(&[
            "own",
            "--dedicated",
            "--machine-type",
            "e2-standard-4",
            "--nodes",
            "2",
        ]);
        let placement = placement(&args, &["hosts".into()], &["gcp-dev".into()]).unwrap();
        let env: Environment = serde_json::from_value(manifest(&args, &placement, "bob")).unwrap();
        let dedicated = env.spec.dedicated.unwrap();
        assert_eq!(dedicated.provider_config_ref.name, "gcp-dev");
        assert_eq!(dedicated.node_pools[0].machine_type, "e2-standard-4");
        assert_eq!(
            (dedicated.node_pools[0].min, dedicated.node_pools[0].max),
            (2, 2)
        );
        assert!(env.spec.r#virtual.is_none());
        assert_eq!(env.spec.ttl, "8h");
    }

    #[test]
    fn defaults_must_be_one_labelled_object() {
        assert_eq!(
            the_labelled(vec!["a".into()], "Cluster", "--host").unwrap(),
            "a"
        );
        let none = the_labelled(vec![], "Cluster", "--host")
            .unwrap_err()
            .to_string();
        assert_eq!(
            none,
            "--host: no Cluster is labelled fleetforge.dev/environments=true; name one with --host"
        );
        let many = the_labelled(
            vec!["a".into(), "b".into()],
            "ProviderConfig",
            "--provider-config",
        )
        .unwrap_err()
        .to_string();
        assert!(
            many.contains("several ProviderConfigs are labelled") && many.contains("(a, b)"),
            "{many}"
        );
    }

    #[test]
    fn a_plain_request_gets_what_the_platform_offers() {
        let plain = parse(&["mine", "--profile", "dev"]);
        let hosts = ["dev-hosts".to_string()];
        let accounts = ["local".to_string()];
        let virtual_one = placement(&plain, &hosts, &accounts).unwrap();
        assert_eq!(
            (virtual_one.dedicated, virtual_one.target.as_str()),
            (false, "dev-hosts")
        );
        let dedicated = placement(&plain, &[], &accounts).unwrap();
        assert_eq!(
            (dedicated.dedicated, dedicated.target.as_str()),
            (true, "local")
        );
        assert!(
            dedicated
                .note
                .unwrap()
                .starts_with("no Cluster in this namespace hosts virtual environments")
        );
        let nothing = placement(&plain, &[], &[]).unwrap_err().to_string();
        assert!(
            nothing.starts_with("--host: no Cluster is labelled"),
            "{nothing}"
        );
        let insisting = parse(&["mine", "--virtual"]);
        assert!(placement(&insisting, &[], &accounts).is_err());
        let mixed = parse(&["mine", "--dedicated", "--sleep-after", "1h"]);
        assert!(
            placement(&mixed, &hosts, &accounts)
                .unwrap_err()
                .to_string()
                .starts_with("--dedicated: ")
        );
    }
}
