//! Apache Cassandra 5.0 as a single node on 127.0.0.1:9042 with password authentication, run
//! straight from the jars Maven Central publishes, on Debian's Java 17.
//!
//! Debian does not package Cassandra and Maven Central is the one artefact source every machine
//! running this can reach, so the server is `org.apache.cassandra:cassandra-all` plus its runtime
//! dependencies, which together are exactly the `lib/` directory of Cassandra's tarball. What the
//! tarball's `bin/cassandra` script and `conf/` directory would add (the JVM flags,
//! `cassandra.yaml`, `logback.xml`) is generated here, and xtask starts the JVM itself, so it owns
//! the pid and the log as it does for every other component.
//!
//! Readiness is a real login as the built-in `cassandra`/`cassandra` superuser followed by a query
//! of `system.local` through the scylla driver ([`cql`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::process::{self, Daemon, ensure_port_free};
use super::{Component, Layout, Status, ensure_apt_packages, find_program};
use crate::template::fill;

/// The newest 5.0 release on Maven Central when this was written. Changing it downloads the new
/// jars next to the old ones (`dist/cassandra-<version>`); the data directory is kept.
pub const VERSION: &str = "5.0.9";
/// CQL, the port clients use.
pub const NATIVE_PORT: u16 = 9042;
/// Internode messaging. Unused by a single node, but Cassandra always binds it.
const STORAGE_PORT: u16 = 7000;
/// JMX on loopback only, so `nodetool` (in the same jars) can inspect the node.
const JMX_PORT: u16 = 7199;
/// The superuser `CassandraRoleManager` creates on first start, with its well-known password.
pub const USER: &str = "cassandra";
pub const PASSWORD: &str = "cassandra";

/// A small, bounded heap keeps the node's memory predictable next to the rest of the environment;
/// 1 GiB holds the memtables and caches `cassandra.yaml` sizes for a test workload.
const HEAP_INITIAL: &str = "-Xms512m";
const HEAP_MAX: &str = "-Xmx1g";
/// A cold first start takes seconds on a fast machine, but can take a minute or more on two busy
/// cores.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// A graceful stop flushes memtables and announces the shutdown; a few seconds normally.
const STOP_GRACE: Duration = Duration::from_secs(30);
pub(crate) const MAIN_CLASS: &str = "org.apache.cassandra.service.CassandraDaemon";

const POM_TEMPLATE: &str = include_str!("cassandra/pom.xml");
const YAML_TEMPLATE: &str = include_str!("cassandra/cassandra.yaml");
const LOGBACK_TEMPLATE: &str = include_str!("cassandra/logback.xml");

/// Written last into the distribution directory: its presence means every jar is there.
const COMPLETE_MARKER: &str = ".complete";

/// The JVM flags of every Cassandra this project runs (this environment's node and the stand-in
/// image's launcher), apart from heap sizes, paths and the module openings below.
pub(crate) const SERVER_JVM_FLAGS: &[&str] = &[
    // Upstream's choices: small stacks for Cassandra's many threads, and G1.
    "-Xss256k",
    "-XX:+UseG1GC",
    // A node that ran out of heap is in an undefined state; exiting makes `status` and the next
    // `up` (or a pod's restart) notice instead of clients failing strangely.
    "-XX:+ExitOnOutOfMemoryError",
    // Upstream runs with assertions on, except in Chronicle, which by design runs out of memory
    // with them.
    "-ea",
    "-da:net.openhft...",
    "-Djava.net.preferIPv4Stack=true",
    // As upstream: lets Netty allocate direct buffers through Unsafe; otherwise it falls back to
    // ByteBuffer.allocateDirect, which is slower and capped by -XX:MaxDirectMemorySize.
    "-Dio.netty.tryReflectionSetAccessible=true",
];

/// The module-system openings Cassandra 5.0 needs on Java 17, as listed in the `### JPMS` section
/// of the tarball's `conf/jvm17-server.options`: without them it fails at startup on reflective
/// access to JDK internals (direct-buffer cleaners first).
pub(crate) const JAVA17_MODULE_FLAGS: &[&str] = &[
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
];

fn daemon(layout: &Layout) -> Daemon {
    Daemon::new(
        "cassandra",
        &layout.run_dir(Component::Cassandra),
        "cassandra",
    )
}

