//! Workloads as real processes (the built binaries next to the test), for the tests that crash
//! them: `cargo xtask test` builds the binaries first; by hand, `cargo build -p <name>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The workload binary `name` of the running test's profile.
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary lives in target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {name}` (cargo xtask test does)",
        path.display()
    );
    path
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
