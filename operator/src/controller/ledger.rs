//! What the operator last applied to each pipeline, so that a reconcile whose desired children
//! are unchanged and whose children show no drift can skip the ~27 server-side applies.
//!
//! Most reconciles are triggered by a child's *status* (a ReplicaSet created, a pod Ready): while
//! 100 pipelines roll out, that is about 13 reconciles per pipeline. An unchanged apply is a
//! no-op in the API server, but it still costs the server a merge per object; sending them all for
//! every status change made the operator the control plane's busiest client. Instead, such a
//! reconcile looks the pipeline's Deployments, StatefulSets and Services up in the controller's
//! caches (no request) and compares what it sees with what the last apply returned:
//!
//! - a Deployment or StatefulSet whose `metadata.generation` moved past the apply's has had its
//!   spec changed by someone else (an older one is a cache that has not caught up yet); a
//!   Service whose `resourceVersion` moved was edited (Services carry no status that changes on
//!   their own); a missing child was deleted. Any of these means a full apply.
//! - Everything else (ConfigMaps, Jobs, PodDisruptionBudgets, NetworkPolicies, metadata edits
//!   that do not bump a generation) is healed by the full apply that runs at least every
//!   [`FULL_APPLY_INTERVAL`], and at every change of the desired children.
//!
//! The ledger lives in memory, one per controller, and starts empty with every leadership term
//! (see `controller::run`), so a new leader's first pass applies everything.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::apply::Applied;
use super::build::Children;

/// The longest a pipeline goes without a full apply (and the drift healing it brings).
pub const FULL_APPLY_INTERVAL: Duration = Duration::from_secs(300);

/// The last full apply of every pipeline, by UID.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<HashMap<String, Entry>>,
}

/// What one full apply left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Hash of every desired child, as sent.
    fingerprint: u64,
    /// `metadata.generation` of each Deployment and StatefulSet after the apply, by name.
    generations: BTreeMap<String, i64>,
    /// `metadata.resourceVersion` of each Service after the apply, by name.
    service_versions: BTreeMap<String, String>,
    /// What became of the PodMonitor: the status reports it until the next full apply, so a
    /// Prometheus Operator installed meanwhile is noticed within [`FULL_APPLY_INTERVAL`].
    monitoring: crate::monitoring::Outcome,
    at: Instant,
}

impl Entry {
    /// Records what an apply of `children` (fingerprinted) returned.
    pub fn new(fingerprint: u64, applied: &Applied, at: Instant) -> Self {
        let mut generations = BTreeMap::new();
        for deployment in &applied.deployments {
            generations.insert(
                format!("Deployment/{}", deployment.name_any()),
                deployment.metadata.generation.unwrap_or_default(),
            );
        }
        for stateful_set in &applied.stateful_sets {
            generations.insert(
                format!("StatefulSet/{}", stateful_set.name_any()),
                stateful_set.metadata.generation.unwrap_or_default(),
            );
        }
        let service_versions = applied
            .services
            .iter()
            .map(|service| {
                (
                    service.name_any(),
                    service.resource_version().unwrap_or_default(),
                )
            })
            .collect();
        Self {
            fingerprint,
            generations,
            service_versions,
            monitoring: applied.monitoring.clone(),
            at,
        }
    }

    /// The children as listed now, when every child this apply returned is still there as it
    /// left it (so the status can be computed from them without applying); `None` when one
    /// drifted or is missing. Objects the apply did not return (a user's object carrying the
    /// pipeline's labels, an old child being garbage-collected) are not drift of the operator's
    /// children and are left out of the status.
    pub fn unchanged(
        &self,
        deployments: Vec<Arc<Deployment>>,
        stateful_sets: Vec<Arc<StatefulSet>>,
        services: Vec<Arc<Service>>,
    ) -> Option<Applied> {
        // For each listed object the ledger knows: Some(object) when unchanged, None when not.
        // An older generation than the apply returned is the cache not having caught up with
        // that apply yet, not a change by someone else (which can only raise it).
        let known = |kind: &str, name: String, generation: Option<i64>| {
            self.generations
                .get(&format!("{kind}/{name}"))
                .map(|recorded| generation.unwrap_or_default() <= *recorded)
        };
        let deployments: Vec<Arc<Deployment>> = deployments
            .into_iter()
            .filter_map(|d| {
                known("Deployment", d.name_any(), d.metadata.generation)
                    .map(|same| same.then_some(d))
            })
            .collect::<Option<_>>()?;
        let stateful_sets: Vec<Arc<StatefulSet>> = stateful_sets
            .into_iter()
            .filter_map(|s| {
                known("StatefulSet", s.name_any(), s.metadata.generation)
                    .map(|same| same.then_some(s))
            })
            .collect::<Option<_>>()?;
        let services: Vec<Arc<Service>> = services
            .into_iter()
            .filter_map(|service| {
                self.service_versions
                    .get(&service.name_any())
                    .map(|recorded| {
                        (Some(recorded) == service.resource_version().as_ref()).then_some(service)
                    })
            })
            .collect::<Option<_>>()?;
        // Every recorded child was listed: none was deleted.
        let complete = deployments.len() + stateful_sets.len() == self.generations.len()
            && services.len() == self.service_versions.len();
        complete.then_some(Applied {
            deployments,
            stateful_sets,
            services,
            monitoring: self.monitoring.clone(),
        })
    }
}

