//! Every admission rule of the API, on the real kube-apiserver: a bad object
//! is refused with a message that names the field, and a good one is
//! accepted with its defaults filled in.

use fleetforge_api::{
    Cluster, Environment, FleetRollout, ProviderConfig, ToolInstall, ToolSet, VirtualCluster,
};
use fleetforge_testenv::{shared, with_temp_ns};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

async fn client() -> Client {
    static CRDS: OnceCell<()> = OnceCell::const_new();
    let client = shared().client().await.unwrap();
    CRDS.get_or_init(|| async {
        fleetforge_core::crds::install(&client).await.unwrap();
    })
    .await;
    client
}

fn resource<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

fn api(client: &Client, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

fn object(resource: &ApiResource, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// Creates `spec` as `name` and expects a refusal mentioning `field` (and
/// `message`, when given).
async fn expect_refused(
    api: &Api<DynamicObject>,
    resource: &ApiResource,
    name: &str,
    spec: Value,
    field: &str,
    message: &str,
) {
    let result = api
        .create(&PostParams::default(), &object(resource, name, spec))
        .await;
    assert_refused(result.map(|_| ()), name, field, message);
}

fn assert_refused(result: Result<(), kube::Error>, case: &str, field: &str, message: &str) {
    match result {
        Ok(()) => panic!("{case}: accepted, expected a refusal naming {field}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{case}: {status:?}");
            assert!(
                status.message.contains(field),
                "{case}: the error should name {field}: {}",
                status.message
            );
            assert!(
                status.message.contains(message),
                "{case}: the error should say {message:?}: {}",
                status.message
            );
        }
        Err(other) => panic!("{case}: unexpected error {other}"),
    }
}

fn cluster_spec() -> Value {
    json!({
        "providerConfigRef": {"name": "nop"},
        "region": "local",
        "version": "1.36",
        "nodePools": [{"name": "workers", "machineType": "standard-2", "min": 1, "max": 3, "desired": 2}],
    })
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut base
    } else {
        base.pointer_mut(parent).unwrap()
    };
    match target {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => panic!("{pointer} is not in an object or array"),
    }
    base
}

