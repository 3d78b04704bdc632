//! Queue-depth autoscaling against the environment's real RabbitMQ cluster, configured as the
//! pipeline's `external` RabbitMQ: fill `orders.queue` and the processor's replicas rise to the
//! bound; drain it and they fall back once the stabilisation window has passed. The operator runs
//! under the chart's ServiceAccount.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use pipeline_api::OrderPipeline;
use serde_json::json;
use support::{TestNamespace, wait_ready};

const MANAGEMENT: &str = "http://127.0.0.1:15672";

async fn processor_replicas(deployments: &Api<Deployment>, replicas: i32, within: Duration) {
    let wanted = await_condition(
        deployments.clone(),
        "scaled-processor",
        move |d: Option<&Deployment>| {
            d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas) == Some(replicas)
        },
    );
    tokio::time::timeout(within, wanted)
        .await
        .unwrap_or_else(|_| {
            panic!("the processor did not reach {replicas} replicas within {within:?}")
        })
        .unwrap();
}

/// Waits until the status records a decision to `replicas` and returns it.
async fn recorded_decision(
    pipelines: &Api<OrderPipeline>,
    replicas: i32,
) -> pipeline_api::ScalingDecision {
    let recorded = await_condition(
        pipelines.clone(),
        "scaled",
        move |p: Option<&OrderPipeline>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.autoscaler.get("processor"))
                .is_some_and(|d| d.to_replicas == replicas)
        },
    );
    let pipeline = tokio::time::timeout(Duration::from_secs(30), recorded)
        .await
        .unwrap_or_else(|_| panic!("no decision to {replicas} in the status"))
        .unwrap()
        .unwrap();
    pipeline.status.unwrap().autoscaler["processor"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_replicas_follow_the_queue_within_bounds() {
    let test = TestNamespace::create("opscale").await;
    let (admin, namespace) = (test.admin.clone(), test.name.clone());
    // The broker side: a vhost of the test's own, removed when dropped.
    let isolation = testenv::Isolation::new("autoscale").await;
    let (environment, vhost) = (&isolation.env, isolation.vhost());
    let user = environment.require("OP_RABBITMQ_USER");
    let password = environment.require("OP_RABBITMQ_PASSWORD");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &namespace);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "mq"},
                "stringData": {"username": user, "password": password},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let queue_url = format!("{MANAGEMENT}/api/queues/{}/orders.queue", vhost.name);
    http.put(&queue_url)
        .basic_auth(&user, Some(&password))
        .json(&json!({"durable": true, "arguments": {"x-queue-type": "quorum"}}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let (operator, _) = test.operator().await;

    let pipelines: Api<OrderPipeline> = Api::namespaced(admin.clone(), &namespace);
    let pipeline: OrderPipeline = serde_json::from_value(json!({
        "apiVersion": "orderpipeline.dev/v1alpha1",
        "kind": "OrderPipeline",
        "metadata": {"name": "scaled"},
        "spec": {
            "rabbitmq": {"external": {
                "endpoints": [format!("amqp://127.0.0.1:5672/{}", vhost.name)],
                "credentialsSecretRef": {"name": "mq"},
                "managementUrl": MANAGEMENT,
            }},
            "redis": {"external": {"endpoints": ["redis.example.invalid:6379"]}},
            "cassandra": {"external": {"endpoints": ["cassandra.example.invalid:9042"]}},
            "processor": {"autoscaling": {
                "minReplicas": 1, "maxReplicas": 4, "targetQueueDepthPerReplica": 10, "scaleDownWindowSeconds": 5,
            }},
        },
    }))
    .unwrap();
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();
    wait_ready(&pipelines, "scaled", Duration::from_secs(60)).await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    processor_replicas(&deployments, 1, Duration::from_secs(30)).await;

    // 100 waiting messages at 10 per replica want 10 replicas: capped at 4.
    for index in 0..100 {
        http.post(format!("{MANAGEMENT}/api/exchanges/{}/amq.default/publish", vhost.name))
            .basic_auth(&user, Some(&password))
            .json(&json!({"routing_key": "orders.queue", "payload": format!("order {index}"), "payload_encoding": "string", "properties": {}}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    processor_replicas(&deployments, 4, Duration::from_secs(60)).await;
    let decision = recorded_decision(&pipelines, 4).await;
    assert_eq!((decision.from_replicas, decision.to_replicas), (1, 4));
    assert_eq!(decision.queue, "orders.queue");
    assert!(decision.queue_depth >= 31, "{decision:?}");

    // Drained: back to the minimum, but only after the window.
    http.delete(format!("{queue_url}/contents"))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    processor_replicas(&deployments, 1, Duration::from_secs(90)).await;
    let decision = recorded_decision(&pipelines, 1).await;
    assert_eq!(
        (
            decision.from_replicas,
            decision.to_replicas,
            decision.queue_depth
        ),
        (4, 1, 0)
    );
    assert!(decision.reason.contains("for 5s"), "{}", decision.reason);
    let events: Api<Event> = Api::namespaced(admin.clone(), &namespace);
    // kube's recorder folds repeats of one reason into an event series: count occurrences.
    let occurrences: i32 = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| event.reason.as_deref() == Some("Scaled"))
        .map(|event| event.series.map_or(1, |series| series.count))
        .sum();
    assert_eq!(occurrences, 2, "one Scaled event per decision");

    operator.stop().await;
}
