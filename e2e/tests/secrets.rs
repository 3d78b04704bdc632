//! No secret reaches a log, an Event or the status: run by `cargo xtask e2e` after the suite and
//! its fault tests (so the logs hold reconnects, failovers, crashes and refused requests), with
//! the variables of `e2e.rs` and `E2E_OPERATOR_NAMESPACE`, the operator's namespace.
//!
//! Invariant: no value of any Secret in the pipeline's namespace (the generated passwords, the
//! Erlang cookie, the token-signing key; every key but `username`) appears in any log line of any
//! container, init containers and restarted containers' previous runs included, of the
//! pipeline's namespace and the operator's; in any Event of either; in the pipeline's status; or
//! as a literal value in any pod's spec.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};
use pipeline_e2e::cluster::{Cluster, ClusterConfig, SKIP_MESSAGE};

/// Shorter values (`true`, a port) would match by chance; every generated secret is longer.
const MIN_SECRET_LENGTH: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster after the suite: cargo xtask e2e runs it"]
async fn no_secret_value_appears_in_any_log_event_status_or_pod_spec() -> Result<()> {
    let Some(config) = ClusterConfig::from_env() else {
        println!("{SKIP_MESSAGE}");
        return Ok(());
    };
    let cluster = Cluster::connect(&config).await?;
    let client = cluster.client();
    let namespace = cluster.namespace().to_owned();
    let operator_namespace = std::env::var("E2E_OPERATOR_NAMESPACE")
        .context("E2E_OPERATOR_NAMESPACE names the operator's namespace")?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut values = BTreeSet::new();
    let listed = secrets.list(&ListParams::default()).await?.items;
    for secret in &listed {
        for (key, value) in secret.data.iter().flatten() {
            if key == "username" {
                continue;
            }
            if let Ok(text) = String::from_utf8(value.0.clone()) {
                let text = text.trim().to_owned();
                if text.len() >= MIN_SECRET_LENGTH {
                    values.insert(text);
                }
            }
        }
    }
    ensure!(
        values.len() >= 4,
        "expected the generated secrets (RabbitMQ, Redis, Cassandra, the token key), found {} values in {} Secrets",
        values.len(),
        listed.len()
    );

    let mut leaks = Vec::new();
    let mut scan = |source: String, text: &str| {
        for value in &values {
            if text.contains(value.as_str()) {
                leaks.push(format!(
                    "{source} holds a secret value ({} characters)",
                    value.len()
                ));
            }
        }
    };
    let (mut containers, mut lines) = (0, 0);
    for scope in [namespace.as_str(), operator_namespace.as_str()] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), scope);
        for pod in pods.list(&ListParams::default()).await?.items {
            let name = pod.name_any();
            scan(
                format!("pod {scope}/{name}'s spec"),
                &serde_json::to_string(&pod.spec).unwrap_or_default(),
            );
            let statuses = pod.status.as_ref().map(|status| {
                status
                    .init_container_statuses
                    .iter()
                    .flatten()
                    .chain(status.container_statuses.iter().flatten())
                    .map(|status| (status.name.clone(), status.restart_count))
                    .collect::<Vec<_>>()
            });
            for (container, restarts) in statuses.unwrap_or_default() {
                let runs: &[bool] = if restarts > 0 {
                    &[false, true]
                } else {
                    &[false]
                };
                for &previous in runs {
                    let params = LogParams {
                        container: Some(container.clone()),
                        previous,
                        ..LogParams::default()
                    };
                    // A previous run's log can be gone already; what exists is scanned.
                    let Ok(log) = pods.logs(&name, &params).await else {
                        continue;
                    };
                    containers += 1;
                    lines += log.lines().count();
                    let run = if previous { " (previous run)" } else { "" };
                    scan(format!("the log of {scope}/{name}/{container}{run}"), &log);
                }
            }
        }
        let events: Api<Event> = Api::namespaced(client.clone(), scope);
        let events = events.list(&ListParams::default()).await?.items;
        for event in &events {
            scan(
                format!("Event {scope}/{}", event.name_any()),
                &serde_json::to_string(event).unwrap_or_default(),
            );
        }
        println!("{scope}: {} Events scanned", events.len());
    }
    let pipeline = cluster.pipeline().await?;
    scan(
        "the pipeline's status".to_owned(),
        &serde_json::to_string(&pipeline.status).unwrap_or_default(),
    );
    println!(
        "{} secret values of {} Secrets; {lines} log lines of {containers} container runs, the \
         Events and the status scanned: {} leaks",
        values.len(),
        listed.len(),
        leaks.len()
    );
    ensure!(
        leaks.is_empty(),
        "secret values leaked:\n{}",
        leaks.join("\n")
    );
    Ok(())
}
