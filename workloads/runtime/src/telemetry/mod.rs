//! Logs and traces with `tracing`, the same for every workload and the operator.
//!
//! Logs are JSON lines when stdout is not a terminal (in a pod, where a log collector parses
//! them), human-readable text on a terminal. Traces are OpenTelemetry spans exported over
//! OTLP/HTTP when the standard `OTEL_*` variables ask for it ([`TraceExport`]); then every JSON
//! line inside a span also carries its `openTelemetry.traceId` and `spanId`, so a log line leads
//! to its trace. With no endpoint set nothing is exported and no exporter, propagator or
//! OpenTelemetry layer is installed: tracing costs what plain `tracing` costs.
//!
//! [`propagation`] carries the W3C `traceparent` across HTTP requests and AMQP messages, which is
//! what makes one order one trace across the four workloads.

mod export;
pub mod propagation;

use std::io::IsTerminal;

use pipeline_contract::env;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{ConfigError, Source};

pub use export::{TelemetryError, TraceExport};

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Log and trace settings: `LOG_FORMAT`, `LOG_LEVEL` and OpenTelemetry's `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    /// A `tracing` filter; it selects the spans that are exported too.
    pub filter: String,
    /// Where traces go; `None` when they are off.
    pub traces: Option<TraceExport>,
}

impl TelemetryConfig {
    pub fn from_source(
        source: &impl Source,
        stdout_is_terminal: bool,
    ) -> Result<Self, ConfigError> {
        let format = match source.get(env::LOG_FORMAT).as_deref().map(str::trim) {
            None | Some("") => {
                if stdout_is_terminal {
                    LogFormat::Text
                } else {
                    LogFormat::Json
                }
            }
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: env::LOG_FORMAT,
                    problem: format!("{other:?} is neither \"json\" nor \"text\""),
                });
            }
        };
        let filter = source
            .get(env::LOG_LEVEL)
            .filter(|value| !value.trim().is_empty())
            .unwrap_or_else(|| "info".to_owned());
        EnvFilter::try_new(&filter).map_err(|error| ConfigError::Invalid {
            variable: env::LOG_LEVEL,
            problem: format!("{filter:?}: {error}"),
        })?;
        let traces = TraceExport::from_source(source)?;
        Ok(Self {
            format,
            filter,
            traces,
        })
    }
}

/// Middleware making every routed request a server span, the child of the caller's span when the
/// request carries a `traceparent`. Route it with `route_layer` so the span is named by the
/// route template (`POST /orders`), never by a path holding an id.
pub async fn trace_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    propagation::adopt(&span, propagation::extract_http(request.headers()));
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    // As the HTTP semantic conventions say for a server: only its own failures are errors.
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// Reads the telemetry configuration from the process environment.
pub fn from_env() -> Result<TelemetryConfig, ConfigError> {
    TelemetryConfig::from_source(&crate::config::ProcessEnv, std::io::stdout().is_terminal())
}

/// What [`init`] installed. Keep it until the end of `main` and call [`Telemetry::shutdown`]
/// there: spans are exported in batches, and the last batch is sent only by the shutdown.
#[derive(Debug)]
#[must_use = "call shutdown() at the end of main, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans not exported yet and stops the exporter. It blocks while the last batch is
    /// posted (bounded by the exporter's timeout), so it runs off the async worker threads.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("failed to export the last spans: {error}"),
            Err(error) => eprintln!("the span exporter's shutdown did not finish: {error}"),
        }
    }
}

/// Installs the global subscriber (and, when traces are on, the exporter and the W3C trace
/// context propagator). Call once, first thing in `main`, inside the Tokio runtime: the exporter
/// posts its batches through it. `service` is the default `service.name`; `OTEL_SERVICE_NAME`
/// overrides it.
pub fn init(config: &TelemetryConfig, service: &'static str) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = config
        .traces
        .as_ref()
        .map(|traces| traces.provider(service))
        .transpose()?;
    let otel_layer = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            // Source locations and thread names would be on every span; the logs have them.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            // Busy and idle times as attributes of every span: noise next to its duration.
            .with_tracked_inactivity(false)
    });
    let log_layer = match config.format {
        LogFormat::Json => {
            let mut layer = json_subscriber::layer()
                .flatten_event(true)
                // The innermost span's fields (the delivery's queue and message id) on every line.
                .with_current_span(true)
                .with_span_list(false)
                .with_target(true);
            if provider.is_some() {
                layer = layer.with_opentelemetry_ids(true);
            }
            layer.boxed()
        }
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(true).boxed(),
    };
    // `try_init` so a second call (tests) is harmless rather than a panic; the first
    // subscriber stays, and a provider built for the second one is not installed.
    let installed = tracing_subscriber::registry()
        .with(otel_layer)
        .with(log_layer)
        .with(filter)
        .try_init()
        .is_ok();
    let provider = provider.filter(|_| installed);
    if let (Some(_), Some(traces)) = (&provider, &config.traces) {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing::info!(endpoint = %traces, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn format_defaults_follow_the_terminal() {
        let empty: BTreeMap<&str, &str> = BTreeMap::new();
        assert_eq!(
            TelemetryConfig::from_source(&empty, true).unwrap().format,
            LogFormat::Text
        );
        let piped = TelemetryConfig::from_source(&empty, false).unwrap();
        assert_eq!(piped.format, LogFormat::Json);
        assert_eq!(piped.filter, "info");
        assert_eq!(
            piped.traces, None,
            "traces are off unless an endpoint is set"
        );
    }

    #[test]
    fn explicit_settings_win_and_bad_ones_are_named() {
        let source = BTreeMap::from([
            (env::LOG_FORMAT, "text"),
            (env::LOG_LEVEL, "gateway=debug,info"),
        ]);
        let config = TelemetryConfig::from_source(&source, false).unwrap();
        assert_eq!(config.format, LogFormat::Text);
        assert_eq!(config.filter, "gateway=debug,info");

        let bad = BTreeMap::from([(env::LOG_FORMAT, "xml")]);
        let error = TelemetryConfig::from_source(&bad, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("LOG_FORMAT"), "{error}");

        let bad_level = BTreeMap::from([(env::LOG_LEVEL, "=[")]);
        let error = TelemetryConfig::from_source(&bad_level, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("LOG_LEVEL"), "{error}");
    }
}
