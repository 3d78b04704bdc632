//! Fault campaign: clients that abort mid-request. Every client gives up its first attempt
//! after 3 ms (hyper then drops the gateway's handler, wherever it was: before the claim,
//! between claim and publish, waiting for the confirm), then retries with the same body.
//! Invariants: `pipeline_tests::campaign`, so a 409 only where the aborted attempt placed the
//! order, and no order left claimed without being placed.

use std::time::Duration;

use pipeline_tests::campaign::{self, Load};
use pipeline_tests::{Options, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_abort_and_retry_lose_and_double_nothing() {
    let pipeline = Pipeline::start(Options::default()).await.unwrap();
    let load = Load::new(&pipeline, "abort", 400).await.unwrap();
    let placed = load
        .place_impatiently(
            &pipeline.client,
            50,
            Duration::from_secs(90),
            Duration::from_millis(3),
        )
        .await;
    let aborted = placed.iter().filter(|order| order.no_answer > 0).count();
    println!("aborted first attempts: {aborted}");
    let counts = campaign::check(&pipeline, &load, &placed, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(aborted > 0, "no attempt was aborted");
    assert_eq!(counts.retried, aborted);
    pipeline.stop().await;
}
