//! The whole pipeline, gateway to dashboard, with a few thousand orders: duplicates, out-of-stock
//! orders, concurrent orders racing for the last units, and poison messages. Afterwards the
//! invariants the seed could not keep must hold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pipeline_contract::topology;
use pipeline_tests::{Options, Pipeline, campaign};
use workload_runtime::broker::{Broker, Publish};

#[derive(Debug, Clone)]
struct Placed {
    owner: String,
    id: String,
    sku: &'static str,
    qty: u32,
}

const STOCK: [(&str, i64); 3] = [("common", 1500), ("scarce", 25), ("empty", 0)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_orders_keep_every_invariant() {
    let pipeline = Pipeline::start(Options::default()).await.unwrap();
    for (sku, stock) in STOCK {
        if stock > 0 {
            pipeline.set_stock(sku, stock).await.unwrap();
        }
    }
    let mut accounts = Vec::new();
    for _ in 0..8 {
        accounts.push(pipeline.account().await.unwrap());
    }

    // 2000 distinct orders: common ones for qty 1-3 (more than the stock), 300 racing for the 25
    // scarce units, 100 for a SKU nobody stocks. Ids are unique across owners so the dashboard's
    // seed-keyed view can be checked for each.
    let mut orders = Vec::new();
    for index in 0..2000usize {
        let (owner, _) = &accounts[index % accounts.len()];
        let (sku, qty) = match index % 20 {
            0..=2 => ("scarce", 1),
            3 => ("empty", 1 + (index % 2) as u32),
            _ => ("common", 1 + (index % 3) as u32),
        };
        orders.push(Placed {
            owner: owner.clone(),
            id: format!("order-{index}"),
            sku,
            qty,
        });
    }
    let token_of: BTreeMap<String, String> = accounts.iter().cloned().collect();
    let token_of = Arc::new(token_of);

    // Every order once, 16 at a time; then 300 exact retries of accepted orders.
    let place = |order: Placed| {
        let pipeline = &pipeline;
        let token_of = token_of.clone();
        async move {
            pipeline
                .order(&token_of[&order.owner], &order.id, order.sku, order.qty)
                .await
                .unwrap()
        }
    };
    let statuses: Vec<u16> = futures::stream::iter(orders.iter().cloned())
        .map(place)
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|status| *status == 202),
        "every distinct order is accepted"
    );
    let retries: Vec<u16> = futures::stream::iter(orders.iter().step_by(7).take(300).cloned())
        .map(place)
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(retries.len(), 286);
    assert!(
        retries.iter().all(|status| *status == 409),
        "a retry of an accepted order must be a duplicate"
    );

    // Poison straight onto the orders exchange, as a misbehaving publisher would.
    let publisher = Broker::publisher(
        pipeline.vhost().urls.clone(),
        "poison",
        gateway::declare_topology(),
        &workload_runtime::shutdown::Shutdown::new(),
        Duration::from_secs(30),
    )
    .await
    .expect("the poison publisher connected");
    for poison in [
        &b"{not json"[..],
        br#"{"order_id":"p","owner":"x"}"#,
        b"",
        br#"{"order_id":"","owner":"x","sku":"s","qty":1,"accepted_at":1}"#,
    ] {
        publisher
            .publish(Publish::new(
                topology::ORDERS_EXCHANGE,
                topology::ORDERS_ROUTING_KEY,
                poison,
            ))
            .await
            .unwrap();
    }

    // Wait for every order to be decided and every processed one to be notified.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let records = loop {
        let mut records = Vec::new();
        let mut pending = 0;
        for order in &orders {
            let record = pipeline.record(&order.owner, &order.id).await.unwrap();
            pending += usize::from(!campaign::status(&record).is_final());
            records.push(record);
        }
        if pending == 0 {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} orders still undecided or unnotified"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Stock: never negative, and exactly the start minus what was processed.
    let mut processed = 0u64;
    for (sku, start) in STOCK {
        let sold: i64 = orders
            .iter()
            .zip(&records)
            .filter(|(order, record)| order.sku == sku && campaign::status(record).is_applied())
            .map(|(order, _)| i64::from(order.qty))
            .sum();
        let mut redis = pipeline.redis.clone();
        let left: Option<i64> = redis::cmd("GET")
            .arg(pipeline.keys.inventory(sku))
            .query_async(&mut redis)
            .await
            .unwrap();
        let left = left.unwrap_or(0);
        assert!(left >= 0, "{sku} went negative: {left}");
        assert_eq!(
            start - sold,
            left,
            "{sku}: start {start}, sold {sold}, left {left}"
        );
        let dashboard = pipeline.dashboard(&format!("?sku={sku}")).await.unwrap();
        if start > 0 {
            assert_eq!(dashboard["inventory_level"], left, "{sku}");
        }
    }
    // Every rejected order was rejected for a reason that held: not enough stock.
    for (order, record) in orders.iter().zip(&records) {
        match record.get("outcome").map(String::as_str) {
            Some("processed") => processed += 1,
            Some("rejected") => {
                assert_eq!(
                    record.get("reason").map(String::as_str),
                    Some("out_of_stock"),
                    "{}",
                    order.id
                );
                assert!(
                    record.get("notification").is_none(),
                    "{} rejected but notified",
                    order.id
                );
            }
            other => panic!("{} has outcome {other:?}", order.id),
        }
    }
    assert_eq!(
        orders
            .iter()
            .zip(&records)
            .filter(|(o, r)| o.sku == "scarce" && r["outcome"] == "processed")
            .count(),
        25,
        "exactly the scarce stock was sold"
    );

    // Applied once and notified once: the counters agree with the records.
    let dashboard = pipeline.dashboard("").await.unwrap();
    assert_eq!(dashboard["processed_orders_count"], processed);
    assert_eq!(
        pipeline.counter("processor", r#"orders_total{outcome="processed"}"#),
        processed
    );
    assert_eq!(
        pipeline.counter("notifier", r#"notifications_total{outcome="sent"}"#),
        processed
    );
    let sample = orders
        .iter()
        .zip(&records)
        .find(|(_, r)| r["outcome"] == "processed")
        .unwrap()
        .0;
    let view = pipeline
        .dashboard(&format!("?order_id={}", sample.id))
        .await
        .unwrap();
    assert_eq!(view["notification_status"], "sent");

    // The poison went to the dead-letter queue, each with its reason; nothing else did.
    let dead = topology::dead_letter_queue(topology::ORDERS_QUEUE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pipeline.vhost().queue_messages(&dead).await != Some(4) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "poison not dead-lettered: {:?}",
            pipeline.vhost().queue_messages(&dead).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} orders: {processed} processed, {} rejected; 286 retries answered 409; 4 poison messages dead-lettered",
        orders.len(),
        orders.len() as u64 - processed
    );
    pipeline.stop().await;
}
