//! Orders stream in while the RabbitMQ node the gateway is connected to is stopped: every order
//! answered 202 is on the cluster, every other one got 503, and none is there twice.
//!
//! Alone in its test binary because it stops a broker node (cargo runs test binaries one at a
//! time).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::Gateway;

const ORDERS: usize = 1500;
const STOP_AFTER: usize = 400;
const WORKERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_orders_survive_the_loss_of_the_connected_node() {
    let gateway = Gateway::start().await;
    let (_, token) = gateway.account().await;
    let connected = gateway.state.broker().current().expect("connected").node;

    let (sender, mut results) = tokio::sync::mpsc::unbounded_channel();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let next = next.clone();
        let sender = sender.clone();
        let http = gateway.client.http.clone();
        let url = gateway.url("/orders");
        let token = token.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if index >= ORDERS {
                    return;
                }
                let id = format!("stream-{index}");
                let status = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"id": id, "sku": "sku", "qty": 1}))
                    .send()
                    .await
                    .map(|response| response.status().as_u16())
                    .unwrap_or(0);
                let _ = sender.send((id, status));
            }
        }));
    }
    drop(sender);

    let mut statuses: BTreeMap<String, u16> = BTreeMap::new();
    let mut stopping = None;
    let started = Instant::now();
    while let Some((id, status)) = results.recv().await {
        statuses.insert(id, status);
        if statuses.len() == STOP_AFTER {
            // Its guard restarts the node when dropped, even when an assertion fails.
            stopping = Some(tokio::task::spawn_blocking(move || {
                testenv::UndoNodeFault::new(connected, "stop", "start")
            }));
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the stream stalled"
        );
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let restart = stopping.expect("node stop started").await.unwrap();

    let accepted: BTreeSet<&String> = statuses
        .iter()
        .filter(|(_, s)| **s == 202)
        .map(|(id, _)| id)
        .collect();
    let refused: BTreeSet<&String> = statuses
        .iter()
        .filter(|(_, s)| **s == 503)
        .map(|(id, _)| id)
        .collect();
    let other: Vec<_> = statuses
        .iter()
        .filter(|(_, s)| ![202, 503].contains(*s))
        .collect();
    assert!(
        other.is_empty(),
        "only 202 or 503 are acceptable answers: {other:?}"
    );
    assert_eq!(accepted.len() + refused.len(), ORDERS);
    let now_connected = gateway.state.broker().current().expect("reconnected").node;
    assert_ne!(
        now_connected, connected,
        "the gateway moved to another node"
    );

    // Every publish has been answered, so everything stored is in the queue now.
    let on_cluster = gateway.drain_orders().await;
    let mut seen = BTreeSet::new();
    for order in &on_cluster {
        assert!(
            seen.insert(order.order.order_id.clone()),
            "{} was published twice",
            order.order.order_id
        );
        assert!(statuses.contains_key(&order.order.order_id));
    }
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    assert!(missing.is_empty(), "accepted orders lost: {missing:?}");
    println!(
        "{ORDERS} orders, node {} stopped after {STOP_AFTER}: {} accepted (all on the cluster), {} refused with 503 \
         ({} of those were stored anyway: their confirm was lost with the node), no duplicates",
        connected + 1,
        accepted.len(),
        refused.len(),
        on_cluster.len() - accepted.len()
    );
    drop(restart);
    gateway.stop().await;
}
