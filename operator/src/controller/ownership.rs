//! The operator changes only what it owns. Before a full apply, every child's name is looked up
//! (metadata only, a few at a time): an object that exists without this pipeline's controller
//! reference belongs to someone else (a user's Service, another pipeline's Secret, a Helm
//! release's ConfigMap). Server-side apply with `force` would take its fields over and add this
//! pipeline's owner reference, so deleting the pipeline would garbage-collect it; instead the
//! reconcile stops with [`Foreign`], which names the object and its owner in the
//! `Degraded` condition and a Warning Event, and touches nothing.

use futures::future::{BoxFuture, FutureExt};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;
use kube::{Client, Resource, ResourceExt};
use pipeline_api::OrderPipeline;
use serde::de::DeserializeOwned;

use super::apply::kind_name;
use super::build;
use super::cache::{Cached, Reader};

/// An object the pipeline would write that is someone else's.
#[derive(Debug, thiserror::Error)]
#[error(
    "{kind} {name} already exists and is not this pipeline's ({owner}); the operator does not \
     change or delete it: rename or remove it, or give the pipeline another name"
)]
pub struct Foreign {
    pub kind: &'static str,
    pub name: String,
    pub owner: String,
}

impl Foreign {
    /// The Event and condition reason.
    pub const REASON: &str = "ForeignObject";
}

/// Why the children could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Foreign(#[from] Foreign),
    #[error("failed to look up {what}: {source}")]
    Lookup {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Lookups of one reconcile in flight at once: enough to hide the round trips, few enough that
/// sixteen concurrent reconciles do not queue hundreds of requests at the API server.
const LOOKUPS_AT_ONCE: usize = 8;

/// Whether `meta` carries `pipeline`'s controller reference (its UID, not only its name: a
/// pipeline deleted and created again under the same name owns nothing of the old one's).
pub fn controlled_by(meta: &ObjectMeta, pipeline: &OrderPipeline) -> bool {
    let Some(uid) = pipeline.metadata.uid.as_deref() else {
        return false;
    };
    meta.owner_references
        .iter()
        .flatten()
        .any(|owner| owner.uid == uid && owner.controller == Some(true))
}

/// Who owns a foreign object, for the message.
fn owner_of(meta: &ObjectMeta) -> String {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let controller = owners
        .iter()
        .find(|owner| owner.controller == Some(true))
        .or_else(|| owners.first());
    match controller {
        Some(OwnerReference { kind, name, .. }) => format!("it belongs to {kind} {name}"),
        None => "it has no owner (created by hand or by another tool)".to_owned(),
    }
}

/// The foreign-object error for `meta`, if it is not `pipeline`'s.
pub fn check(
    kind: &'static str,
    meta: &ObjectMeta,
    pipeline: &OrderPipeline,
) -> Result<(), Foreign> {
    if controlled_by(meta, pipeline) {
        return Ok(());
    }
    Err(Foreign {
        kind,
        name: meta.name.clone().unwrap_or_default(),
        owner: owner_of(meta),
    })
}

/// Looks up every child the build made, concurrently, and fails on the first that exists and is
/// not this pipeline's. Objects that do not exist yet are free to create. The cached kinds are
/// read from the caches (the API server only on a miss); the others by their metadata.
pub async fn check_children(
    client: &Client,
    reader: &Reader,
    namespace: &str,
    pipeline: &OrderPipeline,
    children: &build::Children,
) -> Result<(), CheckError> {
    let build::Children {
        // Not looked up again: the dereference step read every generated Secret
        // (`dereference::read_generated`) and refused it if it was not the pipeline's.
        secrets: _,
        config_maps,
        services,
        stateful_sets,
        jobs,
        deployments,
        disruption_budgets,
        network_policies,
        // Checked by `crate::monitoring::apply` once it knows the kind is served.
        pod_monitors: _,
    } = children;
    let mut lookups: Vec<BoxFuture<'_, Result<(), CheckError>>> = Vec::new();
    let mut add = |lookup| lookups.push(lookup);
    cached(reader, namespace, pipeline, services, &mut add);
    cached(reader, namespace, pipeline, stateful_sets, &mut add);
    cached(reader, namespace, pipeline, deployments, &mut add);
    uncached::<ConfigMap>(client, namespace, pipeline, config_maps, &mut add);
    uncached::<Job>(client, namespace, pipeline, jobs, &mut add);
    uncached::<PodDisruptionBudget>(client, namespace, pipeline, disruption_budgets, &mut add);
    uncached::<NetworkPolicy>(client, namespace, pipeline, network_policies, &mut add);
    futures::stream::iter(lookups)
        .buffer_unordered(LOOKUPS_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

fn lookup_error<K>(name: &str, source: kube::Error) -> CheckError {
    CheckError::Lookup {
        what: format!("{} {name}", kind_name::<K>()),
        source,
    }
}

fn cached<'a, K: Cached>(
    reader: &'a Reader,
    namespace: &'a str,
    pipeline: &'a OrderPipeline,
    objects: &[K],
    add: &mut impl FnMut(BoxFuture<'a, Result<(), CheckError>>),
) {
    for object in objects {
        let name = object.name_any();
        add(async move {
            let existing = reader
                .get::<K>(namespace, &name)
                .await
                .map_err(|source| lookup_error::<K>(&name, source))?;
            match existing {
                Some(existing) => Ok(check(kind_name::<K>(), existing.meta(), pipeline)?),
                None => Ok(()),
            }
        }
        .boxed());
    }
}

fn uncached<'a, K>(
    client: &Client,
    namespace: &str,
    pipeline: &'a OrderPipeline,
    objects: &[K],
    add: &mut impl FnMut(BoxFuture<'a, Result<(), CheckError>>),
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    for object in objects {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let name = object.name_any();
        add(async move {
            let existing = api
                .get_metadata_opt(&name)
                .await
                .map_err(|source| lookup_error::<K>(&name, source))?;
            match existing {
                Some(existing) => Ok(check(kind_name::<K>(), &existing.metadata, pipeline)?),
                None => Ok(()),
            }
        }
        .boxed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> OrderPipeline {
        let mut pipeline = OrderPipeline::new("shop", serde_json::from_str("{}").unwrap());
        pipeline.metadata.namespace = Some("store".into());
        pipeline.metadata.uid = Some("uid-1".into());
        pipeline
    }

    fn meta(owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some("shop-redis".into()),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        }
    }

    fn owner(kind: &str, name: &str, uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn only_this_pipelines_controller_reference_makes_an_object_ours() {
        let pipeline = pipeline();
        assert!(controlled_by(
            &meta(vec![owner("OrderPipeline", "shop", "uid-1", true)]),
            &pipeline
        ));
        let refused =
            |meta: ObjectMeta| check("Service", &meta, &pipeline).unwrap_err().to_string();
        // No owner at all: someone made it by hand.
        let message = refused(meta(Vec::new()));
        assert!(message.contains("Service shop-redis"), "{message}");
        assert!(message.contains("no owner"), "{message}");
        // A pipeline of the same name that was deleted and made again: another UID.
        let message = refused(meta(vec![owner("OrderPipeline", "shop", "uid-0", true)]));
        assert!(
            message.contains("belongs to OrderPipeline shop"),
            "{message}"
        );
        // Ours, but not as controller (someone added a reference by hand): not ours to manage.
        let message = refused(meta(vec![
            owner("OrderPipeline", "shop", "uid-1", false),
            owner("HelmRelease", "cache", "uid-9", true),
        ]));
        assert!(
            message.contains("belongs to HelmRelease cache"),
            "{message}"
        );
    }
}
