//! `cargo xtask cluster up|down|status`: a single-node Kubernetes cluster on this machine whose
//! pods run in real containers, without Docker.
//!
//! The control plane is the environment's own (the same etcd, kube-apiserver, controller manager
//! and scheduler builds, started by [`kube::start_control_plane`]) with its own data under
//! `run/cluster/`; the node is a kubelet and kube-proxy of the same release, Debian's containerd,
//! runc and CNI plugins, and CoreDNS built from the Go module proxy, serving the cluster's names at
//! the node's address. Pod sandboxes run a pause image compiled from the release's own source.
//! Nothing is pulled: every image a pod names is imported into containerd first, and every
//! registry points at a closed loopback port.
//!
//! Nothing of the cluster leaves the machine: the pods sit on a bridge of their own, the API
//! server, kubelet, CoreDNS and the NodePorts listen on the bridge's address (and loopback) only,
//! CoreDNS forwards nothing, and firewall rules drop the pod and Service ranges on every other
//! interface (see [`host`]). `down` removes everything `up` and the node made — processes,
//! mounts, network namespaces, links, iptables chains, conntrack entries, cgroups, kernel
//! settings, the files kubelet and containerd keep at fixed paths — also after the node's
//! processes were killed, and checks that none of it is left. One `up`, `down` or e2e at a time:
//! each holds a lock on the cluster's directory.

pub mod config;
pub mod e2e;
pub mod host;

use std::fs::{self, File, TryLockError};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use self::config::{NODE_IP, NODE_NAME, Node, PAUSE_IMAGE};
use crate::env::kube::build::{Binaries, NodeBinaries};
use crate::env::kube::{self, CONTROL_PLANE, Nodes, State, pki};
use crate::env::process::{self, Daemon, Probe, run_capture, run_logged};
use crate::env::{Layout, ensure_apt_packages, remove_dir_if_exists};

/// The node's processes in start order; `down` stops them in reverse.
const NODE_DAEMONS: [&str; 4] = ["containerd", "coredns", "kubelet", "kube-proxy"];
/// What the node needs from Debian: the runtime, the CNI plugins, and the tools kubelet and
/// kube-proxy call (iptables, conntrack, mount, ip).
const PACKAGES: [&str; 7] = [
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "iproute2",
    "mount",
];
/// containerd's namespace for Kubernetes' images and containers.
pub const CONTAINERD_NAMESPACE: &str = "k8s.io";
/// How long a freshly started node may take to report Ready.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The cluster's files and processes.
#[derive(Debug)]
pub struct Cluster {
    pub node: Node,
    pub state: State,
}

impl Cluster {
    pub fn new(layout: &Layout) -> Self {
        let dir = layout.run().join("cluster");
        Self {
            node: Node::new(dir.clone()),
            state: State::at(dir, config::CONTROL_PLANE_PORTS),
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state.admin_kubeconfig()
    }

    fn daemon(&self, name: &str) -> Daemon {
        self.state.daemon(name)
    }

    fn daemons(&self) -> Vec<(String, Option<u32>)> {
        NODE_DAEMONS
            .iter()
            .chain(CONTROL_PLANE.iter())
            .map(|name| ((*name).to_owned(), self.daemon(name).running_pid()))
            .collect()
    }

    /// Holds the cluster's lock while the returned file lives; fails at once if another `up`,
    /// `down` or e2e holds it (a second `up` seeing half a node would tear the first one down).
    pub fn lock(&self) -> Result<File> {
        fs::create_dir_all(&self.node.dir)
            .with_context(|| format!("failed to create {}", self.node.dir.display()))?;
        let path = self.node.dir.join(".lock");
        let file =
            File::create(&path).with_context(|| format!("failed to open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(TryLockError::WouldBlock) => bail!(
                "another cargo xtask cluster or e2e command is running on this cluster (it holds \
                 {})",
                path.display()
            ),
            Err(TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("failed to lock {}", path.display()))
            }
        }
    }

