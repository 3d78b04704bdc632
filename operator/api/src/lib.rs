//! The `OrderPipeline` custom resource (`orderpipeline.dev/v1alpha1`).
//!
//! One resource describes one pipeline: its four workloads (gateway, processor, notifier,
//! dashboard), how the processor and notifier scale on queue depth, token settings, and for each
//! dependency (RabbitMQ, Redis, Cassandra) whether the operator runs it (`managed`) or the pipeline
//! uses an existing service (`external`). Every field has a default, so an empty spec is a
//! working pipeline.
//!
//! The CRD in `crds/` is generated from these types (`cargo xtask crdgen`); validation that the
//! API server must enforce (ranges, exactly-one-of, min ≤ max, immutable storage) is written here
//! as schema bounds and CEL rules, so it holds for every client, not only the operator.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pipeline's name names its Services, whose names must be RFC 1035 labels; a name the API
/// server accepts for an OrderPipeline (any DNS subdomain, dots and a leading digit included)
/// could never produce them.
const NAME_IS_A_DNS_LABEL: &str = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";

pub const GROUP: &str = "orderpipeline.dev";
pub const VERSION: &str = "v1alpha1";

/// Desired state of an order pipeline.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orderpipeline.dev",
    version = "v1alpha1",
    kind = "OrderPipeline",
    namespaced,
    status = "OrderPipelineStatus",
    shortname = "op",
    category = "orderpipeline",
    derive = "PartialEq",
    doc = "An event-driven order pipeline (gateway, processor, notifier, dashboard) with its RabbitMQ, Redis and Cassandra, run and kept healthy by the order-pipeline operator.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.readyComponents", description = "Ready components out of all components"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.endpoints.gateway", description = "In-cluster URL of the gateway"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters (child names are derived from it)"),
    validation = Rule::new(NAME_IS_A_DNS_LABEL).message("metadata.name must be a DNS label that starts with a letter: lowercase letters, digits and '-', ending with a letter or digit (it names the pipeline's Services, which need such a name)")
)]
#[serde(rename_all = "camelCase")]
pub struct OrderPipelineSpec {
    /// Stop reconciling this pipeline while true: the operator leaves every child as it is, so an
    /// administrator can intervene by hand. Status reports the pause. Set back to false to resume.
    #[serde(default)]
    pub paused: bool,
    /// The API gateway (HTTP on 8080).
    #[serde(default)]
    pub gateway: ExposedWorkloadSpec,
    /// The order processor.
    #[serde(default)]
    pub processor: ScaledWorkloadSpec,
    /// The notifier.
    #[serde(default)]
    pub notifier: ScaledWorkloadSpec,
    /// The dashboard (HTTP on 8081).
    #[serde(default)]
    pub dashboard: ExposedWorkloadSpec,
    /// Access tokens.
    #[serde(default)]
    pub auth: AuthSpec,
    /// RabbitMQ: run by the operator (a cluster with quorum queues) or external.
    #[serde(default)]
    #[x_kube(validation = memory_limit_rule("RabbitMQ", RABBITMQ_MINIMUM_MEMORY_LIMIT, "sets its memory high watermark from its memory limit"))]
    pub rabbitmq: DependencySpec,
    /// Redis: run by the operator (one node) or external.
    #[serde(default)]
    #[x_kube(validation = single_node_rule("Redis", REDIS_SINGLE_NODE_WHY))]
    pub redis: DependencySpec,
    /// Cassandra (accounts): run by the operator (one node) or external.
    #[serde(default)]
    #[x_kube(validation = memory_limit_rule("Cassandra", CASSANDRA_MINIMUM_MEMORY_LIMIT, "sizes its Java heap from its memory limit (half of it)"))]
    #[x_kube(validation = single_node_rule("Cassandra", CASSANDRA_SINGLE_NODE_WHY))]
    #[x_kube(validation = Rule::new("!has(self.external) || !has(self.external.workloadCredentials)").message("spec.cassandra.external.workloadCredentials is not used: only the gateway reads Cassandra; use credentialsSecretRef"))]
    pub cassandra: DependencySpec,
    /// OpenTelemetry traces from the workloads.
    #[serde(default)]
    pub tracing: TracingSpec,
    /// Integration with a Prometheus Operator that already runs in the cluster.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
}

