//! Real local clusters for end-to-end tests: the controller started under
//! its RBAC with the local provider, Clusters created and awaited, their
//! kubeconfigs, and helm against them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleetforge_api::{Cluster, ToolInstall, VirtualCluster, condition};
use fleetforge_testenv::{await_condition, pids_mentioning, shared, tools};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::{Controller, run_ok, service_account_kubeconfig, workspace_root};

pub const WAIT: Duration = Duration::from_secs(120);

/// Kills the local clusters' processes when a test ends, also on failure.
#[derive(Debug)]
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in pids_mentioning(&self.0.display().to_string()) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
        }
    }
}

/// The controller under its RBAC for `ns`, local clusters under `work`, at
/// most two Environments per owner.
pub async fn start(client: &Client, ns: &str, work: &Path) -> Controller {
    let kubeconfig =
        service_account_kubeconfig(shared(), client, ns, &work.join("sa.kubeconfig")).await;
    let tools_bin = workspace_root().join(".tools/bin");
    let clusters = work.join("clusters");
    Controller::start_with_env(
        &kubeconfig,
        ns,
        &work.join("controller.log"),
        &[
            ("FLEETFORGE_TOOLS_BIN", &tools_bin.display().to_string()),
            ("FLEETFORGE_LOCAL_WORK_DIR", &clusters.display().to_string()),
            ("FLEETFORGE_MAX_ENVIRONMENTS_PER_OWNER", "2"),
        ],
    )
}

pub async fn apply(client: &Client, ns: Option<&str>, object: Value) {
    let kind = object["kind"].as_str().unwrap().to_string();
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    let params = PatchParams::apply("e2e").force();
    let resource = match kind.as_str() {
        "ProviderConfig" => kube::api::ApiResource::erase::<fleetforge_api::ProviderConfig>(&()),
        "Cluster" => kube::api::ApiResource::erase::<Cluster>(&()),
        "Environment" => kube::api::ApiResource::erase::<fleetforge_api::Environment>(&()),
        "ToolSet" => kube::api::ApiResource::erase::<fleetforge_api::ToolSet>(&()),
        "ToolInstall" => kube::api::ApiResource::erase::<ToolInstall>(&()),
        "VirtualCluster" => kube::api::ApiResource::erase::<VirtualCluster>(&()),
        other => panic!("apply does not know {other}"),
    };
    let api: Api<kube::api::DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(&name, &params, &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

pub async fn local_clusters(client: &Client, ns: &str, names: &[(&str, Value)]) {
    apply(
        client,
        None,
        json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": format!("local-{ns}")},
            "spec": {"provider": "local", "pollInterval": "5s", "defaults": {"region": "local"}},
        }),
    )
    .await;
    for (name, labels) in names {
        apply(
            client,
            Some(ns),
            json!({
                "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "providerConfigRef": {"name": format!("local-{ns}")},
                    "version": "1.36",
                    "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 1}],
                },
            }),
        )
        .await;
    }
}

pub async fn await_clusters_ready(
    client: &Client,
    ns: &str,
    names: &[&str],
    controller: &Controller,
) {
    let api: Api<Cluster> = Api::namespaced(client.clone(), ns);
    for name in names {
        crate::await_cluster(
            &api,
            name,
            "the local cluster to be Ready",
            controller,
            |c| {
                c.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == condition::READY && c.status == "True")
                })
            },
        )
        .await;
    }
}

pub async fn delete_clusters(client: &Client, ns: &str, names: &[&str]) {
    let api: Api<Cluster> = Api::namespaced(client.clone(), ns);
    for name in names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    for name in names {
        let gone = await_condition(
            &api,
            name,
            "the cluster to be deleted",
            WAIT,
            |c: Option<&Cluster>| c.is_none(),
        )
        .await;
        assert!(gone.is_ok(), "{gone:?}");
    }
}

/// Waits for the ToolInstall to satisfy `done`, panicking with its status
/// and the controller's log.
pub async fn target_kubeconfig(client: &Client, ns: &str, cluster: &str, work: &Path) -> PathBuf {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get(&format!("{cluster}-kubeconfig")).await.unwrap();
    let path = work.join(format!("{cluster}.kubeconfig"));
    std::fs::write(&path, &secret.data.unwrap()["value"].0).unwrap();
    path
}

pub async fn target_client(kubeconfig: &Path) -> Client {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&text).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

pub fn helm(kubeconfig: &Path, args: &[&str]) -> String {
    let home = kubeconfig.parent().unwrap().join("helm-home");
    let output = run_ok(
        Command::new(tools::binary("helm").expect("helm is built"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data")),
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The user-supplied values of a release, as `helm get values` shows them.
pub fn release_values(kubeconfig: &Path, release: &str, namespace: &str) -> Value {
    serde_json::from_str(&helm(
        kubeconfig,
        &["get", "values", release, "-n", namespace, "-o", "json"],
    ))
    .unwrap()
}

pub fn release_names(kubeconfig: &Path) -> Vec<String> {
    let list: Value =
        serde_json::from_str(&helm(kubeconfig, &["list", "-A", "-o", "json"])).unwrap();
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

pub fn chart(name: &str) -> Value {
    json!({"path": workspace_root().join("e2e/charts").join(name).display().to_string()})
}
