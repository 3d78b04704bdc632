//! The operator's configuration, read once at startup from the environment the chart sets, each
//! problem naming its variable (the workloads' [`workload_runtime::config`] rules).

use workload_runtime::config::{self, ConfigError, Source};
use workload_runtime::telemetry::TelemetryConfig;

use crate::controller::Scope;
use crate::controller::build::{Access, DependencyImages};

/// The operator's name: its binary, its Events' reporter and its leader Lease.
pub const NAME: &str = "order-pipeline-operator";

/// The namespace the operator runs in (the chart's release namespace, from the downward API).
pub const OPERATOR_NAMESPACE: &str = "OPERATOR_NAMESPACE";
/// The namespaces to watch, comma-separated; empty or unset: every namespace.
pub const WATCH_NAMESPACES: &str = "WATCH_NAMESPACES";
/// The OTLP/HTTP endpoint the workloads of a pipeline whose spec names none export their spans
/// to (the chart's `tracing.otlpEndpoint`, which also sets the operator's own
/// `OTEL_EXPORTER_OTLP_ENDPOINT`); unset: none.
pub const PIPELINE_OTLP_ENDPOINT: &str = "PIPELINE_OTLP_ENDPOINT";
/// The namespace of the Prometheus that scrapes the pipelines, whose pods the NetworkPolicies
/// let in (unset: none).
pub const METRICS_NAMESPACE: &str = "METRICS_NAMESPACE";
/// `false` runs one replica without the leader Lease (the chart's `leaderElection.enabled`).
pub const LEADER_ELECTION_ENABLED: &str = "LEADER_ELECTION_ENABLED";
/// The pod's name (downward API): this replica's identity in the Lease and its Events.
pub const POD_NAME: &str = "POD_NAME";

/// Everything `main` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    pub telemetry: TelemetryConfig,
    pub admin_port: u16,
    pub leader_election: bool,
    /// This replica's name in the Lease and in its Events' reporter.
    pub identity: String,
    pub operator_namespace: String,
    pub scope: Scope,
    /// Where the operator's own children may be reached from, and by whom.
    pub access: Access,
    /// The images new managed dependencies run (the chart's `dependencyImages`).
    pub dependency_images: DependencyImages,
    /// [`PIPELINE_OTLP_ENDPOINT`]; checked per pipeline by the validate step, which reports a
    /// bad one on the resource.
    pub pipeline_otlp_endpoint: Option<String>,
}

impl OperatorConfig {
    /// `process_id` names a replica that runs outside a pod (no `POD_NAME`).
    pub fn from_source(
        source: &impl Source,
        stdout_is_terminal: bool,
        process_id: u32,
    ) -> Result<Self, ConfigError> {
        let telemetry = TelemetryConfig::from_source(source, stdout_is_terminal)?;
        let admin_port = config::admin_port(source)?;
        let leader_election = config::parsed_or(source, LEADER_ELECTION_ENABLED, true)?;
        let identity =
            non_empty(source, POD_NAME).unwrap_or_else(|| format!("{NAME}-{process_id}"));
        let operator_namespace =
            non_empty(source, OPERATOR_NAMESPACE).unwrap_or_else(|| "default".to_owned());
        let scope =
            Scope::parse(&source.get(WATCH_NAMESPACES).unwrap_or_default()).map_err(|problem| {
                ConfigError::Invalid {
                    variable: WATCH_NAMESPACES,
                    problem,
                }
            })?;
        Ok(Self {
            telemetry,
            admin_port,
            leader_election,
            identity,
            access: Access {
                operator_namespace: Some(operator_namespace.clone()),
                metrics_namespace: non_empty(source, METRICS_NAMESPACE),
            },
            operator_namespace,
            scope,
            dependency_images: DependencyImages::from_lookup(|variable| source.get(variable)),
            pipeline_otlp_endpoint: non_empty(source, PIPELINE_OTLP_ENDPOINT),
        })
    }
}

fn non_empty(source: &impl Source, variable: &str) -> Option<String> {
    source
        .get(variable)
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pipeline_contract::env;
    use workload_runtime::telemetry::LogFormat;

    use super::*;

    fn config(pairs: &[(&'static str, &'static str)]) -> Result<OperatorConfig, ConfigError> {
        OperatorConfig::from_source(&BTreeMap::from_iter(pairs.iter().copied()), false, 7)
    }

    #[test]
    fn defaults_fit_one_replica_outside_a_pod() {
        let config = config(&[]).unwrap();
        assert_eq!(config.telemetry.format, LogFormat::Json);
        assert_eq!(config.admin_port, 9090);
        assert!(config.leader_election);
        assert_eq!(config.identity, "order-pipeline-operator-7");
        assert_eq!(config.operator_namespace, "default");
        assert_eq!(config.scope, Scope::Cluster);
        assert_eq!(config.access.metrics_namespace, None);
        assert_eq!(config.dependency_images, DependencyImages::default());
    }

    #[test]
    fn the_charts_variables_are_read() {
        let config = config(&[
            (POD_NAME, "operator-abc"),
            (OPERATOR_NAMESPACE, "ops"),
            (WATCH_NAMESPACES, "shop,shop-staging"),
            (METRICS_NAMESPACE, "monitoring"),
            (LEADER_ELECTION_ENABLED, "false"),
            (env::ADMIN_PORT, "19090"),
            (env::LOG_FORMAT, "text"),
            ("REDIS_IMAGE", "mirror.example/redis:7"),
        ])
        .unwrap();
        assert_eq!(config.identity, "operator-abc");
        assert_eq!(config.operator_namespace, "ops");
        assert_eq!(config.access.operator_namespace.as_deref(), Some("ops"));
        assert_eq!(
            config.scope,
            Scope::Namespaces(vec!["shop".into(), "shop-staging".into()])
        );
        assert_eq!(
            config.access.metrics_namespace.as_deref(),
            Some("monitoring")
        );
        assert!(!config.leader_election);
        assert_eq!(config.admin_port, 19090);
        assert_eq!(config.telemetry.format, LogFormat::Text);
        assert_eq!(
            config
                .dependency_images
                .get(crate::controller::build::Dependency::Redis),
            "mirror.example/redis:7"
        );
    }

    /// A typo is refused at startup with the variable named, as the workloads refuse theirs; the
    /// operator used to log JSON for any `LOG_FORMAT` but "text" and to ignore a bad port.
    #[test]
    fn bad_values_name_their_variable() {
        for (variable, value) in [
            (env::LOG_FORMAT, "xml"),
            (env::LOG_LEVEL, "=["),
            (env::ADMIN_PORT, "http"),
            (LEADER_ELECTION_ENABLED, "no"),
            (WATCH_NAMESPACES, "Shop"),
        ] {
            let error = config(&[(variable, value)]).unwrap_err().to_string();
            assert!(error.contains(variable), "{variable}={value}: {error}");
        }
    }
}