#[tokio::test]
async fn clusters_are_checked_at_admission() {
    let client = client().await;
    with_temp_ns(|_, ns| async move {
        let resource = resource::<Cluster>();
        let api = api(&client, &resource, Some(&ns));
        let cases = [
            ("bad-version", with(cluster_spec(), "/version", json!("1.36.2")), "spec.version", "should match"),
            ("min-over-max", with(cluster_spec(), "/nodePools/0/min", json!(4)), "spec.nodePools[0].min", "min must not be greater than max"),
            ("desired-above-max", with(cluster_spec(), "/nodePools/0/desired", json!(9)), "spec.nodePools[0].desired", "desired must lie between min and max"),
            ("desired-below-min", with(cluster_spec(), "/nodePools/0/desired", json!(0)), "spec.nodePools[0].desired", "desired must lie between min and max"),
            ("negative-min", with(cluster_spec(), "/nodePools/0/min", json!(-1)), "spec.nodePools[0].min", "greater than or equal to 0"),
            ("bad-pool-name", with(cluster_spec(), "/nodePools/0/name", json!("Workers_1")), "spec.nodePools[0].name", "should match"),
            ("duplicate-pools", with(cluster_spec(), "/nodePools", json!([
                {"name": "a", "machineType": "m", "min": 0, "max": 1},
                {"name": "a", "machineType": "m", "min": 0, "max": 1},
            ])), "spec.nodePools[1]", "Duplicate value"),
            ("two-provider-blocks", with(cluster_spec(), "/provider", json!({
                "gcp": {"project": "my-project-1"},
                "azure": {"resourceGroup": "rg"},
            })), "spec.provider", "set at most one of aws, gcp and azure"),
            ("bad-role-arn", with(cluster_spec(), "/provider", json!({
                "aws": {"roleArn": "eks-role", "nodeRoleArn": "arn:aws:iam::123456789012:role/n", "subnetIds": ["subnet-1"]},
            })), "spec.provider.aws.roleArn", "should match"),
            ("no-provider-config", json!({"region": "local"}), "spec.providerConfigRef", "Required value"),
            ("bad-deletion-policy", with(cluster_spec(), "/deletionPolicy", json!("Keep")), "spec.deletionPolicy", "Unsupported value"),
            ("bad-drift-policy", with(cluster_spec(), "/driftPolicy", json!("Ignore")), "spec.driftPolicy", "Unsupported value"),
            ("bad-management-policy", with(cluster_spec(), "/managementPolicy", json!("ReadOnly")), "spec.managementPolicy", "Unsupported value"),
        ];
        for (name, spec, field, message) in cases {
            expect_refused(&api, &resource, name, spec, field, message).await;
        }

        // A good one is accepted, with defaults filled in.
        let created = api
            .create(&PostParams::default(), &object(&resource, "good", cluster_spec()))
            .await
            .unwrap();
        assert_eq!(created.data["spec"]["deletionPolicy"], "Delete");
        assert_eq!(created.data["spec"]["managementPolicy"], "Full");
        assert_eq!(created.data["spec"]["driftPolicy"], "Correct");
        assert_eq!(created.data["spec"]["paused"], false);

        // Transition rules.
        let patch = |spec: Value| Patch::Merge(json!({"spec": spec}));
        let params = PatchParams::default();
        let moved = api.patch("good", &params, &patch(json!({"region": "eu-west-1"}))).await;
        assert_refused(moved.map(|_| ()), "region-change", "spec.region", "region is immutable");
        let removed = api.patch("good", &params, &patch(json!({"region": null}))).await;
        assert_refused(removed.map(|_| ()), "region-removal", "spec.region", "region is immutable");
        let account = api
            .patch("good", &params, &patch(json!({"providerConfigRef": {"name": "other"}})))
            .await;
        assert_refused(account.map(|_| ()), "account-change", "spec.providerConfigRef", "providerConfigRef is immutable");
        // ... while day-2 fields change freely.
        api.patch("good", &params, &patch(json!({"version": "1.37", "paused": true})))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn provider_configs_are_checked_at_admission() {
    let client = client().await;
    let resource = resource::<ProviderConfig>();
    let api = api(&client, &resource, None);
    let nop = json!({"provider": "nop"});
    let cases = [
        (
            "pc-bad-provider",
            json!({"provider": "digitalocean"}),
            "spec.provider",
            "Unsupported value",
        ),
        (
            "pc-secret-without-ref",
            json!({"provider": "aws", "credentials": {"source": "Secret"}}),
            "spec.credentials.secretRef",
            "secretRef is required when source is Secret",
        ),
        (
            "pc-nop-settings-on-aws",
            json!({"provider": "aws", "nop": {"failureRate": 0.5}}),
            "spec.nop",
            "nop settings apply only to provider nop",
        ),
        (
            "pc-bad-poll",
            with(nop.clone(), "/pollInterval", json!("every minute")),
            "spec.pollInterval",
            "should match",
        ),
        (
            "pc-tiny-poll",
            with(nop.clone(), "/pollInterval", json!("10ms")),
            "spec.pollInterval",
            "pollInterval must be at least 1s",
        ),
        (
            "pc-bad-endpoint",
            with(nop.clone(), "/endpoint", json!("localhost:5000")),
            "spec.endpoint",
            "should match",
        ),
        (
            "pc-zero-qps",
            with(nop.clone(), "/rateLimit", json!({"qps": 0, "burst": 1})),
            "spec.rateLimit.qps",
            "qps must be greater than 0",
        ),
        (
            "pc-failure-rate",
            with(nop.clone(), "/nop", json!({"failureRate": 1.5})),
            "spec.nop.failureRate",
            "less than or equal to 1",
        ),
    ];
    for (name, spec, field, message) in cases {
        expect_refused(&api, &resource, name, spec, field, message).await;
    }
    let name = format!("pc-good-{}", std::process::id());
    let created = api
        .create(&PostParams::default(), &object(&resource, &name, nop))
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["pollInterval"], "60s");
    assert_eq!(created.data["spec"]["credentials"]["source"], "Ambient");
    let changed = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"provider": "aws"}})),
        )
        .await;
    assert_refused(
        changed.map(|_| ()),
        "pc-provider-change",
        "spec.provider",
        "provider is immutable",
    );
}

