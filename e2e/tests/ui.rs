//! The fleet view (`fleetforge ui`) in a real browser: Debian's chromium,
//! headless, driven through chromedriver. The built controller runs nop
//! Clusters on the test's API server; the built `fleetforge ui` serves
//! them; the browser opens each page, sees it change without a reload,
//! and a screenshot of each page is kept (and checked not to be blank)
//! under `<target>/ui-screenshots/`. A person without RBAC to list
//! Clusters in a namespace sees none of them; in token mode, requests
//! without a valid token, or of someone who may not use the view, are
//! refused.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleetforge_api::{Cluster, Environment, ToolTarget};
use fleetforge_e2e::browser::{Browser, save_screenshot};
use fleetforge_e2e::chart::{find, render};
use fleetforge_e2e::fleet_view::FleetView;
use fleetforge_e2e::{Controller, admin_kubeconfig, install, nop, service_account_token};
use fleetforge_testenv::{shared, with_temp_ns};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Screenshots of every page, under the cargo target directory.
fn screenshot_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(&tmp).join("ui-screenshots")
}

/// A page of this size shows a table, badges and text in hundreds of
/// colours (anti-aliasing); a blank or error page shows a handful.
const MIN_COLOURS: usize = 64;
const WAIT: Duration = Duration::from_secs(60);

async fn create<K>(client: &Client, namespace: &str, object: Value) -> K
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let object: K = serde_json::from_value(object).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("the object is created")
}

fn nop_cluster(
    name: &str,
    config: &str,
    labels: Value,
    annotations: Value,
    drift_policy: &str,
) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "providerConfigRef": {"name": config}, "version": "1.36", "driftPolicy": drift_policy,
            "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 6, "desired": 2}],
        },
    })
}

/// The fleet table's rows: (key, phase, drift).
const ROWS: &str = "return Array.from(document.querySelectorAll('#live table.fleet tbody tr[data-key]')).map(r => [r.dataset.key, r.querySelector('td.phase').textContent.trim(), r.querySelector('td.drift').textContent.trim()]);";

