//! What every Order Pipeline workload needs, written once: configuration from the environment,
//! structured logs, the admin listener, the business listener's limits, graceful shutdown and,
//! with the `drivers` feature (on by default), the RabbitMQ connection manager, the consumer and
//! the Redis connection.
//!
//! Each workload's `main.rs` wires these together; its business logic lives in its own crate.
//! The operator uses the driver-free part (configuration, telemetry, admin, shutdown), so its
//! probes, log lines and signal handling are the workloads' own.

#![forbid(unsafe_code)]

/// The allocator of the static musl builds (the images): musl's own serialises the threads of
/// a Tokio runtime on its locks, and the gateway built for musl spent 148 µs of CPU per
/// accepted order against 90 µs for the same code on glibc (`pipeline-bench gateway` with
/// `ORDER_PIPELINE_BINARIES` set to each build). glibc builds keep glibc's allocator.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
#[cfg(feature = "drivers")]
pub mod broker;
pub mod config;
#[cfg(feature = "drivers")]
pub mod consumer;
#[cfg(feature = "drivers")]
pub mod dead_letters;
#[cfg(feature = "drivers")]
pub mod group_commit;
pub mod http_metrics;
pub mod http_server;
#[cfg(feature = "drivers")]
pub mod queues;
#[cfg(feature = "drivers")]
pub mod redis_connection;
pub mod shutdown;
pub mod telemetry;
