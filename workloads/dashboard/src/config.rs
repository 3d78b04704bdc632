//! The dashboard's configuration, from the environment. It needs only Redis and its two ports;
//! RabbitMQ (`RABBITMQ_URLS`, with its own user) is optional and only feeds the live page's
//! queue depths. Every problem names its variable (the shared helpers do that).

use pipeline_contract::{env, ports};
use workload_runtime::config::{self, ConfigError, Source};
use workload_runtime::http_server::HttpLimits;
use workload_runtime::redis_connection::RedisConfig;

use crate::web::LiveLimits;

#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// The business port serving `GET /metrics` (the seed's 8081 by default).
    pub http_port: u16,
    pub admin_port: u16,
    pub redis: RedisConfig,
    /// The nodes to read queue depths from, with the credentials folded in; `None` when
    /// `RABBITMQ_URLS` is not set.
    pub rabbitmq_urls: Option<Vec<String>>,
    /// The business port's timeouts and connection limit.
    pub http: HttpLimits,
    /// The live page's WebSocket bounds (fixed: nobody has needed to tune them yet).
    pub live: LiveLimits,
}

impl DashboardConfig {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            http_port: config::parsed_or(source, env::HTTP_PORT, ports::DASHBOARD_HTTP)?,
            admin_port: config::admin_port(source)?,
            redis: RedisConfig::from_source(source)?,
            rabbitmq_urls: match source.get(env::RABBITMQ_URLS) {
                Some(_) => Some(config::rabbitmq_urls(source)?),
                None => None,
            },
            http: HttpLimits::from_source(source)?,
            live: LiveLimits::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn defaults_follow_the_seed() {
        let source = BTreeMap::from([(env::REDIS_ADDR, "redis:6379")]);
        let config = DashboardConfig::from_source(&source).unwrap();
        assert_eq!(config.http_port, 8081);
        assert_eq!(config.admin_port, 9090);
        assert_eq!(config.redis.addr, "redis:6379");
        assert_eq!(
            config.redis.keys.processed_count(),
            "orders.processed.count"
        );
        assert_eq!(config.http, HttpLimits::default());
        assert_eq!(config.rabbitmq_urls, None, "RabbitMQ is optional");
    }

    #[test]
    fn rabbitmq_takes_the_dashboards_own_user_and_names_its_variable() {
        let source = BTreeMap::from([
            (env::REDIS_ADDR, "redis:6379"),
            (
                env::RABBITMQ_URLS,
                "amqp://mq-0:5672/%2f,amqp://mq-1:5672/%2f",
            ),
            (env::RABBITMQ_USERNAME, "dashboard"),
            (env::RABBITMQ_PASSWORD, "p@ss"),
        ]);
        let urls = DashboardConfig::from_source(&source)
            .unwrap()
            .rabbitmq_urls
            .unwrap();
        assert_eq!(
            urls,
            [
                "amqp://dashboard:p%40ss@mq-0:5672/%2f",
                "amqp://dashboard:p%40ss@mq-1:5672/%2f"
            ]
        );
        let bad = BTreeMap::from([
            (env::REDIS_ADDR, "redis:6379"),
            (env::RABBITMQ_URLS, "http://mq:5672"),
        ]);
        let error = DashboardConfig::from_source(&bad).unwrap_err().to_string();
        assert!(error.contains("RABBITMQ_URLS"), "{error}");
    }

    #[test]
    fn overrides_apply_and_problems_name_the_variable() {
        let source = BTreeMap::from([
            (env::REDIS_ADDR, "127.0.0.1:6379"),
            (env::REDIS_KEY_PREFIX, "p1:"),
            (env::HTTP_PORT, "18081"),
            (env::ADMIN_PORT, "19090"),
        ]);
        let config = DashboardConfig::from_source(&source).unwrap();
        assert_eq!((config.http_port, config.admin_port), (18081, 19090));
        assert_eq!(config.redis.keys.inventory("x"), "p1:inventory:x");

        let bad_port = BTreeMap::from([(env::REDIS_ADDR, "redis:6379"), (env::HTTP_PORT, "web")]);
        let error = DashboardConfig::from_source(&bad_port)
            .unwrap_err()
            .to_string();
        assert!(error.contains("HTTP_PORT"), "{error}");

        let bad_timeout = BTreeMap::from([
            (env::REDIS_ADDR, "redis:6379"),
            (env::HTTP_HEADER_READ_TIMEOUT_MS, "0"),
        ]);
        let error = DashboardConfig::from_source(&bad_timeout)
            .unwrap_err()
            .to_string();
        assert!(error.contains("HTTP_HEADER_READ_TIMEOUT_MS"), "{error}");

        let missing: BTreeMap<&str, &str> = BTreeMap::new();
        assert_eq!(
            DashboardConfig::from_source(&missing)
                .unwrap_err()
                .to_string(),
            "environment variable REDIS_ADDR is required but not set"
        );
    }
}