fn rows(value: &Value) -> Vec<(String, String, String)> {
    value
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let text = |i: usize| r[i].as_str().unwrap_or_default().to_string();
                    (text(0), text(1), text(2))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_view_shows_the_fleet_live_in_a_browser() {
    install();
    with_temp_ns(|client, ns| async move {
        let work = tempfile::tempdir().unwrap();
        let config = format!("{ns}-nop");
        nop::provider_config(&client, &config, json!({})).await;
        let controller =
            Controller::start(&admin_kubeconfig(), &ns, &work.path().join("controller.log"));
        let me = Api::<SelfSubjectReview>::all(client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .unwrap()
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .expect("the API server says who the admin is");

        for (name, labels, annotations, policy) in [
            ("web", json!({"env": "prod"}), json!({}), "Correct"),
            // Report keeps the drift visible instead of correcting it.
            ("drifty", json!({"env": "dev"}), json!({}), "Report"),
            ("tools-broken", json!({"env": "dev"}), json!({"nop.fleetforge.dev/tool-fail": "web"}), "Correct"),
        ] {
            create::<Cluster>(&client, &ns, nop_cluster(name, &config, labels, annotations, policy)).await;
        }
        create::<fleetforge_api::ToolInstall>(&client, &ns, json!({
            "metadata": {"name": "base"},
            "spec": {
                "tools": [
                    {"name": "widgets", "chart": {"repository": "https://charts.example.com", "name": "widgets", "version": "0.1.0"}},
                    {"name": "web", "chart": {"repository": "https://charts.example.com", "name": "web", "version": "0.2.0"}, "dependsOn": ["widgets"]},
                ],
                "targets": {"clusterSelector": {"matchExpressions": [{"key": "env", "operator": "Exists"}]}},
            },
        }))
        .await;
        for (name, owner) in [("mine", me.as_str()), ("theirs", "someone-else")] {
            create::<Environment>(&client, &ns, json!({
                "metadata": {"name": name},
                "spec": {"type": "dedicated", "owner": owner, "ttl": "8h",
                         "dedicated": {"providerConfigRef": {"name": config},
                                       "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 1}]}},
            }))
            .await;
        }
        create::<fleetforge_api::FleetRollout>(&client, &ns, json!({
            "metadata": {"name": "to-1-37"},
            "spec": {"version": "1.37", "stages": [
                {"name": "canary", "names": ["web"], "pause": true},
                {"name": "rest", "selector": {"matchLabels": {"env": "dev"}}},
            ]},
        }))
        .await;
        for name in ["web", "drifty", "tools-broken"] {
            nop::await_ready(&client, &ns, name, &controller).await;
        }

        let view = FleetView::start(&admin_kubeconfig(), &[], &work.path().join("ui.log"));
        let browser = Browser::start(&work.path().join("browser"), 1400, 1000);
        let shots = screenshot_dir();

        // The fleet: every Cluster of the namespace, each with the phase
        // the API server has.
        browser.navigate(&view.url(&format!("/?ns={ns}")));
        let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);
        let expected = |list: &[Cluster]| -> Vec<(String, String)> {
            let mut rows: Vec<(String, String)> = list
                .iter()
                .map(|c| {
                    let phase = c.status.as_ref().and_then(|s| s.phase).map_or("Pending".to_string(), |p| format!("{p:?}"));
                    (format!("Cluster/{ns}/{}", c.metadata.name.clone().unwrap_or_default()), phase)
                })
                .collect();
            rows.sort();
            rows
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let want = expected(&clusters.list(&Default::default()).await.unwrap().items);
            let mut seen: Vec<(String, String)> = rows(&browser.execute(ROWS, json!([])))
                .into_iter()
                .map(|(key, phase, _)| (key, phase))
                .collect();
            seen.sort();
            // The environments' own Clusters come and go through phases;
            // once every row agrees with the API, the page tells the truth.
            if seen == want && want.len() >= 3 {
                break;
            }
            assert!(Instant::now() < deadline, "the fleet page shows {seen:?}, the API {want:?}\n{}", view.process.log_tail());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // Drift made out of band turns the open page's row to drifted,
        // without a reload (the marker set on the page survives).
        browser.execute("window.__sameDocument = 'yes'; return true;", json!([]));
        let started = Instant::now();
        clusters
            .patch(
                "drifty",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"nop.fleetforge.dev/out-of-band": "scale workers=5"}}})),
            )
            .await
            .unwrap();
        let key = format!("Cluster/{ns}/drifty");
        browser.wait_for(
            "drifty to show drifted on the open page",
            Duration::from_secs(30),
            ROWS,
            |v| rows(v).iter().any(|(k, _, drift)| *k == key && drift.contains("drifted")),
        );
        eprintln!("drift shown on the open page {:.1}s after the out-of-band change", started.elapsed().as_secs_f64());
        assert_eq!(browser.execute("return window.__sameDocument;", json!([])), json!("yes"), "the page was not reloaded");
        assert!(browser.execute("return Number(document.getElementById('live').dataset.updates || 0);", json!([])).as_u64().unwrap() > 0);
        assert_eq!(browser.execute("return document.getElementById('live-status').textContent;", json!([])), json!("live"));
        save_screenshot(&browser, &shots, "fleet", MIN_COLOURS);

        // Keyboard: the first Tab reaches the skip link; "/" the search.
        browser.navigate(&view.url("/"));
        browser.keys("\u{E004}");
        assert_eq!(browser.execute("return document.activeElement.textContent;", json!([])), json!("Skip to content"));
        browser.execute("document.activeElement.blur(); return true;", json!([]));
        browser.keys("/");
        assert_eq!(browser.execute("return document.activeElement.name;", json!([])), json!("q"));

        // A cluster: pools, conditions, drift fields, tools, events, and
        // its connection Secret's name, never its contents.
        browser.navigate(&view.url(&format!("/clusters/{ns}/drifty")));
        let page = browser.wait_for("drifty's page with its drift and events", WAIT,
            "return document.getElementById('live').innerText;",
            |v| v.as_str().is_some_and(|t| t.contains("nodePools[workers].desired: spec 2, actual 5") && t.contains("DriftDetected") && t.contains("DEPLOYED")));
        let text = page.as_str().unwrap();
        for want in ["drifty-kubeconfig", "Node pools", "standard-2", "Synced", "Ready"] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let secret = Api::<Secret>::namespaced(client.clone(), &ns).get("drifty-kubeconfig").await.unwrap();
        let value = String::from_utf8(secret.data.unwrap()["value"].0.clone()).unwrap();
        assert!(value.contains("nop-not-a-real-token"));
        let source = browser.execute("return document.documentElement.outerHTML;", json!([]));
        assert!(!source.as_str().unwrap().contains("nop-not-a-real-token"), "the Secret's contents are never shown");
        save_screenshot(&browser, &shots, "cluster", MIN_COLOURS);

        // The tools matrix: FAILED where the tool fails, with its message
        // one click away.
        browser.navigate(&view.url(&format!("/tools?ns={ns}")));
        let cell = format!("#live tr[data-key=\"Cluster/{ns}/tools-broken\"] td[data-column=\"web\"]");
        let state = format!("const c = document.querySelector('{cell}'); return c ? c.textContent.trim() : null;");
        browser.wait_for("a FAILED cell for web on tools-broken", WAIT, &state, |v| v == "FAILED");
        let deployed = format!("const c = document.querySelector('#live tr[data-key=\"Cluster/{ns}/web\"] td[data-column=\"web\"]'); return c ? c.textContent.trim() : null;");
        assert_eq!(browser.execute(&deployed, json!([])), json!("DEPLOYED"));
        save_screenshot(&browser, &shots, "tools", MIN_COLOURS);
        browser.execute(&format!("document.querySelector('{cell} a').click(); return true;"), json!([]));
        let detail = browser.wait_for("the ToolTarget's page", WAIT,
            "return document.querySelector('tr[data-tool=\"web\"] td.message') ? document.querySelector('tr[data-tool=\"web\"]').innerText : null;",
            |v| v.as_str().is_some_and(|t| t.contains("FAILED")));
        let tool_targets: Api<ToolTarget> = Api::namespaced(client.clone(), &ns);
        let failed = tool_targets.get("base-cluster-tools-broken").await.unwrap();
        let message = failed.status.unwrap().tools.into_iter().find(|t| t.name == "web").and_then(|t| t.message).unwrap();
        assert!(detail.as_str().unwrap().contains(&message), "{detail} shows {message}");

        // Environments: yours first, counting down, extendable.
        let environments: Api<Environment> = Api::namespaced(client.clone(), &ns);
        for name in ["mine", "theirs"] {
            controller.wait_for(&environments, name, "the environment to be Ready", |e: Option<&Environment>| {
                e.and_then(|e| e.status.as_ref()).and_then(|s| s.expires_at.as_ref()).is_some()
            }).await;
        }
        browser.navigate(&view.url(&format!("/environments?ns={ns}")));
        let order = browser.wait_for("both environments listed", WAIT,
            "return Array.from(document.querySelectorAll('#live table.environments tbody tr[data-key]')).map(r => r.dataset.key);",
            |v| v.as_array().is_some_and(|a| a.len() == 2));
        assert_eq!(order, json!([format!("{ns}/mine"), format!("{ns}/theirs")]));
        let left = "return document.querySelector('tr.mine time[data-expires]').textContent;";
        let first = browser.execute(left, json!([]));
        browser.wait_for("the time left to count down", Duration::from_secs(5), left, |v| *v != first);
        assert_eq!(browser.execute("return document.querySelectorAll('form[action$=\"/extend\"]').length;", json!([])), json!(1), "only your own");
        save_screenshot(&browser, &shots, "environments", MIN_COLOURS);
        browser.execute("const f = document.querySelector('tr.mine form[action$=\"/extend\"]'); f.querySelector('select').value = '1h'; f.submit(); return true;", json!([]));
        let said = browser.wait_for("the extension's outcome", WAIT,
            "const n = document.querySelector('.notice-done, .notice-error') || document.querySelector('h1'); return n && n.textContent !== 'Environments' ? n.textContent : null;",
            |v| v.is_string());
        assert!(said.as_str().unwrap().contains(&format!("Extended {ns}/mine")), "{said}");
        assert_eq!(environments.get("mine").await.unwrap().spec.ttl, "9h");

        // Rollouts: stages and progress.
        browser.navigate(&view.url("/rollouts"));
        browser.wait_for("the rollout waiting for approval", WAIT,
            &format!("const s = document.querySelector('section.rollout[data-key=\"{ns}/to-1-37\"]'); return s ? s.innerText : null;"),
            |v| v.as_str().is_some_and(|t| t.contains("WaitingForApproval") && t.contains("canary")));
        save_screenshot(&browser, &shots, "rollouts", MIN_COLOURS);

        // Deleting your own environment.
        browser.navigate(&view.url(&format!("/environments?ns={ns}")));
        browser.wait_for("mine listed", WAIT, "return document.querySelector('tr.mine form[action$=\"/delete\"]') !== null;", |v| v == true);
        browser.execute("document.querySelector('tr.mine form[action$=\"/delete\"]').submit(); return true;", json!([]));
        controller.wait_for(&environments, "mine", "mine to be deleted", |e: Option<&Environment>| {
            e.is_none_or(|e| e.metadata.deletion_timestamp.is_some())
        }).await;
        drop(browser);
        drop(view);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_sees_only_the_clusters_they_may_list() {
    install();
    with_temp_ns(|client, allowed| async move {
        let work = tempfile::tempdir().unwrap();
        let hidden = format!("{allowed}-hidden");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": hidden}})).unwrap())
            .await
            .unwrap();
        let config = format!("{allowed}-nop");
        create::<Cluster>(&client, &allowed, nop_cluster("visible-1", &config, json!({}), json!({}), "Correct")).await;
        create::<Cluster>(&client, &hidden, nop_cluster("secret-1", &config, json!({}), json!({}), "Correct")).await;

        // A ServiceAccount that may list Clusters in `allowed` only.
        let params = PatchParams::apply("fleetforge-e2e");
        let apply = |api: Api<kube::api::DynamicObject>, name: &str, value: Value| {
            let name = name.to_string();
            let params = params.clone();
            async move { api.patch(&name, &params, &Patch::Apply(&value)).await.unwrap(); }
        };
        let resource = |group: &str, version: &str, kind: &str, plural: &str| {
            kube::api::ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: if group.is_empty() { version.into() } else { format!("{group}/{version}") },
                kind: kind.into(),
                plural: plural.into(),
            }
        };
        let in_allowed = |r: &kube::api::ApiResource| Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &allowed, r);
        apply(in_allowed(&resource("", "v1", "ServiceAccount", "serviceaccounts")), "viewer",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "viewer"}})).await;
        apply(in_allowed(&resource("rbac.authorization.k8s.io", "v1", "Role", "roles")), "cluster-reader",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cluster-reader"},
                   "rules": [{"apiGroups": ["fleetforge.dev"], "resources": ["clusters"], "verbs": ["get", "list", "watch"]}]})).await;
        apply(in_allowed(&resource("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings")), "viewer-reads-clusters",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "viewer-reads-clusters"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cluster-reader"},
                   "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": allowed}]})).await;
        let token = service_account_token(&client, &allowed, "viewer").await;
        let kubeconfig = work.path().join("viewer.kubeconfig");
        shared().write_token_kubeconfig(&kubeconfig, &token).unwrap();

        // Both namespaces asked for: the allowed one is listed, the other
        // says "not permitted" and shows nothing of it.
        let view = FleetView::start(&kubeconfig, &["--namespace", &allowed, "--namespace", &hidden], &work.path().join("ui.log"));
        let browser = Browser::start(&work.path().join("browser"), 1400, 900);
        browser.navigate(&view.url("/"));
        let keys = browser.wait_for("the allowed cluster", WAIT, ROWS, |v| !rows(v).is_empty());
        assert_eq!(rows(&keys).into_iter().map(|r| r.0).collect::<Vec<_>>(), [format!("Cluster/{allowed}/visible-1")]);
        let notice = browser.execute("return Array.from(document.querySelectorAll('.notice-forbidden')).map(n => n.textContent).join('\\n');", json!([]));
        assert!(notice.as_str().unwrap().contains(&format!("Not permitted: you may not list Clusters in namespace {hidden}")), "{notice}");
        // A cluster made in the hidden namespace while the page is open
        // never shows either.
        create::<Cluster>(&client, &hidden, nop_cluster("secret-2", &config, json!({}), json!({}), "Correct")).await;
        create::<Cluster>(&client, &allowed, nop_cluster("visible-2", &config, json!({}), json!({}), "Correct")).await;
        browser.wait_for("the second allowed cluster, live", WAIT, ROWS, |v| rows(v).len() == 2);
        let source = browser.execute("return document.documentElement.outerHTML;", json!([]));
        let source = source.as_str().unwrap();
        assert!(!source.contains("secret-1") && !source.contains("secret-2"), "nothing of the hidden namespace");
        save_screenshot(&browser, &screenshot_dir(), "not-permitted", MIN_COLOURS);
        // Looking it up by its address says there is nothing to see.
        browser.navigate(&view.url(&format!("/clusters/{hidden}/secret-1")));
        let text = browser.execute("return document.getElementById('live').innerText;", json!([]));
        assert!(text.as_str().unwrap().contains("There is no Cluster"), "{text}");

        // All namespaces (the default): the cluster-wide list is refused,
        // so nothing shows, and the page says why.
        let everything = FleetView::start(&kubeconfig, &[], &work.path().join("ui-all.log"));
        browser.navigate(&everything.url("/"));
        let notice = browser.execute("return document.querySelector('.notice-forbidden').textContent;", json!([]));
        assert!(notice.as_str().unwrap().contains("in all namespaces"), "{notice}");
        assert!(rows(&browser.execute(ROWS, json!([]))).is_empty());
        drop(browser);
        namespaces.delete(&hidden, &DeleteParams::default()).await.unwrap();
    })
    .await;
}

