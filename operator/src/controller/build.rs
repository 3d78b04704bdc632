//! The pure step: an `OrderPipeline` and the facts read from the cluster in, every child object
//! out. No I/O happens here, so this is where most of the operator's unit tests live, and the
//! output is deterministic (maps are ordered), so applying it twice writes nothing the second time.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use pipeline_api::{
    CASSANDRA_MINIMUM_MEMORY_LIMIT, DependencySpec, ExternalDependency, ManagedDependency,
    OrderPipeline, RABBITMQ_MINIMUM_MEMORY_LIMIT, Resources, ServiceSpec, ServiceType,
    WorkloadSpec,
};
use pipeline_contract::{env, ports, probes};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::quantity;

/// The one field manager of every write.
pub const MANAGER: &str = "order-pipeline-operator";
/// Marks every child, so the operator can watch only its own objects.
pub const MANAGED_BY: &str = "order-pipeline-operator";
/// The pod-template annotation whose change rolls the pods.
pub const CONFIG_HASH: &str = "orderpipeline.dev/config-hash";

/// Default images: the workloads at the operator's own version; dependencies pinned, unless the
/// operator's environment names others (see [`DependencyImages`]).
pub const WORKLOAD_IMAGE_REPOSITORY: &str = "order-pipeline";
pub const RABBITMQ_IMAGE: &str = "rabbitmq:3.13.7-management-alpine";
pub const REDIS_IMAGE: &str = "redis:7.4.1-alpine";
pub const CASSANDRA_IMAGE: &str = "cassandra:5.0.2";

/// The role the workloads log in to a managed Cassandra as: no superuser, just what the gateway
/// needs (see [`CASSANDRA_CREDENTIALS_SCRIPT`]).
pub const CASSANDRA_ROLE: &str = "pipeline";
/// The superuser the Cassandra image creates on first start (password `cassandra`, replaced by a
/// generated one once the credentials Job has run).
pub const CASSANDRA_SUPERUSER: &str = "cassandra";
/// The keyspace the gateway keeps accounts in: its default, as the operator sets no
/// `CASSANDRA_KEYSPACE`.
const GATEWAY_KEYSPACE: &str = "users_keyspace";
/// Where the Cassandra image keeps its configuration and Cassandra reads it (`CASSANDRA_CONF`).
const CASSANDRA_CONFIG_DIR: &str = "/etc/cassandra";
/// Where the configuration init container mounts the volume that the Cassandra container then
/// mounts at [`CASSANDRA_CONFIG_DIR`]: elsewhere, so the image's own files stay visible to copy.
const CASSANDRA_CONFIG_INIT_MOUNT: &str = "/config";
/// The component label of the Job that sets a managed Cassandra's credentials. Not `cassandra`:
/// its pod must not match the Cassandra Services' and StatefulSet's selectors.
const CASSANDRA_AUTH: &str = "cassandra-auth";

/// Hex digits of the spec hash in the credentials Job's name: 40 (longest pipeline name) + 16
/// (`-cassandra-auth-`) + 7 = 63, the most a Job name may have.
const JOB_HASH_LENGTH: usize = 7;

/// A UID no image needs to exist, for the restricted Pod Security Standard.
const RUN_AS_USER: i64 = 65532;
/// Every managed dependency's pod runs as this user and group (the official Redis and Cassandra
/// images' own user; the RabbitMQ image's is another, which does not matter). No image needs a
/// passwd entry for it: the operator sets `HOME` where a program wants one, and every writable
/// path is a volume, made writable for the group by `fsGroup`.
const DEPENDENCY_USER: i64 = 999;

/// Where each dependency keeps its data: the claim's mount.
const RABBITMQ_DATA_DIR: &str = "/var/lib/rabbitmq";
const REDIS_DATA_DIR: &str = "/data";
const CASSANDRA_DATA_DIR: &str = "/var/lib/cassandra";
/// Where the RabbitMQ configuration ConfigMap is mounted, read-only.
const RABBITMQ_CONFIG_DIR: &str = "/etc/rabbitmq";

/// A managed Cassandra's heap is half its memory limit, and no more than this: the rest of the
/// limit is for what the JVM keeps outside the heap (off-heap memtables and caches, metaspace,
/// thread stacks, direct buffers), and beyond 8 GiB a bigger heap mostly means longer pauses.
const CASSANDRA_MAXIMUM_HEAP: u64 = 8 << 30;
/// The young generation (`HEAP_NEWSIZE`) is a quarter of the heap, and no more than this.
const CASSANDRA_MAXIMUM_NEW_SIZE: u64 = 2 << 30;
/// RabbitMQ's memory high watermark, as a share of its memory limit in percent: publishers are
/// blocked above it, well before the kernel's OOM killer would stop the node at the limit.
const RABBITMQ_WATERMARK_PERCENT: u64 = 60;

/// The four workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    Gateway,
    Processor,
    Notifier,
    Dashboard,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Gateway,
        Workload::Processor,
        Workload::Notifier,
        Workload::Dashboard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Gateway => "gateway",
            Workload::Processor => "processor",
            Workload::Notifier => "notifier",
            Workload::Dashboard => "dashboard",
        }
    }

    /// The business port, for the workloads that take traffic from outside the pipeline.
    pub fn http_port(self) -> Option<u16> {
        match self {
            Workload::Gateway => Some(ports::GATEWAY_HTTP),
            Workload::Dashboard => Some(ports::DASHBOARD_HTTP),
            Workload::Processor | Workload::Notifier => None,
        }
    }

    fn spec(self, pipeline: &OrderPipeline) -> &WorkloadSpec {
        let spec = &pipeline.spec;
        match self {
            Workload::Gateway => &spec.gateway.workload,
            Workload::Processor => &spec.processor.workload,
            Workload::Notifier => &spec.notifier.workload,
            Workload::Dashboard => &spec.dashboard.workload,
        }
    }

    /// How the workload's Service is reached, for the workloads that have one.
    fn service(self, pipeline: &OrderPipeline) -> Option<&ServiceSpec> {
        match self {
            Workload::Gateway => Some(&pipeline.spec.gateway.service),
            Workload::Dashboard => Some(&pipeline.spec.dashboard.service),
            Workload::Processor | Workload::Notifier => None,
        }
    }

    fn needs_cassandra(self) -> bool {
        self == Workload::Gateway
    }

    fn needs_rabbitmq(self) -> bool {
        self != Workload::Dashboard
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

    fn port(self) -> u16 {
        match self {
            Dependency::Rabbitmq => 5672,
            Dependency::Redis => 6379,
            Dependency::Cassandra => 9042,
        }
    }

    /// The name people know it by, for messages.
    fn title(self) -> &'static str {
        match self {
            Dependency::Rabbitmq => "RabbitMQ",
            Dependency::Redis => "Redis",
            Dependency::Cassandra => "Cassandra",
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

/// Secret values the operator generated earlier (read back so they are never rotated by
/// accident) or generates now. Also the data of Secrets the user references, for the hash that
/// rolls pods when a credential changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// `<name>-jwt`, key `secret`, when the spec does not reference the user's own.
    pub jwt: Option<String>,
    /// `<name>-rabbitmq-credentials` (`username`, `password`) when RabbitMQ is managed.
    pub rabbitmq_password: Option<String>,
    /// `<name>-redis-credentials` (`password`) when Redis is managed.
    pub redis_password: Option<String>,
    /// `<name>-cassandra-credentials` (`username` [`CASSANDRA_ROLE`], `password`) when Cassandra
    /// is managed: the workloads' role.
    pub cassandra_password: Option<String>,
    /// `<name>-cassandra-credentials` (`superuser-password`): what the credentials Job sets the
    /// image's superuser to, so the well-known default stops working.
    pub cassandra_superuser_password: Option<String>,
    /// Data of every Secret the spec references, by name, for the configuration hash only.
    pub referenced: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
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
}

/// Why the spec cannot be built (reported on the resource, never a crash).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the resource has no name or namespace")]
    Unnamed,
    #[error("{0} is neither managed nor external")]
    NoDependencyMode(&'static str),
    #[error("secret value for {0} is missing; the dereference step must provide it")]
    MissingSecret(&'static str),
    /// A managed dependency whose resources it cannot run with. The API server refuses these
    /// (a CEL rule on the CRD); this catches pipelines created before the rule existed.
    #[error("{0}")]
    DependencyResources(String),
}

/// Replica counts decided by the autoscaler, replacing the spec's for those workloads.
pub type ReplicaOverrides = BTreeMap<Workload, i32>;

/// The image each managed dependency runs now. Without an image in the spec, a running
/// dependency keeps its image: an operator upgrade with newer defaults must not restart
/// RabbitMQ, Redis or Cassandra by surprise. New pipelines get the new defaults.
pub type RunningImages = BTreeMap<Dependency, String>;

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

/// Builds every child of `pipeline`.
pub fn build(
    pipeline: &OrderPipeline,
    secrets: &Secrets,
    overrides: &ReplicaOverrides,
    running: &RunningImages,
    images: &DependencyImages,
    operator_version: &str,
) -> Result<Children, BuildError> {
    let name = pipeline.metadata.name.clone().ok_or(BuildError::Unnamed)?;
    let namespace = pipeline
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::Unnamed)?;
    let owner = pipeline
        .controller_owner_ref(&())
        .ok_or(BuildError::Unnamed)?;
    let context = Context {
        name: &name,
        namespace: &namespace,
        owner,
    };
    let mut children = Children::default();

    if pipeline.spec.auth.jwt_secret_ref.is_none() {
        let jwt = secrets
            .jwt
            .as_deref()
            .ok_or(BuildError::MissingSecret("jwt"))?;
        children
            .secrets
            .push(context.secret(&format!("{name}-jwt"), "jwt", &[("secret", jwt)]));
    }
    for dependency in Dependency::ALL {
        let spec = dependency.spec(pipeline);
        match (&spec.managed, &spec.external) {
            (Some(managed), None) => context.managed_dependency(
                dependency,
                managed,
                running
                    .get(&dependency)
                    .map_or_else(|| images.get(dependency), String::as_str),
                secrets,
                &mut children,
            )?,
            (None, Some(_)) => {}
            _ => return Err(BuildError::NoDependencyMode(dependency.name())),
        }
    }

    let hash = config_hash(pipeline, secrets);
    for workload in Workload::ALL {
        let spec = workload.spec(pipeline);
        let replicas = overrides.get(&workload).copied().unwrap_or(spec.replicas);
        children.deployments.push(context.deployment(
            pipeline,
            workload,
            spec,
            replicas,
            &hash,
            operator_version,
        )?);
        if let (Some(port), Some(exposure)) = (workload.http_port(), workload.service(pipeline)) {
            let mut service = context.service(
                &format!("{name}-{}", workload.name()),
                workload.name(),
                &[("http", port), ("admin", ports::ADMIN)],
                false,
            );
            expose(&mut service, exposure);
            children.services.push(service);
        }
        if replicas > 1 {
            children
                .disruption_budgets
                .push(context.disruption_budget(workload.name()));
        }
    }
    children.network_policies = context.network_policies(pipeline);
    Ok(children)
}

/// Sets the Service type the spec asks for, and the node port of its business port. A Service
/// reachable from outside the cluster carries the business port only: Kubernetes would give the
/// admin port (metrics) a node port too, and node-port traffic arrives from node addresses,
/// which the NetworkPolicy cannot tell from the pipeline's own pods.
fn expose(service: &mut Service, exposure: &ServiceSpec) {
    let Some(spec) = service.spec.as_mut() else {
        return;
    };
    spec.type_ = Some(exposure.type_.as_str().to_owned());
    if exposure.type_ == ServiceType::ClusterIP {
        return;
    }
    if let Some(ports) = spec.ports.as_mut() {
        ports.retain(|port| port.name.as_deref() == Some("http"));
        if let Some(http) = ports.first_mut() {
            http.node_port = exposure.node_port;
        }
    }
}

/// Hash of what the workloads' behaviour depends on outside their own pod template: token
/// settings, where the dependencies are, and every secret value they read. A change of any of it
/// rolls the workloads; a change that the pod template already shows (replicas, image, env) does
/// not need it, and scaling must not roll pods.
pub fn config_hash(pipeline: &OrderPipeline, secrets: &Secrets) -> String {
    let spec = &pipeline.spec;
    let mut hasher = Sha256::new();
    for part in [
        serde_json::to_vec(&spec.auth),
        serde_json::to_vec(&spec.rabbitmq),
        serde_json::to_vec(&spec.redis),
        serde_json::to_vec(&spec.cassandra),
    ] {
        hasher.update(part.unwrap_or_default());
    }
    for value in [
        &secrets.jwt,
        &secrets.rabbitmq_password,
        &secrets.redis_password,
    ] {
        hasher.update(value.as_deref().unwrap_or("").as_bytes());
        hasher.update([0]);
    }
    // Only when present, so that pipelines with an external Cassandra keep their hash (and their
    // pods) across the operator upgrade that introduced it. The superuser's password is the
    // credentials Job's alone.
    if let Some(password) = &secrets.cassandra_password {
        hasher.update(password.as_bytes());
        hasher.update([0]);
    }
    for (name, data) in &secrets.referenced {
        hasher.update(name.as_bytes());
        for (key, value) in data {
            hasher.update(key.as_bytes());
            hasher.update(value);
        }
    }
    hex::encode(&hasher.finalize()[..8])
}

/// What differs between the three dependencies' pods.
struct DependencyPod {
    ports: Vec<(&'static str, u16)>,
    env: Vec<Value>,
    /// Always set: no dependency relies on its image's entrypoint (see the README's dependency
    /// image contract), so official images and stand-ins built to the contract run the same.
    command: Vec<&'static str>,
    /// Files of the configuration ConfigMap, mounted at [`RABBITMQ_CONFIG_DIR`].
    config: Option<BTreeMap<String, String>>,
}

struct Context<'a> {
    name: &'a str,
    namespace: &'a str,
    owner: OwnerReference,
}

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    // The JSON literals below are the Kubernetes object shapes; a mismatch is a programming error
    // caught by the unit tests, never by user input.
    serde_json::from_value(value).unwrap_or_else(|error| panic!("object shape: {error}"))
}

