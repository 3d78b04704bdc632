//! The managed Cassandra's configuration init container: [`CASSANDRA_CONFIG_SCRIPT`], exactly as
//! the pod runs it, with bash and this machine's `cp`, `awk` and `grep` (Debian's, as in the
//! image, whose `awk` is mawk), on directories laid out like the image's `/etc/cassandra`.
//!
//! It must copy every file; leave the pod's address, the seeds, the cluster name, the snitch,
//! password login and permissions set exactly once each, whatever form they had (the official
//! image's file, a stand-in's minimal one, keys missing, repeated or in blocks); change nothing
//! else; and write this run's result when it runs again (a restarted pod, maybe with a new
//! address).
//!
//! The samples are hand-written in the shapes Cassandra's own `cassandra.yaml` files have: Maven
//! Central serves no Cassandra tarball (`org.apache.cassandra:apache-cassandra`, classifier `bin`,
//! type `tar.gz`, is missing for 5.0.2 and 5.0.9) and the `cassandra-all` jar carries no
//! `cassandra.yaml`, so there is no real file to fetch here. Needs no server.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use order_pipeline_operator::controller::build::CASSANDRA_CONFIG_SCRIPT;
use serde_yaml::{Mapping, Value};

/// The pod's parameters, as the StatefulSet passes them.
const POD_IP: &str = "10.244.0.17";
const SEEDS: &str = "shop-cassandra-0.shop-cassandra-headless.store.svc";
const CLUSTER_NAME: &str = "shop-cassandra";

/// What the script sets on one line each: key, value as YAML reads it, the line.
fn line_settings(pod_ip: &str) -> Vec<(&'static str, String, String)> {
    let setting = |key: &'static str, value: &str, line: String| (key, value.to_owned(), line);
    vec![
        setting(
            "cluster_name",
            CLUSTER_NAME,
            format!("cluster_name: '{CLUSTER_NAME}'"),
        ),
        setting(
            "endpoint_snitch",
            "GossipingPropertyFileSnitch",
            "endpoint_snitch: GossipingPropertyFileSnitch".to_owned(),
        ),
        setting(
            "listen_address",
            pod_ip,
            format!("listen_address: {pod_ip}"),
        ),
        setting(
            "broadcast_address",
            pod_ip,
            format!("broadcast_address: {pod_ip}"),
        ),
        setting("rpc_address", "0.0.0.0", "rpc_address: 0.0.0.0".to_owned()),
        setting(
            "broadcast_rpc_address",
            pod_ip,
            format!("broadcast_rpc_address: {pod_ip}"),
        ),
        setting(
            "authenticator",
            "PasswordAuthenticator",
            "authenticator: PasswordAuthenticator".to_owned(),
        ),
        setting(
            "authorizer",
            "CassandraAuthorizer",
            "authorizer: CassandraAuthorizer".to_owned(),
        ),
        setting(
            "role_manager",
            "CassandraRoleManager",
            "role_manager: CassandraRoleManager".to_owned(),
        ),
    ]
}

/// The seed provider the script writes, as YAML reads it.
fn seed_provider() -> Value {
    serde_yaml::from_str(&format!(
        "- class_name: org.apache.cassandra.locator.SimpleSeedProvider\n  parameters:\n    - seeds: \"{SEEDS}\"\n"
    ))
    .unwrap()
}

/// Keys the script removes: Cassandra refuses an interface next to an address.
const REMOVED: [&str; 2] = ["listen_interface", "rpc_interface"];

/// Every key the script sets.
fn set_keys() -> Vec<&'static str> {
    let mut keys: Vec<&str> = line_settings(POD_IP).iter().map(|s| s.0).collect();
    keys.push("seed_provider");
    keys
}

/// Cassandra 5.0's form: the authenticator as a `class_name` block (with a space before the
/// colon, and a commented-out alternative below it), the authorizer and role manager on one line,
/// a neighbouring block whose children are all comments, the seed provider with its comments,
/// the addresses on loopback and the others commented out.
const CASSANDRA_5_0_SHAPE: &str = r#"
# Hand-written sample in the shape of Cassandra 5.0's cassandra.yaml.
cluster_name: 'Test Cluster'
num_tokens: 16
allocate_tokens_for_local_replication_factor: 3
hinted_handoff_enabled: true
max_hint_window: 3h
batchlog_replay_throttle: 1024KiB

