//! The kube-apiserver itself enforces the validation written in the `OrderPipeline` types (schema
//! bounds and CEL rules), so every client (kubectl, Helm, GitOps) gets a 422 that names the fault
//! before the operator ever sees a bad pipeline, and defaults are filled in by the server.
//!
//! Needs the Kubernetes control plane of `cargo xtask env up kube`. Each test installs the CRD
//! (server-side apply, idempotent), works in its own namespace and deletes it; the CRD stays
//! installed because other tests use it.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config, CustomResourceExt, Resource};
use pipeline_api::{OrderPipeline, OrderPipelineSpec};
use serde_json::{Value, json};

const FIELD_MANAGER: &str = "pipeline-api-tests";

/// An invalid pipeline and what the API server's answer must say about it.
struct InvalidCase {
    /// Also the object's name, so a failure points at the case.
    name: &'static str,
    spec: Value,
    /// Substrings of the 422 message: the field path and the rule's message.
    expected: &'static [&'static str],
}

fn invalid_cases() -> Vec<InvalidCase> {
    vec![
        InvalidCase {
            name: "gateway-replicas-over-100",
            spec: json!({"gateway": {"replicas": 500}}),
            expected: &[
                "spec.gateway.replicas",
                "should be less than or equal to 100",
            ],
        },
        InvalidCase {
            name: "dashboard-replicas-negative",
            spec: json!({"dashboard": {"replicas": -1}}),
            expected: &[
                "spec.dashboard.replicas",
                "should be greater than or equal to 0",
            ],
        },
        InvalidCase {
            name: "gateway-replicas-not-a-number",
            spec: json!({"gateway": {"replicas": "two"}}),
            expected: &["spec.gateway.replicas", "must be of type integer"],
        },
        InvalidCase {
            name: "autoscaling-min-above-max",
            spec: json!({"processor": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}),
            expected: &[
                "spec.processor.autoscaling",
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            ],
        },
        InvalidCase {
            name: "autoscaling-max-zero",
            spec: json!({"notifier": {"autoscaling": {"maxReplicas": 0}}}),
            expected: &[
                "spec.notifier.autoscaling.maxReplicas",
                "should be greater than or equal to 1",
            ],
        },
        InvalidCase {
            name: "autoscaling-without-max",
            spec: json!({"processor": {"autoscaling": {"minReplicas": 2}}}),
            expected: &["spec.processor.autoscaling.maxReplicas", "Required value"],
        },
        InvalidCase {
            name: "rabbitmq-managed-and-external",
            spec: json!({"rabbitmq": {
                "managed": {},
                "external": {"endpoints": ["amqp://rabbitmq.example:5672/orders"]}
            }}),
            expected: &[
                "spec.rabbitmq",
                "exactly one of managed or external must be set",
            ],
        },
        InvalidCase {
            name: "redis-neither-managed-nor-external",
            spec: json!({"redis": {}}),
            expected: &[
                "spec.redis",
                "exactly one of managed or external must be set",
            ],
        },
        InvalidCase {
            name: "redis-both-null",
            spec: json!({"redis": {"managed": null, "external": null}}),
            expected: &[
                "spec.redis",
                "exactly one of managed or external must be set",
            ],
        },
        InvalidCase {
            name: "cassandra-external-without-endpoints",
            spec: json!({"cassandra": {"external": {"endpoints": []}}}),
            expected: &[
                "spec.cassandra.external.endpoints",
                "should have at least 1 items",
            ],
        },
        InvalidCase {
            name: "managed-rabbitmq-of-10-nodes",
            spec: json!({"rabbitmq": {"managed": {"replicas": 10}}}),
            expected: &[
                "spec.rabbitmq.managed.replicas",
                "should be less than or equal to 9",
            ],
        },
        InvalidCase {
            name: "storage-size-not-a-quantity",
            spec: json!({"rabbitmq": {"managed": {"storage": {"size": "lots"}}}}),
            expected: &["spec.rabbitmq.managed.storage.size", "should match"],
        },
        InvalidCase {
            name: "token-lifetime-under-a-minute",
            spec: json!({"auth": {"tokenLifetimeSeconds": 10}}),
            expected: &[
                "spec.auth.tokenLifetimeSeconds",
                "should be greater than or equal to 60",
            ],
        },
        InvalidCase {
            name: "jwt-secret-ref-without-key",
            spec: json!({"auth": {"jwtSecretRef": {"name": "jwt"}}}),
            expected: &["spec.auth.jwtSecretRef.key", "Required value"],
        },
        InvalidCase {
            name: "env-name-starting-with-a-digit",
            spec: json!({"gateway": {"env": [{"name": "1BAD", "value": "x"}]}}),
            expected: &["spec.gateway.env[0].name", "should match"],
        },
        InvalidCase {
            name: "empty-image",
            spec: json!({"dashboard": {"image": ""}}),
            expected: &["spec.dashboard.image", "should be at least 1 chars long"],
        },
        InvalidCase {
            name: "node-port-on-a-cluster-ip-service",
            spec: json!({"gateway": {"service": {"nodePort": 30080}}}),
            expected: &[
                "spec.gateway.service",
                "service.nodePort needs service.type NodePort or LoadBalancer",
            ],
        },
        InvalidCase {
            name: "node-port-outside-the-node-port-range",
            spec: json!({"dashboard": {"service": {"type": "NodePort", "nodePort": 8081}}}),
            expected: &[
                "spec.dashboard.service.nodePort",
                "should be greater than or equal to 30000",
            ],
        },
        InvalidCase {
            name: "unknown-service-type",
            spec: json!({"gateway": {"service": {"type": "ExternalName"}}}),
            expected: &["spec.gateway.service.type", "Unsupported value"],
        },
        InvalidCase {
            name: "https-management-url",
            spec: json!({"rabbitmq": {"external": {"endpoints": ["amqp://mq:5672/"], "managementUrl": "https://mq:15671"}}}),
            expected: &[
                "spec.rabbitmq.external.managementUrl",
                "managementUrl must be an http:// URL (https is not supported yet)",
            ],
        },
        InvalidCase {
            name: "cassandra-memory-limit-under-1gi",
            spec: json!({"cassandra": {"managed": {"resources": {"limits": {"memory": "512Mi"}}}}}),
            expected: &[
                "spec.cassandra",
                "a managed Cassandra sizes its Java heap from its memory limit",
                "managed.resources.limits.memory must be a memory quantity of at least 1Gi",
            ],
        },
        InvalidCase {
            name: "cassandra-without-a-memory-limit",
            spec: json!({"cassandra": {"managed": {"resources": {"requests": {"memory": "2Gi"}}}}}),
            expected: &["spec.cassandra", "of at least 1Gi"],
        },
        InvalidCase {
            name: "cassandra-empty-limits",
            spec: json!({"cassandra": {"managed": {"resources": {"limits": {}}}}}),
            expected: &["spec.cassandra", "of at least 1Gi"],
        },
        InvalidCase {
            name: "cassandra-memory-limit-not-a-quantity",
            spec: json!({"cassandra": {"managed": {"resources": {"limits": {"memory": "2GB"}}}}}),
            expected: &[
                "spec.cassandra",
                "must be a memory quantity of at least 1Gi",
            ],
        },
        InvalidCase {
            name: "rabbitmq-memory-limit-under-512mi",
            spec: json!({"rabbitmq": {"managed": {"resources": {"limits": {"memory": "256Mi"}}}}}),
            expected: &[
                "spec.rabbitmq",
                "a managed RabbitMQ sets its memory high watermark from its memory limit",
                "of at least 512Mi",
            ],
        },
        InvalidCase {
            name: "redis-with-two-nodes",
            spec: json!({"redis": {"managed": {"replicas": 2}}}),
            expected: &[
                "spec.redis",
                "a managed Redis runs exactly one node (managed.replicas: 1)",
                "point spec.redis.external at a Redis service",
            ],
        },
        InvalidCase {
            name: "cassandra-with-three-nodes",
            spec: json!({"cassandra": {"managed": {"replicas": 3}}}),
            expected: &[
                "spec.cassandra",
                "a managed Cassandra runs exactly one node (managed.replicas: 1)",
                "point spec.cassandra.external at a Cassandra cluster",
            ],
        },
        InvalidCase {
            name: "cassandra-with-workload-credentials",
            spec: json!({"cassandra": {"external": {
                "endpoints": ["db:9042"],
                "workloadCredentials": {"gateway": {"name": "db"}},
            }}}),
            expected: &[
                "spec.cassandra",
                "workloadCredentials is not used: only the gateway reads Cassandra",
            ],
        },
        InvalidCase {
            // 41 characters: child names are derived from it.
            name: "pipeline-with-a-name-longer-than-40-chars",
            spec: json!({}),
            expected: &["metadata.name must be at most 40 characters"],
        },
        // Both are names the API server takes for any object (DNS subdomains), but neither can
        // name a Service.
        InvalidCase {
            name: "1-leading-digit",
            spec: json!({}),
            expected: &["metadata.name must be a DNS label that starts with a letter"],
        },
        InvalidCase {
            name: "shop.prod",
            spec: json!({}),
            expected: &["metadata.name must be a DNS label that starts with a letter"],
        },
    ]
}

