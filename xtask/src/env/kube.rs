//! A real Kubernetes 1.34 control plane on loopback: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, with kwok standing in for the kubelets.
//!
//! Why real components: the operator's behaviour depends on what the API server actually does —
//! admission, RBAC (on, with one identity per controller), server-side apply, optimistic
//! concurrency, Deployments becoming ReplicaSets becoming Pods, scheduling, garbage collection,
//! namespace finalization and service-account tokens. A fake API would agree with our own
//! assumptions; this one does not have to.
//!
//! Why kwok instead of kubelets: this machine runs no container runtime, so nothing could run a
//! Pod's containers. kwok keeps three fake Nodes alive (status and leases, so the node lifecycle
//! controller keeps them Ready) and moves Pods bound to them through the phases a kubelet would
//! report (Running and Ready, then gone when deleted). Everything above the kubelet is real.
//!
//! The binaries are built from the Go module proxy at the pinned versions below ([`build`]) and
//! kept under `bin/<name>-<version>/`. Certificates ([`pki`]), kubeconfigs, etcd's data, logs and
//! pid files live under `run/kube/`, so `up` after `down` restarts on the same data and
//! credentials.

pub mod build;
mod config;
pub mod monitoring;
pub mod pki;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use self::build::Binaries;
use self::pki::Pki;
use super::process::{self, Daemon, Probe, ensure_port_free, run_capture};
use super::{Component, Layout, Status, ensure_apt_packages};

/// Kubernetes release of the control plane and of `kubectl`.
pub const KUBERNETES_VERSION: &str = "v1.34.4";
/// etcd 3.6 is the line Kubernetes 1.34 is tested with.
pub const ETCD_VERSION: &str = "v3.6.16";
/// kwok 0.8 lists Kubernetes 1.34 among its supported releases.
pub const KWOK_VERSION: &str = "v0.8.0";
pub const HELM_VERSION: &str = "v3.22.0";
/// CoreDNS 1.15 supports the Kubernetes 1.34 API (EndpointSlices) and has no `replace`
/// directives, so it builds from the module proxy as it is.
pub const COREDNS_VERSION: &str = "v1.15.0";

/// Where one control plane listens: etcd, the controller manager and the scheduler on loopback,
/// the API server at `apiserver_address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub apiserver_address: Ipv4Addr,
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
}

/// The kwok environment's: the components' usual ports.
pub const KWOK_PORTS: Ports = Ports {
    apiserver_address: Ipv4Addr::LOCALHOST,
    etcd_client: 2379,
    etcd_peer: 2380,
    apiserver: 6443,
    controller_manager: 10257,
    scheduler: 10259,
};
/// kwok's own HTTP server; only its `/healthz` is used, as the readiness probe.
const KWOK_PORT: u16 = 10247;

/// Service ClusterIPs; the API server takes the first address for the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Cluster DNS domain, as in every default installation.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The fake nodes kwok manages. Tests read them from `OP_KUBE_NODES`.
pub const NODES: [&str; 3] = ["kwok-node-0", "kwok-node-1", "kwok-node-2"];
/// The annotation kwok selects its nodes by, so it never touches a Node it did not get made for.
const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// The processes in start order; `down` stops them in reverse, clients before the API server and
/// the API server before its storage.
const PROCESSES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];
/// The processes every control plane runs, whatever its nodes.
pub const CONTROL_PLANE: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// What runs the pods the control plane schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nodes {
    /// kwok's fake nodes: everything on loopback, no container ever runs.
    Kwok,
    /// One real kubelet on this machine (`cargo xtask cluster`), whose pods reach the API server
    /// through the `kubernetes` Service at `node_ip`, the address of the node's bridge.
    Real {
        node_ip: Ipv4Addr,
        node_name: &'static str,
    },
}

/// The files of a control plane: under `run/kube/` for the kwok environment, `run/cluster/`
/// for the real node's.
#[derive(Debug)]
pub struct State {
    pub dir: PathBuf,
    pub pki: Pki,
    pub ports: Ports,
}