    /// `ctr` against this node's containerd, in Kubernetes' namespace.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.node.containerd_socket())
            .args(["--namespace", CONTAINERD_NAMESPACE]);
        command
    }

    /// Imports an OCI archive into the node's containerd and checks that `reference`, fully
    /// qualified as the CRI looks it up, is there afterwards: otherwise kubelet would try to pull.
    pub fn import_image(&self, archive: &Path, reference: &str) -> Result<()> {
        let log = self.node.dir.join("images.log");
        run_logged(
            &format!("ctr images import {}", archive.display()),
            self.ctr()
                .args(["images", "import", "--snapshotter", "overlayfs"])
                .arg(archive),
            &log,
        )?;
        let qualified = qualified_reference(reference);
        let listing = run_capture(self.ctr().args(["images", "list", "--quiet"]))?;
        if !listing.lines().any(|line| line.trim() == qualified) {
            bail!(
                "after importing {}, containerd has no image {qualified} (it has: {}); a pod \
                 naming {reference} would try to pull it",
                archive.display(),
                listing.lines().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    }
}

/// The name the CRI resolves an image reference to: `docker.io/` before a reference whose first
/// part is not a registry host, and `library/` before a one-part Docker Hub name.
pub fn qualified_reference(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_registry = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        reference.to_owned()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    }
}

/// `cargo xtask cluster up`.
pub fn up_command(layout: &Layout) -> Result<()> {
    let cluster = Cluster::new(layout);
    let _lock = cluster.lock()?;
    up(layout, &cluster)
}

/// `cargo xtask cluster down`.
pub fn down_command(layout: &Layout) -> Result<()> {
    let cluster = Cluster::new(layout);
    let _lock = cluster.lock()?;
    down(&cluster)
}

/// Brings the cluster up, from nothing or from what a killed run left: when any of its processes
/// is missing, everything is torn down first and started anew. Returns once the node is Ready,
/// DNS answers and the default StorageClass exists. The caller holds the lock.
fn up(layout: &Layout, cluster: &Cluster) -> Result<()> {
    let started = Instant::now();
    if cluster.daemons().iter().all(|(_, pid)| pid.is_some()) {
        println!("==> cluster: already up; checking its network guards");
        // Idempotent, and what must hold whoever changed the firewall or settings since.
        host::create_bridge()?;
        host::install_guards()?;
        host::set_sysctls(&cluster.node)?;
        wait_node_ready(cluster, &kube::build::ensure(layout)?)?;
        return Ok(());
    }
    println!("==> cluster: clearing what an earlier run left");
    teardown(cluster)?;

    println!("==> cluster: installing and building the node's programs");
    ensure_apt_packages(layout, &PACKAGES)?;
    let node_binaries = kube::build::ensure_node(layout)?;

    println!("==> cluster: network");
    // The guards first: forwarding is only switched on once they hold.
    host::create_bridge()?;
    host::install_guards()?;
    host::set_sysctls(&cluster.node)?;
    println!("  {}", host::describe_guards());

    write_node_files(cluster)?;
    host::record_machine_dirs(&cluster.node)?;
    start_containerd(cluster)?;
    import_pause(layout, cluster, &node_binaries)?;

    println!("==> cluster: control plane");
    let nodes = Nodes::Real {
        node_ip: NODE_IP,
        node_name: NODE_NAME,
    };
    let binaries = kube::start_control_plane(layout, &cluster.state, nodes)?;
    apply_addons(cluster, &binaries)?;

    println!("==> cluster: node {NODE_NAME}");
    start_coredns(cluster, &node_binaries)?;
    start_kubelet(cluster, &node_binaries)?;
    start_kube_proxy(cluster, &node_binaries)?;
    wait_node_ready(cluster, &binaries)?;
    println!(
        "==> cluster: up in {:.0}s; KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        cluster.kubeconfig().display()
    );
    Ok(())
}

/// Stops and removes everything, then checks that nothing is left. The caller holds the lock.
fn down(cluster: &Cluster) -> Result<()> {
    println!("==> cluster: down");
    teardown(cluster)?;
    let left = host::leftovers(&cluster.node, &cluster.daemons());
    if !left.is_empty() {
        bail!("cluster down left behind:\n{}", describe_leftovers(&left));
    }
    println!(
        "  nothing of the cluster is left: no process, mount, network namespace, link, iptables \
         chain, conntrack entry, cgroup or file outside its directory"
    );
    Ok(())
}

/// Prints what runs and what is left; false when the cluster is not fully up.
pub fn status(layout: &Layout) -> bool {
    let cluster = Cluster::new(layout);
    let daemons = cluster.daemons();
    for (name, pid) in &daemons {
        match pid {
            Some(pid) => println!("{name:<24} running  pid {pid}"),
            None => println!("{name:<24} stopped"),
        }
    }
    let running = daemons.iter().all(|(_, pid)| pid.is_some());
    if running {
        println!("KUBECONFIG={}", cluster.kubeconfig().display());
        if let Ok(leaked) = host::leaked_packets() {
            println!(
                "packets of the cluster's ranges dropped on their way to another interface: \
                 {leaked}"
            );
        }
    } else {
        let left = host::leftovers(&cluster.node, &[]);
        if !left.is_empty() {
            println!("left on the machine (`cargo xtask cluster down` removes it):");
            println!("{}", describe_leftovers(&left));
        }
    }
    running
}

