//! The operator's Prometheus metrics and its admin listener (`/healthz`, `/readyz`,
//! `/metrics`). The workloads' admin server lives in `workload-runtime`, which links their
//! broker and Redis drivers; the operator keeps its own small one so it links neither.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pipeline_contract::probes;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The reconcile step that failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorKind {
    Dereference,
    Validate,
    Apply,
    Status,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: ErrorKind,
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// Reconciles that sent every child (server-side apply), and those that found the children
    /// exactly as the last full apply left them and only read them (see `controller::ledger`).
    pub full_applies: Counter,
    pub applies_skipped: Counter,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            full_applies: Counter::default(),
            applies_skipped: Counter::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles started",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by step",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            metrics.duration.clone(),
        );
        registry.register(
            "full_applies",
            "Reconciles that applied every child",
            metrics.full_applies.clone(),
        );
        registry.register(
            "applies_skipped",
            "Reconciles that found the children as last applied and did not apply them",
            metrics.applies_skipped.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        metrics
    }

    pub fn failure(&self, kind: ErrorKind) {
        self.failures.get_or_create(&ErrorLabels { kind }).inc();
    }
}

#[derive(Debug, Clone)]
struct AdminState {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

/// Serves the admin routes on `port` until `shutdown`. `ready` says whether the operator can
/// talk to the API server (a standby replica is ready too: it is healthy, only not leading).
pub async fn serve_admin(
    port: u16,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let router = router(registry, ready);
    Ok(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    })
}

/// The admin routes: `/healthz`, `/readyz` and `/metrics`.
pub fn router(registry: Arc<Registry>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(probes::LIVENESS, get(|| async { "ok" }))
        .route(probes::READINESS, get(readyz))
        .route(probes::METRICS, get(metrics))
        .with_state(AdminState { registry, ready })
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &state.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn admin_routes_report_health_readiness_and_the_reconcile_metrics() {
        let mut registry = Registry::with_prefix("orderpipeline_operator");
        let metrics = Metrics::register(&mut registry);
        let ready = Arc::new(AtomicBool::new(false));
        let router = router(Arc::new(registry), ready.clone());

        assert_eq!(get(&router, probes::LIVENESS).await.0, StatusCode::OK);
        let (status, body) = get(&router, probes::READINESS).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("API server"), "{body}");
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&router, probes::READINESS).await.0, StatusCode::OK);

        metrics.reconciles.inc();
        metrics.reconciles.inc();
        metrics.failure(ErrorKind::Apply);
        metrics.duration.observe(0.25);
        metrics.full_applies.inc();
        metrics.leader.set(1);
        let (status, body) = get(&router, probes::METRICS).await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            "orderpipeline_operator_reconciles_total 2",
            "orderpipeline_operator_reconcile_errors_total{kind=\"Apply\"} 1",
            "orderpipeline_operator_reconcile_duration_seconds_count 1",
            "orderpipeline_operator_full_applies_total 1",
            "orderpipeline_operator_applies_skipped_total 0",
            "orderpipeline_operator_leader 1",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in\n{body}"
            );
        }
    }
}
