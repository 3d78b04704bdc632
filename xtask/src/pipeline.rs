//! `cargo xtask run|stop`: the whole pipeline on this machine without Docker or Kubernetes.
//!
//! The real dependencies come from `env up` (Redis, the three-node RabbitMQ cluster, Cassandra);
//! the four workloads run as local processes, configured through exactly the environment
//! variables the operator sets in their pods (the names are `pipeline-contract`'s, which has no
//! I/O, so this crate stays free of the workloads' dependencies). Ports are the seed's: the
//! gateway on 8080, the dashboard on 8081. Locally the four admin listeners need distinct ports
//! (9090-9093); in a cluster each pod has its own 9090.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use pipeline_contract::env as vars;

use crate::env::process::{Daemon, Probe, ensure_port_free, http_status, run_logged, wait_until};
use crate::env::{self, Component, Layout};

/// A workload process: which workload, and its admin port here. What its pod is given (only
/// the gateway reads Cassandra and signs tokens; the dashboard reads Redis only; each its own
/// RabbitMQ and Redis user) comes from `pipeline_contract`, as in the operator.
#[derive(Debug, Clone, Copy)]
struct Workload {
    workload: pipeline_contract::Workload,
    admin_port: u16,
}

impl Workload {
    fn name(self) -> &'static str {
        self.workload.name()
    }
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        workload: pipeline_contract::Workload::Processor,
        admin_port: 9091,
    },
    Workload {
        workload: pipeline_contract::Workload::Notifier,
        admin_port: 9092,
    },
    Workload {
        workload: pipeline_contract::Workload::Dashboard,
        admin_port: 9093,
    },
    // Last: it only listens once RabbitMQ is connected, and the others are up by then.
    Workload {
        workload: pipeline_contract::Workload::Gateway,
        admin_port: 9090,
    },
];

/// The dependencies the workloads need, and Jaeger, which their traces go to (the Kubernetes
/// control plane is for operator tests).
const DEPENDENCIES: [Component; 4] = [
    Component::Redis,
    Component::Rabbitmq,
    Component::Cassandra,
    Component::Jaeger,
];

fn run_dir(layout: &Layout) -> PathBuf {
    layout.run().join("pipeline")
}

fn daemon(layout: &Layout, workload: &Workload) -> Daemon {
    Daemon::new(workload.name(), &run_dir(layout), workload.name())
}

/// Where cargo puts the binaries.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// Which cargo profile the workloads are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Optimised, as in the images: what a user measures.
    Release,
    /// Unoptimised, quicker to build.
    Debug,
}

impl Profile {
    pub fn from_debug(debug: bool) -> Self {
        if debug { Self::Debug } else { Self::Release }
    }

    /// The directory under the target directory, and the word for it.
    fn name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Debug => "debug",
        }
    }
}

