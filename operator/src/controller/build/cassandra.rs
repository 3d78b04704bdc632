//! A managed Cassandra: its credentials Secret, the init container that writes its configuration
//! (from the image's, with [`CASSANDRA_CONFIG_SCRIPT`]), what its pod runs (its own launcher, a
//! heap sized from its memory limit) and the Job that sets up its login
//! ([`CASSANDRA_CREDENTIALS_SCRIPT`]). The two bash programs are files beside this one, so
//! ShellCheck reads them (`cargo xtask shellcheck`); their text is the pods' command as it is.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

use super::super::validate::ManagedCassandra;
use super::meta::{
    Parent, empty_dir, env_field, env_secret, env_value, mount, resources,
    restricted_container_security,
};
use super::statefulset::{DependencyPod, Managed};
use super::{CASSANDRA_ROLE, CASSANDRA_SUPERUSER, Children, Dependency, names};
use crate::quantity;

/// The keyspace the gateway keeps accounts in: its default, as the operator sets no
/// `CASSANDRA_KEYSPACE`.
const GATEWAY_KEYSPACE: &str = pipeline_contract::ACCOUNTS_KEYSPACE;
/// Where the Cassandra image keeps its configuration and Cassandra reads it (`CASSANDRA_CONF`).
const CASSANDRA_CONFIG_DIR: &str = "/etc/cassandra";
/// Where the configuration init container mounts the volume that the Cassandra container then
/// mounts at [`CASSANDRA_CONFIG_DIR`]: elsewhere, so the image's own files stay visible to copy.
const CASSANDRA_CONFIG_INIT_MOUNT: &str = "/config";
/// Where Cassandra keeps its data: the claim's mount.
const CASSANDRA_DATA_DIR: &str = "/var/lib/cassandra";
/// The component label of the Job that sets a managed Cassandra's credentials. Not `cassandra`:
/// its pod must not match the Cassandra Services' and StatefulSet's selectors.
const CASSANDRA_AUTH: &str = "cassandra-auth";

/// A managed Cassandra's heap is half its memory limit, and no more than this: the rest of the
/// limit is for what the JVM keeps outside the heap (off-heap memtables and caches, metaspace,
/// thread stacks, direct buffers), and beyond 8 GiB a bigger heap mostly means longer pauses.
const CASSANDRA_MAXIMUM_HEAP: u64 = 8 << 30;
/// The young generation (`HEAP_NEWSIZE`) is a quarter of the heap, and no more than this.
const CASSANDRA_MAXIMUM_NEW_SIZE: u64 = 2 << 30;

/// Adds the credentials Secret and the credentials Job to `children`; returns the pod.
pub(super) fn pod(
    managed: &Managed,
    cassandra: &ManagedCassandra<'_>,
    children: &mut Children,
) -> DependencyPod {
    let parent = managed.parent;
    // The image starts with the well-known superuser cassandra/cassandra. The workloads log in
    // as their own role instead, which the credentials Job creates with this password, and the
    // Job replaces the superuser's password with the generated one kept here: nothing answers to
    // cassandra/cassandra once it ran.
    let password = cassandra.password.as_str();
    let superuser_password = cassandra.superuser_password.as_str();
    children.secrets.push(parent.secret(
        &names::credentials_secret(parent.name, Dependency::Cassandra),
        Dependency::Cassandra.name(),
        &[
            ("username", CASSANDRA_ROLE),
            ("password", password),
            ("superuser-password", superuser_password),
        ],
    ));
    let memory_limit = cassandra.memory_limit;
    let (heap, new_size) = cassandra_heap(memory_limit);
    children.jobs.push(credentials_job(
        parent,
        managed.image,
        managed.spec.replicas,
    ));
    // Seeds, cluster name, snitch and addresses are in cassandra.yaml, which the configuration
    // init container writes; this is Cassandra's own launcher's contract (`bin/cassandra`,
    // `cassandra-env.sh`).
    DependencyPod {
        ports: vec![("cql", Dependency::Cassandra.port()), ("intra", 7000)],
        client_ports: 1,
        env: vec![
            env_value("CASSANDRA_CONF", CASSANDRA_CONFIG_DIR),
            pod_ip_env(),
            env_value("MAX_HEAP_SIZE", heap),
            env_value("HEAP_NEWSIZE", new_size),
        ],
        command: vec!["cassandra".to_owned(), "-f".to_owned()],
        data_dir: CASSANDRA_DATA_DIR,
        // The configuration is the image's, edited for this pod (its address, seeds, cluster
        // name, login), and the root filesystem is read-only: it lives on a volume, which an
        // empty one would hide the image's files behind, so the init container copies them there
        // and edits the copy.
        mounts: vec![
            mount("cassandra-config", CASSANDRA_CONFIG_DIR),
            mount("cassandra-logs", "/opt/cassandra/logs"),
        ],
        volumes: vec![empty_dir("cassandra-config"), empty_dir("cassandra-logs")],
        init_containers: vec![config_container(managed)],
        annotations: BTreeMap::new(),
    }
}

