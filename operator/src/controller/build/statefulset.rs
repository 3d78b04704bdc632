//! What the three managed dependencies share: the client and headless Services, the StatefulSet
//! (its pod skeleton, probes, data claim and retention) and the disruption budget. What differs
//! between them is a [`DependencyPod`], which each dependency's module fills in from its
//! validated part of the pipeline (and which adds the dependency's own Secret, ConfigMap or Job).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec,
    Probe, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pipeline_api::{ManagedDependency, Resources};

use super::super::validate::Node;
use super::meta::{
    DEPENDENCY_USER, Parent, container_port, empty_dir, mount, pod_security, resources,
    restricted_container_security,
};
use super::{Children, Dependency, names};

/// One managed dependency of one pipeline, as its module builds it.
pub(super) struct Managed<'a> {
    pub(super) parent: &'a Parent<'a>,
    pub(super) dependency: Dependency,
    pub(super) spec: &'a ManagedDependency,
    /// The image it runs (chosen by validation).
    pub(super) image: &'a str,
    /// The spec's resources, replacing the dependency's defaults whole.
    pub(super) resources: &'a Resources,
    /// `<pipeline>-<dependency>`: the StatefulSet and its client Service.
    pub(super) name: String,
    /// The headless Service, the StatefulSet's `serviceName`.
    pub(super) headless: String,
}

impl<'a> Managed<'a> {
    pub(super) fn new(parent: &'a Parent<'a>, dependency: Dependency, node: &'a Node<'a>) -> Self {
        Self {
            parent,
            dependency,
            spec: node.spec,
            image: &node.image,
            resources: &node.resources,
            name: names::dependency(parent.name, dependency),
            headless: names::headless_service(parent.name, dependency),
        }
    }
}

