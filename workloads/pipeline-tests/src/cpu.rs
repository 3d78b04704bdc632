//! CPU time of processes, read from `/proc`, for the benchmark's "CPU per order" figures: the
//! workloads it spawns, and the environment's RabbitMQ nodes and Redis found by their command
//! lines.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// User plus system CPU time of process `pid`, all its threads (the dead ones included), from
/// `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = stat_ticks(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks()? as f64,
    ))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses itself, so fields are counted from
/// the last `)`.
fn stat_ticks(stat: &str) -> Result<u64> {
    let rest = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .context("no command name")?;
    // After the name: field 3 (state) is the first.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| -> Result<u64> {
        fields
            .get(number - 3)
            .context("too few fields")?
            .parse()
            .with_context(|| format!("field {number} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), the unit of `/proc/<pid>/stat`.
fn clock_ticks() -> Result<u64> {
    static TICKS: OnceLock<u64> = OnceLock::new();
    if let Some(ticks) = TICKS.get() {
        return Ok(*ticks);
    }
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let ticks: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")?;
    if ticks == 0 {
        bail!("getconf CLK_TCK printed 0");
    }
    Ok(*TICKS.get_or_init(|| ticks))
}

/// The processes whose command line (arguments joined by spaces) contains every one of
/// `needles`.
pub fn pids_matching(needles: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
                .map(|raw| {
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    needles.iter().all(|needle| line.contains(needle))
                })
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The peak resident memory of process `pid` (`VmHWM` of `/proc/<pid>/status`), in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .context("no VmHWM line")?
        .trim()
        .parse()
        .context("VmHWM is not a number")?;
    Ok(kib * 1024)
}

/// Named groups of processes whose CPU time is measured over an interval.
#[derive(Debug, Default)]
pub struct Meter {
    groups: BTreeMap<String, Vec<u32>>,
}

/// The CPU time each group used since [`Meter::start`].
#[derive(Debug)]
pub struct Reading {
    started: BTreeMap<String, Duration>,
}

impl Meter {
    /// Adds a group; a group without processes is an error (a figure of 0 would mislead).
    pub fn group(&mut self, name: &str, pids: Vec<u32>) -> Result<()> {
        if pids.is_empty() {
            bail!("no process found for {name}");
        }
        self.groups.insert(name.to_owned(), pids);
        Ok(())
    }

    /// The environment's three RabbitMQ nodes (`beam.smp` started with the environment's
    /// RabbitMQ home) and its Redis.
    pub fn with_environment() -> Result<Self> {
        let mut meter = Self::default();
        meter.group("broker", pids_matching(&["beam.smp", "run/rabbitmq"]))?;
        meter.group("redis", pids_matching(&["redis-server"]))?;
        Ok(meter)
    }

    fn now(&self) -> Result<BTreeMap<String, Duration>> {
        self.groups
            .iter()
            .map(|(name, pids)| {
                let total = pids
                    .iter()
                    .map(|pid| cpu_time(*pid))
                    .sum::<Result<Duration>>()?;
                Ok((name.clone(), total))
            })
            .collect()
    }

    pub fn start(&self) -> Result<Reading> {
        Ok(Reading {
            started: self.now()?,
        })
    }

    /// Each group's CPU time since `reading`, per unit of work (`count` orders), in
    /// microseconds, formatted as `name N µs` pairs.
    pub fn per(&self, reading: &Reading, count: usize) -> Result<String> {
        let now = self.now()?;
        let parts: Vec<String> = now
            .iter()
            .map(|(name, total)| {
                // A group added after the reading is a process started since: all its time.
                let since = reading.started.get(name).copied().unwrap_or_default();
                let used = total.saturating_sub(since);
                format!(
                    "{name} {:.0} µs",
                    used.as_secs_f64() * 1e6 / count.max(1) as f64
                )
            })
            .collect();
        Ok(parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A name with spaces and a parenthesis, as a thread may set.
        let line = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    731 269 0 0 20 0 9 0 123 456 789";
        assert_eq!(stat_ticks(line).unwrap(), 731 + 269);
        assert!(stat_ticks("4242 (short) S 1").is_err());
    }

    #[test]
    fn this_process_uses_cpu_and_is_found_by_its_command_line() {
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(200) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        let used = cpu_time(pid).unwrap() - before;
        assert!(used >= Duration::from_millis(100), "{used:?}");
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert!(pids_matching(&[name]).contains(&pid));
        assert!(peak_rss(pid).unwrap() > 1024 * 1024);
    }
}
