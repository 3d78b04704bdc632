//! The Order Pipeline API gateway.
//!
//! Accounts (`/register`, `/login`, `/delete-user`) in Cassandra with bcrypt; HS256 tokens;
//! `POST /orders` with per-user idempotency in Redis, answered `202` only once RabbitMQ confirmed
//! the order; `GET /orders/{id}` for its progress; `/openapi.json` describing all of it.
//! [`app`] builds the router from an [`AppState`] so tests drive it directly; `main.rs` only wires.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod client_address;
pub mod config;
pub mod extract;
pub mod idempotency;
pub mod orders;
pub mod passwords;
pub mod problem;
pub mod ratelimit;
pub mod tokens;
pub mod users;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use lapin::Channel;
use pipeline_contract::keys::Keys;
use pipeline_contract::topology;
use prometheus_client::registry::Registry;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use utoipa::OpenApi;
use workload_runtime::admin::{Readiness, ReadinessCheck};
use workload_runtime::broker::{Backoff, Broker, BrokerConfig, BrokerMetrics, DeclareTopology};
use workload_runtime::group_commit::GroupPublisher;
use workload_runtime::http_server::{self, HttpLimits};
use workload_runtime::queues;
use workload_runtime::redis_connection;
use workload_runtime::shutdown::Shutdown;

use crate::client_address::TrustedProxies;
use crate::config::GatewayConfig;
use crate::passwords::{PasswordMetrics, Passwords};
use crate::problem::AppError;
use crate::ratelimit::RateLimiter;
use crate::tokens::{LEEWAY, TokenService};
use crate::users::UserStore;
use workload_runtime::http_metrics::HttpMetrics;

/// Added to the broker's confirm timeout for an order's claim lease: the claim and settle steps
/// in Redis, and opening a confirm channel.
const PUBLISH_LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Request bodies above this are refused with 413 before they are read further.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// Everything the handlers share. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tokens: TokenService,
    passwords: Passwords,
    users: Arc<UserStore>,
    redis: ConnectionManager,
    keys: Keys,
    broker: Broker,
    /// Publishes orders, grouping those that arrive together ([`workload_runtime::group_commit`]).
    orders: GroupPublisher,
    limiter: RateLimiter,
    trusted_proxies: TrustedProxies,
    /// How long a request may hold an order's claim pending while it publishes.
    publish_lease: Duration,
    http_metrics: HttpMetrics,
    http_limits: HttpLimits,
}

/// The gateway's metrics, registered before anything connects so `/metrics` serves from the start.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    pub broker: BrokerMetrics,
    pub http: HttpMetrics,
    pub passwords: PasswordMetrics,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            broker: BrokerMetrics::register(registry),
            http: HttpMetrics::register(registry),
            passwords: PasswordMetrics::register(registry),
        }
    }
}

/// Connects to every dependency (retrying until each answers) and returns the handlers' state once
/// the first broker connection is up: the seed's "synchronous startup", no business traffic
/// before RabbitMQ is reachable. `None` when shutdown began first.
pub async fn connect(
    config: GatewayConfig,
    metrics: GatewayMetrics,
    readiness: &Readiness,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<AppState>> {
    let tokens = TokenService::new(config.jwt_secret.expose(), config.token_lifetime)?;
    let redis_check = readiness.check("redis");
    let cassandra_check = readiness.check("cassandra");
    let broker = Broker::start(
        BrokerConfig::new(config.rabbitmq_urls.clone(), "gateway"),
        declare_topology(),
        metrics.broker,
        readiness.check("rabbitmq"),
        shutdown,
    );
    let Some(redis) = redis_connection::connect(&config.redis, shutdown).await else {
        return Ok(None);
    };
    redis_connection::watch_readiness(redis.clone(), redis_check, Duration::from_secs(2), shutdown);
    let mut attempt = 0;
    let users = loop {
        match UserStore::connect(&config.cassandra).await {
            Ok(users) => break Arc::new(users),
            Err(error) => {
                let delay = Backoff::default().delay(attempt, rand::random::<f64>());
                attempt += 1;
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "Cassandra not ready; retrying");
                tokio::select! {
                    () = shutdown.triggered() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    watch_cassandra(users.clone(), cassandra_check, shutdown);
    let passwords =
        Passwords::new(config.bcrypt_cost, config.bcrypt_threads, metrics.passwords).await?;
    tracing::info!("waiting for the first RabbitMQ connection");
    tokio::select! {
        () = shutdown.triggered() => return Ok(None),
        session = broker.wait_connected(Duration::MAX) => {
            if session.is_none() {
                anyhow::bail!("the RabbitMQ connection manager stopped before connecting");
            }
        }
    }
    let keys = config.redis.keys.clone();
    // The publish's own bound, as long again for the wait for a free publish slot (which the
    // publishes ahead of it bound the same way), and time for the Redis steps around it.
    let publish_lease = broker.confirm_timeout() * 2 + PUBLISH_LEASE_MARGIN;
    let orders = GroupPublisher::start(
        broker.clone(),
        topology::ORDERS_EXCHANGE,
        topology::ORDERS_ROUTING_KEY,
        config.group_commit,
    );
    Ok(Some(AppState {
        inner: Arc::new(Inner {
            limiter: RateLimiter::new(
                redis.clone(),
                keys.clone(),
                config.login_limits,
                config.registration_limits,
            ),
            trusted_proxies: config.trusted_proxies,
            tokens,
            passwords,
            users,
            redis,
            keys,
            broker,
            orders,
            publish_lease,
            http_metrics: metrics.http,
            http_limits: config.http,
        }),
    }))
}

/// Serves the API on `listener` until shutdown begins, then stops accepting connections and
/// returns once every in-flight request is answered. The broker connection stays open until
/// then ([`Shutdown::closing`]): an order being published when the drain begins still gets its
/// confirm and its 202. Call [`Shutdown::wait_for_tasks`] after it. The configuration's
/// [`HttpLimits`] apply (header and request timeouts, connection limit:
/// [`workload_runtime::http_server`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: &Shutdown,
) -> std::io::Result<()> {
    let limits = state.inner.http_limits;
    http_server::serve(listener, app(state), limits, shutdown.token()).await
}

fn watch_cassandra(users: Arc<UserStore>, check: ReadinessCheck, shutdown: &Shutdown) {
    let token = shutdown.token();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = interval.tick() => check.set(users.ping().await.is_ok()),
            }
        }
    });
}

