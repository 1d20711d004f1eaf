//! Version rollouts on the real kube-apiserver: the Cluster engine (nop
//! provider) and the FleetRollout controller run for one temporary
//! namespace; every Cluster change is recorded from a watch, and the
//! limits are checked on that record, not on timing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetforge_api::fleet_rollout::{RolloutPhase, RolloutState};
use fleetforge_api::{Cluster, FleetRollout, ProviderConfig, ProviderKind, annotation, condition};
use fleetforge_core::watch::Informers;
use fleetforge_core::{Metrics, Options, Providers};
use fleetforge_provider_nop::NopFactory;
use fleetforge_rollouts::RolloutMetrics;
use fleetforge_runtime::backoff::BackoffSettings;
use fleetforge_runtime::{ControllerMetrics, Runtime};
use fleetforge_testenv::{await_condition, shared, with_temp_ns};
use fleetforge_tools::ToolMetrics;
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(180);

struct Fleet {
    client: Client,
    namespace: String,
    nop: Arc<NopFactory>,
    /// Every spec.version each Cluster was seen with, in order.
    seen: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    /// Peak count, per ring label, of Clusters asked to run a version they
    /// did not run yet.
    peaks: Arc<Mutex<BTreeMap<String, usize>>>,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn install_crds(client: &Client) {
    static CRDS: OnceCell<()> = OnceCell::const_new();
    CRDS.get_or_init(|| async { fleetforge_core::crds::install(client).await.unwrap() })
        .await;
}

impl Fleet {
    /// The engine and the rollout controller for `namespace`, and `n` Ready
    /// nop Clusters at 1.33: c00 in ring canary, c01..c06 early, the rest
    /// late; `annotate` adds annotations by name.
    async fn start(client: Client, namespace: String, n: usize, annotate: Value) -> Self {
        install_crds(&client).await;
        let configs: Api<ProviderConfig> = Api::all(client.clone());
        let config: ProviderConfig = serde_json::from_value(json!({
            "metadata": {"name": namespace},
            "spec": {"provider": "nop", "pollInterval": "2s", "defaults": {"region": "nop-1"}},
        }))
        .unwrap();
        configs
            .create(&PostParams::default(), &config)
            .await
            .unwrap();

        let (stop, stopping) = tokio::sync::watch::channel(false);
        let runtime = Runtime::new(Arc::new(ControllerMetrics::default()), stopping).with_backoff(
            BackoffSettings {
                min: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
        );
        let nop = NopFactory::new();
        let informers = Informers::new(&client, Some(&namespace));
        // Health checks reach nop clusters through the nop tool driver.
        let (drivers, _) = fleetforge_tools::drivers(
            "helm".into(),
            2,
            Default::default(),
            Arc::new(ToolMetrics::default()),
        )
        .unwrap();
        {
            let (runtime, client, informers) = (runtime.clone(), client.clone(), informers.clone());
            let providers = Providers::default().register(ProviderKind::Nop, nop.clone());
            let options = Options {
                active_interval: Duration::from_millis(200),
                ..Options::default()
            };
            let namespace = namespace.clone();
            tokio::spawn(async move {
                let clusters = informers.clusters.clone();
                tokio::join!(
                    informers.run(),
                    fleetforge_core::run::<Cluster>(
                        &runtime,
                        client.clone(),
                        &clusters,
                        providers,
                        Arc::new(Metrics::default()),
                        options,
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

        let fleet = Self {
            client,
            namespace,
            nop,
            seen: Default::default(),
            peaks: Default::default(),
            _stop: stop,
        };
        fleet.record();
        for i in 0..n {
            let name = format!("c{i:02}");
            let ring = match i {
                0 => "canary",
                1..=6 => "early",
                _ => "late",
            };
            let cluster: Cluster = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"ring": ring},
                             "annotations": annotate.get(&name).cloned().unwrap_or(json!({}))},
                "spec": {
                    "providerConfigRef": {"name": fleet.namespace},
                    "version": "1.33",
                    "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 1}],
                },
            }))
            .unwrap();
            fleet
                .clusters()
                .create(&PostParams::default(), &cluster)
                .await
                .unwrap();
        }
        for i in 0..n {
            fleet
                .wait_cluster(&format!("c{i:02}"), "Ready at 1.33", |c| {
                    ready_at(c, "1.33")
                })
                .await;
        }
        fleet
    }

    fn clusters(&self) -> Api<Cluster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn rollouts(&self) -> Api<FleetRollout> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Records every Cluster state from a watch of its own, and the peak
    /// number per ring asked to change and not there yet.
    fn record(&self) {
        let (seen, peaks) = (self.seen.clone(), self.peaks.clone());
        let events = watcher(self.clusters(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut now: BTreeMap<String, (String, bool)> = BTreeMap::new();
            while let Some(Ok(cluster)) = events.next().await {
                let spec = cluster.spec.version.clone().unwrap_or_default();
                let ready = ready_at(&cluster, &spec);
                let ring = cluster.labels().get("ring").cloned().unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .entry(cluster.name_any())
                    .or_default()
                    .push(spec.clone());
                now.insert(cluster.name_any(), (ring.clone(), !ready && spec != "1.33"));
                let changing = now.values().filter(|(r, c)| *r == ring && *c).count();
                let mut peaks = peaks.lock().unwrap();
                let peak = peaks.entry(ring).or_default();
                *peak = (*peak).max(changing);
            }
        });
    }

    async fn wait_cluster(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Cluster) -> bool,
    ) -> Cluster {
        await_condition(&self.clusters(), name, what, WAIT, |c: Option<&Cluster>| {
            c.is_some_and(&check)
        })
        .await
        .unwrap()
        .unwrap()
    }

