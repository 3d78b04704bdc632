//! The pipeline's PodMonitor (`spec.monitoring.podMonitor`): tells a Prometheus Operator already
//! running in the cluster to scrape the four workloads' `/metrics` on their admin port. A
//! `DynamicObject`, since the kind belongs to another project's API and may not be served at all
//! (the apply step discovers it first, see `crate::monitoring`).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use pipeline_api::PodMonitorSpec;
use pipeline_contract::probes;
use serde_json::json;

use super::meta::{COMPONENT_LABEL, PIPELINE_LABEL, Parent};
use super::{Workload, names};

pub const MONITORING_GROUP: &str = "monitoring.coreos.com";
pub const MONITORING_VERSION: &str = "v1";
/// The component label of the PodMonitor (what the prune step finds it by).
pub const MONITORING_COMPONENT: &str = "monitoring";
/// The container port every workload serves `/metrics` on (named in the pod template).
const ADMIN_PORT_NAME: &str = "admin";

/// The PodMonitor kind, as the API server names it.
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(MONITORING_GROUP, MONITORING_VERSION, "PodMonitor"),
        "podmonitors",
    )
}

/// The PodMonitor the spec asks for, if it asks for one.
pub(super) fn pod_monitors(parent: &Parent<'_>, spec: &PodMonitorSpec) -> Vec<DynamicObject> {
    if !spec.enabled {
        return Vec::new();
    }
    let mut metadata = parent.metadata(&names::pod_monitor(parent.name), MONITORING_COMPONENT);
    let labels = metadata.labels.get_or_insert_default();
    for (key, value) in &spec.labels {
        // The operator's own labels select and prune its children: a user's label never
        // replaces one of them.
        labels.entry(key.clone()).or_insert_with(|| value.clone());
    }
    let mut endpoint = json!({
        "port": ADMIN_PORT_NAME,
        "path": probes::METRICS,
    });
    if let Some(interval) = &spec.interval {
        endpoint["interval"] = json!(interval);
    }
    let workloads: Vec<&str> = Workload::ALL
        .iter()
        .map(|workload| workload.name())
        .collect();
    let mut monitor = DynamicObject::new(&names::pod_monitor(parent.name), &pod_monitor_resource());
    monitor.metadata = metadata;
    monitor.data = json!({
        "spec": {
            // The workloads' pods only: the managed dependencies have no admin port.
            "selector": {
                "matchLabels": { PIPELINE_LABEL: parent.name },
                "matchExpressions": [{
                    "key": COMPONENT_LABEL,
                    "operator": "In",
                    "values": workloads,
                }],
            },
            // So every series says which pipeline and which workload it came from.
            "podTargetLabels": [PIPELINE_LABEL, COMPONENT_LABEL],
            "podMetricsEndpoints": [endpoint],
        }
    });
    vec![monitor]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::build::test_support::{build_default, pipeline, secrets};

    fn built(spec: serde_json::Value) -> super::super::Children {
        build_default(&pipeline(spec), &secrets(), "0.1.0").unwrap()
    }

    #[test]
    fn nothing_unless_enabled() {
        assert!(built(json!({})).pod_monitors.is_empty());
        assert!(
            built(json!({"monitoring": {"podMonitor": {"enabled": false}}}))
                .pod_monitors
                .is_empty()
        );
    }

    #[test]
    fn scrapes_the_workloads_admin_port_and_is_owned_by_the_pipeline() {
        let children = built(json!({"monitoring": {"podMonitor": {
            "enabled": true,
            "interval": "15s",
            "labels": {"release": "prometheus", "app.kubernetes.io/managed-by": "someone-else"},
        }}}));
        let [monitor] = <[DynamicObject; 1]>::try_from(children.pod_monitors).unwrap();
        let types = monitor.types.as_ref().unwrap();
        assert_eq!(
            (types.api_version.as_str(), types.kind.as_str()),
            ("monitoring.coreos.com/v1", "PodMonitor")
        );
        assert_eq!(monitor.metadata.name.as_deref(), Some("shop-workloads"));
        assert_eq!(monitor.metadata.namespace.as_deref(), Some("store"));
        let owner = &monitor.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("OrderPipeline", "1234", Some(true))
        );
        let labels = monitor.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["release"], "prometheus");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"], "order-pipeline-operator",
            "a user's label never replaces the operator's"
        );
        assert_eq!(labels[COMPONENT_LABEL], "monitoring");
        assert_eq!(labels[PIPELINE_LABEL], "shop");
        assert_eq!(
            monitor.data["spec"],
            json!({
                "selector": {
                    "matchLabels": {"orderpipeline.dev/pipeline": "shop"},
                    "matchExpressions": [{
                        "key": "app.kubernetes.io/component",
                        "operator": "In",
                        "values": ["gateway", "processor", "notifier", "dashboard"],
                    }],
                },
                "podTargetLabels": ["orderpipeline.dev/pipeline", "app.kubernetes.io/component"],
                "podMetricsEndpoints": [{"port": "admin", "path": "/metrics", "interval": "15s"}],
            })
        );
    }

    /// What the PodMonitor selects and names is what the Deployments' pods carry.
    #[test]
    fn every_selected_pod_has_the_port_it_names() {
        let children = built(json!({"monitoring": {"podMonitor": {"enabled": true}}}));
        let [monitor] = <[DynamicObject; 1]>::try_from(children.pod_monitors).unwrap();
        let spec = &monitor.data["spec"];
        let port = spec["podMetricsEndpoints"][0]["port"].as_str().unwrap();
        assert!(spec["podMetricsEndpoints"][0].get("interval").is_none());
        let components = spec["selector"]["matchExpressions"][0]["values"]
            .as_array()
            .unwrap();
        assert_eq!(components.len(), children.deployments.len());
        for deployment in &children.deployments {
            let template = &deployment.spec.as_ref().unwrap().template;
            let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
            assert_eq!(labels[PIPELINE_LABEL], "shop");
            assert!(components.contains(&json!(labels[COMPONENT_LABEL])));
            let admin = template.spec.as_ref().unwrap().containers[0]
                .ports
                .iter()
                .flatten()
                .find(|container_port| container_port.name.as_deref() == Some(port))
                .unwrap_or_else(|| panic!("{labels:?} has no port {port}"));
            assert_eq!(
                admin.container_port,
                i32::from(pipeline_contract::ports::ADMIN)
            );
        }
    }
}
