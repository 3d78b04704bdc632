//! The kind path, checked where kind cannot run.
//!
//! `e2e/kind-up.sh` needs Docker, which the project's CI machine does not have. What can be
//! checked without it is checked here, with the real programs rather than assumptions about them:
//!
//! - `kind-config.yaml` goes through kind's own loader, defaults and validation (the steps of
//!   `kind create cluster --config` before it touches Docker), by `e2e/kind-check`, a small Go
//!   program built against the kind version its go.mod pins; deliberately broken variants of the
//!   file fail with kind's own message;
//! - the `kind` binary at that version builds: `kind-up.sh` uses this build when no kind of that
//!   version is on PATH, so users run the kind the checker checked against;
//! - the pipeline kind-up.sh applies (`e2e/kind-pipeline.yaml`) and the sample pass a server-side
//!   dry run against the project environment's kube-apiserver, with the CRD of `crds/`, and the
//!   kind pipeline's node ports are the ones kind-config.yaml maps to the host.
//!
//! The Go programs are built from the Go module proxy as `cargo xtask env up` builds its tools:
//! once, into `bin/<name>-<key>/` under `~/.cache/order-pipeline` (or `$ORDER_PIPELINE_HOME`),
//! with a build log under `go/build/` that a failure prints the tail and path of. The checker's
//! key includes a hash of its source, so an edit rebuilds it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;

/// kind-up.sh's cluster; kind-config.yaml names it too.
const CLUSTER_NAME: &str = "order-pipeline";
/// What the API server must find in both pipeline files.
const PIPELINE_NAME: &str = "shop";
/// The node image's Kubernetes minor: the release the project's own control plane runs.
const NODE_IMAGE_PREFIX: &str = "kindest/node:v1.34.";
/// The host ports of the seed README (gateway, dashboard) and the node ports kind maps them to.
const GATEWAY_PORTS: (u64, u64) = (8080, 30080);
const DASHBOARD_PORTS: (u64, u64) = (8081, 30081);
/// Written last into an installed directory, as xtask does: its presence means the build is whole.
const MARKER: &str = ".complete";
const FIELD_MANAGER: &str = "pipeline-e2e-tests";
const CRD_NAME: &str = "orderpipelines.orderpipeline.dev";

