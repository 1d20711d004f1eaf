//! The `fleetforge` binary: runs the controllers and the command-line tools.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fleetforge_controller::crdgen;

/// Provisions managed clusters, virtual clusters, tools and dev environments
/// declared as Kubernetes resources, and keeps them converged.
#[derive(Debug, Parser)]
#[command(name = "fleetforge", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition (or write one file per CRD).
    Crds {
        /// Write the files into this directory instead of printing a stream.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { write: None } => print!("{}", crdgen::render_stream()?),
        Command::Crds { write: Some(dir) } => {
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in crdgen::render()? {
                std::fs::write(dir.join(name), yaml)?;
            }
        }
    }
    Ok(())
}
