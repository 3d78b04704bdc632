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

/// Group commit: orders placed at the same moment share AMQP messages, and every one of them is
/// in exactly one message, with the body the client sent; every 202 came after its message's
/// confirm (the message is in the queue when the test reads it, with no consumer running). One
/// publish in flight at a time makes the grouping certain under a burst; `ORDER_BATCH_MAX=1`
/// turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_together_share_messages_and_each_is_in_exactly_one() {
    const ORDERS: usize = 200;
    for (batch_max, grouped) in [("64", true), ("1", false)] {
        let gateway = Gateway::start_with(|vars| {
            vars.insert(
                pipeline_contract::env::ORDER_BATCH_MAX.into(),
                batch_max.into(),
            );
            vars.insert(
                pipeline_contract::env::ORDER_PUBLISHES_IN_FLIGHT.into(),
                "1".into(),
            );
        })
        .await;
        let (_, token) = gateway.account().await;
        let placed = (0..ORDERS).map(|n| {
            let (gateway, token) = (&gateway, &token);
            async move {
                let id = format!("grouped-{n}");
                let response = gateway.order(token, &id, "sku", 1 + n as i64 % 5).await;
                (id, response.status().as_u16())
            }
        });
        let statuses = join_all(placed).await;
        assert!(
            statuses.iter().all(|(_, status)| *status == 202),
            "{statuses:?}"
        );
        let messages = gateway.drain_order_messages().await;
        let mut ids: Vec<String> = messages
            .iter()
            .flatten()
            .map(|placed| {
                let n: usize = placed.order.order_id["grouped-".len()..].parse().unwrap();
                assert_eq!(placed.order.qty, 1 + n as u32 % 5, "{placed:?}");
                placed.order.order_id.clone()
            })
            .collect();
        ids.sort();
        let mut expected: Vec<String> = statuses.into_iter().map(|(id, _)| id).collect();
        expected.sort();
        assert_eq!(ids, expected, "each accepted order in exactly one message");
        let largest = messages.iter().map(Vec::len).max().unwrap();
        println!(
            "ORDER_BATCH_MAX={batch_max}: {ORDERS} orders in {} messages, the largest holding {largest}",
            messages.len()
        );
        if grouped {
            assert!(messages.len() < ORDERS, "no two orders shared a message");
            assert!(largest <= 64);
        } else {
            assert_eq!(messages.len(), ORDERS);
        }
        gateway.stop().await;
    }
}
