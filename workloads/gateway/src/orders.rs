//! Order intake (`POST /orders`) and order status (`GET /orders/{id}`).
//!
//! `202 Order received` means the order is durable: the answer is sent only after RabbitMQ
//! confirmed the message on a quorum queue. The idempotency claim ([`idempotency`]) is taken
//! before publishing and settled by how the publish ended: a 503 for a publish that stored
//! nothing frees the id, a 503 for one that may have stored it says so, and a retry with the same
//! body publishes again (the processor applies an order once); a retry of an accepted order is a
//! `409 Duplicate order`, and the same id with another body is a 422.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use pipeline_contract::messages::{Order, OrderPlaced};
use pipeline_contract::{order, order_fields};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument as _;
use utoipa::ToSchema;

use crate::extract::{AuthUser, JsonBody, REVOKED, SignedToken};
use crate::idempotency::{self, AcceptedRecord, Claim, Revocation, Settled, Verdict};
use crate::problem::{AppError, Problem};
use crate::{AppState, now_unix_millis};

/// What a client is told when an order could not be taken: nothing was recorded, so a retry with
/// the same id is safe.
const ORDER_UNAVAILABLE: &str =
    "the order could not be stored durably right now; nothing was recorded, retry later";

/// What a client is told when the publish may have stored the order: only a retry with the same
/// body settles it, and it places the order at most once.
const ORDER_UNCERTAIN: &str = "the order may or may not have been stored (the broker's confirm was lost); retry with the same body: it is placed at most once";

/// What a retry is told while the first request for the order is still publishing it.
const ORDER_IN_FLIGHT: &str =
    "an earlier request with this order id is still being stored; retry with the same body shortly";

/// The seed's order body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Client-chosen order id, unique per user: 1-64 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "order123")]
    pub id: String,
    /// 1-128 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "mag-safe-phone-case")]
    pub sku: String,
    /// 1 to 10000.
    #[schema(example = 2)]
    pub qty: i64,
}

/// An order that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    pub id: String,
    pub sku: String,
    pub qty: u32,
}

impl ValidOrder {
    /// Identifies the order's content, to tell a retry (same digest) from a reuse of the id.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        // Length-prefixed, so ("a", "bc") and ("ab", "c") differ.
        for part in [self.id.as_bytes(), self.sku.as_bytes()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.update(self.qty.to_be_bytes());
        hex::encode(hasher.finalize())
    }
}

/// The problem of a field that breaks the contract's grammar ([`pipeline_contract::order`]).
fn bad_field(field: &str, problem: impl std::fmt::Display) -> AppError {
    AppError::bad_field(field, format!("{field} {problem}"))
}

pub fn validate(request: OrderRequest) -> Result<ValidOrder, AppError> {
    order::check_id(&request.id).map_err(|problem| bad_field("id", problem))?;
    order::check_sku(&request.sku).map_err(|problem| bad_field("sku", problem))?;
    let qty = order::check_qty(request.qty).map_err(|problem| bad_field("qty", problem))?;
    Ok(ValidOrder {
        id: request.id,
        sku: request.sku,
        qty,
    })
}

/// Place an order.
#[utoipa::path(
    post,
    path = "/orders",
    request_body = OrderRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Order received: <id> (stored durably)", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid body; `field` names the field", body = Problem),
        (status = 401, description = "Missing or malformed Authorization header", body = Problem),
        (status = 403, description = "Invalid, expired or revoked token", body = Problem),
        (status = 409, description = "Duplicate order", body = String, content_type = "text/plain"),
        (status = 415, description = "Content-Type is not application/json", body = Problem),
        (status = 422, description = "The id was already used for a different order", body = Problem),
        (status = 503, description = "Not stored right now (the detail says whether the order may have been), or an earlier request for it is still being stored; retry with the same body, which places it at most once", body = Problem),
    )
)]
pub async fn create_order(
    State(state): State<AppState>,
    // Its revocation is checked in the order's claim ([`idempotency::take`]).
    token: SignedToken,
    JsonBody(request): JsonBody<OrderRequest>,
) -> Result<(StatusCode, String), AppError> {
    let order = validate(request)?;
    // Its own task: a client that disconnects makes hyper drop this handler, which must not
    // leave a claim taken and its order unpublished, or a publish unsettled.
    // The span carries the request's trace into the task, and names the order in it.
    let span = tracing::info_span!("place order", order.id = %order.id);
    tokio::spawn(async move { place(&state, &token, &order).await }.instrument(span))
        .await
        .map_err(|error| AppError::internal("place an order", error))?
}

