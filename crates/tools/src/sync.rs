//! One target's tools brought to what its ToolTarget declares: each
//! release observed (chart version, values, live objects), installed,
//! upgraded or corrected in `dependsOn` order, its health checked; and on
//! removal, our releases uninstalled, dependents first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleetforge_api::tool_install::{PlannedAction, PlannedChange, ToolStatus, ValuesSourceKind};
use fleetforge_api::tool_set::ChartSource;
use fleetforge_api::tool_target::ToolTargetSpec;
use fleetforge_api::{DriftPolicy, Tool, ToolState, ToolTarget};
use fleetforge_core::conditions;
use fleetforge_core::events::EventType;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::driver::{Releases, Session};
use crate::helm::{HelmError, OWNER_LABEL, Release, ReleaseRequest};
use crate::live::Seen;
use crate::select::Object;
use crate::values::{self, TargetFacts};

/// An event to publish: type, reason, note.
pub type Told = (EventType, &'static str, String);

/// What one pass found and did on the target.
#[derive(Debug, Default)]
pub struct Report {
    /// State per tool.
    pub tools: Vec<ToolStatus>,
    /// Drift found, one line per object field.
    pub drift: Vec<String>,
    /// With `dryRun`: what would change.
    pub plan: Vec<PlannedChange>,
    /// Events.
    pub events: Vec<Told>,
    /// When a failed tool is tried again.
    pub retry: Option<Duration>,
}

/// A failed install, retried with backoff until what is declared changes.
#[derive(Debug, Clone)]
pub struct Failure {
    fingerprint: u64,
    message: String,
    attempts: u32,
    retry_at: Instant,
}

/// Failures by `<owner>/<target>/<tool>`.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<String, Failure>>);

impl Failures {
    fn current(&self, key: &str, fingerprint: u64) -> Option<Failure> {
        let failures = self.0.lock().expect("failures");
        failures
            .get(key)
            .filter(|f| f.fingerprint == fingerprint && f.retry_at > Instant::now())
            .cloned()
    }

    fn record(&self, key: &str, fingerprint: u64, message: &str) -> Failure {
        let mut failures = self.0.lock().expect("failures");
        let attempts = failures
            .get(key)
            .filter(|f| f.fingerprint == fingerprint)
            .map_or(1, |f| f.attempts + 1);
        let delay = Duration::from_secs(15)
            .saturating_mul(1 << attempts.min(6).saturating_sub(1))
            .min(Duration::from_secs(600));
        let failure = Failure {
            fingerprint,
            message: message.to_string(),
            attempts,
            retry_at: Instant::now() + delay,
        };
        failures.insert(key.to_string(), failure.clone());
        failure
    }

    fn clear(&self, key: &str) {
        self.0.lock().expect("failures").remove(key);
    }

    /// Forgets the failures of keys starting with `prefix`.
    pub fn forget(&self, prefix: &str) {
        self.0
            .lock()
            .expect("failures")
            .retain(|key, _| !key.starts_with(prefix));
    }
}

/// The values of `tool` on the target of `spec`: the tool's own, the
/// common values, those from Secrets and ConfigMaps (`values_from`, by
/// tool), this target's overrides, then templated with its `facts`.
pub fn tool_values(
    spec: &ToolTargetSpec,
    tool: &Tool,
    facts: &TargetFacts,
    values_from: &BTreeMap<String, Result<Vec<Value>, String>>,
) -> Result<Value, String> {
    let empty = json!({});
    let mut layers: Vec<&Value> = vec![tool.values.as_ref().unwrap_or(&empty)];
    if let Some(common) = spec.values.get(&tool.name) {
        layers.push(common);
    }
    match values_from.get(&tool.name) {
        Some(Ok(sources)) => layers.extend(sources.iter()),
        Some(Err(message)) => return Err(message.clone()),
        None => {}
    }
    layers.extend(
        spec.value_overrides
            .iter()
            .filter(|o| o.tool == tool.name)
            .map(|o| &o.values),
    );
    values::render(&values::merged(layers), facts).map_err(|e| e.to_string())
}

/// One pass over one ToolTarget.
pub struct TargetPass<'a> {
    /// The ToolTarget.
    pub tt: &'a ToolTarget,
    /// The management cluster (values from Secrets and ConfigMaps).
    pub client: &'a Client,
    /// Failures of earlier passes.
    pub failures: &'a Failures,
    /// Where relative chart paths are resolved.
    pub charts_dir: &'a Path,
}

