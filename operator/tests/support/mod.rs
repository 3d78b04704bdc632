//! Shared by the operator's control-plane tests.

#![allow(dead_code)]

pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, CustomResourceExt};
use order_pipeline_operator::controller::{Context, Scope};
use order_pipeline_operator::metrics::Metrics;
use pipeline_api::OrderPipeline;
use prometheus_client::registry::Registry;

pub async fn client() -> Client {
    let env = testenv::Env::load();
    let kubeconfig = Kubeconfig::read_from(env.require("KUBECONFIG")).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        OrderPipeline::crd_name(),
        &PatchParams::apply("operator-tests").force(),
        &Patch::Apply(OrderPipeline::crd()),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            OrderPipeline::crd_name(),
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established")
    .unwrap();
}

/// Volumes reserved for `claims` in `namespace` (see [`volumes`]).
pub async fn provide_volumes(client: &Client, namespace: &str, claims: &[String]) -> Vec<String> {
    volumes::provide(client, namespace, claims).await.unwrap()
}

/// A namespace of the test's own, and what the test made for it: the volumes its claims bind
/// to and the chart identities its operators ran as. All of it is removed when this is dropped,
/// also when the test panics: a cleanup at the end of a test was skipped by every failed
/// assertion, and the shared control plane kept the namespaces, volumes and cluster-wide roles
/// (a later benchmark then reconciled a hundred pipelines nobody asked for). A guard rather than
/// linkerd2 policy-test's `with_temp_ns(|client, ns| async { ... })`: the same cleanup, and the
/// test body keeps `?`, early returns and ordinary borrows.
///
/// The controllers [`TestNamespace::operator`] starts watch this namespace only, so tests that
/// run at once in the same control plane never reconcile each other's pipelines.
pub struct TestNamespace {
    /// A cluster-admin client, for the test's own reads and writes.
    pub admin: Client,
    pub name: String,
    volumes: std::sync::Mutex<Vec<String>>,
    identities: std::sync::Mutex<Vec<String>>,
}

impl TestNamespace {
    /// Installs the CRD and creates `<label>-<random>`.
    pub async fn create(label: &str) -> Self {
        Self::create_labelled(label, &[]).await
    }

    /// [`Self::create`], the namespace carrying `labels` (a Pod Security Standard, say).
    pub async fn create_labelled(label: &str, labels: &[(&str, &str)]) -> Self {
        let admin = client().await;
        install_crd(&admin).await;
        let name = testenv::unique(label);
        let labels: std::collections::BTreeMap<&str, &str> = labels.iter().copied().collect();
        Api::<Namespace>::all(admin.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    serde_json::json!({"metadata": {"name": name, "labels": labels}}),
                )
                .unwrap(),
            )
            .await
            .unwrap_or_else(|error| panic!("failed to create namespace {name}: {error}"));
        Self {
            admin,
            name,
            volumes: std::sync::Mutex::default(),
            identities: std::sync::Mutex::default(),
        }
    }

    /// An API of this namespace, as the admin.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.admin.clone(), &self.name)
    }

    /// Volumes for `claims` in this namespace (see [`volumes`]), deleted with it.
    pub async fn provide_volumes(&self, claims: &[String]) {
        let made = provide_volumes(&self.admin, &self.name, claims).await;
        lock(&self.volumes).extend(made);
    }

    /// A client acting as the Helm chart's ServiceAccount and the namespace it lives in (see
    /// [`chart_identity`]), removed with this namespace.
    pub async fn chart_identity(&self) -> (Client, String) {
        self.chart_identity_watching(&[]).await
    }

    /// [`chart_identity_watching`], removed with this namespace (also when making it fails
    /// half-way: it is recorded first).
    pub async fn chart_identity_watching(&self, namespaces: &[&str]) -> (Client, String) {
        let identity = testenv::unique("opsa");
        lock(&self.identities).push(identity.clone());
        (chart_identity_in(&identity, namespaces).await, identity)
    }

    /// The reconcile context of `client`, its controller scoped to this namespace.
    pub fn context(&self, client: &Client) -> Arc<Context> {
        Arc::new(
            Arc::unwrap_or_clone(new_context(client))
                .with_scope(Scope::Namespaces(vec![self.name.clone()])),
        )
    }

    /// The controller, running as the chart's identity and watching this namespace, with its
    /// context.
    pub async fn operator(&self) -> (RunningOperator, Arc<Context>) {
        let (client, _) = self.chart_identity().await;
        let context = self.context(&client);
        (RunningOperator::start(context.clone()), context)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Synchronous (kubectl), so it also runs while a panic unwinds, and never panics
        // itself (a panic there would abort the test binary); nothing waits for the
        // namespace's finalization.
        let env = testenv::Env::load();
        let (Some(program), Some(kubeconfig)) = (env.get("OP_KUBECTL"), env.get("KUBECONFIG"))
        else {
            return;
        };
        let kubectl = |args: &[&str]| {
            let _ = std::process::Command::new(program)
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .output();
        };
        kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        let volumes = std::mem::take(&mut *lock(&self.volumes));
        if !volumes.is_empty() {
            let mut args = vec![
                "delete",
                "persistentvolume",
                "--wait=false",
                "--ignore-not-found",
            ];
            args.extend(volumes.iter().map(String::as_str));
            kubectl(&args);
        }
        for identity in std::mem::take(&mut *lock(&self.identities)) {
            remove_chart_identity(&identity);
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn new_context(client: &Client) -> Arc<Context> {
    let mut registry = Registry::default();
    Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), Reporter::from("operator-tests")),
        Arc::new(Metrics::register(&mut registry)),
        "0.1.0",
    ))
}

