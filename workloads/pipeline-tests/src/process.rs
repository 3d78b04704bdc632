//! Workloads as real processes (the built binaries next to the test), for the tests that crash
//! them: `cargo xtask test` builds the binaries first; by hand, `cargo build -p <name>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The workload binary `name`: in `$ORDER_PIPELINE_BINARIES` when set (the benchmark compares
/// two builds that way), else the one of the running test's or benchmark's profile.
pub fn binary(name: &str) -> PathBuf {
    let directory = match std::env::var_os("ORDER_PIPELINE_BINARIES") {
        Some(directory) => PathBuf::from(directory),
        None => {
            // target/<profile>/deps/<test>-<hash> or target/<profile>/<bin> -> target/<profile>
            let exe = std::env::current_exe().expect("the test's own path");
            let parent = exe.parent().expect("a binary lives in a directory");
            if parent.file_name().is_some_and(|dir| dir == "deps") {
                parent.parent().unwrap_or(parent).to_owned()
            } else {
                parent.to_owned()
            }
        }
    };
    let path = directory.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {name}` (cargo xtask test does; \
         add --release for the benchmark)",
        path.display()
    );
    path
}

/// A port nothing listens on now (the workload binds it moments later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// One workload process, restartable with the same variables and log.
#[derive(Debug)]
pub struct Workload {
    pub name: &'static str,
    binary: PathBuf,
    variables: BTreeMap<String, String>,
    log: PathBuf,
    child: Child,
}

impl Workload {
    /// Starts `name` with exactly `variables`, logging to `<logs>/<name>-<index>.log`.
    pub fn spawn(
        name: &'static str,
        variables: BTreeMap<String, String>,
        logs: &Path,
        index: usize,
    ) -> Self {
        let binary = binary(name);
        let log = logs.join(format!("{name}-{index}.log"));
        let child = start(&binary, &variables, &log);
        Self {
            name,
            binary,
            variables,
            log,
            child,
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would, then the same process again.
    pub fn crash_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL the workload"); // SIGKILL
        self.child.wait().expect("reap the workload");
        self.child = start(&self.binary, &self.variables, &self.log);
    }

    /// SIGTERM, and waits for the process to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start(binary: &Path, variables: &BTreeMap<String, String>, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the workload's log");
    Command::new(binary)
        .env_clear()
        .envs(variables)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("the log for stdout"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()))
}
