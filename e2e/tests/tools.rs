//! Tools on real local clusters, through the built controller running under
//! its RBAC: a ToolSet installed by a ToolInstall onto labelled clusters,
//! with templated values, per-cluster overrides and values from a Secret;
//! dependsOn order; suspend shows STALE; a dry run plans and changes
//! nothing; drift corrected or only reported; a chart failing on one target
//! only; targets joining and leaving the selection; deletion uninstalling
//! everywhere; an unreachable target UNKNOWN and forced out; a Cluster's
//! profile.

use std::process::Command;
use std::time::Duration;

use fleetforge_api::tool_install::ToolStatus;
use fleetforge_api::{Cluster, ToolInstall, ToolState, ToolTarget, annotation, condition};
use fleetforge_e2e::local::{
    Cleanup, WAIT, apply, await_clusters_ready, chart, delete_clusters, helm, local_clusters,
    release_names, release_values, start, target_client, target_kubeconfig,
};
use fleetforge_e2e::{Controller, await_event, install, run_ok};
use fleetforge_testenv::{await_condition, shared};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// A ToolInstall and its ToolTargets, as seen at one moment.
struct View {
    install: ToolInstall,
    targets: Vec<ToolTarget>,
}

impl View {
    fn status(&self) -> Option<&fleetforge_api::ToolInstallStatus> {
        self.install.status.as_ref()
    }

    fn target(&self, name: &str) -> Option<&ToolTarget> {
        self.targets.iter().find(|t| t.spec.target.name == name)
    }
}

async fn view(api: &Api<ToolInstall>, name: &str) -> Option<View> {
    let install = api.get_opt(name).await.ok()??;
    let children: Api<ToolTarget> = Api::namespaced(
        api.clone().into_client(),
        &install.namespace().unwrap_or_default(),
    );
    let targets = children
        .list(&ListParams::default().labels(&format!("fleetforge.dev/tool-install={name}")))
        .await
        .ok()?
        .items;
    Some(View { install, targets })
}

async fn await_install(
    api: &Api<ToolInstall>,
    name: &str,
    what: &str,
    controller: &Controller,
    done: impl Fn(&View) -> bool,
) -> View {
    let deadline = std::time::Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Some(seen) = view(api, name).await {
            if done(&seen) {
                return seen;
            }
            last = Some(format!(
                "{:?}\n{:?}",
                seen.install.status,
                seen.targets
                    .iter()
                    .map(|t| (&t.spec.target.name, &t.status))
                    .collect::<Vec<_>>()
            ));
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; last seen: {last:?}\ncontroller log:\n{}",
                controller.process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn tool<'a>(view: &'a View, target: &str, tool: &str) -> Option<&'a ToolStatus> {
    view.target(target)?
        .status
        .as_ref()?
        .tools
        .iter()
        .find(|t| t.name == tool)
}

fn state(view: &View, target: &str, name: &str) -> Option<ToolState> {
    tool(view, target, name).map(|t| t.state)
}

/// Every target (and only these) has its ToolTarget, at its generation,
/// with every tool DEPLOYED, and the ToolInstall has counted them.
fn all_deployed(view: &View, targets: &[&str]) -> bool {
    let Some(status) = view.status() else {
        return false;
    };
    let counted = status.summary.as_ref().is_some_and(|s| {
        s.targets as usize == targets.len() && s.deployed as usize == targets.len()
    });
    status.observed_generation == view.install.metadata.generation
        && counted
        && view.targets.len() == targets.len()
        && view.targets.iter().all(|t| {
            let status = t.status.clone().unwrap_or_default();
            targets.contains(&t.spec.target.name.as_str())
                && status.observed_generation == t.metadata.generation
                && !status.tools.is_empty()
                && status.tools.iter().all(|s| s.state == ToolState::Deployed)
        })
}

/// The kubeconfig of a local cluster from its connection Secret, as a file.
/// widgets (a CRD and an operator), then web (which creates a Widget, so it
/// fails unless widgets came first).
fn toolset(name: &str) -> Value {
    json!({
        "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolSet",
        "metadata": {"name": name},
        "spec": {"tools": [
            {"name": "web", "chart": chart("web"), "namespace": "apps", "dependsOn": ["widgets"],
             "values": {"greeting": "hello"},
             "health": [{"kind": "Deployment", "name": "web"}]},
            {"name": "widgets", "chart": chart("widgets"),
             "health": [{"kind": "CustomResourceDefinition", "name": "widgets.e2e.fleetforge.dev"},
                        {"kind": "Deployment", "name": "widget-operator"}]},
        ]},
    })
}