impl Context<'_> {
    fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "order-pipeline".to_owned(),
            ),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.name.to_owned(),
            ),
            (
                "app.kubernetes.io/component".to_owned(),
                component.to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                MANAGED_BY.to_owned(),
            ),
        ])
    }

    fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/instance".to_owned(),
                self.name.to_owned(),
            ),
            (
                "app.kubernetes.io/component".to_owned(),
                component.to_owned(),
            ),
        ])
    }

    fn metadata(&self, name: &str, component: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [self.owner],
        })
    }

    fn secret(&self, name: &str, component: &str, data: &[(&str, &str)]) -> Secret {
        // `data`, never `stringData`: an apply of `stringData` is a write every time.
        let data: BTreeMap<String, ByteString> = data
            .iter()
            .map(|(key, value)| ((*key).to_owned(), ByteString(value.as_bytes().to_vec())))
            .collect();
        let mut secret: Secret =
            from_json(json!({"metadata": self.metadata(name, component), "type": "Opaque"}));
        secret.data = Some(data);
        secret
    }

    fn service(
        &self,
        name: &str,
        component: &str,
        ports: &[(&str, u16)],
        headless: bool,
    ) -> Service {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(port_name, port)| json!({"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}))
            .collect();
        let mut spec =
            json!({"selector": self.selector(component), "ports": ports, "type": "ClusterIP"});
        if headless {
            spec["clusterIP"] = json!("None");
            // Peers must find each other before they are ready (cluster formation).
            spec["publishNotReadyAddresses"] = json!(true);
        }
        from_json(json!({"metadata": self.metadata(name, component), "spec": spec}))
    }

    fn disruption_budget(&self, component: &str) -> PodDisruptionBudget {
        from_json(json!({
            "metadata": self.metadata(&format!("{}-{component}", self.name), component),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": self.selector(component)}},
        }))
    }

    fn restricted_container_security(&self) -> Value {
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        })
    }

    fn pod_security(&self, user: i64) -> Value {
        json!({
            "runAsNonRoot": true,
            "runAsUser": user,
            "runAsGroup": user,
            "fsGroup": user,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    }

    fn dependency_env(&self, pipeline: &OrderPipeline, workload: Workload) -> Vec<Value> {
        let mut env = Vec::new();
        let secret_env = |name: &str, secret: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
        if workload.needs_rabbitmq() {
            match (
                &pipeline.spec.rabbitmq.managed,
                &pipeline.spec.rabbitmq.external,
            ) {
                (Some(managed), _) => {
                    let credentials = format!("{}-rabbitmq-credentials", self.name);
                    env.push(secret_env("RABBITMQ_USERNAME", &credentials, "username"));
                    env.push(secret_env("RABBITMQ_PASSWORD", &credentials, "password"));
                    // Kubernetes expands $(VAR) from variables defined earlier, so the password
                    // never appears in the pod spec.
                    let urls: Vec<String> = (0..managed.replicas)
                        .map(|index| {
                            format!(
                                "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@{}-rabbitmq-{index}.{}-rabbitmq-headless.{}.svc:5672/%2f",
                                self.name, self.name, self.namespace
                            )
                        })
                        .collect();
                    env.push(json!({"name": env::RABBITMQ_URLS, "value": urls.join(",")}));
                }
                (None, Some(external)) => env.extend(external_rabbitmq_env(external)),
                (None, None) => {}
            }
        }
        match (&pipeline.spec.redis.managed, &pipeline.spec.redis.external) {
            (Some(_), _) => {
                env.push(json!({"name": env::REDIS_ADDR, "value": format!("{}-redis.{}.svc:6379", self.name, self.namespace)}));
                env.push(secret_env(
                    env::REDIS_PASSWORD,
                    &format!("{}-redis-credentials", self.name),
                    "password",
                ));
            }
            (None, Some(external)) => {
                env.push(json!({"name": env::REDIS_ADDR, "value": external.endpoints.first().cloned().unwrap_or_default()}));
                if let Some(secret) = &external.credentials_secret_ref {
                    env.push(secret_env(env::REDIS_PASSWORD, &secret.name, "password"));
                }
            }
            (None, None) => {}
        }
        if workload.needs_cassandra() {
            match (
                &pipeline.spec.cassandra.managed,
                &pipeline.spec.cassandra.external,
            ) {
                (Some(_), _) => {
                    env.push(json!({"name": env::CASSANDRA_ADDR, "value": format!("{}-cassandra.{}.svc:9042", self.name, self.namespace)}));
                    let credentials = format!("{}-cassandra-credentials", self.name);
                    env.push(secret_env(env::CASSANDRA_USER, &credentials, "username"));
                    env.push(secret_env(
                        env::CASSANDRA_PASSWORD,
                        &credentials,
                        "password",
                    ));
                    if let Some(managed) = &pipeline.spec.cassandra.managed {
                        let factor = managed.replicas.min(3);
                        env.push(json!({"name": env::CASSANDRA_REPLICATION_FACTOR, "value": factor.to_string()}));
                    }
                }
                (None, Some(external)) => {
                    env.push(
                        json!({"name": env::CASSANDRA_ADDR, "value": external.endpoints.join(",")}),
                    );
                    if let Some(secret) = &external.credentials_secret_ref {
                        env.push(secret_env(env::CASSANDRA_USER, &secret.name, "username"));
                        env.push(secret_env(
                            env::CASSANDRA_PASSWORD,
                            &secret.name,
                            "password",
                        ));
                    }
                }
                (None, None) => {}
            }
            let (secret, key) = match &pipeline.spec.auth.jwt_secret_ref {
                Some(reference) => (reference.name.clone(), reference.key.clone()),
                None => (format!("{}-jwt", self.name), "secret".to_owned()),
            };
            env.push(secret_env(env::JWT_SECRET, &secret, &key));
            env.push(json!({"name": env::JWT_TTL_SECONDS, "value": pipeline.spec.auth.token_lifetime_seconds.to_string()}));
        }
        env
    }

    fn deployment(
        &self,
        pipeline: &OrderPipeline,
        workload: Workload,
        spec: &WorkloadSpec,
        replicas: i32,
        hash: &str,
        operator_version: &str,
    ) -> Result<Deployment, BuildError> {
        let component = workload.name();
        let image = spec.image.clone().unwrap_or_else(|| {
            format!("{WORKLOAD_IMAGE_REPOSITORY}/{component}:{operator_version}")
        });
        let mut env = self.dependency_env(pipeline, workload);
        env.push(json!({"name": env::ADMIN_PORT, "value": ports::ADMIN.to_string()}));
        env.push(json!({"name": env::LOG_FORMAT, "value": "json"}));
        let mut container_ports =
            vec![json!({"name": "admin", "containerPort": ports::ADMIN, "protocol": "TCP"})];
        if let Some(port) = workload.http_port() {
            env.push(json!({"name": env::HTTP_PORT, "value": port.to_string()}));
            container_ports.insert(
                0,
                json!({"name": "http", "containerPort": port, "protocol": "TCP"}),
            );
        }
        // The user's extra variables come first so the operator's wiring wins on a clash
        // (Kubernetes uses the last definition of a name).
        let operator_names: Vec<String> = env
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        let mut all_env: Vec<Value> = spec
            .env
            .iter()
            .filter(|var| !operator_names.contains(&var.name))
            .map(|var| json!({"name": var.name, "value": var.value}))
            .collect();
        all_env.extend(env);
        Ok(from_json(json!({
            "metadata": self.metadata(&format!("{}-{component}", self.name), component),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": self.selector(component)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {
                        "labels": self.labels(component),
                        "annotations": {CONFIG_HASH: hash},
                    },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "securityContext": self.pod_security(RUN_AS_USER),
                        "terminationGracePeriodSeconds": 30,
                        "containers": [{
                            "name": component,
                            "image": image,
                            "env": all_env,
                            "ports": container_ports,
                            "resources": resources(spec.resources.as_ref()),
                            "securityContext": self.restricted_container_security(),
                            "livenessProbe": {"httpGet": {"path": probes::LIVENESS, "port": "admin"}, "periodSeconds": 10, "failureThreshold": 3},
                            "readinessProbe": {"httpGet": {"path": probes::READINESS, "port": "admin"}, "periodSeconds": 5, "failureThreshold": 2},
                        }],
                    },
                },
            },
        })))
    }

    fn managed_dependency(
        &self,
        dependency: Dependency,
        managed: &ManagedDependency,
        current_image: &str,
        secrets: &Secrets,
        children: &mut Children,
    ) -> Result<(), BuildError> {
        // The spec's image, else the running one, else the operator's default (`current_image`).
        let image = managed
            .image
            .clone()
            .unwrap_or_else(|| current_image.to_owned());
        let component = dependency.name();
        let name = format!("{}-{component}", self.name);
        let headless = format!("{name}-headless");
        let port = dependency.port();
        let resources = managed
            .resources
            .clone()
            .unwrap_or_else(|| dependency.default_resources());
        let DependencyPod {
            ports,
            env,
            command,
            config,
        } = match dependency {
            Dependency::Rabbitmq => {
                let password = secrets
                    .rabbitmq_password
                    .as_deref()
                    .ok_or(BuildError::MissingSecret("rabbitmq"))?;
                let credentials = format!("{name}-credentials");
                children.secrets.push(self.secret(
                    &credentials,
                    component,
                    &[("username", "pipeline"), ("password", password)],
                ));
                let memory_limit = memory_limit(
                    dependency,
                    &resources,
                    RABBITMQ_MINIMUM_MEMORY_LIMIT,
                    "its memory high watermark is 60% of it",
                )?;
                DependencyPod {
                    ports: vec![
                        ("amqp", port),
                        ("management", 15672),
                        ("epmd", 4369),
                        ("dist", 25672),
                    ],
                    // What the image's entrypoint and Dockerfile provided, explicit: RabbitMQ's
                    // own start script reads every one of these (`rabbit_env`), on 3.10 to 4.x.
                    env: vec![
                        json!({"name": "RABBITMQ_DEFAULT_USER", "valueFrom": {"secretKeyRef": {"name": credentials, "key": "username"}}}),
                        json!({"name": "RABBITMQ_DEFAULT_PASS", "valueFrom": {"secretKeyRef": {"name": credentials, "key": "password"}}}),
                        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
                        // The Erlang cookie is written to $HOME: the data volume.
                        json!({"name": "HOME", "value": RABBITMQ_DATA_DIR}),
                        json!({"name": "RABBITMQ_MNESIA_BASE", "value": format!("{RABBITMQ_DATA_DIR}/mnesia")}),
                        json!({"name": "RABBITMQ_USE_LONGNAME", "value": "true"}),
                        json!({"name": "RABBITMQ_NODENAME", "value": format!("rabbit@$(POD_NAME).{headless}.{}.svc", self.namespace)}),
                        json!({"name": "RABBITMQ_CONFIG_FILE", "value": format!("{RABBITMQ_CONFIG_DIR}/rabbitmq.conf")}),
                        json!({"name": "RABBITMQ_ENABLED_PLUGINS_FILE", "value": format!("{RABBITMQ_CONFIG_DIR}/enabled_plugins")}),
                        // RabbitMQ 3.x opens its upgrade log under /var/log/rabbitmq even with
                        // `log.file = false`, and dies on the read-only root filesystem (seen on
                        // the real node with 3.10); the data volume is writable.
                        json!({"name": "RABBITMQ_UPGRADE_LOG", "value": format!("{RABBITMQ_DATA_DIR}/upgrade.log")}),
                    ],
                    command: vec!["rabbitmq-server"],
                    config: Some(BTreeMap::from([
                        (
                            "rabbitmq.conf".to_owned(),
                            rabbitmq_config(
                                &name,
                                &headless,
                                self.namespace,
                                managed.replicas,
                                rabbitmq_watermark(memory_limit),
                            ),
                        ),
                        (
                            "enabled_plugins".to_owned(),
                            RABBITMQ_ENABLED_PLUGINS.to_owned(),
                        ),
                    ])),
                }
            }
            Dependency::Redis => {
                let password = secrets
                    .redis_password
                    .as_deref()
                    .ok_or(BuildError::MissingSecret("redis"))?;
                let credentials = format!("{name}-credentials");
                children.secrets.push(self.secret(
                    &credentials,
                    component,
                    &[("password", password)],
                ));
                DependencyPod {
                    ports: vec![("redis", port)],
                    env: vec![
                        json!({"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": credentials, "key": "password"}}}),
                    ],
                    command: vec!["sh", "-c", REDIS_COMMAND],
                    config: None,
                }
            }
            Dependency::Cassandra => {
                // The image starts with the well-known superuser cassandra/cassandra. The
                // workloads log in as their own role instead, which the credentials Job (below)
                // creates with this password, and the Job replaces the superuser's password with
                // the generated one kept here: nothing answers to cassandra/cassandra once it ran.
                let password = secrets
                    .cassandra_password
                    .as_deref()
                    .ok_or(BuildError::MissingSecret("cassandra"))?;
                let superuser_password = secrets
                    .cassandra_superuser_password
                    .as_deref()
                    .ok_or(BuildError::MissingSecret("cassandra superuser"))?;
                children.secrets.push(self.secret(
                    &format!("{name}-credentials"),
                    component,
                    &[
                        ("username", CASSANDRA_ROLE),
                        ("password", password),
                        ("superuser-password", superuser_password),
                    ],
                ));
                let memory_limit = memory_limit(
                    dependency,
                    &resources,
                    CASSANDRA_MINIMUM_MEMORY_LIMIT,
                    "its Java heap is half of it",
                )?;
                let (heap, new_size) = cassandra_heap(memory_limit);
                // Seeds, cluster name, snitch and addresses are in cassandra.yaml, which the
                // configuration init container writes; this is Cassandra's own launcher's
                // contract (`bin/cassandra`, `cassandra-env.sh`).
                DependencyPod {
                    ports: vec![("cql", port), ("intra", 7000)],
                    env: vec![
                        json!({"name": "CASSANDRA_CONF", "value": CASSANDRA_CONFIG_DIR}),
                        pod_ip_env(),
                        json!({"name": "MAX_HEAP_SIZE", "value": heap}),
                        json!({"name": "HEAP_NEWSIZE", "value": new_size}),
                    ],
                    command: vec!["cassandra", "-f"],
                    config: None,
                }
            }
        };
        if let Some(data) = &config {
            let mut config_map: ConfigMap =
                from_json(json!({"metadata": self.metadata(&format!("{name}-config"), component)}));
            config_map.data = Some(data.clone());
            children.config_maps.push(config_map);
        }
        children
            .services
            .push(self.service(&name, component, &ports[..1], false));
        children
            .services
            .push(self.service(&headless, component, &ports, true));
        let data_path = match dependency {
            Dependency::Rabbitmq => RABBITMQ_DATA_DIR,
            Dependency::Redis => REDIS_DATA_DIR,
            Dependency::Cassandra => CASSANDRA_DATA_DIR,
        };
        let mut mounts = vec![
            json!({"name": "data", "mountPath": data_path}),
            json!({"name": "tmp", "mountPath": "/tmp"}),
        ];
        let mut volumes = vec![json!({"name": "tmp", "emptyDir": {}})];
        let mut init_containers = Vec::new();
        if config.is_some() {
            mounts.push(json!({"name": "config", "mountPath": RABBITMQ_CONFIG_DIR}));
            volumes
                .push(json!({"name": "config", "configMap": {"name": format!("{name}-config")}}));
        }
        if dependency == Dependency::Cassandra {
            // The configuration is the image's, edited for this pod (its address, seeds,
            // cluster name, login), and the root filesystem is read-only: it lives on a volume,
            // which an empty one would hide the image's files behind, so the init container
            // copies them there and edits the copy.
            mounts.push(json!({"name": "cassandra-config", "mountPath": CASSANDRA_CONFIG_DIR}));
            mounts.push(json!({"name": "cassandra-logs", "mountPath": "/opt/cassandra/logs"}));
            volumes.push(json!({"name": "cassandra-config", "emptyDir": {}}));
            volumes.push(json!({"name": "cassandra-logs", "emptyDir": {}}));
            init_containers.push(self.cassandra_config_container(&image, &name, &headless));
        }
        let container_ports: Vec<Value> = ports
            .iter()
            .map(|(port_name, port)| json!({"name": port_name, "containerPort": port, "protocol": "TCP"}))
            .collect();
        let container = json!({
            "name": component,
            "image": image,
            "command": command,
            "env": env,
            "ports": container_ports,
            "volumeMounts": mounts,
            "resources": {"requests": resources.requests, "limits": resources.limits},
            "securityContext": self.restricted_container_security(),
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 10},
            "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 20, "initialDelaySeconds": 60},
        });
        let mut claim = json!({
            "metadata": {"name": "data", "labels": self.labels(component)},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": managed.storage.size}}},
        });
        if let Some(class) = &managed.storage.storage_class_name {
            claim["spec"]["storageClassName"] = json!(class);
        }
        let mut pod = json!({
            "automountServiceAccountToken": false,
            "securityContext": self.pod_security(DEPENDENCY_USER),
            "terminationGracePeriodSeconds": 60,
            "containers": [container],
            "volumes": volumes,
        });
        // Only where there is one: an empty list would still change the other dependencies' pod
        // templates, and so restart them.
        if !init_containers.is_empty() {
            pod["initContainers"] = json!(init_containers);
        }
        children.stateful_sets.push(from_json(json!({
            "metadata": self.metadata(&name, component),
            "spec": {
                "serviceName": headless,
                "replicas": managed.replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": self.selector(component)},
                // Claims outlive the pipeline: deleting the resource never deletes data by
                // surprise; the documented cleanup deletes them explicitly.
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
                "template": {
                    "metadata": {"labels": self.labels(component)},
                    "spec": pod,
                },
                "volumeClaimTemplates": [claim],
            },
        })));
        if dependency == Dependency::Cassandra {
            children
                .jobs
                .push(self.cassandra_credentials_job(&image, managed.replicas));
        }
        if managed.replicas > 1 {
            children
                .disruption_budgets
                .push(self.disruption_budget(component));
        }
        Ok(())
    }

    /// The init container that runs [`CASSANDRA_CONFIG_SCRIPT`] with the Cassandra container's
    /// own image, whose configuration it copies: from the image's [`CASSANDRA_CONFIG_DIR`] to the
    /// configuration volume, which the Cassandra container then mounts there. It writes this
    /// pod's address (known to init containers already), the first node as the seed (its name
    /// resolves before it is ready: the headless Service publishes not-ready addresses) and the
    /// cluster name, which must never change once there is data.
    fn cassandra_config_container(&self, image: &str, name: &str, headless: &str) -> Value {
        json!({
            "name": "config",
            "image": image,
            "command": ["bash", "-c", CASSANDRA_CONFIG_SCRIPT],
            "env": [
                {"name": "IMAGE_CONFIG_DIR", "value": CASSANDRA_CONFIG_DIR},
                {"name": "CONFIG_DIR", "value": CASSANDRA_CONFIG_INIT_MOUNT},
                pod_ip_env(),
                {"name": "SEEDS", "value": format!("{name}-0.{headless}.{}.svc", self.namespace)},
                {"name": "CLUSTER_NAME", "value": name},
            ],
            "volumeMounts": [{"name": "cassandra-config", "mountPath": CASSANDRA_CONFIG_INIT_MOUNT}],
            "resources": resources(None),
            "securityContext": self.restricted_container_security(),
        })
    }

    /// The Job that runs [`CASSANDRA_CREDENTIALS_SCRIPT`] with the StatefulSet's own image (and so
    /// its `cqlsh`), reading every password from the credentials Secret.
    ///
    /// A Job's pod template is immutable, so an apply of a changed one would fail. The name
    /// therefore ends in a hash of the spec: a changed spec (a new image, more replicas) is a new
    /// Job that runs the idempotent script again, and an unchanged one re-applies as a no-op. The
    /// hash stays short because Job names become label values (at most 63 characters, and
    /// pipeline names have up to 40). A finished Job is deleted after
    /// `ttlSecondsAfterFinished`, which also clears superseded ones; the next full apply then
    /// creates it again and the script re-asserts the credentials (or retries a failed setup).
    ///
    /// Its pod carries the pipeline's instance label, which the Cassandra NetworkPolicy admits,
    /// but a component of its own, so no Cassandra Service or the StatefulSet selects it.
    fn cassandra_credentials_job(&self, image: &str, replicas: i32) -> Job {
        let credentials = format!("{}-cassandra-credentials", self.name);
        let secret_env = |name: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": credentials, "key": key}}});
        let mut job: Job = from_json(json!({
            "metadata": self.metadata("", CASSANDRA_AUTH),
            "spec": {
                // Each attempt waits minutes for Cassandra itself (the script's own loop).
                "backoffLimit": 4,
                "ttlSecondsAfterFinished": 3600,
                "template": {
                    "metadata": {"labels": self.labels(CASSANDRA_AUTH)},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": false,
                        "securityContext": self.pod_security(DEPENDENCY_USER),
                        "containers": [{
                            "name": "cqlsh",
                            "image": image,
                            "command": ["bash", "-c", CASSANDRA_CREDENTIALS_SCRIPT],
                            "env": [
                                {"name": "CASSANDRA_HOST", "value": format!("{}-cassandra.{}.svc", self.name, self.namespace)},
                                {"name": "CASSANDRA_PORT", "value": Dependency::Cassandra.port().to_string()},
                                {"name": "SUPERUSER_NAME", "value": CASSANDRA_SUPERUSER},
                                secret_env("SUPERUSER_PASSWORD", "superuser-password"),
                                secret_env("APP_ROLE", "username"),
                                secret_env("APP_PASSWORD", "password"),
                                {"name": "APP_KEYSPACE", "value": GATEWAY_KEYSPACE},
                                // As the gateway's keyspace: every node, up to three.
                                {"name": "AUTH_REPLICATION_FACTOR", "value": replicas.clamp(1, 3).to_string()},
                                // cqlsh keeps its history in ~/.cassandra; the root filesystem is
                                // read-only.
                                {"name": "HOME", "value": "/tmp"},
                                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                            ],
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            "resources": resources(None),
                            "securityContext": self.restricted_container_security(),
                        }],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        }));
        let spec = serde_json::to_vec(&job.spec).unwrap_or_default();
        let hash = hex::encode(Sha256::digest(spec));
        job.metadata.name = Some(format!(
            "{}-{CASSANDRA_AUTH}-{}",
            self.name,
            &hash[..JOB_HASH_LENGTH]
        ));
        job
    }

    /// Only the gateway and dashboard take traffic from outside the pipeline; each managed
    /// dependency only from the pipeline's workloads (and, for clustered ones, its own peers).
    fn network_policies(&self, pipeline: &OrderPipeline) -> Vec<NetworkPolicy> {
        let mut policies = Vec::new();
        let pipeline_pods =
            json!({"podSelector": {"matchLabels": {"app.kubernetes.io/instance": self.name}}});
        for workload in Workload::ALL {
            let component = workload.name();
            let ingress = match workload.http_port() {
                Some(port) => json!([
                    {"ports": [{"port": port, "protocol": "TCP"}]},
                    {"from": [pipeline_pods], "ports": [{"port": ports::ADMIN, "protocol": "TCP"}]},
                ]),
                // Probes come from the kubelet, which NetworkPolicies do not restrict.
                None => {
                    json!([{"from": [pipeline_pods], "ports": [{"port": ports::ADMIN, "protocol": "TCP"}]}])
                }
            };
            policies.push(from_json(json!({
                "metadata": self.metadata(&format!("{}-{component}", self.name), component),
                "spec": {"podSelector": {"matchLabels": self.selector(component)}, "policyTypes": ["Ingress"], "ingress": ingress},
            })));
        }
        for dependency in Dependency::ALL {
            if dependency.spec(pipeline).managed.is_none() {
                continue;
            }
            let component = dependency.name();
            let mut ingress = vec![json!({"from": [pipeline_pods]})];
            if dependency == Dependency::Rabbitmq {
                // The operator, wherever it runs, reads queue depths from the management API.
                ingress.push(json!({
                    "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": MANAGED_BY}}}],
                    "ports": [{"port": 15672, "protocol": "TCP"}],
                }));
            }
            policies.push(from_json(json!({
                "metadata": self.metadata(&format!("{}-{component}", self.name), component),
                "spec": {
                    "podSelector": {"matchLabels": self.selector(component)},
                    "policyTypes": ["Ingress"],
                    "ingress": ingress,
                },
            })));
        }
        policies
    }
}

