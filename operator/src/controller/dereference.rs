//! The first step: read what the spec points at. Secrets the operator generated earlier are read
//! back and reused, so a restart (even in the middle of a reconcile) converges on the same values
//! and nothing is rotated by accident; missing ones are generated here, once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use pipeline_api::OrderPipeline;
use rand::distr::{Alphanumeric, SampleString};

use super::build::{CASSANDRA_ROLE, Dependency, Secrets, Workload, names, password_key};
use super::{Error, ownership};

/// Generated passwords are alphanumeric, so they can sit in a URL without escaping.
const PASSWORD_LENGTH: usize = 32;
/// 48 random alphanumeric characters: about 285 bits, above HS256's 256.
const JWT_LENGTH: usize = 48;
/// The Erlang cookie: as long as the JWT key (Erlang takes any printable atom characters).
const COOKIE_LENGTH: usize = 48;

pub async fn secrets(pipeline: &OrderPipeline, client: &Client) -> Result<Secrets, Error> {
    let name = pipeline.name_any();
    let api: Api<Secret> =
        Api::namespaced(client.clone(), &pipeline.namespace().unwrap_or_default());
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
        secrets.rabbitmq_workloads = workload_passwords(existing.as_ref(), Workload::uses_rabbitmq);
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
        secrets.redis_workloads = workload_passwords(existing.as_ref(), |_| true);
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
fn workload_passwords(
    existing: Option<&BTreeMap<String, Vec<u8>>>,
    uses: impl Fn(Workload) -> bool,
) -> BTreeMap<Workload, String> {
    Workload::ALL
        .into_iter()
        .filter(|&workload| uses(workload))
        .map(|workload| {
            let password = value(existing, &password_key(workload)).unwrap_or_else(new_password);
            (workload, password)
        })
        .collect()
}

/// A Secret the spec references: the user's, read as it is.
async fn read(api: &Api<Secret>, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    Ok(get(api, name).await?.map(data))
}

/// A Secret the operator generates for the pipeline, read back so nothing is rotated. One that
/// exists without the pipeline's controller reference is not read: a pre-created `<name>-jwt`
/// would otherwise become the gateway's signing key, chosen by whoever could create a Secret.
async fn read_generated(
    api: &Api<Secret>,
    pipeline: &OrderPipeline,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let Some(secret) = get(api, name).await? else {
        return Ok(None);
    };
    ownership::check("Secret", &secret.metadata, pipeline)?;
    Ok(Some(data(secret)))
}

async fn get(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, Error> {
    api.get_opt(name)
        .await
        .map_err(|source| Error::Dereference {
            what: format!("Secret {name}"),
            source,
        })
}

fn data(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, value.0))
        .collect()
}

async fn existing_or_new(
    api: &Api<Secret>,
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
