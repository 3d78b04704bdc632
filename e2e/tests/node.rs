//! What only a cluster that runs the pipeline in real containers can show, beyond the suite in
//! `e2e.rs` (same `E2E_KUBECONFIG`, `E2E_NAMESPACE` and `E2E_PIPELINE`):
//!
//! - the seed README's walkthrough against the gateway's and dashboard's NodePorts, when
//!   `E2E_GATEWAY_URL` and `E2E_DASHBOARD_URL` name them (`cargo xtask e2e` sets them to the
//!   node's loopback NodePorts; on kind they are kind-config.yaml's `localhost:8080`/`8081`);
//! - a three-node RabbitMQ is one cluster, with a member of every workload queue on each node,
//!   as the status and each node report it;
//! - faults while orders flow, one test each: every processor pod killed; one RabbitMQ node
//!   deleted; the Redis pod deleted; the Cassandra pod deleted (logins then fail with a 503 and
//!   work again after, for the same account). Invariant of each: every order that got a 202 is
//!   processed exactly once and notified — it ends `notified`, the SKU's stock went down by
//!   exactly the number of accepted orders (a lost order stays `accepted`, an order applied
//!   twice takes its quantity twice), nothing waits in a work queue and nothing was dead-lettered.
//!   Orders refused while a dependency is away get a 503 and are retried with the same body
//!   afterwards, as the 503 asks: each is then placed once (202, or 409 if the refused attempt
//!   had stored it after all).
//!
//! Both are ignored by default, like `e2e.rs`: `cargo xtask e2e` runs them with `--ignored`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pipeline_contract::order::Status;
use pipeline_contract::topology;
use pipeline_e2e::cluster::{Cluster, ClusterConfig, SKIP_MESSAGE};
use pipeline_e2e::flow::{self, Endpoints, Inventory, Walkthrough};
use reqwest::StatusCode;
use serde_json::Value;
use testenv::gateway::GatewayClient;
use tokio::sync::Mutex;

/// Orders the fault test places, with this many in flight at once, each sender pausing this long
/// between orders: about 80 orders/s for about 4 s, so orders keep arriving while no processor
/// runs (its replacement takes seconds to start), not only before the kill.
const ORDERS: usize = 300;
const CONCURRENCY: usize = 8;
const PACE: Duration = Duration::from_millis(100);
/// The processor pods are killed once this many orders were accepted, so orders are queued,
/// in flight and still to come when it happens.
const KILL_AFTER_ACCEPTED: usize = ORDERS / 3;
/// How long the work queues may take to empty once every order is notified.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// How long the replacement pod and the backlog may take on a small node.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(240);
/// The campaign account's password.
const PASSWORD: &str = "securepassword123";

fn url_from_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster with NodePorts: set E2E_KUBECONFIG, E2E_GATEWAY_URL and E2E_DASHBOARD_URL (cargo xtask e2e does)"]
async fn the_seed_walkthrough_works_through_the_node_ports() -> Result<()> {
    let Some(config) = ClusterConfig::from_env() else {
        println!("{SKIP_MESSAGE}");
        return Ok(());
    };
    let (Some(gateway), Some(dashboard)) = (
        url_from_env("E2E_GATEWAY_URL"),
        url_from_env("E2E_DASHBOARD_URL"),
    ) else {
        bail!("E2E_GATEWAY_URL and E2E_DASHBOARD_URL must name the NodePorts for this test");
    };
    let cluster = Cluster::connect(&config).await?;
    cluster.wait_ready(Duration::from_secs(120)).await?;
    let inventory = cluster.redis_inventory().await?;
    let walkthrough = Walkthrough::unique();
    println!("node-port walkthrough: gateway {gateway}, dashboard {dashboard}");
    flow::run(
        &Endpoints::new(gateway, dashboard),
        &inventory,
        &walkthrough,
        flow::DEFAULT_DEADLINE,
    )
    .await
    .context("the seed walkthrough through the NodePorts")
}

