//! The main command as a new user meets it: `cargo xtask run`, then the seed README's walkthrough
//! exactly as our README writes it, with the real `curl` and `redis-cli`, each documented output
//! checked. The commands and outputs are read from the README's code block under
//! "The seed walkthrough, against `cargo xtask run`" (see `pipeline_e2e::readme` for its
//! grammar), so the README cannot drift from what is tested. Then the cluster suite's
//! transport-agnostic flow runs against the same local pipeline, which proves that flow here.
//!
//! `cargo xtask run` is invoked as a user types it (`$CARGO xtask run` from the workspace root).
//! That works inside `cargo test`: cargo holds its build lock only while compiling, not while
//! tests run, so the nested `cargo run -p xtask` and the workloads' `cargo build` take it in turn
//! (under `cargo xtask test` they find everything built). `CARGO_TARGET_DIR` passes through.
//!
//! Repeatable: the walkthrough's data persists in the environment (the account in Cassandra, the
//! order, counter and stock in Redis), so before following it the test removes exactly what a
//! fresh machine would not have: the README's account row (`users_keyspace.users`), and the
//! Redis keys of that account, order and SKU plus the processed-orders counter, spelled through
//! `pipeline_contract::keys` with the empty prefix `cargo xtask run` uses. Every other test uses
//! its own key prefix, vhost and keyspace, so none of this is anyone else's data.
//!
//! Ports 8080, 8081 and 9090-9093 are `cargo xtask run`'s alone (no other test binds them), and a
//! lock file beside the environment's env file keeps two runs of this test (two `cargo test`s on
//! one machine) from sharing them. The workloads are stopped first (so the walkthrough meets
//! workloads built from this tree) and at the end, even when the test fails (`cargo xtask stop`
//! from a drop guard); the dependencies keep running, as after a user's `cargo xtask stop`.

use std::fs::{self, File, TryLockError};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pipeline_contract::keys::Keys;
use pipeline_e2e::flow::{self, Endpoints, Inventory, Walkthrough};
use pipeline_e2e::readme::{self, Step};
use serde_json::Value;

const README_HEADING: &str = "The seed walkthrough, against `cargo xtask run`";
/// The seed's "replace `<your_jwt_token>` with the actual token you received".
const TOKEN_PLACEHOLDER: &str = "<your_jwt_token>";
/// A cold `cargo xtask run` builds the four workloads first.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);
const STOP_DEADLINE: Duration = Duration::from_secs(3 * 60);
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// How long a read (a GET) may take to show the processor's and notifier's asynchronous work.
const READ_DEADLINE: Duration = Duration::from_secs(30);
/// The keyspace the gateway keeps accounts in when `CASSANDRA_KEYSPACE` is unset, as under
/// `cargo xtask run` (the seed's name).
const ACCOUNTS_KEYSPACE: &str = pipeline_contract::ACCOUNTS_KEYSPACE;

