//! The NetworkPolicies: only the gateway and dashboard take traffic from outside the pipeline;
//! each managed dependency only from the pipeline's workloads (and, for clustered ones, its own
//! peers). Every policy selects pods by [`super::meta::PIPELINE_LABEL`], which only this operator sets, not by
//! the shared `app.kubernetes.io/instance`. Two ports are opened to named namespaces only: the
//! admin port (`/metrics`) to the one Prometheus scrapes from, and RabbitMQ's management API to
//! the operator's pods in the operator's namespace.
//!
//! Egress too: every pod may resolve names (port 53, wherever the cluster's resolver is), each
//! workload may reach only the dependencies it uses (a managed one's pods on its client port; an
//! external one's ports, at any address, since only its host names are known), the notifier its
//! webhook's port when it has one, and a clustered dependency its own peers. So a compromised
//! dashboard cannot even open a connection to Cassandra (on RabbitMQ its user may only read
//! queue depths).
//!
//! They are applied before every other child, so no dependency ever runs unprotected, not even
//! when a later apply fails.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pipeline_api::ExternalDependency;
use pipeline_contract::{env, ports};

use super::super::validate::{Mode, ValidatedPipeline};
use super::meta::Parent;
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
    parent: &Parent,
    valid: &ValidatedPipeline<'_>,
    access: &Access,
) -> Vec<NetworkPolicy> {
    let mut policies = Vec::new();
    let pipeline_pods = || NetworkPolicyPeer {
        pod_selector: Some(parent.pipeline_pods()),
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
            parent,
            &names::workload(parent.name, workload),
            workload.name(),
            ingress,
            workload_egress(parent, valid, workload),
        ));
    }
    for dependency in Dependency::ALL {
        if !matches!(valid.mode(dependency), Mode::Managed(_)) {
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
        let mut egress = vec![dns()];
        if dependency != Dependency::Redis {
            // Clustering: RabbitMQ's peers (epmd, distribution), Cassandra's (gossip).
            egress.push(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(parent.pipeline_component(dependency.name())),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: None,
            });
        }
        policies.push(policy(
            parent,
            &names::dependency(parent.name, dependency),
            dependency.name(),
            ingress,
            egress,
        ));
    }
    policies
}

/// Name resolution, at any address: the resolver may be a kube-dns pod, a node-local cache or
/// the node itself, depending on the cluster.
fn dns() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: None,
        ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
    }
}

/// Where `workload` may connect: DNS, the dependencies it uses, the notifier's webhook, the
/// trace receiver.
fn workload_egress(
    parent: &Parent,
    valid: &ValidatedPipeline<'_>,
    workload: Workload,
) -> Vec<NetworkPolicyEgressRule> {
    let mut egress = vec![dns()];
    for dependency in [
        Dependency::Rabbitmq,
        Dependency::Redis,
        Dependency::Cassandra,
    ] {
        if !valid.connects(workload, dependency) {
            continue;
        }
        match valid.mode(dependency) {
            Mode::Managed(_) => egress.push(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(parent.pipeline_component(dependency.name())),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![tcp(dependency.port())]),
            }),
            Mode::External(external) => {
                egress.extend(to_ports(external_ports(dependency, external)));
            }
        }
    }
    if workload == Workload::Notifier {
        let webhook = valid
            .pipeline
            .spec
            .notifier
            .workload
            .env
            .iter()
            .find(|var| var.name == env::NOTIFY_WEBHOOK_URL)
            .and_then(|var| url::Url::parse(&var.value).ok())
            .and_then(|url| url.port_or_known_default());
        egress.extend(to_ports(webhook.into_iter().collect()));
    }
    // The trace receiver, wherever it runs (a collector in another namespace, or outside).
    let traces = valid
        .otlp_endpoint
        .as_ref()
        .and_then(url::Url::port_or_known_default);
    egress.extend(to_ports(traces.into_iter().collect()));
    egress
}