#[tokio::test]
async fn the_api_server_rejects_invalid_pipelines_naming_the_field_and_rule() {
    in_fresh_namespace("validation-create", |pipelines| async move {
        let mut wrong = Vec::new();
        for case in invalid_cases() {
            let answer = pipelines
                .create(&PostParams::default(), &pipeline(case.name, case.spec))
                .await;
            match answer {
                Ok(_) => wrong.push(format!("{}: accepted", case.name)),
                Err(kube::Error::Api(status)) => {
                    println!(
                        "{}: {} {}: {}",
                        case.name, status.code, status.reason, status.message
                    );
                    let missing: Vec<&str> = case
                        .expected
                        .iter()
                        .copied()
                        .filter(|expected| !status.message.contains(expected))
                        .collect();
                    if status.code != 422 || status.reason != "Invalid" || !missing.is_empty() {
                        wrong.push(format!(
                            "{}: {} {} {:?}, missing {missing:?}",
                            case.name, status.code, status.reason, status.message
                        ));
                    }
                }
                Err(other) => wrong.push(format!("{}: {other}", case.name)),
            }
        }
        assert!(
            wrong.is_empty(),
            "unexpected answers:\n{}",
            wrong.join("\n")
        );
    })
    .await;
}

#[tokio::test]
async fn an_empty_spec_is_accepted_and_the_server_fills_every_default() {
    in_fresh_namespace("validation-defaults", |pipelines| async move {
        let created = pipelines
            .create(&PostParams::default(), &pipeline("defaults", json!({})))
            .await
            .unwrap();
        let spec = &created.data["spec"];
        assert_eq!(spec["gateway"]["replicas"], 1);
        assert_eq!(spec["rabbitmq"]["managed"]["storage"]["size"], "1Gi");
        assert_eq!(spec["auth"]["tokenLifetimeSeconds"], 3600);
        // The server's defaults are the Rust types' defaults, so the operator reads the same
        // pipeline whether a field was written or left out.
        let typed: OrderPipeline =
            serde_json::from_value(serde_json::to_value(&created).unwrap()).unwrap();
        let rust_defaults: OrderPipelineSpec = serde_json::from_value(json!({})).unwrap();
        assert_eq!(typed.spec, rust_defaults);
    })
    .await;
}

