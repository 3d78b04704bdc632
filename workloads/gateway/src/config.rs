//! The gateway's configuration, from the environment (the seed's variable names where it had
//! them). Every problem names its variable; secrets never reach `Debug` output.

use std::time::Duration;

use pipeline_contract::{env, ports};
use workload_runtime::config::{self, ConfigError, Source};
use workload_runtime::group_commit::GroupCommitConfig;
use workload_runtime::http_server::HttpLimits;
use workload_runtime::redis_connection::RedisConfig;

use crate::client_address::TrustedProxies;
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

/// Login limits: at most `per_email` failed (or still running) attempts for one account and
/// `per_address` from one client address within `window` ([`crate::ratelimit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_email: u32,
    pub per_address: u32,
    pub window: Duration,
}

/// Registration limit: at most `per_address` registrations from one client address within
/// `window`, each costing a bcrypt hash (`REGISTER_LIMIT_PER_ADDRESS`, default 10;
/// `REGISTER_LIMIT_WINDOW_SECONDS`, default 60).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationLimits {
    pub per_address: u32,
    pub window: Duration,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self {
            per_address: 10,
            window: Duration::from_secs(60),
        }
    }
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
    pub registration_limits: RegistrationLimits,
    /// Whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`, none by default).
    pub trusted_proxies: TrustedProxies,
    /// The business port's timeouts and connection limit.
    pub http: HttpLimits,
    /// How orders are grouped into AMQP messages (`ORDER_BATCH_MAX`,
    /// `ORDER_PUBLISHES_IN_FLIGHT`).
    pub group_commit: GroupCommitConfig,
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
                .unwrap_or_else(|| pipeline_contract::ACCOUNTS_KEYSPACE.to_owned()),
            replication_factor: config::parsed_or(source, env::CASSANDRA_REPLICATION_FACTOR, 1u32)?,
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let trusted_proxies = TrustedProxies::parse(
            &source.get(env::TRUSTED_PROXIES).unwrap_or_default(),
        )
        .map_err(|problem| ConfigError::Invalid {
            variable: env::TRUSTED_PROXIES,
            problem,
        })?;
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
            registration_limits: registration_limits(source)?,
            trusted_proxies,
            http: HttpLimits::from_source(source)?,
            group_commit: group_commit(source)?,
        })
    }
}

fn group_commit(source: &impl Source) -> Result<GroupCommitConfig, ConfigError> {
    let defaults = GroupCommitConfig::default();
    let bounded = |variable: &'static str, default: usize| {
        let value = config::parsed_or(source, variable, default)?;
        if !(1..=1024).contains(&value) {
            return Err(ConfigError::Invalid {
                variable,
                problem: format!("{value} is outside 1..=1024"),
            });
        }
        Ok(value)
    };
    Ok(GroupCommitConfig {
        max_batch: bounded(env::ORDER_BATCH_MAX, defaults.max_batch)?,
        max_in_flight: bounded(env::ORDER_PUBLISHES_IN_FLIGHT, defaults.max_in_flight)?,
    })
}

fn registration_limits(source: &impl Source) -> Result<RegistrationLimits, ConfigError> {
    let defaults = RegistrationLimits::default();
    let per_address = config::parsed_or(
        source,
        env::REGISTER_LIMIT_PER_ADDRESS,
        defaults.per_address,
    )?;
    if per_address == 0 {
        return Err(ConfigError::Invalid {
            variable: env::REGISTER_LIMIT_PER_ADDRESS,
            problem: "must be at least 1 (0 would refuse every registration)".into(),
        });
    }
    let window_seconds = config::parsed_or(
        source,
        env::REGISTER_LIMIT_WINDOW_SECONDS,
        defaults.window.as_secs(),
    )?;
    if !(1..=24 * 3600).contains(&window_seconds) {
        return Err(ConfigError::Invalid {
            variable: env::REGISTER_LIMIT_WINDOW_SECONDS,
            problem: format!("{window_seconds} is outside 1..=86400 (seconds)"),
        });
    }
    Ok(RegistrationLimits {
        per_address,
        window: Duration::from_secs(window_seconds),
    })
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
    fn group_commit_defaults_and_bounds() {
        let config = GatewayConfig::from_source(&base()).unwrap();
        assert_eq!(config.group_commit, GroupCommitConfig::default());
        let mut source = base();
        source.insert(env::ORDER_BATCH_MAX, "1");
        source.insert(env::ORDER_PUBLISHES_IN_FLIGHT, "32");
        let config = GatewayConfig::from_source(&source).unwrap();
        assert_eq!(
            (
                config.group_commit.max_batch,
                config.group_commit.max_in_flight
            ),
            (1, 32)
        );
        for (variable, value) in [
            (env::ORDER_BATCH_MAX, "0"),
            (env::ORDER_PUBLISHES_IN_FLIGHT, "5000"),
        ] {
            let mut source = base();
            source.insert(variable, value);
            let error = GatewayConfig::from_source(&source).unwrap_err().to_string();
            assert!(error.contains(variable), "{error}");
        }
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
        assert!(config.trusted_proxies.is_empty(), "off by default");
        assert_eq!(config.registration_limits, RegistrationLimits::default());
        assert_eq!(config.http, HttpLimits::default());
    }

    #[test]
    fn abuse_limits_are_configurable_and_bad_values_name_their_variable() {
        let mut source = base();
        source.insert(env::TRUSTED_PROXIES, "10.0.0.0/8, 192.168.0.7");
        source.insert(env::REGISTER_LIMIT_PER_ADDRESS, "3");
        source.insert(env::REGISTER_LIMIT_WINDOW_SECONDS, "3600");
        source.insert(env::HTTP_HEADER_READ_TIMEOUT_MS, "500");
        let config = GatewayConfig::from_source(&source).unwrap();
        assert!(
            config
                .trusted_proxies
                .is_trusted("10.20.30.40".parse().unwrap())
        );
        assert!(
            config
                .trusted_proxies
                .is_trusted("192.168.0.7".parse().unwrap())
        );
        assert_eq!(
            config.registration_limits,
            RegistrationLimits {
                per_address: 3,
                window: Duration::from_secs(3600)
            }
        );
        assert_eq!(config.http.header_read_timeout, Duration::from_millis(500));

        for (variable, value) in [
            (env::TRUSTED_PROXIES, "10.0.0.0/40"),
            (env::TRUSTED_PROXIES, "0.0.0.0/0"),
            (env::TRUSTED_PROXIES, "ingress-nginx"),
            (env::REGISTER_LIMIT_PER_ADDRESS, "0"),
            (env::REGISTER_LIMIT_PER_ADDRESS, "many"),
            (env::REGISTER_LIMIT_WINDOW_SECONDS, "0"),
            (env::HTTP_REQUEST_TIMEOUT_MS, "0"),
            (env::HTTP_MAX_CONNECTIONS, "none"),
        ] {
            let mut source = base();
            source.insert(variable, value);
            let error = GatewayConfig::from_source(&source)
                .expect_err(value)
                .to_string();
            assert!(
                error.starts_with(&format!("environment variable {variable} is invalid")),
                "{error}"
            );
        }
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
