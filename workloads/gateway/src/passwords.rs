//! Password hashing with bcrypt, kept away from order intake.
//!
//! A bcrypt hash at cost 12 takes about a quarter of a second of CPU. Run on the async executor,
//! a burst of logins would stall every order request queued behind it. Here hashes run on a small
//! pool of dedicated threads under Linux's `SCHED_IDLE` policy: they get the CPU only when nothing
//! else wants it, so order intake keeps its latency while logins take what is left (and queue
//! when nothing is). Unknown emails are checked against a dummy hash of the same cost, so a login
//! takes about as long whether or not the account exists (no account enumeration by timing).
//!
//! A job whose caller is gone by the time a thread takes it (the client disconnected, the
//! request timed out: the handler's future was dropped) is skipped, not hashed: a flood of
//! abandoned logins costs a queue slot each, not a quarter of a second of CPU. A login's hash is
//! also admitted only when a thread is ready for it ([`Passwords::verify_admitted`]: the rate
//! limiter takes its slot then). The metrics `bcrypt_jobs_queued_total` and
//! `bcrypt_jobs_total{outcome="run"|"skipped"|"refused"}` count it.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use thread_priority::ThreadPriority;
use thread_priority::unix::{
    NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
    thread_native_id,
};
use tokio::sync::oneshot;

/// Queued hashing jobs beyond which callers wait for room (backpressure on a login flood).
const QUEUE_CAPACITY: usize = 256;

/// How long a thread that took a job waits for its caller's admission (a Redis round trip, whose
/// own timeout is 3 s) before it skips the job.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// The bcrypt work of the gateway.
#[derive(Debug, Clone)]
pub struct Passwords {
    cost: u32,
    jobs: flume::Sender<Job>,
    /// A hash of a random password at `cost`, verified against when the account does not exist.
    dummy_hash: Arc<str>,
    metrics: PasswordMetrics,
}

/// What the bcrypt pool did, for Prometheus.
#[derive(Debug, Clone, Default)]
pub struct PasswordMetrics {
    queued: Counter,
    jobs: Family<JobOutcome, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobOutcome {
    /// `run`: hashed; `skipped`: its caller was gone before a thread took it; `refused`: its
    /// caller's admission (the login rate limit) refused it when its turn came.
    outcome: &'static str,
}

impl PasswordMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        let registry = registry.sub_registry_with_prefix("bcrypt");
        registry.register(
            "jobs_queued",
            "bcrypt jobs handed to the pool",
            metrics.queued.clone(),
        );
        registry.register(
            "jobs",
            "bcrypt jobs the pool took, by outcome: run, skipped (the request was gone) or refused (rate limited)",
            metrics.jobs.clone(),
        );
        metrics
    }

    /// Metrics that count but are served nowhere (tests, benchmarks).
    pub fn unregistered() -> Self {
        Self::default()
    }

    /// Jobs handed to the pool so far.
    pub fn queued(&self) -> u64 {
        self.queued.get()
    }

    /// Jobs hashed so far.
    pub fn run(&self) -> u64 {
        self.jobs
            .get_or_create(&JobOutcome { outcome: "run" })
            .get()
    }

    /// Jobs skipped so far because their caller was gone.
    pub fn skipped(&self) -> u64 {
        self.jobs
            .get_or_create(&JobOutcome { outcome: "skipped" })
            .get()
    }

    /// Jobs refused so far by their caller's admission.
    pub fn refused(&self) -> u64 {
        self.jobs
            .get_or_create(&JobOutcome { outcome: "refused" })
            .get()
    }

    fn count(&self, outcome: &'static str) {
        self.jobs.get_or_create(&JobOutcome { outcome }).inc();
    }
}

