//! Tool rollouts on the real kube-apiserver, with the ToolInstall and
//! ToolTarget controllers (nop tool driver, nop clusters as targets) and
//! the FleetRollout controller: a ToolSet's chart bump moves over the
//! ToolTargets stage by stage within maxInFlight (checked on a record of
//! every ToolTarget change), a failing tool halts the rollout with nothing
//! beyond it touched, a rollback puts the previous chart back, and
//! deleting the rollout releases what it held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetforge_api::fleet_rollout::{RolloutPhase, RolloutState};
use fleetforge_api::{
    Cluster, FleetRollout, ToolInstall, ToolSet, ToolState, ToolTarget, annotation,
};
use fleetforge_core::watch::Informers;
use fleetforge_rollouts::RolloutMetrics;
use fleetforge_testenv::{await_condition, shared, with_temp_ns};
use fleetforge_tools::nop::NopDriver;
use fleetforge_tools::{ToolMetrics, ToolOptions};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

struct Harness {
    client: Client,
    namespace: String,
    set: String,
    nop: Arc<NopDriver>,
    /// Every ToolTarget change: (target, app chart version in its spec,
    /// deployed at that spec), in order.
    log: Arc<Mutex<Vec<(String, String, bool)>>>,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn app_version(tt: &ToolTarget) -> String {
    tt.spec
        .tools
        .iter()
        .find(|t| t.name == "app")
        .and_then(|t| t.chart.version.clone())
        .unwrap_or_default()
}

fn deployed(tt: &ToolTarget) -> bool {
    tt.status.as_ref().is_some_and(|s| {
        s.observed_generation == tt.metadata.generation && s.state == Some(ToolState::Deployed)
    })
}

impl Harness {
    async fn start(client: Client, namespace: String) -> Self {
        fleetforge_core::crds::install(&client).await.unwrap();
        let (drivers, _) = fleetforge_tools::drivers(
            "helm".into(),
            2,
            Default::default(),
            Arc::new(ToolMetrics::default()),
        )
        .unwrap();
        let nop = drivers.nop.clone();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let runtime = fleetforge_runtime::Runtime::new(Default::default(), stopping);
        let options = ToolOptions {
            helm: "helm".into(),
            namespace: Some(namespace.clone()),
            charts_dir: ".".into(),
            max_helm_processes: 4,
        };
        let (_, drifted) = tokio::sync::mpsc::unbounded_channel();
        let informers = Informers::new(&client, Some(&namespace));
        {
            let (client, namespace) = (client.clone(), namespace.clone());
            tokio::spawn(async move {
                tokio::join!(
                    informers.run(),
                    fleetforge_tools::run_with(
                        &runtime,
                        client.clone(),
                        &informers,
                        options,
                        drivers.clone(),
                        drifted
                    ),
                    fleetforge_rollouts::run(
                        &runtime,
                        client,
                        &informers,
                        Some(&namespace),
                        Arc::new(RolloutMetrics::default()),
                        Some(drivers),
                    ),
                );
            });
        }
        let harness = Self {
            set: format!("{namespace}-web"),
            client,
            namespace,
            nop,
            log: Default::default(),
            _stop: stop,
        };
        harness.record();
        harness
    }

    fn record(&self) {
        let log = self.log.clone();
        let events = watcher(self.tool_targets(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(Ok(tt)) = events.next().await {
                log.lock().unwrap().push((
                    tt.spec.target.name.clone(),
                    app_version(&tt),
                    deployed(&tt),
                ));
            }
        });
    }

