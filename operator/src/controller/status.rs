//! The last step: what the applied children say about the pipeline's health, as standard
//! conditions (`Ready`, `Progressing`, `Degraded`) so `kubectl wait --for=condition=Ready` works.
//! A condition's transition time changes only when its status does, so a converged pipeline's
//! status is byte-identical from one reconcile to the next and is not written again.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use pipeline_api::{
    ComponentStatus, Condition, Endpoints, OrderPipeline, OrderPipelineStatus,
    RabbitmqClusterStatus, ScalingDecision,
};
use pipeline_contract::{ports, probes};
use serde_json::json;

use super::apply::Applied;
use super::build::{COMPONENT_LABEL, MANAGER, Workload};
use super::ledger::FULL_APPLY_INTERVAL;
use crate::management;
use crate::monitoring;

/// Why the status could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read the status: {0}")]
    Read(#[source] kube::Error),
    #[error("failed to update the status: {0}")]
    Write(#[source] kube::Error),
}

impl Error {
    /// The Event and condition reason.
    pub fn reason(&self) -> &'static str {
        "StatusFailed"
    }
}

/// A condition change worth an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub reason: String,
    pub message: String,
}

/// What the reconcile saw: the applied children, the autoscaler's decisions, and a clustered
/// RabbitMQ's reading.
#[derive(Debug)]
pub struct Observed<'a> {
    pub applied: &'a Applied,
    pub decisions: &'a [(Workload, ScalingDecision)],
    pub rabbitmq: Option<&'a RabbitmqClusterStatus>,
}

/// The status after a successful apply, and the transitions to announce.
///
/// `pipeline` is the object the children were built from (its generation is the one observed);
/// `previous` is the status to carry transition times over from, which may be fresher.
pub fn compute(
    pipeline: &OrderPipeline,
    previous: Option<&OrderPipelineStatus>,
    observed: &Observed<'_>,
) -> (OrderPipelineStatus, Vec<Transition>) {
    let Observed {
        applied,
        decisions,
        rabbitmq,
    } = *observed;
    let mut components = BTreeMap::new();
    let replicas = |spec: Option<i32>, ready: Option<i32>| ComponentStatus {
        desired_replicas: spec.unwrap_or(1),
        ready_replicas: ready.unwrap_or(0),
    };
    for deployment in &applied.deployments {
        components.insert(
            component_of(deployment.metadata.labels.as_ref()),
            replicas(
                deployment.spec.as_ref().and_then(|spec| spec.replicas),
                deployment
                    .status
                    .as_ref()
                    .and_then(|status| status.ready_replicas),
            ),
        );
    }
    for stateful_set in &applied.stateful_sets {
        components.insert(
            component_of(stateful_set.metadata.labels.as_ref()),
            replicas(
                stateful_set.spec.as_ref().and_then(|spec| spec.replicas),
                stateful_set
                    .status
                    .as_ref()
                    .and_then(|status| status.ready_replicas),
            ),
        );
    }
    let mut not_ready: Vec<String> = components
        .iter()
        .filter(|(_, status)| status.ready_replicas < status.desired_replicas)
        .map(|(name, status)| {
            format!(
                "{name} {}/{}",
                status.ready_replicas, status.desired_replicas
            )
        })
        .collect();
    let ready_count = components.len() - not_ready.len();
    // Ready pods are not yet a cluster: every node must have joined, and every workload queue
    // must have a member on each.
    if let (Some(cluster), Some(managed)) = (rabbitmq, pipeline.spec.rabbitmq.managed.as_ref())
        && let Some(missing) = management::incomplete(cluster, managed.replicas)
    {
        not_ready.push(missing);
    }
    let all_ready = not_ready.is_empty();
    let name = pipeline.name_any();
    let namespace = pipeline.namespace().unwrap_or_default();
    let previous = previous.cloned().unwrap_or_default();
    let generation = pipeline.metadata.generation;
    let mut conditions = vec![
        if all_ready {
            condition(
                &previous,
                generation,
                "Ready",
                "True",
                "AllComponentsReady",
                "every component has its desired replicas ready".into(),
            )
        } else {
            condition(
                &previous,
                generation,
                "Ready",
                "False",
                "ComponentsNotReady",
                format!("waiting for {}", not_ready.join(", ")),
            )
        },
        if all_ready {
            condition(
                &previous,
                generation,
                "Progressing",
                "False",
                "Converged",
                "the pipeline matches its spec".into(),
            )
        } else {
            condition(
                &previous,
                generation,
                "Progressing",
                "True",
                "RollingOut",
                format!("waiting for {}", not_ready.join(", ")),
            )
        },
        condition(
            &previous,
            generation,
            "Degraded",
            "False",
            "Reconciled",
            "the last reconcile succeeded".into(),
        ),
    ];
    conditions.extend(monitoring_condition(
        &previous,
        generation,
        &applied.monitoring,
    ));
    let transitions = transitions(&previous.conditions, &conditions);
    let status = OrderPipelineStatus {
        observed_generation: generation,
        phase: Some(if all_ready { "Ready" } else { "Progressing" }.to_owned()),
        ready_components: Some(format!("{ready_count}/{}", components.len())),
        conditions,
        components,
        endpoints: Endpoints {
            gateway: Some(format!(
                "http://{name}-gateway.{namespace}.svc:{}",
                ports::GATEWAY_HTTP
            )),
            dashboard: Some(format!(
                "http://{name}-dashboard.{namespace}.svc:{}",
                ports::DASHBOARD_HTTP
            )),
        },
        autoscaler: {
            // Only decisions that changed a count are recorded, so a steady pipeline's status
            // stays byte-identical between polls.
            let mut autoscaler = previous.autoscaler.clone();
            for (workload, decision) in decisions {
                autoscaler.insert(workload.name().to_owned(), decision.clone());
            }
            autoscaler
        },
        rabbitmq: rabbitmq.cloned(),
    };
    (status, transitions)
}

