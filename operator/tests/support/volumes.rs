//! PersistentVolumes for the managed dependencies' claims. The environment's control plane has no
//! storage provisioner, so a test provides what a cluster's provisioner would.
//!
//! Each volume is reserved for one claim (`claimRef`). The control plane is shared by every test
//! and outlives a run, and the PV controller binds an unreserved volume to whichever pending
//! claim it meets first, in any namespace: a claim left pending by an earlier failed run, or
//! one of a concurrent test, took a volume meant for another test's Cassandra, whose pod then
//! stayed Pending until that test timed out.
//!
//! Shared by the control-plane tests (`support`) and the operator's benchmark (`#[path]`).

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

/// The claims a pipeline's StatefulSets make, one per replica: claim template `data`, so
/// `data-<pipeline>-<dependency>-<ordinal>`. `stores` gives each managed dependency's replicas.
pub fn claims(pipeline: &str, stores: &[(&str, usize)]) -> Vec<String> {
    stores
        .iter()
        .flat_map(|&(dependency, replicas)| {
            (0..replicas).map(move |ordinal| format!("data-{pipeline}-{dependency}-{ordinal}"))
        })
        .collect()
}

/// The claims of a pipeline whose RabbitMQ, Redis and Cassandra are all managed, one replica
/// each (the CRD's defaults).
pub fn default_claims(pipeline: &str) -> Vec<String> {
    claims(pipeline, &[("rabbitmq", 1), ("redis", 1), ("cassandra", 1)])
}

/// Creates one 1 GiB hostPath volume for each claim in `namespace`, reserved for it; returns the
/// volumes' names, for the test to delete.
pub async fn provide(
    client: &Client,
    namespace: &str,
    claims: &[String],
) -> kube::Result<Vec<String>> {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let mut names = Vec::new();
    for (index, claim) in claims.iter().enumerate() {
        let name = format!("{namespace}-pv-{index}");
        let volume: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": format!("/tmp/{name}")},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }))
        .expect("a PersistentVolume");
        volumes.create(&PostParams::default(), &volume).await?;
        names.push(name);
    }
    Ok(names)
}