/// Why [`Passwords::verify_admitted`] did not verify.
#[derive(Debug)]
pub enum Refused<E> {
    /// Admission said no; nothing was hashed.
    NotAdmitted(E),
    Failed(PasswordError),
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
    pub async fn new(
        cost: u32,
        threads: usize,
        metrics: PasswordMetrics,
    ) -> Result<Self, PasswordError> {
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
            metrics,
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

    pub fn metrics(&self) -> &PasswordMetrics {
        &self.metrics
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
        Ok(exists && matched_or_unreadable(matched))
    }

    /// [`Self::verify`], but only once `admit` allows it, awaited when a thread is ready to hash
    /// this password and not before: what `admit` takes (a rate-limit slot) is held for the hash
    /// itself, not for the time the job waited in the queue. Refused, nothing is hashed.
    pub async fn verify_admitted<A, E>(
        &self,
        password: String,
        stored: Option<String>,
        admit: impl Future<Output = Result<A, E>>,
    ) -> Result<(A, bool), Refused<E>> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let (admitted, matched) = self
            .run_admitted(move || bcrypt::verify(password, &hash), admit)
            .await?;
        Ok((admitted, exists && matched_or_unreadable(matched)))
    }

    /// Queues `work` and waits for its result; skipped if the caller's future was dropped before
    /// a thread took it.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let (done, result) = oneshot::channel();
        let metrics = self.metrics.clone();
        let job: Job = Box::new(move || {
            // `result` is dropped with the caller's future: nobody waits for this hash.
            if done.is_closed() {
                metrics.count("skipped");
                return;
            }
            metrics.count("run");
            // The caller may still go while it runs; the answer is then dropped.
            let _ = done.send(work());
        });
        self.queue(job).await?;
        result.await.map_err(|_| PasswordError::WorkersGone)
    }

    /// Hands `job` to the pool, waiting for room. Dropped while waiting, it is never queued.
    async fn queue(&self, job: Job) -> Result<(), PasswordError> {
        self.jobs
            .send_async(job)
            .await
            .map_err(|_| PasswordError::WorkersGone)?;
        self.metrics.queued.inc();
        Ok(())
    }

    /// Queues `work`; when a thread takes it, awaits `admit` (the thread waits for the answer)
    /// and runs it only if admitted. Skipped if the caller's future was dropped by then.
    async fn run_admitted<T: Send + 'static, A, E>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
        admit: impl Future<Output = Result<A, E>>,
    ) -> Result<(A, T), Refused<E>> {
        let gone = || Refused::Failed(PasswordError::WorkersGone);
        let (done, result) = oneshot::channel();
        // The thread hands over a way to answer it when it takes the job.
        let (turn, taken) = oneshot::channel::<std::sync::mpsc::SyncSender<bool>>();
        let metrics = self.metrics.clone();
        let job: Job = Box::new(move || {
            let (answer, admission) = std::sync::mpsc::sync_channel(1);
            // `result` and `taken` are dropped with the caller's future: nobody waits for it.
            if done.is_closed() || turn.send(answer).is_err() {
                metrics.count("skipped");
                return;
            }
            match admission.recv_timeout(ADMISSION_TIMEOUT) {
                Ok(true) => {
                    metrics.count("run");
                    // The caller may still go while it runs; the answer is then dropped.
                    let _ = done.send(work());
                }
                Ok(false) => metrics.count("refused"),
                // The caller went away while deciding, or took too long.
                Err(_) => metrics.count("skipped"),
            }
        });
        self.queue(job).await.map_err(Refused::Failed)?;
        let answer = taken.await.map_err(|_| gone())?;
        match admit.await {
            Ok(admitted) => {
                let _ = answer.send(true);
                let value = result.await.map_err(|_| gone())?;
                Ok((admitted, value))
            }
            Err(error) => {
                let _ = answer.send(false);
                Err(Refused::NotAdmitted(error))
            }
        }
    }
}

