//! The Kubernetes control plane from `cargo xtask env up kube` is real: the `kube` client reads
//! and writes through the API server, and a Deployment gets Ready pods (controller-manager makes
//! the ReplicaSet and Pods, the scheduler binds them to kwok's fake nodes, kwok runs them).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};
use serde_json::json;

async fn client(env: &testenv::Env) -> Client {
    let kubeconfig = Kubeconfig::read_from(env.require("KUBECONFIG")).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn namespace_and_deployment_become_ready_through_kwok() {
    let env = testenv::Env::load();
    let client = client(&env).await;
    let name = testenv::unique("envcheck");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let read = namespaces.get(&name).await.unwrap();
    assert_eq!(read.metadata.name.as_deref(), Some(name.as_str()));

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let ready = await_condition(
        deployments.clone(),
        "web",
        |deployment: Option<&Deployment>| {
            deployment
                .and_then(|d| d.status.as_ref())
                .and_then(|status| status.ready_replicas)
                == Some(2)
        },
    );
    tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("Deployment ready within 60s")
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
    let listed = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);
    let nodes = env.require("OP_KUBE_NODES");
    for pod in &listed.items {
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone());
        let node = node.expect("pod bound to a node");
        assert!(nodes.split(',').any(|n| n == node), "unknown node {node}");
        let phase = pod.status.as_ref().and_then(|status| status.phase.clone());
        assert_eq!(phase.as_deref(), Some("Running"));
    }

    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let uid = read.metadata.uid.expect("namespace has a uid");
    let gone = await_condition(namespaces, &name, conditions::is_deleted(&uid));
    tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .expect("namespace deleted within 60s")
        .unwrap();
}
