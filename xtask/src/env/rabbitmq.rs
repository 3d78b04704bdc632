//! A three-node RabbitMQ cluster (Debian's `rabbitmq-server`) on loopback: nodes
//! `rabbit1@localhost` to `rabbit3@localhost`, AMQP on 5672-5674, management on 15672-15674.
//!
//! Why a cluster: the seed ran two independent brokers, so "failing over" from one to the other
//! stranded every message published to the first, and a failover test proved nothing. One cluster
//! with quorum queues (replicated over all three nodes) keeps a queue and its messages available
//! when a node dies, which is what the failover tests need to exercise. `node-ctl` lets them stop,
//! crash and restart single nodes.
//!
//! This is the clustering guide's "several nodes on one host" setup: each node gets its own node
//! name, ports, data and log directories, through the environment variables RabbitMQ's scripts
//! read. Everything lives in `run/rabbitmq/`:
//!
//! - `.erlang.cookie`: the one cookie shared by the nodes and the CLI tools. Both run with `HOME`
//!   set to this directory, so the user's own `~/.erlang.cookie` is never read or written.
//! - `node-ctl`: the script tests use to stop, kill and start a node.
//! - `nodeN/env`: node N's complete environment as shell `export`s. `up` and `node-ctl` start the
//!   node, and run the CLI tools against it, with this file as the only environment, so a node
//!   restarted by a test is configured exactly like one started by `up`.
//! - `nodeN/rabbitmq.conf`, `nodeN/enabled_plugins`, `nodeN/mnesia/` (data), `nodeN/log/`
//!   (RabbitMQ's own logs), `nodeN/server.log` and `server.pid` (the process we supervise) and
//!   `nodeN/beam.pid` (its Erlang VM, written by RabbitMQ).
//!
//! Each node runs `/usr/lib/rabbitmq/bin/rabbitmq-server` in the foreground as the current user
//! (the `/usr/sbin` wrapper would switch to the `rabbitmq` user and its home). In the foreground
//! that script stays as a small shell around the VM and forwards SIGTERM to it: it only `exec`s
//! the VM under systemd, detached, or with an Erlang shell on stdin (which halts at once on our
//! `/dev/null`). So the pid we spawn is the shell's, and the VM, the process that matters, is
//! found through `beam.pid`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::process::{
    Daemon, Probe, ensure_port_free, pid_alive, port_open, run_capture, tail, terminate, wait_until,
};
use super::{Component, Layout, Status, ensure_apt_packages, find_program};
use crate::template::fill;

/// Debian installs the real scripts here; the `/usr/sbin` ones are wrappers that `su` to the
/// `rabbitmq` user, which would give the nodes and the CLI that user's home and cookie.
const BIN_DIR: &str = "/usr/lib/rabbitmq/bin";

const USER: &str = "guest";
const PASSWORD: &str = "guest";

/// How long a node may take to boot. Three nodes boot at once on a small machine, and a node
/// restarting from existing data may wait for its peers first.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a graceful stop may take before the VM is killed.
/// How many failed boots `up` starts again (see [`Cluster::wait_running`]).
const BOOT_RESTARTS: u32 = 2;
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a program with a node's env file as its whole environment: `sh -c LAUNCH sh <env file>
/// <program> [args]`. Both `up` (through [`Command`]) and `node-ctl` use exactly this string, so
/// a node cannot be started or queried differently by the two. The `cd` keeps the servers from
/// holding on to (and writing into) whatever directory the caller happened to be in; `sh`
/// exports that directory as `OLDPWD`, which would make the two environments differ.
const LAUNCH: &str = r#". "$1" && cd "$HOME" && unset OLDPWD && shift && exec "$@""#;

/// A fixed `PATH` keeps the environment identical wherever `up` or `node-ctl` is run from, and
/// keeps a locally installed `erl` (kerl, asdf) from replacing the one Debian's RabbitMQ needs.
const NODE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// One of the three nodes, numbered 1 to 3 as in its name and in `node-ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node(u8);

impl Node {
    const ALL: [Node; 3] = [Node(1), Node(2), Node(3)];
    /// The node the others join.
    const SEED: Node = Node(1);

    fn name(self) -> String {
        format!("rabbit{}@localhost", self.0)
    }
    fn offset(self) -> u16 {
        u16::from(self.0 - 1)
    }
    fn amqp_port(self) -> u16 {
        5672 + self.offset()
    }
    fn management_port(self) -> u16 {
        15672 + self.offset()
    }
    /// Erlang distribution: clustering and the CLI tools.
    fn dist_port(self) -> u16 {
        25672 + self.offset()
    }
    fn amqp_url(self) -> String {
        format!(
            "amqp://{USER}:{PASSWORD}@127.0.0.1:{}/%2f",
            self.amqp_port()
        )
    }
    fn management_url(self) -> String {
        format!("http://127.0.0.1:{}", self.management_port())
    }
}

