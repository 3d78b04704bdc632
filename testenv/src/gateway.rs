//! The one client of the gateway's HTTP API that every test uses: the gateway's own tests, the
//! in-process pipeline's and the cluster's end-to-end flows. Each request is built here once
//! (its path, its JSON body, its token), so a change to the API changes one place; what the
//! answers must be stays with each test.

use std::time::Duration;

use serde_json::json;

/// How long an idle pooled connection is kept: well inside the workloads' own idle limit
/// (`HTTP_HEADER_READ_TIMEOUT_MS`, 10 s by default), after which the server closes it. Through a
/// `kubectl port-forward` that close does not reach this side, and the next request sent on the
/// stale connection fails with "connection closed before message completed".
pub const POOL_IDLE: Duration = Duration::from_secs(3);
/// The longest one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for the workloads: never through a proxy (every URL a test uses is loopback, a
/// local port or a port-forward), idle connections dropped after [`POOL_IDLE`].
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(POOL_IDLE)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client without TLS settings always builds")
}

/// The gateway at `base` (`http://127.0.0.1:8080`, no trailing slash).
#[derive(Debug, Clone)]
pub struct GatewayClient {
    pub http: reqwest::Client,
    pub base: String,
}

impl GatewayClient {
    pub fn new(base: impl Into<String>) -> Self {
        Self::with_http(base, http_client())
    }

    pub fn with_http(base: impl Into<String>, http: reqwest::Client) -> Self {
        Self {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /register`.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.url("/register"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
    }

    /// `POST /login`.
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.url("/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
    }

    /// Registers a fresh `<label>-<random>@example.com` with `password` and logs it in: its email
    /// and token, or what went wrong.
    pub async fn account(&self, label: &str, password: &str) -> Result<(String, String), String> {
        let email = format!("{}@example.com", crate::unique(label));
        let registered = self
            .register(&email, password)
            .await
            .map_err(|error| format!("POST /register: {error}"))?;
        if registered.status() != 201 {
            return Err(format!("POST /register answered {}", registered.status()));
        }
        let login = self
            .login(&email, password)
            .await
            .map_err(|error| format!("POST /login: {error}"))?;
        if login.status() != 200 {
            return Err(format!("POST /login answered {}", login.status()));
        }
        let body: serde_json::Value = login
            .json()
            .await
            .map_err(|error| format!("POST /login answered no JSON: {error}"))?;
        let token = body["token"]
            .as_str()
            .ok_or_else(|| format!("POST /login answered no token: {body}"))?;
        Ok((email, token.to_owned()))
    }

    /// `POST /orders` with the seed's body. `qty` is any integer, so tests can send bad ones.
    pub async fn order(
        &self,
        token: &str,
        id: &str,
        sku: &str,
        qty: i64,
    ) -> reqwest::Result<reqwest::Response> {
        self.order_request(token, id, sku, qty).send().await
    }

    /// [`Self::order`], not yet sent: for a timeout of its own.
    pub fn order_request(
        &self,
        token: &str,
        id: &str,
        sku: &str,
        qty: i64,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/orders"))
            .bearer_auth(token)
            .json(&json!({"id": id, "sku": sku, "qty": qty}))
    }

    /// `DELETE /delete-user`: the token's account.
    pub async fn delete_user(&self, token: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .delete(self.url("/delete-user"))
            .bearer_auth(token)
            .send()
            .await
    }

    /// `GET /orders/{id}`.
    pub async fn order_status(&self, token: &str, id: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(self.url(&format!("/orders/{id}")))
            .bearer_auth(token)
            .send()
            .await
    }
}
