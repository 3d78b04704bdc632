//! Serving a workload's business API with the limits `axum::serve` does not have, so one slow or
//! greedy client cannot hold the server: a header-read timeout (slowloris), a whole-request
//! timeout (slow bodies, stuck handlers) and a ceiling on connections served at once.
//!
//! - **Header-read timeout** ([`HttpLimits::header_read_timeout`]): a connection that has not
//!   sent a request's complete headers in time is closed without an answer. hyper starts the
//!   clock whenever it waits for a request, so it also closes a keep-alive connection left idle
//!   that long.
//! - **Request timeout** ([`HttpLimits::request_timeout`]): from the headers to the answer, the
//!   body upload included. A request still running then is dropped (its handler future with it)
//!   and answered `503` with an RFC 9457 problem document and `Retry-After: 1`. Work a handler
//!   hands to a task of its own (the gateway's publishes) is not cancelled by it.
//! - **Connection limit** ([`HttpLimits::max_connections`]): a connection is accepted only once
//!   one of the slots is free. Those beyond the limit are not closed: they wait, unread, in the
//!   kernel's listen backlog (the client sees a slow connect), and are served as slots free.
//!   The two timeouts bound how long any connection can keep a slot without progressing, with
//!   the write timeout below.
//! - **Write timeout** (the header-read timeout again): an answer the client does not read for
//!   that long (its socket buffers full: a client that pipelines requests and never reads) ends
//!   the connection. Without it such a connection would hold its slot, and the drain, forever.
//!
//! HTTP/1.1 only (as the workloads always were to their clients; no h2c).
//!
//! Graceful shutdown is `axum::serve`'s: when the token is cancelled the listener is closed
//! (new connections are refused), idle connections are closed, requests in flight are answered
//! (at most [`HttpLimits::request_timeout`] later) and only then does [`serve`] return. A drain
//! still unfinished after `request_timeout` plus `header_read_timeout` is abandoned (logged), so
//! shutdown always ends within the pod's grace.
//! Handlers keep `ConnectInfo<SocketAddr>`: it is set on every request.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use pipeline_contract::env;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::{self, ConfigError, Source};

/// The business port's limits. [`Default`] holds the defaults of their variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers (and to start its next request on
    /// a keep-alive connection). `HTTP_HEADER_READ_TIMEOUT_MS`, default 10 s.
    pub header_read_timeout: Duration,
    /// How long a request may take from its headers to its answer. Above every bound a handler
    /// has of its own (the gateway's publish confirm: 10 s), so it only cuts off what would
    /// otherwise hang. `HTTP_REQUEST_TIMEOUT_MS`, default 30 s.
    pub request_timeout: Duration,
    /// Connections served at once. `HTTP_MAX_CONNECTIONS`, default 1024.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

impl HttpLimits {
    /// Reads `HTTP_HEADER_READ_TIMEOUT_MS`, `HTTP_REQUEST_TIMEOUT_MS` and `HTTP_MAX_CONNECTIONS`,
    /// each optional; zero is refused (it would disable the protection or the server).
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let max_connections =
            config::parsed_or(source, env::HTTP_MAX_CONNECTIONS, defaults.max_connections)?;
        if max_connections == 0 || max_connections > Semaphore::MAX_PERMITS {
            return Err(ConfigError::Invalid {
                variable: env::HTTP_MAX_CONNECTIONS,
                problem: format!(
                    "{max_connections} is outside 1..={}",
                    Semaphore::MAX_PERMITS
                ),
            });
        }
        Ok(Self {
            header_read_timeout: positive_millis(
                source,
                env::HTTP_HEADER_READ_TIMEOUT_MS,
                defaults.header_read_timeout,
            )?,
            request_timeout: positive_millis(
                source,
                env::HTTP_REQUEST_TIMEOUT_MS,
                defaults.request_timeout,
            )?,
            max_connections,
        })
    }
}