fn native_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], NATIVE_PORT))
}

pub fn up(layout: &Layout) -> Result<BTreeMap<&'static str, String>> {
    let files = NodeFiles::new(layout);
    let daemon = daemon(layout);
    if adopt(&daemon, &files)?.is_none() {
        let java = ensure_java(layout)?;
        let lib = ensure_distribution(layout)?;
        ensure_port_free(NATIVE_PORT, "cassandra (CQL)")?;
        ensure_port_free(STORAGE_PORT, "cassandra (internode)")?;
        ensure_port_free(JMX_PORT, "cassandra (JMX)")?;
        files.write_config()?;
        println!(
            "  starting Cassandra {VERSION} on 127.0.0.1:{NATIVE_PORT} (server log: {})",
            files.system_log().display()
        );
        files.mark_start_in_log(&daemon)?;
        daemon.spawn(&mut files.command(&java, &lib))?;
    }
    let mut version = String::new();
    daemon
        .wait_ready(READY_TIMEOUT, || {
            version = cql::login_and_query_version(
                native_addr(),
                USER,
                PASSWORD,
                Duration::from_secs(5),
            )?;
            Ok(())
        })
        .with_context(|| {
            format!(
                "no CQL login as {USER} (full server log: {})",
                files.system_log().display()
            )
        })?;
    if version != VERSION {
        // Only possible when the pin changed while an older node kept running.
        println!(
            "  note: the running node is Cassandra {version} but xtask pins {VERSION}; \
             `cargo xtask env down cassandra` then `up` switches"
        );
    }
    Ok(BTreeMap::from([
        ("OP_CASSANDRA_ADDR", native_addr().to_string()),
        ("OP_CASSANDRA_USER", USER.to_owned()),
        ("OP_CASSANDRA_PASSWORD", PASSWORD.to_owned()),
        ("OP_CASSANDRA_VERSION", version),
    ]))
}

pub fn down(layout: &Layout) -> Result<()> {
    let files = NodeFiles::new(layout);
    let daemon = daemon(layout);
    if let Some(pid) = adopt(&daemon, &files)? {
        daemon.stop(STOP_GRACE)?;
        println!("  cassandra stopped (pid {pid})");
    }
    // Only a node someone started by hand with our configuration could still be here; it would
    // hold our ports and data directory, so it goes too.
    for pid in our_jvms(&files.config_arg()) {
        process::terminate(pid, STOP_GRACE)?;
        println!("  stopped a second cassandra JVM (pid {pid}) using the same data directory");
    }
    Ok(())
}

pub fn status(layout: &Layout) -> Status {
    let files = NodeFiles::new(layout);
    let Some(pid) = our_pid(&daemon(layout), &files.config_arg()) else {
        return Status {
            running: false,
            detail: String::new(),
        };
    };
    // A live JVM is not enough: the tests need a node that accepts their login.
    match cql::login_and_query_version(native_addr(), USER, PASSWORD, Duration::from_secs(3)) {
        Ok(version) => Status {
            running: true,
            detail: format!(
                "pid {pid}, Cassandra {version} at {}, user {USER}",
                native_addr()
            ),
        },
        Err(error) => Status {
            running: false,
            detail: format!("pid {pid} is alive but the CQL login fails: {error:#}"),
        },
    }
}

/// The pid of this environment's Cassandra JVM. The pid file is trusted only when that process
/// carries our configuration on its command line (after a reboot the pid may belong to anything),
/// and a JVM of ours whose pid file was lost is still found.
fn our_pid(daemon: &Daemon, config_arg: &str) -> Option<u32> {
    daemon
        .running_pid()
        .filter(|&pid| is_our_jvm(pid, config_arg))
        .or_else(|| our_jvms(config_arg).into_iter().next())
}

/// Makes the pid file name our running JVM, or removes it when none runs, so that
/// [`Daemon::spawn`] and [`Daemon::stop`] never act on a stranger that inherited a stale pid.
fn adopt(daemon: &Daemon, files: &NodeFiles) -> Result<Option<u32>> {
    let pid = our_pid(daemon, &files.config_arg());
    match pid {
        Some(pid) => fs::write(&daemon.pid_file, format!("{pid}\n"))
            .with_context(|| format!("failed to write {}", daemon.pid_file.display()))?,
        None => match fs::remove_file(&daemon.pid_file) {
            Err(error) if error.kind() != ErrorKind::NotFound => {
                return Err(error)
                    .with_context(|| format!("failed to remove {}", daemon.pid_file.display()));
            }
            _ => {}
        },
    }
    Ok(pid)
}