/// The init container that runs [`CASSANDRA_CONFIG_SCRIPT`] with the Cassandra container's own
/// image, whose configuration it copies: from the image's [`CASSANDRA_CONFIG_DIR`] to the
/// configuration volume, which the Cassandra container then mounts there. It writes this pod's
/// address (known to init containers already), the first node as the seed (its name resolves
/// before it is ready: the headless Service publishes not-ready addresses) and the cluster name,
/// which must never change once there is data.
fn config_container(managed: &Managed) -> Container {
    let parent = managed.parent;
    Container {
        name: "config".to_owned(),
        image: Some(managed.image.to_owned()),
        command: Some(bash_c(CASSANDRA_CONFIG_SCRIPT)),
        env: Some(vec![
            env_value("IMAGE_CONFIG_DIR", CASSANDRA_CONFIG_DIR),
            env_value("CONFIG_DIR", CASSANDRA_CONFIG_INIT_MOUNT),
            pod_ip_env(),
            env_value(
                "SEEDS",
                names::pod_host(parent.name, Dependency::Cassandra, 0, parent.namespace),
            ),
            env_value("CLUSTER_NAME", managed.name.clone()),
        ]),
        volume_mounts: Some(vec![mount("cassandra-config", CASSANDRA_CONFIG_INIT_MOUNT)]),
        resources: Some(resources(None)),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    }
}

/// The Job that runs [`CASSANDRA_CREDENTIALS_SCRIPT`] with the StatefulSet's own image (and so
/// its `cqlsh`), reading every password from the credentials Secret.
///
/// A Job's pod template is immutable, so an apply of a changed one would fail. The name
/// therefore ends in a hash of the spec: a changed spec (a new image, more replicas) is a new
/// Job that runs the idempotent script again, and an unchanged one re-applies as a no-op. The
/// hash stays short because Job names become label values (at most 63 characters, and
/// pipeline names have up to 40). A finished Job is deleted after
/// `ttlSecondsAfterFinished`, which also clears superseded ones; the next full apply then
/// creates it again and the script re-asserts the credentials (or retries a failed setup).
///
/// Its pod carries the pipeline's instance label, which the Cassandra NetworkPolicy admits,
/// but a component of its own, so no Cassandra Service or the StatefulSet selects it.
fn credentials_job(parent: &Parent, image: &str, replicas: i32) -> Job {
    let credentials = names::credentials_secret(parent.name, Dependency::Cassandra);
    let container = Container {
        name: "cqlsh".to_owned(),
        image: Some(image.to_owned()),
        command: Some(bash_c(CASSANDRA_CREDENTIALS_SCRIPT)),
        env: Some(vec![
            env_value(
                "CASSANDRA_HOST",
                names::service_host(parent.name, Dependency::Cassandra, parent.namespace),
            ),
            env_value("CASSANDRA_PORT", Dependency::Cassandra.port().to_string()),
            env_value("SUPERUSER_NAME", CASSANDRA_SUPERUSER),
            env_secret("SUPERUSER_PASSWORD", &credentials, "superuser-password"),
            env_secret("APP_ROLE", &credentials, "username"),
            env_secret("APP_PASSWORD", &credentials, "password"),
            env_value("APP_KEYSPACE", GATEWAY_KEYSPACE),
            // As the gateway's keyspace: every node, up to three.
            env_value("AUTH_REPLICATION_FACTOR", replicas.clamp(1, 3).to_string()),
            // cqlsh keeps its history in ~/.cassandra; the root filesystem is read-only.
            env_value("HOME", "/tmp"),
            env_value("PYTHONDONTWRITEBYTECODE", "1"),
        ]),
        volume_mounts: Some(vec![mount("tmp", "/tmp")]),
        resources: Some(resources(None)),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    };
    parent.hashed_job(
        CASSANDRA_AUTH,
        PodSpec {
            containers: vec![container],
            volumes: Some(vec![empty_dir("tmp")]),
            ..PodSpec::default()
        },
    )
}

