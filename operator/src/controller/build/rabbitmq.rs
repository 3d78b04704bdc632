//! A managed RabbitMQ: its credentials Secret (with the cluster's Erlang cookie), its
//! configuration ConfigMap (peers, memory watermark, logging), what its pod runs without the
//! image's entrypoint, and the Job that gives every quorum queue a member on every node.
//!
//! N replicas are one cluster: every node is listed as a peer (`classic_config`, which takes a
//! lock across the listed nodes, so nodes started in parallel join one another instead of booting
//! alone), and all share the cookie, which an init container copies from the Secret to the data
//! volume. A quorum queue gets members only on the nodes in the cluster when it is declared; the
//! membership Job grows every queue to every node once all are running, again whenever the
//! replica count changes.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Container, PodSpec, Volume};
use pipeline_contract::topology;

use super::super::validate::ManagedRabbitmq;
use super::meta::{
    Parent, empty_dir, env_field, env_secret, env_value, mount, resources,
    restricted_container_security, secret_file_volume,
};
use super::statefulset::{DependencyPod, Managed};
use super::{Children, Dependency, USERS_HASH, access, names};

/// Copies the Erlang cookie from its Secret to `$HOME/.erlang.cookie`, owner-readable only.
pub const RABBITMQ_COOKIE_SCRIPT: &str = include_str!("rabbitmq-cookie.sh");
/// Adds every node as a member of every quorum queue (see the script's header).
pub const RABBITMQ_GROW_SCRIPT: &str = include_str!("rabbitmq-grow.sh");

/// The credentials Secret's key holding the Erlang cookie. The workloads read only `username`
/// and `password` from that Secret, by key; only RabbitMQ's own pods mount the cookie.
const COOKIE_KEY: &str = "erlang-cookie";
/// The administrator: the operator's login to the management API, and people's.
pub const ADMIN_USER: &str = "pipeline";
/// The credentials Secret's key holding the definitions the nodes import at boot: the users,
/// with password hashes only, and their permissions.
const DEFINITIONS_KEY: &str = "definitions.json";
/// Where the definitions are mounted, read-only.
const DEFINITIONS_DIR: &str = "/etc/rabbitmq-definitions";
/// Where the cookie's Secret file is mounted, read-only, for the script to copy.
const COOKIE_MOUNT: &str = "/etc/rabbitmq-cookie";
/// The component label of the membership Job: not `rabbitmq`, so no RabbitMQ Service or the
/// StatefulSet selects its pod.
const GROW: &str = "rabbitmq-grow";

/// Where RabbitMQ keeps its data: the claim's mount.
const RABBITMQ_DATA_DIR: &str = "/var/lib/rabbitmq";
/// Where the RabbitMQ configuration ConfigMap is mounted, read-only.
const RABBITMQ_CONFIG_DIR: &str = "/etc/rabbitmq";
/// The management API's port: the autoscaler reads queue depths from it.
pub const MANAGEMENT_PORT: u16 = 15672;

/// RabbitMQ's memory high watermark, as a share of its memory limit in percent: publishers are
/// blocked above it, well before the kernel's OOM killer would stop the node at the limit.
const RABBITMQ_WATERMARK_PERCENT: u64 = 60;

/// The management API (the autoscaler reads queue depths from it) and Prometheus metrics.
const RABBITMQ_ENABLED_PLUGINS: &str = "[rabbitmq_management,rabbitmq_prometheus].\n";