    fn tool_targets(&self) -> Api<ToolTarget> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn rollouts(&self) -> Api<FleetRollout> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn clusters(&self) -> Api<Cluster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A Ready nop Cluster (its status set here, as the engine would).
    async fn cluster(&self, name: &str, ring: &str) {
        let cluster: Cluster = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"ring": ring}},
            "spec": {"providerConfigRef": {"name": "nop"}},
        }))
        .unwrap();
        self.clusters()
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
        let status = json!({"status": {"provider": "nop", "phase": "Ready", "conditions": [{
            "type": "Ready", "status": "True", "reason": "Available", "message": "up",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]}});
        self.clusters()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }

    async fn set_app_version(&self, version: &str) {
        let set: ToolSet = serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolSet",
            "metadata": {"name": self.set},
            "spec": {"tools": [
                {"name": "base", "chart": {"repository": "https://charts.example.com", "name": "base", "version": "1.0.0"}},
                {"name": "app", "chart": {"repository": "https://charts.example.com", "name": "app", "version": version}, "dependsOn": ["base"]},
            ]},
        }))
        .unwrap();
        Api::<ToolSet>::all(self.client.clone())
            .patch(
                &self.set,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&set),
            )
            .await
            .unwrap();
    }

    async fn annotate_cluster(&self, name: &str, value: Value) {
        self.clusters()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"nop.fleetforge.dev/tool-fail": value}}}),
                ),
            )
            .await
            .unwrap();
    }

    async fn targets(&self) -> BTreeMap<String, ToolTarget> {
        self.tool_targets()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|t| (t.spec.target.name.clone(), t))
            .collect()
    }

    async fn wait_targets(&self, what: &str, check: impl Fn(&str, &ToolTarget) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let targets = self.targets().await;
            if targets.len() == 4 && targets.iter().all(|(name, tt)| check(name, tt)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                targets
                    .iter()
                    .map(|(n, tt)| (n, app_version(tt), tt.status.as_ref().and_then(|s| s.state)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_rollout(
        &self,
        what: &str,
        check: impl Fn(&FleetRollout) -> bool,
    ) -> FleetRollout {
        await_condition(
            &self.rollouts(),
            "tools",
            what,
            WAIT,
            |r: Option<&FleetRollout>| r.is_some_and(&check),
        )
        .await
        .unwrap()
        .unwrap()
    }

    fn app_on(&self, cluster: &str) -> String {
        self.nop
            .releases_of(&format!("{}/Cluster/{cluster}", self.namespace))
            .get(&("app".to_string(), "app".to_string()))
            .map(|r| r.chart_version.clone())
            .unwrap_or_default()
    }
}

fn phase_for(r: &FleetRollout, generation: i64, phase: RolloutPhase) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.phase == Some(phase)
            && s.revision
                .as_deref()
                .is_some_and(|rev| rev.ends_with(&format!("generation {generation}")))
    })
}

