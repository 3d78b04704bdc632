//! One test's own share of the shared environment: a RabbitMQ vhost (so the pipeline's fixed
//! exchange and queue names are its alone), a Redis key prefix, and a Redis connection of the
//! test's own for seeding and inspecting keys. Everything is removed when the [`Isolation`] is
//! dropped, also when the test panics: a `stop()` that a failed assertion skips left vhosts and
//! keys behind in every later run.

use std::collections::BTreeMap;

use pipeline_contract::env;
use pipeline_contract::keys::Keys;
use redis::aio::ConnectionManager;

use crate::{Env, Vhost, delete_redis_prefix, unique};

/// How long the cleanup on drop may take.
const CLEANUP_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// A vhost, a key prefix and a Redis connection, cleaned up on drop.
pub struct Isolation {
    pub env: Env,
    /// The test's keys, under its own prefix.
    pub keys: Keys,
    /// The test's own connection to the environment's Redis (as the environment's admin user).
    pub redis: ConnectionManager,
    vhost: Option<Vhost>,
    /// The Redis ACL users made through [`Self::redis_user`], deleted with the prefix.
    redis_users: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isolation")
            .field("prefix", &self.keys.prefix())
            .field("vhost", &self.vhost.as_ref().map(|vhost| &vhost.name))
            .finish_non_exhaustive()
    }
}

impl Isolation {
    /// A fresh vhost and key prefix, both named after `label`.
    pub async fn new(label: &str) -> Self {
        let env = Env::load();
        let vhost = Vhost::create(&env, label).await;
        Self::with(env, label, Some(vhost)).await
    }

    /// A key prefix only, for a test that touches no RabbitMQ.
    pub async fn redis_only(label: &str) -> Self {
        Self::with(Env::load(), label, None).await
    }

    async fn with(env: Env, label: &str, vhost: Option<Vhost>) -> Self {
        let keys = Keys::new(format!("{}:", unique(label)));
        let redis = ConnectionManager::new(
            redis::Client::open(env.require("OP_REDIS_URL")).expect("OP_REDIS_URL is a Redis URL"),
        )
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the environment's Redis: {error}"));
        Self {
            env,
            keys,
            redis,
            vhost,
            redis_users: std::sync::Mutex::default(),
        }
    }

    /// The test's vhost; panics for an isolation made by [`Self::redis_only`].
    pub fn vhost(&self) -> &Vhost {
        self.vhost
            .as_ref()
            .expect("this isolation has no vhost (made by redis_only)")
    }

    /// `workload`'s own Redis user, with exactly its grants under this prefix
    /// ([`crate::access::redis_user`]); deleted when the isolation is dropped.
    pub async fn redis_user(
        &self,
        workload: pipeline_contract::Workload,
    ) -> crate::access::Credentials {
        let user =
            crate::access::redis_user(&self.env.require("OP_REDIS_URL"), workload, &self.keys)
                .await;
        self.redis_users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(user.username.clone());
        user
    }

    /// A workload's environment for this isolation: the vhost's URLs (with the environment's
    /// user), the environment's Redis, and the key prefix.
    pub fn variables(&self) -> BTreeMap<String, String> {
        let mut variables = BTreeMap::from([
            (
                env::REDIS_ADDR.to_owned(),
                self.env.require("OP_REDIS_ADDR"),
            ),
            (
                env::REDIS_KEY_PREFIX.to_owned(),
                self.keys.prefix().to_owned(),
            ),
        ]);
        if let Some(vhost) = &self.vhost {
            variables.insert(env::RABBITMQ_URLS.to_owned(), vhost.urls.join(","));
        }
        variables
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        let vhost = self.vhost.take();
        let users = std::mem::take(
            &mut *self
                .redis_users
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let prefix = self.keys.prefix().to_owned();
        let redis_url = self.env.require("OP_REDIS_URL");
        // Drop cannot await, and runs on the test's runtime thread (which must not block on
        // another future) or while a panic unwinds: the cleanup gets a thread and a runtime of
        // its own, and the drop waits for it.
        let label = prefix.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            let cleanup = async {
                delete_redis_prefix(&redis_url, &prefix).await;
                for user in users {
                    crate::access::delete_redis_user(&redis_url, &user).await;
                }
                if let Some(vhost) = vhost {
                    vhost.delete().await;
                }
            };
            // A server that stopped answering must not hang the test that is ending.
            // The timer is made inside the runtime: it needs its time driver.
            let within =
                runtime.block_on(async { tokio::time::timeout(CLEANUP_WITHIN, cleanup).await });
            if within.is_err() {
                eprintln!(
                    "cleaning up the test's vhost and key prefix took over {CLEANUP_WITHIN:?}; left behind"
                );
            }
        });
        if cleanup.join().is_err() {
            eprintln!("cleaning up the test's vhost and key prefix {label:?} panicked");
        }
    }
}
