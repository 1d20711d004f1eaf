//! The tools matrix: targets (rows) by tools or ToolInstalls (columns),
//! each cell a state from the ToolTargets, with counts by state, a filter
//! and pages. ToolTargets are kept slim ([`ToolTargetSummary`]): at 1,000
//! clusters and 20 ToolInstalls there are 20,000 of them, and the page
//! needs only names, states and messages, never the charts' values.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fleetforge_api::tool_target::TargetKind;
use fleetforge_api::{ToolInstall, ToolState, ToolTarget};
use kube::ResourceExt;

use super::{clamp_page, matches_text};

/// Every state, worst first: the order cells of one target are combined
/// in, and the order of the counts.
pub const STATES: [ToolState; 8] = [
    ToolState::Failed,
    ToolState::Unknown,
    ToolState::Drifted,
    ToolState::Stale,
    ToolState::Pending,
    ToolState::NotInstalled,
    ToolState::Shared,
    ToolState::Deployed,
];

/// A state as the API spells it (`NOT_INSTALLED`).
pub fn state_name(state: ToolState) -> &'static str {
    match state {
        ToolState::Deployed => "DEPLOYED",
        ToolState::Stale => "STALE",
        ToolState::Drifted => "DRIFTED",
        ToolState::NotInstalled => "NOT_INSTALLED",
        ToolState::Failed => "FAILED",
        ToolState::Pending => "PENDING",
        ToolState::Unknown => "UNKNOWN",
        ToolState::Shared => "SHARED",
    }
}

/// Parses a state as the API spells it.
pub fn parse_state(text: &str) -> Option<ToolState> {
    STATES
        .into_iter()
        .find(|s| state_name(*s).eq_ignore_ascii_case(text))
}

fn severity(state: ToolState) -> usize {
    STATES.iter().position(|s| *s == state).unwrap_or(0)
}

/// The worse of two states (FAILED before UNKNOWN before DRIFTED ...).
pub fn worse(a: ToolState, b: ToolState) -> ToolState {
    if severity(a) <= severity(b) { a } else { b }
}

/// One tool on one target, as its ToolTarget reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCell {
    /// The tool's name.
    pub tool: String,
    /// Its state.
    pub state: ToolState,
    /// The chart version installed.
    pub chart_version: Option<String>,
    /// Why it is in this state (Helm's message when it failed).
    pub message: Option<String>,
    /// For DRIFTED: what differs.
    pub drift: Vec<String>,
}

/// What the pages need of a ToolTarget.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolTargetSummary {
    /// Namespace (of the ToolTarget, its ToolInstall and its target).
    pub namespace: String,
    /// The ToolTarget's name.
    pub name: String,
    /// Its ToolInstall.
    pub install: String,
    /// The target's kind.
    pub target_kind: TargetKind,
    /// The target's name.
    pub target: String,
    /// Every tool declared for the target, with its reported state
    /// (`PENDING` until the ToolTarget reports one).
    pub tools: Vec<ToolCell>,
}

impl ToolTargetSummary {
    /// The summary of a ToolTarget.
    pub fn from_tool_target(tt: &ToolTarget) -> Self {
        let status = tt.status.clone().unwrap_or_default();
        let reported: HashMap<&str, &fleetforge_api::tool_install::ToolStatus> =
            status.tools.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut tools: Vec<ToolCell> = tt
            .spec
            .tools
            .iter()
            .map(|tool| match reported.get(tool.name.as_str()) {
                Some(found) => ToolCell {
                    tool: tool.name.clone(),
                    state: found.state,
                    chart_version: found.chart_version.clone(),
                    message: found.message.clone(),
                    drift: found.drift.clone(),
                },
                None => ToolCell {
                    tool: tool.name.clone(),
                    state: ToolState::Pending,
                    chart_version: None,
                    message: Some("no state reported yet".to_string()),
                    drift: Vec::new(),
                },
            })
            .collect();
        // States for tools no longer declared (being uninstalled) still
        // say something true about the target.
        for found in &status.tools {
            if !tools.iter().any(|t| t.tool == found.name) {
                tools.push(ToolCell {
                    tool: found.name.clone(),
                    state: found.state,
                    chart_version: found.chart_version.clone(),
                    message: found.message.clone(),
                    drift: found.drift.clone(),
                });
            }
        }
        Self {
            namespace: tt.namespace().unwrap_or_default(),
            name: tt.name_any(),
            install: tt.spec.tool_install_ref.name.clone(),
            target_kind: tt.spec.target.kind,
            target: tt.spec.target.name.clone(),
            tools,
        }
    }

