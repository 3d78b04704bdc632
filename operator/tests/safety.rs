//! What keeps an operator from doing harm, against the real control plane and under the chart's
//! ServiceAccount: a paused pipeline is left alone, a managed dependency is never scaled down
//! unless the resource allows losing data, and of two replicas only the leader reconciles, with
//! the other taking over when it stops.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use order_pipeline_operator::controller;
use order_pipeline_operator::leader::{self, LeaseSettings};
use pipeline_api::OrderPipeline;
use serde_json::json;
use support::{TestNamespace, volumes};
use tokio_util::sync::CancellationToken;

/// Held by each test for as long as it runs an operator. Each operator watches only its test's
/// namespace, so they could run at once; one at a time keeps the control plane and kwok on two
/// cores as quick as the tests' deadlines were set for.
static OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _one_operator = OPERATOR.lock().await;
    let test = TestNamespace::create("opsafe").await;
    let (admin, namespace) = (test.admin.clone(), test.name.clone());
    test.provide_volumes(&volumes::claims("guarded", &[("rabbitmq", 2)]))
        .await;
    let (operator, context) = test.operator().await;

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

    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_the_standby_takes_over() {
    let _one_operator = OPERATOR.lock().await;
    let test = TestNamespace::create("opsafe").await;
    let (admin, namespace) = (test.admin.clone(), test.name.clone());
    test.provide_volumes(&volumes::claims("led", &[("rabbitmq", 2)]))
        .await;
    // The lease lives where the chart's Role allows it: the operator's own namespace.
    let (operator_client, operator_namespace) = test.chart_identity().await;
    let replicas: Vec<(Arc<controller::Context>, CancellationToken)> = (0..2)
        .map(|_| (test.context(&operator_client), CancellationToken::new()))
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
}

/// A pipeline whose dependencies are all external: only the four workloads, which kwok runs, so
/// it can become `Ready`.
fn external_pipeline(name: &str, rabbitmq: serde_json::Value) -> OrderPipeline {
    serde_json::from_value(json!({
        "apiVersion": "orderpipeline.dev/v1alpha1",
        "kind": "OrderPipeline",
        "metadata": {"name": name},
        "spec": {
            "rabbitmq": {"external": rabbitmq},
            "cassandra": {"external": {"endpoints": ["cassandra.example.invalid:9042"]}},
            "redis": {"external": {"endpoints": ["redis.example.invalid:6379"]}},
        },
    }))
    .unwrap()
}

fn degraded_with(pipeline: Option<&OrderPipeline>, reason: &str) -> Option<String> {
    pipeline?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == reason)
        .map(|c| c.message.clone())
}

/// Invariants: an object of a child's name that the pipeline does not control is never changed
/// (no field, no owner reference, so the garbage collector never takes it with the pipeline),
/// a pre-created `<name>-jwt` never becomes the signing key, each such pipeline is `Degraded`
/// naming the object, and neither it nor a spec that used to panic the operator (a multi-byte
/// character after `%` in the vhost, read by the autoscaler) keeps a good pipeline from `Ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_objects_are_left_alone_and_a_broken_pipeline_blocks_no_other() {
    let _one_operator = OPERATOR.lock().await;
    use k8s_openapi::api::core::v1::{Secret, Service};
    let test = TestNamespace::create("opsafe").await;
    let (admin, namespace) = (test.admin.clone(), test.name.clone());
    let services: Api<Service> = Api::namespaced(admin.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &namespace);
    // A user's own Service and Secret, with the names the pipelines' children would have.
    let foreign_service: Service = serde_json::from_value(json!({
        "metadata": {"name": "squatter-gateway", "labels": {"team": "payments"}},
        "spec": {"ports": [{"port": 443, "targetPort": 8443}], "selector": {"app": "payments"}},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &foreign_service)
        .await
        .unwrap();
    let planted_key = "planted-signing-key-chosen-by-whoever-could-create-a-secret";
    let planted: Secret = serde_json::from_value(json!({
        "metadata": {"name": "planted-jwt"},
        "stringData": {"secret": planted_key},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &planted)
        .await
        .unwrap();
    let before = services.get("squatter-gateway").await.unwrap();

    let (operator, context) = test.operator().await;
    let pipelines: Api<OrderPipeline> = Api::namespaced(admin.clone(), &namespace);
    let plain = json!({"endpoints": ["amqp://rabbitmq.example.invalid:5672/%2f"]});
    // Autoscaled on an external broker whose vhost the autoscaler decodes: nothing answers at
    // the management URL, so the autoscaler only warns, but it reads the vhost first.
    let mut panicky = external_pipeline(
        "panicky",
        json!({
            "endpoints": ["amqp://rabbitmq.example.invalid:5672/%a€"],
            "managementUrl": "http://127.0.0.1:9",
        }),
    );
    panicky.spec.processor.autoscaling =
        Some(serde_json::from_value(json!({"minReplicas": 1, "maxReplicas": 2})).unwrap());
    for pipeline in [
        external_pipeline("squatter", plain.clone()),
        external_pipeline("planted", plain.clone()),
        panicky,
        external_pipeline("good", plain),
    ] {
        pipelines
            .create(&PostParams::default(), &pipeline)
            .await
            .unwrap();
    }
    support::wait_ready(&pipelines, "good", Duration::from_secs(90)).await;
    support::wait_ready(&pipelines, "panicky", Duration::from_secs(60)).await;
    for (name, object) in [
        ("squatter", "Service squatter-gateway"),
        ("planted", "Secret planted-jwt"),
    ] {
        let wanted = object.to_owned();
        wait_for(
            &pipelines,
            name,
            "the ForeignObject condition",
            move |p: Option<&OrderPipeline>| {
                degraded_with(p, "ForeignObject").is_some_and(|message| message.contains(&wanted))
            },
        )
        .await;
        let message = degraded_with(pipelines.get(name).await.ok().as_ref(), "ForeignObject");
        println!("{name}: Degraded: {}", message.unwrap_or_default());
    }
    // A reconcile of its own (not only the controller's) refuses again, naming the object.
    let refused = controller::reconcile(
        Arc::new(pipelines.get("squatter").await.unwrap()),
        context.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("Service squatter-gateway"),
        "{refused}"
    );

    let after = services.get("squatter-gateway").await.unwrap();
    assert_eq!(
        after.metadata.owner_references, before.metadata.owner_references,
        "the operator adopted a Service it does not own"
    );
    assert_eq!(
        after.spec, before.spec,
        "the operator changed a foreign Service"
    );
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the operator wrote to a foreign Service"
    );
    let planted_now = secrets.get("planted-jwt").await.unwrap();
    assert!(planted_now.metadata.owner_references.is_none());
    // Nothing of the refused pipeline's was applied, so no pod could sign with the planted key.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    for name in ["planted-gateway", "squatter-gateway"] {
        assert!(
            deployments.get_opt(name).await.unwrap().is_none(),
            "{name} was applied"
        );
    }
    let events: Api<Event> = Api::namespaced(admin.clone(), &namespace);
    let warnings: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| event.reason.as_deref() == Some("ForeignObject"))
        .filter_map(|event| event.note)
        .collect();
    assert!(
        warnings
            .iter()
            .any(|note| note.contains("Service squatter-gateway"))
            && warnings
                .iter()
                .any(|note| note.contains("Secret planted-jwt")),
        "ForeignObject events: {warnings:?}"
    );
    assert!(
        !warnings.iter().any(|note| note.contains(planted_key)),
        "an Event carries the planted key"
    );

    operator.stop().await;
}

