//! Every child object's name, and the DNS names the pods reach each other by, in one place.
//! A StatefulSet's, a Service's or a Secret's name must never change once it exists (the data,
//! the clients' addresses and the generated passwords are found by it). Each takes the
//! pipeline's name (at most 40 characters).
//!
//! Crate-visible: the dereference step and the controller read children by these names too.

use super::{Dependency, Workload};

/// The generated JWT signing key's Secret, when the spec references none of the user's own.
pub(crate) fn jwt_secret(pipeline: &str) -> String {
    format!("{pipeline}-jwt")
}

/// The PodMonitor of the four workloads (`spec.monitoring.podMonitor`).
pub(crate) fn pod_monitor(pipeline: &str) -> String {
    format!("{pipeline}-workloads")
}

/// A workload's Deployment, and its Service, PodDisruptionBudget and NetworkPolicy.
pub(crate) fn workload(pipeline: &str, workload: Workload) -> String {
    format!("{pipeline}-{}", workload.name())
}

/// A managed dependency's StatefulSet, and its client Service, PodDisruptionBudget and
/// NetworkPolicy; also the Cassandra cluster's name.
pub(crate) fn dependency(pipeline: &str, dependency: Dependency) -> String {
    format!("{pipeline}-{}", dependency.name())
}

/// A managed dependency's headless Service, the StatefulSet's `serviceName`: its pods' DNS names
/// are in its domain.
pub(crate) fn headless_service(pipeline: &str, dependency: Dependency) -> String {
    format!("{pipeline}-{}-headless", dependency.name())
}

/// A managed dependency's credentials Secret.
pub(crate) fn credentials_secret(pipeline: &str, dependency: Dependency) -> String {
    format!("{pipeline}-{}-credentials", dependency.name())
}

/// The managed RabbitMQ's configuration ConfigMap.
pub(crate) fn rabbitmq_config(pipeline: &str) -> String {
    format!("{pipeline}-rabbitmq-config")
}

/// A Job whose name ends in a hash of its spec (see `meta::hashed_job_name`): Cassandra's
/// credentials Job (`cassandra-auth`) and RabbitMQ's queue-membership Job (`rabbitmq-grow`).
pub(crate) fn hashed_job(pipeline: &str, component: &str, hash: &str) -> String {
    format!("{pipeline}-{component}-{hash}")
}

/// The client Service's host name: `<pipeline>-redis.<namespace>.svc`.
pub(crate) fn service_host(pipeline: &str, dependency: Dependency, namespace: &str) -> String {
    format!("{}.{namespace}.svc", self::dependency(pipeline, dependency))
}

/// The headless Service's domain, in which each pod of the StatefulSet has its name:
/// `<pipeline>-rabbitmq-headless.<namespace>.svc`.
pub(crate) fn headless_domain(pipeline: &str, dependency: Dependency, namespace: &str) -> String {
    format!("{}.{namespace}.svc", headless_service(pipeline, dependency))
}

/// The host name of a managed dependency's pod `index`, which resolves before the pod is ready:
/// `<pipeline>-rabbitmq-<index>.<pipeline>-rabbitmq-headless.<namespace>.svc`.
pub(crate) fn pod_host(
    pipeline: &str,
    dependency: Dependency,
    index: i32,
    namespace: &str,
) -> String {
    format!(
        "{}-{index}.{}",
        self::dependency(pipeline, dependency),
        headless_domain(pipeline, dependency, namespace)
    )
}
