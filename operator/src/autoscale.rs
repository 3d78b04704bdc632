//! Queue-depth autoscaling of the processor and notifier.
//!
//! The operator reads the depth of `orders.queue` and `notifier.queue` from the pipeline's
//! RabbitMQ management API and sets the workload's replicas to `ceil(depth / target per replica)`
//! within the resource's bounds. Scaling up happens at once (a backlog is growing); scaling down
//! only once the lower count has been wanted for the whole stabilisation window, so a burst
//! followed by a lull does not make the pods flap. The window is tracked in memory: an operator
//! restart starts it again, which can only delay a scale-down, never hasten one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pipeline_api::Autoscaling;
use pipeline_contract::topology;

use crate::controller::build::Workload;
use crate::management::ManagementError;

/// One replica-count decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub replicas: i32,
    pub reason: String,
}

/// The pure rule. `low_since` is when a count below `current` was first wanted (and has been
/// ever since), or `None`.
pub fn decide(
    current: i32,
    depth: i64,
    bounds: &Autoscaling,
    low_since: Option<Instant>,
    now: Instant,
) -> (Decision, Option<Instant>) {
    let target = u64::try_from(bounds.target_queue_depth_per_replica.max(1)).unwrap_or(1);
    let needed = u64::try_from(depth.max(0)).unwrap_or(0).div_ceil(target);
    let wanted = i64::try_from(needed).unwrap_or(i64::MAX).clamp(
        i64::from(bounds.min_replicas),
        i64::from(bounds.max_replicas),
    );
    let wanted = i32::try_from(wanted).unwrap_or(bounds.max_replicas);
    let current = current.clamp(bounds.min_replicas, bounds.max_replicas);
    if wanted > current {
        let reason = format!("{depth} messages waiting: scaling up to {wanted}");
        return (
            Decision {
                replicas: wanted,
                reason,
            },
            None,
        );
    }
    if wanted == current {
        let reason = format!("{depth} messages waiting: {current} replicas are right");
        return (
            Decision {
                replicas: current,
                reason,
            },
            None,
        );
    }
    let since = low_since.unwrap_or(now);
    let window = Duration::from_secs(u64::try_from(bounds.scale_down_window_seconds).unwrap_or(0));
    if now.duration_since(since) >= window {
        let reason = format!(
            "{depth} messages waiting for {}s: scaling down to {wanted}",
            window.as_secs()
        );
        (
            Decision {
                replicas: wanted,
                reason,
            },
            None,
        )
    } else {
        let reason = format!(
            "{depth} messages waiting: {wanted} would do, holding {current} for the {}s window",
            window.as_secs()
        );
        (
            Decision {
                replicas: current,
                reason,
            },
            Some(since),
        )
    }
}

pub use crate::management::Management;

/// The queue a scaled workload consumes.
pub fn queue_of(workload: Workload) -> Option<&'static str> {
    match workload {
        Workload::Processor => Some(topology::ORDERS_QUEUE),
        Workload::Notifier => Some(topology::NOTIFIER_QUEUE),
        Workload::Gateway | Workload::Dashboard => None,
    }
}

/// The vhost of an AMQP URL as the workloads' client (lapin) reads it: the path after the
/// first `/`, percent-decoded (`amqp://host:5672/%2f` is `/`), or `/` when the URL has no path.
/// `None` when the endpoint is not an AMQP URL (the build refuses such a pipeline).
pub fn vhost_of(amqp_url: &str) -> Option<String> {
    let url = url::Url::parse(amqp_url).ok()?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return None;
    }
    Some(match url.path().get(1..) {
        None => "/".to_owned(),
        Some(path) => percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .into_owned(),
    })
}

/// Reads a queue's depth (ready plus unacknowledged messages); a queue not declared yet has
/// none waiting.
pub async fn depth(
    http: &reqwest::Client,
    management: &Management,
    queue: &str,
) -> Result<i64, ManagementError> {
    let body = management.queue(http, queue).await?;
    Ok(body
        .and_then(|queue| queue["messages"].as_i64())
        .unwrap_or(0))
}

/// When each scaled workload of each pipeline first wanted fewer replicas, by the pipeline's UID
/// (a pipeline deleted and created again under its name starts afresh).
#[derive(Debug, Default)]
pub struct Windows {
    low_since: Mutex<BTreeMap<(String, Workload), Instant>>,
}

