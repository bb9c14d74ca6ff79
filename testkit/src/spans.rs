//! A `tracing` layer that records every span opened with a `trace_id` field, so that a
//! test can check which processes' spans joined one trace (the in-process ingress and
//! consumer of a [`crate::Pipeline`] log through the test binary's subscriber).

use std::fmt;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Spans recorded (name, trace id), bounded so a long test binary cannot grow it forever.
static SPANS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
const MAX_SPANS: usize = 200_000;

/// The names of the spans opened so far with this trace id.
pub fn spans_of(trace_id: &str) -> Vec<String> {
    let spans = SPANS.lock().unwrap_or_else(|p| p.into_inner());
    spans
        .iter()
        .filter(|(_, t)| t == trace_id)
        .map(|(n, _)| n.clone())
        .collect()
}

/// The layer; [`crate::init_logs`] installs it behind [`only_spans`].
pub struct SpanRecorder;

/// Its per-layer filter: spans of INFO and above (a filter of its own, so that it neither
/// hides the logs nor makes debug events be built).
pub fn only_spans(meta: &Metadata<'_>) -> bool {
    meta.is_span() && *meta.level() <= Level::INFO
}

struct TraceField(Option<String>);

impl Visit for TraceField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "trace_id" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "trace_id" {
            // `%value` fields arrive as Display wrapped in Debug: no quotes.
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: Subscriber> Layer<S> for SpanRecorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut field = TraceField(None);
        attrs.record(&mut field);
        if let Some(trace) = field.0 {
            let mut spans = SPANS.lock().unwrap_or_else(|p| p.into_inner());
            if spans.len() < MAX_SPANS {
                spans.push((attrs.metadata().name().to_owned(), trace));
            }
        }
    }
}
