//! Fault campaign: the RabbitMQ node every workload is connected to (the first of their URLs)
//! killed with SIGKILL under a steady order load, and started again 5 s later. The workloads
//! fail over to the other nodes; the quorum queues keep a majority. Invariants:
//! `pipeline_tests::campaign`.
//!
//! Alone in its test binary: it kills a node the other tests share.

use std::time::Duration;

use pipeline_tests::campaign::{self, Load};
use pipeline_tests::{Options, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connected_rabbitmq_node_killed_loses_and_doubles_nothing() {
    let pipeline = Pipeline::start(Options::default()).await.unwrap();
    let load = Load::new(&pipeline, "mqkill", 600).await.unwrap();
    let fault = campaign::rabbitmq_node_fault(
        0,
        Duration::from_secs(4),
        "kill",
        Duration::from_secs(5),
        "start",
    );
    campaign::under_fault(&pipeline, &load, 30, fault)
        .await
        .unwrap();
    pipeline.stop().await;
}
