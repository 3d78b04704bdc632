//! The first step: read what the spec points at and what runs now. Secrets the operator
//! generated earlier are read back and reused, so a restart (even in the middle of a reconcile)
//! converges on the same values and nothing is rotated by accident; missing ones are generated
//! here, once. What runs (the managed dependencies' StatefulSets, the workloads' replica counts)
//! comes from the controller's caches ([`cache`](super::cache)).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use pipeline_api::OrderPipeline;
use rand::distr::{Alphanumeric, SampleString};

use super::build::{CASSANDRA_ROLE, Dependency, Workload, names, password_key};
use super::cache::Reader;
use super::ownership;

/// Generated passwords are alphanumeric, so they can sit in a URL without escaping.
const PASSWORD_LENGTH: usize = 32;
/// 48 random alphanumeric characters: about 285 bits, above HS256's 256.
const JWT_LENGTH: usize = 48;
/// The Erlang cookie: as long as the JWT key (Erlang takes any printable atom characters).
const COOKIE_LENGTH: usize = 48;

/// Why what the spec points at could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {0} referenced by the spec does not exist")]
    MissingSecret(String),
    #[error(transparent)]
    Foreign(#[from] ownership::Foreign),
}

impl Error {
    /// The Event and condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Read { .. } => "DereferenceFailed",
            Error::MissingSecret(_) => "SecretMissing",
            Error::Foreign(_) => ownership::Foreign::REASON,
        }
    }
}

/// What the reconcile found: the secrets, what the managed dependencies run, and how many
/// replicas each workload's Deployment has now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dereferenced {
    pub secrets: Secrets,
    pub running: BTreeMap<Dependency, Running>,
    pub replicas: BTreeMap<Workload, i32>,
}

/// A managed dependency's StatefulSet as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// Its container's image.
    pub image: Option<String>,
    /// Its `spec.replicas`.
    pub replicas: Option<i32>,
}

/// Secret values the operator generated earlier (read back so they are never rotated by
/// accident) or generates now. Also the data of Secrets the user references, for the hash that
/// rolls pods when a credential changes. Validation turns these Options into what each managed
/// dependency must have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// `<name>-jwt`, key `secret`, when the spec does not reference the user's own.
    pub jwt: Option<String>,
    /// `<name>-rabbitmq-credentials` (`username`, `password`) when RabbitMQ is managed.
    pub rabbitmq_password: Option<String>,
    /// `<name>-rabbitmq-credentials` (`erlang-cookie`) when RabbitMQ is managed.
    pub rabbitmq_erlang_cookie: Option<String>,
    /// `<name>-rabbitmq-credentials` (`<workload>-password`) when RabbitMQ is managed.
    pub rabbitmq_workloads: BTreeMap<Workload, String>,
    /// `<name>-redis-credentials` (`password`) when Redis is managed: the `default` user's.
    pub redis_password: Option<String>,
    /// `<name>-redis-credentials` (`<workload>-password`) when Redis is managed.
    pub redis_workloads: BTreeMap<Workload, String>,
    /// `<name>-cassandra-credentials` (`password`) when Cassandra is managed.
    pub cassandra_password: Option<String>,
    /// `<name>-cassandra-credentials` (`superuser-password`) when Cassandra is managed.
    pub cassandra_superuser_password: Option<String>,
    /// Data of every Secret the spec references, by name, for the configuration hash only.
    pub referenced: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Reads everything the later steps need.
pub async fn dereference(pipeline: &OrderPipeline, reader: &Reader) -> Result<Dereferenced, Error> {
    let name = pipeline.name_any();
    let namespace = pipeline.namespace().unwrap_or_default();
    let secrets = secrets(pipeline, reader).await?;
    let mut running = BTreeMap::new();
    for dependency in Dependency::ALL {
        if dependency.spec(pipeline).managed.is_none() {
            continue;
        }
        let child = names::dependency(&name, dependency);
        let Some(existing) = reader
            .cached::<StatefulSet>(&namespace, &child)
            .await
            .map_err(|source| read_error("StatefulSet", &child, source))?
        else {
            continue;
        };
        let spec = existing.spec.as_ref();
        running.insert(
            dependency,
            Running {
                image: spec
                    .and_then(|spec| spec.template.spec.as_ref())
                    .and_then(|pod| pod.containers.first())
                    .and_then(|container| container.image.clone()),
                replicas: spec.and_then(|spec| spec.replicas),
            },
        );
    }
    let mut replicas = BTreeMap::new();
    for workload in Workload::ALL {
        let child = names::workload(&name, workload);
        if let Some(deployment) = reader
            .cached::<Deployment>(&namespace, &child)
            .await
            .map_err(|source| read_error("Deployment", &child, source))?
            && let Some(count) = deployment.spec.as_ref().and_then(|spec| spec.replicas)
        {
            replicas.insert(workload, count);
        }
    }
    Ok(Dereferenced {
        secrets,
        running,
        replicas,
    })
}