fn external_rabbitmq_env(external: &ExternalDependency) -> Vec<Value> {
    match &external.credentials_secret_ref {
        Some(secret) => {
            let urls: Vec<String> = external
                .endpoints
                .iter()
                .map(|endpoint| match endpoint.split_once("://") {
                    Some((scheme, rest)) => {
                        format!("{scheme}://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@{rest}")
                    }
                    None => endpoint.clone(),
                })
                .collect();
            vec![
                json!({"name": "RABBITMQ_USERNAME", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": "username"}}}),
                json!({"name": "RABBITMQ_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": "password"}}}),
                json!({"name": env::RABBITMQ_URLS, "value": urls.join(",")}),
            ]
        }
        None => vec![json!({"name": env::RABBITMQ_URLS, "value": external.endpoints.join(",")})],
    }
}

fn resources(resources: Option<&Resources>) -> Value {
    match resources {
        Some(resources) => json!({"requests": resources.requests, "limits": resources.limits}),
        None => {
            json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
        }
    }
}

/// The memory limit in bytes of a dependency that derives a setting from it (`why`), which must
/// be at least `minimum`; else a refusal that says what is wrong and what to set.
fn memory_limit(
    dependency: Dependency,
    resources: &Resources,
    minimum: &str,
    why: &str,
) -> Result<u64, BuildError> {
    let name = dependency.name();
    let field = format!("spec.{name}.managed.resources.limits.memory");
    let default_limit = dependency
        .default_resources()
        .limits
        .remove("memory")
        .unwrap_or_default();
    let refuse = |problem: String| {
        BuildError::DependencyResources(format!(
            "{problem}, and a managed {} needs at least {minimum}: {why}. Set {field} to \
             {minimum} or more, or leave out spec.{name}.managed.resources for the defaults \
             (a {default_limit} limit)",
            dependency.title()
        ))
    };
    let Some(limit) = resources.limits.get("memory") else {
        return Err(refuse(format!(
            "spec.{name}.managed.resources sets no memory limit"
        )));
    };
    let bytes =
        quantity::memory_bytes(limit).map_err(|error| refuse(format!("{field}: {error}")))?;
    let minimum_bytes = quantity::memory_bytes(minimum)
        .map_err(|error| refuse(format!("the minimum itself: {error}")))?;
    if bytes < minimum_bytes {
        return Err(refuse(format!("{field} is {limit}")));
    }
    Ok(bytes)
}