#[tokio::test]
async fn tool_sets_and_tool_installs_are_checked_at_admission() {
    let client = client().await;
    let sets = resource::<ToolSet>();
    let set_api = api(&client, &sets, None);
    let tool = |chart: Value| json!({"name": "cert-manager", "chart": chart});
    let cases = [
        (
            "ts-two-sources",
            json!({"tools": [tool(json!({"repository": "https://charts.jetstack.io", "path": "/charts/x", "name": "cert-manager"}))]}),
            "spec.tools[0].chart",
            "set exactly one of repository, oci and path",
        ),
        (
            "ts-no-source",
            json!({"tools": [tool(json!({"version": "1.0.0"}))]}),
            "spec.tools[0].chart",
            "set exactly one of repository, oci and path",
        ),
        (
            "ts-repo-without-name",
            json!({"tools": [tool(json!({"repository": "https://charts.jetstack.io"}))]}),
            "spec.tools[0].chart.name",
            "name is required with repository",
        ),
        (
            "ts-bad-oci",
            json!({"tools": [tool(json!({"oci": "ghcr.io/x/y"}))]}),
            "spec.tools[0].chart.oci",
            "should match",
        ),
        (
            "ts-unknown-dependency",
            json!({"tools": [{"name": "knative", "chart": {"path": "/c"}, "dependsOn": ["cert-manager"]}]}),
            "spec.tools",
            "every dependsOn entry must name a tool of this set",
        ),
        (
            "ts-empty",
            json!({"tools": []}),
            "spec.tools",
            "should have at least 1 items",
        ),
    ];
    for (name, spec, field, message) in cases {
        expect_refused(&set_api, &sets, name, spec, field, message).await;
    }

    with_temp_ns(|_, ns| async move {
        let installs = resource::<ToolInstall>();
        let install_api = api(&client, &installs, Some(&ns));
        let targets = json!({"clusterNames": ["dev-1"]});
        let cases = [
            ("both-sources", json!({"toolSetRef": {"name": "dev"}, "tools": [{"name": "x", "chart": {"path": "/c"}}], "targets": targets}), "spec", "set exactly one of toolSetRef and tools"),
            ("no-source", json!({"targets": targets}), "spec", "set exactly one of toolSetRef and tools"),
            ("no-targets", json!({"toolSetRef": {"name": "dev"}, "targets": {}}), "spec.targets", "select at least one target"),
            ("zero-concurrency", json!({"toolSetRef": {"name": "dev"}, "targets": targets, "maxConcurrency": 0}), "spec.maxConcurrency", "greater than or equal to 1"),
            ("bad-values-source", json!({"toolSetRef": {"name": "dev"}, "targets": targets, "valuesFrom": [{"tool": "x", "kind": "Vault", "name": "v"}]}), "spec.valuesFrom[0].kind", "Unsupported value"),
            ("bad-selector-operator", json!({"toolSetRef": {"name": "dev"}, "targets": {"clusterSelector": {"matchExpressions": [{"key": "tier", "operator": "Equals", "values": ["dev"]}]}}}), "spec.targets.clusterSelector.matchExpressions[0].operator", "Unsupported value: \"Equals\""),
            ("selector-in-without-values", json!({"toolSetRef": {"name": "dev"}, "targets": {"virtualClusterSelector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}}}), "spec.targets.virtualClusterSelector.matchExpressions[0]", "In and NotIn need at least one value"),
            ("selector-exists-with-values", json!({"toolSetRef": {"name": "dev"}, "targets": {"clusterSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["x"]}]}}}), "spec.targets.clusterSelector.matchExpressions[0]", "Exists and DoesNotExist take none"),
        ];
        for (name, spec, field, message) in cases {
            expect_refused(&install_api, &installs, name, spec, field, message).await;
        }
        let created = install_api
            .create(
                &PostParams::default(),
                &object(&installs, "good", json!({"toolSetRef": {"name": "dev"}, "targets": targets, "values": {"ingress": {"replicas": 2}}})),
            )
            .await
            .unwrap();
        assert_eq!(created.data["spec"]["maxConcurrency"], 5);
        assert_eq!(created.data["spec"]["values"]["ingress"]["replicas"], 2);
    })
    .await;
}

#[tokio::test]
async fn environments_and_virtual_clusters_are_checked_at_admission() {
    let client = client().await;
    with_temp_ns(|_, ns| async move {
        let environments = resource::<Environment>();
        let env_api = api(&client, &environments, Some(&ns));
        let dedicated = json!({"providerConfigRef": {"name": "local"}, "nodePools": [{"name": "w", "machineType": "standard-2", "min": 1, "max": 1}]});
        let cases = [
            ("bad-ttl", json!({"type": "virtual", "owner": "ana", "ttl": "tomorrow"}), "spec.ttl", "should match"),
            ("bad-type", json!({"type": "shared", "owner": "ana"}), "spec.type", "Unsupported value"),
            ("no-owner", json!({"type": "virtual"}), "spec.owner", "Required value"),
            ("dedicated-without-settings", json!({"type": "dedicated", "owner": "ana"}), "spec.dedicated", "dedicated is required for type dedicated"),
            ("virtual-with-dedicated", json!({"type": "virtual", "owner": "ana", "dedicated": dedicated}), "spec.dedicated", "not allowed for type virtual"),
            ("dedicated-with-virtual", json!({"type": "dedicated", "owner": "ana", "dedicated": dedicated, "virtual": {}}), "spec.virtual", "virtual is only allowed for type virtual"),
            ("dedicated-sleep-after", json!({"type": "dedicated", "owner": "ana", "dedicated": dedicated, "sleepAfter": "1h"}), "spec.sleepAfter", "only supported for type virtual"),
            ("dedicated-bad-pool", json!({"type": "dedicated", "owner": "ana", "dedicated": with(dedicated.clone(), "/nodePools/0/min", json!(5))}), "spec.dedicated.nodePools[0].min", "min must not be greater than max"),
        ];
        for (name, spec, field, message) in cases {
            expect_refused(&env_api, &environments, name, spec, field, message).await;
        }
        let created = env_api
            .create(&PostParams::default(), &object(&environments, "mine", json!({"type": "virtual", "owner": "ana"})))
            .await
            .unwrap();
        assert_eq!(created.data["spec"]["ttl"], "8h");
        let retyped = env_api
            .patch("mine", &PatchParams::default(), &Patch::Merge(json!({"spec": {"type": "dedicated", "dedicated": dedicated}})))
            .await;
        assert_refused(retyped.map(|_| ()), "env-type-change", "spec.type", "type is immutable");

        let virtuals = resource::<VirtualCluster>();
        let vc_api = api(&client, &virtuals, Some(&ns));
        expect_refused(&vc_api, &virtuals, "bad-namespace", json!({"namespace": "Team_A"}), "spec.namespace", "should match").await;
        vc_api
            .create(&PostParams::default(), &object(&virtuals, "vc", json!({"host": {"clusterRef": {"name": "dev-1"}}})))
            .await
            .unwrap();
        let moved = vc_api
            .patch("vc", &PatchParams::default(), &Patch::Merge(json!({"spec": {"host": {"clusterRef": {"name": "dev-2"}}}})))
            .await;
        assert_refused(moved.map(|_| ()), "vc-host-change", "spec.host", "host is immutable");
    })
    .await;
}

#[tokio::test]
async fn fleet_rollouts_are_checked_at_admission() {
    let client = client().await;
    with_temp_ns(|_, ns| async move {
        let rollouts = resource::<FleetRollout>();
        let rollout_api = api(&client, &rollouts, Some(&ns));
        let stage = |extra: Value| {
            let mut stage = json!({"name": "all", "selector": {}});
            stage.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            stage
        };
        let cases = [
            ("two-changes", json!({"version": "1.35", "toolSetRef": {"name": "dev"}, "stages": [stage(json!({}))]}), "spec", "set exactly one of version, toolSetRef and toolInstallRef"),
            ("no-change", json!({"stages": [stage(json!({}))]}), "spec", "set exactly one of version, toolSetRef and toolInstallRef"),
            ("bad-version", json!({"version": "1.35.2", "stages": [stage(json!({}))]}), "spec.version", "should match"),
            ("no-stages", json!({"version": "1.35", "stages": []}), "spec.stages", "should have at least 1 items"),
            ("same-names", json!({"version": "1.35", "stages": [stage(json!({})), stage(json!({}))]}), "spec.stages", "stage names must be unique"),
            ("no-selection", json!({"version": "1.35", "stages": [{"name": "a"}]}), "spec.stages[0]", "select targets with selector, names or both"),
            ("zero-in-flight", json!({"version": "1.35", "stages": [stage(json!({"maxInFlight": 0}))]}), "spec.stages[0].maxInFlight", "greater than or equal to 1"),
            ("bad-percentage", json!({"version": "1.35", "stages": [stage(json!({"maxInFlight": "150%"}))]}), "spec.stages[0].maxInFlight", "should match"),
            ("bad-soak", json!({"version": "1.35", "stages": [stage(json!({"soak": "a while"}))]}), "spec.stages[0].soak", "should match"),
            ("bad-operator", json!({"version": "1.35", "stages": [{"name": "a", "selector": {"matchExpressions": [{"key": "ring", "operator": "Equals", "values": ["a"]}]}}]}), "spec.stages[0].selector.matchExpressions[0].operator", "Unsupported value"),
        ];
        for (name, spec, field, message) in cases {
            expect_refused(&rollout_api, &rollouts, name, spec, field, message).await;
        }
        let created = rollout_api
            .create(&PostParams::default(), &object(&rollouts, "fine", json!({"version": "1.35", "stages": [stage(json!({"maxInFlight": "20%"}))]})))
            .await
            .unwrap();
        assert_eq!(created.data["spec"]["progressDeadline"], "30m");
        assert_eq!(created.data["spec"]["stages"][0]["soak"], "0s");
        assert_eq!(created.data["spec"]["stages"][0]["maxInFlight"], "20%");
    })
    .await;
}

/// Every YAML file under `examples/` is accepted by the API server (server
/// dry run), so documented examples cannot rot. Namespaced objects are
/// placed in a temporary namespace.
#[tokio::test]
async fn every_example_is_accepted() {
    let client = client().await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let root = fleetforge_testenv::tools::workspace_root().join("examples");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty());
    with_temp_ns(|_, ns| async move {
        let mut checked = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for doc in docs.into_iter().filter(|d| !d.is_null()) {
                let mut object: DynamicObject = serde_json::from_value(doc).unwrap();
                let types = object.types.clone().unwrap();
                if types.kind == "Namespace" {
                    continue;
                }
                let (group, version) = types
                    .api_version
                    .split_once('/')
                    .unwrap_or(("", &types.api_version));
                let gvk = kube::core::GroupVersionKind::gvk(group, version, &types.kind);
                let (resource, caps) = discovery
                    .resolve_gvk(&gvk)
                    .unwrap_or_else(|| panic!("{}: unknown kind {}", file.display(), types.kind));
                let api = if caps.scope == kube::discovery::Scope::Namespaced {
                    object.metadata.namespace = Some(ns.clone());
                    api(&client, &resource, Some(&ns))
                } else {
                    api(&client, &resource, None)
                };
                let params = PostParams {
                    dry_run: true,
                    ..PostParams::default()
                };
                if let Err(e) = api.create(&params, &object).await {
                    panic!(
                        "{}: {} {} refused: {e}",
                        file.display(),
                        types.kind,
                        object.metadata.name.unwrap_or_default()
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 2);
    })
    .await;
}