/// The status while reconciliation is paused: what was last seen, marked as paused.
pub fn paused(pipeline: &OrderPipeline) -> OrderPipelineStatus {
    let previous = pipeline.status.clone().unwrap_or_default();
    let generation = pipeline.metadata.generation;
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != "Progressing")
        .cloned()
        .collect();
    conditions.push(condition(
        &previous,
        generation,
        "Progressing",
        "False",
        "Paused",
        "reconciliation is paused (spec.paused)".into(),
    ));
    conditions.sort_by_key(|condition| condition_order(&condition.type_));
    OrderPipelineStatus {
        observed_generation: generation,
        phase: Some("Paused".into()),
        conditions,
        ..previous
    }
}

/// The status after a failed reconcile: the children as last seen, `Degraded` with the reason.
pub fn degraded(pipeline: &OrderPipeline, reason: &str, message: &str) -> OrderPipelineStatus {
    let previous = pipeline.status.clone().unwrap_or_default();
    let generation = pipeline.metadata.generation;
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != "Degraded")
        .cloned()
        .collect();
    conditions.push(condition(
        &previous,
        generation,
        "Degraded",
        "True",
        reason,
        message.to_owned(),
    ));
    conditions.sort_by_key(|condition| condition_order(&condition.type_));
    OrderPipelineStatus {
        phase: Some("Degraded".into()),
        conditions,
        ..previous
    }
}

/// Writes the status unless it is unchanged.
pub async fn write(
    pipeline: &OrderPipeline,
    client: &Client,
    status: OrderPipelineStatus,
) -> Result<(), Error> {
    if pipeline.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<OrderPipeline> =
        Api::namespaced(client.clone(), &pipeline.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": OrderPipeline::api_version(&()),
        "kind": OrderPipeline::kind(&()),
        "status": status,
    });
    api.patch_status(
        &pipeline.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Write)?;
    Ok(())
}

/// The status `observed` gives, judged against the freshest status: the watch cache may not
/// show the operator's last status write yet, and judged against it the status would be
/// rewritten (and its conditions restamped) for nothing. So when a write seems due, the status
/// is read first: one GET, only then. Returns the transitions to announce, once the write
/// succeeded.
pub async fn update(
    pipeline: &OrderPipeline,
    client: &Client,
    observed: &Observed<'_>,
) -> Result<Vec<Transition>, Error> {
    let (mut status, mut transitions) = compute(pipeline, pipeline.status.as_ref(), observed);
    if pipeline.status.as_ref() == Some(&status) {
        return Ok(transitions);
    }
    let api: Api<OrderPipeline> =
        Api::namespaced(client.clone(), &pipeline.namespace().unwrap_or_default());
    let current = api
        .get_status(&pipeline.name_any())
        .await
        .map_err(Error::Read)?;
    (status, transitions) = compute(pipeline, current.status.as_ref(), observed);
    write(&current, client, status).await?;
    Ok(transitions)
}

