//! The managed reconciler's behaviour on the real kube-apiserver, with the
//! nop provider as the cloud: each test runs its own engine, watching only
//! its temporary namespace, against its own ProviderConfig.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetforge_api::{Cluster, ProviderConfig, ProviderKind, annotation, condition};
use fleetforge_core::{Metrics, Options, Providers};
use fleetforge_provider_nop::{NopCloud, NopCluster, NopFactory, NopPool};
use fleetforge_runtime::backoff::BackoffSettings;
use fleetforge_runtime::informer::Informer;
use fleetforge_runtime::{ControllerMetrics, Runtime};
use fleetforge_testenv::{Requests, await_condition, shared, with_temp_ns};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// How long a test waits for the engine (a bound on liveness, not a
/// performance figure: the full suite shares two cores with other tests).
const WAIT: Duration = Duration::from_secs(90);

/// One engine for one test namespace.
struct Harness {
    client: Client,
    namespace: String,
    config: String,
    nop: Arc<NopFactory>,
    metrics: Arc<Metrics>,
    /// Every request the engine made (its client records them).
    requests: Requests,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

async fn install_crds(client: &Client) {
    static CRDS: OnceCell<()> = OnceCell::const_new();
    CRDS.get_or_init(|| async { fleetforge_core::crds::install(client).await.unwrap() })
        .await;
}

impl Harness {
    /// Starts an engine for `namespace` with a nop ProviderConfig named
    /// after the namespace; `nop` and `extra` are merged into its spec.
    async fn start(client: Client, namespace: String, extra: Value) -> Self {
        install_crds(&client).await;
        let config = namespace.clone();
        let mut spec = json!({
            "provider": "nop",
            "pollInterval": "1s",
            "defaults": {"region": "nop-region-1"},
        });
        merge(&mut spec, extra);
        let configs: Api<ProviderConfig> = Api::all(client.clone());
        let object: ProviderConfig =
            serde_json::from_value(json!({"metadata": {"name": config}, "spec": spec})).unwrap();
        configs
            .create(&PostParams::default(), &object)
            .await
            .unwrap();

        let mut harness = Self {
            client,
            namespace,
            config,
            nop: NopFactory::new(),
            metrics: Arc::new(Metrics::default()),
            requests: Requests::default(),
            stop: None,
        };
        harness.spawn_engine().await;
        harness
    }

    /// Starts an engine (a new one after [`Harness::restart`]) with fresh
    /// metrics, against the same fake cloud.
    async fn spawn_engine(&mut self) {
        let (client, requests) = shared().counting_client().await.unwrap();
        self.requests = requests;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let runtime = Runtime::new(Arc::new(ControllerMetrics::default()), stopping).with_backoff(
            BackoffSettings {
                min: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
        );
        let options = Options {
            active_interval: Duration::from_millis(200),
            creation_grace_period: Duration::from_secs(3),
            ..Options::default()
        };
        self.metrics = Arc::new(Metrics::default());
        let providers = Providers::default().register(ProviderKind::Nop, self.nop.clone());
        let metrics = self.metrics.clone();
        // A new informer per engine, as a restarted process has.
        let clusters = Informer::new(Api::<Cluster>::namespaced(client.clone(), &self.namespace));
        tokio::spawn(async move {
            tokio::select! {
                () = fleetforge_core::run::<Cluster>(&runtime, client, &clusters, providers, metrics, options) => {}
                () = clusters.clone().run() => {}
            }
        });
        self.stop = Some(stop);
    }

    /// Stops the engine and starts another, as a controller restart (or a
    /// new leader) does; the fake cloud keeps its clusters.
    async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.spawn_engine().await;
    }