/// Paths and commands of the cluster under `run/rabbitmq/`.
#[derive(Debug)]
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn new(layout: &Layout) -> Self {
        Self {
            dir: layout.run_dir(Component::Rabbitmq),
        }
    }

    fn cookie_file(&self) -> PathBuf {
        self.dir.join(".erlang.cookie")
    }
    fn node_ctl(&self) -> PathBuf {
        self.dir.join("node-ctl")
    }
    fn node_dir(&self, node: Node) -> PathBuf {
        self.dir.join(format!("node{}", node.0))
    }
    fn env_file(&self, node: Node) -> PathBuf {
        self.node_dir(node).join("env")
    }
    fn config_file(&self, node: Node) -> PathBuf {
        self.node_dir(node).join("rabbitmq.conf")
    }
    fn plugins_file(&self, node: Node) -> PathBuf {
        self.node_dir(node).join("enabled_plugins")
    }
    fn log_dir(&self, node: Node) -> PathBuf {
        self.node_dir(node).join("log")
    }
    fn vm_pid_file(&self, node: Node) -> PathBuf {
        self.node_dir(node).join("beam.pid")
    }
    /// The foreground `rabbitmq-server` shell: its pid file and its stdout/stderr.
    fn daemon(&self, node: Node) -> Daemon {
        Daemon::new(
            format!("rabbitmq node {}", node.0),
            &self.node_dir(node),
            "server",
        )
    }

    /// Node `node`'s whole environment: what `rabbitmq-server` and the CLI tools run with.
    fn node_env(&self, node: Node) -> Vec<(&'static str, String)> {
        let dir = self.node_dir(node);
        let path = |p: PathBuf| p.display().to_string();
        vec![
            ("PATH", NODE_PATH.to_owned()),
            // The Erlang cookie is read from $HOME/.erlang.cookie, by the nodes and the CLI alike.
            ("HOME", path(self.dir.clone())),
            // The CLI tools (Elixir) warn, and mangle non-ASCII output, without a UTF-8 locale.
            ("LC_ALL", "C.UTF-8".to_owned()),
            // Whichever process starts epmd first makes it listen on loopback only.
            ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
            ("RABBITMQ_NODENAME", node.name()),
            ("RABBITMQ_NODE_PORT", node.amqp_port().to_string()),
            ("RABBITMQ_DIST_PORT", node.dist_port().to_string()),
            // Like AMQP and management, distribution only listens on loopback.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".to_owned(),
            ),
            ("RABBITMQ_MNESIA_BASE", path(dir.join("mnesia"))),
            ("RABBITMQ_LOG_BASE", path(self.log_dir(node))),
            // Otherwise a VM that dies early writes its crash dump into the working directory.
            (
                "ERL_CRASH_DUMP",
                path(self.log_dir(node).join("erl_crash.dump")),
            ),
            ("RABBITMQ_CONFIG_FILE", path(self.config_file(node))),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path(self.plugins_file(node)),
            ),
            ("RABBITMQ_PID_FILE", path(self.vm_pid_file(node))),
            // Keep the machine's own broker configuration out: /etc/rabbitmq/rabbitmq-env.conf
            // could rename the node, and advanced.config (never written here) could override
            // rabbitmq.conf.
            ("RABBITMQ_CONF_ENV_FILE", "/dev/null".to_owned()),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                path(dir.join("advanced.config")),
            ),
        ]
    }

    /// Runs `tool` (a RabbitMQ CLI tool in [`BIN_DIR`]) against `node`, in that node's
    /// environment.
    fn cli(&self, tool: &str, node: Node) -> Command {
        let mut command = self.launch(node, &Path::new(BIN_DIR).join(tool));
        command.arg("-n").arg(node.name());
        command
    }

    /// `program` with the node's env file as its whole environment.
    fn launch(&self, node: Node, program: &Path) -> Command {
        let mut command = Command::new("/bin/sh");
        command
            .env_clear()
            .args(["-c", LAUNCH, "sh"])
            .arg(self.env_file(node))
            .arg(program);
        command
    }

    /// The pid of the node's Erlang VM, if it runs. The pid file is left behind when the VM is
    /// killed, so the pid must also carry this node's environment: a reused pid is not the node.
    fn vm_pid(&self, node: Node) -> Option<u32> {
        let pid_file = self.vm_pid_file(node);
        let pid: u32 = fs::read_to_string(&pid_file).ok()?.trim().parse().ok()?;
        let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
        let marker = format!("RABBITMQ_PID_FILE={}", pid_file.display());
        let ours = environ
            .split(|&byte| byte == 0)
            .any(|var| var == marker.as_bytes());
        (ours && pid_alive(pid)).then_some(pid)
    }

    /// Whether any process of the node is alive: the VM, or the shell that is about to start it.
    fn node_alive(&self, node: Node) -> bool {
        self.vm_pid(node).is_some() || self.daemon(node).running_pid().is_some()
    }

    /// Writes the cookie, each node's configuration and env file, and `node-ctl`. Rewritten on
    /// every `up` so that a changed layout reaches `node-ctl`; a running node only reads its
    /// files at boot, and the content is the same from one run to the next.
    fn write_files(&self) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("failed to create {}", self.dir.display()))?;
        ensure_cookie(&self.cookie_file())?;
        for node in Node::ALL {
            let dir = self.node_dir(node);
            fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            write(&self.config_file(node), &render_config(node))?;
            // Management only: it serves the HTTP API the tests and people use to look at queues.
            write(&self.plugins_file(node), "[rabbitmq_management].\n")?;
            write(
                &self.env_file(node),
                &render_env_file(node, &self.node_env(node)),
            )?;
        }
        let script = self.node_ctl();
        write(&script, &self.render_node_ctl()?)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("failed to make {} executable", script.display()))
    }

    /// The `node-ctl` script. Every path, name and command in it comes from the same methods the
    /// Rust side uses.
    fn render_node_ctl(&self) -> Result<String> {
        // Per node: its name, env file, server pid file, server log, VM pid file and log dir.
        let nodes: Vec<(String, String)> = Node::ALL
            .into_iter()
            .map(|node| {
                let daemon = self.daemon(node);
                let words = [
                    shell_quote(&node.name()),
                    shell_quote_path(&self.env_file(node)),
                    shell_quote_path(&daemon.pid_file),
                    shell_quote_path(&daemon.log_file),
                    shell_quote_path(&self.vm_pid_file(node)),
                    shell_quote_path(&self.log_dir(node)),
                ];
                (format!("NODE_{}", node.0), words.join(" "))
            })
            .collect();
        let mut values = vec![
            ("PATH", shell_quote(NODE_PATH)),
            ("LAUNCH", shell_quote(LAUNCH)),
            ("BIN_DIR", shell_quote(BIN_DIR)),
            ("START_TIMEOUT", START_TIMEOUT.as_secs().to_string()),
            ("STOP_TIMEOUT", STOP_TIMEOUT.as_secs().to_string()),
        ];
        values.extend(
            nodes
                .iter()
                .map(|(name, words)| (name.as_str(), words.clone())),
        );
        let values: Vec<(&str, &str)> = values
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        fill(NODE_CTL_TEMPLATE, &values)
    }

    /// Fails when another process listens on one of the node's ports, so that we never
    /// silently use someone else's broker.
    fn ensure_ports_free(&self, node: Node) -> Result<()> {
        for (port, what) in [
            (node.amqp_port(), "AMQP"),
            (node.management_port(), "management"),
            (node.dist_port(), "Erlang distribution"),
        ] {
            // Installing the package starts Debian's own broker where systemd runs, on 5672 and
            // 25672: the likeliest owner of these ports on a fresh machine.
            ensure_port_free(port, &format!("{} {what}", node.name())).context(
                "if it is the system's RabbitMQ service, stop it for good with \
                 `systemctl disable --now rabbitmq-server`",
            )?;
        }
        Ok(())
    }

    /// Starts the node's `rabbitmq-server` in the foreground, supervised by a [`Daemon`].
    fn spawn(&self, node: Node) -> Result<()> {
        println!(
            "  starting {} (amqp 127.0.0.1:{}, management {})",
            node.name(),
            node.amqp_port(),
            node.management_url()
        );
        let server = Path::new(BIN_DIR).join("rabbitmq-server");
        self.daemon(node).spawn(&mut self.launch(node, &server))?;
        Ok(())
    }

    /// Waits until the RabbitMQ application runs on the node, which for a clustered node also
    /// means it has synced with its peers.
    ///
    /// A node whose boot failed is started again, at most [`BOOT_RESTARTS`] times over the whole
    /// `up`: nodes that boot together race in RabbitMQ 3.10. A node syncing its feature flags
    /// with a peer whose flag registry is being rebuilt gets `{badmap,undefined}` back from that
    /// peer and stops with `incompatible_feature_flags`. Started again once the peer is up, it
    /// boots. Any other death, or a boot that keeps failing, ends the wait: the others would wait
    /// for the dead node at boot, and the error must name it and show its log.
    fn wait_running(&self, node: Node, restarts: &mut u32) -> Result<()> {
        let daemon = self.daemon(node);
        let mut dead = None;
        let waited = wait_until(&daemon.name, START_TIMEOUT, &daemon.log_file, || {
            dead = Node::ALL.into_iter().find(|&any| !self.node_alive(any));
            if let Some(dead) = dead {
                let log = self.daemon(dead).log_file;
                let Some(reason) = boot_failure(&tail(&log, 200)) else {
                    return Probe::Fatal(format!("{} exited", dead.name()));
                };
                if *restarts >= BOOT_RESTARTS {
                    return Probe::Fatal(format!(
                        "{} failed to boot ({reason}) after {restarts} restarts",
                        dead.name()
                    ));
                }
                *restarts += 1;
                println!(
                    "  {} failed to boot ({reason}); starting it again ({restarts}/{BOOT_RESTARTS})",
                    dead.name()
                );
                if let Err(error) = self.spawn(dead) {
                    return Probe::Fatal(format!("{error:#}"));
                }
                return Probe::NotYet(format!("{} restarted", dead.name()));
            }
            // The CLI tools take half a second of CPU per call; while the VM has not even opened
            // its distribution port they cannot reach it, and would only slow the boot down.
            if !port_open(node.dist_port()) {
                return Probe::NotYet("Erlang distribution port not open yet".into());
            }
            let mut await_startup = self.cli("rabbitmqctl", node);
            await_startup
                .args(["--quiet", "await_startup", "--timeout", "10"])
                .stdin(Stdio::null());
            match await_startup.output() {
                Ok(output) if output.status.success() => Probe::Ready,
                Ok(output) => Probe::NotYet(format!(
                    "await_startup: {}",
                    cli_error_summary(&String::from_utf8_lossy(&output.stderr))
                )),
                Err(error) => Probe::Fatal(format!("cannot run rabbitmqctl: {error}")),
            }
        });
        match dead {
            Some(dead) if dead != node => {
                let log = self.daemon(dead).log_file;
                bail!(
                    "{} exited while the cluster was starting\n--- last lines of {} ---\n{}\n\
                     --- full log: {}; RabbitMQ's own logs are in {} ---",
                    dead.name(),
                    log.display(),
                    tail(&log, 40),
                    log.display(),
                    self.log_dir(dead).display()
                )
            }
            _ => waited.with_context(|| {
                format!(
                    "{} did not start; RabbitMQ's own logs are in {}",
                    node.name(),
                    self.log_dir(node).display()
                )
            }),
        }
    }

    fn ctl(&self, node: Node, args: &[&str]) -> Result<String> {
        let mut command = self.cli("rabbitmqctl", node);
        command.args(args);
        run_capture(&mut command)
            .with_context(|| format!("rabbitmqctl {} on {} failed", args.join(" "), node.name()))
    }

    fn cluster_status(&self, node: Node) -> Result<ClusterStatus> {
        let json = self.ctl(node, &["--quiet", "cluster_status", "--formatter", "json"])?;
        ClusterStatus::parse(&json)
            .with_context(|| format!("unexpected cluster_status output: {json}"))
    }

    /// Makes nodes 2 and 3 members of node 1's cluster where they are not yet, then checks that
    /// all three run in it.
    fn form(&self) -> Result<()> {
        let mut status = self.cluster_status(Node::SEED)?;
        let mut joined = false;
        for node in Node::ALL {
            if node == Node::SEED || status.is_member(&node.name()) {
                continue;
            }
            println!("  {} joining {}", node.name(), Node::SEED.name());
            self.ctl(node, &["stop_app"])?;
            // The node is not in the seed's cluster, so whatever cluster it remembers is stale
            // (or it is new); a plain `reset` would try to leave that cluster through its peers.
            self.ctl(node, &["force_reset"])?;
            self.ctl(node, &["join_cluster", &Node::SEED.name()])?;
            self.ctl(node, &["start_app"])?;
            joined = true;
        }
        if joined {
            status = self.cluster_status(Node::SEED)?;
        }
        let expected: Vec<String> = Node::ALL.iter().map(|node| node.name()).collect();
        let mut running = status.running_nodes.clone();
        running.sort();
        if running != expected {
            bail!(
                "the cluster does not have all nodes running: running {:?}, members {:?}, \
                 expected {:?}; if a node's data was removed by hand, recreate the cluster with \
                 `cargo xtask env down --purge rabbitmq`",
                status.running_nodes,
                status.members().collect::<Vec<_>>(),
                expected
            );
        }
        Ok(())
    }

    /// Quorum queues need the `quorum_queue` feature flag, which a cluster formed from an older
    /// node could lack. Enabling every stable flag is what RabbitMQ recommends after an upgrade
    /// and changes nothing when they are on already.
    fn enable_feature_flags(&self) -> Result<()> {
        self.ctl(Node::SEED, &["--quiet", "enable_feature_flag", "all"])?;
        let flags = self.ctl(
            Node::SEED,
            &[
                "--quiet",
                "list_feature_flags",
                "--no-table-headers",
                "name",
                "state",
            ],
        )?;
        match feature_flag_state(&flags, "quorum_queue") {
            Some("enabled") => Ok(()),
            state => bail!("feature flag quorum_queue is {state:?}, not enabled:\n{flags}"),
        }
    }

    /// Stops the node gracefully through `rabbitmqctl stop`, which waits for the VM to exit,
    /// and falls back to signals when the node does not answer.
    fn stop_node(&self, node: Node) -> Result<()> {
        let daemon = self.daemon(node);
        let vm_pid_file = self.vm_pid_file(node);
        let mut stopped = false;
        if let Some(pid) = self.vm_pid(node) {
            let vm_pid_file = vm_pid_file.display().to_string();
            if let Err(error) = self.ctl(node, &["--quiet", "stop", &vm_pid_file]) {
                println!("  {error:#}\n  terminating {} (pid {pid})", node.name());
            }
            if pid_alive(pid) {
                terminate(pid, STOP_TIMEOUT)?;
            }
            stopped = true;
        }
        // The shell exits with its VM; this also stops a shell whose VM never came up.
        stopped |= daemon.stop(STOP_TIMEOUT)?;
        let _ = fs::remove_file(&vm_pid_file);
        if stopped {
            println!("  {} stopped", node.name());
        }
        Ok(())
    }
}