/// What the operator creates for a Prometheus Operator (`monitoring.coreos.com`) to scrape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A PodMonitor for the four workloads' `/metrics` (admin port 9090).
    #[serde(default)]
    pub pod_monitor: PodMonitorSpec,
}

/// The pipeline's PodMonitor. Off by default: it needs the Prometheus Operator's CRDs, and where
/// they are absent the operator says so in the `Monitoring` condition instead of failing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    /// Create the PodMonitor `<name>-workloads`; set back to false to have it deleted.
    #[serde(default)]
    pub enabled: bool,
    /// How often Prometheus scrapes each pod (a Prometheus duration such as `30s`); unset for
    /// the Prometheus default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
    ))]
    pub interval: Option<String>,
    /// Extra labels on the PodMonitor, for a Prometheus whose `podMonitorSelector` picks them
    /// (the pipeline's own labels are always there).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where the workloads export their spans. Each workload then sends one trace per order (HTTP
/// request, publishes, handling, webhook call) with its own `service.name`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// The OTLP/HTTP (protobuf) base URL, for example `http://otel-collector.monitoring:4318`
    /// (`/v1/traces` is appended). Absent: the operator's default (the chart's
    /// `tracing.otlpEndpoint`, none unless set). Empty: no traces from this pipeline. Plain
    /// `http://` only, and no credentials in the URL: the receiver is a collector inside the
    /// cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^(|http://[^/@\s]+(/[^\s]*)?)$"))]
    pub otlp_endpoint: Option<String>,
}

/// The smallest memory limit a managed Cassandra is run with. Its heap is half the limit, and
/// Cassandra needs about 512 MiB of heap to start and serve a small keyspace; below that the
/// JVM is OOM-killed or never becomes ready. The API server refuses less (a CEL rule on
/// `spec.cassandra`), and so does the operator.
pub const CASSANDRA_MINIMUM_MEMORY_LIMIT: &str = "1Gi";

/// The smallest memory limit a managed RabbitMQ is run with. Its memory high watermark is a share
/// of the limit, and an idle node with the management plugin already takes well over 100 MiB:
/// with less, the memory alarm would block every publisher. Enforced like Cassandra's.
pub const RABBITMQ_MINIMUM_MEMORY_LIMIT: &str = "512Mi";

/// Why a managed Redis runs one node: several would be unrelated primaries behind one Service,
/// splitting idempotency claims, stock and "already applied" marks between them, and a primary
/// with asynchronous replicas loses acknowledged writes on failover, which breaks exactly-once.
pub const REDIS_SINGLE_NODE_WHY: &str = "several Redis nodes would split the idempotency claims, \
     stock and applied marks between them (the operator runs no replication or failover); for \
     high availability point spec.redis.external at a Redis service that provides it";

/// Why a managed Cassandra runs one node: a ring needs ordered bootstraps, and growing one needs
/// the replication of `system_auth` and the accounts keyspace raised and repaired, which the
/// operator does not do.
pub const CASSANDRA_SINGLE_NODE_WHY: &str = "the operator does not form or repair a multi-node \
     Cassandra ring; for several nodes point spec.cassandra.external at a Cassandra cluster";

/// The API server's refusal of more than one replica of a dependency the operator runs as a
/// single node only, with the reason and what to do instead. The operator checks the same
/// for resources created before the rule (see the build step).
fn single_node_rule(dependency: &str, why: &str) -> kube::core::Rule {
    kube::core::Rule::new("!has(self.managed) || self.managed.replicas <= 1").message(
        kube::core::Message::Message(format!(
            "a managed {dependency} runs exactly one node (managed.replicas: 1): {why}"
        )),
    )
}

/// The API server's check that a managed dependency whose spec sets `resources` gives it a
/// memory limit of at least `minimum`. Without `resources` the operator's defaults apply, which
/// meet it. Uses the Kubernetes CEL quantity library (`isQuantity`, `quantity`), which CRD
/// validation has offered since Kubernetes 1.29.
fn memory_limit_rule(dependency: &str, minimum: &str, why: &str) -> kube::core::Rule {
    let limits = "self.managed.resources.limits";
    kube::core::Rule::new(format!(
        "!has(self.managed) || !has(self.managed.resources) || \
         (has({limits}) && 'memory' in {limits} && isQuantity({limits}['memory']) && \
         quantity({limits}['memory']).compareTo(quantity('{minimum}')) >= 0)"
    ))
    .message(kube::core::Message::Message(format!(
        "a managed {dependency} {why}: managed.resources.limits.memory must be a memory quantity \
         of at least {minimum}; set it, or leave out managed.resources for the operator's defaults"
    )))
}

