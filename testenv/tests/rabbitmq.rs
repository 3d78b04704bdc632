//! The RabbitMQ cluster from `cargo xtask env up rabbitmq` is real: three running members, every
//! node takes AMQP connections, and a quorum queue declared through one node is replicated to all.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;

fn list(env: &testenv::Env, key: &str) -> Vec<String> {
    env.require(key).split(',').map(str::to_owned).collect()
}

async fn management_get(env: &testenv::Env, base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .basic_auth(
            env.require("OP_RABBITMQ_USER"),
            Some(env.require("OP_RABBITMQ_PASSWORD")),
        )
        .send()
        .await
        .unwrap_or_else(|error| panic!("management API {base}{path}: {error}"))
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn cluster_has_three_running_members() {
    let env = testenv::Env::load();
    let expected = list(&env, "OP_RABBITMQ_NODES");
    assert_eq!(expected.len(), 3);
    // Every node's management API sees the same three running members.
    for base in list(&env, "OP_RABBITMQ_MANAGEMENT_URLS") {
        let nodes = management_get(&env, &base, "/api/nodes").await;
        let mut running: Vec<String> = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|node| node["running"] == Value::Bool(true))
            .map(|node| node["name"].as_str().unwrap().to_owned())
            .collect();
        running.sort();
        assert_eq!(running, expected, "members seen by {base}");
    }
}

#[tokio::test]
async fn every_node_publishes_and_consumes_through_a_quorum_queue() {
    let env = testenv::Env::load();
    let urls = list(&env, "OP_RABBITMQ_URLS");
    let management = list(&env, "OP_RABBITMQ_MANAGEMENT_URLS");
    let queue = testenv::unique("envcheck");
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );

    let mut connections = Vec::new();
    for url in &urls {
        connections.push(
            Connection::connect(url, ConnectionProperties::default())
                .await
                .unwrap_or_else(|error| panic!("connect to {url}: {error}")),
        );
    }
    let setup = connections[0].create_channel().await.unwrap();
    setup
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();

    // Each node accepts a confirmed publish to the (replicated) queue.
    for (index, connection) in connections.iter().enumerate() {
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirmation = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                format!("via node {index}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "node {index}: {confirmation:?}"
        );
    }

    // The quorum queue has a member on every node.
    let details = management_get(&env, &management[0], &format!("/api/queues/%2f/{queue}")).await;
    assert_eq!(details["type"], "quorum");
    let members = details["members"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(members, 3, "{details}");

    // And a consumer on the last node reads all three messages.
    let channel = connections[2].create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("envcheck"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivery within 10s")
            .unwrap()
            .unwrap();
        bodies.push(String::from_utf8(delivery.data.clone()).unwrap());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    bodies.sort();
    assert_eq!(bodies, ["via node 0", "via node 1", "via node 2"]);

    channel
        .queue_delete(
            ShortString::from(queue.as_str()),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
}
