//! What the operator and the workloads must agree on, written once.
//!
//! The operator wires each workload's Deployment from these constants (environment variable
//! names, ports, probe paths) and the workloads read their configuration through the same
//! constants, so a rename cannot break one side silently. The messaging topology (exchange, queue
//! and routing-key names) and the Redis key layout live here too, because the gateway, processor,
//! notifier and dashboard each touch a part of them.
//!
//! This crate does no I/O and depends on nothing but `serde`, so the operator can import it
//! without linking any workload's drivers.

#![forbid(unsafe_code)]

/// Environment variable names read by the workloads and set by the operator.
pub mod env {
    /// Comma-separated AMQP URLs of the RabbitMQ nodes, tried in order for failover (the seed's
    /// variable).
    pub const RABBITMQ_URLS: &str = "RABBITMQ_URLS";
    /// The RabbitMQ user, when the URLs carry no credentials. The workload percent-encodes it,
    /// with [`RABBITMQ_PASSWORD`], into every URL, so any character may appear in either.
    pub const RABBITMQ_USERNAME: &str = "RABBITMQ_USERNAME";
    /// The RabbitMQ user's password (with [`RABBITMQ_USERNAME`]).
    pub const RABBITMQ_PASSWORD: &str = "RABBITMQ_PASSWORD";
    /// `host:port` of Redis (the seed's variable).
    pub const REDIS_ADDR: &str = "REDIS_ADDR";
    /// Optional Redis password (the seed had none; managed and cloud Redis usually do).
    pub const REDIS_PASSWORD: &str = "REDIS_PASSWORD";
    /// Optional Redis ACL user to log in as with [`REDIS_PASSWORD`] (Redis 6 and later); without
    /// it the password is the `default` user's.
    pub const REDIS_USERNAME: &str = "REDIS_USERNAME";
    /// Comma-separated `host:port` contact points of Cassandra (the seed's variable).
    pub const CASSANDRA_ADDR: &str = "CASSANDRA_ADDR";
    pub const CASSANDRA_USER: &str = "CASSANDRA_USER";
    pub const CASSANDRA_PASSWORD: &str = "CASSANDRA_PASSWORD";
    /// HMAC key for the gateway's HS256 tokens (the seed's variable). At least 32 bytes.
    pub const JWT_SECRET: &str = "JWT_SECRET";
    /// Port of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub const ADMIN_PORT: &str = "ADMIN_PORT";
    /// Port of the business listener (gateway and dashboard only).
    pub const HTTP_PORT: &str = "HTTP_PORT";
    /// Prefix for every Redis key (empty by default: the seed's exact keys).
    pub const REDIS_KEY_PREFIX: &str = "REDIS_KEY_PREFIX";
    /// Cassandra keyspace for accounts (the seed's `users_keyspace` by default).
    pub const CASSANDRA_KEYSPACE: &str = "CASSANDRA_KEYSPACE";
    /// Replication factor used when the gateway creates the keyspace.
    pub const CASSANDRA_REPLICATION_FACTOR: &str = "CASSANDRA_REPLICATION_FACTOR";
    /// Token lifetime in seconds (the seed: one hour).
    pub const JWT_TTL_SECONDS: &str = "JWT_TTL_SECONDS";
    /// bcrypt cost for new password hashes (default 12).
    pub const BCRYPT_COST: &str = "BCRYPT_COST";
    /// Comma-separated addresses and CIDR ranges of the reverse proxies (ingress, load balancer)
    /// in front of the gateway, whose `X-Forwarded-For` is believed (empty by default: the
    /// header is ignored and the TCP peer is the client).
    pub const TRUSTED_PROXIES: &str = "TRUSTED_PROXIES";
    /// Registrations allowed from one client address per window (default 10).
    pub const REGISTER_LIMIT_PER_ADDRESS: &str = "REGISTER_LIMIT_PER_ADDRESS";
    /// The registration limit's window in seconds (default 60).
    pub const REGISTER_LIMIT_WINDOW_SECONDS: &str = "REGISTER_LIMIT_WINDOW_SECONDS";
    /// How long a client may take to send a request's headers, in milliseconds, on the gateway's
    /// and dashboard's business port (default 10000). It also bounds how long an idle keep-alive
    /// connection is kept.
    pub const HTTP_HEADER_READ_TIMEOUT_MS: &str = "HTTP_HEADER_READ_TIMEOUT_MS";
    /// How long one request may take from its headers to its answer, body upload included, in
    /// milliseconds (default 30000); then it is answered 503.
    pub const HTTP_REQUEST_TIMEOUT_MS: &str = "HTTP_REQUEST_TIMEOUT_MS";
    /// Connections served at once on the business port (default 1024); more wait to be accepted.
    pub const HTTP_MAX_CONNECTIONS: &str = "HTTP_MAX_CONNECTIONS";
    /// RabbitMQ prefetch per consumer (the seed: 10).
    pub const PREFETCH: &str = "PREFETCH";
    /// The notifier's sink: `log` (the seed's stub, the default) or `webhook`.
    pub const NOTIFY_SINK: &str = "NOTIFY_SINK";
    /// Where the webhook sink POSTs notifications.
    pub const NOTIFY_WEBHOOK_URL: &str = "NOTIFY_WEBHOOK_URL";
    /// Per-request timeout of the webhook sink, in milliseconds (default 5000).
    pub const NOTIFY_WEBHOOK_TIMEOUT_MS: &str = "NOTIFY_WEBHOOK_TIMEOUT_MS";
    /// How long the log sink takes per notification, in milliseconds (default 0; the seed's stub
    /// took 1000), to model a slow provider.
    pub const NOTIFY_LOG_DELAY_MS: &str = "NOTIFY_LOG_DELAY_MS";
    /// `json` or `text`; by default JSON unless stdout is a terminal.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    /// A `tracing` filter such as `info` or `gateway=debug,info`.
    pub const LOG_LEVEL: &str = "LOG_LEVEL";
}

