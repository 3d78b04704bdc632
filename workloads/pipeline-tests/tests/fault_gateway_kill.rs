//! Fault campaign: the gateway, a real process, killed with SIGKILL twice under a steady order
//! load and started again at once: once plainly, once while a RabbitMQ memory alarm holds its
//! publishes, so that it dies with orders claimed and not settled. Those claims are left
//! `pending`; their clients, who got no answer, retry with the same body: told to wait while the
//! claim's lease runs, then the retry takes the claim over and publishes again (the processor
//! applies an order once). Invariants: `pipeline_tests::campaign`, so no false "Duplicate" for
//! an order that was never published, and no order left claimed without being placed.
//!
//! Alone in its test binary: the alarm blocks publishers of every test on the cluster.

use std::time::Duration;

use pipeline_contract::env;
use pipeline_tests::campaign::{self, Load};
use pipeline_tests::process::Workload;
use pipeline_tests::{Options, Pipeline};

/// Waits until the gateway at `url` answers (at most 60 s).
async fn wait_answering(http: &reqwest::Client, url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .map_or(true, |response| !response.status().is_success())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway at {url} did not answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_killed_mid_load_loses_and_doubles_nothing() {
    let pipeline = Pipeline::start(Options::default()).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let logs = std::env::temp_dir().join(testenv::unique("gateway-kill-logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let mut variables = pipeline.variables[&pipeline_contract::Workload::Gateway].clone();
    variables.insert(env::HTTP_PORT.into(), port.to_string());
    variables.insert(env::ADMIN_PORT.into(), "0".into());
    variables.insert(env::LOG_LEVEL.into(), "warn".into());
    let mut gateway = Workload::spawn("gateway", variables, &logs, 0);
    wait_answering(&pipeline.client.http, &url).await;

    let load = Load::new(&pipeline, "gwkill", 500).await.unwrap();
    let restarted =
        testenv::gateway::GatewayClient::with_http(url.clone(), pipeline.client.http.clone());
    let placing = load.place(&restarted, 25, Duration::from_secs(120));
    let fault = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        gateway.crash_and_restart();
        println!("gateway killed and started again");
        wait_answering(&pipeline.client.http, &url).await;

        tokio::time::sleep(Duration::from_secs(3)).await;
        let alarm =
            tokio::task::spawn_blocking(|| testenv::UndoNodeFault::new(0, "alarm-on", "alarm-off"))
                .await
                .unwrap();
        // Publishes pile up, each with its claim pending.
        tokio::time::sleep(Duration::from_secs(2)).await;
        gateway.crash_and_restart();
        println!("gateway killed with its publishes held by a memory alarm, and started again");
        wait_answering(&pipeline.client.http, &url).await;
        tokio::task::spawn_blocking(move || drop(alarm))
            .await
            .unwrap();
        println!("memory alarm cleared");
    };
    let (placed, ()) = tokio::join!(placing, fault);
    let checked = campaign::check(&pipeline, &load, &placed, Duration::from_secs(120)).await;
    gateway.stop();
    let counts = checked.unwrap_or_else(|error| panic!("{error:#}; logs in {}", logs.display()));
    assert!(counts.retried > 0, "the kills were seen by the clients");
    // Retries of the orders the killed gateway left pending were told to wait for the lease.
    assert!(counts.unavailable > 0, "no claim was left pending");
    let _ = std::fs::remove_dir_all(&logs);
    pipeline.stop().await;
}
