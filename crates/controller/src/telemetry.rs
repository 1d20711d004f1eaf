//! Logging and tracing. Logs: human-readable by default, JSON with
//! `--log-format json`; verbosity from `RUST_LOG` (default `info`).
//! Traces: a span per reconcile (its kind, namespace, name, controller and
//! result) with provider calls and helm runs as children, exported over
//! OTLP/HTTP (protobuf) when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and not at all otherwise.
//! The exporter reads the other standard variables itself
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`).

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Flushes the spans not yet exported when dropped (at exit).
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces: {e}");
        }
    }
}

/// Whether traces are exported: one of the standard endpoint variables is
/// set (and not empty) in `env`.
pub fn tracing_enabled(env: impl Fn(&str) -> Option<String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| env(name).is_some_and(|v| !v.trim().is_empty()))
}

/// Installs the global subscriber: logs always, traces when configured.
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let logs = match format {
        LogFormat::Human => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    let traces = if tracing_enabled(|name| std::env::var(name).ok()) {
        Some(tracer_provider()?)
    } else {
        None
    };
    let layer = traces
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("fleetforge")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(layer)
        .init();
    if traces.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { traces })
}

fn tracer_provider() -> anyhow::Result<SdkTracerProvider> {
    // The endpoint, headers and timeout come from the standard variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .context("configuring the OTLP trace exporter (OTEL_EXPORTER_OTLP_*)")?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("fleetforge");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_exported_only_when_an_endpoint_is_set() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!tracing_enabled(env(&[])));
        assert!(!tracing_enabled(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(!tracing_enabled(env(&[(
            "OTEL_SERVICE_NAME",
            "fleetforge"
        )])));
        assert!(tracing_enabled(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(tracing_enabled(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )])));
    }
}