/// The [`monitoring::CONDITION`], while the spec asks for a PodMonitor: applied, or why not.
fn monitoring_condition(
    previous: &OrderPipelineStatus,
    generation: Option<i64>,
    outcome: &monitoring::Outcome,
) -> Option<Condition> {
    let (status, reason, message) = match outcome {
        monitoring::Outcome::Off => return None,
        monitoring::Outcome::Applied { name } => (
            "True",
            "PodMonitorApplied",
            format!(
                "PodMonitor {name} has the Prometheus Operator scrape the workloads' {} on port {}",
                probes::METRICS,
                ports::ADMIN
            ),
        ),
        monitoring::Outcome::Unavailable { group_version } => (
            "False",
            "PrometheusOperatorMissing",
            format!(
                "spec.monitoring.podMonitor.enabled is set, but the API server serves no \
                 {group_version} PodMonitor: install the Prometheus Operator's CRDs (the \
                 operator looks again at least every {} seconds)",
                FULL_APPLY_INTERVAL.as_secs()
            ),
        ),
    };
    Some(condition(
        previous,
        generation,
        monitoring::CONDITION,
        status,
        reason,
        message,
    ))
}

fn component_of(labels: Option<&BTreeMap<String, String>>) -> String {
    labels
        .and_then(|labels| labels.get(COMPONENT_LABEL))
        .cloned()
        .unwrap_or_else(|| "unknown".into())
}

fn condition_order(type_: &str) -> u8 {
    match type_ {
        "Ready" => 0,
        "Progressing" => 1,
        "Degraded" => 2,
        monitoring::CONDITION => 3,
        _ => 4,
    }
}

