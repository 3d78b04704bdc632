//! What every Order Pipeline workload needs, written once: configuration from the environment,
//! structured logs, the admin listener, the business listener's limits, graceful shutdown and the
//! RabbitMQ connection manager.
//!
//! Each workload's `main.rs` wires these together; its business logic lives in its own crate.

#![forbid(unsafe_code)]

pub mod admin;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod http_metrics;
pub mod http_server;
pub mod redis_connection;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
