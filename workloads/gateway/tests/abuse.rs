//! Abuse resistance against the running gateway: concurrent password guesses, spoofed and
//! proxied client addresses, registration floods, abandoned bcrypt work and slow or greedy
//! connections. Each test prints its counts.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use pipeline_contract::env;
use serde_json::{Value, json};
use support::{Gateway, PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// `POST path` with `{"email","password"}`, from the client `forwarded_for` names (if any).
async fn post_credentials(
    gateway: &Gateway,
    path: &str,
    email: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut request = gateway
        .client
        .http
        .post(gateway.url(path))
        .json(&json!({"email": email, "password": password}));
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("X-Forwarded-For", forwarded_for);
    }
    request.send().await.unwrap()
}

fn tally(statuses: &[u16]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for status in statuses {
        *counts.entry(*status).or_default() += 1;
    }
    counts
}

fn unknown_email(label: &str) -> String {
    format!("{}@example.com", testenv::unique(label))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_guesses_on_one_account_is_checked_at_most_five_times() {
    // A real (if modest) cost: with a check before bcrypt and the count after it, the whole
    // burst would pass the check while the first guesses are still hashing.
    let gateway = Gateway::start_with(|vars| {
        vars.insert(env::BCRYPT_COST.into(), "8".into());
    })
    .await;
    let (email, _) = gateway.account().await;
    let metrics = gateway.state.passwords().metrics().clone();
    let hashed_before = metrics.run();
    let guesses = (0..200).map(|guess| {
        let (gateway, email) = (&gateway, &email);
        async move {
            let response =
                post_credentials(gateway, "/login", email, &format!("guess-{guess}"), None).await;
            let status = response.status().as_u16();
            if status == 429 {
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry_after), "{retry_after}");
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json"
                );
            }
            status
        }
    });
    let statuses = join_all(guesses).await;
    let counts = tally(&statuses);
    let (unauthorized, limited) = (
        counts.get(&401).copied().unwrap_or(0),
        counts.get(&429).copied().unwrap_or(0),
    );
    let hashed = metrics.run() - hashed_before;
    println!(
        "200 concurrent guesses: {unauthorized} x 401, {limited} x 429, all {counts:?}; bcrypt hashes run {hashed}"
    );
    assert_eq!((unauthorized, limited), (5, 195), "{counts:?}");
    assert_eq!(hashed, 5, "passwords checked");
    // The window holds for the right password too.
    assert_eq!(
        post_credentials(&gateway, "/login", &email, PASSWORD, None)
            .await
            .status(),
        429
    );
    gateway.stop().await;
}

