//! The fleetforge binary's library: command-line tools, the controller
//! runtime (leader election, metrics, health) and generated artefacts.

pub mod crdgen;