/// Adds the credentials Secret and the configuration ConfigMap to `children`; returns the pod.
pub(super) fn pod(
    managed: &Managed,
    rabbitmq: &ManagedRabbitmq<'_>,
    children: &mut Children,
) -> DependencyPod {
    let parent = managed.parent;
    let component = Dependency::Rabbitmq.name();
    let password = rabbitmq.password.as_str();
    let credentials = names::credentials_secret(parent.name, Dependency::Rabbitmq);
    let cookie = rabbitmq.erlang_cookie.as_str();
    let definitions = access::rabbitmq_definitions((ADMIN_USER, password), &rabbitmq.workloads);
    let workload_keys = access::password_entries(&rabbitmq.workloads);
    let mut data = vec![
        ("username", ADMIN_USER),
        ("password", password),
        (COOKIE_KEY, cookie),
        (DEFINITIONS_KEY, definitions.as_str()),
    ];
    data.extend(
        workload_keys
            .iter()
            .map(|(key, value)| (key.as_str(), *value)),
    );
    children
        .secrets
        .push(parent.secret(&credentials, component, &data));
    let memory_limit = rabbitmq.memory_limit;
    let config = names::rabbitmq_config(parent.name);
    children.config_maps.push(ConfigMap {
        metadata: parent.metadata(&config, component),
        data: Some(BTreeMap::from([
            (
                "rabbitmq.conf".to_owned(),
                rabbitmq_config(
                    parent,
                    managed.spec.replicas,
                    rabbitmq_watermark(memory_limit),
                ),
            ),
            (
                "enabled_plugins".to_owned(),
                RABBITMQ_ENABLED_PLUGINS.to_owned(),
            ),
        ])),
        ..ConfigMap::default()
    });
    if managed.spec.replicas > 1 {
        children.jobs.push(grow_job(managed));
    }
    let headless = names::headless_domain(parent.name, Dependency::Rabbitmq, parent.namespace);
    DependencyPod {
        ports: vec![
            ("amqp", Dependency::Rabbitmq.port()),
            ("management", MANAGEMENT_PORT),
            ("epmd", 4369),
            ("dist", 25672),
        ],
        // AMQP, and the management API (the operator reads queue depths and the cluster there).
        client_ports: 2,
        // What the image's entrypoint and Dockerfile provided, explicit: RabbitMQ's own start
        // script reads every one of these (`rabbit_env`), on 3.10 to 4.x.
        env: vec![
            env_secret("RABBITMQ_DEFAULT_USER", &credentials, "username"),
            env_secret("RABBITMQ_DEFAULT_PASS", &credentials, "password"),
            env_field("POD_NAME", "metadata.name"),
            // The Erlang cookie is written to $HOME: the data volume.
            env_value("HOME", RABBITMQ_DATA_DIR),
            env_value(
                "RABBITMQ_MNESIA_BASE",
                format!("{RABBITMQ_DATA_DIR}/mnesia"),
            ),
            env_value("RABBITMQ_USE_LONGNAME", "true"),
            env_value(
                "RABBITMQ_NODENAME",
                format!("rabbit@$(POD_NAME).{headless}"),
            ),
            env_value(
                "RABBITMQ_CONFIG_FILE",
                format!("{RABBITMQ_CONFIG_DIR}/rabbitmq.conf"),
            ),
            env_value(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{RABBITMQ_CONFIG_DIR}/enabled_plugins"),
            ),
            // RabbitMQ 3.x opens its upgrade log under /var/log/rabbitmq even with
            // `log.file = false`, and dies on the read-only root filesystem (seen on the real
            // node with 3.10); the data volume is writable.
            env_value(
                "RABBITMQ_UPGRADE_LOG",
                format!("{RABBITMQ_DATA_DIR}/upgrade.log"),
            ),
        ],
        command: vec!["rabbitmq-server".to_owned()],
        data_dir: RABBITMQ_DATA_DIR,
        mounts: vec![
            mount("config", RABBITMQ_CONFIG_DIR),
            mount("definitions", DEFINITIONS_DIR),
        ],
        volumes: vec![
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config,
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            secret_file_volume(
                "definitions",
                &credentials,
                DEFINITIONS_KEY,
                DEFINITIONS_KEY,
            ),
            cookie_volume(&credentials),
        ],
        init_containers: vec![cookie_container(managed.image, "data", RABBITMQ_DATA_DIR)],
        annotations: BTreeMap::from([(USERS_HASH.to_owned(), access::digest(&definitions))]),
    }
}

/// The cookie, alone, from the credentials Secret: readable by the pod's group (`fsGroup`), so
/// the script, running as the pod's user, can copy it.
fn cookie_volume(credentials: &str) -> Volume {
    secret_file_volume("erlang-cookie", credentials, COOKIE_KEY, "cookie")
}

