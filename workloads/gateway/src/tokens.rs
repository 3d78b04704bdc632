//! HS256 access tokens: issuing at login and verifying on protected routes.
//!
//! Stricter than the seed: only HS256 is accepted (so `alg: none` and algorithm-confusion tokens
//! fail), `sub`, `iat`, `exp`, `iss` and `aud` are all required and checked, expiry allows only a
//! small clock-skew leeway, a token claiming to be issued in the future is refused, and the
//! signing secret must be at least 32 bytes.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Issuer and audience: tokens of another service sharing the secret are not accepted here.
pub const ISSUER: &str = "order-pipeline-gateway";
pub const AUDIENCE: &str = "order-pipeline";
/// Tolerated clock difference between gateway replicas.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The shortest secret accepted: 256 bits, the HS256 key size.
pub const MIN_SECRET_BYTES: usize = 32;

/// The token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account's email.
    pub sub: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

/// Why a token was refused. Every variant maps to 403 (the seed's split: 401 is for a missing or
/// malformed header, 403 for a token that is present but not acceptable).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the token was issued in the future")]
    IssuedInFuture,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: Duration,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenService")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes, got {0}")]
pub struct WeakSecret(pub usize);

impl TokenService {
    pub fn new(secret: &[u8], lifetime: Duration) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret(secret.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["sub", "iat", "exp", "iss", "aud"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            lifetime,
        })
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Issues a token for `email`, valid from `now` (unix seconds) for the configured lifetime.
    pub fn issue(&self, email: &str, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: email.to_owned(),
            iat: now,
            exp: now + self.lifetime.as_secs(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Verifies signature, algorithm, claims and times, as of `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                kind => TokenError::Invalid(describe(kind)),
            })?;
        let claims = data.claims;
        // jsonwebtoken checks `exp` against the system clock; check it against `now` as well so
        // the decision is the same function of its inputs everywhere (and testable).
        if claims.exp + LEEWAY.as_secs() < now {
            return Err(TokenError::Expired);
        }
        if claims.iat > now + LEEWAY.as_secs() {
            return Err(TokenError::IssuedInFuture);
        }
        Ok(claims)
    }
}

/// A short, safe reason (no token contents).
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "algorithm not allowed (HS256 only)".into()
        }
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token".into(),
        _ => "not acceptable".into(),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::get_current_timestamp;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn service() -> TokenService {
        TokenService::new(SECRET, Duration::from_secs(3600)).unwrap()
    }

    fn encode_raw(header: &Header, claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn claims_json(now: u64) -> serde_json::Value {
        serde_json::json!({"sub": "a@example.com", "iat": now, "exp": now + 3600, "iss": ISSUER, "aud": AUDIENCE})
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            TokenService::new(b"short", Duration::from_secs(1)).unwrap_err(),
            WeakSecret(5)
        );
    }

    #[test]
    fn issued_tokens_verify_with_all_claims() {
        let now = get_current_timestamp();
        let token = service().issue("a@example.com", now).unwrap();
        let claims = service().verify(&token, now).unwrap();
        assert_eq!(claims.sub, "a@example.com");
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (ISSUER, AUDIENCE)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let now = get_current_timestamp();
        // An unsigned token: header {"alg":"none"} and an empty signature.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims_json(now).to_string().as_bytes());
        let unsigned = format!("{header}.{payload}.");
        assert!(matches!(
            service().verify(&unsigned, now),
            Err(TokenError::Invalid(_))
        ));

        let hs512 = encode_raw(&Header::new(Algorithm::HS512), &claims_json(now), SECRET);
        assert_eq!(
            service().verify(&hs512, now),
            Err(TokenError::Invalid(
                "algorithm not allowed (HS256 only)".into()
            ))
        );
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let now = get_current_timestamp();
        let token = service().issue("a@example.com", now).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged = claims_json(now)
            .to_string()
            .replace("a@example.com", "b@example.com");
        parts[1] = URL_SAFE_NO_PAD.encode(forged.as_bytes());
        assert_eq!(
            service().verify(&parts.join("."), now),
            Err(TokenError::Invalid("bad signature".into()))
        );

        let other_secret = encode_raw(
            &Header::new(Algorithm::HS256),
            &claims_json(now),
            b"another-secret-another-secret-xx",
        );
        assert!(service().verify(&other_secret, now).is_err());

        let mut wrong_audience = claims_json(now);
        wrong_audience["aud"] = "someone-else".into();
        let token = encode_raw(&Header::new(Algorithm::HS256), &wrong_audience, SECRET);
        assert_eq!(
            service().verify(&token, now),
            Err(TokenError::Invalid("wrong audience".into()))
        );
    }

    #[test]
    fn expiry_and_missing_claims() {
        let now = get_current_timestamp();
        let mut expired = claims_json(now - 7200);
        expired["exp"] = (now - 3600).into();
        let token = encode_raw(&Header::new(Algorithm::HS256), &expired, SECRET);
        assert_eq!(service().verify(&token, now), Err(TokenError::Expired));

        // Within the leeway an expired-by-seconds token still passes (clock skew).
        let mut skewed = claims_json(now - 3600);
        skewed["exp"] = (now - 5).into();
        let token = encode_raw(&Header::new(Algorithm::HS256), &skewed, SECRET);
        assert!(service().verify(&token, now).is_ok());

        let mut no_exp = claims_json(now);
        no_exp.as_object_mut().unwrap().remove("exp");
        let token = encode_raw(&Header::new(Algorithm::HS256), &no_exp, SECRET);
        assert!(matches!(
            service().verify(&token, now),
            Err(TokenError::Invalid(_))
        ));

        let future = encode_raw(
            &Header::new(Algorithm::HS256),
            &claims_json(now + 600),
            SECRET,
        );
        assert_eq!(
            service().verify(&future, now),
            Err(TokenError::IssuedInFuture)
        );
    }
}
