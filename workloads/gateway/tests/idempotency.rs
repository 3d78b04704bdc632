//! The idempotency claim's protocol on the real Redis, and clients that give up mid-request.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use gateway::idempotency::{self, AcceptedRecord, CLAIM_TTL, Revocation, Settled, Verdict};
use redis::AsyncCommands;
use serde_json::json;
use support::Gateway;

const LEASE: Duration = Duration::from_secs(30);

/// A token of an account never deleted (no deletion mark under this key).
const UNREVOKED: Revocation<'static> = Revocation {
    deleted_key: "account:deleted:never-deleted@example.com",
    issued_at: 1,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_moves_from_pending_to_accepted_uncertain_or_free() {
    let gateway = Gateway::start().await;
    let mut redis = gateway.redis.clone();
    let key = gateway.keys.idempotency("owner@example.com", "claimed");
    let take = |digest: &'static str, lease: Duration| {
        let (mut redis, key) = (gateway.redis.clone(), key.clone());
        async move {
            idempotency::take(&mut redis, &key, digest, lease, UNREVOKED)
                .await
                .unwrap()
        }
    };

    // Pending: the same body is told to wait for the lease, another body is refused.
    let Verdict::Claimed(first) = take("body-a", LEASE).await else {
        panic!("a free id is claimed")
    };
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > (CLAIM_TTL.as_secs() - 60) as i64, "ttl {ttl}");
    match take("body-a", LEASE).await {
        Verdict::InFlight(wait) => assert!(wait <= LEASE && wait > LEASE / 2, "{wait:?}"),
        other => panic!("a pending claim made a retry {other:?}"),
    }
    assert_eq!(take("body-b", LEASE).await, Verdict::Conflict);

    // Uncertain: a retry with the same body takes it over (and publishes again); the first
    // request can no longer settle what it no longer holds.
    assert!(first.settle(&mut redis, Settled::Uncertain).await.unwrap());
    assert_eq!(take("body-b", LEASE).await, Verdict::Conflict);
    let Verdict::Claimed(retry) = take("body-a", LEASE).await else {
        panic!("an uncertain claim is taken over by the same body")
    };
    assert!(!first.settle(&mut redis, Settled::NotStored).await.unwrap());
    assert!(retry.settle(&mut redis, Settled::Accepted).await.unwrap());
    assert_eq!(take("body-a", LEASE).await, Verdict::Duplicate);
    assert_eq!(take("body-b", LEASE).await, Verdict::Conflict);

    // A pending claim whose lease is over (its request never finished) is taken over by the
    // same body, and only by it. A zero lease is over at once.
    let key = gateway.keys.idempotency("owner@example.com", "abandoned");
    let Verdict::Claimed(_abandoned) =
        idempotency::take(&mut redis, &key, "body-a", Duration::ZERO, UNREVOKED)
            .await
            .unwrap()
    else {
        panic!("a free id is claimed")
    };
    assert_eq!(
        idempotency::take(&mut redis, &key, "body-b", LEASE, UNREVOKED)
            .await
            .unwrap(),
        Verdict::Conflict
    );
    assert!(matches!(
        idempotency::take(&mut redis, &key, "body-a", LEASE, UNREVOKED)
            .await
            .unwrap(),
        Verdict::Claimed(_)
    ));

    // Certainly not stored: the id is free for any body.
    let key = gateway.keys.idempotency("owner@example.com", "released");
    let Verdict::Claimed(released) =
        idempotency::take(&mut redis, &key, "body-a", LEASE, UNREVOKED)
            .await
            .unwrap()
    else {
        panic!("a free id is claimed")
    };
    assert!(
        released
            .settle(&mut redis, Settled::NotStored)
            .await
            .unwrap()
    );
    let exists: bool = redis.exists(&key).await.unwrap();
    assert!(!exists);
    assert!(matches!(
        idempotency::take(&mut redis, &key, "body-b", LEASE, UNREVOKED)
            .await
            .unwrap(),
        Verdict::Claimed(_)
    ));

    // A claim written before the states existed (a bare digest) is an accepted order.
    let key = gateway.keys.idempotency("owner@example.com", "legacy");
    let _: () = redis.set(&key, "body-a").await.unwrap();
    assert_eq!(
        idempotency::take(&mut redis, &key, "body-a", LEASE, UNREVOKED)
            .await
            .unwrap(),
        Verdict::Duplicate
    );
    assert_eq!(
        idempotency::take(&mut redis, &key, "body-b", LEASE, UNREVOKED)
            .await
            .unwrap(),
        Verdict::Conflict
    );
    gateway.stop().await;
}