/// A duration in milliseconds, at least 1 and at most a day (more is always a typo).
fn positive_millis(
    source: &impl Source,
    variable: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let millis = config::parsed_or(source, variable, default.as_millis() as u64)?;
    if !(1..=DAY_MS).contains(&millis) {
        return Err(ConfigError::Invalid {
            variable,
            problem: format!("{millis} ms is outside 1..={DAY_MS} (milliseconds)"),
        });
    }
    Ok(Duration::from_millis(millis))
}

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled, then drains
/// (see the module documentation) and returns. Accept errors are logged and retried, never
/// returned: like `axum::serve`, this returns `Ok` once drained.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_timeout,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // A slot first, then accept: a connection beyond the limit stays in the listen backlog,
        // costing this process nothing, until a slot frees.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error, &shutdown).await;
                    continue;
                }
            },
        };
        let service =
            router
                .clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.header_read_timeout));
        // With upgrades, so the dashboard's WebSocket can take the connection over; an upgraded
        // connection leaves this server's tracking (and its slot), and its handler must bound
        // and close it itself.
        let connection = http
            .serve_connection(
                TokioIo::new(Box::pin(stream)),
                TowerToHyperService::new(service),
            )
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    // Closes it once idle; a request in flight is answered first.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                // A header-read timeout, a client that went away, a malformed request: the
                // client's doing, and a flood of them must not flood the log.
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    tracing::debug!(connections = connections.len(), "draining connections");
    let deadline = limits.request_timeout + limits.header_read_timeout;
    if tokio::time::timeout(deadline, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            ?deadline,
            "connections still open after the drain's deadline; abandoning them"
        );
    }
    Ok(())
}

/// What `axum::serve` does on an accept error: errors of one connection are skipped; others
/// (out of file descriptors) are logged and retried after a second, so the loop does not spin.
async fn accept_failed(error: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

/// Answers 503 when the rest of the stack has not answered within `limit`.
async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // The path only: query strings may carry what a log should not.
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%method, %path, limit_ms = limit.as_millis() as u64, "request timed out");
            timed_out(limit)
        }
    }
}