    fn clusters(&self) -> Api<Cluster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn create(&self, name: &str, spec: Value, annotations: Value) -> Cluster {
        let mut full = json!({
            "providerConfigRef": {"name": self.config},
            "version": "1.36",
            "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": 2}],
        });
        merge(&mut full, spec);
        let cluster: Cluster = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": full,
        }))
        .unwrap();
        self.clusters()
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap()
    }

    async fn patch_spec(&self, name: &str, spec: Value) {
        self.clusters()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    /// The fake cloud, once the engine connected to it.
    async fn cloud(&self) -> Arc<NopCloud> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(cloud) = self.nop.cloud(&self.config) {
                return cloud;
            }
            assert!(
                Instant::now() < deadline,
                "the engine never connected to {}",
                self.config
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&Cluster) -> bool) -> Cluster {
        await_condition(&self.clusters(), name, what, WAIT, |c: Option<&Cluster>| {
            c.is_some_and(&check)
        })
        .await
        .unwrap()
        .unwrap()
    }

    async fn wait_for_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Cluster {
        let what = format!("Cluster {name} to have {type_}={status} ({reason})");
        self.wait_for(name, &what, |c| {
            conditions_of(c)
                .iter()
                .any(|(t, s, r, _)| t == type_ && s == status && (reason.is_empty() || r == reason))
        })
        .await
    }

    async fn wait_until_gone(&self, name: &str) {
        await_condition(
            &self.clusters(),
            name,
            &format!("Cluster {name} to be gone"),
            WAIT,
            |c: Option<&Cluster>| c.is_none(),
        )
        .await
        .unwrap();
    }

    /// `(reason, note)` of the events about Cluster `name`.
    async fn events(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    async fn wait_for_event(&self, name: &str, reason: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events(name).await;
            if let Some((_, note)) = events.iter().find(|(r, _)| r == reason) {
                return note.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {reason} event for {name}; events: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, extra) => *base = extra,
    }
}

fn conditions_of(cluster: &Cluster) -> Vec<(String, String, String, String)> {
    cluster
        .status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            )
        })
        .collect()
}

fn message_of(cluster: &Cluster, type_: &str) -> String {
    conditions_of(cluster)
        .into_iter()
        .find(|(t, ..)| t == type_)
        .map(|(.., m)| m)
        .unwrap_or_default()
}

fn pool_desired(cloud: &NopCloud, cluster: &str) -> i32 {
    cloud.get(cluster).unwrap().node_pools[0].desired
}

#[tokio::test]
async fn a_cluster_is_created_and_reported_ready() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({}), json!({})).await;
        let ready = h
            .wait_for_condition("web", condition::READY, "True", "Available")
            .await;

        let status = ready.status.clone().unwrap();
        assert_eq!(status.provider.as_deref(), Some("nop"));
        assert_eq!(status.region.as_deref(), Some("nop-region-1"));
        assert_eq!(status.version.as_deref(), Some("1.36"));
        assert_eq!(status.phase, Some(fleetforge_api::ClusterPhase::Ready));
        assert_eq!(status.observed_generation, ready.metadata.generation);
        assert_eq!(status.endpoint.as_deref(), Some("https://web.nop.invalid"));
        assert_eq!(status.node_pools[0].desired, Some(2));
        assert!(status.last_observed.is_some());
        let conditions = conditions_of(&ready);
        assert!(
            conditions
                .iter()
                .any(|(t, s, ..)| t == condition::SYNCED && s == "True")
        );
        assert!(
            conditions
                .iter()
                .any(|(t, s, ..)| t == condition::DRIFTED && s == "False")
        );

        assert!(
            ready
                .finalizers()
                .contains(&fleetforge_api::FINALIZER.to_string())
        );
        let annotations = ready.annotations();
        assert_eq!(
            annotations
                .get(annotation::EXTERNAL_NAME)
                .map(String::as_str),
            Some("web")
        );
        // The create's start stays in its annotation; its success is in
        // status (one write fewer than a second annotation).
        let started = annotations
            .get(annotation::CREATE_PENDING)
            .expect("the create's start");
        let succeeded = status
            .create_succeeded
            .as_ref()
            .expect("the create's success");
        assert_eq!(succeeded.0, started.parse().unwrap());

        let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.namespace);
        let secret = secrets.get("web-kubeconfig").await.unwrap();
        let kubeconfig = String::from_utf8(secret.data.unwrap()["value"].0.clone()).unwrap();
        assert!(kubeconfig.contains("https://web.nop.invalid"));
        let owner = &secret.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Cluster", "web")
        );

        h.wait_for_event("web", "CreatedExternalResource").await;
        let cloud = h.cloud().await;
        assert_eq!(cloud.calls.snapshot().1, 1, "exactly one create call");
        assert_eq!(cloud.names(), vec!["web".to_string()]);
    })
    .await;
}

