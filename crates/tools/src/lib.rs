//! Tools on clusters: the Helm driver, values merging and templating, and
//! the controllers that install ToolSets onto Clusters (ToolInstall, and a
//! Cluster's `profile`) and keep them there.

pub mod helm;
pub mod install;
pub mod live;
pub mod metrics;
pub mod profile;
pub mod target;
pub mod values;

pub use install::{ToolOptions, run};
pub use metrics::ToolMetrics;