impl std::fmt::Debug for TargetPass<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetPass")
            .field("tool_target", &self.tt.metadata.name)
            .finish_non_exhaustive()
    }
}

impl TargetPass<'_> {
    fn namespace(&self) -> String {
        self.tt.namespace().unwrap_or_default()
    }

    /// The helm owner label of this ToolInstall's releases.
    pub fn owner(&self) -> String {
        format!(
            "{}.{}",
            self.namespace(),
            self.tt.spec.tool_install_ref.name
        )
    }

    fn before(&self, tool: &str) -> Option<&ToolStatus> {
        self.tt
            .status
            .as_ref()?
            .tools
            .iter()
            .find(|t| t.name == tool)
    }

    /// A tool's status, keeping `lastTransitionTime` while the state holds.
    fn status(&self, tool: &str, state: ToolState, message: Option<String>) -> ToolStatus {
        let since = self
            .before(tool)
            .filter(|t| t.state == state)
            .and_then(|t| t.last_transition_time.clone());
        ToolStatus {
            name: tool.to_string(),
            state,
            chart_version: None,
            revision: None,
            message,
            drift: Vec::new(),
            last_transition_time: Some(since.unwrap_or_else(conditions::now)),
        }
    }

    /// The tools with chart paths resolved.
    pub fn tools(&self) -> Vec<Tool> {
        self.tt
            .spec
            .tools
            .iter()
            .cloned()
            .map(|mut tool| {
                if let Some(path) = &tool.chart.path {
                    tool.chart.path = Some(self.charts_dir.join(path).display().to_string());
                }
                tool
            })
            .collect()
    }

    /// Every tool waiting: `state` (PENDING becomes UNKNOWN for a tool
    /// that was installed before), with `message`.
    pub fn waiting(&self, state: ToolState, message: &str) -> Report {
        let tools = self
            .tt
            .spec
            .tools
            .iter()
            .map(|tool| {
                let had = self.before(&tool.name).is_some_and(|s| {
                    !matches!(s.state, ToolState::Pending | ToolState::NotInstalled)
                });
                let state = if state == ToolState::Pending && had {
                    ToolState::Unknown
                } else {
                    state
                };
                self.status(&tool.name, state, Some(message.to_string()))
            })
            .collect();
        Report {
            tools,
            ..Report::default()
        }
    }

    /// Values from Secrets and ConfigMaps, per tool in declared order; a
    /// source that cannot be used becomes an error for its tool.
    pub async fn values_from(
        &self,
    ) -> Result<BTreeMap<String, Result<Vec<Value>, String>>, kube::Error> {
        let mut by_tool: BTreeMap<String, Result<Vec<Value>, String>> = BTreeMap::new();
        let namespace = self.namespace();
        for (index, source) in self.tt.spec.values_from.iter().enumerate() {
            let field = format!("spec.valuesFrom[{index}]");
            let text = match source.kind {
                ValuesSourceKind::Secret => {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                    api.get_opt(&source.name).await?.map(|s| {
                        s.data.and_then(|d| {
                            d.get(&source.key)
                                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        })
                    })
                }
                ValuesSourceKind::ConfigMap => {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
                    api.get_opt(&source.name)
                        .await?
                        .map(|c| c.data.and_then(|d| d.get(&source.key).cloned()))
                }
            };
            let entry = by_tool
                .entry(source.tool.clone())
                .or_insert_with(|| Ok(Vec::new()));
            let Ok(layers) = entry else { continue };
            let parsed = match text {
                None | Some(None) if source.optional => continue,
                None => Err(format!(
                    "{field}: {:?} {} does not exist",
                    source.kind, source.name
                )),
                Some(None) => Err(format!(
                    "{field}: {:?} {} has no key {}",
                    source.kind, source.name, source.key
                )),
                Some(Some(text)) => serde_saphyr::from_str::<Value>(&text)
                    .map_err(|e| {
                        format!(
                            "{field}: key {} of {} is not YAML: {e}",
                            source.key, source.name
                        )
                    })
                    .and_then(|v| match v {
                        Value::Object(_) => Ok(v),
                        Value::Null => Ok(json!({})),
                        _ => Err(format!(
                            "{field}: key {} of {} is not a map",
                            source.key, source.name
                        )),
                    }),
            };
            match parsed {
                Ok(values) => layers.push(values),
                Err(message) => *entry = Err(message),
            }
        }
        Ok(by_tool)
    }

    /// The tool's values on the target (see [`tool_values`]).
    fn desired_values(
        &self,
        tool: &Tool,
        facts: &TargetFacts,
        values_from: &BTreeMap<String, Result<Vec<Value>, String>>,
    ) -> Result<Value, String> {
        tool_values(&self.tt.spec, tool, facts, values_from)
    }

    /// Every tool on a reachable, Ready target.
    pub async fn sync(
        &self,
        object: Object<'_>,
        session: &dyn Session,
        values_from: &BTreeMap<String, Result<Vec<Value>, String>>,
    ) -> Report {
        let releases = match session.releases(None).await {
            Ok(releases) => releases,
            Err(e) => return self.waiting(ToolState::Unknown, &e.to_string()),
        };
        let facts = object.facts();
        let target = object.name();
        let mut report = Report::default();
        let mut deployed: BTreeSet<String> = BTreeSet::new();
        for tool in &self.tools() {
            if object.shared_tools().contains(&tool.name) {
                // The host's own install serves this virtual cluster.
                deployed.insert(tool.name.clone());
                report.tools.push(self.status(
                    &tool.name,
                    ToolState::Shared,
                    Some(format!("provided by the host Cluster {}", object.host())),
                ));
                continue;
            }
            let blocked_by = tool
                .depends_on
                .iter()
                .find(|d| !deployed.contains(*d))
                .cloned();
            let desired = self.desired_values(tool, &facts, values_from);
            let outcome = self
                .sync_tool(
                    &target,
                    tool,
                    desired,
                    session,
                    &releases,
                    blocked_by.as_deref(),
                )
                .await;
            if outcome.status.state == ToolState::Deployed {
                deployed.insert(tool.name.clone());
            }
            report
                .drift
                .extend(outcome.drift.iter().map(|d| format!("{}: {d}", tool.name)));
            report.plan.extend(outcome.plan);
            report.events.extend(outcome.events);
            report.retry = match (report.retry, outcome.retry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            report.tools.push(outcome.status);
        }
        report
    }

    async fn sync_tool(
        &self,
        target: &str,
        tool: &Tool,
        desired: Result<Value, String>,
        session: &dyn Session,
        releases: &Releases,
        blocked_by: Option<&str>,
    ) -> ToolOutcome {
        let namespace = tool.namespace.clone().unwrap_or_else(|| tool.name.clone());
        let release = releases.get(&(namespace.clone(), tool.name.clone()));
        let status = |state: ToolState, message: Option<String>| {
            let mut status = self.status(&tool.name, state, message);
            status.chart_version = release.map(|r| r.chart_version.clone());
            status.revision = release.map(|r| r.revision);
            status
        };
        let desired = match desired {
            Ok(values) => values,
            Err(message) => {
                return ToolOutcome {
                    events: vec![(
                        EventType::Warning,
                        "ValuesInvalid",
                        format!("{target}/{}: {message}", tool.name),
                    )],
                    ..ToolOutcome::new(status(ToolState::Failed, Some(message)))
                };
            }
        };
        let owner = self.owner();
        if let Some(other) = release.and_then(|r| r.labels.get(OWNER_LABEL))
            && other != &owner
        {
            let message = format!(
                "release {namespace}/{} belongs to ToolInstall {other}; it is left alone",
                tool.name
            );
            return ToolOutcome::new(status(ToolState::Failed, Some(message)));
        }

        let observed = observe(release, &desired, &tool.chart);
        let mut drift = Vec::new();
        let mut seen = Seen::default();
        let mut missing_crds = Vec::new();
        let needs_change = match &observed {
            Observed::AsDeclared => {
                let release = release.expect("a release is installed");
                match session.drift(release, &namespace).await {
                    Ok(found) => {
                        (drift, seen, missing_crds) = (found.found, found.seen, found.missing_crds);
                    }
                    Err(e) => {
                        return ToolOutcome::new(status(
                            ToolState::Unknown,
                            Some(format!("cannot read the release's objects: {e}")),
                        ));
                    }
                }
                !drift.is_empty()
            }
            Observed::Busy(_) => false,
            Observed::Missing | Observed::Stale(_) | Observed::Failed(_) => true,
        };
        let correct = self.tt.spec.drift_policy == DriftPolicy::Correct;

        if !needs_change || (!drift.is_empty() && !correct) {
            if let Observed::Busy(what) = observed {
                return ToolOutcome::new(status(ToolState::Pending, Some(what)));
            }
            if !drift.is_empty() {
                let mut outcome = ToolOutcome::new(status(
                    ToolState::Drifted,
                    Some(format!(
                        "live objects differ from the release: {}",
                        drift.join("; ")
                    )),
                ));
                outcome.status.drift = drift.clone();
                outcome.events.push((
                    EventType::Warning,
                    "DriftDetected",
                    format!("{target}/{}: {}", tool.name, drift.join("; ")),
                ));
                outcome.drift = drift;
                return outcome;
            }
            return health(target, tool, &namespace, session, &seen, status).await;
        }

        // Something to change.
        let (action, state, message) = match &observed {
            Observed::Missing => (PlannedAction::Install, ToolState::NotInstalled, None),
            Observed::Stale(why) => (PlannedAction::Upgrade, ToolState::Stale, Some(why.clone())),
            Observed::Failed(why) => (PlannedAction::Upgrade, ToolState::Failed, Some(why.clone())),
            _ => (
                PlannedAction::Upgrade,
                ToolState::Drifted,
                Some(format!(
                    "live objects differ from the release: {}",
                    drift.join("; ")
                )),
            ),
        };
        let pending = |why: String| {
            let mut outcome = ToolOutcome::new(status(
                state,
                Some(match &message {
                    Some(m) => format!("{m}; {why}"),
                    None => why,
                }),
            ));
            outcome.status.drift = drift.clone();
            outcome
        };
        if self.tt.spec.dry_run {
            let mut outcome = pending("dry run: nothing is changed".into());
            outcome.plan.push(PlannedChange {
                target: target.to_string(),
                tool: tool.name.clone(),
                action,
                values_diff: release
                    .filter(|r| !values_equal(&r.values, &desired))
                    .map(|r| values::diff(&r.values, &desired)),
            });
            return outcome;
        }
        if self.tt.spec.suspend {
            return pending("suspended: nothing is changed".into());
        }
        if let Some(dependency) = blocked_by {
            let mut outcome = pending(format!("waiting for {dependency}"));
            if state == ToolState::NotInstalled {
                outcome.status.state = ToolState::Pending;
            }
            return outcome;
        }
        let key = format!("{owner}/{target}/{}", tool.name);
        let fingerprint = fingerprint(&desired, &tool.chart);
        if let Some(failure) = self.failures.current(&key, fingerprint) {
            let mut outcome = ToolOutcome::new(status(ToolState::Failed, Some(failure.message)));
            outcome.retry = Some(failure.retry_at.saturating_duration_since(Instant::now()));
            return outcome;
        }

        // Helm puts back what its templates made, not its crds/.
        if let Err(e) = session.restore(&missing_crds).await {
            return ToolOutcome::new(status(
                ToolState::Failed,
                Some(format!("restoring the chart's crds/: {e}")),
            ));
        }
        let labels: BTreeMap<String, String> = [(OWNER_LABEL.to_string(), owner.clone())].into();
        let request = ReleaseRequest {
            name: &tool.name,
            namespace: &namespace,
            create_namespace: true,
            chart: &tool.chart,
            values: &desired,
            labels: &labels,
        };
        match session.upgrade(&request).await {
            Ok(()) => {
                self.failures.clear(&key);
                let (reason, what) = match (&observed, drift.is_empty()) {
                    (Observed::Missing, _) => ("Installed", format!("installed {}", tool.name)),
                    (_, false) => (
                        "DriftCorrected",
                        format!("corrected drift of {}: {}", tool.name, drift.join("; ")),
                    ),
                    _ => ("Upgraded", format!("upgraded {}", tool.name)),
                };
                // What was read before the change is stale now.
                let mut outcome = health(
                    target,
                    tool,
                    &namespace,
                    session,
                    &Seen::default(),
                    |state, message| {
                        let mut s = self.status(&tool.name, state, message);
                        s.chart_version = declared_version(&tool.chart);
                        s.revision = Some(release.map_or(1, |r| r.revision + 1));
                        s
                    },
                )
                .await;
                outcome
                    .events
                    .push((EventType::Normal, reason, format!("{target}: {what}")));
                if !drift.is_empty() {
                    outcome.events.insert(
                        0,
                        (
                            EventType::Warning,
                            "DriftDetected",
                            format!("{target}/{}: {}", tool.name, drift.join("; ")),
                        ),
                    );
                    outcome.drift = drift;
                }
                outcome
            }
            Err(e) => {
                let message = e.to_string();
                let failure = self.failures.record(&key, fingerprint, &message);
                let mut outcome =
                    ToolOutcome::new(status(ToolState::Failed, Some(message.clone())));
                outcome.retry = Some(failure.retry_at.saturating_duration_since(Instant::now()));
                outcome.events.push((
                    EventType::Warning,
                    if matches!(e, HelmError::Unreachable(_)) {
                        "TargetUnreachable"
                    } else {
                        "InstallFailed"
                    },
                    format!("{target}/{}: {message}", tool.name),
                ));
                outcome
            }
        }
    }

    /// Uninstalls this ToolInstall's releases from the target, dependents
    /// first; Ok(events) once none is left, Err(why) while one is.
    pub async fn remove(&self, session: &dyn Session) -> Result<Vec<Told>, (String, Vec<Told>)> {
        let releases = session
            .releases(None)
            .await
            .map_err(|e| (e.to_string(), Vec::new()))?;
        let owner = self.owner();
        // Ours, newest tools first; tools no longer declared are found by
        // their owner label.
        let mut ours: Vec<&Release> = releases
            .values()
            .filter(|r| r.labels.get(OWNER_LABEL) == Some(&owner))
            .collect();
        let tools = &self.tt.spec.tools;
        let rank = |name: &str| {
            tools
                .iter()
                .position(|t| t.name == name)
                .unwrap_or(usize::MAX)
        };
        ours.sort_by_key(|r| std::cmp::Reverse(rank(&r.name)));
        let target = &self.tt.spec.target.name;
        let mut events = Vec::new();
        for release in ours {
            if let Err(e) = session.uninstall(&release.name, &release.namespace).await {
                events.push((
                    EventType::Warning,
                    "UninstallFailed",
                    format!("{target}/{}: {e}", release.name),
                ));
                return Err((format!("uninstalling {}: {e}", release.name), events));
            }
            events.push((
                EventType::Normal,
                "Uninstalled",
                format!("{target}: uninstalled {}", release.name),
            ));
        }
        self.failures.forget(&format!("{owner}/{target}/"));
        Ok(events)
    }
}

