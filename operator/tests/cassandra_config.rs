//! The managed Cassandra's configuration init container: [`CASSANDRA_CONFIG_SCRIPT`], exactly as
//! the pod runs it, with bash and this machine's `cp`, `awk` and `grep` (Debian's, as in the
//! image, whose `awk` is mawk), on directories laid out like the image's `/etc/cassandra`.
//!
//! It must copy every file, leave `authenticator`, `authorizer` and `role_manager` set to password
//! login and permissions exactly once each, whatever form they had, change nothing else, and write
//! the same result when it runs again (a restarted pod).
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

/// What the script sets.
const SETTINGS: [(&str, &str); 3] = [
    ("authenticator", "PasswordAuthenticator"),
    ("authorizer", "CassandraAuthorizer"),
    ("role_manager", "CassandraRoleManager"),
];

/// Cassandra 5.0's form: the authenticator as a `class_name` block (with a space before the
/// colon, and a commented-out alternative below it), the authorizer and role manager on one line,
/// and a neighbouring block whose children are all comments.
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
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: localhost
rpc_address: localhost
endpoint_snitch: SimpleSnitch
client_encryption_options:
  enabled: false
  keystore: conf/.keystore
  keystore_password: cassandra
  require_client_auth: false
storage_compatibility_mode: CASSANDRA_4
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

/// Runs the script as the init container does, with only what the pod's environment has.
fn run_script(image_config: &Path, config: &Path) -> Output {
    Command::new("bash")
        .args(["-c", CASSANDRA_CONFIG_SCRIPT])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("IMAGE_CONFIG_DIR", image_config)
        .env("CONFIG_DIR", config)
        .output()
        .expect("bash runs")
}

fn configure(image_config: &Path, config: &Path) {
    let output = run_script(image_config, config);
    print!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "the script failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
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

/// The three settings, once each, as the only change.
fn assert_configured(original: &str, configured: &str) {
    let before = parse(original);
    let after = parse(configured);
    for (key, value) in SETTINGS {
        assert_eq!(after.get(key), Some(&Value::from(value)), "{key}");
        let lines = configured
            .lines()
            .filter(|line| line.starts_with(key) && line[key.len()..].trim_start().starts_with(':'))
            .collect::<Vec<_>>();
        assert_eq!(lines, [format!("{key}: {value}")], "{key}");
    }
    let is_setting = |key: &Value| SETTINGS.iter().any(|(name, _)| key.as_str() == Some(name));
    for (key, value) in &before {
        if !is_setting(key) {
            assert_eq!(after.get(key), Some(value), "{key:?} changed");
        }
    }
    for key in after.keys() {
        assert!(
            is_setting(key) || before.contains_key(key),
            "{key:?} appeared"
        );
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
fn the_image_configuration_is_copied_whole_with_password_login_turned_on() {
    let scratch = Scratch::new();
    let image = image_config_dir(&scratch, CASSANDRA_5_0_SHAPE);
    let shipped = files(&image);
    let config = scratch.dir("config");
    configure(&image, &config);

    assert_eq!(files(&image), shipped, "the image's files were changed");
    let mut written = files(&config);
    let yaml = String::from_utf8(written.remove(Path::new("cassandra.yaml")).unwrap()).unwrap();
    assert_configured(CASSANDRA_5_0_SHAPE, &yaml);
    let mut others = shipped.clone();
    others.remove(Path::new("cassandra.yaml"));
    assert_eq!(written, others, "every other file, as the image has it");
    // The entrypoint rewrites the file in place, as the pod's user.
    let permissions = fs::metadata(config.join("cassandra.yaml"))
        .unwrap()
        .permissions();
    assert!(!permissions.readonly());

    // A restart: the entrypoint has edited the copy since; the script starts from the image again
    // and writes the same.
    let first = files(&config);
    fs::write(
        config.join("cassandra.yaml"),
        yaml.replace(
            "cluster_name: 'Test Cluster'",
            "cluster_name: shop-cassandra",
        ),
    )
    .unwrap();
    configure(&image, &config);
    assert_eq!(files(&config), first, "a second run wrote something else");

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
fn every_form_of_the_three_keys_ends_as_one_line_each() {
    for (name, yaml) in [
        ("5.0", CASSANDRA_5_0_SHAPE),
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
        assert_configured(yaml, &configured);
    }
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
    for (key, value) in SETTINGS {
        assert_eq!(after.get(key), Some(&Value::from(value)), "{key}");
    }
    let keys: Vec<_> = after.keys().filter_map(Value::as_str).collect();
    assert_eq!(
        keys,
        [
            "cluster_name",
            "authenticator",
            "authorizer",
            "num_tokens",
            "endpoint_snitch",
            "role_manager"
        ]
    );
    assert_eq!(after.get("num_tokens"), Some(&Value::from(4)));
    assert_eq!(
        after.get("endpoint_snitch"),
        Some(&Value::from("SimpleSnitch"))
    );
    assert!(configured.contains("\n# the end\n"));
}

#[test]
fn a_directory_without_cassandra_yaml_is_refused() {
    let scratch = Scratch::new();
    let image = scratch.dir("image");
    fs::write(image.join("logback.xml"), "<configuration/>\n").unwrap();
    let config = scratch.dir("config");
    let output = run_script(&image, &config);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("cassandra.yaml does not exist"),
        "{message}"
    );
    assert!(files(&config).is_empty(), "nothing is written");

    // Without its parameters it names the one missing.
    let output = Command::new("bash")
        .args(["-c", CASSANDRA_CONFIG_SCRIPT])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("IMAGE_CONFIG_DIR", &image)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("CONFIG_DIR must name"));
}