# Who may log in.
authenticator:
  class_name : org.apache.cassandra.auth.AllowAllAuthenticator
# An alternative, commented out in the same block form:
#  class_name : org.apache.cassandra.auth.MutualTlsAuthenticator
#  parameters :
#    validator_class_name: org.apache.cassandra.auth.SpiffeCertificateValidator

# What they may do.
authorizer: AllowAllAuthorizer

# Roles and their memberships.
role_manager: CassandraRoleManager

network_authorizer: AllowAllNetworkAuthorizer

cidr_authorizer:
  class_name: AllowAllCIDRAuthorizer
  # parameters:
    # cidr_checks_for_superusers: true

    # cidr_authorizer_mode: MONITOR

roles_validity: 2000ms
permissions_validity: 2000ms
credentials_validity: 2000ms
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
# data_file_directories:
#     - /var/lib/cassandra/data

# any class that implements the SeedProvider interface and has a
# constructor that takes a Map<String, String> of parameters will do.
seed_provider:
  # Addresses of hosts that are deemed contact points.
  # Cassandra nodes use this list of hosts to find each other and learn
  # the topology of the ring.  You must change this if you are running
  # multiple nodes!
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      # seeds is actually a comma-delimited list of addresses.
      # Ex: "<ip1>,<ip2>,<ip3>"
      - seeds: "127.0.0.1:7000"

# Address or interface to bind to and tell other Cassandra nodes to connect to.
listen_address: localhost

# Set listen_address OR listen_interface, not both. Interfaces must correspond
# to a single address, IP aliasing is not supported.
# listen_interface: eth0
# listen_interface_prefer_ipv6: false

# Address to broadcast to other Cassandra nodes
# Leaving this blank will set it to the same value as listen_address
# broadcast_address: 1.2.3.4

start_native_transport: true
native_transport_port: 9042
rpc_address: localhost
# rpc_interface: eth1
# rpc_interface_prefer_ipv6: false

# broadcast_rpc_address: 1.2.3.4
endpoint_snitch: SimpleSnitch
client_encryption_options:
  enabled: false
  keystore: conf/.keystore
  keystore_password: cassandra
  require_client_auth: false
storage_compatibility_mode: CASSANDRA_4
"#;

/// A stand-in's minimal file (the shape of `xtask/src/env/cassandra/cassandra.yaml`): no
/// comments inside blocks, the seed provider's list at the margin, interfaces instead of
/// addresses, login already on, a data directory list below it.
const MINIMAL_SHAPE: &str = r#"cluster_name: order-pipeline
num_tokens: 1
seed_provider:
- class_name: org.apache.cassandra.locator.SimpleSeedProvider
  parameters:
  - seeds: "127.0.0.1:7000"
listen_interface: lo
rpc_interface: lo
native_transport_port: 9042
endpoint_snitch: SimpleSnitch
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
data_file_directories:
  - /var/lib/cassandra/data
commitlog_directory: /var/lib/cassandra/commitlog
"#;

/// The form of Cassandra's newer files: all three as blocks, one with `parameters` whose only
/// children are comments (a null) and blank lines between them, one with nested parameters.
const BLOCK_SHAPE: &str = r#"cluster_name: blocks
authenticator:
  class_name: AllowAllAuthenticator
  parameters:
    validator_class_name: org.example.Validator
    trusted_peer_identities: "a,b"

# Permissions.
authorizer:
  class_name: AllowAllAuthorizer

role_manager:
  class_name: CassandraRoleManager
  parameters:
    # invalid_role_disconnect_task_period: 4h

    # invalid_role_disconnect_task_max_jitter: 1h

network_authorizer:
  class_name: AllowAllNetworkAuthorizer
roles_validity: 2000ms
"#;

/// The one-line form (Cassandra 4, and this project's own test environment), with a trailing
/// comment and the file's last key among the three.
const ONE_LINE_SHAPE: &str = "cluster_name: one-line
authenticator: AllowAllAuthenticator   # nobody logs in
internode_authenticator: org.apache.cassandra.auth.AllowAllInternodeAuthenticator
authorizer: AllowAllAuthorizer
network_authorizer: AllowAllNetworkAuthorizer
role_manager: CassandraRoleManager
";