/// `MAX_HEAP_SIZE` and `HEAP_NEWSIZE` for a Cassandra container with this memory limit: half
/// the limit, at most [`CASSANDRA_MAXIMUM_HEAP`], and a quarter of that, at most
/// [`CASSANDRA_MAXIMUM_NEW_SIZE`], in mebibytes (`1024M`) as `cassandra-env.sh` passes them to
/// `-Xms`/`-Xmx` and `-Xmn`. Set explicitly, so Cassandra never sizes itself from the node's
/// memory instead of the container's.
fn cassandra_heap(memory_limit: u64) -> (String, String) {
    let heap = (memory_limit / 2).min(CASSANDRA_MAXIMUM_HEAP);
    let new_size = (heap / 4).min(CASSANDRA_MAXIMUM_NEW_SIZE);
    (
        quantity::as_mebibytes(heap),
        quantity::as_mebibytes(new_size),
    )
}

/// RabbitMQ's memory high watermark in bytes for a container with this memory limit: an
/// absolute value, because RabbitMQ does not always detect a cgroup limit and would otherwise
/// take a share of the node's memory and be OOM-killed before it blocks publishers.
fn rabbitmq_watermark(memory_limit: u64) -> u64 {
    memory_limit / 100 * RABBITMQ_WATERMARK_PERCENT
}

/// The pod's IP, from the downward API (known before the init containers run).
fn pod_ip_env() -> Value {
    json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
}

/// Redis, explicitly: the append-only file on the data volume, no RDB snapshots, the password
/// from the Secret, and files readable by the owner only (what the image's entrypoint's umask
/// gave).
const REDIS_COMMAND: &str = "umask 077; exec redis-server --appendonly yes --appendfsync everysec --save '' --dir /data --requirepass \"$REDIS_PASSWORD\"";

/// The management API (the autoscaler reads queue depths from it) and Prometheus metrics.
const RABBITMQ_ENABLED_PLUGINS: &str = "[rabbitmq_management,rabbitmq_prometheus].\n";

/// RabbitMQ's configuration, valid for RabbitMQ 3.10, 3.13 and 4.x alike.
///
/// Peers are listed (`classic_config`): every node's name is known from the StatefulSet, and the
/// list needs no access to the Kubernetes API (the pods get no token). Logs go to the console
/// only, as the root filesystem is read-only. The memory watermark is absolute (see
/// [`rabbitmq_watermark`]). No `default_queue_type` (3.10 does not know the key; the workloads
/// declare their queues `x-queue-type: quorum` themselves) and no `queue_master_locator`
/// (deprecated).
fn rabbitmq_config(
    service: &str,
    headless: &str,
    namespace: &str,
    replicas: i32,
    watermark: u64,
) -> String {
    let nodes: String = (0..replicas)
        .map(|index| {
            format!(
                "cluster_formation.classic_config.nodes.{} = rabbit@{service}-{index}.{headless}.{namespace}.svc\n",
                index + 1
            )
        })
        .collect();
    format!(
        "# Generated by the order-pipeline operator.\n\
         cluster_formation.peer_discovery_backend = classic_config\n\
         {nodes}\
         cluster_partition_handling = pause_minority\n\
         vm_memory_high_watermark.absolute = {watermark}\n\
         loopback_users.guest = false\n\
         listeners.tcp.default = 5672\n\
         management.tcp.port = 15672\n\
         log.console = true\n\
         log.console.level = info\n\
         log.console.use_colors = off\n\
         log.file = false\n"
    )
}