/// Applies the chart's fleet-view RBAC (rendered with `ui.enabled`, into
/// `namespace`): its ServiceAccount, ClusterRoles and binding.
async fn apply_chart_ui_rbac(client: &Client, namespace: &str) -> Vec<Value> {
    let objects = render(&[
        "--namespace",
        namespace,
        "--set",
        "ui.enabled=true",
        "--show-only",
        "templates/ui.yaml",
    ]);
    let params = PatchParams::apply("fleetforge-e2e").force();
    for object in &objects {
        let (group, version, plural) = match object["kind"].as_str().unwrap() {
            "ServiceAccount" => ("", "v1", "serviceaccounts"),
            "ClusterRole" => ("rbac.authorization.k8s.io", "v1", "clusterroles"),
            "ClusterRoleBinding" => ("rbac.authorization.k8s.io", "v1", "clusterrolebindings"),
            // Pods do not run here: the test runs the Deployment's
            // arguments as a process.
            "Deployment" | "Service" => continue,
            other => panic!("the chart's fleet view has a {other} the test does not know"),
        };
        let resource = kube::api::ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: object["apiVersion"].as_str().unwrap().into(),
            kind: object["kind"].as_str().unwrap().into(),
            plural: plural.into(),
        };
        let api: Api<kube::api::DynamicObject> = if object["metadata"]["namespace"].is_string() {
            Api::namespaced_with(client.clone(), namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        api.patch(
            object["metadata"]["name"].as_str().unwrap(),
            &params,
            &Patch::Apply(object),
        )
        .await
        .unwrap();
    }
    objects
}

#[tokio::test(flavor = "multi_thread")]
async fn in_cluster_mode_admits_only_reviewed_tokens() {
    install();
    with_temp_ns(|client, ns| async move {
        let work = tempfile::tempdir().unwrap();
        let config = format!("{ns}-nop");
        create::<Cluster>(&client, &ns, nop_cluster("listed", &config, json!({}), json!({}), "Correct")).await;
        create::<Environment>(&client, &ns, json!({
            "metadata": {"name": "not-yours"},
            "spec": {"type": "dedicated", "owner": "someone", "ttl": "8h",
                     "dedicated": {"providerConfigRef": {"name": config}}},
        }))
        .await;
        // No controller here: the status an environment would have.
        let environments: Api<Environment> = Api::namespaced(client.clone(), &ns);
        let expires = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(8);
        environments
            .patch_status("not-yours", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Ready", "expiresAt": expires.to_string()}})))
            .await
            .unwrap();
        // The chart's own RBAC: the view's ServiceAccount may only ask the
        // reviews; people get fleetforge-ui-user (in) and
        // fleetforge-ui-viewer (reads), here in this namespace only.
        let objects = apply_chart_ui_rbac(&client, &ns).await;
        let params = PatchParams::apply("fleetforge-e2e");
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
        for name in ["nobody", "viewer"] {
            accounts
                .patch(name, &params, &Patch::Apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})))
                .await
                .unwrap();
        }
        let user_binding = format!("{ns}-ui-user");
        let cluster_bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
        cluster_bindings
            .patch(&user_binding, &params, &Patch::Apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": user_binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "fleetforge-ui-user"},
                "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns}],
            })))
            .await
            .unwrap();
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(client.clone(), &ns);
        bindings
            .patch("viewer", &params, &Patch::Apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "viewer"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "fleetforge-ui-viewer"},
                "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns}],
            })))
            .await
            .unwrap();
        let nobody = service_account_token(&client, &ns, "nobody").await;
        let viewer = service_account_token(&client, &ns, "viewer").await;
        let server = service_account_token(&client, &ns, "fleetforge-ui").await;
        let server_kubeconfig = work.path().join("fleetforge-ui.kubeconfig");
        shared().write_token_kubeconfig(&server_kubeconfig, &server).unwrap();

        // The Deployment's arguments, on a loopback port.
        let deployment = find(&objects, "Deployment")[0];
        let mut args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .filter(|a| a != "ui" && !a.starts_with("--listen"))
            .collect();
        assert_eq!(args, ["--auth=token"]);
        args.extend(["--namespace".to_string(), ns.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let view = FleetView::start(&server_kubeconfig, &args, &work.path().join("ui.log"));
        let (status, body) = view.request("/", &[], None);
        assert_eq!(status, 401, "{body}");
        assert!(body.to_ascii_lowercase().contains("www-authenticate: bearer"), "{body}");
        assert!(!body.contains("listed"));
        let (status, _) = view.request("/", &[("Authorization", "Bearer not-a-token")], None);
        assert_eq!(status, 401);
        let (status, body) = view.request("/", &[("Authorization", &format!("Bearer {nobody}"))], None);
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("may not use the fleet view"), "{body}");
        // The live stream is no way around it.
        let (status, _) = view.request("/live/", &[("Authorization", &format!("Bearer {nobody}"))], None);
        assert_eq!(status, 403);

        let bearer = format!("Bearer {viewer}");
        let (status, body) = view.request("/", &[("Authorization", &bearer)], None);
        assert_eq!(status, 200, "{body}\n{}", view.process.log_tail());
        assert!(body.contains(&format!("data-key=\"Cluster/{ns}/listed\"")), "{body}");
        assert!(body.contains(&format!("system:serviceaccount:{ns}:viewer")), "{body}");
        // Someone else's environment: listed, not theirs to extend; the
        // API server refuses, and the page says so.
        let (_, page) = view.request("/environments", &[("Authorization", &bearer)], None);
        assert!(page.contains(&format!("data-key=\"{ns}/not-yours\"")), "{page}");
        assert!(!page.contains("/extend"), "no actions on someone else's: {page}");
        let (_, login) = view.request("/login", &[], None);
        let csrf = login.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("the form token");
        let (status, refused) = view.request(
            &format!("/environments/{ns}/not-yours/extend"),
            &[("Authorization", &bearer)],
            Some(&format!("csrf={csrf}&by=1h")),
        );
        assert_eq!(status, 403, "{refused}");
        assert!(refused.contains("The API server refused"), "{refused}");
        // A form without this server's token is refused before anything.
        let (status, _) = view.request(
            &format!("/environments/{ns}/not-yours/delete"),
            &[("Authorization", &bearer)],
            Some("csrf=forged"),
        );
        assert_eq!(status, 403);
        assert_eq!(environments.get("not-yours").await.unwrap().spec.ttl, "8h");
        cluster_bindings.delete(&user_binding, &DeleteParams::default()).await.unwrap();
    })
    .await;
}

