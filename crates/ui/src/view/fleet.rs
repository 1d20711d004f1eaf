//! The fleet page: every Cluster and VirtualCluster as a row (provider,
//! region, version, phase, ready, drift, age), counts by provider, phase
//! and drift, and the filter, sort and page a person asks for.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use fleetforge_api::tool_target::TargetKind;
use fleetforge_api::{Cluster, VirtualCluster, condition};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::selector::Selector;
use super::{Readiness, clamp_page, matches_text};

/// One Cluster or VirtualCluster in the fleet table.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRow {
    /// Cluster or VirtualCluster.
    pub kind: TargetKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels (for the label filter).
    pub labels: BTreeMap<String, String>,
    /// The provider (`aws`, `local`, `nop`...); `vcluster` for a
    /// VirtualCluster; empty while unknown.
    pub provider: String,
    /// The region; for a VirtualCluster, its host.
    pub region: String,
    /// The Kubernetes (or vcluster chart) version reported.
    pub version: String,
    /// The phase (`Pending` until one is reported).
    pub phase: String,
    /// The `Ready` condition.
    pub ready: Readiness,
    /// Whether the `Drifted` condition is True.
    pub drifted: bool,
    /// When it was created.
    pub created: Option<Timestamp>,
}

impl FleetRow {
    /// The row of a Cluster.
    pub fn from_cluster(cluster: &Cluster) -> Self {
        let status = cluster.status.clone().unwrap_or_default();
        Self {
            kind: TargetKind::Cluster,
            namespace: cluster.namespace().unwrap_or_default(),
            name: cluster.name_any(),
            labels: cluster.labels().clone(),
            provider: status.provider.unwrap_or_default(),
            region: status
                .region
                .or_else(|| cluster.spec.region.clone())
                .unwrap_or_default(),
            version: status.version.unwrap_or_default(),
            phase: status
                .phase
                .map_or_else(|| "Pending".to_string(), |p| format!("{p:?}")),
            ready: Readiness::of(&status.conditions, condition::READY),
            drifted: Readiness::of(&status.conditions, condition::DRIFTED) == Readiness::True,
            created: cluster.creation_timestamp().map(|t| t.0),
        }
    }

    /// The row of a VirtualCluster.
    pub fn from_virtual_cluster(vc: &VirtualCluster) -> Self {
        let status = vc.status.clone().unwrap_or_default();
        let host = status.host.clone().or_else(|| {
            vc.spec
                .host
                .cluster_ref
                .as_ref()
                .map(|r| r.name.clone())
                .or(Some("management".to_string()))
        });
        Self {
            kind: TargetKind::VirtualCluster,
            namespace: vc.namespace().unwrap_or_default(),
            name: vc.name_any(),
            labels: vc.labels().clone(),
            provider: "vcluster".to_string(),
            region: host.unwrap_or_default(),
            version: status.version.unwrap_or_default(),
            phase: status
                .phase
                .map_or_else(|| "Pending".to_string(), |p| format!("{p:?}")),
            ready: Readiness::of(&status.conditions, condition::READY),
            drifted: Readiness::of(&status.conditions, condition::DRIFTED) == Readiness::True,
            created: vc.creation_timestamp().map(|t| t.0),
        }
    }

    fn drift_text(&self) -> &'static str {
        if self.drifted { "drifted" } else { "in sync" }
    }
}

/// A column to sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Namespace, then name.
    Name,
    /// Cluster before VirtualCluster.
    Kind,
    /// Provider.
    Provider,
    /// Region (host).
    Region,
    /// Version.
    Version,
    /// Phase.
    Phase,
    /// Ready: not ready first.
    Ready,
    /// Drifted first.
    Drift,
    /// Newest first.
    Age,
}

impl SortKey {
    /// Every key, in column order.
    pub const ALL: [SortKey; 9] = [
        SortKey::Name,
        SortKey::Kind,
        SortKey::Provider,
        SortKey::Region,
        SortKey::Version,
        SortKey::Phase,
        SortKey::Ready,
        SortKey::Drift,
        SortKey::Age,
    ];

