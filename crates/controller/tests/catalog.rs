//! The curated ToolSets in `catalog/`: each is accepted by the API server's
//! rules, pins exact chart versions, installs in order, and agrees with
//! `full.yaml` and with the table in `catalog/README.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use fleetforge_api::{GROUP, Tool, ToolSet, VERSION};
use fleetforge_controller::manifests;
use fleetforge_controller::validate::Schemas;
use fleetforge_core::toolset::install_order;
use regex::Regex;

/// The profiles, each a file `<name>.yaml` holding the ToolSet `<name>`.
const PROFILES: [&str; 4] = ["dev", "build", "run", "view"];
/// The profile that holds every tool of the others.
const FULL: &str = "full";
const CATALOG_VERSION: &str = "fleetforge.dev/catalog-version";

/// SemVer 2.0.0, the regular expression given at semver.org: exactly
/// MAJOR.MINOR.PATCH with optional pre-release and build, so no range,
/// wildcard or `latest`.
static SEMVER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$",
    )
    .unwrap()
});

fn catalog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../catalog")
}

/// Chart versions are SemVer, some written with a leading `v` (cert-manager,
/// Knative).
fn is_exact_version(version: &str) -> bool {
    SEMVER.is_match(version.strip_prefix('v').unwrap_or(version))
}

/// Every ToolSet of the catalog by name, checking that `<name>.yaml` holds
/// exactly the ToolSet `<name>`.
fn catalog() -> BTreeMap<String, ToolSet> {
    let mut sets = BTreeMap::new();
    for entry in std::fs::read_dir(catalog_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let set: ToolSet = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a ToolSet: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let name = set.metadata.name.clone().unwrap_or_default();
        assert_eq!(name, stem, "{} holds ToolSet {name}", path.display());
        sets.insert(name, set);
    }
    sets
}

fn find_tool<'a>(set: &'a ToolSet, name: &str) -> Option<&'a Tool> {
    set.spec.tools.iter().find(|t| t.name == name)
}

#[test]
fn exact_versions_only() {
    for good in ["v1.19.1", "3.13.0", "0.7.0", "1.0.0-rc.1", "2.0.0+build.5"] {
        assert!(is_exact_version(good), "{good} should pass");
    }
    for bad in [
        "latest",
        "1.19",
        "v1",
        "^1.2.3",
        "~1.2.3",
        ">=1.2.3",
        "1.2.x",
        "1.2.*",
        "01.2.3",
        "1.2.3 || 1.3.0",
        "vv1.2.3",
        "",
    ] {
        assert!(!is_exact_version(bad), "{bad} should fail");
    }
}

