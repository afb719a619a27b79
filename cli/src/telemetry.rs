//! Logs and traces. Logs: human-readable lines by default (coloured only on a terminal), JSON lines with
//! `--log-format json` (span fields such as `job_id` and `trace_id` on every line within a job); level from
//! `RUST_LOG`. Commands a person waits on (client, keys) log warnings only.
//!
//! Traces: OpenTelemetry over OTLP/HTTP, off unless an OTLP endpoint is given through the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn it off). The exporter itself reads the rest: protocol (`http/protobuf`,
//! the default, or `http/json`), headers, timeout, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, and the
//! batch settings (`OTEL_BSP_*`). These are the SDK's own variables, read by it, not by the fleet's loader.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::args::LogFormat;

/// Flushes exported spans when the process ends.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("fleet: flushing traces failed: {e}");
            }
        }
    }
}

/// Warnings and errors only, as text: client commands, keys and the benchmark export no traces.
pub fn init_quiet() {
    init(None, LogFormat::Text, "warn").ok();
}

/// Logging, and trace export when configured, for a long-running `service` (`fleet-gateway`, ...).
pub fn init_service(service: &str, format: LogFormat) -> Result<Telemetry> {
    init(Some(service), format, "info,async_nats=warn")
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn export_wanted() -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    match env("OTEL_TRACES_EXPORTER") {
        Some(e) if e.eq_ignore_ascii_case("none") => false,
        Some(e) if e.eq_ignore_ascii_case("otlp") => true,
        _ => {
            env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        }
    }
}

fn protocol() -> Result<Protocol> {
    let chosen =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match chosen.as_deref() {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("http/json") => Ok(Protocol::HttpJson),
        Some(other) => bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported: use http/protobuf (the collector's port 4318) \
             or http/json"
        ),
    }
}

fn tracer_provider(service: &str) -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol()?)
        .build()
        .context("cannot set up the OTLP trace exporter")?;
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

fn init(service: Option<&str>, format: LogFormat, default_filter: &str) -> Result<Telemetry> {
    let provider = match service {
        Some(service) if export_wanted() => Some(tracer_provider(service)?),
        _ => None,
    };
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing_opentelemetry::layer().with_tracer(p.tracer("fleet"))
    });
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = format == LogFormat::Json;
    let text_logs = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
    });
    let json_logs = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    // `RUST_LOG` picks what is logged, not what is traced: spans are exported at info level whatever the log level.
    let logs = tracing_subscriber::Layer::and_then(text_logs, json_logs).with_filter(filter);
    let otel = otel.map(|layer| layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .context("cannot install the log subscriber")?;
    if provider.is_some() {
        tracing::info!(service, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}
