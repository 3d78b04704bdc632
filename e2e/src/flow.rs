//! The seed README's walkthrough, as a client sees it, with each documented answer checked
//! exactly: status code and body.
//!
//! The flow knows nothing about how the pipeline is reached: it takes the base URLs of the
//! gateway and the dashboard and an [`Inventory`] that sets a SKU's stock (the seed's
//! `redis-cli SET inventory:<sku> 100`). On this machine those are `cargo xtask run`'s ports and
//! the environment's Redis; on a cluster, port-forwards and `redis-cli` exec'd in the Redis pod.
//!
//! A cluster keeps its accounts and Redis data between runs, so every run registers its own
//! account and uses its own order id ([`Walkthrough::unique`]); the seed's fixed
//! `customer@example.com`/`order123` would be refused as existing on the second run. The flow
//! ends by deleting its account (`DELETE /delete-user`, also a documented answer), so reruns
//! leave no accounts behind; the order's Redis records expire on their own.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pipeline_contract::order::Status;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testenv::gateway::GatewayClient;

/// Sets a SKU's stock, as the seed's `redis-cli SET inventory:<sku> <level>` does.
pub trait Inventory {
    fn set(&self, sku: &str, level: i64) -> impl Future<Output = Result<()>> + Send;
}

/// Where the pipeline's two HTTP services answer, as base URLs without a trailing `/`.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub gateway: String,
    pub dashboard: String,
}

impl Endpoints {
    pub fn new(gateway: impl Into<String>, dashboard: impl Into<String>) -> Self {
        let trim = |url: String| url.trim_end_matches('/').to_owned();
        Self {
            gateway: trim(gateway.into()),
            dashboard: trim(dashboard.into()),
        }
    }
}

/// The walkthrough's data: the seed's SKU, stock and quantity with an account and order id of
/// the run's own.
#[derive(Debug, Clone)]
pub struct Walkthrough {
    pub email: String,
    pub password: String,
    pub order_id: String,
    pub sku: String,
    /// The stock set first (the seed's 100).
    pub stock: i64,
    /// The order's quantity (the seed's 2).
    pub qty: i64,
}

impl Walkthrough {
    /// The seed's walkthrough (`mag-safe-phone-case`, stock 100, quantity 2) with a fresh
    /// `customer-<random>@example.com` account and `order-<random>` id, so the flow can run any
    /// number of times against the same pipeline.
    pub fn unique() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        Self {
            email: format!("customer-{id}@example.com"),
            password: "securepassword123".to_owned(),
            order_id: format!("order-{id}"),
            sku: "mag-safe-phone-case".to_owned(),
            stock: 100,
            qty: 2,
        }
    }
}

/// How long the asynchronous part (processor, notifier) may take before the flow fails.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// The HTTP client of every test that talks to the workloads: the test kit's, whose idle
/// connections expire before the workloads close them (a close that does not travel back
/// through a port-forward).
pub fn http_client() -> reqwest::Client {
    testenv::gateway::http_client()
}

