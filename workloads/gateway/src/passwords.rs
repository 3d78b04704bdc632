//! Password hashing with bcrypt, kept off the async executor.
//!
//! A bcrypt hash at cost 12 takes about a quarter of a second of CPU. Run on the executor, a burst
//! of logins would stall every order request queued behind it; here each hash runs on the
//! blocking pool, and a semaphore caps how many run at once so logins can never take every core
//! from order intake. Unknown emails are checked against a dummy hash of the same cost, so a
//! login takes about as long whether or not the account exists (no account enumeration by timing).

use std::sync::Arc;

use tokio::sync::Semaphore;

/// The bcrypt work of the gateway.
#[derive(Debug, Clone)]
pub struct Passwords {
    cost: u32,
    permits: Arc<Semaphore>,
    /// A hash of a random password at `cost`, verified against when the account does not exist.
    dummy_hash: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("bcrypt failed: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("the password worker stopped: {0}")]
    Worker(String),
}

impl Passwords {
    /// `concurrency` is how many hashes may run at once (at least one).
    pub async fn new(cost: u32, concurrency: usize) -> Result<Self, PasswordError> {
        let dummy_password = format!("{:032x}", rand_u128());
        let dummy_hash = run_blocking(move || bcrypt::hash(dummy_password, cost)).await??;
        Ok(Self {
            cost,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let cost = self.cost;
        let _permit = self.acquire().await?;
        Ok(run_blocking(move || bcrypt::hash(password, cost)).await??)
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no account,
    /// so both paths cost the same. Returns whether it matched (always `false` without an account).
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let _permit = self.acquire().await?;
        // A stored hash that fails to parse is treated as a mismatch (and logged), not a 500 that
        // would tell the client something about the account.
        let matched = run_blocking(move || bcrypt::verify(password, &hash)).await?;
        match matched {
            Ok(matched) => Ok(exists && matched),
            Err(error) => {
                tracing::error!(%error, "stored password hash is unreadable");
                Ok(false)
            }
        }
    }

    async fn acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PasswordError> {
        self.permits
            .acquire()
            .await
            .map_err(|error| PasswordError::Worker(error.to_string()))
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| PasswordError::Worker(error.to_string()))
}

fn rand_u128() -> u128 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() {
        // The minimum cost keeps the test fast; the logic does not depend on it.
        let passwords = Passwords::new(4, 1).await.unwrap();
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!passwords.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(
            !passwords
                .verify("correct horse".into(), None)
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("x".into(), Some("not a hash".into()))
                .await
                .unwrap()
        );
    }
}
