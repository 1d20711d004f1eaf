//! Environments on real local clusters, through `fleetforge env` and the
//! built controller under its RBAC: a virtual environment requested with
//! the CLI becomes Ready with a working kubeconfig and its profile's tools
//! inside (a shared host tool not installed twice); it sleeps and wakes on
//! request and sleeps by itself when idle; a third request of one owner
//! waits on the per-owner maximum; deleting an environment mid-provisioning
//! leaves nothing behind; a run-out time to live deletes everything and
//! says so; a refused child fails the environment; a dedicated environment
//! creates a local Cluster.

use std::time::Duration;

use fleetforge_api::environment::EnvironmentPhase;
use fleetforge_api::{Cluster, Environment, ToolInstall, ToolState, VirtualCluster, condition};
use fleetforge_e2e::local::{
    Cleanup, apply, chart, delete_clusters, release_names, start, target_client, target_kubeconfig,
};
use fleetforge_e2e::vcluster::host_with_syncer;
use fleetforge_e2e::{
    Controller, admin_kubeconfig, await_event, fleetforge_bin, install, workspace_root,
};
use fleetforge_environments::WOKEN_AT;
use fleetforge_testenv::{await_condition, shared};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

fn environment(name: &str, owner: &str, ttl: &str) -> Value {
    json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": name},
        "spec": {
            "type": "virtual", "owner": owner, "ttl": ttl, "profile": "env-tools",
            "virtual": {
                "host": {"clusterRef": {"name": "env-host"}},
                "chart": {"repository": workspace_root().join("e2e/charts/vcluster").display().to_string(), "name": "vcluster", "version": "0.1.0"},
                "sharedTools": ["widgets"],
            },
        },
    })
}

/// The spec `environment` declares.
fn environment_spec(
    name: &str,
    owner: &str,
    ttl: &str,
) -> fleetforge_api::environment::EnvironmentSpec {
    serde_json::from_value(environment(name, owner, ttl)["spec"].clone()).unwrap()
}

