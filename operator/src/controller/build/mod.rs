//! The pure step: a [`ValidatedPipeline`] in, every child object out. No I/O happens here and
//! nothing can fail (validation refused what could not be built), so this is where most of the
//! operator's unit tests live, and the output is deterministic (maps are ordered), so applying it
//! twice writes nothing the second time.
//!
//! Every object is a typed k8s-openapi value, so a misspelt field does not compile. The modules:
//! `names` (every child's name), `meta` (metadata, labels, security contexts and the small
//! objects), `workloads` (the four Deployments and their wiring), `statefulset` (what the three
//! managed dependencies share, filled in by `rabbitmq`, `redis` and `cassandra`) and
//! `network_policy`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::DynamicObject;
use pipeline_api::{DependencySpec, OrderPipeline, Resources, ServiceSpec, WorkloadSpec};
use sha2::{Digest, Sha256};

mod access;
#[cfg(test)]
mod arbitrary;
mod cassandra;
mod meta;
pub(crate) mod names;
mod network_policy;
mod pod_monitor;
mod rabbitmq;
mod redis;
mod statefulset;
#[cfg(test)]
pub(crate) mod test_support;
mod workloads;

pub use cassandra::{CASSANDRA_CONFIG_SCRIPT, CASSANDRA_CREDENTIALS_SCRIPT};
pub use rabbitmq::{
    ADMIN_USER as RABBITMQ_ADMIN_USER, MANAGEMENT_PORT as RABBITMQ_MANAGEMENT_PORT,
    RABBITMQ_COOKIE_SCRIPT, RABBITMQ_GROW_SCRIPT,
};

pub use meta::COMPONENT_LABEL;
use meta::Parent;
pub use pod_monitor::{MONITORING_COMPONENT, pod_monitor_resource};

use super::validate::{Jwt, Mode, ValidatedPipeline};

/// The one field manager of every write.
pub const MANAGER: &str = "order-pipeline-operator";
/// Marks every child, so the operator can watch only its own objects.
pub const MANAGED_BY: &str = "order-pipeline-operator";
/// The pod-template annotation whose change rolls the pods.
pub const CONFIG_HASH: &str = "orderpipeline.dev/config-hash";
/// Pod template annotation of a managed RabbitMQ or Redis: a digest of the users it loads at
/// start, so a change (a workload's user added on upgrade) restarts its pods to load them.
pub const USERS_HASH: &str = "orderpipeline.dev/users-hash";

/// Default images: the workloads at the operator's own version; dependencies pinned, unless the
/// operator's environment names others (see [`DependencyImages`]).
pub const WORKLOAD_IMAGE_REPOSITORY: &str = pipeline_contract::IMAGE_REPOSITORY;
pub const RABBITMQ_IMAGE: &str = "rabbitmq:3.13.7-management-alpine";
pub const REDIS_IMAGE: &str = "redis:7.4.1-alpine";
pub const CASSANDRA_IMAGE: &str = "cassandra:5.0.2";

/// The role the workloads log in to a managed Cassandra as: no superuser, just what the gateway
/// needs (see [`CASSANDRA_CREDENTIALS_SCRIPT`]).
pub const CASSANDRA_ROLE: &str = "pipeline";
/// The superuser the Cassandra image creates on first start (password `cassandra`, replaced by a
/// generated one once the credentials Job has run).
pub const CASSANDRA_SUPERUSER: &str = "cassandra";

pub use pipeline_contract::Workload;
pub use workloads::password_key;

/// A workload's part of the spec.
fn workload_spec(workload: Workload, pipeline: &OrderPipeline) -> &WorkloadSpec {
    let spec = &pipeline.spec;
    match workload {
        Workload::Gateway => &spec.gateway.workload,
        Workload::Processor => &spec.processor.workload,
        Workload::Notifier => &spec.notifier.workload,
        Workload::Dashboard => &spec.dashboard.workload,
    }
}

