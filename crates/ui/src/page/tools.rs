//! The tools matrix (`/tools`) and the page of one ToolTarget
//! (`/tooltargets/NAMESPACE/NAME`), where a cell clicks through to.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{Page, Section, href, notices, options, pager, state_badge};
use crate::html::{esc, url_encode};
use crate::view::Listing;
use crate::view::tools::{
    self, Columns, STATES, ToolInstallSummary, ToolTargetSummary, ToolsQuery, state_name,
};

/// The matrix page, with the ToolInstalls' own counts below it.
pub fn render(
    targets: &Listing<ToolTargetSummary>,
    installs: &Listing<ToolInstallSummary>,
    query: &ToolsQuery,
) -> Page {
    let refs: Vec<&ToolTargetSummary> = targets.items.iter().map(|t| t.as_ref()).collect();
    let mut live = live(&refs, targets, query);
    live.push_str(&installs_html(installs, query));
    Page {
        title: "Tools".into(),
        section: Some(Section::Tools),
        controls: controls(&refs, query),
        live,
    }
}

/// Every ToolInstall with what its status counts, folded away: a fleet
/// where each cluster has a profile has as many as it has clusters.
fn installs_html(installs: &Listing<ToolInstallSummary>, query: &ToolsQuery) -> String {
    let mut out = notices("ToolInstalls", &installs.access);
    let mut shown: Vec<&ToolInstallSummary> = installs
        .items
        .iter()
        .map(|i| i.as_ref())
        .filter(|i| query.namespace.is_empty() || i.namespace == query.namespace)
        .collect();
    shown.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let _ = write!(
        out,
        r#"<details class="installs"><summary>ToolInstalls ({})</summary><table class="grid"><thead><tr><th scope="col">ToolInstall</th><th scope="col">ToolSet</th><th scope="col">Targets</th><th scope="col">Deployed</th><th scope="col">Failed</th></tr></thead><tbody>"#,
        shown.len()
    );
    for install in shown {
        let _ = write!(
            out,
            r#"<tr><th scope="row">{} <span class="ns">{}</span></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&install.name),
            esc(&install.namespace),
            esc(install.tool_set.as_deref().unwrap_or("inline tools")),
            install.targets,
            install.deployed,
            install.failed
        );
    }
    out.push_str("</tbody></table></details>");
    out
}

fn controls(targets: &[&ToolTargetSummary], query: &ToolsQuery) -> String {
    let namespaces: BTreeSet<&str> = targets.iter().map(|t| t.namespace.as_str()).collect();
    let mut namespace_options = vec![(String::new(), "all namespaces".to_string())];
    namespace_options.extend(namespaces.iter().map(|n| (n.to_string(), n.to_string())));
    let mut state_options = vec![(String::new(), "any state".to_string())];
    state_options.extend(
        STATES
            .iter()
            .map(|s| (state_name(*s).to_string(), state_name(*s).to_string())),
    );
    let by_options = [
        (String::new(), "tools".to_string()),
        ("install".to_string(), "ToolInstalls".to_string()),
    ];
    format!(
        r#"<form class="filters" method="get" action="/tools" role="search" aria-label="Filter targets">
<label>Target <input type="search" name="q" value="{q}" placeholder="namespace/name…" accesskey="/"></label>
<label>Namespace <select name="ns" data-autosubmit>{ns}</select></label>
<label>State <select name="state" data-autosubmit>{state}</select></label>
<label>Columns <select name="by" data-autosubmit>{by}</select></label>
<button type="submit">Filter</button> <a href="/tools">Clear</a>
</form>"#,
        q = esc(&query.text),
        ns = options(&namespace_options, &query.namespace),
        state = options(&state_options, query.state.map(state_name).unwrap_or("")),
        by = options(
            &by_options,
            if query.columns == Columns::Installs {
                "install"
            } else {
                ""
            }
        ),
    )
}

