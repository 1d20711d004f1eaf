//! The fleet page (`/`): counts, then the table of Clusters and
//! VirtualClusters with filter, sort and pages.

use std::collections::BTreeSet;
use std::fmt::Write;

use fleetforge_api::{Cluster, VirtualCluster};
use k8s_openapi::jiff::Timestamp;

use super::{
    Page, Section, drift_badge, href, notices, options, pager, phase_badge, ready_badge, time,
};
use crate::html::{esc, url_encode};
use crate::view::fleet::{self, FleetQuery, FleetRow, SortKey};
use crate::view::{Listing, age};

/// The path of a Cluster's or VirtualCluster's page.
pub fn object_path(row: &FleetRow) -> String {
    let kind = match row.kind {
        fleetforge_api::tool_target::TargetKind::Cluster => "clusters",
        fleetforge_api::tool_target::TargetKind::VirtualCluster => "virtualclusters",
    };
    format!(
        "/{kind}/{}/{}",
        url_encode(&row.namespace),
        url_encode(&row.name)
    )
}

const COLUMNS: [(SortKey, &str); 9] = [
    (SortKey::Name, "Name"),
    (SortKey::Kind, "Kind"),
    (SortKey::Provider, "Provider"),
    (SortKey::Region, "Region / host"),
    (SortKey::Version, "Version"),
    (SortKey::Phase, "Phase"),
    (SortKey::Ready, "Ready"),
    (SortKey::Drift, "Drift"),
    (SortKey::Age, "Age"),
];

/// The fleet page.
pub fn render(
    clusters: &Listing<Cluster>,
    virtual_clusters: &Listing<VirtualCluster>,
    query: &FleetQuery,
    now: Timestamp,
) -> Page {
    let rows: Vec<FleetRow> = clusters
        .items
        .iter()
        .map(|c| FleetRow::from_cluster(c))
        .chain(
            virtual_clusters
                .items
                .iter()
                .map(|v| FleetRow::from_virtual_cluster(v)),
        )
        .collect();
    Page {
        title: "Fleet".into(),
        section: Some(Section::Fleet),
        controls: controls(&rows, query),
        live: live(&rows, clusters, virtual_clusters, query, now),
    }
}

fn controls(rows: &[FleetRow], query: &FleetQuery) -> String {
    let namespaces: BTreeSet<&str> = rows.iter().map(|r| r.namespace.as_str()).collect();
    let mut namespace_options = vec![(String::new(), "all namespaces".to_string())];
    namespace_options.extend(namespaces.iter().map(|n| (n.to_string(), n.to_string())));
    if !query.namespace.is_empty() && !namespaces.contains(query.namespace.as_str()) {
        namespace_options.push((query.namespace.clone(), query.namespace.clone()));
    }
    let per_page: Vec<(String, String)> = [25, 50, 100, 200]
        .iter()
        .map(|n| (n.to_string(), format!("{n} per page")))
        .collect();
    // Facets chosen from the counts and the sort travel with the form.
    let mut hidden = String::new();
    for (key, value) in query.params(&[]) {
        if matches!(key, "phase" | "provider" | "drift" | "sort") && !value.is_empty() {
            let _ = write!(
                hidden,
                r#"<input type="hidden" name="{key}" value="{}">"#,
                esc(&value)
            );
        }
    }
    format!(
        r#"<form class="filters" method="get" action="/" role="search" aria-label="Filter clusters">
<label>Search <input type="search" name="q" value="{q}" placeholder="name, region, version, phase…" accesskey="/"></label>
<label>Namespace <select name="ns" data-autosubmit>{ns}</select></label>
<label>Labels <input type="text" name="labels" value="{labels}" placeholder="env=dev,tier!=db" spellcheck="false"></label>
<label>Rows <select name="per_page" data-autosubmit>{per_page}</select></label>
{hidden}<button type="submit">Filter</button> <a href="/">Clear</a>
</form>"#,
        q = esc(&query.text),
        ns = options(&namespace_options, &query.namespace),
        labels = esc(&query.labels),
        per_page = options(&per_page, &query.per_page.to_string()),
    )
}

fn facet_list(
    query: &FleetQuery,
    key: &'static str,
    counts: impl IntoIterator<Item = (String, usize)>,
    label: impl Fn(&str) -> String,
) -> String {
    let mut out = String::from("<ul>");
    for (value, count) in counts {
        let active = query
            .params(&[])
            .iter()
            .any(|(k, v)| *k == key && *v == value);
        let link = href(
            "/",
            &query.params(&[(key, value.clone()), ("page", String::new())]),
        );
        let current = if active {
            r#" aria-current="true""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<li><a href="{link}"{current}>{} <span class="count">{count}</span></a></li>"#,
            label(&value)
        );
    }
    out.push_str("</ul>");
    out
}

