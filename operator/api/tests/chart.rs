//! The operator's Helm chart, `charts/order-pipeline-operator`, proven with the environment's helm
//! and kubectl against its real kube-apiserver: the chart lints clean, its schema rejects bad
//! values, its CRD is the generated one byte for byte, and once applied its ServiceAccount can do
//! exactly what the operator needs and nothing more — as the API server's own RBAC authorizer
//! answers `kubectl auth can-i`.
//!
//! Needs `cargo xtask env up kube` (the env file's `OP_HELM`, `OP_KUBECTL` and `KUBECONFIG`).
//! Each run installs into a namespace and release of its own, so runs never collide.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const CHART_NAME: &str = "order-pipeline-operator";
/// The Lease the operator elects its leader with (fixed in the operator).
const LEASE_NAME: &str = "order-pipeline-operator";
/// Every verb the operator uses on the children it owns.
/// Children the operator watches, reads by name and applies (server-side apply: create and
/// patch).
const WATCHED_CHILD_VERBS: &[&str] = &["create", "get", "list", "patch", "watch"];
/// Children it applies without watching them; their names are checked before an apply.
const APPLIED_CHILD_VERBS: &[&str] = &["create", "get", "patch"];

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart_dir() -> PathBuf {
    repository_root().join("charts").join(CHART_NAME)
}

fn chart_path() -> String {
    chart_dir().to_str().expect("UTF-8 chart path").to_owned()
}

/// The environment's helm and kubectl, pointed at its API server.
struct Tools {
    helm: String,
    kubectl: String,
    kubeconfig: String,
}

impl Tools {
    fn load() -> Self {
        let env = testenv::Env::load();
        Self {
            helm: env.require("OP_HELM"),
            kubectl: env.require("OP_KUBECTL"),
            kubeconfig: env.require("KUBECONFIG"),
        }
    }

    fn helm(&self, args: &[&str]) -> Outcome {
        self.run(&self.helm, args, None)
    }

    fn kubectl(&self, args: &[&str]) -> Outcome {
        self.run(&self.kubectl, args, None)
    }

    fn kubectl_with_input(&self, args: &[&str], input: &str) -> Outcome {
        self.run(&self.kubectl, args, Some(input))
    }

    fn run(&self, program: &str, args: &[&str], input: Option<&str>) -> Outcome {
        let command_line = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start `{command_line}`: {error}"));
        // Written from another thread so a child that answers before reading all its input
        // cannot deadlock against us on full pipes.
        let writer = input.map(|input| {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let input = input.to_owned();
            std::thread::spawn(move || stdin.write_all(input.as_bytes()))
        });
        let output = child
            .wait_with_output()
            .unwrap_or_else(|error| panic!("cannot wait for `{command_line}`: {error}"));
        if let Some(writer) = writer {
            writer
                .join()
                .expect("stdin writer thread")
                .unwrap_or_else(|error| {
                    panic!("cannot write the input of `{command_line}`: {error}")
                });
        }
        Outcome {
            command_line,
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// What a helm or kubectl run printed and how it ended.
struct Outcome {
    command_line: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// Panics with everything the command printed unless it succeeded.
    fn expect_success(self) -> Self {
        assert!(
            self.status.success(),
            "`{}` failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.command_line,
            self.status,
            self.stderr,
            self.stdout
        );
        self
    }

    /// Panics unless the command failed; for values the schema must reject.
    fn expect_failure(self) -> Self {
        assert!(
            !self.status.success(),
            "`{}` succeeded but must fail:\n--- stdout ---\n{}",
            self.command_line,
            self.stdout
        );
        self
    }
}

/// One installation of the chart, in its own namespace under its own release name. Dropping it
/// deletes what it created, also when the test panics: the namespace (and with it every
/// namespaced object) and the cluster-scoped ClusterRole and ClusterRoleBinding, found by the
/// release's instance label. The CRD stays: other tests use it.
struct Installation<'a> {
    tools: &'a Tools,
    /// Both the namespace and the release name.
    name: String,
    /// Namespaces made for the installation besides its own (the watched ones), deleted with it.
    others: Vec<String>,
}

impl Installation<'_> {
    fn namespace(&self) -> &str {
        &self.name
    }

    /// The chart's full name and so the ServiceAccount, Deployment and ClusterRole name.
    fn fullname(&self) -> String {
        format!("{}-{CHART_NAME}", self.name)
    }

    fn service_account_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace(),
            self.fullname()
        )
    }
}

