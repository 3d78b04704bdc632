//! What only a cluster has: its configuration from `E2E_*` variables, port-forwards to the
//! pipeline's Services, stock set in the managed Redis pod, readiness and scaling through the
//! `OrderPipeline` resource.
//!
//! Names follow the operator (`operator/src/controller/build.rs`): the workloads are Deployments
//! `<pipeline>-<component>`, the gateway and dashboard have Services of the same names with a
//! port named `http`, and a managed Redis is the StatefulSet `<pipeline>-redis` whose container
//! `redis` reads its password from the generated Secret `<pipeline>-redis-credentials` through
//! the variable `REDIS_PASSWORD`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{AttachParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use pipeline_api::{ComponentStatus, OrderPipeline};
use pipeline_contract::env;
use pipeline_contract::keys::Keys;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::flow::Inventory;

/// The suite's only skip: without a kubeconfig there is no cluster to test.
pub const SKIP_MESSAGE: &str = "E2E_KUBECONFIG not set: skipping the cluster e2e suite; run \
     e2e/kind-up.sh (needs Docker) or point it at a cluster";

/// Which cluster and pipeline the suite checks.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `E2E_KUBECONFIG`. Deliberately no fallback to `~/.kube/config` or `KUBECONFIG`: the suite
    /// must never run against a cluster nobody named for it (the developer's default context, or
    /// the project's kwok control plane, which runs no containers).
    pub kubeconfig: PathBuf,
    /// `E2E_NAMESPACE`, by default `default` (where `kubectl apply -f samples/` puts it).
    pub namespace: String,
    /// `E2E_PIPELINE`, by default `shop` (the sample's name).
    pub pipeline: String,
}

impl ClusterConfig {
    /// The configuration from the environment, or `None` when `E2E_KUBECONFIG` is unset or
    /// empty.
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let set = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        Some(Self {
            kubeconfig: PathBuf::from(set("E2E_KUBECONFIG")?),
            namespace: set("E2E_NAMESPACE").unwrap_or_else(|| "default".to_owned()),
            pipeline: set("E2E_PIPELINE").unwrap_or_else(|| "shop".to_owned()),
        })
    }
}

