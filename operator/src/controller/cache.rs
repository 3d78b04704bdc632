//! Where a reconcile reads the pipeline's children: the controller's own watch caches.
//!
//! The controller watches the Deployments, StatefulSets, Services and Secrets carrying the
//! operator's label to know when to reconcile (`owns`). The same watches fill reflector stores
//! (kube's `shared_stream_controllers` pattern), so a reconcile reads its children from memory
//! instead of listing and getting them again: a watch-triggered resync of a converged pipeline
//! sends no request but the status read it may need.
//!
//! A cache holds only objects with the operator's label, so a miss is no proof that a name is
//! free: an object of the same name made by someone else would not be in it. What must know
//! (a generated Secret read back, the ownership check before an apply) asks the API server on a
//! miss ([`Reader::get`]); what only needs the operator's own children takes the miss as it is
//! ([`Reader::cached`]).
//!
//! A cached child is kept as the JSON of its trimmed form ([`Packed`]), not as the
//! k8s-openapi struct: those structs hold every optional field inline, so even a trimmed
//! StatefulSet takes 2.5 KiB before its strings, where its JSON takes a few hundred bytes. With
//! about twenty children per pipeline that is most of the operator's memory; a read parses the
//! few objects a reconcile needs again.
//!
//! Without a running controller (a reconcile called directly, as the tests of a restart do)
//! there are no caches and every read goes to the API server.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStatus, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::build::COMPONENT_LABEL;

/// The controller's stores of the pipelines' children.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // kube's stores are not Debug
pub struct Stores {
    deployments: Store<Packed<Deployment>>,
    stateful_sets: Store<Packed<StatefulSet>>,
    services: Store<Packed<Service>>,
    secrets: Store<Packed<Secret>>,
    /// True once every store has had its first complete listing (see [`announce_ready`]).
    ready: watch::Receiver<bool>,
}

/// The writing halves of [`Stores`], consumed by the watches that fill them.
#[allow(missing_debug_implementations)] // kube's writers are not Debug
pub struct Writers {
    pub deployments: Writer<Packed<Deployment>>,
    pub stateful_sets: Writer<Packed<StatefulSet>>,
    pub services: Writer<Packed<Service>>,
    pub secrets: Writer<Packed<Secret>>,
    /// For [`announce_ready`].
    pub ready: watch::Sender<bool>,
}

impl Stores {
    pub fn new() -> (Stores, Writers) {
        let (deployments, deployments_writer) = reflector::store();
        let (stateful_sets, stateful_sets_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (secrets, secrets_writer) = reflector::store();
        let (ready_sender, ready) = watch::channel(false);
        (
            Stores {
                deployments,
                stateful_sets,
                services,
                secrets,
                ready,
            },
            Writers {
                deployments: deployments_writer,
                stateful_sets: stateful_sets_writer,
                services: services_writer,
                secrets: secrets_writer,
                ready: ready_sender,
            },
        )
    }

    /// Waits until every store has had its first complete listing. Any number of reconciles
    /// may wait at once.
    async fn ready(&self) {
        // An error means the announcing task is gone (the controller is stopping): reads then
        // find what the store last had, and the reconcile's writes decide.
        let _ = self.ready.clone().wait_for(|ready| *ready).await;
    }
}

/// Sets `ready` once every store of `stores` has had its first complete listing. Run it as one
/// task per controller: kube's `Store::wait_until_ready` wakes only the last task that polled
/// it (a oneshot receiver behind a mutex), so sixteen reconciles waiting on it at once left
/// fifteen of them waiting forever.
pub async fn announce_ready(stores: Stores, ready: watch::Sender<bool>) {
    let (deployments, stateful_sets, services, secrets) = futures::join!(
        stores.deployments.wait_until_ready(),
        stores.stateful_sets.wait_until_ready(),
        stores.services.wait_until_ready(),
        stores.secrets.wait_until_ready(),
    );
    if deployments.is_ok() && stateful_sets.is_ok() && services.is_ok() && secrets.is_ok() {
        ready.send_replace(true);
    }
}

/// The stream of `api`'s labelled objects that fills `writer` and triggers the owners'
/// reconciles (deletions included). Each object is trimmed to what a reconcile reads
/// ([`Cached::trim`]) and cached [`Packed`].
pub fn watch<K: Cached>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<Packed<K>>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    // What kube's `reflect` does, with the object packed on its way into the store.
    watcher(api, config)
        .default_backoff()
        .modify(Cached::trim)
        .inspect_ok(move |event| writer.apply_watcher_event(&Packed::event(event)))
        .touched_objects()
}

