//! One credential per workload, each with only what it needs (`pipeline_contract::access`).
//!
//! The pipeline runs with each workload's own RabbitMQ and Redis user (every test of this crate
//! does, so those grants are enough for the whole flow); here each user tries what it must not:
//! the dashboard writing or flushing Redis or taking, publishing or declaring anything on
//! RabbitMQ (it may only read queue depths), the notifier and the gateway publishing the
//! `order.created` events the notifier trusts, the gateway touching stock, the notifier reading
//! the orders queue. Every attempt must be refused by the server itself.

use std::collections::BTreeMap;

use lapin::options::BasicConsumeOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use pipeline_contract::{Workload, env, topology};
use pipeline_tests::{Options, Pipeline};

/// Runs one Redis command as `workload`'s user; the server's answer.
async fn redis_as(pipeline: &Pipeline, workload: Workload, command: &[&str]) -> Result<(), String> {
    let variables = &pipeline.variables[&workload];
    let url = format!(
        "redis://{}:{}@{}",
        variables[env::REDIS_USERNAME],
        variables[env::REDIS_PASSWORD],
        variables[env::REDIS_ADDR]
    );
    let client = redis::Client::open(url).map_err(|error| error.to_string())?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|error| format!("login: {error}"))?;
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.exec_async(&mut connection)
        .await
        .map_err(|error| error.to_string())
}

async fn amqp_as(pipeline: &Pipeline, workload: Workload) -> Connection {
    let urls = workload_runtime::config::rabbitmq_urls(&pipeline.variables[&workload]).unwrap();
    Connection::connect(&urls[0], ConnectionProperties::default())
        .await
        .unwrap_or_else(|error| panic!("{workload:?} cannot log in to RabbitMQ: {error}"))
}

/// Publishes one forged `order.created` as `workload`; the broker's verdict.
async fn publish_as(pipeline: &Pipeline, workload: Workload, exchange: &str) -> Result<(), String> {
    let connection = amqp_as(pipeline, workload).await;
    let outcome = testenv::access::publish_confirmed(
        &connection,
        exchange,
        topology::ORDER_CREATED,
        br#"{"forged":true}"#,
    )
    .await;
    let _ = connection.close(200, "done".into()).await;
    outcome
}

