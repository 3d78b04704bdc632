//! Reconciliation of OrderPipeline resources, as a pipeline of typed steps:
//!
//! 1. [`dereference`]: the Secrets the spec points at (read back or generated) and what runs now,
//!    from the controller's caches ([`cache`]);
//! 2. [`validate`]: all of it checked once, into a [`validate::ValidatedPipeline`];
//! 3. [`build`]: every child object, purely (no I/O, cannot fail);
//! 4. [`apply`]: the children written (or found unchanged, see [`ledger`]);
//! 5. [`status`]: what the applied children say, written when it changed.
//!
//! Each step has its own error type; [`Error`] wraps them, and the reconcile wrapper reports a
//! failure (a Warning Event and the `Degraded` condition) before [`error_policy`] decides the
//! requeue. Every write is a server-side apply by one field manager ([`build::MANAGER`]), and
//! every child carries a controller owner reference, so deleting the resource garbage-collects
//! its children. Because `build` is deterministic and an apply of unchanged content is a no-op
//! in the API server, a converged pipeline costs no writes per resync.

pub mod apply;
pub mod build;
pub mod cache;
pub mod dereference;
pub mod ledger;
pub mod ownership;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use build::Workload;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use pipeline_api::{OrderPipeline, ScalingDecision};
use tracing::Instrument;

use crate::autoscale;
use crate::metrics::{ErrorKind, Metrics};
use cache::{Reader, Stores};
use validate::{Mode, ValidatedPipeline};

/// Reconciles that run at once (of different pipelines; one pipeline is never reconciled twice at
/// once). A reconcile mostly waits on the API server, so a few dozen keep it busy; unbounded, a
/// burst of 100 new pipelines held 100 reconciles' objects and connections in memory at once.
pub const CONCURRENT_RECONCILES: u16 = 16;

/// How long a pipeline's triggers are gathered into one reconcile. A rollout changes its
/// children's status many times a second (each pod Ready); now that a reconcile reads from the
/// caches and takes a few milliseconds, each change would otherwise be a reconcile, a status
/// write and a load on the API server of its own.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

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
    /// The autoscaler's scale-down windows (one set per controller: see [`run`]).
    pub windows: Arc<autoscale::Windows>,
    /// What was last applied to each pipeline (one ledger per controller: see [`run`]).
    pub ledger: Arc<ledger::Ledger>,
    /// Where pipelines are watched.
    pub scope: Scope,
    /// Where the children are read: the controller's caches once [`run`] fills them, else the
    /// API server.
    pub reader: Reader,
    /// The controller's cache of the pipelines themselves, to forget what belonged to deleted
    /// ones; `None` without a running controller.
    pub pipelines: Option<Store<OrderPipeline>>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        version: impl Into<String>,
    ) -> Self {
        Self {
            reader: Reader::new(client.clone(), None),
            pipelines: None,
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
    /// The OTLP endpoint of pipelines whose spec names none.
    pub fn with_default_otlp_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.settings.default_otlp_endpoint = endpoint;
        self
    }

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

/// A reconcile failure: the error of the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dereference(#[from] dereference::Error),
    #[error("invalid OrderPipeline: {0}")]
    Validate(#[from] validate::Error),
    #[error(transparent)]
    Apply(#[from] apply::Error),
    #[error(transparent)]
    Status(#[from] status::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Dereference(_) => ErrorKind::Dereference,
            Error::Validate(_) => ErrorKind::Validate,
            Error::Apply(_) => ErrorKind::Apply,
            Error::Status(_) => ErrorKind::Status,
        }
    }

    /// The reason of the Warning Event and of the `Degraded` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Dereference(error) => error.reason(),
            Error::Validate(error) => error.reason(),
            Error::Apply(error) => error.reason(),
            Error::Status(error) => error.reason(),
        }
    }
}

/// Reconciles one pipeline; a failure is reported on the resource (a Warning Event, the
/// `Degraded` condition) before it is returned.
pub async fn reconcile(
    pipeline: Arc<OrderPipeline>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    // A root span per reconcile (exported when traces are on), each step a child span.
    let span = tracing::info_span!(
        "reconcile",
        otel.name = "reconcile OrderPipeline",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        pipeline = %pipeline.name_any(),
        namespace = %pipeline.namespace().unwrap_or_default(),
        generation = pipeline.metadata.generation.unwrap_or_default(),
    );
    async move {
        context.metrics.reconciles.inc();
        let started = Instant::now();
        let result = steps(&pipeline, &context).await;
        context
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            let current = tracing::Span::current();
            current.record("otel.status_code", "ERROR");
            current.record("error.type", error.reason());
            report_failure(&pipeline, error, &context).await;
        }
        result
    }
    .instrument(span)
    .await
}

/// The span of one step of a reconcile, a child of the reconcile's.
fn step(name: &'static str) -> tracing::Span {
    tracing::info_span!("step", otel.name = name, step = name)
}

