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
    let placing = load.place(
        &pipeline.http,
        &pipeline.gateway,
        30,
        Duration::from_secs(90),
    );
    let fault = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let killed =
            tokio::task::spawn_blocking(|| testenv::UndoNodeFault::new(0, "kill", "start"))
                .await
                .unwrap();
        println!("rabbit1 killed");
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::spawn_blocking(move || drop(killed))
            .await
            .unwrap();
        println!("rabbit1 running again");
    };
    let (placed, ()) = tokio::join!(placing, fault);
    campaign::check(&pipeline, &load, &placed, Duration::from_secs(120))
        .await
        .unwrap();
    pipeline.stop().await;
}