#[test]
fn the_catalog_is_exactly_the_profiles() {
    let names: BTreeSet<String> = catalog().into_keys().collect();
    let expected: BTreeSet<String> = PROFILES
        .iter()
        .chain([&FULL])
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn every_document_passes_the_validator() {
    let (documents, errors) = manifests::load(&catalog_dir());
    assert!(errors.is_empty(), "unreadable: {errors:?}");
    let schemas = Schemas::new().unwrap();
    // Beside the profiles, the vcluster chart VirtualClusters default to.
    let (sets, others): (Vec<_>, Vec<_>) = documents
        .iter()
        .partition(|d| d.file.parent() == Some(catalog_dir().as_path()));
    assert_eq!(sets.len(), PROFILES.len() + 1, "one ToolSet per file");
    assert_eq!(others.len(), 1, "{others:?}");
    assert_eq!(others[0].kind(), "VirtualCluster");
    let problems = schemas.validate_document(others[0]);
    assert!(
        problems.is_empty(),
        "{}: {problems:?}",
        others[0].file.display()
    );
    for document in sets {
        let at = format!("{}: {document}", document.file.display());
        assert_eq!(document.api_version(), format!("{GROUP}/{VERSION}"), "{at}");
        assert_eq!(document.kind(), "ToolSet", "{at}");
        assert_eq!(
            document.namespace(),
            None,
            "{at}: ToolSets are cluster-scoped"
        );
        let problems = schemas.validate_document(document);
        assert!(problems.is_empty(), "{at}: {problems:?}");
    }
}

#[test]
fn every_set_is_labelled_described_and_installs_in_order() {
    let sets = catalog();
    let versions: BTreeSet<&str> = sets
        .values()
        .map(|set| {
            let labels = set.metadata.labels.as_ref();
            labels
                .and_then(|l| l.get(CATALOG_VERSION))
                .map(String::as_str)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "one {CATALOG_VERSION} for the whole catalog: {versions:?}"
    );
    let version = versions.first().unwrap();
    assert!(
        Regex::new(r"^20\d\d\.(0[1-9]|1[0-2])$")
            .unwrap()
            .is_match(version),
        "{CATALOG_VERSION} is YYYY.MM, not {version:?}"
    );
    for (name, set) in &sets {
        assert!(
            set.spec
                .description
                .as_deref()
                .is_some_and(|d| !d.is_empty()),
            "{name} has no description"
        );
        let mut seen = BTreeSet::new();
        for tool in &set.spec.tools {
            assert!(seen.insert(&tool.name), "{name}: tool {} twice", tool.name);
        }
        let order = install_order(&set.spec.tools).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(order.len(), set.spec.tools.len());
    }
}

#[test]
fn every_tool_pins_a_named_chart_of_an_https_repository() {
    for (name, set) in catalog() {
        for tool in &set.spec.tools {
            let at = format!("{name}/{}", tool.name);
            let chart = &tool.chart;
            assert!(
                chart.oci.is_none() && chart.path.is_none(),
                "{at}: chart from a Helm repository only"
            );
            let repository = chart.repository.as_deref().unwrap_or_default();
            assert!(
                repository.starts_with("https://"),
                "{at}: repository {repository:?}"
            );
            assert!(
                chart.name.as_deref().is_some_and(|n| !n.is_empty()),
                "{at}: chart name missing"
            );
            let version = chart.version.as_deref().unwrap_or_default();
            assert!(
                is_exact_version(version),
                "{at}: version {version:?} is not exact SemVer"
            );
            assert!(
                tool.namespace.is_some(),
                "{at}: namespace left to the default"
            );
            assert!(!tool.health.is_empty(), "{at}: no health checks");
        }
    }
}

#[test]
fn full_holds_every_tool_of_every_profile() {
    let sets = catalog();
    let full = &sets[FULL];
    let mut union = BTreeSet::new();
    for profile in PROFILES {
        for tool in &sets[profile].spec.tools {
            union.insert(tool.name.as_str());
            let at = format!("{profile}/{}", tool.name);
            let Some(same) = find_tool(full, &tool.name) else {
                panic!("{at} is missing from {FULL}");
            };
            assert_eq!(same.chart, tool.chart, "{at}: {FULL} has another chart");
            assert_eq!(
                same.namespace, tool.namespace,
                "{at}: {FULL} has another namespace"
            );
        }
    }
    let in_full: BTreeSet<&str> = full.spec.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        in_full, union,
        "{FULL} is the union of the profiles, nothing more"
    );
}

/// One row of the README's profile table.
#[derive(Debug)]
struct Row {
    chart: String,
    repository: String,
    version: String,
    profiles: BTreeSet<String>,
}

/// The README's table `| tool | chart | repository | version | dev | ... |`,
/// keyed by tool.
fn readme_table() -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(catalog_dir().join("README.md")).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("| tool | chart |"));
    let header: Vec<String> = cells(lines.next().expect("README has no tool table"));
    let columns: Vec<&str> = PROFILES.iter().chain([&FULL]).copied().collect();
    assert_eq!(&header[4..], &columns[..], "README table columns");
    let mut rows = BTreeMap::new();
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells = cells(line);
        assert_eq!(cells.len(), header.len(), "README row {line}");
        let profiles = columns
            .iter()
            .zip(&cells[4..])
            .filter(|(_, mark)| !mark.is_empty())
            .map(|(profile, _)| profile.to_string())
            .collect();
        let row = Row {
            chart: cells[1].trim_matches('`').to_string(),
            repository: cells[2].clone(),
            version: cells[3].trim_matches('`').to_string(),
            profiles,
        };
        let tool = cells[0].trim_matches('`').to_string();
        assert!(
            rows.insert(tool.clone(), row).is_none(),
            "README lists {tool} twice"
        );
    }
    rows
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

#[test]
fn the_readme_table_matches_the_files() {
    let sets = catalog();
    let table = readme_table();
    let mut listed = BTreeSet::new();
    for (profile, set) in &sets {
        for tool in &set.spec.tools {
            listed.insert(tool.name.clone());
            let at = format!("{profile}/{}", tool.name);
            let Some(row) = table.get(&tool.name) else {
                panic!("{at} is not in the README table");
            };
            assert!(
                row.profiles.contains(profile),
                "{at}: README does not tick {profile}"
            );
            assert_eq!(
                Some(&row.chart),
                tool.chart.name.as_ref(),
                "{at}: README chart"
            );
            assert_eq!(
                Some(&row.repository),
                tool.chart.repository.as_ref(),
                "{at}: README repository"
            );
            assert_eq!(
                Some(&row.version),
                tool.chart.version.as_ref(),
                "{at}: README version"
            );
        }
    }
    for (name, row) in &table {
        assert!(
            listed.contains(name),
            "README lists {name}, which no profile has"
        );
        for profile in &row.profiles {
            assert!(
                find_tool(&sets[profile], name).is_some(),
                "README ticks {profile} for {name}, which {profile}.yaml lacks"
            );
        }
    }
}

#[test]
fn the_catalog_names_the_vcluster_chart_virtual_clusters_default_to() {
    let path = catalog_dir().join("virtual-clusters/vcluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let vc: fleetforge_api::VirtualCluster = serde_saphyr::from_str(&text).unwrap();
    let chart = vc.spec.chart.expect("the catalog spells the chart out");
    let (repository, name, version) = fleetforge_provider_vcluster::DEFAULT_CHART;
    assert_eq!(
        (
            chart.repository.as_str(),
            chart.name.as_str(),
            chart.version.as_str()
        ),
        (repository, name, version),
        "{} and providers/vcluster's DEFAULT_CHART disagree",
        path.display()
    );
    assert!(is_exact_version(&chart.version), "{}", chart.version);
}
