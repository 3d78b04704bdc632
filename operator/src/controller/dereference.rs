//! The first step: read what the spec points at. Secrets the operator generated earlier are read
//! back and reused, so a restart (even in the middle of a reconcile) converges on the same values
//! and nothing is rotated by accident; missing ones are generated here, once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use pipeline_api::OrderPipeline;
use rand::distr::{Alphanumeric, SampleString};

use super::Error;
use super::build::Secrets;

/// Generated passwords are alphanumeric, so they can sit in a URL without escaping.
const PASSWORD_LENGTH: usize = 32;
/// 48 random alphanumeric characters: about 285 bits, above HS256's 256.
const JWT_LENGTH: usize = 48;

pub async fn secrets(pipeline: &OrderPipeline, client: &Client) -> Result<Secrets, Error> {
    let name = pipeline.name_any();
    let api: Api<Secret> =
        Api::namespaced(client.clone(), &pipeline.namespace().unwrap_or_default());
    let mut secrets = Secrets::default();
    let spec = &pipeline.spec;
    match &spec.auth.jwt_secret_ref {
        None => {
            secrets.jwt =
                Some(existing_or_new(&api, &format!("{name}-jwt"), "secret", JWT_LENGTH).await?);
        }
        Some(reference) => {
            let data = read(&api, &reference.name)
                .await?
                .ok_or_else(|| missing(&reference.name))?;
            secrets.referenced.insert(reference.name.clone(), data);
        }
    }
    if spec.rabbitmq.managed.is_some() {
        secrets.rabbitmq_password = Some(
            existing_or_new(
                &api,
                &format!("{name}-rabbitmq-credentials"),
                "password",
                PASSWORD_LENGTH,
            )
            .await?,
        );
    }
    if spec.redis.managed.is_some() {
        secrets.redis_password = Some(
            existing_or_new(
                &api,
                &format!("{name}-redis-credentials"),
                "password",
                PASSWORD_LENGTH,
            )
            .await?,
        );
    }
    for dependency in [&spec.rabbitmq, &spec.redis, &spec.cassandra] {
        if let Some(reference) = dependency
            .external
            .as_ref()
            .and_then(|e| e.credentials_secret_ref.as_ref())
        {
            let data = read(&api, &reference.name)
                .await?
                .ok_or_else(|| missing(&reference.name))?;
            secrets.referenced.insert(reference.name.clone(), data);
        }
    }
    Ok(secrets)
}

async fn read(api: &Api<Secret>, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let secret = api
        .get_opt(name)
        .await
        .map_err(|source| Error::Dereference {
            what: format!("Secret {name}"),
            source,
        })?;
    Ok(secret.map(|secret| {
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect()
    }))
}

async fn existing_or_new(
    api: &Api<Secret>,
    name: &str,
    key: &str,
    length: usize,
) -> Result<String, Error> {
    let existing = read(api, name)
        .await?
        .and_then(|data| data.get(key).cloned())
        .and_then(|value| String::from_utf8(value).ok())
        .filter(|value| !value.is_empty());
    Ok(existing.unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), length)))
}

fn missing(name: &str) -> Error {
    Error::MissingSecret(name.to_owned())
}