#[tokio::test]
async fn memory_limits_a_managed_dependency_can_run_with_are_accepted() {
    in_fresh_namespace("validation-memory", |pipelines| async move {
        for (name, spec) in [
            // The minimums themselves, in any unit.
            (
                "cassandra-1gi",
                json!({"cassandra": {"managed": {"resources": {"limits": {"memory": "1Gi"}}}}}),
            ),
            (
                "cassandra-2g",
                json!({"cassandra": {"managed": {"resources": {"requests": {"cpu": "1"}, "limits": {"memory": "2G"}}}}}),
            ),
            (
                "rabbitmq-512mi",
                json!({"rabbitmq": {"managed": {"resources": {"limits": {"memory": "536870912"}}}}}),
            ),
            // Redis derives nothing from its limit; external dependencies are not run here.
            (
                "redis-without-limit",
                json!({"redis": {"managed": {"resources": {"requests": {"memory": "32Mi"}}}}}),
            ),
            (
                "external-cassandra",
                json!({"cassandra": {"external": {"endpoints": ["db.example.com:9042"]}}}),
            ),
        ] {
            pipelines
                .create(&PostParams::default(), &pipeline(name, spec))
                .await
                .unwrap_or_else(|error| panic!("{name}: {error}"));
        }
    })
    .await;
}

#[tokio::test]
async fn server_side_apply_refuses_unknown_fields_and_create_prunes_them() {
    in_fresh_namespace("validation-unknown", |pipelines| async move {
        let typo = pipeline("typo", json!({"gatway": {"replicas": 3}}));

        // Apply refuses an undeclared field whatever the fieldValidation directive. The answer is
        // an HTTP 500 without a reason (kubernetes/kubernetes#139253), so only its text is checked.
        let apply = PatchParams::apply(FIELD_MANAGER);
        let status = api_error(pipelines.patch("typo", &apply, &Patch::Apply(&typo)).await);
        println!(
            "apply: {} {}: {}",
            status.code, status.reason, status.message
        );
        assert!(
            status
                .message
                .contains(".spec.gatway: field not declared in schema"),
            "{status:?}"
        );

        // A plain create (fieldValidation defaults to Warn) succeeds and drops the field: the
        // typo is lost with only a warning, and the default stands.
        let created = pipelines
            .create(&PostParams::default(), &typo)
            .await
            .unwrap();
        assert!(created.data["spec"].get("gatway").is_none(), "{created:?}");
        assert_eq!(created.data["spec"]["gateway"]["replicas"], 1);
    })
    .await;
}

