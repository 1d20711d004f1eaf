//! The nop tool driver: releases kept in memory per target, with latency,
//! failures and drift injected on request, and every call counted. It
//! serves `nop` clusters (which exist nowhere) so that the tools
//! controllers can be measured at fleet scale and tested against faults,
//! as the nop provider does for clusters. Never presented as real.
//!
//! Faults come from annotations on the target Cluster:
//!
//! | annotation | effect |
//! |---|---|
//! | `nop.fleetforge.dev/tool-latency: "50ms"` | every call takes this long |
//! | `nop.fleetforge.dev/tool-fail: "<tool>"` | every install or upgrade of that tool fails |
//! | `nop.fleetforge.dev/tool-drift: "<tool>@<n>"` | that tool's live objects are changed out of band, once per distinct value |
//! | `nop.fleetforge.dev/unhealthy: "<name>,..."` | health checks of objects with these names fail (a tool's, a FleetRollout's) |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fleetforge_api::tool_set::HealthCheck;
use kube::Client;
use serde_json::Value;

use crate::driver::{Driver, Releases, Session, Target};
use crate::helm::{HelmError, Release, ReleaseRequest};
use crate::live::{Drift, Seen};
use crate::metrics::ToolMetrics;

/// Prefix of the nop driver's annotations.
pub const ANNOTATION_PREFIX: &str = "nop.fleetforge.dev/";

/// What happened on one target.
#[derive(Debug, Default, Clone)]
struct TargetState {
    releases: Releases,
    /// Tools whose objects were changed out of band, until corrected.
    drifted: HashSet<String>,
    /// Drift injections already applied (each distinct value once).
    injected: HashSet<String>,
    calls: BTreeMap<&'static str, u64>,
}

/// The driver.
#[derive(Debug, Default)]
pub struct NopDriver {
    targets: Mutex<HashMap<String, TargetState>>,
    metrics: Arc<ToolMetrics>,
}

