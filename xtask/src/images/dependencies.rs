//! `cargo xtask images --dependencies`: stand-ins for the official RabbitMQ, Redis and Cassandra
//! images, which a node without a registry cannot pull, built here from Debian packages.
//!
//! Each image is one layer: a Debian bookworm root filesystem made by `mmdebstrap
//! --variant=minbase` (man pages, docs and locales left out by dpkg path excludes) with the
//! server's packages, plus a few files of ours; for Cassandra, which Debian does not package, the
//! same Maven Central jars the environment runs ([`crate::env::cassandra`]), a launcher script
//! built from that module's JVM flags, the tarball's configuration files and PyPI's `cqlsh`. So
//! the images run exactly the servers the workloads are tested against here: Redis 7.0.15,
//! RabbitMQ 3.10.8 and Cassandra 5.0.9. They satisfy the contract the operator's pods rely on
//! (uid/gid 999, read-only root, explicit commands; see the specs below and `check.sh`).
//!
//! An image is named `localhost/order-pipeline-deps/<name>:<server version>-<hash>`. The hash
//! covers everything that goes into it: the Debian package versions (resolved against the
//! mirror's current indexes, as mmdebstrap would choose them, with apt and a private state under
//! the cache), our files, scripts and jars, the wheels and the image configuration. The inputs
//! are written out as text beside the build (`dependency-images/<name>/inputs.txt`), so a rebuild
//! can say what changed. An image whose archive exists is not built again, which makes a warm run
//! take a few seconds (mostly the index refresh). The Debian part is cached apart, keyed by its
//! share of the inputs, so a changed script of ours rebuilds only the image, not the root file
//! system, and downloaded packages are kept for the next root file system.
//!
//! After building, each image's real command runs from the committed root filesystem as the pods
//! run it (`check.sh`, in private namespaces: nothing binds a port of the machine and nothing
//! outlives the check): Redis and RabbitMQ must answer, Cassandra's tools must run; starting
//! Cassandra itself takes a minute or two and is asked for with `--start-cassandra`. Only then is
//! the OCI archive written (`<out>/dependency-<name>-<tag>.oci.tar`, importable with `ctr -n
//! k8s.io images import` under the reference above), so an archive is always of a checked image.
//! `<out>/dependency-images.env` lists the three references.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use super::{Builder, SOURCE, WorkingContainer, megabytes, parse_human_size};
use crate::env::cassandra;
use crate::env::process::{run_capture, run_logged};
use crate::env::{Layout, ensure_apt_packages};
use crate::template::fill;

/// Where the images' names live; `localhost/` is a registry host, so the CRI looks them up as
/// they are (no `docker.io/` prefix) and never pulls them.
const REPOSITORY: &str = "localhost/order-pipeline-deps";
/// Debian's release, also the release of the build machine these numbers were taken on.
const SUITE: &str = "bookworm";
/// The only architecture built; mmdebstrap would need qemu for another.
const ARCHITECTURE: &str = "amd64";
/// Where packages come from: the suite, its updates and its security updates.
const SOURCES: [&str; 3] = [
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main",
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main",
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main",
];
/// What dpkg leaves out of every package: documentation (but its copyright files), man and info
/// pages, translations.
const DPKG_OPTIONS: [&str; 7] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
];
/// The cqlsh of Cassandra 5.0, the release the operator's credentials test runs (checked by a
/// test below).
const CQLSH_VERSION: &str = "6.2.0";
/// glibc 2.36 is bookworm's: the newest manylinux wheels the images can run.
const GLIBC_MINOR: u32 = 36;
/// Where the stand-in Cassandra image keeps cqlsh's Python packages.
const CQLSH_DIR: &str = "/opt/cqlsh";
/// What the images run as, as the operator's pods do.
const IMAGE_USER: &str = "999:999";
/// PATH of every image, after any directory of its own.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Heads the inputs text: a change of what the text means changes every hash.
const INPUTS_FORMAT: &str = "order-pipeline dependency image inputs, format 1";
/// Packages the build itself needs on this machine.
const HOST_PACKAGES: [&str; 6] = [
    "mmdebstrap",
    "buildah",
    "debian-archive-keyring",
    "iproute2",
    "util-linux",
    "coreutils",
];

const ESSENTIAL_HOOK: &str = include_str!("dependencies/essential-hook.sh");
const CUSTOMIZE_HOOK: &str = include_str!("dependencies/customize-hook.sh");
const CASSANDRA_LAUNCHER: &str = include_str!("dependencies/cassandra.sh");
const CQLSH_SHIM: &str = include_str!("dependencies/cqlsh.sh");
const CASSANDRA_YAML: &str = include_str!("dependencies/cassandra.yaml");
const CASSANDRA_LOGBACK: &str = include_str!("dependencies/logback.xml");
const CASSANDRA_RACKDC: &str = include_str!("dependencies/cassandra-rackdc.properties");
const RABBITMQ_DEFAULTS: &str = include_str!("dependencies/rabbitmq-defaults.conf");
const INSTALL_WHEELS: &str = include_str!("dependencies/install-wheels.py");
const CHECK_SCRIPT: &str = include_str!("dependencies/check.sh");

/// One built (or cached) stand-in image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyImage {
    /// `rabbitmq`, `redis` or `cassandra`.
    pub name: &'static str,
    /// `localhost/order-pipeline-deps/<name>:<server version>-<hash>`: what pods name, and what
    /// the archive imports as.
    pub reference: String,
    /// The OCI archive, for `ctr -n k8s.io images import`.
    pub archive: PathBuf,
}

/// What to build and how much to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The images to ensure (all when empty).
    pub names: Vec<String>,
    /// Also start Cassandra from a freshly built image and query it with cqlsh (a minute or
    /// two); otherwise only its tools are run.
    pub start_cassandra: bool,
    /// Run the checks on images that are already built, too.
    pub recheck: bool,
}

/// Builds whatever of the three stand-in images is missing or out of date, writes their OCI
/// archives to `out` and `out/dependency-images.env`, and returns them (rabbitmq, redis,
/// cassandra). Unchanged images cost nothing but the look at Debian's indexes.
#[allow(
    dead_code,
    reason = "the API of `cargo xtask e2e`, which imports the images into the node"
)]
pub fn ensure_dependency_images(layout: &Layout, out: &Path) -> Result<Vec<DependencyImage>> {
    ensure_dependency_images_with(layout, out, &Options::default())
}

/// `cargo xtask images --dependencies`.
pub(crate) fn run(layout: &Layout, out: Option<PathBuf>, options: &Options) -> Result<()> {
    let out = out.unwrap_or_else(|| layout.home.join("images"));
    ensure_dependency_images_with(layout, &out, options).map(drop)
}

/// One stand-in image: what goes into it and how it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    name: &'static str,
    /// The upstream release the image runs: the tag's first part.
    server_version: &'static str,
    /// The Debian package that brings the server; its upstream version must be
    /// `server_version`. None for Cassandra, whose jars come from Maven Central.
    server_package: Option<&'static str>,
    /// Installed on top of the minbase variant.
    packages: &'static [&'static str],
    /// The account of uid/gid 999: name, GECOS and home.
    user: (&'static str, &'static str, &'static str),
    /// Made and owned by 999: where the pods write (volumes and emptyDirs mount over them).
    writable: &'static [&'static str],
    /// Removed from the root file system after the packages are installed.
    remove: &'static [&'static str],
    /// Directories before [`SYSTEM_PATH`] on PATH.
    path_prefix: &'static str,
    /// Environment besides PATH and LANG.
    env: &'static [(&'static str, &'static str)],
    workdir: &'static str,
    cmd: &'static [&'static str],
    ports: &'static [u16],
    description: &'static str,
    /// The server's licence (SPDX).
    license: &'static str,
}

const RABBITMQ: Spec = Spec {
    name: "rabbitmq",
    server_version: "3.10.8",
    server_package: Some("rabbitmq-server"),
    packages: &["rabbitmq-server"],
    user: ("rabbitmq", "RabbitMQ messaging server", "/var/lib/rabbitmq"),
    writable: &["/var/lib/rabbitmq", "/var/log/rabbitmq"],
    remove: &["/var/lib/rabbitmq/.erlang.cookie"],
    // Debian's /usr/sbin/rabbitmq-server is a wrapper that refuses every uid but its rabbitmq
    // user's and sends the output to a file: the real scripts come first.
    path_prefix: "/usr/lib/rabbitmq/bin",
    // Erlang keeps its cookie in HOME, which must be writable: the data volume. RabbitMQ opens
    // <log base>/<node>_upgrade.log even when `log.file = false` (3.10 has no setting to turn
    // that off), and /var/log/rabbitmq is read-only in the pods: `-` sends it to stdout.
    env: &[("HOME", "/var/lib/rabbitmq"), ("RABBITMQ_UPGRADE_LOG", "-")],
    workdir: "/var/lib/rabbitmq",
    cmd: &["rabbitmq-server"],
    ports: &[4369, 5671, 5672, 15672, 15692, 25672],
    description: "RabbitMQ from Debian bookworm: a stand-in for the official image",
    license: "MPL-2.0",
};

const REDIS: Spec = Spec {
    name: "redis",
    server_version: "7.0.15",
    server_package: Some("redis-server"),
    packages: &["redis-server", "redis-tools"],
    user: ("redis", "Redis", "/var/lib/redis"),
    writable: &["/data"],
    remove: &[],
    path_prefix: "",
    env: &[],
    workdir: "/data",
    cmd: &["redis-server"],
    ports: &[6379],
    description: "Redis from Debian bookworm: a stand-in for the official image",
    license: "BSD-3-Clause",
};

