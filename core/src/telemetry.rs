//! Logging, and with the `otlp` cargo feature, trace export (OpenTelemetry, OTLP over HTTP).
//!
//! Traces are W3C trace context ([`crate::trace`]) whether or not the feature is on: the
//! ids travel in the job message's headers and on every service call, and every span of
//! a job carries `trace_id`, `job_id` and `tenant_id`. With the feature on and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans are also exported, each job's spans under
//! the job's own trace id ([`link`]). The default build stays without the OpenTelemetry
//! crates.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::trace::TraceParent;

fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(fmt);
    // Spans of INFO and above are exported (the job's own spans), not every library's.
    #[cfg(feature = "otlp")]
    let registry = registry
        .with(otlp::layer().map(|l| l.with_filter(tracing_subscriber::filter::LevelFilter::INFO)));
    let _ = registry.try_init();
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init("info");
}

/// Like [`init_tracing`] but warnings only by default, for the interactive CLI. lapin's
/// own logs are off: the CLI reports its errors itself, and `top`'s passive declare of a
/// queue that is not there (which closes a channel, logged by lapin as an error) is an
/// answer, not a failure.
pub fn init_tracing_quiet() {
    init("warn,lapin=off");
}

/// Makes `span` part of the job's trace in the exported spans (a child of `parent`).
/// Without the `otlp` feature there is nothing to export and this does nothing.
pub fn link(span: &tracing::Span, parent: &TraceParent) {
    #[cfg(feature = "otlp")]
    otlp::link(span, parent);
    #[cfg(not(feature = "otlp"))]
    let _ = (span, parent);
}

/// Sends the spans still buffered (at exit).
pub fn flush() {
    #[cfg(feature = "otlp")]
    otlp::flush();
}

#[cfg(feature = "otlp")]
mod otlp {
    use std::sync::OnceLock;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
    };
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::trace::TraceParent;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// The export layer when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (OTLP/HTTP, protobuf).
    pub fn layer<S>(
    ) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
        let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces)
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("OTLP export off: {e}");
                return None;
            }
        };
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| {
            std::env::args()
                .next()
                .and_then(|a| a.rsplit('/').next().map(str::to_owned))
                .unwrap_or_else(|| "imagejobs".into())
        });
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(name)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("imagejobs");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    pub fn link(span: &tracing::Span, parent: &TraceParent) {
        let context = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.span_id.to_be_bytes()),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
    }

    pub fn flush() {
        if let Some(p) = PROVIDER.get() {
            let _ = p.shutdown();
        }
    }
}