/// The parts of `rabbitmqctl cluster_status --formatter json` that matter here.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
struct ClusterStatus {
    disk_nodes: Vec<String>,
    ram_nodes: Vec<String>,
    running_nodes: Vec<String>,
}

impl ClusterStatus {
    fn parse(json: &str) -> Result<Self> {
        serde_json::from_str(json).context("unexpected `rabbitmqctl cluster_status` output")
    }

    fn members(&self) -> impl Iterator<Item = &str> {
        self.disk_nodes
            .iter()
            .chain(&self.ram_nodes)
            .map(String::as_str)
    }

    fn is_member(&self, name: &str) -> bool {
        self.members().any(|member| member == name)
    }
}

pub fn up(layout: &Layout) -> Result<BTreeMap<&'static str, String>> {
    ensure_apt_packages(layout, &["rabbitmq-server"])?;
    for tool in ["rabbitmq-server", "rabbitmqctl"] {
        let path = Path::new(BIN_DIR).join(tool);
        if !path.is_file() {
            bail!(
                "{} is missing although rabbitmq-server is installed",
                path.display()
            );
        }
    }
    ensure_localhost_resolves()?;
    let cluster = Cluster::new(layout);
    cluster.write_files()?;
    let stopped: Vec<Node> = Node::ALL
        .into_iter()
        .filter(|&node| !cluster.node_alive(node))
        .collect();
    // All ports first, so that a conflict on node 3 does not leave nodes 1 and 2 running.
    for &node in &stopped {
        cluster.ensure_ports_free(node)?;
    }
    // Start every stopped node before waiting for any: a node that was stopped as part of a
    // cluster waits at boot for the peers it last saw, so after `down` no node comes up alone.
    for &node in &stopped {
        cluster.spawn(node)?;
    }
    let mut restarts = 0;
    for node in Node::ALL {
        cluster.wait_running(node, &mut restarts)?;
    }
    cluster.form()?;
    cluster.enable_feature_flags()?;
    let join = |f: fn(Node) -> String| Node::ALL.map(f).join(",");
    Ok(BTreeMap::from([
        ("OP_RABBITMQ_URLS", join(Node::amqp_url)),
        ("OP_RABBITMQ_MANAGEMENT_URLS", join(Node::management_url)),
        ("OP_RABBITMQ_NODES", join(Node::name)),
        ("OP_RABBITMQ_USER", USER.to_owned()),
        ("OP_RABBITMQ_PASSWORD", PASSWORD.to_owned()),
        (
            "OP_RABBITMQ_NODE_CTL",
            cluster.node_ctl().display().to_string(),
        ),
    ]))
}

