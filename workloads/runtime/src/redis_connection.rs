//! The Redis connection every workload uses: configuration from `REDIS_ADDR`, `REDIS_USERNAME`,
//! `REDIS_PASSWORD` and `REDIS_KEY_PREFIX`, a first connection retried until Redis answers (pods may start before
//! Redis does), a multiplexed connection that reconnects by itself afterwards, and a readiness
//! check kept up to date by a periodic PING.

use std::time::Duration;

use pipeline_contract::env;
use pipeline_contract::keys::Keys;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::admin::ReadinessCheck;
use crate::broker::Backoff;
use crate::config::{ConfigError, Source, host_port};
use crate::shutdown::Shutdown;

/// How to reach Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub addr: String,
    /// The ACL user; `None` for Redis's `default` user.
    pub username: Option<String>,
    pub password: Option<String>,
    pub keys: Keys,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("keys", &self.keys)
            .finish()
    }
}

impl RedisConfig {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            addr: host_port(source, env::REDIS_ADDR)?,
            username: source
                .get(env::REDIS_USERNAME)
                .filter(|username| !username.is_empty()),
            password: source
                .get(env::REDIS_PASSWORD)
                .filter(|password| !password.is_empty()),
            keys: Keys::new(source.get(env::REDIS_KEY_PREFIX).unwrap_or_default()),
        })
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        let (host, port) = self
            .addr
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad REDIS_ADDR"))
            })?;
        // No `CLIENT SETINFO` on connect: the workloads' ACL users are not granted it.
        let mut settings = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            host, port,
        ))?
        .set_redis_settings(settings);
        redis::Client::open(info)
    }
}

/// Connects, retrying with backoff until Redis answers or shutdown begins (then `None`).
pub async fn connect(config: &RedisConfig, shutdown: &Shutdown) -> Option<ConnectionManager> {
    let backoff = Backoff::default();
    let mut attempt = 0;
    loop {
        let attempt_result = async {
            let client = config.client()?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(3)))
                .set_response_timeout(Some(Duration::from_secs(3)));
            ConnectionManager::new_with_config(client, manager_config).await
        };
        // One attempt (the driver's own retries, each with a connection timeout) can last many
        // seconds while Redis is down; shutdown must not wait for it. Dropping the attempt is
        // safe: nothing is half-done before a connection exists.
        let result = tokio::select! {
            () = shutdown.triggered() => return None,
            result = attempt_result => result,
        };
        match result {
            Ok(connection) => {
                tracing::info!(addr = %config.addr, "connected to Redis");
                return Some(connection);
            }
            Err(error) => {
                let delay = backoff.delay(attempt, rand::random::<f64>());
                tracing::warn!(addr = %config.addr, %error, delay_ms = delay.as_millis() as u64, "cannot connect to Redis; retrying");
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = shutdown.triggered() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Keeps `check` in step with whether Redis answers PING within `period`, every `period`, until
/// shutdown.
pub fn watch_readiness(
    connection: ConnectionManager,
    check: ReadinessCheck,
    period: Duration,
    shutdown: &Shutdown,
) {
    let token = shutdown.token();
    tokio::spawn(async move {
        let mut connection = connection;
        let mut interval = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = interval.tick() => {
                    // Bounded: while Redis is away the manager's reconnect attempts can hold a
                    // command far longer than one period, and a probe that hangs never reports
                    // the outage.
                    let pong = tokio::time::timeout(
                        period,
                        redis::cmd("PING").query_async::<String>(&mut connection),
                    )
                    .await;
                    check.set(matches!(pong, Ok(Ok(_))));
                }
            }
        }
    });
}

/// Whether a Redis error says Redis is not answering (down, unreachable, restarting and loading
/// its data, refusing the password it was given) rather than that this command failed on its
/// own: the difference between [`crate::consumer::Disposition::Unavailable`] and a retry that
/// counts.
pub fn is_unavailable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.retry_method(),
            redis::RetryMethod::Reconnect
                | redis::RetryMethod::WaitAndRetry
                | redis::RetryMethod::RetryImmediately
        )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn config_reads_the_seed_variables_and_hides_the_password() {
        let source = BTreeMap::from([
            (env::REDIS_ADDR, "redis:6379"),
            (env::REDIS_PASSWORD, "s3cret"),
            (env::REDIS_KEY_PREFIX, "p1:"),
        ]);
        let config = RedisConfig::from_source(&source).unwrap();
        assert_eq!(config.addr, "redis:6379");
        assert_eq!(config.keys.inventory("x"), "p1:inventory:x");
        assert!(!format!("{config:?}").contains("s3cret"));

        let missing: BTreeMap<&str, &str> = BTreeMap::new();
        assert_eq!(
            RedisConfig::from_source(&missing).unwrap_err().to_string(),
            "environment variable REDIS_ADDR is required but not set"
        );
    }

    #[test]
    fn an_unreachable_redis_is_unavailable_and_a_bad_reply_is_not() {
        let refused = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert!(is_unavailable(&refused));
        let bad_reply = redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected outcome in the order record",
        ));
        assert!(!is_unavailable(&bad_reply));
    }
}
