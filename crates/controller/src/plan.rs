//! `fleetforge plan PATH`: what the controllers would do if the fleetforge
//! objects under PATH were applied to the cluster of KUBECONFIG, printed
//! Terraform-style: clusters created, node pools added, scaled or removed,
//! version steps, replacements; tools installed, upgraded (with the values
//! diff) or removed on each target; the stages a FleetRollout would go
//! through with the targets in each. Every decision comes from the
//! controllers' own functions ([`cluster::passes`], the ToolInstall's
//! selection and [`desired_child`], the rollout's own round and stages).
//!
//! Exit codes follow Terraform's `-detailed-exitcode`: 0 no changes, 2
//! changes, 1 an error; so CI can gate a platform repo's pull request.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use fleetforge_api::tool_target::{TargetRef, ToolTargetSpec};
use fleetforge_api::{
    Cluster, FleetRollout, ManagementPolicy, Tool, ToolInstall, ToolSet, ToolTarget, VirtualCluster,
};
use fleetforge_core::cluster::{self, ObservedCluster};
use fleetforge_tools::install::{declared_tools, governs};
use fleetforge_tools::select::{Object, Selection, desired_child};
use fleetforge_tools::sync::tool_values;
use fleetforge_tools::values;
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::manifests::{self, Manifest};

/// Arguments of `fleetforge plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// A YAML file, or a directory whose `*.yaml` and `*.yml` files are read
    /// (recursively): a platform repo, or part of one.
    pub path: PathBuf,
}

/// The exit code of a plan with changes (no changes: 0).
pub const CHANGES: i32 = 2;

/// The fleetforge objects under PATH.
#[derive(Debug, Default)]
struct Declared {
    clusters: Vec<Cluster>,
    virtual_clusters: Vec<VirtualCluster>,
    tool_sets: Vec<ToolSet>,
    tool_installs: Vec<ToolInstall>,
    rollouts: Vec<FleetRollout>,
}

impl Declared {
    fn read(manifests: &[Manifest], default_namespace: &str) -> anyhow::Result<Self> {
        fn parse<K: DeserializeOwned + Resource>(
            manifest: &Manifest,
            namespace: Option<&str>,
        ) -> anyhow::Result<K> {
            let mut object: K =
                serde_json::from_value(manifest.value.clone()).with_context(|| {
                    format!(
                        "{}: {manifest}: does not parse (run `fleetforge validate`)",
                        manifest.file.display()
                    )
                })?;
            if object.meta().namespace.is_none() {
                object.meta_mut().namespace = namespace.map(str::to_string);
            }
            Ok(object)
        }
        let mut declared = Self::default();
        for manifest in manifests {
            if !manifest.api_version().starts_with("fleetforge.dev/") {
                continue;
            }
            let ns = Some(default_namespace);
            match manifest.kind() {
                "Cluster" => declared.clusters.push(parse(manifest, ns)?),
                "VirtualCluster" => declared.virtual_clusters.push(parse(manifest, ns)?),
                "ToolSet" => declared.tool_sets.push(parse(manifest, None)?),
                "ToolInstall" => declared.tool_installs.push(parse(manifest, ns)?),
                "FleetRollout" => declared.rollouts.push(parse(manifest, ns)?),
                _ => {}
            }
        }
        Ok(declared)
    }

    fn namespaces(&self) -> BTreeSet<String> {
        let of = |meta: &kube::api::ObjectMeta| meta.namespace.clone();
        self.clusters
            .iter()
            .map(|c| of(&c.metadata))
            .chain(self.virtual_clusters.iter().map(|v| of(&v.metadata)))
            .chain(self.tool_installs.iter().map(|t| of(&t.metadata)))
            .chain(self.rollouts.iter().map(|r| of(&r.metadata)))
            .flatten()
            .collect()
    }
}

/// What is live, and the world as it would be with PATH applied.
#[derive(Debug, Default)]
struct World {
    clusters: Vec<Cluster>,
    virtual_clusters: Vec<VirtualCluster>,
    tool_sets: Vec<ToolSet>,
    tool_installs: Vec<ToolInstall>,
    tool_targets: Vec<ToolTarget>,
    rollouts: Vec<FleetRollout>,
}