#[tokio::test]
async fn a_cluster_deleted_out_of_band_is_recreated() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        cloud.remove("web");

        let note = h.wait_for_event("web", "ExternalResourceMissing").await;
        assert!(note.contains("recreating"), "{note}");
        h.wait_for("web", "the cluster to be recreated", |_| {
            cloud.get("web").is_some()
        })
        .await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        assert_eq!(
            cloud.calls.snapshot().1,
            2,
            "created once, then recreated once"
        );
    })
    .await;
}

#[tokio::test]
async fn drift_is_detected_reported_and_corrected() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        cloud.mutate("web", |c| c.node_pools[0].desired = 5);

        let note = h.wait_for_event("web", "DriftDetected").await;
        assert!(
            note.contains("nodePools[workers].desired: spec 2, actual 5"),
            "{note}"
        );
        h.wait_for_event("web", "CorrectingDrift").await;
        h.wait_for_event("web", "DriftCorrected").await;
        let corrected = h
            .wait_for_condition("web", condition::DRIFTED, "False", "NoDrift")
            .await;
        assert_eq!(pool_desired(&cloud, "web"), 2);
        assert!(corrected.status.unwrap().drift.is_none());
        let metrics =
            h.metrics
                .drift_detected
                .get_or_create(&fleetforge_core::metrics::DriftLabels {
                    kind: "Cluster",
                    provider: "nop",
                });
        assert_eq!(metrics.get(), 1);
    })
    .await;
}

#[tokio::test]
async fn drift_is_only_reported_under_drift_policy_report() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({"driftPolicy": "Report"}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available").await;
        let cloud = h.cloud().await;
        cloud.mutate("web", |c| c.node_pools[0].desired = 5);

        let drifted = h.wait_for_condition("web", condition::DRIFTED, "True", "DriftDetected").await;
        assert!(message_of(&drifted, condition::DRIFTED).contains("nodePools[workers].desired: spec 2, actual 5"));
        let drift = drifted.status.clone().unwrap().drift.unwrap();
        assert_eq!(drift.fields, vec!["nodePools[workers].desired: spec 2, actual 5"]);
        assert!(drift.last_detected.is_some());
        h.wait_for_event("web", "DriftDetected").await;
        // Several polls later the cloud still has the drifted size.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(pool_desired(&cloud, "web"), 5);
        assert_eq!(cloud.calls.snapshot().2, 0, "no update call");
        // A spec change is still applied, and re-asserts the whole spec.
        h.patch_spec("web", json!({"nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": 3}]})).await;
        h.wait_for_condition("web", condition::DRIFTED, "False", "NoDrift").await;
        assert_eq!(pool_desired(&cloud, "web"), 3);
    })
    .await;
}

#[tokio::test]
async fn deleting_removes_the_external_cluster_then_the_finalizer() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        h.clusters()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("web").await;
        assert!(
            cloud.get("web").is_none(),
            "the external cluster must be gone first"
        );
        let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.namespace);
        assert!(secrets.get_opt("web-kubeconfig").await.unwrap().is_none());
        assert_eq!(cloud.calls.snapshot().3, 1, "one delete call");
    })
    .await;
}

