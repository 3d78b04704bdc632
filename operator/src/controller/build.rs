//! The pure step: an `OrderPipeline` and the facts read from the cluster in, every child object
//! out. No I/O happens here, so this is where most of the operator's unit tests live, and the
//! output is deterministic (maps are ordered), so applying it twice writes nothing the second time.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use pipeline_api::{
    DependencySpec, ExternalDependency, ManagedDependency, OrderPipeline, Resources, ServiceSpec,
    WorkloadSpec,
};
use pipeline_contract::{env, ports, probes};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The one field manager of every write.
pub const MANAGER: &str = "order-pipeline-operator";
/// Marks every child, so the operator can watch only its own objects.
pub const MANAGED_BY: &str = "order-pipeline-operator";
/// The pod-template annotation whose change rolls the pods.
pub const CONFIG_HASH: &str = "orderpipeline.dev/config-hash";

/// Default images: the workloads at the operator's own version; dependencies pinned.
pub const WORKLOAD_IMAGE_REPOSITORY: &str = "order-pipeline";
pub const RABBITMQ_IMAGE: &str = "rabbitmq:3.13.7-management-alpine";
pub const REDIS_IMAGE: &str = "redis:7.4.1-alpine";
pub const CASSANDRA_IMAGE: &str = "cassandra:5.0.2";

/// A UID no image needs to exist, for the restricted Pod Security Standard.
const RUN_AS_USER: i64 = 65532;
/// The official RabbitMQ, Redis and Cassandra images run as this user.
const DEPENDENCY_USER: i64 = 999;

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
}

/// Replica counts decided by the autoscaler, replacing the spec's for those workloads.
pub type ReplicaOverrides = BTreeMap<Workload, i32>;

/// The image each managed dependency runs now. Without an image in the spec, a running
/// dependency keeps its image: an operator upgrade with newer defaults must not restart
/// RabbitMQ, Redis or Cassandra by surprise. New pipelines get the new defaults.
pub type RunningImages = BTreeMap<Dependency, String>;

