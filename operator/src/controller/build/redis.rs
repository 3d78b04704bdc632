//! A managed Redis: its credentials Secret and what its pod runs, without the image's
//! entrypoint.

use super::meta::env_secret;
use super::statefulset::{DependencyPod, Managed};
use super::{BuildError, Children, Dependency, Secrets, names};

/// Where Redis keeps its data (the append-only file): the claim's mount.
const REDIS_DATA_DIR: &str = "/data";

/// Redis, explicitly: the append-only file on the data volume, written and flushed to disk
/// before every reply (`appendfsync always`: an acknowledged idempotency claim, stock change or
/// "applied" mark survives even a crash of the machine, where `everysec` could lose the last
/// second of them while their events were already published), no RDB snapshots, the password
/// from the Secret, and files readable by the owner only (what the image's entrypoint's umask
/// gave).
const REDIS_COMMAND: &str = "umask 077; exec redis-server --appendonly yes --appendfsync always --save '' --dir /data --requirepass \"$REDIS_PASSWORD\"";

/// Adds the credentials Secret to `children`; returns the pod.
pub(super) fn pod(
    managed: &Managed,
    secrets: &Secrets,
    children: &mut Children,
) -> Result<DependencyPod, BuildError> {
    let context = managed.context;
    let password = secrets
        .redis_password
        .as_deref()
        .ok_or(BuildError::MissingSecret("redis"))?;
    let credentials = names::credentials_secret(context.name, Dependency::Redis);
    children.secrets.push(context.secret(
        &credentials,
        Dependency::Redis.name(),
        &[("password", password)],
    ));
    Ok(DependencyPod {
        ports: vec![("redis", Dependency::Redis.port())],
        client_ports: 1,
        env: vec![env_secret("REDIS_PASSWORD", &credentials, "password")],
        command: ["sh", "-c", REDIS_COMMAND].map(str::to_owned).to_vec(),
        data_dir: REDIS_DATA_DIR,
        mounts: Vec::new(),
        volumes: Vec::new(),
        init_containers: Vec::new(),
    })
}
