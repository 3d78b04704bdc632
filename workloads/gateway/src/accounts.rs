//! Accounts: `POST /register`, `POST /login`, `DELETE /delete-user`, with the seed's answers.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::client_address::{self, ClientAddress};
use crate::extract::{AuthUser, JsonBody};
use crate::passwords::Refused;
use crate::problem::{AppError, Problem};
use crate::{AppState, now_unix_seconds};

pub const MIN_PASSWORD_BYTES: usize = 8;
/// bcrypt only reads the first 72 bytes; a longer password would silently match its prefix.
pub const MAX_PASSWORD_BYTES: usize = 72;
const MAX_EMAIL_LEN: usize = 254;

/// Email and password, for registration and login.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[schema(example = "customer@example.com")]
    pub email: String,
    #[schema(example = "securepassword123")]
    pub password: String,
}

/// A login's answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// An HS256 JWT for the `Authorization: Bearer` header.
    pub token: String,
}

/// Emails are compared case-insensitively: `A@x.com` and `a@x.com` are one account.
pub fn normalize_email(email: &str) -> Result<String, AppError> {
    let email = email.trim().to_ascii_lowercase();
    let valid = email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if !valid {
        return Err(AppError::bad_field(
            "email",
            "email must be an address like name@example.com",
        ));
    }
    Ok(email)
}

fn check_password(password: &str) -> Result<(), AppError> {
    if password.len() < MIN_PASSWORD_BYTES || password.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::bad_field(
            "password",
            format!("password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes long"),
        ));
    }
    Ok(())
}

/// Create an account.
#[utoipa::path(
    post,
    path = "/register",
    request_body = Credentials,
    responses(
        (status = 201, description = "User registered successfully", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid email or password", body = Problem),
        (status = 409, description = "An account with this email exists", body = Problem),
        (status = 429, description = "Too many registrations from this address; see Retry-After", body = Problem),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    JsonBody(credentials): JsonBody<Credentials>,
) -> Result<(StatusCode, &'static str), AppError> {
    let email = normalize_email(&credentials.email)?;
    check_password(&credentials.password)?;
    // Before the hash: each registration costs one, whatever its outcome.
    state
        .rate_limiter()
        .reserve_registration(&client_address::limit_key(address))
        .await?;
    let hash = state
        .passwords()
        .hash(credentials.password)
        .await
        .map_err(|error| AppError::internal("hash password", error))?;
    let created =
        state
            .users()
            .create(&email, &hash)
            .await
            .map_err(|error| AppError::Unavailable {
                reason: error.to_string(),
                // Not "nothing was created": the insert may have been applied with its answer
                // lost, and then the retry finds the account (409), with this password.
                detail: "the account store (Cassandra) is unavailable right now; retry later (a retry answered 409 means this request created the account, with this password)",
                retry_after: Duration::from_secs(1),
            })?;
    if !created {
        return Err(AppError::Conflict(
            "an account with this email already exists".into(),
        ));
    }
    tracing::info!("account registered");
    Ok((StatusCode::CREATED, "User registered successfully"))
}

/// Log in and receive a token.
#[utoipa::path(
    post,
    path = "/login",
    request_body = Credentials,
    responses(
        (status = 200, description = "A token", body = TokenResponse),
        (status = 400, description = "Malformed body", body = Problem),
        (status = 401, description = "Invalid email or password (one message for both)", body = Problem),
        (status = 429, description = "Too many failed logins; see Retry-After", body = Problem),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    JsonBody(credentials): JsonBody<Credentials>,
) -> Result<Json<TokenResponse>, AppError> {
    let invalid = || AppError::Unauthorized("invalid email or password".into());
    // A malformed email cannot match an account; answer like any other failure.
    let email = normalize_email(&credentials.email).unwrap_or_else(|_| credentials.email.clone());
    let limiter = state.rate_limiter();
    let address = client_address::limit_key(address);
    // Cheap and read-only: a client over its limit costs no account lookup.
    limiter.check_login(&email, &address).await?;
    let stored =
        state
            .users()
            .password_hash(&email)
            .await
            .map_err(|error| AppError::Unavailable {
                reason: error.to_string(),
                detail: "the account store (Cassandra) is unavailable right now; nobody can log in until it is back, retry later",
                retry_after: Duration::from_secs(1),
            })?;
    // The slot is taken, atomically, when a bcrypt thread is ready for this password: concurrent
    // guesses cannot all pass a check made before any of them failed, and a slot is held for the
    // hash, not for the wait in the pool's queue. Runs bcrypt whether or not the account exists,
    // so timing does not reveal which.
    let verified = state
        .passwords()
        .verify_admitted(
            credentials.password,
            stored,
            limiter.reserve_login(&email, &address),
        )
        .await;
    let (attempt, matched) = match verified {
        Ok(verified) => verified,
        Err(Refused::NotAdmitted(error)) => return Err(error),
        Err(Refused::Failed(error)) => return Err(AppError::internal("verify password", error)),
    };
    if !matched {
        attempt.failed();
        return Err(invalid());
    }
    attempt.succeeded().await;
    let token = state
        .tokens()
        .issue(&email, now_unix_seconds())
        .map_err(|error| AppError::internal("sign token", error))?;
    Ok(Json(TokenResponse { token }))
}

/// Delete your account; its existing tokens stop working.
#[utoipa::path(
    delete,
    path = "/delete-user",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "User deleted successfully", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or malformed Authorization header", body = Problem),
        (status = 403, description = "Invalid, expired or revoked token", body = Problem),
        (status = 404, description = "The account no longer exists", body = Problem),
    )
)]
pub async fn delete_user(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<&'static str, AppError> {
    // Revoke first: if the delete then fails, the account survives but its old tokens are dead,
    // which is the safe way round.
    state.revoke_tokens(&user.email, now_unix_seconds()).await?;
    let deleted =
        state
            .users()
            .delete(&user.email)
            .await
            .map_err(|error| AppError::Unavailable {
                reason: error.to_string(),
                detail: "the account store (Cassandra) is unavailable right now; the account was not deleted, retry later",
                retry_after: Duration::from_secs(1),
            })?;
    if !deleted {
        return Err(AppError::NotFound("account".into()));
    }
    tracing::info!("account deleted");
    Ok("User deleted successfully")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email(" Customer@Example.COM ").unwrap(),
            "customer@example.com"
        );
        for bad in [
            "",
            "no-at",
            "@example.com",
            "a@localhost",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn password_length_is_bounded_by_bcrypt() {
        assert!(check_password("securepassword123").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(73)).is_err());
    }
}