/// `fleetforge env <args> -n <ns>` as the admin, its stdout; panics with
/// its stderr when it fails. Asynchronous, so the syncer stand-in keeps
/// running meanwhile.
async fn cli(ns: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(fleetforge_bin())
        .arg("env")
        .args(args)
        .args(["-n", ns])
        .env("KUBECONFIG", admin_kubeconfig())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fleetforge env {args:?}: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

async fn await_phase(
    api: &Api<Environment>,
    name: &str,
    phase: EnvironmentPhase,
    controller: &Controller,
) -> Environment {
    controller
        .wait_for(
            api,
            name,
            &format!("Environment {name} {phase:?}"),
            |e: Option<&Environment>| {
                e.and_then(|e| e.status.as_ref())
                    .is_some_and(|s| s.phase == Some(phase))
            },
        )
        .await
        .expect("the environment exists")
}

#[tokio::test]
async fn environments_come_sleep_wake_wait_their_turn_and_go() {
    install();
    let work = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(work.path().to_path_buf());
    shared()
        .with_temp_ns(|client, ns| async move {
            let controller = start(&client, &ns, work.path()).await;
            let (host_kubeconfig, _syncer) = host_with_syncer(&client, &ns, "env-host", work.path(), &controller).await;
            // The profile (cluster-scoped, so one per test binary run).
            apply(
                &client,
                None,
                json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolSet",
                    "metadata": {"name": "env-tools"},
                    "spec": {"tools": [
                        {"name": "widgets", "chart": chart("widgets")},
                        {"name": "cache", "chart": chart("cache"), "health": [{"kind": "Deployment", "name": "cache"}]},
                    ]},
                }),
            )
            .await;

            // A virtual environment: Ready, its kubeconfig reaches a real API,
            // the profile's cache is DEPLOYED inside and widgets is SHARED.
            // Requested through the CLI, which follows it to Ready and
            // writes its kubeconfig.
            let chart = workspace_root().join("e2e/charts/vcluster").display().to_string();
            let kubeconfig = work.path().join("mine.kubeconfig");
            let kubeconfig_out = kubeconfig.display().to_string();
            let requested = cli(&ns, &["request", "mine", "--owner", "alice", "--ttl", "1h", "--profile", "env-tools", "--host", "env-host",
                                       "--chart", &chart, "--chart-version", "0.1.0", "--shared-tools", "widgets", "--kubeconfig-out", &kubeconfig_out]).await;
            assert!(requested.starts_with("mine is Ready (expires at "), "{requested}");
            assert!(requested.contains(&format!("export KUBECONFIG={kubeconfig_out}")), "{requested}");
            let envs: Api<Environment> = Api::namespaced(client.clone(), &ns);
            assert_eq!(envs.get("mine").await.unwrap().spec, environment_spec("mine", "alice", "1h"));
            let ready = await_phase(&envs, "mine", EnvironmentPhase::Ready, &controller).await;
            let status = ready.status.unwrap();
            assert_eq!(status.kubeconfig_secret_ref.unwrap().name, "mine-kubeconfig");
            let estimate = status.estimate.unwrap();
            assert_eq!((estimate.vcpu.unwrap().0.as_str(), estimate.memory.unwrap().0.as_str()), ("200m", "256Mi"));
            let expires = status.expires_at.unwrap().0;
            let created = ready.metadata.creation_timestamp.unwrap().0;
            assert_eq!(expires.as_second() - created.as_second(), 3600);
            await_event(&client, &ns, "Ready", "kubeconfig in Secret mine-kubeconfig", &controller).await;
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            assert_eq!(std::fs::read(&kubeconfig).unwrap(), secrets.get("mine-kubeconfig").await.unwrap().data.unwrap()["value"].0);
            let inside = target_client(&kubeconfig).await;
            inside.apiserver_version().await.expect("the environment's API answers");
            let installs: Api<ToolInstall> = Api::namespaced(client.clone(), &ns);
            let tools = controller.wait_for(&installs, "mine-profile", "the profile inside the environment", |ti: Option<&ToolInstall>| {
                ti.and_then(|t| t.status.as_ref())
                    .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == condition::READY && c.status == "True"))
            }).await.unwrap();
            let _ = tools;
            let targets: Api<fleetforge_api::ToolTarget> = Api::namespaced(client.clone(), &ns);
            let target = targets.get("mine-profile-virtualcluster-mine").await.unwrap();
            let states: Vec<(String, ToolState)> = target.status.unwrap().tools.iter().map(|t| (t.name.clone(), t.state)).collect();
            assert_eq!(states, [("widgets".to_string(), ToolState::Shared), ("cache".to_string(), ToolState::Deployed)]);
            assert_eq!(release_names(&kubeconfig), ["cache"]);

            // Sleep (through the CLI): the vcluster is scaled to zero and its
            // API stops; wake: it answers again.
            let slept = cli(&ns, &["sleep", "mine"]).await;
            assert_eq!(slept, "mine is asleep; `fleetforge env wake mine` wakes it\n");
            assert_eq!(envs.get("mine").await.unwrap().status.unwrap().phase, Some(EnvironmentPhase::Sleeping));
            let stopped = async {
                for _ in 0..60 {
                    if inside.apiserver_version().await.is_err() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                false
            };
            assert!(stopped.await, "a sleeping environment's API should stop");
            assert_eq!(cli(&ns, &["wake", "mine"]).await, "mine is awake\n");
            assert!(envs.get("mine").await.unwrap().annotations().contains_key(WOKEN_AT));
            target_client(&kubeconfig).await.apiserver_version().await.expect("woken, the API answers again");

            // sleepAfter: idle that long (no workload change inside since
            // the wake), it sleeps by itself and says why; a wake (the
            // annotation `fleetforge env wake` sets) brings it back.
            let now = || k8s_openapi::jiff::Timestamp::now().to_string();
            envs.patch("mine", &PatchParams::default(), &Patch::Merge(json!({
                "metadata": {"annotations": {WOKEN_AT: now()}}, "spec": {"sleepAfter": "10s"},
            }))).await.unwrap();
            let idle = await_phase(&envs, "mine", EnvironmentPhase::Sleeping, &controller).await;
            let status = idle.status.unwrap();
            let message = &status.conditions.iter().find(|c| c.type_ == condition::READY).unwrap().message;
            assert!(message.starts_with("asleep (scaled to zero) after 10s idle, last activity at "), "{message}");
            assert!(status.last_activity.is_some());
            envs.patch("mine", &PatchParams::default(), &Patch::Merge(json!({
                "metadata": {"annotations": {WOKEN_AT: now()}}, "spec": {"sleepAfter": null},
            }))).await.unwrap();
            await_phase(&envs, "mine", EnvironmentPhase::Ready, &controller).await;

            // The per-owner maximum (2 here): alice's third request waits.
            apply(&client, Some(&ns), environment("second", "alice", "1h")).await;
            // The third through the CLI: it says the request waits its turn.
            let queued = cli(&ns, &["request", "third", "--owner", "alice", "--ttl", "1h", "--profile", "env-tools", "--host", "env-host",
                                    "--chart", &chart, "--chart-version", "0.1.0", "--shared-tools", "widgets", "--queue"]).await;
            assert!(queued.starts_with("third waits its turn: owner alice already has 2 environments, the per-owner maximum is 2"), "{queued}");
            let held = await_phase(&envs, "third", EnvironmentPhase::Pending, &controller).await;
            assert_eq!(held.spec, environment_spec("third", "alice", "1h"));
            let virtual_clusters: Api<VirtualCluster> = Api::namespaced(client.clone(), &ns);
            assert!(virtual_clusters.get_opt("third").await.unwrap().is_none(), "nothing is provisioned for a held request");

            // Deleting mid-provisioning leaves nothing behind.
            assert_eq!(cli(&ns, &["delete", "second"]).await, "second is gone\n");
            assert!(virtual_clusters.get_opt("second").await.unwrap().is_none());
            // ... and the held request gets its turn.
            await_phase(&envs, "third", EnvironmentPhase::Ready, &controller).await;

            // A run-out time to live deletes everything, with an event.
            envs.patch("mine", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ttl": "1s"}}))).await.unwrap();
            controller.wait_for(&envs, "mine", "the expired environment to go", |e: Option<&Environment>| e.is_none()).await;
            await_event(&client, &ns, "Expired", "ttl 1s ran out", &controller).await;
            assert!(virtual_clusters.get_opt("mine").await.unwrap().is_none());
            assert!(secrets.get_opt("mine-kubeconfig").await.unwrap().is_none());
            let host = target_client(&host_kubeconfig).await;
            let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(host);
            let removed = await_condition(&namespaces, "vcluster-mine", "the host namespace to go", Duration::from_secs(60), |n: Option<&k8s_openapi::api::core::v1::Namespace>| n.is_none()).await;
            assert!(removed.is_ok(), "{removed:?}");

            // A dedicated environment is a local Cluster of its own.
            apply(
                &client,
                Some(&ns),
                json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Environment",
                    "metadata": {"name": "own"},
                    "spec": {"type": "dedicated", "owner": "bob", "ttl": "2h",
                             "dedicated": {"providerConfigRef": {"name": format!("local-{ns}")}, "version": "1.36",
                                           "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 1},
                                                         {"name": "accel", "machineType": "gpu-a100-8", "min": 1, "max": 1}]}},
                }),
            )
            .await;
            // A machine type the size table does not know is named in the
            // estimate; it does not hold the environment back.
            let own = await_phase(&envs, "own", EnvironmentPhase::Ready, &controller).await;
            let estimate = own.status.unwrap().estimate.unwrap();
            assert_eq!((estimate.vcpu.unwrap().0.as_str(), estimate.memory.unwrap().0.as_str()), ("2", "8Gi"));
            assert_eq!(estimate.unknown, ["nodePools[accel].machineType: gpu-a100-8"]);
            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            assert!(clusters.get_opt("own").await.unwrap().is_some());
            let own_kubeconfig = target_kubeconfig(&client, &ns, "own", work.path()).await;
            let inside = target_client(&own_kubeconfig).await;
            inside.apiserver_version().await.expect("the dedicated cluster answers");
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(inside);
            let node_count = || async { nodes.list_metadata(&Default::default()).await.unwrap().items.len() };
            assert_eq!(node_count().await, 2);

            // A dedicated environment sleeps with its node pools at zero
            // (the control plane stays) and wakes with them back.
            cli(&ns, &["sleep", "own"]).await;
            await_phase(&envs, "own", EnvironmentPhase::Sleeping, &controller).await;
            assert_eq!(node_count().await, 0, "a sleeping dedicated environment has no nodes");
            cli(&ns, &["wake", "own"]).await;
            await_phase(&envs, "own", EnvironmentPhase::Ready, &controller).await;
            assert_eq!(node_count().await, 2, "a woken dedicated environment has its nodes back");

            // A virtual environment on the management cluster, in a
            // namespace that does not allow it: Failed, saying what to bind.
            apply(
                &client,
                Some(&ns),
                json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Environment",
                    "metadata": {"name": "beside"},
                    "spec": {"type": "virtual", "owner": "carol", "virtual": {"chart": {"repository": workspace_root().join("e2e/charts/vcluster").display().to_string(), "name": "vcluster", "version": "0.1.0"}}},
                }),
            )
            .await;
            let failed = await_phase(&envs, "beside", EnvironmentPhase::Failed, &controller).await;
            let message = failed.status.unwrap().conditions.iter().find(|c| c.type_ == condition::READY).unwrap().message.clone();
            assert!(message.contains("bind ClusterRole fleetforge-vcluster-host"), "{message}");

            for name in ["third", "own", "beside"] {
                envs.delete(name, &DeleteParams::default()).await.unwrap();
            }
            for name in ["third", "own", "beside"] {
                controller.wait_for(&envs, name, "the environment to go", |e: Option<&Environment>| e.is_none()).await;
            }
            assert!(clusters.get_opt("own").await.unwrap().is_none());
            delete_clusters(&client, &ns, &["env-host"]).await;
        })
        .await;
}

