//! The cluster e2e suite: an `OrderPipeline` already applied and Ready on a cluster that runs
//! containers (kind from `e2e/kind-up.sh`, or any cluster), named by
//!
//! - `E2E_KUBECONFIG`: the cluster's kubeconfig (current context). Required: without it the
//!   suite prints why and returns; it never falls back to `~/.kube/config` or the project's
//!   kwok environment;
//! - `E2E_NAMESPACE` (default `default`) and `E2E_PIPELINE` (default `shop`, the sample's name).
//!
//! It checks that the pipeline is Ready for its current generation, follows the seed README's
//! walkthrough through port-forwards to the gateway's and dashboard's Services (with its own
//! account and order id, so reruns on the same cluster work), then scales the processor through
//! the resource and back. Needs rights to read the pipeline, Services, Pods and Deployments, to
//! port-forward to and exec in Pods, and to patch the pipeline.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use pipeline_contract::topology;
use pipeline_e2e::cluster::{Cluster, ClusterConfig, SKIP_MESSAGE};
use pipeline_e2e::flow::{self, Endpoints, Walkthrough};

/// How long a scale step may take: a new pod on a cluster may pull its image first.
const SCALE_TIMEOUT: Duration = Duration::from_secs(300);

// Ignored by default, so `cargo test --workspace` reports it as not run rather than as passed;
// `e2e/kind-up.sh` runs it with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set E2E_KUBECONFIG (e2e/kind-up.sh does, with Docker)"]
async fn the_seed_walkthrough_and_scaling_work_on_a_cluster() -> Result<()> {
    let Some(config) = ClusterConfig::from_env() else {
        println!("{SKIP_MESSAGE}");
        return Ok(());
    };
    println!(
        "cluster e2e: orderpipeline/{} in namespace {} via {}",
        config.pipeline,
        config.namespace,
        config.kubeconfig.display()
    );
    let cluster = Cluster::connect(&config).await?;
    let pipeline = cluster
        .wait_ready(Duration::from_secs(120))
        .await
        .context("the pipeline must be applied and Ready before the suite runs")?;
    println!(
        "  ok  Ready=True for generation {:?}",
        pipeline.metadata.generation
    );

    let gateway = cluster.forward_service("gateway").await?;
    let dashboard = cluster.forward_service("dashboard").await?;
    println!(
        "  gateway pod {} at {}, dashboard pod {} at {}",
        gateway.pod,
        gateway.url(),
        dashboard.pod,
        dashboard.url()
    );
    let inventory = cluster.redis_inventory().await?;
    let walkthrough = Walkthrough::unique();
    println!(
        "  walkthrough as {} with order {}",
        walkthrough.email, walkthrough.order_id
    );
    flow::run(
        &Endpoints::new(gateway.url(), dashboard.url()),
        &inventory,
        &walkthrough,
        flow::DEFAULT_DEADLINE,
    )
    .await
    .context("the seed walkthrough through port-forwards")?;
    dashboard_shows_the_queues(&dashboard.local.to_string())
        .await
        .context("the dashboard's live page shows the queues")?;

    scale_processor_and_back(&cluster).await
}

/// The dashboard's live snapshot (its WebSocket, through the port-forward) shows each work queue
/// with its consumers and dead letters, read from the managed RabbitMQ as the dashboard's own
/// user.
async fn dashboard_shows_the_queues(dashboard: &str) -> Result<()> {
    use futures::StreamExt;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{dashboard}/live"))
        .await
        .context("opening the dashboard's /live")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no snapshot showing both queues consumed within 60s")?
            .context("the socket closed")??;
        let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
            continue;
        };
        let snapshot: serde_json::Value = serde_json::from_str(&text)?;
        let Some(queues) = snapshot["queues"].as_array() else {
            continue;
        };
        let consumed = |queue: &serde_json::Value| {
            queue["consumers"]
                .as_u64()
                .is_some_and(|consumers| consumers >= 1)
                && queue["ready"].is_u64()
                && queue["dead_letters"].is_u64()
        };
        if queues.len() == 2 && queues.iter().all(consumed) {
            println!(
                "  ok  the dashboard shows the queues: {}",
                snapshot["queues"]
            );
            return Ok(());
        }
    }
}

/// Scales the processor to 2 (3 if it already runs 2) and back, restoring the original count
/// even when the first step fails.
async fn scale_processor_and_back(cluster: &Cluster) -> Result<()> {
    let pipeline = cluster.pipeline().await?;
    anyhow::ensure!(
        pipeline.spec.processor.autoscaling.is_none(),
        "spec.processor.autoscaling is set, so the autoscaler owns the processor's replicas; \
         run the suite against a pipeline without it (as samples/orderpipeline.yaml)"
    );
    let original = pipeline.spec.processor.workload.replicas;
    let target = if original == 2 { 3 } else { 2 };
    let scaled = cluster.scale_processor(target, SCALE_TIMEOUT).await;
    if scaled.is_ok() {
        println!("  ok  processor scaled {original} -> {target}: status and Deployment follow");
    }
    let restored = cluster.scale_processor(original, SCALE_TIMEOUT).await;
    scaled.with_context(|| format!("scaling the processor to {target}"))?;
    restored.with_context(|| format!("scaling the processor back to {original}"))?;
    println!("  ok  processor scaled back to {original}");
    Ok(())
}

