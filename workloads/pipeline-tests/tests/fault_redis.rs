//! Fault campaign: Redis away for 10 s under a steady order load, then back. The workloads reach
//! Redis through a fault proxy (the outage as they see it: connections reset, new ones refused)
//! so the Redis other tests share keeps running. Invariants: `pipeline_tests::campaign`.

use std::time::Duration;

use pipeline_tests::campaign::{self, Load};
use pipeline_tests::{Options, Pipeline};
use testenv::proxy::FaultProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_for_10_seconds_loses_and_doubles_nothing() {
    let proxy = FaultProxy::start(&testenv::Env::load().require("OP_REDIS_ADDR")).await;
    let pipeline = Pipeline::start(Options {
        redis_addr: Some(proxy.addr()),
        ..Options::default()
    })
    .await
    .unwrap();
    let load = Load::new(&pipeline, "redis", 600).await.unwrap();
    let fault = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        proxy.cut();
        let cut = tokio::time::Instant::now();
        // The workloads see the outage: their Redis readiness checks fail.
        while !pipeline.failing().contains(&"gateway/redis".to_owned()) {
            assert!(
                cut.elapsed() < Duration::from_secs(8),
                "the gateway never noticed the outage"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "Redis cut; failing checks after {:.1}s: {:?}",
            cut.elapsed().as_secs_f64(),
            pipeline.failing()
        );
        tokio::time::sleep_until(cut + Duration::from_secs(10)).await;
        proxy.restore();
        println!("Redis back");
    };
    campaign::under_fault(&pipeline, &load, 30, fault)
        .await
        .unwrap();
    pipeline.stop().await;
}