/// Checks the token's revocation and takes the order's claim, in one step, then publishes it.
async fn place(
    state: &AppState,
    token: &SignedToken,
    order: &ValidOrder,
) -> Result<(StatusCode, String), AppError> {
    let owner = token.email.as_str();
    let claim_key = state.keys().idempotency(owner, &order.id);
    let deleted_key = state.keys().account_deleted(owner);
    let mut redis = state.redis();
    let verdict = idempotency::take(
        &mut redis,
        &claim_key,
        &order.digest(),
        state.publish_lease(),
        Revocation {
            deleted_key: &deleted_key,
            issued_at: token.issued_at,
        },
    )
    .await
    .map_err(|error| AppError::Unavailable {
        reason: format!("idempotency check failed: {error}"),
        detail: ORDER_UNAVAILABLE,
        retry_after: Duration::from_secs(1),
    })?;
    let claim = match verdict {
        Verdict::Revoked => return Err(AppError::Forbidden(REVOKED.into())),
        Verdict::Claimed(claim) => claim,
        Verdict::Duplicate => return Err(AppError::DuplicateOrder),
        Verdict::Conflict => {
            return Err(AppError::Unprocessable {
                detail: format!(
                    "order id {:?} was already used for a different order; use a new id",
                    order.id
                ),
                field: Some("id".into()),
            });
        }
        Verdict::InFlight(wait) => {
            return Err(AppError::Unavailable {
                reason: format!("order {} is being published by another request", order.id),
                detail: ORDER_IN_FLIGHT,
                retry_after: wait,
            });
        }
    };
    publish_claimed(state, owner, order, &claim).await
}

/// Publishes an order whose claim this request holds, and settles the claim by how it ended.
async fn publish_claimed(
    state: &AppState,
    owner: &str,
    order: &ValidOrder,
    claim: &Claim,
) -> Result<(StatusCode, String), AppError> {
    let message = OrderPlaced {
        order: Order {
            order_id: order.id.clone(),
            owner: owner.to_owned(),
            sku: order.sku.clone(),
            qty: order.qty,
        },
        accepted_at: now_unix_millis(),
    };
    let payload =
        serde_json::to_vec(&message).map_err(|error| AppError::internal("encode order", error))?;
    // Grouped with the orders placed at the same moment; the confirm awaited is this order's.
    let published = state
        .orders()
        .publish(payload, message.order.message_id())
        .await;
    let mut redis = state.redis();
    let settled = match &published {
        Ok(()) => Settled::Accepted,
        Err(error) if error.may_have_been_stored() => Settled::Uncertain,
        Err(_) => Settled::NotStored,
    };
    let moved = if settled == Settled::Accepted {
        // The order is durable now; the claim moves to accepted and the status record (which
        // the processor's step extends) and the dashboard's counter and list are written in
        // the same script. Failing, it is logged rather than turned into an error the client
        // would retry: the order is in the queue.
        let keys = state.keys();
        claim
            .accept(
                &mut redis,
                &AcceptedRecord {
                    record_key: keys.order(owner, &order.id),
                    accepted_count_key: keys.accepted_count(),
                    latest_key: keys.latest_orders(),
                    latest_entry: format!("{owner}:{}", order.id),
                    accepted_at: message.accepted_at,
                    sku: &order.sku,
                    qty: order.qty,
                },
            )
            .await
    } else {
        claim.settle(&mut redis, settled).await
    };
    match moved {
        Ok(true) => {}
        // A retry took the claim over after the lease, and settles it.
        Ok(false) => {
            tracing::warn!(order_id = %order.id, "an order's publish outlived its claim's lease")
        }
        // Left pending: once the lease is over, a retry with the same body publishes again.
        Err(error) => {
            tracing::error!(order_id = %order.id, %error, ?settled, "failed to settle an idempotency claim")
        }
    }
    if let Err(error) = published {
        return Err(AppError::Unavailable {
            reason: format!("publishing order {} failed: {error}", order.id),
            detail: if settled == Settled::Uncertain {
                ORDER_UNCERTAIN
            } else {
                ORDER_UNAVAILABLE
            },
            retry_after: Duration::from_secs(1),
        });
    }
    tracing::info!(order_id = %order.id, sku = %order.sku, qty = order.qty, "order accepted");
    Ok((
        StatusCode::ACCEPTED,
        format!("Order received: {}", order.id),
    ))
}

/// An order's progress through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderStatus {
    pub id: String,
    /// `accepted`, `processed`, `rejected` or `notified`.
    pub status: String,
    pub sku: Option<String>,
    pub qty: Option<u32>,
    /// Unix milliseconds.
    pub accepted_at: Option<u64>,
    pub processed_at: Option<u64>,
    /// Why it was rejected.
    pub reason: Option<String>,
    pub notified_at: Option<u64>,
}