/// The init container that runs [`RABBITMQ_COOKIE_SCRIPT`]: the cookie to `home`, where the
/// volume `home_volume` is mounted.
fn cookie_container(image: &str, home_volume: &str, home: &str) -> Container {
    Container {
        name: "erlang-cookie".to_owned(),
        image: Some(image.to_owned()),
        command: Some(sh_c(RABBITMQ_COOKIE_SCRIPT)),
        env: Some(vec![
            env_value("HOME", home),
            env_value("COOKIE_FILE", format!("{COOKIE_MOUNT}/cookie")),
        ]),
        volume_mounts: Some(vec![
            mount(home_volume, home),
            mount("erlang-cookie", COOKIE_MOUNT),
        ]),
        resources: Some(resources(None)),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    }
}

/// `sh -c <script>`: how the scripts run, as they have no shebang.
fn sh_c(script: &str) -> Vec<String> {
    vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()]
}

/// The Job that runs [`RABBITMQ_GROW_SCRIPT`] with the StatefulSet's own image (and so its CLI
/// tools), as a client node of the cluster: the cookie copied to its HOME, and a long host name
/// of its own (`hostname` and `subdomain` in the headless Service's domain, written to its
/// `/etc/hosts` by the kubelet), which the CLI needs for the long node names RabbitMQ uses. Its
/// pod carries the pipeline's instance label, which the RabbitMQ NetworkPolicy admits.
///
/// Named by a hash of its spec, like Cassandra's credentials Job: a new replica count (or image)
/// is a new Job, which grows the queues onto the new nodes; after `ttlSecondsAfterFinished` the
/// next full apply runs it again, which changes nothing when every queue has all its members.
pub(super) fn grow_job(managed: &Managed) -> Job {
    let parent = managed.parent;
    let nodes: Vec<String> = (0..managed.spec.replicas)
        .map(|index| {
            format!(
                "rabbit@{}",
                names::pod_host(parent.name, Dependency::Rabbitmq, index, parent.namespace)
            )
        })
        .collect();
    let queues = [topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE]
        .map(|queue| format!("{queue} {}", topology::dead_letter_queue(queue)))
        .join(" ");
    let container = Container {
        name: "grow".to_owned(),
        image: Some(managed.image.to_owned()),
        command: Some(sh_c(RABBITMQ_GROW_SCRIPT)),
        env: Some(vec![
            env_value("HOME", "/tmp"),
            env_value("RABBITMQ_USE_LONGNAME", "true"),
            env_value("NODES", nodes.join(" ")),
            env_value("QUEUES", queues),
        ]),
        volume_mounts: Some(vec![mount("tmp", "/tmp")]),
        resources: Some(resources(None)),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    };
    let credentials = names::credentials_secret(parent.name, Dependency::Rabbitmq);
    parent.hashed_job(
        GROW,
        PodSpec {
            hostname: Some("grow".to_owned()),
            subdomain: Some(managed.headless.clone()),
            init_containers: Some(vec![cookie_container(managed.image, "tmp", "/tmp")]),
            containers: vec![container],
            volumes: Some(vec![empty_dir("tmp"), cookie_volume(&credentials)]),
            ..PodSpec::default()
        },
    )
}

/// RabbitMQ's memory high watermark in bytes for a container with this memory limit: an
/// absolute value, because RabbitMQ does not always detect a cgroup limit and would otherwise
/// take a share of the node's memory and be OOM-killed before it blocks publishers.
fn rabbitmq_watermark(memory_limit: u64) -> u64 {
    memory_limit / 100 * RABBITMQ_WATERMARK_PERCENT
}