async fn list<K>(api: Api<K>) -> anyhow::Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {}", K::plural(&())))?
        .items)
}

impl World {
    async fn live(client: &Client, namespaces: &BTreeSet<String>) -> anyhow::Result<Self> {
        let mut world = Self {
            tool_sets: list(Api::all(client.clone())).await?,
            ..Self::default()
        };
        for ns in namespaces {
            let c = client.clone();
            world
                .clusters
                .extend(list(Api::namespaced(c.clone(), ns)).await?);
            world
                .virtual_clusters
                .extend(list(Api::namespaced(c.clone(), ns)).await?);
            world
                .tool_installs
                .extend(list(Api::namespaced(c.clone(), ns)).await?);
            world
                .tool_targets
                .extend(list(Api::namespaced(c.clone(), ns)).await?);
            world.rollouts.extend(list(Api::namespaced(c, ns)).await?);
        }
        Ok(world)
    }

    /// The world once `declared` is applied: each declared object replaces
    /// the live one's spec, labels and annotations (its status stays, as
    /// the controllers would see it), and profiles make their ToolInstalls.
    fn with(&self, declared: &Declared) -> Self {
        let mut clusters = overlay(&self.clusters, &declared.clusters, |live, new| {
            live.spec = new.spec.clone();
        });
        let virtual_clusters = overlay(
            &self.virtual_clusters,
            &declared.virtual_clusters,
            |live, new| {
                live.spec = new.spec.clone();
            },
        );
        let tool_sets = overlay(&self.tool_sets, &declared.tool_sets, |live, new| {
            live.spec = new.spec.clone();
        });
        let mut tool_installs =
            overlay(&self.tool_installs, &declared.tool_installs, |live, new| {
                live.spec = new.spec.clone();
            });
        // A declared Cluster's profile makes (or, gone, removes) its
        // ToolInstall, as the profile controller does.
        for cluster in &declared.clusters {
            let name = fleetforge_tools::profile::install_name(&cluster.name_any());
            let namespace = cluster.namespace();
            tool_installs.retain(|ti| !(ti.name_any() == name && ti.namespace() == namespace));
            if let Some(profile) = &cluster.spec.profile {
                let value = fleetforge_tools::profile::desired(cluster, profile);
                if let Ok(mut ti) = serde_json::from_value::<ToolInstall>(value) {
                    ti.metadata.namespace = namespace;
                    tool_installs.push(ti);
                }
            }
        }
        clusters.sort_by_key(|c| (c.namespace(), c.name_any()));
        Self {
            clusters,
            virtual_clusters,
            tool_sets,
            tool_installs,
            tool_targets: self.tool_targets.clone(),
            rollouts: overlay(&self.rollouts, &declared.rollouts, |live, new| {
                live.spec = new.spec.clone();
            }),
        }
    }
}

/// `live` with each of `declared` merged in by `merge` (or added).
fn overlay<K>(live: &[K], declared: &[K], merge: impl Fn(&mut K, &K)) -> Vec<K>
where
    K: Resource + Clone + serde::Serialize,
{
    let key = |k: &K| (k.meta().namespace.clone(), k.meta().name.clone());
    let mut out: Vec<K> = live.to_vec();
    for new in declared {
        match out.iter_mut().find(|k| key(k) == key(new)) {
            Some(existing) => {
                // A changed spec is a new generation, as the API server
                // counts it.
                let before = spec_of(existing);
                merge(existing, new);
                if spec_of(existing) != before {
                    let generation = existing.meta().generation.unwrap_or_default();
                    existing.meta_mut().generation = Some(generation + 1);
                }
                existing.meta_mut().labels = new.meta().labels.clone();
                existing.meta_mut().annotations = merged_annotations(existing.meta(), new.meta());
            }
            None => out.push(new.clone()),
        }
    }
    out
}

fn spec_of<K>(object: &K) -> Option<String>
where
    K: Resource + serde::Serialize,
{
    serde_json::to_value(object)
        .ok()
        .map(|value| value["spec"].to_string())
}

