//! The gateway's one error type and how it reaches clients.
//!
//! Every failure becomes an RFC 9457 problem document (`application/problem+json`) that says what
//! is wrong, and for bad input which field. Internal failures are logged with their cause and
//! answered with a generic message: clients never see driver errors. The seed's documented
//! plain-text answers (`Duplicate order`) stay exactly as documented.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, for validation problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid request: {detail}")]
    BadRequest {
        detail: String,
        field: Option<String>,
    },
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The seed's exact `409 Duplicate order` answer.
    #[error("Duplicate order")]
    DuplicateOrder,
    #[error("{detail}")]
    Unprocessable {
        detail: String,
        field: Option<String>,
    },
    #[error("too many attempts")]
    TooManyRequests { retry_after: Duration },
    /// A dependency is unavailable; the request changed nothing and can be retried.
    #[error("service unavailable: {reason}")]
    Unavailable {
        /// What failed, with the dependency's error: logged, never sent.
        reason: String,
        /// What the client is told: which service is away and what was (not) done.
        detail: &'static str,
        retry_after: Duration,
    },
    /// A bug or an unexpected dependency failure. The message is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn bad_field(field: &str, detail: impl Into<String>) -> Self {
        AppError::BadRequest {
            detail: detail.into(),
            field: Some(field.to_owned()),
        }
    }

    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        AppError::Internal(format!("{context}: {error}"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) | AppError::DuplicateOrder => StatusCode::CONFLICT,
            AppError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> Problem {
        let status = self.status();
        let (detail, field) = match self {
            AppError::BadRequest { detail, field } | AppError::Unprocessable { detail, field } => {
                (detail.clone(), field.clone())
            }
            AppError::UnsupportedMediaType(detail)
            | AppError::Unauthorized(detail)
            | AppError::Forbidden(detail)
            | AppError::Conflict(detail) => (detail.clone(), None),
            AppError::PayloadTooLarge => ("the request body is too large".to_owned(), None),
            AppError::NotFound(what) => (format!("{what} not found"), None),
            AppError::DuplicateOrder => ("Duplicate order".to_owned(), None),
            AppError::TooManyRequests { retry_after } => (
                format!(
                    "too many attempts; retry after {} seconds",
                    retry_after.as_secs().max(1)
                ),
                None,
            ),
            AppError::Unavailable { detail, .. } => ((*detail).to_owned(), None),
            AppError::Internal(_) => ("an internal error occurred".to_owned(), None),
        };
        Problem {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            field,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AppError::TooManyRequests { retry_after }
            | AppError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::Internal(message) => tracing::error!(%message, "request failed"),
            AppError::Unavailable { reason, .. } => {
                tracing::warn!(%reason, "request refused: dependency unavailable")
            }
            _ => {}
        }
        if matches!(self, AppError::DuplicateOrder) {
            // The seed documents this answer as plain text; keep it byte for byte.
            return (self.status(), "Duplicate order").into_response();
        }
        let status = self.status();
        let retry_after = self.retry_after();
        let body = serde_json::to_string(&self.problem()).unwrap_or_else(|_| "{}".to_owned());
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if let Some(delay) = retry_after {
            let seconds = delay.as_secs().max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body_of(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn validation_problem_names_the_field() {
        let response =
            AppError::bad_field("qty", "qty must be between 1 and 10000").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let problem: serde_json::Value = serde_json::from_str(&body_of(response).await).unwrap();
        assert_eq!(problem["status"], 400);
        assert_eq!(problem["field"], "qty");
        assert_eq!(problem["title"], "Bad Request");
        assert_eq!(problem["detail"], "qty must be between 1 and 10000");
    }

    #[tokio::test]
    async fn duplicate_order_is_the_seeds_plain_text() {
        let response = AppError::DuplicateOrder.into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(body_of(response).await, "Duplicate order");
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause_and_unavailable_sets_retry_after() {
        let response =
            AppError::internal("redis GET", "connection refused to 10.0.0.7").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(response).await;
        assert!(!body.contains("10.0.0.7"), "{body}");

        let response = AppError::Unavailable {
            reason: "broker down at 10.0.0.8".into(),
            detail: "the account store (Cassandra) is unavailable right now",
            retry_after: Duration::from_secs(2),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let body = body_of(response).await;
        assert!(!body.contains("10.0.0.8"), "{body}");
        assert!(
            body.contains("the account store (Cassandra) is unavailable right now"),
            "the client is told which service is away: {body}"
        );
    }
}
