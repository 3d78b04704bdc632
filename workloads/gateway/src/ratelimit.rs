//! Rate limits in Redis, shared by every gateway replica: logins per account and per client
//! address (so a password can't be brute-forced through one account or sprayed across many from
//! one address), and registrations per client address (each costs a bcrypt hash).
//!
//! Counters are fixed windows that start with their first attempt. An attempt takes its slot
//! *before* its bcrypt runs, in one atomic step ([`RESERVE`]) that takes a slot in each of its
//! counters or, when any is full, none and refuses with 429 and `Retry-After`: however many
//! guesses arrive at once, at most the limit of them is ever checked.
//!
//! A login is checked twice: read-only before its account is looked up, so a client already
//! over the limit costs no Cassandra read, then for real when a bcrypt thread is ready to hash
//! its password ([`crate::passwords::Passwords::verify_admitted`]), so a slot is held for the
//! hash itself and not while the login waits in the pool's queue or for the account store (a
//! login that fails first, Cassandra unavailable, never takes one). What happens to a taken
//! slot ([`LoginAttempt`]):
//!
//! - a wrong password keeps it: it is a failure;
//! - a right password clears its account's counter (earlier failures are forgiven, as before)
//!   and gives its slot back to the address, so an address only counts failures and a busy one
//!   (an office behind one NAT) is never limited by its users' successful logins;
//! - an attempt abandoned while it hashes (the client went away, the request timed out) keeps
//!   its slots, as a failure: the work was spent, and its answer could have been read.
//!
//! A registration takes its slot before it queues its hash and keeps it whatever the outcome:
//! each one costs a hash.

use std::sync::LazyLock;
use std::time::Duration;

use pipeline_contract::keys::Keys;
use redis::aio::ConnectionManager;

use crate::config::{LoginLimits, RegistrationLimits};
use crate::problem::AppError;

/// Takes one slot in every counter, or none. KEYS: the counters. ARGV[i]: KEYS[i]'s limit;
/// ARGV[#KEYS + 1]: the window (ms); ARGV[#KEYS + 2]: `take`, or `check` to only look. Returns
/// 0 when the slots are free (and were taken), otherwise the milliseconds until every full
/// counter's window has ended.
const RESERVE: &str = r"
local window = tonumber(ARGV[#KEYS + 1])
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      -- A counter without a window would refuse forever: give it one.
      redis.call('PEXPIRE', key, window)
      ttl = window
    end
    -- 0: it expires within this millisecond, and is still full until it does.
    wait = math.max(wait, ttl, 1)
  end
end
if wait > 0 or ARGV[#KEYS + 2] == 'check' then
  return wait
end
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, window)
  end
end
return 0
";

/// Gives slots back. KEYS: counters; ARGV[i]: `clear` to delete KEYS[i], `refund` to take one
/// off it (never below zero, and never recreating a counter whose window ended; a window that
/// ended and began again since the slot was taken loses one count, which is the whole error).
const RELEASE: &str = r"
for i, key in ipairs(KEYS) do
  if ARGV[i] == 'clear' then
    redis.call('DEL', key)
  else
    local count = tonumber(redis.call('GET', key))
    if count and count > 0 then
      redis.call('DECR', key)
    end
  end
end
return 0
";

static RESERVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESERVE));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    keys: Keys,
    login: LoginLimits,
    registration: RegistrationLimits,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("login", &self.login)
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

/// What [`RESERVE`] does when the slots are free.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Check,
    Take,
}

/// A login attempt holding its slots; say how it ended with one of its methods.
#[derive(Debug)]
#[must_use = "a login attempt must say how it ended"]
pub struct LoginAttempt<'a> {
    limiter: &'a RateLimiter,
    email_key: String,
    address_key: String,
}

impl RateLimiter {
    pub fn new(
        redis: ConnectionManager,
        keys: Keys,
        login: LoginLimits,
        registration: RegistrationLimits,
    ) -> Self {
        Self {
            redis,
            keys,
            login,
            registration,
        }
    }