/// Runs the walkthrough and checks every documented answer. Prints one line per checked step.
pub async fn run(
    endpoints: &Endpoints,
    inventory: &impl Inventory,
    walkthrough: &Walkthrough,
    deadline: Duration,
) -> Result<()> {
    let http = http_client();
    let client = GatewayClient::with_http(endpoints.gateway.clone(), http.clone());
    let dashboard = &endpoints.dashboard;
    let Walkthrough {
        email,
        password,
        order_id,
        sku,
        stock,
        qty,
    } = walkthrough;

    inventory
        .set(sku, *stock)
        .await
        .with_context(|| format!("failed to set the stock of {sku} to {stock}"))?;
    step(&format!("inventory:{sku} set to {stock}"));

    let response = client
        .register(email, password)
        .await
        .context("POST /register")?;
    expect_text(
        response,
        StatusCode::CREATED,
        "User registered successfully",
        "POST /register",
    )
    .await?;

    let response = client.login(email, password).await.context("POST /login")?;
    let login = expect_json(response, StatusCode::OK, "POST /login").await?;
    let token = token_of(&login)?;
    step("POST /login -> 200 {\"token\":\"eyJ...\"}");

    let place = || client.order(&token, order_id, sku, *qty);
    let response = place().await.context("POST /orders")?;
    expect_text(
        response,
        StatusCode::ACCEPTED,
        &format!("Order received: {order_id}"),
        "POST /orders",
    )
    .await?;
    let response = place().await.context("POST /orders (again)")?;
    expect_text(
        response,
        StatusCode::CONFLICT,
        "Duplicate order",
        "POST /orders (the same again)",
    )
    .await?;

    let status = eventually("the order to be notified", deadline, || {
        let (client, token) = (&client, &token);
        async move {
            let response = client
                .order_status(token, order_id)
                .await
                .context("GET /orders/{id}")?;
            let status = expect_json(response, StatusCode::OK, "GET /orders/{id}").await?;
            ensure!(
                status["id"] == json!(order_id),
                "GET /orders/{{id}} answered another order: {status}"
            );
            match status["status"].as_str().map(str::parse::<Status>) {
                Some(Ok(Status::Notified)) => Ok(Check::Done(status)),
                Some(Ok(Status::Rejected)) => bail!("the order was rejected: {status}"),
                Some(Ok(Status::Accepted | Status::Processed)) => {
                    Ok(Check::NotYet(status.to_string()))
                }
                _ => bail!("GET /orders/{{id}} answered an unknown status: {status}"),
            }
        }
    })
    .await?;
    ensure!(
        status["sku"] == json!(sku) && status["qty"] == json!(qty),
        "the notified order does not carry its sku and qty: {status}"
    );
    step(&format!(
        "GET /orders/{order_id} -> 200 {{\"id\":\"{order_id}\",\"status\":\"notified\",...}}"
    ));

    // The processor counts the order atomically with the stock change, before the notifier
    // sees it, so once the order is notified the dashboard shows both.
    let metrics = dashboard_metrics(&http, dashboard, "").await?;
    let count = processed_count(&metrics)?;
    ensure!(
        count >= 1 && metrics == json!({"processed_orders_count": count}),
        "GET /metrics should be {{\"processed_orders_count\":N}} with N >= 1, got {metrics}"
    );
    step(&format!("GET /metrics -> {metrics}"));

    let expected_level = stock - qty;
    let metrics = dashboard_metrics(&http, dashboard, &format!("?sku={sku}")).await?;
    let count = processed_count(&metrics)?;
    ensure!(
        metrics == json!({"processed_orders_count": count, "inventory_level": expected_level}),
        "GET /metrics?sku= should show inventory_level {expected_level}, got {metrics}"
    );
    step(&format!("GET /metrics?sku={sku} -> {metrics}"));

    let metrics = eventually("the dashboard to show the notification", deadline, || {
        let http = &http;
        async move {
            let metrics =
                dashboard_metrics(http, dashboard, &format!("?order_id={order_id}")).await?;
            let count = processed_count(&metrics)?;
            if metrics == json!({"processed_orders_count": count, "notification_status": "sent"}) {
                Ok(Check::Done(metrics))
            } else {
                Ok(Check::NotYet(metrics.to_string()))
            }
        }
    })
    .await?;
    step(&format!("GET /metrics?order_id={order_id} -> {metrics}"));

    let response = client
        .delete_user(&token)
        .await
        .context("DELETE /delete-user")?;
    expect_text(
        response,
        StatusCode::OK,
        "User deleted successfully",
        "DELETE /delete-user",
    )
    .await?;
    let response = client
        .order_status(&token, order_id)
        .await
        .context("GET /orders/{id} after the account was deleted")?;
    ensure!(
        response.status() == StatusCode::FORBIDDEN,
        "a token of a deleted account must be refused with 403, got {}",
        response.status()
    );
    step("GET /orders/{id} with the deleted account's token -> 403");
    Ok(())
}

fn step(what: &str) {
    println!("  ok  {what}");
}

/// The token of a login answer, which must be exactly `{"token":"<jwt>"}`.
fn token_of(login: &Value) -> Result<String> {
    let token = login
        .as_object()
        .filter(|object| object.len() == 1)
        .and_then(|object| object.get("token"))
        .and_then(Value::as_str)
        .with_context(|| format!("POST /login should answer {{\"token\":\"...\"}}, got {login}"))?;
    ensure!(
        token.starts_with("eyJ") && token.split('.').count() == 3,
        "the login token is not a JWT: {token}"
    );
    Ok(token.to_owned())
}

