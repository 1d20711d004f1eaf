//! The page of one Cluster or VirtualCluster.

use std::fmt::Write;

use k8s_openapi::jiff::Timestamp;

use super::{Page, Section, drift_badge, phase_badge, ready_badge, state_badge, time};
use crate::html::{esc, url_encode};
use crate::view::cluster::{ClusterDetail, EventRow};
use crate::view::{Access, age};

/// The page; `detail` is `None` when the object is not there (or not
/// visible to the viewer), `events` the recent Events or why there are
/// none.
pub fn render(
    kind: &str,
    namespace: &str,
    name: &str,
    detail: Option<&ClusterDetail>,
    events: Result<&[EventRow], &Access>,
    now: Timestamp,
) -> Page {
    let title = format!("{kind} {namespace}/{name}");
    let Some(detail) = detail else {
        return Page {
            title,
            section: Some(Section::Fleet),
            controls: r#"<p><a href="/">Back to the fleet</a></p>"#.into(),
            live: format!(
                r#"<p class="notice notice-missing">There is no {} {}/{} that you may see: it does not exist, was deleted, or you may not read it.</p>"#,
                esc(kind),
                esc(namespace),
                esc(name)
            ),
        };
    };
    let mut live = String::new();
    let row = &detail.row;
    let _ = write!(
        live,
        r#"<section aria-labelledby="summary-h"><h2 id="summary-h">Summary</h2><dl class="facts two">
<dt>Phase</dt><dd class="phase">{phase}</dd>
<dt>Ready</dt><dd class="ready">{ready}</dd>
<dt>Drift</dt><dd class="drift">{drift}</dd>
<dt>Provider</dt><dd>{provider}</dd>
<dt>{region_label}</dt><dd>{region}</dd>
<dt>Version</dt><dd>{version}</dd>
<dt>Endpoint</dt><dd>{endpoint}</dd>
<dt>Connection Secret</dt><dd><code>{secret}</code> <span class="hint">(key <code>value</code>; its contents are never shown here)</span></dd>
<dt>Age</dt><dd>{age}</dd>"#,
        phase = phase_badge(&row.phase),
        ready = ready_badge(row.ready),
        drift = drift_badge(row.drifted),
        provider = esc(or_dash(&row.provider)),
        region_label = if kind == "Cluster" { "Region" } else { "Host" },
        region = esc(or_dash(&row.region)),
        version = esc(or_dash(&row.version)),
        endpoint = esc(or_dash(&detail.endpoint)),
        secret = esc(&detail.connection_secret),
        age = time(row.created, &age(row.created, now)),
    );
    for (label, value) in &detail.settings {
        let _ = write!(live, "<dt>{}</dt><dd>{}</dd>", esc(label), esc(value));
    }
    if !row.labels.is_empty() {
        live.push_str("<dt>Labels</dt><dd>");
        for (key, value) in &row.labels {
            let _ = write!(
                live,
                r#"<code class="label">{}={}</code> "#,
                esc(key),
                esc(value)
            );
        }
        live.push_str("</dd>");
    }
    live.push_str("</dl></section>");

    if detail.row.drifted {
        let _ = write!(
            live,
            r#"<section aria-labelledby="drift-h" class="drift-fields"><h2 id="drift-h">Drift</h2><p>Changed outside fleetforge{}:</p><ul>"#,
            detail
                .drift_since
                .map(|t| format!(", first seen {} ago", age(Some(t), now)))
                .unwrap_or_default()
        );
        for field in &detail.drift {
            let _ = write!(live, "<li><code>{}</code></li>", esc(field));
        }
        live.push_str("</ul></section>");
    }

    if kind == "Cluster" {
        live.push_str(r#"<section aria-labelledby="pools-h"><h2 id="pools-h">Node pools</h2><table class="grid"><thead><tr><th scope="col">Pool</th><th scope="col">Machine type</th><th scope="col">Desired (spec)</th><th scope="col">Desired (provider)</th><th scope="col">Ready</th><th scope="col">Version</th></tr></thead><tbody>"#);
        for pool in &detail.pools {
            let _ = write!(
                live,
                r#"<tr><th scope="row">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&pool.name),
                esc(&pool.machine_type),
                esc(&pool.desired),
                esc(&pool.actual),
                esc(&pool.ready),
                esc(&pool.version)
            );
        }
        if detail.pools.is_empty() {
            live.push_str(r#"<tr><td colspan="6">No node pools.</td></tr>"#);
        }
        live.push_str("</tbody></table></section>");
    }

    live.push_str(r#"<section aria-labelledby="conditions-h"><h2 id="conditions-h">Conditions</h2><table class="grid"><thead><tr><th scope="col">Type</th><th scope="col">Status</th><th scope="col">Reason</th><th scope="col">Message</th><th scope="col">Since</th></tr></thead><tbody>"#);
    for condition in &detail.conditions {
        let _ = write!(
            live,
            r#"<tr><th scope="row">{}</th><td><span class="badge cond" data-status="{status}">{status}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&condition.type_),
            esc(&condition.reason),
            esc(&condition.message),
            time(condition.since, &age(condition.since, now)),
            status = esc(&condition.status),
        );
    }
    if detail.conditions.is_empty() {
        live.push_str(r#"<tr><td colspan="5">No conditions reported yet.</td></tr>"#);
    }
    live.push_str("</tbody></table></section>");

    live.push_str(r#"<section aria-labelledby="tools-h" id="tools"><h2 id="tools-h">Tools</h2>"#);
    if detail.tools.is_empty() {
        live.push_str("<p>No ToolInstall selects it.</p>");
    } else {
        live.push_str(r#"<table class="grid"><thead><tr><th scope="col">Tool</th><th scope="col">ToolInstall</th><th scope="col">State</th><th scope="col">Chart version</th><th scope="col">Message</th></tr></thead><tbody>"#);
        for (install, tool_target, cell) in &detail.tools {
            let _ = write!(
                live,
                r#"<tr data-tool="{tool}"><th scope="row"><a href="/tooltargets/{ns}/{tt}">{tool}</a></th><td>{install}</td><td class="state">{state}</td><td>{version}</td><td>{message}</td></tr>"#,
                tool = esc(&cell.tool),
                ns = url_encode(&row.namespace),
                tt = url_encode(tool_target),
                install = esc(install),
                state = state_badge(cell.state),
                version = esc(cell.chart_version.as_deref().unwrap_or("-")),
                message = esc(cell.message.as_deref().unwrap_or("")),
            );
        }
        live.push_str("</tbody></table>");
    }
    live.push_str("</section>");

    live.push_str(r#"<section aria-labelledby="events-h"><h2 id="events-h">Recent events</h2>"#);
    match events {
        Err(Access::Forbidden(message)) => {
            let _ = write!(
                live,
                r#"<p class="notice notice-forbidden">Not permitted: you may not list Events in namespace {} ({}).</p>"#,
                esc(&row.namespace),
                esc(message)
            );
        }
        Err(other) => {
            let _ = write!(
                live,
                r#"<p class="notice">Events are not available: {}</p>"#,
                esc(&format!("{other:?}"))
            );
        }
        Ok([]) => live.push_str("<p>No events.</p>"),
        Ok(events) => {
            live.push_str(r#"<table class="grid"><thead><tr><th scope="col">Type</th><th scope="col">Reason</th><th scope="col">Message</th><th scope="col">Count</th><th scope="col">Last seen</th></tr></thead><tbody>"#);
            for event in events {
                let _ = write!(
                    live,
                    r#"<tr><td><span class="badge event" data-type="{kind}">{kind}</span></td><th scope="row">{}</th><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    esc(&event.reason),
                    esc(&event.message),
                    event.count,
                    time(event.last, &age(event.last, now)),
                    kind = esc(&event.type_),
                );
            }
            live.push_str("</tbody></table>");
        }
    }
    live.push_str("</section>");

    Page {
        title,
        section: Some(Section::Fleet),
        controls: r#"<p><a href="/">Back to the fleet</a></p>"#.into(),
        live,
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}
