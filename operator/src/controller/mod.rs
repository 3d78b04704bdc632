//! Reconciliation of OrderPipeline resources: `dereference` → `build` → `apply` → `status`.
//!
//! Every write is a server-side apply by one field manager ([`build::MANAGER`]), and every child
//! carries a controller owner reference, so deleting the resource garbage-collects its children.
//! Because `build` is deterministic and an apply of unchanged content is a no-op in the API
//! server, a converged pipeline costs no writes per resync; the status is patched only when it
//! changed.

pub mod build;
pub mod dereference;
pub mod ledger;
pub mod ownership;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use build::Workload;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use pipeline_api::{OrderPipeline, ScalingDecision};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::autoscale;
use crate::metrics::{ErrorKind, Metrics};

/// Reconciles that run at once (of different pipelines; one pipeline is never reconciled twice at
/// once). A reconcile mostly waits on the API server, so a few dozen keep it busy; unbounded, a
/// burst of 100 new pipelines held 100 reconciles' objects and connections in memory at once.
pub const CONCURRENT_RECONCILES: u16 = 16;

/// What every reconcile needs.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The workload images' default tag.
    pub version: String,
    /// The images new managed dependencies run when their spec names none, and who outside a
    /// pipeline may reach its private ports.
    pub settings: build::Settings,
    /// For RabbitMQ's management API (queue depths).
    pub http: reqwest::Client,
    pub windows: Arc<autoscale::Windows>,
    /// What was last applied to each pipeline.
    pub ledger: Arc<ledger::Ledger>,
    /// Where pipelines are watched.
    pub scope: Scope,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        version: impl Into<String>,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            version: version.into(),
            settings: build::Settings::default(),
            http: reqwest::Client::new(),
            windows: Arc::default(),
            ledger: Arc::default(),
            scope: Scope::Cluster,
        }
    }

    /// The same context watching only `scope`.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The same context with other default images for the managed dependencies (by default the
    /// official ones compiled in).
    pub fn with_dependency_images(mut self, images: build::DependencyImages) -> Self {
        self.settings.images = images;
        self
    }

    /// The same context with `access` to the pipelines' private ports.
    pub fn with_access(mut self, access: build::Access) -> Self {
        self.settings.access = access;
        self
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("version", &self.version)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A reconcile failure, naming the step and the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {what}: {source}")]
    Dereference {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {0} referenced by the spec does not exist")]
    MissingSecret(String),
    #[error(
        "{kind} {name} already exists and is not this pipeline's ({owner}); the operator does not \
         change or delete it: rename or remove it, or give the pipeline another name"
    )]
    Foreign {
        kind: &'static str,
        name: String,
        owner: String,
    },
    #[error("invalid OrderPipeline: {0}")]
    Build(#[from] build::BuildError),
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
    #[error("failed to update the status: {0}")]
    Status(#[source] kube::Error),
    #[error(
        "refusing to scale {dependency} down from {from} to {to} replicas: the removed nodes' data would be lost; \
         set spec.{dependency}.managed.allowDataLossOnScaleDown to proceed"
    )]
    ScaleDownRefused {
        dependency: &'static str,
        from: i32,
        to: i32,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Dereference { .. } | Error::MissingSecret(_) | Error::Foreign { .. } => {
                ErrorKind::Dereference
            }
            Error::Build(_) | Error::ScaleDownRefused { .. } => ErrorKind::Build,
            Error::Apply { .. } | Error::Prune { .. } => ErrorKind::Apply,
            Error::Status(_) => ErrorKind::Status,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Error::Dereference { .. } => "DereferenceFailed",
            Error::MissingSecret(_) => "SecretMissing",
            Error::Foreign { .. } => "ForeignObject",
            Error::Build(_) => "InvalidSpec",
            Error::ScaleDownRefused { .. } => "ScaleDownRefused",
            Error::Apply { .. } => "ApplyFailed",
            Error::Prune { .. } => "PruneFailed",
            Error::Status(_) => "StatusFailed",
        }
    }
}

/// The children as the API server returned them after applying.
#[derive(Debug, Default)]
pub struct Applied {
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
}