/// A cached child: its name and namespace (the store's key) and the JSON of its trimmed form.
pub struct Packed<K> {
    name: Box<str>,
    namespace: Option<Box<str>>,
    json: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Debug for Packed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("json_bytes", &self.json.len())
            .finish()
    }
}

impl<K> Clone for Packed<K> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            json: self.json.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Cached> Packed<K> {
    fn new(object: &K) -> Self {
        let metadata = object.meta();
        // Serializing a Kubernetes object does not fail (its maps have string keys). Were it
        // to, the entry keeps an empty text: `cached` then reports the parse error and `get`
        // asks the API server.
        let json = serde_json::to_vec(object).unwrap_or_else(|error| {
            tracing::error!(
                %error,
                kind = %K::kind(&()),
                name = metadata.name.as_deref().unwrap_or_default(),
                "a watched child could not be serialized for the cache"
            );
            Vec::new()
        });
        Self {
            // A watched object always has a name (the API server requires one).
            name: metadata.name.as_deref().unwrap_or_default().into(),
            namespace: metadata.namespace.as_deref().map(Box::from),
            json: json.into(),
            kind: PhantomData,
        }
    }

    /// The watcher's event with its object packed.
    fn event(event: &watcher::Event<K>) -> watcher::Event<Self> {
        use watcher::Event;
        match event {
            Event::Apply(object) => Event::Apply(Self::new(object)),
            Event::Delete(object) => Event::Delete(Self::new(object)),
            Event::Init => Event::Init,
            Event::InitApply(object) => Event::InitApply(Self::new(object)),
            Event::InitDone => Event::InitDone,
        }
    }

    /// The trimmed object again.
    fn unpack(&self) -> Result<Arc<K>, kube::Error> {
        serde_json::from_slice(&self.json)
            .map(Arc::new)
            .map_err(kube::Error::SerdeError)
    }
}

/// What kube's store needs to key a packed object: the kind's, and the object's name and
/// namespace (the key ignores the rest).
impl<K: Resource<DynamicType = ()>> Lookup for Packed<K> {
    type DynamicType = ();

    fn kind(dyntype: &()) -> Cow<'_, str> {
        K::kind(dyntype)
    }

    fn group(dyntype: &()) -> Cow<'_, str> {
        K::group(dyntype)
    }

    fn version(dyntype: &()) -> Cow<'_, str> {
        K::version(dyntype)
    }

    fn plural(dyntype: &()) -> Cow<'_, str> {
        K::plural(dyntype)
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// The kinds the controller caches.
pub trait Cached:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    fn store(stores: &Stores) -> &Store<Packed<Self>>;

    /// Replaces the object with one that holds only what a reconcile reads, built afresh
    /// (what is kept is listed, not what is dropped, so a field a new Kubernetes version adds
    /// is never cached by accident): the [`kept_metadata`], and per kind what dereference and
    /// status read.
    fn trim(&mut self);
}

/// The metadata every cached object keeps: its name and namespace, the owner references (the
/// ownership check), generation and resource version (the ledger), and of its labels only the
/// component (the status).
fn kept_metadata(metadata: &mut ObjectMeta) -> ObjectMeta {
    let component = metadata
        .labels
        .as_mut()
        .and_then(|labels| labels.remove_entry(COMPONENT_LABEL));
    ObjectMeta {
        name: metadata.name.take(),
        namespace: metadata.namespace.take(),
        uid: metadata.uid.take(),
        resource_version: metadata.resource_version.take(),
        generation: metadata.generation,
        owner_references: metadata.owner_references.take(),
        labels: component.map(|entry| BTreeMap::from([entry])),
        ..ObjectMeta::default()
    }
}

impl Cached for Deployment {
    fn store(stores: &Stores) -> &Store<Packed<Self>> {
        &stores.deployments
    }

    /// Keeps `spec.replicas` and `status.readyReplicas`.
    fn trim(&mut self) {
        *self = Deployment {
            metadata: kept_metadata(&mut self.metadata),
            spec: self.spec.as_ref().map(|spec| DeploymentSpec {
                replicas: spec.replicas,
                ..DeploymentSpec::default()
            }),
            status: self.status.as_ref().map(|status| DeploymentStatus {
                ready_replicas: status.ready_replicas,
                ..DeploymentStatus::default()
            }),
        };
    }
}

