//! The operator against the environment's real control plane (etcd, kube-apiserver with RBAC,
//! controller-manager, scheduler, kwok): apply a pipeline and every child appears, kwok makes the
//! pods Ready and the status follows; once converged, reconciling again writes nothing; a change
//! of replicas changes only what it must; deleting the pipeline garbage-collects the children.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use support::{TestNamespace, volumes, wait_ready};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use order_pipeline_operator::controller;
use pipeline_api::OrderPipeline;
use serde_json::json;

/// What the operator last wrote to every child: its generation (spec changes) and the time of the
/// operator's own managed-fields entry, which an apply that changes nothing leaves alone. Status
/// updates by Kubernetes' own controllers change neither.
async fn versions(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    let params =
        ListParams::default().labels("app.kubernetes.io/managed-by=order-pipeline-operator");
    let mut versions = BTreeMap::new();
    macro_rules! collect {
        ($kind:ty) => {
            for object in Api::<$kind>::namespaced(client.clone(), namespace)
                .list(&params)
                .await
                .unwrap()
            {
                let ours = object
                    .managed_fields()
                    .iter()
                    .filter(|entry| entry.manager.as_deref() == Some("order-pipeline-operator"))
                    .map(|entry| format!("{:?}", entry.time))
                    .collect::<Vec<_>>()
                    .join(",");
                versions.insert(
                    format!("{}/{}", stringify!($kind), object.name_any()),
                    format!(
                        "generation {:?}, written {ours}",
                        object.metadata.generation
                    ),
                );
            }
        };
    }
    collect!(Deployment);
    collect!(StatefulSet);
    collect!(Service);
    collect!(Secret);
    collect!(NetworkPolicy);
    collect!(PodDisruptionBudget);
    versions
}

