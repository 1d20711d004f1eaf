use super::*;
use serde_json::json;

fn mk_release(status: &str, version: &str, values: Value) -> Release {
    Release {
        name: "web".into(),
        namespace: "web".into(),
        revision: 2,
        status: status.into(),
        description: "Upgrade complete".into(),
        chart_name: "web".into(),
        chart_version: version.into(),
        values,
        manifest: String::new(),
        crds: String::new(),
        labels: BTreeMap::new(),
    }
}

fn mk_chart(version: Option<&str>) -> ChartSource {
    ChartSource {
        repository: Some("https://charts.example.com".into()),
        name: Some("web".into()),
        version: version.map(str::to_string),
        ..ChartSource::default()
    }
}

#[test]
fn a_release_is_compared_by_status_version_and_values() {
    let values = json!({"replicas": 2});
    let chart = mk_chart(Some("0.2.0"));
    assert_eq!(observe(None, &values, &chart), Observed::Missing);
    assert_eq!(
        observe(
            Some(&mk_release("deployed", "0.2.0", json!({"replicas": 2.0}))),
            &values,
            &chart
        ),
        Observed::AsDeclared
    );
    assert!(matches!(
        observe(Some(&mk_release("deployed", "0.1.0", values.clone())), &values, &chart),
        Observed::Stale(why) if why == "chart version 0.1.0 is installed, 0.2.0 is declared"
    ));
    assert!(matches!(
        observe(
            Some(&mk_release("deployed", "0.2.0", json!({"replicas": 3}))),
            &values,
            &chart
        ),
        Observed::Stale(_)
    ));
    assert!(matches!(
        observe(Some(&mk_release("failed", "0.2.0", values.clone())), &values, &chart),
        Observed::Failed(why) if why == "release is failed: Upgrade complete"
    ));
    assert!(matches!(
        observe(
            Some(&mk_release("pending-upgrade", "0.2.0", values.clone())),
            &values,
            &chart
        ),
        Observed::Busy(_)
    ));
}

#[test]
fn versions_match_exactly_by_range_or_not_at_all_when_undeclared() {
    assert_eq!(
        version_mismatch(&mk_chart(Some("v1.19.1")), "v1.19.1"),
        None
    );
    assert_eq!(version_mismatch(&mk_chart(Some("1.19.1")), "v1.19.1"), None);
    assert_eq!(version_mismatch(&mk_chart(Some("~1.19")), "1.19.4"), None);
    assert!(version_mismatch(&mk_chart(Some("~1.19")), "1.20.0").is_some());
    assert_eq!(version_mismatch(&mk_chart(None), "9.9.9"), None);
}

#[test]
fn the_version_of_a_chart_directory_comes_from_its_chart_yaml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Chart.yaml"),
        "apiVersion: v2\nname: web\nversion: 0.3.1\n",
    )
    .unwrap();
    let chart = ChartSource {
        path: Some(dir.path().display().to_string()),
        ..ChartSource::default()
    };
    assert_eq!(declared_version(&chart).as_deref(), Some("0.3.1"));
    assert!(version_mismatch(&chart, "0.3.0").is_some());
}

#[test]
fn a_failure_is_retried_later_and_at_once_when_what_is_declared_changes() {
    let failures = Failures::default();
    let first = failures.record("o/t/web", 1, "boom");
    assert!(failures.current("o/t/web", 1).is_some());
    assert!(
        failures.current("o/t/web", 2).is_none(),
        "new values retry at once"
    );
    let second = failures.record("o/t/web", 1, "boom");
    assert!(second.retry_at > first.retry_at, "the backoff grows");
    failures.forget("o/t/");
    assert!(failures.current("o/t/web", 1).is_none());
}