/// Makes a managed Cassandra's configuration: the configuration init container runs it with the
/// image's bash, and the tests run this same text on sample configurations. It does what the
/// official image's entrypoint did, and more, so no image needs an entrypoint.
///
/// It copies the image's configuration directory, every file, to the writable one Cassandra will
/// read (Cassandra finds its other files next to `cassandra.yaml`), and sets in the copy's
/// `cassandra.yaml`:
/// - `cluster_name` (`CLUSTER_NAME`), and the seeds (`SEEDS`) as a `SimpleSeedProvider`'s
///   `- seeds: "..."`, the whole `seed_provider` block;
/// - `endpoint_snitch: GossipingPropertyFileSnitch` (the datacenter and rack come from the
///   image's `cassandra-rackdc.properties`);
/// - this pod's address (`POD_IP`) as `listen_address`, `broadcast_address` and
///   `broadcast_rpc_address`, and `rpc_address: 0.0.0.0` (CQL on every interface); a
///   `listen_interface` or `rpc_interface`, which Cassandra refuses next to an address, goes;
/// - login and permissions: `authenticator: PasswordAuthenticator`, `authorizer:
///   CassandraAuthorizer` and `role_manager: CassandraRoleManager`. The image ships
///   `AllowAllAuthenticator` and `AllowAllAuthorizer`, which check no password at all; without
///   this the credentials Job's passwords would guard nothing.
///
/// Each setting replaces its top-level key's whole value, whatever form it had: a value on the
/// key's line (`authorizer: AllowAllAuthorizer`), a flow value over several lines, or a block
/// below it (Cassandra 5.0's `authenticator:` with an indented `class_name : ...`, the
/// `seed_provider` list, indented or not), whose lines go. Comments stay. A key that occurs twice
/// keeps only its first place, and a missing one is appended (a minimal `cassandra.yaml` works),
/// so each occurs exactly once, which the script checks before it ends. Only the image's shell
/// tools are used: bash, `cp`, `mv`, mawk-compatible `awk`, `grep`; no temporary files outside
/// `CONFIG_DIR` (the root filesystem is read-only).
///
/// Every run starts from the image's files again, so a rerun (a restarted pod, maybe with a new
/// address) writes this run's result and never builds on an earlier one.
///
/// Parameters, as environment variables, all required: `IMAGE_CONFIG_DIR` (the image's
/// configuration directory, left as it is), `CONFIG_DIR` (where the configuration is written),
/// `POD_IP`, `SEEDS` (comma-separated host names or addresses) and `CLUSTER_NAME`.
pub const CASSANDRA_CONFIG_SCRIPT: &str = r#"set -euo pipefail

image_config="${IMAGE_CONFIG_DIR:?IMAGE_CONFIG_DIR must name the configuration directory of the image}"
config="${CONFIG_DIR:?CONFIG_DIR must name the directory Cassandra reads its configuration from}"
pod_ip="${POD_IP:?POD_IP must be the address of this pod}"
seeds="${SEEDS:?SEEDS must list the seed nodes, comma-separated}"
cluster_name="${CLUSTER_NAME:?CLUSTER_NAME must name the Cassandra cluster}"
yaml="$config/cassandra.yaml"

# The values go into YAML as they are: refuse anything that would need quoting.
case "$pod_ip" in
  *[!0-9A-Fa-f.:]*) echo "POD_IP '$pod_ip' is not an IP address" >&2; exit 1 ;;
esac
case "$seeds" in
  *[!A-Za-z0-9.,:_-]*) echo "SEEDS '$seeds' is not a comma-separated list of hosts" >&2; exit 1 ;;
esac
case "$cluster_name" in
  *[!A-Za-z0-9._-]*) echo "CLUSTER_NAME '$cluster_name' may only have letters, digits, '.', '_' and '-'" >&2; exit 1 ;;
esac

# Each top-level key with its whole value, as it is to stand in cassandra.yaml.
settings=(
  "cluster_name: '$cluster_name'"
  "seed_provider:"
  "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider"
  "    parameters:"
  "      - seeds: \"$seeds\""
  "endpoint_snitch: GossipingPropertyFileSnitch"
  "listen_address: $pod_ip"
  "broadcast_address: $pod_ip"
  "rpc_address: 0.0.0.0"
  "broadcast_rpc_address: $pod_ip"
  "authenticator: PasswordAuthenticator"
  "authorizer: CassandraAuthorizer"
  "role_manager: CassandraRoleManager"
)
# Keys that contradict the settings: Cassandra refuses an interface next to an address.
removed="listen_interface rpc_interface"

if [ ! -f "$image_config/cassandra.yaml" ]; then
  echo "$image_config/cassandra.yaml does not exist: is this a Cassandra image?" >&2
  exit 1
fi

# Always from the image, so a restarted pod never builds on an earlier start's edits.
cp -R "$image_config/." "$config/"
echo "copied $image_config to $config"

# A setting replaces its top-level key's whole value: the rest of the key's line and every
# following line that is indented or a list item at the margin (`- class_name: ...`). Comments
# at the margin and blank lines stay. A key that occurs twice keeps only its first place; a
# missing one is appended. A removed key goes with its value.
SETTINGS="$(printf '%s\n' "${settings[@]}")" REMOVED="$removed" awk '
function key_of(line) {
  sub(/[ \t]*:.*/, "", line)
  return line
}
BEGIN {
  count = split(ENVIRON["SETTINGS"], lines, "\n")
  keys = 0
  for (i = 1; i <= count; i++) {
    if (lines[i] ~ /^[^ \t]/) {
      key = key_of(lines[i])
      order[++keys] = key
      text[key] = lines[i]
    } else {
      text[key] = text[key] "\n" lines[i]
    }
  }
  count = split(ENVIRON["REMOVED"], names, " ")
  for (i = 1; i <= count; i++) {
    removed[names[i]] = 1
  }
}
replacing && /^[ \t]*$/ { print; next }
replacing && /^#/ { print; next }
replacing && /^([ \t]|-([ \t]|$))/ { next }
{
  replacing = 0
  if ($0 ~ /^[A-Za-z0-9_]+[ \t]*:([ \t]|$)/) {
    key = key_of($0)
    if (key in text) {
      if (!(key in written)) {
        print text[key]
        written[key] = 1
      }
      replacing = 1
      next
    }
    if (key in removed) {
      replacing = 1
      next
    }
  }
  print
}
END {
  for (i = 1; i <= keys; i++) {
    if (!(order[i] in written)) {
      print text[order[i]]
    }
  }
}
' "$yaml" > "$yaml.new"
mv "$yaml.new" "$yaml"

for line in "${settings[@]}"; do
  case "$line" in
    [!\ ]*)
      key="${line%%:*}"
      occurrences="$(grep -c "^${key}[[:space:]]*:" "$yaml" || true)"
      if [ "$occurrences" != 1 ]; then
        echo "$yaml: expected exactly one '$key', found $occurrences line(s) for the key" >&2
        exit 1
      fi
      ;;
  esac
  if ! grep -qxF -- "$line" "$yaml"; then
    echo "$yaml: expected the line '$line'" >&2
    exit 1
  fi
  echo "$yaml: $line"
done
for key in $removed; do
  if grep -q "^${key}[[:space:]]*:" "$yaml"; then
    echo "$yaml: '$key' is still set" >&2
    exit 1
  fi
done
"#;

/// Sets up a managed Cassandra's credentials; the credentials Job runs it with bash and the
/// image's `cqlsh`, and the tests run this same text against the environment's Cassandra.
///
/// Every step can run again, after a partial or a complete run: it logs in as the superuser with
/// the new password or else the image's default; makes `system_auth` replicated on up to three
/// nodes (the image leaves it on one, so losing that node would lock everyone out) and, since
/// rows written before that live on one node only, reads the role tables at `CONSISTENCY ALL`,
/// which repairs them; creates the application role and sets its password, so the Secret is the
/// truth; grants it what the gateway needs (it creates its keyspace and table when missing:
/// `CREATE` on all keyspaces; the creator of a keyspace gets every permission on it, and an
/// existing keyspace, created by the superuser before there was an application role, gets
/// `SELECT` and `MODIFY` explicitly); and finally replaces the superuser's password.
///
/// Passwords arrive in the environment (from the Secret) and reach `cqlsh` only through files
/// in a private directory, never a command line or the log.
///
/// Parameters, as environment variables: `CASSANDRA_HOST` (required), `CASSANDRA_PORT` (9042),
/// `SUPERUSER_NAME` (`cassandra`), `DEFAULT_SUPERUSER_PASSWORD` (`cassandra`),
/// `SUPERUSER_PASSWORD` (required: the new one), `APP_ROLE` (`pipeline`), `APP_PASSWORD`
/// (required), `APP_KEYSPACE` (`users_keyspace`), `AUTH_REPLICATION_FACTOR` (1),
/// `CONNECT_ATTEMPTS` (60) and `CONNECT_DELAY_SECONDS` (5).
pub const CASSANDRA_CREDENTIALS_SCRIPT: &str = r#"set -euo pipefail

host="${CASSANDRA_HOST:?CASSANDRA_HOST must name the Cassandra service}"
port="${CASSANDRA_PORT:-9042}"
superuser="${SUPERUSER_NAME:-cassandra}"
default_superuser_password="${DEFAULT_SUPERUSER_PASSWORD:-cassandra}"
superuser_password="${SUPERUSER_PASSWORD:?SUPERUSER_PASSWORD must be the new superuser password}"
role="${APP_ROLE:-pipeline}"
role_password="${APP_PASSWORD:?APP_PASSWORD must be the password of the application role}"
keyspace="${APP_KEYSPACE:-users_keyspace}"
replication_factor="${AUTH_REPLICATION_FACTOR:-1}"
attempts="${CONNECT_ATTEMPTS:-60}"
delay="${CONNECT_DELAY_SECONDS:-5}"

case "$keyspace" in
  '' | *[!A-Za-z0-9_]*) echo "APP_KEYSPACE '$keyspace' is not a plain CQL identifier" >&2; exit 1 ;;
esac
case "$replication_factor" in
  '' | *[!0-9]* | 0) echo "AUTH_REPLICATION_FACTOR '$replication_factor' is not a positive number" >&2; exit 1 ;;
esac

umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A CQL string literal.
literal() {
  local quote="'"
  printf "'%s'" "${1//$quote/$quote$quote}"
}

# cqlsh reads the password from a credentials file that only this user can read.
use_password() {
  printf '[plain_text_auth]\npassword = %s\n' "$1" > "$work/credentials"
}

cql() {
  cqlsh "$host" "$port" -u "$superuser" --credentials "$work/credentials" --no-color \
    --connect-timeout=10 --request-timeout=60 "$@"
}

# Runs one statement (from a file: it may hold a password). A failure is retried a few times
# (Cassandra refuses a role's password change within 5 s of the last, and schema changes can time
# out while nodes join); then the script stops.
run() {
  echo "$1"
  printf '%s\n' "$2" > "$work/statement.cql"
  local try
  for try in 1 2 3 4; do
    if cql -f "$work/statement.cql" > /dev/null; then
      return 0
    fi
    echo "  failed (try $try of 5), again in 6 s"
    sleep 6
  done
  cql -f "$work/statement.cql" > /dev/null
}

echo "waiting for CQL at $host:$port as $superuser"
logged_in=""
error=""
for attempt in $(seq 1 "$attempts"); do
  for candidate in "$superuser_password" "$default_superuser_password"; do
    use_password "$candidate"
    if error="$(cql -e 'SELECT release_version FROM system.local' 2>&1 > /dev/null)"; then
      logged_in="$candidate"
      break 2
    fi
  done
  echo "attempt $attempt/$attempts: no login as $superuser at $host:$port with either password yet: ${error##*$'\n'}"
  if [ "$attempt" -lt "$attempts" ]; then
    sleep "$delay"
  fi
