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
    /// The gateway's group commit: orders in one AMQP message at most (default 64; 1 publishes
    /// each order alone).
    pub const ORDER_BATCH_MAX: &str = "ORDER_BATCH_MAX";
    /// The gateway's group commit: order messages awaiting their confirms at once (default 2).
    pub const ORDER_PUBLISHES_IN_FLIGHT: &str = "ORDER_PUBLISHES_IN_FLIGHT";
    /// RabbitMQ prefetch per consumer: orders in flight at once (processor and notifier
    /// default 256; the seed: 10).
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
    /// OpenTelemetry's standard variables, as the operator sets them on every workload. Traces
    /// are exported over OTLP/HTTP to this base URL (`/v1/traces` is appended) when it is set;
    /// unset or empty, tracing costs nothing.
    pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// The `service.name` of the spans; each workload defaults to its own name.
    pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    /// More resource attributes, `key=value` pairs separated by commas (the pipeline's
    /// namespace and name).
    pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
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
pub mod order;

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

        /// Orders the gateway has accepted (the broker confirmed them), for the dashboard's rates.
        pub fn accepted_count(&self) -> String {
            format!("{}orders.accepted.count", self.prefix)
        }

        /// Orders the processor has rejected (out of stock, invalid inventory).
        pub fn rejected_count(&self) -> String {
            format!("{}orders.rejected.count", self.prefix)
        }

        /// Notifications the notifier has sent, each order counted once.
        pub fn notified_count(&self) -> String {
            format!("{}orders.notified.count", self.prefix)
        }

        /// The latest accepted orders, newest first, as `owner:order_id` (the order record's key
        /// suffix): a list the gateway trims to [`crate::LATEST_ORDERS_KEPT`] entries.
        pub fn latest_orders(&self) -> String {
            format!("{}orders.latest", self.prefix)
        }

        /// Every SKU the processor has seen an order for, as a sorted set (all scores 0, so
        /// members sort by name): the dashboard lists stock from it with a bounded `ZRANGE`
        /// instead of a `SCAN`, which Redis's ACLs cannot confine to one key pattern.
        pub fn inventory_skus(&self) -> String {
            format!("{}inventory.skus", self.prefix)
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

/// How many entries [`keys::Keys::latest_orders`] keeps: enough for a screenful of recent
/// orders, small enough that reading them all each second is cheap.
pub const LATEST_ORDERS_KEPT: usize = 50;

/// How long an order id's idempotency claim ([`keys::Keys::idempotency`]) is kept: a day longer
/// than the order's record, and the processor extends it when it applies the order, so the
/// claim outlives the "applied" mark. While the mark exists a reuse of the id is refused at the
/// gateway (409 or 422), never accepted and then skipped as "already applied".
pub const IDEMPOTENCY_CLAIM_TTL_SECONDS: u64 = ORDER_RECORD_TTL_SECONDS + 24 * 3600;

/// Fields of the order hash at [`keys::Keys::order`], each written by exactly one workload.
pub mod order_fields {
    /// Written by the gateway once the broker confirmed the order: unix milliseconds.
    pub const ACCEPTED_AT: &str = "accepted_at";
    pub const SKU: &str = "sku";
    pub const QTY: &str = "qty";
    /// Written by the processor, atomically with the stock change: one of
    /// [`crate::order::outcome`]. Its presence is what makes a redelivered order a no-op.
    pub const OUTCOME: &str = "outcome";
    pub const PROCESSED_AT: &str = "processed_at";
    /// Why an order was rejected (for example [`crate::order::outcome::OUT_OF_STOCK`]).
    pub const REASON: &str = "reason";
    /// Written by the notifier: one of [`crate::order::notification`].
    pub const NOTIFICATION: &str = "notification";
    pub const NOTIFIED_AT: &str = "notified_at";
}

/// Fields of the seed's notification hash at [`keys::Keys::notification`], written by the
/// notifier and read by the dashboard's `?order_id=`.
pub mod notification_fields {
    /// One of [`crate::order::notification`] (the seed's `status`).
    pub const STATUS: &str = "status";
    /// Unix milliseconds at which it was sent.
    pub const SENT_AT: &str = "sent_at";
    /// The order's owner: the order id alone is not unique across owners.
    pub const OWNER: &str = "owner";
}

/// The shared field names and values for the workloads' Redis scripts, which would otherwise
/// spell them as Lua literals of their own.
pub mod lua {
    use crate::order::{notification, outcome};
    use crate::{notification_fields, order_fields};

    /// Each name a script may use, and its value.
    const NAMES: &[(&str, &str)] = &[
        ("FIELD_ACCEPTED_AT", order_fields::ACCEPTED_AT),
        ("FIELD_SKU", order_fields::SKU),
        ("FIELD_QTY", order_fields::QTY),
        ("FIELD_OUTCOME", order_fields::OUTCOME),
        ("FIELD_PROCESSED_AT", order_fields::PROCESSED_AT),
        ("FIELD_REASON", order_fields::REASON),
        ("FIELD_NOTIFICATION", order_fields::NOTIFICATION),
        ("FIELD_NOTIFIED_AT", order_fields::NOTIFIED_AT),
        ("SEED_STATUS", notification_fields::STATUS),
        ("SEED_SENT_AT", notification_fields::SENT_AT),
        ("SEED_OWNER", notification_fields::OWNER),
        ("PROCESSED", outcome::PROCESSED),
        ("REJECTED", outcome::REJECTED),
        ("OUT_OF_STOCK", outcome::OUT_OF_STOCK),
        ("INVALID_INVENTORY", outcome::INVALID_INVENTORY),
        ("PENDING", notification::PENDING),
        ("SENT", notification::SENT),
    ];

    /// The upper-case names `body` uses outside its string literals that the list does not
    /// declare (Redis's `KEYS` and `ARGV` aside): Lua reads an undeclared name as `nil`, which
    /// would surface only when the script runs. Each workload's tests check its scripts.
    pub fn undeclared(body: &str) -> Vec<String> {
        // The code without its string literals and `--` comments.
        let mut outside = String::new();
        let mut quote = None;
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some(open) if c == open => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => quote = Some(c),
                None if c == '-' && chars.peek() == Some(&'-') => {
                    for skipped in chars.by_ref() {
                        if skipped == '\n' {
                            break;
                        }
                    }
                    outside.push('\n');
                }
                None => outside.push(c),
            }
        }
        let mut names: Vec<String> = outside
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| {
                word.len() > 1
                    && word.starts_with(|c: char| c.is_ascii_uppercase())
                    && word
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .filter(|word| !matches!(*word, "KEYS" | "ARGV"))
            .filter(|word| !NAMES.iter().any(|(name, _)| name == word))
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// `body` with every name of the list declared before it as a Lua `local` holding its value
    /// (`local FIELD_OUTCOME = 'outcome'`).
    pub fn script(body: &str) -> String {
        let mut script = String::new();
        for (name, value) in NAMES {
            // Every value is a plain identifier: no quote or backslash to escape.
            debug_assert!(value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            script.push_str(&format!("local {name} = '{value}'\n"));
        }
        script.push_str(body);
        script
    }
}

/// Messages on the wire (JSON).
pub mod messages {
    use serde::{Deserialize, Serialize};

    /// The order itself, which every message about it starts with: its fields come first in
    /// each message's JSON, exactly as if each message spelled them out.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Order {
        /// The client's order id, unique per owner ([`crate::order::check_id`]).
        pub order_id: String,
        /// The owner's account (the token's subject).
        pub owner: String,
        pub sku: String,
        pub qty: u32,
    }

    impl Order {
        /// The AMQP `message-id` of every message about the order, and the notification's
        /// idempotency key: unique across owners.
        pub fn message_id(&self) -> String {
            format!("{}:{}", self.owner, self.order_id)
        }

        /// Checks what the JSON shape cannot: the grammar of the id and SKU, a non-empty owner
        /// and a quantity in range. The gateway checked all of it, but a queue is an interface
        /// anyone with credentials can publish to.
        pub fn check(&self) -> Result<(), String> {
            crate::order::check_id(&self.order_id).map_err(|error| format!("order_id {error}"))?;
            crate::order::check_sku(&self.sku).map_err(|error| format!("sku {error}"))?;
            if self.owner.is_empty() {
                return Err("owner must not be empty".into());
            }
            crate::order::check_qty(i64::from(self.qty)).map_err(|error| format!("qty {error}"))?;
            Ok(())
        }
    }

    /// An accepted order, published by the gateway to [`crate::topology::ORDERS_EXCHANGE`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OrderPlaced {
        #[serde(flatten)]
        pub order: Order,
        /// Unix milliseconds at which the gateway accepted it.
        pub accepted_at: u64,
    }

    /// What the processor decided.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Outcome {
        Processed,
        Rejected,
    }

    impl Outcome {
        /// As the order record's [`crate::order_fields::OUTCOME`] spells it (and the JSON).
        pub fn as_str(self) -> &'static str {
            match self {
                Outcome::Processed => crate::order::outcome::PROCESSED,
                Outcome::Rejected => crate::order::outcome::REJECTED,
            }
        }

        /// The outcome a record's [`crate::order_fields::OUTCOME`] holds.
        pub fn from_record(value: &str) -> Option<Outcome> {
            [Outcome::Processed, Outcome::Rejected]
                .into_iter()
                .find(|outcome| outcome.as_str() == value)
        }
    }

    /// An order's outcome, published by the processor to [`crate::topology::EVENTS_EXCHANGE`]
    /// with routing key `order.created` or `order.rejected`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OrderOutcome {
        #[serde(flatten)]
        pub order: Order,
        pub outcome: Outcome,
        /// Why it was rejected, when it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
        /// Unix milliseconds at which the processor applied it.
        pub processed_at: u64,
    }

    /// Several messages of one kind in one AMQP message: a JSON array of them, in order.
    ///
    /// Group commit: the gateway coalesces the orders that arrive while its earlier publishes
    /// await their confirms into one message (one broker write, one confirm), and the processor
    /// publishes the outcomes of one delivery the same way. A message that is not an array is
    /// one message, exactly as before batches existed, and a batch of one is never sent: a
    /// lone order or outcome looks as it always did. Consumers handle each item on its own
    /// ([`split`] gives their bytes), so one item's bad content dead-letters that item alone.
    pub mod batch {
        use serde::de::DeserializeOwned;
        use serde_json::value::RawValue;

        /// The batch holding `items`, each a JSON value (as `serde_json::to_vec` writes them).
        pub fn join<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
            let mut body = vec![b'['];
            for item in items {
                if body.len() > 1 {
                    body.push(b',');
                }
                body.extend_from_slice(item);
            }
            body.push(b']');
            body
        }

        /// The items of a batch, borrowed from its body, or `None` when `body` is one message
        /// (anything but a JSON array). A malformed or empty array is an error: no item of it
        /// can be told apart.
        pub fn split(body: &[u8]) -> Option<Result<Vec<&[u8]>, String>> {
            let start = body.iter().position(|byte| !byte.is_ascii_whitespace())?;
            if body[start] != b'[' {
                return None;
            }
            Some(match serde_json::from_slice::<Vec<&RawValue>>(body) {
                Ok(items) if items.is_empty() => Err("an empty batch".into()),
                Ok(items) => Ok(items
                    .into_iter()
                    .map(|item| item.get().as_bytes())
                    .collect()),
                Err(error) => Err(format!("not a batch of messages: {error}")),
            })
        }

        /// Every message `body` carries (one, or a batch's items), decoded.
        pub fn decode_all<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, String> {
            let decode = |item: &[u8]| serde_json::from_slice(item).map_err(|e| e.to_string());
            match split(body) {
                None => Ok(vec![decode(body)?]),
                Some(items) => items?.into_iter().map(decode).collect(),
            }
        }
    }

    /// A notification, as the notifier's webhook sink POSTs it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Notification {
        #[serde(flatten)]
        pub order: Order,
        /// Stable across redeliveries ([`Order::message_id`]), so the receiver can drop the
        /// repeat a crash between sending and recording `sent` causes.
        pub idempotency_key: String,
    }
}

