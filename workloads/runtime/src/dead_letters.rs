//! The dead-letter queues are not a black hole: each consumer's binary lists its queue's dead
//! letters and re-drives them.
//!
//! ```text
//! processor dead-letters list [--limit N]     # each message: id, reason, body
//! processor dead-letters redrive [--limit N]  # back to orders.queue, oldest first
//! notifier dead-letters list|redrive ...      # notifier.queue's
//! ```
//!
//! On Kubernetes: `kubectl exec deploy/<pipeline>-processor -- /processor dead-letters list`.
//! The command reads `RABBITMQ_URLS` as the workload does (the pod's own variables) and connects
//! to the first node that answers.
//!
//! Listing takes each message without acknowledging it and hands all back when done (the
//! channel closes), so it changes nothing but the messages' redelivery count (on RabbitMQ 4.x a
//! quorum queue's default delivery limit of 20 then applies to the dead-letter queue too: list
//! a queue a few times, not in a loop). Re-driving takes the messages waiting when it starts,
//! not those that fail again meanwhile, and publishes each message, body, message id and headers
//! but the failure reason, to its work queue through the queue's re-drive exchange (a fanout
//! bound to it alone: the consumer's own credentials may publish there, so into its own queue
//! and no other), waits for the broker's confirm, and only then
//! acknowledges the dead-letter copy: a crash in between leaves the message in both queues,
//! which the consumers absorb (they apply an order and send a notification once), never in
//! neither. A message that fails again is dead-lettered again with its new reason.

use std::fmt::Write as _;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use pipeline_contract::topology;

use crate::config::{self, Source, redact_url};

/// One dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// Why the consumer gave up on it (`x-failure-reason`).
    pub reason: String,
    pub body: Vec<u8>,
}

/// What the command was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    Redrive,
}

/// The messages at most one command handles, unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 1000;

/// Parses `dead-letters list|redrive [--limit N]` (the arguments after the program name).
/// `None` when the arguments are not a dead-letter command at all.
pub fn parse(args: &[String]) -> Option<Result<(Action, usize), String>> {
    let (first, rest) = args.split_first()?;
    if first != "dead-letters" {
        return None;
    }
    Some(parse_rest(rest))
}

fn parse_rest(rest: &[String]) -> Result<(Action, usize), String> {
    let usage = "usage: dead-letters list|redrive [--limit N]";
    let action = match rest.first().map(String::as_str) {
        Some("list") => Action::List,
        Some("redrive") => Action::Redrive,
        Some(other) => return Err(format!("unknown action {other:?}; {usage}")),
        None => return Err(usage.to_owned()),
    };
    match &rest[1..] {
        [] => Ok((action, DEFAULT_LIMIT)),
        [flag, value] if flag == "--limit" => match value.parse::<usize>() {
            Ok(limit) if limit > 0 => Ok((action, limit)),
            _ => Err(format!("--limit must be a positive number, got {value:?}")),
        },
        other => Err(format!("unexpected arguments {other:?}; {usage}")),
    }
}

/// For a workload's `main`: when the process was started as a dead-letter command, runs it for
/// `queue` with the process' own variables, prints its output and returns how it ended.
pub async fn run_if_asked(queue: &str) -> Option<Result<(), String>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (action, limit) = match parse(&args)? {
        Ok(parsed) => parsed,
        Err(error) => return Some(Err(error)),
    };
    Some(
        command(&config::ProcessEnv, queue, action, limit)
            .await
            .map(|output| print!("{output}")),
    )
}

/// Runs a dead-letter command for `queue` with the workload's configuration and returns what to
/// print, or an error that names the problem.
pub async fn command(
    source: &impl Source,
    queue: &str,
    action: Action,
    limit: usize,
) -> Result<String, String> {
    let urls = config::rabbitmq_urls(source).map_err(|error| error.to_string())?;
    let connection = connect(&urls).await?;
    let result = match action {
        Action::List => list(&connection, queue, limit)
            .await
            .map(|letters| {
                let mut out = String::new();
                for letter in &letters {
                    let _ = writeln!(
                        out,
                        "{}\t{}\t{}",
                        letter.message_id.as_deref().unwrap_or("-"),
                        letter.reason,
                        printable(&letter.body)
                    );
                }
                let _ = writeln!(
                    out,
                    "{} dead letter(s) in {}",
                    letters.len(),
                    topology::dead_letter_queue(queue)
                );
                out
            })
            .map_err(|error| error.to_string()),
        Action::Redrive => redrive(&connection, queue, limit).await.map(|moved| {
            format!(
                "re-drove {moved} message(s) from {} to {queue}\n",
                topology::dead_letter_queue(queue)
            )
        }),
    };
    let _ = connection.close(200, ShortString::from("done")).await;
    result.map_err(|error| format!("RabbitMQ: {error}"))
}

async fn connect(urls: &[String]) -> Result<Connection, String> {
    let mut failures = Vec::new();
    for url in urls {
        match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(connection) => return Ok(connection),
            Err(error) => failures.push(format!("{}: {error}", redact_url(url))),
        }
    }
    Err(format!(
        "no RabbitMQ node answered: {}",
        failures.join("; ")
    ))
}

