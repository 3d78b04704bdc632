//! The dashboard's configuration, from the environment. It needs only Redis and its two ports;
//! every problem names its variable (the shared helpers do that).

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