#[test]
fn the_readme_walkthrough_works_against_cargo_xtask_run() {
    let started = Instant::now();
    let _lock = exclusive_lock();
    let markdown = fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let block = readme::code_block_under(&markdown, README_HEADING).unwrap();
    let steps = readme::steps(&block).unwrap();
    let data = WalkthroughData::from_steps(&steps).unwrap();

    xtask("stop", STOP_DEADLINE);
    let _stop = StopOnDrop;
    let phase = Instant::now();
    let run = xtask("run", RUN_DEADLINE);
    println!("`cargo xtask run` ready in {:.1}s", secs(phase));
    let printed = PrintedEndpoints::parse(&run).unwrap();
    for step in &steps {
        for url in step.urls() {
            assert!(
                url.starts_with(&format!("{}/", printed.gateway))
                    || url.starts_with(&format!("{}/", printed.dashboard)),
                "the README curls {url}, but `cargo xtask run` printed the gateway at {} and the \
                 dashboard at {}",
                printed.gateway,
                printed.dashboard
            );
        }
    }

    // `cargo xtask run` returns once every workload's /readyz answers 200, and a workload is
    // ready only once its business port is bound: the first curl must connect.
    for url in [&printed.gateway, &printed.dashboard] {
        assert_listening(url);
    }

    let env = testenv::Env::load();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(reset(&env, &data))
        .expect("failed to reset the walkthrough's data");
    println!(
        "reset {} and order {} as on a fresh machine",
        data.email, data.order_id
    );

    let phase = Instant::now();
    follow(&steps);
    println!("README walkthrough passed in {:.1}s", secs(phase));

    let phase = Instant::now();
    let walkthrough = Walkthrough::unique();
    let redis = LocalRedis {
        client: redis::Client::open(env.require("OP_REDIS_URL")).unwrap(),
    };
    runtime.block_on(async {
        flow::run(
            &Endpoints::new(&printed.gateway, &printed.dashboard),
            &redis,
            &walkthrough,
            flow::DEFAULT_DEADLINE,
        )
        .await
        .expect("the cluster suite's flow against `cargo xtask run`");
        // The flow deleted its account; its order's keys go too, so runs leave nothing behind.
        redis
            .delete(&account_keys(&walkthrough.email, &walkthrough.order_id))
            .await
            .unwrap();
    });
    println!("cluster flow passed locally in {:.1}s", secs(phase));
    println!("total {:.1}s", secs(started));
}

