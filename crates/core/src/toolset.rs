//! ToolSets: the order tools install in (dependencies first), and the
//! reconciler that validates a set and reports it in status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleetforge_api::tool_set::ToolSetStatus;
use fleetforge_api::{FIELD_MANAGER, Tool, ToolSet, condition};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::conditions::{self, Desired};

/// Why tools cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    /// `dependsOn` names a tool that is not in the set.
    UnknownDependency {
        /// The tool with the dependency.
        tool: String,
        /// The missing name.
        dependency: String,
    },
    /// `dependsOn` forms a cycle through these tools.
    Cycle(Vec<String>),
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::UnknownDependency { tool, dependency } => {
                write!(
                    f,
                    "tool {tool} depends on {dependency}, which is not in the set"
                )
            }
            OrderError::Cycle(tools) => {
                write!(f, "dependsOn forms a cycle: {}", tools.join(" -> "))
            }
        }
    }
}

/// Tool names in an order where every tool comes after the tools it
/// depends on; among tools free to go, the declared order is kept.
pub fn install_order(tools: &[Tool]) -> Result<Vec<String>, OrderError> {
    let names: BTreeSet<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    for tool in tools {
        if let Some(missing) = tool.depends_on.iter().find(|d| !names.contains(d.as_str())) {
            return Err(OrderError::UnknownDependency {
                tool: tool.name.clone(),
                dependency: missing.clone(),
            });
        }
    }
    let mut remaining: Vec<&Tool> = tools.iter().collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(tools.len());
    while !remaining.is_empty() {
        let Some(index) = remaining
            .iter()
            .position(|t| t.depends_on.iter().all(|d| done.contains(d.as_str())))
        else {
            return Err(OrderError::Cycle(find_cycle(&remaining)));
        };
        let tool = remaining.remove(index);
        done.insert(&tool.name);
        order.push(tool.name.clone());
    }
    Ok(order)
}

/// One cycle among tools none of which can go first, for the message.
fn find_cycle(stuck: &[&Tool]) -> Vec<String> {
    let edges: BTreeMap<&str, &Vec<String>> = stuck
        .iter()
        .map(|t| (t.name.as_str(), &t.depends_on))
        .collect();
    let mut path: Vec<&str> = vec![stuck[0].name.as_str()];
    loop {
        let current = *path.last().expect("the path is never empty");
        let next = edges[current]
            .iter()
            .map(String::as_str)
            .find(|d| edges.contains_key(d))
            .expect("a stuck tool depends on another stuck tool");
        if let Some(start) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(next.to_string());
            return cycle;
        }
        path.push(next);
    }
}

/// Runs the ToolSet reconciler until the process stops.
pub async fn run(runtime: &fleetforge_runtime::Runtime, client: Client) {
    let api: Api<ToolSet> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    runtime
        .run("ToolSet", controller, Arc::new(client), reconcile)
        .await;
}

async fn reconcile(set: Arc<ToolSet>, client: Arc<Client>) -> Result<Action, kube::Error> {
    let (ready, order) = match install_order(&set.spec.tools) {
        Ok(order) => (
            Desired::yes(
                condition::READY,
                "Valid",
                format!("install order: {}", order.join(", ")),
            ),
            order,
        ),
        Err(e) => (
            Desired::no(condition::READY, "InvalidDependencies", e.to_string()),
            Vec::new(),
        ),
    };
    let generation = set.metadata.generation;
    let current = set.status.clone().unwrap_or_default();
    let conditions = conditions::merge(
        &current.conditions,
        &[ready],
        generation,
        &conditions::now(),
    );
    let tool_count = i32::try_from(set.spec.tools.len()).unwrap_or(i32::MAX);
    let status = ToolSetStatus {
        conditions,
        observed_generation: generation,
        tool_count: Some(tool_count),
        install_order: order,
    };
    fleetforge_runtime::status::apply_if_changed(
        &Api::<ToolSet>::all((*client).clone()),
        &set.name_any(),
        FIELD_MANAGER,
        Some(&current),
        &status,
    )
    .await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetforge_api::tool_set::ChartSource;

    fn mk_tool(name: &str, depends_on: &[&str]) -> Tool {
        Tool {
            name: name.into(),
            chart: ChartSource {
                path: Some(format!("/charts/{name}")),
                ..ChartSource::default()
            },
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            ..Tool::default()
        }
    }

    #[test]
    fn dependencies_come_first_and_declared_order_is_kept_otherwise() {
        let tools = [
            mk_tool("knative-serving", &["cert-manager", "contour"]),
            mk_tool("tekton", &[]),
            mk_tool("cert-manager", &[]),
            mk_tool("contour", &["cert-manager"]),
        ];
        assert_eq!(
            install_order(&tools).unwrap(),
            ["tekton", "cert-manager", "contour", "knative-serving"]
        );
    }

    #[test]
    fn a_cycle_is_refused_naming_it() {
        let tools = [
            mk_tool("a", &["b"]),
            mk_tool("b", &["c"]),
            mk_tool("c", &["b"]),
            mk_tool("d", &[]),
        ];
        let error = install_order(&tools).unwrap_err();
        assert_eq!(
            error,
            OrderError::Cycle(vec!["b".into(), "c".into(), "b".into()])
        );
        assert_eq!(error.to_string(), "dependsOn forms a cycle: b -> c -> b");
    }

    #[test]
    fn an_unknown_dependency_is_refused() {
        let error = install_order(&[mk_tool("a", &["ghost"])]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "tool a depends on ghost, which is not in the set"
        );
    }
}