async fn patch_spec(api: &Api<ToolInstall>, name: &str, spec: Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_toolset_reaches_every_selected_cluster_and_stays_as_declared() {
    install();
    let work = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(work.path().to_path_buf());
    shared()
        .with_temp_ns(|client, ns| async move {
            let controller = start(&client, &ns, work.path()).await;
            let names = ["web-a", "web-b", "web-c"];
            local_clusters(
                &client,
                &ns,
                &[("web-a", json!({"tools": "yes"})), ("web-b", json!({"tools": "yes"})), ("web-c", json!({}))],
            )
            .await;
            let set = format!("web-{ns}");
            apply(&client, None, toolset(&set)).await;
            // A credential-like value comes from a Secret, never the spec.
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": "web-values"},
                "stringData": {"values.yaml": "apiToken: s3cr3t-from-secret\n"},
            }))
            .unwrap();
            secrets.create(&PostParams::default(), &secret).await.unwrap();
            apply(
                &client,
                Some(&ns),
                json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolInstall",
                    "metadata": {"name": "web"},
                    "spec": {
                        "toolSetRef": {"name": set},
                        "targets": {"clusterSelector": {"matchLabels": {"tools": "yes"}}},
                        "values": {"web": {"host": "{{ cluster.name }}.{{ cluster.namespace }}.example.com"}},
                        "valueOverrides": [{"cluster": "web-a", "tool": "web", "values": {"replicas": 2}}],
                        "valuesFrom": [{"tool": "web", "kind": "Secret", "name": "web-values"}],
                        "pollInterval": "2s",
                    },
                }),
            )
            .await;
            await_clusters_ready(&client, &ns, &names, &controller).await;
            let installs: Api<ToolInstall> = Api::namespaced(client.clone(), &ns);
            let ti = await_install(&installs, "web", "both labelled clusters to be DEPLOYED", &controller, |ti| {
                all_deployed(ti, &["web-a", "web-b"])
            })
            .await;
            let summary = ti.status().unwrap().summary.clone().unwrap();
            assert_eq!((summary.targets, summary.deployed, summary.failed), (2, 2, 0));
            assert_eq!(tool(&ti, "web-a", "web").unwrap().chart_version.as_deref(), Some("0.2.0"));

            // Every release carries the merged, templated values.
            let kubeconfig_a = target_kubeconfig(&client, &ns, "web-a", work.path()).await;
            let kubeconfig_b = target_kubeconfig(&client, &ns, "web-b", work.path()).await;
            let kubeconfig_c = target_kubeconfig(&client, &ns, "web-c", work.path()).await;
            assert_eq!(
                release_values(&kubeconfig_a, "web", "apps"),
                json!({"greeting": "hello", "host": format!("web-a.{ns}.example.com"), "replicas": 2, "apiToken": "s3cr3t-from-secret"})
            );
            assert_eq!(
                release_values(&kubeconfig_b, "web", "apps"),
                json!({"greeting": "hello", "host": format!("web-b.{ns}.example.com"), "apiToken": "s3cr3t-from-secret"})
            );
            assert!(release_names(&kubeconfig_c).is_empty(), "web-c is not selected");
            // The secret value stays out of the ToolInstall and its events.
            let seen = serde_json::to_string(&installs.get("web").await.unwrap()).unwrap();
            assert!(!seen.contains("s3cr3t"), "{seen}");

            // dependsOn: the CRD existed before web's Widget was created.
            let target_a = target_client(&kubeconfig_a).await;
            let crd = Api::<CustomResourceDefinition>::all(target_a.clone())
                .get("widgets.e2e.fleetforge.dev")
                .await
                .unwrap();
            let web = Api::<Deployment>::namespaced(target_a.clone(), "apps").get("web").await.unwrap();
            assert!(crd.creation_timestamp().unwrap().0 <= web.creation_timestamp().unwrap().0);
            assert_eq!(web.spec.unwrap().replicas, Some(2));

            // Suspended, a change of common values shows every target STALE.
            patch_spec(&installs, "web", json!({"suspend": true, "values": {"web": {"greeting": "hola"}}})).await;
            await_install(&installs, "web", "every target STALE while suspended", &controller, |ti| {
                ti.status().is_some_and(|s| s.observed_generation == ti.install.metadata.generation)
                    && state(ti, "web-a", "web") == Some(ToolState::Stale)
                    && state(ti, "web-b", "web") == Some(ToolState::Stale)
            })
            .await;
            assert_eq!(release_values(&kubeconfig_a, "web", "apps")["greeting"], "hello");
            // Resumed, every target is upgraded.
            patch_spec(&installs, "web", json!({"suspend": false})).await;
            await_install(&installs, "web", "the new values DEPLOYED", &controller, |ti| all_deployed(ti, &["web-a", "web-b"])).await;
            assert_eq!(release_values(&kubeconfig_a, "web", "apps")["greeting"], "hola");
            assert_eq!(release_values(&kubeconfig_b, "web", "apps")["greeting"], "hola");

            // A dry run plans the upgrade with its values diff and changes nothing.
            let revision = helm(&kubeconfig_b, &["history", "web", "-n", "apps", "--max", "1", "-o", "json"]);
            patch_spec(&installs, "web", json!({"dryRun": true, "values": {"web": {"greeting": "salut"}}})).await;
            let plan_of = |view: &View| -> Vec<fleetforge_api::tool_install::PlannedChange> {
                view.targets
                    .iter()
                    .filter(|t| t.status.as_ref().is_some_and(|s| s.observed_generation == t.metadata.generation))
                    .flat_map(|t| t.status.clone().unwrap_or_default().plan)
                    .collect()
            };
            let planned = await_install(&installs, "web", "a plan for both targets", &controller, |ti| {
                ti.status().is_some_and(|s| s.observed_generation == ti.install.metadata.generation) && plan_of(ti).len() == 2
            })
            .await;
            let plan = &plan_of(&planned);
            assert!(plan.iter().all(|p| p.tool == "web"), "{plan:?}");
            let diff = plan[0].values_diff.as_deref().unwrap_or_default();
            assert!(diff.contains("-greeting: hola") && diff.contains("+greeting: salut"), "{diff}");
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(helm(&kubeconfig_b, &["history", "web", "-n", "apps", "--max", "1", "-o", "json"]), revision);
            patch_spec(&installs, "web", json!({"dryRun": false})).await;
            await_install(&installs, "web", "the dry-run values applied for real", &controller, |ti| {
                all_deployed(ti, &["web-a", "web-b"]) && plan_of(ti).is_empty()
            })
            .await;

            // Drift, Correct: a Deployment deleted out of band comes back,
            // found by the target's watch, not by a poll (there is none
            // for an hour now).
            patch_spec(&installs, "web", json!({"pollInterval": "1h"})).await;
            await_install(&installs, "web", "a pass under the hour's poll", &controller, |ti| {
                all_deployed(ti, &["web-a", "web-b"])
            })
            .await;
            let deployments_a: Api<Deployment> = Api::namespaced(target_a.clone(), "apps");
            deployments_a.delete("web", &DeleteParams::default()).await.unwrap();
            await_event(&client, &ns, "DriftCorrected", "Deployment/web: deleted", &controller).await;
            let restored = await_condition(&deployments_a, "web", "web to be restored", WAIT, |d: Option<&Deployment>| d.is_some()).await;
            assert!(restored.is_ok(), "{restored:?}");

            // A CRD from the chart's crds/ (which helm installs once and an
            // upgrade never puts back) deleted: created again.
            let crds_a: Api<CustomResourceDefinition> = Api::all(target_a.clone());
            crds_a.delete("gadgets.e2e.fleetforge.dev", &DeleteParams::default()).await.unwrap();
            await_event(
                &client,
                &ns,
                "DriftCorrected",
                "CustomResourceDefinition/gadgets.e2e.fleetforge.dev: deleted (from the chart's crds/)",
                &controller,
            )
            .await;
            let restored = await_condition(&crds_a, "gadgets.e2e.fleetforge.dev", "gadgets to be restored", WAIT, |c: Option<&CustomResourceDefinition>| {
                c.is_some_and(|c| c.metadata.deletion_timestamp.is_none())
            })
            .await;
            assert!(restored.is_ok(), "{restored:?}");

            // Drift, Report: a scaled Deployment is only reported.
            patch_spec(&installs, "web", json!({"driftPolicy": "Report"})).await;
            // The policy reaches each target's ToolTarget first.
            await_install(&installs, "web", "Report on every ToolTarget", &controller, |ti| {
                all_deployed(ti, &["web-a", "web-b"])
                    && ti.targets.iter().all(|t| t.spec.drift_policy == fleetforge_api::DriftPolicy::Report)
            })
            .await;
            let target_b = target_client(&kubeconfig_b).await;
            let deployments_b: Api<Deployment> = Api::namespaced(target_b.clone(), "apps");
            deployments_b
                .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}})))
                .await
                .unwrap();
            let drifted = await_install(&installs, "web", "web on web-b DRIFTED", &controller, |ti| {
                state(ti, "web-b", "web") == Some(ToolState::Drifted)
            })
            .await;
            let fields = &tool(&drifted, "web-b", "web").unwrap().drift;
            assert_eq!(fields, &["Deployment/web spec.replicas: chart 1, live 3"]);
            let status = drifted.target("web-b").unwrap().status.clone().unwrap();
            assert!(status.conditions.iter().any(|c| c.type_ == condition::DRIFTED && c.status == "True" && c.reason == "Reported"));
            let summed = await_install(&installs, "web", "the drift counted by the ToolInstall", &controller, |ti| {
                ti.status().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == condition::DRIFTED && c.status == "True"))
            })
            .await;
            let drifted_message = summed.status().unwrap().conditions.iter().find(|c| c.type_ == condition::DRIFTED).unwrap().message.clone();
            assert_eq!(drifted_message, "1 targets drifted: web-b");
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(deployments_b.get("web").await.unwrap().spec.unwrap().replicas, Some(3), "Report must not correct");
            // Back to Correct: repaired.
            patch_spec(&installs, "web", json!({"driftPolicy": "Correct"})).await;
            await_install(&installs, "web", "the drift corrected", &controller, |ti| all_deployed(ti, &["web-a", "web-b"])).await;
            assert_eq!(deployments_b.get("web").await.unwrap().spec.unwrap().replicas, Some(1));
            patch_spec(&installs, "web", json!({"pollInterval": "2s"})).await;

            // A chart failing on one target fails there only.
            patch_spec(
                &installs,
                "web",
                json!({"valueOverrides": [
                    {"cluster": "web-a", "tool": "web", "values": {"replicas": 2}},
                    {"cluster": "web-b", "tool": "web", "values": {"fail": "web refuses to run on web-b"}},
                ]}),
            )
            .await;
            let failed = await_install(&installs, "web", "web FAILED on web-b only", &controller, |ti| {
                state(ti, "web-b", "web") == Some(ToolState::Failed) && state(ti, "web-a", "web") == Some(ToolState::Deployed)
            })
            .await;
            let message = tool(&failed, "web-b", "web").unwrap().message.clone().unwrap_or_default();
            assert!(message.contains("web refuses to run on web-b"), "{message}");
            let failed = await_install(&installs, "web", "the failure counted", &controller, |ti| {
                ti.status().and_then(|s| s.summary.as_ref()).is_some_and(|s| s.failed == 1)
            })
            .await;
            let status = failed.status().unwrap();
            assert!(status.conditions.iter().any(|c| c.type_ == condition::SYNCED && c.status == "False"));
            assert_eq!((status.failing[0].name.as_str(), status.failing[0].tool.as_deref()), ("web-b", Some("web")));
            await_event(&client, &ns, "InstallFailed", "web refuses to run on web-b", &controller).await;
            patch_spec(&installs, "web", json!({"valueOverrides": [{"cluster": "web-a", "tool": "web", "values": {"replicas": 2}}]})).await;
            await_install(&installs, "web", "web-b recovered", &controller, |ti| all_deployed(ti, &["web-a", "web-b"])).await;

            // Labelling a cluster brings the tools; unlabelling takes them away.
            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            clusters
                .patch("web-c", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tools": "yes"}}})))
                .await
                .unwrap();
            clusters
                .patch("web-b", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tools": null}}})))
                .await
                .unwrap();
            await_install(&installs, "web", "web-c in, web-b out", &controller, |ti| all_deployed(ti, &["web-a", "web-c"])).await;
            assert_eq!(release_names(&kubeconfig_c), ["web", "widgets"]);
            assert!(release_names(&kubeconfig_b).is_empty(), "{:?}", release_names(&kubeconfig_b));
            await_event(&client, &ns, "Uninstalled", "web-b: uninstalled widgets", &controller).await;

            // `kubectl get toolinstalls` shows the truth per target.
            let table = fleetforge_e2e::kubectl(&fleetforge_e2e::admin_kubeconfig(), &["get", "toolinstalls", "-n", &ns]);
            let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
            assert_eq!(header, ["NAME", "TARGETS", "DEPLOYED", "PENDING", "FAILED", "DRIFT", "AGE"]);
            let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
            assert_eq!(&row[..6], ["web", "2", "2", "0", "0", "False"], "{table}");
            // ... and `kubectl get tooltargets` one row per target.
            let table = fleetforge_e2e::kubectl(&fleetforge_e2e::admin_kubeconfig(), &["get", "tooltargets", "-n", &ns]);
            let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
            assert_eq!(header, ["NAME", "INSTALL", "KIND", "TARGET", "STATE", "DEPLOYED", "DRIFT", "AGE"]);
            let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
            assert_eq!(rows.len(), 2, "{table}");
            assert_eq!(&rows[0][..7], ["web-cluster-web-a", "web", "Cluster", "web-a", "DEPLOYED", "2/2", "False"], "{table}");

            // Deleting the ToolInstall uninstalls everywhere.
            installs.delete("web", &DeleteParams::default()).await.unwrap();
            controller.wait_for(&installs, "web", "the ToolInstall to be deleted", |ti: Option<&ToolInstall>| ti.is_none()).await;
            assert!(release_names(&kubeconfig_a).is_empty());
            assert!(release_names(&kubeconfig_c).is_empty());

            delete_clusters(&client, &ns, &names).await;
            let _ = Api::<fleetforge_api::ToolSet>::all(client.clone()).delete(&set, &DeleteParams::default()).await;
        })
        .await;
}