impl Entry {
    /// The names of the Deployments, StatefulSets and Services the apply returned.
    pub fn names(&self) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        let of = |kind: &str| -> Vec<&str> {
            self.generations
                .keys()
                .filter_map(|key| key.strip_prefix(kind))
                .filter_map(|rest| rest.strip_prefix('/'))
                .collect()
        };
        (
            of("Deployment"),
            of("StatefulSet"),
            self.service_versions.keys().map(String::as_str).collect(),
        )
    }
}

impl Ledger {
    /// The entry of the last full apply of `uid`, when it applied exactly `fingerprint` less than
    /// [`FULL_APPLY_INTERVAL`] before `now`.
    pub fn fresh(&self, uid: &str, fingerprint: u64, now: Instant) -> Option<Entry> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        entries
            .get(uid)
            .filter(|entry| {
                entry.fingerprint == fingerprint
                    && now.saturating_duration_since(entry.at) < FULL_APPLY_INTERVAL
            })
            .cloned()
    }

    /// Records a full apply, and forgets entries too old to be used again (deleted pipelines
    /// among them), so the ledger stays as small as the set of live pipelines.
    pub fn record(&self, uid: &str, entry: Entry) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let now = entry.at;
        entries.retain(|_, old| now.saturating_duration_since(old.at) < FULL_APPLY_INTERVAL);
        entries.insert(uid.to_owned(), entry);
    }

    /// Forgets a pipeline, so its next reconcile applies everything (after a failed apply, whose
    /// partial effects the ledger cannot describe).
    pub fn forget(&self, uid: &str) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        entries.remove(uid);
    }

    /// Forgets the pipelines `alive` does not know (deleted ones).
    pub fn retain(&self, alive: impl Fn(&str) -> bool) {
        self.entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|uid, _| alive(uid));
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hash of every desired child, in apply order. Building is deterministic (sorted maps), so
/// equal specs and facts give equal fingerprints.
pub fn fingerprint(children: &Children) -> u64 {
    let mut hasher = DefaultHasher::new();
    let mut feed = |value: Result<Vec<u8>, serde_json::Error>| match value {
        Ok(bytes) => bytes.hash(&mut hasher),
        // Unserializable cannot happen for k8s-openapi types; if it did, hash something that
        // never matches a previous entry, forcing a full apply.
        Err(_) => Instant::now().hash(&mut hasher),
    };
    let Children {
        secrets,
        config_maps,
        services,
        stateful_sets,
        jobs,
        deployments,
        disruption_budgets,
        network_policies,
        pod_monitors,
    } = children;
    secrets
        .iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    config_maps
        .iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    services
        .iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    stateful_sets
        .iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    jobs.iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    deployments
        .iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    disruption_budgets
        .iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    network_policies
        .iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    pod_monitors
        .iter()
        .for_each(|object| feed(serde_json::to_vec(object)));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(name: &str, generation: i64) -> Arc<Deployment> {
        object(json!({"metadata": {"name": name, "generation": generation}}))
    }

    fn stateful_set(name: &str, generation: i64) -> Arc<StatefulSet> {
        object(json!({"metadata": {"name": name, "generation": generation}}))
    }

    fn service(name: &str, version: &str) -> Arc<Service> {
        object(json!({"metadata": {"name": name, "resourceVersion": version}}))
    }

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<K> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn applied() -> Applied {
        Applied {
            deployments: vec![
                deployment("shop-gateway", 1),
                deployment("shop-processor", 2),
            ],
            stateful_sets: vec![stateful_set("shop-redis", 1)],
            services: vec![service("shop-gateway", "10")],
            monitoring: crate::monitoring::Outcome::default(),
        }
    }

    #[test]
    fn an_untouched_pipeline_is_unchanged_in_any_listing_order() {
        let entry = Entry::new(7, &applied(), Instant::now());
        let listed = entry
            .unchanged(
                vec![
                    deployment("shop-processor", 2),
                    deployment("shop-gateway", 1),
                ],
                vec![stateful_set("shop-redis", 1)],
                vec![service("shop-gateway", "10")],
            )
            .expect("nothing drifted");
        assert_eq!(listed.deployments.len(), 2);
    }

    #[test]
    fn drift_or_deletion_needs_a_full_apply_and_extras_are_ignored() {
        let entry = Entry::new(7, &applied(), Instant::now());
        let redis = || vec![stateful_set("shop-redis", 1)];
        let gateway_service = || vec![service("shop-gateway", "10")];
        // Someone edited the processor's spec.
        assert!(
            entry
                .unchanged(
                    vec![
                        deployment("shop-gateway", 1),
                        deployment("shop-processor", 3)
                    ],
                    redis(),
                    gateway_service(),
                )
                .is_none()
        );
        // The cache has not seen the apply's result yet: no drift.
        assert!(
            entry
                .unchanged(
                    vec![
                        deployment("shop-gateway", 1),
                        deployment("shop-processor", 1)
                    ],
                    redis(),
                    gateway_service(),
                )
                .is_some()
        );
        // Someone deleted it.
        assert!(
            entry
                .unchanged(
                    vec![deployment("shop-gateway", 1)],
                    redis(),
                    gateway_service()
                )
                .is_none()
        );
        // Someone edited the Service.
        assert!(
            entry
                .unchanged(
                    vec![
                        deployment("shop-gateway", 1),
                        deployment("shop-processor", 2)
                    ],
                    redis(),
                    vec![service("shop-gateway", "11")],
                )
                .is_none()
        );
        // A StatefulSet the last apply did not return is no drift of the operator's children,
        // and is left out of what the status is computed from.
        let with_extra = entry
            .unchanged(
                vec![
                    deployment("shop-gateway", 1),
                    deployment("shop-processor", 2),
                ],
                vec![
                    stateful_set("shop-redis", 1),
                    stateful_set("shop-cassandra", 1),
                ],
                gateway_service(),
            )
            .expect("an extra object is not drift");
        assert_eq!(with_extra.stateful_sets.len(), 1);
    }

    #[test]
    fn entries_are_fresh_only_for_the_same_fingerprint_within_the_interval() {
        let ledger = Ledger::default();
        let start = Instant::now();
        ledger.record("uid-1", Entry::new(7, &applied(), start));
        assert!(
            ledger
                .fresh("uid-1", 7, start + Duration::from_secs(1))
                .is_some()
        );
        assert!(
            ledger
                .fresh("uid-1", 8, start + Duration::from_secs(1))
                .is_none()
        );
        assert!(
            ledger
                .fresh("uid-1", 7, start + FULL_APPLY_INTERVAL)
                .is_none()
        );
        assert!(ledger.fresh("uid-2", 7, start).is_none());
        ledger.forget("uid-1");
        assert!(ledger.fresh("uid-1", 7, start).is_none());
    }

    #[test]
    fn recording_drops_entries_too_old_to_use() {
        let ledger = Ledger::default();
        let start = Instant::now();
        ledger.record("deleted", Entry::new(1, &applied(), start));
        ledger.record(
            "live",
            Entry::new(2, &applied(), start + FULL_APPLY_INTERVAL),
        );
        assert_eq!(ledger.len(), 1);
        assert!(
            ledger
                .fresh("live", 2, start + FULL_APPLY_INTERVAL)
                .is_some()
        );
    }

    #[test]
    fn fingerprints_follow_the_children() {
        let mut children = Children::default();
        let empty = fingerprint(&children);
        assert_eq!(empty, fingerprint(&Children::default()));
        children
            .deployments
            .push(Arc::unwrap_or_clone(deployment("shop-gateway", 1)));
        assert_ne!(empty, fingerprint(&children));
    }
}