fn live(
    rows: &[FleetRow],
    clusters: &Listing<Cluster>,
    virtual_clusters: &Listing<VirtualCluster>,
    query: &FleetQuery,
    now: Timestamp,
) -> String {
    let mut out = String::new();
    out.push_str(&notices("Clusters", &clusters.access));
    out.push_str(&notices("VirtualClusters", &virtual_clusters.access));

    let counts = fleet::counts(rows);
    let _ = write!(
        out,
        r#"<section class="cards" aria-label="Summary">
<div class="card"><h2>Clusters</h2><p class="big" data-count="total">{total}</p><p>{ready} ready</p></div>
<div class="card"><h2>By phase</h2>{phases}</div>
<div class="card"><h2>By provider</h2>{providers}</div>
<div class="card"><h2>Drift</h2>{drift}</div>
</section>"#,
        total = counts.total,
        ready = counts.ready,
        phases = facet_list(query, "phase", counts.by_phase.clone(), phase_badge),
        providers = facet_list(query, "provider", counts.by_provider.clone(), |p| esc(p)
            .to_string()),
        drift = facet_list(
            query,
            "drift",
            [
                ("yes".to_string(), counts.drifted),
                ("no".to_string(), counts.in_sync)
            ],
            |d| drift_badge(d == "yes"),
        ),
    );

    let page = match fleet::page(rows, query) {
        Ok(page) => page,
        Err(error) => {
            let _ = write!(
                out,
                r#"<p class="notice notice-error" role="alert">The label selector does not parse: {}</p>"#,
                esc(&error)
            );
            return out;
        }
    };
    let first = (page.page - 1) * query.per_page + 1;
    let caption = if page.matching == 0 {
        if rows.is_empty() {
            "No Clusters or VirtualClusters you may see.".to_string()
        } else {
            "No cluster matches the filter.".to_string()
        }
    } else {
        format!(
            "Showing {first}–{} of {} clusters{}",
            first + page.rows.len() - 1,
            page.matching,
            if page.matching < rows.len() {
                format!(" matching the filter ({} in all)", rows.len())
            } else {
                String::new()
            }
        )
    };
    let _ = write!(
        out,
        r#"<table class="grid fleet"><caption>{}</caption><thead><tr>"#,
        esc(&caption)
    );
    for (key, label) in COLUMNS {
        let (sort, state) = if query.sort == key {
            let next = if query.descending {
                key.as_str().to_string()
            } else {
                format!("-{}", key.as_str())
            };
            let state = if query.descending {
                "descending"
            } else {
                "ascending"
            };
            (next, format!(r#" aria-sort="{state}""#))
        } else {
            (key.as_str().to_string(), String::new())
        };
        let link = href(
            "/",
            &query.params(&[("sort", sort), ("page", String::new())]),
        );
        let _ = write!(
            out,
            r#"<th scope="col"{state}><a href="{link}">{label}</a></th>"#
        );
    }
    out.push_str("</tr></thead><tbody>");
    for row in &page.rows {
        let _ = write!(
            out,
            r#"<tr data-key="{kind}/{ns}/{name}"><th scope="row"><a href="{path}">{name}</a> <span class="ns">{ns}</span></th><td>{kind}</td><td>{provider}</td><td>{region}</td><td>{version}</td><td class="phase">{phase}</td><td class="ready">{ready}</td><td class="drift">{drift}</td><td>{age}</td></tr>"#,
            kind = row.kind.as_str(),
            ns = esc(&row.namespace),
            name = esc(&row.name),
            path = object_path(row),
            provider = esc(if row.provider.is_empty() {
                "-"
            } else {
                &row.provider
            }),
            region = esc(if row.region.is_empty() {
                "-"
            } else {
                &row.region
            }),
            version = esc(if row.version.is_empty() {
                "-"
            } else {
                &row.version
            }),
            phase = phase_badge(&row.phase),
            ready = ready_badge(row.ready),
            drift = drift_badge(row.drifted),
            age = time(row.created, &age(row.created, now)),
        );
    }
    out.push_str("</tbody></table>");
    out.push_str(&pager(page.page, page.pages, |n| {
        href("/", &query.params(&[("page", n.to_string())]))
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Access, ScopeAccess};
    use serde_json::json;

    fn cluster(namespace: &str, name: &str, phase: &str) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"providerConfigRef": {"name": "nop"}},
            "status": {"phase": phase, "provider": "nop"},
        }))
        .unwrap()
    }

    #[test]
    fn renders_rows_counts_and_escapes_names() {
        let clusters = Listing::ready(vec![
            cluster("a", "web", "Ready"),
            cluster("a", "<img src=x onerror=alert(1)>", "Failed"),
        ]);
        let page = render(
            &clusters,
            &Listing::ready(vec![]),
            &FleetQuery::default(),
            Timestamp::now(),
        );
        assert!(page.live.contains(r#"data-key="Cluster/a/web""#));
        assert!(page.live.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.live.contains("<img"));
        assert!(
            page.live
                .contains(r#"<p class="big" data-count="total">2</p>"#)
        );
        assert!(page.live.contains("Showing 1–2 of 2 clusters"));
        assert!(page.controls.contains(r#"<option value="a">a</option>"#));
    }

    #[test]
    fn a_forbidden_scope_shows_a_notice_and_no_rows() {
        let clusters: Listing<Cluster> = Listing {
            items: vec![],
            access: vec![ScopeAccess {
                namespace: None,
                access: Access::Forbidden("clusters.fleetforge.dev is forbidden".into()),
            }],
        };
        let page = render(
            &clusters,
            &Listing::ready(vec![]),
            &FleetQuery::default(),
            Timestamp::now(),
        );
        assert!(page.live.contains("Not permitted"));
        assert!(
            page.live
                .contains("No Clusters or VirtualClusters you may see.")
        );
    }

    #[test]
    fn a_bad_selector_is_an_alert_not_an_error_page() {
        let query = FleetQuery {
            labels: "env in dev".into(),
            ..FleetQuery::default()
        };
        let page = render(
            &Listing::ready(vec![cluster("a", "web", "Ready")]),
            &Listing::ready(vec![]),
            &query,
            Timestamp::now(),
        );
        assert!(page.live.contains(r#"role="alert""#));
        assert!(page.live.contains("parentheses"));
    }
}
