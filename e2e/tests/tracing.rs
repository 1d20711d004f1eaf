//! Traces, as a platform team collects them: the built controller, given
//! the standard `OTEL_EXPORTER_OTLP_ENDPOINT`, sends its spans over
//! OTLP/HTTP to a real OpenTelemetry Collector (built by
//! scripts/install-tools from tools/otelcol: the OTLP receiver and the file
//! exporter), and each reconcile arrives as a span naming the object and
//! its result, with the provider calls it made as its children.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetforge_api::{Cluster, ProviderConfig};
use fleetforge_e2e::{Controller, install, nop, service_account_kubeconfig, workspace_root};
use fleetforge_testenv::{OwnedProcess, free_port, shared};
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

/// A Collector on a loopback port writing what it receives to a file.
struct Collector {
    process: OwnedProcess,
    endpoint: String,
    spans: PathBuf,
}

fn start_collector(dir: &Path) -> Collector {
    let binary = workspace_root().join(".tools/otelcol/otelcol-fleetforge");
    assert!(
        binary.is_file(),
        "{} is missing: run scripts/install-tools",
        binary.display()
    );
    let port = free_port().unwrap();
    let spans = dir.join("spans.jsonl");
    let config = dir.join("otelcol.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n\
             exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n\
             \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
            spans.display()
        ),
    )
    .unwrap();
    let mut process = OwnedProcess::spawn(
        "otelcol",
        &binary,
        &[format!("--config=file:{}", config.display())],
        &dir.join("otelcol.log"),
    )
    .unwrap();
    process
        .await_listening(port, Duration::from_secs(30))
        .unwrap();
    Collector {
        process,
        endpoint: format!("http://127.0.0.1:{port}"),
        spans,
    }
}

/// One span as the collector wrote it (OTLP JSON).
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

fn attributes(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let value = &a["value"];
            let text = value["stringValue"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            (a["key"].as_str().unwrap_or_default().to_string(), text)
        })
        .collect()
}

fn spans(file: &Path) -> Vec<Span> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(batch) = serde_json::from_str::<Value>(line) else {
            continue; // a line being written
        };
        for resource in batch["resourceSpans"].as_array().into_iter().flatten() {
            let service = attributes(&resource["resource"]["attributes"])
                .remove("service.name")
                .unwrap_or_default();
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let field = |name: &str| span[name].as_str().unwrap_or_default().to_string();
                    out.push(Span {
                        service: service.clone(),
                        trace_id: field("traceId"),
                        span_id: field("spanId"),
                        parent_span_id: field("parentSpanId"),
                        name: field("name"),
                        attributes: attributes(&span["attributes"]),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn each_reconcile_reaches_the_collector_as_a_span_with_its_provider_calls_as_children() {
    install();
    let plane = shared();
    shared()
        .with_temp_ns(|client, ns| async move {
            let dir = tempfile::tempdir().unwrap();
            let collector = start_collector(dir.path());
            let kubeconfig =
                service_account_kubeconfig(plane, &client, &ns, &dir.path().join("account.kubeconfig")).await;
            let controller = Controller::start_with_env(
                &kubeconfig,
                &ns,
                &dir.path().join("controller.log"),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
                    // Export within a fifth of a second, not the default 5 s.
                    ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ],
            );

            let config_name = format!("traced-{ns}");
            let configs: Api<ProviderConfig> = Api::all(client.clone());
            nop::provider_config(&client, &config_name, json!({})).await;
            nop::cluster(&client, &ns, "traced", &config_name, json!({})).await;
            nop::await_ready(&client, &ns, "traced", &controller).await;
            let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns);

            // The pass that created it: a reconcile span of this Cluster,
            // and the create call as its child in the same trace.
            let deadline = Instant::now() + Duration::from_secs(30);
            let (reconcile, create) = loop {
                let all = spans(&collector.spans);
                let found = all
                    .iter()
                    .filter(|s| s.name == "provider create")
                    .find_map(|create| {
                        all.iter()
                            .find(|r| r.span_id == create.parent_span_id && r.name == "reconcile Cluster")
                            .filter(|r| {
                                r.attributes.get("name").map(String::as_str) == Some("traced")
                                    && r.attributes.get("namespace") == Some(&ns)
                            })
                            .map(|r| (r.clone(), create.clone()))
                    });
                if let Some(found) = found {
                    break found;
                }
                assert!(
                    Instant::now() < deadline,
                    "no reconcile span with a provider create child reached the collector; {} spans: {:?}\ncollector:\n{}\ncontroller:\n{}",
                    all.len(),
                    all.iter().map(|s| &s.name).collect::<Vec<_>>(),
                    collector.process.log_tail(),
                    controller.process.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(reconcile.service, "fleetforge");
            assert_eq!(create.trace_id, reconcile.trace_id);
            let attribute = |span: &Span, key: &str| span.attributes.get(key).cloned().unwrap_or_default();
            assert_eq!(attribute(&reconcile, "kind"), "Cluster");
            assert_eq!(attribute(&reconcile, "controller"), "Cluster");
            assert_eq!(attribute(&reconcile, "result"), "ok");
            assert_eq!(attribute(&create, "provider"), "nop");
            assert_eq!(attribute(&create, "verb"), "create");
            assert_eq!(attribute(&create, "outcome"), "ok");
            // Observing is traced too, in the same pass.
            let observed = spans(&collector.spans).into_iter().any(|s| {
                s.name == "provider observe" && s.parent_span_id == reconcile.span_id
            });
            assert!(observed, "the pass's observe call is a child span too");

            clusters.delete("traced", &DeleteParams::default()).await.unwrap();
            controller
                .wait_for(&clusters, "traced", "deleted", |c: Option<&Cluster>| c.is_none())
                .await;
            let _ = configs.delete(&config_name, &DeleteParams::default()).await;
        })
        .await;
}