/// Makes `user` (or resets its password) with `permissions` on the vhost `/` of the running
/// cluster. The password goes to `rabbitmqctl` on its standard input, never on a command line;
/// errors name the user, not the password.
pub fn grant(
    layout: &Layout,
    user: &str,
    password: &str,
    permissions: &pipeline_contract::access::RabbitmqPermissions,
) -> Result<()> {
    let cluster = Cluster::new(layout);
    let node = Node::SEED;
    let exists = cluster
        .ctl(node, &["--quiet", "list_users", "--no-table-headers"])?
        .lines()
        .any(|line| line.split_whitespace().next() == Some(user));
    let verb = if exists {
        "change_password"
    } else {
        "add_user"
    };
    let mut command = cluster.cli("rabbitmqctl", node);
    command
        .args(["--quiet", verb, user])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("failed to run rabbitmqctl {verb} {user}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}")?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl {verb} {user} failed: {}",
            cli_error_summary(&String::from_utf8_lossy(&output.stderr))
        );
    }
    cluster.ctl(
        node,
        &[
            "--quiet",
            "set_permissions",
            "-p",
            "/",
            user,
            &permissions.configure,
            &permissions.write,
            &permissions.read,
        ],
    )?;
    Ok(())
}

pub fn down(layout: &Layout) -> Result<()> {
    let cluster = Cluster::new(layout);
    // In parallel: a graceful stop takes about seven seconds, mostly waiting. `up` starts all
    // nodes together, so it does not matter which one stopped last.
    let failures: Vec<String> = thread::scope(|scope| {
        let cluster = &cluster;
        let stops = Node::ALL.map(|node| scope.spawn(move || cluster.stop_node(node)));
        stops
            .into_iter()
            .filter_map(|stop| match stop.join() {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(format!("{error:#}")),
                Err(_) => Some("stopping a node panicked".to_owned()),
            })
            .collect()
    });
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    stop_idle_epmd()
}

