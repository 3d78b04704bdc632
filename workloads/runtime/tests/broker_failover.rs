//! Failover of the connection manager against the real three-node RabbitMQ cluster of
//! `cargo xtask env up rabbitmq`: publish a stream of confirmed messages to a quorum queue, stop
//! the node the publisher is connected to in the middle, and check that publishing continued on
//! another node and that a consumer reads every confirmed message.
//!
//! This file holds one test on purpose: it stops a broker node, and cargo runs test binaries one
//! after another, so no other test sees the cluster with a node missing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{Broker, BrokerConfig, BrokerMetrics, DeclareTopology, Publish};
use workload_runtime::shutdown::Shutdown;

const MESSAGES: usize = 3000;
const STOP_AFTER: usize = 1000;

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_survives_the_loss_of_the_connected_node() {
    let env = testenv::Env::load();
    let urls: Vec<String> = env
        .require("OP_RABBITMQ_URLS")
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(urls.len(), 3, "expected a three-node cluster");
    for node in 0..urls.len() {
        testenv::rabbitmq_node_ctl(node, "status");
    }

    let queue = testenv::unique("failover");
    let declared = queue.clone();
    let topology: DeclareTopology = Arc::new(move |channel| {
        let queue = declared.clone();
        Box::pin(async move {
            channel
                .queue_declare(
                    ShortString::from(queue.as_str()),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    quorum_arguments(),
                )
                .await
                .map(|_| ())
        })
    });
    let shutdown = Shutdown::new();
    let readiness = Readiness::new();
    let broker = Broker::start(
        BrokerConfig::new(urls.clone(), "failover-test"),
        topology,
        BrokerMetrics::unregistered(),
        readiness.check("rabbitmq"),
        &shutdown,
    );
    let first = broker
        .wait_connected(Duration::from_secs(30))
        .await
        .expect("connected to the cluster");
    assert!(readiness.failing().is_empty());

    // The node stopped beside the stream; its guard restarts it when dropped, even when an
    // assertion fails, so later test binaries see a whole cluster.
    let mut stopped: Option<usize> = None;
    let mut stopping = None;
    let mut confirmed = BTreeSet::new();
    let mut failed_attempts = 0usize;
    let mut nodes_used = BTreeSet::new();
    let mut confirmed_after_stop = 0usize;
    let started = Instant::now();
    let mut next = 0usize;
    while next < MESSAGES {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "publishing stalled: {} of {MESSAGES} confirmed",
            confirmed.len()
        );
        if next == STOP_AFTER && stopped.is_none() {
            // Stop the very node the publisher is on while the stream goes on: the stop runs
            // beside the publishing loop, so publishes are in flight when the node goes away.
            let session = broker.current().expect("connected before the stop");
            stopping = Some(tokio::task::spawn_blocking(move || {
                testenv::UndoNodeFault::new(session.node, "stop", "start")
            }));
            stopped = Some(session.node);
        }
        let id = format!("message-{next}");
        let result = broker
            .publish(Publish::new("", &queue, id.as_bytes()).message_id(&id))
            .await;
        match result {
            Ok(()) => {
                let node = broker.current().map(|session| session.node);
                nodes_used.extend(node);
                if stopped.is_some() && node != stopped {
                    confirmed_after_stop += 1;
                }
                confirmed.insert(id);
                next += 1;
            }
            Err(_) => {
                // Not known to be stored: retry the same message, as a client would after a 503.
                failed_attempts += 1;
                broker.wait_connected(Duration::from_secs(30)).await;
            }
        }
    }
    let restart = stopping
        .expect("the stop was started")
        .await
        .expect("the node stopped");
    assert_eq!(confirmed.len(), MESSAGES);
    assert!(
        confirmed_after_stop > 0,
        "no message was confirmed by another node after the stop"
    );
    assert!(
        nodes_used.len() >= 2,
        "publishing should have moved to another node, used {nodes_used:?}"
    );
    let stopped = stopped.expect("a node was stopped");
    assert_eq!(first.node, stopped);

    // Read everything back through a node that stayed up the whole time.
    let survivor = &urls[(stopped + 1) % urls.len()];
    let connection = Connection::connect(survivor, ConnectionProperties::default())
        .await
        .expect("connect to a surviving node");
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(500, Default::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("failover-check"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = BTreeSet::new();
    let mut deliveries = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !confirmed.is_subset(&received) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(remaining, consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} confirmed messages were delivered",
                    confirmed.intersection(&received).count(),
                    confirmed.len()
                )
            })
            .expect("consumer stream open")
            .expect("delivery");
        deliveries += 1;
        received.insert(String::from_utf8(delivery.data.clone()).unwrap());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    println!(
        "published {MESSAGES} confirmed messages ({failed_attempts} failed attempts retried) on nodes \
         {nodes_used:?}; node {} stopped after {STOP_AFTER}, {confirmed_after_stop} confirmed by \
         another node afterwards; consumer read {deliveries} deliveries, {} unique, every \
         confirmed one present",
        stopped + 1,
        received.len()
    );

    channel
        .queue_delete(
            ShortString::from(queue.as_str()),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, ShortString::from("done")).await;
    shutdown.trigger();
    assert!(shutdown.wait_for_tasks(Duration::from_secs(10)).await);
    drop(restart);
}
