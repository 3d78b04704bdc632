//! No spec can panic the operator: children are built from arbitrary specs (within the schema's
//! bounds, and with strings the schema leaves free: any Unicode, `%` escapes, URL punctuation),
//! along with everything else the reconcile derives from a spec before it talks to the API
//! server. A panic there would crash the operator on every replica that took the lease, for
//! every pipeline.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::dereference::Dereferenced;
use super::super::validate::validate;
use super::test_support::{ValidationError, build_default, pipeline, secrets};
use super::{Settings, config_hash};

/// Free text the schema lets through: any printable Unicode, or URL-ish punctuation and
/// multi-byte characters next to `%`.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("\\PC{{0,{max}}}")).unwrap(),
        proptest::string::string_regex(&format!("[%a-fA-F0-9€é/:@?#. -]{{0,{max}}}")).unwrap(),
    ]
}

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        text(40),
        ("amqps?://", text(30)).prop_map(|(scheme, rest)| format!("{scheme}{rest}")),
        ("amqp://[a-z.]{1,12}(:[0-9]{1,5})?/", text(20))
            .prop_map(|(base, vhost)| format!("{base}{vhost}")),
        "[a-z.]{0,12}:[0-9]{0,6}",
    ]
}

fn quantity() -> impl Strategy<Value = String> {
    prop_oneof![
        text(12),
        "[0-9]{1,7}(\\.[0-9]{1,3})?(m|k|Ki|Mi|Gi|Ti|M|G|T|e3)?",
    ]
}

fn resources() -> impl Strategy<Value = Option<Value>> {
    let key = prop_oneof![Just("cpu".to_owned()), Just("memory".to_owned()), text(8)];
    option::of(
        (
            btree_map(key.clone(), quantity(), 0..3),
            btree_map(key, quantity(), 0..3),
        )
            .prop_map(|(requests, limits)| json!({"requests": requests, "limits": limits})),
    )
}

fn workload() -> impl Strategy<Value = Value> {
    (
        0..=100i32,
        option::of(text(60).prop_filter("min length 1", |image| !image.is_empty())),
        resources(),
        vec(("[A-Za-z_][A-Za-z0-9_]{0,20}", text(30)), 0..4),
    )
        .prop_map(|(replicas, image, resources, env)| {
            let env: Vec<Value> = env
                .into_iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            let mut spec = json!({"replicas": replicas, "env": env});
            if let Some(image) = image {
                spec["image"] = json!(image);
            }
            if let Some(resources) = resources {
                spec["resources"] = resources;
            }
            spec
        })
}

fn scaled_workload() -> impl Strategy<Value = Value> {
    (
        workload(),
        option::of((1..=100i32, 1..=100i32, 1..=1_000_000i32, 0..=3600i32)),
    )
        .prop_map(|(mut spec, autoscaling)| {
            if let Some((a, b, depth, window)) = autoscaling {
                spec["autoscaling"] = json!({
                    "minReplicas": a.min(b), "maxReplicas": a.max(b),
                    "targetQueueDepthPerReplica": depth, "scaleDownWindowSeconds": window,
                });
            }
            spec
        })
}

fn dependency(max_replicas: i32) -> impl Strategy<Value = Value> {
    prop_oneof![
        (
            1..=max_replicas,
            option::of(text(60).prop_filter("min length 1", |image| !image.is_empty())),
            resources(),
            "[0-9]{1,4}(\\.[0-9]{1,2})?(Ki|Mi|Gi|Ti|k|M|G|T)?",
            any::<bool>(),
        )
            .prop_map(|(replicas, image, resources, size, allow)| {
                let mut managed = json!({
                    "replicas": replicas,
                    "storage": {"size": size},
                    "allowDataLossOnScaleDown": allow,
                });
                if let Some(image) = image {
                    managed["image"] = json!(image);
                }
                if let Some(resources) = resources {
                    managed["resources"] = resources;
                }
                json!({"managed": managed})
            }),
        (
            vec(endpoint(), 1..4),
            option::of("[a-z][a-z0-9-]{0,20}"),
            option::of(text(40))
        )
            .prop_map(|(endpoints, secret, management)| {
                let mut external = json!({"endpoints": endpoints});
                if let Some(secret) = secret {
                    external["credentialsSecretRef"] = json!({"name": secret});
                }
                if let Some(management) = management {
                    external["managementUrl"] = json!(format!("http://{management}"));
                }
                json!({"external": external})
            }),
    ]
}

fn spec() -> impl Strategy<Value = Value> {
    (
        (workload(), scaled_workload(), scaled_workload(), workload()),
        (dependency(9), dependency(1), dependency(1)),
        (
            option::of(("[a-z][a-z0-9-]{0,20}", text(20))),
            60..=86400i32,
            prop_oneof!["ClusterIP", "NodePort", "LoadBalancer"],
        ),
    )
        .prop_map(
            |(
                (gateway, processor, notifier, dashboard),
                (rabbitmq, redis, cassandra),
                (jwt, lifetime, service_type),
            )| {
                let mut gateway = gateway;
                gateway["service"] = json!({"type": service_type});
                let mut auth = json!({"tokenLifetimeSeconds": lifetime});
                if let Some((name, key)) = jwt {
                    auth["jwtSecretRef"] = json!({"name": name, "key": if key.is_empty() { "k".to_owned() } else { key }});
                }
                json!({
                    "gateway": gateway, "processor": processor, "notifier": notifier,
                    "dashboard": dashboard, "rabbitmq": rabbitmq, "redis": redis,
                    "cassandra": cassandra, "auth": auth,
                })
            },
        )
}

/// An RFC 1035 label, what every child's name must be for its kind to accept it.
fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_spec_panics_the_build_and_every_child_is_named_validly(spec in spec()) {
        let pipeline = pipeline(spec);
        let secrets = secrets();
        let found = Dereferenced { secrets: secrets.clone(), ..Dereferenced::default() };
        if let Ok(valid) = validate(&pipeline, found, &Settings::default()) {
            let _ = config_hash(&valid);
            let _ = crate::controller::management(&valid);
        }
        if let Some(external) = &pipeline.spec.rabbitmq.external {
            for endpoint in &external.endpoints {
                let _ = crate::autoscale::vhost_of(endpoint);
            }
        }
        match build_default(&pipeline, &secrets, "0.1.0") {
            Ok(children) => {
                let names = children.services.iter().map(|s| s.metadata.name.clone())
                    .chain(children.deployments.iter().map(|d| d.metadata.name.clone()))
                    .chain(children.stateful_sets.iter().map(|s| s.metadata.name.clone()));
                for name in names {
                    let name = name.unwrap_or_default();
                    prop_assert!(is_dns_label(&name), "child name {name:?}");
                }
            }
            // Refusals are fine (the pipeline reports them); they must name what is wrong.
            Err(error @ (ValidationError::InvalidEndpoint { .. } | ValidationError::DependencyResources(_))) => {
                prop_assert!(error.to_string().contains("spec."), "{error}");
            }
            Err(error) => prop_assert!(false, "unexpected refusal: {error}"),
        }
    }
}
