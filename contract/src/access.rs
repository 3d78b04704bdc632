//! Who may do what: the four workloads, and for each the RabbitMQ permissions and the Redis ACL
//! rules of its own user, derived from what it declares, publishes, consumes and touches.
//!
//! One credential per workload, each with only what it uses: the dashboard reads a few Redis
//! keys and runs no write, and on RabbitMQ holds no permission at all (it reads queue depths
//! with passive declares, which RabbitMQ answers for any user with access to the vhost), the
//! notifier cannot publish the `order.created` events it trusts, and
//! nobody but the processor changes stock. The operator turns these into the managed RabbitMQ's
//! definitions and the managed Redis's ACL file; `cargo xtask run` and the tests create the same
//! users in the local environment; so every pipeline runs with exactly these grants.
//!
//! RabbitMQ checks three regular expressions per user and vhost, on resource names:
//! `configure` (declare), `write` (publish to an exchange; bind a queue) and `read` (consume a
//! queue; bind from an exchange). Declaring a queue that dead-letters also needs `read` on the
//! queue and `write` on its dead-letter exchange (the broker's own rule, so that nobody can
//! siphon a queue's messages off through a dead-letter exchange they chose). So a workload that
//! declares a work queue can read it: the gateway holds `read` on `orders.queue`, because it
//! declares that queue for orders to be routed before any processor ran; RabbitMQ offers no
//! narrower grant for that.

use crate::keys::Keys;
use crate::ports;
use crate::topology::{self, NOTIFICATIONS, ORDERS, WorkQueue};

/// The four workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Gateway,
    Processor,
    Notifier,
    Dashboard,
}