/// A workload with a fixed replica count.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Number of pods.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Container image; by default the operator's own version of the workload image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Extra environment variables (for example `LOG_LEVEL`). Variables the operator sets itself
    /// cannot be overridden here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            image: None,
            resources: None,
            env: Vec::new(),
        }
    }
}

/// A workload with a Service of its own (the gateway and the dashboard).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposedWorkloadSpec {
    /// Replicas, image, resources and env.
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// How the workload's Service is reached.
    #[serde(default)]
    pub service: ServiceSpec,
}

/// How a workload's Service is reached. A `NodePort` or `LoadBalancer` Service carries the
/// business port only; the admin port (metrics) stays inside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type != 'ClusterIP'").message("service.nodePort needs service.type NodePort or LoadBalancer"))]
pub struct ServiceSpec {
    /// `ClusterIP` (inside the cluster only; reach it with `kubectl port-forward`), `NodePort`
    /// (also on every node's address, as the kind cluster in `kind-config.yaml` maps to
    /// localhost) or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// The node port of the business port (30000-32767) for `NodePort` and `LoadBalancer`;
    /// Kubernetes picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
}

/// A Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A workload the operator can scale on the depth of its queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaledWorkloadSpec {
    /// Replicas, image, resources and env; `replicas` is the count while autoscaling is off.
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// Scale on queue depth within bounds; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// Queue-depth autoscaling bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
pub struct Autoscaling {
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Messages waiting per replica that the operator aims for.
    #[serde(default = "default_target_depth")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_queue_depth_per_replica: i32,
    /// How long a lower replica count must be wanted before the operator scales down, so a
    /// burst does not make it flap.
    #[serde(default = "default_window")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_window_seconds: i32,
}

/// CPU and memory, as Kubernetes quantities (`250m`, `512Mi`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

/// An environment variable with a literal value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct EnvVar {
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// Access tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// A Secret key holding the HS256 signing key (at least 32 bytes). When absent the operator
    /// generates one once, in the Secret `<name>-jwt`, and never rotates it by accident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// Token lifetime in seconds.
    #[serde(default = "default_token_lifetime")]
    #[schemars(range(min = 60, max = 86400))]
    pub token_lifetime_seconds: i32,
}

impl Default for AuthSpec {
    fn default() -> Self {
        Self {
            jwt_secret_ref: None,
            token_lifetime_seconds: default_token_lifetime(),
        }
    }
}

/// A key of a Secret in the pipeline's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A dependency, either run by the operator or external: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("exactly one of managed or external must be set"))]
#[x_kube(validation = Rule::new("has(self.managed) == has(oldSelf.managed)").message("cannot switch between managed and external after creation: the data would be abandoned; create a new pipeline instead"))]
pub struct DependencySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedDependency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalDependency>,
}

impl Default for DependencySpec {
    fn default() -> Self {
        Self {
            managed: Some(ManagedDependency::default()),
            external: None,
        }
    }
}

/// A dependency the operator runs as a StatefulSet with persistent volumes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedDependency {
    /// Number of nodes. RabbitMQ forms a cluster of this size, with a member of each workload
    /// queue on every node; Redis and Cassandra run one node (the API server refuses more).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Persistent storage per node. Immutable: a StatefulSet cannot change its volume claims.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: a StatefulSet cannot resize or move its volumes"))]
    pub storage: Storage,
    /// Container image; by default a pinned upstream image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory requests and limits, replacing the operator's defaults for this dependency
    /// (sized to start and stay up on a small node: Redis 64Mi-256Mi, RabbitMQ 256Mi-1Gi,
    /// Cassandra 1Gi-2Gi). RabbitMQ's memory watermark and Cassandra's heap are derived from
    /// `limits.memory`, so those two need one: at least 512Mi for RabbitMQ, 1Gi for Cassandra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Scaling a stateful dependency down can lose data. The operator refuses (with a condition
    /// and an Event) unless this is set, meaning the data on the removed nodes may be dropped.
    #[serde(default)]
    pub allow_data_loss_on_scale_down: bool,
}

