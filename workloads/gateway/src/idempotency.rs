//! The idempotency claim of an order id: what a retry of `POST /orders` is told, and when the
//! order may be published again.
//!
//! The claim is one Redis string, scoped to the owner ([`Keys::idempotency`]), holding a state
//! and the digest of the order's body:
//!
//! - `pending <until> <digest>`: a request is publishing the order. `<until>` (milliseconds on
//!   Redis' clock, so every gateway replica reads the same time) bounds how long a publish can
//!   take; a claim still pending after it was left by a request that never finished (a gateway
//!   killed mid-publish), and the order may or may not be in the queue.
//! - `uncertain <digest>`: the publish failed in a way that may have stored the message (its
//!   confirm lost with the connection, timed out, or a nack).
//! - `accepted <digest>`: the broker confirmed the order; the client was told 202.
//!
//! A claim that is pending (lease over) or uncertain is taken over by a retry with the same body,
//! which publishes the order again: the processor applies an order once by its id, so a second
//! copy in the queue changes nothing. A different body under that id stays a 422, since the first
//! may be in the queue. A publish that certainly stored nothing (not connected, no confirm
//! channel, unroutable) releases the claim, so the id is free for any body.
//!
//! Lifetime: [`CLAIM_TTL`] outlives the order's record, the processor's "applied" mark, which
//! the processor keeps from the moment it applies the order and extends the claim along with it:
//! a reused id is refused (409 or 422) for as long as the processor would call it applied, and
//! after both are gone it is a new order.
//!
//! [`Keys::idempotency`]: pipeline_contract::keys::Keys::idempotency

use std::sync::LazyLock;
use std::time::Duration;

use pipeline_contract::{LATEST_ORDERS_KEPT, ORDER_RECORD_TTL_SECONDS};
use redis::aio::ConnectionManager;

pub use pipeline_contract::IDEMPOTENCY_CLAIM_TTL_SECONDS;

/// How long a claim is kept: see the module documentation.
pub const CLAIM_TTL: Duration = Duration::from_secs(IDEMPOTENCY_CLAIM_TTL_SECONDS);

/// Checks the token's revocation, then takes the claim or reads why not. KEYS: the claim, the
/// account's deletion mark. ARGV: digest, lease (ms), TTL (s), the token's `iat`. Returns
/// {verdict, detail}: `revoked` (the account was deleted at or after the token was issued:
/// nothing changed), `claimed` with the pending value written, `duplicate`, `conflict`, or
/// `in_flight` with the lease's remaining milliseconds.
const CLAIM: &str = r"
local mark = redis.call('GET', KEYS[2])
if mark then
  -- A mark that is not a time revokes every token: never read a broken mark as no deletion.
  local deleted_at = tonumber(mark)
  if not deleted_at or tonumber(ARGV[4]) <= deleted_at then
    return {'revoked', ''}
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local pending = 'pending ' .. (now + tonumber(ARGV[2])) .. ' ' .. ARGV[1]
local current = redis.call('GET', KEYS[1])
if current then
  local state, rest = string.match(current, '^(%l+) (.+)$')
  if not state then
    -- A bare digest: a claim written before the states existed, for an accepted order.
    state, rest = 'accepted', current
  end
  local digest, lease_until = rest, 0
  if state == 'pending' then
    local until_text, pending_digest = string.match(rest, '^(%d+) (.+)$')
    lease_until, digest = tonumber(until_text), pending_digest
  end
  if digest ~= ARGV[1] then
    return {'conflict', ''}
  end
  if state == 'accepted' then
    return {'duplicate', ''}
  end
  if state == 'pending' and now < lease_until then
    return {'in_flight', tostring(lease_until - now)}
  end
end
redis.call('SET', KEYS[1], pending, 'EX', ARGV[3])
return {'claimed', pending}
";

/// Moves a claim on from the pending value this request wrote, only if it still holds it (a
/// retry may have taken it over once the lease ran out). KEYS: the claim. ARGV: the pending
/// value, the new value (empty: release), TTL (s). Returns 1 if it moved.
const SETTLE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 1
";

/// [`SETTLE`] to `accepted`, and in the same atomic step the order's status record and the
/// dashboard's accepted counter and latest-orders list, so an accepted order costs one round
/// trip after its confirm, and the list never names an order without a record. KEYS: the claim,
/// the order record, the accepted counter, the latest-orders list. ARGV: the pending value, the
/// accepted value, claim TTL (s), accepted_at, SKU, quantity, record TTL (s), the list entry,
/// the list's last index kept. The record is written even when a retry took the claim over (the
/// order is in the queue either way); the counter and the list change only with the claim, so
/// an order is counted once. Returns 1 if the claim moved.
const ACCEPT_BODY: &str = r"
redis.call('HMSET', KEYS[2], FIELD_ACCEPTED_AT, ARGV[4], FIELD_SKU, ARGV[5], FIELD_QTY, ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[7])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('INCR', KEYS[3])
redis.call('LPUSH', KEYS[4], ARGV[8])
redis.call('LTRIM', KEYS[4], 0, ARGV[9])
return 1
";

static CLAIM_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM));
static SETTLE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SETTLE));
static ACCEPT_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&pipeline_contract::lua::script(ACCEPT_BODY)));

