//! An `Isolation` removes its vhost, its keys and its workload users when dropped, also when
//! the test holding it panics half-way: the reason it exists.

use pipeline_contract::Workload;
use redis::AsyncCommands;

/// Whether the management API still knows vhost `name`.
async fn vhost_exists(env: &testenv::Env, name: &str) -> bool {
    let management = env.require("OP_RABBITMQ_MANAGEMENT_URLS");
    let management = management.split(',').next().unwrap();
    let status = reqwest::Client::new()
        .get(format!("{management}/api/vhosts/{name}"))
        .basic_auth(
            env.require("OP_RABBITMQ_USER"),
            Some(env.require("OP_RABBITMQ_PASSWORD")),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert!(
        status == 200 || status == 404,
        "GET vhost answered {status}"
    );
    status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_no_vhost_key_or_user_behind() {
    let env = testenv::Env::load();
    let (sender, made) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let isolation = testenv::Isolation::new("isocheck").await;
        let mut redis = isolation.redis.clone();
        let key = isolation.keys.inventory("sku");
        let _: () = redis.set(&key, 5).await.unwrap();
        let user = isolation.redis_user(Workload::Dashboard).await;
        sender
            .send((isolation.vhost().name.clone(), key, user.username))
            .unwrap();
        panic!("an assertion of the test failed");
    });
    let (vhost, key, user) = made.await.unwrap();
    let outcome = test.await;
    assert!(
        outcome.unwrap_err().is_panic(),
        "the test was meant to panic"
    );

    let mut redis = redis::Client::open(env.require("OP_REDIS_URL"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let left: Option<i64> = redis.get(&key).await.unwrap();
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut redis)
        .await
        .unwrap();
    let vhost_left = vhost_exists(&env, &vhost).await;
    println!(
        "after the panic: vhost {vhost} left: {vhost_left}, key {key} left: {}, user {user} left: {}",
        left.is_some(),
        users.contains(&user)
    );
    assert!(!vhost_left, "vhost {vhost} survived the panic");
    assert_eq!(left, None, "key {key} survived the panic");
    assert!(
        !users.contains(&user),
        "Redis user {user} survived the panic"
    );
}
