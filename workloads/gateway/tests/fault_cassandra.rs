//! Fault campaign: Cassandra away for 6 s while accounts register and log in and orders are
//! placed. The gateway reaches Cassandra through a fault proxy (the outage as it sees it:
//! connections reset, new ones refused), so the Cassandra other tests share keeps running.
//!
//! Invariants: every registration and login during the outage is answered 503 naming the
//! account store (never a 500, never a wrong-password 401); each client, retrying with the same
//! body, ends with its account created exactly once (201, or 409 when its earlier attempt was
//! applied with the answer lost) and able to log in with its password; orders, which need no
//! account lookup, are all accepted throughout.

mod support;

use std::time::Duration;

use futures::future::join_all;
use pipeline_contract::env;
use serde_json::json;
use support::{Gateway, PASSWORD};
use testenv::proxy::FaultProxy;

const ACCOUNTS: usize = 60;
const ORDERS: usize = 120;

#[derive(Debug, Default)]
struct Tally {
    /// Answers to every attempt, by status.
    statuses: std::collections::BTreeMap<u16, usize>,
    /// 503s whose detail does not name the account store.
    unclear: Vec<String>,
}

/// Posts `body` to `path` until the answer is not a 503 (at most 60 s); returns the last status.
async fn until_answered(
    gateway: &Gateway,
    path: &str,
    body: &serde_json::Value,
    tally: &mut Tally,
) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = gateway
            .client
            .http
            .post(gateway.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        *tally.statuses.entry(status).or_default() += 1;
        if status != 503 || tokio::time::Instant::now() > deadline {
            return status;
        }
        let detail = response.text().await.unwrap_or_default();
        if !detail.contains("account store (Cassandra) is unavailable") {
            tally.unclear.push(detail);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_away_during_registrations_and_logins() {
    let proxy = FaultProxy::start(&testenv::Env::load().require("OP_CASSANDRA_ADDR")).await;
    let gateway = Gateway::start_with(|vars| {
        vars.insert(env::CASSANDRA_ADDR.to_owned(), proxy.addr());
    })
    .await;
    let (_, token) = gateway.account().await;
    let started = tokio::time::Instant::now();

    let accounts = (0..ACCOUNTS).map(|index| {
        let gateway = &gateway;
        async move {
            tokio::time::sleep_until(started + Duration::from_millis(150 * index as u64)).await;
            let email = format!("{}@example.com", testenv::unique("outage"));
            let credentials = json!({"email": email, "password": PASSWORD});
            let mut tally = Tally::default();
            let registered = until_answered(gateway, "/register", &credentials, &mut tally).await;
            let logged_in = until_answered(gateway, "/login", &credentials, &mut tally).await;
            (registered, logged_in, tally)
        }
    });
    let orders = (0..ORDERS).map(|index| {
        let (gateway, token) = (&gateway, &token);
        async move {
            tokio::time::sleep_until(started + Duration::from_millis(75 * index as u64)).await;
            gateway
                .order(token, &format!("during-{index}"), "sku", 1)
                .await
                .status()
                .as_u16()
        }
    });
    let fault = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.cut();
        println!("Cassandra cut");
        tokio::time::sleep(Duration::from_secs(6)).await;
        proxy.restore();
        println!("Cassandra back");
    };
    let (accounts, orders, ()) = tokio::join!(join_all(accounts), join_all(orders), fault);

    let mut tally = Tally::default();
    for (_, _, account) in &accounts {
        for (status, count) in &account.statuses {
            *tally.statuses.entry(*status).or_default() += count;
        }
        tally.unclear.extend(account.unclear.iter().cloned());
    }
    let created = accounts.iter().filter(|a| a.0 == 201).count();
    let found = accounts.iter().filter(|a| a.0 == 409).count();
    let logged_in = accounts.iter().filter(|a| a.1 == 200).count();
    let accepted = orders.iter().filter(|&&status| status == 202).count();
    println!(
        "Cassandra outage: {ACCOUNTS} accounts, answers by status {:?}; registered 201 {created}, 409 after a retry {found}, logged in {logged_in}; orders {accepted}/{ORDERS} accepted",
        tally.statuses
    );
    assert!(
        tally.statuses.get(&503).copied().unwrap_or(0) > 0,
        "the outage was seen"
    );
    assert!(tally.unclear.is_empty(), "{:?}", tally.unclear);
    for status in [500, 401] {
        assert_eq!(tally.statuses.get(&status), None, "{status} answers");
    }
    assert_eq!(created + found, ACCOUNTS, "every account created once");
    assert_eq!(
        logged_in, ACCOUNTS,
        "every account logs in with its password"
    );
    assert_eq!(accepted, ORDERS, "orders need no account lookup");
    gateway.stop().await;
}