fn refused(
    what: &str,
    outcome: Result<(), String>,
    marker: &'static str,
    counts: &mut BTreeMap<&'static str, u32>,
) {
    match outcome {
        Ok(()) => panic!("{what}: allowed"),
        Err(error) => {
            assert!(
                error.contains(marker),
                "{what}: refused, but not by ACL: {error}"
            );
            println!("{what}: refused ({error})");
            *counts.entry(marker).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workload_is_refused_what_it_does_not_use() {
    let pipeline = Pipeline::start(Options::default()).await.unwrap();
    pipeline.set_stock("sku-1", 10).await.unwrap();
    let inventory = pipeline.keys.inventory("sku-1");
    let count = pipeline.keys.processed_count();
    let mut counts = BTreeMap::new();

    // What each one may do, so a refusal below is about the command, not the login.
    redis_as(&pipeline, Workload::Dashboard, &["GET", &inventory])
        .await
        .expect("the dashboard reads stock");
    redis_as(&pipeline, Workload::Processor, &["GET", &count])
        .await
        .expect("the processor reads its counter");

    for (what, workload, command) in [
        ("dashboard FLUSHALL", Workload::Dashboard, vec!["FLUSHALL"]),
        (
            "dashboard SET stock",
            Workload::Dashboard,
            vec!["SET", &inventory, "1000"],
        ),
        (
            "dashboard DEL counter",
            Workload::Dashboard,
            vec!["DEL", &count],
        ),
        ("dashboard KEYS", Workload::Dashboard, vec!["KEYS", "*"]),
        (
            "gateway SET stock",
            Workload::Gateway,
            vec!["SET", &inventory, "1000"],
        ),
        (
            "notifier INCR counter",
            Workload::Notifier,
            vec!["INCR", &count],
        ),
        (
            "processor CONFIG SET",
            Workload::Processor,
            vec!["CONFIG", "SET", "appendonly", "no"],
        ),
        (
            "processor GET outside its prefix",
            Workload::Processor,
            vec!["GET", "inventory:sku-1"],
        ),
    ] {
        refused(
            what,
            redis_as(&pipeline, workload, &command).await,
            "NoPerm",
            &mut counts,
        );
    }
    let stock = pipeline.stock("sku-1").await.unwrap();
    assert_eq!(stock, 10, "a refused write changed the stock");

    // Forged outcomes: only the processor may publish to the events exchange.
    for (what, workload) in [
        ("notifier publishes order.created", Workload::Notifier),
        ("gateway publishes order.created", Workload::Gateway),
    ] {
        refused(
            what,
            publish_as(&pipeline, workload, topology::EVENTS_EXCHANGE).await,
            "ACCESS_REFUSED",
            &mut counts,
        );
    }
    publish_as(&pipeline, Workload::Processor, topology::EVENTS_EXCHANGE)
        .await
        .expect("the processor publishes outcomes");

    // Each consumer lists and re-drives its own dead letters with its own user (as
    // `kubectl exec deploy/<pipeline>-processor -- /processor dead-letters ...` does), and the
    // notifier cannot touch the processor's.
    // A poison order, published as the gateway: the processor dead-letters it.
    let gateway = amqp_as(&pipeline, Workload::Gateway).await;
    testenv::access::publish_confirmed(
        &gateway,
        topology::ORDERS_EXCHANGE,
        topology::ORDERS_ROUTING_KEY,
        b"not an order",
    )
    .await
    .expect("the gateway publishes orders");
    let processor = amqp_as(&pipeline, Workload::Processor).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let letters = workload_runtime::dead_letters::list(&processor, topology::ORDERS_QUEUE, 10)
            .await
            .expect("the processor lists its dead letters");
        if letters.len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison order was not dead-lettered: {letters:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Listing hands the letters back when its channel closes; a quorum queue counts a returned
    // message as ready again a moment later, and `redrive` moves only what is ready when it
    // starts. Wait for that, as a person running `list` then `redrive` would.
    let dead_letter_queue = topology::dead_letter_queue(topology::ORDERS_QUEUE);
    let counting = processor.create_channel().await.unwrap();
    loop {
        let ready = workload_runtime::queues::depth(&counting, &dead_letter_queue)
            .await
            .expect("the processor reads its dead-letter queue's depth")
            .ready;
        if ready == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listed dead letter never came back: {ready} ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let moved = workload_runtime::dead_letters::redrive(&processor, topology::ORDERS_QUEUE, 10)
        .await
        .expect("the processor re-drives its dead letters");
    assert_eq!(moved, 1, "re-driven through orders.queue.redrive");
    let notifier = amqp_as(&pipeline, Workload::Notifier).await;
    let listed = workload_runtime::dead_letters::list(&notifier, topology::ORDERS_QUEUE, 10)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string());
    refused(
        "notifier lists the orders' dead letters",
        listed,
        "ACCESS_REFUSED",
        &mut counts,
    );

    // The notifier cannot take the processor's orders.
    let connection = amqp_as(&pipeline, Workload::Notifier).await;
    let channel = connection.create_channel().await.unwrap();
    let consumed = channel
        .basic_consume(
            ShortString::from(topology::ORDERS_QUEUE),
            ShortString::from("thief"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ())
        .map_err(|error| error.to_string());
    refused(
        "notifier consumes orders.queue",
        consumed,
        "ACCESS_REFUSED",
        &mut counts,
    );
    // The dashboard reads queue depths with passive declares, and may do nothing else: not
    // take an order, not publish one, not declare a queue of its own.
    let dashboard = amqp_as(&pipeline, Workload::Dashboard).await;
    let channel = dashboard.create_channel().await.unwrap();
    let depth = workload_runtime::queues::depth(&channel, topology::ORDERS_QUEUE)
        .await
        .expect("the dashboard reads the orders queue's depth");
    println!(
        "dashboard: orders.queue has {} ready, {} consumers",
        depth.ready, depth.consumers
    );
    assert!(depth.consumers >= 1, "the processor consumes");
    let taken = channel
        .basic_get(
            ShortString::from(topology::ORDERS_QUEUE),
            lapin::options::BasicGetOptions::default(),
        )
        .await
        .map(|_| ())
        .map_err(|error| error.to_string());
    refused(
        "dashboard takes from orders.queue",
        taken,
        "ACCESS_REFUSED",
        &mut counts,
    );
    refused(
        "dashboard publishes an order",
        publish_as(&pipeline, Workload::Dashboard, topology::ORDERS_EXCHANGE).await,
        "ACCESS_REFUSED",
        &mut counts,
    );
    let channel = dashboard.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            ShortString::from("dashboard.own"),
            lapin::options::QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ())
        .map_err(|error| error.to_string());
    refused(
        "dashboard declares a queue",
        declared,
        "ACCESS_REFUSED",
        &mut counts,
    );
    println!("refusals by kind: {counts:?}");
    pipeline.stop().await;
}

/// The dashboard's counters, latest-orders list and SKU index are written by the scripts each
/// workload already runs, under its own user: a command its ACL lacks would
/// abort the write (the gateway's record write once did, over an INCRBY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_sources_are_written_with_each_workloads_own_grants() {
    let pipeline = Pipeline::start(Options::default()).await.unwrap();
    pipeline.set_stock("sku-1", 2).await.unwrap();
    let (owner, token) = pipeline.account().await.unwrap();
    assert_eq!(
        pipeline.order(&token, "fits", "sku-1", 2).await.unwrap(),
        202
    );
    assert_eq!(
        pipeline.order(&token, "short", "sku-1", 1).await.unwrap(),
        202
    );

    let keys = &pipeline.keys;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut redis = pipeline.redis.clone();
    loop {
        let counters: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(keys.accepted_count())
            .arg(keys.processed_count())
            .arg(keys.rejected_count())
            .arg(keys.notified_count())
            .query_async(&mut redis)
            .await
            .unwrap();
        if counters == [Some(2), Some(1), Some(1), Some(1)] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters (accepted, processed, rejected, notified) stuck at {counters:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let latest: Vec<String> = redis::cmd("LRANGE")
        .arg(keys.latest_orders())
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(latest, [format!("{owner}:short"), format!("{owner}:fits")]);
    let skus: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.inventory_skus())
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(skus, ["sku-1"]);
    pipeline.stop().await;
}