impl Windows {
    pub fn get(&self, uid: &str, workload: Workload) -> Option<Instant> {
        self.lock().get(&(uid.to_owned(), workload)).copied()
    }

    pub fn set(&self, uid: &str, workload: Workload, since: Option<Instant>) {
        let mut windows = self.lock();
        let key = (uid.to_owned(), workload);
        match since {
            Some(since) => windows.insert(key, since),
            None => windows.remove(&key),
        };
    }

    /// Forgets the windows of pipelines that are gone.
    pub fn retain(&self, alive: impl Fn(&str) -> bool) {
        self.lock().retain(|(uid, _), _| alive(uid));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, Workload), Instant>> {
        self.low_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(min: i32, max: i32, target: i32, window: i32) -> Autoscaling {
        Autoscaling {
            min_replicas: min,
            max_replicas: max,
            target_queue_depth_per_replica: target,
            scale_down_window_seconds: window,
        }
    }

    #[test]
    fn scales_up_at_once_within_bounds() {
        let now = Instant::now();
        let (decision, pending) = decide(1, 35, &bounds(1, 10, 10, 60), None, now);
        assert_eq!((decision.replicas, pending), (4, None));
        let (decision, _) = decide(1, 10_000, &bounds(1, 10, 10, 60), None, now);
        assert_eq!(decision.replicas, 10, "capped at max");
        let (decision, _) = decide(5, 0, &bounds(2, 10, 10, 0), None, now);
        assert_eq!(decision.replicas, 2, "floored at min");
    }

    #[test]
    fn scales_down_only_after_the_window() {
        let start = Instant::now();
        let bounds = bounds(1, 10, 10, 30);
        let (hold, pending) = decide(5, 0, &bounds, None, start);
        assert_eq!((hold.replicas, pending), (5, Some(start)));
        let (still, pending) = decide(5, 0, &bounds, pending, start + Duration::from_secs(29));
        assert_eq!((still.replicas, pending), (5, Some(start)));
        let (down, pending) = decide(5, 0, &bounds, pending, start + Duration::from_secs(30));
        assert_eq!((down.replicas, pending), (1, None));
        // A burst in the middle of the window resets it.
        let (_, pending) = decide(5, 0, &bounds, None, start);
        let (burst, pending) = decide(5, 50, &bounds, pending, start + Duration::from_secs(10));
        assert_eq!((burst.replicas, pending), (5, None));
    }

    #[test]
    fn windows_are_kept_by_uid_and_forgotten_with_their_pipeline() {
        let windows = Windows::default();
        let start = Instant::now();
        windows.set("uid-1", Workload::Processor, Some(start));
        windows.set("uid-2", Workload::Notifier, Some(start));
        assert_eq!(windows.get("uid-1", Workload::Processor), Some(start));
        assert_eq!(windows.get("uid-1", Workload::Notifier), None);
        // Pipeline uid-2 is gone.
        windows.retain(|uid| uid == "uid-1");
        assert_eq!(windows.len(), 1);
        assert_eq!(windows.get("uid-2", Workload::Notifier), None);
        windows.set("uid-1", Workload::Processor, None);
        assert!(windows.is_empty());
    }

    #[test]
    fn vhosts_are_read_from_amqp_urls() {
        let vhost = |url| vhost_of(url).unwrap();
        assert_eq!(vhost("amqp://host:5672/%2f"), "/");
        assert_eq!(vhost("amqp://host:5672"), "/");
        assert_eq!(vhost("amqps://u:p@host/prod"), "prod");
        assert_eq!(vhost("amqp://host/a%2Fb?heartbeat=10"), "a/b");
        // A multi-byte character right after '%' panicked the hand-written decoder, and with it
        // the operator, for every pipeline.
        assert_eq!(vhost("amqp://h:5672/%a€"), "%a€");
        assert_eq!(vhost("amqp://h:5672/%"), "%");
        assert_eq!(vhost("amqp://h:5672/%E2%82%AC"), "€");
        assert_eq!(vhost_of("http://h/x"), None);
        assert_eq!(vhost_of("not a url €"), None);
    }
}