/// The declared annotations over the live ones the controllers keep.
fn merged_annotations(
    live: &kube::api::ObjectMeta,
    declared: &kube::api::ObjectMeta,
) -> Option<BTreeMap<String, String>> {
    let mut annotations = live.annotations.clone().unwrap_or_default();
    annotations.extend(declared.annotations.clone().unwrap_or_default());
    Some(annotations)
}

/// The printed plan, section by section, and how many changes it holds.
#[derive(Debug, Default)]
struct Plan {
    text: String,
    changes: usize,
}

impl Plan {
    fn section(&mut self, title: &str, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        self.changes += lines
            .iter()
            .filter(|l| l.starts_with(['+', '-', '~']))
            .count();
        let _ = writeln!(self.text, "{title}");
        for line in lines {
            for (i, part) in line.lines().enumerate() {
                let indent = if i == 0 { "  " } else { "      " };
                let _ = writeln!(self.text, "{indent}{part}");
            }
        }
    }
}

/// Runs `fleetforge plan` and returns its exit code.
pub async fn run(args: PlanArgs) -> anyhow::Result<i32> {
    let (manifests, errors) = manifests::load(&args.path);
    if let Some(error) = errors.first() {
        bail!("{error}");
    }
    let config = kube::Config::infer()
        .await
        .context("no usable kubeconfig (set KUBECONFIG)")?;
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config)?;
    let declared = Declared::read(&manifests, &default_namespace)?;
    let live = World::live(&client, &declared.namespaces()).await?;
    let plan = plan(&client, &declared, &live);
    if plan.changes == 0 {
        println!(
            "No changes: the live objects match {} ({} fleetforge objects compared).",
            args.path.display(),
            declared.clusters.len()
                + declared.virtual_clusters.len()
                + declared.tool_sets.len()
                + declared.tool_installs.len()
                + declared.rollouts.len()
        );
        return Ok(0);
    }
    print!("{}", plan.text);
    println!("\nPlan: {} changes.", plan.changes);
    Ok(CHANGES)
}

fn plan(client: &Client, declared: &Declared, live: &World) -> Plan {
    let world = live.with(declared);
    let mut plan = Plan::default();
    for new in &declared.clusters {
        let old = live
            .clusters
            .iter()
            .find(|c| c.name_any() == new.name_any() && c.namespace() == new.namespace());
        plan.section(
            &format!(
                "Cluster {}/{}",
                new.namespace().unwrap_or_default(),
                new.name_any()
            ),
            cluster_lines(new, old),
        );
    }
    for (title, lines) in tool_sections(declared, live, &world) {
        plan.section(&title, lines);
    }
    let context = fleetforge_rollouts::Context::over(
        client.clone(),
        world.clusters.clone(),
        world.virtual_clusters.clone(),
        world.tool_targets.clone(),
        world.tool_installs.clone(),
        world.tool_sets.clone(),
    );
    for rollout in &declared.rollouts {
        let (title, lines) = rollout_lines(&context, rollout);
        plan.section(&title, lines);
    }
    plan
}