    async fn rollout(&self, stages: Value, extra: Value) {
        let mut spec = json!({"version": "1.35", "stages": stages, "progressDeadline": "8s"});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let rollout: FleetRollout =
            serde_json::from_value(json!({"metadata": {"name": "upgrade"}, "spec": spec})).unwrap();
        self.rollouts()
            .create(&PostParams::default(), &rollout)
            .await
            .unwrap();
    }

    async fn wait_phase(&self, phase: RolloutPhase) -> FleetRollout {
        await_condition(
            &self.rollouts(),
            "upgrade",
            &format!("the rollout to be {phase:?}"),
            WAIT,
            |r: Option<&FleetRollout>| {
                r.and_then(|r| r.status.as_ref())
                    .is_some_and(|s| s.phase == Some(phase))
            },
        )
        .await
        .unwrap()
        .unwrap()
    }

    /// Removes the nop fault annotation `key` from Cluster `name`.
    async fn clear_fault(&self, name: &str, key: &str) {
        self.clusters()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {key: null}}})),
            )
            .await
            .unwrap();
    }

    async fn annotate(&self, key: &str, value: &str) {
        self.rollouts()
            .patch(
                "upgrade",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
            )
            .await
            .unwrap();
    }

    async fn spec_versions(&self) -> BTreeMap<String, String> {
        self.clusters()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|c| (c.name_any(), c.spec.version.unwrap_or_default()))
            .collect()
    }

    async fn event_reasons(&self) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("FleetRollout")
            })
            .map(|e| e.reason.unwrap_or_default())
            .collect()
    }
}

/// Ready, converged, and running `version` (control plane and pools).
fn ready_at(cluster: &Cluster, version: &str) -> bool {
    let Some(status) = &cluster.status else {
        return false;
    };
    status.observed_generation == cluster.metadata.generation
        && status.version.as_deref() == Some(version)
        && status
            .node_pools
            .iter()
            .all(|p| p.version.as_deref() == Some(version))
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True")
}

