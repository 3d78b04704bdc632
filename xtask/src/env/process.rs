//! Starting, waiting for and stopping the environment's server processes.
//!
//! Every server is started in its own process group (so a Ctrl-C in the terminal that ran
//! `cargo xtask env up` does not take the servers with it), with its output in a log file and its
//! pid in a pid file. Readiness is always a real check (a protocol answer), never a sleep: the
//! caller passes a probe and [`wait_until`] polls it, printing progress, until it succeeds or the
//! deadline passes, in which case the error carries the log's tail and path.

use std::fs;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A server process the environment owns, identified by its pid file.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// Human name used in progress lines and errors, e.g. `redis` or `rabbitmq node 2`.
    pub name: String,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
}

impl Daemon {
    pub fn new(name: impl Into<String>, dir: &Path, stem: &str) -> Self {
        Self {
            name: name.into(),
            pid_file: dir.join(format!("{stem}.pid")),
            log_file: dir.join(format!("{stem}.log")),
        }
    }

    /// The pid recorded in the pid file, if that process is still alive.
    pub fn running_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        pid_alive(pid).then_some(pid)
    }

    /// Starts `command` detached, with stdout and stderr appended to the log file, and records
    /// its pid. Does nothing when the recorded process is still alive.
    pub fn spawn(&self, command: &mut Command) -> Result<u32> {
        if let Some(pid) = self.running_pid() {
            return Ok(pid);
        }
        if let Some(parent) = self.log_file.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("failed to open log {}", self.log_file.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to start {} ({:?})", self.name, command))?;
        let pid = child.id();
        // The child is deliberately not waited on: it outlives this command. Dropping the handle
        // does not kill it.
        drop(child);
        fs::write(&self.pid_file, format!("{pid}\n"))
            .with_context(|| format!("failed to write {}", self.pid_file.display()))?;
        Ok(pid)
    }

    /// Waits for `probe` to succeed, failing early if the process died, and with the log's tail
    /// when the deadline passes.
    pub fn wait_ready(
        &self,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let pid_file = self.pid_file.clone();
        wait_until(&self.name, timeout, &self.log_file, || {
            if !pid_file.exists() {
                return Probe::Fatal("its pid file disappeared".into());
            }
            if self.running_pid().is_none() {
                return Probe::Fatal("the process exited".into());
            }
            match probe() {
                Ok(()) => Probe::Ready,
                Err(error) => Probe::NotYet(format!("{error:#}")),
            }
        })
    }

    /// Sends SIGTERM, waits up to `grace` for the process to exit, then SIGKILL. Removes the pid file.
    pub fn stop(&self, grace: Duration) -> Result<bool> {
        let Some(pid) = self.running_pid() else {
            let _ = fs::remove_file(&self.pid_file);
            return Ok(false);
        };
        terminate(pid, grace)?;
        let _ = fs::remove_file(&self.pid_file);
        Ok(true)
    }
}

/// The outcome of one readiness probe.
#[derive(Debug)]
pub enum Probe {
    Ready,
    NotYet(String),
    /// Waiting longer cannot help (the process died).
    Fatal(String),
}

/// Polls `probe` every 250 ms until it reports ready, printing a progress line every 5 seconds.
/// On timeout or a fatal probe the error names the server, the last reason, and shows the tail of
/// `log` with its path.
pub fn wait_until(
    name: &str,
    timeout: Duration,
    log: &Path,
    mut probe: impl FnMut() -> Probe,
) -> Result<()> {
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let last_reason = match probe() {
            Probe::Ready => {
                println!(
                    "  {name}: ready after {:.1}s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Probe::NotYet(reason) => reason,
            Probe::Fatal(reason) => {
                bail!(
                    "{name} failed to start: {reason}\n--- last lines of {} ---\n{}\n--- full log: {} ---",
                    log.display(),
                    tail(log, 40),
                    log.display()
                );
            }
        };
        if start.elapsed() > timeout {
            bail!(
                "{name} was not ready after {}s (last check: {last_reason})\n--- last lines of {} ---\n{}\n--- full log: {} ---",
                timeout.as_secs(),
                log.display(),
                tail(log, 40),
                log.display()
            );
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            println!(
                "  {name}: waiting ({:.0}s, {last_reason})",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The last `lines` lines of a file (or a note that it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    // Read at most the last 64 KiB: logs can be large and only the end matters.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let mut text = String::new();
    let _ = BufReader::new(file)
        .take(64 * 1024)
        .read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a process with this pid still runs: any of its threads is neither a zombie nor dead.
///
/// Looking at the main thread alone is not enough: when a multi-threaded server (a JVM, the
/// Erlang VM) exits, its main thread becomes a zombie while the kernel still tears down the other
/// threads, and the process keeps its ports bound until the last one is gone, so an `up` straight
/// after a `down` would find them taken.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|task| {
        fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("State:"))
                .is_some_and(|state| !state.trim_start().starts_with(['Z', 'X']))
        })
    })
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn terminate(pid: u32, grace: Duration) -> Result<()> {
    signal(pid, "TERM")?;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    signal(pid, "KILL")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) {
        if Instant::now() > deadline {
            bail!("process {pid} survived SIGKILL");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Sends signal `name` (`TERM`, `KILL`, ...) to `pid`; a process that is already gone is no error.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    // `kill` from procps keeps this crate free of unsafe libc calls.
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("failed to run kill")?;
    if !status.success() && pid_alive(pid) {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Fails with a clear message when a port we are about to use is taken by a process we did not
/// start (for example a system Redis), instead of silently talking to the wrong server.
pub fn ensure_port_free(port: u16, what: &str) -> Result<()> {
    if port_open(port) {
        bail!(
            "port {port} (needed by {what}) is already in use by another process; stop it or \
             run `ss -ltnp 'sport = :{port}'` to see which"
        );
    }
    Ok(())
}

/// Runs a command to completion and returns its stdout, failing with its stderr.
pub fn run_capture(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} exited with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a long command with its output going to a log file, printing the command first. On
/// failure the error shows the log's tail and path.
pub fn run_logged(what: &str, command: &mut Command, log: &Path) -> Result<()> {
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("failed to open {}", log.display()))?;
    println!("  {what} (log: {})", log.display());
    let status = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("failed to run {command:?}"))?;
    if !status.success() {
        bail!(
            "{what} failed ({status})\n--- last lines of {} ---\n{}\n--- full log: {} ---",
            log.display(),
            tail(log, 40),
            log.display()
        );
    }
    Ok(())
}

/// The status code of `GET path` on 127.0.0.1:`port` (HTTP/1.0, enough for a probe).
pub fn http_status(port: u16, path: &str) -> Result<u16> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let line = String::from_utf8_lossy(&head);
    match line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
    {
        Some(code) => Ok(code),
        None => bail!("not an HTTP answer: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_last_lines() {
        let dir = std::env::temp_dir().join(format!("xtask-tail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&path, 10), "a\nb\nc\nd");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_process_is_alive_and_bogus_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
