//! Project commands. Run `cargo xtask --help`.

mod browser_test;
mod cluster;
mod crdgen;
mod env;
mod images;
mod pipeline;
mod shellcheck;
mod template;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use env::{Component, Layout};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Order Pipeline project commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The real dependency environment on loopback (Redis, a RabbitMQ cluster, Cassandra, a
    /// Kubernetes control plane), installed and built as needed, cached under
    /// ~/.cache/order-pipeline.
    Env {
        #[command(subcommand)]
        action: EnvAction,
    },
    /// Run the pipeline on this machine: the real dependencies (as `env up`) and the four
    /// workloads as local processes, wired as the operator wires them; prints where to curl.
    /// The workloads are release builds, as in the images.
    Run {
        /// Debug builds instead: faster to build, several times slower to run.
        #[arg(long)]
        debug: bool,
    },
    /// Stop the workloads started by `run` (the dependencies keep running).
    Stop,
    /// Start the whole environment (as `env up`), then run every test of the workspace against
    /// it. Extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// A single-node Kubernetes cluster on this machine without Docker: the environment's control
    /// plane (on ports of its own, so it can run beside `env up`) and a real kubelet node
    /// (run/cluster under ~/.cache/order-pipeline). Needs root.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// The whole product on the real node: `cluster up`, the images imported, the operator
    /// installed with its Helm chart, e2e/kind-pipeline.yaml applied and Ready, the cluster e2e
    /// suite and the node's fault test, then `cluster down` after killing kubelet and containerd.
    E2e {
        /// Leave the cluster up afterwards.
        #[arg(long)]
        keep: bool,
        /// Seconds the pipeline may take to become Ready.
        #[arg(long, default_value_t = 900)]
        ready_timeout: u64,
    },
    /// Run ShellCheck on every shell script git tracks (installing Debian's shellcheck when
    /// missing); fails with its findings.
    Shellcheck,
    /// Generate the OrderPipeline CRD from operator/api and write it to crds/ and to the Helm
    /// chart's crds/.
    Crdgen {
        /// Write nothing; fail when a written copy differs from the generated CRD (for CI).
        #[arg(long)]
        check: bool,
    },
    /// Build the dashboard's web page (npm ci, vite build) into workloads/dashboard/ui/dist,
    /// which the dashboard binary embeds.
    Ui {
        /// Build into a temporary directory and fail when the committed dist differs (for CI).
        #[arg(long)]
        check: bool,
    },
    /// The dashboard's page in headless Debian Chromium (playwright-core) against the pipeline
    /// of `cargo xtask run` (started when needed): no console errors, orders placed through the
    /// gateway show up without a reload, a lookup shows an order's status. Saves a screenshot
    /// under ~/.cache/order-pipeline/browser-test/.
    BrowserTest {
        /// Also write the screenshot to docs/dashboard.png (the README's).
        #[arg(long)]
        readme_screenshot: bool,
    },
    /// Build the container images (gateway, processor, notifier, dashboard, operator; all when
    /// none is named) from static musl release binaries, tag them order-pipeline/<name>:<version>,
    /// write OCI archives and run each image's binary to verify it. With --dependencies, the
    /// stand-ins for the official RabbitMQ, Redis and Cassandra images instead.
    Images {
        /// Where to write <name>-<version>.oci.tar (default ~/.cache/order-pipeline/images).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Build the dependency stand-ins (rabbitmq, redis, cassandra; all when none is named)
        /// from Debian bookworm packages, Maven Central and PyPI, tagged
        /// localhost/order-pipeline-deps/<name>:<server version>-<hash>, cached by that hash,
        /// each started as the operator's pods run it before its archive is written; also
        /// writes dependency-images.env. Needs root.
        #[arg(long)]
        dependencies: bool,
        /// With --dependencies: also start Cassandra from its new image and query it with cqlsh
        /// (a minute or two; without it only Cassandra's tools are run).
        #[arg(long, requires = "dependencies")]
        start_cassandra: bool,
        /// With --dependencies: run the checks on images already built, too.
        #[arg(long, requires = "dependencies")]
        recheck: bool,
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Build what is missing and start a single-node cluster whose pods run in real containers
    /// (containerd, kubelet, kube-proxy, CoreDNS, the environment's control plane); waits until
    /// the node is Ready. Clears what a killed earlier run left first.
    Up,
    /// Stop the cluster and remove everything it made on this machine; fails if anything is
    /// left.
    Down,
    /// Show what runs; exits non-zero when the cluster is not fully up.
    Status,
}

#[derive(Debug, Subcommand)]
enum EnvAction {
    /// Install what is missing, start the components (all when none is named) and wait until
    /// each is really ready. Idempotent.
    Up {
        /// Components to start: redis, rabbitmq, cassandra, kube.
        components: Vec<Component>,
    },
    /// Stop the components (all when none is named), leaving no process behind.
    Down {
        components: Vec<Component>,
        /// Also delete their data, logs and generated configuration (caches are kept).
        #[arg(long)]
        purge: bool,
    },
    /// Show which components run and where; exits non-zero when one is stopped.
    Status { components: Vec<Component> },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    let layout = Layout::from_env()?;
    let or_all = |components: Vec<Component>| {
        if components.is_empty() {
            Component::ALL.to_vec()
        } else {
            components
        }
    };
    match cli.command {
        Command::Env { action } => match action {
            EnvAction::Up { components } => env::up(&layout, &or_all(components)).map(|()| true),
            EnvAction::Down { components, purge } => {
                // The workloads need the dependencies; stop them first when everything goes.
                if components.is_empty() {
                    pipeline::stop(&layout)?;
                }
                env::down(&layout, &or_all(components), purge).map(|()| true)
            }
            EnvAction::Status { components } => {
                let workloads = pipeline::running(&layout);
                if !workloads.is_empty() {
                    println!("pipeline   running  {}", workloads.join(", "));
                }
                env::status(&layout, &or_all(components))
            }
        },
        Command::Cluster { action } => match action {
            ClusterAction::Up => cluster::up_command(&layout).map(|()| true),
            ClusterAction::Down => cluster::down_command(&layout).map(|()| true),
            ClusterAction::Status => Ok(cluster::status(&layout)),
        },
        Command::E2e {
            keep,
            ready_timeout,
        } => cluster::e2e::run(
            &layout,
            cluster::e2e::Options {
                keep,
                ready_timeout: std::time::Duration::from_secs(ready_timeout),
            },
        )
        .map(|()| true),
        Command::Run { debug } => {
            pipeline::run(&layout, pipeline::Profile::from_debug(debug)).map(|()| true)
        }
        Command::Stop => pipeline::stop(&layout).map(|()| true),
        Command::Test { cargo_test_args } => {
            env::up(&layout, &Component::ALL)?;
            run_workspace_tests(&cargo_test_args)
        }
        Command::Shellcheck => shellcheck::run(&layout).map(|()| true),
        Command::Crdgen { check } => crdgen::run(check).map(|()| true),
        Command::Ui { check } => ui::run(&layout, check).map(|()| true),
        Command::BrowserTest { readme_screenshot } => {
            browser_test::run(&layout, readme_screenshot).map(|()| true)
        }
        Command::Images {
            out,
            dependencies: true,
            start_cassandra,
            recheck,
            names,
        } => {
            let options = images::dependencies::Options {
                names,
                start_cassandra,
                recheck,
            };
            images::dependencies::run(&layout, out, &options).map(|()| true)
        }
        Command::Images { out, names, .. } => images::run(&layout, out, &names).map(|()| true),
    }
}

/// The workload binaries the crash test runs as real processes.
const WORKLOAD_BINARIES: [&str; 4] = ["gateway", "processor", "notifier", "dashboard"];

fn run_workspace_tests(extra: &[String]) -> Result<bool> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("==> cargo build (workload binaries)");
    let mut build = std::process::Command::new(&cargo);
    build.arg("build");
    for package in WORKLOAD_BINARIES {
        build.args(["--package", package]);
    }
    if !build.status()?.success() {
        return Ok(false);
    }
    println!("==> cargo test --workspace {}", extra.join(" "));
    let status = std::process::Command::new(cargo)
        .args(["test", "--workspace"])
        .args(extra)
        .status()?;
    Ok(status.success())
}
