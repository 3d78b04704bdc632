//! The operator's benchmark against the environment's real control plane (`cargo xtask env up
//! kube`), with the operator running as its own release process (so its memory is its own):
//!
//! - time from applying one OrderPipeline to `Ready` (kwok makes pods Ready), over several runs;
//! - 100 pipelines applied at once: time until all are `Ready`, and the operator's resident memory;
//! - a forced resync of all 100: API requests by verb for the pipeline's kinds (from the API
//!   server's own metrics) and writes (children whose generation or operator-owned fields
//!   changed, and status writes).
//!
//! `cargo bench -p order-pipeline-operator --bench operator`. Figures are printed, not asserted.
//! `OPERATOR_BINARY=<path>` benchmarks another build of the operator (the image's musl binary).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt, ResourceExt};
use pipeline_api::OrderPipeline;
use serde_json::json;

#[path = "../tests/support/volumes.rs"]
mod volumes;

const ADMIN_PORT: u16 = 19090;
/// Pipelines applied one at a time, each timed to `Ready`.
const SINGLE: usize = 5;
const MANY: usize = 100;

#[tokio::main]
async fn main() -> Result<()> {
    let env = testenv::Env::load();
    let kubeconfig = env.require("KUBECONFIG");
    let client = Client::try_from(
        Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?,
    )?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            OrderPipeline::crd_name(),
            &PatchParams::apply("operator-bench").force(),
            &Patch::Apply(OrderPipeline::crd()),
        )
        .await?;
    quiet_control_plane(&client).await?;
    let namespace = testenv::unique("bench");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await?;
    let claims: Vec<String> = (0..SINGLE)
        .map(|index| format!("single-{index}"))
        .chain((0..MANY).map(|index| format!("many-{index}")))
        .flat_map(|pipeline| volumes::default_claims(&pipeline))
        .collect();
    let volumes = volumes::provide(&client, &namespace, &claims).await?;
    let mut operator = start_operator(&kubeconfig, &namespace)?;
    let result = run(&client, &namespace, &operator).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(operator.id().to_string())
        .status();
    let _ = operator.wait();
    Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::default())
        .await?;
    let api: Api<PersistentVolume> = Api::all(client.clone());
    for volume in volumes {
        let _ = api.delete(&volume, &DeleteParams::default()).await;
    }
    result
}