#[tokio::test]
async fn orphaning_keeps_the_external_cluster() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        let created = h
            .create("web", json!({"deletionPolicy": "Orphan"}), json!({}))
            .await;
        let ready = h
            .wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        assert!(
            ready.finalizers().is_empty(),
            "nothing to clean up, so no finalizer"
        );
        let cloud = h.cloud().await;
        h.clusters()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("web").await;
        assert!(cloud.get("web").is_some());
        assert_eq!(cloud.calls.snapshot().3, 0);
        assert_eq!(
            cloud.get("web").unwrap().owner,
            Some(format!("{}/{}", h.namespace, created.name_any()))
        );
    })
    .await;
}

#[tokio::test]
async fn an_existing_cluster_is_imported_observe_only() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        // Nothing to observe until an external name is given.
        h.create(
            "imported",
            json!({"managementPolicy": "ObserveOnly"}),
            json!({}),
        )
        .await;
        let waiting = h
            .wait_for_condition(
                "imported",
                condition::SYNCED,
                "False",
                "ExternalNameMissing",
            )
            .await;
        assert!(message_of(&waiting, condition::SYNCED).contains(annotation::EXTERNAL_NAME));

        let cloud = h.cloud().await;
        cloud.put(NopCluster {
            name: "legacy".into(),
            owner: None,
            version: "1.35".into(),
            node_pools: vec![NopPool {
                name: "workers".into(),
                machine_type: "standard-2".into(),
                version: "1.35".into(),
                min: 1,
                max: 5,
                desired: 2,
            }],
            ready_at: 0,
            busy_until: 0,
            deleted_at: None,
            visible_at: 0,
        });
        h.clusters()
            .patch(
                "imported",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {annotation::EXTERNAL_NAME: "legacy"}}}),
                ),
            )
            .await
            .unwrap();
        h.wait_for_condition("imported", condition::READY, "True", "Available")
            .await;
        let imported = h
            .wait_for_condition("imported", condition::DRIFTED, "True", "DriftDetected")
            .await;
        assert_eq!(
            imported.status.clone().unwrap().version.as_deref(),
            Some("1.35")
        );
        assert!(
            message_of(&imported, condition::DRIFTED).contains("version: spec 1.36, actual 1.35")
        );
        assert!(imported.finalizers().is_empty());
        let (_, creates, updates, deletes) = cloud.calls.snapshot();
        assert_eq!(
            (creates, updates, deletes),
            (0, 0, 0),
            "ObserveOnly never writes to the provider"
        );

        h.clusters()
            .delete("imported", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("imported").await;
        assert!(cloud.get("legacy").is_some());
    })
    .await;
}

#[tokio::test]
async fn provider_failures_become_conditions_and_back_off() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        let faults = json!({
            "nop.fleetforge.dev/fail-create": "1000",
            "nop.fleetforge.dev/fail-kind": "QuotaExceeded",
        });
        h.create("web", json!({}), faults).await;
        let failed = h
            .wait_for_condition("web", condition::SYNCED, "False", "QuotaExceeded")
            .await;
        assert!(message_of(&failed, condition::SYNCED).contains("injected create failure"));
        h.wait_for_event("web", "QuotaExceeded").await;
        let annotations = failed.annotations();
        assert!(annotations.contains_key(annotation::CREATE_FAILED));
        assert!(!annotations.contains_key(annotation::CREATE_PENDING));

        let cloud = h.cloud().await;
        let before = cloud.calls.snapshot().1;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let attempts = cloud.calls.snapshot().1 - before;
        // Backoff from 200 ms doubling to 2 s allows about 5 attempts in 6 s;
        // a hot loop would make hundreds.
        assert!(
            (1..=8).contains(&attempts),
            "{attempts} create attempts in 6 s"
        );
        assert!(cloud.names().is_empty());
    })
    .await;
}