#[test]
fn kind_accepts_the_projects_cluster_config() {
    let config = repository_root().join("kind-config.yaml");
    let output = run_checker(&[config.as_os_str()]);
    assert!(
        output.status.success(),
        "kind rejects kind-config.yaml:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What a reader of the test output sees: kind's view of the file after its defaults.
    print!("{}", String::from_utf8_lossy(&output.stdout));

    let cluster = checked_cluster(&config);
    assert_eq!(cluster["kindVersion"], kind_version().as_str());
    assert_eq!(cluster["name"], CLUSTER_NAME);
    let nodes = cluster["nodes"].as_array().expect("nodes");
    let roles: Vec<&str> = nodes
        .iter()
        .map(|node| node["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
    for node in nodes {
        let image = node["image"].as_str().expect("image");
        assert!(
            image.starts_with(NODE_IMAGE_PREFIX) && image.contains("@sha256:"),
            "every node must run a {NODE_IMAGE_PREFIX}x image pinned by digest (kind only \
             guarantees the images of its release notes, by digest); found {image}"
        );
    }
    let mappings = host_port_mappings(&cluster);
    for (host, node_port) in [GATEWAY_PORTS, DASHBOARD_PORTS] {
        assert_eq!(
            mappings
                .get(&node_port)
                .map(|(address, port)| (address.as_str(), *port)),
            Some(("127.0.0.1", host)),
            "node port {node_port} must be mapped to 127.0.0.1:{host}; mappings: {mappings:?}"
        );
    }
}

/// A fault kind must catch, made by changing one thing in the project's own kind-config.yaml.
struct BrokenConfig {
    what: &'static str,
    replace: &'static str,
    with: &'static str,
    /// kind's message, as kind v0.33.0 words it.
    message: &'static str,
}

const BROKEN_CONFIGS: [BrokenConfig; 8] = [
    BrokenConfig {
        what: "unknown-node-field",
        replace: "    extraPortMappings:",
        with: "    extraPortMapping:",
        message: "field extraPortMapping not found in type v1alpha4.Node",
    },
    BrokenConfig {
        what: "unknown-cluster-field",
        replace: "name: order-pipeline\n",
        with: "name: order-pipeline\nnetworking:\n  podSubnets: 10.0.0.0/16\n",
        message: "field podSubnets not found in type v1alpha4.Networking",
    },
    BrokenConfig {
        what: "bad-role",
        replace: "  - role: worker\n",
        with: "  - role: master\n",
        message: r#"invalid configuration for node 1: "master" is not a valid node role"#,
    },
    BrokenConfig {
        what: "no-control-plane",
        replace: "  - role: control-plane\n",
        with: "  - role: worker\n",
        message: "must have at least one control-plane node",
    },
    BrokenConfig {
        what: "bad-protocol",
        replace: "protocol: TCP",
        with: "protocol: HTTP",
        message: r#"unable to decode config: Unknown PortMappingProtocol: "HTTP""#,
    },
    BrokenConfig {
        what: "host-port-twice",
        replace: "hostPort: 8081",
        with: "hostPort: 8080",
        message: "invalid portMapping: port mapping with same listen address, port and protocol \
                  already configured: 127.0.0.1:8080/TCP",
    },
    BrokenConfig {
        what: "host-port-out-of-range",
        replace: "hostPort: 8081",
        with: "hostPort: 80810",
        message: "invalid configuration for node 0: invalid hostPort: invalid port number: 80810",
    },
    BrokenConfig {
        what: "old-api-version",
        replace: "apiVersion: kind.x-k8s.io/v1alpha4",
        with: "apiVersion: kind.x-k8s.io/v1alpha3",
        message: "unknown apiVersion: kind.x-k8s.io/v1alpha3",
    },
];

#[test]
fn kind_rejects_broken_configs_with_its_own_message() {
    let original = read(&repository_root().join("kind-config.yaml"));
    let dir = TempDir::new("kind-config");
    let mut failures = Vec::new();
    for case in &BROKEN_CONFIGS {
        assert!(
            original.contains(case.replace),
            "{}: kind-config.yaml no longer contains {:?}; update the case",
            case.what,
            case.replace
        );
        let path = dir.path.join(format!("{}.yaml", case.what));
        fs::write(&path, original.replacen(case.replace, case.with, 1)).expect("write config");
        let output = run_checker(&[path.as_os_str()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("  {}: {}", case.what, stderr.trim());
        if output.status.code() != Some(1) || !stderr.contains(case.message) {
            failures.push(format!(
                "{}: expected exit status 1 and {:?}, got {} with stdout {:?} and stderr {:?}",
                case.what,
                case.message,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_kind_binary_is_the_checkers_version() {
    let output = Command::new(kind_binary())
        .arg("version")
        .output()
        .expect("run kind version");
    let text = String::from_utf8_lossy(&output.stdout);
    println!("  {}", text.trim());
    assert!(output.status.success(), "kind version failed: {output:?}");
    assert!(
        text.starts_with(&format!("kind {} ", kind_version())),
        "the cached kind is not the version e2e/kind-check/go.mod pins: {text}"
    );
}

/// Needs the Kubernetes control plane of `cargo xtask env up kube`.
#[test]
fn both_pipelines_pass_a_server_side_dry_run_and_match_the_kind_ports() {
    let env = testenv::Env::load();
    let kubectl = Kubectl {
        program: PathBuf::from(env.require("OP_KUBECTL")),
        kubeconfig: PathBuf::from(env.require("KUBECONFIG")),
    };
    let root = repository_root();
    // The CRD a kind user gets: the chart ships this file. Server-side and forced, so it is
    // idempotent beside the other tests that install the same CRD from the types.
    kubectl.run(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        &format!("--field-manager={FIELD_MANAGER}"),
        "-f",
        path_str(&root.join("crds/orderpipelines.yaml")),
    ]);
    kubectl.run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{CRD_NAME}"),
    ]);
    let namespace = Namespace::create(&kubectl, "kind-dry-run");

    let mut accepted = BTreeMap::new();
    for file in ["samples/orderpipeline.yaml", "e2e/kind-pipeline.yaml"] {
        let output = kubectl.output(&[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "--namespace",
            &namespace.name,
            "--output=json",
            "-f",
            path_str(&root.join(file)),
        ]);
        assert!(
            output.status.success(),
            "the API server refuses {file}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let object: Value = serde_json::from_slice(&output.stdout).expect("kubectl's JSON");
        assert_eq!(object["metadata"]["name"], PIPELINE_NAME, "{file}");
        println!("  ok  {file}: accepted (server-side dry run)");
        accepted.insert(file, object);
    }

    let sample = &accepted["samples/orderpipeline.yaml"]["spec"];
    let kind = &accepted["e2e/kind-pipeline.yaml"]["spec"];
    // The kind pipeline is the sample plus NodePort Services, nothing else: compare them with
    // the two services taken out, as the API server defaulted them.
    let mut kind_without_services = kind.clone();
    let mut sample_without_services = sample.clone();
    for component in ["gateway", "dashboard"] {
        assert_eq!(sample[component]["service"]["type"], "ClusterIP");
        for spec in [&mut kind_without_services, &mut sample_without_services] {
            spec[component]
                .as_object_mut()
                .expect("component")
                .remove("service");
        }
    }
    assert_eq!(
        kind_without_services, sample_without_services,
        "e2e/kind-pipeline.yaml must be samples/orderpipeline.yaml plus the two services"
    );

    let mappings = host_port_mappings(&checked_cluster(&root.join("kind-config.yaml")));
    for (component, (host, node_port)) in
        [("gateway", GATEWAY_PORTS), ("dashboard", DASHBOARD_PORTS)]
    {
        let service = &kind[component]["service"];
        assert_eq!(service["type"], "NodePort", "{component}: {service}");
        assert_eq!(service["nodePort"], node_port, "{component}: {service}");
        assert_eq!(
            mappings.get(&node_port).map(|(_, port)| *port),
            Some(host),
            "kind-config.yaml must map {component}'s node port {node_port} to host port {host}"
        );
    }
    println!(
        "  ok  node ports 30080 and 30081 are the ones kind-config.yaml maps to 8080 and 8081"
    );
}

// --- kind's verdict ------------------------------------------------------------------------------

/// Runs the checker; its exit status and output are the caller's to judge.
fn run_checker(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(checker())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kind-check")
}

/// kind's defaulted view of a config the test expects it to accept, as the checker's JSON.
fn checked_cluster(config: &Path) -> Value {
    let output = run_checker(&["-json".as_ref(), config.as_os_str()]);
    assert!(
        output.status.success(),
        "kind rejects {}: {}",
        config.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("kind-check's JSON")
}

/// Node port → (listen address, host port), over every node's mappings.
fn host_port_mappings(cluster: &Value) -> BTreeMap<u64, (String, u64)> {
    let mut mappings = BTreeMap::new();
    for node in cluster["nodes"].as_array().expect("nodes") {
        for mapping in node["extraPortMappings"].as_array().expect("mappings") {
            assert_eq!(mapping["protocol"], "TCP", "{mapping}");
            mappings.insert(
                mapping["containerPort"].as_u64().expect("containerPort"),
                (
                    mapping["listenAddress"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    mapping["hostPort"].as_u64().expect("hostPort"),
                ),
            );
        }
    }
    mappings
}

// --- building the Go programs ---------------------------------------------------------------------

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate is in the repository")
        .to_path_buf()
}

fn checker_source() -> PathBuf {
    repository_root().join("e2e/kind-check")
}

/// The kind version e2e/kind-check/go.mod requires: the one pin for the checker, the kind binary
/// and kind-up.sh.
fn kind_version() -> String {
    let go_mod = read(&checker_source().join("go.mod"));
    go_mod
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default().trim())
        .find_map(|line| {
            let mut words = line.trim_start_matches("require").split_whitespace();
            (words.next() == Some("sigs.k8s.io/kind")).then(|| words.next().map(str::to_owned))?
        })
        .expect("e2e/kind-check/go.mod requires sigs.k8s.io/kind")
}

/// `~/.cache/order-pipeline`, or `$ORDER_PIPELINE_HOME`, as xtask and testenv.
fn cache_home() -> PathBuf {
    if let Some(home) = std::env::var_os("ORDER_PIPELINE_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/order-pipeline")
}

/// The checker, built once per kind version and source.
fn checker() -> &'static Path {
    static CHECKER: OnceLock<PathBuf> = OnceLock::new();
    CHECKER.get_or_init(|| {
        let source = checker_source();
        let key = format!("{}-{:016x}", kind_version(), source_hash(&source));
        let dir = ensure_built("kind-check", &key, |go, staging, log| {
            run_logged(
                "go build kind-check",
                go_command(go, &source)
                    // go.mod and go.sum are committed: a missing entry fails the build instead of
                    // editing them.
                    .args(["build", "-mod=readonly", "-trimpath", "-buildvcs=false"])
                    .args(["-ldflags", "-s -w", "-o"])
                    .arg(staging.join("kind-check"))
                    .arg("."),
                log,
            );
        });
        dir.join("kind-check")
    })
}

/// The real kind binary, built once per version, where kind-up.sh looks for it.
fn kind_binary() -> &'static Path {
    static KIND: OnceLock<PathBuf> = OnceLock::new();
    KIND.get_or_init(|| {
        let version = kind_version();
        let dir = ensure_built("kind", &version, |go, staging, log| {
            let build_dir = log.parent().expect("log directory");
            run_logged(
                &format!("go install sigs.k8s.io/kind@{version}"),
                go_command(go, build_dir)
                    .env("GOBIN", staging)
                    .args(["install", "-trimpath", "-ldflags", "-s -w"])
                    .arg(format!("sigs.k8s.io/kind@{version}")),
                log,
            );
        });
        dir.join("kind")
    })
}

/// `bin/<name>-<key>/` under the cache home, built by `build(go, staging dir, log)` when it is
/// not complete yet. The build goes to a staging directory of this process, which only takes the
/// final name once it is whole, so an interrupted or concurrent build never leaves a half one.
fn ensure_built(name: &str, key: &str, build: impl FnOnce(&Path, &Path, &Path)) -> PathBuf {
    let home = cache_home();
    let install_dir = home.join("bin").join(format!("{name}-{key}"));
    if install_dir.join(MARKER).is_file() {
        return install_dir;
    }
    let started = Instant::now();
    println!(
        "  building {name} {key} (once; cached in {})",
        install_dir.display()
    );
    let go = find_go();
    let build_dir = home.join("go/build").join(format!("{name}-{key}"));
    let staging =
        install_dir.with_file_name(format!(".{name}-{key}.partial-{}", std::process::id()));
    for dir in [&build_dir, &staging] {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).unwrap_or_else(|error| panic!("create {}: {error}", dir.display()));
    }
    build(&go, &staging, &build_dir.join("build.log"));
    fs::write(staging.join(MARKER), format!("{name} {key}\n")).expect("write the marker");
    if fs::rename(&staging, &install_dir).is_err() {
        // Another process installed it first; theirs is as good.
        let _ = fs::remove_dir_all(&staging);
        assert!(
            install_dir.join(MARKER).is_file(),
            "failed to install {}",
            install_dir.display()
        );
    }
    println!(
        "  built {name} {key} in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    install_dir
}

/// Go from PATH, then where the go.dev tarball installs, as xtask looks for it.
fn find_go() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("go"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|go| go.is_file()))
        .expect(
            "go is not installed, and the kind config checker is built from the Go module proxy \
             with it; install Go 1.26 or newer from https://go.dev/dl/ into /usr/local/go",
        )
}

/// `GOWORK=off` keeps a go.work above the directory out of the build; cgo off as kind's own
/// release builds, for a static binary.
fn go_command(go: &Path, dir: &Path) -> Command {
    let mut command = Command::new(go);
    command
        .current_dir(dir)
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0");
    command
}

/// Runs a build with its output in `log`, printing the command first; a failure panics with the
/// log's tail and path.
fn run_logged(what: &str, command: &mut Command, log: &Path) {
    println!("  {what} (log: {})", log.display());
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|error| panic!("open {}: {error}", log.display()));
    let status = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log handle"))
        .stderr(file)
        .status()
        .unwrap_or_else(|error| panic!("run {command:?}: {error}"));
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        panic!(
            "{what} failed ({status})\n--- last lines of {} ---\n{}\n--- full log: {} ---",
            log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n"),
            log.display()
        );
    }
}

/// FNV-1a (64 bits) over the checker's files, names and contents, in name order: a stable key
/// (unlike std's hasher, which may change between Rust releases) for "the source changed".
fn source_hash(dir: &Path) -> u64 {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("read {}: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in files {
        let name = path
            .file_name()
            .expect("file name")
            .as_encoded_bytes()
            .to_vec();
        let contents =
            fs::read(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
        for byte in name.iter().chain(&[0]).chain(&contents).chain(&[0]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

// --- the environment's API server ------------------------------------------------------------------

#[derive(Debug)]
struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn output(&self, args: &[&str]) -> Output {
        Command::new(&self.program)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("run {}: {error}", self.program.display()))
    }

    fn run(&self, args: &[&str]) {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
}

/// A namespace of this test's own, deleted when dropped (also when the test fails).
#[derive(Debug)]
struct Namespace<'a> {
    kubectl: &'a Kubectl,
    name: String,
}

impl<'a> Namespace<'a> {
    fn create(kubectl: &'a Kubectl, prefix: &str) -> Self {
        let name = testenv::unique(prefix);
        kubectl.run(&["create", "namespace", &name]);
        Self { kubectl, name }
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .kubectl
            .output(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

// --- files ----------------------------------------------------------------------------------------

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A directory of this test's own under the system's temporary directory, removed when dropped.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(testenv::unique(prefix));
        fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