/// A directory that is removed when the test ends, passed or not.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(testenv::unique("cassandra-config"));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A new empty directory inside.
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The script as the init container runs it, with only what the pod's environment has.
fn script(image_config: &Path, config: &Path) -> Command {
    let mut command = Command::new("bash");
    command
        .args(["-c", CASSANDRA_CONFIG_SCRIPT])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("IMAGE_CONFIG_DIR", image_config)
        .env("CONFIG_DIR", config)
        .env("POD_IP", POD_IP)
        .env("SEEDS", SEEDS)
        .env("CLUSTER_NAME", CLUSTER_NAME);
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("bash runs")
}

fn succeed(command: Command) {
    let output = run(command);
    print!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "the script failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn configure(image_config: &Path, config: &Path) {
    succeed(script(image_config, config));
}

/// Every file below `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_path_buf();
                found.insert(relative, fs::read(&path).unwrap());
            }
        }
    }
    found
}

/// Parses as Cassandra's loader does, into one mapping; serde_yaml refuses a repeated key.
fn parse(text: &str) -> Mapping {
    serde_yaml::from_str(text).unwrap_or_else(|error| panic!("not valid YAML: {error}\n{text}"))
}

/// Lines that begin with `#`: comments at the top level, which the script keeps.
fn top_level_comments(text: &str) -> Vec<&str> {
    text.lines().filter(|line| line.starts_with('#')).collect()
}

/// The lines that set `key` at the top level.
fn key_lines<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| line.starts_with(key) && line[key.len()..].trim_start().starts_with(':'))
        .collect()
}

/// Every setting once, with this pod's address, the removed keys gone, as the only change.
fn assert_configured(original: &str, configured: &str, pod_ip: &str) {
    let before = parse(original);
    let after = parse(configured);
    for (key, value, line) in line_settings(pod_ip) {
        assert_eq!(after.get(key), Some(&Value::from(value)), "{key}");
        assert_eq!(key_lines(configured, key), [line], "{key}");
    }
    assert_eq!(after.get("seed_provider"), Some(&seed_provider()));
    assert_eq!(key_lines(configured, "seed_provider"), ["seed_provider:"]);
    assert!(
        configured
            .lines()
            .any(|line| line == format!("      - seeds: \"{SEEDS}\"")),
        "the seeds in the form Cassandra's own file has them:\n{configured}"
    );
    for key in REMOVED {
        assert!(after.get(key).is_none(), "{key} is still set");
    }
    let set_keys = set_keys();
    let is_set = |key: &Value| set_keys.iter().any(|name| key.as_str() == Some(name));
    let is_removed = |key: &Value| REMOVED.iter().any(|name| key.as_str() == Some(name));
    for (key, value) in &before {
        if !is_set(key) && !is_removed(key) {
            assert_eq!(after.get(key), Some(value), "{key:?} changed");
        }
    }
    for key in after.keys() {
        assert!(is_set(key) || before.contains_key(key), "{key:?} appeared");
    }
    assert_eq!(
        top_level_comments(configured),
        top_level_comments(original),
        "the comments changed"
    );
}

/// A configuration directory like the image's: `cassandra.yaml` and the files next to it that
/// Cassandra and its scripts read, one in a subdirectory.
fn image_config_dir(scratch: &Scratch, yaml: &str) -> PathBuf {
    let dir = scratch.dir("image");
    fs::write(dir.join("cassandra.yaml"), yaml).unwrap();
    fs::write(
        dir.join("cassandra-env.sh"),
        "# sourced by bin/cassandra\nMAX_HEAP_SIZE=\"${MAX_HEAP_SIZE:-}\"\n",
    )
    .unwrap();
    fs::write(dir.join("jvm17-server.options"), "-XX:+UseG1GC\n").unwrap();
    fs::write(
        dir.join("cassandra-rackdc.properties"),
        "dc=dc1\nrack=rack1\n",
    )
    .unwrap();
    fs::write(dir.join("logback.xml"), "<configuration/>\n").unwrap();
    fs::create_dir_all(dir.join("triggers")).unwrap();
    fs::write(dir.join("triggers/README.txt"), "Place triggers here.\n").unwrap();
    dir
}

#[test]
fn the_parser_these_checks_rely_on_refuses_a_repeated_key() {
    assert!(serde_yaml::from_str::<Mapping>("authenticator: A\nauthenticator: B\n").is_err());
}