impl Drop for Installation<'_> {
    fn drop(&mut self) {
        // Never panic here: a panic while unwinding would abort and hide the test's own failure.
        let label = format!("app.kubernetes.io/instance={}", self.name);
        let mut namespaces = vec![self.name.as_str()];
        namespaces.extend(self.others.iter().map(String::as_str));
        let mut delete_namespaces = vec!["delete", "namespace"];
        delete_namespaces.extend(namespaces);
        delete_namespaces.extend(["--ignore-not-found", "--wait=false"]);
        for args in [
            delete_namespaces,
            vec![
                "delete",
                "clusterrolebinding,clusterrole",
                "-l",
                label.as_str(),
                "--ignore-not-found",
            ],
        ] {
            let outcome = self.tools.kubectl(&args);
            if !outcome.status.success() {
                eprintln!(
                    "cleanup `{}` failed: {}",
                    outcome.command_line, outcome.stderr
                );
            }
        }
    }
}

/// Whether `user` may do what `args` (verb, resource, scope) describe, as the API server's
/// authorizer answers. A resource the server does not know fails the test instead of reading
/// as a quiet "no".
fn can_i(tools: &Tools, user: &str, args: &[&str]) -> bool {
    let as_user = format!("--as={user}");
    let mut full = vec!["auth", "can-i", as_user.as_str()];
    full.extend_from_slice(args);
    let outcome = tools.kubectl(&full);
    assert!(
        !outcome.stderr.contains("doesn't have a resource type"),
        "`{}`: unknown resource: {}",
        outcome.command_line,
        outcome.stderr
    );
    let answer = outcome.stdout.trim();
    if answer == "yes" {
        true
    } else if answer.starts_with("no") {
        false
    } else {
        panic!(
            "`{}` answered neither yes nor no ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
            outcome.command_line, outcome.status, outcome.stderr, outcome.stdout
        )
    }
}

/// One row of `kubectl auth can-i --list`: resource, non-resource URLs, resource names, verbs.
type Permission = (String, Vec<String>, Vec<String>, Vec<String>);

fn permission(resource: &str, resource_names: &[&str], verbs: &[&str]) -> Permission {
    let mut names: Vec<String> = resource_names.iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut verbs: Vec<String> = verbs.iter().map(|s| s.to_string()).collect();
    verbs.sort();
    (resource.to_owned(), Vec::new(), names, verbs)
}

/// Everything `user` may do in `namespace`, as the authorizer lists it.
fn permissions(tools: &Tools, user: &str, namespace: &str) -> BTreeSet<Permission> {
    let as_user = format!("--as={user}");
    let outcome = tools
        .kubectl(&["auth", "can-i", "--list", &as_user, "-n", namespace])
        .expect_success();
    outcome
        .stdout
        .lines()
        .skip(1) // the header
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_permission(line).unwrap_or_else(|| panic!("unparsable row: {line:?}")))
        .collect()
}

/// `deployments.apps   []   [name]   [get list]`; non-resource rows start with blanks.
fn parse_permission(line: &str) -> Option<Permission> {
    let resource = if line.starts_with(char::is_whitespace) {
        String::new()
    } else {
        line.split_whitespace().next()?.to_owned()
    };
    let mut lists = Vec::new();
    let mut rest = &line[resource.len()..];
    while let Some(open) = rest.find('[') {
        let close = open + rest[open..].find(']')?;
        let mut items: Vec<String> = rest[open + 1..close]
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        items.sort();
        lists.push(items);
        rest = &rest[close + 1..];
    }
    let [urls, names, verbs]: [Vec<String>; 3] = lists.try_into().ok()?;
    Some((resource, urls, names, verbs))
}

