//! One engine per test namespace, against the nop provider's fake cloud.

pub(crate) use std::sync::Arc;
pub(crate) use std::time::{Duration, Instant};

pub(crate) use fleetforge_api::{Cluster, ProviderConfig, ProviderKind, annotation, condition};
pub(crate) use fleetforge_core::{Metrics, Options, Providers};
pub(crate) use fleetforge_provider_nop::{NopCloud, NopCluster, NopFactory, NopPool};
pub(crate) use fleetforge_runtime::backoff::BackoffSettings;
pub(crate) use fleetforge_runtime::informer::Informer;
pub(crate) use fleetforge_runtime::{ControllerMetrics, Runtime};
pub(crate) use fleetforge_testenv::{Requests, await_condition, shared, with_temp_ns};
pub(crate) use k8s_openapi::api::core::v1::Secret;
pub(crate) use k8s_openapi::api::events::v1::Event;
pub(crate) use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
pub(crate) use kube::{Client, ResourceExt};
pub(crate) use serde_json::{Value, json};
pub(crate) use tokio::sync::OnceCell;

/// How long a test waits for the engine (a bound on liveness, not a
/// performance figure: the full suite shares two cores with other tests).
pub(crate) const WAIT: Duration = Duration::from_secs(90);

/// One engine for one test namespace.
pub(crate) struct Harness {
    pub(crate) client: Client,
    pub(crate) namespace: String,
    pub(crate) config: String,
    pub(crate) nop: Arc<NopFactory>,
    pub(crate) metrics: Arc<Metrics>,
    /// Every request the engine made (its client records them).
    pub(crate) requests: Requests,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

pub(crate) async fn install_crds(client: &Client) {
    static CRDS: OnceCell<()> = OnceCell::const_new();
    CRDS.get_or_init(|| async { fleetforge_core::crds::install(client).await.unwrap() })
        .await;
}

impl Harness {
    /// Starts an engine for `namespace` with a nop ProviderConfig named
    /// after the namespace; `nop` and `extra` are merged into its spec.
    pub(crate) async fn start(client: Client, namespace: String, extra: Value) -> Self {
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
    pub(crate) async fn spawn_engine(&mut self) {
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

    /// [`Harness::start`] with the default account, and Cluster `web`
    /// (the default spec) created and Ready: where most tests begin.
    pub(crate) async fn with_ready_web(client: Client, namespace: String) -> Self {
        let h = Self::start(client, namespace, json!({})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        h
    }

    /// Stops the engine and starts another, as a controller restart (or a
    /// new leader) does; the fake cloud keeps its clusters.
    pub(crate) async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.spawn_engine().await;
    }

    pub(crate) fn clusters(&self) -> Api<Cluster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub(crate) async fn create(&self, name: &str, spec: Value, annotations: Value) -> Cluster {
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

    pub(crate) async fn patch_spec(&self, name: &str, spec: Value) {
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
    pub(crate) async fn cloud(&self) -> Arc<NopCloud> {
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

    pub(crate) async fn wait_for(
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

    pub(crate) async fn wait_for_condition(
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

    pub(crate) async fn wait_until_gone(&self, name: &str) {
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
    pub(crate) async fn events(&self, name: &str) -> Vec<(String, String)> {
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

    pub(crate) async fn wait_for_event(&self, name: &str, reason: &str) -> String {
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

pub(crate) fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, extra) => *base = extra,
    }
}

pub(crate) fn conditions_of(cluster: &Cluster) -> Vec<(String, String, String, String)> {
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

pub(crate) fn message_of(cluster: &Cluster, type_: &str) -> String {
    conditions_of(cluster)
        .into_iter()
        .find(|(t, ..)| t == type_)
        .map(|(.., m)| m)
        .unwrap_or_default()
}

pub(crate) fn pool_desired(cloud: &NopCloud, cluster: &str) -> i32 {
    cloud.get(cluster).unwrap().node_pools[0].desired
}