impl Cached for StatefulSet {
    fn store(stores: &Stores) -> &Store<Packed<Self>> {
        &stores.stateful_sets
    }

    /// Keeps `spec.replicas`, `status.readyReplicas`, and the first container's name and image
    /// (what a running dependency keeps across operator upgrades).
    fn trim(&mut self) {
        let first = self
            .spec
            .as_mut()
            .and_then(|spec| spec.template.spec.as_mut())
            .and_then(|pod| (!pod.containers.is_empty()).then(|| pod.containers.swap_remove(0)))
            .map(|container| Container {
                name: container.name,
                image: container.image,
                ..Container::default()
            });
        *self = StatefulSet {
            metadata: kept_metadata(&mut self.metadata),
            spec: self.spec.as_ref().map(|spec| StatefulSetSpec {
                replicas: spec.replicas,
                template: PodTemplateSpec {
                    metadata: None,
                    spec: first.map(|container| PodSpec {
                        containers: vec![container],
                        ..PodSpec::default()
                    }),
                },
                ..StatefulSetSpec::default()
            }),
            status: self.status.as_ref().map(|status| StatefulSetStatus {
                ready_replicas: status.ready_replicas,
                ..StatefulSetStatus::default()
            }),
        };
    }
}

impl Cached for Service {
    fn store(stores: &Stores) -> &Store<Packed<Self>> {
        &stores.services
    }

    /// Keeps only the metadata: the ledger compares resource versions.
    fn trim(&mut self) {
        *self = Service {
            metadata: kept_metadata(&mut self.metadata),
            ..Service::default()
        };
    }
}

impl Cached for Secret {
    fn store(stores: &Stores) -> &Store<Packed<Self>> {
        &stores.secrets
    }

    /// Keeps the data: generated values are read back from it.
    fn trim(&mut self) {
        *self = Secret {
            metadata: kept_metadata(&mut self.metadata),
            data: self.data.take(),
            ..Secret::default()
        };
    }
}

/// Reads for one reconcile.
#[derive(Clone)]
pub struct Reader {
    client: Client,
    stores: Option<Stores>,
}

