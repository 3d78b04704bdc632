//! The endpoints of the project's real dependency environment, for integration tests.
//!
//! `cargo xtask env up` starts Redis, a three-node RabbitMQ cluster, Cassandra and a Kubernetes
//! control plane on loopback and writes their endpoints to one env file
//! (`~/.cache/order-pipeline/run/env`, or `$ORDER_PIPELINE_HOME/run/env`). Tests read it through
//! [`Env::load`]. A test whose server is not running fails with the command that starts it: it
//! never passes silently.

pub mod access;
pub mod gateway;
pub mod isolation;
pub mod proxy;

pub use isolation::Isolation;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The parsed env file.
#[derive(Debug, Clone)]
pub struct Env {
    path: PathBuf,
    values: BTreeMap<String, String>,
}

impl Env {
    /// Where `cargo xtask env up` writes the env file.
    pub fn default_path() -> PathBuf {
        if let Some(home) = std::env::var_os("ORDER_PIPELINE_HOME") {
            return PathBuf::from(home).join("run/env");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/order-pipeline/run/env")
    }

    /// Loads the env file, panicking with the command to run when it is missing.
    pub fn load() -> Self {
        let path = Self::default_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!(
                "the test environment is not running ({}: {error}); start it with `cargo xtask env up`",
                path.display()
            )
        });
        Self {
            values: parse(&text),
            path,
        }
    }

    /// A value the environment must provide; panics naming the component to start otherwise.
    pub fn require(&self, key: &str) -> String {
        self.values.get(key).cloned().unwrap_or_else(|| {
            panic!(
                "{key} is not in {}: the component that provides it is not running; start it \
                 with `cargo xtask env up {}`",
                self.path.display(),
                component_for(key)
            )
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

fn component_for(key: &str) -> &'static str {
    let lower = key.to_ascii_lowercase();
    ["redis", "rabbitmq", "cassandra", "kube"]
        .into_iter()
        .find(|name| lower.contains(name))
        .unwrap_or("")
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Waits until `done` holds, checking every 50 ms; panics naming `what` after `within`.
pub async fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A name no other test (or earlier run) uses: for key prefixes, queues, keyspaces, namespaces.
/// Lowercase alphanumerics and `-`/`_` only, so it is valid in all of them once `-` is mapped.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_values_and_skips_comments() {
        let values = parse("# c\nA=1\n\nB = x=y \n# redis\n");
        assert_eq!(values.get("A").map(String::as_str), Some("1"));
        assert_eq!(values.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(values.len(), 2);
    }

    #[test]
    fn unique_names_differ_and_keep_prefix() {
        let a = unique("t");
        let b = unique("t");
        assert_ne!(a, b);
        assert!(a.starts_with("t-"));
    }

    #[test]
    fn missing_key_names_component() {
        assert_eq!(component_for("OP_RABBITMQ_URLS"), "rabbitmq");
        assert_eq!(component_for("KUBECONFIG"), "kube");
    }
}

/// A RabbitMQ virtual host of its own for one test: its exchanges and queues (the pipeline's
/// fixed names, `orders.direct` and so on) are invisible to every other test.
#[derive(Debug)]
pub struct Vhost {
    pub name: String,
    /// The cluster's AMQP URLs, pointing at this vhost.
    pub urls: Vec<String>,
    management: String,
    user: String,
    password: String,
    /// The workload users created on this vhost, deleted with it.
    workload_users: std::sync::Mutex<Vec<String>>,
}

impl Vhost {
    /// Creates a fresh vhost on the cluster and grants the environment's user full rights on it.
    pub async fn create(env: &Env, prefix: &str) -> Self {
        let name = unique(prefix);
        let management = env
            .require("OP_RABBITMQ_MANAGEMENT_URLS")
            .split(',')
            .next()
            .unwrap_or_default()
            .to_owned();
        let user = env.require("OP_RABBITMQ_USER");
        let password = env.require("OP_RABBITMQ_PASSWORD");
        let client = reqwest::Client::new();
        client
            .put(format!("{management}/api/vhosts/{name}"))
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("failed to create vhost {name}: {error}"));
        client
            .put(format!("{management}/api/permissions/{name}/{user}"))
            .basic_auth(&user, Some(&password))
            .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("failed to grant permissions on vhost {name}: {error}"));
        let urls = env
            .require("OP_RABBITMQ_URLS")
            .split(',')
            .map(|url| {
                let base = url.trim_end_matches("/%2f").trim_end_matches('/');
                format!("{base}/{name}")
            })
            .collect();
        Self {
            name,
            urls,
            management,
            user,
            password,
            workload_users: std::sync::Mutex::default(),
        }
    }

    /// Messages ready in a queue of this vhost, as the management API reports them.
    pub async fn queue_messages(&self, queue: &str) -> Option<u64> {
        let details: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "{}/api/queues/{}/{queue}",
                self.management, self.name
            ))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()?;
        details["messages"].as_u64()
    }

    /// Deletes the vhost and everything in it, and the workload users made for it.
    pub async fn delete(self) {
        let client = reqwest::Client::new();
        let _ = client
            .delete(format!("{}/api/vhosts/{}", self.management, self.name))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await;
        let users = std::mem::take(&mut *self.workload_users.lock().unwrap());
        for user in users {
            let _ = client
                .delete(format!("{}/api/users/{user}", self.management))
                .basic_auth(&self.user, Some(&self.password))
                .send()
                .await;
        }
    }
}

/// Deletes every Redis key under `prefix` (a test's own key prefix), so test runs do not pile up
/// data in the shared Redis.
pub async fn delete_redis_prefix(redis_url: &str, prefix: &str) {
    assert!(!prefix.is_empty(), "refusing to delete every key");
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut connection)
                .await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// Runs the environment's `node-ctl` (written by `cargo xtask env up`) on RabbitMQ node `index`
/// (0-based, as in `OP_RABBITMQ_URLS`): `stop`, `kill`, `start`, `status`, `alarm-on` or
/// `alarm-off`. Blocks until it is done; panics unless it succeeds. Tests that use it run alone
/// in their test binary: the cluster is shared.
pub fn rabbitmq_node_ctl(index: usize, action: &str) {
    let ctl = Env::load().require("OP_RABBITMQ_NODE_CTL");
    let status = std::process::Command::new(&ctl)
        .arg((index + 1).to_string())
        .arg(action)
        .status()
        .unwrap_or_else(|error| panic!("failed to run {ctl}: {error}"));
    assert!(status.success(), "{ctl} {} {action} failed", index + 1);
}

/// Undoes a node fault when dropped, so a test that fails mid-fault still leaves the shared
/// cluster whole: runs `node-ctl <index> <undo>` (`start`, `alarm-off`).
#[derive(Debug)]
pub struct UndoNodeFault {
    index: usize,
    undo: &'static str,
}

impl UndoNodeFault {
    /// Runs `fault` on node `index` now and `undo` when dropped.
    pub fn new(index: usize, fault: &str, undo: &'static str) -> Self {
        rabbitmq_node_ctl(index, fault);
        Self { index, undo }
    }
}

impl Drop for UndoNodeFault {
    fn drop(&mut self) {
        rabbitmq_node_ctl(self.index, self.undo);
    }
}