#[tokio::test]
async fn successful_logins_forgive_failures_and_do_not_use_up_the_address() {
    let gateway = Gateway::start().await;
    let (email, _) = gateway.account().await;
    // More successes than the address allows failures (20): each gives its slot back.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(gateway.login(&email, PASSWORD).await.status().as_u16());
    }
    // Four failures, a success, four more: the success forgave the first four.
    for round in 0..2 {
        for _ in 0..4 {
            statuses.push(
                gateway
                    .login(&email, "wrong-password")
                    .await
                    .status()
                    .as_u16(),
            );
        }
        if round == 0 {
            statuses.push(gateway.login(&email, PASSWORD).await.status().as_u16());
        }
    }
    println!("25 successes, 4 failures, 1 success, 4 failures: {statuses:?}");
    assert!(statuses[..25].iter().all(|&status| status == 200));
    assert!(statuses[25..29].iter().all(|&status| status == 401));
    assert_eq!(statuses[29], 200);
    assert!(statuses[30..].iter().all(|&status| status == 401));
    gateway.stop().await;
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    // Without trusted proxies (the default), a client cannot escape its address's limit by
    // naming a new address each time.
    let direct = Gateway::start().await;
    let mut statuses = Vec::new();
    for attempt in 0..21 {
        let spoofed = format!("198.51.100.{attempt}");
        let response = post_credentials(
            &direct,
            "/login",
            &unknown_email("spray"),
            "guess-guess",
            Some(&spoofed),
        )
        .await;
        statuses.push(response.status().as_u16());
    }
    println!(
        "21 guesses, each with another X-Forwarded-For, no trusted proxy: {:?}",
        tally(&statuses)
    );
    assert!(
        statuses[..20].iter().all(|&status| status == 401),
        "{statuses:?}"
    );
    assert_eq!(
        statuses[20], 429,
        "the header chose the address: {statuses:?}"
    );
    direct.stop().await;

    // Behind a trusted proxy (the test's loopback peer), the client is the rightmost address
    // the proxy did not add itself. One client at 203.0.113.7 sprays guesses, also forging
    // an address of its own in front.
    let proxied = Gateway::start_with(|vars| {
        vars.insert(env::TRUSTED_PROXIES.into(), "127.0.0.1".into());
    })
    .await;
    let (victim, _) = proxied.account().await;
    let attacker = "203.0.113.7";
    let mut statuses = Vec::new();
    for attempt in 0..21 {
        let forged = format!("198.51.100.{attempt}, {attacker}");
        let response = post_credentials(
            &proxied,
            "/login",
            &unknown_email("spray"),
            "guess-guess",
            Some(&forged),
        )
        .await;
        statuses.push(response.status().as_u16());
    }
    // The forged entry alone, as the proxy passes it on: still the attacker's address.
    let forged_alone = post_credentials(
        &proxied,
        "/login",
        &unknown_email("spray"),
        "guess-guess",
        Some(&format!("203.0.113.8, {attacker}")),
    )
    .await
    .status()
    .as_u16();
    // Another client behind the same proxy is not locked out.
    let other_client = post_credentials(&proxied, "/login", &victim, PASSWORD, Some("203.0.113.8"))
        .await
        .status()
        .as_u16();
    println!(
        "behind a trusted proxy: attacker's 21 guesses {:?}, forging another address {forged_alone}, another client's login {other_client}",
        tally(&statuses)
    );
    assert!(
        statuses[..20].iter().all(|&status| status == 401),
        "{statuses:?}"
    );
    assert_eq!(statuses[20], 429, "{statuses:?}");
    assert_eq!(forged_alone, 429);
    assert_eq!(
        other_client, 200,
        "another client shared the attacker's limit"
    );
    proxied.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_client_address() {
    let gateway = Gateway::start_with(|vars| {
        vars.insert(env::REGISTER_LIMIT_PER_ADDRESS.into(), "3".into());
        vars.insert(env::TRUSTED_PROXIES.into(), "127.0.0.1".into());
    })
    .await;
    let client = "203.0.113.20";
    // Refused before any hash, bad input takes no slot.
    for _ in 0..5 {
        let response = post_credentials(
            &gateway,
            "/register",
            "not-an-email",
            PASSWORD,
            Some(client),
        )
        .await;
        assert_eq!(response.status(), 400);
    }
    let attempts = (0..20).map(|_| {
        let gateway = &gateway;
        async move {
            let response = post_credentials(
                gateway,
                "/register",
                &unknown_email("flood"),
                PASSWORD,
                Some(client),
            )
            .await;
            let status = response.status().as_u16();
            if status == 429 {
                assert!(response.headers().contains_key("retry-after"));
                let problem: Value = response.json().await.unwrap();
                assert_eq!(problem["status"], 429);
            }
            status
        }
    });
    let statuses = join_all(attempts).await;
    let counts = tally(&statuses);
    let other = post_credentials(
        &gateway,
        "/register",
        &unknown_email("other"),
        PASSWORD,
        Some("203.0.113.21"),
    )
    .await
    .status()
    .as_u16();
    println!(
        "20 concurrent registrations from one address, limit 3: {counts:?}; another address: {other}"
    );
    assert_eq!(counts.get(&201), Some(&3), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&17), "{counts:?}");
    assert_eq!(other, 201);
    gateway.stop().await;
}

