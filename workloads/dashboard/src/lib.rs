//! The Order Pipeline dashboard: a read-only view of the pipeline's state in Redis.
//!
//! `GET /metrics` on the business port (the seed's 8081) answers
//! `{"processed_orders_count": N}`, plus `inventory_level` for `?sku=` and `notification_status`
//! for `?order_id=` when those keys exist. It only ever reads, so it can run with any number of
//! replicas beside the writers without affecting them. Unlike the seed it refuses
//! malformed queries with a 400 naming the parameter, and reports data it cannot interpret as an
//! error instead of a made-up number.
//!
//! `/` serves the live web page ([`web`]): counters and rates, stock, queue depths and dead
//! letters ([`queues`]), the latest orders and a lookup, pushed over a WebSocket from one
//! snapshot per period ([`live`]).
//!
//! [`app`] builds the router from an [`AppState`] so tests drive it directly; [`connect`] waits
//! for Redis (and starts the RabbitMQ connection, which it does not wait for); [`serve`] serves
//! it with the business port's limits; `main.rs` only wires.

#![forbid(unsafe_code)]

pub mod config;
pub mod live;
pub mod problem;
pub mod query;
pub mod queues;
pub mod report;
pub mod web;

use std::time::Duration;

use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use pipeline_contract::keys::Keys;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use workload_runtime::admin::ReadinessCheck;
use workload_runtime::broker::BrokerMetrics;
use workload_runtime::http_metrics::HttpMetrics;
use workload_runtime::http_server::{self, HttpLimits};
use workload_runtime::redis_connection;
use workload_runtime::shutdown::Shutdown;

use crate::config::DashboardConfig;
use crate::problem::AppError;
use crate::query::MetricsQuery;
use crate::queues::QueueWatch;
use crate::report::MetricsReport;
use crate::web::{Live, LiveLimits};

/// The one business route (the seed's path).
pub const METRICS_PATH: &str = "/metrics";
/// The readiness check that fails while Redis does not answer.
pub const REDIS_CHECK: &str = "redis";
/// How often the `redis` readiness check pings.
const READINESS_PERIOD: Duration = Duration::from_secs(2);

/// The dashboard's Prometheus metrics: its business port's requests and its RabbitMQ
/// connection.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub http: HttpMetrics,
    pub broker: BrokerMetrics,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            http: HttpMetrics::register(registry),
            broker: BrokerMetrics::register(registry),
        }
    }
}

/// What the handlers need. Cloning is cheap: the connection is multiplexed.
#[derive(Debug, Clone)]
pub struct AppState {
    redis: ConnectionManager,
    keys: Keys,
    http_metrics: HttpMetrics,
    live: Live,
}

impl AppState {
    /// Starts the live page's snapshot publisher (until `shutdown`) along with the state.
    pub async fn new(
        redis: ConnectionManager,
        keys: Keys,
        queues: Option<QueueWatch>,
        http_metrics: HttpMetrics,
        live_limits: LiveLimits,
        shutdown: &Shutdown,
    ) -> Self {
        let live = Live::start(redis.clone(), keys.clone(), queues, live_limits, shutdown).await;
        Self {
            redis,
            keys,
            http_metrics,
            live,
        }
    }
}

/// Starts the RabbitMQ connection when `RABBITMQ_URLS` is set (in the background: the
/// dashboard does not wait for it), connects to Redis, retrying until it answers (the pod may
/// start before Redis does), then keeps `redis_ready` in step with whether Redis answers. `None`
/// when shutdown began first.
///
/// The caller registers the check (`readiness.check(REDIS_CHECK)`) before it opens the admin
/// port, so `/readyz` can never answer 200 in the moment before the check exists.
pub async fn connect(
    config: &DashboardConfig,
    metrics: Metrics,
    redis_ready: ReadinessCheck,
    shutdown: &Shutdown,
) -> Option<AppState> {
    let queues = match config.rabbitmq_urls.clone() {
        Some(urls) => Some(QueueWatch::start(
            urls,
            metrics.broker,
            config.live.period,
            shutdown,
        )),
        None => {
            tracing::info!(
                "RABBITMQ_URLS is not set: the live page shows no queue depths (not configured)"
            );
            None
        }
    };
    let redis = redis_connection::connect(&config.redis, shutdown).await?;
    redis_connection::watch_readiness(redis.clone(), redis_ready, READINESS_PERIOD, shutdown);
    Some(
        AppState::new(
            redis,
            config.redis.keys.clone(),
            queues,
            metrics.http,
            config.live,
            shutdown,
        )
        .await,
    )
}

/// Serves [`app`] on `listener` within `limits` (header and request timeouts, connection limit:
/// [`workload_runtime::http_server`]) until shutdown begins, then returns once every in-flight
/// request is answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: HttpLimits,
    shutdown: &Shutdown,
) -> std::io::Result<()> {
    http_server::serve(listener, app(state), limits, shutdown.token()).await
}

/// The dashboard's routes: `GET /metrics`, counted in the HTTP metrics, and the live page's.
pub fn app(state: AppState) -> Router {
    let metrics = state.http_metrics.clone();
    Router::new()
        .route(METRICS_PATH, get(pipeline_metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            workload_runtime::http_metrics::record,
        ))
        .merge(web::routes())
        .with_state(state)
}

/// `GET /metrics`: the query is validated before Redis is touched.
async fn pipeline_metrics(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<MetricsReport>, AppError> {
    let query = MetricsQuery::from_uri(&uri)?;
    let readings = report::read(&state.redis, &state.keys, &query).await?;
    Ok(Json(MetricsReport::from_readings(readings)?))
}