fn read_error(kind: &str, name: &str, source: kube::Error) -> Error {
    Error::Read {
        what: format!("{kind} {name}"),
        source,
    }
}

/// The secrets of [`Secrets`]: read back, generated, or the user's.
pub async fn secrets(pipeline: &OrderPipeline, reader: &Reader) -> Result<Secrets, Error> {
    let name = pipeline.name_any();
    let api = Lookup {
        reader,
        namespace: pipeline.namespace().unwrap_or_default(),
    };
    let mut secrets = Secrets::default();
    let spec = &pipeline.spec;
    match &spec.auth.jwt_secret_ref {
        None => {
            secrets.jwt = Some(
                existing_or_new(
                    &api,
                    pipeline,
                    &names::jwt_secret(&name),
                    "secret",
                    JWT_LENGTH,
                )
                .await?,
            );
        }
        Some(reference) => {
            let data = read(&api, &reference.name)
                .await?
                .ok_or_else(|| missing(&reference.name))?;
            secrets.referenced.insert(reference.name.clone(), data);
        }
    }
    if spec.rabbitmq.managed.is_some() {
        // One read for both: the password and the Erlang cookie live in one Secret.
        let existing = read_generated(
            &api,
            pipeline,
            &names::credentials_secret(&name, Dependency::Rabbitmq),
        )
        .await?;
        secrets.rabbitmq_password =
            Some(value(existing.as_ref(), "password").unwrap_or_else(new_password));
        secrets.rabbitmq_erlang_cookie = Some(
            value(existing.as_ref(), "erlang-cookie")
                .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), COOKIE_LENGTH)),
        );
        secrets.rabbitmq_workloads = workload_passwords(existing.as_ref());
    }
    if spec.redis.managed.is_some() {
        let existing = read_generated(
            &api,
            pipeline,
            &names::credentials_secret(&name, Dependency::Redis),
        )
        .await?;
        secrets.redis_password =
            Some(value(existing.as_ref(), "password").unwrap_or_else(new_password));
        secrets.redis_workloads = workload_passwords(existing.as_ref());
    }
    if spec.cassandra.managed.is_some() {
        let existing = read_generated(
            &api,
            pipeline,
            &names::credentials_secret(&name, Dependency::Cassandra),
        )
        .await?;
        let credentials = cassandra_credentials(existing.as_ref(), new_password);
        secrets.cassandra_password = Some(credentials.password);
        secrets.cassandra_superuser_password = Some(credentials.superuser_password);
    }
    for dependency in [&spec.rabbitmq, &spec.redis, &spec.cassandra] {
        let Some(external) = &dependency.external else {
            continue;
        };
        let own = external
            .workload_credentials
            .iter()
            .flat_map(|credentials| credentials.all());
        for reference in external.credentials_secret_ref.iter().chain(own) {
            if secrets.referenced.contains_key(&reference.name) {
                continue;
            }
            let data = read(&api, &reference.name)
                .await?
                .ok_or_else(|| missing(&reference.name))?;
            secrets.referenced.insert(reference.name.clone(), data);
        }
    }
    Ok(secrets)
}

/// Each workload's password (of those `uses` selects), read back from the dependency's
/// credentials Secret (key `<workload>-password`) or generated.
fn workload_passwords(existing: Option<&BTreeMap<String, Vec<u8>>>) -> BTreeMap<Workload, String> {
    Workload::ALL
        .into_iter()
        .map(|workload| {
            let password = value(existing, &password_key(workload)).unwrap_or_else(new_password);
            (workload, password)
        })
        .collect()
}

/// A Secret the spec references: the user's, read as it is.
async fn read(api: &Lookup<'_>, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    Ok(get(api, name).await?.map(data))
}