/// What the operator's ServiceAccount may do in a namespace it reconciles (everywhere with the
/// ClusterRole, in each watched namespace with a Role), beyond what every service account may:
/// one grant per API call the code makes.
fn reconciling_permissions() -> BTreeSet<Permission> {
    let mut expected = BTreeSet::from([
        permission("orderpipelines.orderpipeline.dev", &[], &["list", "watch"]),
        permission(
            "orderpipelines.orderpipeline.dev/status",
            &[],
            &["get", "patch"],
        ),
        permission("events.events.k8s.io", &[], &["create", "patch"]),
        permission(
            "poddisruptionbudgets.policy",
            &[],
            &["create", "delete", "get", "list", "patch"],
        ),
        permission(
            "podmonitors.monitoring.coreos.com",
            &[],
            &["create", "delete", "get", "list", "patch"],
        ),
    ]);
    for resource in [
        "deployments.apps",
        "statefulsets.apps",
        "services",
        "secrets",
    ] {
        expected.insert(permission(resource, &[], WATCHED_CHILD_VERBS));
    }
    for resource in [
        "configmaps",
        "jobs.batch",
        "networkpolicies.networking.k8s.io",
    ] {
        expected.insert(permission(resource, &[], APPLIED_CHILD_VERBS));
    }
    expected
}

/// The leader-election grants, in the release namespace only.
fn lease_permissions() -> [Permission; 2] {
    [
        permission("leases.coordination.k8s.io", &[], &["create"]),
        permission(
            "leases.coordination.k8s.io",
            &[LEASE_NAME],
            &["get", "update", "patch"],
        ),
    ]
}

/// Renders the chart; panics with helm's output when it cannot.
fn render(tools: &Tools, release: &str, namespace: &str, extra: &[&str]) -> String {
    let chart = chart_path();
    let mut args = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    tools.helm(&args).expect_success().stdout
}

