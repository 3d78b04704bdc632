//! The fourth step: the built children written to the cluster, by server-side apply with the
//! operator's one field manager, in an order that never starts a pod before what it needs. A
//! converged pipeline skips the writes when the [`ledger`](super::ledger) and the caches show
//! nothing changed; a PodDisruptionBudget the build no longer wants is deleted.
//!
//! Every kind of child is named here without a catch-all, in [`apply_all`] and in the ownership
//! check: a new kind in [`Children`] does not compile until both handle it (and the ledger's
//! fingerprint).

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::{self, Children};
use super::validate::ValidatedPipeline;
use super::{Context, ledger, ownership};
use crate::monitoring;

/// Why the children could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Check(#[from] ownership::CheckError),
    #[error("failed to apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to delete {kind} {name}, which the pipeline no longer wants: {source}")]
    Prune {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Monitoring(#[from] monitoring::Error),
}

impl Error {
    /// The Event and condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Check(ownership::CheckError::Foreign(_)) => ownership::Foreign::REASON,
            Error::Check(ownership::CheckError::Lookup { .. }) | Error::Apply { .. } => {
                "ApplyFailed"
            }
            Error::Prune { .. } => "PruneFailed",
            Error::Monitoring(error) => error.reason(),
        }
    }
}

/// The children the status is computed from, as the API server returned them after applying
/// (or as the caches show them, when the apply was skipped).
#[derive(Debug, Default)]
pub struct Applied {
    pub deployments: Vec<Arc<Deployment>>,
    pub stateful_sets: Vec<Arc<StatefulSet>>,
    pub services: Vec<Arc<Service>>,
    pub monitoring: monitoring::Outcome,
}

/// Applies every child, unless the ledger shows that exactly these children were applied
/// recently and the caches show them untouched since.
pub async fn apply(
    valid: &ValidatedPipeline<'_>,
    children: Children,
    context: &Context,
) -> Result<Applied, Error> {
    let uid = &valid.uid;
    let fingerprint = ledger::fingerprint(&children);
    let now = Instant::now();
    if let Some(entry) = context.ledger.fresh(uid, fingerprint, now)
        && let Some(applied) = unchanged(&entry, valid, context).await
    {
        context.metrics.applies_skipped.inc();
        return Ok(applied);
    }
    context.metrics.full_applies.inc();
    let result = apply_checked(valid, children, context).await;
    match &result {
        Ok(applied) => context
            .ledger
            .record(uid, ledger::Entry::new(fingerprint, applied, now)),
        Err(_) => context.ledger.forget(uid),
    }
    result
}

/// The recorded children as the caches show them, when none drifted.
async fn unchanged(
    entry: &ledger::Entry,
    valid: &ValidatedPipeline<'_>,
    context: &Context,
) -> Option<Applied> {
    let namespace = &valid.namespace;
    let (deployments, stateful_sets, services) = entry.names();
    let reader = &context.reader;
    let mut found = Applied::default();
    // A read error is only a lost shortcut: the full apply decides.
    for name in deployments {
        found
            .deployments
            .extend(reader.cached(namespace, name).await.ok()?);
    }
    for name in stateful_sets {
        found
            .stateful_sets
            .extend(reader.cached(namespace, name).await.ok()?);
    }
    for name in services {
        found
            .services
            .extend(reader.cached(namespace, name).await.ok()?);
    }
    entry.unchanged(found.deployments, found.stateful_sets, found.services)
}

async fn apply_checked(
    valid: &ValidatedPipeline<'_>,
    children: Children,
    context: &Context,
) -> Result<Applied, Error> {
    let client = &context.client;
    let namespace = &valid.namespace;
    ownership::check_children(
        client,
        &context.reader,
        namespace,
        valid.pipeline,
        &children,
    )
    .await?;
    let wanted_budgets: Vec<String> = children
        .disruption_budgets
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let applied = apply_all(client, valid, &context.settings.monitoring, children).await?;
    prune_disruption_budgets(client, valid, &wanted_budgets).await?;
    Ok(applied)
}

/// Deletes the pipeline's PodDisruptionBudgets that the build no longer wants: a component scaled
/// back to one replica must not keep a budget that blocks draining its only pod. (The other kinds
/// of child are wanted for as long as the pipeline exists, whatever its spec.)
async fn prune_disruption_budgets(
    client: &Client,
    valid: &ValidatedPipeline<'_>,
    wanted: &[String],
) -> Result<(), Error> {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &valid.namespace);
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={}",
        valid.name,
        build::MANAGED_BY
    );
    let budgets = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Prune {
            kind: "PodDisruptionBudget",
            name: format!("(the list of {selector})"),
            source,
        })?;
    for budget in budgets {
        let name = budget.name_any();
        // Only what this pipeline owns: a user's object with the same labels is not ours.
        if !ownership::controlled_by(&budget.metadata, valid.pipeline) || wanted.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(budget = %name, "deleted a disruption budget no longer wanted")
            }
            Err(kube::Error::Api(response)) if response.code == 404 => {}
            Err(source) => {
                return Err(Error::Prune {
                    kind: "PodDisruptionBudget",
                    name,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Applies every kind of child, in order: the NetworkPolicies first, so nothing runs unprotected
/// even if a later apply fails; then configuration and credentials, so pods never start without
/// them; stateful dependencies before the workloads that need them. The PodMonitor comes last:
/// scraping what does not run yet would only report it down.
async fn apply_all(
    client: &Client,
    valid: &ValidatedPipeline<'_>,
    monitoring_api: &monitoring::MonitoringApi,
    children: Children,
) -> Result<Applied, Error> {
    let namespace = valid.namespace.as_str();
    let Children {
        secrets,
        config_maps,
        services,
        stateful_sets,
        jobs,
        deployments,
        disruption_budgets,
        network_policies,
        pod_monitors,
    } = children;
    for policy in &network_policies {
        apply_one::<NetworkPolicy>(client, namespace, policy).await?;
    }
    for secret in &secrets {
        apply_one::<Secret>(client, namespace, secret).await?;
    }
    for config_map in &config_maps {
        apply_one::<ConfigMap>(client, namespace, config_map).await?;
    }
    let mut applied = Applied::default();
    for service in &services {
        applied
            .services
            .push(Arc::new(apply_one(client, namespace, service).await?));
    }
    for stateful_set in &stateful_sets {
        applied
            .stateful_sets
            .push(Arc::new(apply_one(client, namespace, stateful_set).await?));
    }
    for job in &jobs {
        apply_one::<Job>(client, namespace, job).await?;
    }
    for deployment in &deployments {
        applied
            .deployments
            .push(Arc::new(apply_one(client, namespace, deployment).await?));
    }
    for budget in &disruption_budgets {
        apply_one::<PodDisruptionBudget>(client, namespace, budget).await?;
    }
    applied.monitoring =
        monitoring::apply(client, monitoring_api, valid.pipeline, &pod_monitors).await?;
    Ok(applied)
}

async fn apply_one<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(build::MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: kind_name::<K>(),
        name,
        source,
    })
}

/// `Deployment` for `k8s_openapi::api::apps::v1::Deployment`.
pub(super) fn kind_name<K>() -> &'static str {
    std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object")
}
