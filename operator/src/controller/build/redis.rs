//! A managed Redis: its credentials Secret (with the ACL file of every workload's own user) and
//! what its pod runs, without the image's entrypoint.

use std::collections::BTreeMap;

use super::super::validate::ManagedRedis;
use super::meta::{env_secret, mount, secret_file_volume};
use super::statefulset::{DependencyPod, Managed};
use super::{Children, Dependency, USERS_HASH, access, names};

/// Where Redis keeps its data (the append-only file): the claim's mount.
const REDIS_DATA_DIR: &str = "/data";
/// Where the ACL file is mounted, read-only, from the credentials Secret.
const REDIS_ACL_DIR: &str = "/etc/redis-acl";
/// The credentials Secret's key holding the ACL file (hashes only).
const ACL_KEY: &str = "users.acl";

/// Redis, explicitly: the append-only file on the data volume, written and flushed to disk
/// before every reply (`appendfsync always`: an acknowledged idempotency claim, stock change or
/// "applied" mark survives even a crash of the machine, where `everysec` could lose the last
/// second of them while their events were already published), no RDB snapshots, the users from
/// the ACL file (the `default` user with the Secret's password, each workload its own), and files
/// readable by the owner only (what the image's entrypoint's umask gave).
const REDIS_COMMAND: &str = "umask 077; exec redis-server --appendonly yes --appendfsync always --save '' --dir /data --aclfile /etc/redis-acl/users.acl";

/// Adds the credentials Secret to `children`; returns the pod.
pub(super) fn pod(
    managed: &Managed,
    redis: &ManagedRedis<'_>,
    children: &mut Children,
) -> DependencyPod {
    let parent = managed.parent;
    let password = redis.password.as_str();
    let credentials = names::credentials_secret(parent.name, Dependency::Redis);
    let acl = access::redis_acl(password, &redis.workloads);
    let keys = access::password_entries(&redis.workloads);
    let mut data = vec![("password", password), (ACL_KEY, acl.as_str())];
    data.extend(keys.iter().map(|(key, value)| (key.as_str(), *value)));
    children
        .secrets
        .push(parent.secret(&credentials, Dependency::Redis.name(), &data));
    DependencyPod {
        ports: vec![("redis", Dependency::Redis.port())],
        client_ports: 1,
        // The `default` user's password, for people and tools exec'd into the pod
        // (`REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ...`); the server reads the ACL file.
        env: vec![env_secret("REDIS_PASSWORD", &credentials, "password")],
        command: ["sh", "-c", REDIS_COMMAND].map(str::to_owned).to_vec(),
        data_dir: REDIS_DATA_DIR,
        mounts: vec![mount("acl", REDIS_ACL_DIR)],
        volumes: vec![secret_file_volume("acl", &credentials, ACL_KEY, ACL_KEY)],
        init_containers: Vec::new(),
        annotations: BTreeMap::from([(USERS_HASH.to_owned(), access::digest(&acl))]),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;

    #[test]
    fn the_secret_holds_each_workload_password_and_the_acl_file_only_hashes() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let secret = children
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("shop-redis-credentials"))
            .unwrap();
        let data = secret.data.as_ref().unwrap();
        let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
        assert_eq!(text("password"), "redispassword");
        assert_eq!(text("dashboard-password"), "dashboard-redis");
        let acl = text(ACL_KEY);
        assert!(
            !acl.contains("-redis ") && !acl.contains("redispassword"),
            "{acl}"
        );
        assert_eq!(acl.lines().count(), 5, "{acl}");
        // The pod mounts the ACL file alone, not the passwords, and restarts when it changes.
        let pod = children.stateful_sets[1]
            .spec
            .as_ref()
            .unwrap()
            .template
            .clone();
        let volumes = serde_json::to_value(&pod.spec.unwrap().volumes).unwrap();
        assert_eq!(
            volumes[1]["secret"]["items"],
            json!([{"key": "users.acl", "path": "users.acl"}])
        );
        assert_eq!(
            pod.metadata.unwrap().annotations.unwrap()[USERS_HASH],
            access::digest(&acl)
        );
    }
}