/// The TCP ports of an external dependency's endpoints (AMQP URLs for RabbitMQ, `host:port` for
/// the others), without duplicates. An endpoint that does not parse has no port here; the build
/// refuses it anyway.
fn external_ports(dependency: Dependency, external: &ExternalDependency) -> Vec<u16> {
    let mut found: Vec<u16> = external
        .endpoints
        .iter()
        .filter_map(|endpoint| match dependency {
            Dependency::Rabbitmq => {
                let url = url::Url::parse(endpoint).ok()?;
                url.port().or(match url.scheme() {
                    "amqp" => Some(5672),
                    "amqps" => Some(5671),
                    _ => None,
                })
            }
            Dependency::Redis | Dependency::Cassandra => endpoint.rsplit_once(':')?.1.parse().ok(),
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// One rule to any address on `ports` (none when there are none).
fn to_ports(ports: Vec<u16>) -> Option<NetworkPolicyEgressRule> {
    (!ports.is_empty()).then(|| NetworkPolicyEgressRule {
        to: None,
        ports: Some(ports.into_iter().map(tcp).collect()),
    })
}

/// The policy `name` of the pods of `component`: what they accept, and where they may connect.
fn policy(
    parent: &Parent,
    name: &str,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
    egress: Vec<NetworkPolicyEgressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: parent.metadata(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(parent.pipeline_component(component)),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

fn tcp(number: u16) -> NetworkPolicyPort {
    port("TCP", number)
}

fn port(protocol: &str, number: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(number))),
        protocol: Some(protocol.to_owned()),
        ..NetworkPolicyPort::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::test_support::*;

    use super::super::ReplicaOverrides;
    use super::super::{Access, Settings};
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    fn policies(access: Access) -> Vec<NetworkPolicy> {
        build_with(
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

    /// Where an egress rule leads: `None` for any address, else the pods' component label; and
    /// its `(protocol, port)`s.
    type Egress = (Option<String>, Vec<(String, u64)>);

    /// The egress rules of a policy.
    fn egress(policy: &serde_json::Value) -> Vec<Egress> {
        policy["egress"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| {
                let to = rule["to"].as_array().map(|peers| {
                    peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                });
                let ports = rule["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|port| {
                        (
                            port["protocol"].as_str().unwrap().to_owned(),
                            port["port"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                (to, ports)
            })
            .collect()
    }

    fn tcp(port: u64) -> (String, u64) {
        ("TCP".to_owned(), port)
    }

    #[test]
    fn each_pod_connects_only_to_dns_and_what_it_uses() {
        let dns = (None, vec![("UDP".to_owned(), 53), tcp(53)]);
        let to = |component: &str, port: u64| (Some(component.to_owned()), vec![tcp(port)]);
        let managed = policies(Access::default());
        let of = |policies: &[NetworkPolicy], name: &str| {
            let policy = policies
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .unwrap();
            let spec = json_of(policy);
            assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]), "{name}");
            egress(&spec)
        };
        assert_eq!(
            of(&managed, "shop-gateway"),
            [
                dns.clone(),
                to("rabbitmq", 5672),
                to("redis", 6379),
                to("cassandra", 9042)
            ]
        );
        assert_eq!(
            of(&managed, "shop-processor"),
            [dns.clone(), to("rabbitmq", 5672), to("redis", 6379)]
        );
        assert_eq!(
            of(&managed, "shop-dashboard"),
            [dns.clone(), to("rabbitmq", 5672), to("redis", 6379)]
        );
        assert_eq!(of(&managed, "shop-redis"), std::slice::from_ref(&dns));
        assert_eq!(
            of(&managed, "shop-rabbitmq"),
            [dns.clone(), (Some("rabbitmq".to_owned()), Vec::new())]
        );

        // External dependencies: their ports at any address; the notifier's webhook likewise.
        let external = build_with(
            &pipeline(json!({
                "rabbitmq": {"external": {"endpoints": ["amqps://mq.example.com/prod", "amqp://mq2:5673/prod"]}},
                "redis": {"external": {"endpoints": ["cache.example.com:6380"]}},
                "notifier": {"env": [{"name": "NOTIFY_WEBHOOK_URL", "value": "https://hooks.example.com/n"}]},
            })),
            &secrets(),
            &ReplicaOverrides::new(),
            &RunningImages::new(),
            &Settings::default(),
            "0.1.0",
        )
        .unwrap()
        .network_policies;
        assert_eq!(
            of(&external, "shop-notifier"),
            [
                dns.clone(),
                (None, vec![tcp(5671), tcp(5673)]),
                (None, vec![tcp(6380)]),
                (None, vec![tcp(443)]),
            ]
        );
        // The dashboard reaches an external RabbitMQ only with a user of its own.
        assert_eq!(
            of(&external, "shop-dashboard"),
            [dns.clone(), (None, vec![tcp(6380)])]
        );
        let own = build_with(
            &pipeline(json!({
                "rabbitmq": {"external": {
                    "endpoints": ["amqps://mq.example.com/prod"],
                    "credentialsSecretRef": {"name": "shared"},
                    "workloadCredentials": {"dashboard": {"name": "dashboard-mq"}},
                }},
                "redis": {"external": {"endpoints": ["cache.example.com:6380"]}},
            })),
            &secrets(),
            &ReplicaOverrides::new(),
            &RunningImages::new(),
            &Settings::default(),
            "0.1.0",
        )
        .unwrap()
        .network_policies;
        assert_eq!(
            of(&own, "shop-dashboard"),
            [dns, (None, vec![tcp(5671)]), (None, vec![tcp(6380)])]
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