#[tokio::test]
async fn throttling_is_honoured() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        // Retry-After (3 s) is far longer than the engine's own backoff
        // (200 ms doubling to 2 s): ignoring it would make 5 or more
        // attempts in the 5 s watched, honouring it 2 at most.
        let faults = json!({
            "nop.fleetforge.dev/fail-observe": "1000",
            "nop.fleetforge.dev/fail-kind": "Throttled",
            "nop.fleetforge.dev/retry-after": "3s",
        });
        h.create("web", json!({}), faults).await;
        h.wait_for_condition("web", condition::SYNCED, "False", "Throttled")
            .await;
        let cloud = h.cloud().await;
        let before = cloud.calls.snapshot().0;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let attempts = cloud.calls.snapshot().0 - before;
        assert!(
            attempts <= 2,
            "{attempts} observe attempts in 5 s despite Retry-After 3 s"
        );
        assert!(attempts >= 1, "the engine stopped retrying: {attempts}");
    })
    .await;
}

#[tokio::test]
async fn the_account_rate_limit_holds_across_clusters() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(
            client,
            ns,
            json!({"rateLimit": {"qps": 5, "burst": 2}, "pollInterval": "30s"}),
        )
        .await;
        let started = Instant::now();
        for i in 0..6 {
            h.create(&format!("c{i}"), json!({}), json!({})).await;
        }
        for i in 0..6 {
            h.wait_for_condition(&format!("c{i}"), condition::READY, "True", "Available")
                .await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let (observes, creates, updates, deletes) = h.cloud().await.calls.snapshot();
        let calls = (observes + creates + updates + deletes) as f64;
        assert!(
            calls <= 2.0 + 5.0 * elapsed * 1.1,
            "{calls} calls in {elapsed:.1} s exceed 5 per second with a burst of 2"
        );
    })
    .await;
}

#[tokio::test]
async fn each_cluster_is_read_once_per_poll_interval() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({"pollInterval": "2s"})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = cloud.observes_of("web");
        let version_before = h.clusters().get("web").await.unwrap().resource_version();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let reads = cloud.observes_of("web") - before;
        // Polling a converged cluster writes nothing (lastObserved is
        // refreshed only every ten poll intervals, 20 s here).
        let after = h.clusters().get("web").await.unwrap();
        if after.resource_version() != version_before {
            let status = serde_json::to_string_pretty(&after.status).unwrap();
            panic!("a converged cluster was rewritten while polling; status now:\n{status}");
        }
        // 10 s at one read per 2 s (jittered by 10%): at most 6. The lower
        // bound only shows that polling happens on a busy machine.
        assert!(
            (2..=6).contains(&reads),
            "{reads} reads in 10 s with a 2 s poll interval"
        );
    })
    .await;
}