/// The oldest message of the dead-letter queue `dead_letters`, taken unacknowledged.
async fn next_dead_letter(
    channel: &Channel,
    dead_letters: &str,
) -> lapin::Result<Option<BasicGetMessage>> {
    channel
        .basic_get(ShortString::from(dead_letters), BasicGetOptions::default())
        .await
}

/// Up to `limit` dead letters of `queue`, oldest first, all left in place.
pub async fn list(
    connection: &Connection,
    queue: &str,
    limit: usize,
) -> lapin::Result<Vec<DeadLetter>> {
    let channel = connection.create_channel().await?;
    let dead_letters = topology::dead_letter_queue(queue);
    let mut letters = Vec::new();
    while letters.len() < limit {
        let Some(message) = next_dead_letter(&channel, &dead_letters).await? else {
            break;
        };
        letters.push(DeadLetter {
            message_id: message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            reason: failure_reason(message.delivery.properties.headers().as_ref()),
            body: message.delivery.data.clone(),
        });
    }
    // Unacknowledged: closing the channel hands every one back, in order.
    channel
        .close(200, ShortString::from("listed"))
        .await
        .map(|()| letters)
}

/// Moves up to `limit` dead letters of `queue` back to it, oldest first; returns how many.
pub async fn redrive(connection: &Connection, queue: &str, limit: usize) -> Result<usize, String> {
    redrive_on(connection, queue, limit)
        .await
        .map_err(|error| error.to_string())?
}

async fn redrive_on(
    connection: &Connection,
    queue: &str,
    limit: usize,
) -> lapin::Result<Result<usize, String>> {
    let channel = connection.create_channel().await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let dead_letters = topology::dead_letter_queue(queue);
    // Only what is there now: a message that fails again comes back to this queue while the
    // command runs and must not be re-driven round and round.
    let waiting = crate::queues::depth(&channel, &dead_letters).await?.ready as usize;
    let limit = limit.min(waiting);
    let mut moved = 0;
    while moved < limit {
        let Some(message) = next_dead_letter(&channel, &dead_letters).await? else {
            break;
        };
        let delivery = &message.delivery;
        let taken = republish(
            &publisher,
            queue,
            delivery.properties.clone(),
            &delivery.data,
        )
        .await?;
        if !taken {
            // Left unacknowledged: the channel's close hands it back to the dead-letter queue.
            let _ = channel.close(200, ShortString::from("stopped")).await;
            return Ok(Err(format!(
                "the broker did not take a re-driven message (nack or no queue {queue:?}); re-drove {moved} before it"
            )));
        }
        delivery.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    let _ = channel.close(200, ShortString::from("re-driven")).await;
    let _ = publisher.close(200, ShortString::from("re-driven")).await;
    Ok(Ok(moved))
}

/// Publishes to `queue` (through its re-drive exchange) and waits for the confirm; whether the
/// broker took the message.
async fn republish(
    publisher: &Channel,
    queue: &str,
    properties: BasicProperties,
    body: &[u8],
) -> lapin::Result<bool> {
    let mut headers = properties.headers().clone().unwrap_or_default();
    let mut kept = FieldTable::default();
    for (key, value) in headers.inner().iter() {
        if key.as_str() != topology::FAILURE_REASON_HEADER {
            kept.insert(key.clone(), value.clone());
        }
    }
    headers = kept;
    let confirm = publisher
        .basic_publish(
            ShortString::from(topology::redrive_exchange(queue).as_str()),
            ShortString::from(""),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties.with_headers(headers).with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(matches!(confirm, Confirmation::Ack(None)))
}

fn failure_reason(headers: Option<&FieldTable>) -> String {
    match headers.and_then(|headers| {
        headers
            .inner()
            .get(topology::FAILURE_REASON_HEADER)
            .cloned()
    }) {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        Some(other) => format!("{other:?}"),
        None => "(no reason recorded)".to_owned(),
    }
}

/// The body as one line of at most 200 characters.
fn printable(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        format!("{line}…")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_command_line_is_parsed_or_explained() {
        assert_eq!(parse(&args("--version")), None);
        assert_eq!(parse(&[]), None);
        assert_eq!(
            parse(&args("dead-letters list")),
            Some(Ok((Action::List, DEFAULT_LIMIT)))
        );
        assert_eq!(
            parse(&args("dead-letters redrive --limit 5")),
            Some(Ok((Action::Redrive, 5)))
        );
        for bad in [
            "dead-letters",
            "dead-letters purge",
            "dead-letters list --limit 0",
            "dead-letters list --limit x",
            "dead-letters list extra",
        ] {
            let error = parse(&args(bad)).unwrap().unwrap_err();
            assert!(
                error.contains("usage") || error.contains("--limit"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn bodies_print_on_one_bounded_line() {
        assert_eq!(printable(b"a\nb"), "a b");
        let long = "x".repeat(300);
        assert_eq!(printable(long.as_bytes()).chars().count(), 201);
    }
}