/// Stops epmd, the Erlang port mapper our nodes (or the CLI tools) started as a daemon, unless
/// some other Erlang node still depends on it.
fn stop_idle_epmd() -> Result<()> {
    let Some(epmd) = find_program("epmd", &["/usr/bin/epmd"]) else {
        return Ok(());
    };
    // Fails when no epmd runs, which is the state we want.
    let Ok(names) = run_capture(Command::new(&epmd).arg("-names")) else {
        return Ok(());
    };
    let nodes = epmd_names(&names);
    if !nodes.is_empty() {
        println!(
            "  epmd left running: other Erlang nodes use it ({})",
            nodes.join(", ")
        );
        return Ok(());
    }
    run_capture(Command::new(&epmd).arg("-kill")).context("failed to stop epmd")?;
    println!("  epmd stopped");
    Ok(())
}

pub fn status(layout: &Layout) -> Status {
    // No CLI tool here: they are slow, and would start an epmd when the nodes are down.
    let cluster = Cluster::new(layout);
    let mut running = true;
    let mut details = Vec::new();
    for node in Node::ALL {
        let detail = match cluster.vm_pid(node) {
            Some(pid) if port_open(node.amqp_port()) => format!(
                "{} pid {pid} (amqp 127.0.0.1:{}, management {}{})",
                node.name(),
                node.amqp_port(),
                node.management_url(),
                if port_open(node.management_port()) {
                    ""
                } else {
                    " not answering"
                }
            ),
            Some(pid) => {
                running = false;
                format!(
                    "{} pid {pid} not accepting AMQP on {}",
                    node.name(),
                    node.amqp_port()
                )
            }
            None => {
                running = false;
                format!("{} stopped", node.name())
            }
        };
        details.push(detail);
    }
    Status {
        running,
        detail: details.join("; "),
    }
}

