//! The operator changes only what it owns. Before a full apply, every child's name is looked up
//! (metadata only, a few at a time): an object that exists without this pipeline's controller
//! reference belongs to someone else (a user's Service, another pipeline's Secret, a Helm
//! release's ConfigMap). Server-side apply with `force` would take its fields over and add this
//! pipeline's owner reference, so deleting the pipeline would garbage-collect it; instead the
//! reconcile stops with [`Error::Foreign`], which names the object and its owner in the
//! `Degraded` condition and a Warning Event, and touches nothing.

use futures::future::{BoxFuture, FutureExt};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;
use kube::{Client, Resource, ResourceExt};
use pipeline_api::OrderPipeline;
use serde::de::DeserializeOwned;

use super::{Error, build, kind_name};

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
pub fn check(kind: &'static str, meta: &ObjectMeta, pipeline: &OrderPipeline) -> Result<(), Error> {
    if controlled_by(meta, pipeline) {
        return Ok(());
    }
    Err(Error::Foreign {
        kind,
        name: meta.name.clone().unwrap_or_default(),
        owner: owner_of(meta),
    })
}

/// Looks up every child the build made, concurrently, and fails on the first that exists and is
/// not this pipeline's. Objects that do not exist yet are free to create.
pub async fn check_children(
    client: &Client,
    namespace: &str,
    pipeline: &OrderPipeline,
    children: &build::Children,
) -> Result<(), Error> {
    let mut lookups: Vec<BoxFuture<'_, Result<(), Error>>> = Vec::new();
    let mut add = |lookup| lookups.push(lookup);
    // The Secrets are not looked up again: the dereference step read every generated one
    // (`dereference::read_generated`) and refused it if it was not the pipeline's.
    each::<ConfigMap>(client, namespace, pipeline, &children.config_maps, &mut add);
    each::<Service>(client, namespace, pipeline, &children.services, &mut add);
    each::<StatefulSet>(
        client,
        namespace,
        pipeline,
        &children.stateful_sets,
        &mut add,
    );
    each::<Job>(client, namespace, pipeline, &children.jobs, &mut add);
    each::<Deployment>(client, namespace, pipeline, &children.deployments, &mut add);
    each::<PodDisruptionBudget>(
        client,
        namespace,
        pipeline,
        &children.disruption_budgets,
        &mut add,
    );
    each::<NetworkPolicy>(
        client,
        namespace,
        pipeline,
        &children.network_policies,
        &mut add,
    );
    futures::stream::iter(lookups)
        .buffer_unordered(LOOKUPS_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

fn each<'a, K>(
    client: &Client,
    namespace: &str,
    pipeline: &'a OrderPipeline,
    objects: &[K],
    add: &mut impl FnMut(BoxFuture<'a, Result<(), Error>>),
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
            let existing =
                api.get_metadata_opt(&name)
                    .await
                    .map_err(|source| Error::Dereference {
                        what: format!("{} {name}", kind_name::<K>()),
                        source,
                    })?;
            match existing {
                Some(existing) => check(kind_name::<K>(), &existing.metadata, pipeline),
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