    /// Refuses with 429 and `Retry-After` when `email` or `address` has no login slot left;
    /// takes none. Cheap, for before the account lookup.
    pub async fn check_login(&self, email: &str, address: &str) -> Result<(), AppError> {
        let email_key = self.keys.failed_logins_by_email(email);
        let address_key = self.keys.failed_logins_by_address(address);
        self.reserve(
            &[
                (&email_key, self.login.per_email),
                (&address_key, self.login.per_address),
            ],
            self.login.window,
            Mode::Check,
        )
        .await
    }

    /// Takes a login slot for `email` from `address`, or refuses with 429 and `Retry-After`.
    /// Await it right before the password's bcrypt.
    pub async fn reserve_login(
        &self,
        email: &str,
        address: &str,
    ) -> Result<LoginAttempt<'_>, AppError> {
        let email_key = self.keys.failed_logins_by_email(email);
        let address_key = self.keys.failed_logins_by_address(address);
        self.reserve(
            &[
                (&email_key, self.login.per_email),
                (&address_key, self.login.per_address),
            ],
            self.login.window,
            Mode::Take,
        )
        .await?;
        Ok(LoginAttempt {
            limiter: self,
            email_key,
            address_key,
        })
    }

    /// Takes a registration slot for `address`, or refuses with 429 and `Retry-After`.
    pub async fn reserve_registration(&self, address: &str) -> Result<(), AppError> {
        let key = self.keys.registrations_by_address(address);
        self.reserve(
            &[(&key, self.registration.per_address)],
            self.registration.window,
            Mode::Take,
        )
        .await
    }

    async fn reserve(
        &self,
        counters: &[(&str, u32)],
        window: Duration,
        mode: Mode,
    ) -> Result<(), AppError> {
        let mut invocation = RESERVE_SCRIPT.prepare_invoke();
        for (key, _) in counters {
            invocation.key(*key);
        }
        for (_, limit) in counters {
            invocation.arg(*limit);
        }
        invocation.arg(window.as_millis().max(1) as u64);
        invocation.arg(match mode {
            Mode::Check => "check",
            Mode::Take => "take",
        });
        let mut redis = self.redis.clone();
        let wait_ms: i64 = invocation
            .invoke_async(&mut redis)
            .await
            .map_err(|error| unavailable("read or take a rate-limit slot", error))?;
        if wait_ms > 0 {
            return Err(AppError::TooManyRequests {
                retry_after: retry_after(wait_ms),
            });
        }
        Ok(())
    }

    async fn release(&self, counters: &[(&str, &str)], action: &str) {
        let mut invocation = RELEASE_SCRIPT.prepare_invoke();
        for (key, _) in counters {
            invocation.key(*key);
        }
        for (_, how) in counters {
            invocation.arg(*how);
        }
        let mut redis = self.redis.clone();
        if let Err(error) = invocation.invoke_async::<()>(&mut redis).await {
            // The slot then stays counted until its window ends: stricter, never looser.
            tracing::warn!(%error, "failed to {action}");
        }
    }
}

impl LoginAttempt<'_> {
    /// The password was wrong: the slots stay taken.
    pub fn failed(self) {}

    /// The password was right: the account's failures are forgiven and the address gets its
    /// slot back.
    pub async fn succeeded(self) {
        self.limiter
            .release(
                &[(&self.email_key, "clear"), (&self.address_key, "refund")],
                "clear the failed logins of a successful login",
            )
            .await;
    }
}

/// Whole seconds, rounded up so a client told "1" never retries a moment too early.
fn retry_after(wait_ms: i64) -> Duration {
    Duration::from_secs((wait_ms.max(1) as u64).div_ceil(1000))
}

fn unavailable(action: &str, error: redis::RedisError) -> AppError {
    AppError::Unavailable {
        reason: format!("failed to {action}: {error}"),
        detail: "the rate limiter (Redis) is unavailable right now; retry later",
        retry_after: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(1), Duration::from_secs(1));
        assert_eq!(retry_after(1000), Duration::from_secs(1));
        assert_eq!(retry_after(1500), Duration::from_secs(2));
        assert_eq!(retry_after(60_000), Duration::from_secs(60));
    }
}