impl OrderStatus {
    /// Composes the status from the fields each workload wrote.
    pub fn from_fields(id: &str, fields: &std::collections::HashMap<String, String>) -> Self {
        let number = |name: &str| fields.get(name).and_then(|value| value.parse().ok());
        let text = |name: &str| fields.get(name).cloned();
        let status = order::Status::of(
            fields.get(order_fields::OUTCOME).map(String::as_str),
            fields.get(order_fields::NOTIFICATION).map(String::as_str),
        );
        Self {
            id: id.to_owned(),
            status: status.as_str().to_owned(),
            sku: text(order_fields::SKU),
            qty: number(order_fields::QTY).and_then(|qty: u64| u32::try_from(qty).ok()),
            accepted_at: number(order_fields::ACCEPTED_AT),
            processed_at: number(order_fields::PROCESSED_AT),
            reason: text(order_fields::REASON),
            notified_at: number(order_fields::NOTIFIED_AT),
        }
    }
}

/// The status of one of your orders.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    params(("id" = String, Path, description = "The order id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order's status", body = OrderStatus),
        (status = 401, description = "Missing or malformed Authorization header", body = Problem),
        (status = 403, description = "Invalid, expired or revoked token", body = Problem),
        (status = 404, description = "No such order of yours", body = Problem),
    )
)]
pub async fn order_status(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<OrderStatus>, AppError> {
    order::check_id(&id).map_err(|problem| bad_field("id", problem))?;
    let mut redis = state.redis();
    let fields: std::collections::HashMap<String, String> = redis
        .hgetall(state.keys().order(&user.email, &id))
        .await
        .map_err(|error| AppError::Unavailable {
            reason: format!("reading order status failed: {error}"),
            detail: "the order's status could not be read right now (Redis is unavailable), retry later",
            retry_after: Duration::from_secs(1),
        })?;
    if fields.is_empty() {
        return Err(AppError::NotFound(format!("order {id:?}")));
    }
    Ok(Json(OrderStatus::from_fields(&id, &fields)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn request(id: &str, sku: &str, qty: i64) -> OrderRequest {
        OrderRequest {
            id: id.into(),
            sku: sku.into(),
            qty,
        }
    }

    fn field_error(result: Result<ValidOrder, AppError>) -> String {
        match result {
            Err(AppError::BadRequest {
                field: Some(field), ..
            }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn valid_orders_pass() {
        let order = validate(request("order123", "mag-safe-phone-case", 2)).unwrap();
        assert_eq!(order.qty, 2);
        assert!(validate(request(&"a".repeat(64), &"b".repeat(128), 10_000)).is_ok());
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_error(validate(request("", "s", 1))), "id");
        assert_eq!(
            field_error(validate(request(&"a".repeat(65), "s", 1))),
            "id"
        );
        assert_eq!(field_error(validate(request("a:b", "s", 1))), "id");
        assert_eq!(field_error(validate(request("a", "", 1))), "sku");
        assert_eq!(
            field_error(validate(request("a", &"s".repeat(129), 1))),
            "sku"
        );
        assert_eq!(field_error(validate(request("a", "s s", 1))), "sku");
        assert_eq!(field_error(validate(request("a", "s", 0))), "qty");
        assert_eq!(field_error(validate(request("a", "s", -3))), "qty");
        assert_eq!(field_error(validate(request("a", "s", 10_001))), "qty");
    }

    #[test]
    fn digest_tells_bodies_apart() {
        let a = validate(request("o1", "sku", 2)).unwrap();
        let same = validate(request("o1", "sku", 2)).unwrap();
        let other_qty = validate(request("o1", "sku", 3)).unwrap();
        let shifted = validate(request("o1s", "ku", 2)).unwrap();
        assert_eq!(a.digest(), same.digest());
        assert_ne!(a.digest(), other_qty.digest());
        assert_ne!(a.digest(), shifted.digest());
    }

    #[test]
    fn status_follows_the_furthest_stage() {
        let mut fields = HashMap::from([
            ("accepted_at".to_owned(), "10".to_owned()),
            ("sku".to_owned(), "s".to_owned()),
            ("qty".to_owned(), "2".to_owned()),
        ]);
        assert_eq!(OrderStatus::from_fields("o", &fields).status, "accepted");
        fields.insert("outcome".into(), "rejected".into());
        fields.insert("reason".into(), "out_of_stock".into());
        let status = OrderStatus::from_fields("o", &fields);
        assert_eq!(
            (status.status.as_str(), status.reason.as_deref()),
            ("rejected", Some("out_of_stock"))
        );
        fields.insert("outcome".into(), "processed".into());
        fields.insert("notification".into(), "sent".into());
        fields.insert("notified_at".into(), "30".into());
        let status = OrderStatus::from_fields("o", &fields);
        assert_eq!(status.status, "notified");
        assert_eq!(status.notified_at, Some(30));
        assert_eq!(status.qty, Some(2));
    }
}