/// Invariants of the chart's namespaced mode (`watchNamespaces`), under its rendered Roles: the
/// operator reconciles a pipeline in a watched namespace to `Ready`, never touches one in
/// another namespace, and its token is refused everywhere else (Secrets, Jobs and Pods in
/// kube-system included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_operator_works_in_its_namespaces_and_is_refused_elsewhere() {
    let _one_operator = OPERATOR.lock().await;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    let watched_namespace = TestNamespace::create("opsafe").await;
    let ignored_namespace = TestNamespace::create("opsafe").await;
    let admin = watched_namespace.admin.clone();
    let (watched, ignored) = (
        watched_namespace.name.clone(),
        ignored_namespace.name.clone(),
    );
    let (operator_client, _) = watched_namespace
        .chart_identity_watching(&[watched.as_str()])
        .await;
    let context = watched_namespace.context(&operator_client);
    let plain = json!({"endpoints": ["amqp://rabbitmq.example.invalid:5672/%2f"]});
    let elsewhere: Api<OrderPipeline> = Api::namespaced(admin.clone(), &ignored);
    elsewhere
        .create(
            &PostParams::default(),
            &external_pipeline("elsewhere", plain.clone()),
        )
        .await
        .unwrap();
    let operator = support::RunningOperator::start(context.clone());
    let pipelines: Api<OrderPipeline> = Api::namespaced(admin.clone(), &watched);
    pipelines
        .create(&PostParams::default(), &external_pipeline("here", plain))
        .await
        .unwrap();
    support::wait_ready(&pipelines, "here", Duration::from_secs(90)).await;
    // The other pipeline existed before the operator started; a watch that saw it would have
    // reconciled it before the one created after.
    let untouched = elsewhere.get("elsewhere").await.unwrap();
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ignored);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let forbidden = |result: Result<(), kube::Error>, what: &str| match result {
        Err(kube::Error::Api(status)) if status.code == 403 => println!("{what}: 403"),
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    };
    let as_operator = |namespace: &str| -> (Api<Secret>, Api<Job>, Api<Pod>, Api<OrderPipeline>) {
        (
            Api::namespaced(operator_client.clone(), namespace),
            Api::namespaced(operator_client.clone(), namespace),
            Api::namespaced(operator_client.clone(), namespace),
            Api::namespaced(operator_client.clone(), namespace),
        )
    };
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "escalate"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "busybox"}]}}},
    }))
    .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "escalate"},
        "spec": {"containers": [{"name": "x", "image": "busybox"}]},
    }))
    .unwrap();
    for namespace in ["kube-system", ignored.as_str()] {
        let (secrets, jobs, pods, pipelines) = as_operator(namespace);
        forbidden(
            secrets.list(&ListParams::default()).await.map(|_| ()),
            &format!("list Secrets in {namespace}"),
        );
        forbidden(
            secrets.get("anything").await.map(|_| ()),
            &format!("get a Secret in {namespace}"),
        );
        forbidden(
            jobs.create(&PostParams::default(), &job).await.map(|_| ()),
            &format!("create a Job in {namespace}"),
        );
        forbidden(
            pods.create(&PostParams::default(), &pod).await.map(|_| ()),
            &format!("create a Pod in {namespace}"),
        );
        forbidden(
            pipelines.list(&ListParams::default()).await.map(|_| ()),
            &format!("list OrderPipelines in {namespace}"),
        );
    }
    forbidden(
        Api::<OrderPipeline>::all(operator_client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ()),
        "list OrderPipelines in every namespace",
    );
    // Even where it works, it creates no Pods itself.
    let (_, _, pods, _) = as_operator(&watched);
    forbidden(
        pods.create(&PostParams::default(), &pod).await.map(|_| ()),
        &format!("create a Pod in {watched}"),
    );

    operator.stop().await;
}