/// A complete `POST /login` for an account that does not exist, as raw HTTP/1.1.
fn raw_login(email: &str) -> Vec<u8> {
    let body = json!({"email": email, "password": "guess-guess"}).to_string();
    format!(
        "POST /login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Polls `condition` every 10 ms until it holds, at most `within`.
async fn until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_whose_clients_went_away_are_not_hashed() {
    const LOGINS: u64 = 16;
    // Slow enough that the logins queue up behind the first hashes (one hashing thread per
    // core but one).
    let gateway = Gateway::start_with(|vars| {
        vars.insert(env::BCRYPT_COST.into(), "10".into());
    })
    .await;
    let metrics = gateway.state.passwords().metrics().clone();
    let (queued_before, run_before, skipped_before) =
        (metrics.queued(), metrics.run(), metrics.skipped());
    let mut clients = Vec::new();
    for _ in 0..LOGINS {
        let mut stream = TcpStream::connect(gateway.address).await.unwrap();
        stream
            .write_all(&raw_login(&unknown_email("gone")))
            .await
            .unwrap();
        clients.push(stream);
    }
    until(
        Duration::from_secs(30),
        "every login to reach the bcrypt pool",
        || metrics.queued() - queued_before == LOGINS,
    )
    .await;
    let run_when_dropped = metrics.run() - run_before;
    // The clients go away.
    drop(clients);
    until(
        Duration::from_secs(60),
        "the pool to take every job",
        || (metrics.run() - run_before) + (metrics.skipped() - skipped_before) == LOGINS,
    )
    .await;
    let run = metrics.run() - run_before;
    let skipped = metrics.skipped() - skipped_before;
    println!(
        "{LOGINS} logins queued, clients gone with {run_when_dropped} hashes started: {run} hashed, {skipped} skipped"
    );
    assert!(
        skipped >= LOGINS / 2,
        "abandoned hashes still ran: {run} hashed, {skipped} skipped"
    );
    // What Prometheus is served.
    assert_eq!(
        gateway.metric(r#"bcrypt_jobs_total{outcome="skipped"}"#),
        Some(metrics.skipped() as f64)
    );
    gateway.stop().await;
}

/// Reads until the server closes the connection (a reset counts); returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection within 20 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_beyond_the_limit_wait() {
    let header_timeout = Duration::from_millis(500);
    let request_timeout = Duration::from_millis(1000);
    let gateway = Gateway::start_with(|vars| {
        vars.insert(env::HTTP_HEADER_READ_TIMEOUT_MS.into(), "500".into());
        vars.insert(env::HTTP_REQUEST_TIMEOUT_MS.into(), "1000".into());
        vars.insert(env::HTTP_MAX_CONNECTIONS.into(), "2".into());
    })
    .await;

    // Slowloris: headers that never end.
    let started = Instant::now();
    let mut slow = TcpStream::connect(gateway.address).await.unwrap();
    slow.write_all(b"POST /login HTTP/1.1\r\nHost: gateway\r\nContent-Ty")
        .await
        .unwrap();
    let answer = read_to_close(&mut slow).await;
    let header_cut = started.elapsed();
    assert!(answer.is_empty(), "{answer}");
    assert!(header_cut >= header_timeout, "{header_cut:?}");

    // Headers in time, then a body that never comes: the request times out with a problem.
    let started = Instant::now();
    let mut slow_body = TcpStream::connect(gateway.address).await.unwrap();
    slow_body
        .write_all(
            b"POST /login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let answer = read_to_close(&mut slow_body).await;
    let body_cut = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(answer.contains(r#""status":503"#), "{answer}");
    assert!(body_cut >= request_timeout, "{body_cut:?}");

    // Two connections hold both slots with partial headers; a third is not served until the
    // header timeout frees one.
    let started = Instant::now();
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gateway.address).await.unwrap();
        stream
            .write_all(b"GET /openapi.json HTTP/1.1\r\n")
            .await
            .unwrap();
        holders.push(stream);
    }
    let mut third = TcpStream::connect(gateway.address).await.unwrap();
    third
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut third).await;
    let third_answered = started.elapsed();
    for mut holder in holders {
        assert!(read_to_close(&mut holder).await.is_empty());
    }
    println!(
        "partial header closed after {header_cut:?}; partial body answered 503 after {body_cut:?}; with 2 slots held, a third connection answered after {third_answered:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        third_answered >= header_timeout,
        "served while both slots were held: {third_answered:?}"
    );
    gateway.stop().await;
}