#[tokio::test]
async fn storage_of_a_managed_dependency_is_immutable_but_its_replicas_are_not() {
    in_fresh_namespace("validation-storage", |pipelines| async move {
        pipelines
            .create(&PostParams::default(), &pipeline("shop", json!({})))
            .await
            .unwrap();

        let resize = json!({"spec": {"rabbitmq": {"managed": {"storage": {"size": "5Gi"}}}}});
        let status = api_error(
            pipelines
                .patch("shop", &PatchParams::default(), &Patch::Merge(&resize))
                .await,
        );
        println!(
            "resize: {} {}: {}",
            status.code, status.reason, status.message
        );
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        assert!(
            status.message.contains("spec.rabbitmq.managed.storage")
                && status.message.contains("storage is immutable"),
            "{status:?}"
        );

        // The rule compares storage only: other edits of the same dependency go through.
        let scale = json!({"spec": {"rabbitmq": {"managed": {"replicas": 3}}}});
        let scaled = pipelines
            .patch("shop", &PatchParams::default(), &Patch::Merge(&scale))
            .await
            .unwrap();
        assert_eq!(scaled.data["spec"]["rabbitmq"]["managed"]["replicas"], 3);
        assert_eq!(
            scaled.data["spec"]["rabbitmq"]["managed"]["storage"]["size"],
            "1Gi"
        );
    })
    .await;
}

#[tokio::test]
async fn a_dependency_cannot_switch_between_managed_and_external() {
    in_fresh_namespace("validation-switch", |pipelines| async move {
        pipelines
            .create(
                &PostParams::default(),
                &pipeline("managed-redis", json!({})),
            )
            .await
            .unwrap();
        let to_external = json!({"spec": {"redis": {
            "managed": null,
            "external": {"endpoints": ["redis.example:6379"]}
        }}});
        let status = api_error(
            pipelines
                .patch(
                    "managed-redis",
                    &PatchParams::default(),
                    &Patch::Merge(&to_external),
                )
                .await,
        );
        println!(
            "managed -> external: {} {}: {}",
            status.code, status.reason, status.message
        );
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        assert!(
            status.message.contains("spec.redis")
                && status
                    .message
                    .contains("cannot switch between managed and external"),
            "{status:?}"
        );

        let external = json!({"redis": {"external": {"endpoints": ["redis.example:6379"]}}});
        pipelines
            .create(
                &PostParams::default(),
                &pipeline("external-redis", external),
            )
            .await
            .unwrap();
        let to_managed = json!({"spec": {"redis": {"external": null, "managed": {}}}});
        let status = api_error(
            pipelines
                .patch(
                    "external-redis",
                    &PatchParams::default(),
                    &Patch::Merge(&to_managed),
                )
                .await,
        );
        println!(
            "external -> managed: {} {}: {}",
            status.code, status.reason, status.message
        );
        assert!(
            status.message.contains("spec.redis")
                && status
                    .message
                    .contains("cannot switch between managed and external"),
            "{status:?}"
        );
    })
    .await;
}

/// An `OrderPipeline` as the API server receives it, including values the Rust types cannot hold.
fn pipeline(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": OrderPipeline::api_version(&()),
        "kind": OrderPipeline::kind(&()),
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn api_error<T: std::fmt::Debug>(answer: kube::Result<T>) -> Status {
    match answer {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

async fn client() -> Client {
    let env = testenv::Env::load();
    let kubeconfig = Kubeconfig::read_from(env.require("KUBECONFIG")).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Installs (or updates) the CRD generated from the types and waits until it is served.
async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = OrderPipeline::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let established = await_condition(crds, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .expect("CRD established within 30s")
        .unwrap();
}

/// Runs `test` with an `OrderPipeline` API in a new namespace, then deletes the namespace even
/// when the test failed.
async fn in_fresh_namespace<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Api<DynamicObject>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let client = client().await;
    install_crd(&client).await;
    let namespace = testenv::unique(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace =
        serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .unwrap();

    let pipelines = Api::namespaced_with(client, &namespace, &OrderPipeline::api_resource());
    let outcome = tokio::spawn(test(pipelines)).await;

    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .unwrap();
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