/// Reconciles one pipeline.
pub async fn reconcile(
    pipeline: Arc<OrderPipeline>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    context.metrics.reconciles.inc();
    let started = Instant::now();
    let result = reconcile_steps(&pipeline, &context).await;
    context
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_steps(pipeline: &OrderPipeline, context: &Context) -> Result<Action, Error> {
    let namespace = pipeline.namespace().unwrap_or_default();
    if pipeline.spec.paused {
        // Whatever is changed by hand meanwhile, resuming applies everything again.
        context.ledger.forget(&pipeline.uid().unwrap_or_default());
        status::write(pipeline, &context.client, status::paused(pipeline)).await?;
        return Ok(Action::await_change());
    }
    let secrets = dereference::secrets(pipeline, &context.client).await?;
    let running = running_dependencies(pipeline, &context.client, &namespace).await?;
    let (overrides, decisions) = autoscale_step(pipeline, &secrets, &namespace, context).await?;
    for (_, decision) in &decisions {
        publish(
            context,
            pipeline,
            EventType::Normal,
            "Scaled",
            decision.reason.clone(),
        )
        .await;
    }
    let children = build::build(
        pipeline,
        &secrets,
        &overrides,
        &running,
        &context.settings,
        &context.version,
    )?;
    let applied = apply_or_observe(pipeline, &namespace, children, context).await?;
    let cluster = rabbitmq_cluster(pipeline, &secrets, context).await;
    let observed = status::Observed {
        applied: &applied,
        decisions: &decisions,
        rabbitmq: cluster.as_ref(),
    };
    let (mut new_status, mut transitions) =
        status::compute(pipeline, pipeline.status.as_ref(), &observed);
    let mut current = pipeline.clone();
    if pipeline.status.as_ref() != Some(&new_status) {
        // The watch cache may not show our last status write yet; judged against it, the
        // status would be rewritten (and its conditions restamped) for nothing. Read it fresh
        // first: one GET, only when a write seems due.
        let api: Api<OrderPipeline> = Api::namespaced(context.client.clone(), &namespace);
        current = api
            .get_status(&pipeline.name_any())
            .await
            .map_err(Error::Status)?;
        (new_status, transitions) = status::compute(pipeline, current.status.as_ref(), &observed);
    }
    for transition in transitions {
        publish(
            context,
            pipeline,
            EventType::Normal,
            &transition.reason,
            transition.message,
        )
        .await;
    }
    status::write(&current, &context.client, new_status).await?;
    // Children's changes trigger reconciles through the watches; the requeue is the safety net,
    // and the autoscaler's polling interval when it is on.
    let autoscaling = pipeline.spec.processor.autoscaling.is_some()
        || pipeline.spec.notifier.autoscaling.is_some();
    Ok(Action::requeue(Duration::from_secs(if autoscaling {
        15
    } else {
        300
    })))
}

/// Replica counts for the autoscaled workloads, and the decisions that changed one.
async fn autoscale_step(
    pipeline: &OrderPipeline,
    secrets: &build::Secrets,
    namespace: &str,
    context: &Context,
) -> Result<(build::ReplicaOverrides, Vec<(Workload, ScalingDecision)>), Error> {
    let mut overrides = build::ReplicaOverrides::new();
    let mut decisions = Vec::new();
    let deployments: Api<Deployment> = Api::namespaced(context.client.clone(), namespace);
    for (workload, spec) in [
        (Workload::Processor, &pipeline.spec.processor),
        (Workload::Notifier, &pipeline.spec.notifier),
    ] {
        let Some(bounds) = &spec.autoscaling else {
            continue;
        };
        let name = build::names::workload(&pipeline.name_any(), workload);
        let current = deployments
            .get_opt(&name)
            .await
            .map_err(|source| Error::Dereference {
                what: format!("Deployment {name}"),
                source,
            })?
            .and_then(|deployment| deployment.spec.and_then(|spec| spec.replicas))
            .unwrap_or(spec.workload.replicas);
        let (Some(management), Some(queue)) =
            (management(pipeline, secrets), autoscale::queue_of(workload))
        else {
            overrides.insert(workload, current);
            continue;
        };
        let depth = match autoscale::depth(&context.http, &management, queue).await {
            Ok(depth) => depth,
            Err(error) => {
                // Without a reading, keep what runs: never fall back to the spec's count.
                tracing::warn!(pipeline = %pipeline.name_any(), %error, "autoscaler cannot read the queue depth");
                overrides.insert(workload, current);
                continue;
            }
        };
        let now = Instant::now();
        let (decision, pending) = autoscale::decide(
            current,
            depth,
            bounds,
            context.windows.get(pipeline, workload),
            now,
        );
        context.windows.set(pipeline, workload, pending);
        overrides.insert(workload, decision.replicas);
        if decision.replicas != current {
            decisions.push((
                workload,
                ScalingDecision {
                    queue: queue.to_owned(),
                    queue_depth: depth,
                    from_replicas: current,
                    to_replicas: decision.replicas,
                    reason: decision.reason,
                    time: k8s_openapi::jiff::Timestamp::now().to_string(),
                },
            ));
        }
    }
    Ok((overrides, decisions))
}

/// A managed RabbitMQ cluster's nodes and queue members, read from its management API, when it
/// has more than one node: one node is a whole cluster by itself, and its StatefulSet's readiness
/// says all there is. A failed reading keeps the last one, marked with the error.
async fn rabbitmq_cluster(
    pipeline: &OrderPipeline,
    secrets: &build::Secrets,
    context: &Context,
) -> Option<pipeline_api::RabbitmqClusterStatus> {
    let managed = pipeline.spec.rabbitmq.managed.as_ref()?;
    if managed.replicas <= 1 {
        return None;
    }
    let management = management(pipeline, secrets)?;
    match management.cluster(&context.http).await {
        Ok(cluster) => Some(cluster),
        Err(error) => {
            tracing::warn!(pipeline = %pipeline.name_any(), %error, "cannot read the RabbitMQ cluster");
            let mut last = pipeline
                .status
                .as_ref()
                .and_then(|status| status.rabbitmq.clone())
                .unwrap_or_default();
            last.error = Some(error.to_string());
            Some(last)
        }
    }
}

/// Where the pipeline's RabbitMQ management API answers, with what credentials.
fn management(pipeline: &OrderPipeline, secrets: &build::Secrets) -> Option<autoscale::Management> {
    let rabbitmq = &pipeline.spec.rabbitmq;
    if rabbitmq.managed.is_some() {
        return Some(autoscale::Management {
            // The client Service: ready nodes only, and it carries the management port.
            url: format!(
                "http://{}:{}",
                build::names::service_host(
                    &pipeline.name_any(),
                    build::Dependency::Rabbitmq,
                    &pipeline.namespace().unwrap_or_default()
                ),
                build::RABBITMQ_MANAGEMENT_PORT
            ),
            vhost: "/".to_owned(),
            username: "pipeline".to_owned(),
            password: secrets.rabbitmq_password.clone()?,
        });
    }
    let external = rabbitmq.external.as_ref()?;
    let url = external.management_url.clone()?;
    let credentials = external
        .credentials_secret_ref
        .as_ref()
        .and_then(|reference| secrets.referenced.get(&reference.name));
    let field = |key: &str| {
        credentials
            .and_then(|data| data.get(key))
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default()
    };
    Some(autoscale::Management {
        url,
        vhost: autoscale::vhost_of(external.endpoints.first()?)?,
        username: field("username"),
        password: field("password"),
    })
}

/// What the managed dependencies run now, and the refusal of a scale-down that could lose data
/// (a managed dependency shrinks only when the resource says its data may go).
async fn running_dependencies(
    pipeline: &OrderPipeline,
    client: &Client,
    namespace: &str,
) -> Result<build::RunningImages, Error> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let mut images = build::RunningImages::new();
    for dependency in build::Dependency::ALL {
        let Some(managed) = &dependency.spec(pipeline).managed else {
            continue;
        };
        let name = build::names::dependency(&pipeline.name_any(), dependency);
        let Some(existing) = api
            .get_opt(&name)
            .await
            .map_err(|source| Error::Dereference {
                what: format!("StatefulSet {name}"),
                source,
            })?
        else {
            continue;
        };
        let spec = existing.spec.unwrap_or_default();
        if let Some(image) = spec
            .template
            .spec
            .and_then(|pod| pod.containers.into_iter().next())
            .and_then(|container| container.image)
        {
            images.insert(dependency, image);
        }
        if let Some(current) = spec.replicas
            && managed.replicas < current
            && !managed.allow_data_loss_on_scale_down
        {
            return Err(Error::ScaleDownRefused {
                dependency: dependency.name(),
                from: current,
                to: managed.replicas,
            });
        }
    }
    Ok(images)
}

