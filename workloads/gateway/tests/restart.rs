//! A rolling restart under load: the old gateway is told to stop (what SIGTERM does) while
//! clients keep placing orders, and a new gateway, sharing its RabbitMQ vhost and Redis keys,
//! takes over. A client whose request got no answer (the old gateway closed its connection or
//! refused a new one) retries the same body on the new gateway, as a client behind a Service does.
//!
//! Invariants: no request is answered 503; every order ends accepted exactly once: a 202, or,
//! after a retry of an order the old gateway accepted, a 409 "Duplicate order"; and every such
//! order is in `orders.queue` (none lost). A message published twice would be tolerated by the
//! processor (it applies by order id) but is counted.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use pipeline_contract::env;
use serde_json::json;
use support::Gateway;

const CLIENTS: usize = 16;
const ORDERS_PER_CLIENT: usize = 40;
/// Answers before the old gateway is told to stop: the restart happens mid-load.
const ANSWERS_BEFORE_RESTART: usize = 120;

#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    duplicate_after_retry: usize,
    unavailable: usize,
    no_answer: usize,
    answered_by_new: usize,
    other: Vec<(String, u16)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_answers_no_503_and_keeps_every_order() {
    let old = Gateway::start().await;
    let new = Gateway::start_with(|vars| {
        vars.insert(
            env::RABBITMQ_URLS.to_owned(),
            old.isolation.vhost().urls.join(","),
        );
        vars.insert(
            env::REDIS_KEY_PREFIX.to_owned(),
            old.keys.prefix().to_owned(),
        );
    })
    .await;
    let (_, token) = old.account().await;
    let answers = Arc::new(AtomicUsize::new(0));
    let restart = {
        let answers = answers.clone();
        let old = &old;
        async move {
            while answers.load(Ordering::SeqCst) < ANSWERS_BEFORE_RESTART {
                tokio::task::yield_now().await;
            }
            old.begin_shutdown();
        }
    };

    let clients = (0..CLIENTS).map(|client| {
        let (old, new, token, answers) = (&old, &new, &token, answers.clone());
        async move {
            let mut tally = Tally::default();
            let mut target = old;
            for index in 0..ORDERS_PER_CLIENT {
                let id = format!("restart-{client}-{index}");
                let mut retried = false;
                loop {
                    let sent = target
                        .client
                        .http
                        .post(target.url("/orders"))
                        .bearer_auth(token)
                        .json(&json!({"id": id, "sku": "restart-sku", "qty": 1}))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    let status = match sent {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => {
                            // No answer: the order may or may not have been taken. Retry the
                            // same body where the Service would now send it.
                            tally.no_answer += 1;
                            assert!(
                                !std::ptr::eq(target, new),
                                "the new gateway did not answer {id}"
                            );
                            target = new;
                            retried = true;
                            continue;
                        }
                    };
                    answers.fetch_add(1, Ordering::SeqCst);
                    if std::ptr::eq(target, new) {
                        tally.answered_by_new += 1;
                    }
                    match (status, retried) {
                        (202, _) => tally.accepted += 1,
                        (409, true) => tally.duplicate_after_retry += 1,
                        (503, _) => tally.unavailable += 1,
                        _ => tally.other.push((id.clone(), status)),
                    }
                    break;
                }
            }
            tally
        }
    });
    let (tallies, ()) = tokio::join!(join_all(clients), restart);
    let tally = tallies
        .into_iter()
        .fold(Tally::default(), |mut sum, client| {
            sum.accepted += client.accepted;
            sum.duplicate_after_retry += client.duplicate_after_retry;
            sum.unavailable += client.unavailable;
            sum.no_answer += client.no_answer;
            sum.answered_by_new += client.answered_by_new;
            sum.other.extend(client.other);
            sum
        });

    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for order in old.drain_orders().await {
        *copies.entry(order.order.order_id).or_default() += 1;
    }
    let sent = CLIENTS * ORDERS_PER_CLIENT;
    let lost = (0..CLIENTS)
        .flat_map(|client| (0..ORDERS_PER_CLIENT).map(move |index| (client, index)))
        .filter(|(client, index)| !copies.contains_key(&format!("restart-{client}-{index}")))
        .count();
    let doubled = copies.values().filter(|&&count| count > 1).count();
    println!(
        "rolling restart: sent {sent}, 202 {}, 409 after a retry {}, 503 {}, retried after no answer {}, answered by the new gateway {}, other {:?}, in orders.queue {}, lost {lost}, published twice {doubled}",
        tally.accepted,
        tally.duplicate_after_retry,
        tally.unavailable,
        tally.no_answer,
        tally.answered_by_new,
        tally.other,
        copies.len(),
    );
    assert_eq!(tally.unavailable, 0, "503s during the restart");
    assert!(tally.other.is_empty(), "unexpected answers");
    assert_eq!(
        tally.accepted + tally.duplicate_after_retry,
        sent,
        "every order accepted exactly once"
    );
    assert_eq!(lost, 0, "accepted orders missing from orders.queue");
    assert_eq!(copies.len(), sent);
    assert!(
        tally.answered_by_new > 0,
        "the new gateway took over mid-load"
    );

    old.stop().await;
    new.stop().await;
}