/// Ports, as the seed documents them where it does.
pub mod ports {
    /// The API gateway's business port (the seed's `8080`).
    pub const GATEWAY_HTTP: u16 = 8080;
    /// The dashboard's business port (the seed's `8081`).
    pub const DASHBOARD_HTTP: u16 = 8081;
    /// The admin port every workload serves probes and metrics on, apart from business traffic
    /// so a flood of orders can never starve a liveness probe of a listener.
    pub const ADMIN: u16 = 9090;
}

/// The Cassandra keyspace of the accounts, unless [`env::CASSANDRA_KEYSPACE`] names another: the
/// seed's. The gateway creates it; a managed Cassandra's credentials Job grants the workloads'
/// role on it.
pub const ACCOUNTS_KEYSPACE: &str = "users_keyspace";

/// The repository part of every image the project builds (`order-pipeline/gateway:<version>`,
/// `order-pipeline/operator:<version>`): `cargo xtask images` names them so, and the operator
/// runs its workloads from them at its own version.
pub const IMAGE_REPOSITORY: &str = "order-pipeline";

/// Paths served on the admin port.
pub mod probes {
    /// Alive: the process runs its event loop. Never checks dependencies, so a broker outage does
    /// not make Kubernetes restart every pod at once.
    pub const LIVENESS: &str = "/healthz";
    /// Ready: every dependency the workload needs is connected.
    pub const READINESS: &str = "/readyz";
    /// Prometheus text exposition.
    pub const METRICS: &str = "/metrics";
}

/// RabbitMQ exchanges, queues and routing keys (the seed's names).
pub mod topology {
    /// Durable direct exchange the gateway publishes accepted orders to.
    pub const ORDERS_EXCHANGE: &str = "orders.direct";
    /// Routing key of accepted orders on [`ORDERS_EXCHANGE`].
    pub const ORDERS_ROUTING_KEY: &str = "orders";
    /// The processor's queue, bound to [`ORDERS_EXCHANGE`].
    pub const ORDERS_QUEUE: &str = "orders.queue";
    /// Durable topic exchange the processor publishes order outcomes to.
    pub const EVENTS_EXCHANGE: &str = "orders.topic";
    pub const ORDER_CREATED: &str = "order.created";
    pub const ORDER_REJECTED: &str = "order.rejected";
    /// The notifier's queue, bound to [`EVENTS_EXCHANGE`] with [`ORDER_CREATED`].
    pub const NOTIFIER_QUEUE: &str = "notifier.queue";
    /// Queue arguments that make a queue a quorum queue: replicated across the cluster's nodes,
    /// so a node failure loses no confirmed message.
    pub const QUEUE_TYPE_ARGUMENT: &str = "x-queue-type";
    pub const QUORUM: &str = "quorum";
    /// Durable direct exchange for messages no consumer could handle; each work queue's dead
    /// letters are routed with the queue's name to [`dead_letter_queue`].
    pub const DEAD_LETTER_EXCHANGE: &str = "orders.dead-letter";
    /// Header carrying why a message was dead-lettered.
    pub const FAILURE_REASON_HEADER: &str = "x-failure-reason";
    /// The broker's own backstop: a message delivered this many times (for example because its
    /// consumer keeps crashing on it) is dead-lettered by RabbitMQ even if no consumer decides to.
    pub const DELIVERY_LIMIT: i64 = 50;

