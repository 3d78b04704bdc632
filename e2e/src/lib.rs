//! End-to-end suite for an OrderPipeline on any cluster given a kubeconfig.
//!
//! The suite is written for a cluster that runs containers (kind from `e2e/kind-up.sh`, or the
//! project's own cluster) with an `OrderPipeline` already applied; it never creates one, so the
//! same code checks a developer's kind cluster and a production-like one.
//!
//! - [`flow`]: the seed README's walkthrough as a client sees it (register, log in, order twice,
//!   watch it become `notified`, read the dashboard), over plain HTTP. It is transport-agnostic:
//!   it takes the gateway's and dashboard's base URLs and an [`flow::Inventory`] that sets stock,
//!   so `tests/main_command.rs` proves it against `cargo xtask run` on this machine and
//!   `tests/e2e.rs` runs it through port-forwards on a cluster.
//! - [`cluster`]: what only a cluster has: the configuration from `E2E_*` variables, port-forwards
//!   to the gateway's and dashboard's Services, stock set with `redis-cli` in the managed Redis
//!   pod, readiness as `kubectl wait --for=condition=Ready` sees it, and scaling through the
//!   resource.
//! - [`readme`]: reads the walkthrough code block of the project README into commands and their
//!   documented outputs, so the test that follows it cannot drift from what the README says.
//!
//! Everything here is test code, so errors are `anyhow` with the context of the step that failed.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod flow;
pub mod readme;
