//! Wiring only: configuration, telemetry, client, metrics, admin listener, leader election.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use order_pipeline_operator::controller::build::{Access, DependencyImages};
use order_pipeline_operator::controller::{Context, Scope};
use order_pipeline_operator::leader::{self, LeaseSettings};
use order_pipeline_operator::metrics::{Metrics, serve_admin};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

const NAME: &str = "order-pipeline-operator";

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().any(|arg| arg == "--version") {
        println!("{NAME} {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let json = std::env::var("LOG_FORMAT")
        .map(|f| f == "json")
        .unwrap_or(true);
    let filter = tracing_subscriber::EnvFilter::try_new(
        std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into()),
    )
    .context("invalid LOG_LEVEL")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        // The reconcile span's fields (pipeline, namespace, generation) on every line.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    #[cfg(unix)]
    {
        let signal = shutdown.clone();
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            terminate.recv().await;
            signal.cancel();
        });
    }

    let client = Client::try_default()
        .await
        .context("failed to configure the Kubernetes client")?;
    let mut registry = Registry::with_prefix("orderpipeline_operator");
    let metrics = Arc::new(Metrics::register(&mut registry));
    let ready = Arc::new(AtomicBool::new(false));
    let admin_port = std::env::var("ADMIN_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9090);
    let admin = serve_admin(
        admin_port,
        Arc::new(registry),
        ready.clone(),
        shutdown.clone(),
    )
    .await
    .context("failed to bind the admin port")?;
    let admin = tokio::spawn(admin);

    client
        .apiserver_version()
        .await
        .context("cannot reach the Kubernetes API server")?;
    ready.store(true, Ordering::Relaxed);

    let identity =
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("{NAME}-{}", std::process::id()));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: NAME.into(),
            instance: Some(identity.clone()),
        },
    );
    // Once, at startup: the images new managed dependencies run (the chart's dependencyImages).
    let dependency_images = DependencyImages::from_env();
    tracing::info!(?dependency_images, "default images of managed dependencies");
    let operator_namespace =
        std::env::var("OPERATOR_NAMESPACE").unwrap_or_else(|_| "default".into());
    let scope = Scope::parse(&std::env::var("WATCH_NAMESPACES").unwrap_or_default())
        .map_err(|problem| anyhow::anyhow!("WATCH_NAMESPACES is invalid: {problem}"))?;
    tracing::info!(?scope, "watching OrderPipelines");
    let context = Arc::new(
        Context::new(client, recorder, metrics, env!("CARGO_PKG_VERSION"))
            .with_dependency_images(dependency_images)
            .with_access(Access {
                operator_namespace: Some(operator_namespace.clone()),
                metrics_namespace: std::env::var("METRICS_NAMESPACE")
                    .ok()
                    .filter(|namespace| !namespace.trim().is_empty()),
            })
            .with_scope(scope),
    );
    let lease = LeaseSettings {
        name: NAME.into(),
        namespace: operator_namespace,
        identity,
        duration_seconds: 15,
        grace_seconds: 5,
    };
    // One replica may run without a lease (the chart's leaderElection.enabled=false).
    let elect = std::env::var("LEADER_ELECTION_ENABLED").map_or(true, |value| value != "false");
    if elect {
        leader::run(context, lease, shutdown.clone()).await?;
    } else {
        context.metrics.leader.set(1);
        order_pipeline_operator::controller::run(context, shutdown.clone().cancelled_owned()).await;
    }
    shutdown.cancel();
    let _ = admin.await;
    tracing::info!("operator stopped");
    Ok(())
}