/// A condition that keeps its previous transition time unless its status changed.
fn condition(
    previous: &OrderPipelineStatus,
    generation: Option<i64>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> Condition {
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Timestamp::now().to_string());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

fn transitions(before: &[Condition], after: &[Condition]) -> Vec<Transition> {
    after
        .iter()
        .filter(|c| c.type_ == "Ready" || c.type_ == monitoring::CONDITION)
        .filter(|c| {
            before
                .iter()
                .find(|b| b.type_ == c.type_)
                .map(|b| &b.status)
                != Some(&c.status)
        })
        .map(|c| Transition {
            reason: match (c.type_.as_str(), c.status.as_str()) {
                ("Ready", "True") => "PipelineReady".into(),
                ("Ready", _) => "PipelineNotReady".into(),
                // PodMonitorApplied, PrometheusOperatorMissing.
                _ => c.reason.clone(),
            },
            message: c.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::core::ObjectMeta;

    use super::*;

    fn pipeline() -> OrderPipeline {
        let mut pipeline = OrderPipeline::new("shop", serde_json::from_str("{}").unwrap());
        pipeline.metadata = ObjectMeta {
            name: Some("shop".into()),
            namespace: Some("store".into()),
            generation: Some(3),
            ..ObjectMeta::default()
        };
        pipeline
    }

    fn deployment(component: &str, desired: i32, ready: i32) -> std::sync::Arc<Deployment> {
        std::sync::Arc::new(serde_json::from_value(json!({
            "metadata": {"name": format!("shop-{component}"), "labels": {"app.kubernetes.io/component": component}},
            "spec": {"replicas": desired, "selector": {}, "template": {}},
            "status": {"readyReplicas": ready},
        }))
        .unwrap())
    }

    fn observed(applied: &Applied) -> Observed<'_> {
        Observed {
            applied,
            decisions: &[],
            rabbitmq: None,
        }
    }

    #[test]
    fn a_clustered_rabbitmq_is_ready_only_with_every_node_and_queue_member() {
        let mut pipeline = pipeline();
        pipeline.spec.rabbitmq.managed = Some(pipeline_api::ManagedDependency {
            replicas: 3,
            ..pipeline_api::ManagedDependency::default()
        });
        let stateful_set: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "shop-rabbitmq", "labels": {"app.kubernetes.io/component": "rabbitmq"}},
            "spec": {"replicas": 3, "selector": {}, "serviceName": "shop-rabbitmq-headless", "template": {}},
            "status": {"replicas": 3, "readyReplicas": 3},
        }))
        .unwrap();
        let applied = Applied {
            stateful_sets: vec![std::sync::Arc::new(stateful_set)],
            ..Applied::default()
        };
        let mut cluster = RabbitmqClusterStatus {
            running_nodes: vec!["rabbit@a".into(), "rabbit@b".into()],
            queue_members: BTreeMap::from([("orders.queue".to_owned(), 3)]),
            error: None,
        };
        let seen = |cluster: &RabbitmqClusterStatus| {
            compute(
                &pipeline,
                None,
                &Observed {
                    applied: &applied,
                    decisions: &[],
                    rabbitmq: Some(cluster),
                },
            )
            .0
        };
        let status = seen(&cluster);
        assert_eq!(
            status.phase.as_deref(),
            Some("Progressing"),
            "3 ready pods, 2 nodes"
        );
        assert_eq!(
            status.conditions[0].message,
            "waiting for RabbitMQ cluster 2/3 nodes"
        );
        assert_eq!(status.ready_components.as_deref(), Some("1/1"));
        cluster.running_nodes.push("rabbit@c".into());
        cluster.queue_members.insert("notifier.queue".into(), 1);
        let status = seen(&cluster);
        assert_eq!(
            status.conditions[0].message,
            "waiting for notifier.queue 1/3 members"
        );
        cluster.queue_members.insert("notifier.queue".into(), 3);
        let status = seen(&cluster);
        assert_eq!(status.phase.as_deref(), Some("Ready"));
        assert_eq!(status.rabbitmq.as_ref(), Some(&cluster), "reported as read");
    }

    #[test]
    fn ready_only_when_every_component_is() {
        let applied = Applied {
            deployments: vec![deployment("gateway", 2, 2), deployment("processor", 1, 0)],
            ..Applied::default()
        };
        let (status, transitions) = compute(&pipeline(), None, &observed(&applied));
        assert_eq!(status.phase.as_deref(), Some("Progressing"));
        assert_eq!(status.ready_components.as_deref(), Some("1/2"));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.conditions[0].status, "False");
        assert_eq!(status.conditions[0].message, "waiting for processor 0/1");
        assert_eq!(transitions.len(), 1);
        assert_eq!(
            status.endpoints.gateway.as_deref(),
            Some("http://shop-gateway.store.svc:8080")
        );

        let mut converged = pipeline();
        converged.status = Some(status);
        let applied = Applied {
            deployments: vec![deployment("gateway", 2, 2), deployment("processor", 1, 1)],
            ..Applied::default()
        };
        let (status, transitions) =
            compute(&converged, converged.status.as_ref(), &observed(&applied));
        assert_eq!(status.phase.as_deref(), Some("Ready"));
        assert_eq!(status.conditions[0].reason, "AllComponentsReady");
        assert_eq!(transitions[0].reason, "PipelineReady");

        // Once converged, computing again yields the identical status: no write, no event.
        let mut steady = converged.clone();
        steady.status = Some(status.clone());
        let (again, transitions) = compute(&steady, steady.status.as_ref(), &observed(&applied));
        assert_eq!(again, status);
        assert!(transitions.is_empty());
    }

    #[test]
    fn the_monitoring_condition_follows_the_pod_monitor() {
        let off = Applied::default();
        let (status, _) = compute(&pipeline(), None, &observed(&off));
        assert!(
            status.conditions.iter().all(|c| c.type_ != "Monitoring"),
            "no condition while none is asked for"
        );

        let missing = Applied {
            monitoring: monitoring::Outcome::Unavailable {
                group_version: "monitoring.coreos.com/v1".into(),
            },
            ..Applied::default()
        };
        let (status, transitions) = compute(&pipeline(), None, &observed(&missing));
        let condition = status.conditions.last().unwrap();
        assert_eq!(
            (
                condition.type_.as_str(),
                condition.status.as_str(),
                condition.reason.as_str()
            ),
            ("Monitoring", "False", "PrometheusOperatorMissing")
        );
        assert!(
            condition
                .message
                .contains("install the Prometheus Operator's CRDs")
        );
        assert!(
            transitions
                .iter()
                .any(|t| t.reason == "PrometheusOperatorMissing"),
            "announced once: {transitions:?}"
        );
        // Still missing at the next reconcile: nothing new to announce, the status unchanged.
        let mut waiting = pipeline();
        waiting.status = Some(status.clone());
        let (again, transitions) = compute(&waiting, waiting.status.as_ref(), &observed(&missing));
        assert_eq!(again, status);
        assert!(
            transitions
                .iter()
                .all(|t| t.reason != "PrometheusOperatorMissing")
        );

        let applied = Applied {
            monitoring: monitoring::Outcome::Applied {
                name: "shop-workloads".into(),
            },
            ..Applied::default()
        };
        let (status, transitions) = compute(&waiting, waiting.status.as_ref(), &observed(&applied));
        let condition = status.conditions.last().unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "PodMonitorApplied")
        );
        assert!(transitions.iter().any(|t| t.reason == "PodMonitorApplied"));
    }

    #[test]
    fn a_failure_marks_degraded_and_keeps_the_rest() {
        let mut failing = pipeline();
        let applied = Applied {
            deployments: vec![deployment("gateway", 1, 1)],
            ..Applied::default()
        };
        failing.status = Some(compute(&failing, None, &observed(&applied)).0);
        let status = degraded(
            &failing,
            "ApplyFailed",
            "failed to apply Deployment shop-gateway: forbidden",
        );
        assert_eq!(status.phase.as_deref(), Some("Degraded"));
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ApplyFailed")
        );
        assert_eq!(status.components.len(), 1);
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Progressing", "Degraded"]);
    }
}
