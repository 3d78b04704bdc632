//! Request extractors with the gateway's error answers: a JSON body that names the field at
//! fault, and the authenticated user of a bearer token.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::AppError;
use crate::tokens::TokenError;
use crate::{AppState, now_unix_seconds};

/// A JSON body: `Content-Type: application/json` required (415 otherwise), size limited by the
/// router's body limit (413), and parse errors answered with 400 naming the field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(AppError::UnsupportedMediaType(format!(
                "Content-Type must be application/json, got {:?}",
                if content_type.is_empty() {
                    "(none)"
                } else {
                    content_type
                }
            )));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge
                } else {
                    AppError::BadRequest {
                        detail: format!("failed to read the body: {rejection}"),
                        field: None,
                    }
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, reporting which field is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        // Unknown and missing fields are reported at the parent path; the name is in the message.
        let malformed = inner.is_syntax() || inner.is_eof();
        let field = if malformed {
            None
        } else {
            backticked(&message).or_else(|| (path != ".").then_some(path))
        };
        let detail = if malformed {
            format!("malformed JSON: {message}")
        } else {
            match &field {
                Some(field) if !message.contains(&format!("`{field}`")) => {
                    format!("{field}: {message}")
                }
                _ => message,
            }
        };
        AppError::BadRequest { detail, field }
    })?;
    deserializer.end().map_err(|error| AppError::BadRequest {
        detail: format!("malformed JSON: {error}"),
        field: None,
    })?;
    Ok(value)
}

fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

/// What a token issued before its account's deletion is told.
pub const REVOKED: &str = "the token was issued before its account was deleted";

/// The account of a valid bearer token. A missing or malformed `Authorization` header is 401; a
/// token that is present but invalid, expired, or older than its account's deletion is 403 (the
/// seed's split).
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub email: String,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = SignedToken::from_request_parts(parts, state).await?;
        if let Some(deleted_at) = state.account_deleted_at(&token.email).await?
            && token.issued_at <= deleted_at
        {
            return Err(AppError::Forbidden(REVOKED.into()));
        }
        Ok(AuthUser { email: token.email })
    }
}

/// A bearer token whose signature and lifetime are checked (401 and 403 as for [`AuthUser`]),
/// and whose revocation is not yet: the handler that takes it checks that in the same Redis step
/// as its own work (`POST /orders`: in the order's claim, one round trip instead of two), and
/// answers 403 [`REVOKED`] for a token older than its account's deletion.
#[derive(Debug, Clone)]
pub struct SignedToken {
    pub email: String,
    /// The token's `iat`: a deletion at or after it revokes the token.
    pub issued_at: u64,
}

impl FromRequestParts<AppState> for SignedToken {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| AppError::Unauthorized("missing Authorization header".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                AppError::Unauthorized("Authorization header must be \"Bearer <token>\"".into())
            })?;
        let claims = state
            .tokens()
            .verify(token, now_unix_seconds())
            .map_err(|error: TokenError| AppError::Forbidden(error.to_string()))?;
        Ok(SignedToken {
            email: claims.sub,
            issued_at: claims.iat,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Order {
        id: String,
        qty: i64,
    }

    fn field_of(body: &str) -> (Option<String>, String) {
        match parse_json::<Order>(body.as_bytes()).unwrap_err() {
            AppError::BadRequest { field, detail } => (field, detail),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"id":"a","qty":"two"}"#).0.as_deref(),
            Some("qty")
        );
        assert_eq!(field_of(r#"{"id":"a"}"#).0.as_deref(), Some("qty"));
        let (field, detail) = field_of(r#"{"id":"a","qty":1,"price":3}"#);
        assert_eq!(field.as_deref(), Some("price"));
        assert!(detail.contains("unknown field"), "{detail}");
        let (field, detail) = field_of(r#"{"id":"a","#);
        assert_eq!(field, None);
        assert!(detail.starts_with("malformed JSON"), "{detail}");
        let (_, detail) = field_of(r#"{"id":"a","qty":1} trailing"#);
        assert!(detail.starts_with("malformed JSON"), "{detail}");
    }
}