/// A client for one pipeline on one cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    namespace: String,
    pipeline: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects with the kubeconfig's current context (its namespace is ignored: the suite's
    /// namespace is `E2E_NAMESPACE`).
    pub async fn connect(config: &ClusterConfig) -> Result<Self> {
        let kubeconfig = Kubeconfig::read_from(&config.kubeconfig)
            .with_context(|| format!("failed to read {}", config.kubeconfig.display()))?;
        let client_config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("failed to load {}", config.kubeconfig.display()))?;
        let client = Client::try_from(client_config).context("failed to build the kube client")?;
        Ok(Self {
            client,
            namespace: config.namespace.clone(),
            pipeline: config.pipeline.clone(),
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The client, for what the helpers here do not cover.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The pipeline's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `<pipeline>-<component>`, the operator's name for a component's objects.
    pub fn child(&self, component: &str) -> String {
        format!("{}-{component}", self.pipeline)
    }

    pub async fn pipeline(&self) -> Result<OrderPipeline> {
        self.api::<OrderPipeline>()
            .get(&self.pipeline)
            .await
            .with_context(|| {
                format!(
                    "failed to read orderpipeline/{} in namespace {} (is it applied?)",
                    self.pipeline, self.namespace
                )
            })
    }

    /// Waits until the pipeline is Ready for its current generation: what
    /// `kubectl wait --for=condition=Ready orderpipeline/<name>` waits for, plus
    /// `status.observedGeneration == metadata.generation`, so a Ready left over from before the
    /// last change does not count.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<OrderPipeline> {
        self.wait_pipeline("the pipeline to be Ready", timeout, |_| Ok(()))
            .await
    }

    /// Waits until the pipeline is Ready for its current generation and `check` passes.
    async fn wait_pipeline(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&OrderPipeline) -> Result<()>,
    ) -> Result<OrderPipeline> {
        let started = Instant::now();
        loop {
            let pipeline = self.pipeline().await?;
            let verdict = ready_for_generation(&pipeline).and_then(|()| check(&pipeline));
            match verdict {
                Ok(()) => return Ok(pipeline),
                Err(reason) if started.elapsed() >= timeout => {
                    bail!(
                        "waited {timeout:?} for {what}: {reason:#}; status: {}",
                        serde_json::to_string(&pipeline.status).unwrap_or_default()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Forwards a local port to the `http` port of a Ready pod behind the component's Service
    /// (the Service's own selector picks the pods), as `kubectl port-forward svc/...` does.
    pub async fn forward_service(&self, component: &str) -> Result<PortForward> {
        let name = self.child(component);
        let service = self
            .api::<Service>()
            .get(&name)
            .await
            .with_context(|| format!("failed to read service/{name}"))?;
        let spec = service.spec.unwrap_or_default();
        let selector = spec
            .selector
            .filter(|selector| !selector.is_empty())
            .with_context(|| format!("service/{name} has no selector"))?;
        let target = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|port| port.name.as_deref() == Some("http"))
            .with_context(|| format!("service/{name} has no port named http"))?
            .target_port
            .with_context(|| format!("service/{name}'s http port has no targetPort"))?;
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods = self.api::<Pod>();
        let mut candidates = pods
            .list(&ListParams::default().labels(&labels.join(",")))
            .await
            .with_context(|| format!("failed to list the pods of service/{name}"))?
            .items;
        candidates.sort_by_key(ResourceExt::name_any);
        let pod = candidates
            .into_iter()
            .find(pod_ready)
            .with_context(|| format!("service/{name} has no Ready pod"))?;
        let port = match target {
            IntOrString::Int(port) => u16::try_from(port)?,
            IntOrString::String(port_name) => container_port(&pod, &port_name)
                .with_context(|| format!("pod {} has no port named {port_name}", pod.name_any()))?,
        };
        PortForward::start(pods, pod.name_any(), port).await
    }

    /// Forwards a local port to `port` of the pod `pod` (a managed dependency's, say
    /// `<pipeline>-redis-0`), as `kubectl port-forward pod/...` does.
    pub async fn forward_pod(&self, pod: &str, port: u16) -> Result<PortForward> {
        PortForward::start(self.api::<Pod>(), pod.to_owned(), port).await
    }

    /// Sets stock with `redis-cli` in the managed Redis pod (see [`RedisExec`]).
    pub async fn redis_inventory(&self) -> Result<RedisExec> {
        let pipeline = self.pipeline().await?;
        ensure!(
            pipeline.spec.redis.managed.is_some(),
            "spec.redis is external: the suite sets stock through the managed Redis pod only"
        );
        // The operator sets no key prefix; a user may through a workload's `env`.
        let processor = self
            .api::<Deployment>()
            .get(&self.child("processor"))
            .await
            .with_context(|| format!("failed to read deployment/{}", self.child("processor")))?;
        let prefix = processor
            .spec
            .and_then(|spec| spec.template.spec)
            .and_then(|pod| pod.containers.into_iter().next())
            .and_then(|container| container.env)
            .unwrap_or_default()
            .into_iter()
            .find(|variable| variable.name == env::REDIS_KEY_PREFIX)
            .and_then(|variable| variable.value)
            .unwrap_or_default();
        Ok(RedisExec {
            pods: self.api(),
            pod: format!("{}-0", self.child("redis")),
            keys: Keys::new(prefix),
        })
    }

    /// A component's Deployment: its desired replicas, and the list parameters that select its
    /// pods.
    async fn deployment_pods(&self, component: &str) -> Result<(usize, ListParams)> {
        let name = self.child(component);
        let deployment = self
            .api::<Deployment>()
            .get(&name)
            .await
            .with_context(|| format!("failed to read deployment/{name}"))?;
        let spec = deployment.spec.unwrap_or_default();
        let desired = usize::try_from(spec.replicas.unwrap_or(1))?;
        let selector = spec
            .selector
            .match_labels
            .filter(|labels| !labels.is_empty())
            .with_context(|| format!("deployment/{name} has no matchLabels"))?;
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok((desired, ListParams::default().labels(&labels.join(","))))
    }

    /// The names of the pods `list` selects that are Ready and not terminating.
    async fn ready_pods(&self, list: &ListParams) -> Result<Vec<String>> {
        Ok(self
            .api::<Pod>()
            .list(list)
            .await?
            .items
            .iter()
            .filter(|pod| pod_ready(pod) && pod.metadata.deletion_timestamp.is_none())
            .map(ResourceExt::name_any)
            .collect())
    }

    /// A Ready pod of a component's Deployment (the first by name).
    pub async fn ready_pod(&self, component: &str) -> Result<String> {
        let (_, list) = self.deployment_pods(component).await?;
        let mut ready = self.ready_pods(&list).await?;
        ready.sort();
        ready
            .into_iter()
            .next()
            .with_context(|| format!("deployment/{} has no Ready pod", self.child(component)))
    }

    /// Deletes every running pod of a component's Deployment at once, with no grace period (the
    /// kubelet kills the containers as a crash would), and waits until the Deployment has its
    /// desired number of Ready pods, none of them a deleted one. Returns the deleted pods' names.
    pub async fn kill_pods(&self, component: &str, timeout: Duration) -> Result<Vec<String>> {
        let name = self.child(component);
        let (desired, list) = self.deployment_pods(component).await?;
        let pods = self.api::<Pod>();
        let victims: Vec<String> = pods
            .list(&list)
            .await
            .with_context(|| format!("failed to list the pods of deployment/{name}"))?
            .items
            .iter()
            // A pod already terminating (from an earlier scale-down) is not one to kill.
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .map(ResourceExt::name_any)
            .collect();
        ensure!(!victims.is_empty(), "deployment/{name} has no pods to kill");
        let now = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        for victim in &victims {
            pods.delete(victim, &now)
                .await
                .with_context(|| format!("failed to delete pod/{victim}"))?;
        }
        let started = Instant::now();
        loop {
            let ready = self.ready_pods(&list).await?;
            if ready.len() >= desired && ready.iter().all(|pod| !victims.contains(pod)) {
                return Ok(victims);
            }
            if started.elapsed() >= timeout {
                bail!(
                    "waited {timeout:?} for deployment/{name} to replace {victims:?}; Ready now: \
                     {ready:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deletes one pod (of a StatefulSet: it comes back under the same name) with no grace
    /// period, and waits until a pod of that name with a new UID is Ready. Returns how long that
    /// took.
    pub async fn delete_pod(&self, pod: &str, timeout: Duration) -> Result<Duration> {
        let deleted = self.delete_pod_now(pod).await?;
        self.wait_replaced(&deleted, timeout).await
    }

    /// Deletes one pod with no grace period (the kubelet kills its containers as a crash would)
    /// and returns it, to wait for its replacement with [`Cluster::wait_replaced`].
    pub async fn delete_pod_now(&self, pod: &str) -> Result<Pod> {
        let pods = self.api::<Pod>();
        let victim = pods
            .get(pod)
            .await
            .with_context(|| format!("failed to read pod/{pod}"))?;
        let now = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        pods.delete(pod, &now)
            .await
            .with_context(|| format!("failed to delete pod/{pod}"))?;
        Ok(victim)
    }

    /// Waits until a pod of the deleted one's name, with another UID, is Ready; returns how long
    /// that took.
    pub async fn wait_replaced(&self, deleted: &Pod, timeout: Duration) -> Result<Duration> {
        let pods = self.api::<Pod>();
        let name = deleted.name_any();
        let started = Instant::now();
        loop {
            if let Some(current) = pods.get_opt(&name).await?
                && current.metadata.uid != deleted.metadata.uid
                && current.metadata.deletion_timestamp.is_none()
                && pod_ready(&current)
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                bail!("waited {timeout:?} for pod/{name} to be replaced and Ready");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Runs `command` in a container of one of the pipeline's pods; its stdout, or its stderr
    /// as the error.
    pub async fn exec_in(&self, pod: &str, container: &str, command: &[&str]) -> Result<String> {
        exec(&self.api(), pod, container, command).await
    }

    /// Sets `spec.processor.replicas` with a merge patch and waits until the status reports the
    /// processor's desired and ready replicas at `replicas`, the Deployment has that many ready,
    /// and the pipeline is Ready for the new generation.
    pub async fn scale_processor(&self, replicas: i32, timeout: Duration) -> Result<()> {
        let patch = json!({"spec": {"processor": {"replicas": replicas}}});
        let patched = self
            .api::<OrderPipeline>()
            .patch(
                &self.pipeline,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("failed to patch spec.processor.replicas to {replicas}"))?;
        ensure!(
            patched.spec.processor.workload.replicas == replicas,
            "the patch did not set spec.processor.replicas"
        );
        let expected = ComponentStatus {
            desired_replicas: replicas,
            ready_replicas: replicas,
        };
        self.wait_pipeline(
            &format!("status.components.processor to be {replicas}/{replicas}"),
            timeout,
            |pipeline| {
                let actual = pipeline
                    .status
                    .as_ref()
                    .and_then(|status| status.components.get("processor"));
                ensure!(
                    actual == Some(&expected),
                    "status.components.processor is {actual:?}"
                );
                Ok(())
            },
        )
        .await?;
        let name = self.child("processor");
        let deployments = self.api::<Deployment>();
        let started = Instant::now();
        loop {
            let deployment = deployments
                .get(&name)
                .await
                .with_context(|| format!("failed to read deployment/{name}"))?;
            let desired = deployment.spec.as_ref().and_then(|spec| spec.replicas);
            let status = deployment.status.unwrap_or_default();
            let seen = (desired, status.replicas, status.ready_replicas);
            if seen == (Some(replicas), Some(replicas), Some(replicas)) {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                bail!(
                    "waited {timeout:?} for deployment/{name} to have {replicas} ready replicas; \
                     (spec, status, ready) replicas are {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Ready=True, observed for the current generation.
fn ready_for_generation(pipeline: &OrderPipeline) -> Result<()> {
    let status = pipeline.status.as_ref().context("no status yet")?;
    let generation = pipeline.metadata.generation;
    ensure!(
        status.observed_generation == generation,
        "status.observedGeneration {:?} is not metadata.generation {generation:?}",
        status.observed_generation
    );
    let ready = status
        .conditions
        .iter()
        .find(|condition| condition.type_ == "Ready")
        .context("no Ready condition")?;
    ensure!(
        ready.status == "True",
        "Ready is {} ({}: {})",
        ready.status,
        ready.reason,
        ready.message
    );
    Ok(())
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True")
            })
}

fn container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|container| container.ports.iter().flatten())
        .find(|port| port.name.as_deref() == Some(name))
        .and_then(|port| u16::try_from(port.container_port).ok())
}

/// A local listener on 127.0.0.1 whose connections are each bridged to a pod's port through the
/// API server (one port-forward stream per connection, as `kubectl port-forward` does). Stops
/// when dropped.
#[derive(Debug)]
pub struct PortForward {
    pub local: SocketAddr,
    pub pod: String,
    accept: JoinHandle<()>,
}

impl PortForward {
    async fn start(pods: Api<Pod>, pod: String, port: u16) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("failed to bind a local port for the port-forward")?;
        let local = listener.local_addr()?;
        let target = pod.clone();
        let accept = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                let (pods, target) = (pods.clone(), target.clone());
                tokio::spawn(async move {
                    if let Err(error) = bridge(&pods, &target, port, connection).await {
                        eprintln!("port-forward to pod {target}:{port}: {error:#}");
                    }
                });
            }
        });
        Ok(Self { local, pod, accept })
    }

    /// `http://127.0.0.1:<local port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn bridge(pods: &Api<Pod>, pod: &str, port: u16, mut connection: TcpStream) -> Result<()> {
    let mut forwarder = pods
        .portforward(pod, &[port])
        .await
        .context("failed to open the port-forward")?;
    let mut upstream = forwarder
        .take_stream(port)
        .context("the port-forward has no stream")?;
    tokio::io::copy_bidirectional(&mut connection, &mut upstream)
        .await
        .context("copying")?;
    drop(upstream);
    forwarder.join().await.context("closing the port-forward")?;
    Ok(())
}

/// Sets stock the seed's way, `redis-cli SET inventory:<sku> <level>`, exec'd in the managed
/// Redis pod (the cluster's `docker exec <redis container> redis-cli ...`). The password never
/// leaves the cluster: the container already has it as `REDIS_PASSWORD` (from the generated
/// Secret), and `redis-cli` reads it from `REDISCLI_AUTH`, so it is on no command line and the
/// suite needs no right to read Secrets. The key honours a `REDIS_KEY_PREFIX` the user set on
/// the workloads (the operator sets none).
#[derive(Debug, Clone)]
pub struct RedisExec {
    pods: Api<Pod>,
    pod: String,
    keys: Keys,
}

impl Inventory for RedisExec {
    async fn set(&self, sku: &str, level: i64) -> Result<()> {
        let key = self.keys.inventory(sku);
        let level = level.to_string();
        let command = [
            "sh",
            "-c",
            r#"REDISCLI_AUTH="$REDIS_PASSWORD" exec redis-cli SET "$1" "$2""#,
            "sh",
            key.as_str(),
            level.as_str(),
        ];
        let output = exec(&self.pods, &self.pod, "redis", &command).await?;
        ensure!(
            output.trim() == "OK",
            "redis-cli SET {key} {level} in pod {} answered {output:?}",
            self.pod
        );
        Ok(())
    }
}

/// Runs `command` in a container and returns its stdout; fails with its stderr unless it exits 0.
async fn exec(pods: &Api<Pod>, pod: &str, container: &str, command: &[&str]) -> Result<String> {
    let params = AttachParams::default()
        .container(container)
        .stdout(true)
        .stderr(true);
    let mut process = pods
        .exec(pod, command.to_vec(), &params)
        .await
        .with_context(|| format!("failed to exec {command:?} in pod {pod}"))?;
    let mut stdout = process.stdout().context("exec has no stdout")?;
    let mut stderr = process.stderr().context("exec has no stderr")?;
    let status = process.take_status().context("exec has no status")?;
    let (mut out, mut err) = (String::new(), String::new());
    let (read_out, read_err) = tokio::join!(
        stdout.read_to_string(&mut out),
        stderr.read_to_string(&mut err)
    );
    read_out.context("reading the exec's stdout")?;
    read_err.context("reading the exec's stderr")?;
    let status = status.await;
    process.join().await.context("the exec did not finish")?;
    let succeeded = status.as_ref().and_then(|status| status.status.as_deref()) == Some("Success");
    ensure!(
        succeeded,
        "{command:?} in pod {pod} failed: {status:?}; stderr: {err}"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config(values: &[(&str, &str)]) -> Option<ClusterConfig> {
        let values: BTreeMap<String, String> = values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ClusterConfig::from_lookup(|name| values.get(name).cloned())
    }

    #[test]
    fn no_kubeconfig_means_no_suite_and_no_fallback() {
        assert!(config(&[]).is_none());
        assert!(config(&[("E2E_KUBECONFIG", " ")]).is_none());
        assert!(config(&[("KUBECONFIG", "/root/.kube/config")]).is_none());
    }

    #[test]
    fn defaults_are_the_samples_pipeline_in_the_default_namespace() {
        let config = config(&[("E2E_KUBECONFIG", "/tmp/kind")]).unwrap();
        assert_eq!(config.kubeconfig, PathBuf::from("/tmp/kind"));
        assert_eq!(config.namespace, "default");
        assert_eq!(config.pipeline, "shop");
        let named = super::tests::config(&[
            ("E2E_KUBECONFIG", "/tmp/kind"),
            ("E2E_NAMESPACE", "store"),
            ("E2E_PIPELINE", "eu"),
        ])
        .unwrap();
        assert_eq!(
            (named.namespace.as_str(), named.pipeline.as_str()),
            ("store", "eu")
        );
    }

    fn pipeline(status: serde_json::Value, generation: i64) -> OrderPipeline {
        serde_json::from_value(json!({
            "apiVersion": "orderpipeline.dev/v1alpha1",
            "kind": "OrderPipeline",
            "metadata": {"name": "shop", "namespace": "default", "generation": generation},
            "spec": {},
            "status": status,
        }))
        .unwrap()
    }

    fn ready(status: &str, observed: i64) -> serde_json::Value {
        json!({
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": status, "reason": "r", "message": "m",
                            "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        })
    }

    #[test]
    fn ready_means_ready_true_for_the_current_generation() {
        assert!(ready_for_generation(&pipeline(ready("True", 2), 2)).is_ok());
        let stale = ready_for_generation(&pipeline(ready("True", 1), 2)).unwrap_err();
        assert!(stale.to_string().contains("observedGeneration"), "{stale}");
        assert!(ready_for_generation(&pipeline(ready("False", 2), 2)).is_err());
        assert!(ready_for_generation(&pipeline(json!({}), 2)).is_err());
    }

    #[test]
    fn pods_are_ready_only_with_ready_true_and_not_terminating() {
        let pod = |ready: &str, deleting: bool| -> Pod {
            let mut value = json!({
                "metadata": {"name": "p"},
                "status": {"conditions": [{"type": "Ready", "status": ready}]},
            });
            if deleting {
                value["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
            }
            serde_json::from_value(value).unwrap()
        };
        assert!(pod_ready(&pod("True", false)));
        assert!(!pod_ready(&pod("False", false)));
        assert!(!pod_ready(&pod("True", true)));
    }

    #[test]
    fn named_target_ports_resolve_to_the_containers_port() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "gateway", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "admin", "containerPort": 9090},
            ]}]},
        }))
        .unwrap();
        assert_eq!(container_port(&pod, "http"), Some(8080));
        assert_eq!(container_port(&pod, "admin"), Some(9090));
        assert_eq!(container_port(&pod, "grpc"), None);
    }
}
