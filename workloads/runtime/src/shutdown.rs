//! Graceful shutdown: on SIGINT or SIGTERM stop taking work, let in-flight work finish (or hand it
//! back to the broker), then exit 0.
//!
//! One [`CancellationToken`] is the broadcast signal every loop selects on: stop taking work. A
//! second one, [`Shutdown::closing`], ends what in-flight work still needs (the broker
//! connection its publishes and acks go through); it is cancelled only by
//! [`Shutdown::wait_for_tasks`], once the work is done. A [`TaskTracker`] knows which tasks still
//! run, so `main` can wait for them with a deadline (Kubernetes sends
//! SIGKILL after `terminationGracePeriodSeconds`, so waiting forever would lose the choice of what
//! to hand back).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown signal and the tasks that must finish before the process exits.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    closing: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels [`Self::token`] on the first SIGINT or SIGTERM.
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received: finishing in-flight work");
            token.cancel();
        });
    }

    /// The token every work loop selects on; cancelled when shutdown begins.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Cancelled when the in-flight work is over and the process is about to exit (by
    /// [`Self::wait_for_tasks`]), never earlier: a connection that in-flight work still uses
    /// closes on this, not on [`Self::token`]. A gateway that closed its broker connection when
    /// the drain began failed every order still being published with a 503.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Starts shutdown from inside the program (a fatal error, or a test).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Call once the in-flight work is over: cancels [`Self::closing`] (and [`Self::token`], if
    /// shutdown had not begun) and waits for every tracked task, at most `grace`. Returns whether
    /// all of them finished.
    pub async fn wait_for_tasks(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.closing.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                remaining = self.tracker.len(),
                "shutdown grace period over with tasks still running"
            );
        }
        finished
    }
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT will stop gracefully");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn waits_for_in_flight_work_after_trigger() {
        let shutdown = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let token = shutdown.token();
        let flag = finished.clone();
        shutdown.spawn(async move {
            token.cancelled().await;
            // In-flight work that still completes after the signal.
            tokio::task::yield_now().await;
            flag.store(true, Ordering::SeqCst);
        });
        shutdown.trigger();
        assert!(shutdown.wait_for_tasks(Duration::from_secs(5)).await);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn what_in_flight_work_uses_closes_only_after_the_work() {
        let shutdown = Shutdown::new();
        let closing = shutdown.closing();
        shutdown.trigger();
        assert!(shutdown.is_triggered());
        assert!(!closing.is_cancelled(), "closed when the drain began");
        assert!(shutdown.wait_for_tasks(Duration::from_secs(5)).await);
        assert!(closing.is_cancelled());
    }

    #[tokio::test]
    async fn reports_tasks_that_outlive_the_grace_period() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        shutdown.trigger();
        assert!(!shutdown.wait_for_tasks(Duration::from_millis(50)).await);
    }
}