/// Whether `pid` was started with `config_arg`. It names our `cassandra.yaml`, so it matches no
/// other Cassandra on the machine.
fn is_our_jvm(pid: u32, config_arg: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&byte| byte == 0)
            .any(|arg| arg == config_arg.as_bytes())
    })
}

/// Every live process started with `config_arg`.
fn our_jvms(config_arg: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process::pid_alive(pid) && is_our_jvm(pid, config_arg))
        .collect()
}

/// Java 17, installed from Debian when missing. Cassandra 5.0 runs on 11 and 17 only, and the
/// module flags above are 17's.
fn ensure_java(layout: &Layout) -> Result<PathBuf> {
    if let Some(java) = find_java17() {
        return Ok(java);
    }
    ensure_apt_packages(layout, &["openjdk-17-jre-headless"])?;
    find_java17().context("openjdk-17-jre-headless is installed but /usr/lib/jvm has no Java 17")
}

/// Looked up by directory rather than as `java` on PATH, which follows the system's default
/// alternative and may be another major version.
fn find_java17() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/jvm")
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("java-17-openjdk")
        })
        .map(|entry| entry.path().join("bin/java"))
        .find(|java| java.is_file())
}

/// The server's jars for [`VERSION`], downloaded with Maven once and reused. Returns the lib
/// directory.
pub(crate) fn ensure_distribution(layout: &Layout) -> Result<PathBuf> {
    let dir = layout.dist().join(format!("cassandra-{VERSION}"));
    let lib = dir.join("lib");
    if dir.join(COMPLETE_MARKER).is_file() {
        return Ok(lib);
    }
    let find_mvn = || find_program("mvn", &["/usr/bin/mvn"]);
    if find_mvn().is_none() {
        ensure_apt_packages(layout, &["maven"])?;
    }
    let mvn = find_mvn().context("mvn is not installed")?;
    // An interrupted copy may have left some jars but not others: start the lib directory afresh.
    // Maven's own repository is kept until success, so a retry resumes the download.
    remove_dir_if_exists(&lib)?;
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let pom = dir.join("pom.xml");
    fs::write(&pom, fill(POM_TEMPLATE, &[("CASSANDRA_VERSION", VERSION)])?)
        .with_context(|| format!("failed to write {}", pom.display()))?;
    // A repository of our own rather than ~/.m2: everything stays under the environment's home
    // and the user's cache is left alone (their settings.xml, say a mirror, still applies).
    let repository = dir.join("maven-repository");
    process::run_logged(
        &format!("downloading Cassandra {VERSION} and its dependencies from Maven Central"),
        Command::new(mvn)
            .current_dir(&dir)
            .arg("--batch-mode")
            .arg("--file")
            .arg(&pom)
            .arg(format!("-Dmaven.repo.local={}", repository.display()))
            .arg(format!("-DoutputDirectory={}", lib.display()))
            .arg("dependency:copy-dependencies"),
        &layout.home.join("logs/cassandra-download.log"),
    )?;
    let server_jar = lib.join(format!("cassandra-all-{VERSION}.jar"));
    if !server_jar.is_file() {
        bail!("Maven succeeded but {} is missing", server_jar.display());
    }
    // lib/ now holds every jar the server loads; a second copy in Maven's layout would only take
    // disk space.
    remove_dir_if_exists(&repository)?;
    fs::write(
        dir.join(COMPLETE_MARKER),
        format!("cassandra-all {VERSION}\n"),
    )
    .context("failed to mark the Cassandra download complete")?;
    Ok(lib)
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("failed to remove {}", dir.display())),
    }
}

/// The node's files under `run/cassandra`: generated configuration, data and logs.
#[derive(Debug)]
struct NodeFiles {
    dir: PathBuf,
    config: PathBuf,
    logback: PathBuf,
    /// `cassandra.storagedir`: data, commit log, hints, saved caches and CDC below it.
    data: PathBuf,
    logs: PathBuf,
    triggers: PathBuf,
}

