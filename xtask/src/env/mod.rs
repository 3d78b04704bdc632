//! `cargo xtask env up|down|status`: the project's real dependencies on loopback.
//!
//! Everything lives under one home directory (`$ORDER_PIPELINE_HOME`, by default
//! `~/.cache/order-pipeline`): downloaded and built artefacts under `bin/`, `dist/` and `go/`
//! (kept between runs, keyed by version), and the running servers' data, logs and pid files under
//! `run/` (removed by `env down --purge`). Each component writes its endpoints to
//! `run/env.d/<component>.env`; `up` then joins them into `run/env`, the one file tests read.

pub mod cassandra;
pub mod jaeger;
pub mod kube;
pub mod process;
pub mod rabbitmq;
pub mod redis;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Where the environment keeps its caches and running state.
#[derive(Debug, Clone)]
pub struct Layout {
    pub home: PathBuf,
}

impl Layout {
    pub fn from_env() -> Result<Self> {
        let home = match std::env::var_os("ORDER_PIPELINE_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let user_home = std::env::var_os("HOME").context("HOME is not set")?;
                PathBuf::from(user_home).join(".cache/order-pipeline")
            }
        };
        Ok(Self { home })
    }

    /// Built or downloaded binaries, named with their version.
    pub fn bin(&self) -> PathBuf {
        self.home.join("bin")
    }
    /// Downloaded distributions (Cassandra's jars).
    pub fn dist(&self) -> PathBuf {
        self.home.join("dist")
    }
    /// Build directories (generated go.mod files and build logs) of the binaries built from the
    /// Go module proxy. Go's own module and build caches stay where `go env` puts them.
    pub fn go(&self) -> PathBuf {
        self.home.join("go")
    }
    /// Running servers' data, logs and pid files.
    pub fn run(&self) -> PathBuf {
        self.home.join("run")
    }
    pub fn run_dir(&self, component: Component) -> PathBuf {
        self.run().join(component.name())
    }
    /// The file tests read: every running component's endpoints.
    pub fn env_file(&self) -> PathBuf {
        self.run().join("env")
    }
    fn env_fragment(&self, component: Component) -> PathBuf {
        self.run()
            .join("env.d")
            .join(format!("{}.env", component.name()))
    }

    /// Records a component's endpoints and rebuilds the joined env file.
    pub fn write_endpoints(
        &self,
        component: Component,
        values: &BTreeMap<&str, String>,
    ) -> Result<()> {
        let fragment = self.env_fragment(component);
        fs::create_dir_all(fragment.parent().context("fragment has a parent")?)?;
        let mut text = String::new();
        for (key, value) in values {
            if value.contains('\n') {
                bail!("endpoint value for {key} contains a newline");
            }
            text.push_str(&format!("{key}={value}\n"));
        }
        fs::write(&fragment, text)
            .with_context(|| format!("failed to write {}", fragment.display()))?;
        self.join_env_file()
    }

    fn remove_endpoints(&self, component: Component) -> Result<()> {
        let _ = fs::remove_file(self.env_fragment(component));
        self.join_env_file()
    }

    fn join_env_file(&self) -> Result<()> {
        let mut text =
            String::from("# Written by `cargo xtask env up`; read by the tests (testenv crate).\n");
        for component in Component::ALL {
            if let Ok(fragment) = fs::read_to_string(self.env_fragment(component)) {
                text.push_str(&format!("# {component}\n{fragment}"));
            }
        }
        let path = self.env_file();
        fs::create_dir_all(self.run())?;
        fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))
    }
}

/// One dependency of the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Redis,
    Rabbitmq,
    Cassandra,
    Kube,
    Jaeger,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Redis,
        Component::Rabbitmq,
        Component::Cassandra,
        Component::Kube,
        Component::Jaeger,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Redis => "redis",
            Component::Rabbitmq => "rabbitmq",
            Component::Cassandra => "cassandra",
            Component::Kube => "kube",
            Component::Jaeger => "jaeger",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Component {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Component::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown component {s:?} (expected one of redis, rabbitmq, cassandra, kube, jaeger)"
                )
            })
    }
}

