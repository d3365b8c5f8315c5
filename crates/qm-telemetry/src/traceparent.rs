//! The W3C trace context as a `traceparent` string, to put in envelopes and HTTP headers and to
//! continue on the other side.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const HEADER: &str = "traceparent";

/// The current span's context, or `None` when there is no sampled trace (telemetry not set up).
pub fn current() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(HEADER)
}

/// Makes `span` a child of the remote span named by `traceparent`, then records its trace and
/// span ids in its `trace_id` and `span_id` fields (when it declares them), so that every log
/// line inside it names its trace. Malformed values are ignored: a bad header from a client
/// must not fail its request.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let carrier = HashMap::from([(HEADER.to_owned(), traceparent.to_owned())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        if context.span().span_context().is_valid() {
            let _ = span.set_parent(context);
        }
    }
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_subscriber_there_is_no_traceparent() {
        assert_eq!(current(), None);
    }

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        continue_from(&tracing::Span::none(), Some("not-a-traceparent"));
    }
}
