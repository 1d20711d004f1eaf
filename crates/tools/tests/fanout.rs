//! The ToolInstall and ToolTarget controllers on the real kube-apiserver,
//! with nop clusters as targets and the nop tool driver: one ToolTarget per
//! selected target; a target's label change touches only that target; a
//! failure stays on its target; deletion uninstalls everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetforge_api::{Cluster, ToolInstall, ToolState, ToolTarget};
use fleetforge_core::watch::Informers;
use fleetforge_testenv::{shared, with_temp_ns};
use fleetforge_tools::driver::HelmDriver;
use fleetforge_tools::helm::Helm;
use fleetforge_tools::nop::NopDriver;
use fleetforge_tools::{Drivers, ToolMetrics, ToolOptions};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

struct Harness {
    client: Client,
    namespace: String,
    nop: Arc<NopDriver>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Harness {
    async fn start(client: Client, namespace: String) -> Self {
        fleetforge_core::crds::install(&client).await.unwrap();
        let metrics = Arc::new(ToolMetrics::default());
        let nop = NopDriver::new(metrics.clone());
        let work = std::env::temp_dir().join(format!("fanout-{namespace}"));
        let helm = HelmDriver::new(
            Helm::new("helm".into(), work.clone()),
            work.join("kubeconfigs"),
            Default::default(),
            None,
            metrics,
        )
        .unwrap();
        let drivers = Drivers {
            helm: Arc::new(helm),
            nop: nop.clone(),
        };
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let runtime = fleetforge_runtime::Runtime::new(Default::default(), stopping);
        let options = ToolOptions {
            helm: "helm".into(),
            namespace: Some(namespace.clone()),
            charts_dir: ".".into(),
            max_helm_processes: 4,
        };
        let (_, drifted) = tokio::sync::mpsc::unbounded_channel();
        let run_client = client.clone();
        let informers = Informers::new(&client, Some(&namespace));
        tokio::spawn(async move {
            tokio::select! {
                () = fleetforge_tools::run_with(&runtime, run_client, &informers, options, drivers, drifted) => {}
                () = informers.run() => {}
            }
        });
        Self {
            client,
            namespace,
            nop,
            stop,
        }
    }

    /// A Ready nop Cluster with `labels` (no engine: its status is set
    /// here, as the engine would).
    async fn cluster(&self, name: &str, labels: Value, annotations: Value) {
        let clusters: Api<Cluster> = Api::namespaced(self.client.clone(), &self.namespace);
        let cluster: Cluster = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"providerConfigRef": {"name": "nop"}},
        }))
        .unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
        let status = json!({"status": {"provider": "nop", "phase": "Ready", "conditions": [{
            "type": "Ready", "status": "True", "reason": "Available", "message": "up",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]}});
        clusters
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }

    fn key(&self, cluster: &str) -> String {
        format!("{}/Cluster/{cluster}", self.namespace)
    }

    async fn targets(&self) -> BTreeMap<String, ToolTarget> {
        Api::<ToolTarget>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|t| (t.spec.target.name.clone(), t))
            .collect()
    }

    /// Waits until exactly `names` have ToolTargets, each with `check`.
    async fn wait(
        &self,
        what: &str,
        names: &[&str],
        check: impl Fn(&ToolTarget) -> bool,
    ) -> BTreeMap<String, ToolTarget> {
        let deadline = Instant::now() + WAIT;
        loop {
            let targets = self.targets().await;
            let keys: Vec<&str> = targets.keys().map(String::as_str).collect();
            if keys == names && targets.values().all(&check) {
                return targets;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {targets:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn deployed(tt: &ToolTarget) -> bool {
    tt.status.as_ref().is_some_and(|s| {
        s.observed_generation == tt.metadata.generation && s.state == Some(ToolState::Deployed)
    })
}

fn install(selector: Value) -> ToolInstall {
    serde_json::from_value(json!({
        "metadata": {"name": "fleet"},
        "spec": {
            "tools": [
                {"name": "base", "chart": {"repository": "https://charts.example.com", "name": "base", "version": "1.0.0"}},
                {"name": "app", "chart": {"repository": "https://charts.example.com", "name": "app", "version": "2.0.0"}, "dependsOn": ["base"]},
            ],
            "targets": {"clusterSelector": selector},
            "values": {"app": {"replicas": 2}},
            "pollInterval": "1h",
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn one_tool_target_per_target_and_one_target_s_change_touches_only_it() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client.clone(), ns.clone()).await;
        for name in ["a", "b", "c"] {
            h.cluster(name, json!({"fleet": "yes"}), json!({})).await;
        }
        h.cluster("d", json!({}), json!({})).await;
        let installs: Api<ToolInstall> = Api::namespaced(client.clone(), &ns);
        installs
            .create(
                &PostParams::default(),
                &install(json!({"matchLabels": {"fleet": "yes"}})),
            )
            .await
            .unwrap();
        let targets = h
            .wait("three targets DEPLOYED", &["a", "b", "c"], deployed)
            .await;
        assert_eq!(targets["a"].name_any(), "fleet-cluster-a");
        let releases = h.nop.releases_of(&h.key("a"));
        let app = &releases[&("app".to_string(), "app".to_string())];
        assert_eq!(
            (app.chart_version.as_str(), &app.values),
            ("2.0.0", &json!({"replicas": 2}))
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let summary = installs
                .get("fleet")
                .await
                .unwrap()
                .status
                .and_then(|s| s.summary);
            if summary
                .as_ref()
                .is_some_and(|s| (s.targets, s.deployed) == (3, 3))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the ToolInstall never counted 3 deployed: {summary:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // d joins by its label: only d is worked on.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before: BTreeMap<String, BTreeMap<&str, u64>> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| (n.to_string(), h.nop.calls(&h.key(n))))
            .collect();
        let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
        clusters
            .patch(
                "d",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"fleet": "yes"}}})),
            )
            .await
            .unwrap();
        h.wait("d DEPLOYED too", &["a", "b", "c", "d"], deployed)
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for name in ["a", "b", "c"] {
            assert_eq!(
                h.nop.calls(&h.key(name)),
                before[name],
                "{name} was touched by d's change"
            );
        }
        assert!(h.nop.calls(&h.key("d"))["upgrade"] >= 2);

        // A failure on one target stays there.
        clusters
            .patch(
                "b",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"nop.fleetforge.dev/tool-fail": "app"}}}),
                ),
            )
            .await
            .unwrap();
        installs
            .patch(
                "fleet",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"values": {"app": {"replicas": 3}}}})),
            )
            .await
            .unwrap();
        let targets = h
            .wait(
                "b FAILED, the others upgraded",
                &["a", "b", "c", "d"],
                |tt| {
                    let status = tt.status.clone().unwrap_or_default();
                    status.observed_generation == tt.metadata.generation
                        && status.state
                            == Some(if tt.spec.target.name == "b" {
                                ToolState::Failed
                            } else {
                                ToolState::Deployed
                            })
                },
            )
            .await;
        assert!(
            targets["b"].status.as_ref().unwrap().tools[1]
                .message
                .as_deref()
                .unwrap()
                .contains("injected failure of app")
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let status = installs
                .get("fleet")
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            if status.failing.first().is_some_and(|f| f.name == "b") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "b never named as failing: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Deleting the ToolInstall uninstalls everywhere, then it goes.
        installs
            .delete("fleet", &DeleteParams::default())
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while installs.get_opt("fleet").await.unwrap().is_some() || !h.targets().await.is_empty() {
            assert!(Instant::now() < deadline, "the ToolInstall did not go");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for name in ["a", "b", "c", "d"] {
            assert!(
                h.nop.releases_of(&h.key(name)).is_empty(),
                "{name} kept releases"
            );
        }
        let _ = shared();
    })
    .await;
}