/// Runs each README step in `bash` as the reader's shell would and checks its documented output.
fn follow(steps: &[Step]) {
    let mut variables: Vec<(String, String)> = Vec::new();
    let mut token: Option<String> = None;
    for step in steps {
        if let Some((name, value)) = step.assignment() {
            let token = token
                .as_deref()
                .unwrap_or_else(|| panic!("{name} is set before any login answered a token"));
            let value = value.replace(TOKEN_PLACEHOLDER, token);
            // The shell evaluates the quoting, as it does for the reader.
            let finished = shell(
                &format!("{name}={value}\nprintf '%s' \"${name}\""),
                &variables,
            );
            assert!(finished.status.success(), "{finished:?}");
            variables.push((name.to_owned(), finished.stdout));
            println!("  ok  {name}=<the token of the login answer>");
            continue;
        }
        let expected = step.expected_output();
        assert!(
            !expected.is_empty(),
            "the README documents no output for {:?}",
            step.command
        );
        // Reads may be repeated until the asynchronous processing shows; writes run once.
        let deadline = if step.is_read() {
            READ_DEADLINE
        } else {
            Duration::ZERO
        };
        let started = Instant::now();
        let actual = loop {
            let finished = shell(&step.command, &variables);
            assert!(
                finished.status.success(),
                "{:?} failed: {finished:?}",
                step.command
            );
            // curl prints bodies as they are; redis-cli ends its answer with a newline.
            let actual = finished.stdout.trim_end().to_owned();
            if readme::output_matches(&expected, &actual) {
                break actual;
            }
            assert!(
                started.elapsed() < deadline,
                "README step\n{}\nshould print\n{expected}\nbut printed\n{actual}\n(stderr: {})",
                step.command,
                finished.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        if let Ok(answer) = serde_json::from_str::<Value>(&actual)
            && let Some(issued) = answer["token"].as_str()
        {
            token = Some(issued.to_owned());
        }
        let mut shown = step.command.lines().next().unwrap_or_default();
        if step.command.contains('\n') {
            shown = shown.trim_end_matches('\\').trim_end();
        }
        println!("  ok  {shown} -> {actual}");
    }
}

/// The README's account, order and SKU, read from its commands so they are written once.
#[derive(Debug)]
struct WalkthroughData {
    email: String,
    order_id: String,
    sku: String,
}

impl WalkthroughData {
    fn from_steps(steps: &[Step]) -> Result<Self> {
        let body = |path: &str| {
            steps
                .iter()
                .find(|step| step.urls().iter().any(|url| url.ends_with(path)))
                .and_then(Step::json_body)
                .with_context(|| format!("the README has no curl to {path} with a JSON body"))
        };
        let text = |value: &Value, field: &str| {
            value[field]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("the README's body {value} has no {field}"))
        };
        let (register, order) = (body("/register")?, body("/orders")?);
        Ok(Self {
            email: text(&register, "email")?,
            order_id: text(&order, "id")?,
            sku: text(&order, "sku")?,
        })
    }
}

/// Removes the README walkthrough's data, leaving the environment as a fresh machine has it for
/// this account, order and SKU.
async fn reset(env: &testenv::Env, data: &WalkthroughData) -> Result<()> {
    let redis = LocalRedis {
        client: redis::Client::open(env.require("OP_REDIS_URL"))?,
    };
    let keys = Keys::default();
    let mut stale = account_keys(&data.email, &data.order_id);
    stale.extend([
        keys.inventory(&data.sku),
        keys.processed_count(),
        keys.failed_logins_by_address("127.0.0.1"),
        keys.failed_logins_by_address("::1"),
    ]);
    redis.delete(&stale).await?;

    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(env.require("OP_CASSANDRA_ADDR"))
        .user(
            env.require("OP_CASSANDRA_USER"),
            env.require("OP_CASSANDRA_PASSWORD"),
        )
        .build()
        .await
        .context("failed to connect to Cassandra")?;
    // A lightweight transaction, like the gateway's own writes to the table.
    session
        .query_unpaged(
            format!("DELETE FROM {ACCOUNTS_KEYSPACE}.users WHERE email = ? IF EXISTS"),
            (data.email.as_str(),),
        )
        .await
        .with_context(|| format!("failed to delete the account {}", data.email))?;
    Ok(())
}

/// The Redis keys of one account's walkthrough (`cargo xtask run` sets no key prefix).
fn account_keys(email: &str, order_id: &str) -> Vec<String> {
    let keys = Keys::default();
    vec![
        keys.idempotency(email, order_id),
        keys.order(email, order_id),
        keys.notification_lease(email, order_id),
        keys.notification(order_id),
        keys.account_deleted(email),
        keys.failed_logins_by_email(email),
    ]
}

/// The environment's Redis, where `cargo xtask run`'s workloads keep their data.
struct LocalRedis {
    client: redis::Client,
}

impl LocalRedis {
    async fn delete(&self, keys: &[String]) -> Result<()> {
        let mut connection = self.client.get_multiplexed_async_connection().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }
}

impl Inventory for LocalRedis {
    async fn set(&self, sku: &str, level: i64) -> Result<()> {
        let mut connection = self.client.get_multiplexed_async_connection().await?;
        let () = redis::cmd("SET")
            .arg(Keys::default().inventory(sku))
            .arg(level)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }
}

/// Where `cargo xtask run` says the gateway and dashboard answer.
#[derive(Debug)]
struct PrintedEndpoints {
    gateway: String,
    dashboard: String,
}

impl PrintedEndpoints {
    /// Reads the line `Gateway http://... , dashboard http://...` of the command's output.
    fn parse(output: &str) -> Result<Self> {
        let line = output
            .lines()
            .find(|line| line.trim_start().starts_with("Gateway http://"))
            .with_context(|| format!("`cargo xtask run` printed no gateway URL:\n{output}"))?;
        let url_after = |label: &str| {
            line.split_once(label)
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(|url| url.trim_end_matches([',', '.', '/']).to_owned())
                .filter(|url| url.starts_with("http://"))
                .with_context(|| format!("no {label:?} URL in `cargo xtask run`'s line {line:?}"))
        };
        Ok(Self {
            gateway: url_after("Gateway ")?,
            dashboard: url_after("dashboard ")?,
        })
    }
}

/// Waits until `url`'s host and port accept a TCP connection; returns how long that took (zero
/// when they did at once).
/// The address of `url` accepts a connection now.
fn assert_listening(url: &str) {
    let address = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if let Err(error) = TcpStream::connect(address.as_str()) {
        panic!(
            "{url} refused the first connection after `cargo xtask run` reported it ready: {error}"
        );
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the workspace")
        .to_owned()
}

/// `cargo xtask <command>` from the workspace root, as a user runs it; panics with its output
/// unless it succeeds. Returns its stdout.
fn xtask(command: &str, deadline: Duration) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut process = Command::new(cargo);
    process
        .args(["xtask", command])
        .current_dir(workspace_root());
    let finished = run(&mut process, deadline, &format!("cargo xtask {command}"));
    print!("{}", finished.stdout);
    assert!(
        finished.status.success(),
        "`cargo xtask {command}` failed ({}):\n{}\n{}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
    finished.stdout
}

/// Stops the workloads when the test ends, passed or failed.
struct StopOnDrop;

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut process = Command::new(cargo);
        process
            .args(["xtask", "stop"])
            .current_dir(workspace_root());
        let finished = run(&mut process, STOP_DEADLINE, "cargo xtask stop");
        print!("`cargo xtask stop` at the end:\n{}", finished.stdout);
        if !finished.status.success() {
            eprintln!("`cargo xtask stop` failed: {finished:?}");
        }
    }
}

