//! A test-only stand-in for vcluster's syncer. vcluster's own container
//! cannot run here (no container runtime, no registry), so when the
//! project's stand-in chart (`e2e/charts/vcluster`) puts its StatefulSet on
//! a host, this starts a real Kubernetes API server for it with kwokctl and
//! writes the Secret `vc-<name>` (key `config`) in the release's namespace,
//! as vcluster's syncer does once its API serves. Replicas 0 stops the API
//! server (sleep), 1 starts it again; a StatefulSet that goes takes its API
//! server with it. Everything fleetforge does (the Helm release, waiting for
//! the Secret, connecting to the API) is the real code path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetforge_provider_local::kubeconfig::Access;
use fleetforge_provider_local::kwokctl::{Kwokctl, Processes};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// The running stand-in; stopped (and its API servers removed) on drop.
#[derive(Debug)]
pub struct SyncerStandIn {
    task: tokio::task::JoinHandle<()>,
    work: PathBuf,
}

impl SyncerStandIn {
    /// Watches the host `kubeconfig` points at, keeping API servers under
    /// `work`.
    pub async fn start(kubeconfig: &Path, work: &Path) -> Self {
        let text = std::fs::read_to_string(kubeconfig).expect("the host kubeconfig is readable");
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::from_yaml(&text).expect("a kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("a usable host kubeconfig");
        let host = Client::try_from(config).expect("a host client");
        let kwokctl = Kwokctl::new(&fleetforge_testenv::tools::bin_dir(), work).expect("kwokctl");
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = step(&host, &kwokctl).await {
                    eprintln!("vcluster stand-in: {e}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Self {
            task,
            work: work.to_path_buf(),
        }
    }
}

impl Drop for SyncerStandIn {
    fn drop(&mut self) {
        self.task.abort();
        for pid in fleetforge_testenv::pids_mentioning(&self.work.display().to_string()) {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .output();
        }
    }
}

/// A local Cluster `name` in `namespace`, Ready, to host virtual clusters,
/// with the stand-in watching it (API servers under `work/virtual`): its
/// kubeconfig (written under `work`) and the stand-in.
pub async fn host_with_syncer(
    client: &Client,
    namespace: &str,
    name: &str,
    work: &Path,
    controller: &crate::Controller,
) -> (PathBuf, SyncerStandIn) {
    crate::local::local_clusters(client, namespace, &[(name, json!({}))]).await;
    crate::local::await_clusters_ready(client, namespace, &[name], controller).await;
    let kubeconfig = crate::local::target_kubeconfig(client, namespace, name, work).await;
    let syncer = SyncerStandIn::start(&kubeconfig, &work.join("virtual")).await;
    (kubeconfig, syncer)
}

async fn step(host: &Client, kwokctl: &Kwokctl) -> Result<(), String> {
    let sets: Api<StatefulSet> = Api::all(host.clone());
    let list = sets
        .list(&ListParams::default().labels("app=vcluster"))
        .await
        .map_err(|e| e.to_string())?;
    let mut wanted = BTreeSet::new();
    for set in &list.items {
        let namespace = set.namespace().unwrap_or_default();
        let release = set.name_any();
        let name = format!("vc-{namespace}-{release}");
        wanted.insert(name.clone());
        let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let running = kwokctl.processes(&name) == Processes::Running;
        match (replicas > 0, kwokctl.exists(&name), running) {
            (true, false, _) => {
                kwokctl
                    .create(&name, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                // vcluster shows its workloads a node; kwok runs them.
                let access = Access::read(&kwokctl.kubeconfig_path(&name))?;
                let inside = access.client().await?;
                let node = fleetforge_provider_local::nodes::node(
                    "virtual",
                    "vcluster",
                    0,
                    kwokctl.kube_version(),
                );
                Api::<k8s_openapi::api::core::v1::Node>::all(inside)
                    .create(&Default::default(), &node)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            (true, true, false) => kwokctl.start(&name).await.map_err(|e| e.to_string())?,
            (false, true, true) => kwokctl.stop(&name).await.map_err(|e| e.to_string())?,
            _ => {}
        }
        if replicas > 0 {
            let access = Access::read(&kwokctl.kubeconfig_path(&name))?;
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("vc-{release}")},
                "stringData": {"config": access.kubeconfig(&release)},
            });
            Api::<Secret>::namespaced(host.clone(), &namespace)
                .patch(
                    &format!("vc-{release}"),
                    &PatchParams::apply("vcluster-standin").force(),
                    &Patch::Apply(&secret),
                )
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    for name in kwokctl.clusters() {
        if !wanted.contains(&name) {
            kwokctl.delete(&name).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