/// A Cluster's changes: created, or the engine's passes from what its
/// status last recorded to the new spec.
fn cluster_lines(new: &Cluster, old: Option<&Cluster>) -> Vec<String> {
    let spec = &new.spec;
    let Some(old) = old else {
        let pools: Vec<String> = spec
            .node_pools
            .iter()
            .map(|p| {
                format!(
                    "{} ({}, {}..{}, {} nodes)",
                    p.name,
                    p.machine_type,
                    p.min,
                    p.max,
                    p.initial_count()
                )
            })
            .collect();
        return vec![format!(
            "+ create on ProviderConfig {}, version {}, node pools {}",
            spec.provider_config_ref.name,
            spec.version.as_deref().unwrap_or("the provider's default"),
            if pools.is_empty() {
                "none".into()
            } else {
                pools.join(", ")
            }
        )];
    };
    let mut lines = Vec::new();
    let Some(status) = &old.status else {
        lines.push("~ not created yet: the new spec is what it will be created with".into());
        return lines;
    };
    if spec.management_policy == ManagementPolicy::ObserveOnly {
        return lines;
    }
    let observed = ObservedCluster::from_status(status);
    let (passes, refusal) = cluster::passes(spec, &observed);
    let many = passes.len() > 1;
    for (i, changes) in passes.iter().enumerate() {
        for change in changes {
            let symbol = match change {
                cluster::ClusterChange::AddNodePool(_) => '+',
                cluster::ClusterChange::RemoveNodePool { .. } => '-',
                _ => '~',
            };
            let step = if many {
                format!(" (pass {})", i + 1)
            } else {
                String::new()
            };
            lines.push(format!("{symbol} {change}{step}"));
        }
    }
    if let Some(refusal) = refusal {
        let replacement = if refusal.reason == "MachineTypeImmutable" {
            " (a replacement: add a pool with another name and the new type, then remove this one)"
        } else {
            ""
        };
        lines.push(format!(
            "! refused: {}: {}{replacement}",
            refusal.field, refusal.message
        ));
    }
    if spec.paused && !lines.is_empty() {
        lines.push("! paused (spec.paused): nothing is changed until unpaused".into());
    }
    let mut settings = Vec::new();
    if old.spec.drift_policy != spec.drift_policy {
        settings.push(format!(
            "driftPolicy {:?} -> {:?}",
            old.spec.drift_policy, spec.drift_policy
        ));
    }
    if old.spec.deletion_policy != spec.deletion_policy {
        settings.push(format!(
            "deletionPolicy {:?} -> {:?}",
            old.spec.deletion_policy, spec.deletion_policy
        ));
    }
    if old.spec.paused != spec.paused {
        settings.push(format!("paused {} -> {}", old.spec.paused, spec.paused));
    }
    if old.spec.profile != spec.profile {
        settings.push(format!(
            "profile {} -> {}",
            old.spec.profile.as_deref().unwrap_or("none"),
            spec.profile.as_deref().unwrap_or("none")
        ));
    }
    if !settings.is_empty() {
        lines.push(format!("~ {}", settings.join(", ")));
    }
    lines
}

/// The ToolInstalls PATH touches: declared ones, those of a declared
/// ToolSet, and profiles of declared Clusters.
fn tool_sections(declared: &Declared, live: &World, world: &World) -> Vec<(String, Vec<String>)> {
    let declared_sets: BTreeSet<String> = declared.tool_sets.iter().map(|s| s.name_any()).collect();
    let touched = |ti: &ToolInstall| {
        let key = (ti.namespace(), ti.name_any());
        declared
            .tool_installs
            .iter()
            .any(|d| (d.namespace(), d.name_any()) == key)
            || ti
                .spec
                .tool_set_ref
                .as_ref()
                .is_some_and(|r| declared_sets.contains(&r.name))
            || declared.clusters.iter().any(|c| {
                c.namespace() == ti.namespace()
                    && fleetforge_tools::profile::install_name(&c.name_any()) == ti.name_any()
            })
    };
    let mut sections = Vec::new();
    let mut names: BTreeSet<(Option<String>, String)> = BTreeSet::new();
    for ti in world.tool_installs.iter().filter(|ti| touched(ti)) {
        names.insert((ti.namespace(), ti.name_any()));
        let title = format!(
            "ToolInstall {}/{}",
            ti.namespace().unwrap_or_default(),
            ti.name_any()
        );
        sections.push((title, install_lines(ti, live, world)));
    }
    // Profile ToolInstalls whose Cluster no longer has a profile go, and
    // their tools with them.
    for ti in live.tool_installs.iter().filter(|ti| touched(ti)) {
        if names.contains(&(ti.namespace(), ti.name_any())) {
            continue;
        }
        let lines = children(ti, live)
            .map(|tt| {
                format!(
                    "- uninstall {} from {} {} (the ToolInstall goes)",
                    tool_names(&tt.spec.tools),
                    tt.spec.target.kind,
                    tt.spec.target.name
                )
            })
            .collect();
        sections.push((
            format!(
                "ToolInstall {}/{}",
                ti.namespace().unwrap_or_default(),
                ti.name_any()
            ),
            lines,
        ));
    }
    sections
}

fn children<'a>(ti: &'a ToolInstall, live: &'a World) -> impl Iterator<Item = &'a ToolTarget> {
    live.tool_targets.iter().filter(move |tt| {
        tt.namespace() == ti.namespace() && tt.spec.tool_install_ref.name == ti.name_any()
    })
}