/// What `status` reports for one component.
#[derive(Debug)]
pub struct Status {
    pub running: bool,
    pub detail: String,
}

pub fn up(layout: &Layout, components: &[Component]) -> Result<()> {
    let all = Instant::now();
    for &component in components {
        let start = Instant::now();
        println!("==> {component}: starting");
        let endpoints = match component {
            Component::Redis => redis::up(layout),
            Component::Rabbitmq => rabbitmq::up(layout),
            Component::Cassandra => cassandra::up(layout),
            Component::Kube => kube::up(layout),
            Component::Jaeger => jaeger::up(layout),
        }
        .with_context(|| format!("{component} did not come up"))?;
        layout.write_endpoints(component, &endpoints)?;
        println!(
            "==> {component}: up ({:.1}s)",
            start.elapsed().as_secs_f64()
        );
    }
    println!(
        "environment ready in {:.1}s; endpoints in {}",
        all.elapsed().as_secs_f64(),
        layout.env_file().display()
    );
    Ok(())
}

pub fn down(layout: &Layout, components: &[Component], purge: bool) -> Result<()> {
    let mut failures = Vec::new();
    // Reverse order: the control plane and clients first, storage last.
    for &component in components.iter().rev() {
        println!("==> {component}: stopping");
        let result = match component {
            Component::Redis => redis::down(layout),
            Component::Rabbitmq => rabbitmq::down(layout),
            Component::Cassandra => cassandra::down(layout),
            Component::Kube => kube::down(layout),
            Component::Jaeger => jaeger::down(layout),
        };
        match result {
            Ok(()) => layout.remove_endpoints(component)?,
            Err(error) => failures.push(format!("{component}: {error:#}")),
        }
        if purge {
            remove_dir_if_exists(&layout.run_dir(component))?;
        }
    }
    if !failures.is_empty() {
        bail!("some components did not stop:\n{}", failures.join("\n"));
    }
    Ok(())
}

pub fn status(layout: &Layout, components: &[Component]) -> Result<bool> {
    let mut all_running = true;
    for &component in components {
        let status = match component {
            Component::Redis => redis::status(layout),
            Component::Rabbitmq => rabbitmq::status(layout),
            Component::Cassandra => cassandra::status(layout),
            Component::Kube => kube::status(layout),
            Component::Jaeger => jaeger::status(layout),
        };
        all_running &= status.running;
        println!(
            "{:<10} {:<8} {}",
            component.name(),
            if status.running { "running" } else { "stopped" },
            status.detail
        );
    }
    println!("env file: {}", layout.env_file().display());
    Ok(all_running)
}

pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("failed to remove {}", dir.display())),
    }
}

/// Finds a program on PATH or at one of the given absolute paths.
pub fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    for candidate in extra {
        let path = PathBuf::from(candidate);
        if path.is_file() {
            return Some(path);
        }
    }
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Installs Debian packages when a program is missing. `apt-get update` runs first, once.
pub fn ensure_apt_packages(layout: &Layout, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            !std::process::Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let log = layout.home.join("logs/apt.log");
    // Debian starts a packaged service on install where it can (redis-server on 6379,
    // rabbitmq-server on 5672): it would then hold the ports our own servers need. A
    // policy-rc.d that answers 101 forbids that, for the duration of this install only.
    let policy = PathBuf::from("/usr/sbin/policy-rc.d");
    let placed_policy = !policy.exists()
        && fs::write(
            &policy,
            "#!/bin/sh\n# Placed by cargo xtask env up during apt-get install.\nexit 101\n",
        )
        .is_ok()
        && std::process::Command::new("chmod")
            .args(["755", "/usr/sbin/policy-rc.d"])
            .status()
            .is_ok_and(|status| status.success());
    let installed = install_packages(&log, &missing);
    if placed_policy {
        let _ = fs::remove_file(&policy);
    }
    installed
}

fn install_packages(log: &Path, missing: &[&str]) -> Result<()> {
    process::run_logged(
        "apt-get update",
        std::process::Command::new("apt-get").args(["update", "-q"]),
        log,
    )?;
    process::run_logged(
        &format!("apt-get install {}", missing.join(" ")),
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        log,
    )
}
