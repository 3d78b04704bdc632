//! Leader election on a `coordination.k8s.io` Lease: every replica runs, only the holder of the
//! lease reconciles. When it loses the lease (or is stopped) its controller shuts down gracefully,
//! and another replica's controller starts with a fresh list of every pipeline.

use std::sync::Arc;

use futures::FutureExt;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Context};

/// The lease: its name, namespace, this replica's identity, and timings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a lease lives without renewal.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews.
    pub grace_seconds: u64,
}

/// Runs the controller whenever this replica holds the lease, until `shutdown`.
pub async fn run(
    context: Arc<Context>,
    lease: LeaseSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let manager = LeaseManagerBuilder::new(context.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = leading.wait_for(|leader| *leader) => {
                if changed.is_err() {
                    anyhow::bail!("the lease manager stopped");
                }
            }
        }
        tracing::info!(identity = %lease.identity, "acquired the leader lease; reconciling");
        context.metrics.leader.set(1);
        let stop = CancellationToken::new();
        let (mut lost, stop_on_loss, stop_on_shutdown) =
            (leading.clone(), stop.clone(), shutdown.clone());
        let supervisor = tokio::spawn(async move {
            tokio::select! {
                _ = lost.wait_for(|leader| !*leader) => tracing::warn!("lost the leader lease; stopping the controller"),
                () = stop_on_shutdown.cancelled() => {}
            }
            stop_on_loss.cancel();
        });
        let stopped = stop.clone().cancelled_owned().map(|()| ());
        controller::run(context.clone(), stopped).await;
        context.metrics.leader.set(0);
        supervisor.abort();
        if shutdown.is_cancelled() {
            break;
        }
    }
    // Dropping the last receiver makes the lease task release the lease, so a standby replica
    // takes over at once instead of after the lease expires.
    drop(leading);
    lease_task.await??;
    Ok(())
}
