//! The NetworkPolicies: only the gateway and dashboard take traffic from outside the pipeline;
//! each managed dependency only from the pipeline's workloads (and, for clustered ones, its own
//! peers).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pipeline_api::OrderPipeline;
use pipeline_contract::ports;

use super::meta::Context;
use super::{Dependency, MANAGED_BY, Workload, names, rabbitmq};

/// One policy per workload, then one per managed dependency.
pub(super) fn network_policies(context: &Context, pipeline: &OrderPipeline) -> Vec<NetworkPolicy> {
    let mut policies = Vec::new();
    let pipeline_pods = || {
        Some(vec![NetworkPolicyPeer {
            pod_selector: Some(context.instance_selector()),
            ..NetworkPolicyPeer::default()
        }])
    };
    let admin = || NetworkPolicyIngressRule {
        from: pipeline_pods(),
        ports: Some(vec![tcp(ports::ADMIN)]),
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
            from: pipeline_pods(),
            ..NetworkPolicyIngressRule::default()
        }];
        if dependency == Dependency::Rabbitmq {
            // The operator, wherever it runs, reads queue depths from the management API.
            ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector::default()),
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(
                            [("app.kubernetes.io/name".to_owned(), MANAGED_BY.to_owned())].into(),
                        ),
                        ..LabelSelector::default()
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
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
            pod_selector: Some(context.label_selector(component)),
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
