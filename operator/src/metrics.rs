//! The operator's Prometheus metrics, served on the workloads' admin listener
//! (`workload_runtime::admin`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What every metric name of the operator starts with (its registry's prefix).
pub const PREFIX: &str = "orderpipeline_operator";

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use pipeline_contract::probes;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;
    use workload_runtime::admin::{self, AdminState, Readiness};

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

    /// The admin routes as `main` serves them: ready once the API server answered, and the
    /// reconcile metrics under the operator's prefix.
    #[tokio::test]
    async fn admin_routes_report_health_readiness_and_the_reconcile_metrics() {
        let mut registry = Registry::with_prefix("orderpipeline_operator");
        let metrics = Metrics::register(&mut registry);
        let readiness = Readiness::new();
        let api_server = readiness.check("kubernetes-api");
        let router = admin::router(AdminState {
            registry: Arc::new(registry),
            readiness,
            shutdown: CancellationToken::new(),
        });

        assert_eq!(get(&router, probes::LIVENESS).await.0, StatusCode::OK);
        let (status, body) = get(&router, probes::READINESS).await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: kubernetes-api\n"
            )
        );
        api_server.set(true);
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