impl State {
    fn new(layout: &Layout) -> Self {
        Self::at(layout.run_dir(Component::Kube), KWOK_PORTS)
    }

    pub fn at(dir: PathBuf, ports: Ports) -> Self {
        let pki = Pki::new(dir.join("pki"));
        Self { dir, pki, ports }
    }

    pub fn apiserver_url(&self) -> String {
        format!(
            "https://{}:{}",
            self.ports.apiserver_address, self.ports.apiserver
        )
    }

    pub fn daemon(&self, name: &str) -> Daemon {
        Daemon::new(name, &self.dir, name)
    }

    /// The admin kubeconfig handed to tests and people.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The kubeconfig a component authenticates with, as its own identity.
    pub fn component_kubeconfig(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.kubeconfig"))
    }

    fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd-data")
    }

    pub fn kubectl(&self, binaries: &Binaries) -> Command {
        let mut command = Command::new(&binaries.kubectl);
        command.arg("--kubeconfig").arg(self.admin_kubeconfig());
        command
    }
}

pub fn up(layout: &Layout) -> Result<BTreeMap<&'static str, String>> {
    let state = State::new(layout);
    let binaries = start_control_plane(layout, &state, Nodes::Kwok)?;
    start_kwok(&binaries, &state)?;
    ensure_nodes(&binaries, &state)?;
    monitoring::install(layout, &state, &binaries)?;

    Ok(BTreeMap::from([
        ("KUBECONFIG", state.admin_kubeconfig().display().to_string()),
        ("OP_KUBE_APISERVER", state.apiserver_url()),
        ("OP_KUBECTL", binaries.kubectl.display().to_string()),
        ("OP_HELM", binaries.helm.display().to_string()),
        ("OP_KUBE_VERSION", KUBERNETES_VERSION.to_string()),
        ("OP_KUBE_NODES", NODES.join(",")),
    ]))
}

/// Builds what is missing, writes the PKI and kubeconfigs into `state`'s directory and starts
/// etcd, the API server, the controller manager and the scheduler, each waited for.
pub fn start_control_plane(layout: &Layout, state: &State, nodes: Nodes) -> Result<Binaries> {
    ensure_apt_packages(layout, &["openssl", "curl"])?;
    let binaries = build::ensure(layout)?;
    fs::create_dir_all(&state.dir)
        .with_context(|| format!("failed to create {}", state.dir.display()))?;

    let service_ip = config::first_host_address(SERVICE_CIDR)?;
    let mut identities = pki::identities(&service_ip, CLUSTER_DOMAIN);
    if let Nodes::Real { node_ip, node_name } = nodes {
        identities = pki::with_real_node(identities, &node_ip, node_name);
    }
    state.pki.ensure(&identities)?;
    write_kubeconfigs(state, nodes)?;

    start_etcd(&binaries, state)?;
    start_apiserver(&binaries, state, nodes)?;
    start_controller_manager(&binaries, state)?;
    start_scheduler(&binaries, state)?;
    Ok(binaries)
}