/// The children whose recorded versions differ between two [`versions`] snapshots.
fn changed_children(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<String> {
    after
        .keys()
        .filter(|key| before.get(*key) != after.get(*key))
        .cloned()
        .collect()
}

/// Merge-patches the sample pipeline's spec, as a user editing it would, and waits until the
/// operator has reconciled the change and the pipeline is Ready again.
async fn respec(pipelines: &Api<OrderPipeline>, spec: serde_json::Value) -> OrderPipeline {
    pipelines
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
    wait_ready(pipelines, "shop", Duration::from_secs(60)).await
}

fn template(deployment: &Deployment) -> &PodTemplateSpec {
    &deployment.spec.as_ref().unwrap().template
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_converges_stays_quiet_scales_and_is_collected() {
    let test = TestNamespace::create("op").await;
    let (client, namespace) = (test.admin.clone(), test.name.clone());
    // The sample's claims once its RabbitMQ is one node (below).
    test.provide_volumes(&volumes::default_claims("shop")).await;

    // The operator runs as the Helm chart's ServiceAccount: a rule missing from the chart fails
    // this test. The assertions use the admin client.
    let (operator_client, _) = test.chart_identity().await;
    let context = test.context(&operator_client);
    let operator = support::RunningOperator::start(context.clone());

    let pipelines: Api<OrderPipeline> = Api::namespaced(client.clone(), &namespace);
    // The project's sample resource, as a user would apply it, with one RabbitMQ node: kwok
    // runs no container, so three nodes could never report one cluster through the management
    // API, which a clustered RabbitMQ's Ready requires (the real node's e2e suite runs three).
    let mut sample: OrderPipeline =
        serde_yaml::from_str(include_str!("../../samples/orderpipeline.yaml")).unwrap();
    let rabbitmq = sample.spec.rabbitmq.managed.as_mut().unwrap();
    assert_eq!(rabbitmq.replicas, 3, "the sample's cluster");
    rabbitmq.replicas = 1;
    pipelines
        .create(&PostParams::default(), &sample)
        .await
        .unwrap();
    let ready = wait_ready(&pipelines, "shop", Duration::from_secs(120)).await;
    let status = ready.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Ready"));
    assert_eq!(status.ready_components.as_deref(), Some("7/7"));
    assert_eq!(status.components["gateway"].ready_replicas, 1);
    assert_eq!(
        status.endpoints.gateway.as_deref(),
        Some(format!("http://shop-gateway.{namespace}.svc:8080").as_str())
    );

    // Every child exists with the expected fields.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let gateway = deployments.get("shop-gateway").await.unwrap();
    let owner = &gateway.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("OrderPipeline", "shop")
    );
    assert_eq!(gateway.spec.as_ref().unwrap().replicas, Some(1));
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    assert_eq!(
        statefulsets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let jwt = secrets.get("shop-jwt").await.unwrap().data.unwrap()["secret"].clone();
    assert_eq!(jwt.0.len(), 48);

    // Converged: more reconciles write nothing at all, whether they find the children as the
    // ledger recorded them (the same context) or apply every child again (a fresh context, as
    // after a restart, a new leadership term or the periodic full apply).
    let before = versions(&client, &namespace).await;
    let pipeline_version = pipelines.get("shop").await.unwrap().resource_version();
    for _ in 0..3 {
        let current = Arc::new(pipelines.get("shop").await.unwrap());
        controller::reconcile(current, context.clone())
            .await
            .unwrap();
    }
    let fresh = test.context(&operator_client);
    controller::reconcile(
        Arc::new(pipelines.get("shop").await.unwrap()),
        fresh.clone(),
    )
    .await
    .unwrap();
    assert_eq!(fresh.metrics.full_applies.get(), 1);
    assert_eq!(
        versions(&client, &namespace).await,
        before,
        "a steady-state reconcile wrote a child"
    );
    assert_eq!(
        pipelines.get("shop").await.unwrap().resource_version(),
        pipeline_version,
        "it wrote the status"
    );

    // Drift the ledger must see: a deleted Service and a Deployment scaled by hand are repaired
    // by a full apply, not skipped over.
    let full_applies = context.metrics.full_applies.get();
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    services
        .delete("shop-gateway", &DeleteParams::default())
        .await
        .unwrap();
    deployments
        .patch(
            "shop-processor",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    controller::reconcile(
        Arc::new(pipelines.get("shop").await.unwrap()),
        context.clone(),
    )
    .await
    .unwrap();
    assert!(services.get_opt("shop-gateway").await.unwrap().is_some());
    let processor = deployments.get("shop-processor").await.unwrap();
    assert_eq!(processor.spec.unwrap().replicas, Some(1));
    assert!(context.metrics.full_applies.get() > full_applies);
    let before = versions(&client, &namespace).await;

    // Scaling the gateway changes its Deployment and adds a disruption budget; nothing rolls.
    let hash_before = template(&gateway)
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone();
    let scaled = respec(&pipelines, json!({"gateway": {"replicas": 3}})).await;
    assert_eq!(
        scaled.status.unwrap().components["gateway"],
        pipeline_api::ComponentStatus {
            desired_replicas: 3,
            ready_replicas: 3
        }
    );
    let gateway = deployments.get("shop-gateway").await.unwrap();
    assert_eq!(gateway.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(
        template(&gateway).metadata.as_ref().unwrap().annotations,
        hash_before
    );
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    assert!(budgets.get_opt("shop-gateway").await.unwrap().is_some());
    let after = versions(&client, &namespace).await;
    let changed = changed_children(&before, &after);
    assert!(
        changed.iter().all(|key| key.ends_with("/shop-gateway")),
        "only the gateway's objects may change: {changed:?}"
    );

    // Back to one replica: the budget would block draining the only pod, so it goes.
    respec(&pipelines, json!({"gateway": {"replicas": 1}})).await;
    assert!(budgets.get_opt("shop-gateway").await.unwrap().is_none());

    // A new processor image changes only the processor's Deployment.
    let before = versions(&client, &namespace).await;
    respec(
        &pipelines,
        json!({"processor": {"image": "example.invalid/processor:2"}}),
    )
    .await;
    let processor = deployments.get("shop-processor").await.unwrap();
    let image = template(&processor).spec.as_ref().unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("example.invalid/processor:2"));
    let after = versions(&client, &namespace).await;
    let changed = changed_children(&before, &after);
    assert_eq!(
        changed,
        ["Deployment/shop-processor"],
        "only the processor may change"
    );

    // A token setting every workload reads rolls the workloads (new config hash), not the
    // dependencies.
    let hash = |deployment: &Deployment| {
        template(deployment)
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["orderpipeline.dev/config-hash"]
            .clone()
    };
    let hashes_before: Vec<String> = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(hash)
        .collect();
    let before = versions(&client, &namespace).await;
    respec(&pipelines, json!({"auth": {"tokenLifetimeSeconds": 600}})).await;
    let hashes_after: Vec<String> = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(hash)
        .collect();
    assert!(
        hashes_before
            .iter()
            .zip(&hashes_after)
            .all(|(old, new)| old != new),
        "every workload rolls"
    );
    let after = versions(&client, &namespace).await;
    assert!(
        after
            .iter()
            .filter(|(key, _)| key.starts_with("StatefulSet/"))
            .all(|(key, value)| before.get(key) == Some(value)),
        "the dependencies must not restart"
    );

    // Restarting the operator (a new context) converges on the same generated secrets.
    let restarted = test.context(&operator_client);
    controller::reconcile(Arc::new(pipelines.get("shop").await.unwrap()), restarted)
        .await
        .unwrap();
    assert_eq!(
        secrets.get("shop-jwt").await.unwrap().data.unwrap()["secret"],
        jwt
    );

    // Deleting the pipeline collects its children; the data volumes' claims are kept.
    let uid = pipelines.get("shop").await.unwrap().uid().unwrap();
    pipelines
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pipelines.clone(), "shop", conditions::is_deleted(&uid)),
    )
    .await
    .unwrap()
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployments were not garbage-collected"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    assert_eq!(
        claims
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3,
        "claims are retained"
    );

    operator.stop().await;
}
