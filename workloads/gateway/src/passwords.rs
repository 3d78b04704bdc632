//! Password hashing with bcrypt, kept away from order intake.
//!
//! A bcrypt hash at cost 12 takes about a quarter of a second of CPU. Run on the async executor,
//! a burst of logins would stall every order request queued behind it. Here hashes run on a small
//! pool of dedicated threads under Linux's `SCHED_IDLE` policy: they get the CPU only when nothing
//! else wants it, so order intake keeps its latency while logins take what is left (and queue
//! when nothing is). Unknown emails are checked against a dummy hash of the same cost, so a login
//! takes about as long whether or not the account exists (no account enumeration by timing).

use std::sync::Arc;

use thread_priority::ThreadPriority;
use thread_priority::unix::{
    NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
    thread_native_id,
};
use tokio::sync::oneshot;

/// Queued hashing jobs beyond which callers wait for room (backpressure on a login flood).
const QUEUE_CAPACITY: usize = 256;

type Job = Box<dyn FnOnce() + Send>;

/// The bcrypt work of the gateway.
#[derive(Debug, Clone)]
pub struct Passwords {
    cost: u32,
    jobs: flume::Sender<Job>,
    /// A hash of a random password at `cost`, verified against when the account does not exist.
    dummy_hash: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("bcrypt failed: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("the password workers stopped")]
    WorkersGone,
    #[error("failed to start a password worker: {0}")]
    Spawn(#[from] std::io::Error),
}

impl Passwords {
    /// Starts `threads` hashing threads (at least one) and computes the dummy hash.
    pub async fn new(cost: u32, threads: usize) -> Result<Self, PasswordError> {
        let (jobs, queue) = flume::bounded::<Job>(QUEUE_CAPACITY);
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{index}"))
                .spawn(move || {
                    if let Err(error) = set_thread_priority_and_policy(
                        thread_native_id(),
                        ThreadPriority::Min,
                        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
                    ) {
                        // Still correct, only less kind to order intake under load.
                        tracing::warn!(?error, "cannot lower the bcrypt thread's priority");
                    }
                    // Ends when every sender (every clone of `Passwords`) is dropped.
                    for job in queue.iter() {
                        job();
                    }
                })?;
        }
        let mut passwords = Self {
            cost,
            jobs,
            dummy_hash: Arc::from(""),
        };
        let dummy_password = format!("{:032x}", rand::random::<u128>());
        let dummy_hash = passwords
            .run(move || bcrypt::hash(dummy_password, cost))
            .await??;
        passwords.dummy_hash = dummy_hash.into();
        Ok(passwords)
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let cost = self.cost;
        Ok(self.run(move || bcrypt::hash(password, cost)).await??)
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
        let matched = self.run(move || bcrypt::verify(password, &hash)).await?;
        match matched {
            Ok(matched) => Ok(exists && matched),
            // A stored hash that fails to parse is a mismatch (and logged), not a 500 that would
            // tell the client something about the account.
            Err(error) => {
                tracing::error!(%error, "stored password hash is unreadable");
                Ok(false)
            }
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have gone (client disconnected); nothing to do then.
            let _ = done.send(work());
        });
        self.jobs
            .send_async(job)
            .await
            .map_err(|_| PasswordError::WorkersGone)?;
        result.await.map_err(|_| PasswordError::WorkersGone)
    }
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

    #[tokio::test]
    async fn hashing_runs_on_idle_priority_threads() {
        let passwords = Passwords::new(4, 1).await.unwrap();
        let policy = passwords
            .run(|| {
                thread_priority::unix::thread_schedule_policy().map(|policy| {
                    policy == ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
                })
            })
            .await
            .unwrap();
        assert_eq!(policy.ok(), Some(true));
    }
}
