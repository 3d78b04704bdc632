//! `cargo xtask run|stop`: the whole pipeline on this machine without Docker or Kubernetes.
//!
//! The real dependencies come from `env up` (Redis, the three-node RabbitMQ cluster, Cassandra);
//! the four workloads run as local processes, configured through exactly the environment
//! variables the operator sets in their pods (the names come from `pipeline-contract`'s
//! documentation; this crate stays free of the workloads' dependencies, so they are spelled here
//! and checked by the walkthrough test that drives this command). Ports are the seed's: the
//! gateway on 8080, the dashboard on 8081. Locally the four admin listeners need distinct ports
//! (9090-9093); in a cluster each pod has its own 9090.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::env::process::{Daemon, Probe, ensure_port_free, run_logged, wait_until};
use crate::env::{self, Component, Layout};

/// A workload process: its binary, business port (if any), admin port, and what its pod is
/// given (the operator's wiring: only the gateway reads Cassandra and signs tokens; the
/// dashboard reads Redis only).
#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    http_port: Option<u16>,
    admin_port: u16,
    rabbitmq: bool,
    cassandra_and_tokens: bool,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "processor",
        http_port: None,
        admin_port: 9091,
        rabbitmq: true,
        cassandra_and_tokens: false,
    },
    Workload {
        name: "notifier",
        http_port: None,
        admin_port: 9092,
        rabbitmq: true,
        cassandra_and_tokens: false,
    },
    Workload {
        name: "dashboard",
        http_port: Some(8081),
        admin_port: 9093,
        rabbitmq: false,
        cassandra_and_tokens: false,
    },
    // Last: it only listens once RabbitMQ is connected, and the others are up by then.
    Workload {
        name: "gateway",
        http_port: Some(8080),
        admin_port: 9090,
        rabbitmq: true,
        cassandra_and_tokens: true,
    },
];

/// The dependencies the workloads need (the Kubernetes control plane is for operator tests).
const DEPENDENCIES: [Component; 3] = [Component::Redis, Component::Rabbitmq, Component::Cassandra];

fn run_dir(layout: &Layout) -> PathBuf {
    layout.run().join("pipeline")
}

fn daemon(layout: &Layout, workload: &Workload) -> Daemon {
    Daemon::new(workload.name, &run_dir(layout), workload.name)
}

