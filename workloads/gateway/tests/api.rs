//! The gateway against the real Redis, RabbitMQ cluster and Cassandra: the seed README's flows
//! with its exact answers, then everything the seed got wrong.

mod support;

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use lapin::options::QueueDeleteOptions;
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};
use pipeline_contract::topology;
use redis::AsyncCommands;
use serde_json::{Value, json};
use support::{Gateway, PASSWORD, SECRET};

async fn text(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "status {status}"
    );
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_seed_walkthrough_with_its_documented_answers() {
    let gateway = Gateway::start().await;
    let email = format!("{}@example.com", testenv::unique("customer"));

    assert_eq!(
        text(gateway.register(&email, PASSWORD).await).await,
        (201, "User registered successfully".to_owned())
    );
    let (status, conflict) = problem(gateway.register(&email, "anotherpassword").await).await;
    assert_eq!(status, 409);
    assert_eq!(
        conflict["detail"],
        "an account with this email already exists"
    );

    let response = gateway.login(&email, PASSWORD).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT");

    assert_eq!(
        text(
            gateway
                .order(&token, "order123", "mag-safe-phone-case", 2)
                .await
        )
        .await,
        (202, "Order received: order123".to_owned())
    );
    assert_eq!(
        text(
            gateway
                .order(&token, "order123", "mag-safe-phone-case", 2)
                .await
        )
        .await,
        (409, "Duplicate order".to_owned())
    );

    // Exactly one message, carrying the order as accepted, is on the cluster.
    let orders = gateway.drain_orders().await;
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].order.order_id, "order123");
    assert_eq!(orders[0].order.owner, email);
    assert_eq!(
        (orders[0].order.sku.as_str(), orders[0].order.qty),
        ("mag-safe-phone-case", 2)
    );

    // The same id with a different body is not a duplicate but a mistake, and says so.
    let (status, mismatch) = problem(
        gateway
            .order(&token, "order123", "mag-safe-phone-case", 3)
            .await,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(mismatch["field"], "id");
    assert!(gateway.drain_orders().await.is_empty());

    // The owner sees the order's status.
    let status: Value = gateway
        .client
        .http
        .get(gateway.url("/orders/order123"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "accepted");
    assert_eq!(status["qty"], 2);

    let (status, body) = text(
        gateway
            .client
            .http
            .delete(gateway.url("/delete-user"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "User deleted successfully"));
    // The old token dies with the account, and the account is gone.
    let (status, revoked) = problem(
        gateway
            .order(&token, "order124", "mag-safe-phone-case", 1)
            .await,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        revoked["detail"],
        "the token was issued before its account was deleted"
    );
    assert_eq!(gateway.login(&email, PASSWORD).await.status(), 401);
    gateway.stop().await;
}

#[tokio::test]
async fn login_failures_look_alike_and_are_rate_limited() {
    let gateway = Gateway::start().await;
    let (email, _) = gateway.account().await;

    let (status, wrong_password) = problem(gateway.login(&email, "not-the-password").await).await;
    assert_eq!(status, 401);
    let unknown = format!("{}@example.com", testenv::unique("nobody"));
    let (status, unknown_email) = problem(gateway.login(&unknown, PASSWORD).await).await;
    assert_eq!(status, 401);
    assert_eq!(
        wrong_password, unknown_email,
        "the two failures must be indistinguishable"
    );

    // Five failures per account per minute (one is already spent above).
    for _ in 0..4 {
        assert_eq!(
            gateway.login(&email, "not-the-password").await.status(),
            401
        );
    }
    let limited = gateway.login(&email, PASSWORD).await;
    assert_eq!(
        limited.status(),
        429,
        "even the right password waits out the window"
    );
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // Another account from the same address is not locked out by this one...
    let (other, _) = gateway.account().await;
    assert_eq!(gateway.login(&other, PASSWORD).await.status(), 200);
    // ...until the address itself exceeds its limit (20 failures).
    for attempt in 0..20 {
        let stranger = format!("spray{attempt}-{}@example.com", testenv::unique("x"));
        let status = gateway.login(&stranger, "guess-guess").await.status();
        assert!(status == 401 || status == 429, "{status}");
    }
    assert_eq!(gateway.login(&other, PASSWORD).await.status(), 429);
    gateway.stop().await;
}

fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_are_checked_strictly_with_the_seeds_401_403_split() {
    let gateway = Gateway::start().await;
    let (email, token) = gateway.account().await;
    let order = json!({"id": "o1", "sku": "s", "qty": 1});
    let post = |authorization: Option<String>| {
        let mut request = gateway
            .client
            .http
            .post(gateway.url("/orders"))
            .json(&order);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };

    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(
        post(Some(format!("Basic {token}"))).await.unwrap().status(),
        401
    );
    assert_eq!(post(Some("Bearer".into())).await.unwrap().status(), 401);
    assert_eq!(
        post(Some("Bearer not.a.jwt".into()))
            .await
            .unwrap()
            .status(),
        403
    );

    let now = jsonwebtoken::get_current_timestamp();
    let claims = |iat: u64, exp: u64| json!({"sub": email, "iat": iat, "exp": exp, "iss": "order-pipeline-gateway", "aud": "order-pipeline"});
    let expired = sign(&claims(now - 7200, now - 3600), SECRET.as_bytes());
    let (status, body) = problem(post(Some(format!("Bearer {expired}"))).await.unwrap()).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("the token has expired"))
    );

    let forged = sign(
        &claims(now, now + 60),
        b"somebody-elses-secret-of-32-bytes!!",
    );
    assert_eq!(
        post(Some(format!("Bearer {forged}")))
            .await
            .unwrap()
            .status(),
        403
    );

    let mut no_exp = claims(now, now + 60);
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = sign(&no_exp, SECRET.as_bytes());
    assert_eq!(
        post(Some(format!("Bearer {no_exp}")))
            .await
            .unwrap()
            .status(),
        403
    );

    // A token signed with our own secret but another algorithm is refused too.
    let hs384 = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS384),
        &claims(now, now + 60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        post(Some(format!("Bearer {hs384}")))
            .await
            .unwrap()
            .status(),
        403
    );

    // And the real token works.
    assert_eq!(
        post(Some(format!("Bearer {token}")))
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(gateway.drain_orders().await.len(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn bad_input_names_the_field_and_publishes_nothing() {
    let gateway = Gateway::start().await;
    let (_, token) = gateway.account().await;
    let send = |body: String, content_type: &'static str| {
        gateway
            .client
            .http
            .post(gateway.url("/orders"))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(String, &str, u16, Option<&str>)> = vec![
        (
            r#"{"id":"a","sku":"s","qty":1}"#.into(),
            "text/plain",
            415,
            None,
        ),
        (
            r#"{"id":"a","sku":"s","#.into(),
            "application/json",
            400,
            None,
        ),
        (
            r#"{"id":"a","sku":"s","qty":1,"price":9}"#.into(),
            "application/json",
            400,
            Some("price"),
        ),
        (
            r#"{"id":"a","sku":"s"}"#.into(),
            "application/json",
            400,
            Some("qty"),
        ),
        (
            r#"{"id":"a","sku":"s","qty":"two"}"#.into(),
            "application/json",
            400,
            Some("qty"),
        ),
        (
            r#"{"id":"","sku":"s","qty":1}"#.into(),
            "application/json",
            400,
            Some("id"),
        ),
        (
            format!(r#"{{"id":"{}","sku":"s","qty":1}}"#, "i".repeat(65)),
            "application/json",
            400,
            Some("id"),
        ),
        (
            r#"{"id":"a","sku":"","qty":1}"#.into(),
            "application/json",
            400,
            Some("sku"),
        ),
        (
            format!(r#"{{"id":"a","sku":"{}","qty":1}}"#, "s".repeat(129)),
            "application/json",
            400,
            Some("sku"),
        ),
        (
            r#"{"id":"a","sku":"s","qty":0}"#.into(),
            "application/json",
            400,
            Some("qty"),
        ),
        (
            r#"{"id":"a","sku":"s","qty":10001}"#.into(),
            "application/json",
            400,
            Some("qty"),
        ),
        (
            format!(
                r#"{{"id":"a","sku":"s","qty":1,"pad":"{}"}}"#,
                "x".repeat(20_000)
            ),
            "application/json",
            413,
            None,
        ),
    ];
    for (body, content_type, expected, field) in cases {
        let (status, details) = problem(send(body.clone(), content_type).await.unwrap()).await;
        let shown = &body[..body.len().min(60)];
        assert_eq!(status, expected, "{shown}: {details}");
        assert_eq!(details["field"].as_str(), field, "{shown}: {details}");
        assert!(!details["detail"].as_str().unwrap().is_empty());
    }
    assert!(
        gateway.drain_orders().await.is_empty(),
        "a rejected request published something"
    );
    // None of them claimed the id either: a valid order with it goes through.
    assert_eq!(gateway.order(&token, "a", "s", 1).await.status(), 202);
    gateway.stop().await;
}

#[tokio::test]
async fn idempotency_is_scoped_to_the_user_and_status_to_the_owner() {
    let gateway = Gateway::start().await;
    let (_, alice) = gateway.account().await;
    let (_, bob) = gateway.account().await;
    assert_eq!(
        gateway
            .order(&alice, "shared-id", "sku-a", 1)
            .await
            .status(),
        202
    );
    // Bob's order with the same id is his own, not a duplicate of Alice's.
    assert_eq!(
        gateway.order(&bob, "shared-id", "sku-b", 5).await.status(),
        202
    );
    assert_eq!(gateway.drain_orders().await.len(), 2);

    let status_of = |token: &str, id: &str| {
        gateway
            .client
            .http
            .get(gateway.url(&format!("/orders/{id}")))
            .bearer_auth(token)
            .send()
    };
    let alices: Value = status_of(&alice, "shared-id")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(alices["sku"], "sku-a");
    let bobs: Value = status_of(&bob, "shared-id")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bobs["sku"], "sku-b");
    assert_eq!(status_of(&bob, "alices-other").await.unwrap().status(), 404);
    gateway.stop().await;
}

#[tokio::test]
async fn a_failed_publish_answers_503_and_releases_the_id() {
    let gateway = Gateway::start().await;
    let (email, token) = gateway.account().await;
    // Remove the queue: the exchange then has nowhere to route, so the broker returns the
    // message and the gateway must not claim success.
    let connection = Connection::connect(
        &gateway.isolation.vhost().urls[0],
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            ShortString::from(topology::ORDERS_QUEUE),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();

    let response = gateway.order(&token, "retry-me", "sku", 1).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let mut redis = gateway.redis.clone();
    let claim: Option<String> = redis
        .get(gateway.keys.idempotency(&email, "retry-me"))
        .await
        .unwrap();
    assert_eq!(claim, None, "the idempotency claim must be released");

    // Once the queue is back (as the processor or the next gateway connection declares it),
    // the client's retry is accepted, not refused as a duplicate.
    gateway::declare_topology()(channel.clone()).await.unwrap();
    assert_eq!(
        gateway.order(&token, "retry-me", "sku", 1).await.status(),
        202
    );
    assert_eq!(gateway.drain_orders().await.len(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn openapi_document_matches_the_real_routes() {
    let gateway = Gateway::start().await;
    let document: Value = gateway
        .client
        .http
        .get(gateway.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = document["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.replace("{id}", "some-id")));
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            ("DELETE".to_owned(), "/delete-user".to_owned()),
            ("GET".to_owned(), "/orders/some-id".to_owned()),
            ("POST".to_owned(), "/login".to_owned()),
            ("POST".to_owned(), "/orders".to_owned()),
            ("POST".to_owned(), "/register".to_owned()),
        ]
    );
    // Every documented operation is routed (an unrouted one would be 404 or 405).
    for (method, path) in &documented {
        let response = gateway
            .client
            .http
            .request(method.parse().unwrap(), gateway.url(path))
            .send()
            .await
            .unwrap();
        assert!(
            ![404, 405].contains(&response.status().as_u16()),
            "{method} {path} -> {}",
            response.status()
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_and_confirms() {
    let gateway = Gateway::start().await;
    let (_, token) = gateway.account().await;
    assert_eq!(gateway.order(&token, "m1", "sku", 1).await.status(), 202);
    assert_eq!(gateway.order(&token, "m1", "sku", 1).await.status(), 409);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &gateway.registry).unwrap();
    assert!(
        text.contains(r#"http_requests_total{route="/orders",method="POST",status="202"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"http_requests_total{route="/orders",method="POST",status="409"} 1"#));
    assert!(
        text.contains(r#"rabbitmq_publishes_total{outcome="confirmed"} 1"#),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket"));
    tokio::time::sleep(Duration::ZERO).await;
    gateway.stop().await;
}
