//! The four workloads: each one's Deployment, wired to the dependencies exactly as the workload
//! reads its configuration (`pipeline_contract::env`), its Service when it takes traffic from
//! outside the pipeline, and its PodDisruptionBudget when it runs more than one pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec, Probe,
    Service, SleepAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pipeline_api::{ExternalDependency, OrderPipeline, ServiceSpec, ServiceType, WorkloadSpec};
use pipeline_contract::{env, ports, probes};

use super::super::validate::{Mode, ValidatedPipeline};
use super::meta::{
    Parent, container_port, env_secret, env_value, pod_security, resources,
    restricted_container_security,
};
use super::{
    CONFIG_HASH, Children, Dependency, ReplicaOverrides, WORKLOAD_IMAGE_REPOSITORY, Workload,
    names, workload_service, workload_spec,
};

/// A UID no image needs to exist, for the restricted Pod Security Standard.
const RUN_AS_USER: i64 = 65532;

/// Adds `workload`'s Deployment, and its Service and PodDisruptionBudget where it has them, to
/// `children`. The autoscaler's replica count, when there is one, replaces the spec's.
pub(super) fn workload(
    parent: &Parent,
    valid: &ValidatedPipeline<'_>,
    workload: Workload,
    overrides: &ReplicaOverrides,
    hash: &str,
    operator_version: &str,
    children: &mut Children,
) {
    let pipeline = valid.pipeline;
    let spec = workload_spec(workload, pipeline);
    let replicas = overrides.get(&workload).copied().unwrap_or(spec.replicas);
    let name = names::workload(parent.name, workload);
    children.deployments.push(deployment(
        parent,
        valid,
        workload,
        spec,
        replicas,
        hash,
        operator_version,
    ));
    if let (Some(port), Some(exposure)) =
        (workload.http_port(), workload_service(workload, pipeline))
    {
        let mut service = parent.service(
            &name,
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
            .push(parent.disruption_budget(&name, workload.name()));
    }
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

/// How long an HTTP workload keeps its listener open after its pod starts terminating (see
/// `deployment`); within `terminationGracePeriodSeconds` (30), with the drain's 20 s after it.
const ENDPOINT_PROPAGATION_SECONDS: i64 = 5;

fn deployment(
    parent: &Parent,
    valid: &ValidatedPipeline<'_>,
    workload: Workload,
    spec: &WorkloadSpec,
    replicas: i32,
    hash: &str,
    operator_version: &str,
) -> Deployment {
    let component = workload.name();
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| format!("{WORKLOAD_IMAGE_REPOSITORY}/{component}:{operator_version}"));
    let mut env = dependency_env(parent, valid, workload);
    env.push(env_value(env::ADMIN_PORT, ports::ADMIN.to_string()));
    env.push(env_value(env::LOG_FORMAT, "json"));
    if let Some(endpoint) = &valid.otlp_endpoint {
        // One service per workload; the resource says which pipeline the spans belong to.
        env.push(env_value(
            env::OTEL_EXPORTER_OTLP_ENDPOINT,
            endpoint.as_str(),
        ));
        env.push(env_value(env::OTEL_SERVICE_NAME, component));
        env.push(env_value(
            env::OTEL_RESOURCE_ATTRIBUTES,
            format!(
                "k8s.namespace.name={},orderpipeline.name={}",
                valid.namespace, valid.name
            ),
        ));
    }
    let mut container_ports = vec![container_port("admin", ports::ADMIN)];
    if let Some(port) = workload.http_port() {
        env.push(env_value(env::HTTP_PORT, port.to_string()));
        container_ports.insert(0, container_port("http", port));
    }
    // The user's extra variables come first so the operator's wiring wins on a clash
    // (Kubernetes uses the last definition of a name).
    let operator_names: Vec<&str> = env.iter().map(|var| var.name.as_str()).collect();
    let mut all_env: Vec<EnvVar> = spec
        .env
        .iter()
        .filter(|var| !operator_names.contains(&var.name.as_str()))
        .map(|var| env_value(&var.name, var.value.clone()))
        .collect();
    all_env.extend(env);
    let admin_probe = |path: &str, period_seconds: i32, failure_threshold: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };
    let container = Container {
        name: component.to_owned(),
        image: Some(image),
        env: Some(all_env),
        ports: Some(container_ports),
        resources: Some(resources(spec.resources.as_ref())),
        security_context: Some(restricted_container_security()),
        liveness_probe: Some(admin_probe(probes::LIVENESS, 10, 3)),
        readiness_probe: Some(admin_probe(probes::READINESS, 5, 2)),
        // A Service's endpoints drop a terminating pod while it is sent SIGTERM, not before:
        // kube-proxy and ingress controllers see it a moment later. The pause keeps the
        // listener open for connections still routed here; then the workload drains.
        lifecycle: workload.http_port().map(|_| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: ENDPOINT_PROPAGATION_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    };
    Deployment {
        metadata: parent.metadata(&names::workload(parent.name, workload), component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: parent.label_selector(component),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(parent.labels(component)),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH.to_owned(), hash.to_owned())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security(RUN_AS_USER)),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Where `workload` finds the dependencies it uses ([`ValidatedPipeline::connects`]), and how it
/// logs in to them: RabbitMQ and Redis (the dashboard reads queue depths and Redis keys only),
/// each as the workload's own user; Cassandra and the token
/// settings (the gateway).
fn dependency_env(
    parent: &Parent,
    valid: &ValidatedPipeline<'_>,
    workload: Workload,
) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if valid.connects(workload, Dependency::Rabbitmq) {
        env.extend(rabbitmq_env(parent, valid, workload));
    }
    env.extend(redis_env(parent, valid, workload));
    if valid.connects(workload, Dependency::Cassandra) {
        env.extend(cassandra_env(parent, valid));
        env.extend(token_env(parent, valid.pipeline));
    }
    env
}

/// The key of a managed dependency's credentials Secret holding `workload`'s password.
pub fn password_key(workload: Workload) -> String {
    format!("{}-password", workload.name())
}

fn rabbitmq_env(parent: &Parent, valid: &ValidatedPipeline<'_>, workload: Workload) -> Vec<EnvVar> {
    match &valid.rabbitmq {
        Mode::Managed(managed) => {
            let credentials = names::credentials_secret(parent.name, Dependency::Rabbitmq);
            let urls: Vec<String> = (0..managed.node.spec.replicas)
                .map(|index| {
                    format!(
                        "amqp://{}:{}/%2f",
                        names::pod_host(parent.name, Dependency::Rabbitmq, index, parent.namespace),
                        Dependency::Rabbitmq.port()
                    )
                })
                .collect();
            vec![
                env_value(env::RABBITMQ_USERNAME, workload.name()),
                env_secret(
                    env::RABBITMQ_PASSWORD,
                    &credentials,
                    &password_key(workload),
                ),
                env_value(env::RABBITMQ_URLS, urls.join(",")),
            ]
        }
        Mode::External(external) => external_rabbitmq_env(external, workload),
    }
}

/// The endpoints as they are (checked by the build to carry no credentials); the workload
/// percent-encodes the Secret's username and password into them, so any character works in
/// either and neither appears in the pod spec.
fn external_rabbitmq_env(external: &ExternalDependency, workload: Workload) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if let Some(secret) = external.credentials_of(workload.name()) {
        env.push(env_secret(env::RABBITMQ_USERNAME, &secret.name, "username"));
        env.push(env_secret(env::RABBITMQ_PASSWORD, &secret.name, "password"));
    }
    env.push(env_value(env::RABBITMQ_URLS, external.endpoints.join(",")));
    env
}