/// `bash -c <script>`: how the scripts run, as they have no shebang.
fn bash_c(script: &str) -> Vec<String> {
    vec!["bash".to_owned(), "-c".to_owned(), script.to_owned()]
}

/// The pod's IP, from the downward API (known before the init containers run).
fn pod_ip_env() -> EnvVar {
    env_field("POD_IP", "status.podIP")
}

/// `MAX_HEAP_SIZE` and `HEAP_NEWSIZE` for a Cassandra container with this memory limit: half
/// the limit, at most [`CASSANDRA_MAXIMUM_HEAP`], and a quarter of that, at most
/// [`CASSANDRA_MAXIMUM_NEW_SIZE`], in mebibytes (`1024M`) as `cassandra-env.sh` passes them to
/// `-Xms`/`-Xmx` and `-Xmn`. Set explicitly, so Cassandra never sizes itself from the node's
/// memory instead of the container's.
fn cassandra_heap(memory_limit: u64) -> (String, String) {
    let heap = (memory_limit / 2).min(CASSANDRA_MAXIMUM_HEAP);
    let new_size = (heap / 4).min(CASSANDRA_MAXIMUM_NEW_SIZE);
    (
        quantity::as_mebibytes(heap),
        quantity::as_mebibytes(new_size),
    )
}

/// Makes a managed Cassandra's configuration: the configuration init container runs it with the
/// image's bash, and the tests run this same text on sample configurations. It does what the
/// official image's entrypoint did, and more, so no image needs an entrypoint.
///
/// It copies the image's configuration directory, every file, to the writable one Cassandra will
/// read (Cassandra finds its other files next to `cassandra.yaml`), and sets in the copy's
/// `cassandra.yaml`:
/// - `cluster_name` (`CLUSTER_NAME`), and the seeds (`SEEDS`) as a `SimpleSeedProvider`'s
///   `- seeds: "..."`, the whole `seed_provider` block;
/// - `endpoint_snitch: GossipingPropertyFileSnitch` (the datacenter and rack come from the
///   image's `cassandra-rackdc.properties`);
/// - this pod's address (`POD_IP`) as `listen_address`, `broadcast_address` and
///   `broadcast_rpc_address`, and `rpc_address: 0.0.0.0` (CQL on every interface); a
///   `listen_interface` or `rpc_interface`, which Cassandra refuses next to an address, goes;
/// - login and permissions: `authenticator: PasswordAuthenticator`, `authorizer:
///   CassandraAuthorizer` and `role_manager: CassandraRoleManager`. The image ships
///   `AllowAllAuthenticator` and `AllowAllAuthorizer`, which check no password at all; without
///   this the credentials Job's passwords would guard nothing.
///
/// Each setting replaces its top-level key's whole value, whatever form it had: a value on the
/// key's line (`authorizer: AllowAllAuthorizer`), a flow value over several lines, or a block
/// below it (Cassandra 5.0's `authenticator:` with an indented `class_name : ...`, the
/// `seed_provider` list, indented or not), whose lines go. Comments stay. A key that occurs twice
/// keeps only its first place, and a missing one is appended (a minimal `cassandra.yaml` works),
/// so each occurs exactly once, which the script checks before it ends. Only the image's shell
/// tools are used: bash, `cp`, `mv`, mawk-compatible `awk`, `grep`; no temporary files outside
/// `CONFIG_DIR` (the root filesystem is read-only).
///
/// Every run starts from the image's files again, so a rerun (a restarted pod, maybe with a new
/// address) writes this run's result and never builds on an earlier one.
///
/// Parameters, as environment variables, all required: `IMAGE_CONFIG_DIR` (the image's
/// configuration directory, left as it is), `CONFIG_DIR` (where the configuration is written),
/// `POD_IP`, `SEEDS` (comma-separated host names or addresses) and `CLUSTER_NAME`.
pub const CASSANDRA_CONFIG_SCRIPT: &str = include_str!("cassandra-config.sh");