impl Default for ManagedDependency {
    fn default() -> Self {
        Self {
            replicas: 1,
            storage: Storage::default(),
            image: None,
            resources: None,
            allow_data_loss_on_scale_down: false,
        }
    }
}

/// A persistent volume claim template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size per node, as a quantity.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub size: String,
    /// Storage class; the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// An existing service (for example a managed cloud offering).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalDependency {
    /// Endpoints: AMQP URLs without credentials for RabbitMQ (`amqp://host:5672/vhost`),
    /// `host:port` for Redis and Cassandra.
    #[schemars(length(min = 1, max = 16))]
    pub endpoints: Vec<String>,
    /// A Secret with `username` and `password` keys, when the service needs credentials: the
    /// login of every workload that has none of its own in `workloadCredentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// RabbitMQ and Redis: a Secret per workload (`username` and `password` keys; for Redis
    /// `username` may be left out for the `default` user), so each workload logs in as its own
    /// user with only the grants it needs (the README lists them). A workload without one here
    /// uses `credentialsSecretRef`, except the dashboard on RabbitMQ: it reads queue depths only
    /// with a Secret of its own here (a user with no permissions on the vhost is enough), never
    /// with the shared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_credentials: Option<WorkloadCredentials>,
    /// RabbitMQ only: the management API's base URL (`http://host:15672`), which queue-depth
    /// autoscaling reads; without it an external RabbitMQ cannot be autoscaled on. Plain HTTP
    /// only for now: the operator does not speak TLS to the management API yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://')").message("managementUrl must be an http:// URL (https is not supported yet)"))]
    pub management_url: Option<String>,
}

/// A credentials Secret per workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct WorkloadCredentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifier: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<SecretRef>,
}

impl WorkloadCredentials {
    /// The Secret of the workload named `workload` (`gateway`, `processor`, ...).
    pub fn of(&self, workload: &str) -> Option<&SecretRef> {
        match workload {
            "gateway" => self.gateway.as_ref(),
            "processor" => self.processor.as_ref(),
            "notifier" => self.notifier.as_ref(),
            "dashboard" => self.dashboard.as_ref(),
            _ => None,
        }
    }

    /// Every Secret named.
    pub fn all(&self) -> impl Iterator<Item = &SecretRef> {
        [
            &self.gateway,
            &self.processor,
            &self.notifier,
            &self.dashboard,
        ]
        .into_iter()
        .flatten()
    }
}

impl ExternalDependency {
    /// The Secret the workload named `workload` logs in with: its own, else the shared one.
    pub fn credentials_of(&self, workload: &str) -> Option<&SecretRef> {
        self.workload_credentials
            .as_ref()
            .and_then(|credentials| credentials.of(workload))
            .or(self.credentials_secret_ref.as_ref())
    }
}

/// A Secret in the pipeline's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Progressing`, `Ready`, `Degraded` or `Paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Ready components out of all, such as `7/7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_components: Option<String>,
    /// `Ready`, `Progressing` and `Degraded`, in the standard condition format.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Desired and ready replicas per component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,
    #[serde(default)]
    pub endpoints: Endpoints,
    /// The autoscaler's last decision per scaled workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub autoscaler: BTreeMap<String, ScalingDecision>,
    /// A managed RabbitMQ's cluster as its management API reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitmqClusterStatus>,
}

/// What a managed RabbitMQ's management API says about its cluster: one cluster of every node,
/// and a member of every workload queue on each. With more than one replica, `Ready` requires
/// all of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RabbitmqClusterStatus {
    /// Running nodes of the cluster, by node name, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running_nodes: Vec<String>,
    /// Members (quorum queue replicas) of each workload queue; a queue not declared yet is
    /// absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queue_members: BTreeMap<String, i32>,
    /// Why the cluster could not be read, when it could not (the last reading is then kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A standard condition (the shape of `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn conditions_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "format": "int64"}
            },
            "required": ["type", "status", "reason", "message", "lastTransitionTime"]
        }
    })
}

/// Replica counts of one component.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub desired_replicas: i32,
    pub ready_replicas: i32,
}

/// Where the pipeline's HTTP services answer inside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<String>,
}