async fn run(client: &Client, namespace: &str, operator: &Child) -> Result<()> {
    let pipelines: Api<OrderPipeline> = Api::namespaced(client.clone(), namespace);
    wait_for_operator().await?;

    println!("== one pipeline: apply → Ready ==");
    let mut times = Vec::new();
    for index in 0..SINGLE {
        let name = format!("single-{index}");
        let started = Instant::now();
        pipelines
            .create(&PostParams::default(), &pipeline(&name)?)
            .await?;
        wait_all_ready(&pipelines, &[name], Duration::from_secs(60)).await?;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "  runs {:?}\n  p50 {:.2} s",
        times
            .iter()
            .map(|t| format!("{:.2}s", t.as_secs_f64()))
            .collect::<Vec<_>>(),
        times[times.len() / 2].as_secs_f64()
    );

    println!("== {MANY} pipelines applied at once ==");
    let names: Vec<String> = (0..MANY).map(|index| format!("many-{index}")).collect();
    let started = Instant::now();
    for name in &names {
        pipelines
            .create(&PostParams::default(), &pipeline(name)?)
            .await?;
    }
    let applied = started.elapsed();
    // Where the time goes: the operator's first pass over every pipeline (observedGeneration
    // set), the cluster making the pods (kube-controller-manager, scheduler, kwok), and the
    // status following.
    let timeline = {
        let client = client.clone();
        let namespace = namespace.to_owned();
        let names = names.clone();
        tokio::spawn(async move { timeline(&client, &namespace, &names, started).await })
    };
    wait_all_ready(&pipelines, &names, Duration::from_secs(300)).await?;
    timeline.abort();
    println!(
        "  all {MANY} Ready after {:.1} s (created in {:.1} s)",
        started.elapsed().as_secs_f64(),
        applied.as_secs_f64()
    );
    let resident = Resident::of(operator.id())?;
    println!(
        "  full applies {}, applies skipped {}",
        operator_counter("orderpipeline_operator_full_applies_total").await?,
        operator_counter("orderpipeline_operator_applies_skipped_total").await?
    );
    println!(
        "  operator resident memory with {} pipelines: {resident}",
        MANY + SINGLE
    );

    println!("== steady-state resync of every pipeline ==");
    let children_before = written(client, namespace).await?;
    let reconciles_before = operator_counter("orderpipeline_operator_reconciles_total").await?;
    let requests_before = api_requests(client).await?;
    // An annotation changes no spec and no child, but makes the operator reconcile each one.
    for name in names.iter().chain(
        (0..SINGLE)
            .map(|i| format!("single-{i}"))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        pipelines
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"bench/resync": "1"}}})),
            )
            .await?;
    }
    let statuses_before: BTreeMap<String, String> = pipelines
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|p| (p.name_any(), p.resource_version().unwrap_or_default()))
        .collect();
    let total = MANY + SINGLE;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done =
            operator_counter("orderpipeline_operator_reconciles_total").await? - reconciles_before;
        if done >= total as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {total} reconciles ran");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last reconciles finish their requests.
    let mut last = operator_counter("orderpipeline_operator_reconciles_total").await?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = operator_counter("orderpipeline_operator_reconciles_total").await?;
        if now == last {
            break;
        }
        last = now;
    }
    let reconciles = last - reconciles_before;
    let requests_after = api_requests(client).await?;
    let children_after = written(client, namespace).await?;
    let statuses_after: BTreeMap<String, String> = pipelines
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|p| (p.name_any(), p.resource_version().unwrap_or_default()))
        .collect();
    let child_writes = children_after
        .iter()
        .filter(|(k, v)| children_before.get(*k) != Some(*v))
        .count();
    let status_writes = statuses_after
        .iter()
        .filter(|(k, v)| statuses_before.get(*k) != Some(*v))
        .count();
    println!("  {reconciles} reconciles of {total} pipelines");
    for (verb, after) in &requests_after {
        let delta = after - requests_before.get(verb).copied().unwrap_or(0.0);
        if delta > 0.0 {
            println!(
                "  {verb:<8} {delta:>6.0} requests = {:.1} per reconcile",
                delta / reconciles as f64
            );
        }
    }
    println!(
        "  writes: {child_writes} children changed, {status_writes} statuses written (of {total})"
    );
    println!(
        "  operator resident memory after the resync: {}",
        Resident::of(operator.id())?
    );
    Ok(())
}

/// Prints, every few seconds until aborted: pipelines the operator has reconciled once, Ready
/// pipelines, reconciles so far, and the namespace's pods (all, and Ready).
async fn timeline(client: &Client, namespace: &str, names: &[String], started: Instant) {
    let pipelines: Api<OrderPipeline> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (Ok(list), Ok(pod_list), Ok(reconciles)) = (
            pipelines.list(&ListParams::default()).await,
            pods.list(&ListParams::default()).await,
            operator_counter("orderpipeline_operator_reconciles_total").await,
        ) else {
            continue;
        };
        let ours = list.items.iter().filter(|p| names.contains(&p.name_any()));
        let (mut reconciled, mut ready) = (0, 0);
        for pipeline in ours {
            let status = pipeline.status.as_ref();
            if status.and_then(|s| s.observed_generation).is_some() {
                reconciled += 1;
            }
            if status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }) {
                ready += 1;
            }
        }
        let pods_ready = pod_list
            .items
            .iter()
            .filter(|pod| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        println!(
            "  +{:>5.1}s reconciled once {reconciled:>3}, Ready {ready:>3}, reconciles {reconciles:>5}, pods {:>4} ({pods_ready} Ready)",
            started.elapsed().as_secs_f64(),
            pod_list.items.len()
        );
    }
}

/// Waits until no earlier bench's namespace is still being deleted: the API server's request
/// counts are the server's, and a terminating namespace's garbage collection (hundreds of
/// DELETEs and GETs of the pipeline's kinds) would be counted as this run's.
async fn quiet_control_plane(client: &Client) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let terminating: Vec<String> = namespaces
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            // Earlier benches' namespaces only: someone else's, stuck on a finalizer, must not
            // stop the bench.
            .filter(|namespace| namespace.name_any().starts_with("bench-"))
            .filter(|namespace| {
                namespace
                    .status
                    .as_ref()
                    .and_then(|status| status.phase.as_deref())
                    == Some("Terminating")
            })
            .map(|namespace| namespace.name_any())
            .collect();
        if terminating.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("namespaces {terminating:?} still terminating after 10 minutes");
        }
        println!(
            "waiting for {} terminating namespaces to go: {terminating:?}",
            terminating.len()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn pipeline(name: &str) -> Result<OrderPipeline> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "orderpipeline.dev/v1alpha1",
        "kind": "OrderPipeline",
        "metadata": {"name": name},
        "spec": {},
    }))?)
}

