//! Wiring only: configuration, telemetry, client, metrics, admin listener, leader election.
//! The configuration rules, the log format, the admin routes and the signal handling are the
//! workloads' own (`workload-runtime`).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use order_pipeline_operator::config::{NAME, OperatorConfig};
use order_pipeline_operator::controller::Context;
use order_pipeline_operator::leader::{self, LeaseSettings};
use order_pipeline_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use workload_runtime::admin::{self, Readiness};
use workload_runtime::config::ProcessEnv;
use workload_runtime::shutdown::Shutdown;
use workload_runtime::telemetry;

/// How long the admin listener may take to close once the controller stopped.
const ADMIN_GRACE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().any(|arg| arg == "--version") {
        println!("{NAME} {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let config = OperatorConfig::from_source(
        &ProcessEnv,
        std::io::stdout().is_terminal(),
        std::process::id(),
    )
    .context("invalid configuration")?;
    let telemetry = telemetry::init(&config.telemetry, NAME)?;
    let outcome = serve_until_shutdown(config).await;
    // After the controller stopped, so the last reconciles' spans are exported too.
    telemetry.shutdown().await;
    outcome
}

async fn serve_until_shutdown(config: OperatorConfig) -> Result<()> {
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();

    let client = Client::try_default()
        .await
        .context("failed to configure the Kubernetes client")?;
    let mut registry = Registry::with_prefix(order_pipeline_operator::metrics::PREFIX);
    let metrics = Arc::new(Metrics::register(&mut registry));
    // Ready once the API server answered; a standby replica is ready too (it is healthy, only
    // not leading).
    let readiness = Readiness::new();
    let api_server = readiness.check("kubernetes-api");
    admin::start(config.admin_port, registry, &readiness, &shutdown)
        .await
        .context("failed to bind the admin port")?;
    client
        .apiserver_version()
        .await
        .context("cannot reach the Kubernetes API server")?;
    api_server.set(true);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: NAME.into(),
            instance: Some(config.identity.clone()),
        },
    );
    tracing::info!(
        dependency_images = ?config.dependency_images,
        scope = ?config.scope,
        "watching OrderPipelines"
    );
    let context = Arc::new(
        Context::new(client, recorder, metrics, env!("CARGO_PKG_VERSION"))
            .with_dependency_images(config.dependency_images)
            .with_access(config.access)
            .with_default_otlp_endpoint(config.pipeline_otlp_endpoint)
            .with_scope(config.scope),
    );
    if config.leader_election {
        let lease = LeaseSettings {
            name: NAME.into(),
            namespace: config.operator_namespace,
            identity: config.identity,
            duration_seconds: 15,
            grace_seconds: 5,
        };
        leader::run(context, lease, shutdown.token()).await?;
    } else {
        // One replica may run without a lease (the chart's leaderElection.enabled=false).
        context.metrics.leader.set(1);
        order_pipeline_operator::controller::run(context, shutdown.token().cancelled_owned()).await;
    }
    shutdown.wait_for_tasks(ADMIN_GRACE).await;
    tracing::info!("operator stopped");
    Ok(())
}
