//! What keeps an operator from doing harm, against the real control plane and under the chart's
//! ServiceAccount: a paused pipeline is left alone, a managed dependency is never scaled down
//! unless the resource allows losing data, and of two replicas only the leader reconciles, with
//! the other taking over when it stops.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use order_pipeline_operator::controller;
use order_pipeline_operator::leader::{self, LeaseSettings};
use pipeline_api::OrderPipeline;
use serde_json::json;
use support::{
    chart_identity, client, install_crd, new_context, provide_volumes, remove_chart_identity,
    volumes,
};
use tokio_util::sync::CancellationToken;

/// External Redis and Cassandra (nothing listens there; these tests never run the workloads'
/// code) keep the test to one managed dependency: RabbitMQ, with two nodes (the one dependency
/// the operator runs as a cluster). kwok runs no RabbitMQ, so its cluster is never seen whole and
/// the pipeline never `Ready`: the tests wait for [`wait_converged`] instead.
fn guarded_pipeline(name: &str) -> OrderPipeline {
    serde_json::from_value(json!({
        "apiVersion": "orderpipeline.dev/v1alpha1",
        "kind": "OrderPipeline",
        "metadata": {"name": name},
        "spec": {
            "rabbitmq": {"managed": {"replicas": 2}},
            "cassandra": {"external": {"endpoints": ["cassandra.example.invalid:9042"]}},
            "redis": {"external": {"endpoints": ["redis.example.invalid:6379"]}},
        },
    }))
    .unwrap()
}

/// Waits until the status reports the current generation with the replicas of every component
/// (the four workloads and RabbitMQ) ready; `Ready` itself also needs the two RabbitMQ nodes'
/// cluster, which kwok never runs.
async fn wait_converged(pipelines: &Api<OrderPipeline>, name: &str) {
    wait_for(
        pipelines,
        name,
        "every component's replicas ready",
        |p: Option<&OrderPipeline>| {
            p.is_some_and(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.observed_generation == p.metadata.generation
                        && s.components.len() == 5
                        && s.components
                            .values()
                            .all(|c| c.ready_replicas == c.desired_replicas)
                })
            })
        },
    )
    .await;
}

async fn namespace(client: &kube::Client) -> String {
    let name = testenv::unique("opsafe");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
    name
}

async fn cleanup(
    client: &kube::Client,
    namespace: &str,
    volumes: Vec<String>,
    operator_namespace: &str,
) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(namespace, &DeleteParams::default())
        .await;
    let volume_api: Api<PersistentVolume> = Api::all(client.clone());
    for volume in volumes {
        let _ = volume_api.delete(&volume, &DeleteParams::default()).await;
    }
    remove_chart_identity(operator_namespace);
}