#[cfg(test)]
mod tests {
    use super::messages::*;
    use super::*;

    #[test]
    fn a_batch_splits_into_the_items_it_joined() {
        let items: [&[u8]; 3] = [br#"{"a":1}"#, b"[2, 3]", br#""x""#];
        let body = batch::join(items);
        assert_eq!(body, br#"[{"a":1},[2, 3],"x"]"#);
        assert_eq!(batch::split(&body).unwrap().unwrap(), items);
        // Not an array: one message, whatever else it is.
        assert!(batch::split(br#"{"order_id":"o"}"#).is_none());
        assert!(batch::split(b"not json").is_none());
        assert!(batch::split(b"").is_none());
        assert_eq!(batch::split(b" []").unwrap().unwrap_err(), "an empty batch");
        assert!(
            batch::split(b"[{},")
                .unwrap()
                .unwrap_err()
                .starts_with("not a batch of messages")
        );
        assert_eq!(batch::decode_all::<u32>(b"[1,2]").unwrap(), [1, 2]);
        assert_eq!(batch::decode_all::<u32>(b"7").unwrap(), [7]);
        assert!(batch::decode_all::<u32>(br#"[1,"x"]"#).is_err());
    }

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
        assert_eq!(keys.accepted_count(), "t1:orders.accepted.count");
        assert_eq!(keys.rejected_count(), "t1:orders.rejected.count");
        assert_eq!(keys.notified_count(), "t1:orders.notified.count");
        assert_eq!(keys.latest_orders(), "t1:orders.latest");
        assert_eq!(keys.inventory_skus(), "t1:inventory.skus");
    }

    fn order() -> Order {
        Order {
            order_id: "order123".into(),
            owner: "customer@example.com".into(),
            sku: "mag-safe-phone-case".into(),
            qty: 2,
        }
    }

    /// The bytes each message had when each spelled the order's fields out, so a workload of
    /// either build reads the other's messages.
    #[test]
    fn messages_keep_their_wire_bytes() {
        let order = order();
        let placed = OrderPlaced {
            order: order.clone(),
            accepted_at: 1_700_000_000_000,
        };
        assert_eq!(
            serde_json::to_string(&placed).unwrap(),
            r#"{"order_id":"order123","owner":"customer@example.com","sku":"mag-safe-phone-case","qty":2,"accepted_at":1700000000000}"#
        );
        let outcome = OrderOutcome {
            order: order.clone(),
            outcome: Outcome::Rejected,
            reason: Some("out_of_stock".into()),
            processed_at: 1_700_000_000_001,
        };
        assert_eq!(
            serde_json::to_string(&outcome).unwrap(),
            r#"{"order_id":"order123","owner":"customer@example.com","sku":"mag-safe-phone-case","qty":2,"outcome":"rejected","reason":"out_of_stock","processed_at":1700000000001}"#
        );
        let notification = Notification {
            idempotency_key: order.message_id(),
            order,
        };
        assert_eq!(
            serde_json::to_string(&notification).unwrap(),
            r#"{"order_id":"order123","owner":"customer@example.com","sku":"mag-safe-phone-case","qty":2,"idempotency_key":"customer@example.com:order123"}"#
        );
    }

    #[test]
    fn messages_round_trip_and_reject_unknown_or_missing_fields() {
        let placed = OrderPlaced {
            order: order(),
            accepted_at: 1_700_000_000_000,
        };
        let json = serde_json::to_string(&placed).unwrap();
        assert_eq!(serde_json::from_str::<OrderPlaced>(&json).unwrap(), placed);
        assert_eq!(placed.order.message_id(), "customer@example.com:order123");
        let extra = json.replace('}', r#","extra":1}"#);
        assert!(serde_json::from_str::<OrderPlaced>(&extra).is_err());
        let missing = json.replace(r#""qty":2,"#, "");
        assert!(serde_json::from_str::<OrderPlaced>(&missing).is_err());
        let negative = json.replace(r#""qty":2"#, r#""qty":-2"#);
        assert!(serde_json::from_str::<OrderPlaced>(&negative).is_err());
        // An outcome is not an order placed, nor the other way round.
        let outcome = serde_json::to_string(&OrderOutcome {
            order: order(),
            outcome: Outcome::Processed,
            reason: None,
            processed_at: 1,
        })
        .unwrap();
        assert!(serde_json::from_str::<OrderPlaced>(&outcome).is_err());
        assert!(serde_json::from_str::<OrderOutcome>(&json).is_err());
    }

    #[test]
    fn an_order_is_checked_beyond_its_shape() {
        assert_eq!(order().check(), Ok(()));
        let check = |change: fn(&mut Order)| {
            let mut order = order();
            change(&mut order);
            order.check().unwrap_err()
        };
        assert!(check(|o| o.order_id = "a:b".into()).starts_with("order_id may contain"));
        assert!(check(|o| o.sku.clear()).starts_with("sku must not be empty"));
        assert!(check(|o| o.owner.clear()).starts_with("owner"));
        assert!(check(|o| o.qty = 0).starts_with("qty must be between"));
        assert!(check(|o| o.qty = order::MAX_QTY + 1).starts_with("qty must be between"));
    }

    #[test]
    fn outcomes_are_spelled_as_the_record_spells_them() {
        for outcome in [Outcome::Processed, Outcome::Rejected] {
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{}\"", outcome.as_str())
            );
            assert_eq!(Outcome::from_record(outcome.as_str()), Some(outcome));
        }
        assert_eq!(Outcome::from_record("done"), None);
    }

    #[test]
    fn scripts_get_every_shared_name() {
        let script = lua::script("return FIELD_OUTCOME");
        assert!(
            script.contains("local FIELD_OUTCOME = 'outcome'\n"),
            "{script}"
        );
        assert!(script.contains("local SENT = 'sent'\n"), "{script}");
        assert!(script.ends_with("\nreturn FIELD_OUTCOME"), "{script}");
        assert_eq!(
            lua::undeclared(
                "-- A COMMENT\nif ARGV[1] == 'HGET' then return FIELD_OUTCOM, SENT, KEYS[1] end"
            ),
            ["FIELD_OUTCOM"]
        );
    }
}