/// A stored hash that fails to parse is a mismatch (and logged), not a 500 that would tell the
/// client something about the account.
fn matched_or_unreadable(matched: Result<bool, bcrypt::BcryptError>) -> bool {
    matched.unwrap_or_else(|error| {
        tracing::error!(%error, "stored password hash is unreadable");
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() {
        // The minimum cost keeps the test fast; the logic does not depend on it.
        let passwords = Passwords::new(4, 1, PasswordMetrics::unregistered())
            .await
            .unwrap();
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
    async fn a_job_whose_caller_is_gone_is_skipped_not_hashed() {
        let metrics = PasswordMetrics::unregistered();
        let passwords = Passwords::new(4, 1, metrics.clone()).await.unwrap();
        let (before_run, before_skipped) = (metrics.run(), metrics.skipped());
        // Hold the only thread, so the next jobs wait in the queue.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (held_tx, held) = oneshot::channel::<()>();
        let holder = tokio::spawn({
            let passwords = passwords.clone();
            async move {
                passwords
                    .run(move || {
                        let _ = held_tx.send(());
                        let _ = hold.recv();
                    })
                    .await
            }
        });
        held.await.unwrap();
        let abandoned: Vec<_> = (0..5)
            .map(|_| {
                let passwords = passwords.clone();
                tokio::spawn(async move { passwords.hash("abandoned".into()).await })
            })
            .collect();
        while metrics.queued() < 1 + 1 + 5 {
            tokio::task::yield_now().await;
        }
        for task in &abandoned {
            task.abort();
        }
        for task in abandoned {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        // A job queued after them runs, so every earlier one was taken by then.
        assert!(passwords.hash("kept".into()).await.is_ok());
        let run = metrics.run() - before_run;
        let skipped = metrics.skipped() - before_skipped;
        println!(
            "5 abandoned jobs behind a busy thread: {run} run (the holder and the last), {skipped} skipped"
        );
        assert_eq!((run, skipped), (2, 5));
    }

    #[tokio::test]
    async fn admission_is_asked_only_when_a_thread_is_ready_and_a_refusal_hashes_nothing() {
        use std::sync::atomic::{AtomicBool, Ordering};

        let metrics = PasswordMetrics::unregistered();
        let passwords = Passwords::new(4, 1, metrics.clone()).await.unwrap();
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        let run_before = metrics.run();
        // Hold the only thread.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (held_tx, held) = oneshot::channel::<()>();
        let holder = tokio::spawn({
            let passwords = passwords.clone();
            async move {
                passwords
                    .run(move || {
                        let _ = held_tx.send(());
                        let _ = hold.recv();
                    })
                    .await
            }
        });
        held.await.unwrap();
        let asked = Arc::new(AtomicBool::new(false));
        let queued_before = metrics.queued();
        let waiting = tokio::spawn({
            let (passwords, asked, hash) = (passwords.clone(), asked.clone(), hash.clone());
            async move {
                let admit = async move {
                    asked.store(true, Ordering::SeqCst);
                    Ok::<_, &str>("slot")
                };
                passwords
                    .verify_admitted("correct horse".into(), Some(hash), admit)
                    .await
            }
        });
        while metrics.queued() == queued_before {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            !asked.load(Ordering::SeqCst),
            "admission asked while the job waited in the queue"
        );
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        let (slot, matched) = waiting.await.unwrap().unwrap();
        assert!(asked.load(Ordering::SeqCst));
        assert_eq!((slot, matched), ("slot", true));

        let refused = passwords
            .verify_admitted("correct horse".into(), Some(hash), async {
                Err::<(), _>("limited")
            })
            .await;
        assert!(matches!(refused, Err(Refused::NotAdmitted("limited"))));
        // A job after it on the one thread: the refused job is done with by then.
        passwords.hash("after".into()).await.unwrap();
        // The holder, the admitted verify and the last hash ran; the refused one did not.
        assert_eq!(metrics.run() - run_before, 3);
        assert_eq!(metrics.refused(), 1);
    }

    #[tokio::test]
    async fn hashing_runs_on_idle_priority_threads() {
        let passwords = Passwords::new(4, 1, PasswordMetrics::unregistered())
            .await
            .unwrap();
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