/// Stops the control plane's processes of `state`, clients first.
pub fn stop_control_plane(state: &State) -> Result<()> {
    let mut failures = Vec::new();
    for name in CONTROL_PLANE.iter().rev() {
        // Each exits within a second or two of SIGTERM, except an API server some client (a
        // forgotten `kubectl get -w`, a test's operator) still holds a watch open on: it waits
        // for that connection up to its request timeout. Past 30 seconds SIGKILL loses nothing
        // etcd has not already stored.
        match state.daemon(name).stop(Duration::from_secs(30)) {
            Ok(true) => println!("  {name} stopped"),
            Ok(false) => {}
            Err(error) => failures.push(format!("{name}: {error:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

pub fn down(layout: &Layout) -> Result<()> {
    let state = State::new(layout);
    let kwok = state.daemon("kwok").stop(Duration::from_secs(30));
    if let Ok(true) = kwok {
        println!("  kwok stopped");
    }
    let control_plane = stop_control_plane(&state);
    kwok.context("kwok").and(control_plane)
}

pub fn status(layout: &Layout) -> Status {
    let state = State::new(layout);
    let mut running = true;
    let processes: Vec<String> = PROCESSES
        .iter()
        .map(|name| match state.daemon(name).running_pid() {
            Some(pid) => format!("{name} pid {pid}"),
            None => {
                running = false;
                format!("{name} stopped")
            }
        })
        .collect();
    Status {
        running,
        detail: format!(
            "{}, KUBECONFIG={} ({})",
            state.apiserver_url(),
            state.admin_kubeconfig().display(),
            processes.join(", ")
        ),
    }
}

/// Writes the admin kubeconfig and one per component. Rewritten on every `up` so they always
/// carry the current certificates.
fn write_kubeconfigs(state: &State, nodes: Nodes) -> Result<()> {
    let ca = state.pki.read_ca_cert()?;
    let write = |path: &Path, identity: &str| -> Result<()> {
        let text = config::kubeconfig(
            &state.apiserver_url(),
            &ca,
            identity,
            &state.pki.read_cert(identity)?,
            &state.pki.read_key(identity)?,
        );
        write_private(path, &text)
    };
    write(&state.admin_kubeconfig(), pki::ADMIN)?;
    let components: &[&str] = match nodes {
        Nodes::Kwok => &[pki::CONTROLLER_MANAGER, pki::SCHEDULER, pki::KWOK],
        Nodes::Real { .. } => &[
            pki::CONTROLLER_MANAGER,
            pki::SCHEDULER,
            pki::KUBELET,
            pki::KUBE_PROXY,
            pki::COREDNS,
        ],
    };
    for component in components {
        write(&state.component_kubeconfig(component), component)?;
    }
    Ok(())
}

/// Writes a file holding credentials: owner-only from the first byte, and replaced atomically so
/// a client reading it during `up` never sees half of it.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().context("credential file has a name")?;
    let pending = path.with_file_name(format!("{}.pending", name.to_string_lossy()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&pending)
        .with_context(|| format!("failed to create {}", pending.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("failed to write {}", pending.display()))?;
    drop(file);
    fs::rename(&pending, path).with_context(|| format!("failed to write {}", path.display()))
}

/// Starts the daemon unless it already runs (after checking that no stranger holds its ports),
/// then waits for `probe`.
pub fn start(
    daemon: &Daemon,
    ports: &[u16],
    timeout: Duration,
    command: impl FnOnce() -> Command,
    probe: impl FnMut() -> Result<()>,
) -> Result<()> {
    if daemon.running_pid().is_none() {
        for &port in ports {
            ensure_port_free(port, &daemon.name)?;
        }
        println!("  starting {}", daemon.name);
        daemon.spawn(&mut command())?;
    }
    daemon.wait_ready(timeout, probe)
}

fn start_etcd(binaries: &Binaries, state: &State) -> Result<()> {
    let Ports {
        etcd_client,
        etcd_peer,
        ..
    } = state.ports;
    let client_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    start(
        &state.daemon("etcd"),
        &[etcd_client, etcd_peer],
        Duration::from_secs(60),
        || {
            let mut command = Command::new(&binaries.etcd);
            command
                .arg("--name=order-pipeline")
                .arg(format!("--data-dir={}", state.etcd_data().display()))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=order-pipeline={peer_url}"))
                // A test cluster's data is disposable and a crash of the whole machine is the only
                // way to lose writes the kernel already has; skipping fsync keeps the API server's
                // write latency (and so every test) from depending on the disk. envtest does the
                // same.
                .arg("--unsafe-no-fsync=true")
                .arg("--log-level=warn");
            command
        },
        || {
            let health = curl(&[&format!("{client_url}/health")])?;
            if !health.contains(r#""health":"true""#) {
                bail!("/health answered {health:?}");
            }
            Ok(())
        },
    )
}

fn start_apiserver(binaries: &Binaries, state: &State, nodes: Nodes) -> Result<()> {
    let pki = &state.pki;
    start(
        &state.daemon("kube-apiserver"),
        &[state.ports.apiserver],
        Duration::from_secs(120),
        || {
            let mut command = Command::new(&binaries.kube_apiserver);
            command.arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                state.ports.etcd_client
            ));
            match nodes {
                Nodes::Kwok => {
                    command
                        .arg("--bind-address=127.0.0.1")
                        .arg("--advertise-address=127.0.0.1")
                        // The `kubernetes` Service's endpoints would be 127.0.0.1, which
                        // Endpoints and EndpointSlice validation rejects (loopback), so the
                        // reconciler would fail every few seconds. Nothing runs inside the
                        // cluster to need them: clients come from the host, through the
                        // kubeconfig.
                        .arg("--endpoint-reconciler-type=none");
                }
                Nodes::Real { node_ip, .. } => {
                    command
                        // The node's bridge address only: the pods reach it there through the
                        // `kubernetes` Service (whose endpoint is the advertised address), the
                        // host's clients through their kubeconfigs; no other interface, IPv4 or
                        // IPv6, has the port.
                        .arg(format!("--bind-address={node_ip}"))
                        .arg(format!("--advertise-address={node_ip}"))
                        // logs, exec and port-forward go through the kubelet's API, which
                        // authenticates the API server by this certificate (and authorizes it
                        // through the `system:kubelet-api-admin` binding `cluster up` makes).
                        .arg(format!(
                            "--kubelet-client-certificate={}",
                            pki.cert(pki::APISERVER_KUBELET_CLIENT).display()
                        ))
                        .arg(format!(
                            "--kubelet-client-key={}",
                            pki.key(pki::APISERVER_KUBELET_CLIENT).display()
                        ))
                        .arg("--kubelet-preferred-address-types=InternalIP");
                }
            }
            command
                .arg(format!("--secure-port={}", state.ports.apiserver))
                .arg(format!(
                    "--tls-cert-file={}",
                    pki.cert(pki::APISERVER).display()
                ))
                .arg(format!(
                    "--tls-private-key-file={}",
                    pki.key(pki::APISERVER).display()
                ))
                .arg(format!("--client-ca-file={}", pki.ca_cert().display()))
                .arg("--authorization-mode=Node,RBAC")
                // The front proxy: what aggregated API servers and the components' delegated
                // authentication trust for requests the API server forwards (see [`pki`]).
                .arg(format!(
                    "--requestheader-client-ca-file={}",
                    pki.front_proxy_ca_cert().display()
                ))
                .arg(format!(
                    "--requestheader-allowed-names={}",
                    pki::FRONT_PROXY_CLIENT
                ))
                .arg("--requestheader-username-headers=X-Remote-User")
                .arg("--requestheader-uid-headers=X-Remote-Uid")
                .arg("--requestheader-group-headers=X-Remote-Group")
                .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
                .arg(format!(
                    "--proxy-client-cert-file={}",
                    pki.cert(pki::FRONT_PROXY_CLIENT).display()
                ))
                .arg(format!(
                    "--proxy-client-key-file={}",
                    pki.key(pki::FRONT_PROXY_CLIENT).display()
                ))
                .arg(format!(
                    "--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"
                ))
                .arg(format!(
                    "--service-account-key-file={}",
                    pki.service_account_public_key().display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_private_key().display()
                ))
                .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
                .arg("--allow-privileged=true")
                .arg("--profiling=false");
            command
        },
        || {
            let answer = curl(&[
                "--cacert",
                &pki.ca_cert().display().to_string(),
                "--cert",
                &pki.cert(pki::ADMIN).display().to_string(),
                "--key",
                &pki.key(pki::ADMIN).display().to_string(),
                &format!("{}/readyz", state.apiserver_url()),
            ])?;
            if answer.trim() != "ok" {
                bail!("/readyz answered {:?}", answer.trim());
            }
            Ok(())
        },
    )
}

fn start_controller_manager(binaries: &Binaries, state: &State) -> Result<()> {
    let pki = &state.pki;
    let kubeconfig = state.component_kubeconfig(pki::CONTROLLER_MANAGER);
    start(
        &state.daemon("kube-controller-manager"),
        &[state.ports.controller_manager],
        Duration::from_secs(120),
        || {
            let mut command = Command::new(&binaries.kube_controller_manager);
            command
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!(
                    "--authentication-kubeconfig={}",
                    kubeconfig.display()
                ))
                .arg(format!(
                    "--authorization-kubeconfig={}",
                    kubeconfig.display()
                ))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={}", state.ports.controller_manager))
                // One process, nothing to elect against; electing only delays the start.
                .arg("--leader-elect=false")
                // Each controller acts as its own service account, so RBAC denials surface here
                // the way they would in a real cluster.
                .arg("--use-service-account-credentials=true")
                .arg("--controllers=*")
                // kwok keeps its fake nodes alive from one process that shares two cores with
                // everything under test; a late heartbeat must not mark every node NotReady (and
                // with it every pod, which kwok then never marks Ready again).
                .arg("--node-monitor-grace-period=300s")
                // Each controller's client is limited to 20 requests/s by default. Rolling out
                // 100 pipelines means ~400 Deployments, their ReplicaSets and ~735 pods, each
                // with a create, status updates and an Event: at 20/s the deployment controller
                // alone needs ~100 s. kwok simulates the nodes; the control plane should not be
                // the simulation's bottleneck (kwokctl raises these limits for the same reason).
                .arg("--kube-api-qps=200")
                .arg("--kube-api-burst=400")
                .arg(format!(
                    "--service-account-private-key-file={}",
                    pki.service_account_private_key().display()
                ))
                .arg(format!("--root-ca-file={}", pki.ca_cert().display()))
                // Lets CertificateSigningRequests be approved and signed, as on a real cluster.
                .arg(format!(
                    "--cluster-signing-cert-file={}",
                    pki.ca_cert().display()
                ))
                .arg(format!(
                    "--cluster-signing-key-file={}",
                    pki.ca_key().display()
                ))
                .arg("--profiling=false");
            command
        },
        || {
            component_healthz(state.ports.controller_manager)?;
            // An effect, not just a live endpoint: the service-account controller has reconciled
            // `default`, so Pods in the default namespace can be admitted.
            run_capture(state.kubectl(binaries).args([
                "get",
                "serviceaccount",
                "default",
                "--namespace=default",
                "--output=name",
            ]))
            .map(drop)
        },
    )
}

fn start_scheduler(binaries: &Binaries, state: &State) -> Result<()> {
    let kubeconfig = state.component_kubeconfig(pki::SCHEDULER);
    start(
        &state.daemon("kube-scheduler"),
        &[state.ports.scheduler],
        Duration::from_secs(120),
        || {
            let mut command = Command::new(&binaries.kube_scheduler);
            command
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!(
                    "--authentication-kubeconfig={}",
                    kubeconfig.display()
                ))
                .arg(format!(
                    "--authorization-kubeconfig={}",
                    kubeconfig.display()
                ))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={}", state.ports.scheduler))
                .arg("--leader-elect=false")
                // A binding and an Event per pod; the default 50/s would pace 735 pods (see the
                // controller manager's limits above).
                .arg("--kube-api-qps=200")
                .arg("--kube-api-burst=400")
                .arg("--profiling=false");
            command
        },
        || component_healthz(state.ports.scheduler),
    )
}

fn start_kwok(binaries: &Binaries, state: &State) -> Result<()> {
    let kubeconfig = state.component_kubeconfig(pki::KWOK);
    let work_dir = state.dir.join("kwok");
    fs::create_dir_all(&work_dir)
        .with_context(|| format!("failed to create {}", work_dir.display()))?;
    let (annotation, value) = KWOK_NODE_ANNOTATION;
    start(
        &state.daemon("kwok"),
        &[KWOK_PORT],
        Duration::from_secs(60),
        || {
            let mut command = Command::new(&binaries.kwok);
            command
                // kwok otherwise also loads ~/.kwok/kwok.yaml, whatever someone left there.
                .env("KWOK_WORKDIR", &work_dir)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                // Its default ("fast") stages: nodes initialised and kept alive with leases, pods
                // made Running and Ready, deleted pods removed.
                .arg(format!("--config={}", binaries.kwok_stages.display()))
                .arg("--manage-all-nodes=false")
                .arg(format!(
                    "--manage-nodes-with-annotation-selector={annotation}={value}"
                ))
                .arg(format!("--server-address=127.0.0.1:{KWOK_PORT}"))
                // Node leases are cheap heartbeats (the controller-manager accepts either).
                .arg("--node-lease-duration-seconds=40");
            command
        },
        || {
            let answer = curl(&[&format!("http://127.0.0.1:{KWOK_PORT}/healthz")])?;
            if answer.trim() != "ok" {
                bail!("/healthz answered {:?}", answer.trim());
            }
            Ok(())
        },
    )
}

/// Creates the fake nodes that do not exist yet and waits until kwok has made all of them Ready
/// and the node lifecycle controller has lifted their not-ready taints, so a Pod created right
/// after `up` is scheduled at once.
fn ensure_nodes(binaries: &Binaries, state: &State) -> Result<()> {
    let existing = run_capture(
        state
            .kubectl(binaries)
            .args(["get", "nodes", "--output=name"]),
    )?;
    let missing: Vec<(usize, &str)> = NODES
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, name)| {
            !existing
                .lines()
                .any(|line| line.trim() == format!("node/{name}"))
        })
        .collect();
    if !missing.is_empty() {
        let manifest = missing
            .iter()
            .map(|&(index, name)| {
                config::node_manifest(name, index, KWOK_NODE_ANNOTATION, KUBERNETES_VERSION)
            })
            .collect::<Vec<_>>()
            .join("---\n");
        let path = state.dir.join("nodes.yaml");
        fs::write(&path, manifest)
            .with_context(|| format!("failed to write {}", path.display()))?;
        // `create`, not `apply`: a Node's status is only taken from the object on creation, and
        // nodes that already exist belong to kwok and the node controller from then on.
        run_capture(
            state
                .kubectl(binaries)
                .arg("create")
                .arg("--filename")
                .arg(&path),
        )?;
        println!(
            "  created nodes {}",
            missing
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let kwok_log = state.daemon("kwok").log_file;
    process::wait_until("kwok nodes", Duration::from_secs(90), &kwok_log, || {
        let listing = match run_capture(state.kubectl(binaries).args(["get", "nodes"]).arg(
            format!("--output=jsonpath={}", config::NODE_READINESS_JSONPATH),
        )) {
            Ok(listing) => listing,
            Err(error) => return Probe::NotYet(format!("{error:#}")),
        };
        match config::unready_nodes(&listing, &NODES) {
            problems if problems.is_empty() => Probe::Ready,
            problems => Probe::NotYet(problems.join("; ")),
        }
    })
}

/// kube-controller-manager and kube-scheduler serve `/healthz` on their secure ports with a
/// certificate they generate in memory, so there is no CA to check it against; the probe only
/// needs the answer, over loopback.
fn component_healthz(port: u16) -> Result<()> {
    let answer = curl(&["--insecure", &format!("https://127.0.0.1:{port}/healthz")])?;
    if answer.trim() != "ok" {
        bail!("/healthz answered {:?}", answer.trim());
    }
    Ok(())
}

/// One short HTTP request; fails on a connection error or a non-2xx status.
pub fn curl(args: &[&str]) -> Result<String> {
    run_capture(
        Command::new("curl")
            // Loopback must never go through an HTTP proxy set in the environment.
            .args(["--noproxy", "*"])
            .args(["--silent", "--show-error", "--fail", "--max-time", "5"])
            .args(args),
    )
}
