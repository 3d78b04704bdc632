//! The NetworkPolicies: only the gateway and dashboard take traffic from outside the pipeline;
//! each managed dependency only from the pipeline's workloads (and, for clustered ones, its own
//! peers). Every policy selects pods by [`super::meta::PIPELINE_LABEL`], which only this operator sets, not by
//! the shared `app.kubernetes.io/instance`. Two ports are opened to named namespaces only: the
//! admin port (`/metrics`) to the one Prometheus scrapes from, and RabbitMQ's management API to
//! the operator's pods in the operator's namespace.
//!
//! They are applied before every other child, so no dependency ever runs unprotected, not even
//! when a later apply fails. (Ingress only: egress rules need the addresses of external
//! dependencies and webhooks, which are not known here.)

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pipeline_api::OrderPipeline;
use pipeline_contract::ports;

use super::meta::Context;
use super::{Access, Dependency, Workload, names, rabbitmq};

/// What the chart labels the operator's pods with, whatever the release is called.
const OPERATOR_POD_LABELS: &[(&str, &str)] = &[
    ("app.kubernetes.io/part-of", "order-pipeline"),
    ("app.kubernetes.io/component", "operator"),
];

/// The label every namespace carries with its own name (set by the API server).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Pods labelled `labels` in the namespace called `namespace` (all pods when `labels` is empty).
fn in_namespace(namespace: &str, labels: &[(&str, &str)]) -> NetworkPolicyPeer {
    // An empty selector (all pods) is `{}`, as the API server returns it: no empty matchLabels.
    let selector = |pairs: &[(&str, &str)]| LabelSelector {
        match_labels: (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect()
        }),
        ..LabelSelector::default()
    };
    NetworkPolicyPeer {
        namespace_selector: Some(selector(&[(NAMESPACE_NAME_LABEL, namespace)])),
        pod_selector: Some(selector(labels)),
        ..NetworkPolicyPeer::default()
    }
}

/// One policy per workload, then one per managed dependency.
pub(super) fn network_policies(
    context: &Context,
    pipeline: &OrderPipeline,
    access: &Access,
) -> Vec<NetworkPolicy> {
    let mut policies = Vec::new();
    let pipeline_pods = || NetworkPolicyPeer {
        pod_selector: Some(context.pipeline_pods()),
        ..NetworkPolicyPeer::default()
    };
    let admin = || {
        let mut from = vec![pipeline_pods()];
        if let Some(namespace) = &access.metrics_namespace {
            from.push(in_namespace(namespace, &[]));
        }
        NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(vec![tcp(ports::ADMIN)]),
        }
    };
    for workload in Workload::ALL {
        let ingress = match workload.http_port() {
            Some(port) => vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(port)]),
                    ..NetworkPolicyIngressRule::default()
                },
                admin(),
            ],
            // Probes come from the kubelet, which NetworkPolicies do not restrict.
            None => vec![admin()],
        };
        policies.push(policy(
            context,
            &names::workload(context.name, workload),
            workload.name(),
            ingress,
        ));
    }
    for dependency in Dependency::ALL {
        if dependency.spec(pipeline).managed.is_none() {
            continue;
        }
        let mut ingress = vec![NetworkPolicyIngressRule {
            from: Some(vec![pipeline_pods()]),
            ..NetworkPolicyIngressRule::default()
        }];
        if dependency == Dependency::Rabbitmq
            && let Some(namespace) = &access.operator_namespace
        {
            // The operator reads queue depths and cluster membership from the management API.
            ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![in_namespace(namespace, OPERATOR_POD_LABELS)]),
                ports: Some(vec![tcp(rabbitmq::MANAGEMENT_PORT)]),
            });
        }
        policies.push(policy(
            context,
            &names::dependency(context.name, dependency),
            dependency.name(),
            ingress,
        ));
    }
    policies
}

/// The ingress policy `name` of the pods of `component`.
fn policy(
    context: &Context,
    name: &str,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: context.metadata(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(context.pipeline_component(component)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::test_support::*;

    use super::super::{Access, Settings, build};
    use super::super::{ReplicaOverrides, RunningImages};
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    fn policies(access: Access) -> Vec<NetworkPolicy> {
        build(
            &pipeline(json!({})),
            &secrets(),
            &ReplicaOverrides::new(),
            &RunningImages::new(),
            &Settings {
                access,
                ..Settings::default()
            },
            "0.1.0",
        )
        .unwrap()
        .network_policies
    }

    fn json_of(policy: &NetworkPolicy) -> serde_json::Value {
        serde_json::to_value(policy.spec.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn policies_select_by_the_pipeline_label_and_open_private_ports_to_named_namespaces_only() {
        let closed = policies(Access::default());
        for policy in &closed {
            let spec = json_of(policy);
            // A Helm release also called `shop` sets app.kubernetes.io/instance=shop: never
            // what a policy selects pods by, nor admits peers by.
            assert_eq!(
                spec["podSelector"]["matchLabels"]["orderpipeline.dev/pipeline"], "shop",
                "{spec}"
            );
            assert!(
                !spec.to_string().contains("app.kubernetes.io/instance"),
                "{spec}"
            );
            // Nothing outside the pipeline reaches a private port without an Access naming it.
            assert!(!spec.to_string().contains("namespaceSelector"), "{spec}");
        }
        let open = policies(Access {
            operator_namespace: Some("operators".into()),
            metrics_namespace: Some("monitoring".into()),
        });
        let rabbitmq = open
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("shop-rabbitmq"))
            .map(json_of)
            .unwrap();
        let management = rabbitmq["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["ports"][0]["port"] == 15672)
            .unwrap();
        assert_eq!(
            management["from"],
            json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "operators"}},
                "podSelector": {"matchLabels": {
                    "app.kubernetes.io/component": "operator",
                    "app.kubernetes.io/part-of": "order-pipeline",
                }},
            }])
        );
        let gateway = open
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("shop-gateway"))
            .map(json_of)
            .unwrap();
        let admin = gateway["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["ports"][0]["port"] == 9090)
            .unwrap();
        assert_eq!(
            admin["from"][1],
            json!({
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {},
            })
        );
        // The business port stays open to everyone.
        assert!(
            gateway["ingress"]
                .as_array()
                .unwrap()
                .iter()
                .any(|rule| rule["ports"][0]["port"] == 8080 && rule.get("from").is_none())
        );
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
}
