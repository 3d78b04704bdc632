//! The pipeline's PodMonitor against the environment's real API server, which serves the
//! Prometheus Operator's CRDs (`cargo xtask env up kube` installs them): enabled in the spec, the
//! operator (as the chart's ServiceAccount) creates it with the workloads' selector, admin port
//! and path and the pipeline as its owner; disabled, it is deleted; where the kind is not served,
//! the reconcile succeeds and the `Monitoring` condition says what is missing.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use order_pipeline_operator::controller::{self, build};
use order_pipeline_operator::monitoring::{self, MonitoringApi};
use pipeline_api::{Condition, OrderPipeline};
use serde_json::json;
use support::TestNamespace;

/// Polls `check` until it gives a value or `within` passes (then panics naming `what`).
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn monitoring_condition(pipelines: &Api<OrderPipeline>) -> Option<Condition> {
    pipelines
        .get_status("shop")
        .await
        .unwrap()
        .status?
        .conditions
        .into_iter()
        .find(|condition| condition.type_ == monitoring::CONDITION)
}

async fn require_crds(client: &Client) {
    assert!(
        monitoring::served(client, "monitoring.coreos.com/v1")
            .await
            .unwrap(),
        "the API server serves no PodMonitor: `cargo xtask env up kube` installs the \
         Prometheus Operator's CRDs"
    );
}

/// The sample pipeline, its RabbitMQ one node, with the PodMonitor on or off.
fn sample(pod_monitor: bool) -> OrderPipeline {
    let mut sample: OrderPipeline =
        serde_yaml::from_str(include_str!("../../samples/orderpipeline.yaml")).unwrap();
    sample.spec.rabbitmq.managed.as_mut().unwrap().replicas = 1;
    sample.spec.monitoring.pod_monitor.enabled = pod_monitor;
    sample
        .spec
        .monitoring
        .pod_monitor
        .labels
        .insert("release".into(), "prometheus".into());
    sample
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_monitor_follows_the_spec() {
    let test = TestNamespace::create("mon").await;
    require_crds(&test.admin).await;
    let (operator, _) = test.operator().await;
    let pipelines: Api<OrderPipeline> = test.api();
    let monitors: Api<DynamicObject> = Api::namespaced_with(
        test.admin.clone(),
        &test.name,
        &build::pod_monitor_resource(),
    );
    pipelines
        .create(&PostParams::default(), &sample(true))
        .await
        .unwrap();

    let monitor = eventually(
        "the PodMonitor is created",
        Duration::from_secs(60),
        || async { monitors.get_opt("shop-workloads").await.unwrap() },
    )
    .await;
    let pipeline = pipelines.get("shop").await.unwrap();
    let owner = &monitor.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        (
            "OrderPipeline",
            pipeline.uid().unwrap().as_str(),
            Some(true)
        )
    );
    assert_eq!(monitor.labels()["release"], "prometheus");
    assert_eq!(monitor.labels()["orderpipeline.dev/pipeline"], "shop");
    let spec = &monitor.data["spec"];
    assert_eq!(
        spec["podMetricsEndpoints"],
        json!([{"port": "admin", "path": "/metrics"}])
    );
    assert_eq!(
        spec["selector"],
        json!({
            "matchLabels": {"orderpipeline.dev/pipeline": "shop"},
            "matchExpressions": [{
                "key": "app.kubernetes.io/component",
                "operator": "In",
                "values": ["gateway", "processor", "notifier", "dashboard"],
            }],
        })
    );
    // What the selector picks in the cluster: exactly the four workloads' pods (kwok runs them),
    // each declaring the port the PodMonitor names.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = test.api();
    let selected = eventually(
        "the four workloads' pods exist",
        Duration::from_secs(60),
        || async {
            let listed = pods
                .list(&kube::api::ListParams::default().labels(
                    "orderpipeline.dev/pipeline=shop,app.kubernetes.io/component in \
                     (gateway,processor,notifier,dashboard)",
                ))
                .await
                .unwrap();
            (listed.items.len() == 4).then_some(listed.items)
        },
    )
    .await;
    for pod in &selected {
        let ports = pod.spec.as_ref().unwrap().containers[0]
            .ports
            .clone()
            .unwrap_or_default();
        assert!(
            ports
                .iter()
                .any(|port| port.name.as_deref() == Some("admin") && port.container_port == 9090),
            "{} declares no admin port 9090: {ports:?}",
            pod.name_any()
        );
    }
    let condition = eventually(
        "the Monitoring condition",
        Duration::from_secs(30),
        || async {
            monitoring_condition(&pipelines)
                .await
                .filter(|condition| condition.status == "True")
        },
    )
    .await;
    assert_eq!(condition.reason, "PodMonitorApplied");

    // Disabled: the operator deletes it, and the condition goes with it.
    pipelines
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"monitoring": {"podMonitor": {"enabled": false}}}})),
        )
        .await
        .unwrap();
    eventually(
        "the PodMonitor is deleted",
        Duration::from_secs(60),
        || async {
            monitors
                .get_opt("shop-workloads")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    eventually(
        "the Monitoring condition is removed",
        Duration::from_secs(30),
        || async {
            monitoring_condition(&pipelines)
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    operator.stop().await;
}

/// A cluster without the Prometheus Operator, seen through a group version no server serves
/// (the shared control plane has the real CRDs): asked for a PodMonitor, the reconcile still
/// succeeds, every time (no failure, so no retry loop), and the condition says what to install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crds_the_condition_says_so_and_the_reconcile_succeeds() {
    let test = TestNamespace::create("monabsent").await;
    let (client, _) = test.chart_identity().await;
    let mut context = Arc::unwrap_or_clone(test.context(&client));
    context.settings.monitoring = MonitoringApi {
        group_version: "monitoring.absent.orderpipeline.dev/v1".into(),
    };
    let context = Arc::new(context);
    let pipelines: Api<OrderPipeline> = test.api();
    pipelines
        .create(&PostParams::default(), &sample(true))
        .await
        .unwrap();
    for _ in 0..2 {
        let pipeline = Arc::new(pipelines.get("shop").await.unwrap());
        controller::reconcile(pipeline, context.clone())
            .await
            .expect("a missing Prometheus Operator is no reconcile failure");
    }
    let condition = monitoring_condition(&pipelines)
        .await
        .expect("the Monitoring condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "PrometheusOperatorMissing")
    );
    assert!(
        condition
            .message
            .contains("monitoring.absent.orderpipeline.dev/v1"),
        "{}",
        condition.message
    );
    let status = pipelines.get_status("shop").await.unwrap().status.unwrap();
    let degraded = status
        .conditions
        .iter()
        .find(|condition| condition.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "False", "{degraded:?}");
    // Nothing was written to the real kind either.
    let monitors: Api<DynamicObject> = Api::namespaced_with(
        test.admin.clone(),
        &test.name,
        &build::pod_monitor_resource(),
    );
    assert!(monitors.get_opt("shop-workloads").await.unwrap().is_none());
}