    /// The worst state among its tools; PENDING with none.
    pub fn state(&self) -> ToolState {
        self.tools
            .iter()
            .map(|t| t.state)
            .reduce(worse)
            .unwrap_or(ToolState::Pending)
    }
}

/// What the pages need of a ToolInstall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInstallSummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The ToolSet it installs, if it names one.
    pub tool_set: Option<String>,
    /// Targets selected, deployed and failed, as its status counts them.
    pub targets: i32,
    /// See `targets`.
    pub deployed: i32,
    /// See `targets`.
    pub failed: i32,
}

impl ToolInstallSummary {
    /// The summary of a ToolInstall.
    pub fn from_tool_install(ti: &ToolInstall) -> Self {
        let summary = ti
            .status
            .as_ref()
            .and_then(|s| s.summary.clone())
            .unwrap_or_default();
        Self {
            namespace: ti.namespace().unwrap_or_default(),
            name: ti.name_any(),
            tool_set: ti.spec.tool_set_ref.as_ref().map(|r| r.name.clone()),
            targets: summary.targets,
            deployed: summary.deployed,
            failed: summary.failed,
        }
    }
}

/// What the matrix's columns are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// One column per tool name: dense when every cluster has a profile
    /// of its own (the demo), as each profile installs the same tools.
    Tools,
    /// One column per ToolInstall: dense when a few ToolInstalls each
    /// select many targets.
    Installs,
}

/// What a person asked of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolsQuery {
    /// Columns by tool or by ToolInstall (`by=tool|install`).
    pub columns: Columns,
    /// Words that must occur in the target's namespace/name (`q`).
    pub text: String,
    /// Only this namespace (`ns`).
    pub namespace: String,
    /// Only targets with a cell in this state (`state`).
    pub state: Option<ToolState>,
    /// Page, from 1.
    pub page: usize,
    /// Rows per page.
    pub per_page: usize,
}

impl Default for ToolsQuery {
    fn default() -> Self {
        Self {
            columns: Columns::Tools,
            text: String::new(),
            namespace: String::new(),
            state: None,
            page: 1,
            per_page: super::fleet::PER_PAGE,
        }
    }
}

impl ToolsQuery {
    /// Reads the query from URL parameters.
    pub fn from_params(params: &HashMap<String, String>) -> Self {
        let get = |key: &str| params.get(key).map(|v| v.trim().to_string());
        Self {
            columns: match get("by").as_deref() {
                Some("install") => Columns::Installs,
                _ => Columns::Tools,
            },
            text: get("q").unwrap_or_default(),
            namespace: get("ns").unwrap_or_default(),
            state: get("state").and_then(|s| parse_state(&s)),
            page: get("page").and_then(|p| p.parse().ok()).unwrap_or(1),
            per_page: get("per_page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(super::fleet::PER_PAGE)
                .clamp(10, 500),
        }
    }

    /// The URL parameters of this query, with `changes` applied.
    pub fn params(&self, changes: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let mut params: Vec<(&'static str, String)> = vec![
            (
                "by",
                match self.columns {
                    Columns::Tools => String::new(),
                    Columns::Installs => "install".into(),
                },
            ),
            ("q", self.text.clone()),
            ("ns", self.namespace.clone()),
            ("state", self.state.map(state_name).unwrap_or("").into()),
            (
                "per_page",
                if self.per_page == super::fleet::PER_PAGE {
                    String::new()
                } else {
                    self.per_page.to_string()
                },
            ),
            (
                "page",
                if self.page <= 1 {
                    String::new()
                } else {
                    self.page.to_string()
                },
            ),
        ];
        for (key, value) in changes {
            if let Some(param) = params.iter_mut().find(|(k, _)| k == key) {
                param.1 = value.clone();
            }
        }
        params
    }
}

/// One cell: a tool (or a ToolInstall's tools) on a target.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixCell {
    /// The state shown (the worst, when several tools fall in the cell).
    pub state: ToolState,
    /// The ToolTarget to click through to.
    pub tool_target: String,
    /// What a person reads first: the message of the worst tool, if any.
    pub message: Option<String>,
}

/// One target's row.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixRow {
    /// The target's namespace.
    pub namespace: String,
    /// Cluster or VirtualCluster.
    pub kind: TargetKind,
    /// The target's name.
    pub target: String,
    /// One per column: `None` where the column's tool is not declared for
    /// the target.
    pub cells: Vec<Option<MatrixCell>>,
}

