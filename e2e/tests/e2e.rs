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

use anyhow::{Context, Result};
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

    scale_processor_and_back(&cluster).await
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
