//! Races the seed lost: concurrent registrations of one email, concurrent identical orders.

mod support;

use futures::future::join_all;
use support::{Gateway, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_email_create_one_account() {
    let gateway = Gateway::start().await;
    let email = format!("{}@example.com", testenv::unique("race"));
    let attempts = (0..40).map(|attempt| {
        let password = format!("{PASSWORD}-{attempt}");
        let gateway = &gateway;
        let email = &email;
        async move { gateway.register(email, &password).await.status().as_u16() }
    });
    let statuses = join_all(attempts).await;
    let created = statuses.iter().filter(|&&status| status == 201).count();
    let conflicts = statuses.iter().filter(|&&status| status == 409).count();
    assert_eq!((created, conflicts), (1, 39), "{statuses:?}");

    // Exactly one of the passwords works: the winner's, never overwritten by a loser.
    let mut working = 0;
    for attempt in 0..40 {
        if gateway
            .login(&email, &format!("{PASSWORD}-{attempt}"))
            .await
            .status()
            == 200
        {
            working += 1;
        }
        // Stay under the per-account failure limit.
        if attempt % 4 == 3 {
            let mut redis = gateway.redis.clone();
            let _: () = redis::cmd("DEL")
                .arg(gateway.keys.failed_logins_by_email(&email))
                .arg(gateway.keys.failed_logins_by_address("127.0.0.1"))
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    }
    assert_eq!(working, 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_orders_are_accepted_once() {
    let gateway = Gateway::start().await;
    let (_, token) = gateway.account().await;
    let attempts = (0..50).map(|_| {
        let gateway = &gateway;
        let token = &token;
        async move {
            gateway
                .order(token, "burst-1", "sku", 3)
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = join_all(attempts).await;
    let accepted = statuses.iter().filter(|&&status| status == 202).count();
    // The others arrive while the winner is still publishing: not yet a "Duplicate" (should
    // its publish store nothing, the id is free again), but a 503 to retry; a 409 if the
    // winner was already done.
    let waiting = statuses.iter().filter(|&&status| status == 503).count();
    let duplicates = statuses.iter().filter(|&&status| status == 409).count();
    assert_eq!(accepted, 1, "{statuses:?}");
    assert_eq!(waiting + duplicates, 49, "{statuses:?}");
    // Retried once the winner is done, each is a duplicate.
    for _ in 0..waiting {
        let retry = gateway.order(&token, "burst-1", "sku", 3).await;
        assert_eq!(retry.status(), 409);
    }
    assert_eq!(gateway.drain_orders().await.len(), 1);
    gateway.stop().await;
}