impl NopDriver {
    /// A driver with no releases anywhere.
    pub fn new(metrics: Arc<ToolMetrics>) -> Arc<Self> {
        Arc::new(Self {
            targets: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Calls made on target `key`, by verb (`releases`, `upgrade`, ...).
    pub fn calls(&self, key: &str) -> BTreeMap<&'static str, u64> {
        self.targets
            .lock()
            .expect("nop targets")
            .get(key)
            .map(|t| t.calls.clone())
            .unwrap_or_default()
    }

    /// Calls made on every target.
    pub fn total_calls(&self) -> u64 {
        self.targets
            .lock()
            .expect("nop targets")
            .values()
            .flat_map(|t| t.calls.values())
            .sum()
    }

    /// The releases on target `key`.
    pub fn releases_of(&self, key: &str) -> Releases {
        self.targets
            .lock()
            .expect("nop targets")
            .get(key)
            .map(|t| t.releases.clone())
            .unwrap_or_default()
    }

    fn with<T>(&self, key: &str, verb: &'static str, f: impl FnOnce(&mut TargetState) -> T) -> T {
        let mut targets = self.targets.lock().expect("nop targets");
        let state = targets.entry(key.to_string()).or_default();
        *state.calls.entry(verb).or_default() += 1;
        f(state)
    }
}

#[async_trait]
impl Driver for Arc<NopDriver> {
    fn name(&self) -> &'static str {
        "nop"
    }

    async fn session(&self, target: Target<'_>) -> Result<Arc<dyn Session>, String> {
        let annotation = |name: &str| {
            target
                .annotations
                .get(&format!("{ANNOTATION_PREFIX}{name}"))
        };
        let latency = annotation("tool-latency")
            .and_then(|t| kube::core::Duration::from_str(t).ok())
            .map_or(Duration::ZERO, Duration::from);
        if let Some(drift) = annotation("tool-drift") {
            let tool = drift.split('@').next().unwrap_or_default().to_string();
            let mut targets = self.targets.lock().expect("nop targets");
            let state = targets.entry(target.key.to_string()).or_default();
            if state.injected.insert(drift.clone()) {
                state.drifted.insert(tool);
            }
        }
        Ok(Arc::new(NopSession {
            driver: self.clone(),
            key: target.key.to_string(),
            latency,
            failing: annotation("tool-fail").cloned(),
            unhealthy: annotation("unhealthy")
                .map(|names| names.split(',').map(|n| n.trim().to_string()).collect())
                .unwrap_or_default(),
        }))
    }

    fn forget(&self, key: &str) {
        self.targets.lock().expect("nop targets").remove(key);
    }
}

#[derive(Debug)]
struct NopSession {
    driver: Arc<NopDriver>,
    key: String,
    latency: Duration,
    failing: Option<String>,
    /// Names of health-checked objects that are not ready here.
    unhealthy: Vec<String>,
}

impl NopSession {
    async fn enter(&self, verb: &'static str) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.driver.metrics.driver_call("nop", verb, true);
    }
}

#[async_trait]
impl Session for NopSession {
    async fn releases(&self, namespace: Option<&str>) -> Result<Releases, HelmError> {
        self.enter("releases").await;
        Ok(self.driver.with(&self.key, "releases", |state| {
            state
                .releases
                .iter()
                .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    async fn upgrade(&self, request: &ReleaseRequest<'_>) -> Result<(), HelmError> {
        self.enter("upgrade").await;
        if self.failing.as_deref() == Some(request.name) {
            self.driver.with(&self.key, "upgrade", |_| ());
            return Err(HelmError::Failed(format!(
                "nop: injected failure of {}",
                request.name
            )));
        }
        self.driver.with(&self.key, "upgrade", |state| {
            let key = (request.namespace.to_string(), request.name.to_string());
            let revision = state.releases.get(&key).map_or(1, |r| r.revision + 1);
            state.drifted.remove(request.name);
            state.releases.insert(
                key,
                Release {
                    name: request.name.to_string(),
                    namespace: request.namespace.to_string(),
                    revision,
                    status: "deployed".into(),
                    description: "nop: upgrade complete".into(),
                    chart_name: request
                        .chart
                        .name
                        .clone()
                        .unwrap_or_else(|| request.name.to_string()),
                    chart_version: request
                        .chart
                        .version
                        .clone()
                        .unwrap_or_else(|| "0.0.0".into()),
                    values: request.values.clone(),
                    manifest: String::new(),
                    crds: String::new(),
                    labels: request.labels.clone(),
                },
            );
        });
        Ok(())
    }

    async fn uninstall(&self, name: &str, namespace: &str) -> Result<(), HelmError> {
        self.enter("uninstall").await;
        self.driver.with(&self.key, "uninstall", |state| {
            state
                .releases
                .remove(&(namespace.to_string(), name.to_string()));
        });
        Ok(())
    }

    async fn drift(&self, release: &Release, _namespace: &str) -> Result<Drift, String> {
        let drifted = self.driver.with(&self.key, "drift", |state| {
            state.drifted.contains(&release.name)
        });
        Ok(Drift {
            found: if drifted {
                vec![format!(
                    "Deployment/{}: changed out of band (nop)",
                    release.name
                )]
            } else {
                Vec::new()
            },
            ..Drift::default()
        })
    }

    async fn restore(&self, _crds: &[Value]) -> Result<(), String> {
        Ok(())
    }

    async fn unhealthy(
        &self,
        checks: &[HealthCheck],
        _namespace: &str,
        _seen: &Seen,
    ) -> Result<(Vec<String>, u64), String> {
        self.enter("health").await;
        let failing = checks
            .iter()
            .filter(|check| self.unhealthy.contains(&check.name))
            .map(|check| format!("{:?} {}: not ready (nop)", check.kind, check.name))
            .collect();
        Ok((failing, 0))
    }

    fn client(&self) -> Option<&Client> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetforge_api::tool_set::ChartSource;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{ANNOTATION_PREFIX}{k}"), v.to_string()))
            .collect()
    }

    async fn session(driver: &Arc<NopDriver>, faults: &[(&str, &str)]) -> Arc<dyn Session> {
        driver
            .session(Target {
                key: "team/Cluster/c1",
                kubeconfig: b"",
                annotations: &annotations(faults),
            })
            .await
            .unwrap()
    }

    fn request<'a>(
        name: &'a str,
        chart: &'a ChartSource,
        values: &'a Value,
        labels: &'a BTreeMap<String, String>,
    ) -> ReleaseRequest<'a> {
        ReleaseRequest {
            name,
            namespace: name,
            create_namespace: true,
            chart,
            values,
            labels,
        }
    }

    #[tokio::test]
    async fn releases_are_kept_revised_drifted_once_failed_on_request_and_counted() {
        let driver = NopDriver::new(Default::default());
        let chart = ChartSource {
            name: Some("web".into()),
            version: Some("1.2.3".into()),
            ..ChartSource::default()
        };
        let (values, labels) = (serde_json::json!({"replicas": 2}), BTreeMap::new());
        let plain = session(&driver, &[]).await;
        plain
            .upgrade(&request("web", &chart, &values, &labels))
            .await
            .unwrap();
        plain
            .upgrade(&request("web", &chart, &values, &labels))
            .await
            .unwrap();
        let releases = plain.releases(None).await.unwrap();
        let web = &releases[&("web".to_string(), "web".to_string())];
        assert_eq!((web.revision, web.chart_version.as_str()), (2, "1.2.3"));
        assert_eq!(web.values, values);

        let drifting = session(&driver, &[("tool-drift", "web@1")]).await;
        assert_eq!(drifting.drift(web, "web").await.unwrap().found.len(), 1);
        drifting
            .upgrade(&request("web", &chart, &values, &labels))
            .await
            .unwrap();
        assert!(drifting.drift(web, "web").await.unwrap().found.is_empty());
        // The same injection is not applied twice.
        let again = session(&driver, &[("tool-drift", "web@1")]).await;
        assert!(again.drift(web, "web").await.unwrap().found.is_empty());

        let failing = session(&driver, &[("tool-fail", "web")]).await;
        assert!(
            failing
                .upgrade(&request("web", &chart, &values, &labels))
                .await
                .is_err()
        );
        failing.uninstall("web", "web").await.unwrap();
        assert!(plain.releases(None).await.unwrap().is_empty());

        let calls = driver.calls("team/Cluster/c1");
        assert_eq!(calls["upgrade"], 4);
        assert_eq!(calls["releases"], 2);
        assert_eq!(calls["uninstall"], 1);
        assert!(driver.calls("team/Cluster/other").is_empty());
    }
}