/// Applies every child, unless the ledger shows that exactly these children were applied
/// recently and a listing finds them untouched since; then the listing stands in for the apply's
/// answer (see [`ledger`]).
async fn apply_or_observe(
    pipeline: &OrderPipeline,
    namespace: &str,
    children: build::Children,
    context: &Context,
) -> Result<Applied, Error> {
    let uid = pipeline.uid().unwrap_or_default();
    let fingerprint = ledger::fingerprint(&children);
    let now = Instant::now();
    if let Some(entry) = context.ledger.fresh(&uid, fingerprint, now) {
        let client = &context.client;
        match futures::try_join!(
            list_children::<Deployment>(client, namespace, pipeline),
            list_children::<StatefulSet>(client, namespace, pipeline),
            list_children::<Service>(client, namespace, pipeline),
        ) {
            Ok((deployments, stateful_sets, services)) => {
                if let Some(applied) = entry.unchanged(deployments, stateful_sets, services) {
                    context.metrics.applies_skipped.inc();
                    return Ok(applied);
                }
            }
            // Listing is only a shortcut: the full apply below decides.
            Err(error) => {
                tracing::debug!(pipeline = %pipeline.name_any(), %error, "listing the children failed; applying them all");
            }
        }
    }
    context.metrics.full_applies.inc();
    ownership::check_children(&context.client, namespace, pipeline, &children).await?;
    let wanted_budgets: Vec<String> = children
        .disruption_budgets
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let applied = apply_all(&context.client, namespace, children).await;
    let result = match applied {
        Ok(applied) => {
            prune_disruption_budgets(&context.client, namespace, pipeline, &wanted_budgets)
                .await
                .map(|()| applied)
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(applied) => {
            context
                .ledger
                .record(&uid, ledger::Entry::new(fingerprint, &applied, now));
            Ok(applied)
        }
        Err(error) => {
            context.ledger.forget(&uid);
            Err(error)
        }
    }
}

/// Deletes the pipeline's PodDisruptionBudgets that the build no longer wants: a component scaled
/// back to one replica must not keep a budget that blocks draining its only pod. (The other kinds
/// of child are wanted for as long as the pipeline exists, whatever its spec.)
async fn prune_disruption_budgets(
    client: &Client,
    namespace: &str,
    pipeline: &OrderPipeline,
    wanted: &[String],
) -> Result<(), Error> {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    for budget in list_children::<PodDisruptionBudget>(client, namespace, pipeline).await? {
        let name = budget.name_any();
        // Only what this pipeline owns: a user's object with the same labels is not ours.
        let owned = budget
            .owner_references()
            .iter()
            .any(|owner| Some(&owner.uid) == pipeline.metadata.uid.as_ref());
        if !owned || wanted.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(pipeline = %pipeline.name_any(), budget = %name, "deleted a disruption budget no longer wanted")
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

/// The pipeline's children of one kind, as they are now.
async fn list_children<K>(
    client: &Client,
    namespace: &str,
    pipeline: &OrderPipeline,
) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={}",
        pipeline.name_any(),
        build::MANAGED_BY
    );
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|list| list.items)
        .map_err(|source| Error::Dereference {
            what: format!("the pipeline's {}", kind_name::<K>()),
            source,
        })
}