#[test]
fn the_image_configuration_is_copied_whole_with_this_pods_settings() {
    let scratch = Scratch::new();
    let image = image_config_dir(&scratch, CASSANDRA_5_0_SHAPE);
    let shipped = files(&image);
    let config = scratch.dir("config");
    configure(&image, &config);

    assert_eq!(files(&image), shipped, "the image's files were changed");
    let mut written = files(&config);
    let yaml = String::from_utf8(written.remove(Path::new("cassandra.yaml")).unwrap()).unwrap();
    assert_configured(CASSANDRA_5_0_SHAPE, &yaml, POD_IP);
    let mut others = shipped.clone();
    others.remove(Path::new("cassandra.yaml"));
    assert_eq!(written, others, "every other file, as the image has it");
    // Cassandra's own tools may rewrite the file, as the pod's user.
    let permissions = fs::metadata(config.join("cassandra.yaml"))
        .unwrap()
        .permissions();
    assert!(!permissions.readonly());
    // The commented-out alternatives stay commented out.
    for comment in [
        "# listen_interface: eth0",
        "# broadcast_address: 1.2.3.4",
        "# rpc_interface: eth1",
    ] {
        assert!(yaml.lines().any(|line| line == comment), "{comment}");
    }

    // A restart on another node: a new address, and a copy that holds the last start's
    // settings. The script starts from the image again and writes the new address only.
    let first = files(&config);
    let mut restart = script(&image, &config);
    restart.env("POD_IP", "10.244.1.5");
    succeed(restart);
    let restarted = fs::read_to_string(config.join("cassandra.yaml")).unwrap();
    assert_configured(CASSANDRA_5_0_SHAPE, &restarted, "10.244.1.5");
    assert_eq!(restarted, yaml.replace(POD_IP, "10.244.1.5"));
    configure(&image, &config);
    assert_eq!(
        files(&config),
        first,
        "a run with the first address wrote something else"
    );

    // The result is a fixed point: configuring an already configured file changes nothing.
    let configured = scratch.dir("configured-image");
    for (path, content) in &first {
        fs::create_dir_all(configured.join(path).parent().unwrap()).unwrap();
        fs::write(configured.join(path), content).unwrap();
    }
    let again = scratch.dir("again");
    configure(&configured, &again);
    assert_eq!(files(&again), first);
}

#[test]
fn every_form_of_every_key_ends_as_one_setting_each() {
    for (name, yaml) in [
        ("5.0", CASSANDRA_5_0_SHAPE),
        ("minimal", MINIMAL_SHAPE),
        ("blocks", BLOCK_SHAPE),
        ("one line", ONE_LINE_SHAPE),
    ] {
        println!("{name}:");
        let scratch = Scratch::new();
        let image = scratch.dir("image");
        fs::write(image.join("cassandra.yaml"), yaml).unwrap();
        let config = scratch.dir("config");
        configure(&image, &config);
        let configured = fs::read_to_string(config.join("cassandra.yaml")).unwrap();
        assert_configured(yaml, &configured, POD_IP);
    }
}

#[test]
fn the_minimal_file_keeps_its_own_order_and_the_lists_after_the_seeds() {
    let scratch = Scratch::new();
    let image = scratch.dir("image");
    fs::write(image.join("cassandra.yaml"), MINIMAL_SHAPE).unwrap();
    let config = scratch.dir("config");
    configure(&image, &config);
    let configured = fs::read_to_string(config.join("cassandra.yaml")).unwrap();
    let after = parse(&configured);
    let keys: Vec<_> = after.keys().filter_map(Value::as_str).collect();
    assert_eq!(
        keys,
        [
            "cluster_name",
            "num_tokens",
            "seed_provider",
            "native_transport_port",
            "endpoint_snitch",
            "authenticator",
            "authorizer",
            "role_manager",
            "data_file_directories",
            "commitlog_directory",
            "listen_address",
            "broadcast_address",
            "rpc_address",
            "broadcast_rpc_address",
        ]
    );
    assert_eq!(
        after.get("data_file_directories"),
        Some(&serde_yaml::from_str::<Value>("[/var/lib/cassandra/data]").unwrap())
    );
}