fn tool_names(tools: &[Tool]) -> String {
    tools
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn chart_of(tool: &Tool) -> String {
    let chart = &tool.chart;
    let source = chart
        .oci
        .clone()
        .or(chart.path.clone())
        .or(chart.name.clone())
        .unwrap_or_default();
    match &chart.version {
        Some(version) => format!("{source} {version}"),
        None => source,
    }
}

/// What a ToolInstall's ToolTargets would become: tools installed,
/// upgraded (with the values diff) or removed, target by target.
fn install_lines(ti: &ToolInstall, live: &World, world: &World) -> Vec<String> {
    let tools = match declared_tools(ti, |name| {
        world
            .tool_sets
            .iter()
            .find(|s| s.name_any() == name)
            .map(|s| Arc::new(s.clone()))
    }) {
        Ok(tools) => tools,
        Err((reason, message)) => return vec![format!("! blocked ({reason}): {message}")],
    };
    let selection = match Selection::of(ti) {
        Ok(selection) => selection,
        Err(message) => return vec![format!("! blocked (InvalidSelector): {message}")],
    };
    let namespace = ti.namespace();
    let objects: Vec<Object<'_>> = world
        .clusters
        .iter()
        .filter(|c| c.namespace() == namespace)
        .map(Object::Cluster)
        .chain(
            world
                .virtual_clusters
                .iter()
                .filter(|v| v.namespace() == namespace)
                .map(Object::Virtual),
        )
        .collect();
    let chosen = selection.targets(&objects);
    let existing: BTreeMap<TargetRef, &ToolTarget> = children(ti, live)
        .map(|tt| (tt.spec.target.clone(), tt))
        .collect();
    // The rollouts that move this ToolInstall's changes on a target: they
    // govern it and one of their stages takes the target.
    let held_by = |target: &TargetRef, object: Option<Object<'_>>| {
        let labels = object.map(|o| o.labels().clone()).unwrap_or_default();
        let by: Vec<String> = world
            .rollouts
            .iter()
            .filter(|r| governs(r, ti))
            .filter(|r| {
                fleetforge_core::selector::Stages::parse(&r.spec.stages)
                    .is_ok_and(|stages| stages.of(&target.name, &labels).is_some())
            })
            .map(|r| r.name_any())
            .collect();
        if by.is_empty() {
            String::new()
        } else {
            format!(" (in stages, by FleetRollout {})", by.join(", "))
        }
    };
    let mut lines = Vec::new();
    for (target, object) in &chosen {
        let note = held_by(target, *object);
        let desired = desired_child(ti, &tools, target, None);
        let Ok(new) = serde_json::from_value::<ToolTargetSpec>(desired["spec"].clone()) else {
            continue;
        };
        let facts = object.map(|o| o.facts());
        match existing.get(target) {
            None => {
                for tool in &new.tools {
                    lines.push(format!(
                        "+ install {} ({}) on {} {}",
                        tool.name,
                        chart_of(tool),
                        target.kind,
                        target.name
                    ));
                }
            }
            Some(old) => lines.extend(tool_changes(&old.spec, &new, target, facts.as_ref(), &note)),
        }
    }
    for (target, tt) in &existing {
        if !chosen.contains_key(target) {
            lines.push(format!(
                "- uninstall {} from {} {} (no longer selected)",
                tool_names(&tt.spec.tools),
                target.kind,
                target.name
            ));
        }
    }
    lines
}

