//! Fault campaign: a RabbitMQ memory alarm raised for 14 s under a steady order load, then
//! cleared. The broker blocks every publishing connection: the gateway's publishes wait for a
//! confirm that does not come within its 10 s (a 503 that says the order may have been stored,
//! which the client retries with the same body, publishing it again) and the processor's
//! outcome publishes wait too. Once the alarm clears, the blocked copies arrive as well.
//! Invariants: `pipeline_tests::campaign`.
//!
//! Alone in its test binary: the alarm blocks publishers of every test on the cluster.

use std::time::Duration;

use pipeline_tests::campaign::{self, Load};
use pipeline_tests::{Options, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_loses_and_doubles_nothing() {
    let pipeline = Pipeline::start(Options::default()).await.unwrap();
    let load = Load::new(&pipeline, "alarm", 400).await.unwrap();
    let fault = campaign::rabbitmq_node_fault(
        0,
        Duration::from_secs(4),
        "alarm-on",
        Duration::from_secs(14),
        "alarm-off",
    );
    let counts = campaign::under_fault(&pipeline, &load, 25, fault)
        .await
        .unwrap();
    // Publishes outlived their confirm timeout: the uncertain path was taken.
    assert!(counts.unavailable > 0, "the alarm was seen by the clients");
    pipeline.stop().await;
}