fn kind_name<K>() -> &'static str {
    std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object")
}

async fn apply_all(
    client: &Client,
    namespace: &str,
    children: build::Children,
) -> Result<Applied, Error> {
    // The NetworkPolicies first, so nothing runs unprotected even if a later apply fails; then
    // configuration and credentials, so pods never start without them; stateful dependencies
    // before the workloads that need them.
    for policy in &children.network_policies {
        apply::<NetworkPolicy>(client, namespace, policy).await?;
    }
    for secret in &children.secrets {
        apply::<Secret>(client, namespace, secret).await?;
    }
    for config_map in &children.config_maps {
        apply::<ConfigMap>(client, namespace, config_map).await?;
    }
    let mut applied = Applied::default();
    for service in &children.services {
        applied
            .services
            .push(apply::<Service>(client, namespace, service).await?);
    }
    for stateful_set in &children.stateful_sets {
        applied
            .stateful_sets
            .push(apply::<StatefulSet>(client, namespace, stateful_set).await?);
    }
    for job in &children.jobs {
        apply::<k8s_openapi::api::batch::v1::Job>(client, namespace, job).await?;
    }
    for deployment in &children.deployments {
        applied
            .deployments
            .push(apply::<Deployment>(client, namespace, deployment).await?);
    }
    for budget in &children.disruption_budgets {
        apply::<PodDisruptionBudget>(client, namespace, budget).await?;
    }
    Ok(applied)
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
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

async fn publish(
    context: &Context,
    pipeline: &OrderPipeline,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = context
        .recorder
        .publish(&event, &pipeline.object_ref(&()))
        .await
    {
        tracing::warn!(%error, "failed to publish an event");
    }
}

/// Retries failed reconciles with backoff, and reports the failure on the resource.
pub fn error_policy(pipeline: Arc<OrderPipeline>, error: &Error, context: Arc<Context>) -> Action {
    context.metrics.failure(error.kind());
    tracing::warn!(pipeline = %pipeline.name_any(), %error, "reconcile failed");
    let context = context.clone();
    let message = error.to_string();
    let reason = error.reason();
    let degraded = status::degraded(&pipeline, reason, &message);
    tokio::spawn(async move {
        publish(&context, &pipeline, EventType::Warning, reason, message).await;
        if let Err(error) = status::write(&pipeline, &context.client, degraded).await {
            tracing::warn!(%error, "failed to report the failure in the status");
        }
    });
    Action::requeue(Duration::from_secs(15))
}

/// Where the operator reconciles OrderPipelines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every namespace (the chart's ClusterRole).
    #[default]
    Cluster,
    /// Only these namespaces (the chart's Roles, one in each): nothing elsewhere is watched, so
    /// the operator needs no grant outside them.
    Namespaces(Vec<String>),
}