#[tokio::test]
async fn a_skipped_minor_version_is_refused_and_upgrades_go_control_plane_first() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({"version": "1.34"}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;

        h.patch_spec("web", json!({"version": "1.36"})).await;
        let refused = h
            .wait_for_condition("web", condition::SYNCED, "False", "VersionSkew")
            .await;
        let message = message_of(&refused, condition::SYNCED);
        assert!(message.starts_with("spec.version:"), "{message}");
        assert!(message.contains("skips 1.35"), "{message}");
        h.wait_for_event("web", "VersionSkew").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(cloud.calls.snapshot().2, 0, "nothing was changed");

        h.patch_spec("web", json!({"version": "1.35"})).await;
        let upgraded = h
            .wait_for("web", "the control plane and pool at 1.35, in sync", |c| {
                let status = c.status.clone().unwrap_or_default();
                status.version.as_deref() == Some("1.35")
                    && status.node_pools.first().and_then(|p| p.version.as_deref()) == Some("1.35")
                    && status.observed_generation == c.metadata.generation
            })
            .await;
        assert!(
            conditions_of(&upgraded)
                .iter()
                .any(|(t, s, ..)| t == condition::SYNCED && s == "True")
        );
        // Two update calls: the control plane alone, then the pool.
        assert_eq!(cloud.calls.snapshot().2, 2);
        let notes: Vec<String> = h
            .events("web")
            .await
            .into_iter()
            .filter(|(r, _)| r == "UpdatingExternalResource")
            .map(|(_, n)| n)
            .collect();
        assert!(
            notes
                .iter()
                .any(|n| n == "upgrade the control plane to 1.35"),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n == "upgrade node pool workers to 1.35"),
            "{notes:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn node_pools_are_scaled_added_and_removed() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available").await;
        h.patch_spec(
            "web",
            json!({"nodePools": [
                {"name": "workers", "machineType": "standard-2", "min": 1, "max": 5, "desired": 4},
                {"name": "batch", "machineType": "standard-8", "min": 0, "max": 3},
            ]}),
        )
        .await;
        let scaled = h
            .wait_for("web", "workers at 4 and a batch pool", |c| {
                let pools = c.status.clone().unwrap_or_default().node_pools;
                pools.iter().any(|p| p.name == "workers" && p.desired == Some(4))
                    && pools.iter().any(|p| p.name == "batch")
                    && c.status.as_ref().unwrap().observed_generation == c.metadata.generation
            })
            .await;
        assert_eq!(scaled.status.unwrap().node_pools.len(), 2);
        h.patch_spec("web", json!({"nodePools": [{"name": "batch", "machineType": "standard-8", "min": 0, "max": 3}]})).await;
        h.wait_for("web", "only the batch pool", |c| {
            let pools = c.status.clone().unwrap_or_default().node_pools;
            pools.len() == 1 && pools[0].name == "batch"
        })
        .await;
        let cloud = h.cloud().await;
        assert_eq!(cloud.get("web").unwrap().node_pools.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_spec_the_provider_cannot_apply_is_refused_on_an_existing_cluster() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        let before = cloud.calls.snapshot();

        // Nothing in the external cluster differs, yet the nop provider
        // takes no provider block: refused, named, and nothing changed.
        let aws = json!({"aws": {
            "roleArn": "arn:aws:iam::123456789012:role/eks",
            "nodeRoleArn": "arn:aws:iam::123456789012:role/nodes",
            "subnetIds": ["subnet-1", "subnet-2"],
        }});
        h.patch_spec("web", json!({"provider": aws})).await;
        let refused = h
            .wait_for_condition("web", condition::SYNCED, "False", "InvalidSpec")
            .await;
        let message = message_of(&refused, condition::SYNCED);
        assert!(message.starts_with("spec.provider:"), "{message}");
        assert!(
            conditions_of(&refused)
                .iter()
                .any(|(t, s, ..)| t == condition::READY && s == "True"),
            "the cluster itself is still usable"
        );
        h.wait_for_event("web", "InvalidSpec").await;
        assert_eq!(cloud.calls.snapshot().1, before.1, "no create");
        assert_eq!(cloud.calls.snapshot().2, before.2, "no update");

        h.patch_spec("web", json!({"provider": null})).await;
        h.wait_for_condition("web", condition::SYNCED, "True", "ReconcileSuccess")
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_paused_cluster_is_left_alone() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("web", json!({"paused": true}), json!({})).await;
        h.wait_for_condition("web", condition::SYNCED, "False", "ReconcilePaused")
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            h.nop
                .cloud(&h.config)
                .is_none_or(|c| c.calls.snapshot() == (0, 0, 0, 0))
        );
        h.patch_spec("web", json!({"paused": false})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_name_taken_by_someone_else_is_neither_adopted_nor_deleted() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        h.create("probe", json!({}), json!({})).await;
        h.wait_for_condition("probe", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        cloud.put(NopCluster {
            name: "taken".into(),
            owner: Some("other-team/taken".into()),
            version: "1.36".into(),
            node_pools: vec![],
            ready_at: 0,
            busy_until: 0,
            deleted_at: None,
            visible_at: 0,
        });
        h.create("taken", json!({}), json!({})).await;
        let refused = h
            .wait_for_condition("taken", condition::SYNCED, "False", "AlreadyExists")
            .await;
        assert!(message_of(&refused, condition::SYNCED).contains("other-team/taken"));
        h.clusters()
            .delete("taken", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("taken").await;
        assert!(cloud.get("taken").is_some());
        assert_eq!(cloud.calls.snapshot().3, 0);
    })
    .await;
}