/// One credential per workload on the managed dependencies: the operator made each workload's
/// RabbitMQ user (definitions imported at boot) and Redis ACL user (the ACL file), and the
/// pipeline ran the walkthrough with them above. Here, through port-forwards to the dependency
/// pods and with the passwords from the generated Secrets, each user is refused what it does not
/// use: the dashboard writing or flushing Redis, the gateway touching stock, the notifier
/// publishing the `order.created` events it trusts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set E2E_KUBECONFIG (e2e/kind-up.sh does, with Docker)"]
async fn each_workload_logs_in_to_the_managed_dependencies_with_only_its_grants() -> Result<()> {
    let Some(config) = ClusterConfig::from_env() else {
        println!("{SKIP_MESSAGE}");
        return Ok(());
    };
    let cluster = Cluster::connect(&config).await?;
    let pipeline = cluster.pipeline().await?;
    if pipeline.spec.redis.managed.is_none() || pipeline.spec.rabbitmq.managed.is_none() {
        println!("  skipped: the pipeline's Redis or RabbitMQ is external");
        return Ok(());
    }
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(cluster.client(), cluster.namespace());
    let password = |secret: &str, workload: &str| {
        let secrets = secrets.clone();
        let (secret, key) = (cluster.child(secret), format!("{workload}-password"));
        async move {
            let data = secrets.get(&secret).await?.data.unwrap_or_default();
            let value = data
                .get(&key)
                .with_context(|| format!("secret/{secret} has no key {key}"))?;
            anyhow::Ok(String::from_utf8(value.0.clone())?)
        }
    };

    let redis = cluster
        .forward_pod(&format!("{}-0", cluster.child("redis")), 6379)
        .await?;
    let redis_as = |workload: &'static str, command: Vec<&'static str>| {
        let password = password("redis-credentials", workload);
        let local = redis.local;
        async move {
            let url = format!("redis://{workload}:{}@{local}", password.await?);
            let mut connection = redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("{workload} cannot log in to Redis"))?;
            let mut cmd = redis::cmd(command[0]);
            for arg in &command[1..] {
                cmd.arg(*arg);
            }
            anyhow::Ok(
                cmd.exec_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string()),
            )
        }
    };
    redis_as("dashboard", vec!["GET", "orders.processed.count"])
        .await?
        .map_err(anyhow::Error::msg)
        .context("the dashboard reads the processed count")?;
    let mut refusals = 0;
    for (workload, command) in [
        ("dashboard", vec!["FLUSHALL"]),
        ("dashboard", vec!["SET", "inventory:e2e-grants", "1000"]),
        ("gateway", vec!["SET", "inventory:e2e-grants", "1000"]),
        ("notifier", vec!["INCR", "orders.processed.count"]),
    ] {
        let what = format!("{workload} {}", command.join(" "));
        match redis_as(workload, command).await? {
            Ok(()) => bail!("{what}: allowed"),
            Err(error) if error.contains("NoPerm") => {
                println!("  ok  {what}: refused ({error})");
                refusals += 1;
            }
            Err(error) => bail!("{what}: failed, but not by the ACL: {error}"),
        }
    }

    let rabbitmq = cluster
        .forward_pod(&format!("{}-0", cluster.child("rabbitmq")), 5672)
        .await?;
    for workload in ["notifier", "gateway", "dashboard"] {
        let url = format!(
            "amqp://{workload}:{}@{}/%2f",
            password("rabbitmq-credentials", workload).await?,
            rabbitmq.local
        );
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .with_context(|| format!("{workload} cannot log in to RabbitMQ"))?;
        let published = testenv::access::publish_confirmed(
            &connection,
            topology::EVENTS_EXCHANGE,
            topology::ORDER_CREATED,
            br#"{"forged":true}"#,
        )
        .await;
        let _ = connection.close(200, "done".into()).await;
        match published {
            Ok(()) => bail!("{workload} published an order.created: allowed"),
            Err(error) if error.contains("ACCESS_REFUSED") => {
                println!("  ok  {workload} publishing order.created: refused");
                refusals += 1;
            }
            Err(error) => bail!("{workload} publishing failed, but not by permissions: {error}"),
        }
    }
    println!("  {refusals} refusals, each by the server's own ACL or permissions");
    Ok(())
}