impl Scope {
    /// From `WATCH_NAMESPACES`: a comma-separated list of namespace names, empty for every
    /// namespace.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut namespaces: Vec<String> = Vec::new();
        for name in value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            let label = name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !label {
                return Err(format!("{name:?} is not a namespace name"));
            }
            if !namespaces.iter().any(|known| known == name) {
                namespaces.push(name.to_owned());
            }
        }
        Ok(if namespaces.is_empty() {
            Scope::Cluster
        } else {
            Scope::Namespaces(namespaces)
        })
    }
}

/// An API of `K` in `namespace`, or in every namespace.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `stop` resolves: one for the whole cluster, or one per namespace of
/// a namespaced [`Scope`], all sharing the context (and so the ledger and metrics).
pub async fn run(
    context: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // A replica that leads again may have missed another leader's changes: start from nothing.
    context.ledger.clear();
    let stop = stop.shared();
    let namespaces: Vec<Option<String>> = match &context.scope {
        Scope::Cluster => vec![None],
        Scope::Namespaces(namespaces) => namespaces.iter().cloned().map(Some).collect(),
    };
    futures::future::join_all(
        namespaces
            .into_iter()
            .map(|namespace| run_in(context.clone(), namespace, stop.clone())),
    )
    .await;
}

async fn run_in(
    context: Arc<Context>,
    namespace: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = context.client.clone();
    let namespace = namespace.as_deref();
    let children = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        build::MANAGED_BY
    ));
    Controller::new(
        scoped::<OrderPipeline>(&client, namespace),
        watcher::Config::default(),
    )
    .owns(scoped::<Deployment>(&client, namespace), children.clone())
    .owns(scoped::<StatefulSet>(&client, namespace), children.clone())
    .owns(scoped::<Service>(&client, namespace), children.clone())
    .owns(scoped::<Secret>(&client, namespace), children)
    .with_config(controller::Config::default().concurrency(CONCURRENT_RECONCILES))
    .graceful_shutdown_on(stop)
    .run(reconcile, error_policy, context)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(%object, "reconciled"),
            Err(error) => tracing::debug!(%error, "reconcile did not complete"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_namespaces_are_a_list_of_names_or_nothing() {
        assert_eq!(Scope::parse(""), Ok(Scope::Cluster));
        assert_eq!(Scope::parse(" , "), Ok(Scope::Cluster));
        assert_eq!(
            Scope::parse("shop, shop-staging,shop"),
            Ok(Scope::Namespaces(vec![
                "shop".into(),
                "shop-staging".into()
            ]))
        );
        for bad in ["Shop", "shop.prod", "-shop", "a/b"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }
}
