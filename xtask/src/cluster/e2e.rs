//! `cargo xtask e2e`: the product path on the real node, as a user would take it on kind.
//!
//! 1. `cluster up`;
//! 2. the five images (`cargo xtask images`) and the dependency stand-ins imported into the
//!    node's containerd under the names pods use (checked, so kubelet never tries to pull);
//! 3. the operator installed from its Helm chart (`pullPolicy: Never`, the stand-ins' names as
//!    `dependencyImages`);
//! 4. `e2e/kind-pipeline.yaml` applied unchanged and waited for until Ready, with progress, and on
//!    a timeout what the cluster says (describe, events, the operator's log, each failing pod's);
//! 5. the cluster suite (`e2e/tests/e2e.rs`, unchanged) and the node's own tests
//!    (`e2e/tests/node.rs`: the walkthrough through the NodePorts, a processor killed while
//!    orders flow);
//! 6. after them, every log line, Event, the status and every pod spec scanned for every secret
//!    value (`e2e/tests/secrets.rs`);
//! 7. the firewall's leak counters checked, the figures printed, and `cluster down` (unless
//!    `--keep`) the hard way: kubelet and containerd are killed with SIGKILL first, as a crashed
//!    run would leave them, and `down` must still leave nothing behind (it fails otherwise).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::config::NODE_NAME;
use super::{Cluster, host};
use crate::env::Layout;
use crate::env::kube::build::{self, Binaries};
use crate::env::process::{run_capture, run_logged};

/// The pipeline the suite runs against: e2e/kind-pipeline.yaml's, in the namespace kind-up.sh
/// uses.
const NAMESPACE: &str = "shop";
const PIPELINE: &str = "shop";
const MANIFEST: &str = "e2e/kind-pipeline.yaml";
const OPERATOR_NAMESPACE: &str = "order-pipeline-system";
const RELEASE: &str = "order-pipeline-operator";
/// The workload and operator images `cargo xtask images` builds.
const IMAGES: [&str; 5] = ["gateway", "processor", "notifier", "dashboard", "operator"];
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// kind-pipeline.yaml's NodePorts, on the node's loopback.
const GATEWAY_NODE_PORT: u16 = 30080;
const DASHBOARD_NODE_PORT: u16 = 30081;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Leave the cluster up afterwards (for a look with kubectl).
    pub keep: bool,
    pub ready_timeout: Duration,
}