const CASSANDRA: Spec = Spec {
    name: "cassandra",
    server_version: cassandra::VERSION,
    server_package: None,
    // bash, grep, coreutils and mawk (awk) come with minbase.
    packages: &["openjdk-17-jre-headless", "python3", "procps", "iproute2"],
    user: ("cassandra", "Apache Cassandra", "/var/lib/cassandra"),
    writable: &["/var/lib/cassandra", "/opt/cassandra/logs"],
    remove: &[],
    path_prefix: "/opt/cassandra/bin",
    env: &[
        ("CASSANDRA_HOME", "/opt/cassandra"),
        ("CASSANDRA_CONF", "/etc/cassandra"),
        ("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64"),
    ],
    workdir: "/opt/cassandra",
    cmd: &["cassandra", "-f"],
    ports: &[7000, 7001, 7199, 9042],
    description: "Apache Cassandra (Maven Central jars) on Debian bookworm's Java 17: a stand-in for the official image",
    license: "Apache-2.0",
};

/// In the order of [`DependencyImage`]s and of the env file.
const SPECS: [Spec; 3] = [RABBITMQ, REDIS, CASSANDRA];

impl Spec {
    fn reference(self, key: &str) -> String {
        format!("{REPOSITORY}/{}:{}-{key}", self.name, self.server_version)
    }

    fn archive(self, out: &Path, key: &str) -> PathBuf {
        out.join(format!(
            "{}{}-{key}.oci.tar",
            self.archive_prefix(),
            self.server_version
        ))
    }

    /// What every archive of this image's name starts with.
    fn archive_prefix(self) -> String {
        format!("dependency-{}-", self.name)
    }

    /// The variable naming the image in `dependency-images.env`.
    fn env_variable(self) -> String {
        format!("{}_IMAGE", self.name.to_ascii_uppercase())
    }

    fn env(self) -> Vec<String> {
        let path = if self.path_prefix.is_empty() {
            SYSTEM_PATH.to_owned()
        } else {
            format!("{}:{SYSTEM_PATH}", self.path_prefix)
        };
        let mut env = vec![format!("PATH={path}"), "LANG=C.UTF-8".to_owned()];
        env.extend(
            self.env
                .iter()
                .map(|(name, value)| format!("{name}={value}")),
        );
        env
    }

    /// The check `check.sh` runs on a freshly built image.
    fn check(self, start_cassandra: bool) -> &'static str {
        match self.name {
            "cassandra" if start_cassandra => "cassandra",
            "cassandra" => "cassandra-tools",
            name => name,
        }
    }

    fn essential_hook(self) -> Result<String> {
        let (user, gecos, home) = self.user;
        fill(
            ESSENTIAL_HOOK,
            &[
                ("IMAGE", self.name),
                ("USER", user),
                ("GECOS", gecos),
                ("HOME", home),
            ],
        )
    }

    fn customize_hook(self) -> Result<String> {
        fill(
            CUSTOMIZE_HOOK,
            &[
                ("IMAGE", self.name),
                ("USER", self.user.0),
                ("WRITABLE_DIRS", &self.writable.join(" ")),
                ("REMOVE", &self.remove.join(" ")),
            ],
        )
    }
}

/// The images named (all when none is), in the canonical order.
fn select(names: &[String]) -> Result<Vec<Spec>> {
    if let Some(unknown) = names
        .iter()
        .find(|name| !SPECS.iter().any(|spec| spec.name == name.as_str()))
    {
        let known: Vec<&str> = SPECS.iter().map(|spec| spec.name).collect();
        bail!(
            "unknown dependency image {unknown:?} (expected one of {})",
            known.join(", ")
        );
    }
    Ok(SPECS
        .into_iter()
        .filter(|spec| names.is_empty() || names.iter().any(|name| name == spec.name))
        .collect())
}

/// The build's directories under the environment's home: everything but the archives.
#[derive(Debug)]
struct Cache {
    dir: PathBuf,
    log: PathBuf,
}

impl Cache {
    fn new(layout: &Layout) -> Self {
        Self {
            dir: layout.home.join("dependency-images"),
            log: layout.home.join("logs/dependency-images.log"),
        }
    }
    /// apt's own configuration, index files and state for resolving package versions.
    fn apt(&self) -> PathBuf {
        self.dir.join("apt")
    }
    /// Downloaded .deb files, shared by every root file system build.
    fn debs(&self) -> PathBuf {
        self.dir.join("debs")
    }
    fn rootfs(&self, spec: Spec, key: &str) -> PathBuf {
        self.dir
            .join("rootfs")
            .join(format!("{}-{key}.tar", spec.name))
    }
    fn wheels(&self, python_tag: &str) -> PathBuf {
        self.dir
            .join("python")
            .join(format!("cqlsh-{CQLSH_VERSION}-{python_tag}"))
    }
    /// An image's rendered hooks, inputs text and check directory.
    fn image(&self, spec: Spec) -> PathBuf {
        self.dir.join(spec.name)
    }
}

/// Everything that decides one image, and so its name.
#[derive(Debug)]
struct Plan {
    spec: Spec,
    packages: BTreeMap<String, String>,
    essential_hook: String,
    customize_hook: String,
    files: Vec<OverlayEntry>,
    wheels: Vec<PathBuf>,
    /// What `buildah config` sets.
    config: Vec<(String, String)>,
    /// The inputs text: a Debian section, then ours.
    inputs: String,
    /// Hash of the Debian section: names the cached root file system.
    rootfs_key: String,
    /// Hash of all of it: the tag's second part.
    key: String,
}

impl Plan {
    fn reference(&self) -> String {
        self.spec.reference(&self.key)
    }
}

/// A file or directory of ours on top of the Debian root file system, owned by root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OverlayEntry {
    /// Absolute, in the image.
    path: String,
    mode: u32,
    content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Directory,
    Text(String),
    /// A file copied from this machine.
    Copy(PathBuf),
}