/// What one tool's pass found and did.
#[derive(Debug)]
struct ToolOutcome {
    status: ToolStatus,
    drift: Vec<String>,
    plan: Vec<PlannedChange>,
    events: Vec<Told>,
    retry: Option<Duration>,
}

impl ToolOutcome {
    fn new(status: ToolStatus) -> Self {
        Self {
            status,
            drift: Vec::new(),
            plan: Vec::new(),
            events: Vec::new(),
            retry: None,
        }
    }
}

/// DEPLOYED when every health check passes, else PENDING saying why.
async fn health(
    target: &str,
    tool: &Tool,
    namespace: &str,
    session: &dyn Session,
    seen: &Seen,
    status: impl Fn(ToolState, Option<String>) -> ToolStatus,
) -> ToolOutcome {
    if tool.health.is_empty() {
        return ToolOutcome::new(status(ToolState::Deployed, None));
    }
    match session.unhealthy(&tool.health, namespace, seen).await {
        Ok((reasons, _)) if reasons.is_empty() => {
            ToolOutcome::new(status(ToolState::Deployed, None))
        }
        Ok((reasons, _)) => ToolOutcome::new(status(
            ToolState::Pending,
            Some(format!("installed; waiting for {}", reasons.join("; "))),
        )),
        Err(e) => ToolOutcome::new(status(
            ToolState::Unknown,
            Some(format!(
                "cannot check the health of {} on {target}: {e}",
                tool.name
            )),
        )),
    }
}

