//! What the build's unit tests share: a pipeline from a JSON spec, the generated secrets, and
//! ways into the built objects.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::core::ObjectMeta;
use pipeline_api::{OrderPipeline, OrderPipelineSpec};
use serde_json::Value;

pub(crate) use super::super::dereference::Secrets;
use super::super::dereference::{Dereferenced, Running};
pub(crate) use super::super::validate::Error as ValidationError;
use super::super::validate::{self, validate};
use super::{Children, Dependency, ReplicaOverrides, Settings, Workload, build};

/// The image each managed dependency runs now, for tests of what the build keeps.
pub(crate) type RunningImages = BTreeMap<Dependency, String>;

pub(crate) fn pipeline(spec: serde_json::Value) -> OrderPipeline {
    let spec: OrderPipelineSpec = serde_json::from_value(spec).unwrap();
    let mut pipeline = OrderPipeline::new("shop", spec);
    pipeline.metadata = ObjectMeta {
        name: Some("shop".into()),
        namespace: Some("store".into()),
        uid: Some("1234".into()),
        ..ObjectMeta::default()
    };
    pipeline
}

pub(super) fn build_default(
    pipeline: &OrderPipeline,
    secrets: &Secrets,
    version: &str,
) -> Result<Children, validate::Error> {
    build_with(
        pipeline,
        secrets,
        &ReplicaOverrides::new(),
        &RunningImages::new(),
        &Settings::default(),
        version,
    )
}

/// The configuration hash of what validation makes of `pipeline` and `secrets`.
pub(super) fn hash_of(pipeline: &OrderPipeline, secrets: &Secrets) -> String {
    let found = Dereferenced {
        secrets: secrets.clone(),
        ..Dereferenced::default()
    };
    super::config_hash(&validate(pipeline, found, &Default::default()).unwrap())
}

/// Validation and the build, as a reconcile runs them on what dereference found.
pub(super) fn build_with(
    pipeline: &OrderPipeline,
    secrets: &Secrets,
    overrides: &ReplicaOverrides,
    running: &RunningImages,
    settings: &Settings,
    version: &str,
) -> Result<Children, validate::Error> {
    let found = Dereferenced {
        secrets: secrets.clone(),
        running: running
            .iter()
            .map(|(dependency, image)| {
                (
                    *dependency,
                    Running {
                        image: Some(image.clone()),
                        replicas: None,
                    },
                )
            })
            .collect(),
        replicas: BTreeMap::new(),
    };
    let valid = validate(pipeline, found, settings)?;
    Ok(build(&valid, overrides, &settings.access, version))
}

pub(crate) fn secrets() -> Secrets {
    Secrets {
        jwt: Some("j".repeat(48)),
        rabbitmq_password: Some("rabbitpassword".into()),
        rabbitmq_erlang_cookie: Some("rabbitcookie".into()),
        redis_password: Some("redispassword".into()),
        cassandra_password: Some("cassandrapassword".into()),
        cassandra_superuser_password: Some("superuserpassword".into()),
        rabbitmq_workloads: Workload::ALL
            .into_iter()
            .map(|workload| (workload, format!("{}-rabbit", workload.name())))
            .collect(),
        redis_workloads: Workload::ALL
            .into_iter()
            .map(|workload| (workload, format!("{}-redis", workload.name())))
            .collect(),
        referenced: BTreeMap::new(),
    }
}

pub(super) fn env_of(deployment: &Deployment) -> BTreeMap<String, Value> {
    env_of_container(
        &deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0],
    )
}

pub(super) fn env_of_container(
    container: &k8s_openapi::api::core::v1::Container,
) -> BTreeMap<String, Value> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), serde_json::to_value(var).unwrap()))
        .collect()
}

pub(super) fn deployment<'a>(children: &'a Children, name: &str) -> &'a Deployment {
    children
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .unwrap()
}

pub(super) fn pod_of<'a>(
    children: &'a Children,
    name: &str,
) -> &'a k8s_openapi::api::core::v1::PodSpec {
    children
        .stateful_sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

/// Every container of a managed dependency's pods and Jobs, by `<pod>/<container>`.
pub(super) fn dependency_containers(
    children: &Children,
) -> Vec<(String, k8s_openapi::api::core::v1::Container)> {
    let stateful = children.stateful_sets.iter().map(|set| {
        (
            set.metadata.name.clone().unwrap(),
            set.spec.as_ref().unwrap().template.spec.clone().unwrap(),
        )
    });
    let jobs = children.jobs.iter().map(|job| {
        (
            job.metadata.name.clone().unwrap(),
            job.spec.as_ref().unwrap().template.spec.clone().unwrap(),
        )
    });
    stateful
        .chain(jobs)
        .flat_map(|(pod, spec)| {
            let init = spec.init_containers.clone().unwrap_or_default();
            spec.containers
                .into_iter()
                .chain(init)
                .map(move |container| (format!("{pod}/{}", container.name), container))
        })
        .collect()
}

pub(super) fn config_map<'a>(children: &'a Children, name: &str) -> &'a BTreeMap<String, String> {
    children
        .config_maps
        .iter()
        .find(|map| map.metadata.name.as_deref() == Some(name))
        .and_then(|map| map.data.as_ref())
        .unwrap()
}

pub(super) fn resources_of(container: &k8s_openapi::api::core::v1::Container) -> Value {
    serde_json::to_value(container.resources.as_ref().unwrap()).unwrap()
}

pub(super) fn credentials_job(children: &Children) -> &Job {
    assert_eq!(children.jobs.len(), 1);
    &children.jobs[0]
}

pub(super) fn job_container(job: &Job) -> &k8s_openapi::api::core::v1::Container {
    &job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}