/// What an accepted order's record holds, written by [`Claim::accept`].
#[derive(Debug, Clone)]
pub struct AcceptedRecord<'a> {
    pub record_key: String,
    pub accepted_count_key: String,
    pub latest_key: String,
    /// The latest-orders entry (`owner:id`).
    pub latest_entry: String,
    pub accepted_at: u64,
    pub sku: &'a str,
    pub qty: u32,
}

/// What [`take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The token was issued before its account was deleted: nothing was claimed.
    Revoked,
    /// This request holds the claim and publishes; settle it with [`Claim::settle`].
    Claimed(Claim),
    /// The order was accepted before: the seed's `409 Duplicate order`.
    Duplicate,
    /// The id holds another body.
    Conflict,
    /// Another request is publishing this order right now; ask again after this long.
    InFlight(Duration),
}

/// A claim this request holds (the pending value it wrote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    key: String,
    digest: String,
    pending: String,
}

/// How a publish ended, for [`Claim::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Confirmed: the order is accepted.
    Accepted,
    /// May be in the queue: a retry with the same body publishes again.
    Uncertain,
    /// Certainly not stored: the id is free again.
    NotStored,
}

/// The token an order is placed with, whose revocation [`take`] checks in its step.
#[derive(Debug, Clone, Copy)]
pub struct Revocation<'a> {
    /// The account's deletion mark ([`Keys::account_deleted`]).
    ///
    /// [`Keys::account_deleted`]: pipeline_contract::keys::Keys::account_deleted
    pub deleted_key: &'a str,
    /// The token's `iat`.
    pub issued_at: u64,
}

/// Takes the claim at `key` for an order whose body has `digest`, or says why not, in one round
/// trip with the check of the token's `revocation`. `lease` bounds how long this request's
/// publish can take.
pub async fn take(
    redis: &mut ConnectionManager,
    key: &str,
    digest: &str,
    lease: Duration,
    revocation: Revocation<'_>,
) -> redis::RedisResult<Verdict> {
    let (verdict, detail): (String, String) = CLAIM_SCRIPT
        .key(key)
        .key(revocation.deleted_key)
        .arg(digest)
        .arg(lease.as_millis() as u64)
        .arg(IDEMPOTENCY_CLAIM_TTL_SECONDS)
        .arg(revocation.issued_at)
        .invoke_async(redis)
        .await?;
    Ok(match verdict.as_str() {
        "revoked" => Verdict::Revoked,
        "claimed" => Verdict::Claimed(Claim {
            key: key.to_owned(),
            digest: digest.to_owned(),
            pending: detail,
        }),
        "duplicate" => Verdict::Duplicate,
        "conflict" => Verdict::Conflict,
        "in_flight" => {
            Verdict::InFlight(Duration::from_millis(detail.parse().unwrap_or(1000)).max(MIN_WAIT))
        }
        other => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected idempotency verdict",
                other.to_owned(),
            )));
        }
    })
}

/// The shortest wait a client is told to take before asking again.
const MIN_WAIT: Duration = Duration::from_secs(1);

impl Claim {
    /// Records that the broker confirmed the order, with its status record (see
    /// [`ACCEPT_BODY`]). Returns whether the claim was still this request's.
    pub async fn accept(
        &self,
        redis: &mut ConnectionManager,
        record: &AcceptedRecord<'_>,
    ) -> redis::RedisResult<bool> {
        let moved: i64 = ACCEPT_SCRIPT
            .key(&self.key)
            .key(&record.record_key)
            .key(&record.accepted_count_key)
            .key(&record.latest_key)
            .arg(&self.pending)
            .arg(format!("accepted {}", self.digest))
            .arg(IDEMPOTENCY_CLAIM_TTL_SECONDS)
            .arg(record.accepted_at)
            .arg(record.sku)
            .arg(record.qty)
            .arg(ORDER_RECORD_TTL_SECONDS)
            .arg(&record.latest_entry)
            .arg(LATEST_ORDERS_KEPT - 1)
            .invoke_async(redis)
            .await?;
        Ok(moved == 1)
    }

    /// Records how the publish ended. Returns whether the claim was still this request's (when
    /// not, a retry took it over after the lease and settles it itself).
    pub async fn settle(
        &self,
        redis: &mut ConnectionManager,
        settled: Settled,
    ) -> redis::RedisResult<bool> {
        let next = match settled {
            Settled::Accepted => format!("accepted {}", self.digest),
            Settled::Uncertain => format!("uncertain {}", self.digest),
            Settled::NotStored => String::new(),
        };
        let moved: i64 = SETTLE_SCRIPT
            .key(&self.key)
            .arg(&self.pending)
            .arg(next)
            .arg(IDEMPOTENCY_CLAIM_TTL_SECONDS)
            .invoke_async(redis)
            .await?;
        Ok(moved == 1)
    }
}

// The claim outlives the record it guards.
const _: () = assert!(IDEMPOTENCY_CLAIM_TTL_SECONDS > pipeline_contract::ORDER_RECORD_TTL_SECONDS);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name the accept script uses is one the contract declares.
    #[test]
    fn the_accept_script_uses_only_the_contracts_names() {
        assert_eq!(
            pipeline_contract::lua::undeclared(ACCEPT_BODY),
            Vec::<String>::new()
        );
        assert!(!ACCEPT_BODY.contains("'accepted_at'"));
    }
}