/// A user's permissions on one vhost: a regular expression each, matched against whole names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitmqPermissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Gateway,
        Workload::Processor,
        Workload::Notifier,
        Workload::Dashboard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Gateway => "gateway",
            Workload::Processor => "processor",
            Workload::Notifier => "notifier",
            Workload::Dashboard => "dashboard",
        }
    }

    /// The business port, for the workloads that take traffic from outside the pipeline.
    pub fn http_port(self) -> Option<u16> {
        match self {
            Workload::Gateway => Some(ports::GATEWAY_HTTP),
            Workload::Dashboard => Some(ports::DASHBOARD_HTTP),
            Workload::Processor | Workload::Notifier => None,
        }
    }

    /// Only the gateway keeps accounts (Cassandra) and signs tokens.
    pub fn uses_cassandra(self) -> bool {
        self == Workload::Gateway
    }

    /// The work queues it declares.
    fn declares(self) -> &'static [WorkQueue] {
        match self {
            Workload::Gateway => &[ORDERS],
            Workload::Processor => &[ORDERS, NOTIFICATIONS],
            Workload::Notifier => &[NOTIFICATIONS],
            Workload::Dashboard => &[],
        }
    }

    /// The exchanges it publishes to.
    fn publishes(self) -> &'static [&'static str] {
        match self {
            Workload::Gateway => &[topology::ORDERS_EXCHANGE],
            Workload::Processor => &[topology::EVENTS_EXCHANGE],
            Workload::Notifier | Workload::Dashboard => &[],
        }
    }

    /// The queues it consumes. A consumer dead-letters what it cannot handle itself, by
    /// publishing to the dead-letter exchange.
    fn consumes(self) -> &'static [&'static str] {
        match self {
            Workload::Processor => &[topology::ORDERS_QUEUE],
            Workload::Notifier => &[topology::NOTIFIER_QUEUE],
            Workload::Gateway | Workload::Dashboard => &[],
        }
    }

    /// Its RabbitMQ permissions. Every workload has a user; the dashboard's matches no name
    /// (`^$` for all three), which still lets it into the vhost, where a passive declare answers
    /// a queue's depth and consumer count without any permission, and nothing else.
    pub fn rabbitmq(self) -> RabbitmqPermissions {
        let mut configure = Vec::new();
        let mut write = Vec::new();
        let mut read = Vec::new();
        for work in self.declares() {
            let dead_letters = topology::dead_letter_queue(work.queue);
            let redrive = topology::redrive_exchange(work.queue);
            // The exchange, the dead-letter exchange, the dead-letter queue, the work queue, its
            // re-drive exchange.
            configure.extend([
                work.exchange.to_owned(),
                topology::DEAD_LETTER_EXCHANGE.to_owned(),
                dead_letters.clone(),
                work.queue.to_owned(),
                redrive.clone(),
            ]);
            // Binding the dead-letter queue, and the work queue, to their exchanges; declaring a
            // queue that dead-letters (see the module's documentation).
            write.extend([
                dead_letters,
                work.queue.to_owned(),
                topology::DEAD_LETTER_EXCHANGE.to_owned(),
            ]);
            read.extend([
                topology::DEAD_LETTER_EXCHANGE.to_owned(),
                work.exchange.to_owned(),
                work.queue.to_owned(),
                redrive,
            ]);
        }
        write.extend(self.publishes().iter().map(|&exchange| exchange.to_owned()));
        for &queue in self.consumes() {
            read.push(queue.to_owned());
            write.push(topology::DEAD_LETTER_EXCHANGE.to_owned());
            // The dead-letter command (`<workload> dead-letters list|redrive`, run in the pod
            // with its credentials): reads the queue's dead letters and puts them back through
            // the queue's own re-drive exchange.
            read.push(topology::dead_letter_queue(queue));
            write.push(topology::redrive_exchange(queue));
        }
        RabbitmqPermissions {
            configure: any_of(configure),
            write: any_of(write),
            read: any_of(read),
        }
    }

    /// The Redis ACL rules of its user, for keys under `keys`' prefix: no keys or channels but
    /// its own, no commands but the ones it (and its Lua scripts, which Redis checks the same
    /// way) runs. Without `on` and a password, which the caller adds: `ACL SETUSER <name> reset
    /// on >password <rules>` or, in an ACL file, `user <name> on #<sha256> <rules>`.
    pub fn redis_rules(self, keys: &Keys) -> Vec<String> {
        let prefix = escape_glob(keys.prefix());
        let (read_write, read_only, commands): (&[&str], &[&str], &[&str]) = match self {
            Workload::Gateway => (
                &[
                    "idemp:*",
                    "order:*",
                    "account:deleted:*",
                    "ratelimit:*",
                    "orders.accepted.count",
                    "orders.latest",
                ],
                &[],
                &[
                    "get", "set", "setex", "del", "incr", "decr", "pttl", "pexpire", "expire",
                    "hmset", "hgetall", "lpush", "ltrim", "time",
                ],
            ),
            Workload::Processor => (
                &[
                    "order:*",
                    "inventory:*",
                    "idemp:*",
                    "orders.processed.count",
                    "orders.rejected.count",
                    "inventory.skus",
                ],
                &[],
                &[
                    "get", "type", "exists", "expire", "hget", "hset", "decrby", "incr", "zadd",
                ],
            ),
            Workload::Notifier => (
                &[
                    "order:*",
                    "notify-lease:*",
                    "notifications:*",
                    "orders.notified.count",
                ],
                &[],
                &["get", "set", "del", "expire", "hget", "hset", "incr"],
            ),
            Workload::Dashboard => (
                &[],
                &[
                    "orders.processed.count",
                    "orders.accepted.count",
                    "orders.rejected.count",
                    "orders.notified.count",
                    "orders.latest",
                    "order:*",
                    "inventory.skus",
                    "inventory:*",
                    "notifications:*",
                ],
                // `GET`/`HGET` answer `/metrics`; `MGET`, `LRANGE`, `HMGET` and `ZRANGE` build the
                // live page's snapshot.
                &["get", "hget", "mget", "lrange", "hmget", "zrange"],
            ),
        };
        let scripts: &[&str] = if self == Workload::Dashboard {
            &[]
        } else {
            &["evalsha", "script|load"]
        };
        let mut rules = vec![
            "resetkeys".to_owned(),
            "resetchannels".to_owned(),
            "-@all".to_owned(),
            // The readiness check.
            "+ping".to_owned(),
        ];
        rules.extend(
            read_write
                .iter()
                .map(|pattern| format!("~{prefix}{pattern}")),
        );
        rules.extend(
            read_only
                .iter()
                .map(|pattern| format!("%R~{prefix}{pattern}")),
        );
        rules.extend(
            commands
                .iter()
                .chain(scripts)
                .map(|command| format!("+{command}")),
        );
        rules
    }
}

/// A regular expression matching exactly `names`; one matching nothing when there are none.
fn any_of(mut names: Vec<String>) -> String {
    names.sort();
    names.dedup();
    if names.is_empty() {
        return "^$".to_owned();
    }
    let escaped: Vec<String> = names.iter().map(|name| escape_regex(name)).collect();
    format!("^({})$", escaped.join("|"))
}

fn escape_regex(name: &str) -> String {
    escape(name, "\\.^$|?*+()[]{}")
}

/// A key prefix as a literal in a Redis glob pattern.
fn escape_glob(prefix: &str) -> String {
    escape(prefix, "\\*?[]")
}

