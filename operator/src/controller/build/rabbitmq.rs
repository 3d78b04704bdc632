//! A managed RabbitMQ: its credentials Secret, its configuration ConfigMap (peers, memory
//! watermark, logging) and what its pod runs, without the image's entrypoint.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume};
use pipeline_api::RABBITMQ_MINIMUM_MEMORY_LIMIT;

use super::meta::{Context, env_field, env_secret, env_value, mount};
use super::statefulset::{DependencyPod, Managed};
use super::{BuildError, Children, Dependency, Secrets, names};

/// Where RabbitMQ keeps its data: the claim's mount.
const RABBITMQ_DATA_DIR: &str = "/var/lib/rabbitmq";
/// Where the RabbitMQ configuration ConfigMap is mounted, read-only.
const RABBITMQ_CONFIG_DIR: &str = "/etc/rabbitmq";
/// The management API's port: the autoscaler reads queue depths from it.
pub(super) const MANAGEMENT_PORT: u16 = 15672;

/// RabbitMQ's memory high watermark, as a share of its memory limit in percent: publishers are
/// blocked above it, well before the kernel's OOM killer would stop the node at the limit.
const RABBITMQ_WATERMARK_PERCENT: u64 = 60;

/// The management API (the autoscaler reads queue depths from it) and Prometheus metrics.
const RABBITMQ_ENABLED_PLUGINS: &str = "[rabbitmq_management,rabbitmq_prometheus].\n";

/// Adds the credentials Secret and the configuration ConfigMap to `children`; returns the pod.
pub(super) fn pod(
    managed: &Managed,
    secrets: &Secrets,
    children: &mut Children,
) -> Result<DependencyPod, BuildError> {
    let context = managed.context;
    let component = Dependency::Rabbitmq.name();
    let password = secrets
        .rabbitmq_password
        .as_deref()
        .ok_or(BuildError::MissingSecret("rabbitmq"))?;
    let credentials = names::credentials_secret(context.name, Dependency::Rabbitmq);
    children.secrets.push(context.secret(
        &credentials,
        component,
        &[("username", "pipeline"), ("password", password)],
    ));
    let memory_limit = managed.memory_limit(
        RABBITMQ_MINIMUM_MEMORY_LIMIT,
        "its memory high watermark is 60% of it",
    )?;
    let config = names::rabbitmq_config(context.name);
    children.config_maps.push(ConfigMap {
        metadata: context.metadata(&config, component),
        data: Some(BTreeMap::from([
            (
                "rabbitmq.conf".to_owned(),
                rabbitmq_config(
                    context,
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
    let headless = names::headless_domain(context.name, Dependency::Rabbitmq, context.namespace);
    Ok(DependencyPod {
        ports: vec![
            ("amqp", Dependency::Rabbitmq.port()),
            ("management", MANAGEMENT_PORT),
            ("epmd", 4369),
            ("dist", 25672),
        ],
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
        mounts: vec![mount("config", RABBITMQ_CONFIG_DIR)],
        volumes: vec![Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config,
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }],
        init_containers: Vec::new(),
    })
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
fn rabbitmq_config(context: &Context, replicas: i32, watermark: u64) -> String {
    let nodes: String = (0..replicas)
        .map(|index| {
            format!(
                "cluster_formation.classic_config.nodes.{} = rabbit@{}\n",
                index + 1,
                names::pod_host(context.name, Dependency::Rabbitmq, index, context.namespace)
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
         log.console = true\n\
         log.console.level = info\n\
         log.console.use_colors = off\n\
         log.file = false\n"
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
                "@shop-rabbitmq-{index}.shop-rabbitmq-headless.store.svc:5672/"
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
}
