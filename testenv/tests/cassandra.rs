//! Cassandra from `cargo xtask env up cassandra` is real: password authentication with the seed's
//! credentials, a keyspace and table created through the `scylla` driver, and a lightweight
//! transaction that applies once.

use scylla::client::session_builder::SessionBuilder;

#[tokio::test]
async fn keyspace_table_and_lightweight_transaction() {
    let env = testenv::Env::load();
    let session = SessionBuilder::new()
        .known_node(env.require("OP_CASSANDRA_ADDR"))
        .user(
            env.require("OP_CASSANDRA_USER"),
            env.require("OP_CASSANDRA_PASSWORD"),
        )
        .build()
        .await
        .expect("connect and log in to Cassandra");

    // Wrong credentials are refused: authentication is really on.
    let refused = SessionBuilder::new()
        .known_node(env.require("OP_CASSANDRA_ADDR"))
        .user("cassandra", "not-the-password")
        .build()
        .await;
    assert!(refused.is_err(), "a wrong password was accepted");

    let keyspace = testenv::unique("envcheck").replace('-', "_");
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            &[],
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            format!("CREATE TABLE {keyspace}.users (email text PRIMARY KEY, password_hash text)"),
            &[],
        )
        .await
        .unwrap();

    let insert =
        format!("INSERT INTO {keyspace}.users (email, password_hash) VALUES (?, ?) IF NOT EXISTS");
    let first = session
        .query_unpaged(insert.as_str(), ("a@example.com", "hash-1"))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let (applied,): (bool,) = first.first_row().unwrap();
    assert!(applied, "first insert must apply");

    let second = session
        .query_unpaged(insert.as_str(), ("a@example.com", "hash-2"))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let (applied, _email, hash): (bool, Option<String>, Option<String>) =
        second.first_row().unwrap();
    assert!(!applied, "second insert of the same key must not apply");
    assert_eq!(hash.as_deref(), Some("hash-1"));

    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), &[])
        .await
        .unwrap();
}