done
if [ -z "$logged_in" ]; then
  echo "giving up after $attempts attempts" >&2
  exit 1
fi
if [ "$logged_in" = "$superuser_password" ]; then
  echo "logged in with the generated superuser password (an earlier run set it)"
else
  echo "logged in with the default superuser password"
fi

# The cluster's one datacenter, as its snitch names it (dc1 in the image, datacenter1 elsewhere).
datacenter="$(cql -e 'SELECT data_center FROM system.local' \
  | awk 'found == 1 { sub(/^[ \t]+/, ""); sub(/[ \t]+$/, ""); print; found = 2 } /^-+$/ && !found { found = 1 }')"
if [ -z "$datacenter" ]; then
  echo "cannot read the datacenter's name from system.local" >&2
  exit 1
fi

run "system_auth: $replication_factor replica(s) in datacenter $datacenter" \
  "ALTER KEYSPACE system_auth WITH replication = {'class': 'NetworkTopologyStrategy', $(literal "$datacenter"): $replication_factor};"
echo "system_auth: reading the role tables at CONSISTENCY ALL (repairs rows written before)"
for table in roles role_members role_permissions; do
  printf 'CONSISTENCY ALL;\nSELECT * FROM system_auth.%s;\n' "$table" > "$work/statement.cql"
  cql -f "$work/statement.cql" > /dev/null
done

run "role $role: created unless it exists" \
  "CREATE ROLE IF NOT EXISTS $(literal "$role") WITH PASSWORD = $(literal "$role_password") AND LOGIN = true;"
run "role $role: may log in, is no superuser" \
  "ALTER ROLE $(literal "$role") WITH LOGIN = true AND SUPERUSER = false;"
run "role $role: may create keyspaces and tables" \
  "GRANT CREATE ON ALL KEYSPACES TO $(literal "$role");"
existing="$(cql -e "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = $(literal "${keyspace,,}");")"
case "$existing" in
  *'(1 rows)'*)
    run "role $role: may read keyspace $keyspace" "GRANT SELECT ON KEYSPACE $keyspace TO $(literal "$role");"
    run "role $role: may write keyspace $keyspace" "GRANT MODIFY ON KEYSPACE $keyspace TO $(literal "$role");"
    ;;
  *)
    echo "keyspace $keyspace does not exist yet: $role gets every permission on it by creating it"
    ;;
esac
# The role's own login comes after its grants: a session of the role loads the node's permission
# cache, which would then hold the permissions from before the grants for permissions_validity
# (2 s by default): a gateway logging in at once was refused CREATE (seen on a fresh Cassandra).
# The Secret is the truth, but a password is only changed when it differs: every change is
# rate-limited.
printf '[plain_text_auth]\npassword = %s\n' "$role_password" > "$work/role-credentials"
if cqlsh "$host" "$port" -u "$role" --credentials "$work/role-credentials" --no-color \
  --connect-timeout=10 -e 'SELECT release_version FROM system.local' > /dev/null 2>&1; then
  echo "role $role: logs in with the password from the Secret"
else
  run "role $role: the password from the Secret" \
    "ALTER ROLE $(literal "$role") WITH PASSWORD = $(literal "$role_password");"
fi

if [ "$logged_in" = "$superuser_password" ]; then
  echo "superuser $superuser: has the generated password already"
else
  run "superuser $superuser: the generated password" \
    "ALTER ROLE $(literal "$superuser") WITH PASSWORD = $(literal "$superuser_password");"
fi
echo "credentials are set up"
"#;

#[cfg(test)]
mod tests {
    use kube::core::ObjectMeta;
    use pipeline_api::OrderPipelineSpec;

    use super::*;