async fn steps(pipeline: &OrderPipeline, context: &Context) -> Result<Action, Error> {
    forget_deleted(context);
    if pipeline.spec.paused {
        // Whatever is changed by hand meanwhile, resuming applies everything again.
        context.ledger.forget(&pipeline.uid().unwrap_or_default());
        status::write(pipeline, &context.client, status::paused(pipeline))
            .instrument(step("status"))
            .await?;
        return Ok(Action::await_change());
    }
    context.reader.ready().instrument(step("cache sync")).await;
    let found = dereference::dereference(pipeline, &context.reader)
        .instrument(step("dereference"))
        .await?;
    let current_replicas = found.replicas.clone();
    let valid =
        step("validate").in_scope(|| validate::validate(pipeline, found, &context.settings))?;
    let scaling = autoscale_plan(&valid, &current_replicas, context)
        .instrument(step("autoscale"))
        .await;
    let children = step("build").in_scope(|| {
        build::build(
            &valid,
            &scaling.replicas,
            &context.settings.access,
            &context.version,
        )
    });
    let applied = apply::apply(&valid, children, context)
        .instrument(step("apply"))
        .await?;
    // Only now is a scaling decision real: its window and its Event follow the apply.
    scaling.commit(&valid, context).await;
    let cluster = rabbitmq_cluster(&valid, context)
        .instrument(step("rabbitmq cluster"))
        .await;
    let observed = status::Observed {
        applied: &applied,
        decisions: &scaling.decisions,
        rabbitmq: cluster.as_ref(),
    };
    let transitions = status::update(pipeline, &context.client, &observed)
        .instrument(step("status"))
        .await?;
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

/// Forgets the ledger entries and autoscaler windows of pipelines the controller's cache no
/// longer has (deleted ones: the controller does not reconcile a deletion).
fn forget_deleted(context: &Context) {
    let Some(pipelines) = &context.pipelines else {
        return;
    };
    // Only when there are more entries than live pipelines could have: no walk of the store on
    // the reconciles of a steady state. (The ledger also drops entries too old to use.)
    let live = pipelines.len();
    if context.ledger.len() <= live && context.windows.len() <= 2 * live {
        return;
    }
    let alive: std::collections::HashSet<String> = pipelines
        .state()
        .iter()
        .filter_map(|pipeline| pipeline.metadata.uid.clone())
        .collect();
    context.windows.retain(|uid| alive.contains(uid));
    context.ledger.retain(|uid| alive.contains(uid));
}

/// What the autoscaler wants for one reconcile: the replica counts it decided (which replace the
/// spec's in the build), the decisions that changed one, and the scale-down windows to record
/// once the apply succeeded.
struct Scaling {
    replicas: build::ReplicaOverrides,
    decisions: Vec<(Workload, ScalingDecision)>,
    windows: Vec<(Workload, Option<Instant>)>,
}

impl Scaling {
    /// Records the windows and announces the decisions (after the apply that made them real).
    async fn commit(&self, valid: &ValidatedPipeline<'_>, context: &Context) {
        for (workload, since) in &self.windows {
            context.windows.set(&valid.uid, *workload, *since);
        }
        for (_, decision) in &self.decisions {
            publish(
                context,
                valid.pipeline,
                EventType::Normal,
                "Scaled",
                decision.reason.clone(),
            )
            .await;
        }
    }
}

/// Replica counts for the autoscaled workloads. Without a reading of the queue depth a workload
/// keeps what runs: never the spec's count.
async fn autoscale_plan(
    valid: &ValidatedPipeline<'_>,
    current_replicas: &std::collections::BTreeMap<Workload, i32>,
    context: &Context,
) -> Scaling {
    let mut scaling = Scaling {
        replicas: build::ReplicaOverrides::new(),
        decisions: Vec::new(),
        windows: Vec::new(),
    };
    let spec = &valid.pipeline.spec;
    for (workload, spec) in [
        (Workload::Processor, &spec.processor),
        (Workload::Notifier, &spec.notifier),
    ] {
        let Some(bounds) = &spec.autoscaling else {
            continue;
        };
        let current = current_replicas
            .get(&workload)
            .copied()
            .unwrap_or(spec.workload.replicas);
        let (Some(management), Some(queue)) = (management(valid), autoscale::queue_of(workload))
        else {
            scaling.replicas.insert(workload, current);
            continue;
        };
        let depth = match autoscale::depth(&context.http, &management, queue).await {
            Ok(depth) => depth,
            Err(error) => {
                tracing::warn!(%error, "autoscaler cannot read the queue depth");
                scaling.replicas.insert(workload, current);
                continue;
            }
        };
        let (decision, pending) = autoscale::decide(
            current,
            depth,
            bounds,
            context.windows.get(&valid.uid, workload),
            Instant::now(),
        );
        scaling.windows.push((workload, pending));
        scaling.replicas.insert(workload, decision.replicas);
        if decision.replicas != current {
            scaling.decisions.push((
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
    scaling
}

/// A managed RabbitMQ cluster's nodes and queue members, read from its management API, when it
/// has more than one node: one node is a whole cluster by itself, and its StatefulSet's readiness
/// says all there is. A failed reading keeps the last one, marked with the error.
async fn rabbitmq_cluster(
    valid: &ValidatedPipeline<'_>,
    context: &Context,
) -> Option<pipeline_api::RabbitmqClusterStatus> {
    let managed = valid.rabbitmq.managed()?;
    if managed.node.spec.replicas <= 1 {
        return None;
    }
    let management = management(valid)?;
    match management.cluster(&context.http).await {
        Ok(cluster) => Some(cluster),
        Err(error) => {
            tracing::warn!(%error, "cannot read the RabbitMQ cluster");
            let mut last = valid
                .pipeline
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
fn management(valid: &ValidatedPipeline<'_>) -> Option<autoscale::Management> {
    match &valid.rabbitmq {
        Mode::Managed(managed) => Some(autoscale::Management {
            // The client Service: ready nodes only, and it carries the management port.
            url: format!(
                "http://{}:{}",
                build::names::service_host(
                    &valid.name,
                    build::Dependency::Rabbitmq,
                    &valid.namespace
                ),
                build::RABBITMQ_MANAGEMENT_PORT
            ),
            vhost: "/".to_owned(),
            username: build::RABBITMQ_ADMIN_USER.to_owned(),
            password: managed.password.clone(),
        }),
        Mode::External(external) => {
            let url = external.management_url.clone()?;
            let credentials = external
                .credentials_secret_ref
                .as_ref()
                .and_then(|reference| valid.referenced.get(&reference.name));
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
    }
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

/// Reports a failed reconcile on the resource: a Warning Event and the `Degraded` condition, both
/// awaited, so the next reconcile never races a report of the last one.
async fn report_failure(pipeline: &OrderPipeline, error: &Error, context: &Context) {
    context.metrics.failure(error.kind());
    tracing::warn!(%error, "reconcile failed");
    let message = error.to_string();
    let reason = error.reason();
    publish(
        context,
        pipeline,
        EventType::Warning,
        reason,
        message.clone(),
    )
    .await;
    let degraded = status::degraded(pipeline, reason, &message);
    if let Err(error) = status::write(pipeline, &context.client, degraded).await {
        tracing::warn!(%error, "failed to report the failure in the status");
    }
}

/// Retries a failed reconcile (already reported by [`reconcile`]).
pub fn error_policy(
    _pipeline: Arc<OrderPipeline>,
    _error: &Error,
    _context: Arc<Context>,
) -> Action {
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
/// a namespaced [`Scope`], sharing the metrics. Each has its own caches, ledger and autoscaler
/// windows, empty at the start: a replica that leads again may have missed another leader's
/// changes.
pub async fn run(
    context: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
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
    let labelled = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        build::MANAGED_BY
    ));
    let (stores, writers) = Stores::new();
    let announcing = tokio::spawn(cache::announce_ready(stores.clone(), writers.ready));
    // Controller::new's watch of the pipelines, with their managedFields dropped before they
    // are cached: the reconcile never reads them.
    let (pipelines, pipelines_writer) = reflector::store();
    let controller = Controller::for_stream(
        reflector::reflector(
            pipelines_writer,
            watcher(
                scoped::<OrderPipeline>(&client, namespace),
                watcher::Config::default(),
            )
            .modify(|pipeline| pipeline.managed_fields_mut().clear()),
        )
        .applied_objects(),
        pipelines,
    );
    // This controller's own reads, ledger and windows (which it prunes by its own pipelines);
    // the metrics stay shared.
    let context = Arc::new(Context {
        reader: Reader::new(client.clone(), Some(stores)),
        pipelines: Some(controller.store()),
        ledger: Arc::default(),
        windows: Arc::default(),
        ..(*context).clone()
    });
    controller
        .owns_stream(cache::watch(
            scoped::<Deployment>(&client, namespace),
            labelled.clone(),
            writers.deployments,
        ))
        .owns_stream(cache::watch(
            scoped::<StatefulSet>(&client, namespace),
            labelled.clone(),
            writers.stateful_sets,
        ))
        .owns_stream(cache::watch(
            scoped::<Service>(&client, namespace),
            labelled.clone(),
            writers.services,
        ))
        .owns_stream(cache::watch(
            scoped::<Secret>(&client, namespace),
            labelled,
            writers.secrets,
        ))
        .with_config(
            controller::Config::default()
                .concurrency(CONCURRENT_RECONCILES)
                .debounce(DEBOUNCE),
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        })
        .await;
    announcing.abort();
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