fn three_stages() -> Value {
    json!([
        {"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
        {"name": "early", "selector": {"matchLabels": {"ring": "early"}}, "maxInFlight": "50%"},
        {"name": "rest", "selector": {}, "maxInFlight": 5},
    ])
}

#[tokio::test]
async fn thirty_clusters_are_upgraded_in_three_stages_one_minor_at_a_time() {
    let _ = shared();
    with_temp_ns(|client, ns| async move {
        let fleet = Fleet::start(client, ns, 30, json!({})).await;
        let started = Instant::now();
        fleet
            .rollout(three_stages(), json!({"progressDeadline": "2m"}))
            .await;
        let done = fleet.wait_phase(RolloutPhase::Completed).await;
        println!("30 nop clusters 1.33 -> 1.35 in {:?}", started.elapsed());
        let status = done.status.unwrap();
        assert_eq!(status.progress.as_deref(), Some("30/30"));
        assert!(status.targets.iter().all(|t| t.state == RolloutState::Done));

        let cloud = fleet.nop.cloud(&fleet.namespace).unwrap();
        for (name, version) in fleet.spec_versions().await {
            assert_eq!(version, "1.35", "{name}");
            let there = cloud.get(&name).unwrap();
            assert_eq!(there.version, "1.35", "{name} at the provider");
            assert!(there.node_pools.iter().all(|p| p.version == "1.35"));
            // Through 1.34: every spec the watch saw, in order.
            let specs: Vec<String> =
                fleet.seen.lock().unwrap()[&name]
                    .iter()
                    .cloned()
                    .fold(Vec::new(), |mut acc, s| {
                        if acc.last() != Some(&s) {
                            acc.push(s);
                        }
                        acc
                    });
            assert_eq!(specs, ["1.33", "1.34", "1.35"], "{name}");
        }
        let peaks = fleet.peaks.lock().unwrap().clone();
        assert_eq!(peaks.get("canary"), Some(&1), "{peaks:?}");
        assert!(peaks["early"] <= 3, "50% of 6: {peaks:?}");
        assert!(peaks["late"] <= 5, "{peaks:?}");

        // The version is the rollout's, and says so.
        let c = fleet.clusters().get("c12").await.unwrap();
        let managers: Vec<String> = c
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(
            managers.iter().any(|m| m == "fleetforge-rollout"),
            "{managers:?}"
        );
        let reasons = fleet.event_reasons().await;
        for reason in ["RoundStarted", "StageStarted", "StageDone", "Completed"] {
            assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_failing_canary_halts_the_rollout_and_a_resume_completes_it() {
    let _ = shared();
    with_temp_ns(|client, ns| async move {
        let fault = json!({"c00": {"nop.fleetforge.dev/fail-update": "100000"}});
        let fleet = Fleet::start(client, ns, 8, fault).await;
        fleet.rollout(three_stages(), json!({})).await;
        let halted = fleet.wait_phase(RolloutPhase::Halted).await;
        let status = halted.status.unwrap();
        let canary = status.targets.iter().find(|t| t.name == "c00").unwrap();
        assert_eq!(canary.state, RolloutState::Failed);
        assert!(
            canary
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("after its change"),
            "{canary:?}"
        );
        // Nothing beyond the canary was touched, and stays so.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let versions = fleet.spec_versions().await;
        assert!(
            versions
                .iter()
                .filter(|(n, _)| *n != "c00")
                .all(|(_, v)| v == "1.33"),
            "{versions:?}"
        );
        assert!(fleet.event_reasons().await.iter().any(|r| r == "Halted"));

        // The fault clears; a person resumes.
        fleet
            .clear_fault("c00", "nop.fleetforge.dev/fail-update")
            .await;
        fleet.annotate(annotation::RESUME, "after the fix").await;
        let done = fleet.wait_phase(RolloutPhase::Completed).await;
        assert!(
            !done.annotations().contains_key(annotation::RESUME),
            "the request is removed once acted on"
        );
        for (name, version) in fleet.spec_versions().await {
            assert_eq!(version, "1.35", "{name}");
            fleet
                .wait_cluster(&name, "Ready at 1.35", |c| ready_at(c, "1.35"))
                .await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_abort_leaves_the_fleet_consistent_and_a_rollback_reverts_what_has_not_moved() {
    let _ = shared();
    with_temp_ns(|client, ns| async move {
        let fault = json!({"c01": {"nop.fleetforge.dev/fail-update": "100000"}});
        let fleet = Fleet::start(client, ns, 8, fault).await;
        // The early stage waits for approval after the canary.
        let stages = json!([
            {"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
            {"name": "early", "selector": {"matchLabels": {"ring": "early"}}, "pause": true, "maxInFlight": 2},
            {"name": "rest", "selector": {}},
        ]);
        fleet.rollout(stages, json!({"progressDeadline": "10m"})).await;
        fleet.wait_phase(RolloutPhase::WaitingForApproval).await;
        fleet
            .wait_cluster("c00", "the canary Ready at 1.35", |c| ready_at(c, "1.35"))
            .await;
        assert_eq!(fleet.spec_versions().await["c01"], "1.33");

        // Approved: c01 (whose upgrades fail) and c02 start.
        fleet.annotate(annotation::APPROVE, "early").await;
        fleet
            .wait_cluster("c01", "c01 asked for 1.34", |c| {
                c.spec.version.as_deref() == Some("1.34")
            })
            .await;
        fleet.annotate(annotation::ABORT, "Rollback").await;
        let aborted = fleet.wait_phase(RolloutPhase::Aborted).await;
        let status = aborted.status.unwrap();
        let c01 = status.targets.iter().find(|t| t.name == "c01").unwrap();
        assert_eq!(c01.state, RolloutState::Skipped, "{c01:?}");
        assert_eq!(c01.message.as_deref(), Some("rolled back to 1.33"));
        // c01's control plane never moved: it is back at 1.33 and healthy
        // again once its spec says so.
        fleet.clear_fault("c01", "nop.fleetforge.dev/fail-update").await;
        fleet
            .wait_cluster("c01", "c01 back at 1.33 and Ready", |c| ready_at(c, "1.33"))
            .await;
        // Nothing more starts; every cluster is Ready at what its spec says.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let versions = fleet.spec_versions().await;
        for (name, version) in &versions {
            let expected_done = name == "c00" || (name == "c02" && version == "1.35");
            if !expected_done && name != "c02" {
                assert_eq!(version, "1.33", "{name}: {versions:?}");
            }
            fleet
                .wait_cluster(name, "Ready at its spec's version", |c| {
                    ready_at(c, c.spec.version.as_deref().unwrap_or_default())
                })
                .await;
        }
        assert!(fleet.event_reasons().await.iter().any(|r| r == "Aborted"));
    })
    .await;
}

#[tokio::test]
async fn a_target_failing_the_rollout_s_health_check_halts_it_until_it_passes() {
    let _ = shared();
    with_temp_ns(|client, ns| async move {
        let fault = json!({"c00": {"nop.fleetforge.dev/unhealthy": "ingress"}});
        let fleet = Fleet::start(client, ns, 3, fault).await;
        let checks = json!({"healthChecks": [
            {"kind": "Deployment", "name": "ingress", "namespace": "ingress-system"}
        ]});
        fleet.rollout(three_stages(), checks).await;
        let halted = fleet.wait_phase(RolloutPhase::Halted).await;
        let canary = halted
            .status
            .unwrap()
            .targets
            .into_iter()
            .find(|t| t.name == "c00")
            .unwrap();
        let message = canary.message.unwrap_or_default();
        assert!(
            message.contains("Deployment ingress: not ready"),
            "the failing check is named: {message}"
        );
        // Its upgrade itself went through: only the check held it.
        fleet
            .wait_cluster("c00", "c00 Ready at 1.35", |c| ready_at(c, "1.35"))
            .await;
        assert_eq!(fleet.spec_versions().await["c01"], "1.33");

        fleet
            .clear_fault("c00", "nop.fleetforge.dev/unhealthy")
            .await;
        fleet.annotate(annotation::RESUME, "checked").await;
        fleet.wait_phase(RolloutPhase::Completed).await;
    })
    .await;
}