/// The operator watching `namespace` only, so what other runs and tests left in the shared
/// control plane (their pipelines, a namespace still terminating) is neither reconciled nor
/// cached, and the figures are those of this run's pipelines alone.
fn start_operator(kubeconfig: &str, namespace: &str) -> Result<Child> {
    // OPERATOR_BINARY measures another build of the operator, such as the static musl binary
    // the image ships (`cargo xtask images operator`).
    let binary = std::env::var("OPERATOR_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_order-pipeline-operator").to_owned());
    println!("operator binary: {binary}");
    Command::new(&binary)
        .env("KUBECONFIG", kubeconfig)
        .env("LEADER_ELECTION_ENABLED", "false")
        .env("WATCH_NAMESPACES", namespace)
        .env("ADMIN_PORT", ADMIN_PORT.to_string())
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("failed to start {binary}"))
}

async fn wait_for_operator() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("http://127.0.0.1:{ADMIN_PORT}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        if Instant::now() > deadline {
            bail!("the operator did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn operator_counter(name: &str) -> Result<u64> {
    let text = reqwest::get(format!("http://127.0.0.1:{ADMIN_PORT}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0))
}

async fn wait_all_ready(
    pipelines: &Api<OrderPipeline>,
    names: &[String],
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let list = pipelines.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|p| names.contains(&p.name_any()))
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == names.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{ready} of {} Ready after {within:?}", names.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The operator's resident memory (`/proc/<pid>/status`), in KiB: now, at its peak, and its
/// two parts that matter here (anonymous: heap and stacks; file-backed: the binary's code and
/// libraries; shared memory, which the operator does not use, is left out).
struct Resident {
    now: u64,
    peak: u64,
    anonymous: u64,
    file: u64,
}

impl Resident {
    fn of(pid: u32) -> Result<Resident> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Resident {
            now: field("VmRSS:")?,
            peak: field("VmHWM:")?,
            anonymous: field("RssAnon:")?,
            file: field("RssFile:")?,
        })
    }
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "{:.1} MiB (anonymous {:.1}, file-backed {:.1}; peak so far {:.1} MiB)",
            mib(self.now),
            mib(self.anonymous),
            mib(self.file),
            mib(self.peak)
        )
    }
}

/// Generation and operator-owned field times of every child: what changes only when the operator
/// writes.
async fn written(client: &Client, namespace: &str) -> Result<BTreeMap<String, String>> {
    let params =
        ListParams::default().labels("app.kubernetes.io/managed-by=order-pipeline-operator");
    let mut versions = BTreeMap::new();
    macro_rules! collect {
        ($kind:ty) => {
            for object in Api::<$kind>::namespaced(client.clone(), namespace)
                .list(&params)
                .await?
            {
                let ours: Vec<String> = object
                    .managed_fields()
                    .iter()
                    .filter(|entry| entry.manager.as_deref() == Some("order-pipeline-operator"))
                    .map(|entry| format!("{:?}", entry.time))
                    .collect();
                versions.insert(
                    format!("{}/{}", stringify!($kind), object.name_any()),
                    format!("{:?} {ours:?}", object.metadata.generation),
                );
            }
        };
    }
    collect!(Deployment);
    collect!(StatefulSet);
    collect!(Service);
    Ok(versions)
}

/// The API server's request counters by verb, for the kinds the operator touches.
async fn api_requests(client: &Client) -> Result<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let kinds = [
        "orderpipelines",
        "deployments",
        "statefulsets",
        "services",
        "secrets",
        "configmaps",
        "poddisruptionbudgets",
        "networkpolicies",
    ];
    let mut by_verb = BTreeMap::new();
    for line in text
        .lines()
        .filter(|line| line.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
        };
        if !kinds.contains(&label("resource")) || label("scope").is_empty() {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by_verb.entry(label("verb").to_owned()).or_insert(0.0) += value;
    }
    Ok(by_verb)
}