    /// The queue holding `queue`'s dead letters.
    pub fn dead_letter_queue(queue: &str) -> String {
        format!("{queue}.dead-letter")
    }

    /// The exchange the dead-letter command re-drives `queue`'s dead letters through: a fanout
    /// bound to `queue` alone, so the consumer allowed to publish to it can put messages back
    /// into its own queue and nowhere else (the default exchange would reach every queue).
    pub fn redrive_exchange(queue: &str) -> String {
        format!("{queue}.redrive")
    }

    /// How an exchange routes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ExchangeKind {
        Direct,
        Topic,
    }

    /// A work queue fed by one exchange binding, with its dead-letter queue. Declared by every
    /// workload that touches it, identically (the runtime builds the arguments), and the unit
    /// from which each workload's RabbitMQ permissions are derived ([`crate::access`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct WorkQueue {
        pub queue: &'static str,
        pub exchange: &'static str,
        pub exchange_kind: ExchangeKind,
        pub routing_key: &'static str,
    }

    /// The orders queue: declared by the gateway (so orders are routed before any processor
    /// ever ran) and the processor (which consumes it).
    pub const ORDERS: WorkQueue = WorkQueue {
        queue: ORDERS_QUEUE,
        exchange: ORDERS_EXCHANGE,
        exchange_kind: ExchangeKind::Direct,
        routing_key: ORDERS_ROUTING_KEY,
    };

    /// The notifier's queue: declared by the processor (so events are routed before any
    /// notifier ran) and the notifier (which consumes it).
    pub const NOTIFICATIONS: WorkQueue = WorkQueue {
        queue: NOTIFIER_QUEUE,
        exchange: EVENTS_EXCHANGE,
        exchange_kind: ExchangeKind::Topic,
        routing_key: ORDER_CREATED,
    };
}

pub mod access;
pub use access::Workload;

/// Redis key layout. Keys are built only through [`keys::Keys`] so every workload spells them
/// the same way.
pub mod keys {
    /// Builds Redis keys under an optional prefix. The default, empty prefix gives the seed's
    /// exact keys (`inventory:<sku>` keeps working with `redis-cli SET`); a prefix lets several
    /// pipelines (or parallel tests) share one Redis without seeing each other's data.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Keys {
        prefix: String,
    }

    impl Keys {
        pub fn new(prefix: impl Into<String>) -> Self {
            Self {
                prefix: prefix.into(),
            }
        }

        pub fn prefix(&self) -> &str {
            &self.prefix
        }

        /// Stock of a SKU, an integer.
        pub fn inventory(&self, sku: &str) -> String {
            format!("{}inventory:{sku}", self.prefix)
        }

        /// Idempotency claim of an order id, scoped to its owner so one user cannot block
        /// another's id. The value is the digest of the order body, so a retry with the same body
        /// is told apart from a reuse of the id for a different order. Order ids never contain
        /// `:` (the gateway validates them), so the owner part is unambiguous.
        pub fn idempotency(&self, owner: &str, order_id: &str) -> String {
            format!("{}idemp:{owner}:{order_id}", self.prefix)
        }

        /// The order's record: a hash whose fields ([`crate::order_fields`]) are each written by
        /// one workload, so no writer overwrites another's state.
        pub fn order(&self, owner: &str, order_id: &str) -> String {
            format!("{}order:{owner}:{order_id}", self.prefix)
        }

        /// The seed's notification status hash, read by the dashboard's `?order_id=`.
        pub fn notification(&self, order_id: &str) -> String {
            format!("{}notifications:{order_id}", self.prefix)
        }

        /// The notifier's short lease on sending one order's notification, so two replicas given
        /// the same event never both send it.
        pub fn notification_lease(&self, owner: &str, order_id: &str) -> String {
            format!("{}notify-lease:{owner}:{order_id}", self.prefix)
        }

        /// Orders the processor has applied (the seed's counter, read by the dashboard).
        pub fn processed_count(&self) -> String {
            format!("{}orders.processed.count", self.prefix)
        }

        /// When an account was deleted (unix seconds): tokens issued at or before it are refused.
        pub fn account_deleted(&self, email: &str) -> String {
            format!("{}account:deleted:{email}", self.prefix)
        }

        /// Login attempts per account that failed or are still running, for rate limiting.
        pub fn failed_logins_by_email(&self, email: &str) -> String {
            format!("{}ratelimit:login:email:{email}", self.prefix)
        }

        /// Login attempts per client address that failed or are still running, for rate limiting.
        pub fn failed_logins_by_address(&self, address: &str) -> String {
            format!("{}ratelimit:login:addr:{address}", self.prefix)
        }

        /// Registration counter per client address, for rate limiting.
        pub fn registrations_by_address(&self, address: &str) -> String {
            format!("{}ratelimit:register:addr:{address}", self.prefix)
        }
    }
}

