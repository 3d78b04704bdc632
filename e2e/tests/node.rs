//! What only a cluster that runs the pipeline in real containers can show, beyond the suite in
//! `e2e.rs` (same `E2E_KUBECONFIG`, `E2E_NAMESPACE` and `E2E_PIPELINE`):
//!
//! - the seed README's walkthrough against the gateway's and dashboard's NodePorts, when
//!   `E2E_GATEWAY_URL` and `E2E_DASHBOARD_URL` name them (`cargo xtask e2e` sets them to the
//!   node's loopback NodePorts; on kind they are kind-config.yaml's `localhost:8080`/`8081`);
//! - a fault: every processor pod killed while orders flow. Invariant: every order that got a 202
//!   is processed exactly once — it ends `processed` or `notified`, and the SKU's stock went down
//!   by exactly the number of accepted orders (a lost order stays `accepted`, an order applied
//!   twice takes its quantity twice).
//!
//! Both are ignored by default, like `e2e.rs`: `cargo xtask e2e` runs them with `--ignored`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pipeline_e2e::cluster::{Cluster, ClusterConfig, SKIP_MESSAGE};
use pipeline_e2e::flow::{self, Endpoints, Inventory, Walkthrough};
use reqwest::StatusCode;
use serde_json::{Value, json};
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
/// How long the replacement pod and the backlog may take on a small node.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(240);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set E2E_KUBECONFIG (cargo xtask e2e does)"]
async fn every_accepted_order_is_processed_exactly_once_when_the_processor_is_killed() -> Result<()>
{
    let Some(config) = ClusterConfig::from_env() else {
        println!("{SKIP_MESSAGE}");
        return Ok(());
    };
    let cluster = Cluster::connect(&config).await?;
    cluster.wait_ready(Duration::from_secs(120)).await?;
    let gateway_forward = cluster.forward_service("gateway").await?;
    let dashboard_forward = cluster.forward_service("dashboard").await?;
    let (gateway, dashboard) = (gateway_forward.url(), dashboard_forward.url());
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;

    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let sku = format!("fault-{run}");
    let stock: i64 = 1_000_000;
    cluster.redis_inventory().await?.set(&sku, stock).await?;
    let token = account(&http, &gateway, &run).await?;

    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<(String, u16, String)>::new()));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    let killer = {
        let cluster = cluster.clone();
        let accepted_count = accepted_count.clone();
        tokio::spawn(async move {
            while accepted_count.load(Ordering::SeqCst) < KILL_AFTER_ACCEPTED {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let at = accepted_count.load(Ordering::SeqCst);
            let kill_started = Instant::now();
            let killed = cluster.kill_pods("processor", RECOVERY_DEADLINE).await?;
            Ok::<_, anyhow::Error>((at, killed, kill_started.elapsed()))
        })
    };
    let mut senders = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, gateway, token, sku, run) = (
            http.clone(),
            gateway.clone(),
            token.clone(),
            sku.clone(),
            run.clone(),
        );
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
                let response = http
                    .post(format!("{gateway}/orders"))
                    .bearer_auth(&token)
                    .json(&json!({"id": id, "sku": sku, "qty": 1}))
                    .send()
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
    let (killed_at, killed, replaced_in) = killer.await??;
    let accepted = accepted.lock().await.clone();
    let refused = refused.lock().await.clone();
    println!(
        "fault: {ORDERS} orders sent in {:.1}s: {} accepted, {} refused {:?}; processor pods {killed:?} killed after {killed_at} accepted, a replacement Ready {:.1}s after the kill",
        sent_in.as_secs_f64(),
        accepted.len(),
        refused.len(),
        refused.iter().take(3).collect::<Vec<_>>(),
        replaced_in.as_secs_f64()
    );
    ensure!(
        !accepted.is_empty(),
        "no order was accepted; refusals: {refused:?}"
    );

    // Every accepted order reaches its outcome, and none was rejected (the stock is ample).
    let mut pending: Vec<String> = accepted.clone();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let status = order_status(&http, &gateway, &token, &id).await?;
            match status.as_str() {
                "processed" | "notified" => *outcomes.entry(status).or_default() += 1,
                "accepted" => still.push(id),
                other => bail!("order {id} ended {other:?}, expected processed or notified"),
            }
        }
        pending = still;
        if !pending.is_empty() {
            if Instant::now() >= deadline {
                bail!(
                    "{} accepted orders were still `accepted` {RECOVERY_DEADLINE:?} after the kill, e.g. {:?}; outcomes so far {outcomes:?}",
                    pending.len(),
                    pending.iter().take(5).collect::<Vec<_>>()
                );
            }
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
    println!(
        "fault: outcomes {outcomes:?}; stock {stock} -> {level}: {applied} units taken for {} accepted orders",
        accepted.len()
    );
    ensure!(
        applied == i64::try_from(accepted.len())?,
        "{applied} units were taken for {} accepted orders of quantity 1: an order was lost or applied twice",
        accepted.len()
    );
    Ok(())
}

/// Registers a fresh account and logs in; returns the token.
async fn account(http: &reqwest::Client, gateway: &str, run: &str) -> Result<String> {
    let credentials =
        json!({"email": format!("fault-{run}@example.com"), "password": "securepassword123"});
    let registered = http
        .post(format!("{gateway}/register"))
        .json(&credentials)
        .send()
        .await?;
    ensure!(
        registered.status() == StatusCode::CREATED,
        "POST /register answered {}",
        registered.status()
    );
    let login: Value = http
        .post(format!("{gateway}/login"))
        .json(&credentials)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    login["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no token in {login}"))
}

async fn order_status(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    id: &str,
) -> Result<String> {
    let body: Value = http
        .get(format!("{gateway}/orders/{id}"))
        .bearer_auth(token)
        .send()
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
