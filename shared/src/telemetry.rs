//! Logs and traces, shared by every binary.
//!
//! - `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` makes every line one JSON object,
//!   with the fields of the spans it happened in (a request's `trace_id`, for one).
//! - With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported over OTLP/HTTP
//!   (opentelemetry-otlp, batched on its own thread), named after the process
//!   (`OTEL_SERVICE_NAME`, default `confab-<binary>`). [`link`] makes a span continue a
//!   W3C trace context, so a request's spans in the gateway and in the worker that applied
//!   its command share one trace id.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::trace::TraceContext;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Keeps the span exporter alive; dropping it flushes what is batched.
#[must_use]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("flushing spans failed: {e}");
            }
        }
    }
}

/// What [`init`] needs from the configuration.
pub struct Setup<'a> {
    /// `text` or `json`.
    pub log_format: &'a str,
    /// OTLP/HTTP collector base URL, if any.
    pub otlp_endpoint: Option<&'a str>,
    /// The default service name (`confab-gateway`, `confab-persistence`, …).
    pub service: &'a str,
}

/// Logging with the default text format and no export (before the configuration is read).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_target(false)
        .try_init();
}

fn filter() -> EnvFilter {
    // warp logs a client's odd path (`/index.html%00.js`, a backslash) at WARN; a client can
    // do that at will, so those lines are kept off unless RUST_LOG asks for warp's logs.
    let quiet = ["warp::filters::fs=off"];
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    if !asked.contains("warp") {
        for directive in quiet {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    filter
}

/// Logs in `log_format` and, with an OTLP endpoint, exported spans.
pub fn init(setup: &Setup<'_>) -> Telemetry {
    let fmt = match setup.log_format {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
            .boxed(),
        _ => tracing_subscriber::fmt::layer().with_target(false).boxed(),
    };
    let mut provider = None;
    let otel = setup
        .otlp_endpoint
        .and_then(|endpoint| match exporter(endpoint, setup.service) {
            Ok(p) => {
                let layer = tracing_opentelemetry::layer().with_tracer(p.tracer("confab"));
                provider = Some(p);
                EXPORTING.store(true, Ordering::Relaxed);
                Some(layer)
            }
            Err(e) => {
                eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot export spans: {e}");
                None
            }
        });
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

fn exporter(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Whether spans are exported (OTLP configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes `span` this process's hop of the trace: its parent is `parent` (the caller's
/// `traceparent`) when there is one. Returns the context this hop passes on: the exported
/// span's own ids when spans are exported, else `parent`'s trace with a new span id, else a
/// new trace.
pub fn hop(span: &tracing::Span, parent: Option<&TraceContext>) -> TraceContext {
    if exporting() {
        if let Some(parent) = parent {
            link(span, parent);
        }
        let otel = span.context();
        let sc = otel.span().span_context().clone();
        if sc.is_valid() {
            return TraceContext {
                trace_id: sc.trace_id().to_string(),
                span_id: sc.span_id().to_string(),
                sampled: sc.is_sampled(),
            };
        }
    }
    parent.map_or_else(TraceContext::new_root, TraceContext::child)
}

/// Sets `ctx` as the remote parent of `span`.
fn link(span: &tracing::Span, ctx: &TraceContext) {
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&ctx.trace_id),
        SpanId::from_hex(&ctx.span_id),
    ) else {
        return;
    };
    let flags = if ctx.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    let parent = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(parent);
}