/// [`ensure_dependency_images`] with a choice of images and checks; returns the images asked for
/// (and writes `dependency-images.env` only when that is all three).
pub fn ensure_dependency_images_with(
    layout: &Layout,
    out: &Path,
    options: &Options,
) -> Result<Vec<DependencyImage>> {
    let started = Instant::now();
    let specs = select(&options.names)?;
    let cache = Cache::new(layout);
    fs::create_dir_all(&cache.dir)
        .with_context(|| format!("failed to create {}", cache.dir.display()))?;
    fs::create_dir_all(out).with_context(|| format!("failed to create {}", out.display()))?;
    // Two builds at once would share the store, the package cache and the archives.
    let lock = fs::File::create(cache.dir.join(".lock")).context("failed to create the lock")?;
    lock.lock()
        .context("failed to lock the dependency image build")?;

    println!("==> dependency images: preparing the tools");
    require_root()?;
    ensure_apt_packages(layout, &HOST_PACKAGES)?;
    let architecture = run_capture(Command::new("dpkg").arg("--print-architecture"))?;
    ensure!(
        architecture.trim() == ARCHITECTURE,
        "the stand-in images are built for {ARCHITECTURE}; this machine is {}",
        architecture.trim()
    );

    let step = Instant::now();
    println!("==> dependency images: resolving Debian {SUITE} packages");
    let apt = PrivateApt::new(&cache)?;
    apt.update(&cache.log)?;
    let resolved = thread::scope(|scope| {
        let apt = &apt;
        let handles: Vec<_> = specs
            .iter()
            .map(|&spec| scope.spawn(move || (spec, apt.resolve(spec.packages))))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("resolving thread panicked"))
            .collect::<Vec<_>>()
    });
    let mut resolutions = Vec::new();
    for (spec, packages) in resolved {
        let packages =
            packages.with_context(|| format!("failed to resolve {}'s packages", spec.name))?;
        check_server_version(spec, &packages)?;
        resolutions.push((spec, packages));
    }
    println!(
        "==> dependency images: {} package sets resolved ({:.1}s)",
        resolutions.len(),
        step.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    let package_sets: Vec<BTreeMap<String, String>> = resolutions
        .iter()
        .map(|(_, packages)| packages.clone())
        .collect();
    for (spec, packages) in resolutions {
        let step = Instant::now();
        let plan = plan(layout, &cache, spec, packages)?;
        let reference = plan.reference();
        let archive = spec.archive(out, &plan.key);
        let image = DependencyImage {
            name: spec.name,
            reference: reference.clone(),
            archive: archive.clone(),
        };
        let status = if archive.is_file() && !options.recheck {
            println!(
                "==> dependency images: {reference} is built (archive {})",
                archive.display()
            );
            Status::Cached
        } else if archive.is_file() {
            println!("==> dependency images: {reference}: checking again");
            recheck(&cache, &plan, &archive, options)?;
            Status::Rechecked
        } else {
            println!("==> dependency images: building {reference}");
            report_changed_inputs(&cache, &plan);
            build(&cache, &apt, &plan, &archive, options)?;
            Status::Built
        };
        fs::write(cache.image(spec).join("inputs.txt"), &plan.inputs)
            .context("failed to record the image's inputs")?;
        prune_archives(out, spec, &archive)?;
        results.push(Summary {
            image,
            status,
            seconds: step.elapsed().as_secs_f64(),
        });
        if status != Status::Cached {
            println!(
                "==> dependency images: {} done ({:.1}s)",
                spec.name,
                step.elapsed().as_secs_f64()
            );
        }
    }

    let images: Vec<DependencyImage> = results.iter().map(|result| result.image.clone()).collect();
    if specs.len() == SPECS.len() {
        let path = out.join("dependency-images.env");
        fs::write(&path, env_file(&images))
            .with_context(|| format!("failed to write {}", path.display()))?;
        prune_debs(&cache, &package_sets)?;
        println!("\n{}", table(&results));
        println!(
            "dependency images ready in {:.1}s; references in {}",
            started.elapsed().as_secs_f64(),
            path.display()
        );
    } else {
        println!("\n{}", table(&results));
        println!(
            "dependency images ready in {:.1}s (dependency-images.env is written when all three \
             are asked for)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(images)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Built,
    Cached,
    Rechecked,
}

#[derive(Debug)]
struct Summary {
    image: DependencyImage,
    status: Status,
    seconds: f64,
}

fn require_root() -> Result<()> {
    let uid = run_capture(Command::new("id").arg("-u"))?;
    ensure!(
        uid.trim() == "0",
        "building the dependency images needs root (mmdebstrap, buildah and the checks' namespaces)"
    );
    Ok(())
}

/// The Debian package that brings the server must be the release the tag names: bookworm
/// updates stay on one upstream release, but if that ever changed the image would lie.
fn check_server_version(spec: Spec, packages: &BTreeMap<String, String>) -> Result<()> {
    let Some(package) = spec.server_package else {
        return Ok(());
    };
    let version = packages
        .get(package)
        .with_context(|| format!("{package} is not among {}'s packages", spec.name))?;
    ensure!(
        upstream_version(version) == spec.server_version,
        "Debian {SUITE} now has {package} {version}, not {}: change the image's server version \
         (and check the workloads against the new release)",
        spec.server_version
    );
    Ok(())
}

/// `5:7.0.15-1~deb12u10` → `7.0.15`: without the epoch and the Debian revision.
fn upstream_version(version: &str) -> &str {
    let without_epoch = version.split_once(':').map_or(version, |(_, rest)| rest);
    without_epoch
        .rsplit_once('-')
        .map_or(without_epoch, |(upstream, _)| upstream)
}

/// Gathers an image's inputs (downloading jars and wheels when they are not cached yet) and
/// names it.
fn plan(
    layout: &Layout,
    cache: &Cache,
    spec: Spec,
    packages: BTreeMap<String, String>,
) -> Result<Plan> {
    let essential_hook = spec.essential_hook()?;
    let customize_hook = spec.customize_hook()?;
    let mut files = vec![OverlayEntry {
        // Not in the archive (mmdebstrap's device nodes are left out); runtimes mount over it.
        path: "/dev".into(),
        mode: 0o755,
        content: Content::Directory,
    }];
    let mut wheels = Vec::new();
    match spec.name {
        "rabbitmq" => files.push(text_file(
            "/etc/rabbitmq/conf.d/10-defaults.conf",
            0o644,
            RABBITMQ_DEFAULTS,
        )),
        "cassandra" => {
            let lib = cassandra::ensure_distribution(layout)?;
            files.extend(cassandra_files(&lib)?);
            let python = packages
                .get("python3")
                .context("python3 is not among cassandra's packages")?;
            wheels = ensure_wheels(layout, cache, &python_tag(python)?)?;
        }
        _ => {}
    }
    let config = image_config(spec);
    let inputs = inputs_text(
        spec,
        &packages,
        &sha256_bytes(essential_hook.as_bytes())?,
        &sha256_bytes(customize_hook.as_bytes())?,
        &hash_entries(&files)?,
        &hash_wheels(&wheels)?,
        &config,
    );
    let debian_section = inputs
        .split_once("\n[ours]\n")
        .map_or(inputs.as_str(), |(debian, _)| debian);
    Ok(Plan {
        rootfs_key: short_key(&sha256_bytes(debian_section.as_bytes())?),
        key: short_key(&sha256_bytes(inputs.as_bytes())?),
        spec,
        packages,
        essential_hook,
        customize_hook,
        files,
        wheels,
        config,
        inputs,
    })
}

fn text_file(path: &str, mode: u32, text: &str) -> OverlayEntry {
    OverlayEntry {
        path: path.to_owned(),
        mode,
        content: Content::Text(text.to_owned()),
    }
}

/// Cassandra's part: launcher, cqlsh shim, configuration and the jars of `lib`.
fn cassandra_files(lib: &Path) -> Result<Vec<OverlayEntry>> {
    let mut files = vec![
        text_file(
            "/opt/cassandra/bin/cassandra",
            0o755,
            &cassandra_launcher()?,
        ),
        text_file(
            "/opt/cassandra/bin/cqlsh",
            0o755,
            &fill(
                CQLSH_SHIM,
                &[("CQLSH_VERSION", CQLSH_VERSION), ("CQLSH_DIR", CQLSH_DIR)],
            )?,
        ),
        // Cassandra only reads it; it warns at every start when it is missing.
        OverlayEntry {
            path: "/opt/cassandra/triggers".into(),
            mode: 0o755,
            content: Content::Directory,
        },
        text_file(
            "/etc/cassandra/cassandra.yaml",
            0o644,
            &fill(CASSANDRA_YAML, &[("VERSION", cassandra::VERSION)])?,
        ),
        text_file("/etc/cassandra/logback.xml", 0o644, CASSANDRA_LOGBACK),
        text_file(
            "/etc/cassandra/cassandra-rackdc.properties",
            0o644,
            CASSANDRA_RACKDC,
        ),
    ];
    let mut jars: Vec<PathBuf> = fs::read_dir(lib)
        .with_context(|| format!("failed to list {}", lib.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<_>>()?;
    jars.retain(|path| path.extension().is_some_and(|extension| extension == "jar"));
    jars.sort();
    ensure!(
        jars.iter()
            .any(|jar| jar.ends_with(format!("cassandra-all-{}.jar", cassandra::VERSION))),
        "{} has no cassandra-all-{}.jar",
        lib.display(),
        cassandra::VERSION
    );
    for jar in jars {
        let name = jar
            .file_name()
            .context("a jar has a name")?
            .to_string_lossy();
        files.push(OverlayEntry {
            path: format!("/opt/cassandra/lib/{name}"),
            mode: 0o644,
            content: Content::Copy(jar.clone()),
        });
    }
    Ok(files)
}

/// The stand-in's `cassandra`: the template with the environment's JVM flags and main class.
fn cassandra_launcher() -> Result<String> {
    fill(
        CASSANDRA_LAUNCHER,
        &[
            ("VERSION", cassandra::VERSION),
            ("DEFAULT_HEAP", "1G"),
            (
                "SERVER_JVM_FLAGS",
                &bash_array_lines(cassandra::SERVER_JVM_FLAGS)?,
            ),
            (
                "JAVA17_MODULE_FLAGS",
                &bash_array_lines(cassandra::JAVA17_MODULE_FLAGS)?,
            ),
            ("MAIN_CLASS", cassandra::MAIN_CLASS),
        ],
    )
}

/// Words as the lines of a bash array literal, single-quoted.
fn bash_array_lines(words: &[&str]) -> Result<String> {
    let mut lines = Vec::with_capacity(words.len());
    for word in words {
        ensure!(!word.contains('\''), "{word:?} contains a single quote");
        lines.push(format!("  '{word}'"));
    }
    Ok(lines.join("\n"))
}

/// `python3 3.11.2-1+b1` → `cp311`: the wheel tag pip must choose for.
fn python_tag(version: &str) -> Result<String> {
    let upstream = upstream_version(version);
    let mut parts = upstream.split('.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        bail!("python3 {version} has no major.minor version");
    };
    ensure!(
        major.chars().all(|c| c.is_ascii_digit()) && minor.chars().all(|c| c.is_ascii_digit()),
        "python3 {version} has no major.minor version"
    );
    Ok(format!("cp{major}{minor}"))
}

/// cqlsh and its dependencies as wheels for the image's Python (`cp311`) on glibc Linux, from
/// PyPI, downloaded once per cqlsh release and tag. Returns the wheel files.
fn ensure_wheels(layout: &Layout, cache: &Cache, python_tag: &str) -> Result<Vec<PathBuf>> {
    let dir = cache.wheels(python_tag);
    let complete = dir.join(".complete");
    if !complete.is_file() {
        let partial = dir.with_extension("partial");
        if partial.exists() {
            fs::remove_dir_all(&partial)
                .with_context(|| format!("failed to clear {}", partial.display()))?;
        }
        let python = host_pip(layout)?;
        let version = python_tag.trim_start_matches("cp");
        let (major, minor) = version.split_at(1);
        run_logged(
            &format!("pip download cqlsh=={CQLSH_VERSION} for {python_tag}"),
            Command::new(python)
                .args(["-m", "pip", "download", "--disable-pip-version-check"])
                .args(["--only-binary=:all:", "--implementation", "cp"])
                .args(["--python-version", &format!("{major}.{minor}")])
                .args(["--abi", python_tag])
                .args(
                    manylinux_platforms()
                        .iter()
                        .flat_map(|platform| ["--platform", platform]),
                )
                .arg("--dest")
                .arg(&partial)
                .arg(format!("cqlsh=={CQLSH_VERSION}")),
            &cache.log,
        )?;
        fs::write(
            partial.join(".complete"),
            format!("cqlsh {CQLSH_VERSION}\n"),
        )?;
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::rename(&partial, &dir)
            .with_context(|| format!("failed to move the wheels to {}", dir.display()))?;
    }
    let mut wheels: Vec<PathBuf> = fs::read_dir(&dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<_>>()?;
    wheels.retain(|path| path.extension().is_some_and(|extension| extension == "whl"));
    wheels.sort();
    ensure!(
        wheels
            .iter()
            .any(|wheel| wheel.file_name().is_some_and(|name| name
                .to_string_lossy()
                .starts_with(&format!("cqlsh-{CQLSH_VERSION}-")))),
        "{} has no cqlsh {CQLSH_VERSION} wheel",
        dir.display()
    );
    Ok(wheels)
}

/// The wheel platforms bookworm's glibc 2.36 runs, newest first, as pip lists them natively
/// (`--platform` is taken literally: one tag would exclude wheels built for older glibcs).
fn manylinux_platforms() -> Vec<String> {
    let mut platforms: Vec<String> = (5..=GLIBC_MINOR)
        .rev()
        .map(|minor| format!("manylinux_2_{minor}_x86_64"))
        .collect();
    // The legacy names of 2.17, 2.12 and 2.5.
    platforms.extend(
        [
            "manylinux2014_x86_64",
            "manylinux2010_x86_64",
            "manylinux1_x86_64",
        ]
        .map(String::from),
    );
    platforms
}

/// A Python with pip on this machine: PATH's, or Debian's once python3-pip is installed.
fn host_pip(layout: &Layout) -> Result<PathBuf> {
    let has_pip = |python: &Path| {
        Command::new(python)
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if has_pip(Path::new("python3")) {
        return Ok(PathBuf::from("python3"));
    }
    ensure_apt_packages(layout, &["python3-pip"])?;
    let debian = PathBuf::from("/usr/bin/python3");
    ensure!(
        has_pip(&debian),
        "python3-pip is installed but {} has no pip",
        debian.display()
    );
    Ok(debian)
}

/// `dir|file <mode> <path> [sha256]` lines for the overlay.
fn hash_entries(entries: &[OverlayEntry]) -> Result<Vec<String>> {
    let copies: Vec<&Path> = entries
        .iter()
        .filter_map(|entry| match &entry.content {
            Content::Copy(path) => Some(path.as_path()),
            _ => None,
        })
        .collect();
    let mut copy_hashes = sha256_files(&copies)?.into_iter();
    let mut lines = Vec::with_capacity(entries.len());
    for entry in entries {
        let line = match &entry.content {
            Content::Directory => format!("dir {:04o} {}", entry.mode, entry.path),
            Content::Text(text) => format!(
                "file {:04o} {} {}",
                entry.mode,
                entry.path,
                sha256_bytes(text.as_bytes())?
            ),
            Content::Copy(_) => format!(
                "file {:04o} {} {}",
                entry.mode,
                entry.path,
                copy_hashes.next().context("a hash for every copied file")?
            ),
        };
        lines.push(line);
    }
    Ok(lines)
}

/// `wheel <file name> <sha256>` lines, and the installer's hash, when there are wheels.
fn hash_wheels(wheels: &[PathBuf]) -> Result<Vec<String>> {
    if wheels.is_empty() {
        return Ok(Vec::new());
    }
    let paths: Vec<&Path> = wheels.iter().map(PathBuf::as_path).collect();
    let mut lines = vec![format!(
        "python-install {CQLSH_DIR} {}",
        sha256_bytes(INSTALL_WHEELS.as_bytes())?
    )];
    for (wheel, hash) in wheels.iter().zip(sha256_files(&paths)?) {
        let name = wheel
            .file_name()
            .context("a wheel has a name")?
            .to_string_lossy();
        lines.push(format!("wheel {name} {hash}"));
    }
    Ok(lines)
}

/// The image configuration `buildah config` sets, as `name value` pairs (labels as
/// `label name=value`).
fn image_config(spec: Spec) -> Vec<(String, String)> {
    let mut config = Vec::new();
    for env in spec.env() {
        config.push(("env".to_owned(), env));
    }
    config.push(("cmd".to_owned(), serde_json::json!(spec.cmd).to_string()));
    config.push(("user".to_owned(), IMAGE_USER.to_owned()));
    config.push(("workingdir".to_owned(), spec.workdir.to_owned()));
    for port in spec.ports {
        config.push(("port".to_owned(), format!("{port}/tcp")));
    }
    let labels = [
        (
            "org.opencontainers.image.title",
            format!("order-pipeline-deps/{}", spec.name),
        ),
        (
            "org.opencontainers.image.description",
            spec.description.to_owned(),
        ),
        (
            "org.opencontainers.image.version",
            spec.server_version.to_owned(),
        ),
        ("org.opencontainers.image.source", SOURCE.to_owned()),
        ("org.opencontainers.image.licenses", spec.license.to_owned()),
        (
            "org.opencontainers.image.base.name",
            format!("debian:{SUITE} (mmdebstrap --variant=minbase)"),
        ),
    ];
    for (name, value) in labels {
        config.push(("label".to_owned(), format!("{name}={value}")));
    }
    config
}

/// The text an image's name is the hash of. Its first part, up to `[ours]`, decides the Debian
/// root file system.
fn inputs_text(
    spec: Spec,
    packages: &BTreeMap<String, String>,
    essential_hook_hash: &str,
    customize_hook_hash: &str,
    files: &[String],
    wheels: &[String],
    config: &[(String, String)],
) -> String {
    let mut text = format!(
        "{INPUTS_FORMAT}\nimage {} {}\n[debian]\nsuite {SUITE}\narchitecture {ARCHITECTURE}\n",
        spec.name, spec.server_version
    );
    for source in SOURCES {
        let _ = writeln!(text, "source {source}");
    }
    for argument in mmdebstrap_arguments(spec) {
        let _ = writeln!(text, "mmdebstrap {argument}");
    }
    let _ = writeln!(text, "essential-hook {essential_hook_hash}");
    let _ = writeln!(text, "customize-hook {customize_hook_hash}");
    for (name, version) in packages {
        let _ = writeln!(text, "package {name}={version}");
    }
    text.push_str("[ours]\n");
    for line in files.iter().chain(wheels) {
        let _ = writeln!(text, "{line}");
    }
    for (name, value) in config {
        let _ = writeln!(text, "config {name} {value}");
    }
    text
}

/// The mmdebstrap arguments that shape the root file system (the hooks and caches come apart).
fn mmdebstrap_arguments(spec: Spec) -> Vec<String> {
    let mut arguments = vec![
        "--variant=minbase".to_owned(),
        format!("--architectures={ARCHITECTURE}"),
        format!("--include={}", spec.packages.join(",")),
    ];
    arguments.extend(
        DPKG_OPTIONS
            .iter()
            .map(|option| format!("--dpkgopt={option}")),
    );
    // The runtime provides /dev; device nodes in a layer only get in the way.
    arguments.push("--skip=output/dev".to_owned());
    arguments
}

/// The first 12 hex digits: short enough for a tag, plenty to tell builds apart.
fn short_key(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}

/// apt with a configuration, index files and an empty dpkg status of its own (none of the
/// machine's), so that it answers what mmdebstrap's apt would install into an empty root file
/// system from [`SOURCES`].
#[derive(Debug)]
struct PrivateApt {
    dir: PathBuf,
    config: PathBuf,
}

impl PrivateApt {
    fn new(cache: &Cache) -> Result<Self> {
        let dir = cache.apt();
        for sub in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("failed to create {}", dir.join(sub).display()))?;
        }
        let mut sources = SOURCES.join("\n");
        sources.push('\n');
        fs::write(dir.join("etc/sources.list"), sources)?;
        fs::write(dir.join("status"), "")?;
        let config = dir.join("apt.conf");
        let path = |sub: &str| dir.join(sub).display().to_string();
        // pkgCacheGen::ForceEssential "," keeps apt from counting itself essential, as
        // mmdebstrap does; recommends are not installed there either.
        fs::write(
            &config,
            format!(
                "Dir::Etc \"{}\";\nDir::Etc::Parts \"{}\";\nDir::State \"{}\";\n\
                 Dir::State::status \"{}\";\nDir::Cache \"{}\";\nAPT::Architecture \"{ARCHITECTURE}\";\n\
                 APT::Architectures \"{ARCHITECTURE}\";\nDebug::NoLocking \"true\";\n\
                 pkgCacheGen::ForceEssential \",\";\nAPT::Install-Recommends \"false\";\n\
                 Acquire::Languages \"none\";\nAPT::Sandbox::User \"root\";\n\
                 Dir::Cache::srcpkgcache \"\";\n",
                path("etc"),
                path("etc/apt.conf.d"),
                path("state"),
                path("status"),
                path("cache"),
            ),
        )?;
        Ok(Self { dir, config })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("APT_CONFIG", &self.config);
        command
    }

    /// Where the index files are; mmdebstrap is handed the same ones.
    fn lists(&self) -> PathBuf {
        self.dir.join("state/lists")
    }

    /// Refreshes the index files (a few seconds when nothing changed). When the mirror cannot be
    /// reached the last ones are used, with a warning.
    fn update(&self, log: &Path) -> Result<()> {
        let updated = run_logged(
            "apt-get update (the images' own package lists)",
            self.command("apt-get").args(["update", "-q"]),
            log,
        );
        if let Err(error) = updated {
            let have_lists = fs::read_dir(self.lists())
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .any(|entry| entry.file_name().to_string_lossy().ends_with("_Packages"))
                })
                .unwrap_or(false);
            if !have_lists {
                return Err(error);
            }
            println!(
                "  warning: the package lists could not be refreshed; using the last ones ({error:#})"
            );
        }
        Ok(())
    }

    /// The packages and versions of a minbase root file system with `packages`: mmdebstrap
    /// installs the `Essential: yes` packages of the suite, then `packages` with the suite's
    /// `Priority: required` ones.
    fn resolve(&self, packages: &[&str]) -> Result<BTreeMap<String, String>> {
        let narrow = |pattern: &str| {
            format!(
                "?narrow(?or(?archive(^{SUITE}$),?codename(^{SUITE}$)),?architecture({ARCHITECTURE}),{pattern})"
            )
        };
        let output = run_capture(
            self.command("apt-get")
                .args(["--simulate", "--quiet", "install"])
                .arg(narrow("?essential"))
                .args(packages)
                .arg(narrow("?and(?priority(required),?not(?essential))")),
        )?;
        let resolved = parse_simulated_installs(&output);
        for package in packages {
            ensure!(
                resolved.contains_key(*package),
                "apt would not install {package}:\n{output}"
            );
        }
        Ok(resolved)
    }
}

/// `Inst <package> (<version> <release> [<arch>])` lines of `apt-get --simulate install`.
fn parse_simulated_installs(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let version = rest.split_once('(')?.1.split_whitespace().next()?;
            Some((name.to_owned(), version.to_owned()))
        })
        .collect()
}

