//! Each workload's own RabbitMQ and Redis users, as the operator creates them in a cluster, made
//! in the local environment for one test: the grants come from `pipeline_contract::access`, so
//! a test that runs a workload with these credentials proves the grants are enough, and one that
//! tries more proves they are not too many.

use pipeline_contract::Workload;
use pipeline_contract::keys::Keys;

use crate::{Vhost, unique};

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn new_credentials(name: &str) -> Credentials {
    Credentials {
        username: unique(name),
        password: uuid::Uuid::new_v4().simple().to_string(),
    }
}

impl Vhost {
    /// The vhost's AMQP URLs without credentials, for a workload given its own with
    /// `RABBITMQ_USERNAME` and `RABBITMQ_PASSWORD`.
    pub fn bare_urls(&self) -> Vec<String> {
        self.urls
            .iter()
            .map(|url| match (url.split_once("://"), url.split_once('@')) {
                (Some((scheme, _)), Some((_, rest))) => format!("{scheme}://{rest}"),
                _ => url.clone(),
            })
            .collect()
    }

    /// Creates `workload`'s RabbitMQ user with exactly its permissions on this vhost. Deleted
    /// with the vhost.
    pub async fn workload_user(&self, workload: Workload) -> Credentials {
        let permissions = workload.rabbitmq();
        let credentials = new_credentials(&format!("{}-{}", self.name, workload.name()));
        let client = reqwest::Client::new();
        let user = &credentials.username;
        client
            .put(format!("{}/api/users/{user}", self.management))
            .basic_auth(&self.user, Some(&self.password))
            .json(&serde_json::json!({"password": credentials.password, "tags": ""}))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("failed to create RabbitMQ user {user}: {error}"));
        self.workload_users.lock().unwrap().push(user.clone());
        client
            .put(format!(
                "{}/api/permissions/{}/{user}",
                self.management, self.name
            ))
            .basic_auth(&self.user, Some(&self.password))
            .json(&serde_json::json!({
                "configure": permissions.configure,
                "write": permissions.write,
                "read": permissions.read,
            }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("failed to set permissions of {user}: {error}"));
        credentials
    }
}

/// Creates `workload`'s Redis ACL user, limited to its commands and to keys under `keys`'
/// prefix. Remove it with [`delete_redis_user`].
pub async fn redis_user(redis_url: &str, workload: Workload, keys: &Keys) -> Credentials {
    let credentials = new_credentials(workload.name());
    let client = redis::Client::open(redis_url)
        .unwrap_or_else(|error| panic!("bad Redis URL {redis_url}: {error}"));
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|error| panic!("cannot reach Redis at {redis_url}: {error}"));
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&credentials.username)
        .arg("reset")
        .arg("on")
        .arg(format!(">{}", credentials.password))
        .arg(workload.redis_rules(keys))
        .exec_async(&mut connection)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "failed to create Redis user {}: {error}",
                credentials.username
            )
        });
    credentials
}

/// Deletes a Redis ACL user made by [`redis_user`].
pub async fn delete_redis_user(redis_url: &str, username: &str) {
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
        let _ = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(username)
            .exec_async(&mut connection)
            .await;
    }
}

/// Publishes `body` to `exchange` with `routing_key` on a channel of its own, with publisher
/// confirms, and returns the broker's verdict: a refused publish closes the channel
/// asynchronously, so a round trip after the confirm makes the refusal visible here.
pub async fn publish_confirmed(
    connection: &lapin::Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<(), String> {
    use lapin::options::{BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions};
    let outcome = async {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default(),
            )
            .await?
            .await?;
        channel.basic_qos(1, BasicQosOptions::default()).await
    }
    .await;
    outcome.map_err(|error| error.to_string())
}