/// The nodes are named `rabbitN@localhost` and listen on 127.0.0.1 only, so `localhost` must
/// resolve there, for the VMs (through the system resolver) as for us.
fn ensure_localhost_resolves() -> Result<()> {
    let addrs: Vec<_> = ("localhost", 0)
        .to_socket_addrs()
        .context("the host name localhost does not resolve")?
        .collect();
    if !addrs
        .iter()
        .any(|addr| addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST))
    {
        bail!(
            "localhost resolves to {addrs:?}, not 127.0.0.1; add `127.0.0.1 localhost` to /etc/hosts"
        );
    }
    Ok(())
}

/// Creates the shared Erlang cookie once. Erlang refuses a cookie others can read.
fn ensure_cookie(path: &Path) -> Result<()> {
    if path.exists() {
        return fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to restrict {}", path.display()));
    }
    let mut random = [0u8; 20];
    fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut random))
        .context("failed to read /dev/urandom")?;
    // Upper-case letters, like the cookies Erlang generates itself.
    let cookie: String = random.iter().map(|b| char::from(b'A' + b % 26)).collect();
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(cookie.as_bytes()))
        .with_context(|| format!("failed to write {}", path.display()))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("failed to write {}", path.display()))
}

/// A node's `rabbitmq.conf`.
fn render_config(node: Node) -> String {
    format!(
        "# Generated by `cargo xtask env up` for {name}; rewritten on every run.\n\
         cluster_name = order-pipeline\n\
         listeners.tcp.default = 127.0.0.1:{amqp}\n\
         management.tcp.ip = 127.0.0.1\n\
         management.tcp.port = {management}\n",
        name = node.name(),
        amqp = node.amqp_port(),
        management = node.management_port(),
    )
}

/// A node's env file: sourced by `sh` as the whole environment of the node and its CLI tools.
fn render_env_file(node: Node, vars: &[(&str, String)]) -> String {
    let mut text = format!(
        "# Generated by `cargo xtask env up`: the environment of {}, for both `up` and \
         node-ctl.\n",
        node.name()
    );
    for (key, value) in vars {
        text.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    text
}

/// Quotes a string for POSIX `sh`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn shell_quote_path(path: &Path) -> String {
    shell_quote(&path.display().to_string())
}

/// One line of a failed CLI call's stderr for a progress line. When the node cannot be reached,
/// the first line is always the same generic "unable to perform an operation"; epmd's view of
/// the node, further down, says more.
fn cli_error_summary(stderr: &str) -> &str {
    let mut lines = stderr
        .lines()
        .map(|line| line.trim().trim_start_matches("* ").trim())
        .filter(|line| !line.is_empty());
    let first = lines.clone().next();
    lines
        .find(|line| line.starts_with("epmd reports:"))
        .or(first)
        .unwrap_or("failed without a message")
}

