//! `fleetforge rollout`: what a person does to a FleetRollout in flight:
//! approve a stage that waits, resume a halted round, abort one (leaving
//! or rolling back what it changed), and see where it is. Each writes the
//! annotation the controller acts on and removes.

use anyhow::{Context, bail};
use fleetforge_api::fleet_rollout::{RolloutPhase, RolloutState};
use fleetforge_api::{FleetRollout, annotation};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Options every `fleetforge rollout` command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Namespace of the rollout (default: the kubeconfig context's).
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
}

/// `fleetforge rollout` commands.
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Let a stage that waits for approval (`pause: true`) start.
    Approve {
        /// The rollout.
        name: String,
        /// The stage.
        stage: String,
    },
    /// Resume a halted rollout: its failed targets are retried.
    Resume {
        /// The rollout.
        name: String,
    },
    /// Abort the rollout's current round: nothing more starts.
    Abort {
        /// The rollout.
        name: String,
        /// Also put back what it changed, where the target allows.
        #[arg(long)]
        rollback: bool,
    },
    /// Print the rollout's stages and the targets not done.
    Status {
        /// The rollout.
        name: String,
    },
}

/// Runs a `fleetforge rollout` command against KUBECONFIG.
pub async fn run(common: Common, command: RolloutCommand) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("no usable kubeconfig (set KUBECONFIG)")?;
    let namespace = common
        .namespace
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    let rollouts: Api<FleetRollout> = Api::namespaced(client, &namespace);
    match command {
        RolloutCommand::Approve { name, stage } => {
            let rollout = existing(&rollouts, &name).await?;
            let Some(wanted) = rollout.spec.stages.iter().find(|s| s.name == stage) else {
                let names: Vec<&str> = rollout
                    .spec
                    .stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                bail!(
                    "{name} has no stage {stage:?} (its stages: {})",
                    names.join(", ")
                );
            };
            if !wanted.pause {
                bail!("stage {stage} of {name} does not wait for approval (no pause: true)");
            }
            annotate(&rollouts, &name, annotation::APPROVE, &stage).await?;
            println!("approved stage {stage} of {name}");
        }
        RolloutCommand::Resume { name } => {
            let rollout = existing(&rollouts, &name).await?;
            let phase = rollout.status.as_ref().and_then(|s| s.phase);
            if phase != Some(RolloutPhase::Halted) {
                bail!("{name} is not halted (phase {phase:?}); only a halted rollout resumes");
            }
            annotate(
                &rollouts,
                &name,
                annotation::RESUME,
                &Timestamp::now().to_string(),
            )
            .await?;
            println!("resuming {name}: its failed targets are retried");
        }
        RolloutCommand::Abort { name, rollback } => {
            existing(&rollouts, &name).await?;
            let policy = if rollback { "Rollback" } else { "Leave" };
            annotate(&rollouts, &name, annotation::ABORT, policy).await?;
            println!("aborting {name} ({policy})");
        }
        RolloutCommand::Status { name } => {
            let rollout = existing(&rollouts, &name).await?;
            print!("{}", describe(&rollout));
        }
    }
    Ok(())
}

async fn existing(rollouts: &Api<FleetRollout>, name: &str) -> anyhow::Result<FleetRollout> {
    match rollouts.get_opt(name).await? {
        Some(rollout) => Ok(rollout),
        None => bail!("no FleetRollout {name} in this namespace"),
    }
}

async fn annotate(
    rollouts: &Api<FleetRollout>,
    name: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    rollouts
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await?;
    Ok(())
}

/// The rollout's stages and the targets that are not done, for people.
pub fn describe(rollout: &FleetRollout) -> String {
    let Some(status) = &rollout.status else {
        return format!("{}: no status yet\n", rollout.name_any());
    };
    let mut out = format!(
        "{}: {} {:?}, stage {}, {} done\n",
        rollout.name_any(),
        status.revision.as_deref().unwrap_or("?"),
        status.phase.unwrap_or(RolloutPhase::Progressing),
        status.stage.as_deref().unwrap_or("-"),
        status.progress.as_deref().unwrap_or("0/0"),
    );
    for stage in &status.stages {
        out.push_str(&format!(
            "  stage {:<12} {:<10} {}/{} done, {} in flight, {} failed\n",
            stage.name,
            format!("{:?}", stage.state),
            stage.done,
            stage.targets,
            stage.in_flight,
            stage.failed
        ));
    }
    for target in status
        .targets
        .iter()
        .filter(|t| !matches!(t.state, RolloutState::Done | RolloutState::Pending))
    {
        out.push_str(&format!(
            "    {} {} {:?}{}\n",
            target.kind,
            target.name,
            target.state,
            target
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    out
}
