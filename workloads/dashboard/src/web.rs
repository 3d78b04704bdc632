//! The live web page: its embedded bundle, the WebSocket that pushes [`crate::live`] snapshots to
//! it, and the read-only order lookup.
//!
//! The bundle (`ui/dist/`, built by `cargo xtask ui` and committed) is compiled into the binary,
//! so the image stays one static file and `cargo build` never runs npm. Everything here only
//! reads. The page's responses carry a strict Content-Security-Policy (scripts, styles and
//! connections from this origin only, nothing inline), so even a value that slipped past the
//! framework's escaping could not run.
//!
//! The WebSocket is bounded: at most [`LiveLimits::max_clients`] at once (the next is refused
//! with 503 before the upgrade), inbound messages of at most [`MAX_INBOUND_MESSAGE_BYTES`] (the
//! page sends none), and a browser page from another origin is refused (403), so another site
//! cannot read the dashboard through its visitors' browsers. When shutdown begins every socket
//! gets a Close frame (1001, going away) so pages say "reconnecting" instead of seeing an error.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use workload_runtime::shutdown::Shutdown;

use crate::AppState;
use crate::live::{self, OrderView};
use crate::problem::AppError;

/// The page's WebSocket.
pub const LIVE_PATH: &str = "/live";
/// The order lookup: `GET /api/orders/<order_id>`.
pub const LOOKUP_PATH: &str = "/api/orders/{order_id}";

/// The policy of every page response: only this origin's own files and WebSocket, nothing
/// inline, no plugins, no framing, no form posts. `'self'` in `connect-src` covers `ws:`/`wss:`
/// to the same host and port.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'none'";

/// The page sends nothing; this leaves room for a control frame and bounds what a client can
/// make the server buffer.
pub const MAX_INBOUND_MESSAGE_BYTES: usize = 1024;

/// How long a closing socket waits for the client's answering Close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// One embedded file of the bundle.
#[derive(Debug)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The bundle. Vite writes fixed names (`ui/vite.config.js`), so this table never changes
/// with a rebuild; `Cache-Control: no-cache` makes browsers revalidate instead.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../ui/dist/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/dist/assets/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/dist/assets/app.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../ui/dist/favicon.svg"),
    },
];

/// Bounds on the live WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLimits {
    /// Sockets open at once; each costs a task and a copy of each snapshot per period.
    pub max_clients: usize,
    /// How often a snapshot is read and pushed.
    pub period: Duration,
}

impl Default for LiveLimits {
    fn default() -> Self {
        Self {
            max_clients: 64,
            period: Duration::from_secs(1),
        }
    }
}

/// What the live routes share: the latest snapshot, the client slots, and the shutdown signal
/// that closes every socket.
#[derive(Debug, Clone)]
pub struct Live {
    snapshots: watch::Receiver<Arc<str>>,
    clients: Arc<Semaphore>,
    shutdown: Shutdown,
}

impl Live {
    /// Starts publishing snapshots (see [`live::publish`]) until `shutdown`.
    pub async fn start(
        redis: redis::aio::ConnectionManager,
        keys: pipeline_contract::keys::Keys,
        queues: Option<crate::queues::QueueWatch>,
        limits: LiveLimits,
        shutdown: &Shutdown,
    ) -> Self {
        Self {
            snapshots: live::publish(redis, keys, queues, limits.period, shutdown).await,
            clients: Arc::new(Semaphore::new(limits.max_clients)),
            shutdown: shutdown.clone(),
        }
    }
}

/// The page, its bundle, the WebSocket and the lookup, each response with the page's security
/// headers.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for asset in ASSETS {
        router = router.route(asset.path, get(move || serve_asset(asset)));
    }
    router
        .route(LIVE_PATH, get(live_socket))
        .route(LOOKUP_PATH, get(lookup))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn serve_asset(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether a browser's `Origin` is this server's own. Without one the client is not a browser
/// page (browsers always send it on a WebSocket upgrade), and there is no visitor's browser to
/// abuse.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(HeaderValue::to_str),
    ) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host))
}

async fn live_socket(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    let Ok(slot) = state.live.clients.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many live dashboard clients",
        )
            .into_response();
    };
    let live = state.live.clone();
    upgrade
        .max_message_size(MAX_INBOUND_MESSAGE_BYTES)
        .max_frame_size(MAX_INBOUND_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            // Tracked, so the process waits for every socket's Close frame before it exits.
            let token = live.shutdown.token();
            let _ = live
                .shutdown
                .spawn(stream_snapshots(socket, live.snapshots, token, slot))
                .await;
        })
}

/// Pushes every new snapshot to `socket` until the client leaves or shutdown begins.
async fn stream_snapshots(
    mut socket: WebSocket,
    mut snapshots: watch::Receiver<Arc<str>>,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let first = snapshots.borrow_and_update().clone();
    if socket.send(text(&first)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = snapshots.changed() => {
                // The publisher stops only at shutdown.
                if changed.is_err() {
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                if socket.send(text(&snapshot)).await.is_err() {
                    return;
                }
            }
            received = socket.recv() => match received {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                // Read-only: whatever a client sends (within the size bound) is ignored.
                Some(Ok(_)) => {}
            },
        }
    }
    close(socket).await;
}

/// Says goodbye with a Close frame and waits briefly for the client's reply, as the protocol
/// asks, so the page sees a clean close.
async fn close(mut socket: WebSocket) {
    let frame = CloseFrame {
        code: close_code::AWAY,
        reason: Utf8Bytes::from_static("dashboard shutting down"),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn text(snapshot: &Arc<str>) -> Message {
    Message::Text(Utf8Bytes::from(snapshot.as_ref()))
}

/// The lookup's answer: every order with that id the dashboard can find (ids are unique per
/// owner only), newest first; empty when none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lookup {
    pub order_id: String,
    pub orders: Vec<OrderView>,
}

async fn lookup(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Json<Lookup>, AppError> {
    pipeline_contract::order::check_id(&order_id)
        .map_err(|error| AppError::bad_parameter("order_id", format!("order_id {error}")))?;
    let orders = live::lookup(&state.redis, &state.keys, &order_id)
        .await
        .map_err(|error| AppError::Unavailable {
            action: format!("looking up order {order_id}"),
            reason: error.to_string(),
        })?;
    Ok(Json(Lookup { order_id, orders }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn only_the_servers_own_origin_may_open_the_socket() {
        assert!(same_origin(&headers(
            Some("http://127.0.0.1:8081"),
            "127.0.0.1:8081"
        )));
        assert!(same_origin(&headers(
            Some("https://Dash.example"),
            "dash.example"
        )));
        assert!(same_origin(&headers(None, "127.0.0.1:8081")));
        assert!(!same_origin(&headers(
            Some("http://evil.example"),
            "127.0.0.1:8081"
        )));
        assert!(!same_origin(&headers(
            Some("http://127.0.0.1:8082"),
            "127.0.0.1:8081"
        )));
        assert!(!same_origin(&headers(Some("null"), "127.0.0.1:8081")));
    }

    #[test]
    fn the_policy_allows_nothing_inline_or_foreign() {
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'self';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.contains("connect-src 'self'"));
    }
}