/// How the workload's Service is reached, for the workloads that have one.
fn workload_service(workload: Workload, pipeline: &OrderPipeline) -> Option<&ServiceSpec> {
    match workload {
        Workload::Gateway => Some(&pipeline.spec.gateway.service),
        Workload::Dashboard => Some(&pipeline.spec.dashboard.service),
        Workload::Processor | Workload::Notifier => None,
    }
}

/// The three dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dependency {
    Rabbitmq,
    Redis,
    Cassandra,
}

impl Dependency {
    pub const ALL: [Dependency; 3] = [
        Dependency::Rabbitmq,
        Dependency::Redis,
        Dependency::Cassandra,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dependency::Rabbitmq => "rabbitmq",
            Dependency::Redis => "redis",
            Dependency::Cassandra => "cassandra",
        }
    }

    pub fn spec(self, pipeline: &OrderPipeline) -> &DependencySpec {
        match self {
            Dependency::Rabbitmq => &pipeline.spec.rabbitmq,
            Dependency::Redis => &pipeline.spec.redis,
            Dependency::Cassandra => &pipeline.spec.cassandra,
        }
    }

    /// The client port: the one the workloads connect to, and the dependency's probes check.
    fn port(self) -> u16 {
        match self {
            Dependency::Rabbitmq => 5672,
            Dependency::Redis => 6379,
            Dependency::Cassandra => 9042,
        }
    }

    /// The name people know it by, for messages.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Dependency::Rabbitmq => "RabbitMQ",
            Dependency::Redis => "Redis",
            Dependency::Cassandra => "Cassandra",
        }
    }

    /// Why the operator runs this dependency as one node only, if it does (see the CRD's rule).
    pub(crate) fn single_node_why(self) -> Option<&'static str> {
        match self {
            Dependency::Rabbitmq => None,
            Dependency::Redis => Some(pipeline_api::REDIS_SINGLE_NODE_WHY),
            Dependency::Cassandra => Some(pipeline_api::CASSANDRA_SINGLE_NODE_WHY),
        }
    }

    /// Container resources when the spec sets none: enough for each to start and stay up on a
    /// small single node (the JVM of a 1 GiB Cassandra heap alone needs about 2 GiB). CPU is
    /// requested but not limited: a CPU limit only throttles start-up, when the JVM and the
    /// Erlang VM need it most.
    pub fn default_resources(self) -> Resources {
        let (cpu, memory, memory_limit) = match self {
            Dependency::Redis => ("50m", "64Mi", "256Mi"),
            Dependency::Rabbitmq => ("100m", "256Mi", "1Gi"),
            Dependency::Cassandra => ("100m", "1Gi", "2Gi"),
        };
        Resources {
            requests: BTreeMap::from([
                ("cpu".to_owned(), cpu.to_owned()),
                ("memory".to_owned(), memory.to_owned()),
            ]),
            limits: BTreeMap::from([("memory".to_owned(), memory_limit.to_owned())]),
        }
    }
}

/// Everything the operator applies for one pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Children {
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    pub services: Vec<Service>,
    pub stateful_sets: Vec<StatefulSet>,
    /// Run once per spec (the name carries a hash of it), after the StatefulSets they set up.
    pub jobs: Vec<Job>,
    pub deployments: Vec<Deployment>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    /// The Prometheus Operator's kind, so not a k8s-openapi type; at most one.
    pub pod_monitors: Vec<DynamicObject>,
}

/// Replica counts decided by the autoscaler, replacing the spec's for those workloads.
pub type ReplicaOverrides = BTreeMap<Workload, i32>;

/// What the operator's installation decides for every pipeline it builds (read once at startup).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub images: DependencyImages,
    pub access: Access,
    /// Where the workloads of a pipeline whose spec names no OTLP endpoint export their spans
    /// (the chart's `tracing.otlpEndpoint`); `None`: no traces unless the spec asks.
    pub default_otlp_endpoint: Option<String>,
    /// Where the pipelines' PodMonitors are looked for.
    pub monitoring: crate::monitoring::MonitoringApi,
}