async fn wait_for<K, F>(api: &Api<K>, name: &str, what: &str, condition: F)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(Option<&K>) -> bool + Send + 'static,
{
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api.clone(), name, condition),
    )
    .await
    .unwrap_or_else(|_| panic!("{what} did not happen within 60s"))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_pipelines_are_left_alone_and_stateful_scale_down_is_refused() {
    let admin = client().await;
    install_crd(&admin).await;
    let namespace = namespace(&admin).await;
    let claims = volumes::claims("guarded", &[("rabbitmq", 2)]);
    let volumes = provide_volumes(&admin, &namespace, &claims).await;
    let (operator_client, operator_namespace) = chart_identity().await;
    let context = new_context(&operator_client);
    let stop = CancellationToken::new();
    let running = tokio::spawn(controller::run(
        context.clone(),
        stop.clone().cancelled_owned(),
    ));

    let pipelines: Api<OrderPipeline> = Api::namespaced(admin.clone(), &namespace);
    pipelines
        .create(&PostParams::default(), &guarded_pipeline("guarded"))
        .await
        .unwrap();
    wait_converged(&pipelines, "guarded").await;

    // Paused: a hand-made change survives reconciles.
    pipelines
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    wait_for(
        &pipelines,
        "guarded",
        "the Paused phase",
        |p: Option<&OrderPipeline>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Paused")
        },
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    deployments
        .patch(
            "guarded-gateway",
            &PatchParams::apply("an-administrator").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 2},
            })),
        )
        .await
        .unwrap();
    controller::reconcile(
        Arc::new(pipelines.get("guarded").await.unwrap()),
        context.clone(),
    )
    .await
    .unwrap();
    let replicas = deployments
        .get("guarded-gateway")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    assert_eq!(
        replicas,
        Some(2),
        "a paused pipeline's children were changed"
    );

    // Resumed: the spec wins again.
    pipelines
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    wait_for(
        &deployments,
        "guarded-gateway",
        "the gateway back at 1 replica",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas) == Some(1)
        },
    )
    .await;

    // Shrinking managed RabbitMQ from 2 to 1 could lose data: refused, reported, nothing changed.
    pipelines
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rabbitmq": {"managed": {"replicas": 1}}}})),
        )
        .await
        .unwrap();
    wait_for(
        &pipelines,
        "guarded",
        "the ScaleDownRefused condition",
        |p: Option<&OrderPipeline>| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Degraded" && c.status == "True" && c.reason == "ScaleDownRefused"
                })
            })
        },
    )
    .await;
    let stateful_sets: Api<StatefulSet> = Api::namespaced(admin.clone(), &namespace);
    assert_eq!(
        stateful_sets
            .get("guarded-rabbitmq")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(2)
    );
    let events: Api<Event> = Api::namespaced(admin.clone(), &namespace);
    let refused = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|event| event.reason.as_deref() == Some("ScaleDownRefused"))
        .expect("a ScaleDownRefused event");
    let note = refused.note.unwrap_or_default();
    assert!(note.contains("allowDataLossOnScaleDown"), "{note}");
    assert_eq!(
        refused.regarding.and_then(|r| r.name).as_deref(),
        Some("guarded")
    );

    // With the data loss allowed, it proceeds.
    pipelines
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"rabbitmq": {"managed": {"allowDataLossOnScaleDown": true}}}}),
            ),
        )
        .await
        .unwrap();
    wait_for(
        &stateful_sets,
        "guarded-rabbitmq",
        "RabbitMQ at 1 replica",
        |s: Option<&StatefulSet>| {
            s.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas) == Some(1)
        },
    )
    .await;

    stop.cancel();
    running.await.unwrap();
    cleanup(&admin, &namespace, volumes, &operator_namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_the_standby_takes_over() {
    let admin = client().await;
    install_crd(&admin).await;
    let namespace = namespace(&admin).await;
    let claims = volumes::claims("led", &[("rabbitmq", 2)]);
    let volumes = provide_volumes(&admin, &namespace, &claims).await;
    // The lease lives where the chart's Role allows it: the operator's own namespace.
    let (operator_client, operator_namespace) = chart_identity().await;
    let replicas: Vec<(Arc<controller::Context>, CancellationToken)> = (0..2)
        .map(|_| (new_context(&operator_client), CancellationToken::new()))
        .collect();
    let mut tasks = Vec::new();
    for (index, (context, shutdown)) in replicas.iter().enumerate() {
        let lease = LeaseSettings {
            name: "order-pipeline-operator".into(),
            namespace: operator_namespace.clone(),
            identity: format!("replica-{index}"),
            duration_seconds: 10,
            grace_seconds: 3,
        };
        tasks.push(tokio::spawn(leader::run(
            context.clone(),
            lease,
            shutdown.clone(),
        )));
    }
    let leaders = || {
        replicas
            .iter()
            .map(|(context, _)| context.metrics.leader.get())
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while leaders().iter().sum::<i64>() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no single leader: {:?}",
            leaders()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leaders().iter().position(|l| *l == 1).unwrap();
    let standby = 1 - leader;

    let pipelines: Api<OrderPipeline> = Api::namespaced(admin.clone(), &namespace);
    pipelines
        .create(&PostParams::default(), &guarded_pipeline("led"))
        .await
        .unwrap();
    wait_converged(&pipelines, "led").await;
    assert!(replicas[leader].0.metrics.reconciles.get() > 0);
    assert_eq!(
        replicas[standby].0.metrics.reconciles.get(),
        0,
        "the standby reconciled"
    );

    // Stop the leader: it releases the lease and the standby takes over.
    replicas[leader].1.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while replicas[standby].0.metrics.leader.get() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby never took over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pipelines
        .patch(
            "led",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dashboard": {"replicas": 2}}})),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    wait_for(
        &deployments,
        "led-dashboard",
        "the new leader applying 2 dashboard replicas",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas) == Some(2)
        },
    )
    .await;
    assert!(replicas[standby].0.metrics.reconciles.get() > 0);

    replicas[standby].1.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    cleanup(&admin, &namespace, volumes, &operator_namespace).await;
}