/// One page of the matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Column headings: tool names, or `namespace/ToolInstall`.
    pub columns: Vec<String>,
    /// The rows of this page.
    pub rows: Vec<MatrixRow>,
    /// Cells by state over every target that passes the filter (the
    /// state filter aside), worst state first.
    pub counts: Vec<(ToolState, usize)>,
    /// Targets that pass the filter.
    pub matching: usize,
    /// The page shown.
    pub page: usize,
    /// Pages in all.
    pub pages: usize,
}

type TargetKey = (String, TargetKind, String);

/// Builds the page of the matrix `query` asks for. Columns are those that
/// have a cell on the page, so that a fleet of a thousand one-cluster
/// profiles stays as wide as one page's worth.
pub fn matrix(targets: &[&ToolTargetSummary], query: &ToolsQuery) -> Matrix {
    // Cells per target per column key.
    let mut by_target: BTreeMap<TargetKey, BTreeMap<String, MatrixCell>> = BTreeMap::new();
    for tt in targets {
        if !query.namespace.is_empty() && tt.namespace != query.namespace {
            continue;
        }
        if !matches_text(&query.text, &[&format!("{}/{}", tt.namespace, tt.target)]) {
            continue;
        }
        let row = by_target
            .entry((tt.namespace.clone(), tt.target_kind, tt.target.clone()))
            .or_default();
        let cells: Vec<(String, &ToolCell)> = match query.columns {
            Columns::Tools => tt.tools.iter().map(|c| (c.tool.clone(), c)).collect(),
            Columns::Installs => tt
                .tools
                .iter()
                .map(|c| (format!("{}/{}", tt.namespace, tt.install), c))
                .collect(),
        };
        for (key, cell) in cells {
            let candidate = MatrixCell {
                state: cell.state,
                tool_target: tt.name.clone(),
                message: cell.message.clone(),
            };
            row.entry(key)
                .and_modify(|existing| {
                    if worse(candidate.state, existing.state) != existing.state {
                        *existing = candidate.clone();
                    }
                })
                .or_insert(candidate);
        }
    }
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for cells in by_target.values() {
        for cell in cells.values() {
            *counts.entry(severity(cell.state)).or_default() += 1;
        }
    }
    let matching: Vec<(&TargetKey, &BTreeMap<String, MatrixCell>)> = by_target
        .iter()
        .filter(|(_, cells)| {
            query
                .state
                .is_none_or(|s| cells.values().any(|c| c.state == s))
        })
        .collect();
    let (page, pages) = clamp_page(query.page, query.per_page, matching.len());
    let shown: Vec<_> = matching
        .iter()
        .skip((page - 1) * query.per_page)
        .take(query.per_page)
        .collect();
    let columns: Vec<String> = shown
        .iter()
        .flat_map(|(_, cells)| cells.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = shown
        .iter()
        .map(|((namespace, kind, target), cells)| MatrixRow {
            namespace: namespace.clone(),
            kind: *kind,
            target: target.clone(),
            cells: columns.iter().map(|c| cells.get(c).cloned()).collect(),
        })
        .collect();
    Matrix {
        columns,
        rows,
        counts: counts
            .into_iter()
            .map(|(severity, count)| (STATES[severity], count))
            .collect(),
        matching: matching.len(),
        page,
        pages,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn mk_tool_target(
        namespace: &str,
        install: &str,
        target: &str,
        tools: &[(&str, Option<&str>, Option<&str>)],
    ) -> ToolTarget {
        let spec_tools: Vec<serde_json::Value> = tools
            .iter()
            .map(|(name, _, _)| json!({"name": name, "chart": {"path": "charts/x"}}))
            .collect();
        let status_tools: Vec<serde_json::Value> = tools
            .iter()
            .filter_map(|(name, state, message)| {
                state.map(|s| json!({"name": name, "state": s, "message": message}))
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolTarget",
            "metadata": {"name": format!("{install}-cluster-{target}"), "namespace": namespace},
            "spec": {"toolInstallRef": {"name": install}, "target": {"kind": "Cluster", "name": target}, "tools": spec_tools},
            "status": {"tools": status_tools},
        }))
        .unwrap()
    }

    fn summaries(targets: &[ToolTarget]) -> Vec<ToolTargetSummary> {
        targets
            .iter()
            .map(ToolTargetSummary::from_tool_target)
            .collect()
    }

    fn query(pairs: &[(&str, &str)]) -> ToolsQuery {
        ToolsQuery::from_params(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn states(row: &MatrixRow) -> Vec<&'static str> {
        row.cells
            .iter()
            .map(|c| c.as_ref().map_or("-", |c| state_name(c.state)))
            .collect()
    }

    #[test]
    fn worst_state_wins() {
        let cases = [
            (ToolState::Deployed, ToolState::Failed, ToolState::Failed),
            (ToolState::Stale, ToolState::Drifted, ToolState::Drifted),
            (ToolState::Unknown, ToolState::Failed, ToolState::Failed),
            (ToolState::Shared, ToolState::Deployed, ToolState::Shared),
            (
                ToolState::Pending,
                ToolState::NotInstalled,
                ToolState::Pending,
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(worse(a, b), want, "{a:?} vs {b:?}");
            assert_eq!(worse(b, a), want, "{b:?} vs {a:?}");
        }
        for state in STATES {
            assert_eq!(parse_state(state_name(state)), Some(state));
        }
        assert_eq!(parse_state("failed"), Some(ToolState::Failed));
        assert_eq!(parse_state("broken"), None);
    }

    #[test]
    fn a_tool_without_a_reported_state_is_pending() {
        let tt = mk_tool_target(
            "p",
            "web",
            "dev-1",
            &[("widgets", Some("DEPLOYED"), None), ("web", None, None)],
        );
        let summary = ToolTargetSummary::from_tool_target(&tt);
        assert_eq!(summary.tools[1].state, ToolState::Pending);
        assert_eq!(summary.state(), ToolState::Pending);
        assert_eq!(
            (summary.install.as_str(), summary.target.as_str()),
            ("web", "dev-1")
        );
    }

    #[test]
    fn columns_by_tool_and_by_install() {
        let targets = summaries(&[
            mk_tool_target(
                "p",
                "dev-1-profile",
                "dev-1",
                &[
                    ("widgets", Some("DEPLOYED"), None),
                    ("web", Some("FAILED"), Some("helm: boom")),
                ],
            ),
            mk_tool_target(
                "p",
                "staging-profile",
                "staging",
                &[("widgets", Some("DEPLOYED"), None)],
            ),
            mk_tool_target("p", "extra", "staging", &[("web", Some("STALE"), None)]),
        ]);
        let refs: Vec<&ToolTargetSummary> = targets.iter().collect();

        let by_tool = matrix(&refs, &query(&[]));
        assert_eq!(by_tool.columns, vec!["web", "widgets"]);
        assert_eq!(states(&by_tool.rows[0]), vec!["FAILED", "DEPLOYED"]);
        assert_eq!(states(&by_tool.rows[1]), vec!["STALE", "DEPLOYED"]);
        let failed = by_tool.rows[0].cells[0].as_ref().unwrap();
        assert_eq!(failed.message.as_deref(), Some("helm: boom"));
        assert_eq!(failed.tool_target, "dev-1-profile-cluster-dev-1");
        assert_eq!(
            by_tool.counts,
            vec![
                (ToolState::Failed, 1),
                (ToolState::Stale, 1),
                (ToolState::Deployed, 2)
            ]
        );

        let by_install = matrix(&refs, &query(&[("by", "install")]));
        assert_eq!(
            by_install.columns,
            vec!["p/dev-1-profile", "p/extra", "p/staging-profile"]
        );
        // dev-1's profile holds a failed and a deployed tool: the worst shows.
        assert_eq!(states(&by_install.rows[0]), vec!["FAILED", "-", "-"]);
        assert_eq!(states(&by_install.rows[1]), vec!["-", "STALE", "DEPLOYED"]);
    }

    #[test]
    fn filters_by_state_text_and_namespace_and_pages() {
        let mut all = Vec::new();
        for i in 0..120 {
            let state = if i % 40 == 0 { "FAILED" } else { "DEPLOYED" };
            let namespace = if i < 100 { "fleet" } else { "other" };
            all.push(mk_tool_target(
                namespace,
                "base",
                &format!("c{i:03}"),
                &[("web", Some(state), None)],
            ));
        }
        let targets = summaries(&all);
        let refs: Vec<&ToolTargetSummary> = targets.iter().collect();
        let cases = [
            (vec![], 120, 3, 50),
            (vec![("state", "FAILED")], 3, 1, 3),
            (vec![("state", "failed"), ("ns", "fleet")], 3, 1, 3),
            (vec![("ns", "other")], 20, 1, 20),
            (vec![("q", "c01")], 10, 1, 10),
            (vec![("page", "3")], 120, 3, 20),
        ];
        for (params, matching, pages, rows) in cases {
            let m = matrix(&refs, &query(&params));
            assert_eq!(
                (m.matching, m.pages, m.rows.len()),
                (matching, pages, rows),
                "{params:?}"
            );
        }
        // Counts ignore the state filter, so they say what else there is.
        let failed_only = matrix(&refs, &query(&[("state", "FAILED")]));
        assert_eq!(
            failed_only.counts,
            vec![(ToolState::Failed, 3), (ToolState::Deployed, 117)]
        );
    }
}
