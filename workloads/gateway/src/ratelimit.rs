//! Failed-login rate limiting in Redis, per account and per client address, so a password can't
//! be brute-forced through one account or sprayed across many from one address. Counters are
//! fixed windows shared by every gateway replica; only failures count, and a successful login
//! clears its account's counter.

use std::time::Duration;

use pipeline_contract::keys::Keys;
use redis::aio::ConnectionManager;

use crate::config::LoginLimits;
use crate::problem::AppError;

#[derive(Clone)]
pub struct LoginLimiter {
    redis: ConnectionManager,
    keys: Keys,
    limits: LoginLimits,
}

impl std::fmt::Debug for LoginLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl LoginLimiter {
    pub fn new(redis: ConnectionManager, keys: Keys, limits: LoginLimits) -> Self {
        Self {
            redis,
            keys,
            limits,
        }
    }

    /// Refuses with 429 and `Retry-After` when either counter is at its limit.
    pub async fn check(&self, email: &str, address: &str) -> Result<(), AppError> {
        let email_key = self.keys.failed_logins_by_email(email);
        let address_key = self.keys.failed_logins_by_address(address);
        let mut redis = self.redis.clone();
        let (email_count, email_ttl, address_count, address_ttl): (
            Option<u32>,
            i64,
            Option<u32>,
            i64,
        ) = redis::pipe()
            .get(&email_key)
            .pttl(&email_key)
            .get(&address_key)
            .pttl(&address_key)
            .query_async(&mut redis)
            .await
            .map_err(|error| unavailable("read login counters", error))?;
        let over = |count: Option<u32>, limit: u32| count.unwrap_or(0) >= limit;
        let mut wait = Duration::ZERO;
        if over(email_count, self.limits.per_email) {
            wait = wait.max(ttl_or_window(email_ttl, self.limits.window));
        }
        if over(address_count, self.limits.per_address) {
            wait = wait.max(ttl_or_window(address_ttl, self.limits.window));
        }
        if wait > Duration::ZERO {
            return Err(AppError::TooManyRequests { retry_after: wait });
        }
        Ok(())
    }

    pub async fn record_failure(&self, email: &str, address: &str) -> Result<(), AppError> {
        let window = self.limits.window.as_secs().max(1) as i64;
        let mut redis = self.redis.clone();
        let email_key = self.keys.failed_logins_by_email(email);
        let address_key = self.keys.failed_logins_by_address(address);
        // EXPIRE NX starts the window at the first failure and never extends it.
        redis::pipe()
            .atomic()
            .incr(&email_key, 1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&email_key)
            .arg(window)
            .arg("NX")
            .ignore()
            .incr(&address_key, 1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&address_key)
            .arg(window)
            .arg("NX")
            .ignore()
            .query_async::<()>(&mut redis)
            .await
            .map_err(|error| unavailable("record a failed login", error))
    }

    pub async fn record_success(&self, email: &str) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        redis::cmd("DEL")
            .arg(self.keys.failed_logins_by_email(email))
            .query_async::<()>(&mut redis)
            .await
            .map_err(|error| unavailable("clear failed logins", error))
    }
}

fn ttl_or_window(pttl_ms: i64, window: Duration) -> Duration {
    if pttl_ms > 0 {
        // Round up so a client told "1" never retries a moment too early.
        Duration::from_secs((pttl_ms as u64).div_ceil(1000))
    } else {
        window
    }
}

fn unavailable(action: &str, error: redis::RedisError) -> AppError {
    AppError::Unavailable {
        reason: format!("failed to {action}: {error}"),
        detail: "the login limiter (Redis) is unavailable right now; retry later",
        retry_after: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_falls_back_to_the_window() {
        let window = Duration::from_secs(60);
        assert_eq!(ttl_or_window(1, window), Duration::from_secs(1));
        assert_eq!(ttl_or_window(1500, window), Duration::from_secs(2));
        assert_eq!(ttl_or_window(-1, window), window);
    }
}
