//! Each workload's own user on a managed RabbitMQ and a managed Redis, with the grants of
//! `pipeline_contract::access`: the RabbitMQ definitions file its nodes import at boot and the
//! Redis ACL file it loads at start. Both hold password hashes only, never a password: the
//! dependency's pods can check a workload's login but not make one.

use std::collections::BTreeMap;

use base64::Engine;
use pipeline_contract::Workload;
use pipeline_contract::keys::Keys;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The vhost every managed pipeline uses (`%2f` in the workloads' URLs).
const VHOST: &str = "/";

/// RabbitMQ's default password hash (`rabbit_password_hashing_sha256`): base64 of a 4-byte salt
/// followed by SHA-256 of the salt and the password. The salt is derived from the password, so
/// the file (and the pods' rollout hash) stays the same from one reconcile to the next; the
/// passwords are random, so no two users share a salt.
fn rabbitmq_hash(password: &str) -> String {
    let salt = &Sha256::digest(format!("order-pipeline rabbitmq salt {password}"))[..4];
    let mut salted = salt.to_vec();
    salted.extend_from_slice(
        &Sha256::new()
            .chain_update(salt)
            .chain_update(password)
            .finalize(),
    );
    base64::engine::general_purpose::STANDARD.encode(salted)
}

/// The definitions a managed RabbitMQ imports at boot (`load_definitions`): the administrator
/// (the operator's own login, for the management API), every workload's user with its
/// permissions on the vhost, and the vhost. Importing again (each node, each boot) is a no-op.
pub(super) fn rabbitmq_definitions(
    admin: (&str, &str),
    workloads: &BTreeMap<Workload, String>,
) -> String {
    let user = |name: &str, password: &str, tags: &str| {
        json!({
            "name": name,
            "password_hash": rabbitmq_hash(password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": tags,
        })
    };
    let mut users = vec![user(admin.0, admin.1, "administrator")];
    let mut permissions = vec![json!({
        "user": admin.0, "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*",
    })];
    for (workload, password) in workloads {
        let granted = workload.rabbitmq();
        users.push(user(workload.name(), password, ""));
        permissions.push(json!({
            "user": workload.name(),
            "vhost": VHOST,
            "configure": granted.configure,
            "write": granted.write,
            "read": granted.read,
        }));
    }
    let definitions = json!({
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
    });
    serde_json::to_string_pretty(&definitions).unwrap_or_default()
}

/// The ACL file a managed Redis loads at start: the `default` user with the administrator
/// password (for people and tools), and every workload's user limited to its keys and commands.
/// Passwords as SHA-256 (`#<hex>`), Redis's own hashed form.
pub(super) fn redis_acl(admin_password: &str, workloads: &BTreeMap<Workload, String>) -> String {
    let hash = |password: &str| hex::encode(Sha256::digest(password));
    let mut lines = vec![format!(
        "user default on #{} ~* &* +@all",
        hash(admin_password)
    )];
    for (workload, password) in workloads {
        // Managed pipelines use the seed's exact keys: the operator sets no prefix.
        let rules = workload.redis_rules(&Keys::default()).join(" ");
        lines.push(format!(
            "user {} on #{} {rules}",
            workload.name(),
            hash(password)
        ));
    }
    lines.join("\n") + "\n"
}

/// The `<workload>-password` entries of a credentials Secret.
pub(super) fn password_entries(passwords: &BTreeMap<Workload, String>) -> Vec<(String, &str)> {
    passwords
        .iter()
        .map(|(workload, password)| (super::password_key(*workload), password.as_str()))
        .collect()
}

/// A short digest of `text`, for a pod template annotation that restarts the dependency's pods
/// when the users they load at start change.
pub(super) fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passwords() -> BTreeMap<Workload, String> {
        Workload::ALL
            .into_iter()
            .map(|workload| (workload, format!("{}-secret", workload.name())))
            .collect()
    }

    #[test]
    fn rabbitmq_hashes_are_salted_sha256_of_the_password() {
        let hash = base64::engine::general_purpose::STANDARD
            .decode(rabbitmq_hash("s3cret"))
            .unwrap();
        assert_eq!(hash.len(), 4 + 32);
        let (salt, digest) = hash.split_at(4);
        let expected = Sha256::new()
            .chain_update(salt)
            .chain_update("s3cret")
            .finalize();
        assert_eq!(digest, expected.as_slice());
        assert_eq!(rabbitmq_hash("s3cret"), rabbitmq_hash("s3cret"));
        assert_ne!(rabbitmq_hash("s3cret"), rabbitmq_hash("other"));
    }

    #[test]
    fn definitions_hold_hashes_and_no_password() {
        let definitions = rabbitmq_definitions(("pipeline", "admin-secret"), &passwords());
        for secret in [
            "admin-secret",
            "gateway-secret",
            "processor-secret",
            "dashboard-secret",
        ] {
            assert!(!definitions.contains(secret), "{secret} in {definitions}");
        }
        let parsed: serde_json::Value = serde_json::from_str(&definitions).unwrap();
        let users: Vec<&str> = parsed["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|user| user["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            users,
            ["pipeline", "gateway", "processor", "notifier", "dashboard"]
        );
        let notifier = &parsed["permissions"][3];
        assert_eq!(notifier["user"], "notifier");
        assert_eq!(notifier["write"], Workload::Notifier.rabbitmq().write);
    }

    #[test]
    fn the_acl_file_has_one_line_per_user_and_no_password() {
        let acl = redis_acl("admin-secret", &passwords());
        assert!(!acl.contains("secret"), "{acl}");
        let lines: Vec<&str> = acl.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("user default on #"));
        let dashboard = lines
            .iter()
            .find(|line| line.starts_with("user dashboard "))
            .unwrap();
        assert!(dashboard.contains("%R~inventory:*") && dashboard.contains("-@all"));
        assert!(
            !dashboard.contains(" ~"),
            "the dashboard writes no key: {dashboard}"
        );
    }
}