fn redis_env(parent: &Parent, valid: &ValidatedPipeline<'_>, workload: Workload) -> Vec<EnvVar> {
    match &valid.redis {
        Mode::Managed(_) => vec![
            env_value(
                env::REDIS_ADDR,
                format!(
                    "{}:{}",
                    names::service_host(parent.name, Dependency::Redis, parent.namespace),
                    Dependency::Redis.port()
                ),
            ),
            env_value(env::REDIS_USERNAME, workload.name()),
            env_secret(
                env::REDIS_PASSWORD,
                &names::credentials_secret(parent.name, Dependency::Redis),
                &password_key(workload),
            ),
            // The ACL users' key patterns are the seed's exact keys: a prefix from the spec's
            // `env` would put every key out of the workload's reach.
            env_value(env::REDIS_KEY_PREFIX, ""),
        ],
        Mode::External(external) => {
            let mut env = vec![env_value(
                env::REDIS_ADDR,
                external.endpoints.first().cloned().unwrap_or_default(),
            )];
            if let Some(secret) = external.credentials_of(workload.name()) {
                env.push(optional_env_secret(
                    env::REDIS_USERNAME,
                    &secret.name,
                    "username",
                ));
                env.push(env_secret(env::REDIS_PASSWORD, &secret.name, "password"));
            }
            env
        }
    }
}

