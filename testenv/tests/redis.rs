//! Redis from `cargo xtask env up redis` is real and usable with the `redis` crate.

use redis::AsyncCommands;

#[tokio::test]
async fn redis_round_trip_with_aof_on() {
    let env = testenv::Env::load();
    let client = redis::Client::open(env.require("OP_REDIS_URL")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();

    let key = testenv::unique("envcheck");
    let _: () = connection.set_ex(&key, 41, 60).await.unwrap();
    let value: i64 = connection.incr(&key, 1).await.unwrap();
    assert_eq!(value, 42);
    let ttl: i64 = connection.ttl(&key).await.unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    let _: () = connection.del(&key).await.unwrap();

    // The environment promises AOF persistence, so state survives a Redis restart.
    let appendonly: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(appendonly, ["appendonly", "yes"]);
}