/// Sets up a managed Cassandra's credentials; the credentials Job runs it with bash and the
/// image's `cqlsh`, and the tests run this same text against the environment's Cassandra.
///
/// Every step can run again, after a partial or a complete run: it logs in as the superuser with
/// the new password or else the image's default; makes `system_auth` replicated on up to three
/// nodes (the image leaves it on one, so losing that node would lock everyone out) and, since
/// rows written before that live on one node only, reads the role tables at `CONSISTENCY ALL`,
/// which repairs them; creates the application role and sets its password, so the Secret is the
/// truth; grants it what the gateway needs (it creates its keyspace and table when missing:
/// `CREATE` on all keyspaces; the creator of a keyspace gets every permission on it, and an
/// existing keyspace, created by the superuser before there was an application role, gets
/// `SELECT` and `MODIFY` explicitly); and finally replaces the superuser's password.
///
/// Passwords arrive in the environment (from the Secret) and reach `cqlsh` only through files
/// in a private directory, never a command line or the log.
///
/// Parameters, as environment variables: `CASSANDRA_HOST` (required), `CASSANDRA_PORT` (9042),
/// `SUPERUSER_NAME` (`cassandra`), `DEFAULT_SUPERUSER_PASSWORD` (`cassandra`),
/// `SUPERUSER_PASSWORD` (required: the new one), `APP_ROLE` (`pipeline`), `APP_PASSWORD`
/// (required), `APP_KEYSPACE` (required: the contract's accounts keyspace), `AUTH_REPLICATION_FACTOR` (1),
/// `CONNECT_ATTEMPTS` (60) and `CONNECT_DELAY_SECONDS` (5).
pub const CASSANDRA_CREDENTIALS_SCRIPT: &str = include_str!("cassandra-credentials.sh");

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::super::test_support::*;
    use super::super::{
        CASSANDRA_IMAGE, CASSANDRA_ROLE, CASSANDRA_SUPERUSER, Children, Dependency, MANAGED_BY,
        ReplicaOverrides, Settings,
    };
    use super::{CASSANDRA_CONFIG_SCRIPT, CASSANDRA_CREDENTIALS_SCRIPT, GATEWAY_KEYSPACE};
    use crate::controller::build::meta::{DEPENDENCY_USER, JOB_HASH_LENGTH};

    #[test]
    fn a_managed_cassandra_reads_the_configuration_its_init_container_copied_from_the_image() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let pod = pod_of(&children, "shop-cassandra");
        let init = pod.init_containers.as_deref().unwrap();
        assert_eq!(init.len(), 1);
        let (config, cassandra) = (&init[0], &pod.containers[0]);
        assert_eq!(
            config.command.as_deref().unwrap(),
            ["bash", "-c", CASSANDRA_CONFIG_SCRIPT]
        );
        let env: BTreeMap<&str, Option<&str>> = config
            .env
            .iter()
            .flatten()
            .map(|var| (var.name.as_str(), var.value.as_deref()))
            .collect();
        // What the image's entrypoint took from its environment is the script's now: the
        // first node as the seed, the cluster name (as the entrypoint had it), the pod's address.
        assert_eq!(
            env,
            BTreeMap::from([
                ("CONFIG_DIR", Some("/config")),
                ("IMAGE_CONFIG_DIR", Some("/etc/cassandra")),
                ("POD_IP", None),
                (
                    "SEEDS",
                    Some("shop-cassandra-0.shop-cassandra-headless.store.svc")
                ),
                ("CLUSTER_NAME", Some("shop-cassandra")),
            ])
        );
        let pod_ip = |container: &k8s_openapi::api::core::v1::Container| {
            let var = container
                .env
                .iter()
                .flatten()
                .find(|var| var.name == "POD_IP")
                .cloned();
            serde_json::to_value(var).unwrap()
        };
        for container in [config, cassandra] {
            assert_eq!(
                pod_ip(container)["valueFrom"],
                json!({"fieldRef": {"fieldPath": "status.podIP"}}),
                "{}",
                container.name
            );
        }
        // The init container sees the image's /etc/cassandra and writes the volume elsewhere;
        // Cassandra then finds the copy at /etc/cassandra.
        let mounts = |container: &k8s_openapi::api::core::v1::Container| {
            serde_json::to_value(container.volume_mounts.as_ref().unwrap()).unwrap()
        };
        assert_eq!(
            mounts(config),
            json!([{"name": "cassandra-config", "mountPath": "/config"}])
        );
        assert!(
            mounts(cassandra)
                .as_array()
                .unwrap()
                .contains(&json!({"name": "cassandra-config", "mountPath": "/etc/cassandra"}))
        );
        let volumes = serde_json::to_value(pod.volumes.as_ref().unwrap()).unwrap();
        assert!(
            volumes
                .as_array()
                .unwrap()
                .contains(&json!({"name": "cassandra-config", "emptyDir": {}}))
        );
        // As restricted as the Cassandra container, and as the same user (the pod's).
        let security = config.security_context.as_ref().unwrap();
        assert_eq!(security, cassandra.security_context.as_ref().unwrap());
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(security.run_as_user, None);
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_user, Some(DEPENDENCY_USER));
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert!(config.resources.is_some());
        // Cassandra runs its own launcher, without the image's entrypoint, and finds everything
        // the entrypoint would have set from the environment in the configuration already.
        assert_eq!(cassandra.command.as_deref().unwrap(), ["cassandra", "-f"]);
        let names: Vec<&str> = cassandra
            .env
            .iter()
            .flatten()
            .map(|var| var.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["CASSANDRA_CONF", "POD_IP", "MAX_HEAP_SIZE", "HEAP_NEWSIZE"]
        );
        let env = env_of_container(cassandra);
        assert_eq!(env["CASSANDRA_CONF"]["value"], "/etc/cassandra");
        // Not Redis: its template stays as it was (no empty list). (RabbitMQ's init container
        // copies its Erlang cookie.)
        let pod = pod_of(&children, "shop-redis");
        assert_eq!(pod.init_containers, None);
        assert!(
            serde_json::to_value(pod)
                .unwrap()
                .get("initContainers")
                .is_none()
        );
    }

    #[test]
    fn the_configuration_init_container_runs_the_image_cassandra_runs() {
        let running = RunningImages::from([(Dependency::Cassandra, "cassandra:5.0.1".to_owned())]);
        for (spec, running, expected) in [
            (json!({}), RunningImages::new(), CASSANDRA_IMAGE),
            // A running Cassandra keeps its image through an operator upgrade, and so its files.
            (json!({}), running.clone(), "cassandra:5.0.1"),
            (
                json!({"cassandra": {"managed": {"image": "cassandra:5.0.9"}}}),
                running,
                "cassandra:5.0.9",
            ),
        ] {
            let children = build_with(
                &pipeline(spec),
                &secrets(),
                &ReplicaOverrides::new(),
                &running,
                &Settings::default(),
                "0.1.0",
            )
            .unwrap();
            let pod = pod_of(&children, "shop-cassandra");
            let init = pod.init_containers.as_deref().unwrap();
            assert_eq!(init[0].image.as_deref(), Some(expected));
            assert_eq!(pod.containers[0].image.as_deref(), Some(expected));
        }
    }

    #[test]
    fn a_managed_cassandra_gets_generated_credentials_and_a_job_an_external_one_neither() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let secret = children
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("shop-cassandra-credentials"))
            .unwrap();
        let data = secret.data.as_ref().unwrap();
        let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
        assert_eq!(text("username"), CASSANDRA_ROLE);
        assert_eq!(text("password"), "cassandrapassword");
        assert_eq!(text("superuser-password"), "superuserpassword");
        let job = credentials_job(&children);
        let name = job.metadata.name.as_deref().unwrap();
        let hash = name.strip_prefix("shop-cassandra-auth-").unwrap();
        assert_eq!(hash.len(), JOB_HASH_LENGTH);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("OrderPipeline", Some(true))
        );
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            MANAGED_BY
        );

        let external = build_default(
            &pipeline(json!({"cassandra": {"external": {"endpoints": ["db.example.com:9042"]}}})),
            &Secrets {
                cassandra_password: None,
                cassandra_superuser_password: None,
                ..secrets()
            },
            "0.1.0",
        )
        .unwrap();
        assert!(external.jobs.is_empty());
        assert!(
            external
                .secrets
                .iter()
                .all(|s| s.metadata.name.as_deref() != Some("shop-cassandra-credentials"))
        );
        // Managed without its passwords is a dereference bug, reported, never papered over.
        let missing = Secrets {
            cassandra_superuser_password: None,
            ..secrets()
        };
        assert_eq!(
            build_default(&pipeline(json!({})), &missing, "0.1.0"),
            Err(ValidationError::MissingSecret("cassandra superuser"))
        );
    }

    #[test]
    fn the_credentials_job_reads_every_password_from_the_secret() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let job = credentials_job(&children);
        let text = serde_json::to_string(job).unwrap();
        for password in ["cassandrapassword", "superuserpassword"] {
            assert!(!text.contains(password), "{password} is written in the Job");
        }
        let container = job_container(job);
        assert_eq!(
            container.command.as_deref().unwrap(),
            ["bash", "-c", CASSANDRA_CREDENTIALS_SCRIPT]
        );
        let env: BTreeMap<String, Value> = container
            .env
            .iter()
            .flatten()
            .map(|var| (var.name.clone(), serde_json::to_value(var).unwrap()))
            .collect();
        for (name, key) in [
            ("SUPERUSER_PASSWORD", "superuser-password"),
            ("APP_ROLE", "username"),
            ("APP_PASSWORD", "password"),
        ] {
            assert_eq!(
                env[name]["valueFrom"]["secretKeyRef"],
                json!({"name": "shop-cassandra-credentials", "key": key}),
                "{name}"
            );
        }
        assert_eq!(env["CASSANDRA_HOST"]["value"], "shop-cassandra.store.svc");
        assert_eq!(env["CASSANDRA_PORT"]["value"], "9042");
        assert_eq!(env["SUPERUSER_NAME"]["value"], CASSANDRA_SUPERUSER);
        assert_eq!(env["APP_KEYSPACE"]["value"], GATEWAY_KEYSPACE);
        assert_eq!(env["AUTH_REPLICATION_FACTOR"]["value"], "1");
        // Only the superuser's password can reach the script by value: the image's default one,
        // which the script knows itself.
        assert!(!env.contains_key("DEFAULT_SUPERUSER_PASSWORD"));
        let template = &job.spec.as_ref().unwrap().template;
        let pod = template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_user,
            Some(DEPENDENCY_USER)
        );
        // cqlsh writes ~/.cassandra: HOME is on the emptyDir, the rest is read-only.
        assert_eq!(env["HOME"]["value"], "/tmp");
        assert_eq!(
            serde_json::to_value(container.volume_mounts.as_ref().unwrap()).unwrap(),
            json!([{"name": "tmp", "mountPath": "/tmp"}])
        );
        assert_eq!(
            serde_json::to_value(pod.volumes.as_ref().unwrap()).unwrap(),
            json!([{"name": "tmp", "emptyDir": {}}])
        );
        assert!(job.spec.as_ref().unwrap().backoff_limit.is_some());
        assert!(
            job.spec
                .as_ref()
                .unwrap()
                .ttl_seconds_after_finished
                .is_some()
        );
    }

    #[test]
    fn the_credentials_job_follows_the_cassandra_image_and_is_renamed_by_any_change() {
        let build_spec = |spec: Value, running: &RunningImages| {
            build_with(
                &pipeline(spec),
                &secrets(),
                &ReplicaOverrides::new(),
                running,
                &Settings::default(),
                "0.1.0",
            )
            .unwrap()
        };
        let image = |children: &Children| job_container(credentials_job(children)).image.clone();
        let name = |children: &Children| credentials_job(children).metadata.name.clone();
        let base = build_spec(json!({}), &RunningImages::new());
        assert_eq!(image(&base).as_deref(), Some(CASSANDRA_IMAGE));
        // The same inputs, the same Job: a re-apply is a no-op.
        assert_eq!(
            credentials_job(&base),
            credentials_job(&build_spec(json!({}), &RunningImages::new()))
        );
        // A running Cassandra keeps its image, and so does the Job: no new Job on upgrade.
        let running = RunningImages::from([(Dependency::Cassandra, "cassandra:5.0.1".to_owned())]);
        let upgraded = build_spec(json!({}), &running);
        assert_eq!(image(&upgraded).as_deref(), Some("cassandra:5.0.1"));
        // A template change is a new Job (its template is immutable).
        assert_ne!(name(&base), name(&upgraded));
        let explicit = build_spec(
            json!({"cassandra": {"managed": {"image": "cassandra:5.0.9"}}}),
            &running,
        );
        assert_eq!(image(&explicit).as_deref(), Some("cassandra:5.0.9"));
        // The longest pipeline name still makes a valid Job name.
        let mut long = pipeline(json!({}));
        long.metadata.name = Some("a".repeat(40));
        let children = build_with(
            &long,
            &secrets(),
            &ReplicaOverrides::new(),
            &RunningImages::new(),
            &Settings::default(),
            "0.1.0",
        )
        .unwrap();
        assert_eq!(name(&children).unwrap().len(), 63);
    }
}
