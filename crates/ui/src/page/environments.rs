//! The environments page (`/environments`), with the one write the fleet
//! view offers: extend or delete an environment you own (the API server
//! decides whether you may; the buttons only appear on your own).

use std::collections::BTreeSet;
use std::fmt::Write;

use fleetforge_api::Environment;
use k8s_openapi::jiff::Timestamp;

use super::{Page, Section, Viewer, notices, options, phase_badge};
use crate::html::{esc, url_encode};
use crate::view::Listing;
use crate::view::environments::{self, EXTENSIONS, EnvironmentRow, EnvironmentsQuery};

/// What the last action did, shown above the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A success, in words.
    Done(String),
    /// The API server (or the form) refused, in its words.
    Refused(String),
}

/// The environments page.
pub fn render(
    list: &Listing<Environment>,
    viewer: &Viewer,
    query: &EnvironmentsQuery,
    outcome: Option<&Outcome>,
    now: Timestamp,
) -> Page {
    let refs: Vec<&Environment> = list.items.iter().map(|e| e.as_ref()).collect();
    let (rows, counts) = environments::environments(&refs, viewer.user.as_deref(), query, now);
    let namespaces: BTreeSet<String> = refs
        .iter()
        .filter_map(|e| e.metadata.namespace.clone())
        .collect();
    let mut namespace_options = vec![(String::new(), "all namespaces".to_string())];
    namespace_options.extend(namespaces.iter().map(|n| (n.clone(), n.clone())));
    let controls = format!(
        r#"<form class="filters" method="get" action="/environments" role="search" aria-label="Filter environments">
<label>Search <input type="search" name="q" value="{q}" placeholder="name, owner, phase…" accesskey="/"></label>
<label>Namespace <select name="ns" data-autosubmit>{ns}</select></label>
<label><input type="checkbox" name="mine" value="yes"{mine} data-autosubmit> only mine</label>
<button type="submit">Filter</button> <a href="/environments">Clear</a>
</form>"#,
        q = esc(&query.text),
        ns = options(&namespace_options, &query.namespace),
        mine = if query.mine_only { " checked" } else { "" },
    );

    let mut live = notices("Environments", &list.access);
    match outcome {
        Some(Outcome::Done(text)) => {
            let _ = write!(
                live,
                r#"<p class="notice notice-done" role="status">{}</p>"#,
                esc(text)
            );
        }
        Some(Outcome::Refused(text)) => {
            let _ = write!(
                live,
                r#"<p class="notice notice-error" role="alert">{}</p>"#,
                esc(text)
            );
        }
        None => {}
    }
    let _ = write!(
        live,
        r#"<section class="cards" aria-label="Summary">
<div class="card"><h2>Environments</h2><p class="big" data-count="total">{}</p></div>
<div class="card"><h2>Yours</h2><p class="big" data-count="mine">{}</p></div>
<div class="card"><h2>Asleep</h2><p class="big" data-count="sleeping">{}</p></div>
<div class="card"><h2>Expiring within a day</h2><p class="big" data-count="expiring">{}</p></div>
</section>"#,
        counts.total, counts.mine, counts.sleeping, counts.expiring_today
    );
    live.push_str(r#"<table class="grid environments"><caption>Yours first, then the soonest to expire</caption><thead><tr><th scope="col">Name</th><th scope="col">Owner</th><th scope="col">Type</th><th scope="col">Phase</th><th scope="col">Time left</th><th scope="col">Asleep</th><th scope="col">Estimate</th><th scope="col">Actions</th></tr></thead><tbody>"#);
    for row in &rows {
        live.push_str(&row_html(row, viewer, now));
    }
    if rows.is_empty() {
        live.push_str(r#"<tr><td colspan="8">No environments you may see.</td></tr>"#);
    }
    live.push_str("</tbody></table>");
    Page {
        title: "Environments".into(),
        section: Some(Section::Environments),
        controls,
        live,
    }
}

fn row_html(row: &EnvironmentRow, viewer: &Viewer, now: Timestamp) -> String {
    let left = row.time_left(now);
    let time_left = match row.expires_at {
        Some(at) => format!(
            r#"<time datetime="{at}" data-expires="{at}" title="expires {at}">{}</time>"#,
            esc(&left)
        ),
        None => esc(&left).to_string(),
    };
    let actions = if row.mine {
        let base = format!(
            "/environments/{}/{}",
            url_encode(&row.namespace),
            url_encode(&row.name)
        );
        let mut extend = String::new();
        for (label, _) in EXTENSIONS {
            let _ = write!(extend, r#"<option value="{label}">{label}</option>"#);
        }
        format!(
            r#"<form method="post" action="{base}/extend" class="inline"><input type="hidden" name="csrf" value="{csrf}"><label>Extend by <select name="by">{extend}</select></label> <button type="submit">Extend</button></form>
<form method="post" action="{base}/delete" class="inline" data-confirm="Delete {name} and everything in it?"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="danger">Delete</button></form>"#,
            csrf = esc(&viewer.csrf),
            name = esc(&row.name),
        )
    } else {
        r#"<span class="hint">not yours</span>"#.to_string()
    };
    format!(
        r#"<tr data-key="{ns}/{name}"{mine}><th scope="row">{name} <span class="ns">{ns}</span>{you}</th><td>{owner}</td><td>{kind}</td><td class="phase">{phase}</td><td class="left">{time_left}</td><td>{asleep}</td><td>{estimate}</td><td>{actions}</td></tr>"#,
        ns = esc(&row.namespace),
        name = esc(&row.name),
        mine = if row.mine { r#" class="mine""# } else { "" },
        you = if row.mine {
            r#" <span class="badge you">yours</span>"#
        } else {
            ""
        },
        owner = esc(&row.owner),
        kind = row.kind,
        phase = phase_badge(&row.phase),
        asleep = if row.sleeping {
            r#"<span class="badge sleep" data-sleep="yes">asleep</span>"#
        } else {
            r#"<span class="badge sleep" data-sleep="no">awake</span>"#
        },
        estimate = esc(if row.estimate.is_empty() {
            "-"
        } else {
            &row.estimate
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str, owner: &str) -> Environment {
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": name, "namespace": "platform", "creationTimestamp": "2026-12-01T08:00:00Z"},
            "spec": {"type": "dedicated", "owner": owner, "ttl": "8h",
                     "dedicated": {"providerConfigRef": {"name": "local"}}},
            "status": {"phase": "Ready", "expiresAt": "2026-12-01T16:00:00Z"},
        }))
        .unwrap()
    }

    #[test]
    fn only_your_own_have_actions_and_they_carry_the_form_token() {
        let list = Listing::ready(vec![env("theirs", "bob"), env("mine", "alice")]);
        let viewer = Viewer {
            user: Some("alice".into()),
            source: "kubeconfig".into(),
            csrf: "tok\"en".into(),
        };
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let page = render(&list, &viewer, &Default::default(), None, now);
        let mine = page.live.find(r#"data-key="platform/mine""#).unwrap();
        let theirs = page.live.find(r#"data-key="platform/theirs""#).unwrap();
        assert!(mine < theirs, "yours first");
        assert_eq!(
            page.live
                .matches(r#"action="/environments/platform/mine/extend""#)
                .count(),
            1
        );
        assert!(!page.live.contains("/environments/platform/theirs/"));
        assert!(page.live.contains(r#"name="csrf" value="tok&quot;en""#));
        assert!(page.live.contains(r#"data-expires="2026-12-01T16:00:00Z""#));
        assert!(page.live.contains(">6h 00m 00s<"));
    }
}