/// A Secret the operator generates for the pipeline, read back so nothing is rotated. One that
/// exists without the pipeline's controller reference is not read: a pre-created `<name>-jwt`
/// would otherwise become the gateway's signing key, chosen by whoever could create a Secret.
async fn read_generated(
    api: &Lookup<'_>,
    pipeline: &OrderPipeline,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let Some(secret) = get(api, name).await? else {
        return Ok(None);
    };
    ownership::check("Secret", &secret.metadata, pipeline)?;
    Ok(Some(data(secret)))
}

/// Where the Secrets are read: the pipeline's namespace.
struct Lookup<'a> {
    reader: &'a Reader,
    namespace: String,
}

async fn get(api: &Lookup<'_>, name: &str) -> Result<Option<Arc<Secret>>, Error> {
    api.reader
        .get::<Secret>(&api.namespace, name)
        .await
        .map_err(|source| read_error("Secret", name, source))
}

fn data(secret: Arc<Secret>) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(key, value)| (key.clone(), value.0.clone()))
        .collect()
}

async fn existing_or_new(
    api: &Lookup<'_>,
    pipeline: &OrderPipeline,
    name: &str,
    key: &str,
    length: usize,
) -> Result<String, Error> {
    let existing = read_generated(api, pipeline, name).await?;
    Ok(value(existing.as_ref(), key)
        .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), length)))
}

/// A non-empty UTF-8 value of a Secret's data.
fn value(data: Option<&BTreeMap<String, Vec<u8>>>, key: &str) -> Option<String> {
    data.and_then(|data| data.get(key).cloned())
        .and_then(|value| String::from_utf8(value).ok())
        .filter(|value| !value.is_empty())
}

fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LENGTH)
}

/// The passwords of a managed Cassandra's Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CassandraCredentials {
    /// The application role's ([`CASSANDRA_ROLE`]).
    password: String,
    superuser_password: String,
}

/// The passwords the Secret holds, each generated when missing. A Secret written before there
/// was an application role names the image's superuser with its well-known password
/// (`cassandra`/`cassandra`): that password is not reused for the role.
fn cassandra_credentials(
    existing: Option<&BTreeMap<String, Vec<u8>>>,
    mut generate: impl FnMut() -> String,
) -> CassandraCredentials {
    let ours = value(existing, "username").as_deref() == Some(CASSANDRA_ROLE);
    CassandraCredentials {
        password: value(existing, "password")
            .filter(|_| ours)
            .unwrap_or_else(&mut generate),
        superuser_password: value(existing, "superuser-password").unwrap_or_else(generate),
    }
}

fn missing(name: &str) -> Error {
    Error::MissingSecret(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.as_bytes().to_vec()))
            .collect()
    }

    fn counter() -> impl FnMut() -> String {
        let mut made = 0;
        move || {
            made += 1;
            format!("generated-{made}")
        }
    }

    #[test]
    fn cassandra_passwords_are_generated_once_then_read_back() {
        let first = cassandra_credentials(None, counter());
        assert_eq!(first.password, "generated-1");
        assert_eq!(first.superuser_password, "generated-2");
        // What build writes from them, read back: nothing new is generated.
        let written = data(&[
            ("username", CASSANDRA_ROLE),
            ("password", &first.password),
            ("superuser-password", &first.superuser_password),
        ]);
        assert_eq!(
            cassandra_credentials(Some(&written), || panic!("nothing to generate")),
            first
        );
    }

    #[test]
    fn the_default_superuser_password_of_an_older_secret_is_not_reused() {
        let older = data(&[("username", "cassandra"), ("password", "cassandra")]);
        let credentials = cassandra_credentials(Some(&older), counter());
        assert_eq!(credentials.password, "generated-1");
        assert_eq!(credentials.superuser_password, "generated-2");
        // An empty value counts as missing; the other is kept.
        let partial = data(&[
            ("username", CASSANDRA_ROLE),
            ("password", "kept"),
            ("superuser-password", ""),
        ]);
        let credentials = cassandra_credentials(Some(&partial), counter());
        assert_eq!(credentials.password, "kept");
        assert_eq!(credentials.superuser_password, "generated-1");
    }

    #[test]
    fn generated_passwords_are_long_alphanumeric_and_differ() {
        let (first, second) = (new_password(), new_password());
        assert_eq!(first.len(), PASSWORD_LENGTH);
        assert!(first.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(first, second);
    }
}
