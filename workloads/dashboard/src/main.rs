//! Wiring only: configuration, telemetry, metrics, the admin and business listeners, shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use dashboard::config::DashboardConfig;
use dashboard::{Metrics, REDIS_CHECK, connect};
use prometheus_client::registry::Registry;
use workload_runtime::admin::{self, Readiness};
use workload_runtime::config::ProcessEnv;
use workload_runtime::shutdown::Shutdown;
use workload_runtime::telemetry;

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().any(|arg| arg == "--version") {
        println!("dashboard {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let telemetry = telemetry::init(&telemetry::from_env()?, "dashboard")?;
    let outcome = serve_until_shutdown().await;
    // After every task ended, so the spans of the last orders are exported too.
    telemetry.shutdown().await;
    outcome
}

async fn serve_until_shutdown() -> Result<()> {
    let config = DashboardConfig::from_source(&ProcessEnv).context("invalid configuration")?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();

    let mut registry = Registry::with_prefix("dashboard");
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::new();
    // Ready only once the business port is bound: the dependency checks can pass before it is,
    // and a Service (or `cargo xtask run`) must not send traffic to a closed port.
    let http_ready = readiness.check("http");
    let redis_ready = readiness.check(REDIS_CHECK);
    admin::start(config.admin_port, registry, &readiness, &shutdown)
        .await
        .context("failed to bind the admin port")?;

    let http_port = config.http_port;
    let http_limits = config.http;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], http_port)))
        .await
        .with_context(|| format!("failed to bind port {http_port}"))?;
    let Some(state) = connect(&config, metrics, redis_ready, &shutdown).await else {
        shutdown.wait_for_tasks(Duration::from_secs(5)).await;
        return Ok(());
    };
    tracing::info!(port = http_port, "dashboard listening");
    http_ready.set(true);
    dashboard::serve(listener, state, http_limits, &shutdown)
        .await
        .context("HTTP server failed")?;

    // In-flight requests have finished; now stop the readiness watcher and the admin server.
    shutdown.trigger();
    shutdown.wait_for_tasks(Duration::from_secs(10)).await;
    tracing::info!("dashboard stopped");
    Ok(())
}