/// RabbitMQ's configuration, valid for RabbitMQ 3.10, 3.13 and 4.x alike.
///
/// Peers are listed (`classic_config`): every node's name is known from the StatefulSet, and the
/// list needs no access to the Kubernetes API (the pods get no token). Logs go to the console
/// only, as the root filesystem is read-only. The memory watermark is absolute (see
/// [`rabbitmq_watermark`]). No `default_queue_type` (3.10 does not know the key; the workloads
/// declare their queues `x-queue-type: quorum` themselves) and no `queue_master_locator`
/// (deprecated).
fn rabbitmq_config(parent: &Parent, replicas: i32, watermark: u64) -> String {
    let nodes: String = (0..replicas)
        .map(|index| {
            format!(
                "cluster_formation.classic_config.nodes.{} = rabbit@{}\n",
                index + 1,
                names::pod_host(parent.name, Dependency::Rabbitmq, index, parent.namespace)
            )
        })
        .collect();
    let port = Dependency::Rabbitmq.port();
    format!(
        "# Generated by the order-pipeline operator.\n\
         cluster_formation.peer_discovery_backend = classic_config\n\
         {nodes}\
         cluster_partition_handling = pause_minority\n\
         vm_memory_high_watermark.absolute = {watermark}\n\
         loopback_users.guest = false\n\
         listeners.tcp.default = {port}\n\
         management.tcp.port = {MANAGEMENT_PORT}\n\
         load_definitions = {DEFINITIONS_DIR}/{DEFINITIONS_KEY}\n\
         log.console = true\n\
         log.console.level = info\n\
         log.console.use_colors = off\n\
         log.file = false\n"
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::batch::v1::Job;
    use pipeline_contract::env;
    use serde_json::json;

    use super::super::test_support::*;

    #[test]
    fn rabbitmq_is_configured_for_3_10_to_4_x_without_its_image_entrypoint() {
        let children = build_default(
            &pipeline(json!({"rabbitmq": {"managed": {"replicas": 3}}})),
            &secrets(),
            "0.1.0",
        )
        .unwrap();
        let pod = pod_of(&children, "shop-rabbitmq");
        let rabbitmq = &pod.containers[0];
        let env = env_of_container(rabbitmq);
        for (name, value) in [
            ("HOME", "/var/lib/rabbitmq"),
            ("RABBITMQ_MNESIA_BASE", "/var/lib/rabbitmq/mnesia"),
            ("RABBITMQ_CONFIG_FILE", "/etc/rabbitmq/rabbitmq.conf"),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                "/etc/rabbitmq/enabled_plugins",
            ),
            ("RABBITMQ_USE_LONGNAME", "true"),
            ("RABBITMQ_UPGRADE_LOG", "/var/lib/rabbitmq/upgrade.log"),
            (
                "RABBITMQ_NODENAME",
                "rabbit@$(POD_NAME).shop-rabbitmq-headless.store.svc",
            ),
        ] {
            assert_eq!(env[name]["value"], value, "{name}");
        }
        for (name, key) in [
            ("RABBITMQ_DEFAULT_USER", "username"),
            ("RABBITMQ_DEFAULT_PASS", "password"),
        ] {
            assert_eq!(
                env[name]["valueFrom"]["secretKeyRef"],
                json!({"name": "shop-rabbitmq-credentials", "key": key}),
                "{name}"
            );
        }
        // POD_NAME is defined before the node name that expands it.
        let position = |name: &str| {
            rabbitmq
                .env
                .iter()
                .flatten()
                .position(|var| var.name == name)
        };
        assert!(position("POD_NAME") < position("RABBITMQ_NODENAME"));
        // Writable: the data volume (HOME, the database, the Erlang cookie) and /tmp only.
        let mounts = serde_json::to_value(rabbitmq.volume_mounts.as_ref().unwrap()).unwrap();
        assert_eq!(
            mounts,
            json!([
                {"name": "data", "mountPath": "/var/lib/rabbitmq"},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "config", "mountPath": "/etc/rabbitmq"},
                {"name": "definitions", "mountPath": "/etc/rabbitmq-definitions"},
            ])
        );

        let files = config_map(&children, "shop-rabbitmq-config");
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["enabled_plugins", "rabbitmq.conf"]
        );
        assert_eq!(
            files["enabled_plugins"],
            "[rabbitmq_management,rabbitmq_prometheus].\n"
        );
        let config: BTreeMap<&str, &str> = files["rabbitmq.conf"]
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split_once(" = ").unwrap())
            .collect();
        assert_eq!(
            config,
            BTreeMap::from([
                (
                    "load_definitions",
                    "/etc/rabbitmq-definitions/definitions.json"
                ),
                ("cluster_formation.peer_discovery_backend", "classic_config"),
                (
                    "cluster_formation.classic_config.nodes.1",
                    "rabbit@shop-rabbitmq-0.shop-rabbitmq-headless.store.svc"
                ),
                (
                    "cluster_formation.classic_config.nodes.2",
                    "rabbit@shop-rabbitmq-1.shop-rabbitmq-headless.store.svc"
                ),
                (
                    "cluster_formation.classic_config.nodes.3",
                    "rabbit@shop-rabbitmq-2.shop-rabbitmq-headless.store.svc"
                ),
                ("cluster_partition_handling", "pause_minority"),
                // 60 % of the default 1Gi limit.
                ("vm_memory_high_watermark.absolute", "644245080"),
                ("loopback_users.guest", "false"),
                ("listeners.tcp.default", "5672"),
                ("management.tcp.port", "15672"),
                ("log.console", "true"),
                ("log.console.level", "info"),
                // on/off, not a boolean: 3.10 refuses `false` and does not boot.
                ("log.console.use_colors", "off"),
                ("log.file", "false"),
            ])
        );
        // One line per key: RabbitMQ's cuttlefish takes the last, which would hide a mistake.
        assert_eq!(
            config.len(),
            files["rabbitmq.conf"]
                .lines()
                .filter(|l| !l.starts_with('#'))
                .count()
        );
        // The node names are the ones the workloads connect to.
        let gateway = env_of(deployment(&children, "shop-gateway"));
        let urls = gateway[env::RABBITMQ_URLS]["value"].as_str().unwrap();
        for index in 0..3 {
            assert!(urls.contains(&format!(
                "amqp://shop-rabbitmq-{index}.shop-rabbitmq-headless.store.svc:5672/"
            )));
        }

        let small = build_default(
            &pipeline(
                json!({"rabbitmq": {"managed": {"resources": {"limits": {"memory": "512Mi"}}}}}),
            ),
            &secrets(),
            "0.1.0",
        )
        .unwrap();
        let conf = &config_map(&small, "shop-rabbitmq-config")["rabbitmq.conf"];
        assert!(
            conf.contains("\nvm_memory_high_watermark.absolute = 322122540\n"),
            "{conf}"
        );
        assert!(conf.contains("\ncluster_formation.classic_config.nodes.1 = "));
        assert!(!conf.contains("nodes.2"));
    }

    #[test]
    fn every_node_gets_the_cookie_from_the_secret_and_nothing_else_does() {
        let children = build_default(
            &pipeline(json!({"rabbitmq": {"managed": {"replicas": 3}}})),
            &secrets(),
            "0.1.0",
        )
        .unwrap();
        let secret = children
            .secrets
            .iter()
            .find(|secret| secret.metadata.name.as_deref() == Some("shop-rabbitmq-credentials"))
            .unwrap();
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data["erlang-cookie"].0, b"rabbitcookie");
        let pod = pod_of(&children, "shop-rabbitmq");
        let init = pod.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        let cookie = &init[0];
        assert_eq!(cookie.name, "erlang-cookie");
        assert_eq!(
            cookie.image, pod.containers[0].image,
            "the node's own image"
        );
        let env = env_of_container(cookie);
        assert_eq!(
            env["HOME"]["value"], "/var/lib/rabbitmq",
            "where the node reads it"
        );
        assert_eq!(env["COOKIE_FILE"]["value"], "/etc/rabbitmq-cookie/cookie");
        let mounts: Vec<(&str, &str)> = cookie
            .volume_mounts
            .iter()
            .flatten()
            .map(|mount| (mount.name.as_str(), mount.mount_path.as_str()))
            .collect();
        assert_eq!(
            mounts,
            [
                ("data", "/var/lib/rabbitmq"),
                ("erlang-cookie", "/etc/rabbitmq-cookie")
            ]
        );
        // The volume holds the cookie alone, readable by the pod's group.
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|volume| volume.name == "erlang-cookie")
            .unwrap();
        assert_eq!(
            serde_json::to_value(volume.secret.as_ref().unwrap()).unwrap(),
            json!({
                "secretName": "shop-rabbitmq-credentials",
                "items": [{"key": "erlang-cookie", "path": "cookie"}],
                "defaultMode": 0o440,
            })
        );
        // The client Service (ready nodes only) carries the management API, which the
        // operator reads.
        let service = children
            .services
            .iter()
            .find(|service| service.metadata.name.as_deref() == Some("shop-rabbitmq"))
            .unwrap();
        let ports: Vec<(Option<&str>, i32)> = service
            .spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|port| (port.name.as_deref(), port.port))
            .collect();
        assert_eq!(ports, [(Some("amqp"), 5672), (Some("management"), 15672)]);
        // The node itself does not mount the Secret, and no workload reads the cookie.
        assert!(
            pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .all(|mount| mount.name != "erlang-cookie")
        );
        for deployment in &children.deployments {
            let text = serde_json::to_string(deployment).unwrap();
            assert!(
                !text.contains("erlang-cookie"),
                "{:?}",
                deployment.metadata.name
            );
        }
    }

    fn grow_job(children: &crate::controller::build::Children) -> Option<&Job> {
        children.jobs.iter().find(|job| {
            job.metadata
                .name
                .as_deref()
                .is_some_and(|name| name.contains("-rabbitmq-grow-"))
        })
    }

    #[test]
    fn a_cluster_gets_a_job_that_grows_every_queue_to_every_node() {
        let build_with = |name: &str, replicas: i32| {
            let mut pipeline = pipeline(json!({"rabbitmq": {"managed": {"replicas": replicas}}}));
            pipeline.metadata.name = Some(name.to_owned());
            build_default(&pipeline, &secrets(), "0.1.0").unwrap()
        };
        // One node is a whole cluster: no Job.
        assert!(grow_job(&build_with("shop", 1)).is_none());
        let three = build_with("shop", 3);
        let job = grow_job(&three).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        // A long host name of its own in the nodes' domain, for the CLI's long node name.
        assert_eq!(pod.hostname.as_deref(), Some("grow"));
        assert_eq!(pod.subdomain.as_deref(), Some("shop-rabbitmq-headless"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let grow = &pod.containers[0];
        assert_eq!(
            grow.command.as_deref().unwrap(),
            ["sh", "-c", super::RABBITMQ_GROW_SCRIPT]
        );
        let env = env_of_container(grow);
        assert_eq!(
            env["NODES"]["value"],
            "rabbit@shop-rabbitmq-0.shop-rabbitmq-headless.store.svc \
             rabbit@shop-rabbitmq-1.shop-rabbitmq-headless.store.svc \
             rabbit@shop-rabbitmq-2.shop-rabbitmq-headless.store.svc"
        );
        assert_eq!(
            env["QUEUES"]["value"],
            "orders.queue orders.queue.dead-letter notifier.queue notifier.queue.dead-letter"
        );
        assert_eq!(env["HOME"]["value"], "/tmp");
        let init = pod.init_containers.as_ref().unwrap();
        assert_eq!(env_of_container(&init[0])["HOME"]["value"], "/tmp");
        // Its pod is not taken for a node: another component, the pipeline's instance.
        let labels = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        let labels = labels.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/component"], "rabbitmq-grow");
        assert_eq!(labels["app.kubernetes.io/instance"], "shop");
        // The same spec, the same Job; more nodes, a new one (which grows onto them).
        assert_eq!(grow_job(&build_with("shop", 3)), Some(job));
        assert_ne!(
            grow_job(&build_with("shop", 5)).unwrap().metadata.name,
            job.metadata.name
        );
        // The longest pipeline name still makes a valid Job name.
        let long = build_with(&"a".repeat(40), 3);
        assert!(
            grow_job(&long)
                .unwrap()
                .metadata
                .name
                .as_ref()
                .unwrap()
                .len()
                <= 63
        );
    }
}