fn shell(text: &str, variables: &[(String, String)]) -> Finished {
    let mut process = Command::new("bash");
    process
        .args(["-c", text])
        .envs(variables.iter().map(|(k, v)| (k, v)))
        .current_dir(workspace_root());
    run(&mut process, COMMAND_DEADLINE, text)
}

#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion with its output in files (never a full pipe, whatever it
/// prints), killing it at the deadline.
fn run(process: &mut Command, deadline: Duration, what: &str) -> Finished {
    let dir = std::env::temp_dir().join(testenv::unique("main-command"));
    fs::create_dir_all(&dir).unwrap();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = process
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start {what}: {error}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {deadline:?}; stdout:\n{}\nstderr:\n{}",
                fs::read_to_string(&out).unwrap_or_default(),
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let finished = Finished {
        status,
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    };
    let _ = fs::remove_dir_all(&dir);
    finished
}

/// One run of this test per machine at a time: `cargo xtask run`'s ports and the walkthrough's
/// data are the machine's. Held until the test ends (after the workloads are stopped).
fn exclusive_lock() -> File {
    let path = testenv::Env::default_path().with_file_name("main-command-test.lock");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|error| panic!("failed to open {}: {error}", path.display()));
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            println!(
                "waiting for another run of this test to finish ({})",
                path.display()
            );
            file.lock().unwrap();
        }
        Err(TryLockError::Error(error)) => panic!("failed to lock {}: {error}", path.display()),
    }
    file
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

#[test]
fn the_printed_endpoints_are_read_from_the_run_output() {
    let output = "\nGateway http://localhost:8080 (OpenAPI at /openapi.json), dashboard \
                  http://localhost:8081,\nRabbitMQ management http://localhost:15672 (guest/guest)";
    let printed = PrintedEndpoints::parse(output).unwrap();
    assert_eq!(printed.gateway, "http://localhost:8080");
    assert_eq!(printed.dashboard, "http://localhost:8081");
    assert!(PrintedEndpoints::parse("no urls here").is_err());
}

#[test]
fn the_readme_names_the_walkthroughs_account_order_and_sku() {
    let markdown = fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let block = readme::code_block_under(&markdown, README_HEADING).unwrap();
    let data = WalkthroughData::from_steps(&readme::steps(&block).unwrap()).unwrap();
    assert_eq!(data.email, "customer@example.com");
    assert_eq!(data.order_id, "order123");
    assert_eq!(data.sku, "mag-safe-phone-case");
}
