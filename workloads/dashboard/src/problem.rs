//! The dashboard's one error type and how it reaches clients.
//!
//! Every failure is an RFC 9457 problem document (`application/problem+json`). Bad query
//! parameters say what is wrong and name the parameter in `field`, so a client can fix its
//! request. Failures on our side (Redis unreachable, or data in Redis that is not what the
//! pipeline writes) are logged with their cause and answered generically: clients never see
//! driver errors, key names or stored values.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// How long a client should wait before retrying while Redis is unavailable.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URI naming the problem type; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The query parameter at fault, for validation problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The query string is wrong; `parameter` is the one at fault when there is one.
    #[error("invalid query: {detail}")]
    BadQuery {
        parameter: Option<String>,
        detail: String,
    },
    /// Redis did not answer (down, timed out, refused): nothing is wrong with the request, so the
    /// client may retry.
    #[error("Redis unavailable while {action}: {reason}")]
    Unavailable { action: String, reason: String },
    /// A key holds something the pipeline never writes there (`SET inventory:x abc`, a hash where
    /// a counter belongs). An operator must fix the data; retrying will not help.
    #[error("unexpected data at Redis key {key}: {problem}")]
    BadData { key: String, problem: String },
}

impl AppError {
    pub fn bad_parameter(parameter: &str, detail: impl Into<String>) -> Self {
        AppError::BadQuery {
            parameter: Some(parameter.to_owned()),
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadQuery { .. } => StatusCode::BAD_REQUEST,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::BadData { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        let (detail, field) = match self {
            AppError::BadQuery { parameter, detail } => (detail.clone(), parameter.clone()),
            AppError::Unavailable { .. } => (
                "the metrics store is unavailable right now; retry later".to_owned(),
                None,
            ),
            AppError::BadData { .. } => ("an internal error occurred".to_owned(), None),
        };
        Problem {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            field,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::BadData { .. } => tracing::error!(error = %self, "metrics request failed"),
            AppError::Unavailable { .. } => {
                tracing::warn!(error = %self, "metrics request refused: Redis unavailable");
            }
            AppError::BadQuery { .. } => {}
        }
        let status = self.status();
        let body = serde_json::to_string(&self.problem()).unwrap_or_else(|_| "{}".to_owned());
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if matches!(self, AppError::Unavailable { .. }) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::{Value, json};

    use super::*;

    async fn parts(error: AppError) -> (StatusCode, Option<String>, Value) {
        let response = error.into_response();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|value| value.to_str().unwrap().to_owned());
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry_after, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_bad_parameter_is_a_400_naming_it() {
        let (status, retry_after, body) =
            parts(AppError::bad_parameter("sku", "sku must not be empty")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(retry_after, None);
        assert_eq!(
            body,
            json!({
                "type": "about:blank",
                "title": "Bad Request",
                "status": 400,
                "detail": "sku must not be empty",
                "field": "sku",
            })
        );
    }

    #[tokio::test]
    async fn bad_data_is_a_generic_500_that_reveals_nothing() {
        let (status, _, body) = parts(AppError::BadData {
            key: "tenant7:inventory:phone".into(),
            problem: "\"abc\" is not an integer".into(),
        })
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            json!({
                "type": "about:blank",
                "title": "Internal Server Error",
                "status": 500,
                "detail": "an internal error occurred",
            })
        );
    }

    #[tokio::test]
    async fn unavailable_is_a_503_with_retry_after_and_no_driver_text() {
        let (status, retry_after, body) = parts(AppError::Unavailable {
            action: "reading orders.processed.count".into(),
            reason: "connection refused (os error 111) to 10.0.0.7:6379".into(),
        })
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("1"));
        let text = body.to_string();
        assert!(
            !text.contains("10.0.0.7") && !text.contains("refused"),
            "{text}"
        );
    }
}
