//! The admin listener every workload runs beside its business port: `/healthz` (alive),
//! `/readyz` (every dependency connected) and `/metrics` (Prometheus text).
//!
//! Readiness is a set of named checks that the code owning each dependency flips, so `/readyz`
//! can say which dependency is missing. Once shutdown begins the workload reports not ready, so
//! Kubernetes stops routing to it while in-flight work finishes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pipeline_contract::probes;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Named readiness checks, all of which must pass for `/readyz` to answer 200.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a check, initially failing, and returns its handle.
    pub fn check(&self, name: &'static str) -> ReadinessCheck {
        self.write().insert(name, false);
        ReadinessCheck {
            name,
            readiness: self.clone(),
        }
    }

    /// The names of failing checks; empty when ready. Before any check is registered the
    /// workload is still starting (its dependencies are not even being connected yet), which
    /// counts as the failing check `starting`, so `/readyz` can never pass in that moment.
    pub fn failing(&self) -> Vec<&'static str> {
        let checks = self
            .checks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if checks.is_empty() {
            return vec!["starting"];
        }
        checks
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| *name)
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<&'static str, bool>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts), so
        // recover from poisoning rather than propagate it into every probe.
        self.checks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One dependency's readiness, set by the code that owns the connection.
#[derive(Debug, Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    readiness: Readiness,
}

impl ReadinessCheck {
    pub fn set(&self, ready: bool) {
        self.readiness.write().insert(self.name, ready);
    }
}

/// What the admin routes read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    /// Cancelled when shutdown begins; from then on `/readyz` fails.
    pub shutdown: CancellationToken,
}

/// The admin routes, separate from serving so tests drive them with `oneshot`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(probes::LIVENESS, get(|| async { "ok" }))
        .route(probes::READINESS, get(readyz))
        .route(probes::METRICS, get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let failing = state.readiness.failing();
    if failing.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failing.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "failed to encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Binds the admin port and serves until shutdown. Binding happens before this returns, so a
/// port clash fails startup instead of a background task.
pub async fn serve(
    port: u16,
    state: AdminState,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let shutdown = state.shutdown.clone();
    tracing::info!(port, "admin server listening");
    Ok(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    })
}

/// Binds the admin port and serves it as a task that shutdown waits for: what every workload's
/// `main` does once its metrics are registered.
pub async fn start(
    port: u16,
    registry: Registry,
    readiness: &Readiness,
    shutdown: &crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    let server = serve(
        port,
        AdminState {
            registry: Arc::new(registry),
            readiness: readiness.clone(),
            shutdown: shutdown.token(),
        },
    )
    .await?;
    shutdown.spawn(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    use super::*;

    async fn get_path(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn state() -> (AdminState, Counter) {
        let mut registry = Registry::default();
        let counter = Counter::default();
        registry.register("demo_events", "Events seen", counter.clone());
        let state = AdminState {
            registry: Arc::new(registry),
            readiness: Readiness::new(),
            shutdown: CancellationToken::new(),
        };
        (state, counter)
    }

    #[tokio::test]
    async fn readiness_names_failing_checks_until_all_pass() {
        let (state, _) = state();
        let (status, body) = get_path(router(state.clone()), "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n")
        );
        let redis = state.readiness.check("redis");
        let rabbitmq = state.readiness.check("rabbitmq");
        let app = router(state.clone());

        let (status, body) = get_path(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: rabbitmq, redis\n");

        redis.set(true);
        let (_, body) = get_path(app.clone(), "/readyz").await;
        assert_eq!(body, "not ready: rabbitmq\n");

        rabbitmq.set(true);
        assert_eq!(get_path(app.clone(), "/readyz").await.0, StatusCode::OK);
        // Liveness never depends on dependencies.
        rabbitmq.set(false);
        assert_eq!(get_path(app.clone(), "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn not_ready_once_shutdown_begins() {
        let (state, _) = state();
        state.readiness.check("redis").set(true);
        let app = router(state.clone());
        assert_eq!(get_path(app.clone(), "/readyz").await.0, StatusCode::OK);
        state.shutdown.cancel();
        let (status, body) = get_path(app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "shutting down\n");
    }

    #[tokio::test]
    async fn metrics_expose_registered_values() {
        let (state, counter) = state();
        counter.inc_by(3);
        let (status, body) = get_path(router(state), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("demo_events_total 3"), "{body}");
    }
}