/// One line per kind of leftover: how many, and the first few.
fn describe_leftovers(left: &std::collections::BTreeMap<&'static str, Vec<String>>) -> String {
    left.iter()
        .map(|(kind, items)| {
            let shown: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
            let more = items.len().saturating_sub(shown.len());
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("  {kind}: {}: {}{tail}", items.len(), shown.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Stops the node and the control plane and removes what they made, in the order that lets each
/// step succeed: no process may hold a mount, a namespace or a cgroup that is being removed.
/// Every step runs even when an earlier one failed, except the removal of directories, which
/// waits until all their mounts are gone; the errors are reported together.
fn teardown(cluster: &Cluster) -> Result<()> {
    let mut failures = Vec::new();
    let mut note = |what: &str, result: Result<()>| {
        if let Err(error) = result {
            failures.push(format!("{what}: {error:#}"));
        }
    };
    for name in ["kube-proxy", "kubelet", "coredns"] {
        note(name, stop(&cluster.daemon(name)));
    }
    // The containers: containerd would stop them for kubelet; with either gone, SIGKILL does.
    note(
        "pod processes",
        host::kill_pod_processes(Duration::from_secs(20)).map(|killed| {
            if killed > 0 {
                println!("  killed {killed} pod process(es)");
            }
        }),
    );
    note("containerd", stop(&cluster.daemon("containerd")));
    let shims = host::shim_processes(&cluster.node);
    if !shims.is_empty() {
        host::kill_all(&shims);
        println!("  killed {} containerd shim(s)", shims.len());
        // A shim holds its container's rootfs mount until it is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while shims.iter().any(|pid| process::pid_alive(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    note("control plane", kube::stop_control_plane(&cluster.state));
    let unmounted = host::unmount_all(&host::mount_prefixes(&cluster.node));
    let mounts_gone = unmounted.is_ok();
    note("mounts", unmounted);
    note("network", host::remove_network());
    // The settings before the chains: kube-proxy's loopback guard must outlive route_localnet.
    note("sysctls", host::restore_sysctls(&cluster.node));
    note("iptables", host::remove_chains());
    host::flush_conntrack();
    note("cgroups", host::remove_pod_cgroups());
    if mounts_gone {
        note("files", host::remove_machine_paths(&cluster.node));
        // The cluster's state goes with it, as a deleted kind cluster's does; the PKI and
        // containerd's image store are kept, so the next `up` makes no certificates and imports
        // only what changed.
        for dir in [
            cluster.state.dir.join("etcd-data"),
            cluster.node.kubelet_dir(),
            cluster.node.kubelet_cert_dir(),
            cluster.node.pod_logs_dir(),
            cluster.node.volumes_dir(),
            cluster.node.cni_ipam_dir(),
            cluster.node.runtime_dir.clone(),
        ] {
            note(&dir.display().to_string(), remove_dir_if_exists(&dir));
        }
    } else {
        // remove_dir_all crosses mount points: a bind mount still in place would have its
        // source's files deleted. The directories wait for a `down` that unmounts everything.
        note(
            "directories",
            Err(anyhow::anyhow!(
                "kept the node's directories, some of their mounts are still there"
            )),
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

fn stop(daemon: &Daemon) -> Result<()> {
    if daemon.stop(Duration::from_secs(20))? {
        println!("  {} stopped", daemon.name);
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

fn write_node_files(cluster: &Cluster) -> Result<()> {
    let node = &cluster.node;
    write(&node.containerd_config(), &config::containerd_toml(node))?;
    for registry in config::REGISTRIES {
        write(
            &node.registry_hosts().join(registry).join("hosts.toml"),
            &config::registry_hosts_toml(),
        )?;
    }
    write(
        &node.cni_config_dir().join("10-order-pipeline.conflist"),
        &config::cni_conflist(node),
    )?;
    write(
        &node.kubelet_config(),
        &config::kubelet_yaml(node, &cluster.state.pki.ca_cert()),
    )?;
    write(&node.kubelet_resolv_conf(), "")?;
    write(
        &node.kube_proxy_config(),
        &config::kube_proxy_yaml(&cluster.state.component_kubeconfig(pki::KUBE_PROXY)),
    )?;
    write(
        &node.corefile(),
        &config::corefile(&cluster.state.component_kubeconfig(pki::COREDNS)),
    )?;
    for index in 0..config::VOLUMES {
        let path = config::volume_path(node, index);
        fs::create_dir_all(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        // hostPath volumes ignore fsGroup; the dependencies run as 999 and must write here.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777))
            .with_context(|| format!("failed to open up {}", path.display()))?;
    }
    Ok(())
}

fn start_containerd(cluster: &Cluster) -> Result<()> {
    let node = &cluster.node;
    fs::create_dir_all(&node.runtime_dir)
        .with_context(|| format!("failed to create {}", node.runtime_dir.display()))?;
    let daemon = cluster.daemon("containerd");
    println!("  starting containerd");
    daemon.spawn(
        Command::new("containerd")
            .arg("--config")
            .arg(node.containerd_config()),
    )?;
    daemon.wait_ready(Duration::from_secs(60), || {
        run_capture(cluster.ctr().arg("version")).map(drop)?;
        // The CRI plugin is what kubelet talks to; it loads after the socket answers.
        let plugins = run_capture(cluster.ctr().args(["plugins", "list"]))?;
        if !plugins.lines().any(|line| {
            line.contains("io.containerd.grpc.v1") && line.contains("cri") && line.contains("ok")
        }) {
            bail!("the CRI plugin is not loaded yet");
        }
        Ok(())
    })
}

/// The pause image: a one-layer OCI archive holding the static pause binary, made here (it is
/// tiny and its digest follows the binary), imported under [`PAUSE_IMAGE`].
fn import_pause(layout: &Layout, cluster: &Cluster, binaries: &NodeBinaries) -> Result<()> {
    let archive = layout.home.join("images").join("pause.oci.tar");
    oci::write_single_binary_image(&binaries.pause, "/pause", PAUSE_IMAGE, &archive)?;
    cluster.import_image(&archive, PAUSE_IMAGE)?;
    println!("  imported {PAUSE_IMAGE}");
    Ok(())
}

mod oci {
    //! A minimal OCI image archive writer for one static binary: enough for the pause image,
    //! without a builder.
    use std::fs;
    use std::path::Path;
    use std::process::Command;

    use anyhow::{Context, Result};

    use crate::env::process::run_capture;
    use crate::images::dependencies::sha256_bytes;

    fn blob(layout: &Path, bytes: &[u8]) -> Result<(String, usize)> {
        let digest = sha256_bytes(bytes)?;
        fs::write(layout.join("blobs/sha256").join(&digest), bytes)?;
        Ok((digest, bytes.len()))
    }

    pub fn write_single_binary_image(
        binary: &Path,
        path_in_image: &str,
        reference: &str,
        archive: &Path,
    ) -> Result<()> {
        let layout = archive.with_extension("layout");
        if layout.exists() {
            fs::remove_dir_all(&layout)?;
        }
        fs::create_dir_all(layout.join("blobs/sha256"))?;
        let root = layout.join("root");
        fs::create_dir_all(&root)?;
        let name = path_in_image.trim_start_matches('/');
        fs::copy(binary, root.join(name)).context("failed to stage the binary")?;
        let layer_tar = layout.join("layer.tar");
        run_capture(
            Command::new("tar")
                .args(["--create", "--sort=name", "--mtime=@0"])
                .args(["--owner=0", "--group=0", "--numeric-owner", "--file"])
                .arg(&layer_tar)
                .arg("--directory")
                .arg(&root)
                .arg(name),
        )?;
        let (layer, layer_size) = blob(&layout, &fs::read(&layer_tar)?)?;
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["{path_in_image}"],"User":"65535:65535"}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer}"]}}}}"#
        );
        let (config_digest, config_size) = blob(&layout, config.as_bytes())?;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer}","size":{layer_size}}}]}}"#
        );
        let (manifest_digest, manifest_size) = blob(&layout, manifest.as_bytes())?;
        let tag = reference.rsplit_once(':').map_or("latest", |(_, tag)| tag);
        fs::write(
            layout.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"{reference}","org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#
            ),
        )?;
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        if let Some(parent) = archive.parent() {
            fs::create_dir_all(parent)?;
        }
        run_capture(
            Command::new("tar")
                .args(["--create", "--sort=name", "--mtime=@0"])
                .args(["--owner=0", "--group=0", "--numeric-owner", "--file"])
                .arg(archive)
                .arg("--directory")
                .arg(&layout)
                .args(["oci-layout", "index.json", "blobs"]),
        )?;
        fs::remove_dir_all(&layout)?;
        Ok(())
    }
}

fn kubectl(cluster: &Cluster, binaries: &Binaries) -> Command {
    cluster.state.kubectl(binaries)
}

fn apply_addons(cluster: &Cluster, binaries: &Binaries) -> Result<()> {
    let path = cluster.node.addons();
    write(
        &path,
        &config::addons(
            &cluster.node,
            pki::COREDNS_USER,
            pki::APISERVER_KUBELET_CLIENT_USER,
        ),
    )?;
    run_capture(
        kubectl(cluster, binaries)
            .args([
                "apply",
                "--server-side",
                "--field-manager=cargo-xtask-cluster",
                "--filename",
            ])
            .arg(&path),
    )
    .context("failed to apply the cluster's add-ons (RBAC, StorageClass, volumes)")?;
    println!(
        "  applied RBAC for the API server and CoreDNS, StorageClass standard and {} volumes",
        config::VOLUMES
    );
    Ok(())
}

fn start_coredns(cluster: &Cluster, binaries: &NodeBinaries) -> Result<()> {
    kube::start(
        &cluster.daemon("coredns"),
        &[config::COREDNS_READY_PORT, config::COREDNS_HEALTH_PORT],
        Duration::from_secs(60),
        || {
            let mut command = Command::new(&binaries.coredns);
            command.arg("-conf").arg(cluster.node.corefile());
            command
        },
        || {
            kube::curl(&[&format!(
                "http://127.0.0.1:{}/ready",
                config::COREDNS_READY_PORT
            )])
            .map(drop)
        },
    )
}

fn start_kubelet(cluster: &Cluster, binaries: &NodeBinaries) -> Result<()> {
    let node = &cluster.node;
    kube::start(
        &cluster.daemon("kubelet"),
        &[config::KUBELET_HEALTHZ_PORT],
        Duration::from_secs(60),
        || {
            let mut command = Command::new(&binaries.kubelet);
            command
                .arg(format!("--config={}", node.kubelet_config().display()))
                .arg(format!(
                    "--kubeconfig={}",
                    cluster.state.component_kubeconfig(pki::KUBELET).display()
                ))
                .arg(format!("--root-dir={}", node.kubelet_dir().display()))
                .arg(format!("--cert-dir={}", node.kubelet_cert_dir().display()))
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg(format!("--node-ip={NODE_IP}"))
                .arg("--v=1");
            command
        },
        || {
            kube::curl(&[&format!(
                "http://127.0.0.1:{}/healthz",
                config::KUBELET_HEALTHZ_PORT
            )])
            .map(drop)
        },
    )
}

fn start_kube_proxy(cluster: &Cluster, binaries: &NodeBinaries) -> Result<()> {
    kube::start(
        &cluster.daemon("kube-proxy"),
        &[
            config::KUBE_PROXY_METRICS_PORT,
            config::KUBE_PROXY_HEALTHZ_PORT,
        ],
        Duration::from_secs(60),
        || {
            let mut command = Command::new(&binaries.kube_proxy);
            command
                .arg(format!(
                    "--config={}",
                    cluster.node.kube_proxy_config().display()
                ))
                .arg("--v=1");
            command
        },
        || {
            kube::curl(&[&format!(
                "http://127.0.0.1:{}/healthz",
                config::KUBE_PROXY_HEALTHZ_PORT
            )])
            .map(drop)
        },
    )
}

fn wait_node_ready(cluster: &Cluster, binaries: &Binaries) -> Result<()> {
    let log = cluster.daemon("kubelet").log_file;
    process::wait_until(
        &format!("node {NODE_NAME} Ready"),
        NODE_READY_TIMEOUT,
        &log,
        || match run_capture(kubectl(cluster, binaries).args([
            "get",
            "node",
            NODE_NAME,
            "--output=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])) {
            Ok(status) if status.trim() == "True" => Probe::Ready,
            Ok(status) => Probe::NotYet(format!("Ready={}", status.trim())),
            Err(error) => Probe::NotYet(format!("{error:#}")),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_qualified_as_the_cri_looks_them_up() {
        assert_eq!(
            qualified_reference("order-pipeline/gateway:0.1.0"),
            "docker.io/order-pipeline/gateway:0.1.0"
        );
        assert_eq!(
            qualified_reference("redis:7.4.1-alpine"),
            "docker.io/library/redis:7.4.1-alpine"
        );
        assert_eq!(
            qualified_reference("localhost/order-pipeline-deps/redis:7.0.15-abc"),
            "localhost/order-pipeline-deps/redis:7.0.15-abc"
        );
        assert_eq!(
            qualified_reference("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(qualified_reference("host:5000/a/b:1"), "host:5000/a/b:1");
    }
}