/// The accept step moves the claim, writes the order's record and counts the order for the
/// dashboard in one script; a request whose claim a retry took over still leaves the record
/// (its order is in the queue) but does not count the order: across both, it is counted once.
/// The claim's step checks the token first: a token issued at or before its account's deletion
/// claims nothing, one issued after it claims; a mark that is not a time revokes every token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_claims_nothing() {
    let gateway = Gateway::start().await;
    let mut redis = gateway.redis.clone();
    let owner = "deleted@example.com";
    let key = gateway.keys.idempotency(owner, "after-deletion");
    let deleted_key = gateway.keys.account_deleted(owner);
    let _: () = redis.set(&deleted_key, 1_000).await.unwrap();
    for issued_at in [999, 1_000] {
        let verdict = idempotency::take(
            &mut redis,
            &key,
            "body-a",
            LEASE,
            Revocation {
                deleted_key: &deleted_key,
                issued_at,
            },
        )
        .await
        .unwrap();
        assert_eq!(verdict, Verdict::Revoked, "issued at {issued_at}");
    }
    let claim: Option<String> = redis.get(&key).await.unwrap();
    assert_eq!(claim, None, "a revoked token took the claim");
    let after = Revocation {
        deleted_key: &deleted_key,
        issued_at: 1_001,
    };
    assert!(matches!(
        idempotency::take(&mut redis, &key, "body-a", LEASE, after)
            .await
            .unwrap(),
        Verdict::Claimed(_)
    ));
    let _: () = redis.set(&deleted_key, "garbage").await.unwrap();
    let other = gateway.keys.idempotency(owner, "broken-mark");
    assert_eq!(
        idempotency::take(&mut redis, &other, "body-a", LEASE, after)
            .await
            .unwrap(),
        Verdict::Revoked
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_writes_the_record_and_counts_each_order_once() {
    let gateway = Gateway::start().await;
    let mut redis = gateway.redis.clone();
    let owner = "owner@example.com";
    let record = |id: &str, accepted_at: u64| AcceptedRecord {
        record_key: gateway.keys.order(owner, id),
        accepted_count_key: gateway.keys.accepted_count(),
        latest_key: gateway.keys.latest_orders(),
        latest_entry: format!("{owner}:{id}"),
        accepted_at,
        sku: "sku-1",
        qty: 3,
    };
    let counted = |redis: &mut redis::aio::ConnectionManager| {
        let (mut redis, keys) = (redis.clone(), gateway.keys.clone());
        async move {
            let count: Option<u64> = redis.get(keys.accepted_count()).await.unwrap();
            let latest: Vec<String> = redis.lrange(keys.latest_orders(), 0, -1).await.unwrap();
            (count.unwrap_or(0), latest)
        }
    };

    let key = gateway.keys.idempotency(owner, "accepted");
    let Verdict::Claimed(claim) = idempotency::take(&mut redis, &key, "body-a", LEASE, UNREVOKED)
        .await
        .unwrap()
    else {
        panic!("a free id is claimed")
    };
    assert!(
        claim
            .accept(&mut redis, &record("accepted", 11))
            .await
            .unwrap()
    );
    assert_eq!(
        idempotency::take(&mut redis, &key, "body-a", LEASE, UNREVOKED)
            .await
            .unwrap(),
        Verdict::Duplicate
    );
    let fields: BTreeMap<String, String> = redis
        .hgetall(gateway.keys.order(owner, "accepted"))
        .await
        .unwrap();
    assert_eq!(fields["accepted_at"], "11");
    assert_eq!(fields["sku"], "sku-1");
    assert_eq!(fields["qty"], "3");
    let ttl: i64 = redis
        .ttl(gateway.keys.order(owner, "accepted"))
        .await
        .unwrap();
    assert!(ttl > 0, "the record expires: {ttl}");
    assert_eq!(
        counted(&mut redis).await,
        (1, vec![format!("{owner}:accepted")])
    );

    // The first request's lease ran out (a zero lease is over at once) and a retry took over.
    let key = gateway.keys.idempotency(owner, "late");
    let Verdict::Claimed(late) =
        idempotency::take(&mut redis, &key, "body-a", Duration::ZERO, UNREVOKED)
            .await
            .unwrap()
    else {
        panic!("a free id is claimed")
    };
    let Verdict::Claimed(retry) = idempotency::take(&mut redis, &key, "body-a", LEASE, UNREVOKED)
        .await
        .unwrap()
    else {
        panic!("a pending claim past its lease is taken over")
    };
    assert!(!late.accept(&mut redis, &record("late", 21)).await.unwrap());
    let fields: BTreeMap<String, String> = redis
        .hgetall(gateway.keys.order(owner, "late"))
        .await
        .unwrap();
    assert_eq!(
        fields["accepted_at"], "21",
        "the late request's order is queued"
    );
    assert_eq!(
        counted(&mut redis).await.0,
        1,
        "not counted by the late request"
    );
    assert!(retry.accept(&mut redis, &record("late", 22)).await.unwrap());
    let (count, latest) = counted(&mut redis).await;
    println!("accepted counter {count}, latest orders {latest:?}");
    assert_eq!(count, 2);
    assert_eq!(
        latest,
        [format!("{owner}:late"), format!("{owner}:accepted")]
    );
    gateway.stop().await;
}

/// Fault: clients that abort their request almost at once, then retry with the same body until
/// they get an answer. Invariant: every order ends accepted exactly once (a 202, or a 409 for a
/// retry of an order the aborted request had placed), is in `orders.queue`, and no id is left
/// claimed without its order: the handler hyper drops with the aborted connection no longer
/// owns the publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_abort_and_retry_get_each_order_placed_once() {
    const ORDERS: usize = 60;
    let gateway = Gateway::start().await;
    let (_, token) = gateway.account().await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(2))
        .build()
        .unwrap();
    let orders = (0..ORDERS).map(|index| {
        let (gateway, token, impatient) = (&gateway, &token, &impatient);
        async move {
            let id = format!("abort-{index}");
            let body = json!({"id": id, "sku": "abort-sku", "qty": 1});
            let aborted = impatient
                .post(gateway.url("/orders"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .is_err();
            let mut unavailable = 0;
            loop {
                let response = gateway
                    .client
                    .http
                    .post(gateway.url("/orders"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    // Still being published by the aborted request: wait as told.
                    503 => {
                        unavailable += 1;
                        let wait = response
                            .headers()
                            .get("retry-after")
                            .and_then(|value| value.to_str().ok()?.parse().ok())
                            .unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    status => return (id, aborted, status, unavailable),
                }
            }
        }
    });
    let results = join_all(orders).await;
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for order in gateway.drain_orders().await {
        *copies.entry(order.order.order_id).or_default() += 1;
    }
    let aborted = results.iter().filter(|result| result.1).count();
    let accepted = results.iter().filter(|result| result.2 == 202).count();
    let duplicate = results.iter().filter(|result| result.2 == 409).count();
    let waited: usize = results.iter().map(|result| result.3).sum();
    let lost = results
        .iter()
        .filter(|result| !copies.contains_key(&result.0))
        .count();
    let doubled = copies.values().filter(|&&count| count > 1).count();
    println!(
        "aborting clients: sent {ORDERS}, aborted {aborted}, then 202 {accepted}, 409 {duplicate}, 503 while in flight {waited}, in orders.queue {}, lost {lost}, published twice {doubled}",
        copies.len()
    );
    assert!(aborted > 0, "no request was aborted");
    assert!(
        results
            .iter()
            .all(|result| result.2 == 202 || result.2 == 409),
        "{results:?}"
    );
    // A 409 only where the aborted request placed the order.
    assert!(
        results
            .iter()
            .filter(|result| result.2 == 409)
            .all(|result| result.1)
    );
    assert_eq!(lost, 0);
    assert_eq!(doubled, 0);
    gateway.stop().await;
}