/// The controller running on a task of its own, as the operator runs it, until [`Self::stop`].
pub struct RunningOperator {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningOperator {
    pub fn start(context: Arc<Context>) -> Self {
        // The operator's log, shown with a failing test's output (`RUST_LOG` overrides).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("order_pipeline_operator=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(order_pipeline_operator::controller::run(
            context,
            stop.clone().cancelled_owned(),
        ));
        Self { stop, task }
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

pub async fn wait_ready(
    pipelines: &Api<OrderPipeline>,
    name: &str,
    within: Duration,
) -> OrderPipeline {
    let ready = await_condition(
        pipelines.clone(),
        name,
        |pipeline: Option<&OrderPipeline>| {
            pipeline
                .and_then(|p| p.status.as_ref())
                .is_some_and(|status| {
                    status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                        && status.observed_generation
                            == pipeline.and_then(|p| p.metadata.generation)
                })
        },
    );
    match tokio::time::timeout(within, ready).await {
        Ok(result) => result.unwrap().unwrap(),
        Err(_) => {
            let last = pipelines.get(name).await.ok();
            panic!(
                "{name} not Ready within {within:?}; generation {:?}, status {:#?}",
                last.as_ref().and_then(|p| p.metadata.generation),
                last.and_then(|p| p.status)
            )
        }
    }
}

/// A client acting as the Helm chart's ServiceAccount: the chart's RBAC rendered with the
/// environment's helm and applied to the API server, and a token minted for the account. The
/// operator runs under it in these tests, so a rule missing from the chart fails them. Returns
/// the client and the namespace the account lives in (delete it when done; the cluster-wide
/// role and binding are named after it).
pub async fn chart_identity() -> (Client, String) {
    chart_identity_watching(&[]).await
}

/// [`chart_identity`] of the chart installed in namespaced mode, watching `namespaces` only:
/// a Role in each and nothing cluster-wide. The client then proves its access by listing
/// OrderPipelines in the first of them.
pub async fn chart_identity_watching(namespaces: &[&str]) -> (Client, String) {
    let namespace = testenv::unique("opsa");
    let client = chart_identity_in(&namespace, namespaces).await;
    (client, namespace)
}

/// [`chart_identity_watching`] with the identity's namespace named by the caller, who can then
/// remove it even when this panics half-way.
async fn chart_identity_in(namespace: &str, namespaces: &[&str]) -> Client {
    let env = testenv::Env::load();
    let (helm, kubectl, kubeconfig) = (
        env.require("OP_HELM"),
        env.require("OP_KUBECTL"),
        env.require("KUBECONFIG"),
    );
    let chart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/order-pipeline-operator"
    );
    let run = |program: &str, args: &[&str], input: Option<&str>| -> String {
        use std::io::Write;
        let mut child = std::process::Command::new(program)
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("{program}: {error}"));
        if let Some(input) = input {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    run(&kubectl, &["create", "namespace", namespace], None);
    let watch = format!("watchNamespaces={{{}}}", namespaces.join(","));
    let mut template = vec!["template", namespace, chart, "--namespace", namespace];
    if !namespaces.is_empty() {
        template.extend(["--set", watch.as_str()]);
    }
    // The identity and its grants only: the operator runs in the test, not as a pod.
    let rendered = run(&helm, &template, None);
    let rbac = rendered
        .split("\n---")
        .filter(|document| {
            document.lines().any(|line| {
                matches!(
                    line,
                    "kind: ServiceAccount"
                        | "kind: ClusterRole"
                        | "kind: ClusterRoleBinding"
                        | "kind: Role"
                        | "kind: RoleBinding"
                )
            })
        })
        .collect::<Vec<_>>()
        .join("\n---");
    run(
        &kubectl,
        // Every namespaced object of the chart names its namespace.
        &["apply", "--server-side", "-f", "-"],
        Some(&rbac),
    );
    let account = rbac
        .lines()
        .skip_while(|line| !line.starts_with("kind: ServiceAccount"))
        .find_map(|line| line.trim().strip_prefix("name: "))
        .expect("the chart renders a ServiceAccount")
        .to_owned();
    let token = run(
        &kubectl,
        &[
            "create",
            "token",
            &account,
            "-n",
            namespace,
            "--duration",
            "1h",
        ],
        None,
    );

    let kubeconfig = Kubeconfig::read_from(&kubeconfig).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.trim().to_owned().into()),
        ..kube::config::AuthInfo::default()
    };
    // RBAC bindings take a moment to reach the authorizer's cache.
    let client = Client::try_from(config).unwrap();
    let pipelines: Api<OrderPipeline> = match namespaces.first() {
        Some(first) => Api::namespaced(client.clone(), first),
        None => Api::all(client.clone()),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pipelines.list(&Default::default()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chart's ServiceAccount never got its permissions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
}

/// Removes what [`chart_identity`] created. Never panics (it runs in drops, also while a test
/// panics): without the environment's kubectl there is nothing it could remove.
pub fn remove_chart_identity(namespace: &str) {
    let env = testenv::Env::load();
    let (Some(kubectl), Some(kubeconfig)) = (env.get("OP_KUBECTL"), env.get("KUBECONFIG")) else {
        return;
    };
    for args in [
        vec![
            "delete",
            "clusterrole,clusterrolebinding,role,rolebinding",
            "-A",
            "-l",
            &format!("app.kubernetes.io/instance={namespace}"),
        ],
        vec!["delete", "namespace", namespace, "--wait=false"],
    ] {
        let _ = std::process::Command::new(kubectl)
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .output();
    }
}
