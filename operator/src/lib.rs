//! The OrderPipeline operator: reconciles each `OrderPipeline` resource into the pipeline's
//! workloads and dependencies, keeps them converged and reports their health in the resource's
//! status.
//!
//! Reconciling is a pipeline of small steps (after Stackable's operators): `dereference` reads
//! what the spec points at (secrets), `build` turns spec and facts into child objects without any
//! I/O, `apply` writes them with server-side apply, and `status` reports what came back.

#![forbid(unsafe_code)]

pub mod autoscale;
pub mod config;
pub mod controller;
pub mod leader;
pub mod management;
pub mod metrics;
pub mod monitoring;
pub mod quantity;