async fn dashboard_metrics(http: &reqwest::Client, dashboard: &str, query: &str) -> Result<Value> {
    let what = format!("GET /metrics{query}");
    let response = http
        .get(format!("{dashboard}/metrics{query}"))
        .send()
        .await
        .with_context(|| what.clone())?;
    expect_json(response, StatusCode::OK, &what).await
}

fn processed_count(metrics: &Value) -> Result<u64> {
    metrics["processed_orders_count"]
        .as_u64()
        .with_context(|| format!("the dashboard's answer has no processed_orders_count: {metrics}"))
}

/// Checks a plain-text answer exactly and prints it.
async fn expect_text(
    response: reqwest::Response,
    status: StatusCode,
    body: &str,
    what: &str,
) -> Result<()> {
    let actual_status = response.status();
    let actual = response
        .text()
        .await
        .with_context(|| format!("{what}: reading the body"))?;
    ensure!(
        actual_status == status && actual == body,
        "{what} should answer {} {body:?}, got {actual_status} {actual:?}",
        status.as_u16()
    );
    step(&format!("{what} -> {} {body}", status.as_u16()));
    Ok(())
}

/// Checks the status of a JSON answer and returns the document.
async fn expect_json(response: reqwest::Response, status: StatusCode, what: &str) -> Result<Value> {
    let actual_status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("{what}: reading the body"))?;
    ensure!(
        actual_status == status,
        "{what} should answer {}, got {actual_status} {body:?}",
        status.as_u16()
    );
    serde_json::from_str(&body).with_context(|| format!("{what} answered no JSON: {body:?}"))
}

/// One look at something that becomes true eventually.
#[derive(Debug)]
pub enum Check<T> {
    Done(T),
    /// Not yet; the text says what was seen, for the timeout's message.
    NotYet(String),
}

/// Polls `attempt` every 200 ms until it is done, fails, or `deadline` passes (the error then
/// says what was last seen). An error from `attempt` ends the wait at once.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let started = Instant::now();
    loop {
        match attempt().await? {
            Check::Done(value) => return Ok(value),
            Check::NotYet(seen) if started.elapsed() >= deadline => {
                bail!("waited {deadline:?} for {what}; last saw {seen}")
            }
            Check::NotYet(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_walkthroughs_differ_and_keep_the_seed_data() {
        let (a, b) = (Walkthrough::unique(), Walkthrough::unique());
        assert_ne!(a.email, b.email);
        assert_ne!(a.order_id, b.order_id);
        assert_eq!(a.sku, "mag-safe-phone-case");
        assert_eq!((a.stock, a.qty), (100, 2));
        assert!(a.email.ends_with("@example.com"));
    }

    #[test]
    fn a_login_answer_is_exactly_one_jwt() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        assert_eq!(token_of(&json!({"token": token})).unwrap(), token);
        assert!(token_of(&json!({"token": token, "extra": 1})).is_err());
        assert!(token_of(&json!({"token": "not-a-jwt"})).is_err());
        assert!(token_of(&json!("eyJ")).is_err());
    }

    #[test]
    fn endpoints_lose_a_trailing_slash() {
        let endpoints = Endpoints::new("http://127.0.0.1:8080/", "http://127.0.0.1:8081");
        assert_eq!(endpoints.gateway, "http://127.0.0.1:8080");
        assert_eq!(endpoints.dashboard, "http://127.0.0.1:8081");
    }

    #[tokio::test]
    async fn eventually_reports_what_it_last_saw() {
        let mut polls = 0;
        let done = eventually("three polls", Duration::from_secs(5), || {
            polls += 1;
            let polls = polls;
            async move {
                Ok(if polls == 3 {
                    Check::Done(polls)
                } else {
                    Check::NotYet(format!("poll {polls}"))
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(done, 3);
        let error = eventually::<(), _, _>("never", Duration::ZERO, || async {
            Ok(Check::NotYet("still pending".into()))
        })
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("last saw still pending"),
            "{error}"
        );
    }
}