/// `text` with a backslash before each character of `special`.
fn escape(text: &str, special: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if special.contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny matcher for the `^(a|b)$` expressions built here, enough to test them without a
    /// regex engine: the alternatives, unescaped.
    fn matches(expression: &str, name: &str) -> bool {
        let Some(inner) = expression
            .strip_prefix("^(")
            .and_then(|rest| rest.strip_suffix(")$"))
        else {
            return expression == "^$" && name.is_empty();
        };
        inner
            .split('|')
            .any(|alternative| alternative.replace('\\', "") == name)
    }

    #[test]
    fn only_the_processor_may_publish_outcomes_and_only_the_gateway_orders() {
        for workload in Workload::ALL {
            let permissions = workload.rabbitmq();
            assert_eq!(
                matches(&permissions.write, topology::EVENTS_EXCHANGE),
                workload == Workload::Processor,
                "{workload:?} write {}",
                permissions.write
            );
            assert_eq!(
                matches(&permissions.write, topology::ORDERS_EXCHANGE),
                workload == Workload::Gateway,
                "{workload:?} write {}",
                permissions.write
            );
            // Nobody publishes through the default exchange straight into a queue.
            assert!(!matches(&permissions.write, "amq.default"));
        }
    }

    #[test]
    fn the_dashboard_may_not_touch_any_rabbitmq_resource() {
        let none = "^$".to_owned();
        assert_eq!(
            Workload::Dashboard.rabbitmq(),
            RabbitmqPermissions {
                configure: none.clone(),
                write: none.clone(),
                read: none,
            }
        );
    }

    #[test]
    fn consumers_read_their_own_queue_and_not_the_others() {
        let processor = Workload::Processor.rabbitmq();
        let notifier = Workload::Notifier.rabbitmq();
        assert!(matches(&processor.read, topology::ORDERS_QUEUE));
        assert!(matches(&notifier.read, topology::NOTIFIER_QUEUE));
        assert!(!matches(&notifier.read, topology::ORDERS_QUEUE));
        assert!(!matches(&notifier.configure, topology::ORDERS_QUEUE));
        // Each consumer re-drives its own dead letters, into its own queue only.
        assert!(matches(&processor.write, "orders.queue.redrive"));
        assert!(!matches(&processor.write, "notifier.queue.redrive"));
        assert!(matches(&notifier.read, "notifier.queue.dead-letter"));
        assert!(!matches(&notifier.read, "orders.queue.dead-letter"));
        let gateway = Workload::Gateway.rabbitmq();
        assert!(!matches(&gateway.read, topology::NOTIFIER_QUEUE));
        assert!(!matches(&gateway.write, "orders.queue.redrive"));
        assert!(!matches(&gateway.configure, topology::EVENTS_EXCHANGE));
    }

    #[test]
    fn names_are_escaped_in_expressions() {
        assert_eq!(
            any_of(vec!["b.c".into(), "a".into(), "b.c".into()]),
            r"^(a|b\.c)$"
        );
        assert_eq!(any_of(Vec::new()), "^$");
    }

    #[test]
    fn the_dashboard_only_reads_and_runs_no_write() {
        let keys = Keys::new("t1:");
        let rules = Workload::Dashboard.redis_rules(&keys);
        assert!(rules.iter().all(|rule| !rule.starts_with('~')), "{rules:?}");
        for key in [
            keys.inventory("*"),
            keys.order("*", "").trim_end_matches(':').to_owned(),
            keys.latest_orders(),
            keys.inventory_skus(),
            keys.accepted_count(),
            keys.rejected_count(),
            keys.notified_count(),
            keys.processed_count(),
        ] {
            assert!(rules.contains(&format!("%R~{key}")), "{key}: {rules:?}");
        }
        assert!(rules.contains(&"-@all".to_owned()));
        let commands: Vec<&str> = rules.iter().filter_map(|r| r.strip_prefix('+')).collect();
        assert_eq!(
            commands,
            ["ping", "get", "hget", "mget", "lrange", "hmget", "zrange"]
        );
    }

    /// Each new key is writable by the one workload whose script writes it, and no other.
    #[test]
    fn each_counter_has_exactly_one_writer() {
        let keys = Keys::default();
        for (key, writer) in [
            (keys.accepted_count(), Workload::Gateway),
            (keys.latest_orders(), Workload::Gateway),
            (keys.processed_count(), Workload::Processor),
            (keys.rejected_count(), Workload::Processor),
            (keys.inventory_skus(), Workload::Processor),
            (keys.notified_count(), Workload::Notifier),
        ] {
            for workload in Workload::ALL {
                assert_eq!(
                    workload.redis_rules(&keys).contains(&format!("~{key}")),
                    workload == writer,
                    "{workload:?} and {key}"
                );
            }
        }
    }

    #[test]
    fn a_prefix_is_a_literal_in_key_patterns() {
        let rules = Workload::Notifier.redis_rules(&Keys::new("a*b?[c]\\:"));
        assert!(
            rules.contains(&r"~a\*b\?\[c\]\\:order:*".to_owned()),
            "{rules:?}"
        );
    }
}