/// A variable from a Secret key that may be absent (the variable is then unset).
fn optional_env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    let mut var = env_secret(name, secret, key);
    if let Some(selector) = var
        .value_from
        .as_mut()
        .and_then(|source| source.secret_key_ref.as_mut())
    {
        selector.optional = Some(true);
    }
    var
}

fn cassandra_env(parent: &Parent, valid: &ValidatedPipeline<'_>) -> Vec<EnvVar> {
    match &valid.cassandra {
        Mode::Managed(managed) => {
            let credentials = names::credentials_secret(parent.name, Dependency::Cassandra);
            vec![
                env_value(
                    env::CASSANDRA_ADDR,
                    format!(
                        "{}:{}",
                        names::service_host(parent.name, Dependency::Cassandra, parent.namespace),
                        Dependency::Cassandra.port()
                    ),
                ),
                env_secret(env::CASSANDRA_USER, &credentials, "username"),
                env_secret(env::CASSANDRA_PASSWORD, &credentials, "password"),
                env_value(
                    env::CASSANDRA_REPLICATION_FACTOR,
                    managed.node.spec.replicas.min(3).to_string(),
                ),
            ]
        }
        Mode::External(external) => {
            let mut env = vec![env_value(env::CASSANDRA_ADDR, external.endpoints.join(","))];
            if let Some(secret) = &external.credentials_secret_ref {
                env.push(env_secret(env::CASSANDRA_USER, &secret.name, "username"));
                env.push(env_secret(
                    env::CASSANDRA_PASSWORD,
                    &secret.name,
                    "password",
                ));
            }
            env
        }
    }
}

