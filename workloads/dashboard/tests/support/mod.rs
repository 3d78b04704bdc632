//! Starts a real dashboard in-process against the environment's real Redis, under a key prefix
//! of its own so tests run in parallel without seeing each other's keys.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use dashboard::config::DashboardConfig;
use dashboard::{AppState, Metrics, REDIS_CHECK, app, connect};
use http_body_util::BodyExt;
use pipeline_contract::env;
use pipeline_contract::keys::Keys;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use testenv::{Env, Isolation};
use tower::ServiceExt;
use workload_runtime::admin::{self, AdminState, Readiness};
use workload_runtime::shutdown::Shutdown;

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

pub struct Dashboard {
    pub state: AppState,
    pub router: Router,
    /// The admin routes (`/healthz`, `/readyz`, `/metrics`), as `main` serves them.
    pub admin: Router,
    pub readiness: Readiness,
    pub prefix: String,
    pub keys: Keys,
    /// The test's own connection, for seeding and inspecting keys.
    pub redis: ConnectionManager,
    pub shutdown: Shutdown,
    /// The test's key prefix, whose keys are removed when the dashboard is dropped.
    pub isolation: Isolation,
}

/// The dashboard's variables for this environment, under a fresh key prefix.
pub fn variables(environment: &Env) -> BTreeMap<String, String> {
    let prefix = format!("{}:", testenv::unique("dash"));
    BTreeMap::from([
        (
            env::REDIS_ADDR.to_owned(),
            environment.require("OP_REDIS_ADDR"),
        ),
        (env::REDIS_KEY_PREFIX.to_owned(), prefix),
    ])
}

/// Admin routes over `readiness`, with the dashboard's metric registry.
pub fn admin_router(registry: Registry, readiness: &Readiness, shutdown: &Shutdown) -> Router {
    admin::router(AdminState {
        registry: Arc::new(registry),
        readiness: readiness.clone(),
        shutdown: shutdown.token(),
    })
}

impl Dashboard {
    pub async fn start() -> Self {
        let isolation = Isolation::redis_only("dash").await;
        let config = DashboardConfig::from_source(&isolation.variables())
            .expect("test configuration is valid");
        let keys = config.redis.keys.clone();
        let shutdown = Shutdown::new();
        let mut registry = Registry::with_prefix("dashboard");
        let metrics = Metrics::register(&mut registry);
        let readiness = Readiness::new();
        let redis_ready = readiness.check(REDIS_CHECK);
        let state = tokio::time::timeout(
            Duration::from_secs(30),
            connect(&config, metrics, redis_ready, &shutdown),
        )
        .await
        .expect("dashboard connected to Redis within 30s")
        .expect("not shut down");
        Self {
            router: app(state.clone()),
            admin: admin_router(registry, &readiness, &shutdown),
            state,
            readiness,
            prefix: keys.prefix().to_owned(),
            keys,
            redis: isolation.redis.clone(),
            shutdown,
            isolation,
        }
    }

    /// `GET path_and_query` on the business routes.
    pub async fn get(&self, path_and_query: &str) -> Answer {
        request(&self.router, path_and_query).await
    }

    /// `GET path` on the admin routes.
    pub async fn admin_get(&self, path: &str) -> Answer {
        request(&self.admin, path).await
    }

    pub async fn set(&self, key: &str, value: &str) {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
    }

    pub async fn hset(&self, key: &str, field: &str, value: &str) {
        let mut redis = self.redis.clone();
        redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
    }

    pub async fn exists(&self, key: &str) -> bool {
        let mut redis = self.redis.clone();
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut redis)
            .await
            .unwrap()
            == 1
    }

    /// Every key under this test's prefix with its type, serialized value and TTL: equal
    /// snapshots mean nothing under the prefix was created, changed, deleted or (un)expired.
    pub async fn snapshot(&self) -> BTreeMap<String, (String, Vec<u8>, i64)> {
        let mut redis = self.redis.clone();
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut snapshot = BTreeMap::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            let dump: Vec<u8> = redis::cmd("DUMP")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            snapshot.insert(key, (kind, dump, ttl));
        }
        snapshot
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        assert!(self.shutdown.wait_for_tasks(Duration::from_secs(10)).await);
    }
}

pub async fn request(router: &Router, path_and_query: &str) -> Answer {
    let response = router
        .clone()
        .oneshot(
            Request::get(path_and_query)
                .body(Body::empty())
                .expect("a valid request"),
        )
        .await
        .expect("the router is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}