impl NodeFiles {
    fn new(layout: &Layout) -> Self {
        let dir = layout.run_dir(Component::Cassandra);
        Self {
            config: dir.join("cassandra.yaml"),
            logback: dir.join("logback.xml"),
            data: dir.join("data"),
            logs: dir.join("logs"),
            triggers: dir.join("triggers"),
            dir,
        }
    }

    fn system_log(&self) -> PathBuf {
        self.logs.join("system.log")
    }

    /// The argument that identifies our JVM among the machine's processes.
    fn config_arg(&self) -> String {
        format!("-Dcassandra.config={}", file_url(&self.config))
    }

    /// Rewrites the configuration from the templates on every start, so a changed template takes
    /// effect without deleting the data.
    fn write_config(&self) -> Result<()> {
        // Cassandra creates its data directories itself but only warns about a missing triggers
        // directory, on every start.
        for dir in [&self.dir, &self.logs, &self.triggers] {
            fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let data_dir = |name: &str| yaml_quote(&self.data.join(name));
        let yaml = fill(
            YAML_TEMPLATE,
            &[
                ("STORAGE_PORT", &STORAGE_PORT.to_string()),
                ("NATIVE_PORT", &NATIVE_PORT.to_string()),
                ("DATA_FILE_DIRECTORY", &data_dir("data")?),
                ("COMMITLOG_DIRECTORY", &data_dir("commitlog")?),
                ("SAVED_CACHES_DIRECTORY", &data_dir("saved_caches")?),
                ("HINTS_DIRECTORY", &data_dir("hints")?),
                ("CDC_RAW_DIRECTORY", &data_dir("cdc_raw")?),
            ],
        )?;
        fs::write(&self.config, yaml)
            .with_context(|| format!("failed to write {}", self.config.display()))?;
        let logback = fill(
            LOGBACK_TEMPLATE,
            &[("LOG_DIRECTORY", &xml_escape(utf8(&self.logs)?))],
        )?;
        fs::write(&self.logback, logback)
            .with_context(|| format!("failed to write {}", self.logback.display()))
    }

    /// The daemon log is appended to across restarts, and Cassandra repeats the same startup
    /// warnings each time; a header line shows where the latest start begins.
    fn mark_start_in_log(&self, daemon: &Daemon) -> Result<()> {
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&daemon.log_file)
            .with_context(|| format!("failed to open {}", daemon.log_file.display()))?;
        writeln!(
            log,
            "--- cargo xtask env up: starting Cassandra {VERSION} (full log: {}) ---",
            self.system_log().display()
        )
        .with_context(|| format!("failed to write {}", daemon.log_file.display()))
    }

