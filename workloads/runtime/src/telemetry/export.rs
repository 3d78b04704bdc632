//! The OTLP/HTTP span exporter, configured by OpenTelemetry's standard variables.
//!
//! Only what this build can honour is accepted, and anything else is refused at start with the
//! variable's name rather than dropped silently: the `http/protobuf` protocol (no gRPC stack is
//! linked) to a plain `http://` endpoint (the images have no CA bundle, so the receiver is a
//! collector in the cluster or on the host). The exporter itself reads the rest of the standard
//! variables (`OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_RESOURCE_ATTRIBUTES`), so they mean what the specification says. Header values (often
//! an API key) are never logged.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use pipeline_contract::env;

use crate::config::{ConfigError, Source};

const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// The one protocol this build speaks.
const HTTP_PROTOBUF: &str = "http/protobuf";
/// How long one batch's POST may take (the specification's default for
/// `OTEL_EXPORTER_OTLP_TIMEOUT`, which the exporter applies on top).
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where traces are exported: set when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is, unless `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceExport {
    /// The endpoint without user information, for the start-up log line.
    shown: String,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("failed to build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

impl TraceExport {
    /// `None` when traces are off; an error names the variable that asks for what this build
    /// cannot do.
    pub fn from_source(source: &impl Source) -> Result<Option<Self>, ConfigError> {
        let value = |variable: &str| {
            source
                .get(variable)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        if value(OTEL_SDK_DISABLED).is_some_and(|value| value.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match value(OTEL_TRACES_EXPORTER).as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: OTEL_TRACES_EXPORTER,
                    problem: format!("{other:?}: only \"otlp\" and \"none\" are supported"),
                });
            }
        }
        let Some((variable, endpoint)) = [
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            env::OTEL_EXPORTER_OTLP_ENDPOINT,
        ]
        .into_iter()
        .find_map(|variable| value(variable).map(|endpoint| (variable, endpoint))) else {
            return Ok(None);
        };
        for protocol_variable in [
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            OTEL_EXPORTER_OTLP_PROTOCOL,
        ] {
            if let Some(protocol) = value(protocol_variable)
                && protocol != HTTP_PROTOBUF
            {
                return Err(ConfigError::Invalid {
                    variable: protocol_variable,
                    problem: format!("{protocol:?}: only {HTTP_PROTOBUF:?} is supported"),
                });
            }
        }
        let invalid = |problem: String| ConfigError::Invalid { variable, problem };
        let mut url =
            url::Url::parse(&endpoint).map_err(|error| invalid(format!("not a URL ({error})")))?;
        if url.scheme() != "http" {
            return Err(invalid(format!(
                "scheme {:?}: only http:// is supported (the images carry no CA certificates; \
                 export to a collector inside the cluster)",
                url.scheme()
            )));
        }
        if url.host_str().is_none() {
            return Err(invalid("the URL has no host".to_owned()));
        }
        // Neither can fail for an http URL with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Some(Self {
            shown: url.to_string(),
        }))
    }

    /// A tracer provider exporting in batches through the current Tokio runtime.
    pub(super) fn provider(
        &self,
        service: &'static str,
    ) -> Result<SdkTracerProvider, TelemetryError> {
        let client = RuntimeHttpClient {
            client: Arc::new(HyperClient::with_default_connector(POST_TIMEOUT, None)),
            runtime: tokio::runtime::Handle::current(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(client)
            .build()?;
        // The SDK's default resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the
        // workload's own name stands in only when neither names the service.
        let mut resource = Resource::builder();
        let named_by_environment = std::env::var(env::OTEL_SERVICE_NAME)
            .is_ok_and(|name| !name.trim().is_empty())
            || std::env::var(env::OTEL_RESOURCE_ATTRIBUTES)
                .is_ok_and(|attributes| attributes.contains("service.name="));
        if !named_by_environment {
            resource = resource.with_service_name(service);
        }
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build())
    }
}

impl fmt::Display for TraceExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The batch processor exports from a thread of its own, outside any Tokio runtime, while hyper's
/// client needs one: each POST is run as a task on the runtime that [`super::init`] was called in.
#[derive(Debug)]
struct RuntimeHttpClient {
    client: Arc<HyperClient>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = Arc::clone(&self.client);
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn export(pairs: &[(&str, &str)]) -> Result<Option<TraceExport>, ConfigError> {
        let source: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        TraceExport::from_source(&source)
    }

    #[test]
    fn off_unless_an_endpoint_is_set_and_the_sdk_is_not_disabled() {
        assert_eq!(export(&[]).unwrap(), None);
        assert_eq!(
            export(&[(env::OTEL_EXPORTER_OTLP_ENDPOINT, "  ")]).unwrap(),
            None
        );
        let endpoint = (env::OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318");
        assert!(export(&[endpoint]).unwrap().is_some());
        assert_eq!(
            export(&[endpoint, (OTEL_SDK_DISABLED, "TRUE")]).unwrap(),
            None
        );
        assert_eq!(
            export(&[endpoint, (OTEL_TRACES_EXPORTER, "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn the_traces_endpoint_wins_and_credentials_are_never_shown() {
        let shown = export(&[
            (env::OTEL_EXPORTER_OTLP_ENDPOINT, "http://general:4318"),
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "http://user:secret@traces:4318/v1/traces",
            ),
        ])
        .unwrap()
        .unwrap()
        .to_string();
        assert_eq!(shown, "http://traces:4318/v1/traces");
    }

    #[test]
    fn what_this_build_cannot_do_is_refused_with_the_variable_named() {
        let endpoint = (env::OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318");
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[(env::OTEL_EXPORTER_OTLP_ENDPOINT, "https://collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                &[(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "collector:4318")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                &[endpoint, (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                &[endpoint, (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/json")],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ),
            (
                &[endpoint, (OTEL_TRACES_EXPORTER, "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
        ];
        for (pairs, variable) in cases {
            let error = export(pairs).unwrap_err().to_string();
            assert!(error.contains(variable), "{pairs:?}: {error}");
        }
        assert!(
            export(&[endpoint, (OTEL_EXPORTER_OTLP_PROTOCOL, HTTP_PROTOBUF)])
                .unwrap()
                .is_some()
        );
    }
}