#[tokio::test]
async fn a_profile_installs_on_its_cluster_and_a_lost_cluster_can_be_forced_out() {
    install();
    let work = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(work.path().to_path_buf());
    shared()
        .with_temp_ns(|client, ns| async move {
            let controller = start(&client, &ns, work.path()).await;
            let set = format!("cache-{ns}");
            apply(
                &client,
                None,
                json!({
                    "apiVersion": "fleetforge.dev/v1alpha1", "kind": "ToolSet",
                    "metadata": {"name": set},
                    "spec": {"tools": [{"name": "cache", "chart": chart("cache"), "health": [{"kind": "Deployment", "name": "cache"}]}]},
                }),
            )
            .await;
            local_clusters(&client, &ns, &[("lost", json!({}))]).await;
            // A profile: the Cluster gets its own ToolInstall once Ready.
            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            clusters
                .patch("lost", &PatchParams::default(), &Patch::Merge(json!({"spec": {"profile": set}})))
                .await
                .unwrap();
            await_clusters_ready(&client, &ns, &["lost"], &controller).await;
            let installs: Api<ToolInstall> = Api::namespaced(client.clone(), &ns);
            let ti = await_install(&installs, "lost-profile", "the profile DEPLOYED", &controller, |ti| all_deployed(ti, &["lost"])).await;
            let owner = &ti.install.owner_references()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Cluster", "lost"));
            let kubeconfig = target_kubeconfig(&client, &ns, "lost", work.path()).await;
            assert_eq!(release_names(&kubeconfig), ["cache"]);

            // The cluster is lost: paused (so that nothing restarts it) and
            // its API server killed.
            clusters
                .patch("lost", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": true}})))
                .await
                .unwrap();
            let pid_file = work.path().join("clusters/clusters/lost/pids/kube-apiserver.pid");
            let pid = std::fs::read_to_string(&pid_file).unwrap();
            run_ok(Command::new("kill").arg("-9").arg(pid.trim()));
            await_install(&installs, "lost-profile", "the lost target UNKNOWN", &controller, |ti| {
                state(ti, "lost", "cache") == Some(ToolState::Unknown)
            })
            .await;

            // Deleting waits for the target, saying how to force it...
            installs.delete("lost-profile", &DeleteParams::default()).await.unwrap();
            await_event(&client, &ns, "UninstallBlocked", annotation::FORCE_REMOVE, &controller).await;
            assert!(installs.get_opt("lost-profile").await.unwrap().is_some());
            // ... and the annotation lets it go.
            installs
                .patch(
                    "lost-profile",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {annotation::FORCE_REMOVE: "true"}}})),
                )
                .await
                .unwrap();
            controller.wait_for(&installs, "lost-profile", "the forced ToolInstall to go", |ti: Option<&ToolInstall>| ti.is_none()).await;
            await_event(&client, &ns, "ForceRemoved", "lost: dropped without uninstalling", &controller).await;

            // Removing the profile keeps it gone; the cluster goes too. It
            // is deleted while still paused, so the pass that unpausing
            // starts deletes it; unpaused first, that pass would restart
            // its killed API server (a `kwokctl start` that waits its turn
            // on the host's start lock) before the delete could be seen.
            clusters.delete("lost", &DeleteParams::default()).await.unwrap();
            clusters
                .patch("lost", &PatchParams::default(), &Patch::Merge(json!({"spec": {"profile": null, "paused": false}})))
                .await
                .unwrap();
            delete_clusters(&client, &ns, &["lost"]).await;
            let _ = Api::<fleetforge_api::ToolSet>::all(client.clone()).delete(&set, &DeleteParams::default()).await;
        })
        .await;
}