    fn pipeline(spec: serde_json::Value) -> OrderPipeline {
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

    fn build_default(
        pipeline: &OrderPipeline,
        secrets: &Secrets,
        version: &str,
    ) -> Result<Children, BuildError> {
        build(
            pipeline,
            secrets,
            &ReplicaOverrides::new(),
            &RunningImages::new(),
            &DependencyImages::default(),
            version,
        )
    }

    #[test]
    fn services_are_cluster_internal_unless_the_spec_exposes_them() {
        let service = |children: &Children, name: &str| {
            children
                .services
                .iter()
                .find(|service| service.metadata.name.as_deref() == Some(name))
                .and_then(|service| service.spec.clone())
                .unwrap()
        };
        let internal = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        for name in ["shop-gateway", "shop-dashboard"] {
            let spec = service(&internal, name);
            assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
            assert!(
                spec.ports
                    .unwrap()
                    .iter()
                    .all(|port| port.node_port.is_none())
            );
        }

        let exposed = build_default(
            &pipeline(json!({
                "gateway": {"service": {"type": "NodePort", "nodePort": 30080}},
                "dashboard": {"service": {"type": "LoadBalancer"}},
            })),
            &secrets(),
            "0.1.0",
        )
        .unwrap();
        let gateway = service(&exposed, "shop-gateway");
        assert_eq!(gateway.type_.as_deref(), Some("NodePort"));
        let ports = gateway.ports.unwrap();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].node_port),
            (Some("http"), Some(30080))
        );
        // The admin port (metrics) stays inside the cluster.
        assert_eq!(ports.len(), 1);
        let dashboard = service(&exposed, "shop-dashboard");
        assert_eq!(dashboard.type_.as_deref(), Some("LoadBalancer"));
        assert!(
            dashboard
                .ports
                .unwrap()
                .iter()
                .all(|port| port.node_port.is_none())
        );
    }

    #[test]
    fn autoscaler_overrides_replace_the_spec_count() {
        let overrides = ReplicaOverrides::from([(Workload::Processor, 4)]);
        let children = build(
            &pipeline(json!({})),
            &secrets(),
            &overrides,
            &RunningImages::new(),
            &DependencyImages::default(),
            "0.1.0",
        )
        .unwrap();
        let processor = deployment(&children, "shop-processor");
        assert_eq!(processor.spec.as_ref().unwrap().replicas, Some(4));
        assert!(
            children
                .disruption_budgets
                .iter()
                .any(|b| b.metadata.name.as_deref() == Some("shop-processor"))
        );
    }

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
        let children = build(
            &pipeline(json!({})),
            &secrets(),
            &ReplicaOverrides::new(),
            &running,
            &DependencyImages::default(),
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
        let children = build(
            &pipeline(explicit),
            &secrets(),
            &ReplicaOverrides::new(),
            &running,
            &DependencyImages::default(),
            "9.9.9",
        )
        .unwrap();
        assert_eq!(
            image_of(&children, "shop-redis").as_deref(),
            Some("redis:8.0.0")
        );
    }

    fn secrets() -> Secrets {
        Secrets {
            jwt: Some("j".repeat(48)),
            rabbitmq_password: Some("rabbitpassword".into()),
            redis_password: Some("redispassword".into()),
            cassandra_password: Some("cassandrapassword".into()),
            cassandra_superuser_password: Some("superuserpassword".into()),
            referenced: BTreeMap::new(),
        }
    }

    fn env_of(deployment: &Deployment) -> BTreeMap<String, Value> {
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

    fn env_of_container(
        container: &k8s_openapi::api::core::v1::Container,
    ) -> BTreeMap<String, Value> {
        container
            .env
            .iter()
            .flatten()
            .map(|var| (var.name.clone(), serde_json::to_value(var).unwrap()))
            .collect()
    }

    fn deployment<'a>(children: &'a Children, name: &str) -> &'a Deployment {
        children
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

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
    fn workloads_are_wired_exactly_as_they_read_their_configuration() {
        let children = build_default(
            &pipeline(json!({"rabbitmq": {"managed": {"replicas": 3}}})),
            &secrets(),
            "0.1.0",
        )
        .unwrap();
        let gateway = env_of(deployment(&children, "shop-gateway"));
        let urls = gateway[env::RABBITMQ_URLS]["value"].as_str().unwrap();
        assert_eq!(urls.split(',').count(), 3);
        assert!(urls.starts_with("amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@shop-rabbitmq-0.shop-rabbitmq-headless.store.svc:5672/"));
        assert_eq!(
            gateway[env::REDIS_ADDR]["value"],
            "shop-redis.store.svc:6379"
        );
        assert_eq!(
            gateway[env::JWT_SECRET]["valueFrom"]["secretKeyRef"]["name"],
            "shop-jwt"
        );
        assert_eq!(gateway[env::HTTP_PORT]["value"], "8080");
        assert_eq!(
            gateway[env::CASSANDRA_ADDR]["value"],
            "shop-cassandra.store.svc:9042"
        );
        // The variables a URL references are defined before it (Kubernetes expands in order).
        let container = &deployment(&children, "shop-gateway")
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let position = |name: &str| {
            container
                .env
                .iter()
                .flatten()
                .position(|var| var.name == name)
                .unwrap()
        };
        assert!(position("RABBITMQ_PASSWORD") < position(env::RABBITMQ_URLS));
        let dashboard = env_of(deployment(&children, "shop-dashboard"));
        assert!(
            !dashboard.contains_key(env::RABBITMQ_URLS),
            "the dashboard only reads Redis"
        );
        assert!(!dashboard.contains_key(env::JWT_SECRET));
        // No secret value is written into any pod template.
        let text = serde_json::to_string(&children.deployments).unwrap();
        for secret in [
            "rabbitpassword",
            "redispassword",
            "cassandrapassword",
            "superuserpassword",
            &"j".repeat(48),
        ] {
            assert!(!text.contains(secret));
        }
    }

    #[test]
    fn external_dependencies_use_their_endpoints_and_credentials() {
        let spec = json!({
            "rabbitmq": {"external": {"endpoints": ["amqps://mq.example.com:5671/prod"], "credentialsSecretRef": {"name": "mq"}}},
            "redis": {"external": {"endpoints": ["cache.example.com:6380"]}},
        });
        let children = build_default(&pipeline(spec), &secrets(), "0.1.0").unwrap();
        let processor = env_of(deployment(&children, "shop-processor"));
        assert_eq!(
            processor[env::RABBITMQ_URLS]["value"],
            "amqps://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@mq.example.com:5671/prod"
        );
        assert_eq!(
            processor["RABBITMQ_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"],
            "mq"
        );
        assert_eq!(
            processor[env::REDIS_ADDR]["value"],
            "cache.example.com:6380"
        );
        assert_eq!(
            children
                .stateful_sets
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect::<Vec<_>>(),
            ["shop-cassandra"]
        );
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_standard() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let templates = children
            .deployments
            .iter()
            .map(|d| d.spec.as_ref().unwrap().template.clone())
            .chain(
                children
                    .stateful_sets
                    .iter()
                    .map(|s| s.spec.as_ref().unwrap().template.clone()),
            )
            .chain(
                children
                    .jobs
                    .iter()
                    .map(|j| j.spec.as_ref().unwrap().template.clone()),
            );
        assert_eq!(children.jobs.len(), 1, "the Cassandra credentials Job");
        for template in templates {
            let spec = template.spec.unwrap();
            let pod = spec.security_context.unwrap();
            assert_eq!(pod.run_as_non_root, Some(true));
            assert_eq!(pod.seccomp_profile.unwrap().type_, "RuntimeDefault");
            let init_containers = spec.init_containers.into_iter().flatten();
            for container in spec.containers.into_iter().chain(init_containers) {
                let security = container.security_context.unwrap();
                assert_eq!(security.allow_privilege_escalation, Some(false));
                assert_eq!(security.read_only_root_filesystem, Some(true));
                assert_eq!(
                    security.capabilities.unwrap().drop,
                    Some(vec!["ALL".to_owned()])
                );
            }
        }
    }

    #[test]
    fn the_build_is_deterministic_and_the_hash_follows_spec_and_secrets() {
        let first = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let second = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        assert_eq!(first, second);
        let base = config_hash(&pipeline(json!({})), &secrets());
        let rotated = Secrets {
            jwt: Some("k".repeat(48)),
            ..secrets()
        };
        assert_ne!(base, config_hash(&pipeline(json!({})), &rotated));
        assert_ne!(
            base,
            config_hash(
                &pipeline(json!({"auth": {"tokenLifetimeSeconds": 600}})),
                &secrets()
            )
        );
        // Scaling does not roll pods.
        assert_eq!(
            base,
            config_hash(&pipeline(json!({"gateway": {"replicas": 2}})), &secrets())
        );
    }

    #[test]
    fn multi_replica_components_get_disruption_budgets_and_user_env_never_overrides_wiring() {
        let spec = json!({
            "gateway": {"replicas": 3, "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "REDIS_ADDR", "value": "evil:1"}]},
            "rabbitmq": {"managed": {"replicas": 3}},
        });
        let children = build_default(&pipeline(spec), &secrets(), "0.1.0").unwrap();
        let budgets: Vec<_> = children
            .disruption_budgets
            .iter()
            .filter_map(|b| b.metadata.name.clone())
            .collect();
        assert_eq!(budgets, ["shop-rabbitmq", "shop-gateway"]);
        let gateway = env_of(deployment(&children, "shop-gateway"));
        assert_eq!(gateway["LOG_LEVEL"]["value"], "debug");
        assert_eq!(
            gateway[env::REDIS_ADDR]["value"],
            "shop-redis.store.svc:6379"
        );
    }

    fn pod_of<'a>(children: &'a Children, name: &str) -> &'a k8s_openapi::api::core::v1::PodSpec {
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
    fn dependency_containers(
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

    #[test]
    fn every_managed_dependency_container_has_an_explicit_command() {
        let spec = json!({
            "rabbitmq": {"managed": {"replicas": 3}},
            "cassandra": {"managed": {"replicas": 3}},
        });
        let children = build_default(&pipeline(spec), &secrets(), "0.1.0").unwrap();
        let containers = dependency_containers(&children);
        // Three StatefulSets (one with an init container) and the credentials Job.
        assert_eq!(
            containers.len(),
            5,
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
                "umask 077; exec redis-server --appendonly yes --appendfsync everysec --save '' --dir /data --requirepass \"$REDIS_PASSWORD\"",
            ])
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
            build(
                &pipeline(spec),
                &secrets(),
                &ReplicaOverrides::new(),
                running,
                &stand_ins,
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

    fn config_map<'a>(children: &'a Children, name: &str) -> &'a BTreeMap<String, String> {
        children
            .config_maps
            .iter()
            .find(|map| map.metadata.name.as_deref() == Some(name))
            .and_then(|map| map.data.as_ref())
            .unwrap()
    }

    #[test]
    fn rabbitmq_is_configured_for_3_10_to_4_x_without_its_image_entrypoint() {
        let children = build_default(
            &pipeline(json!({"rabbitmq": {"managed": {"replicas": 3}}})),
            &secrets(),
            "0.1.0",
        )
        .unwrap();
        let pod = pod_of(&children, "shop-rabbitmq");
        let rabbitmq = &pod.containers[0];
        let env = env_of_container(rabbitmq);
        for (name, value) in [
            ("HOME", "/var/lib/rabbitmq"),
            ("RABBITMQ_MNESIA_BASE", "/var/lib/rabbitmq/mnesia"),
            ("RABBITMQ_CONFIG_FILE", "/etc/rabbitmq/rabbitmq.conf"),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                "/etc/rabbitmq/enabled_plugins",
            ),
            ("RABBITMQ_USE_LONGNAME", "true"),
            ("RABBITMQ_UPGRADE_LOG", "/var/lib/rabbitmq/upgrade.log"),
            (
                "RABBITMQ_NODENAME",
                "rabbit@$(POD_NAME).shop-rabbitmq-headless.store.svc",
            ),
        ] {
            assert_eq!(env[name]["value"], value, "{name}");
        }
        for (name, key) in [
            ("RABBITMQ_DEFAULT_USER", "username"),
            ("RABBITMQ_DEFAULT_PASS", "password"),
        ] {
            assert_eq!(
                env[name]["valueFrom"]["secretKeyRef"],
                json!({"name": "shop-rabbitmq-credentials", "key": key}),
                "{name}"
            );
        }
        // POD_NAME is defined before the node name that expands it.
        let position = |name: &str| {
            rabbitmq
                .env
                .iter()
                .flatten()
                .position(|var| var.name == name)
        };
        assert!(position("POD_NAME") < position("RABBITMQ_NODENAME"));
        // Writable: the data volume (HOME, the database, the Erlang cookie) and /tmp only.
        let mounts = serde_json::to_value(rabbitmq.volume_mounts.as_ref().unwrap()).unwrap();
        assert_eq!(
            mounts,
            json!([
                {"name": "data", "mountPath": "/var/lib/rabbitmq"},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "config", "mountPath": "/etc/rabbitmq"},
            ])
        );

        let files = config_map(&children, "shop-rabbitmq-config");
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["enabled_plugins", "rabbitmq.conf"]
        );
        assert_eq!(
            files["enabled_plugins"],
            "[rabbitmq_management,rabbitmq_prometheus].\n"
        );
        let config: BTreeMap<&str, &str> = files["rabbitmq.conf"]
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split_once(" = ").unwrap())
            .collect();
        assert_eq!(
            config,
            BTreeMap::from([
                ("cluster_formation.peer_discovery_backend", "classic_config"),
                (
                    "cluster_formation.classic_config.nodes.1",
                    "rabbit@shop-rabbitmq-0.shop-rabbitmq-headless.store.svc"
                ),
                (
                    "cluster_formation.classic_config.nodes.2",
                    "rabbit@shop-rabbitmq-1.shop-rabbitmq-headless.store.svc"
                ),
                (
                    "cluster_formation.classic_config.nodes.3",
                    "rabbit@shop-rabbitmq-2.shop-rabbitmq-headless.store.svc"
                ),
                ("cluster_partition_handling", "pause_minority"),
                // 60 % of the default 1Gi limit.
                ("vm_memory_high_watermark.absolute", "644245080"),
                ("loopback_users.guest", "false"),
                ("listeners.tcp.default", "5672"),
                ("management.tcp.port", "15672"),
                ("log.console", "true"),
                ("log.console.level", "info"),
                // on/off, not a boolean: 3.10 refuses `false` and does not boot.
                ("log.console.use_colors", "off"),
                ("log.file", "false"),
            ])
        );
        // One line per key: RabbitMQ's cuttlefish takes the last, which would hide a mistake.
        assert_eq!(
            config.len(),
            files["rabbitmq.conf"]
                .lines()
                .filter(|l| !l.starts_with('#'))
                .count()
        );
        // The node names are the ones the workloads connect to.
        let gateway = env_of(deployment(&children, "shop-gateway"));
        let urls = gateway[env::RABBITMQ_URLS]["value"].as_str().unwrap();
        for index in 0..3 {
            assert!(urls.contains(&format!(
                "@shop-rabbitmq-{index}.shop-rabbitmq-headless.store.svc:5672/"
            )));
        }

        let small = build_default(
            &pipeline(
                json!({"rabbitmq": {"managed": {"resources": {"limits": {"memory": "512Mi"}}}}}),
            ),
            &secrets(),
            "0.1.0",
        )
        .unwrap();
        let conf = &config_map(&small, "shop-rabbitmq-config")["rabbitmq.conf"];
        assert!(
            conf.contains("\nvm_memory_high_watermark.absolute = 322122540\n"),
            "{conf}"
        );
        assert!(conf.contains("\ncluster_formation.classic_config.nodes.1 = "));
        assert!(!conf.contains("nodes.2"));
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

    fn resources_of(container: &k8s_openapi::api::core::v1::Container) -> Value {
        serde_json::to_value(container.resources.as_ref().unwrap()).unwrap()
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
            Err(BuildError::DependencyResources(message)) => message,
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
        let error = crate::controller::Error::Build(BuildError::DependencyResources(message));
        assert_eq!(error.kind(), crate::metrics::ErrorKind::Build);

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

    #[test]
    fn a_managed_cassandra_reads_the_configuration_its_init_container_copied_from_the_image() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let pod = pod_of(&children, "shop-cassandra");
        let init = pod.init_containers.as_deref().unwrap();
        assert_eq!(init.len(), 1);
        let (config, cassandra) = (&init[0], &pod.containers[0]);
        assert_eq!(
            config.command.as_deref().unwrap(),
            ["bash", "-c", CASSANDRA_CONFIG_SCRIPT]
        );
        let env: BTreeMap<&str, Option<&str>> = config
            .env
            .iter()
            .flatten()
            .map(|var| (var.name.as_str(), var.value.as_deref()))
            .collect();
        // What the image's entrypoint took from its environment is the script's now: the
        // first node as the seed, the cluster name (as the entrypoint had it), the pod's address.
        assert_eq!(
            env,
            BTreeMap::from([
                ("CONFIG_DIR", Some("/config")),
                ("IMAGE_CONFIG_DIR", Some("/etc/cassandra")),
                ("POD_IP", None),
                (
                    "SEEDS",
                    Some("shop-cassandra-0.shop-cassandra-headless.store.svc")
                ),
                ("CLUSTER_NAME", Some("shop-cassandra")),
            ])
        );
        let pod_ip = |container: &k8s_openapi::api::core::v1::Container| {
            let var = container
                .env
                .iter()
                .flatten()
                .find(|var| var.name == "POD_IP")
                .cloned();
            serde_json::to_value(var).unwrap()
        };
        for container in [config, cassandra] {
            assert_eq!(
                pod_ip(container)["valueFrom"],
                json!({"fieldRef": {"fieldPath": "status.podIP"}}),
                "{}",
                container.name
            );
        }
        // The init container sees the image's /etc/cassandra and writes the volume elsewhere;
        // Cassandra then finds the copy at /etc/cassandra.
        let mounts = |container: &k8s_openapi::api::core::v1::Container| {
            serde_json::to_value(container.volume_mounts.as_ref().unwrap()).unwrap()
        };
        assert_eq!(
            mounts(config),
            json!([{"name": "cassandra-config", "mountPath": "/config"}])
        );
        assert!(
            mounts(cassandra)
                .as_array()
                .unwrap()
                .contains(&json!({"name": "cassandra-config", "mountPath": "/etc/cassandra"}))
        );
        let volumes = serde_json::to_value(pod.volumes.as_ref().unwrap()).unwrap();
        assert!(
            volumes
                .as_array()
                .unwrap()
                .contains(&json!({"name": "cassandra-config", "emptyDir": {}}))
        );
        // As restricted as the Cassandra container, and as the same user (the pod's).
        let security = config.security_context.as_ref().unwrap();
        assert_eq!(security, cassandra.security_context.as_ref().unwrap());
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(security.run_as_user, None);
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_user, Some(DEPENDENCY_USER));
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert!(config.resources.is_some());
        // Cassandra runs its own launcher, without the image's entrypoint, and finds everything
        // the entrypoint would have set from the environment in the configuration already.
        assert_eq!(cassandra.command.as_deref().unwrap(), ["cassandra", "-f"]);
        let names: Vec<&str> = cassandra
            .env
            .iter()
            .flatten()
            .map(|var| var.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["CASSANDRA_CONF", "POD_IP", "MAX_HEAP_SIZE", "HEAP_NEWSIZE"]
        );
        let env = env_of_container(cassandra);
        assert_eq!(env["CASSANDRA_CONF"]["value"], "/etc/cassandra");
        // Only Cassandra: the other dependencies' templates stay as they were (no empty list).
        for name in ["shop-rabbitmq", "shop-redis"] {
            let pod = pod_of(&children, name);
            assert_eq!(pod.init_containers, None, "{name}");
            assert!(
                serde_json::to_value(pod)
                    .unwrap()
                    .get("initContainers")
                    .is_none()
            );
        }
    }

    #[test]
    fn the_configuration_init_container_runs_the_image_cassandra_runs() {
        let running = RunningImages::from([(Dependency::Cassandra, "cassandra:5.0.1".to_owned())]);
        for (spec, running, expected) in [
            (json!({}), RunningImages::new(), CASSANDRA_IMAGE),
            // A running Cassandra keeps its image through an operator upgrade, and so its files.
            (json!({}), running.clone(), "cassandra:5.0.1"),
            (
                json!({"cassandra": {"managed": {"image": "cassandra:5.0.9"}}}),
                running,
                "cassandra:5.0.9",
            ),
        ] {
            let children = build(
                &pipeline(spec),
                &secrets(),
                &ReplicaOverrides::new(),
                &running,
                &DependencyImages::default(),
                "0.1.0",
            )
            .unwrap();
            let pod = pod_of(&children, "shop-cassandra");
            let init = pod.init_containers.as_deref().unwrap();
            assert_eq!(init[0].image.as_deref(), Some(expected));
            assert_eq!(pod.containers[0].image.as_deref(), Some(expected));
        }
    }

    fn credentials_job(children: &Children) -> &Job {
        assert_eq!(children.jobs.len(), 1);
        &children.jobs[0]
    }

    fn job_container(job: &Job) -> &k8s_openapi::api::core::v1::Container {
        &job.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    #[test]
    fn a_managed_cassandra_gets_generated_credentials_and_a_job_an_external_one_neither() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let secret = children
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("shop-cassandra-credentials"))
            .unwrap();
        let data = secret.data.as_ref().unwrap();
        let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
        assert_eq!(text("username"), CASSANDRA_ROLE);
        assert_eq!(text("password"), "cassandrapassword");
        assert_eq!(text("superuser-password"), "superuserpassword");
        let job = credentials_job(&children);
        let name = job.metadata.name.as_deref().unwrap();
        let hash = name.strip_prefix("shop-cassandra-auth-").unwrap();
        assert_eq!(hash.len(), JOB_HASH_LENGTH);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("OrderPipeline", Some(true))
        );
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            MANAGED_BY
        );

        let external = build_default(
            &pipeline(json!({"cassandra": {"external": {"endpoints": ["db.example.com:9042"]}}})),
            &Secrets {
                cassandra_password: None,
                cassandra_superuser_password: None,
                ..secrets()
            },
            "0.1.0",
        )
        .unwrap();
        assert!(external.jobs.is_empty());
        assert!(
            external
                .secrets
                .iter()
                .all(|s| s.metadata.name.as_deref() != Some("shop-cassandra-credentials"))
        );
        // Managed without its passwords is a dereference bug, reported, never papered over.
        let missing = Secrets {
            cassandra_superuser_password: None,
            ..secrets()
        };
        assert_eq!(
            build_default(&pipeline(json!({})), &missing, "0.1.0"),
            Err(BuildError::MissingSecret("cassandra superuser"))
        );
    }

    #[test]
    fn the_credentials_job_reads_every_password_from_the_secret() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let job = credentials_job(&children);
        let text = serde_json::to_string(job).unwrap();
        for password in ["cassandrapassword", "superuserpassword"] {
            assert!(!text.contains(password), "{password} is written in the Job");
        }
        let container = job_container(job);
        assert_eq!(
            container.command.as_deref().unwrap(),
            ["bash", "-c", CASSANDRA_CREDENTIALS_SCRIPT]
        );
        let env: BTreeMap<String, Value> = container
            .env
            .iter()
            .flatten()
            .map(|var| (var.name.clone(), serde_json::to_value(var).unwrap()))
            .collect();
        for (name, key) in [
            ("SUPERUSER_PASSWORD", "superuser-password"),
            ("APP_ROLE", "username"),
            ("APP_PASSWORD", "password"),
        ] {
            assert_eq!(
                env[name]["valueFrom"]["secretKeyRef"],
                json!({"name": "shop-cassandra-credentials", "key": key}),
                "{name}"
            );
        }
        assert_eq!(env["CASSANDRA_HOST"]["value"], "shop-cassandra.store.svc");
        assert_eq!(env["CASSANDRA_PORT"]["value"], "9042");
        assert_eq!(env["SUPERUSER_NAME"]["value"], CASSANDRA_SUPERUSER);
        assert_eq!(env["APP_KEYSPACE"]["value"], GATEWAY_KEYSPACE);
        assert_eq!(env["AUTH_REPLICATION_FACTOR"]["value"], "1");
        // Only the superuser's password can reach the script by value: the image's default one,
        // which the script knows itself.
        assert!(!env.contains_key("DEFAULT_SUPERUSER_PASSWORD"));
        let template = &job.spec.as_ref().unwrap().template;
        let pod = template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_user,
            Some(DEPENDENCY_USER)
        );
        // cqlsh writes ~/.cassandra: HOME is on the emptyDir, the rest is read-only.
        assert_eq!(env["HOME"]["value"], "/tmp");
        assert_eq!(
            serde_json::to_value(container.volume_mounts.as_ref().unwrap()).unwrap(),
            json!([{"name": "tmp", "mountPath": "/tmp"}])
        );
        assert_eq!(
            serde_json::to_value(pod.volumes.as_ref().unwrap()).unwrap(),
            json!([{"name": "tmp", "emptyDir": {}}])
        );
        assert!(job.spec.as_ref().unwrap().backoff_limit.is_some());
        assert!(
            job.spec
                .as_ref()
                .unwrap()
                .ttl_seconds_after_finished
                .is_some()
        );
    }

    #[test]
    fn workloads_log_in_to_cassandra_as_the_application_role_from_the_secret() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let gateway = env_of(deployment(&children, "shop-gateway"));
        for (name, key) in [
            (env::CASSANDRA_USER, "username"),
            (env::CASSANDRA_PASSWORD, "password"),
        ] {
            assert_eq!(
                gateway[name]["valueFrom"]["secretKeyRef"],
                json!({"name": "shop-cassandra-credentials", "key": key}),
                "{name}"
            );
        }
        // The superuser's password is for the Job only.
        let text = serde_json::to_string(&children.deployments).unwrap();
        assert!(!text.contains("superuser-password"));
        // A new Cassandra password rolls the workloads; the superuser's is not theirs.
        let base = config_hash(&pipeline(json!({})), &secrets());
        let rotated = Secrets {
            cassandra_password: Some("another".into()),
            ..secrets()
        };
        assert_ne!(base, config_hash(&pipeline(json!({})), &rotated));
        let superuser = Secrets {
            cassandra_superuser_password: Some("another".into()),
            ..secrets()
        };
        assert_eq!(base, config_hash(&pipeline(json!({})), &superuser));
    }

    #[test]
    fn the_credentials_job_pod_reaches_cassandra_without_being_taken_for_it() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let job = credentials_job(&children);
        let labels = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        let matches = |selector: &BTreeMap<String, String>| {
            selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
        };
        let policy = children
            .network_policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("shop-cassandra"))
            .unwrap();
        let admitted = policy
            .spec
            .as_ref()
            .unwrap()
            .ingress
            .iter()
            .flatten()
            .flat_map(|rule| rule.from.iter().flatten())
            .filter_map(|peer| peer.pod_selector.as_ref()?.match_labels.as_ref())
            .any(&matches);
        assert!(admitted, "the Cassandra NetworkPolicy admits the Job's pod");
        for service in &children.services {
            let selector = service.spec.as_ref().unwrap().selector.as_ref().unwrap();
            assert!(
                !matches(selector),
                "Service {:?} would send traffic to the Job's pod",
                service.metadata.name
            );
        }
        for set in &children.stateful_sets {
            let selector = set.spec.as_ref().unwrap().selector.match_labels.as_ref();
            assert!(!matches(selector.unwrap()));
        }
    }

    #[test]
    fn the_credentials_job_follows_the_cassandra_image_and_is_renamed_by_any_change() {
        let build_with = |spec: Value, running: &RunningImages| {
            build(
                &pipeline(spec),
                &secrets(),
                &ReplicaOverrides::new(),
                running,
                &DependencyImages::default(),
                "0.1.0",
            )
            .unwrap()
        };
        let image = |children: &Children| job_container(credentials_job(children)).image.clone();
        let name = |children: &Children| credentials_job(children).metadata.name.clone();
        let base = build_with(json!({}), &RunningImages::new());
        assert_eq!(image(&base).as_deref(), Some(CASSANDRA_IMAGE));
        // The same inputs, the same Job: a re-apply is a no-op.
        assert_eq!(
            credentials_job(&base),
            credentials_job(&build_with(json!({}), &RunningImages::new()))
        );
        // A running Cassandra keeps its image, and so does the Job: no new Job on upgrade.
        let running = RunningImages::from([(Dependency::Cassandra, "cassandra:5.0.1".to_owned())]);
        let upgraded = build_with(json!({}), &running);
        assert_eq!(image(&upgraded).as_deref(), Some("cassandra:5.0.1"));
        // A template change is a new Job (its template is immutable); so is more replicas.
        assert_ne!(name(&base), name(&upgraded));
        let scaled = build_with(
            json!({"cassandra": {"managed": {"replicas": 3}}}),
            &RunningImages::new(),
        );
        assert_ne!(name(&base), name(&scaled));
        let explicit = build_with(
            json!({"cassandra": {"managed": {"image": "cassandra:5.0.9"}}}),
            &running,
        );
        assert_eq!(image(&explicit).as_deref(), Some("cassandra:5.0.9"));
        // The longest pipeline name still makes a valid Job name.
        let mut long = pipeline(json!({}));
        long.metadata.name = Some("a".repeat(40));
        let children = build(
            &long,
            &secrets(),
            &ReplicaOverrides::new(),
            &RunningImages::new(),
            &DependencyImages::default(),
            "0.1.0",
        )
        .unwrap();
        assert_eq!(name(&children).unwrap().len(), 63);
    }
}
