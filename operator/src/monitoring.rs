//! A pipeline's PodMonitor written or removed to match its spec, for a Prometheus Operator that
//! already runs in the cluster. Whether the API server serves the kind is discovered at each full
//! apply that needs to know, never once at startup: CRDs installed while the operator runs are
//! picked up without a restart, and a cluster without them costs a pipeline that asks for none
//! no request at all. The kind is not watched (a watch of a kind that is not served fails), so a
//! PodMonitor edited or deleted by hand is repaired by the next full apply.

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use pipeline_api::OrderPipeline;

use crate::controller::build::{self, MANAGER, MONITORING_COMPONENT};
use crate::controller::ownership;

/// The condition that reports the PodMonitor, present while the spec asks for one.
pub const CONDITION: &str = "Monitoring";

/// Where the PodMonitor kind is looked for (by default the Prometheus Operator's
/// `monitoring.coreos.com/v1`). Tests name a group version no server serves, to see the operator
/// in a cluster without the Prometheus Operator while the shared one has its CRDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitoringApi {
    pub group_version: String,
}

impl Default for MonitoringApi {
    fn default() -> Self {
        let resource = build::pod_monitor_resource();
        Self {
            group_version: resource.api_version,
        }
    }
}

/// What became of the PodMonitor the spec asks for (or not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Outcome {
    /// None is asked for, and none of the pipeline's is left.
    #[default]
    Off,
    /// Applied under this name.
    Applied { name: String },
    /// Asked for, but the API server does not serve the kind.
    Unavailable { group_version: String },
}

/// Why the PodMonitor could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "failed to discover whether the API server serves {group_version} PodMonitors: {source}"
    )]
    Discover {
        group_version: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to look up PodMonitor {name}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Foreign(#[from] ownership::Foreign),
    #[error("failed to apply PodMonitor {name}: {source}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to delete PodMonitor {name}, which the pipeline no longer wants: {source}")]
    Prune {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The Event and condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Discover { .. } => "DiscoveryFailed",
            Error::Foreign(_) => ownership::Foreign::REASON,
            Error::Lookup { .. } | Error::Apply { .. } => "ApplyFailed",
            Error::Prune { .. } => "PruneFailed",
        }
    }
}

/// Applies `wanted` (the build's PodMonitors, none or one) and deletes the pipeline's others.
///
/// With none wanted, the API server is only asked when the last status reported a PodMonitor
/// (the [`CONDITION`]): only then can one of this pipeline's exist.
pub async fn apply(
    client: &Client,
    api: &MonitoringApi,
    pipeline: &OrderPipeline,
    wanted: &[DynamicObject],
) -> Result<Outcome, Error> {
    if wanted.is_empty() && !reported(pipeline) {
        return Ok(Outcome::Off);
    }
    if !served(client, &api.group_version).await? {
        return Ok(if wanted.is_empty() {
            Outcome::Off
        } else {
            Outcome::Unavailable {
                group_version: api.group_version.clone(),
            }
        });
    }
    let namespace = pipeline.namespace().unwrap_or_default();
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &build::pod_monitor_resource());
    let mut outcome = Outcome::Off;
    for monitor in wanted {
        let name = monitor.name_any();
        let existing = monitors
            .get_metadata_opt(&name)
            .await
            .map_err(|source| Error::Lookup {
                name: name.clone(),
                source,
            })?;
        if let Some(existing) = existing {
            ownership::check("PodMonitor", &existing.metadata, pipeline)?;
        }
        monitors
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(monitor),
            )
            .await
            .map_err(|source| Error::Apply {
                name: name.clone(),
                source,
            })?;
        outcome = Outcome::Applied { name };
    }
    prune(&monitors, pipeline, wanted).await?;
    Ok(outcome)
}

/// Whether the last status written reports a PodMonitor (applied or unavailable).
fn reported(pipeline: &OrderPipeline) -> bool {
    pipeline.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|condition| condition.type_ == CONDITION)
    })
}

/// Whether the API server serves PodMonitors in `group_version` (a group it does not know is a
/// 404, not an error).
pub async fn served(client: &Client, group_version: &str) -> Result<bool, Error> {
    match client.list_api_group_resources(group_version).await {
        Ok(resources) => Ok(resources
            .resources
            .iter()
            .any(|resource| resource.name == build::pod_monitor_resource().plural)),
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(false),
        Err(source) => Err(Error::Discover {
            group_version: group_version.to_owned(),
            source,
        }),
    }
}

/// Deletes the pipeline's PodMonitors that `wanted` does not name. Only those it controls: a
/// user's PodMonitor carrying the same labels is not the operator's to delete.
async fn prune(
    monitors: &Api<DynamicObject>,
    pipeline: &OrderPipeline,
    wanted: &[DynamicObject],
) -> Result<(), Error> {
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={},{}={MONITORING_COMPONENT}",
        pipeline.name_any(),
        build::MANAGED_BY,
        build::COMPONENT_LABEL,
    );
    let found = monitors
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Prune {
            name: format!("(the list of {selector})"),
            source,
        })?;
    for monitor in found {
        let name = monitor.name_any();
        if !ownership::controlled_by(&monitor.metadata, pipeline)
            || wanted.iter().any(|object| object.name_any() == name)
        {
            continue;
        }
        match monitors.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(pod_monitor = %name, "deleted a PodMonitor no longer wanted"),
            Err(kube::Error::Api(response)) if response.code == 404 => {}
            Err(source) => return Err(Error::Prune { name, source }),
        }
    }
    Ok(())
}