#[tokio::test]
async fn a_missing_provider_config_is_reported_and_picked_up_when_created() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client.clone(), ns.clone(), json!({})).await;
        let late = format!("{ns}-late");
        h.create(
            "web",
            json!({"providerConfigRef": {"name": late}}),
            json!({}),
        )
        .await;
        let waiting = h
            .wait_for_condition("web", condition::SYNCED, "False", "ProviderConfigNotFound")
            .await;
        assert!(message_of(&waiting, condition::SYNCED).contains(&late));
        let configs: Api<ProviderConfig> = Api::all(client);
        let config: ProviderConfig = serde_json::from_value(
            json!({"metadata": {"name": late}, "spec": {"provider": "nop"}}),
        )
        .unwrap();
        configs
            .create(&PostParams::default(), &config)
            .await
            .unwrap();
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
    })
    .await;
}

#[tokio::test]
async fn unreadable_credentials_are_reported_without_their_content() {
    with_temp_ns(|client, ns| async move {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds"},
            "stringData": {"token": "planted-secret-value-7f3a"},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        let h = Harness::start(
            client.clone(),
            ns.clone(),
            json!({"credentials": {"source": "Secret", "secretRef": {"namespace": ns, "name": "creds", "key": "wrong-key"}}}),
        )
        .await;
        h.create("web", json!({}), json!({})).await;
        let failed = h.wait_for_condition("web", condition::SYNCED, "False", "CredentialsUnavailable").await;
        let message = message_of(&failed, condition::SYNCED);
        assert!(message.contains("has no key wrong-key"), "{message}");

        let configs: Api<ProviderConfig> = Api::all(client.clone());
        let config = await_condition(&configs, &h.config, "the ProviderConfig to report Ready=False", WAIT, |c: Option<&ProviderConfig>| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"))
        })
        .await
        .unwrap()
        .unwrap();
        let everything = format!(
            "{}{:?}",
            serde_json::to_string(&config).unwrap(),
            h.events("web").await
        ) + &serde_json::to_string(&failed).unwrap();
        assert!(!everything.contains("planted-secret-value-7f3a"), "a credential leaked into status or events");

        // With the right key, the account works.
        configs
            .patch(&h.config, &PatchParams::default(), &Patch::Merge(json!({"spec": {"credentials": {"secretRef": {"key": "token"}}}})))
            .await
            .unwrap();
        h.wait_for_condition("web", condition::READY, "True", "Available").await;
        let _ = shared();
    })
    .await;
}

