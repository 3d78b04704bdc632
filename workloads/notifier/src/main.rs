//! Wiring only: configuration, telemetry, metrics, the admin listener, the consumer, shutdown.

use std::time::Duration;

use anyhow::{Context, Result};
use notifier::{Metrics, NotifierConfig, build_sink, run};
use prometheus_client::registry::Registry;
use workload_runtime::admin::{self, Readiness};
use workload_runtime::config::ProcessEnv;
use workload_runtime::dead_letters;
use workload_runtime::shutdown::Shutdown;
use workload_runtime::telemetry;

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().any(|arg| arg == "--version") {
        println!("notifier {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    // `notifier dead-letters list|redrive`: see workload_runtime::dead_letters.
    if let Some(result) =
        dead_letters::run_if_asked(pipeline_contract::topology::NOTIFIER_QUEUE).await
    {
        return result.map_err(anyhow::Error::msg);
    }
    let telemetry = telemetry::init(&telemetry::from_env()?, "notifier")?;
    let outcome = serve_until_shutdown().await;
    // After every task ended, so the spans of the last orders are exported too.
    telemetry.shutdown().await;
    outcome
}

async fn serve_until_shutdown() -> Result<()> {
    let config = NotifierConfig::from_source(&ProcessEnv).context("invalid configuration")?;
    let sink = build_sink(&config.sink).context("invalid notification sink")?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();

    let mut registry = Registry::with_prefix("notifier");
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::new();
    admin::start(config.admin_port, registry, &readiness, &shutdown)
        .await
        .context("failed to bind the admin port")?;

    run(config, sink, metrics, &readiness, &shutdown).await;

    // Only now close the broker connection the in-flight notifications' acks went through.
    shutdown.wait_for_tasks(Duration::from_secs(20)).await;
    tracing::info!("notifier stopped");
    Ok(())
}