/// What stopped a node's boot, from the end of its server log: RabbitMQ prints `BOOT FAILED`
/// and then `Error during startup: {error, {reason, ...`; this returns `reason`. `None` when the
/// log does not end in a failed boot (the node was killed, or died later).
fn boot_failure(log_tail: &str) -> Option<String> {
    let failed = log_tail.rfind("BOOT FAILED")?;
    let after = &log_tail[failed..];
    if after.contains("Starting broker") {
        // The node was started again after that failure.
        return None;
    }
    let startup = after.find("Error during startup:")?;
    let reason: String = after[startup + "Error during startup:".len()..]
        .trim_start()
        .trim_start_matches("{error,")
        .trim_start()
        .trim_start_matches('{')
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    Some(if reason.is_empty() {
        "no reason printed".to_owned()
    } else {
        reason
    })
}

/// The state of feature flag `name` in `rabbitmqctl list_feature_flags --no-table-headers name
/// state` output (tab-separated lines).
fn feature_flag_state<'a>(output: &'a str, name: &str) -> Option<&'a str> {
    output.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(name))
            .then(|| fields.next())
            .flatten()
    })
}

/// The node names in `epmd -names` output (`name rabbit1 at port 25672` lines).
fn epmd_names(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter_map(|line| line.strip_prefix("name ")?.split(" at port ").next())
        .collect()
}

