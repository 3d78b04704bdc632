//! Where notifications go: a log line (the seed's stub, optionally as slow as the seed's one
//! second), or a webhook (an HTTP POST with a timeout, retries and an `Idempotency-Key` header so
//! the receiver can drop the rare repeat a crash between sending and recording can cause).

use std::future::Future;
use std::time::Duration;

use tracing::Instrument as _;
use workload_runtime::broker::Backoff;
use workload_runtime::telemetry::propagation;

/// One notification to send: the webhook's JSON body.
pub use pipeline_contract::messages::Notification;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    /// Worth retrying later (timeout, connection refused, 5xx, 429).
    #[error("notification not sent (transient): {0}")]
    Transient(String),
    /// Retrying cannot help (the receiver refuses this notification: 4xx).
    #[error("notification refused: {0}")]
    Permanent(String),
}

/// Sends notifications.
pub trait Sink: Send + Sync + 'static {
    fn send(
        &self,
        notification: &Notification,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Logs the notification (the seed's "log/email stub").
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    /// Simulated provider latency.
    pub delay: Duration,
}

impl Sink for LogSink {
    async fn send(&self, notification: &Notification) -> Result<(), SinkError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        tracing::info!(
            order_id = %notification.order.order_id,
            sku = %notification.order.sku,
            qty = notification.order.qty,
            "notification sent (log sink)"
        );
        Ok(())
    }
}

/// Attempts of one webhook notification that fails transiently.
const WEBHOOK_ATTEMPTS: u32 = 3;
/// The wait between them.
const WEBHOOK_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(2),
};

/// POSTs the notification as JSON.
#[derive(Debug, Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    attempts: u32,
    backoff: Backoff,
}

impl WebhookSink {
    pub fn new(url: String, timeout: Duration) -> Result<Self, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|error| {
                SinkError::Permanent(format!("cannot build the HTTP client: {error}"))
            })?;
        Ok(Self {
            client,
            url,
            attempts: WEBHOOK_ATTEMPTS,
            backoff: WEBHOOK_BACKOFF,
        })
    }

    /// The longest one [`Sink::send`] can take with this `timeout`: every attempt timing out,
    /// with the longest backoff between them. The notifier's lease is derived from it.
    pub fn longest_send(timeout: Duration) -> Duration {
        let waits: Duration = (0..WEBHOOK_ATTEMPTS - 1)
            .map(|round| WEBHOOK_BACKOFF.delay(round, 1.0))
            .sum();
        timeout * WEBHOOK_ATTEMPTS + waits
    }

    /// One POST, a client span whose context the request carries (`traceparent`), so the
    /// receiver's spans join the order's trace.
    async fn post_once(&self, notification: &Notification) -> Result<(), SinkError> {
        let span = tracing::info_span!(
            "webhook",
            otel.name = "POST webhook",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            http.response.status_code = tracing::field::Empty,
            order.id = %notification.order.order_id,
        );
        let result = self
            .post_in_span(notification)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn post_in_span(&self, notification: &Notification) -> Result<(), SinkError> {
        let mut request = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", &notification.idempotency_key)
            .json(notification)
            .build()
            .map_err(|error| {
                SinkError::Permanent(format!("building the request failed: {error}"))
            })?;
        propagation::inject_http(request.headers_mut());
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|error| SinkError::Transient(format!("POST failed: {error}")))?;
        let status = response.status();
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(SinkError::Transient(format!("webhook answered {status}")))
        } else {
            Err(SinkError::Permanent(format!("webhook answered {status}")))
        }
    }
}

impl Sink for WebhookSink {
    async fn send(&self, notification: &Notification) -> Result<(), SinkError> {
        let mut attempt = 0;
        loop {
            match self.post_once(notification).await {
                Err(SinkError::Transient(reason)) if attempt + 1 < self.attempts => {
                    let delay = self.backoff.delay(attempt, rand::random::<f64>());
                    tracing::warn!(%reason, attempt, "webhook failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// The sink chosen by configuration.
#[derive(Debug, Clone)]
pub enum ConfiguredSink {
    Log(LogSink),
    Webhook(WebhookSink),
}

impl Sink for ConfiguredSink {
    async fn send(&self, notification: &Notification) -> Result<(), SinkError> {
        match self {
            ConfiguredSink::Log(sink) => sink.send(notification).await,
            ConfiguredSink::Webhook(sink) => sink.send(notification).await,
        }
    }
}