/// How long an order's record (and so the processor's "already applied" mark) is kept: far
/// longer than any message can wait in a queue, so a redelivery always finds it.
pub const ORDER_RECORD_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// How long an order id's idempotency claim ([`keys::Keys::idempotency`]) is kept: a day longer
/// than the order's record, and the processor extends it when it applies the order, so the
/// claim outlives the "applied" mark. While the mark exists a reuse of the id is refused at the
/// gateway (409 or 422), never accepted and then skipped as "already applied".
pub const IDEMPOTENCY_CLAIM_TTL_SECONDS: u64 = ORDER_RECORD_TTL_SECONDS + 24 * 3600;

/// Fields of the order hash at [`keys::order`], each written by exactly one workload.
pub mod order_fields {
    /// Written by the gateway once the broker confirmed the order: unix milliseconds.
    pub const ACCEPTED_AT: &str = "accepted_at";
    pub const SKU: &str = "sku";
    pub const QTY: &str = "qty";
    /// Written by the processor, atomically with the stock change: `processed` or `rejected`.
    /// Its presence is what makes a redelivered order a no-op.
    pub const OUTCOME: &str = "outcome";
    pub const PROCESSED_AT: &str = "processed_at";
    /// Why an order was rejected (for example `out_of_stock`).
    pub const REASON: &str = "reason";
    /// Written by the notifier: `pending` before sending, `sent` after.
    pub const NOTIFICATION: &str = "notification";
    pub const NOTIFIED_AT: &str = "notified_at";
}

/// Messages on the wire (JSON).
pub mod messages {
    use serde::{Deserialize, Serialize};

    /// An accepted order, published by the gateway to [`crate::topology::ORDERS_EXCHANGE`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OrderPlaced {
        /// The client's order id, unique per owner.
        pub order_id: String,
        /// The owner's account (the token's subject).
        pub owner: String,
        pub sku: String,
        pub qty: u32,
        /// Unix milliseconds at which the gateway accepted it.
        pub accepted_at: u64,
    }

    impl OrderPlaced {
        /// The AMQP `message-id`: unique across owners.
        pub fn message_id(&self) -> String {
            format!("{}:{}", self.owner, self.order_id)
        }
    }

    /// What the processor decided.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Outcome {
        Processed,
        Rejected,
    }

    /// An order's outcome, published by the processor to [`crate::topology::EVENTS_EXCHANGE`]
    /// with routing key `order.created` or `order.rejected`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OrderOutcome {
        pub order_id: String,
        pub owner: String,
        pub sku: String,
        pub qty: u32,
        pub outcome: Outcome,
        /// Why it was rejected, when it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
        /// Unix milliseconds at which the processor applied it.
        pub processed_at: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::messages::*;
    use super::*;

    #[test]
    fn keys_match_the_seed_where_it_names_them() {
        let keys = keys::Keys::default();
        assert_eq!(
            keys.inventory("mag-safe-phone-case"),
            "inventory:mag-safe-phone-case"
        );
        assert_eq!(keys.notification("order123"), "notifications:order123");
        assert_eq!(keys.processed_count(), "orders.processed.count");
        assert_eq!(
            keys.idempotency("customer@example.com", "order123"),
            "idemp:customer@example.com:order123"
        );
    }

    #[test]
    fn a_prefix_applies_to_every_key() {
        let keys = keys::Keys::new("t1:");
        assert_eq!(keys.inventory("a"), "t1:inventory:a");
        assert_eq!(keys.processed_count(), "t1:orders.processed.count");
        assert_eq!(keys.order("u", "o"), "t1:order:u:o");
    }

    #[test]
    fn order_placed_round_trips_and_rejects_unknown_fields() {
        let order = OrderPlaced {
            order_id: "order123".into(),
            owner: "customer@example.com".into(),
            sku: "mag-safe-phone-case".into(),
            qty: 2,
            accepted_at: 1_700_000_000_000,
        };
        let json = serde_json::to_string(&order).unwrap();
        assert_eq!(serde_json::from_str::<OrderPlaced>(&json).unwrap(), order);
        assert_eq!(order.message_id(), "customer@example.com:order123");
        let extra = json.replace("}", r#","extra":1}"#);
        assert!(serde_json::from_str::<OrderPlaced>(&extra).is_err());
    }

    #[test]
    fn outcome_serializes_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&Outcome::Processed).unwrap(),
            r#""processed""#
        );
    }
}