#[test]
fn chart_lints_without_warnings() {
    let tools = Tools::load();
    let outcome = tools.helm(&["lint", &chart_path()]).expect_success();
    let complaints: Vec<&str> = outcome
        .stdout
        .lines()
        .chain(outcome.stderr.lines())
        .filter(|line| line.contains("[WARNING]") || line.contains("[ERROR]"))
        .collect();
    assert!(
        complaints.is_empty(),
        "helm lint complains:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let generated = repository_root().join("crds/orderpipelines.yaml");
    let in_chart = chart_dir().join("crds/orderpipelines.yaml");
    let read = |path: &Path| {
        std::fs::read(path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
    };
    assert!(
        read(&generated) == read(&in_chart),
        "{} differs from {}: run `cargo xtask crdgen`",
        in_chart.display(),
        generated.display()
    );
}

#[test]
fn schema_rejects_bad_values() {
    let tools = Tools::load();
    let chart = chart_path();
    for (setting, complaint) in [
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("replicaCount=-1", "/replicaCount"),
        ("replicaCount=one", "/replicaCount"),
        ("logLevel=loud", "/logLevel"),
        ("metrics.service.port=70000", "/metrics/service/port"),
        ("leaderElection.enabled=maybe", "/leaderElection/enabled"),
        ("serviceAccount.create=false", "/serviceAccount/name"),
        ("imagePullPolicy=Always", "imagePullPolicy"),
        ("dependencyImages.redis=", "/dependencyImages/redis"),
        (
            "dependencyImages.cassandra=a b",
            "/dependencyImages/cassandra",
        ),
        ("dependencyImages.mongodb=mongo", "dependencyImages"),
        ("watchNamespaces={Shop}", "/watchNamespaces/0"),
        ("watchNamespaces={a,a}", "/watchNamespaces"),
        (
            "metrics.scrapeNamespace=Monitoring",
            "/metrics/scrapeNamespace",
        ),
        ("serviceMonitor.enabled=yes", "/serviceMonitor/enabled"),
        ("serviceMonitor.interval=soon", "/serviceMonitor/interval"),
        (
            "serviceMonitor.scrapeTimeout=5",
            "/serviceMonitor/scrapeTimeout",
        ),
    ] {
        let outcome = tools
            .helm(&["template", "bad", &chart, "--set", setting])
            .expect_failure();
        assert!(
            outcome.stderr.contains("schema") && outcome.stderr.contains(complaint),
            "`--set {setting}` must be rejected by the schema at {complaint}, helm said:\n{}",
            outcome.stderr
        );
    }
}

/// The value of the environment variable `name` in a rendered manifest (the line after its
/// `- name:`).
fn env_value<'a>(manifest: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = manifest.lines().map(str::trim);
    lines.find(|line| *line == format!("- name: {name}"))?;
    lines.next()?.strip_prefix("value: ")
}

#[test]
fn passes_the_dependency_images_to_the_operator() {
    let tools = Tools::load();
    let defaults = render(&tools, "test", "op-system", &[]);
    for (name, image) in [
        ("RABBITMQ_IMAGE", "\"rabbitmq:3.13.7-management-alpine\""),
        ("REDIS_IMAGE", "\"redis:7.4.1-alpine\""),
        ("CASSANDRA_IMAGE", "\"cassandra:5.0.2\""),
    ] {
        assert_eq!(env_value(&defaults, name), Some(image), "{defaults}");
    }
    let stand_ins = render(
        &tools,
        "test",
        "op-system",
        &[
            "--set",
            "dependencyImages.rabbitmq=localhost/order-pipeline-deps/rabbitmq:3.10.8-1",
            "--set",
            "dependencyImages.cassandra=localhost/order-pipeline-deps/cassandra:5.0.9-1",
        ],
    );
    assert_eq!(
        env_value(&stand_ins, "RABBITMQ_IMAGE"),
        Some("\"localhost/order-pipeline-deps/rabbitmq:3.10.8-1\"")
    );
    assert_eq!(
        env_value(&stand_ins, "REDIS_IMAGE"),
        Some("\"redis:7.4.1-alpine\"")
    );
    assert_eq!(
        env_value(&stand_ins, "CASSANDRA_IMAGE"),
        Some("\"localhost/order-pipeline-deps/cassandra:5.0.9-1\"")
    );
    // Cluster-wide by default, and no namespace may scrape the pipelines' admin ports.
    assert_eq!(env_value(&defaults, "WATCH_NAMESPACES"), Some("\"\""));
    assert_eq!(env_value(&defaults, "METRICS_NAMESPACE"), Some("\"\""));
    let monitored = render(
        &tools,
        "test",
        "op-system",
        &["--set", "metrics.scrapeNamespace=monitoring"],
    );
    assert_eq!(
        env_value(&monitored, "METRICS_NAMESPACE"),
        Some("\"monitoring\"")
    );
}

#[test]
fn renders_without_leader_election_and_with_replicas() {
    let tools = Tools::load();

    let single_active = render(
        &tools,
        "test",
        "op-system",
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "leaderElection.enabled=false",
        ],
    );
    assert!(single_active.contains("replicas: 2"), "{single_active}");
    assert!(
        !single_active.contains("kind: Role\n") && !single_active.contains("kind: RoleBinding\n"),
        "no leader election, so no Lease Role:\n{single_active}"
    );
    let mut lines = single_active.lines().map(str::trim);
    assert!(
        lines.any(|line| line == "- name: LEADER_ELECTION_ENABLED")
            && lines.next() == Some("value: \"false\""),
        "the operator is told not to elect a leader:\n{single_active}"
    );

    let highly_available = render(&tools, "test", "op-system", &["--set", "replicaCount=3"]);
    assert!(highly_available.contains("replicas: 3"));
    assert!(highly_available.contains("kind: Role\n"));
    assert!(highly_available.contains("kind: RoleBinding\n"));
    assert!(
        !highly_available.contains("namespace: default"),
        "every namespaced object goes to the release namespace:\n{highly_available}"
    );
}