/// The changes from one ToolTarget spec to another, tool by tool.
fn tool_changes(
    old: &ToolTargetSpec,
    new: &ToolTargetSpec,
    target: &TargetRef,
    facts: Option<&fleetforge_tools::values::TargetFacts>,
    note: &str,
) -> Vec<String> {
    let on = format!("{} {}", target.kind, target.name);
    let mut lines = Vec::new();
    for tool in &new.tools {
        let Some(before) = old.tools.iter().find(|t| t.name == tool.name) else {
            lines.push(format!(
                "+ install {} ({}) on {on}{note}",
                tool.name,
                chart_of(tool)
            ));
            continue;
        };
        let mut what = Vec::new();
        if before.namespace != tool.namespace {
            what.push(format!(
                "namespace {} -> {} (a reinstall)",
                before.namespace.as_deref().unwrap_or(&before.name),
                tool.namespace.as_deref().unwrap_or(&tool.name)
            ));
        }
        if before.chart != tool.chart {
            what.push(format!("chart {} -> {}", chart_of(before), chart_of(tool)));
        }
        let values_of = |spec: &ToolTargetSpec, tool: &Tool| {
            facts.and_then(|f| tool_values(spec, tool, f, &BTreeMap::new()).ok())
        };
        let diff = match (values_of(old, before), values_of(new, tool)) {
            (Some(a), Some(b)) if !fleetforge_tools::values_equal(&a, &b) => {
                Some(values::diff(&a, &b))
            }
            _ => None,
        };
        if diff.is_some() {
            what.push("values".into());
        }
        if !what.is_empty() {
            let mut line = format!("~ upgrade {} on {on}: {}{note}", tool.name, what.join(", "));
            if let Some(diff) = diff {
                line.push('\n');
                line.push_str(diff.trim_end());
            }
            lines.push(line);
        }
    }
    for tool in &old.tools {
        if !new.tools.iter().any(|t| t.name == tool.name) {
            lines.push(format!("- uninstall {} from {on}", tool.name));
        }
    }
    let settings: Vec<&str> = [
        ("driftPolicy", old.drift_policy != new.drift_policy),
        ("suspend", old.suspend != new.suspend),
        ("dryRun", old.dry_run != new.dry_run),
        ("pollInterval", old.poll_interval != new.poll_interval),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect();
    if !settings.is_empty() {
        lines.push(format!("~ set {} on {on}", settings.join(", ")));
    }
    lines
}

/// The stages a FleetRollout would go through, with its targets in each
/// and what each would become.
fn rollout_lines(
    context: &fleetforge_rollouts::Context,
    rollout: &FleetRollout,
) -> (String, Vec<String>) {
    let name = format!(
        "FleetRollout {}/{}",
        rollout.namespace().unwrap_or_default(),
        rollout.name_any()
    );
    let fleetforge_rollouts::Preview { revision, stages } = match context.preview(rollout) {
        Ok(preview) => preview,
        Err((reason, message)) => return (name, vec![format!("! blocked ({reason}): {message}")]),
    };
    let total: usize = stages.iter().map(Vec::len).sum();
    let title = format!(
        "{name}: {revision} over {total} targets in {} stages",
        stages.len()
    );
    let mut lines = Vec::new();
    for (stage, members) in rollout.spec.stages.iter().zip(&stages) {
        let mut gate = Vec::new();
        if stage.pause {
            gate.push("waits for approval".to_string());
        }
        if stage.canaries > 0 {
            gate.push(format!("{} canaries first", stage.canaries));
        }
        gate.push(format!(
            "at most {} at once",
            fleetforge_rollouts::decide::max_in_flight(stage, members.len())
        ));
        if fleetforge_rollouts::decide::duration(&stage.soak) > std::time::Duration::ZERO {
            gate.push(format!("soak {}", stage.soak));
        }
        let changing: Vec<String> = members
            .iter()
            .filter(|c| c.facts.skip.is_none() && !c.facts.at_goal)
            .map(|c| match (&c.facts.next, rollout.spec.version.as_deref()) {
                (Some(next), Some(goal)) if next != goal => {
                    format!("{} {} ({next}, then {goal})", c.kind, c.name)
                }
                _ => format!("{} {}", c.kind, c.name),
            })
            .collect();
        let unchanged = members
            .iter()
            .filter(|c| c.facts.skip.is_none() && c.facts.at_goal)
            .count();
        let mut line = format!(
            "~ stage {} ({}): {}",
            stage.name,
            gate.join(", "),
            if changing.is_empty() {
                "nothing to change".into()
            } else {
                changing.join(", ")
            }
        );
        if changing.is_empty() {
            line.replace_range(0..1, " ");
        }
        if unchanged > 0 {
            line.push_str(&format!("; {unchanged} already there"));
        }
        for skipped in members.iter().filter(|c| c.facts.skip.is_some()) {
            line.push_str(&format!(
                "\n{} {} skipped: {}",
                skipped.kind,
                skipped.name,
                skipped.facts.skip.as_deref().unwrap_or_default()
            ));
        }
        lines.push(line);
    }
    // A rollout with nothing to roll is no change: its section goes.
    if !lines.iter().any(|l| l.starts_with('~')) {
        lines.clear();
    }
    (title, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetforge_api::tool_target::TargetKind;
    use serde_json::{Value, json};

    fn cluster(spec: Value, status: Option<Value>) -> Cluster {
        let mut value = json!({
            "metadata": {"name": "web", "namespace": "platform"},
            "spec": spec,
        });
        if let Some(status) = status {
            value["status"] = status;
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_cluster_plan_lists_the_engine_s_passes_and_refusals() {
        let old = cluster(
            json!({"providerConfigRef": {"name": "nop"}, "version": "1.33",
                   "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 2}]}),
            Some(json!({"version": "1.33", "nodePools": [
                {"name": "workers", "machineType": "standard-2", "version": "1.33", "min": 1, "max": 3, "desired": 2}]})),
        );
        let new = cluster(
            json!({"providerConfigRef": {"name": "nop"}, "version": "1.34",
                   "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": 4},
                                 {"name": "gpu", "machineType": "standard-8", "min": 0, "max": 2}]}),
            None,
        );
        assert_eq!(
            cluster_lines(&new, Some(&old)),
            [
                "~ upgrade the control plane to 1.34 (pass 1)",
                "~ upgrade node pool workers to 1.34 (pass 2)",
                "~ scale node pool workers to 4 (min 1, max 5) (pass 2)",
                "+ add node pool gpu (pass 2)",
            ]
        );
        let mut replaced = new.clone();
        replaced.spec.version = Some("1.33".into());
        replaced.spec.node_pools[0].machine_type = "standard-4".into();
        let lines = cluster_lines(&replaced, Some(&old));
        assert!(
            lines[0].starts_with("! refused: spec.nodePools[workers].machineType"),
            "{lines:?}"
        );
        assert!(lines[0].contains("a replacement"), "{lines:?}");
        assert_eq!(cluster_lines(&old, Some(&old)), Vec::<String>::new());
        assert!(
            cluster_lines(&new, None)[0]
                .starts_with("+ create on ProviderConfig nop, version 1.34")
        );
    }

    #[test]
    fn tool_changes_name_installs_upgrades_with_their_values_diff_and_removals() {
        let spec = |tools: Value, values: Value| -> ToolTargetSpec {
            serde_json::from_value(json!({
                "toolInstallRef": {"name": "t"},
                "target": {"kind": "Cluster", "name": "web"},
                "tools": tools, "values": values,
            }))
            .unwrap()
        };
        let tool = |name: &str, version: &str| json!({"name": name, "chart": {"repository": "https://charts.example.com", "name": name, "version": version}});
        let old = spec(
            json!([tool("a", "1.0.0"), tool("b", "1.0.0")]),
            json!({"a": {"replicas": 1}}),
        );
        let new = spec(
            json!([tool("a", "1.1.0"), tool("c", "2.0.0")]),
            json!({"a": {"replicas": 2}}),
        );
        let facts = fleetforge_tools::values::TargetFacts {
            kind: "Cluster".into(),
            name: "web".into(),
            ..Default::default()
        };
        let target = TargetRef {
            kind: TargetKind::Cluster,
            name: "web".into(),
        };
        let lines = tool_changes(&old, &new, &target, Some(&facts), "");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("~ upgrade a on Cluster web: chart a 1.0.0 -> a 1.1.0, values\n"),
            "{lines:?}"
        );
        assert!(
            lines[0].contains("-replicas: 1") && lines[0].contains("+replicas: 2"),
            "{lines:?}"
        );
        assert_eq!(lines[1], "+ install c (c 2.0.0) on Cluster web");
        assert_eq!(lines[2], "- uninstall b from Cluster web");
        assert!(tool_changes(&old, &old, &target, Some(&facts), "").is_empty());
    }
}
