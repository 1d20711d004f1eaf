//! HTML for each page, rendered on the server from the view models. A
//! page is a static part (title, navigation, filter form) and a live
//! part (`<div id="live">`) that the page's script replaces whenever the
//! server pushes a newer rendering of it. Every value from the API goes
//! through [`esc`]; state is always written out, colour only repeats it.

pub mod cluster;
pub mod environments;
pub mod fleet;
pub mod rollouts;
pub mod tools;

use std::fmt::Write;

use fleetforge_api::ToolState;

use crate::html::{esc, query};
use crate::view::tools::state_name;
use crate::view::{Access, Readiness, ScopeAccess};

/// The pages in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `/`: Clusters and VirtualClusters.
    Fleet,
    /// `/tools`: the matrix.
    Tools,
    /// `/environments`.
    Environments,
    /// `/rollouts`.
    Rollouts,
}

impl Section {
    const ALL: [(Section, &'static str, &'static str); 4] = [
        (Section::Fleet, "/", "Fleet"),
        (Section::Tools, "/tools", "Tools"),
        (Section::Environments, "/environments", "Environments"),
        (Section::Rollouts, "/rollouts", "Rollouts"),
    ];
}

/// A rendered page, before the layout wraps it.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The `<title>` and `<h1>`.
    pub title: String,
    /// The section highlighted in the navigation.
    pub section: Option<Section>,
    /// Static content between the heading and the live part (filters).
    pub controls: String,
    /// The live part's content.
    pub live: String,
}

/// Who is looking, for the header and the forms.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// Their Kubernetes user name, if known.
    pub user: Option<String>,
    /// Where the identity comes from (`kubeconfig context kind-x`, `token`).
    pub source: String,
    /// The token forms must carry back (against cross-site requests).
    pub csrf: String,
}