/// The operator's status and every node itself agree: one cluster of all the nodes, and each
/// workload queue with a member on every node. And the dead-letter command works in the
/// consumers' pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set E2E_KUBECONFIG (cargo xtask e2e does)"]
async fn the_rabbitmq_nodes_are_one_cluster_with_a_member_of_each_queue_on_every_node() -> Result<()>
{
    let Some(config) = ClusterConfig::from_env() else {
        println!("{SKIP_MESSAGE}");
        return Ok(());
    };
    let cluster = Cluster::connect(&config).await?;
    let pipeline = cluster.wait_ready(RECOVERY_DEADLINE).await?;
    let replicas = pipeline
        .spec
        .rabbitmq
        .managed
        .as_ref()
        .context("spec.rabbitmq is external: no managed cluster to check")?
        .replicas;
    ensure!(
        replicas > 1,
        "spec.rabbitmq.managed.replicas is {replicas}: no cluster to check"
    );
    let reported = pipeline
        .status
        .and_then(|status| status.rabbitmq)
        .context("Ready, but no status.rabbitmq")?;
    println!(
        "status.rabbitmq: running {:?}, queue members {:?}",
        reported.running_nodes, reported.queue_members
    );
    let wanted = usize::try_from(replicas)?;
    ensure!(reported.running_nodes.len() == wanted, "{reported:?}");
    for queue in [topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE] {
        for queue in [queue.to_owned(), topology::dead_letter_queue(queue)] {
            ensure!(
                reported.queue_members.get(&queue) == Some(&replicas),
                "{queue}: {reported:?}"
            );
        }
    }
    // Each node's own view: the same running nodes.
    for index in 0..replicas {
        let pod = format!("{}-{index}", cluster.child("rabbitmq"));
        let status: Value = serde_json::from_str(
            &cluster
                .exec_in(
                    &pod,
                    "rabbitmq",
                    &["rabbitmqctl", "-q", "cluster_status", "--formatter", "json"],
                )
                .await?,
        )?;
        let mut running: Vec<String> = status["running_nodes"]
            .as_array()
            .with_context(|| format!("no running_nodes from {pod}: {status}"))?
            .iter()
            .filter_map(|node| node.as_str().map(str::to_owned))
            .collect();
        running.sort();
        println!("{pod}: running nodes {running:?}");
        ensure!(
            running == reported.running_nodes,
            "{pod} sees {running:?}, the status {:?}",
            reported.running_nodes
        );
    }
    // And the queue's own member list, as a node lists it.
    let pod = format!("{}-0", cluster.child("rabbitmq"));
    let queues: Value = serde_json::from_str(
        &cluster
            .exec_in(
                &pod,
                "rabbitmq",
                &[
                    "rabbitmqctl",
                    "-q",
                    "list_queues",
                    "name",
                    "members",
                    "--formatter",
                    "json",
                ],
            )
            .await?,
    )?;
    let orders = queues
        .as_array()
        .into_iter()
        .flatten()
        .find(|queue| queue["name"] == topology::ORDERS_QUEUE)
        .with_context(|| format!("no {} in {queues}", topology::ORDERS_QUEUE))?;
    let members = orders["members"].as_array().map_or(0, Vec::len);
    println!("{}: members {}", topology::ORDERS_QUEUE, orders["members"]);
    ensure!(members == wanted, "{orders}");

    // The dead-letter command, as an operator runs it in a pod: the binary with the pod's own
    // variables (and so its RabbitMQ credentials).
    for (component, queue) in [
        ("processor", topology::ORDERS_QUEUE),
        ("notifier", topology::NOTIFIER_QUEUE),
    ] {
        let pod = cluster.ready_pod(component).await?;
        let listed = cluster
            .exec_in(
                &pod,
                component,
                &[
                    &format!("/usr/local/bin/{component}"),
                    "dead-letters",
                    "list",
                ],
            )
            .await?;
        println!("{pod}: {component} dead-letters list: {}", listed.trim());
        let summary = format!("dead letter(s) in {}", topology::dead_letter_queue(queue));
        ensure!(listed.trim_end().ends_with(&summary), "{listed}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set E2E_KUBECONFIG (cargo xtask e2e does)"]
async fn every_accepted_order_is_processed_exactly_once_when_the_processor_is_killed() -> Result<()>
{
    campaign("processor killed", |cluster, _| {
        Box::pin(async move {
            let started = Instant::now();
            let killed = cluster.kill_pods("processor", RECOVERY_DEADLINE).await?;
            Ok(format!(
                "processor pods {killed:?} killed, a replacement Ready {:.1}s later",
                started.elapsed().as_secs_f64()
            ))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set E2E_KUBECONFIG (cargo xtask e2e does)"]
async fn every_accepted_order_is_processed_exactly_once_when_a_rabbitmq_node_is_deleted()
-> Result<()> {
    // Node 0: the first of every workload's broker list, so it holds their connections and the
    // queues' first leaders.
    campaign("RabbitMQ node deleted", |cluster, _| {
        Box::pin(delete_first_pod(cluster, "rabbitmq"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set E2E_KUBECONFIG (cargo xtask e2e does)"]
async fn every_accepted_order_is_processed_exactly_once_when_the_redis_pod_is_deleted() -> Result<()>
{
    campaign("Redis deleted", |cluster, _| {
        Box::pin(delete_first_pod(cluster, "redis"))
    })
    .await
}

/// Deletes pod 0 of a dependency's StatefulSet and waits until it is back and Ready.
async fn delete_first_pod(cluster: Cluster, component: &'static str) -> Result<String> {
    let pod = format!("{}-0", cluster.child(component));
    let back = cluster.delete_pod(&pod, RECOVERY_DEADLINE).await?;
    Ok(format!(
        "pod {pod} deleted, Ready again {:.1}s later",
        back.as_secs_f64()
    ))
}

/// Also: while Cassandra is away, logins fail with a 503 that says so (orders go on: a token is
/// checked without Cassandra), and once it is back the same account logs in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set E2E_KUBECONFIG (cargo xtask e2e does)"]
async fn logins_fail_clearly_while_cassandra_is_deleted_and_orders_go_on() -> Result<()> {
    campaign("Cassandra deleted", |cluster, login| {
        Box::pin(async move {
            let pod = format!("{}-0", cluster.child("cassandra"));
            let deleted = cluster.delete_pod_now(&pod).await?;
            let started = Instant::now();
            // The first refused login: a 503 naming the cause, within the driver's timeouts.
            let refused = loop {
                let (status, body) = login.attempt().await?;
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    break body;
                }
                ensure!(
                    status == StatusCode::OK,
                    "login while Cassandra is away answered {status}: {body}"
                );
                ensure!(
                    started.elapsed() < RECOVERY_DEADLINE,
                    "logins kept working {RECOVERY_DEADLINE:?} after pod/{pod} was deleted"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            ensure!(
                refused.contains("account store (Cassandra) is unavailable"),
                "the 503 does not say what is wrong: {refused}"
            );
            let refused_after = started.elapsed();
            let back = cluster.wait_replaced(&deleted, RECOVERY_DEADLINE).await?;
            // The same account, registered before, logs in again: nothing was lost.
            let again = Instant::now();
            loop {
                let (status, body) = login.attempt().await?;
                if status == StatusCode::OK {
                    break;
                }
                ensure!(
                    again.elapsed() < RECOVERY_DEADLINE,
                    "the account could not log in {RECOVERY_DEADLINE:?} after Cassandra was back: {status} {body}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(format!(
                "pod {pod} deleted; a login refused with 503 after {:.1}s ({refused}); the pod Ready again {:.1}s after the delete; the account logs in again {:.1}s after that",
                refused_after.as_secs_f64(),
                back.as_secs_f64(),
                again.elapsed().as_secs_f64()
            ))
        })
    })
    .await
}

/// A login the fault may try, as the campaign's account.
#[derive(Clone)]
struct Login {
    client: GatewayClient,
    email: String,
}

impl Login {
    /// One `POST /login`: its status and body.
    async fn attempt(&self) -> Result<(StatusCode, String)> {
        let response = self
            .client
            .login(&self.email, PASSWORD)
            .await
            .context("POST /login")?;
        let status = response.status();
        Ok((status, response.text().await.unwrap_or_default()))
    }
}

/// Places [`ORDERS`] orders, runs `fault` once [`KILL_AFTER_ACCEPTED`] were accepted, and checks
/// the invariant: every order that got a 202 ends `notified`, the stock fell by exactly one unit
/// per accepted order (a lost order stays `accepted`, an order applied twice takes its quantity
/// twice), nothing waits in a work queue (each has its consumer) and no order was
/// dead-lettered. Refused orders (a 503 while a dependency is away) are the client's to retry and
/// count for nothing.
async fn campaign(
    label: &str,
    fault: impl FnOnce(Cluster, Login) -> Pin<Box<dyn Future<Output = Result<String>> + Send>>
    + Send
    + 'static,
) -> Result<()> {
    let Some(config) = ClusterConfig::from_env() else {
        println!("{SKIP_MESSAGE}");
        return Ok(());
    };
    let cluster = Cluster::connect(&config).await?;
    cluster.wait_ready(RECOVERY_DEADLINE).await?;
    let gateway_forward = cluster.forward_service("gateway").await?;
    let dashboard_forward = cluster.forward_service("dashboard").await?;
    let (gateway, dashboard) = (gateway_forward.url(), dashboard_forward.url());
    let http = flow::http_client();

    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let sku = format!("fault-{run}");
    let stock: i64 = 1_000_000;
    cluster.redis_inventory().await?.set(&sku, stock).await?;
    let client = GatewayClient::with_http(gateway.clone(), http.clone());
    let (email, token) = client
        .account(&format!("fault-{run}"), PASSWORD)
        .await
        .map_err(anyhow::Error::msg)?;
    let login = Login {
        client: client.clone(),
        email,
    };
    let dead_before = dead_letters(&cluster).await?;

    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<(String, u16, String)>::new()));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    let breaker = {
        let cluster = cluster.clone();
        let accepted_count = accepted_count.clone();
        tokio::spawn(async move {
            while accepted_count.load(Ordering::SeqCst) < KILL_AFTER_ACCEPTED {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let at = accepted_count.load(Ordering::SeqCst);
            let what = fault(cluster, login).await?;
            Ok::<_, anyhow::Error>((at, what))
        })
    };
    let mut senders = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, token, sku, run) = (client.clone(), token.clone(), sku.clone(), run.clone());
        let (next, accepted, refused, accepted_count) = (
            next.clone(),
            accepted.clone(),
            refused.clone(),
            accepted_count.clone(),
        );
        senders.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= ORDERS {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep(PACE).await;
                let id = format!("fault-{run}-{index}");
                let response = client
                    .order(&token, &id, &sku, 1)
                    .await
                    .with_context(|| format!("POST /orders {id}"))?;
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status == StatusCode::ACCEPTED {
                    ensure!(
                        body.trim() == format!("Order received: {id}"),
                        "202 for {id} with body {body:?}"
                    );
                    accepted.lock().await.push(id);
                    accepted_count.fetch_add(1, Ordering::SeqCst);
                } else {
                    refused.lock().await.push((id, status.as_u16(), body));
                }
            }
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let sent_in = started.elapsed();
    let (broken_at, what) = breaker.await??;
    let accepted = accepted.lock().await.clone();
    let refused = refused.lock().await.clone();
    println!(
        "fault [{label}]: {ORDERS} orders sent in {:.1}s: {} accepted, {} refused {:?}; after {broken_at} accepted: {what}",
        sent_in.as_secs_f64(),
        accepted.len(),
        refused.len(),
        refused.iter().take(3).collect::<Vec<_>>(),
    );
    ensure!(
        !accepted.is_empty(),
        "no order was accepted; refusals: {refused:?}"
    );
    for (id, status, body) in &refused {
        ensure!(
            *status == 503,
            "order {id} was refused with {status} ({body}); only 503 (retry) is expected"
        );
    }
    // A 503 asks for a retry with the same body, which places the order at most once: a 202,
    // or a 409 when the refused attempt had stored it after all (its confirm was lost).
    let mut accepted = accepted;
    let (mut placed_on_retry, mut stored_before) = (0, 0);
    for (id, _, _) in &refused {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        loop {
            let status = client
                .order(&token, id, &sku, 1)
                .await
                .with_context(|| format!("retry POST /orders {id}"))?
                .status();
            match status {
                StatusCode::ACCEPTED => placed_on_retry += 1,
                StatusCode::CONFLICT => stored_before += 1,
                StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                other => bail!("retry of {id} answered {other}"),
            }
            accepted.push(id.clone());
            break;
        }
    }
    println!(
        "fault [{label}]: {} refused orders retried with the same body: {placed_on_retry} placed now, {stored_before} had been stored (409)",
        refused.len()
    );

    // Every accepted order is notified, and none was rejected (the stock is ample).
    let mut pending: Vec<String> = accepted.clone();
    let mut notified = 0;
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let status = order_status(&client, &token, &id).await?;
            match status.parse::<Status>() {
                Ok(Status::Notified) => notified += 1,
                Ok(Status::Accepted | Status::Processed) => still.push((id, status)),
                _ => bail!("order {id} ended {status:?}, expected notified"),
            }
        }
        if !still.is_empty() && Instant::now() >= deadline {
            bail!(
                "{} accepted orders were not notified {RECOVERY_DEADLINE:?} after the fault, e.g. {:?}; notified so far {notified}",
                still.len(),
                still.iter().take(5).collect::<Vec<_>>()
            );
        }
        pending = still.into_iter().map(|(id, _)| id).collect();
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Exactly once: the stock fell by exactly one unit per accepted order.
    let metrics: Value = http
        .get(format!("{dashboard}/metrics"))
        .query(&[("sku", sku.as_str())])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let level = metrics["inventory_level"]
        .as_i64()
        .with_context(|| format!("no inventory_level in {metrics}"))?;
    let applied = stock - level;
    // Nothing stranded in a queue nobody reads: each work queue has its consumer and nothing
    // waiting (a message a consumer holds is on its way, not stranded), within a bounded time
    // for a duplicate outcome still in its backoff; nothing dead-lettered.
    let drain_started = Instant::now();
    let stats = loop {
        let stats = queue_stats(&cluster).await?;
        let drained = [topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE]
            .iter()
            .all(|queue| {
                stats
                    .get(*queue)
                    .is_some_and(|s| s.ready == 0 && s.consumers > 0)
            });
        if drained || drain_started.elapsed() >= DRAIN_DEADLINE {
            break stats;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let dead_after = dead_letters(&cluster).await?;
    println!(
        "fault [{label}]: {notified} notified; stock {stock} -> {level}: {applied} units taken for {} accepted orders; queues {stats:?} {:.1}s after the last notification; dead letters {dead_before} -> {dead_after}",
        accepted.len(),
        drain_started.elapsed().as_secs_f64()
    );
    ensure!(
        applied == i64::try_from(accepted.len())?,
        "{applied} units were taken for {} accepted orders of quantity 1: an order was lost or applied twice",
        accepted.len()
    );
    for queue in [topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE] {
        let queue_stats = stats.get(queue);
        ensure!(
            queue_stats.is_some_and(|s| s.ready == 0 && s.consumers > 0),
            "{queue} has messages nobody takes after every order was notified: {stats:?}"
        );
    }
    ensure!(
        dead_after == dead_before,
        "{} messages were dead-lettered during the fault",
        dead_after - dead_before
    );
    Ok(())
}

/// One queue as a RabbitMQ node lists it.
#[derive(Debug)]
struct QueueStats {
    ready: u64,
    unacknowledged: u64,
    consumers: u64,
}

/// Every queue's waiting and unacknowledged messages and its consumers.
async fn queue_stats(cluster: &Cluster) -> Result<BTreeMap<String, QueueStats>> {
    let pod = format!("{}-0", cluster.child("rabbitmq"));
    let listed = cluster
        .exec_in(
            &pod,
            "rabbitmq",
            &[
                "rabbitmqctl",
                "-q",
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
                "--no-table-headers",
            ],
        )
        .await?;
    listed
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, ready, unacknowledged, consumers] = fields[..] else {
                bail!("unexpected list_queues line {line:?}");
            };
            Ok((
                name.to_owned(),
                QueueStats {
                    ready: ready.parse()?,
                    unacknowledged: unacknowledged.parse()?,
                    consumers: consumers.parse()?,
                },
            ))
        })
        .collect()
}

/// Messages in the workload queues' dead-letter queues (nobody consumes them).
async fn dead_letters(cluster: &Cluster) -> Result<u64> {
    let stats = queue_stats(cluster).await?;
    Ok([topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE]
        .iter()
        .filter_map(|queue| stats.get(&topology::dead_letter_queue(queue)))
        .map(|s| s.ready + s.unacknowledged)
        .sum())
}

async fn order_status(client: &GatewayClient, token: &str, id: &str) -> Result<String> {
    let body: Value = client
        .order_status(token, id)
        .await?
        .error_for_status()
        .with_context(|| format!("GET /orders/{id}"))?
        .json()
        .await?;
    body["status"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no status in {body}"))
}