/// Who outside a pipeline may reach its pods' private ports (the NetworkPolicies).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    /// The operator's own namespace: its pods, and no other, may read a managed RabbitMQ's
    /// management API (queue depths, cluster membership). `None`: nobody outside the pipeline.
    pub operator_namespace: Option<String>,
    /// The namespace Prometheus scrapes from: its pods may reach every pod's admin port
    /// (`/metrics`). `None`: only the pipeline's own pods.
    pub metrics_namespace: Option<String>,
}

/// The images new managed dependencies run when the spec names none: the official images
/// compiled in, unless the operator's environment names others ([`DependencyImages::ENV`], set
/// by the Helm chart's `dependencyImages`), for example stand-ins built to the README's
/// dependency image contract. Read once at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyImages {
    pub rabbitmq: String,
    pub redis: String,
    pub cassandra: String,
}

impl Default for DependencyImages {
    fn default() -> Self {
        Self {
            rabbitmq: RABBITMQ_IMAGE.to_owned(),
            redis: REDIS_IMAGE.to_owned(),
            cassandra: CASSANDRA_IMAGE.to_owned(),
        }
    }
}

impl DependencyImages {
    /// The operator's environment variables that name the default images.
    pub const ENV: [(Dependency, &'static str); 3] = [
        (Dependency::Rabbitmq, "RABBITMQ_IMAGE"),
        (Dependency::Redis, "REDIS_IMAGE"),
        (Dependency::Cassandra, "CASSANDRA_IMAGE"),
    ];

    /// The defaults with the images that `lookup` (an environment) names; an unset or blank
    /// variable keeps the compiled-in image.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut images = Self::default();
        for (dependency, variable) in Self::ENV {
            if let Some(image) = lookup(variable).filter(|image| !image.trim().is_empty()) {
                *images.get_mut(dependency) = image.trim().to_owned();
            }
        }
        images
    }

    /// The defaults as the process environment names them.
    pub fn from_env() -> Self {
        Self::from_lookup(|variable| std::env::var(variable).ok())
    }

    pub fn get(&self, dependency: Dependency) -> &str {
        match dependency {
            Dependency::Rabbitmq => &self.rabbitmq,
            Dependency::Redis => &self.redis,
            Dependency::Cassandra => &self.cassandra,
        }
    }

    fn get_mut(&mut self, dependency: Dependency) -> &mut String {
        match dependency {
            Dependency::Rabbitmq => &mut self.rabbitmq,
            Dependency::Redis => &mut self.redis,
            Dependency::Cassandra => &mut self.cassandra,
        }
    }
}

/// Builds every child of a validated pipeline. Nothing can fail here: validation refused what
/// the build could not make.
pub fn build(
    valid: &ValidatedPipeline<'_>,
    overrides: &ReplicaOverrides,
    access: &Access,
    operator_version: &str,
) -> Children {
    let parent = Parent {
        name: &valid.name,
        namespace: &valid.namespace,
        owner: valid.owner.clone(),
    };
    let mut children = Children::default();

    if let Jwt::Generated(jwt) = &valid.jwt {
        children.secrets.push(parent.secret(
            &names::jwt_secret(&valid.name),
            "jwt",
            &[("secret", jwt)],
        ));
    }
    if let Mode::Managed(rabbitmq) = &valid.rabbitmq {
        let managed = statefulset::Managed::new(&parent, Dependency::Rabbitmq, &rabbitmq.node);
        let pod = rabbitmq::pod(&managed, rabbitmq, &mut children);
        statefulset::add(&managed, pod, &mut children);
    }
    if let Mode::Managed(redis) = &valid.redis {
        let managed = statefulset::Managed::new(&parent, Dependency::Redis, &redis.node);
        let pod = redis::pod(&managed, redis, &mut children);
        statefulset::add(&managed, pod, &mut children);
    }
    if let Mode::Managed(cassandra) = &valid.cassandra {
        let managed = statefulset::Managed::new(&parent, Dependency::Cassandra, &cassandra.node);
        let pod = cassandra::pod(&managed, cassandra, &mut children);
        statefulset::add(&managed, pod, &mut children);
    }

    let hash = config_hash(valid);
    for workload in Workload::ALL {
        workloads::workload(
            &parent,
            valid,
            workload,
            overrides,
            &hash,
            operator_version,
            &mut children,
        );
    }
    children.network_policies = network_policy::network_policies(&parent, valid, access);
    children.pod_monitors =
        pod_monitor::pod_monitors(&parent, &valid.pipeline.spec.monitoring.pod_monitor);
    children
}