/// What dpkg says is installed in a root file system.
fn installed_packages(root: &Path) -> Result<BTreeMap<String, String>> {
    let output = run_capture(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["--show", "--showformat=${Package}=${Version}\n"]),
    )?;
    Ok(output
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, version)| (name.to_owned(), version.to_owned()))
        .collect())
}

/// Prints how this build's inputs differ from the last one's, so a rebuild says why.
fn report_changed_inputs(cache: &Cache, plan: &Plan) {
    let Ok(previous) = fs::read_to_string(cache.image(plan.spec).join("inputs.txt")) else {
        return;
    };
    let before: BTreeSet<&str> = previous.lines().collect();
    let after: BTreeSet<&str> = plan.inputs.lines().collect();
    let removed: Vec<&&str> = before.difference(&after).collect();
    let added: Vec<&&str> = after.difference(&before).collect();
    if removed.is_empty() && added.is_empty() {
        return;
    }
    println!(
        "  changed since the last build ({} in, {} out):",
        added.len(),
        removed.len()
    );
    for line in added.iter().take(8) {
        println!("    + {line}");
    }
    for line in removed.iter().take(8) {
        println!("    - {line}");
    }
}

/// Root file system, image, check, archive.
fn build(
    cache: &Cache,
    apt: &PrivateApt,
    plan: &Plan,
    archive: &Path,
    options: &Options,
) -> Result<()> {
    let spec = plan.spec;
    let reference = plan.reference();
    let rootfs = ensure_rootfs(cache, &apt.lists(), plan)?;

    let step = Instant::now();
    let builder = Builder::Buildah;
    let previous = builder.image_id(&reference);
    let container = new_container(builder, "scratch")?;
    let mount = mount_container(&container)?;
    run_logged(
        &format!("unpacking {}", rootfs.display()),
        Command::new("tar")
            .args(["--extract", "--preserve-permissions", "--numeric-owner"])
            .args(["--xattrs", "--xattrs-include=*", "--file"])
            .arg(&rootfs)
            .arg("--directory")
            .arg(&mount),
        &cache.log,
    )?;
    let installed = installed_packages(&mount)?;
    if installed != plan.packages {
        // The name would then describe other versions than the image holds. Only a mirror update
        // between resolving and building can do this; the next run resolves afresh.
        println!(
            "  warning: the root file system's packages differ from the resolved ones: {}",
            describe_difference(&plan.packages, &installed)
        );
    }
    write_overlay(&mount, &plan.files)?;
    install_wheels(cache, &mount, &plan.wheels)?;
    configure(builder, &container, plan)?;
    run_logged(
        &format!("buildah commit {reference}"),
        builder
            .command()
            .args(["commit", "--quiet", "--format", "oci"])
            .arg(&container.name)
            .arg(&reference),
        &cache.log,
    )?;
    if let Some(previous) = previous
        && builder.image_id(&reference).as_deref() != Some(previous.as_str())
    {
        let _ = run_capture(builder.command().args(["rmi", &previous]));
    }
    println!("  image committed ({:.1}s)", step.elapsed().as_secs_f64());

    check(cache, plan, &mount, spec.check(options.start_cassandra))?;
    drop(container);

    let step = Instant::now();
    builder.export(&reference, archive, &cache.log)?;
    let image_bytes =
        run_capture(
            builder
                .command()
                .args(["images", "--format", "{{.Size}}", &reference]),
        )
        .ok()
        .and_then(|size| parse_human_size(size.lines().next().unwrap_or_default()));
    println!(
        "  archive {} ({}; image {}) written ({:.1}s)",
        archive.display(),
        megabytes(fs::metadata(archive)?.len()),
        image_bytes.map_or_else(|| "size unknown".to_owned(), megabytes),
        step.elapsed().as_secs_f64()
    );
    remove_other_images(builder, spec, &reference);
    Ok(())
}

