//! The RabbitMQ management API, as the operator reads it: queue depths for the autoscaler, and
//! a managed cluster's running nodes and queue members for the status.

use std::time::Duration;

use pipeline_api::RabbitmqClusterStatus;
use pipeline_contract::topology;

/// Where a pipeline's management API answers, with what credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Management {
    pub url: String,
    pub vhost: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("failed to read {what} from the RabbitMQ management API: {reason}")]
    Read { what: String, reason: String },
}

/// The queues the workloads declare, whose members the status reports.
pub fn workload_queues() -> [String; 4] {
    [
        topology::ORDERS_QUEUE.to_owned(),
        topology::NOTIFIER_QUEUE.to_owned(),
        topology::dead_letter_queue(topology::ORDERS_QUEUE),
        topology::dead_letter_queue(topology::NOTIFIER_QUEUE),
    ]
}

impl Management {
    /// `GET <url>/api/<path>` as JSON; `None` for a 404.
    async fn get(
        &self,
        http: &reqwest::Client,
        path: &str,
        what: &str,
    ) -> Result<Option<serde_json::Value>, ManagementError> {
        let error = |reason: String| ManagementError::Read {
            what: what.to_owned(),
            reason,
        };
        let url = format!("{}/api/{path}", self.url.trim_end_matches('/'));
        let response = http
            .get(&url)
            .basic_auth(&self.username, Some(&self.password))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| error(e.without_url().to_string()))?;
        if response.status().as_u16() == 404 {
            return Ok(None);
        }
        let body = response
            .error_for_status()
            .map_err(|e| error(e.without_url().to_string()))?
            .json()
            .await
            .map_err(|e| error(e.without_url().to_string()))?;
        Ok(Some(body))
    }

    /// One queue of the vhost, `None` when it is not declared.
    pub async fn queue(
        &self,
        http: &reqwest::Client,
        queue: &str,
    ) -> Result<Option<serde_json::Value>, ManagementError> {
        let path = format!("queues/{}/{}", encode(&self.vhost), encode(queue));
        self.get(http, &path, &format!("queue {queue}")).await
    }

    /// The cluster's running nodes and the members of each workload queue.
    pub async fn cluster(
        &self,
        http: &reqwest::Client,
    ) -> Result<RabbitmqClusterStatus, ManagementError> {
        let nodes = self.get(http, "nodes", "the nodes").await?;
        let mut status = RabbitmqClusterStatus {
            running_nodes: running_nodes(nodes.as_ref()),
            ..RabbitmqClusterStatus::default()
        };
        for queue in workload_queues() {
            if let Some(body) = self.queue(http, &queue).await? {
                status.queue_members.insert(queue, members(&body));
            }
        }
        Ok(status)
    }
}

/// The names of the running nodes in a `GET /api/nodes` answer, sorted.
fn running_nodes(nodes: Option<&serde_json::Value>) -> Vec<String> {
    let mut running: Vec<String> = nodes
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|node| node["running"].as_bool() == Some(true))
        .filter_map(|node| node["name"].as_str().map(str::to_owned))
        .collect();
    running.sort();
    running
}

/// A quorum queue's members (its `members` list); a classic queue has one, its node.
fn members(queue: &serde_json::Value) -> i32 {
    queue["members"].as_array().map_or(1, |members| {
        i32::try_from(members.len()).unwrap_or(i32::MAX)
    })
}

/// What a path segment keeps unencoded: RFC 3986's unreserved characters but `~`.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.');

/// Percent-encodes a path segment (a vhost `/` is `%2F`).
fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}

/// With `replicas` nodes wanted, what keeps the cluster from being whole, if anything: a node
/// not running, or a workload queue without a member on every node.
pub fn incomplete(status: &RabbitmqClusterStatus, replicas: i32) -> Option<String> {
    if let Some(error) = &status.error {
        return Some(format!("RabbitMQ cluster unknown ({error})"));
    }
    let running = i32::try_from(status.running_nodes.len()).unwrap_or(i32::MAX);
    if running < replicas {
        return Some(format!("RabbitMQ cluster {running}/{replicas} nodes"));
    }
    let short: Vec<String> = status
        .queue_members
        .iter()
        .filter(|(_, members)| **members < replicas)
        .map(|(queue, members)| format!("{queue} {members}/{replicas} members"))
        .collect();
    (!short.is_empty()).then(|| short.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cluster_is_whole_only_with_every_node_and_every_member() {
        let nodes = json!([
            {"name": "rabbit@b", "running": true},
            {"name": "rabbit@a", "running": true},
            {"name": "rabbit@c", "running": false},
        ]);
        let mut status = RabbitmqClusterStatus {
            running_nodes: running_nodes(Some(&nodes)),
            ..RabbitmqClusterStatus::default()
        };
        assert_eq!(status.running_nodes, ["rabbit@a", "rabbit@b"]);
        assert_eq!(
            incomplete(&status, 3).as_deref(),
            Some("RabbitMQ cluster 2/3 nodes")
        );
        assert_eq!(incomplete(&status, 2), None, "no queue declared yet");
        status.queue_members.insert(
            "orders.queue".to_owned(),
            members(&json!({"members": ["rabbit@a"]})),
        );
        status.queue_members.insert(
            "notifier.queue".to_owned(),
            members(&json!({"members": ["rabbit@a", "rabbit@b"]})),
        );
        assert_eq!(
            incomplete(&status, 2).as_deref(),
            Some("orders.queue 1/2 members")
        );
        status.error = Some("connection refused".to_owned());
        assert_eq!(
            incomplete(&status, 1).as_deref(),
            Some("RabbitMQ cluster unknown (connection refused)")
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("orders.queue"), "orders.queue");
        assert_eq!(encode("a b€"), "a%20b%E2%82%AC");
    }
}