/// `node-ctl`, filled in by [`Cluster::render_node_ctl`].
const NODE_CTL_TEMPLATE: &str = include_str!("rabbitmq/node-ctl.sh");

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-rabbitmq-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn test_cluster(dir: &Path) -> Cluster {
        Cluster {
            dir: dir.join("run dir with 'quotes'"),
        }
    }

    #[test]
    fn ports_and_names_follow_the_node_number() {
        let node = Node(3);
        assert_eq!(node.name(), "rabbit3@localhost");
        assert_eq!(node.amqp_port(), 5674);
        assert_eq!(node.management_port(), 15674);
        assert_eq!(node.dist_port(), 25674);
        assert_eq!(Node(1).amqp_url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
    }

    #[test]
    fn config_sets_loopback_listeners_and_ports() {
        let config = render_config(Node(2));
        assert!(config.contains("listeners.tcp.default = 127.0.0.1:5673\n"));
        assert!(config.contains("management.tcp.ip = 127.0.0.1\n"));
        assert!(config.contains("management.tcp.port = 15673\n"));
    }

    #[test]
    fn env_file_round_trips_through_sh() {
        let dir = temp_dir("env");
        let home = dir.display().to_string();
        let vars = vec![
            ("PATH", NODE_PATH.to_owned()),
            ("HOME", home.clone()),
            ("PLAIN", "rabbit1@localhost".to_owned()),
            ("TRICKY", r#"it's a "dir" with $HOME and {1,2}"#.to_owned()),
        ];
        let file = dir.join("env");
        fs::write(&file, render_env_file(Node(1), &vars)).unwrap();
        let output = Command::new("/bin/sh")
            .env_clear()
            .args(["-c", LAUNCH, "sh"])
            .arg(&file)
            .arg("env")
            .output()
            .unwrap();
        assert!(output.status.success());
        let env = String::from_utf8(output.stdout).unwrap();
        let mut lines: Vec<&str> = env.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                format!("HOME={home}"),
                format!("PATH={NODE_PATH}"),
                "PLAIN=rabbit1@localhost".to_owned(),
                format!("PWD={home}"),
                r#"TRICKY=it's a "dir" with $HOME and {1,2}"#.to_owned(),
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn node_env_is_complete_and_per_node() {
        let cluster = test_cluster(Path::new("/x"));
        let env: BTreeMap<_, _> = cluster.node_env(Node(2)).into_iter().collect();
        assert_eq!(env["RABBITMQ_NODENAME"], "rabbit2@localhost");
        assert_eq!(env["RABBITMQ_NODE_PORT"], "5673");
        assert_eq!(env["RABBITMQ_DIST_PORT"], "25673");
        assert_eq!(env["HOME"], cluster.dir.display().to_string());
        assert!(env["RABBITMQ_PID_FILE"].ends_with("node2/beam.pid"));
        assert!(env["RABBITMQ_MNESIA_BASE"].ends_with("node2/mnesia"));
    }

    #[test]
    fn parses_cluster_status() {
        // Trimmed from RabbitMQ 3.10.8's `cluster_status --formatter json`.
        let json = r#"{"alarms":[],"cluster_name":"order-pipeline","disk_nodes":["rabbit1@localhost","rabbit2@localhost","rabbit3@localhost"],"feature_flags":[{"name":"quorum_queue","state":"enabled"}],"listeners":{"rabbit1@localhost":[{"interface":"127.0.0.1","node":"rabbit1@localhost","port":5672}]},"partitions":{},"ram_nodes":[],"running_nodes":["rabbit3@localhost","rabbit1@localhost"],"versions":{}}"#;
        let status = ClusterStatus::parse(json).unwrap();
        assert_eq!(
            status.running_nodes,
            ["rabbit3@localhost", "rabbit1@localhost"]
        );
        assert!(status.ram_nodes.is_empty());
        assert!(status.is_member("rabbit2@localhost"));
        assert!(!status.is_member("rabbit4@localhost"));
    }

    #[test]
    fn refuses_a_cluster_status_without_its_node_lists() {
        assert!(ClusterStatus::parse(r#"{"disk_nodes":[],"ram_nodes":[]}"#).is_err());
        assert!(
            ClusterStatus::parse(r#"{"disk_nodes":"x","ram_nodes":[],"running_nodes":[]}"#)
                .is_err()
        );
        assert!(ClusterStatus::parse("not json").is_err());
    }

    #[test]
    fn reads_the_reason_of_a_failed_boot() {
        let log = "  Starting broker...\nBOOT FAILED\n===========\nError during startup: {error,\n                       {incompatible_feature_flags,\n                        {badrpc,\n";
        assert_eq!(
            boot_failure(log).as_deref(),
            Some("incompatible_feature_flags")
        );
        assert_eq!(
            boot_failure("BOOT FAILED\nError during startup: {error,timeout_waiting_for_tables}")
                .as_deref(),
            Some("timeout_waiting_for_tables")
        );
        // A node killed after it booted has no failed boot at the end of its log.
        assert_eq!(
            boot_failure("  Starting broker... completed with 5 plugins.\n"),
            None
        );
        let booted_after_failure =
            format!("{log}\n  Starting broker... completed with 5 plugins.\n");
        assert_eq!(boot_failure(&booted_after_failure), None);
        assert_eq!(
            boot_failure("BOOT FAILED\n").as_deref(),
            None,
            "a boot failure without its reason yet is not read as one"
        );
    }

    #[test]
    fn finds_feature_flag_state() {
        let output = "classic_mirrored_queue_version\tenabled\nquorum_queue\tdisabled\n";
        assert_eq!(feature_flag_state(output, "quorum_queue"), Some("disabled"));
        assert_eq!(feature_flag_state(output, "stream_queue"), None);
    }

    #[test]
    fn parses_epmd_names() {
        let output = "epmd: up and running on port 4369 with data:\n\
                      name rabbit1 at port 25672\n\
                      name rabbitmqcli-603-rabbit at port 35672\n";
        assert_eq!(epmd_names(output), ["rabbit1", "rabbitmqcli-603-rabbit"]);
        assert!(epmd_names("epmd: up and running on port 4369 with data:\n").is_empty());
    }

    #[test]
    fn summarises_cli_errors() {
        let unreachable = "Error: unable to perform an operation on node 'rabbit1@localhost'. \
                           Please see diagnostics information and suggestions below.\n\n\
                           DIAGNOSTICS\n===========\n\n\
                           rabbit1@localhost:\n  \
                           * connected to epmd (port 4369) on localhost\n  \
                           * epmd reports: node 'rabbit1' not running at all\n";
        assert_eq!(
            cli_error_summary(unreachable),
            "epmd reports: node 'rabbit1' not running at all"
        );
        assert_eq!(
            cli_error_summary("\nError: operation await_startup timed out\n"),
            "Error: operation await_startup timed out"
        );
        assert_eq!(cli_error_summary(""), "failed without a message");
    }

    #[test]
    fn shell_quote_handles_single_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn node_ctl_is_valid_sh_and_reports_stopped_nodes() {
        let dir = temp_dir("node-ctl");
        let cluster = test_cluster(&dir);
        fs::create_dir_all(&cluster.dir).unwrap();
        let script = cluster.dir.join("node-ctl");
        fs::write(&script, cluster.render_node_ctl().unwrap()).unwrap();
        let text = cluster.render_node_ctl().unwrap();
        assert!(
            !crate::template::has_placeholder(&text),
            "a placeholder left in node-ctl"
        );
        let syntax = Command::new("sh").arg("-n").arg(&script).status().unwrap();
        assert!(syntax.success());
        let run = |args: &[&str]| Command::new("sh").arg(&script).args(args).output().unwrap();
        assert_eq!(run(&["4", "status"]).status.code(), Some(2));
        assert_eq!(run(&["1", "reboot"]).status.code(), Some(2));
        assert_eq!(run(&[]).status.code(), Some(2));
        // Nothing runs in this directory: no CLI tool is called, so this needs no RabbitMQ.
        let status = run(&["2", "status"]);
        assert_eq!(status.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&status.stdout),
            "rabbit2@localhost is not running\n"
        );
        assert_eq!(run(&["3", "kill"]).status.code(), Some(1));
        assert_eq!(run(&["3", "stop"]).status.code(), Some(0));
        fs::remove_dir_all(&dir).unwrap();
    }
}