/// The token signing key (the user's Secret, or the generated `<name>-jwt`) and lifetime.
fn token_env(parent: &Parent, pipeline: &OrderPipeline) -> Vec<EnvVar> {
    let (secret, key) = match &pipeline.spec.auth.jwt_secret_ref {
        Some(reference) => (reference.name.clone(), reference.key.clone()),
        None => (names::jwt_secret(parent.name), "secret".to_owned()),
    };
    vec![
        env_secret(env::JWT_SECRET, &secret, &key),
        env_value(
            env::JWT_TTL_SECONDS,
            pipeline.spec.auth.token_lifetime_seconds.to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use pipeline_contract::env;
    use serde_json::json;

    use super::super::test_support::*;
    use super::super::{Children, ReplicaOverrides, Settings, Workload};
    use super::ENDPOINT_PROPAGATION_SECONDS;

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
    fn http_workloads_keep_listening_while_their_endpoints_are_withdrawn() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let pause = |name: &str| {
            let deployment = deployment(&children, name);
            let pod = deployment.spec.clone().unwrap().template.spec.unwrap();
            let grace = pod.termination_grace_period_seconds.unwrap();
            let seconds = pod.containers[0]
                .lifecycle
                .as_ref()
                .and_then(|lifecycle| lifecycle.pre_stop.as_ref())
                .and_then(|handler| handler.sleep.as_ref())
                .map(|sleep| sleep.seconds);
            (seconds, grace)
        };
        // The pause, then the workload's own drain and 20 s close, fit the grace period.
        for name in ["shop-gateway", "shop-dashboard"] {
            let (seconds, grace) = pause(name);
            assert_eq!(seconds, Some(ENDPOINT_PROPAGATION_SECONDS), "{name}");
            assert!(ENDPOINT_PROPAGATION_SECONDS + 20 < grace, "{name}");
        }
        // Nothing routes to the consumers: they stop at once.
        for name in ["shop-processor", "shop-notifier"] {
            assert_eq!(pause(name).0, None, "{name}");
        }
    }

    #[test]
    fn autoscaler_overrides_replace_the_spec_count() {
        let overrides = ReplicaOverrides::from([(Workload::Processor, 4)]);
        let children = build_with(
            &pipeline(json!({})),
            &secrets(),
            &overrides,
            &RunningImages::new(),
            &Settings::default(),
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
        // No credentials in the URLs: the workload encodes the Secret's into them.
        assert!(
            urls.starts_with("amqp://shop-rabbitmq-0.shop-rabbitmq-headless.store.svc:5672/%2f,"),
            "{urls}"
        );
        // Each workload logs in as its own user, with its own password key (the dashboard's
        // RabbitMQ user reads queue depths only).
        for name in ["gateway", "processor", "notifier", "dashboard"] {
            let wired = env_of(deployment(&children, &format!("shop-{name}")));
            assert_eq!(wired[env::REDIS_USERNAME]["value"], name);
            assert_eq!(
                wired[env::REDIS_PASSWORD]["valueFrom"]["secretKeyRef"],
                json!({"name": "shop-redis-credentials", "key": format!("{name}-password")})
            );
            assert_eq!(wired[env::RABBITMQ_USERNAME]["value"], name);
            assert_eq!(
                wired[env::RABBITMQ_PASSWORD]["valueFrom"]["secretKeyRef"],
                json!({"name": "shop-rabbitmq-credentials", "key": format!("{name}-password")})
            );
            assert_eq!(wired[env::RABBITMQ_URLS]["value"], urls, "{name}");
        }
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
        let dashboard = env_of(deployment(&children, "shop-dashboard"));
        for secret in [env::JWT_SECRET, env::CASSANDRA_PASSWORD] {
            assert!(!dashboard.contains_key(secret), "{secret}");
        }
        // No secret value is written into any pod template.
        let text = serde_json::to_string(&children.deployments).unwrap();
        for secret in [
            "rabbitpassword",
            "redispassword",
            "gateway-rabbit",
            "dashboard-redis",
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
            "amqps://mq.example.com:5671/prod"
        );
        assert_eq!(
            processor[env::RABBITMQ_USERNAME]["valueFrom"]["secretKeyRef"],
            json!({"name": "mq", "key": "username"})
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
    fn an_external_dependency_can_give_each_workload_its_own_secret() {
        let spec = json!({
            "rabbitmq": {"external": {
                "endpoints": ["amqp://mq.example.com:5672/prod"],
                "credentialsSecretRef": {"name": "mq-shared"},
                "workloadCredentials": {"notifier": {"name": "mq-notifier"}},
            }},
            "redis": {"external": {
                "endpoints": ["cache.example.com:6380"],
                "workloadCredentials": {"dashboard": {"name": "cache-dashboard"}},
            }},
        });
        let children = build_default(&pipeline(spec.clone()), &secrets(), "0.1.0").unwrap();
        let secret_of = |name: &str, variable: &str| {
            env_of(deployment(&children, &format!("shop-{name}")))
                .get(variable)
                .map(|var| var["valueFrom"]["secretKeyRef"].clone())
        };
        assert_eq!(
            secret_of("notifier", env::RABBITMQ_PASSWORD).unwrap()["name"],
            "mq-notifier"
        );
        assert_eq!(
            secret_of("processor", env::RABBITMQ_PASSWORD).unwrap()["name"],
            "mq-shared"
        );
        assert_eq!(
            secret_of("dashboard", env::REDIS_USERNAME),
            Some(json!({"name": "cache-dashboard", "key": "username", "optional": true}))
        );
        // No shared Redis Secret: the others log in without a password.
        assert_eq!(secret_of("gateway", env::REDIS_PASSWORD), None);
        // The shared RabbitMQ login is never the dashboard's: without one of its own it reads
        // no queue depths.
        let dashboard = env_of(deployment(&children, "shop-dashboard"));
        for variable in [
            env::RABBITMQ_URLS,
            env::RABBITMQ_USERNAME,
            env::RABBITMQ_PASSWORD,
        ] {
            assert!(!dashboard.contains_key(variable), "{variable}");
        }
        let mut spec = spec;
        spec["rabbitmq"]["external"]["workloadCredentials"]["dashboard"] =
            json!({"name": "mq-dashboard"});
        let children = build_default(&pipeline(spec), &secrets(), "0.1.0").unwrap();
        let dashboard = env_of(deployment(&children, "shop-dashboard"));
        assert_eq!(
            dashboard[env::RABBITMQ_PASSWORD]["valueFrom"]["secretKeyRef"]["name"],
            "mq-dashboard"
        );
        assert_eq!(
            dashboard[env::RABBITMQ_URLS]["value"],
            "amqp://mq.example.com:5672/prod"
        );
    }

    #[test]
    fn traces_go_where_the_spec_or_the_operator_default_says_and_the_policies_let_them() {
        let with_default = |spec: serde_json::Value| {
            build_with(
                &pipeline(spec),
                &secrets(),
                &ReplicaOverrides::new(),
                &RunningImages::new(),
                &Settings {
                    default_otlp_endpoint: Some("http://collector.monitoring:4318".into()),
                    ..Settings::default()
                },
                "0.1.0",
            )
        };
        let egress_ports = |children: &Children, name: &str| -> Vec<i32> {
            let policy = children
                .network_policies
                .iter()
                .find(|policy| policy.metadata.name.as_deref() == Some(name))
                .unwrap();
            let rules = policy
                .spec
                .as_ref()
                .unwrap()
                .egress
                .clone()
                .unwrap_or_default();
            rules
                .iter()
                .filter(|rule| rule.to.is_none())
                .flat_map(|rule| rule.ports.clone().unwrap_or_default())
                .filter_map(|port| match port.port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port)) => {
                        Some(port)
                    }
                    _ => None,
                })
                .collect()
        };

        // The operator's default reaches every workload, each named as itself.
        let defaulted = with_default(json!({})).unwrap();
        for workload in Workload::ALL {
            let name = format!("shop-{}", workload.name());
            let env = env_of(deployment(&defaulted, &name));
            assert_eq!(
                env[env::OTEL_EXPORTER_OTLP_ENDPOINT]["value"],
                "http://collector.monitoring:4318/",
                "{name}"
            );
            assert_eq!(env[env::OTEL_SERVICE_NAME]["value"], workload.name());
            assert_eq!(
                env[env::OTEL_RESOURCE_ATTRIBUTES]["value"],
                "k8s.namespace.name=store,orderpipeline.name=shop"
            );
            assert!(egress_ports(&defaulted, &name).contains(&4318), "{name}");
        }

        // The spec's own endpoint wins; an empty one turns traces off for the pipeline.
        let own = with_default(json!({"tracing": {"otlpEndpoint": "http://jaeger.tracing:14318"}}))
            .unwrap();
        let gateway = env_of(deployment(&own, "shop-gateway"));
        assert_eq!(
            gateway[env::OTEL_EXPORTER_OTLP_ENDPOINT]["value"],
            "http://jaeger.tracing:14318/"
        );
        assert!(egress_ports(&own, "shop-gateway").contains(&14318));
        let off = with_default(json!({"tracing": {"otlpEndpoint": ""}})).unwrap();
        let gateway = env_of(deployment(&off, "shop-gateway"));
        assert!(!gateway.contains_key(env::OTEL_EXPORTER_OTLP_ENDPOINT));
        assert!(!egress_ports(&off, "shop-gateway").contains(&4318));

        // No default and no spec: no traces, and no exporter variable at all.
        let none = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        assert!(!env_of(deployment(&none, "shop-notifier")).contains_key(env::OTEL_SERVICE_NAME));

        // What the workloads could not export to is refused, and credentials never reach a pod.
        for endpoint in [
            "https://collector:4318",
            "http://user:secret@collector:4318",
            "collector:4318",
        ] {
            let error = with_default(json!({"tracing": {"otlpEndpoint": endpoint}}))
                .err()
                .unwrap_or_else(|| panic!("{endpoint} was accepted"))
                .to_string();
            assert!(error.contains("OTLP endpoint"), "{endpoint}: {error}");
            assert!(!error.contains("secret"), "the password is shown: {error}");
        }
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
        let base = hash_of(&pipeline(json!({})), &secrets());
        let rotated = Secrets {
            cassandra_password: Some("another".into()),
            ..secrets()
        };
        assert_ne!(base, hash_of(&pipeline(json!({})), &rotated));
        let superuser = Secrets {
            cassandra_superuser_password: Some("another".into()),
            ..secrets()
        };
        assert_eq!(base, hash_of(&pipeline(json!({})), &superuser));
    }
}