impl AppState {
    pub fn tokens(&self) -> &TokenService {
        &self.inner.tokens
    }
    pub fn passwords(&self) -> &Passwords {
        &self.inner.passwords
    }
    pub fn users(&self) -> &UserStore {
        &self.inner.users
    }
    pub fn redis(&self) -> ConnectionManager {
        self.inner.redis.clone()
    }
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }
    pub fn orders(&self) -> &GroupPublisher {
        &self.inner.orders
    }
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.inner.trusted_proxies
    }
    pub fn publish_lease(&self) -> Duration {
        self.inner.publish_lease
    }

    /// When the account was deleted (unix seconds), if it was within a token's lifetime.
    pub async fn account_deleted_at(&self, email: &str) -> Result<Option<u64>, AppError> {
        let mut redis = self.redis();
        redis
            .get(self.keys().account_deleted(email))
            .await
            .map_err(|error| AppError::Unavailable {
                reason: format!("revocation check failed: {error}"),
                detail: "the token could not be checked right now (Redis is unavailable); nothing was changed, retry later",
                retry_after: Duration::from_secs(1),
            })
    }

    /// Marks every token of `email` issued at or before `now` as revoked. The mark outlives the
    /// longest-lived such token, then expires by itself.
    pub async fn revoke_tokens(&self, email: &str, now: u64) -> Result<(), AppError> {
        let keep = self.tokens().lifetime() + LEEWAY + Duration::from_secs(60);
        let mut redis = self.redis();
        redis
            .set_ex::<_, _, ()>(self.keys().account_deleted(email), now, keep.as_secs())
            .await
            .map_err(|error| AppError::Unavailable {
                reason: format!("revoking tokens failed: {error}"),
                detail: "the tokens could not be revoked right now (Redis is unavailable); nothing was changed, retry later",
                retry_after: Duration::from_secs(1),
            })
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Order Pipeline gateway", description = "Accounts, tokens and durable order intake."),
    paths(
        accounts::register,
        accounts::login,
        accounts::delete_user,
        orders::create_order,
        orders::order_status,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The gateway's routes.
pub fn app(state: AppState) -> Router {
    let metrics = state.inner.http_metrics.clone();
    Router::new()
        .route("/register", post(accounts::register))
        .route("/login", post(accounts::login))
        .route("/delete-user", delete(accounts::delete_user))
        .route("/orders", post(orders::create_order))
        .route("/orders/{id}", get(orders::order_status))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(ApiDoc::openapi()) }),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            workload_runtime::http_metrics::record,
        ))
        // Outermost, so the span also covers the metrics middleware.
        .route_layer(axum::middleware::from_fn(
            workload_runtime::telemetry::trace_request,
        ))
        .with_state(state)
}

/// Declares what the gateway publishes to: the durable direct exchange, and the processor's
/// quorum queue bound to it, so an order published before any processor ever started is still
/// routed and kept (a publish to an exchange with no queue would be unroutable).
pub fn declare_topology() -> DeclareTopology {
    Arc::new(|channel: Channel| {
        Box::pin(async move { queues::declare_work_queue(&channel, queues::ORDERS).await })
    })
}

pub fn now_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

pub fn now_unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