/// One autoscaling decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    pub queue: String,
    pub queue_depth: i64,
    pub from_replicas: i32,
    pub to_replicas: i32,
    pub reason: String,
    /// RFC 3339.
    pub time: String,
}

fn one() -> i32 {
    1
}
fn default_target_depth() -> i32 {
    100
}
fn default_window() -> i32 {
    300
}
fn default_token_lifetime() -> i32 {
    3600
}
fn default_storage_size() -> String {
    "1Gi".to_owned()
}

/// The CRD as YAML, exactly as `crds/orderpipelines.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let yaml = serde_yaml::to_string(&OrderPipeline::crd())?;
    Ok(format!(
        "# Generated from operator/api by `cargo xtask crdgen`; do not edit by hand.\n{yaml}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = include_str!("../../../crds/orderpipelines.yaml");

    #[test]
    fn the_committed_crd_is_current() {
        assert_eq!(
            COMMITTED,
            crd_yaml().unwrap(),
            "crds/orderpipelines.yaml is stale: run `cargo xtask crdgen`"
        );
    }

    #[test]
    fn an_empty_spec_is_a_complete_pipeline() {
        let spec: OrderPipelineSpec = serde_json::from_str("{}").unwrap();
        assert!(!spec.paused);
        assert_eq!(spec.gateway.workload.replicas, 1);
        assert_eq!(spec.gateway.service.type_, ServiceType::ClusterIP);
        assert_eq!(spec.processor.workload.replicas, 1);
        assert!(spec.processor.autoscaling.is_none());
        assert_eq!(spec.auth.token_lifetime_seconds, 3600);
        for dependency in [&spec.rabbitmq, &spec.redis, &spec.cassandra] {
            let managed = dependency.managed.as_ref().expect("managed by default");
            assert_eq!(managed.storage.size, "1Gi");
            assert!(dependency.external.is_none());
        }
    }

    fn schema() -> serde_json::Value {
        let crd = serde_json::to_value(OrderPipeline::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    fn rules(value: &serde_json::Value) -> Vec<String> {
        value["x-kubernetes-validations"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .map(|rule| rule["rule"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_schema_carries_the_rules_the_api_server_enforces() {
        let schema = schema();
        let spec = &schema["properties"]["spec"]["properties"];
        let rabbitmq = &spec["rabbitmq"];
        assert!(rules(rabbitmq).contains(&"has(self.managed) != has(self.external)".to_owned()));
        assert!(rules(rabbitmq).iter().any(|rule| rule.contains("oldSelf")));
        assert!(
            rules(&rabbitmq["properties"]["managed"]["properties"]["storage"])
                .contains(&"self == oldSelf".to_owned())
        );
        assert!(
            rules(&spec["processor"]["properties"]["autoscaling"])
                .contains(&"self.minReplicas <= self.maxReplicas".to_owned())
        );
        assert_eq!(spec["gateway"]["properties"]["replicas"]["maximum"], 100.0);
        assert_eq!(
            spec["auth"]["properties"]["tokenLifetimeSeconds"]["minimum"],
            60.0
        );
        assert!(
            rules(&schema)
                .iter()
                .any(|rule| rule.contains("metadata.name.size()"))
        );
        assert!(rules(&schema).contains(&NAME_IS_A_DNS_LABEL.to_owned()));
        // The memory limits RabbitMQ and Cassandra derive settings from; Redis needs none.
        for (dependency, minimum) in [
            ("rabbitmq", RABBITMQ_MINIMUM_MEMORY_LIMIT),
            ("cassandra", CASSANDRA_MINIMUM_MEMORY_LIMIT),
        ] {
            let expected = format!("compareTo(quantity('{minimum}')) >= 0");
            assert!(
                rules(&spec[dependency])
                    .iter()
                    .any(|rule| rule.contains(&expected)),
                "{dependency}"
            );
        }
        assert!(
            rules(&spec["redis"])
                .iter()
                .all(|rule| !rule.contains("quantity"))
        );
    }

    #[test]
    fn printer_columns_tell_health_at_a_glance() {
        let crd = OrderPipeline::crd();
        let columns: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|column| column.name.clone())
            .collect();
        assert_eq!(columns, ["Ready", "Phase", "Gateway", "Age"]);
        assert_eq!(crd.spec.names.short_names, Some(vec!["op".to_owned()]));
    }
}
