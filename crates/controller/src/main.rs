//! The `fleetforge` binary: runs the controllers and the command-line tools.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fleetforge_controller::telemetry::{self, LogFormat};
use fleetforge_controller::{crdgen, dev, env, plan, rbac, rollout, run, validate};

/// Provisions managed clusters, virtual clusters, tools and dev environments
/// declared as Kubernetes resources, and keeps them converged.
#[derive(Debug, Parser)]
#[command(name = "fleetforge", version)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers against KUBECONFIG (or in-cluster).
    Controller(run::ControllerArgs),
    /// Print every CustomResourceDefinition (or write one file per CRD).
    Crds {
        /// Write the files into this directory instead of printing a stream.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Print the least-privilege ClusterRoles the controller needs.
    Rbac,
    /// The whole platform on this machine: a local management control
    /// plane, the controller, and local clusters.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Check the YAML under a path before it is applied, with no cluster.
    ///
    /// fleetforge objects are checked against their schemas and validation
    /// rules, other documents for apiVersion, kind and metadata.name;
    /// --server adds a server-side dry run. Prints one line per problem
    /// (`file: Kind/name: field: message`) and exits 1 if there is any.
    Validate(validate::ValidateArgs),
    /// Dev environments on demand: request, list, extend, sleep, wake,
    /// delete (against KUBECONFIG).
    Env {
        #[command(flatten)]
        common: env::Common,
        #[command(subcommand)]
        command: env::EnvCommand,
    },
    /// What the controllers would do if the fleetforge objects under a
    /// path were applied to the cluster of KUBECONFIG: clusters and node
    /// pools, version steps, tools per target (with values diffs) and the
    /// stages of rollouts. Exits 0 with no changes, 2 with changes, 1 on
    /// an error (Terraform's -detailed-exitcode).
    Plan(plan::PlanArgs),
    /// Progressive rollouts in flight: approve a stage, resume a halted
    /// rollout, abort one, see where it is (against KUBECONFIG).
    Rollout {
        #[command(flatten)]
        common: rollout::Common,
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// The fleet view in a browser: Clusters and VirtualClusters, the
    /// tools matrix, environments and rollouts, live, read with your
    /// kubeconfig's identity (or, in a cluster, each person's token).
    Ui(fleetforge_ui::UiArgs),
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Start the management control plane, install the CRDs, start the
    /// controller, apply a platform directory and wait for its Clusters.
    Up(dev::UpArgs),
    /// Stop the controller and remove every local cluster and the
    /// management control plane.
    Down(dev::DownArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One TLS provider for every rustls client of the process (kube, the
    // cloud SDKs, the OTLP exporter): ring, as the workspace builds rustls
    // without aws-lc-rs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Controller(args) => {
            let _telemetry = telemetry::init(cli.log_format)?;
            run::run(args).await?;
        }
        Command::Crds { write: None } => print!("{}", crdgen::render_stream()?),
        Command::Crds { write: Some(dir) } => {
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in crdgen::render()? {
                std::fs::write(dir.join(name), yaml)?;
            }
        }
        Command::Rbac => print!("{}", rbac::render()?),
        Command::Dev(DevCommand::Up(args)) => dev::up(args).await?,
        Command::Dev(DevCommand::Down(args)) => dev::down(args).await?,
        Command::Env { common, command } => {
            if let Err(error) = env::run(common, command).await {
                eprintln!("fleetforge env: error: {error:#}");
                std::process::exit(1);
            }
        }
        Command::Plan(args) => match plan::run(args).await {
            Ok(code) => std::process::exit(code),
            Err(error) => {
                eprintln!("fleetforge plan: error: {error:#}");
                std::process::exit(1);
            }
        },
        Command::Rollout { common, command } => {
            if let Err(error) = rollout::run(common, command).await {
                eprintln!("fleetforge rollout: error: {error:#}");
                std::process::exit(1);
            }
        }
        Command::Ui(args) => {
            // Logs say when a watch is refused or failing, and why.
            let _telemetry = telemetry::init(cli.log_format)?;
            if let Err(error) = fleetforge_ui::run(args).await {
                eprintln!("fleetforge ui: error: {error:#}");
                std::process::exit(1);
            }
        }
        Command::Validate(args) => {
            if !validate::run(args).await? {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