/// deploy/policies/environment-owner.yaml: a developer requests
/// environments in their own name only (the per-owner maximum is then
/// theirs), and nobody changes an environment's owner afterwards.
#[tokio::test]
async fn developers_request_environments_in_their_own_name_only() {
    install();
    let work = tempfile::tempdir().unwrap();
    shared()
        .with_temp_ns(|client, ns| async move {
            // The shipped policy, bound to this test's namespace only.
            let shipped = std::fs::read_to_string(workspace_root().join("deploy/policies/environment-owner.yaml")).unwrap();
            let scoped = shipped
                .replace("name: fleetforge-environment-owner", &format!("name: fleetforge-environment-owner-{ns}"))
                .replace("policyName: fleetforge-environment-owner", &format!("policyName: fleetforge-environment-owner-{ns}"))
                .replace(
                    "  validationActions: [Deny]",
                    &format!("  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels:\n        kubernetes.io/metadata.name: {ns}"),
                );
            let policy = work.path().join("policy.yaml");
            std::fs::write(&policy, scoped).unwrap();
            let admin = admin_kubeconfig();
            fleetforge_e2e::kubectl(&admin, &["apply", "--server-side", "-f", &policy.display().to_string()]);

            // A developer: a ServiceAccount that may create Environments here.
            let rbac = json!([
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dev", "namespace": ns}},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "env-requester", "namespace": ns},
                 "rules": [{"apiGroups": ["fleetforge.dev"], "resources": ["environments"], "verbs": ["create", "get", "patch"]}]},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "env-requester", "namespace": ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "env-requester"},
                 "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": ns}]},
            ]);
            let manifests = work.path().join("rbac.json");
            std::fs::write(&manifests, json!({"apiVersion": "v1", "kind": "List", "items": rbac}).to_string()).unwrap();
            fleetforge_e2e::kubectl(&admin, &["apply", "--server-side", "-f", &manifests.display().to_string()]);
            let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
            let request: k8s_openapi::api::authentication::v1::TokenRequest =
                serde_json::from_value(json!({"spec": {"expirationSeconds": 600}})).unwrap();
            let issued: k8s_openapi::api::authentication::v1::TokenRequest =
                accounts.create_subresource("token", "dev", &kube::api::PostParams::default(), &request).await.unwrap();
            let developer_kubeconfig = work.path().join("dev.kubeconfig");
            let token = issued.status.and_then(|s| s.token).expect("a token is issued");
            shared().write_token_kubeconfig(&developer_kubeconfig, &token).unwrap();
            let developer = target_client(&developer_kubeconfig).await;
            let as_developer: Api<Environment> = Api::namespaced(developer, &ns);
            let me = format!("system:serviceaccount:{ns}:dev");
            let request_for = |owner: &str, name: &str| -> Environment {
                serde_json::from_value(json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Environment",
                    "metadata": {"name": name},
                    "spec": {"type": "virtual", "owner": owner, "virtual": {"host": {"clusterRef": {"name": "h"}}}},
                }))
                .unwrap()
            };

            // In someone else's name: refused, saying why (once the policy
            // is active; the API server loads it within seconds).
            let mut refused = None;
            for _ in 0..60 {
                match as_developer.create(&kube::api::PostParams::default(), &request_for("alice", "for-alice")).await {
                    // The policy's refusal; anything else (the developer's
                    // Role not in force yet) is tried again.
                    Err(kube::Error::Api(response)) if response.message.contains("spec.owner: ") => {
                        refused = Some(response.message);
                        break;
                    }
                    Err(kube::Error::Api(response)) => {
                        refused = Some(response.message);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    // Accepted before the policy is in force: removed (by
                    // the admin; the developer may not delete) and tried again.
                    Ok(_) => {
                        let as_admin: Api<Environment> = Api::namespaced(client.clone(), &ns);
                        as_admin.delete("for-alice", &DeleteParams::default()).await.unwrap();
                        for _ in 0..100 {
                            if as_admin.get_opt("for-alice").await.unwrap().is_none() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let refused = refused.expect("the policy refuses a request in another's name");
            assert!(
                refused.contains(&format!("spec.owner: alice is not you ({me}); only fleetforge:platform-admins request environments for others")),
                "{refused}"
            );

            // In their own name: accepted; and the owner never changes.
            as_developer.create(&kube::api::PostParams::default(), &request_for(&me, "mine")).await.unwrap();
            let changed = as_developer
                .patch("mine", &PatchParams::default(), &Patch::Merge(json!({"spec": {"owner": "alice"}})))
                .await
                .unwrap_err();
            assert!(changed.to_string().contains("owner is immutable"), "{changed}");

            for kind in ["validatingadmissionpolicybinding", "validatingadmissionpolicy"] {
                fleetforge_e2e::kubectl(&admin, &["delete", kind, &format!("fleetforge-environment-owner-{ns}")]);
            }
        })
        .await;
}