/// Hash of what the workloads' behaviour depends on outside their own pod template: token
/// settings, where the dependencies are, and every secret value they read. A change of any of it
/// rolls the workloads; a change that the pod template already shows (replicas, image, env) does
/// not need it, and scaling must not roll pods.
pub fn config_hash(valid: &ValidatedPipeline<'_>) -> String {
    let spec = &valid.pipeline.spec;
    let mut hasher = Sha256::new();
    for part in [
        serde_json::to_vec(&spec.auth),
        serde_json::to_vec(&spec.rabbitmq),
        serde_json::to_vec(&spec.redis),
        serde_json::to_vec(&spec.cassandra),
    ] {
        hasher.update(part.unwrap_or_default());
    }
    let jwt = match &valid.jwt {
        Jwt::Generated(jwt) => jwt.as_str(),
        Jwt::Referenced => "",
    };
    let rabbitmq = valid.rabbitmq.managed();
    let redis = valid.redis.managed();
    for value in [
        jwt,
        rabbitmq.map_or("", |rabbitmq| rabbitmq.password.as_str()),
        redis.map_or("", |redis| redis.password.as_str()),
    ] {
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    let none = BTreeMap::new();
    for passwords in [
        rabbitmq.map_or(&none, |rabbitmq| &rabbitmq.workloads),
        redis.map_or(&none, |redis| &redis.workloads),
    ] {
        for (workload, password) in passwords {
            hasher.update(workload.name().as_bytes());
            hasher.update(password.as_bytes());
            hasher.update([0]);
        }
    }
    // Only when managed, so that pipelines with an external Cassandra keep their hash (and their
    // pods) across the operator upgrade that introduced it. The superuser's password is the
    // credentials Job's alone.
    if let Some(cassandra) = valid.cassandra.managed() {
        hasher.update(cassandra.password.as_bytes());
        hasher.update([0]);
    }
    for (name, data) in &valid.referenced {
        hasher.update(name.as_bytes());
        for (key, value) in data {
            hasher.update(key.as_bytes());
            hasher.update(value);
        }
    }
    hex::encode(&hasher.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn an_empty_spec_builds_the_whole_pipeline() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let names = |items: Vec<Option<String>>| items.into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(
            names(
                children
                    .deployments
                    .iter()
                    .map(|d| d.metadata.name.clone())
                    .collect()
            ),
            [
                "shop-gateway",
                "shop-processor",
                "shop-notifier",
                "shop-dashboard"
            ]
        );
        assert_eq!(
            names(
                children
                    .stateful_sets
                    .iter()
                    .map(|s| s.metadata.name.clone())
                    .collect()
            ),
            ["shop-rabbitmq", "shop-redis", "shop-cassandra"]
        );
        assert!(
            children
                .services
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some("shop-gateway"))
        );
        assert!(
            children
                .services
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some("shop-rabbitmq-headless"))
        );
        assert_eq!(children.secrets.len(), 4, "jwt + three credentials");
        // Every child is owned by the pipeline, so deleting it cascades.
        for owners in children
            .deployments
            .iter()
            .map(|d| &d.metadata.owner_references)
        {
            let owner = &owners.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("OrderPipeline", "1234", Some(true))
            );
        }
        // Single replicas need no disruption budget.
        assert!(children.disruption_budgets.is_empty());
    }

    #[test]
    fn the_build_is_deterministic_and_the_hash_follows_spec_and_secrets() {
        let first = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let second = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        assert_eq!(first, second);
        let base = hash_of(&pipeline(json!({})), &secrets());
        let rotated = Secrets {
            jwt: Some("k".repeat(48)),
            ..secrets()
        };
        assert_ne!(base, hash_of(&pipeline(json!({})), &rotated));
        assert_ne!(
            base,
            hash_of(
                &pipeline(json!({"auth": {"tokenLifetimeSeconds": 600}})),
                &secrets()
            )
        );
        // Scaling does not roll pods.
        assert_eq!(
            base,
            hash_of(&pipeline(json!({"gateway": {"replicas": 2}})), &secrets())
        );
    }

    #[test]
    fn the_operator_environment_names_the_default_dependency_images() {
        let environment = BTreeMap::from([
            (
                "RABBITMQ_IMAGE",
                "localhost/order-pipeline-deps/rabbitmq:3.10.8-abc",
            ),
            (
                "REDIS_IMAGE",
                " localhost/order-pipeline-deps/redis:7.0.15-abc ",
            ),
            ("CASSANDRA_IMAGE", ""),
        ]);
        let images = DependencyImages::from_lookup(|name| {
            environment.get(name).map(|value| (*value).to_owned())
        });
        assert_eq!(
            images,
            DependencyImages {
                rabbitmq: "localhost/order-pipeline-deps/rabbitmq:3.10.8-abc".to_owned(),
                redis: "localhost/order-pipeline-deps/redis:7.0.15-abc".to_owned(),
                // Blank is unset: the official image.
                cassandra: CASSANDRA_IMAGE.to_owned(),
            }
        );
        assert_eq!(
            DependencyImages::from_lookup(|_| None),
            DependencyImages::default()
        );

        let stand_ins = DependencyImages {
            cassandra: "localhost/order-pipeline-deps/cassandra:5.0.9-abc".to_owned(),
            ..images
        };
        let build_with = |spec: Value, running: &RunningImages| {
            build_with(
                &pipeline(spec),
                &secrets(),
                &ReplicaOverrides::new(),
                running,
                &Settings {
                    images: stand_ins.clone(),
                    ..Settings::default()
                },
                "0.1.0",
            )
            .unwrap()
        };
        let images_of = |children: &Children| -> BTreeMap<String, String> {
            dependency_containers(children)
                .into_iter()
                .map(|(name, container)| {
                    let name = name.split_once('/').unwrap().1.to_owned();
                    (name, container.image.unwrap())
                })
                .collect()
        };
        let fresh = images_of(&build_with(json!({}), &RunningImages::new()));
        for (container, dependency) in [
            ("rabbitmq", Dependency::Rabbitmq),
            ("redis", Dependency::Redis),
            ("cassandra", Dependency::Cassandra),
            ("config", Dependency::Cassandra),
            ("cqlsh", Dependency::Cassandra),
        ] {
            assert_eq!(fresh[container], stand_ins.get(dependency), "{container}");
        }
        // A running dependency keeps its image, and the spec's image wins over both.
        let running = RunningImages::from([(Dependency::Redis, "redis:7.4.1-alpine".to_owned())]);
        let upgraded = images_of(&build_with(
            json!({"cassandra": {"managed": {"image": "cassandra:5.0.9"}}}),
            &running,
        ));
        assert_eq!(upgraded["redis"], "redis:7.4.1-alpine");
        assert_eq!(upgraded["cassandra"], "cassandra:5.0.9");
        assert_eq!(upgraded["config"], "cassandra:5.0.9");
        assert_eq!(upgraded["rabbitmq"], stand_ins.rabbitmq);
    }

    #[test]
    fn redis_and_cassandra_run_one_node_and_more_is_refused_saying_why() {
        for dependency in ["redis", "cassandra"] {
            let error = build_default(
                &pipeline(json!({dependency: {"managed": {"replicas": 2}}})),
                &secrets(),
                "0.1.0",
            )
            .unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with(&format!(
                    "spec.{dependency}.managed.replicas is 2, but a managed "
                )),
                "{message}"
            );
            assert!(
                message.contains(&format!("point spec.{dependency}.external at")),
                "{message}"
            );
        }
        // RabbitMQ clusters.
        assert!(
            build_default(
                &pipeline(json!({"rabbitmq": {"managed": {"replicas": 3}}})),
                &secrets(),
                "0.1.0"
            )
            .is_ok()
        );
    }
}