fn live(
    refs: &[&ToolTargetSummary],
    targets: &Listing<ToolTargetSummary>,
    query: &ToolsQuery,
) -> String {
    let mut out = notices("ToolTargets", &targets.access);
    let matrix = tools::matrix(refs, query);
    out.push_str(r#"<section class="cards" aria-label="Tools by state"><div class="card wide"><h2>Tools by state</h2><ul class="states">"#);
    for (state, count) in &matrix.counts {
        let link = href(
            "/tools",
            &query.params(&[
                ("state", state_name(*state).into()),
                ("page", String::new()),
            ]),
        );
        let _ = write!(
            out,
            r#"<li><a href="{link}">{} <span class="count">{count}</span></a></li>"#,
            state_badge(*state)
        );
    }
    if matrix.counts.is_empty() {
        out.push_str("<li>No tools installed by any ToolInstall you may see.</li>");
    }
    out.push_str("</ul></div></section>");

    let caption = if matrix.matching == 0 {
        "No target matches.".to_string()
    } else {
        let first = (matrix.page - 1) * query.per_page + 1;
        format!(
            "Targets {first}–{} of {}, by {}",
            first + matrix.rows.len() - 1,
            matrix.matching,
            match query.columns {
                Columns::Tools => "tool",
                Columns::Installs => "ToolInstall",
            }
        )
    };
    let _ = write!(
        out,
        r#"<div class="scroll"><table class="grid matrix"><caption>{}</caption><thead><tr><th scope="col">Target</th>"#,
        esc(&caption)
    );
    for column in &matrix.columns {
        let _ = write!(out, r#"<th scope="col"><span>{}</span></th>"#, esc(column));
    }
    out.push_str("</tr></thead><tbody>");
    for row in &matrix.rows {
        let target_path = format!(
            "/{}/{}/{}",
            match row.kind {
                fleetforge_api::tool_target::TargetKind::Cluster => "clusters",
                fleetforge_api::tool_target::TargetKind::VirtualCluster => "virtualclusters",
            },
            url_encode(&row.namespace),
            url_encode(&row.target)
        );
        let _ = write!(
            out,
            r#"<tr data-key="{kind}/{ns}/{name}"><th scope="row"><a href="{target_path}">{name}</a> <span class="ns">{ns}</span></th>"#,
            kind = row.kind.as_str(),
            ns = esc(&row.namespace),
            name = esc(&row.target),
        );
        for (column, cell) in matrix.columns.iter().zip(&row.cells) {
            match cell {
                Some(cell) => {
                    let name = state_name(cell.state);
                    let _ = write!(
                        out,
                        r#"<td class="cell" data-column="{col}" data-state="{name}"><a class="badge state" data-state="{name}" href="/tooltargets/{ns}/{tt}" title="{message}" aria-label="{col} on {target}: {name}">{name}</a></td>"#,
                        col = esc(column),
                        ns = url_encode(&row.namespace),
                        tt = url_encode(&cell.tool_target),
                        message = esc(cell.message.as_deref().unwrap_or(name)),
                        target = esc(&row.target),
                    );
                }
                None => {
                    let _ = write!(
                        out,
                        r#"<td class="cell empty" data-column="{}"><span aria-hidden="true">·</span><span class="visually-hidden">not selected</span></td>"#,
                        esc(column)
                    );
                }
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out.push_str(&pager(matrix.page, matrix.pages, |n| {
        href("/tools", &query.params(&[("page", n.to_string())]))
    }));
    out
}

/// The page of one ToolTarget: each tool's state, version, message and
/// drift.
pub fn tool_target(namespace: &str, name: &str, found: Option<&ToolTargetSummary>) -> Page {
    let title = format!("ToolTarget {namespace}/{name}");
    let controls = r#"<p><a href="/tools">Back to the tools</a></p>"#.to_string();
    let Some(tt) = found else {
        return Page {
            title,
            section: Some(Section::Tools),
            controls,
            live: format!(
                r#"<p class="notice notice-missing">There is no ToolTarget {}/{} that you may see.</p>"#,
                esc(namespace),
                esc(name)
            ),
        };
    };
    let target_path = format!(
        "/{}/{}/{}",
        match tt.target_kind {
            fleetforge_api::tool_target::TargetKind::Cluster => "clusters",
            fleetforge_api::tool_target::TargetKind::VirtualCluster => "virtualclusters",
        },
        url_encode(&tt.namespace),
        url_encode(&tt.target)
    );
    let mut live = format!(
        r#"<dl class="facts"><dt>ToolInstall</dt><dd>{install}</dd><dt>Target</dt><dd>{kind} <a href="{target_path}">{target}</a></dd><dt>State</dt><dd class="state">{state}</dd></dl>
<table class="grid"><thead><tr><th scope="col">Tool</th><th scope="col">State</th><th scope="col">Chart version</th><th scope="col">Message</th></tr></thead><tbody>"#,
        install = esc(&tt.install),
        kind = tt.target_kind.as_str(),
        target = esc(&tt.target),
        state = state_badge(tt.state()),
    );
    for cell in &tt.tools {
        let mut message = esc(cell.message.as_deref().unwrap_or("")).to_string();
        if !cell.drift.is_empty() {
            message.push_str("<ul>");
            for field in &cell.drift {
                let _ = write!(message, "<li><code>{}</code></li>", esc(field));
            }
            message.push_str("</ul>");
        }
        let _ = write!(
            live,
            r#"<tr data-tool="{tool}"><th scope="row">{tool}</th><td class="state">{state}</td><td>{version}</td><td class="message">{message}</td></tr>"#,
            tool = esc(&cell.tool),
            state = state_badge(cell.state),
            version = esc(cell.chart_version.as_deref().unwrap_or("-")),
        );
    }
    live.push_str("</tbody></table>");
    Page {
        title,
        section: Some(Section::Tools),
        controls,
        live,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::tools::tests::mk_tool_target;
    use fleetforge_api::ToolInstall;

    #[test]
    fn cells_link_to_their_tool_target_with_the_message() {
        let tt = mk_tool_target(
            "p",
            "dev-1-profile",
            "dev-1",
            &[("web", Some("FAILED"), Some(r#"helm: "boom" <here>"#))],
        );
        let targets = Listing::ready(vec![ToolTargetSummary::from_tool_target(&tt)]);
        let install: ToolInstall = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolInstall",
            "metadata": {"name": "dev-1-profile", "namespace": "p"},
            "spec": {"toolSetRef": {"name": "dev"}, "targets": {"clusterNames": ["dev-1"]}},
            "status": {"summary": {"targets": 1, "deployed": 0, "stale": 0, "failed": 1, "pending": 0, "unknown": 0}},
        }))
        .unwrap();
        let installs = Listing::ready(vec![ToolInstallSummary::from_tool_install(&install)]);
        let page = render(&targets, &installs, &ToolsQuery::default());
        assert!(page.live.contains("<summary>ToolInstalls (1)</summary>"));
        assert!(
            page.live
                .contains("<td>dev</td><td>1</td><td>0</td><td>1</td>")
        );
        assert!(
            page.live
                .contains(r#"href="/tooltargets/p/dev-1-profile-cluster-dev-1""#)
        );
        assert!(
            page.live
                .contains(r#"title="helm: &quot;boom&quot; &lt;here&gt;""#)
        );
        assert!(
            page.live
                .contains(r#"aria-label="web on dev-1: FAILED">FAILED</a>"#)
        );

        let detail = tool_target(
            "p",
            "dev-1-profile-cluster-dev-1",
            targets.items.first().map(|t| t.as_ref()),
        );
        assert!(detail.live.contains("helm: &quot;boom&quot; &lt;here&gt;"));
        let missing = tool_target("p", "gone", None);
        assert!(missing.live.contains("no ToolTarget p/gone"));
    }
}
