//! The rollouts page (`/rollouts`): every FleetRollout with its stages,
//! progress, and the targets that are in flight, failed or skipped.

use std::fmt::Write;

use fleetforge_api::FleetRollout;

use super::{Page, Section, notices, phase_badge};
use crate::html::esc;
use crate::view::Listing;
use crate::view::rollouts::{self, RolloutView, state_name};

/// The rollouts page.
pub fn render(list: &Listing<FleetRollout>) -> Page {
    let refs: Vec<&FleetRollout> = list.items.iter().map(|r| r.as_ref()).collect();
    let views = rollouts::rollouts(&refs);
    let mut live = notices("FleetRollouts", &list.access);
    if views.is_empty() && list.loaded() {
        live.push_str("<p>No FleetRollouts you may see. <code>kubectl apply</code> one to roll a version or a ToolSet over the fleet in stages.</p>");
    }
    for view in &views {
        live.push_str(&rollout_html(view));
    }
    Page {
        title: "Rollouts".into(),
        section: Some(Section::Rollouts),
        controls: String::new(),
        live,
    }
}

fn rollout_html(view: &RolloutView) -> String {
    let id = format!("rollout-{}-{}", view.namespace, view.name);
    let mut out = format!(
        r#"<section class="rollout" data-key="{ns}/{name}" aria-labelledby="{id}">
<h2 id="{id}">{name} <span class="ns">{ns}</span></h2>
<dl class="facts"><dt>Change</dt><dd>{change}</dd><dt>Phase</dt><dd class="phase">{phase}{paused}</dd><dt>Stage</dt><dd>{stage}</dd>
<dt>Progress</dt><dd><progress max="{total}" value="{done}" aria-label="{done} of {total} targets done">{percent}%</progress> {done}/{total} done ({percent}%)</dd></dl>"#,
        id = esc(&id),
        ns = esc(&view.namespace),
        name = esc(&view.name),
        change = esc(&view.change),
        phase = phase_badge(&view.phase),
        paused = if view.paused { " (paused)" } else { "" },
        stage = esc(if view.stage.is_empty() {
            "-"
        } else {
            &view.stage
        }),
        total = view.total.max(1),
        done = view.done,
        percent = view.percent(),
    );
    if !view.stages.is_empty() {
        out.push_str(r#"<table class="grid"><caption>Stages</caption><thead><tr><th scope="col">Stage</th><th scope="col">State</th><th scope="col">Done</th><th scope="col">In flight</th><th scope="col">Failed</th><th scope="col">Targets</th></tr></thead><tbody>"#);
        for stage in &view.stages {
            let _ = write!(
                out,
                r#"<tr><th scope="row">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&stage.name),
                phase_badge(state_name(stage.state)),
                stage.done,
                stage.in_flight,
                stage.failed,
                stage.targets
            );
        }
        out.push_str("</tbody></table>");
    }
    if !view.targets.is_empty() {
        out.push_str(r#"<table class="grid"><caption>Targets in flight, failed or skipped</caption><thead><tr><th scope="col">Target</th><th scope="col">Stage</th><th scope="col">State</th><th scope="col">Message</th></tr></thead><tbody>"#);
        for target in &view.targets {
            let _ = write!(
                out,
                r#"<tr><th scope="row">{} {}</th><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&target.kind),
                esc(&target.name),
                esc(&target.stage),
                phase_badge(&target.state),
                esc(&target.message)
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    out
}