    /// The JVM invocation `bin/cassandra -f` would build, minus production sizing.
    fn command(&self, java: &Path, lib: &Path) -> Command {
        let mut command = Command::new(java);
        command
            .args([HEAP_INITIAL, HEAP_MAX])
            .args(SERVER_JVM_FLAGS)
            .args(JAVA17_MODULE_FLAGS)
            // Keeps stdout and stderr open (the daemon's log); otherwise Cassandra closes them.
            .arg("-Dcassandra-foreground=yes")
            .arg(self.config_arg())
            .arg(format!("-Dcassandra.storagedir={}", self.data.display()))
            .arg(format!("-Dcassandra.logdir={}", self.logs.display()))
            .arg(format!(
                "-Dcassandra.triggers_dir={}",
                self.triggers.display()
            ))
            .arg(format!(
                "-Dlogback.configurationFile={}",
                self.logback.display()
            ))
            // The default superuser is otherwise created 10 s after startup; tests log in as it.
            .arg("-Dcassandra.superuser_setup_delay_ms=0")
            .arg(format!("-Dcassandra.jmx.local.port={JMX_PORT}"))
            // Without this the JMX connector also listens on a random port.
            .arg(format!(
                "-Dcom.sun.management.jmxremote.rmi.port={JMX_PORT}"
            ))
            // The launcher expands `dir/*` to every jar in the directory.
            .arg("-cp")
            .arg(lib.join("*"))
            .arg(MAIN_CLASS)
            // Where the JVM leaves crash reports, if any: next to the node's logs, not in the
            // repository.
            .current_dir(&self.dir)
            // glibc's default of up to eight malloc arenas per core inflates a many-threaded JVM's
            // resident memory; cassandra-env.sh sets the same.
            .env("MALLOC_ARENA_MAX", "4");
        command
    }
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// A path as a single-quoted YAML scalar, in which only `'` needs escaping (by doubling).
fn yaml_quote(path: &Path) -> Result<String> {
    let text = utf8(path)?;
    if text.chars().any(char::is_control) {
        bail!("{} contains a control character", path.display());
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `cassandra.config` must be a URL. Java decodes `%XX` escapes in file URLs, so every byte
/// outside the unreserved set is escaped and any path round-trips.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

/// The readiness probe and `status`: a login and one query through the scylla driver, the CQL
/// client the gateway and the tests use.
///
/// xtask is otherwise synchronous, so each probe runs on a current-thread runtime of its own that
/// ends with it.
mod cql {
    use std::net::SocketAddr;
    use std::time::Duration;

    use anyhow::{Context, Result, bail};
    use scylla::client::session::Session;
    use scylla::client::session_builder::SessionBuilder;

    const VERSION_QUERY: &str = "SELECT release_version FROM system.local";

    /// Logs in as `user` and returns the server's release version. Fails with the driver's
    /// reason (no listener, the login refused, the query failed) or when `timeout` passes, and
    /// also when the server lets a client in without logging in: the tests would then run
    /// without authentication.
    pub fn login_and_query_version(
        addr: SocketAddr,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start a runtime for the CQL probe")?;
        runtime.block_on(async {
            tokio::time::timeout(timeout, probe(addr, user, password))
                .await
                .with_context(|| format!("no answer from {addr} within {timeout:?}"))?
        })
    }

    async fn probe(addr: SocketAddr, user: &str, password: &str) -> Result<String> {
        let session = connect(addr, Some((user, password)))
            .await
            .with_context(|| format!("no CQL login as {user} at {addr}"))?;
        let version = session
            .query_unpaged(VERSION_QUERY, &[])
            .await
            .context("the version query failed")?
            .into_rows_result()
            .context("the version query returned no rows")?
            .single_row::<(String,)>()
            .context("the version query's answer is not one text value")?
            .0;
        if connect(addr, None).await.is_ok() {
            bail!("the server accepted a connection without a login");
        }
        Ok(version)
    }

    async fn connect(addr: SocketAddr, login: Option<(&str, &str)>) -> Result<Session> {
        let mut builder = SessionBuilder::new().known_node_addr(addr);
        if let Some((user, password)) = login {
            builder = builder.user(user, password);
        }
        Ok(builder.build().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_completely() {
        let layout = Layout {
            home: PathBuf::from("/home/o'brien/.cache/order-pipeline"),
        };
        let dir = std::env::temp_dir().join(format!("xtask-cassandra-{}", std::process::id()));
        let files = NodeFiles {
            dir: dir.clone(),
            config: dir.join("cassandra.yaml"),
            logback: dir.join("logback.xml"),
            data: layout.run_dir(Component::Cassandra).join("data"),
            logs: dir.join("logs & more"),
            triggers: dir.join("triggers"),
        };
        files.write_config().unwrap();
        let yaml = fs::read_to_string(&files.config).unwrap();
        assert!(yaml.contains("native_transport_port: 9042\n"));
        assert!(yaml.contains(
            "commitlog_directory: '/home/o''brien/.cache/order-pipeline/run/cassandra/data/commitlog'\n"
        ));
        let logback = fs::read_to_string(&files.logback).unwrap();
        assert!(logback.contains("logs &amp; more/system.log</file>"));
        assert!(fill(POM_TEMPLATE, &[("CASSANDRA_VERSION", VERSION)]).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_url_escapes_what_is_not_unreserved() {
        assert_eq!(
            file_url(Path::new("/a b/c%d/cassandra.yaml")),
            "file:///a%20b/c%25d/cassandra.yaml"
        );
    }

    #[test]
    fn command_ends_with_classpath_and_main_class() {
        let files = NodeFiles::new(&Layout {
            home: PathBuf::from("/h"),
        });
        let command = files.command(Path::new("/usr/bin/java"), Path::new("/lib"));
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args[args.len() - 3..], ["-cp", "/lib/*", MAIN_CLASS]);
        assert!(args.contains(&files.config_arg().as_ref()));
    }
}