fn step(text: &str) {
    println!("==> e2e: {text}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn run(layout: &Layout, options: Options) -> Result<()> {
    let started = Instant::now();
    let cluster = Cluster::new(layout);
    let _lock = cluster.lock()?;
    let result = super::up(layout, &cluster).and_then(|()| run_on(layout, &cluster, options));
    if let Err(error) = &result {
        eprintln!("e2e failed: {error:#}");
    }
    if options.keep {
        println!(
            "the cluster stays up (--keep): KUBECONFIG={}; `cargo xtask cluster down` removes it",
            cluster.kubeconfig().display()
        );
        result?;
    } else {
        for name in ["kubelet", "containerd"] {
            if let Some(pid) = cluster.daemon(name).running_pid() {
                host::kill_all(&[pid]);
                println!("  killed {name} (pid {pid}) with SIGKILL before cluster down");
            }
        }
        let down = super::down(&cluster);
        match (result, down) {
            (Ok(()), down) => down?,
            (Err(error), Ok(())) => return Err(error),
            (Err(error), Err(down)) => {
                return Err(error.context(format!("and cluster down failed too: {down:#}")));
            }
        }
    }
    println!("==> e2e: passed in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run_on(layout: &Layout, cluster: &Cluster, options: Options) -> Result<()> {
    let binaries = build::ensure(layout)?;
    let root = workspace_root();

    step("images: the workloads and the operator (cargo xtask images)");
    crate::images::run(layout, None, &[])?;
    let out = layout.home.join("images");
    for name in IMAGES {
        let reference = format!("{}/{name}:{VERSION}", crate::images::REPOSITORY);
        cluster.import_image(&out.join(format!("{name}-{VERSION}.oci.tar")), &reference)?;
        println!("  imported {reference}");
    }
    step("images: the dependency stand-ins");
    let dependencies = crate::images::dependencies::ensure_dependency_images(layout, &out)?;
    for image in &dependencies {
        cluster.import_image(&image.archive, &image.reference)?;
        println!("  imported {}", image.reference);
    }

    step("operator: CRD and Helm chart");
    let kubectl = || cluster.state.kubectl(&binaries);
    run_capture(
        kubectl()
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=cargo-xtask-e2e",
                "-f",
            ])
            .arg(root.join("crds/orderpipelines.yaml")),
    )?;
    let mut helm = Command::new(&binaries.helm);
    helm.env("KUBECONFIG", cluster.kubeconfig())
        .args(["upgrade", "--install", RELEASE])
        .arg(root.join("charts/order-pipeline-operator"))
        .args(["--namespace", OPERATOR_NAMESPACE, "--create-namespace"])
        .args(["--set", &format!("image.tag={VERSION}")])
        .args(["--set", "image.pullPolicy=Never"]);
    for image in &dependencies {
        helm.args([
            "--set",
            &format!("dependencyImages.{}={}", image.name, image.reference),
        ]);
    }
    helm.args(["--wait", "--timeout", "5m"]);
    run_logged(
        "helm upgrade --install",
        &mut helm,
        &cluster.node.dir.join("helm.log"),
    )
    .inspect_err(|_| diagnose(cluster, &binaries))?;
    println!("  operator Ready in namespace {OPERATOR_NAMESPACE}");

    step(&format!("pipeline: {MANIFEST} in namespace {NAMESPACE}"));
    let namespace = run_capture(kubectl().args([
        "create",
        "namespace",
        NAMESPACE,
        "--dry-run=client",
        "--output=yaml",
    ]))?;
    let namespace_file = cluster.node.dir.join("namespace.yaml");
    fs::write(&namespace_file, namespace)?;
    run_capture(kubectl().arg("apply").arg("-f").arg(&namespace_file))?;
    let applied = Instant::now();
    run_capture(
        kubectl()
            .args(["apply", "--namespace", NAMESPACE, "-f"])
            .arg(root.join(MANIFEST)),
    )?;
    wait_ready(cluster, &binaries, options.ready_timeout)?;
    let to_ready = applied.elapsed();
    println!(
        "  orderpipeline/{PIPELINE} Ready {:.0}s after apply",
        to_ready.as_secs_f64()
    );
    print_memory(cluster, &binaries);

    step("the cluster suite (e2e/tests/e2e.rs) and the node's tests (e2e/tests/node.rs)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let suite = Command::new(cargo)
        .current_dir(&root)
        .env("E2E_KUBECONFIG", cluster.kubeconfig())
        .env("E2E_NAMESPACE", NAMESPACE)
        .env("E2E_PIPELINE", PIPELINE)
        .env(
            "E2E_GATEWAY_URL",
            format!("http://127.0.0.1:{GATEWAY_NODE_PORT}"),
        )
        .env(
            "E2E_DASHBOARD_URL",
            format!("http://127.0.0.1:{DASHBOARD_NODE_PORT}"),
        )
        .args([
            "test",
            "-p",
            "pipeline-e2e",
            "--test",
            "e2e",
            "--test",
            "node",
        ])
        .args(["--", "--ignored", "--nocapture", "--test-threads=1"])
        .status()
        .context("failed to run cargo test")?;
    // Whatever the suite's outcome, nothing may have left the machine.
    let leaked = host::leaked_packets()?;
    println!(
        "  packets of the pod and Service ranges dropped on their way to another interface: \
         {leaked}"
    );
    if !suite.success() {
        diagnose(cluster, &binaries);
        bail!("the cluster e2e suite failed ({suite}); its output is above");
    }
    step("no secret in any log, Event, status or pod spec (e2e/tests/secrets.rs)");
    let scanned = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .env("E2E_KUBECONFIG", cluster.kubeconfig())
        .env("E2E_NAMESPACE", NAMESPACE)
        .env("E2E_PIPELINE", PIPELINE)
        .env("E2E_OPERATOR_NAMESPACE", OPERATOR_NAMESPACE)
        .args(["test", "-p", "pipeline-e2e", "--test", "secrets"])
        .args(["--", "--ignored", "--nocapture"])
        .status()
        .context("failed to run cargo test")?;
    ensure!(
        scanned.success(),
        "a secret value was found where it must not be ({scanned}); the output is above"
    );
    ensure!(
        leaked == 0,
        "{leaked} packets of the cluster's ranges reached another interface (dropped there)"
    );
    println!(
        "  figures: orderpipeline/{PIPELINE} apply -> Ready {:.0}s",
        to_ready.as_secs_f64()
    );
    Ok(())
}

/// Waits for `Ready=True` for the pipeline's current generation, printing the resource and its
/// pods every 10 seconds; on a timeout, prints what the cluster says and fails.
fn wait_ready(cluster: &Cluster, binaries: &Binaries, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let kubectl = || cluster.state.kubectl(binaries);
    let mut last_report = None::<Instant>;
    loop {
        let ready = run_capture(kubectl().args([
            "get",
            "orderpipeline",
            PIPELINE,
            "--namespace",
            NAMESPACE,
            "--output=jsonpath={.metadata.generation} {.status.observedGeneration} {.status.conditions[?(@.type==\"Ready\")].status}",
        ]))
        .unwrap_or_default();
        let words: Vec<&str> = ready.split_whitespace().collect();
        if let [generation, observed, "True"] = words.as_slice()
            && generation == observed
        {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            diagnose(cluster, binaries);
            bail!(
                "orderpipeline/{PIPELINE} in namespace {NAMESPACE} was not Ready after {timeout:?}"
            );
        }
        if last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            last_report = Some(Instant::now());
            println!("--- {:.0}s", started.elapsed().as_secs_f64());
            for args in [
                vec!["get", "orderpipelines", "--namespace", NAMESPACE],
                vec!["get", "pods", "--namespace", NAMESPACE, "--no-headers"],
            ] {
                if let Ok(text) = run_capture(kubectl().args(&args)) {
                    println!("{}", text.trim_end());
                }
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// What the cluster says, for a failure: the pipeline described, events, pods, the operator's
/// log, and the log of every container that is not ready (and of its previous run).
fn diagnose(cluster: &Cluster, binaries: &Binaries) {
    let kubectl = || cluster.state.kubectl(binaries);
    let show = |title: &str, args: &[&str]| {
        eprintln!("----- {title}");
        match run_capture(kubectl().args(args)) {
            Ok(text) => eprintln!("{}", text.trim_end()),
            Err(error) => eprintln!("({error:#})"),
        }
    };
    show(
        "kubectl describe orderpipeline",
        &[
            "describe",
            "orderpipeline",
            PIPELINE,
            "--namespace",
            NAMESPACE,
        ],
    );
    show(
        "events",
        &[
            "get",
            "events",
            "--namespace",
            NAMESPACE,
            "--sort-by=.lastTimestamp",
        ],
    );
    show(
        "pods",
        &["get", "pods", "--all-namespaces", "--output=wide"],
    );
    show(
        "operator log",
        &[
            "logs",
            "--namespace",
            OPERATOR_NAMESPACE,
            &format!("deployment/{RELEASE}"),
            "--tail=60",
        ],
    );
    let listing = run_capture(kubectl().args([
        "get",
        "pods",
        "--namespace",
        NAMESPACE,
        "--output=jsonpath={range .items[*]}{.metadata.name}{' '}{range .status.containerStatuses[*]}{.name}={.ready}{','}{end}{'\\n'}{end}",
    ]))
    .unwrap_or_default();
    for line in listing.lines() {
        let Some((pod, containers)) = line.split_once(' ') else {
            continue;
        };
        if containers
            .split(',')
            .all(|entry| entry.is_empty() || entry.ends_with("=true"))
        {
            continue;
        }
        show(
            &format!("log of pod {pod}"),
            &[
                "logs",
                "--namespace",
                NAMESPACE,
                pod,
                "--all-containers",
                "--tail=60",
            ],
        );
        show(
            &format!("previous log of pod {pod}"),
            &[
                "logs",
                "--namespace",
                NAMESPACE,
                pod,
                "--all-containers",
                "--previous",
                "--tail=30",
            ],
        );
    }
}

/// Memory at rest: the node's own processes (resident set) and each pod's working set as kubelet
/// reports it.
fn print_memory(cluster: &Cluster, binaries: &Binaries) {
    let mut node = BTreeMap::new();
    for name in ["containerd", "kubelet", "kube-proxy", "coredns"] {
        if let Some(pid) = cluster.daemon(name).running_pid() {
            node.insert(name.to_owned(), resident_kib(pid));
        }
    }
    let shims: u64 = host::shim_processes(&cluster.node)
        .into_iter()
        .map(resident_kib)
        .sum();
    node.insert("containerd shims".to_owned(), shims);
    let total: u64 = node.values().sum();
    println!(
        "  memory, node processes (RSS): {} = {} MiB",
        node.iter()
            .map(|(name, kib)| format!("{name} {} MiB", kib / 1024))
            .collect::<Vec<_>>()
            .join(", "),
        total / 1024
    );
    let summary = run_capture(cluster.state.kubectl(binaries).args([
        "get",
        "--raw",
        &format!("/api/v1/nodes/{NODE_NAME}/proxy/stats/summary"),
    ]));
    match summary.map(|text| serde_json::from_str::<Value>(&text)) {
        Ok(Ok(summary)) => {
            let mut pods = Vec::new();
            for pod in summary["pods"].as_array().into_iter().flatten() {
                let name = pod["podRef"]["name"].as_str().unwrap_or("?");
                let namespace = pod["podRef"]["namespace"].as_str().unwrap_or("?");
                let bytes = pod["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
                pods.push((format!("{namespace}/{name}"), bytes));
            }
            pods.sort();
            let total: u64 = pods.iter().map(|(_, bytes)| bytes).sum();
            for (pod, bytes) in &pods {
                println!("  memory, pod {pod}: {:.1} MiB", mebibytes(*bytes));
            }
            println!("  memory, all pods: {:.1} MiB", mebibytes(total));
        }
        Ok(Err(error)) => println!("  (kubelet's summary was not JSON: {error})"),
        Err(error) => println!("  (no kubelet summary: {error:#})"),
    }
}

#[allow(clippy::cast_precision_loss)] // memory sizes are far below 2^52 bytes
fn mebibytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn resident_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