/// The answer to a request that ran out of time: the workloads' problem document.
pub fn timed_out(limit: Duration) -> Response {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let problem = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason(),
        "status": status.as_u16(),
        "detail": format!(
            "the request was not answered within {} ms and was abandoned; it may have taken effect, retry it as it was",
            limit.as_millis()
        ),
    });
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        problem.to_string(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use super::*;

    fn source(pairs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn limits_default_and_refuse_zero_or_garbage_naming_the_variable() {
        assert_eq!(
            HttpLimits::from_source(&source(&[])).unwrap(),
            HttpLimits::default()
        );
        let limits = HttpLimits::from_source(&source(&[
            (env::HTTP_HEADER_READ_TIMEOUT_MS, "250"),
            (env::HTTP_REQUEST_TIMEOUT_MS, "1500"),
            (env::HTTP_MAX_CONNECTIONS, "3"),
        ]))
        .unwrap();
        assert_eq!(
            limits,
            HttpLimits {
                header_read_timeout: Duration::from_millis(250),
                request_timeout: Duration::from_millis(1500),
                max_connections: 3,
            }
        );
        for (variable, value) in [
            (env::HTTP_HEADER_READ_TIMEOUT_MS, "0"),
            (env::HTTP_HEADER_READ_TIMEOUT_MS, "ten"),
            (env::HTTP_REQUEST_TIMEOUT_MS, "-5"),
            (env::HTTP_REQUEST_TIMEOUT_MS, "86400001"),
            (env::HTTP_MAX_CONNECTIONS, "0"),
            (env::HTTP_MAX_CONNECTIONS, "1.5"),
        ] {
            let error = HttpLimits::from_source(&source(&[(variable, value)]))
                .expect_err(value)
                .to_string();
            assert!(error.contains(variable), "{error}");
        }
    }

    /// A server on loopback with `limits`: `/` answers at once, `/slow` after 1 s (notifying
    /// [`TestServer::slow_started`] when it begins), `/peer` with the client's address,
    /// `POST /echo` with the body's length.
    struct TestServer {
        address: SocketAddr,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
        slow_started: Arc<tokio::sync::Notify>,
    }

    async fn start(limits: HttpLimits) -> TestServer {
        let slow_started = Arc::new(tokio::sync::Notify::new());
        let notify = slow_started.clone();
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/slow",
                get(move || async move {
                    notify.notify_one();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    "slow"
                }),
            )
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/echo",
                post(|body: axum::body::Bytes| async move { body.len().to_string() }),
            )
            .route("/big", get(|| async { "x".repeat(1 << 20) }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, limits, shutdown.clone()));
        TestServer {
            address,
            shutdown,
            server,
            slow_started,
        }
    }

    impl TestServer {
        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(10), self.server)
                .await
                .expect("drained within 10 s")
                .unwrap()
                .unwrap();
        }
    }

    /// Reads until the server closes the connection; returns what it sent.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        // A reset is a close too.
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn get_once(address: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        read_to_close(&mut stream).await
    }

    /// A client that pipelines requests for large answers and never reads fills its socket
    /// buffers; without a write timeout the connection would keep its slot (the only one here)
    /// and the drain forever.
    #[tokio::test]
    async fn a_client_that_never_reads_its_answers_loses_its_connection_and_slot() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            max_connections: 1,
            ..HttpLimits::default()
        };
        let server = start(limits).await;
        let address = server.address;
        let mut greedy = TcpStream::connect(address).await.unwrap();
        let requests = "GET /big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(64);
        greedy.write_all(requests.as_bytes()).await.unwrap();
        // Never read: 64 MiB of answers back up. The only slot frees once the write stalls for
        // the timeout, and another client is served.
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(20), get_once(address, "/"))
            .await
            .expect("the slot was freed");
        println!(
            "a client that never reads: the next one served after {:?}",
            started.elapsed()
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(greedy);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_partial_header_is_cut_off_after_the_header_read_timeout() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let server = start(limits).await;
        let address = server.address;
        let started = Instant::now();
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow")
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut slow))
            .await
            .expect("the server closed the connection");
        let elapsed = started.elapsed();
        println!("partial header: closed after {elapsed:?}, answer {answer:?}");
        assert!(answer.is_empty(), "{answer}");
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        // Complete requests are still served.
        assert!(get_once(address, "/").await.starts_with("HTTP/1.1 200"));
        server.stop().await;
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let server = start(limits).await;
        let mut idle = TcpStream::connect(server.address).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let answered = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut idle))
            .await
            .expect("the server closed the idle connection");
        let idle_for = answered.elapsed();
        println!("keep-alive connection closed {idle_for:?} after its request");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(idle_for >= Duration::from_millis(250), "{idle_for:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_request_over_its_time_is_a_503_problem_and_a_slow_body_too() {
        let limits = HttpLimits {
            request_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let server = start(limits).await;
        let address = server.address;
        let answer = get_once(address, "/slow").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("content-type: application/problem+json"),
            "{answer}"
        );
        assert!(answer.contains("retry-after: 1"), "{answer}");
        assert!(answer.contains(r#""status":503"#), "{answer}");

        // Headers in time, then a body that never comes.
        let started = Instant::now();
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhalf")
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut stream))
            .await
            .expect("answered and closed");
        println!("slow body: answered after {:?}", started.elapsed());
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        server.stop().await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_slot() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(400),
            max_connections: 2,
            ..HttpLimits::default()
        };
        let server = start(limits).await;
        let address = server.address;
        let started = Instant::now();
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            holders.push(stream);
        }
        let closed_at = Arc::new(std::sync::Mutex::new(Vec::new()));
        let watchers: Vec<_> = holders
            .into_iter()
            .map(|mut stream| {
                let closed_at = closed_at.clone();
                tokio::spawn(async move {
                    read_to_close(&mut stream).await;
                    closed_at.lock().unwrap().push(started.elapsed());
                })
            })
            .collect();
        // The third connection is established by the kernel, but not served while both slots
        // are held.
        let third = get_once(address, "/").await;
        let answered_at = started.elapsed();
        for watcher in watchers {
            watcher.await.unwrap();
        }
        let closed_at = closed_at.lock().unwrap().clone();
        println!(
            "2 slots held by partial headers: closed at {closed_at:?}; third answered at {answered_at:?}"
        );
        assert!(third.starts_with("HTTP/1.1 200"), "{third}");
        assert!(answered_at >= Duration::from_millis(400), "{answered_at:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn handlers_see_the_peer_and_shutdown_drains_requests_in_flight() {
        let server = start(HttpLimits::default()).await;
        let address = server.address;
        let mut local = TcpStream::connect(address).await.unwrap();
        let client = local.local_addr().unwrap();
        local
            .write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut local).await;
        assert!(answer.ends_with(&client.to_string()), "{answer}");

        // A slow request in flight when shutdown begins is still answered; new connections are
        // refused, and `serve` returns once the answer is out.
        let in_flight = tokio::spawn(get_once(address, "/slow"));
        server.slow_started.notified().await;
        server.stop().await;
        let answer = in_flight.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("slow"), "{answer}");
        assert!(
            TcpStream::connect(address).await.is_err(),
            "still listening"
        );
    }
}