/// A release compared with what is declared, before its live objects.
#[derive(Debug, Clone, PartialEq)]
enum Observed {
    /// No release.
    Missing,
    /// Deployed with the declared chart and values.
    AsDeclared,
    /// Deployed, but another chart version or other values.
    Stale(String),
    /// The last operation failed.
    Failed(String),
    /// An operation is in progress.
    Busy(String),
}

fn observe(release: Option<&Release>, desired: &Value, chart: &ChartSource) -> Observed {
    let Some(release) = release else {
        return Observed::Missing;
    };
    match release.status.as_str() {
        "deployed" => {}
        status if status.starts_with("pending") || status == "uninstalling" => {
            return Observed::Busy(format!("helm operation in progress ({status})"));
        }
        status => return Observed::Failed(format!("release is {status}: {}", release.description)),
    }
    if let Some(why) = version_mismatch(chart, &release.chart_version) {
        return Observed::Stale(why);
    }
    if !values_equal(&release.values, desired) {
        return Observed::Stale("installed values differ from the declared values".into());
    }
    Observed::AsDeclared
}

/// Why the installed chart version is not the declared one, if it is not.
fn version_mismatch(chart: &ChartSource, installed: &str) -> Option<String> {
    let declared = declared_version(chart)?;
    let installed_version = semver::Version::parse(installed.trim_start_matches('v')).ok();
    let matches = match semver::Version::parse(declared.trim_start_matches('v')) {
        Ok(exact) => installed_version.is_some_and(|v| v == exact),
        Err(_) => match semver::VersionReq::parse(&declared) {
            Ok(range) => installed_version.is_some_and(|v| range.matches(&v)),
            Err(_) => declared == installed,
        },
    };
    (!matches).then(|| format!("chart version {installed} is installed, {declared} is declared"))
}

/// The declared chart version: `chart.version`, or for a chart directory
/// the version in its Chart.yaml.
fn declared_version(chart: &ChartSource) -> Option<String> {
    if let Some(version) = &chart.version {
        return Some(version.clone());
    }
    let path = Path::new(chart.path.as_ref()?).join("Chart.yaml");
    let text = std::fs::read_to_string(path).ok()?;
    let chart: Value = serde_saphyr::from_str(&text).ok()?;
    chart.get("version").map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Values equal as Helm sees them: Helm stores numbers as floats, so `1`
/// and `1.0` are the same value.
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| values_equal(v, w))
        }
        (x, y) => x == y,
    }
}

fn fingerprint(values: &Value, chart: &ChartSource) -> u64 {
    let mut hasher = DefaultHasher::new();
    values.to_string().hash(&mut hasher);
    format!("{chart:?}").hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