/// Runs the image's check again, on the image the archive holds (loaded into the builder's store
/// under its reference, replacing whatever had that name there).
fn recheck(cache: &Cache, plan: &Plan, archive: &Path, options: &Options) -> Result<()> {
    let builder = Builder::Buildah;
    let reference = plan.reference();
    let previous = builder.image_id(&reference);
    run_logged(
        &format!("buildah pull oci-archive:{}", archive.display()),
        builder
            .command()
            .args(["pull", "--quiet"])
            .arg(format!("oci-archive:{}", archive.display())),
        &cache.log,
    )?;
    let loaded = builder
        .image_id(&reference)
        .with_context(|| format!("{} did not load as {reference}", archive.display()))?;
    if let Some(previous) = previous
        && previous != loaded
    {
        let _ = run_capture(builder.command().args(["rmi", &previous]));
    }
    let container = new_container(builder, &reference)?;
    let mount = mount_container(&container)?;
    check(
        cache,
        plan,
        &mount,
        plan.spec.check(options.start_cassandra),
    )
}

fn new_container(builder: Builder, image: &str) -> Result<WorkingContainer> {
    let name = run_capture(
        builder
            .command()
            .args(["from", "--quiet", "--pull-never", image]),
    )?;
    Ok(WorkingContainer {
        builder,
        name: name.trim().to_owned(),
    })
}

fn mount_container(container: &WorkingContainer) -> Result<PathBuf> {
    let mount = run_capture(container.builder.command().args(["mount", &container.name]))?;
    let mount = PathBuf::from(mount.trim());
    ensure!(mount.is_dir(), "buildah mount gave {}", mount.display());
    Ok(mount)
}

/// The Debian root file system as a tarball, built with mmdebstrap unless one of the same
/// Debian inputs is cached.
fn ensure_rootfs(cache: &Cache, lists: &Path, plan: &Plan) -> Result<PathBuf> {
    let spec = plan.spec;
    let tarball = cache.rootfs(spec, &plan.rootfs_key);
    if tarball.is_file() {
        println!("  root file system cached: {}", tarball.display());
        return Ok(tarball);
    }
    let step = Instant::now();
    let dir = cache.image(spec);
    fs::create_dir_all(&dir)?;
    fs::create_dir_all(cache.debs())?;
    fs::create_dir_all(tarball.parent().context("the tarball has a directory")?)?;
    let essential_hook = dir.join("essential-hook.sh");
    let customize_hook = dir.join("customize-hook.sh");
    for (path, text) in [
        (&essential_hook, &plan.essential_hook),
        (&customize_hook, &plan.customize_hook),
    ] {
        fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    }
    // mmdebstrap's special hooks split their arguments on whitespace.
    let debs = cache.debs();
    for path in [lists, &debs, &essential_hook, &customize_hook] {
        ensure!(
            !path.to_string_lossy().contains(char::is_whitespace),
            "{} contains whitespace, which mmdebstrap's hooks cannot take",
            path.display()
        );
    }
    let partial = tarball.with_extension("tar.partial");
    let _ = fs::remove_file(&partial);
    let mut command = Command::new("mmdebstrap");
    command
        .args(mmdebstrap_arguments(spec))
        .args(["--mode=root", "--format=tar"])
        // The index files apt resolved the versions from, so both see the same packages.
        .arg("--skip=update")
        .arg(format!(
            "--setup-hook=sync-in {} /var/lib/apt/lists/",
            lists.display()
        ))
        // Packages downloaded by earlier builds, and back after this one (essential ones too).
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1/var/cache/apt/archives\"")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            debs.display()
        ))
        .arg(format!("--essential-hook={}", essential_hook.display()))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            debs.display()
        ))
        .arg(format!("--customize-hook={}", customize_hook.display()))
        .arg(SUITE)
        .arg(&partial)
        .args(SOURCES);
    run_logged(
        &format!("mmdebstrap {SUITE} for {} (a minute or more)", spec.name),
        &mut command,
        &cache.log,
    )?;
    fs::rename(&partial, &tarball)
        .with_context(|| format!("failed to write {}", tarball.display()))?;
    // Only the newest root file system of each image is kept.
    let prefix = format!("{}-", spec.name);
    for entry in fs::read_dir(tarball.parent().context("the tarball has a directory")?)?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path != tarball && name.starts_with(&prefix) && name.ends_with(".tar") {
            let _ = fs::remove_file(&path);
        }
    }
    println!(
        "  root file system built: {} ({}, {:.1}s)",
        tarball.display(),
        megabytes(fs::metadata(&tarball)?.len()),
        step.elapsed().as_secs_f64()
    );
    Ok(tarball)
}

