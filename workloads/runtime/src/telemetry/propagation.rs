//! Carrying the trace context (W3C `traceparent`, `tracestate`) across process boundaries: HTTP
//! request headers and AMQP message headers.
//!
//! Injection writes the current `tracing` span's context; extraction gives the context a new span
//! is parented to with [`adopt`]. While traces are off the global propagator is OpenTelemetry's
//! no-op one, so both write and read nothing.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Writes the current span's trace context into HTTP headers (an outgoing request).
pub fn inject_http(headers: &mut axum::http::HeaderMap) {
    inject(&mut opentelemetry_http::HeaderInjector(headers));
}

/// The trace context an incoming HTTP request carries (empty when it carries none).
pub fn extract_http(headers: &axum::http::HeaderMap) -> Context {
    extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// Makes `span` a child of the remote `parent` (a no-op when `parent` is empty or traces are
/// off). Call it before the span is first entered.
pub fn adopt(span: &tracing::Span, parent: Context) {
    use opentelemetry::trace::TraceContextExt as _;
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started: then it stays a root.
        let _ = span.set_parent(parent);
    }
}

fn inject(injector: &mut dyn Injector) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, injector);
    });
}

fn extract(extractor: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(extractor))
}

/// The AMQP side: a message's headers table as the carrier.
#[cfg(feature = "drivers")]
pub mod amqp {
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use opentelemetry::Context;
    use opentelemetry::propagation::{Extractor, Injector};

    /// Writes the current span's trace context into a message's headers.
    pub fn inject(headers: &mut FieldTable) {
        super::inject(&mut TableInjector(headers));
    }

    /// The trace context a delivered message carries (empty when it carries none).
    pub fn extract(headers: Option<&FieldTable>) -> Context {
        match headers {
            Some(headers) => super::extract(&TableExtractor(headers)),
            None => Context::new(),
        }
    }

    struct TableInjector<'a>(&'a mut FieldTable);

    impl Injector for TableInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(
                ShortString::from(key.to_owned()),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
    }

    struct TableExtractor<'a>(&'a FieldTable);

    impl Extractor for TableExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match self.0.inner().get(key)? {
                AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
                AMQPValue::ShortString(value) => Some(value.as_str()),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            self.0.inner().keys().map(ShortString::as_str).collect()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn headers_written_by_the_injector_read_back_through_the_extractor() {
            let mut table = FieldTable::default();
            TableInjector(&mut table).set("traceparent", "00-abc-def-01".to_owned());
            table.insert(
                ShortString::from("tracestate"),
                AMQPValue::ShortString(ShortString::from("k=v")),
            );
            table.insert(ShortString::from("x-count"), AMQPValue::LongInt(3));
            let extractor = TableExtractor(&table);
            assert_eq!(extractor.get("traceparent"), Some("00-abc-def-01"));
            assert_eq!(extractor.get("tracestate"), Some("k=v"));
            assert_eq!(extractor.get("x-count"), None, "not a string");
            assert_eq!(extractor.get("absent"), None);
        }
    }
}