    /// Its name in URLs (`sort=phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Kind => "kind",
            SortKey::Provider => "provider",
            SortKey::Region => "region",
            SortKey::Version => "version",
            SortKey::Phase => "phase",
            SortKey::Ready => "ready",
            SortKey::Drift => "drift",
            SortKey::Age => "age",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    fn compare(self, a: &FleetRow, b: &FleetRow) -> Ordering {
        match self {
            SortKey::Name => Ordering::Equal,
            SortKey::Kind => a.kind.cmp(&b.kind),
            SortKey::Provider => a.provider.cmp(&b.provider),
            SortKey::Region => a.region.cmp(&b.region),
            SortKey::Version => version_order(&a.version, &b.version),
            SortKey::Phase => a.phase.cmp(&b.phase),
            // Problems first: False, Unknown, then True.
            SortKey::Ready => rank_ready(a.ready).cmp(&rank_ready(b.ready)),
            SortKey::Drift => b.drifted.cmp(&a.drifted),
            // Newest first; those without a time last.
            SortKey::Age => match (a.created, b.created) {
                (Some(x), Some(y)) => y.cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            },
        }
    }
}

fn rank_ready(ready: Readiness) -> u8 {
    match ready {
        Readiness::False => 0,
        Readiness::Unknown => 1,
        Readiness::True => 2,
    }
}

/// Versions compared by their numbers (`v1.9` before `v1.36`), text after.
fn version_order(a: &str, b: &str) -> Ordering {
    let numbers = |v: &str| -> Vec<u64> {
        v.trim_start_matches('v')
            .split(['.', '-', '+'])
            .map_while(|p| p.parse().ok())
            .collect()
    };
    numbers(a).cmp(&numbers(b)).then_with(|| a.cmp(b))
}

/// What a person asked of the fleet table (the page's query string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetQuery {
    /// Words that must all occur in the row (`q`).
    pub text: String,
    /// Only this namespace (`ns`).
    pub namespace: String,
    /// A label selector (`labels`).
    pub labels: String,
    /// Only this phase (`phase`).
    pub phase: String,
    /// Only this provider (`provider`).
    pub provider: String,
    /// Only drifted (`drift=yes`) or only in sync (`drift=no`).
    pub drift: Option<bool>,
    /// The column sorted by (`sort`, `-` in front for descending).
    pub sort: SortKey,
    /// Descending order.
    pub descending: bool,
    /// Page, from 1 (`page`).
    pub page: usize,
    /// Rows per page (`per_page`, 10 to 500).
    pub per_page: usize,
}

/// Rows per page unless asked otherwise.
pub const PER_PAGE: usize = 50;

impl Default for FleetQuery {
    fn default() -> Self {
        Self {
            text: String::new(),
            namespace: String::new(),
            labels: String::new(),
            phase: String::new(),
            provider: String::new(),
            drift: None,
            sort: SortKey::Name,
            descending: false,
            page: 1,
            per_page: PER_PAGE,
        }
    }
}

