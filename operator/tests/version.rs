//! One version ties the operator, its Helm chart and the images `cargo xtask images` builds: the
//! chart runs `order-pipeline/operator:<appVersion>`, the operator runs its workloads as
//! `order-pipeline/<component>:<its own version>`, and xtask tags every image
//! `order-pipeline/<name>:<workspace version>`. Should one drift, a release would point at images
//! that were never built. Pure: no cluster needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kube::core::ObjectMeta;
use order_pipeline_operator::controller::build::{
    DependencyImages, ReplicaOverrides, WORKLOAD_IMAGE_REPOSITORY, Workload, build,
};
use order_pipeline_operator::controller::dereference::Dereferenced;
use order_pipeline_operator::controller::validate::validate;
use pipeline_api::{OrderPipeline, OrderPipelineSpec};

/// What the operator's `main` passes as its version.
const OPERATOR_VERSION: &str = env!("CARGO_PKG_VERSION");

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(relative: &str) -> serde_yaml::Value {
    let path = repository_root().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

#[test]
fn operator_crate_has_the_workspace_version() {
    let manifest = std::fs::read_to_string(repository_root().join("Cargo.toml")).unwrap();
    let expected = format!("version = \"{OPERATOR_VERSION}\"");
    let workspace_package = manifest
        .split("[workspace.package]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("Cargo.toml has [workspace.package]");
    assert!(
        workspace_package
            .lines()
            .any(|line| line.trim() == expected),
        "the workspace version is not the operator's {OPERATOR_VERSION}"
    );
}

#[test]
fn chart_runs_the_operator_image_of_its_app_version() {
    let chart = yaml("charts/order-pipeline-operator/Chart.yaml");
    assert_eq!(chart["appVersion"].as_str(), Some(OPERATOR_VERSION));
    let values = yaml("charts/order-pipeline-operator/values.yaml");
    assert_eq!(
        values["image"]["repository"].as_str(),
        Some(format!("{WORKLOAD_IMAGE_REPOSITORY}/operator").as_str())
    );
    // An empty tag means appVersion (the chart's image helper).
    assert_eq!(values["image"]["tag"].as_str(), Some(""));
}

#[test]
fn chart_passes_the_operators_own_default_dependency_images() {
    // Installed with its defaults, the chart changes nothing: its dependencyImages are the
    // images compiled into the operator, under the variables the operator reads.
    let values = yaml("charts/order-pipeline-operator/values.yaml");
    let defaults = DependencyImages::default();
    let deployment = std::fs::read_to_string(
        repository_root().join("charts/order-pipeline-operator/templates/deployment.yaml"),
    )
    .unwrap();
    for (dependency, variable) in DependencyImages::ENV {
        let key = dependency.name();
        assert_eq!(
            values["dependencyImages"][key].as_str(),
            Some(defaults.get(dependency)),
            "dependencyImages.{key}"
        );
        let wiring = format!(
            "- name: {variable}\n              value: {{{{ .Values.dependencyImages.{key} | quote }}}}"
        );
        assert!(
            deployment.contains(&wiring),
            "the chart passes dependencyImages.{key} as {variable}"
        );
    }
}

#[test]
fn default_workload_images_are_the_ones_xtask_builds() {
    // Every dependency external and the JWT key the user's: the build then needs no generated
    // secret, so this test does not follow every change to what the operator generates.
    let spec = serde_json::json!({
        "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}},
        "rabbitmq": {"external": {"endpoints": ["amqp://mq.example.com:5672/"]}},
        "redis": {"external": {"endpoints": ["redis.example.com:6379"]}},
        "cassandra": {"external": {"endpoints": ["db.example.com:9042"]}},
    });
    let mut pipeline = OrderPipeline::new(
        "shop",
        serde_json::from_value::<OrderPipelineSpec>(spec).unwrap(),
    );
    pipeline.metadata = ObjectMeta {
        name: Some("shop".into()),
        namespace: Some("store".into()),
        uid: Some("1234".into()),
        ..ObjectMeta::default()
    };
    let valid = validate(&pipeline, Dereferenced::default(), &Default::default()).unwrap();
    let children = build(
        &valid,
        &ReplicaOverrides::new(),
        &Default::default(),
        OPERATOR_VERSION,
    );
    let images: BTreeSet<String> = children
        .deployments
        .iter()
        .flat_map(|deployment| {
            let pod = deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap();
            pod.containers
                .iter()
                .filter_map(|container| container.image.clone())
        })
        .collect();
    let expected: BTreeSet<String> = Workload::ALL
        .iter()
        .map(|workload| format!("order-pipeline/{}:{OPERATOR_VERSION}", workload.name()))
        .collect();
    assert_eq!(images, expected);
}