/// Writes our files into the mounted root file system: owned by root, with their modes.
fn write_overlay(root: &Path, entries: &[OverlayEntry]) -> Result<()> {
    for entry in entries {
        let path = root.join(entry.path.trim_start_matches('/'));
        let parent = path.parent().context("an overlay path has a parent")?;
        if !parent.exists() {
            fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
            fs::set_permissions(parent, fs::Permissions::from_mode(0o755))?;
        }
        match &entry.content {
            Content::Directory => fs::create_dir_all(&path)
                .with_context(|| format!("failed to create {}", path.display()))?,
            Content::Text(text) => fs::write(&path, text)
                .with_context(|| format!("failed to write {}", path.display()))?,
            Content::Copy(source) => fs::copy(source, &path).map(drop).with_context(|| {
                format!("failed to copy {} to {}", source.display(), path.display())
            })?,
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode))
            .with_context(|| format!("failed to set the mode of {}", path.display()))?;
    }
    Ok(())
}

/// Unpacks the wheels into [`CQLSH_DIR`] and byte-compiles them, with the image's own python3.
fn install_wheels(cache: &Cache, root: &Path, wheels: &[PathBuf]) -> Result<()> {
    if wheels.is_empty() {
        return Ok(());
    }
    let staging_in_image = "/tmp/order-pipeline-wheels";
    let staging = root.join(staging_in_image.trim_start_matches('/'));
    fs::create_dir_all(&staging)?;
    fs::write(staging.join("install-wheels.py"), INSTALL_WHEELS)?;
    let mut arguments = vec![
        format!("{staging_in_image}/install-wheels.py"),
        CQLSH_DIR.to_owned(),
    ];
    for wheel in wheels {
        let name = wheel.file_name().context("a wheel has a name")?;
        fs::copy(wheel, staging.join(name))?;
        arguments.push(format!("{staging_in_image}/{}", name.to_string_lossy()));
    }
    let installed = run_logged(
        &format!("installing cqlsh {CQLSH_VERSION} into {CQLSH_DIR} with the image's python3"),
        Command::new("chroot")
            .arg(root)
            .args([
                "/usr/bin/env",
                "-i",
                "LANG=C.UTF-8",
                &format!("PATH={SYSTEM_PATH}"),
                "python3",
                "-I",
            ])
            .args(&arguments),
        &cache.log,
    );
    fs::remove_dir_all(&staging)?;
    installed
}

/// The image configuration: environment, command, user, working directory, ports, labels.
fn configure(builder: Builder, container: &WorkingContainer, plan: &Plan) -> Result<()> {
    let mut command = builder.command();
    command.arg("config");
    for (name, value) in &plan.config {
        command.arg(format!("--{name}")).arg(value);
    }
    run_capture(command.arg(&container.name)).map(drop)
}

/// Runs `check.sh` on the mounted image in private namespaces; prints what it verified.
fn check(cache: &Cache, plan: &Plan, root: &Path, check: &str) -> Result<()> {
    let step = Instant::now();
    let spec = plan.spec;
    let work = cache.image(spec).join("check");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("failed to clear {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    let script = cache.dir.join("check.sh");
    fs::write(&script, CHECK_SCRIPT)?;
    let env_file = work.join("image.env");
    let mut env = spec.env().join("\n");
    env.push('\n');
    fs::write(&env_file, env)?;
    run_logged(
        &format!(
            "checking {} ({check}) as uid 999 with a read-only root",
            spec.name
        ),
        Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--pid",
                "--uts",
                "--ipc",
                "--fork",
                "--kill-child",
            ])
            .arg("bash")
            .arg(&script)
            .arg(root)
            .arg(&work)
            .arg(check)
            .arg(&env_file)
            .arg(spec.workdir)
            .env("EXPECTED_VERSION", spec.server_version)
            .env("EXPECTED_CQLSH_VERSION", CQLSH_VERSION),
        &cache.log,
    )
    .with_context(|| {
        format!(
            "the {} image failed its check (work directory {})",
            spec.name,
            work.display()
        )
    })?;
    let summary = fs::read_to_string(work.join("summary")).unwrap_or_default();
    for line in summary.lines() {
        println!("  verified: {line}");
    }
    // Its namespaces died with it, so nothing is mounted there any more.
    fs::remove_dir_all(&work).with_context(|| format!("failed to remove {}", work.display()))?;
    println!("  checked ({:.1}s)", step.elapsed().as_secs_f64());
    Ok(())
}

/// Removes this image's other tags from the builder's store.
fn remove_other_images(builder: Builder, spec: Spec, keep: &str) {
    let Ok(listing) =
        run_capture(
            builder
                .command()
                .args(["images", "--format", "{{.Name}}:{{.Tag}}"]),
        )
    else {
        return;
    };
    let prefix = format!("{REPOSITORY}/{}:", spec.name);
    for reference in listing.lines().map(str::trim) {
        if reference.starts_with(&prefix) && reference != keep {
            let _ = run_capture(builder.command().args(["rmi", reference]));
        }
    }
}