impl FleetQuery {
    /// Reads the query from URL parameters; what does not parse is left at
    /// its default.
    pub fn from_params(params: &HashMap<String, String>) -> Self {
        let get = |key: &str| params.get(key).map(|v| v.trim().to_string());
        let mut query = Self {
            text: get("q").unwrap_or_default(),
            namespace: get("ns").unwrap_or_default(),
            labels: get("labels").unwrap_or_default(),
            phase: get("phase").unwrap_or_default(),
            provider: get("provider").unwrap_or_default(),
            drift: match get("drift").as_deref() {
                Some("yes") => Some(true),
                Some("no") => Some(false),
                _ => None,
            },
            ..Self::default()
        };
        if let Some(sort) = get("sort") {
            let (descending, key) = match sort.strip_prefix('-') {
                Some(key) => (true, key),
                None => (false, sort.as_str()),
            };
            if let Some(key) = SortKey::parse(key) {
                query.sort = key;
                query.descending = descending;
            }
        }
        query.page = get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
        query.per_page = get("per_page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(PER_PAGE)
            .clamp(10, 500);
        query
    }

    /// The URL parameters that give this query back (defaults left out),
    /// with `changes` applied over them.
    pub fn params(&self, changes: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let mut params: Vec<(&'static str, String)> = vec![
            ("q", self.text.clone()),
            ("ns", self.namespace.clone()),
            ("labels", self.labels.clone()),
            ("phase", self.phase.clone()),
            ("provider", self.provider.clone()),
            (
                "drift",
                match self.drift {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => String::new(),
                },
            ),
            ("sort", self.sort_param()),
            (
                "per_page",
                if self.per_page == PER_PAGE {
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

    fn sort_param(&self) -> String {
        match (self.sort, self.descending) {
            (SortKey::Name, false) => String::new(),
            (key, false) => key.as_str().to_string(),
            (key, true) => format!("-{}", key.as_str()),
        }
    }

    fn admits(&self, row: &FleetRow, selector: &Selector) -> bool {
        (self.namespace.is_empty() || row.namespace == self.namespace)
            && (self.phase.is_empty() || row.phase.eq_ignore_ascii_case(&self.phase))
            && (self.provider.is_empty() || row.provider == self.provider)
            && self.drift.is_none_or(|d| row.drifted == d)
            && selector.matches(&row.labels)
            && matches_text(
                &self.text,
                &[
                    &format!("{}/{}", row.namespace, row.name),
                    row.kind.as_str(),
                    &row.provider,
                    &row.region,
                    &row.version,
                    &row.phase,
                    row.drift_text(),
                ],
            )
    }
}

/// Counts over the whole fleet the caller may see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Clusters and VirtualClusters.
    pub total: usize,
    /// By provider (`vcluster` for VirtualClusters; `unknown` while none
    /// is reported).
    pub by_provider: BTreeMap<String, usize>,
    /// By phase.
    pub by_phase: BTreeMap<String, usize>,
    /// Drifted.
    pub drifted: usize,
    /// Not drifted.
    pub in_sync: usize,
    /// Ready=True.
    pub ready: usize,
}

/// Counts `rows` by provider, phase and drift.
pub fn counts(rows: &[FleetRow]) -> FleetCounts {
    let mut counts = FleetCounts {
        total: rows.len(),
        ..FleetCounts::default()
    };
    for row in rows {
        let provider = if row.provider.is_empty() {
            "unknown"
        } else {
            &row.provider
        };
        *counts.by_provider.entry(provider.to_string()).or_default() += 1;
        *counts.by_phase.entry(row.phase.clone()).or_default() += 1;
        if row.drifted {
            counts.drifted += 1;
        } else {
            counts.in_sync += 1;
        }
        if row.ready == Readiness::True {
            counts.ready += 1;
        }
    }
    counts
}

/// One page of the fleet table.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetPage<'a> {
    /// The rows of this page, sorted.
    pub rows: Vec<&'a FleetRow>,
    /// Rows that pass the filter, on every page.
    pub matching: usize,
    /// The page shown (from 1, clamped to those that exist).
    pub page: usize,
    /// Pages in all.
    pub pages: usize,
}

/// Filters, sorts and pages `rows` as `query` asks. Fails only on a label
/// selector that does not parse, saying why.
pub fn page<'a>(rows: &'a [FleetRow], query: &FleetQuery) -> Result<FleetPage<'a>, String> {
    let selector = Selector::parse(&query.labels)?;
    let mut matching: Vec<&FleetRow> = rows.iter().filter(|r| query.admits(r, &selector)).collect();
    // Ties (and the Name key) fall back to namespace/name, so the order is
    // stable from one update to the next and rows do not jump about.
    matching.sort_by(|a, b| {
        let primary = query.sort.compare(a, b);
        let primary = if query.descending {
            primary.reverse()
        } else {
            primary
        };
        primary
            .then_with(|| {
                let by_name = a.namespace.cmp(&b.namespace).then(a.name.cmp(&b.name));
                if query.descending && query.sort == SortKey::Name {
                    by_name.reverse()
                } else {
                    by_name
                }
            })
            .then(a.kind.cmp(&b.kind))
    });
    let (page, pages) = clamp_page(query.page, query.per_page, matching.len());
    let count = matching.len();
    let rows = matching
        .into_iter()
        .skip((page - 1) * query.per_page)
        .take(query.per_page)
        .collect();
    Ok(FleetPage {
        rows,
        matching: count,
        page,
        pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn mk_cluster(
        namespace: &str,
        name: &str,
        labels: serde_json::Value,
        status: serde_json::Value,
    ) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "creationTimestamp": "2026-12-01T10:00:00Z"},
            "spec": {"providerConfigRef": {"name": "nop"}},
            "status": status,
        }))
        .unwrap()
    }

    fn row(namespace: &str, name: &str, provider: &str, phase: &str, drifted: bool) -> FleetRow {
        let mut row = FleetRow::from_cluster(&mk_cluster(
            namespace,
            name,
            json!({}),
            json!({"provider": provider, "phase": phase}),
        ));
        row.drifted = drifted;
        row
    }

    fn names(page: &FleetPage<'_>) -> Vec<String> {
        page.rows
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect()
    }

    fn query(pairs: &[(&str, &str)]) -> FleetQuery {
        FleetQuery::from_params(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn rows_read_status_and_conditions() {
        let cluster = mk_cluster(
            "platform",
            "dev-1",
            json!({"env": "dev"}),
            json!({
                "provider": "local", "region": "local", "version": "v1.36.3", "phase": "Ready",
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Available", "message": "", "lastTransitionTime": "2026-12-01T10:00:00Z"},
                    {"type": "Drifted", "status": "True", "reason": "DriftDetected", "message": "", "lastTransitionTime": "2026-12-01T10:00:00Z"},
                ],
            }),
        );
        let row = FleetRow::from_cluster(&cluster);
        assert_eq!(
            (
                row.provider.as_str(),
                row.region.as_str(),
                row.version.as_str(),
                row.phase.as_str()
            ),
            ("local", "local", "v1.36.3", "Ready")
        );
        assert_eq!(row.ready, Readiness::True);
        assert!(row.drifted);
        assert_eq!(row.labels["env"], "dev");

        let fresh = FleetRow::from_cluster(&mk_cluster("p", "new", json!({}), json!(null)));
        assert_eq!(
            (fresh.phase.as_str(), fresh.ready, fresh.drifted),
            ("Pending", Readiness::Unknown, false)
        );

        let vc: VirtualCluster = serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "VirtualCluster",
            "metadata": {"name": "vc", "namespace": "p"},
            "spec": {"host": {"clusterRef": {"name": "hosts"}}},
        }))
        .unwrap();
        let row = FleetRow::from_virtual_cluster(&vc);
        assert_eq!(
            (row.provider.as_str(), row.region.as_str(), row.kind),
            ("vcluster", "hosts", TargetKind::VirtualCluster)
        );
    }

    #[test]
    fn counts_by_provider_phase_and_drift() {
        let rows = vec![
            row("a", "one", "nop", "Ready", false),
            row("a", "two", "nop", "Failed", true),
            row("b", "three", "aws", "Ready", true),
            row("b", "four", "", "Pending", false),
        ];
        let counts = counts(&rows);
        assert_eq!(counts.total, 4);
        assert_eq!(
            counts.by_provider,
            BTreeMap::from([
                ("aws".to_string(), 1),
                ("nop".to_string(), 2),
                ("unknown".to_string(), 1)
            ])
        );
        assert_eq!(
            counts.by_phase,
            BTreeMap::from([
                ("Failed".to_string(), 1),
                ("Pending".to_string(), 1),
                ("Ready".to_string(), 2)
            ])
        );
        assert_eq!((counts.drifted, counts.in_sync), (2, 2));
    }

    #[test]
    fn filters_select_rows() {
        let mut rows = vec![
            row("platform", "dev-1", "local", "Ready", false),
            row("platform", "staging", "local", "Ready", true),
            row("team-a", "web", "nop", "Failed", false),
            row("team-a", "dev-2", "nop", "Provisioning", false),
        ];
        rows[0].labels.insert("env".into(), "dev".into());
        rows[3].labels.insert("env".into(), "dev".into());
        rows[2].labels.insert("env".into(), "prod".into());
        type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                vec![],
                vec![
                    "platform/dev-1",
                    "platform/staging",
                    "team-a/dev-2",
                    "team-a/web",
                ],
            ),
            (vec![("q", "dev")], vec!["platform/dev-1", "team-a/dev-2"]),
            (vec![("q", "DEV nop")], vec!["team-a/dev-2"]),
            (vec![("q", "drifted")], vec!["platform/staging"]),
            (vec![("ns", "team-a")], vec!["team-a/dev-2", "team-a/web"]),
            (
                vec![("labels", "env=dev")],
                vec!["platform/dev-1", "team-a/dev-2"],
            ),
            (vec![("labels", "env,env!=dev")], vec!["team-a/web"]),
            (vec![("labels", "!env")], vec!["platform/staging"]),
            (vec![("phase", "failed")], vec!["team-a/web"]),
            (
                vec![("provider", "local")],
                vec!["platform/dev-1", "platform/staging"],
            ),
            (vec![("drift", "yes")], vec!["platform/staging"]),
            (
                vec![("drift", "no"), ("ns", "platform")],
                vec!["platform/dev-1"],
            ),
            (vec![("q", "nothing-like-this")], vec![]),
        ];
        for (params, want) in cases {
            let page = page(&rows, &query(&params)).unwrap();
            assert_eq!(names(&page), want, "{params:?}");
            assert_eq!(page.matching, want.len(), "{params:?}");
        }
        let error = page(&rows, &query(&[("labels", "env in dev")])).unwrap_err();
        assert!(error.contains("parentheses"), "{error}");
    }

    #[test]
    fn sorts_by_each_column_with_a_stable_tie_break() {
        let mut rows = vec![
            row("b", "x", "nop", "Ready", false),
            row("a", "y", "aws", "Failed", true),
            row("a", "x", "nop", "Pending", false),
        ];
        rows[0].version = "v1.9.0".into();
        rows[1].version = "v1.36.3".into();
        rows[2].version = "v1.10.1".into();
        rows[0].ready = Readiness::True;
        rows[1].ready = Readiness::False;
        rows[0].created = Some(Timestamp::from_second(300).unwrap());
        rows[1].created = Some(Timestamp::from_second(100).unwrap());
        rows[2].created = Some(Timestamp::from_second(200).unwrap());
        let cases = [
            ("", vec!["a/x", "a/y", "b/x"]),
            ("-name", vec!["b/x", "a/y", "a/x"]),
            ("provider", vec!["a/y", "a/x", "b/x"]),
            ("-provider", vec!["a/x", "b/x", "a/y"]),
            ("phase", vec!["a/y", "a/x", "b/x"]),
            ("version", vec!["b/x", "a/x", "a/y"]),
            ("ready", vec!["a/y", "a/x", "b/x"]),
            ("drift", vec!["a/y", "a/x", "b/x"]),
            ("age", vec!["b/x", "a/x", "a/y"]),
            ("-age", vec!["a/y", "a/x", "b/x"]),
            ("bogus", vec!["a/x", "a/y", "b/x"]),
        ];
        for (sort, want) in cases {
            let page = page(&rows, &query(&[("sort", sort)])).unwrap();
            assert_eq!(names(&page), want, "sort={sort}");
        }
    }

    #[test]
    fn pages_through_a_thousand_clusters() {
        let rows: Vec<FleetRow> = (0..1000)
            .map(|i| row("fleet", &format!("c{i:04}"), "nop", "Ready", i % 7 == 0))
            .collect();
        let first = page(&rows, &query(&[])).unwrap();
        assert_eq!((first.page, first.pages, first.matching), (1, 20, 1000));
        assert_eq!(first.rows.len(), 50);
        assert_eq!(first.rows[0].name, "c0000");
        let last = page(&rows, &query(&[("page", "20")])).unwrap();
        assert_eq!(last.rows.last().unwrap().name, "c0999");
        let beyond = page(&rows, &query(&[("page", "99"), ("per_page", "100")])).unwrap();
        assert_eq!((beyond.page, beyond.pages), (10, 10));
        assert_eq!(beyond.rows.len(), 100);
        let drifted = page(&rows, &query(&[("drift", "yes"), ("page", "3")])).unwrap();
        assert_eq!((drifted.matching, drifted.pages, drifted.page), (143, 3, 3));
        assert_eq!(drifted.rows.len(), 43);

        // Fast enough to do on every update: well under a millisecond a
        // page in an optimised build; generous here for debug builds.
        let started = std::time::Instant::now();
        for _ in 0..10 {
            page(&rows, &query(&[("sort", "-age"), ("q", "c09")])).unwrap();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn queries_round_trip_through_their_parameters() {
        let q = query(&[
            ("q", "web"),
            ("sort", "-phase"),
            ("page", "3"),
            ("drift", "yes"),
            ("per_page", "5"),
        ]);
        assert_eq!((q.sort, q.descending, q.page), (SortKey::Phase, true, 3));
        assert_eq!(q.per_page, 10, "clamped to at least 10");
        let params: HashMap<String, String> = q
            .params(&[])
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(FleetQuery::from_params(&params), q);
        let next = q.params(&[("page", "4".into())]);
        assert!(next.contains(&("page", "4".to_string())));
        assert!(
            FleetQuery::default()
                .params(&[])
                .iter()
                .all(|(_, v)| v.is_empty())
        );
    }
}