impl Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("cached", &self.stores.is_some())
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Reads from `stores` when the controller fills them, else from the API server.
    pub fn new(client: Client, stores: Option<Stores>) -> Self {
        Self { client, stores }
    }

    /// Waits for the caches' first listing, so that a miss means what it says.
    pub async fn ready(&self) {
        if let Some(stores) = &self.stores {
            stores.ready().await;
        }
    }

    /// One of the operator's own children, as the cache has it (a miss: there is none with the
    /// operator's label); without caches, from the API server.
    pub async fn cached<K: Cached>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<K>>, kube::Error> {
        match &self.stores {
            Some(stores) => K::store(stores)
                .get(&ObjectRef::new(name).within(namespace))
                .map(|packed| packed.unpack())
                .transpose(),
            None => self.fetch(namespace, name).await,
        }
    }

    /// The object called `name`, whoever made it: from the cache when it is there, else from
    /// the API server.
    pub async fn get<K: Cached>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<K>>, kube::Error> {
        if let Some(stores) = &self.stores
            && let Some(found) = K::store(stores).get(&ObjectRef::new(name).within(namespace))
        {
            match found.unpack() {
                Ok(object) => return Ok(Some(object)),
                Err(error) => {
                    tracing::warn!(%error, name, "a cached child did not parse; asking the API server")
                }
            }
        }
        self.fetch(namespace, name).await
    }

    async fn fetch<K: Cached>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<K>>, kube::Error> {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::runtime::watcher::Event;

    use super::*;

    /// Sixteen reconciles start before the first listing, as when the operator starts with
    /// pipelines in place: every one must go on once the stores are filled.
    #[tokio::test]
    async fn every_reconcile_waiting_for_the_first_listing_goes_on() {
        let (stores, mut writers) = Stores::new();
        let announcing = tokio::spawn(announce_ready(stores.clone(), writers.ready));
        let waiting: Vec<_> = (0..16)
            .map(|_| {
                let stores = stores.clone();
                tokio::spawn(async move { stores.ready().await })
            })
            .collect();
        // Let them all wait first.
        tokio::task::yield_now().await;
        writers.deployments.apply_watcher_event(&Event::InitDone);
        writers.stateful_sets.apply_watcher_event(&Event::InitDone);
        writers.services.apply_watcher_event(&Event::InitDone);
        writers.secrets.apply_watcher_event(&Event::InitDone);
        let mut woken = 0;
        for task in waiting {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("a reconcile kept waiting for a store that is ready")
                .unwrap();
            woken += 1;
        }
        println!("{woken} of 16 waiting reconciles went on");
        assert_eq!(woken, 16);
        announcing.await.unwrap();
    }

    /// A StatefulSet as the API server sends it keeps exactly what the reconcile reads.
    #[test]
    fn a_trimmed_stateful_set_keeps_what_reconciles_read_and_nothing_else() {
        let mut stateful_set: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "shop-rabbitmq", "namespace": "ns", "uid": "u1",
                "resourceVersion": "42", "generation": 3,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app.kubernetes.io/component": "rabbitmq", "app.kubernetes.io/name": "order-pipeline"},
                "annotations": {"note": "x"},
                "ownerReferences": [{"apiVersion": "orderpipeline.dev/v1alpha1", "kind": "OrderPipeline", "name": "shop", "uid": "p1", "controller": true}],
                "managedFields": [{"manager": "order-pipeline-operator", "operation": "Apply"}],
            },
            "spec": {
                "replicas": 3, "serviceName": "shop-rabbitmq-headless",
                "selector": {"matchLabels": {"app.kubernetes.io/component": "rabbitmq"}},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/component": "rabbitmq"}},
                    "spec": {"containers": [
                        {"name": "rabbitmq", "image": "rabbitmq:3.13.7", "env": [{"name": "A", "value": "b"}]},
                        {"name": "exporter", "image": "exporter:1"},
                    ]},
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
            },
            "status": {"replicas": 3, "readyReplicas": 2, "conditions": [{"type": "X", "status": "True"}]},
        }))
        .unwrap();
        stateful_set.trim();
        assert_eq!(
            serde_json::to_value(&stateful_set).unwrap(),
            serde_json::json!({
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {
                    "name": "shop-rabbitmq", "namespace": "ns", "uid": "u1",
                    "resourceVersion": "42", "generation": 3,
                    "labels": {"app.kubernetes.io/component": "rabbitmq"},
                    "ownerReferences": [{"apiVersion": "orderpipeline.dev/v1alpha1", "kind": "OrderPipeline", "name": "shop", "uid": "p1", "controller": true}],
                },
                "spec": {
                    "replicas": 3,
                    "selector": {},
                    "template": {"spec": {"containers": [{"name": "rabbitmq", "image": "rabbitmq:3.13.7"}]}},
                },
                "status": {"replicas": 0, "readyReplicas": 2},
            })
        );
    }

    #[test]
    fn trimmed_deployments_services_and_secrets_keep_their_reads() {
        let mut deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-gateway", "generation": 2, "labels": {"app.kubernetes.io/component": "gateway", "other": "x"}},
            "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [{"name": "gateway"}]}}},
            "status": {"readyReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]},
        }))
        .unwrap();
        deployment.trim();
        assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(
            deployment.spec.as_ref().unwrap().template,
            PodTemplateSpec::default()
        );
        assert_eq!(deployment.status.as_ref().unwrap().ready_replicas, Some(1));
        assert_eq!(deployment.status.as_ref().unwrap().conditions, None);
        assert_eq!(deployment.metadata.generation, Some(2));
        assert_eq!(deployment.metadata.labels.as_ref().unwrap().len(), 1);

        let mut service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-gateway", "resourceVersion": "7"},
            "spec": {"ports": [{"port": 8080}]},
        }))
        .unwrap();
        service.trim();
        assert_eq!(service.spec, None);
        assert_eq!(service.metadata.resource_version.as_deref(), Some("7"));

        let mut secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-jwt"},
            "type": "Opaque",
            "data": {"secret": "c2VjcmV0"},
        }))
        .unwrap();
        secret.trim();
        assert_eq!(secret.data.unwrap()["secret"].0, b"secret");
    }

    /// A packed child reads back as the trimmed object it was made from, through the store's
    /// key, and takes less memory than the struct alone.
    #[test]
    fn a_packed_child_reads_back_as_its_trimmed_self_in_less_memory() {
        let mut stateful_set: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "shop-redis", "namespace": "ns", "uid": "u2", "resourceVersion": "9",
                "generation": 1, "labels": {"app.kubernetes.io/component": "redis"},
                "ownerReferences": [{"apiVersion": "orderpipeline.dev/v1alpha1", "kind": "OrderPipeline", "name": "shop", "uid": "p1", "controller": true}],
            },
            "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7.4"}]}}},
            "status": {"replicas": 1, "readyReplicas": 1},
        }))
        .unwrap();
        stateful_set.trim();
        let (store, mut writer) = reflector::store::<Packed<StatefulSet>>();
        writer.apply_watcher_event(&Packed::event(&watcher::Event::Apply(stateful_set.clone())));
        let packed = store
            .get(&ObjectRef::new("shop-redis").within("ns"))
            .expect("cached under its name and namespace");
        assert_eq!(*packed.unpack().unwrap(), stateful_set);
        let packed_bytes = std::mem::size_of::<Packed<StatefulSet>>()
            + packed.name.len()
            + packed.namespace.as_deref().map_or(0, str::len)
            + packed.json.len();
        println!(
            "trimmed StatefulSet: {} bytes inline before its strings; packed: {packed_bytes} bytes in all",
            std::mem::size_of::<StatefulSet>()
        );
        assert!(packed_bytes < std::mem::size_of::<StatefulSet>());
        writer.apply_watcher_event(&Packed::event(&watcher::Event::Delete(stateful_set)));
        assert!(
            store
                .get(&ObjectRef::new("shop-redis").within("ns"))
                .is_none()
        );
    }

    /// A full listing of `objects`, as the watcher sends one when it starts or relists.
    fn relist<K: Cached>(writer: &mut Writer<Packed<K>>, objects: &[K]) {
        writer.apply_watcher_event(&Packed::event(&Event::Init));
        for object in objects {
            writer.apply_watcher_event(&Packed::event(&Event::InitApply(object.clone())));
        }
        writer.apply_watcher_event(&Packed::event(&Event::InitDone));
    }

    fn owned<K: Clone>(found: Option<Arc<K>>) -> Option<K> {
        found.map(Arc::unwrap_or_clone)
    }

    fn trimmed<K: Cached>(value: serde_json::Value) -> K {
        let mut object: K = serde_json::from_value(value).unwrap();
        object.trim();
        object
    }

    /// Every cached kind reads back through the reader as its trimmed self (a Secret's bytes
    /// too, which are not text), and a relist drops what is no longer listed.
    #[tokio::test]
    async fn every_kind_reads_back_through_the_reader_and_a_relist_drops_the_gone() {
        let (stores, mut writers) = Stores::new();
        // Never contacted: with stores, `cached` reads only them.
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let reader = Reader::new(client, Some(stores));
        let metadata = |name: &str| serde_json::json!({"name": name, "namespace": "ns", "resourceVersion": "5"});
        let deployment: Deployment = trimmed(serde_json::json!({
            "metadata": metadata("shop-gateway"),
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"readyReplicas": 2},
        }));
        let stateful_set: StatefulSet = trimmed(serde_json::json!({
            "metadata": metadata("shop-redis"),
            "spec": {"replicas": 1, "selector": {}, "serviceName": "x", "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7.4"}]}}},
        }));
        let service: Service = trimmed(serde_json::json!({"metadata": metadata("shop-redis")}));
        let mut secret: Secret = trimmed(serde_json::json!({"metadata": metadata("shop-jwt")}));
        secret.data = Some(BTreeMap::from([(
            "secret".to_owned(),
            k8s_openapi::ByteString(vec![0xff, 0x00, 0x80, b'k']),
        )]));
        relist(&mut writers.deployments, std::slice::from_ref(&deployment));
        relist(
            &mut writers.stateful_sets,
            std::slice::from_ref(&stateful_set),
        );
        relist(&mut writers.services, std::slice::from_ref(&service));
        relist(&mut writers.secrets, std::slice::from_ref(&secret));

        assert_eq!(
            owned(reader.cached("ns", "shop-gateway").await.unwrap()),
            Some(deployment)
        );
        assert_eq!(
            owned(reader.cached("ns", "shop-redis").await.unwrap()),
            Some(stateful_set)
        );
        assert_eq!(
            owned(reader.cached("ns", "shop-redis").await.unwrap()),
            Some(service)
        );
        assert_eq!(
            owned(reader.cached("ns", "shop-jwt").await.unwrap()),
            Some(secret)
        );
        assert_eq!(
            reader.cached::<Secret>("other", "shop-jwt").await.unwrap(),
            None
        );

        relist(&mut writers.secrets, &[]);
        assert_eq!(
            reader.cached::<Secret>("ns", "shop-jwt").await.unwrap(),
            None
        );
    }
}