#[tokio::test]
async fn a_tool_set_change_rolls_over_its_targets_in_stages_halts_on_failure_and_rolls_back() {
    let _ = shared();
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client.clone(), ns.clone()).await;
        for (name, ring) in [("a1", "first"), ("a2", "first"), ("b1", "second"), ("b2", "second")] {
            h.cluster(name, ring).await;
        }
        h.set_app_version("2.0.0").await;
        let install: ToolInstall = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"toolSetRef": {"name": h.set}, "targets": {"clusterSelector": {}}, "pollInterval": "1h"},
        }))
        .unwrap();
        Api::<ToolInstall>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &install)
            .await
            .unwrap();
        h.wait_targets("every target DEPLOYED at 2.0.0", |_, tt| {
            deployed(tt) && app_version(tt) == "2.0.0"
        })
        .await;

        let rollout: FleetRollout = serde_json::from_value(json!({
            "metadata": {"name": "tools"},
            "spec": {
                "toolSetRef": {"name": h.set},
                "progressDeadline": "1m",
                "stages": [
                    {"name": "first", "selector": {"matchLabels": {"ring": "first"}}},
                    {"name": "second", "selector": {}, "maxInFlight": 2},
                ],
            },
        }))
        .unwrap();
        h.rollouts()
            .create(&PostParams::default(), &rollout)
            .await
            .unwrap();
        h.wait_rollout("the first round, nothing to change, Completed", |r| {
            phase_for(r, 1, RolloutPhase::Completed)
        })
        .await;
        h.log.lock().unwrap().clear();

        // The chart bump goes target by target through the stages.
        h.set_app_version("2.1.0").await;
        let done = h
            .wait_rollout("2.1.0 rolled out", |r| phase_for(r, 2, RolloutPhase::Completed))
            .await;
        assert_eq!(done.status.unwrap().progress.as_deref(), Some("4/4"));
        for name in ["a1", "a2", "b1", "b2"] {
            assert_eq!(h.app_on(name), "2.1.0", "{name}");
        }
        let log = h.log.lock().unwrap().clone();
        let mut changing: BTreeMap<&str, bool> = BTreeMap::new();
        for (i, (target, version, deployed)) in log.iter().enumerate() {
            changing.insert(target, version == "2.1.0" && !deployed);
            let in_first = changing
                .iter()
                .filter(|(t, c)| t.starts_with('a') && **c)
                .count();
            let in_second = changing
                .iter()
                .filter(|(t, c)| t.starts_with('b') && **c)
                .count();
            assert!(in_first <= 1, "first stage over maxInFlight 1 at {i}: {log:?}");
            assert!(in_second <= 2, "second stage over maxInFlight 2 at {i}: {log:?}");
        }
        let second_start = log
            .iter()
            .position(|(t, v, _)| t.starts_with('b') && v == "2.1.0")
            .unwrap();
        let first_done: std::collections::BTreeSet<&str> = log[..second_start]
            .iter()
            .filter(|(t, v, d)| t.starts_with('a') && v == "2.1.0" && *d)
            .map(|(t, ..)| t.as_str())
            .collect();
        assert_eq!(
            first_done.len(),
            2,
            "the second stage started before the first was done: {log:?}"
        );
        let a1 = h.tool_targets().get("web-cluster-a1").await.unwrap();
        assert!(
            a1.annotations()
                .get(annotation::ROLLOUT)
                .is_some_and(|r| r.starts_with("tools: ToolSet")),
            "{:?}",
            a1.annotations()
        );

        // A tool that fails on the first target halts the rollout there.
        h.annotate_cluster("a1", json!("app")).await;
        h.set_app_version("2.2.0").await;
        let halted = h
            .wait_rollout("the rollout Halted", |r| phase_for(r, 3, RolloutPhase::Halted))
            .await;
        let status = halted.status.unwrap();
        let a1 = status.targets.iter().find(|t| t.name == "web-cluster-a1").unwrap();
        assert_eq!(a1.state, RolloutState::Failed, "{a1:?}");
        assert!(a1.message.as_deref().unwrap_or_default().contains("injected failure of app"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let targets = h.targets().await;
        for name in ["a2", "b1", "b2"] {
            assert_eq!(app_version(&targets[name]), "2.1.0", "{name} was touched");
            assert_eq!(h.app_on(name), "2.1.0");
        }

        // Aborted with a rollback: a1 gets 2.1.0 back; nothing else moves.
        h.rollouts()
            .patch(
                "tools",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {annotation::ABORT: "Rollback"}}})),
            )
            .await
            .unwrap();
        h.wait_rollout("Aborted", |r| phase_for(r, 3, RolloutPhase::Aborted))
            .await;
        h.wait_targets("every target DEPLOYED at 2.1.0", |_, tt| {
            deployed(tt) && app_version(tt) == "2.1.0"
        })
        .await;
        let a1 = h.tool_targets().get("web-cluster-a1").await.unwrap();
        assert!(!a1.annotations().contains_key(annotation::ROLLOUT_PREVIOUS));

        // The rollout goes: the ToolInstall's tools apply everywhere.
        h.annotate_cluster("a1", Value::Null).await;
        h.rollouts()
            .delete("tools", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_targets("every target DEPLOYED at 2.2.0", |_, tt| {
            deployed(tt) && app_version(tt) == "2.2.0"
        })
        .await;
        for name in ["a1", "a2", "b1", "b2"] {
            assert_eq!(h.app_on(name), "2.2.0", "{name}");
        }
    })
    .await;
}