/// `cargo build` of the four workloads with `profile`, its output in a log.
fn build_workloads(layout: &Layout, profile: Profile) -> Result<()> {
    println!(
        "==> building the workloads ({} builds{})",
        profile.name(),
        match profile {
            Profile::Release => "; --debug builds faster and runs slower",
            Profile::Debug => ": unoptimised, not for timing",
        }
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.arg("build");
    if profile == Profile::Release {
        build.arg("--release");
    }
    for workload in WORKLOADS {
        build.args(["--package", workload.name()]);
    }
    run_logged(
        &format!(
            "cargo build{} (gateway, processor, notifier, dashboard)",
            if profile == Profile::Release {
                " --release"
            } else {
                ""
            }
        ),
        &mut build,
        &layout.home.join("logs/pipeline-build.log"),
    )
}

/// Starts the dependencies and the four workloads, waits until every one is ready, and prints
/// where to reach them. Idempotent: running workloads are left alone, whatever they were built
/// with (`cargo xtask stop` first to switch).
pub fn run(layout: &Layout, profile: Profile) -> Result<()> {
    env::up(layout, &DEPENDENCIES)?;
    let endpoints = read_env_file(&layout.env_file())?;

    let stopped: Vec<&str> = WORKLOADS
        .iter()
        .filter(|workload| daemon(layout, workload).running_pid().is_none())
        .map(|workload| workload.name())
        .collect();
    if stopped.is_empty() {
        println!(
            "==> the four workloads already run, as they were built (`cargo xtask stop` to rebuild)"
        );
    } else {
        build_workloads(layout, profile)?;
    }

    let dir = run_dir(layout);
    fs::create_dir_all(&dir)?;
    let secret = secret_file(&dir, "jwt-secret")?;
    let binaries = target_dir().join(profile.name());
    for workload in WORKLOADS {
        let daemon = daemon(layout, &workload);
        if daemon.running_pid().is_none() {
            let http_port = workload.workload.http_port();
            for port in http_port.into_iter().chain([workload.admin_port]) {
                ensure_port_free(port, workload.name())?;
            }
            let credentials = grant(layout, &dir, workload.workload)?;
            let variables = variables(&endpoints, &secret, &credentials, workload.workload)?;
            let mut command = Command::new(binaries.join(workload.name()));
            command
                .env_clear()
                .envs(variables.iter().map(|(k, v)| (k, v)));
            command.env(vars::ADMIN_PORT, workload.admin_port.to_string());
            if let Some(port) = http_port {
                command.env(vars::HTTP_PORT, port.to_string());
            }
            println!("  starting {}", workload.name());
            daemon.spawn(&mut command)?;
        }
    }
    for workload in WORKLOADS {
        let daemon = daemon(layout, &workload);
        let admin = workload.admin_port;
        wait_until(
            workload.name(),
            Duration::from_secs(120),
            &daemon.log_file,
            || {
                if daemon.running_pid().is_none() {
                    return Probe::Fatal("the process exited".into());
                }
                match http_status(admin, "/readyz") {
                    Ok(200) => Probe::Ready,
                    Ok(status) => Probe::NotYet(format!("/readyz answered {status}")),
                    Err(error) => Probe::NotYet(format!("{error:#}")),
                }
            },
        )?;
    }
    println!(
        "\nThe pipeline runs. Try the seed README's walkthrough:\n\
         \n  redis-cli SET inventory:mag-safe-phone-case 100\
         \n  curl -X POST http://localhost:8080/register -H 'Content-Type: application/json' \\\
         \n       -d '{{\"email\":\"customer@example.com\",\"password\":\"securepassword123\"}}'\
         \n  curl -X POST http://localhost:8080/login -H 'Content-Type: application/json' \\\
         \n       -d '{{\"email\":\"customer@example.com\",\"password\":\"securepassword123\"}}'\
         \n  curl -X POST http://localhost:8080/orders -H 'Content-Type: application/json' \\\
         \n       -H \"Authorization: Bearer $TOKEN\" -d '{{\"id\":\"order123\",\"sku\":\"mag-safe-phone-case\",\"qty\":2}}'\
         \n  curl http://localhost:8081/metrics\
         \n\nGateway http://localhost:8080 (OpenAPI at /openapi.json), dashboard http://localhost:8081,\
         \nRabbitMQ management http://localhost:15672 (guest/guest), admin ports 9090-9093,\
         \ntraces in Jaeger http://localhost:16686 (one trace per order: search by tag order.id=<id>).\
         \nLogs: {}\nStop the workloads with `cargo xtask stop`, everything with `cargo xtask env down`.",
        dir.display()
    );
    Ok(())
}

/// Stops the four workloads (SIGTERM, so they finish in-flight work first).
pub fn stop(layout: &Layout) -> Result<()> {
    for workload in WORKLOADS.iter().rev() {
        if daemon(layout, workload).stop(Duration::from_secs(30))? {
            println!("  {} stopped", workload.name());
        }
    }
    Ok(())
}

/// Whether any workload runs, for `env status`.
pub fn running(layout: &Layout) -> Vec<String> {
    WORKLOADS
        .iter()
        .filter_map(|workload| {
            daemon(layout, workload)
                .running_pid()
                .map(|pid| format!("{} pid {pid}", workload.name()))
        })
        .collect()
}

/// A workload's own users, as the operator makes them in a cluster: a Redis ACL user and a
/// RabbitMQ user (the dashboard's may touch nothing, it only reads queue depths), both named after the workload, with the grants of
/// `pipeline_contract::access`. Their passwords are made once and kept beside the JWT secret.
#[derive(Debug, Default)]
struct Credentials {
    redis_password: String,
    rabbitmq_password: String,
}

fn grant(
    layout: &Layout,
    dir: &Path,
    workload: pipeline_contract::Workload,
) -> Result<Credentials> {
    let name = workload.name();
    let redis_password = secret_file(dir, &format!("{name}-redis-password"))?;
    env::redis::grant(
        name,
        &redis_password,
        &workload.redis_rules(&pipeline_contract::keys::Keys::default()),
    )?;
    let rabbitmq_password = secret_file(dir, &format!("{name}-rabbitmq-password"))?;
    env::rabbitmq::grant(layout, name, &rabbitmq_password, &workload.rabbitmq())?;
    Ok(Credentials {
        redis_password,
        rabbitmq_password,
    })
}

/// The environment of `workload`, as the operator sets it in its pod: its own Redis user, the
/// RabbitMQ URLs without credentials and its own user beside them, Cassandra's credentials and
/// the token secret for the gateway only.
fn variables(
    endpoints: &[(String, String)],
    secret: &str,
    credentials: &Credentials,
    workload: pipeline_contract::Workload,
) -> Result<Vec<(String, String)>> {
    let get = |key: &str| {
        endpoints
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .with_context(|| format!("{key} missing from the env file; run `cargo xtask env up`"))
    };
    let mut variables = vec![
        (vars::REDIS_ADDR.into(), get("OP_REDIS_ADDR")?),
        (vars::REDIS_USERNAME.into(), workload.name().to_owned()),
        (
            vars::REDIS_PASSWORD.into(),
            credentials.redis_password.clone(),
        ),
        (vars::LOG_FORMAT.into(), "json".into()),
        ("PATH".into(), "/usr/bin:/bin".into()),
    ];
    // Traces, as the operator wires them from `spec.tracing`; without a receiver, none.
    if let Ok(endpoint) = get("OP_OTLP_ENDPOINT") {
        variables.extend([
            (vars::OTEL_EXPORTER_OTLP_ENDPOINT.into(), endpoint),
            (vars::OTEL_SERVICE_NAME.into(), workload.name().to_owned()),
        ]);
    }
    let (user, env_password) = (get("OP_RABBITMQ_USER")?, get("OP_RABBITMQ_PASSWORD")?);
    let userinfo = format!("{user}:{env_password}@");
    let urls = get("OP_RABBITMQ_URLS")?.replace(&userinfo, "");
    variables.extend([
        (vars::RABBITMQ_URLS.into(), urls),
        (vars::RABBITMQ_USERNAME.into(), workload.name().to_owned()),
        (
            vars::RABBITMQ_PASSWORD.into(),
            credentials.rabbitmq_password.clone(),
        ),
    ]);
    if workload.uses_cassandra() {
        variables.extend([
            (vars::CASSANDRA_ADDR.into(), get("OP_CASSANDRA_ADDR")?),
            (vars::CASSANDRA_USER.into(), get("OP_CASSANDRA_USER")?),
            (
                vars::CASSANDRA_PASSWORD.into(),
                get("OP_CASSANDRA_PASSWORD")?,
            ),
            (vars::JWT_SECRET.into(), secret.to_owned()),
        ]);
    }
    Ok(variables)
}

fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// A secret of the local pipeline (the token secret, a workload's password): 48 random bytes,
/// hex, made once and kept in `dir/name` (mode 0600), so tokens and logins survive a restart.
/// Never printed.
fn secret_file(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    if let Ok(secret) = fs::read_to_string(&path)
        && secret.trim().len() >= 64
    {
        return Ok(secret.trim().to_owned());
    }
    let mut bytes = [0u8; 48];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("failed to read /dev/urandom")?;
    let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_workload_gets_what_its_pod_gets_from_the_env_file() {
        let endpoints = read_env_file_text(
            "# redis\nOP_REDIS_ADDR=127.0.0.1:6379\n\
             OP_RABBITMQ_URLS=amqp://guest:guest@a/%2f,amqp://guest:guest@b/%2f\n\
             OP_RABBITMQ_USER=guest\nOP_RABBITMQ_PASSWORD=guest\n\
             OP_CASSANDRA_ADDR=127.0.0.1:9042\nOP_CASSANDRA_USER=cassandra\nOP_CASSANDRA_PASSWORD=cassandra\n\
             OP_OTLP_ENDPOINT=http://127.0.0.1:4318\n",
        );
        let of = |name: &str| {
            let workload = WORKLOADS
                .iter()
                .find(|w| w.name() == name)
                .unwrap()
                .workload;
            let credentials = Credentials {
                redis_password: format!("{name}-r"),
                rabbitmq_password: format!("{name}-q"),
            };
            variables(&endpoints, "s", &credentials, workload)
                .unwrap()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let gateway = of("gateway");
        assert_eq!(gateway["RABBITMQ_URLS"], "amqp://a/%2f,amqp://b/%2f");
        assert_eq!(gateway["RABBITMQ_USERNAME"], "gateway");
        assert_eq!(gateway["RABBITMQ_PASSWORD"], "gateway-q");
        assert_eq!(gateway["REDIS_USERNAME"], "gateway");
        assert_eq!(gateway["REDIS_ADDR"], "127.0.0.1:6379");
        assert_eq!(gateway["JWT_SECRET"], "s");
        assert_eq!(gateway["CASSANDRA_PASSWORD"], "cassandra");
        for name in ["processor", "notifier"] {
            let wired = of(name);
            assert!(wired.contains_key("RABBITMQ_URLS"), "{name}");
            for secret in ["JWT_SECRET", "CASSANDRA_PASSWORD", "CASSANDRA_USER"] {
                assert!(!wired.contains_key(secret), "{name} gets {secret}");
            }
        }
        let dashboard = of("dashboard");
        assert_eq!(
            dashboard.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "LOG_FORMAT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_SERVICE_NAME",
                "PATH",
                "RABBITMQ_PASSWORD",
                "RABBITMQ_URLS",
                "RABBITMQ_USERNAME",
                "REDIS_ADDR",
                "REDIS_PASSWORD",
                "REDIS_USERNAME"
            ],
            "the dashboard reads Redis and queue depths (and exports its spans); no Cassandra, no token secret"
        );
        assert_eq!(dashboard["RABBITMQ_USERNAME"], "dashboard");
        assert_eq!(dashboard["OTEL_SERVICE_NAME"], "dashboard");
        assert_eq!(dashboard["REDIS_PASSWORD"], "dashboard-r");
        assert!(
            variables(&[], "s", &Credentials::default(), WORKLOADS[0].workload)
                .unwrap_err()
                .to_string()
                .contains("OP_REDIS_ADDR")
        );
    }

    fn read_env_file_text(text: &str) -> Vec<(String, String)> {
        let dir = std::env::temp_dir().join(format!("xtask-pipeline-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("env");
        fs::write(&path, text).unwrap();
        let values = read_env_file(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        values
    }

    #[test]
    fn the_secret_is_made_once_long_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("xtask-secret-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let first = secret_file(&dir, "jwt-secret").unwrap();
        assert_eq!(first.len(), 96);
        assert_eq!(secret_file(&dir, "jwt-secret").unwrap(), first);
        assert_ne!(secret_file(&dir, "other").unwrap(), first);
        let mode = fs::metadata(dir.join("jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