/// What differs between the three dependencies' pods.
pub(super) struct DependencyPod {
    /// The container's named ports. The first `client_ports` are the client Service's (the
    /// client port first); the headless Service has them all.
    pub(super) ports: Vec<(&'static str, u16)>,
    pub(super) client_ports: usize,
    pub(super) env: Vec<EnvVar>,
    /// Always set: no dependency relies on its image's entrypoint (see the README's dependency
    /// image contract), so official images and stand-ins built to the contract run the same.
    pub(super) command: Vec<String>,
    /// Where the dependency keeps its data: the claim's mount.
    pub(super) data_dir: &'static str,
    /// The container's mounts after the data volume and `/tmp`, and their volumes.
    pub(super) mounts: Vec<VolumeMount>,
    pub(super) volumes: Vec<Volume>,
    pub(super) init_containers: Vec<Container>,
    /// Pod template annotations: a digest of what the server reads only at start (the users it
    /// loads), so a change restarts its pods.
    pub(super) annotations: BTreeMap<String, String>,
}

/// Adds what every managed dependency has to `children`, around the `pod` its module made (which
/// added the dependency's own Secret, ConfigMap or Job): its Services, its StatefulSet and, with
/// more than one replica, its disruption budget.
pub(super) fn add(managed: &Managed<'_>, pod: DependencyPod, children: &mut Children) {
    let parent = managed.parent;
    let spec = managed.spec;
    let dependency = managed.dependency;
    let component = dependency.name();
    children.services.push(parent.service(
        &managed.name,
        component,
        pod.ports.get(..pod.client_ports).unwrap_or_default(),
        false,
    ));
    children
        .services
        .push(parent.service(&managed.headless, component, &pod.ports, true));
    children.stateful_sets.push(stateful_set(managed, pod));
    if spec.replicas > 1 {
        children
            .disruption_budgets
            .push(parent.disruption_budget(&managed.name, component));
    }
}

fn stateful_set(managed: &Managed, pod: DependencyPod) -> StatefulSet {
    let parent = managed.parent;
    let component = managed.dependency.name();
    let port = IntOrString::Int(i32::from(managed.dependency.port()));
    let mut mounts = vec![mount("data", pod.data_dir), mount("tmp", "/tmp")];
    mounts.extend(pod.mounts);
    let mut volumes = vec![empty_dir("tmp")];
    volumes.extend(pod.volumes);
    let container = Container {
        name: component.to_owned(),
        image: Some(managed.image.to_owned()),
        command: Some(pod.command),
        env: Some(pod.env),
        ports: Some(
            pod.ports
                .iter()
                .map(|(name, port)| container_port(name, *port))
                .collect(),
        ),
        volume_mounts: Some(mounts),
        resources: Some(resources(Some(managed.resources))),
        security_context: Some(restricted_container_security()),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: port.clone(),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port,
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(20),
            initial_delay_seconds: Some(60),
            ..Probe::default()
        }),
        ..Container::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_owned()),
            labels: Some(parent.labels(component)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(
                    [(
                        "storage".to_owned(),
                        Quantity(managed.spec.storage.size.clone()),
                    )]
                    .into(),
                ),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: managed.spec.storage.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    let pod_spec = PodSpec {
        automount_service_account_token: Some(false),
        security_context: Some(pod_security(DEPENDENCY_USER)),
        termination_grace_period_seconds: Some(60),
        containers: vec![container],
        volumes: Some(volumes),
        // Only where there is one: an empty list would still change the other dependencies' pod
        // templates, and so restart them.
        init_containers: (!pod.init_containers.is_empty()).then_some(pod.init_containers),
        ..PodSpec::default()
    };
    StatefulSet {
        metadata: parent.metadata(&managed.name, component),
        spec: Some(StatefulSetSpec {
            service_name: Some(managed.headless.clone()),
            replicas: Some(managed.spec.replicas),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: parent.label_selector(component),
            // Claims outlive the pipeline: deleting the resource never deletes data by
            // surprise; the documented cleanup deletes them explicitly.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some({
                    let mut metadata = parent.pod_metadata(component);
                    if !pod.annotations.is_empty() {
                        metadata
                            .annotations
                            .get_or_insert_with(BTreeMap::new)
                            .extend(pod.annotations);
                    }
                    metadata
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::super::test_support::*;
    use super::super::{
        CASSANDRA_CONFIG_SCRIPT, CASSANDRA_CREDENTIALS_SCRIPT, Children, Dependency,
        RABBITMQ_COOKIE_SCRIPT, RABBITMQ_GROW_SCRIPT, RABBITMQ_IMAGE, ReplicaOverrides, Settings,
    };

    #[test]
    fn running_dependencies_keep_their_image_unless_the_spec_names_one() {
        let running = RunningImages::from([(Dependency::Redis, "redis:7.0.0".to_owned())]);
        let image_of = |children: &Children, name: &str| {
            let set = children
                .stateful_sets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name))
                .unwrap();
            set.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .image
                .clone()
        };
        let children = build_with(
            &pipeline(json!({})),
            &secrets(),
            &ReplicaOverrides::new(),
            &running,
            &Settings::default(),
            "9.9.9",
        )
        .unwrap();
        assert_eq!(
            image_of(&children, "shop-redis").as_deref(),
            Some("redis:7.0.0")
        );
        assert_eq!(
            image_of(&children, "shop-rabbitmq").as_deref(),
            Some(RABBITMQ_IMAGE)
        );
        let explicit = json!({"redis": {"managed": {"image": "redis:8.0.0"}}});
        let children = build_with(
            &pipeline(explicit),
            &secrets(),
            &ReplicaOverrides::new(),
            &running,
            &Settings::default(),
            "9.9.9",
        )
        .unwrap();
        assert_eq!(
            image_of(&children, "shop-redis").as_deref(),
            Some("redis:8.0.0")
        );
    }

    #[test]
    fn every_managed_dependency_container_has_an_explicit_command() {
        let spec = json!({
            "rabbitmq": {"managed": {"replicas": 3}},
        });
        let children = build_default(&pipeline(spec), &secrets(), "0.1.0").unwrap();
        let containers = dependency_containers(&children);
        // Three StatefulSets (RabbitMQ's and Cassandra's with an init container), Cassandra's
        // credentials Job and RabbitMQ's queue-membership Job (with an init container).
        assert_eq!(
            containers.len(),
            8,
            "{:?}",
            containers.iter().map(|c| &c.0).collect::<Vec<_>>()
        );
        let commands: BTreeMap<String, Vec<String>> = containers
            .into_iter()
            .map(|(name, container)| {
                let command = container.command.unwrap_or_default();
                assert!(
                    !command.is_empty(),
                    "{name} relies on its image's entrypoint"
                );
                // `args` would be the image's CMD's business: none is used.
                assert_eq!(container.args, None, "{name}");
                (name.split_once('/').unwrap().1.to_owned(), command)
            })
            .collect();
        let strings = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(commands["rabbitmq"], strings(&["rabbitmq-server"]));
        assert_eq!(
            commands["erlang-cookie"],
            strings(&["sh", "-c", RABBITMQ_COOKIE_SCRIPT])
        );
        assert_eq!(
            commands["grow"],
            strings(&["sh", "-c", RABBITMQ_GROW_SCRIPT])
        );
        assert_eq!(commands["cassandra"], strings(&["cassandra", "-f"]));
        assert_eq!(
            commands["config"],
            strings(&["bash", "-c", CASSANDRA_CONFIG_SCRIPT])
        );
        assert_eq!(
            commands["cqlsh"],
            strings(&["bash", "-c", CASSANDRA_CREDENTIALS_SCRIPT])
        );
        assert_eq!(
            commands["redis"],
            strings(&[
                "sh",
                "-c",
                "umask 077; exec redis-server --appendonly yes --appendfsync always --save '' --dir /data --aclfile /etc/redis-acl/users.acl",
            ])
        );
    }

    #[test]
    fn dependency_peers_resolve_each_other_before_they_are_ready() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        for dependency in Dependency::ALL {
            let name = format!("shop-{}-headless", dependency.name());
            let service = children
                .services
                .iter()
                .find(|service| service.metadata.name.as_deref() == Some(name.as_str()))
                .unwrap();
            let spec = service.spec.as_ref().unwrap();
            assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "{name}");
            // RabbitMQ resolves its own long node name at boot, and Cassandra its seed.
            assert_eq!(spec.publish_not_ready_addresses, Some(true), "{name}");
            let set = children
                .stateful_sets
                .iter()
                .find(|set| {
                    set.metadata.name.as_deref()
                        == Some(format!("shop-{}", dependency.name()).as_str())
                })
                .unwrap();
            assert_eq!(
                set.spec.as_ref().unwrap().service_name.as_deref(),
                Some(name.as_str())
            );
        }
    }

    #[test]
    fn each_dependency_gets_resources_it_starts_with_and_cassandra_a_heap_from_its_limit() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        for (name, expected) in [
            (
                "shop-redis",
                json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}),
            ),
            (
                "shop-rabbitmq",
                json!({"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}),
            ),
            (
                "shop-cassandra",
                json!({"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}),
            ),
        ] {
            let pod = pod_of(&children, name);
            assert_eq!(resources_of(&pod.containers[0]), expected, "{name}");
        }
        // The short-lived helpers keep small ones.
        let helpers =
            json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}});
        let init = &pod_of(&children, "shop-cassandra")
            .init_containers
            .as_ref()
            .unwrap()[0];
        assert_eq!(resources_of(init), helpers);
        assert_eq!(
            resources_of(job_container(credentials_job(&children))),
            helpers
        );

        let heap_of = |spec: Value| {
            let children = build_default(&pipeline(spec), &secrets(), "0.1.0").unwrap();
            let env = env_of_container(&pod_of(&children, "shop-cassandra").containers[0]);
            (
                env["MAX_HEAP_SIZE"]["value"].as_str().unwrap().to_owned(),
                env["HEAP_NEWSIZE"]["value"].as_str().unwrap().to_owned(),
            )
        };
        let with_limit = |limit: &str| json!({"cassandra": {"managed": {"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": limit}}}}});
        // Half the limit, and a quarter of that for the young generation.
        assert_eq!(heap_of(json!({})), ("1024M".to_owned(), "256M".to_owned()));
        assert_eq!(
            heap_of(with_limit("1Gi")),
            ("512M".to_owned(), "128M".to_owned())
        );
        assert_eq!(
            heap_of(with_limit("3G")),
            ("1430M".to_owned(), "357M".to_owned())
        );
        assert_eq!(
            heap_of(with_limit("6Gi")),
            ("3072M".to_owned(), "768M".to_owned())
        );
        // At most 8G of heap and 2G of young generation, however large the limit.
        assert_eq!(
            heap_of(with_limit("64Gi")),
            ("8192M".to_owned(), "2048M".to_owned())
        );
        // The spec's resources replace the defaults whole, as for the workloads.
        let children = build_default(&pipeline(with_limit("4Gi")), &secrets(), "0.1.0").unwrap();
        assert_eq!(
            resources_of(&pod_of(&children, "shop-cassandra").containers[0]),
            json!({"requests": {"memory": "1Gi"}, "limits": {"memory": "4Gi"}})
        );
    }

    #[test]
    fn a_dependency_without_a_memory_limit_it_can_run_with_is_refused_saying_what_to_set() {
        let refusal = |spec: Value| match build_default(&pipeline(spec), &secrets(), "0.1.0") {
            Err(ValidationError::DependencyResources(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let cassandra =
            |resources: Value| json!({"cassandra": {"managed": {"resources": resources}}});
        let rabbitmq =
            |resources: Value| json!({"rabbitmq": {"managed": {"resources": resources}}});

        let message = refusal(cassandra(json!({"requests": {"memory": "2Gi"}})));
        assert_eq!(
            message,
            "spec.cassandra.managed.resources sets no memory limit, and a managed Cassandra needs \
             at least 1Gi: its Java heap is half of it. Set \
             spec.cassandra.managed.resources.limits.memory to 1Gi or more, or leave out \
             spec.cassandra.managed.resources for the defaults (a 2Gi limit)"
        );
        let message = refusal(cassandra(json!({"limits": {"memory": "512Mi"}})));
        assert!(
            message.starts_with("spec.cassandra.managed.resources.limits.memory is 512Mi, and a managed Cassandra needs at least 1Gi"),
            "{message}"
        );
        let message = refusal(cassandra(json!({"limits": {"memory": "2GB"}})));
        assert!(
            message.starts_with("spec.cassandra.managed.resources.limits.memory: \"2GB\" is not a Kubernetes quantity"),
            "{message}"
        );
        assert!(
            message.contains("Set spec.cassandra.managed.resources.limits.memory to 1Gi or more")
        );
        let message = refusal(rabbitmq(json!({})));
        assert!(
            message.starts_with("spec.rabbitmq.managed.resources sets no memory limit, and a managed RabbitMQ needs at least 512Mi: its memory high watermark is 60% of it."),
            "{message}"
        );
        assert!(message.ends_with("(a 1Gi limit)"), "{message}");
        let message = refusal(rabbitmq(json!({"limits": {"memory": "500M"}})));
        assert!(message.contains("limits.memory is 500M"), "{message}");
        // The refusal is an invalid spec, reported as such.
        let error =
            crate::controller::Error::Validate(ValidationError::DependencyResources(message));
        assert_eq!(error.kind(), crate::metrics::ErrorKind::Validate);

        // The minimum itself is enough; Redis derives nothing from its limit and needs none.
        for spec in [
            cassandra(json!({"limits": {"memory": "1Gi"}})),
            cassandra(json!({"limits": {"memory": "1073741824"}})),
            rabbitmq(json!({"limits": {"memory": "512Mi"}})),
            json!({"redis": {"managed": {"resources": {"requests": {"cpu": "10m"}}}}}),
            // An external dependency's resources are none of the operator's business.
            json!({"cassandra": {"external": {"endpoints": ["db.example.com:9042"]}}}),
        ] {
            assert!(
                build_default(&pipeline(spec.clone()), &secrets(), "0.1.0").is_ok(),
                "{spec}"
            );
        }
    }
}