#[test]
fn a_repeated_a_missing_and_a_flow_style_key_still_end_as_one_line_each() {
    // Not a file Cassandra ships, but one a custom image might: no role_manager, the authorizer
    // twice (the second in flow style over two lines), a space before a colon, no final newline.
    let yaml = "cluster_name: odd\n\
                authenticator : AllowAllAuthenticator\n\
                authorizer: AllowAllAuthorizer\n\
                num_tokens: 4\n\
                authorizer: {class_name: AllowAllAuthorizer,\n  parameters: {}}\n\
                # the end\n\
                endpoint_snitch: SimpleSnitch";
    let scratch = Scratch::new();
    let image = scratch.dir("image");
    fs::write(image.join("cassandra.yaml"), yaml).unwrap();
    let config = scratch.dir("config");
    configure(&image, &config);
    let configured = fs::read_to_string(config.join("cassandra.yaml")).unwrap();
    let after = parse(&configured);
    for (key, value, _) in line_settings(POD_IP) {
        assert_eq!(after.get(key), Some(&Value::from(value)), "{key}");
    }
    let keys: Vec<_> = after.keys().filter_map(Value::as_str).collect();
    // In place where the file had them; the missing ones appended in the script's order.
    assert_eq!(
        keys,
        [
            "cluster_name",
            "authenticator",
            "authorizer",
            "num_tokens",
            "endpoint_snitch",
            "seed_provider",
            "listen_address",
            "broadcast_address",
            "rpc_address",
            "broadcast_rpc_address",
            "role_manager"
        ]
    );
    assert_eq!(after.get("num_tokens"), Some(&Value::from(4)));
    assert!(configured.contains("\n# the end\n"));
}

#[test]
fn an_ipv6_pod_address_is_written_as_cassandra_reads_it() {
    let scratch = Scratch::new();
    let image = image_config_dir(&scratch, CASSANDRA_5_0_SHAPE);
    let config = scratch.dir("config");
    let mut command = script(&image, &config);
    command.env("POD_IP", "fd00:10:244::17");
    succeed(command);
    let configured = fs::read_to_string(config.join("cassandra.yaml")).unwrap();
    assert_configured(CASSANDRA_5_0_SHAPE, &configured, "fd00:10:244::17");
}

#[test]
fn a_directory_without_cassandra_yaml_is_refused() {
    let scratch = Scratch::new();
    let image = scratch.dir("image");
    fs::write(image.join("logback.xml"), "<configuration/>\n").unwrap();
    let config = scratch.dir("config");
    let output = run(script(&image, &config));
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("cassandra.yaml does not exist"),
        "{message}"
    );
    assert!(files(&config).is_empty(), "nothing is written");
}

#[test]
fn a_missing_parameter_is_named_and_nothing_is_written() {
    let scratch = Scratch::new();
    let image = image_config_dir(&scratch, CASSANDRA_5_0_SHAPE);
    let config = scratch.dir("config");
    for (parameter, complaint) in [
        ("IMAGE_CONFIG_DIR", "IMAGE_CONFIG_DIR must name"),
        ("CONFIG_DIR", "CONFIG_DIR must name"),
        ("POD_IP", "POD_IP must be the address"),
        ("SEEDS", "SEEDS must list"),
        ("CLUSTER_NAME", "CLUSTER_NAME must name"),
    ] {
        let mut command = script(&image, &config);
        command.env_remove(parameter);
        let output = run(command);
        assert!(!output.status.success(), "{parameter}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains(complaint), "{parameter}: {message}");
    }
    assert!(files(&config).is_empty(), "nothing is written");
}

#[test]
fn values_that_would_need_quoting_in_yaml_are_refused() {
    let scratch = Scratch::new();
    let image = image_config_dir(&scratch, CASSANDRA_5_0_SHAPE);
    let config = scratch.dir("config");
    for (parameter, value, complaint) in [
        (
            "POD_IP",
            "10.0.0.1\nauthenticator: AllowAllAuthenticator",
            "is not an IP address",
        ),
        ("POD_IP", "localhost", "is not an IP address"),
        ("SEEDS", "a\", b", "is not a comma-separated list"),
        ("CLUSTER_NAME", "it's mine", "may only have"),
    ] {
        let mut command = script(&image, &config);
        command.env(parameter, value);
        let output = run(command);
        assert!(!output.status.success(), "{parameter}={value:?}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains(complaint), "{parameter}: {message}");
    }
    assert!(files(&config).is_empty(), "nothing is written");
}