/// Where cargo puts the binaries.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// Starts the dependencies and the four workloads, waits until every one is ready, and prints
/// where to reach them. Idempotent: running workloads are left alone.
pub fn run(layout: &Layout) -> Result<()> {
    env::up(layout, &DEPENDENCIES)?;
    let endpoints = read_env_file(&layout.env_file())?;

    println!("==> building the workloads");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.arg("build");
    for workload in WORKLOADS {
        build.args(["--package", workload.name]);
    }
    run_logged(
        "cargo build (gateway, processor, notifier, dashboard)",
        &mut build,
        &layout.home.join("logs/pipeline-build.log"),
    )?;

    let dir = run_dir(layout);
    fs::create_dir_all(&dir)?;
    let secret = jwt_secret(&dir)?;
    let binaries = target_dir().join("debug");
    for workload in WORKLOADS {
        let daemon = daemon(layout, &workload);
        if daemon.running_pid().is_none() {
            for port in workload.http_port.into_iter().chain([workload.admin_port]) {
                ensure_port_free(port, workload.name)?;
            }
            let variables = variables(&endpoints, &secret, &workload)?;
            let mut command = Command::new(binaries.join(workload.name));
            command
                .env_clear()
                .envs(variables.iter().map(|(k, v)| (k, v)));
            command.env("ADMIN_PORT", workload.admin_port.to_string());
            if let Some(port) = workload.http_port {
                command.env("HTTP_PORT", port.to_string());
            }
            println!("  starting {}", workload.name);
            daemon.spawn(&mut command)?;
        }
    }
    for workload in WORKLOADS {
        let daemon = daemon(layout, &workload);
        let admin = workload.admin_port;
        wait_until(
            workload.name,
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
         \nRabbitMQ management http://localhost:15672 (guest/guest), admin ports 9090-9093.\
         \nLogs: {}\nStop the workloads with `cargo xtask stop`, everything with `cargo xtask env down`.",
        dir.display()
    );
    Ok(())
}

/// Stops the four workloads (SIGTERM, so they finish in-flight work first).
pub fn stop(layout: &Layout) -> Result<()> {
    for workload in WORKLOADS.iter().rev() {
        if daemon(layout, workload).stop(Duration::from_secs(30))? {
            println!("  {} stopped", workload.name);
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
                .map(|pid| format!("{} pid {pid}", workload.name))
        })
        .collect()
}

/// The environment of `workload`, as the operator sets it in its pod: the RabbitMQ URLs without
/// credentials and the user and password beside them, Cassandra's credentials and the token
/// secret for the gateway only.
fn variables(
    endpoints: &[(String, String)],
    secret: &str,
    workload: &Workload,
) -> Result<Vec<(String, String)>> {
    let get = |key: &str| {
        endpoints
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .with_context(|| format!("{key} missing from the env file; run `cargo xtask env up`"))
    };
    let mut variables = vec![
        ("REDIS_ADDR".into(), get("OP_REDIS_ADDR")?),
        ("LOG_FORMAT".into(), "json".into()),
        ("PATH".into(), "/usr/bin:/bin".into()),
    ];
    if workload.rabbitmq {
        let (user, password) = (get("OP_RABBITMQ_USER")?, get("OP_RABBITMQ_PASSWORD")?);
        let userinfo = format!("{user}:{password}@");
        let urls = get("OP_RABBITMQ_URLS")?.replace(&userinfo, "");
        variables.extend([
            ("RABBITMQ_URLS".into(), urls),
            ("RABBITMQ_USERNAME".into(), user),
            ("RABBITMQ_PASSWORD".into(), password),
        ]);
    }
    if workload.cassandra_and_tokens {
        variables.extend([
            ("CASSANDRA_ADDR".into(), get("OP_CASSANDRA_ADDR")?),
            ("CASSANDRA_USER".into(), get("OP_CASSANDRA_USER")?),
            ("CASSANDRA_PASSWORD".into(), get("OP_CASSANDRA_PASSWORD")?),
            ("JWT_SECRET".into(), secret.to_owned()),
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

/// The local pipeline's token secret: 48 random bytes, hex, made once and kept (mode 0600) so
/// tokens survive a restart. Never printed.
fn jwt_secret(dir: &Path) -> Result<String> {
    let path = dir.join("jwt-secret");
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

/// The status code of `GET path` on 127.0.0.1:`port` (HTTP/1.0, enough for a probe).
fn http_status(port: u16, path: &str) -> Result<u16> {
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
    fn each_workload_gets_what_its_pod_gets_from_the_env_file() {
        let endpoints = read_env_file_text(
            "# redis\nOP_REDIS_ADDR=127.0.0.1:6379\n\
             OP_RABBITMQ_URLS=amqp://guest:guest@a/%2f,amqp://guest:guest@b/%2f\n\
             OP_RABBITMQ_USER=guest\nOP_RABBITMQ_PASSWORD=guest\n\
             OP_CASSANDRA_ADDR=127.0.0.1:9042\nOP_CASSANDRA_USER=cassandra\nOP_CASSANDRA_PASSWORD=cassandra\n",
        );
        let of = |name: &str| {
            let workload = WORKLOADS.iter().find(|w| w.name == name).unwrap();
            variables(&endpoints, "s", workload)
                .unwrap()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let gateway = of("gateway");
        assert_eq!(gateway["RABBITMQ_URLS"], "amqp://a/%2f,amqp://b/%2f");
        assert_eq!(gateway["RABBITMQ_USERNAME"], "guest");
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
            ["LOG_FORMAT", "PATH", "REDIS_ADDR"],
            "the dashboard reads Redis only"
        );
        assert!(
            variables(&[], "s", &WORKLOADS[0])
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
        let first = jwt_secret(&dir).unwrap();
        assert_eq!(first.len(), 96);
        assert_eq!(jwt_secret(&dir).unwrap(), first);
        let mode = fs::metadata(dir.join("jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
