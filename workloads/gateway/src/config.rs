//! The gateway's configuration, from the environment (the seed's variable names where it had
//! them). Every problem names its variable; secrets never reach `Debug` output.

use std::time::Duration;

use pipeline_contract::{env, ports};
use workload_runtime::config::{self, ConfigError, Source};
use workload_runtime::redis_connection::RedisConfig;

use crate::tokens::MIN_SECRET_BYTES;
use crate::users::CassandraConfig;

/// The HMAC secret, kept out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(*** {} bytes)", self.0.len())
    }
}

/// Failed-login limits: at most `per_email` failures for one account and `per_address` from one
/// client address within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_email: u32,
    pub per_address: u32,
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub http_port: u16,
    pub admin_port: u16,
    pub rabbitmq_urls: Vec<String>,
    pub redis: RedisConfig,
    pub cassandra: CassandraConfig,
    pub jwt_secret: Secret,
    pub token_lifetime: Duration,
    pub bcrypt_cost: u32,
    /// bcrypt threads. They run at idle priority, so one per core costs order intake nothing.
    pub bcrypt_threads: usize,
    pub login_limits: LoginLimits,
}

impl GatewayConfig {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let secret = config::required(source, env::JWT_SECRET)?;
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::Invalid {
                variable: env::JWT_SECRET,
                problem: format!(
                    "must be at least {MIN_SECRET_BYTES} bytes (got {}); generate one with `openssl rand -base64 48`",
                    secret.len()
                ),
            });
        }
        let bcrypt_cost = config::parsed_or(source, env::BCRYPT_COST, 12u32)?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(ConfigError::Invalid {
                variable: env::BCRYPT_COST,
                problem: format!("{bcrypt_cost} is outside bcrypt's range 4..=31"),
            });
        }
        let ttl_seconds = config::parsed_or(source, env::JWT_TTL_SECONDS, 3600u64)?;
        if ttl_seconds == 0 {
            return Err(ConfigError::Invalid {
                variable: env::JWT_TTL_SECONDS,
                problem: "must be positive".into(),
            });
        }
        let contact_points = config::list(source, env::CASSANDRA_ADDR)?;
        let cassandra = CassandraConfig {
            contact_points,
            user: source.get(env::CASSANDRA_USER).filter(|v| !v.is_empty()),
            password: source
                .get(env::CASSANDRA_PASSWORD)
                .filter(|v| !v.is_empty()),
            keyspace: source
                .get(env::CASSANDRA_KEYSPACE)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "users_keyspace".to_owned()),
            replication_factor: config::parsed_or(source, env::CASSANDRA_REPLICATION_FACTOR, 1u32)?,
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(Self {
            http_port: config::parsed_or(source, env::HTTP_PORT, ports::GATEWAY_HTTP)?,
            admin_port: config::admin_port(source)?,
            rabbitmq_urls: config::rabbitmq_urls(source)?,
            redis: RedisConfig::from_source(source)?,
            cassandra,
            jwt_secret: Secret(secret.into_bytes()),
            token_lifetime: Duration::from_secs(ttl_seconds),
            bcrypt_cost,
            bcrypt_threads: cores.saturating_sub(1).max(1),
            login_limits: LoginLimits {
                per_email: 5,
                per_address: 20,
                window: Duration::from_secs(60),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn base() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            (
                env::RABBITMQ_URLS,
                "amqp://guest:guest@rabbitmq1:5672/,amqp://guest:guest@rabbitmq2:5672/",
            ),
            (env::REDIS_ADDR, "redis:6379"),
            (env::CASSANDRA_ADDR, "cassandra:9042"),
            (env::JWT_SECRET, "0123456789abcdef0123456789abcdef"),
        ])
    }

    #[test]
    fn defaults_follow_the_seed() {
        let config = GatewayConfig::from_source(&base()).unwrap();
        assert_eq!(config.http_port, 8080);
        assert_eq!(config.rabbitmq_urls.len(), 2);
        assert_eq!(config.cassandra.keyspace, "users_keyspace");
        assert_eq!(config.token_lifetime, Duration::from_secs(3600));
        assert_eq!(config.bcrypt_cost, 12);
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn a_short_secret_or_bad_cost_refuses_to_start_naming_the_variable() {
        let mut source = base();
        source.insert(env::JWT_SECRET, "too-short");
        let error = GatewayConfig::from_source(&source).unwrap_err().to_string();
        assert!(
            error.contains("JWT_SECRET") && error.contains("at least 32 bytes"),
            "{error}"
        );
        assert!(!error.contains("too-short"), "secret leaked: {error}");

        let mut source = base();
        source.insert(env::BCRYPT_COST, "40");
        let error = GatewayConfig::from_source(&source).unwrap_err().to_string();
        assert!(error.contains("BCRYPT_COST"), "{error}");

        let mut source = base();
        source.remove(env::CASSANDRA_ADDR);
        assert_eq!(
            GatewayConfig::from_source(&source).unwrap_err().to_string(),
            "environment variable CASSANDRA_ADDR is required but not set"
        );
    }
}
