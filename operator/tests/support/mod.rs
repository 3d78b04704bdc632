//! Shared by the operator's control-plane tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, CustomResourceExt};
use order_pipeline_operator::controller::Context;
use order_pipeline_operator::metrics::Metrics;
use pipeline_api::OrderPipeline;
use prometheus_client::registry::Registry;
use serde_json::json;

pub async fn client() -> Client {
    let env = testenv::Env::load();
    let kubeconfig = Kubeconfig::read_from(env.require("KUBECONFIG")).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        OrderPipeline::crd_name(),
        &PatchParams::apply("operator-tests").force(),
        &Patch::Apply(OrderPipeline::crd()),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            OrderPipeline::crd_name(),
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established")
    .unwrap();
}

/// Volumes for the dependencies' claims: the environment has no storage provisioner, so the test
/// provides what a cluster's provisioner would (the controller-manager binds them).
pub async fn provide_volumes(client: &Client, namespace: &str, count: usize) -> Vec<String> {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let mut names = Vec::new();
    for index in 0..count {
        let name = format!("{namespace}-pv-{index}");
        let volume: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": format!("/tmp/{name}")},
            },
        }))
        .unwrap();
        volumes
            .create(&PostParams::default(), &volume)
            .await
            .unwrap();
        names.push(name);
    }
    names
}

pub fn new_context(client: &Client) -> Arc<Context> {
    let mut registry = Registry::default();
    Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), Reporter::from("operator-tests")),
        metrics: Arc::new(Metrics::register(&mut registry)),
        version: "0.1.0".into(),
    })
}

pub async fn wait_ready(
    pipelines: &Api<OrderPipeline>,
    name: &str,
    within: Duration,
) -> OrderPipeline {
    let ready = await_condition(
        pipelines.clone(),
        name,
        |pipeline: Option<&OrderPipeline>| {
            pipeline
                .and_then(|p| p.status.as_ref())
                .is_some_and(|status| {
                    status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                        && status.observed_generation
                            == pipeline.and_then(|p| p.metadata.generation)
                })
        },
    );
    match tokio::time::timeout(within, ready).await {
        Ok(result) => result.unwrap().unwrap(),
        Err(_) => {
            let last = pipelines.get(name).await.ok();
            panic!(
                "{name} not Ready within {within:?}; generation {:?}, status {:#?}",
                last.as_ref().and_then(|p| p.metadata.generation),
                last.and_then(|p| p.status)
            )
        }
    }
}