#[tokio::test]
async fn a_cluster_not_listed_right_after_its_create_is_waited_for_not_recreated() {
    with_temp_ns(|client, ns| async move {
        // The fake cloud does not list the cluster for 2 s after its
        // create, inside the harness's 3 s creation grace period.
        let h = Harness::start(client, ns, json!({})).await;
        h.create(
            "web",
            json!({}),
            json!({"nop.fleetforge.dev/visible-after": "2s"}),
        )
        .await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        assert_eq!(cloud.calls.snapshot().1, 1, "exactly one create call");
        let events = h.events("web").await;
        assert!(
            !events.iter().any(|(r, _)| r == "ExternalResourceMissing"),
            "an eventually consistent read is not an out-of-band deletion: {events:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_provider_config_in_use_is_kept_until_its_clusters_are_gone() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client.clone(), ns.clone(), json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let configs: Api<ProviderConfig> = Api::all(client.clone());
        let in_use = await_condition(
            &configs,
            &h.config,
            "the ProviderConfig to count its user",
            WAIT,
            |c: Option<&ProviderConfig>| {
                c.is_some_and(|c| {
                    c.finalizers()
                        .contains(&fleetforge_api::IN_USE_FINALIZER.to_string())
                        && c.status.as_ref().is_some_and(|s| s.users == Some(1))
                })
            },
        )
        .await
        .unwrap()
        .unwrap();
        let condition = in_use
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == condition::IN_USE)
            .unwrap();
        assert_eq!(condition.message, format!("used by 1 Cluster: {ns}/web"));

        // Deleting it waits, saying why; the Cluster can still be deleted
        // through it, and then it goes.
        configs
            .delete(&h.config, &DeleteParams::default())
            .await
            .unwrap();
        await_condition(
            &configs,
            &h.config,
            "the ProviderConfig to say its deletion waits",
            WAIT,
            |c: Option<&ProviderConfig>| {
                c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == condition::IN_USE
                            && c.reason == "DeletionBlocked"
                            && c.message.contains(&format!("{ns}/web"))
                    })
                })
            },
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            configs.get_opt(&h.config).await.unwrap().is_some(),
            "deleted while in use"
        );
        h.clusters()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        h.wait_until_gone("web").await;
        assert!(
            h.cloud().await.get("web").is_none(),
            "the cluster was deleted at the provider"
        );
        await_condition(
            &configs,
            &h.config,
            "the unused ProviderConfig to go",
            WAIT,
            |c: Option<&ProviderConfig>| c.is_none(),
        )
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_cluster_whose_account_is_gone_can_be_force_removed() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client.clone(), ns.clone(), json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        // The account goes anyway (its protection removed by hand).
        let configs: Api<ProviderConfig> = Api::all(client.clone());
        configs
            .delete(&h.config, &DeleteParams::default())
            .await
            .unwrap();
        configs
            .patch(
                &h.config,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
        await_condition(
            &configs,
            &h.config,
            "the ProviderConfig to go",
            WAIT,
            |c: Option<&ProviderConfig>| c.is_none(),
        )
        .await
        .unwrap();

        // The delete cannot reach the provider: it waits and says how to
        // let the Cluster go.
        h.clusters()
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        let stuck = h
            .wait_for_condition("web", condition::SYNCED, "False", "ProviderConfigNotFound")
            .await;
        let message = message_of(&stuck, condition::SYNCED);
        assert!(
            message.contains("fleetforge.dev/force-remove=true"),
            "{message}"
        );

        h.clusters()
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {annotation::FORCE_REMOVE: "true"}}}),
                ),
            )
            .await
            .unwrap();
        h.wait_until_gone("web").await;
        let note = h.wait_for_event("web", "ForceRemoved").await;
        assert!(
            note.contains("web at ProviderConfig") && note.contains("may be left behind"),
            "{note}"
        );
        assert!(
            h.cloud().await.get("web").is_some(),
            "force-remove makes no provider call"
        );
        let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.namespace);
        assert!(secrets.get_opt("web-kubeconfig").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn a_restart_of_a_converged_engine_writes_nothing() {
    with_temp_ns(|client, ns| async move {
        let mut h =
            Harness::start(client.clone(), ns.clone(), json!({"pollInterval": "30s"})).await;
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        for name in &names {
            h.create(name, json!({}), json!({})).await;
        }
        for name in &names {
            h.wait_for_condition(name, condition::READY, "True", "Available")
                .await;
        }
        let cloud = h.cloud().await;
        let observed: Vec<u64> = names.iter().map(|n| cloud.observes_of(n)).collect();
        h.restart().await;
        // Every cluster is looked at again by the new engine.
        let deadline = Instant::now() + WAIT;
        while names
            .iter()
            .zip(&observed)
            .any(|(n, o)| cloud.observes_of(n) <= *o)
        {
            assert!(
                Instant::now() < deadline,
                "the restarted engine did not observe every cluster"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Applies count even when they change nothing: the API server
        // still does the work, and a fleet restarts all at once.
        let writes: Vec<_> = h
            .requests
            .all()
            .into_iter()
            .filter(|(method, path)| {
                [
                    http::Method::POST,
                    http::Method::PATCH,
                    http::Method::PUT,
                    http::Method::DELETE,
                ]
                .contains(method)
                    && path.contains(&format!("/namespaces/{ns}/"))
            })
            .collect();
        assert!(
            writes.is_empty(),
            "a restart of a converged engine wrote: {writes:#?}"
        );
    })
    .await;
}