/// Builds every child of `pipeline`.
pub fn build(
    pipeline: &OrderPipeline,
    secrets: &Secrets,
    overrides: &ReplicaOverrides,
    running: &RunningImages,
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
                running.get(&dependency).map(String::as_str),
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

/// Sets the Service type the spec asks for, and the node port of its business port (the first).
/// The admin port gets a node port too when the type needs one (Kubernetes gives every port of
/// such a Service one), but the pipeline's NetworkPolicy admits it only from the pipeline's pods.
fn expose(service: &mut Service, exposure: &ServiceSpec) {
    let Some(spec) = service.spec.as_mut() else {
        return;
    };
    spec.type_ = Some(exposure.type_.as_str().to_owned());
    if let (Some(node_port), Some(http)) = (
        exposure.node_port,
        spec.ports.as_mut().and_then(|ports| ports.first_mut()),
    ) {
        http.node_port = Some(node_port);
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
    image: String,
    ports: Vec<(&'static str, u16)>,
    env: Vec<Value>,
    command: Option<Vec<&'static str>>,
    /// Files of the configuration ConfigMap, mounted at /etc/rabbitmq.
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
        running_image: Option<&str>,
        secrets: &Secrets,
        children: &mut Children,
    ) -> Result<(), BuildError> {
        let image = |default: &str| {
            managed
                .image
                .clone()
                .or_else(|| running_image.map(str::to_owned))
                .unwrap_or_else(|| default.to_owned())
        };
        let component = dependency.name();
        let name = format!("{}-{component}", self.name);
        let headless = format!("{name}-headless");
        let port = dependency.port();
        let DependencyPod {
            image,
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
                DependencyPod {
                    image: image(RABBITMQ_IMAGE),
                    ports: vec![
                        ("amqp", port),
                        ("management", 15672),
                        ("epmd", 4369),
                        ("dist", 25672),
                    ],
                    env: vec![
                        json!({"name": "RABBITMQ_DEFAULT_USER", "valueFrom": {"secretKeyRef": {"name": credentials, "key": "username"}}}),
                        json!({"name": "RABBITMQ_DEFAULT_PASS", "valueFrom": {"secretKeyRef": {"name": credentials, "key": "password"}}}),
                        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
                        json!({"name": "RABBITMQ_USE_LONGNAME", "value": "true"}),
                        json!({"name": "RABBITMQ_NODENAME", "value": format!("rabbit@$(POD_NAME).{headless}.{}.svc", self.namespace)}),
                        json!({"name": "RABBITMQ_CONFIG_FILE", "value": "/etc/rabbitmq/rabbitmq.conf"}),
                    ],
                    command: None,
                    config: Some(BTreeMap::from([
                        (
                            "rabbitmq.conf".to_owned(),
                            rabbitmq_config(&name, &headless, self.namespace, managed.replicas),
                        ),
                        (
                            "enabled_plugins".to_owned(),
                            "[rabbitmq_management,rabbitmq_peer_discovery_k8s].\n".to_owned(),
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
                    image: image(REDIS_IMAGE),
                    ports: vec![("redis", port)],
                    env: vec![
                        json!({"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": credentials, "key": "password"}}}),
                    ],
                    command: Some(vec![
                        "sh",
                        "-c",
                        "exec redis-server --appendonly yes --appendfsync everysec --save '' --dir /data --requirepass \"$REDIS_PASSWORD\"",
                    ]),
                    config: None,
                }
            }
            Dependency::Cassandra => {
                // The image's superuser is cassandra/cassandra; changing it needs CQL against
                // the running cluster, which the operator does not do yet. The Secret is where
                // the workloads read it from either way.
                children.secrets.push(self.secret(
                    &format!("{name}-credentials"),
                    component,
                    &[("username", "cassandra"), ("password", "cassandra")],
                ));
                let seeds = format!("{name}-0.{headless}.{}.svc", self.namespace);
                DependencyPod {
                    image: image(CASSANDRA_IMAGE),
                    ports: vec![("cql", port), ("intra", 7000)],
                    env: vec![
                        json!({"name": "CASSANDRA_SEEDS", "value": seeds}),
                        json!({"name": "CASSANDRA_CLUSTER_NAME", "value": name}),
                        json!({"name": "CASSANDRA_ENDPOINT_SNITCH", "value": "GossipingPropertyFileSnitch"}),
                        json!({"name": "CASSANDRA_AUTHENTICATOR", "value": "PasswordAuthenticator"}),
                        json!({"name": "MAX_HEAP_SIZE", "value": "1G"}),
                        json!({"name": "HEAP_NEWSIZE", "value": "200M"}),
                    ],
                    command: None,
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
            Dependency::Rabbitmq => "/var/lib/rabbitmq",
            Dependency::Redis => "/data",
            Dependency::Cassandra => "/var/lib/cassandra",
        };
        let mut mounts = vec![
            json!({"name": "data", "mountPath": data_path}),
            json!({"name": "tmp", "mountPath": "/tmp"}),
        ];
        let mut volumes = vec![json!({"name": "tmp", "emptyDir": {}})];
        if config.is_some() {
            mounts.push(json!({"name": "config", "mountPath": "/etc/rabbitmq"}));
            volumes
                .push(json!({"name": "config", "configMap": {"name": format!("{name}-config")}}));
        }
        if dependency == Dependency::Cassandra {
            // The image's entrypoint rewrites its configuration in place.
            mounts.push(json!({"name": "cassandra-config", "mountPath": "/etc/cassandra"}));
            mounts.push(json!({"name": "cassandra-logs", "mountPath": "/opt/cassandra/logs"}));
            volumes.push(json!({"name": "cassandra-config", "emptyDir": {}}));
            volumes.push(json!({"name": "cassandra-logs", "emptyDir": {}}));
        }
        let container_ports: Vec<Value> = ports
            .iter()
            .map(|(port_name, port)| json!({"name": port_name, "containerPort": port, "protocol": "TCP"}))
            .collect();
        let mut container = json!({
            "name": component,
            "image": image,
            "env": env,
            "ports": container_ports,
            "volumeMounts": mounts,
            "resources": resources(managed.resources.as_ref()),
            "securityContext": self.restricted_container_security(),
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 10},
            "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 20, "initialDelaySeconds": 60},
        });
        if let Some(command) = command {
            container["command"] = json!(command);
        }
        let mut claim = json!({
            "metadata": {"name": "data", "labels": self.labels(component)},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": managed.storage.size}}},
        });
        if let Some(class) = &managed.storage.storage_class_name {
            claim["spec"]["storageClassName"] = json!(class);
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
                    "spec": {
                        "automountServiceAccountToken": false,
                        "securityContext": self.pod_security(DEPENDENCY_USER),
                        "terminationGracePeriodSeconds": 60,
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
                "volumeClaimTemplates": [claim],
            },
        })));
        if managed.replicas > 1 {
            children
                .disruption_budgets
                .push(self.disruption_budget(component));
        }
        Ok(())
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

/// RabbitMQ's configuration: Kubernetes peer discovery through the headless service, so a
/// managed RabbitMQ of several replicas forms one cluster, and quorum queues by default.
fn rabbitmq_config(service: &str, headless: &str, namespace: &str, replicas: i32) -> String {
    format!(
        "# Generated by the order-pipeline operator.\n\
         cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s\n\
         cluster_formation.k8s.host = kubernetes.default.svc\n\
         cluster_formation.k8s.address_type = hostname\n\
         cluster_formation.k8s.service_name = {headless}\n\
         cluster_formation.k8s.hostname_suffix = .{headless}.{namespace}.svc\n\
         cluster_formation.node_cleanup.only_log_warning = true\n\
         cluster_partition_handling = pause_minority\n\
         queue_master_locator = balanced\n\
         default_queue_type = quorum\n\
         loopback_users.guest = false\n\
         listeners.tcp.default = 5672\n\
         management.tcp.port = 15672\n\
         # {replicas} node(s) behind {service}\n"
    )
}

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
        // The admin port's node port is left to Kubernetes; the NetworkPolicy guards it.
        assert_eq!(
            (ports[1].name.as_deref(), ports[1].node_port),
            (Some("admin"), None)
        );
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
            referenced: BTreeMap::new(),
        }
    }

    fn env_of(deployment: &Deployment) -> BTreeMap<String, Value> {
        let container = &deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
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
        for secret in ["rabbitpassword", "redispassword", &"j".repeat(48)] {
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
            );
        for template in templates {
            let spec = template.spec.unwrap();
            let pod = spec.security_context.unwrap();
            assert_eq!(pod.run_as_non_root, Some(true));
            assert_eq!(pod.seccomp_profile.unwrap().type_, "RuntimeDefault");
            for container in spec.containers {
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
}