/// Screenshots of the running demo's fleet view for the README, into
/// `docs/ui/`: `scripts/demo`, then
/// `FLEETFORGE_UI_URL=http://127.0.0.1:8090 cargo test -p fleetforge-e2e --test ui -- --ignored --exact demo_screenshots`.
#[test]
#[ignore = "needs a running demo (scripts/demo); writes docs/ui/"]
fn demo_screenshots() {
    let url = std::env::var("FLEETFORGE_UI_URL").unwrap_or_else(|_| "http://127.0.0.1:8090".into());
    let work = tempfile::tempdir().unwrap();
    let browser = Browser::start(work.path(), 1400, 900);
    let docs = fleetforge_e2e::workspace_root().join("docs/ui");
    let live = "return document.getElementById('live-status').textContent;";
    for (name, path) in [
        ("fleet", "/"),
        ("cluster", "/clusters/platform/staging"),
        ("tools", "/tools"),
        ("environments", "/environments"),
        ("rollouts", "/rollouts"),
    ] {
        browser.navigate(&format!("{url}{path}"));
        browser.wait_for("the page to be live", Duration::from_secs(20), live, |v| {
            v == "live"
        });
        let path = save_screenshot(&browser, &docs, name, MIN_COLOURS);
        eprintln!("wrote {}", path.display());
    }
}
