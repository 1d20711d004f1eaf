//! The fleetforge binary's library: command-line tools, the controller
//! runtime (leader election, metrics, health) and generated artefacts.

pub mod crdgen;
pub mod dev;
pub mod dev_ui;
pub mod env;
pub mod home;
pub mod leader;
pub mod manifests;
pub mod plan;
pub mod process_metrics;
pub mod providers;
pub mod rbac;
pub mod rollout;
pub mod run;
pub mod server;
pub mod telemetry;
pub mod validate;