/// Removes this image's older archives from `out`.
fn prune_archives(out: &Path, spec: Spec, keep: &Path) -> Result<()> {
    let prefix = spec.archive_prefix();
    for entry in fs::read_dir(out)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path() != keep && name.starts_with(&prefix) && name.ends_with(".oci.tar") {
            fs::remove_file(entry.path())
                .with_context(|| format!("failed to remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Keeps only the downloaded packages some current image uses.
fn prune_debs(cache: &Cache, package_sets: &[BTreeMap<String, String>]) -> Result<()> {
    let wanted: BTreeSet<String> = package_sets
        .iter()
        .flatten()
        .map(|(name, version)| deb_file_stem(name, version))
        .collect();
    let Ok(entries) = fs::read_dir(cache.debs()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".deb") else {
            continue;
        };
        // <name>_<version>_<arch>
        let Some((name_and_version, _arch)) = stem.rsplit_once('_') else {
            continue;
        };
        if !wanted.contains(name_and_version) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// `<name>_<version>` as apt names a downloaded package (`:` of an epoch escaped).
fn deb_file_stem(name: &str, version: &str) -> String {
    format!("{name}_{}", version.replace(':', "%3a"))
}

fn describe_difference(
    expected: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) -> String {
    let mut differences = Vec::new();
    for (name, version) in expected {
        match actual.get(name) {
            Some(installed) if installed == version => {}
            Some(installed) => differences.push(format!("{name} {version} -> {installed}")),
            None => differences.push(format!("{name} {version} missing")),
        }
    }
    for (name, version) in actual {
        if !expected.contains_key(name) {
            differences.push(format!("{name} {version} extra"));
        }
    }
    differences.join(", ")
}

/// `<out>/dependency-images.env`.
fn env_file(images: &[DependencyImage]) -> String {
    let mut text = String::from(
        "# Written by `cargo xtask images --dependencies`: the stand-in dependency images, \
         as pods name them\n# and as their archives (dependency-*.oci.tar) import into containerd.\n",
    );
    for image in images {
        if let Some(spec) = SPECS.iter().find(|spec| spec.name == image.name) {
            let _ = writeln!(text, "{}={}", spec.env_variable(), image.reference);
        }
    }
    text
}

fn table(results: &[Summary]) -> String {
    let mut text = format!(
        "{:<10} {:<58} {:>9} {:<10} {:>7}\n",
        "name", "image", "archive", "status", "time"
    );
    for result in results {
        let archive = fs::metadata(&result.image.archive)
            .map_or_else(|_| "-".to_owned(), |metadata| megabytes(metadata.len()));
        let _ = writeln!(
            text,
            "{:<10} {:<58} {:>9} {:<10} {:>6.1}s",
            result.image.name,
            result.image.reference,
            archive,
            match result.status {
                Status::Built => "built",
                Status::Cached => "cached",
                Status::Rechecked => "rechecked",
            },
            result.seconds
        );
    }
    text
}

/// The SHA-256 of each file, in order (`sha256sum`: fast on the 67 MB of jars, and no crate).
fn sha256_files(paths: &[&Path]) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let output = run_capture(Command::new("sha256sum").arg("--").args(paths))?;
    let hashes: Vec<String> = output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    ensure!(
        hashes.len() == paths.len(),
        "sha256sum printed {} hashes for {} files",
        hashes.len(),
        paths.len()
    );
    Ok(hashes)
}

/// The SHA-256 of `bytes`, hex (`sha256sum`, as above).
pub(crate) fn sha256_bytes(bytes: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run sha256sum")?;
    child
        .stdin
        .take()
        .context("sha256sum has a stdin")?
        .write_all(bytes)
        .context("failed to write to sha256sum")?;
    let output = child
        .wait_with_output()
        .context("failed to run sha256sum")?;
    ensure!(
        output.status.success(),
        "sha256sum failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::workspace_root;

    /// A fresh directory of this test's own: tests run in parallel threads of one process, so
    /// the pid alone would let two of them share (and delete) one directory.
    fn temp_dir(name: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("xtask-deps-{name}-{}-{unique}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `sh -n`/`bash -n`: the script parses.
    fn parses_as(shell: &str, script: &str) {
        let dir = temp_dir(&format!("parse-{shell}"));
        let path = dir.join("script");
        fs::write(&path, script).unwrap();
        let output = Command::new(shell).arg("-n").arg(&path).output().unwrap();
        assert!(
            output.status.success(),
            "{shell} -n: {}\n{script}",
            String::from_utf8_lossy(&output.stderr)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn selects_all_images_by_default_and_named_ones_in_order() {
        let names = |specs: Vec<Spec>| specs.iter().map(|spec| spec.name).collect::<Vec<_>>();
        assert_eq!(
            names(select(&[]).unwrap()),
            ["rabbitmq", "redis", "cassandra"]
        );
        assert_eq!(
            names(select(&["cassandra".into(), "rabbitmq".into()]).unwrap()),
            ["rabbitmq", "cassandra"]
        );
        let error = select(&["postgres".into()]).unwrap_err().to_string();
        assert!(
            error.contains("\"postgres\"") && error.contains("cassandra"),
            "{error}"
        );
    }

    #[test]
    fn names_images_archives_and_variables_by_server_version_and_hash() {
        assert_eq!(
            REDIS.reference("0123456789ab"),
            "localhost/order-pipeline-deps/redis:7.0.15-0123456789ab"
        );
        assert_eq!(
            CASSANDRA.reference("0123456789ab"),
            format!(
                "localhost/order-pipeline-deps/cassandra:{}-0123456789ab",
                cassandra::VERSION
            )
        );
        assert_eq!(
            RABBITMQ.archive(Path::new("/out"), "0123456789ab"),
            PathBuf::from("/out/dependency-rabbitmq-3.10.8-0123456789ab.oci.tar")
        );
        assert!(
            RABBITMQ
                .archive(Path::new("/out"), "k")
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&RABBITMQ.archive_prefix())
        );
        // containerd stores the name as it is: the CRI finds it under exactly the reference
        // pods give, with no docker.io/ in front.
        let reference = RABBITMQ.reference("0123456789ab");
        assert_eq!(crate::cluster::qualified_reference(&reference), reference);
        assert_eq!(
            SPECS.map(Spec::env_variable),
            ["RABBITMQ_IMAGE", "REDIS_IMAGE", "CASSANDRA_IMAGE"]
        );
        assert_eq!(
            short_key("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            "e3b0c44298fc"
        );
    }

    #[test]
    fn writes_the_references_as_an_env_file() {
        let images: Vec<DependencyImage> = SPECS
            .iter()
            .map(|spec| DependencyImage {
                name: spec.name,
                reference: spec.reference("abc"),
                archive: spec.archive(Path::new("/out"), "abc"),
            })
            .collect();
        let text = env_file(&images);
        let assignments: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(
            assignments,
            [
                "RABBITMQ_IMAGE=localhost/order-pipeline-deps/rabbitmq:3.10.8-abc",
                "REDIS_IMAGE=localhost/order-pipeline-deps/redis:7.0.15-abc",
                &format!(
                    "CASSANDRA_IMAGE=localhost/order-pipeline-deps/cassandra:{}-abc",
                    cassandra::VERSION
                ),
            ]
        );
    }

    #[test]
    fn reads_upstream_versions_and_python_tags() {
        assert_eq!(upstream_version("5:7.0.15-1~deb12u10"), "7.0.15");
        assert_eq!(upstream_version("3.10.8-1.1+deb12u1"), "3.10.8");
        assert_eq!(upstream_version("1.2"), "1.2");
        assert_eq!(upstream_version("2:1.0-2-3"), "1.0-2");
        assert_eq!(python_tag("3.11.2-1+b1").unwrap(), "cp311");
        let platforms = manylinux_platforms();
        assert_eq!(
            platforms.first().map(String::as_str),
            Some("manylinux_2_36_x86_64")
        );
        for platform in [
            "manylinux_2_28_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
            "manylinux1_x86_64",
        ] {
            assert!(
                platforms.iter().any(|candidate| candidate == platform),
                "{platform}"
            );
        }
        assert!(python_tag("3-1").is_err());
        let packages =
            BTreeMap::from([("redis-server".to_owned(), "5:7.0.15-1~deb12u10".to_owned())]);
        assert!(check_server_version(REDIS, &packages).is_ok());
        let newer = BTreeMap::from([("redis-server".to_owned(), "5:7.2.4-1".to_owned())]);
        let error = check_server_version(REDIS, &newer).unwrap_err().to_string();
        assert!(
            error.contains("7.2.4") && error.contains("7.0.15"),
            "{error}"
        );
        assert!(check_server_version(CASSANDRA, &BTreeMap::new()).is_ok());
    }

    #[test]
    fn parses_what_apt_would_install() {
        let output = "Reading package lists...\nThe following NEW packages will be installed:\n  \
                      libc6 redis-server\nInst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])\n\
                      Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []\n\
                      Inst redis-server (5:7.0.15-1~deb12u10 Debian-Security:12/oldstable-security [amd64])\n\
                      Conf redis-server (5:7.0.15-1~deb12u10 Debian-Security:12/oldstable-security [amd64])\n";
        let parsed = parse_simulated_installs(output);
        assert_eq!(
            parsed.into_iter().collect::<Vec<_>>(),
            [
                ("gcc-12-base".to_owned(), "12.2.0-14+deb12u1".to_owned()),
                ("libc6".to_owned(), "2.36-9+deb12u14".to_owned()),
                ("redis-server".to_owned(), "5:7.0.15-1~deb12u10".to_owned()),
            ]
        );
        assert_eq!(
            deb_file_stem("redis-server", "5:7.0.15-1~deb12u10"),
            "redis-server_5%3a7.0.15-1~deb12u10"
        );
    }

    fn inputs_with(package_version: &str, file_hash: &str, cmd: &str) -> String {
        let packages = BTreeMap::from([
            ("libc6".to_owned(), "2.36-9+deb12u14".to_owned()),
            ("redis-server".to_owned(), package_version.to_owned()),
        ]);
        let mut config = image_config(REDIS);
        config.retain(|(name, _)| name != "cmd");
        config.push(("cmd".to_owned(), cmd.to_owned()));
        inputs_text(
            REDIS,
            &packages,
            "essential-hash",
            "customize-hash",
            &[format!("file 0644 /etc/x {file_hash}")],
            &[],
            &config,
        )
    }

    fn debian_part(inputs: &str) -> &str {
        inputs.split_once("\n[ours]\n").unwrap().0
    }

    #[test]
    fn the_hash_covers_packages_files_and_configuration() {
        let base = inputs_with("5:7.0.15-1~deb12u10", "aaaa", "[\"redis-server\"]");
        assert!(base.starts_with(INPUTS_FORMAT));
        assert!(base.contains("\npackage redis-server=5:7.0.15-1~deb12u10\n"));
        assert!(base.contains("\nmmdebstrap --include=redis-server,redis-tools\n"));
        assert!(base.contains("\nmmdebstrap --dpkgopt=path-exclude=/usr/share/doc/*\n"));
        assert!(base.contains("\nconfig user 999:999\n"));
        // The same inputs give the same text, so the same name.
        assert_eq!(
            base,
            inputs_with("5:7.0.15-1~deb12u10", "aaaa", "[\"redis-server\"]")
        );

        let security_update = inputs_with("5:7.0.15-1~deb12u11", "aaaa", "[\"redis-server\"]");
        assert_ne!(debian_part(&base), debian_part(&security_update));
        let our_file = inputs_with("5:7.0.15-1~deb12u10", "bbbb", "[\"redis-server\"]");
        assert_eq!(
            debian_part(&base),
            debian_part(&our_file),
            "our files leave the root file system cached"
        );
        assert_ne!(base, our_file);
        let config = inputs_with("5:7.0.15-1~deb12u10", "aaaa", "[\"sh\"]");
        assert_eq!(debian_part(&base), debian_part(&config));
        assert_ne!(base, config);

        let keys: BTreeSet<String> = [&base, &security_update, &our_file, &config]
            .iter()
            .map(|text| short_key(&sha256_bytes(text.as_bytes()).unwrap()))
            .collect();
        assert_eq!(keys.len(), 4);
        assert!(
            keys.iter()
                .all(|key| key.len() == 12 && key.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn hashes_files_and_text_with_sha256sum() {
        assert_eq!(
            sha256_bytes(b"").unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let dir = temp_dir("hash");
        fs::write(dir.join("a b.jar"), "abc").unwrap();
        let entries = [
            OverlayEntry {
                path: "/opt/x".into(),
                mode: 0o755,
                content: Content::Directory,
            },
            OverlayEntry {
                path: "/opt/x/a.jar".into(),
                mode: 0o644,
                content: Content::Copy(dir.join("a b.jar")),
            },
            text_file("/opt/x/run", 0o755, ""),
        ];
        assert_eq!(
            hash_entries(&entries).unwrap(),
            [
                "dir 0755 /opt/x",
                "file 0644 /opt/x/a.jar ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "file 0755 /opt/x/run e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn image_configurations_follow_the_contract() {
        let env = |spec: Spec| spec.env();
        assert_eq!(
            env(REDIS),
            [format!("PATH={SYSTEM_PATH}"), "LANG=C.UTF-8".to_owned()]
        );
        // The real RabbitMQ scripts before Debian's uid-checking wrapper in /usr/sbin.
        assert_eq!(
            env(RABBITMQ)[0],
            format!("PATH=/usr/lib/rabbitmq/bin:{SYSTEM_PATH}")
        );
        assert!(env(RABBITMQ).contains(&"HOME=/var/lib/rabbitmq".to_owned()));
        assert_eq!(
            env(CASSANDRA)[0],
            format!("PATH=/opt/cassandra/bin:{SYSTEM_PATH}")
        );
        assert!(env(CASSANDRA).contains(&"CASSANDRA_CONF=/etc/cassandra".to_owned()));
        for spec in SPECS {
            let config = image_config(spec);
            assert!(
                config.contains(&("user".to_owned(), "999:999".to_owned())),
                "{}",
                spec.name
            );
            assert!(config.contains(&("env".to_owned(), "LANG=C.UTF-8".to_owned())));
            assert!(config.iter().any(|(name, value)| name == "label"
                && *value == format!("org.opencontainers.image.version={}", spec.server_version)));
        }
        assert!(image_config(REDIS).contains(&("cmd".to_owned(), "[\"redis-server\"]".to_owned())));
        assert!(
            image_config(CASSANDRA)
                .contains(&("cmd".to_owned(), "[\"cassandra\",\"-f\"]".to_owned()))
        );
        assert_eq!(REDIS.check(true), "redis");
        assert_eq!(CASSANDRA.check(false), "cassandra-tools");
        assert_eq!(CASSANDRA.check(true), "cassandra");
    }

    #[test]
    fn hooks_render_for_every_image_and_parse() {
        for spec in SPECS {
            let essential = spec.essential_hook().unwrap();
            assert!(
                essential.contains(&format!("echo '{}:x:999:999:", spec.user.0)),
                "{essential}"
            );
            parses_as("sh", &essential);
            let customize = spec.customize_hook().unwrap();
            assert!(customize.contains(&format!("for dir in {}; do", spec.writable.join(" "))));
            parses_as("sh", &customize);
        }
        assert!(
            RABBITMQ
                .customize_hook()
                .unwrap()
                .contains("for path in /var/lib/rabbitmq/.erlang.cookie; do")
        );
        parses_as("bash", CHECK_SCRIPT);
    }

    #[test]
    fn the_launcher_has_the_environments_flags() {
        let launcher = cassandra_launcher().unwrap();
        for flag in cassandra::SERVER_JVM_FLAGS
            .iter()
            .chain(cassandra::JAVA17_MODULE_FLAGS)
        {
            assert!(launcher.contains(&format!("\n  '{flag}'\n")), "{flag}");
        }
        assert!(launcher.contains(&format!(
            "-cp \"$conf:$home/lib/*\" {}\n",
            cassandra::MAIN_CLASS
        )));
        assert!(launcher.contains("\nexec \"$java\""));
        assert!(!launcher.contains("{{"));
        parses_as("bash", &launcher);
        assert!(bash_array_lines(&["it's"]).is_err());
    }

    /// Runs the launcher with a `java` that prints its arguments.
    fn launch(home: &Path, env: &[(&str, &str)], args: &[&str]) -> (bool, Vec<String>, String) {
        let output = Command::new("bash")
            .arg(home.join("bin/cassandra"))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CASSANDRA_HOME", home)
            .env("JAVA_HOME", home.join("jdk"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::to_owned)
                .collect(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    #[test]
    fn the_launcher_runs_java_as_the_contract_says() {
        let home = temp_dir("launcher");
        fs::create_dir_all(home.join("bin")).unwrap();
        fs::create_dir_all(home.join("jdk/bin")).unwrap();
        fs::write(home.join("bin/cassandra"), cassandra_launcher().unwrap()).unwrap();
        let java = home.join("jdk/bin/java");
        fs::write(&java, "#!/bin/sh\nprintf '%s\\n' \"$@\"\n").unwrap();
        fs::set_permissions(&java, fs::Permissions::from_mode(0o755)).unwrap();
        let lib = format!("{}/lib/*", home.display());

        let (ok, args, stderr) = launch(
            &home,
            &[
                ("MAX_HEAP_SIZE", "1024M"),
                ("HEAP_NEWSIZE", "256M"),
                ("CASSANDRA_CONF", "/config"),
                ("JVM_EXTRA_OPTS", "-Dextra.one=1  -Dextra.two=2"),
            ],
            &["-f", "-R", "-Dcassandra.ring_delay_ms=1000"],
        );
        assert!(ok, "{stderr}");
        assert_eq!(args[..3], ["-Xms1024M", "-Xmx1024M", "-Xmn256M"]);
        for expected in [
            "-Dcassandra.config=file:///config/cassandra.yaml",
            "-Dlogback.configurationFile=/config/logback.xml",
            &format!("-Dcassandra.logdir={}/logs", home.display()),
            "-Dcassandra.storagedir=/var/lib/cassandra",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:ErrorFile=/tmp/hs_err_pid%p.log",
            "-Dcassandra.jmx.local.port=7199",
            "-Dextra.one=1",
            "-Dextra.two=2",
            "-Dcassandra.ring_delay_ms=1000",
            "--add-opens=java.base/java.nio=ALL-UNNAMED",
        ] {
            assert!(
                args.iter().any(|arg| arg == expected),
                "{expected} in {args:?}"
            );
        }
        assert_eq!(
            args[args.len() - 3..],
            [
                "-cp".to_owned(),
                // The configuration directory first: cassandra-rackdc.properties is read from
                // the classpath.
                format!("/config:{lib}"),
                cassandra::MAIN_CLASS.to_owned()
            ]
        );
        assert!(
            !args
                .iter()
                .any(|arg| arg.starts_with("-XX:+HeapDumpOnOutOfMemoryError"))
        );

        // Defaults: a 1G heap, no young generation size, /etc/cassandra.
        let (ok, args, stderr) = launch(&home, &[], &["-R", "-f"]);
        assert!(ok, "{stderr}");
        assert_eq!(args[..2], ["-Xms1G", "-Xmx1G"]);
        assert!(!args.iter().any(|arg| arg.starts_with("-Xmn")));
        assert!(
            args.contains(&"-Dcassandra.config=file:///etc/cassandra/cassandra.yaml".to_owned())
        );

        // -v asks the jars for the version.
        let (ok, args, _) = launch(&home, &[], &["-v"]);
        assert!(ok);
        assert_eq!(args, ["-cp", &lib, "org.apache.cassandra.tools.GetVersion"]);

        for (heap, new) in [("1GB", ""), ("G", ""), ("", "x")] {
            let env: Vec<(&str, &str)> = [("MAX_HEAP_SIZE", heap), ("HEAP_NEWSIZE", new)]
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .collect();
            let (ok, _, stderr) = launch(&home, &env, &["-R"]);
            assert!(
                !ok && stderr.contains("is not a size"),
                "{heap} {new}: {stderr}"
            );
        }
        let (ok, _, stderr) = launch(&home, &[], &["-R", "--daemon"]);
        assert!(
            !ok && stderr.contains("unknown option '--daemon'"),
            "{stderr}"
        );
        let is_root = run_capture(Command::new("id").arg("-u")).unwrap().trim() == "0";
        if is_root {
            let (ok, _, stderr) = launch(&home, &[], &["-f"]);
            assert!(!ok && stderr.contains("pass -R"), "{stderr}");
        }
        fs::remove_dir_all(&home).unwrap();
    }

    /// The configuration the operator's init container edits: the official tarball's shape, each
    /// key it sets once at the top level, data under /var/lib/cassandra.
    #[test]
    fn cassandra_yaml_has_the_tarball_shape() {
        let yaml = fill(CASSANDRA_YAML, &[("VERSION", cassandra::VERSION)]).unwrap();
        let top_level = |key: &str| {
            yaml.lines()
                .filter(|line| line.starts_with(&format!("{key}:")))
                .count()
        };
        for key in [
            "cluster_name",
            "seed_provider",
            "listen_address",
            "rpc_address",
            "endpoint_snitch",
            "authenticator",
            "authorizer",
            "role_manager",
            "data_file_directories",
            "commitlog_directory",
            "saved_caches_directory",
            "hints_directory",
        ] {
            assert_eq!(top_level(key), 1, "{key}");
        }
        for line in [
            "      - seeds: \"127.0.0.1:7000\"",
            "listen_address: localhost",
            "rpc_address: localhost",
            "endpoint_snitch: SimpleSnitch",
            "  class_name : org.apache.cassandra.auth.AllowAllAuthenticator",
            "  - /var/lib/cassandra/data",
            "commitlog_directory: /var/lib/cassandra/commitlog",
        ] {
            assert!(yaml.lines().any(|candidate| candidate == line), "{line}");
        }
        assert!(!yaml.contains('\t'));
        assert!(CASSANDRA_RACKDC.contains("\ndc=dc1\nrack=rack1\n"));
        assert!(CASSANDRA_LOGBACK.contains("<appender name=\"STDOUT\""));
        // XML forbids "--" inside comments; logback would refuse the file.
        for comment in CASSANDRA_LOGBACK.split("<!--").skip(1) {
            let body = comment.split_once("-->").expect("a closed comment").0;
            assert!(!body.contains("--"), "{body}");
        }
        assert!(CASSANDRA_LOGBACK.contains("${cassandra.logdir}/system.log"));
    }

    /// The image's cqlsh is the release the operator's credentials test runs.
    #[test]
    fn cqlsh_is_the_release_the_operator_tests_with() {
        let test =
            fs::read_to_string(workspace_root().join("operator/tests/cassandra_credentials.rs"))
                .unwrap();
        assert!(
            test.contains(&format!("const CQLSH_VERSION: &str = \"{CQLSH_VERSION}\";")),
            "operator/tests/cassandra_credentials.rs pins another cqlsh"
        );
        let shim = fill(
            CQLSH_SHIM,
            &[("CQLSH_VERSION", CQLSH_VERSION), ("CQLSH_DIR", CQLSH_DIR)],
        )
        .unwrap();
        assert!(shim.contains("PYTHONPATH=\"/opt/cqlsh${PYTHONPATH:+:$PYTHONPATH}\" exec python3 -s -m cqlshlib \"$@\""));
        parses_as("sh", &shim);
    }
}