/// The whole document: layout, navigation, the page, its live part and
/// where the script gets updates of it (`live_src`).
pub fn document(page: &Page, viewer: &Viewer, live_src: &str) -> String {
    let mut nav = String::new();
    for (section, href, label) in Section::ALL {
        let current = if page.section == Some(section) {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(nav, r#"<li><a href="{href}"{current}>{label}</a></li>"#);
    }
    let who = match &viewer.user {
        Some(user) => format!("Signed in as <strong>{}</strong>", esc(user)),
        None => "Signed in with the kubeconfig's credentials".to_string(),
    };
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · fleetforge</title>
<link rel="stylesheet" href="/assets/app.css">
<script src="/assets/app.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<p class="brand"><a href="/">fleetforge</a></p>
<nav aria-label="Pages"><ul>{nav}</ul></nav>
<p class="who">{who} <span class="source">({source})</span></p>
<p class="status" id="live-status" role="status" aria-live="polite" data-state="connecting">connecting…</p>
</header>
<main id="main" tabindex="-1">
<h1>{title}</h1>
{controls}
<div id="live" data-src="{src}" aria-live="off">
{live}
</div>
</main>
</body>
</html>
"##,
        title = esc(&page.title),
        source = esc(&viewer.source),
        controls = page.controls,
        src = esc(live_src),
        live = page.live,
    )
}

/// What a page says about watches that do not serve: a person not
/// allowed to list a kind sees "not permitted", not an error.
pub fn notices(kind: &str, access: &[ScopeAccess]) -> String {
    let mut out = String::new();
    for scope in access {
        let (class, text) = match &scope.access {
            Access::Ready => continue,
            Access::Loading => ("loading", format!("Loading {kind} {}…", scope.scope_text())),
            Access::Forbidden(message) => (
                "forbidden",
                format!(
                    "Not permitted: you may not list {kind} {} ({message}). Ask for a Role that allows it, or run fleetforge ui --namespace with the namespaces you may read.",
                    scope.scope_text()
                ),
            ),
            Access::NotServed(message) => (
                "not-served",
                format!(
                    "This API server does not serve {kind} ({message}): are the fleetforge CRDs installed?"
                ),
            ),
            Access::Failing(message) => (
                "failing",
                format!(
                    "Watching {kind} {} failed: {message}; retrying. What is shown may be out of date.",
                    scope.scope_text()
                ),
            ),
        };
        let _ = write!(
            out,
            r#"<p class="notice notice-{class}" data-kind="{}">{}</p>"#,
            esc(kind),
            esc(&text)
        );
    }
    out
}

/// A tool state as a badge: the state's name, its colour repeating it.
pub fn state_badge(state: ToolState) -> String {
    let name = state_name(state);
    format!(r#"<span class="badge state" data-state="{name}">{name}</span>"#)
}

/// A phase as a badge.
pub fn phase_badge(phase: &str) -> String {
    format!(
        r#"<span class="badge phase" data-phase="{0}">{0}</span>"#,
        esc(phase)
    )
}

/// The Ready condition as a badge.
pub fn ready_badge(ready: Readiness) -> String {
    let text = ready.as_str();
    format!(r#"<span class="badge ready" data-ready="{text}">{text}</span>"#)
}

/// Drift as a badge: `drifted` or `in sync`.
pub fn drift_badge(drifted: bool) -> String {
    if drifted {
        r#"<span class="badge drift" data-drift="yes">drifted</span>"#.to_string()
    } else {
        r#"<span class="badge drift" data-drift="no">in sync</span>"#.to_string()
    }
}

/// Links to the previous and next pages and a line saying where we are.
/// `href` gives the link of a page number.
pub fn pager(page: usize, pages: usize, href: impl Fn(usize) -> String) -> String {
    if pages <= 1 {
        return String::new();
    }
    let mut out = String::from(r#"<nav class="pager" aria-label="Pages of the table"><ul>"#);
    let link = |n: usize, label: &str, rel: &str| {
        format!(r#"<li><a href="{}" rel="{rel}">{label}</a></li>"#, href(n))
    };
    if page > 1 {
        out.push_str(&link(1, "First", "first"));
        out.push_str(&link(page - 1, "Previous", "prev"));
    }
    let _ = write!(
        out,
        r#"<li><span aria-current="page">Page {page} of {pages}</span></li>"#
    );
    if page < pages {
        out.push_str(&link(page + 1, "Next", "next"));
        out.push_str(&link(pages, "Last", "last"));
    }
    out.push_str("</ul></nav>");
    out
}

/// A link's query string from parameters (empty ones left out).
pub fn href(path: &str, params: &[(&'static str, String)]) -> String {
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    format!("{path}{}", query(&pairs))
}

/// `<option>`s for a `<select>`, the current one selected.
pub fn options(values: &[(String, String)], current: &str) -> String {
    let mut out = String::new();
    for (value, label) in values {
        let selected = if value == current { " selected" } else { "" };
        let _ = write!(
            out,
            r#"<option value="{}"{selected}>{}</option>"#,
            esc(value),
            esc(label)
        );
    }
    out
}

/// A `<time>` element: the relative text, the absolute time for
/// assistive technology and tooltips.
pub fn time(at: Option<k8s_openapi::jiff::Timestamp>, text: &str) -> String {
    match at {
        Some(at) => format!(r#"<time datetime="{at}" title="{at}">{}</time>"#, esc(text)),
        None => esc(text).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_escapes_what_it_is_given() {
        let page = Page {
            title: "<b>x</b>".into(),
            section: Some(Section::Tools),
            controls: String::new(),
            live: "<p>ok</p>".into(),
        };
        let viewer = Viewer {
            user: Some("eve\"><script>".into()),
            source: "kubeconfig".into(),
            csrf: String::new(),
        };
        let html = document(&page, &viewer, "/live/tools?q=a&b");
        assert!(html.contains("<title>&lt;b&gt;x&lt;/b&gt; · fleetforge</title>"));
        assert!(html.contains("eve&quot;&gt;&lt;script&gt;"));
        assert!(!html.contains("<script>"), "no inline script at all");
        assert!(html.contains(r#"data-src="/live/tools?q=a&amp;b""#));
        assert!(html.contains(r#"<a href="/tools" aria-current="page">Tools</a>"#));
    }

    #[test]
    fn notices_say_not_permitted_and_escape_the_message() {
        let access = vec![
            ScopeAccess {
                namespace: None,
                access: Access::Ready,
            },
            ScopeAccess {
                namespace: Some("team-b".into()),
                access: Access::Forbidden("clusters is <forbidden>".into()),
            },
        ];
        let html = notices("Clusters", &access);
        assert_eq!(html.matches("<p ").count(), 1);
        assert!(html.contains("Not permitted: you may not list Clusters in namespace team-b"));
        assert!(html.contains("clusters is &lt;forbidden&gt;"));
    }

    #[test]
    fn badges_carry_text_not_only_colour() {
        assert!(state_badge(ToolState::NotInstalled).contains(">NOT_INSTALLED<"));
        assert!(drift_badge(true).contains(">drifted<"));
        assert!(ready_badge(Readiness::False).contains(">False<"));
        assert!(phase_badge("<x>").contains("&lt;x&gt;"));
    }

    #[test]
    fn pagers_link_neighbours() {
        assert_eq!(pager(1, 1, |n| format!("?page={n}")), "");
        let middle = pager(2, 3, |n| format!("?page={n}"));
        for want in [
            "?page=1",
            "?page=3",
            "Page 2 of 3",
            r#"rel="prev""#,
            r#"rel="next""#,
        ] {
            assert!(middle.contains(want), "{want} in {middle}");
        }
        let last = pager(3, 3, |n| format!("?page={n}"));
        assert!(!last.contains(r#"rel="next""#));
    }
}