#[test]
fn installed_chart_grants_exactly_what_the_operator_needs() {
    let tools = Tools::load();
    let installation = Installation {
        tools: &tools,
        name: testenv::unique("chart"),
        others: Vec::new(),
    };
    let namespace = installation.namespace().to_owned();
    let fullname = installation.fullname();
    let user = installation.service_account_user();

    let manifests = render(&tools, &installation.name, &namespace, &["--include-crds"]);
    assert!(
        manifests.contains("name: orderpipelines.orderpipeline.dev"),
        "--include-crds renders the chart's CRD"
    );

    tools
        .kubectl(&["create", "namespace", &namespace])
        .expect_success();
    // Enforce the restricted Pod Security Standard, and warn on pod templates (enforcement only
    // sees pods), so a Deployment that breaks it fails here.
    tools
        .kubectl(&[
            "label",
            "namespace",
            &namespace,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted",
        ])
        .expect_success();

    // The CRD is shared with the other tests, which apply it as their own field managers; an
    // upgrade takes it over as a user upgrading the CRD would (helm never upgrades CRDs).
    let applied = tools
        .kubectl_with_input(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &manifests,
        )
        .expect_success();
    assert!(
        !applied.stderr.contains("PodSecurity"),
        "the operator's pod breaks the restricted Pod Security Standard:\n{}",
        applied.stderr
    );

    let service_account = tools
        .kubectl(&[
            "-n",
            &namespace,
            "get",
            "serviceaccount",
            &fullname,
            "-o",
            "name",
        ])
        .expect_success();
    assert_eq!(
        service_account.stdout.trim(),
        format!("serviceaccount/{fullname}")
    );

    // The ReplicaSet's pod is admitted under `enforce=restricted`, scheduled and (on kwok) run.
    tools
        .kubectl(&[
            "-n",
            &namespace,
            "wait",
            "--for=condition=Available",
            &format!("deployment/{fullname}"),
            "--timeout=120s",
        ])
        .expect_success();

    // The authorizer's RBAC cache follows the new bindings within moments.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !can_i(
        &tools,
        &user,
        &["list", "orderpipelines.orderpipeline.dev", "-A"],
    ) {
        assert!(
            Instant::now() < deadline,
            "{user} still cannot list OrderPipelines 30s after the ClusterRoleBinding was applied"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let lease = format!("leases.coordination.k8s.io/{LEASE_NAME}");
    let granted: &[&[&str]] = &[
        &["list", "orderpipelines.orderpipeline.dev", "-n", "default"],
        &["watch", "orderpipelines.orderpipeline.dev", "-A"],
        &[
            "patch",
            "orderpipelines.orderpipeline.dev",
            "--subresource=status",
            "-n",
            "default",
        ],
        &["patch", "deployments.apps", "-A"],
        &["get", "statefulsets.apps", "-n", "default"],
        &["create", "services", "-n", "default"],
        &["patch", "configmaps", "-A"],
        &["create", "secrets", "-n", "default"],
        &["watch", "secrets", "-A"],
        &["create", "poddisruptionbudgets.policy", "-n", "default"],
        &["delete", "poddisruptionbudgets.policy", "-n", "default"],
        &["patch", "networkpolicies.networking.k8s.io", "-A"],
        &["create", "jobs.batch", "-n", "default"],
        &["get", "jobs.batch", "-n", "default"],
        &["patch", "jobs.batch", "-A"],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["patch", "events.events.k8s.io", "-A"],
        &[
            "create",
            "podmonitors.monitoring.coreos.com",
            "-n",
            "default",
        ],
        &["delete", "podmonitors.monitoring.coreos.com", "-A"],
        &["create", "leases.coordination.k8s.io", "-n", &namespace],
        &["get", &lease, "-n", &namespace],
        &["update", &lease, "-n", &namespace],
        &["patch", &lease, "-n", &namespace],
    ];
    let denied: &[&[&str]] = &[
        // The custom resource itself is only read.
        &[
            "create",
            "orderpipelines.orderpipeline.dev",
            "-n",
            "default",
        ],
        &["patch", "orderpipelines.orderpipeline.dev", "-A"],
        &["delete", "orderpipelines.orderpipeline.dev", "-A"],
        &[
            "update",
            "orderpipelines.orderpipeline.dev",
            "--subresource=status",
            "-A",
        ],
        // Children are applied, never replaced with PUT nor deleted (the garbage collector
        // takes them with the pipeline); only disruption budgets are pruned.
        &["update", "deployments.apps", "-A"],
        &["delete", "statefulsets.apps", "-n", "default"],
        &["delete", "secrets", "-n", "default"],
        &["update", "configmaps", "-A"],
        &["list", "configmaps", "-A"],
        &["delete", "networkpolicies.networking.k8s.io", "-A"],
        // PodMonitors are not watched; ServiceMonitors are the chart's, not the operator's.
        &["watch", "podmonitors.monitoring.coreos.com", "-A"],
        &["update", "podmonitors.monitoring.coreos.com", "-A"],
        &[
            "create",
            "servicemonitors.monitoring.coreos.com",
            "-n",
            "default",
        ],
        // Unused kinds.
        &["get", "serviceaccounts", "-n", "default"],
        &["patch", "serviceaccounts", "-A"],
        &["list", "persistentvolumeclaims", "-A"],
        &["delete", "persistentvolumeclaims", "-n", "default"],
        &["watch", "pods", "-A"],
        // Leases: only the operator's own, only in its own namespace.
        &["create", "leases.coordination.k8s.io", "-n", "default"],
        &["get", &lease, "-n", "default"],
        &["list", "leases.coordination.k8s.io", "-n", &namespace],
        &["delete", &lease, "-n", &namespace],
        &[
            "update",
            "leases.coordination.k8s.io/someone-else",
            "-n",
            &namespace,
        ],
        // Claims are made by StatefulSets, pods by controllers; core Events are not used.
        &["create", "persistentvolumeclaims", "-n", "default"],
        &["update", "persistentvolumeclaims", "-A"],
        &["create", "pods", "-n", "default"],
        &["delete", "pods", "-A"],
        &["create", "pods", "--subresource=exec", "-n", "default"],
        &["create", "events", "-n", "default"],
        &["deletecollection", "secrets", "-A"],
        // Jobs are applied (their name checked first), never listed, updated or deleted by the
        // operator; nor are CronJobs.
        &["list", "jobs.batch", "-A"],
        &["watch", "jobs.batch", "-A"],
        &["update", "jobs.batch", "-A"],
        &["delete", "jobs.batch", "-n", "default"],
        &["create", "cronjobs.batch", "-n", "default"],
        &["create", "daemonsets.apps", "-n", "default"],
        // Nothing cluster-scoped, no way to grant itself more.
        &["create", "namespaces"],
        &["delete", "namespaces"],
        &["get", "nodes"],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
        &["bind", "clusterroles.rbac.authorization.k8s.io"],
        &[
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            "-n",
            &namespace,
        ],
        &["impersonate", "serviceaccounts", "-A"],
        &["patch", "customresourcedefinitions.apiextensions.k8s.io"],
        &["*", "*", "-A"],
    ];
    let mut wrong = Vec::new();
    for (checks, expected) in [(granted, true), (denied, false)] {
        for check in checks {
            if can_i(&tools, &user, check) != expected {
                let answer = if expected { "no" } else { "yes" };
                wrong.push(format!("can-i {} answered {answer}", check.join(" ")));
            }
        }
    }
    assert!(wrong.is_empty(), "{user}:\n{}", wrong.join("\n"));

    // Exactly: everything the authorizer lists for the operator, minus what any service account
    // of the namespace may do (a name nothing is bound to), is the operator's rules and no more.
    let nobody = format!("system:serviceaccount:{namespace}:nobody");
    let extra = |in_namespace: &str| -> BTreeSet<Permission> {
        let baseline = permissions(&tools, &nobody, in_namespace);
        permissions(&tools, &user, in_namespace)
            .difference(&baseline)
            .cloned()
            .collect()
    };
    let mut in_own_namespace = reconciling_permissions();
    in_own_namespace.extend(lease_permissions());
    assert_same_permissions(&user, &namespace, &extra(&namespace), &in_own_namespace);
    assert_same_permissions(
        &user,
        "default",
        &extra("default"),
        &reconciling_permissions(),
    );
}

/// Namespaced mode: with `watchNamespaces` the chart grants the operator's rules in those
/// namespaces only, through Roles, and nothing cluster-wide; the release namespace gets the
/// Lease grants and nothing more, and kube-system nothing at all.
#[test]
fn namespaced_install_grants_only_in_the_watched_namespaces() {
    let tools = Tools::load();
    let name = testenv::unique("chartns");
    let watched = [format!("{name}-a"), format!("{name}-b")];
    let installation = Installation {
        tools: &tools,
        name: name.clone(),
        others: watched.to_vec(),
    };
    let user = installation.service_account_user();
    let setting = format!("watchNamespaces={{{}}}", watched.join(","));
    let manifests = render(&tools, &name, &name, &["--set", &setting]);
    assert!(
        !manifests.contains("kind: ClusterRole"),
        "namespaced mode grants nothing cluster-wide:\n{manifests}"
    );
    let mut lines = manifests.lines().map(str::trim);
    assert!(
        lines.any(|line| line == "- name: WATCH_NAMESPACES")
            && lines.next() == Some(format!("value: \"{}\"", watched.join(",")).as_str()),
        "the operator is told what to watch:\n{manifests}"
    );
    for namespace in [&name, &watched[0], &watched[1]] {
        tools
            .kubectl(&["create", "namespace", namespace])
            .expect_success();
    }
    tools
        .kubectl_with_input(&["apply", "--server-side", "-f", "-"], &manifests)
        .expect_success();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !can_i(
        &tools,
        &user,
        &[
            "list",
            "orderpipelines.orderpipeline.dev",
            "-n",
            &watched[1],
        ],
    ) {
        assert!(
            Instant::now() < deadline,
            "{user} still cannot list OrderPipelines in {} 30s after its RoleBinding",
            watched[1]
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let denied: &[&[&str]] = &[
        &["get", "secrets", "-n", "kube-system"],
        &["list", "secrets", "-n", "kube-system"],
        &["create", "jobs.batch", "-n", "kube-system"],
        &["create", "pods", "-n", "kube-system"],
        &["create", "deployments.apps", "-n", "kube-system"],
        &["list", "orderpipelines.orderpipeline.dev", "-A"],
        &["watch", "secrets", "-A"],
        &["get", "secrets", "-n", "default"],
        &["create", "pods", "-n", &watched[0]],
        &["create", "pods", "--subresource=exec", "-n", &watched[0]],
    ];
    let wrong: Vec<String> = denied
        .iter()
        .filter(|check| can_i(&tools, &user, check))
        .map(|check| format!("can-i {} answered yes", check.join(" ")))
        .collect();
    assert!(wrong.is_empty(), "{user}:\n{}", wrong.join("\n"));

    let nobody = format!("system:serviceaccount:{name}:nobody");
    let extra = |in_namespace: &str| -> BTreeSet<Permission> {
        let baseline = permissions(&tools, &nobody, in_namespace);
        permissions(&tools, &user, in_namespace)
            .difference(&baseline)
            .cloned()
            .collect()
    };
    for namespace in &watched {
        assert_same_permissions(
            &user,
            namespace,
            &extra(namespace),
            &reconciling_permissions(),
        );
    }
    assert_same_permissions(
        &user,
        &name,
        &extra(&name),
        &BTreeSet::from(lease_permissions()),
    );
    for namespace in ["kube-system", "default"] {
        assert_same_permissions(&user, namespace, &extra(namespace), &BTreeSet::new());
    }
    println!(
        "namespaced mode: {} grants in each of {watched:?}, 2 in {name}, none in kube-system or default",
        reconciling_permissions().len()
    );
}

/// Fails naming each permission granted but not needed, and each needed but not granted.
fn assert_same_permissions(
    user: &str,
    namespace: &str,
    granted: &BTreeSet<Permission>,
    needed: &BTreeSet<Permission>,
) {
    let describe =
        |(resource, _, names, verbs): &Permission| format!("  {resource} {names:?} {verbs:?}");
    let excess: Vec<String> = granted.difference(needed).map(describe).collect();
    let missing: Vec<String> = needed.difference(granted).map(describe).collect();
    assert!(
        excess.is_empty() && missing.is_empty(),
        "{user} in namespace {namespace}:\ngranted but not needed:\n{}\nneeded but not granted:\n{}",
        excess.join("\n"),
        missing.join("\n")
    );
}

/// The `serviceMonitor` values: off by default; on, a ServiceMonitor that the real API server,
/// with the Prometheus Operator's CRDs installed, accepts under strict field validation, and
/// whose selector and port name pick the operator's metrics Service and nothing else.
#[test]
fn service_monitor_scrapes_the_metrics_service() {
    let tools = Tools::load();
    let defaults = render(&tools, "test", "op-system", &[]);
    assert!(
        !defaults.contains("kind: ServiceMonitor"),
        "off by default:\n{defaults}"
    );
    let chart = chart_path();
    let without_service = tools
        .helm(&[
            "template",
            "test",
            &chart,
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "metrics.service.enabled=false",
        ])
        .expect_failure();
    assert!(
        without_service
            .stderr
            .contains("serviceMonitor.enabled needs metrics.service.enabled"),
        "{}",
        without_service.stderr
    );

    let installation = Installation {
        tools: &tools,
        name: testenv::unique("chartmon"),
        others: Vec::new(),
    };
    let namespace = installation.namespace().to_owned();
    let fullname = installation.fullname();
    let manifests = render(
        &tools,
        &installation.name,
        &namespace,
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.interval=15s",
            "--set",
            "serviceMonitor.scrapeTimeout=10s",
            "--set",
            "serviceMonitor.labels.release=prometheus",
        ],
    );
    tools
        .kubectl(&["create", "namespace", &namespace])
        .expect_success();
    let applied = tools.kubectl_with_input(
        &["apply", "--server-side", "--validate=strict", "-f", "-"],
        &manifests,
    );
    assert!(
        applied.status.success(),
        "the API server refused the chart with its ServiceMonitor (are the Prometheus \
         Operator's CRDs installed? `cargo xtask env up kube` installs them):\n{}",
        applied.stderr
    );

    let get = |kind: &str, name: &str| -> serde_json::Value {
        let outcome = tools
            .kubectl(&["-n", &namespace, "get", kind, name, "-o", "json"])
            .expect_success();
        serde_json::from_str(&outcome.stdout).expect("kubectl prints JSON")
    };
    let monitor = get("servicemonitors.monitoring.coreos.com", &fullname);
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "{monitor:#}");
    assert_eq!(endpoints[0]["port"], "admin");
    assert_eq!(endpoints[0]["path"], "/metrics");
    assert_eq!(endpoints[0]["interval"], "15s");
    assert_eq!(endpoints[0]["scrapeTimeout"], "10s");
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!([namespace])
    );

    // What Prometheus would find: the Services its selector matches, and on them the port it
    // names.
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
        .iter()
        .map(|(key, value)| format!("{key}={}", value.as_str().expect("a label value")))
        .collect::<Vec<_>>()
        .join(",");
    let matched = tools
        .kubectl(&[
            "-n", &namespace, "get", "services", "-l", &selector, "-o", "json",
        ])
        .expect_success();
    let matched: serde_json::Value = serde_json::from_str(&matched.stdout).expect("JSON");
    let services = matched["items"].as_array().expect("items");
    assert_eq!(
        services
            .iter()
            .map(|service| service["metadata"]["name"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        vec![format!("{fullname}-metrics")],
        "the selector {selector} must pick the metrics Service alone"
    );
    let ports = services[0]["spec"]["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|port| port["name"] == "admin" && port["targetPort"] == "admin"),
        "the metrics Service has the admin port: {ports:?}"
    );
}
