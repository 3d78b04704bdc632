//! The text the real node is configured with: containerd, the CNI network, kubelet, kube-proxy,
//! CoreDNS and the cluster's add-on objects. Pure functions of [`Node`], so each file can be
//! read in a test without starting anything.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::env::kube::{CLUSTER_DOMAIN, Ports, SERVICE_CIDR};

/// The cluster's control plane: the kwok environment's ports plus 10000, so both can run at once
/// (tests against the environment while the cluster is up); the API server on the node's
/// address.
pub const CONTROL_PLANE_PORTS: Ports = Ports {
    apiserver_address: NODE_IP,
    etcd_client: 12379,
    etcd_peer: 12380,
    apiserver: 16443,
    controller_manager: 20257,
    scheduler: 20259,
};
/// The one node's name, as kubelet registers it and its certificate names it.
pub const NODE_NAME: &str = "op-node";
/// The Linux bridge the pods' veths attach to. It also carries the node's address: this kernel
/// has no dummy interface, and the address must exist before kubelet starts.
pub const BRIDGE: &str = "op0";
/// The node's address, the pods' gateway, and where the API server, kubelet and CoreDNS answer
/// the pods.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The pods' addresses (one node, one range).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// What the firewall rules guard: everything the cluster addresses, pods and Services.
pub const CLUSTER_CIDRS: [&str; 2] = [POD_CIDR, SERVICE_CIDR];
/// kubelet's API, on the node's address.
pub const KUBELET_PORT: u16 = 10250;
/// The image every pod sandbox runs, built from the release's pause.c and imported under this
/// name, so containerd never looks for `registry.k8s.io/pause`.
pub const PAUSE_IMAGE: &str = "localhost/order-pipeline/pause:v1.34.4";
/// The registries image references may name. Each is pointed at a closed local port, so a pull
/// that should not happen fails at once instead of leaving the machine.
/// `_default` covers every other host (containerd 1.6.20 reads it; a pull of `example.invalid/x`
/// was seen to go to the closed port).
pub const REGISTRIES: [&str; 6] = [
    "_default",
    "docker.io",
    "registry.k8s.io",
    "quay.io",
    "ghcr.io",
    "localhost",
];
/// A port nothing listens on (discard; not served here).
pub const CLOSED_REGISTRY: &str = "http://127.0.0.1:9";
/// CoreDNS's health and readiness endpoints, on loopback only.
pub const COREDNS_HEALTH_PORT: u16 = 10054;
pub const COREDNS_READY_PORT: u16 = 10181;
/// kubelet's healthz on loopback.
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// kube-proxy's metrics and healthz on loopback.
pub const KUBE_PROXY_METRICS_PORT: u16 = 10249;
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
/// How many hostPath volumes the default StorageClass offers; a pipeline's three managed
/// dependencies take one each. A volume whose claim was deleted stays `Released` until `down`
/// (there is no provisioner to recycle it), so there are enough for a few pipelines' worth of
/// claims made and deleted in one `up`.
pub const VOLUMES: usize = 16;
/// The size each volume advertises (hostPath cannot enforce it; the disk is shared).
pub const VOLUME_SIZE: &str = "10Gi";

/// Where a node's files are: configuration and state under the cluster's run directory, the
/// sockets and runtime state under `/run` (tmpfs, as containerd expects).
#[derive(Debug, Clone)]
pub struct Node {
    /// `run/cluster/` under the project's home.
    pub dir: PathBuf,
    /// `/run/order-pipeline/`: containerd's socket and state.
    pub runtime_dir: PathBuf,
}

impl Node {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            runtime_dir: PathBuf::from("/run/order-pipeline"),
        }
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd/config.toml")
    }
    /// Images and snapshots: kept across `down`, so the next `up` imports nothing unchanged.
    pub fn containerd_root(&self) -> PathBuf {
        self.dir.join("containerd/root")
    }
    pub fn containerd_state(&self) -> PathBuf {
        self.runtime_dir.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.runtime_dir.join("containerd.sock")
    }
    pub fn registry_hosts(&self) -> PathBuf {
        self.dir.join("containerd/certs.d")
    }
    pub fn cni_config_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.dir.join("cni-ipam")
    }
    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    /// kubelet's own serving certificate (self-signed, made at its first start).
    pub fn kubelet_cert_dir(&self) -> PathBuf {
        self.dir.join("kubelet-pki")
    }
    /// The containers' logs (`kubectl logs` reads them through kubelet).
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
    /// runc's state, apart from any other runc user's `/run/containerd/runc`.
    pub fn runc_root(&self) -> PathBuf {
        self.runtime_dir.join("runc")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet.yaml")
    }
    /// An empty resolv.conf: pods with `dnsPolicy: Default` get no resolver of the host's.
    pub fn kubelet_resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn kube_proxy_config(&self) -> PathBuf {
        self.dir.join("kube-proxy.yaml")
    }
    pub fn corefile(&self) -> PathBuf {
        self.dir.join("Corefile")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.dir.join("volumes")
    }
    pub fn addons(&self) -> PathBuf {
        self.dir.join("addons.yaml")
    }
}

/// containerd 1.6's configuration (version 2 schema): its own root, state and socket so it never
/// meets another containerd on the machine, cgroupfs (PID 1 is not systemd), Debian's CNI plugins,
/// and no registry reachable.
pub fn containerd_toml(node: &Node) -> String {
    format!(
        r#"# Written by `cargo xtask cluster up`.
version = 2
root = "{root}"
state = "{state}"
# Plugins this node never uses; fewer start-up warnings and nothing created under /opt.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This VM's root lacks CAP_SYS_RESOURCE, so the -998 kubelet asks for every sandbox cannot be
  # written and runc fails; with this, containerd clamps to what it may set.
  restrict_oom_score_adj = true
  # hugetlb is mounted only on the cgroup2 hierarchy here, not with the v1 controllers.
  tolerate_missing_hugepages_controller = true
  enable_selinux = false
  # Pod network namespaces under the state directory, not the machine's /run/netns, so teardown
  # finds exactly this node's.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
"#,
        root = node.containerd_root().display(),
        state = node.containerd_state().display(),
        socket = node.containerd_socket().display(),
        pause = PAUSE_IMAGE,
        cni = node.cni_config_dir().display(),
        hosts = node.registry_hosts().display(),
        runc = node.runc_root().display(),
    )
}

/// A registry's `hosts.toml`: every pull and resolve goes to a closed loopback port.
pub fn registry_hosts_toml() -> String {
    format!(
        "# Written by `cargo xtask cluster up`: no registry is reachable from this node; every \
         image is imported.\nserver = \"{CLOSED_REGISTRY}\"\n\n[host.\"{CLOSED_REGISTRY}\"]\n  \
         capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The pods' network: Debian's `bridge` plugin on [`BRIDGE`] with `host-local` addresses from
/// [`POD_CIDR`] (the bridge is the gateway; no masquerading, as nothing may leave), and
/// `portmap` for hostPorts.
pub fn cni_conflist(node: &Node) -> String {
    let gateway = NODE_IP;
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "order-pipeline",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{ipam}",
        "ranges": [[{{"subnet": "{POD_CIDR}", "gateway": "{gateway}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
        ipam = node.cni_ipam_dir().display(),
    )
}

/// kubelet's configuration file.
pub fn kubelet_yaml(node: &Node, client_ca: &Path) -> String {
    format!(
        r#"# Written by `cargo xtask cluster up`.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1 (hybrid): supported in 1.34, refused by default from 1.35.
failCgroupV1: false
# PID 1 is not systemd. containerd 1.6 cannot report its driver (that RPC is 2.0+), so kubelet
# goes by this setting, which must match containerd's SystemdCgroup = false.
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
address: {NODE_IP}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {KUBELET_HEALTHZ_PORT}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {client_ca}
authorization:
  mode: Webhook
clusterDNS:
- {NODE_IP}
clusterDomain: {CLUSTER_DOMAIN}
resolvConf: {resolv}
# The node shares the machine with its builds; evict only when really short.
evictionHard:
  memory.available: 200Mi
  nodefs.available: 2%
  nodefs.inodesFree: 2%
  imagefs.available: 2%
# Every image is imported, none can be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
failSwapOn: true
maxPods: 110
containerLogMaxSize: 10Mi
podLogsDir: {pod_logs}
"#,
        socket = node.containerd_socket().display(),
        client_ca = client_ca.display(),
        resolv = node.kubelet_resolv_conf().display(),
        pod_logs = node.pod_logs_dir().display(),
    )
}

/// kube-proxy's configuration: iptables mode (this kernel has no IPVS), NodePorts on loopback and
/// the node's bridge only, and no conntrack tuning of the shared machine.
pub fn kube_proxy_yaml(kubeconfig: &Path) -> String {
    format!(
        r#"# Written by `cargo xtask cluster up`.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_CIDR}
nodePortAddresses:
- 127.0.0.0/8
- {POD_CIDR}
iptables:
  localhostNodePorts: true
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
metricsBindAddress: 127.0.0.1:{KUBE_PROXY_METRICS_PORT}
healthzBindAddress: 127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}
"#,
        kubeconfig = kubeconfig.display(),
    )
}

/// CoreDNS on the host, at the node's address: it answers the cluster's names from the API server
/// and NXDOMAIN for everything else. There is no `forward`: no pod's query ever leaves the machine.
pub fn corefile(kubeconfig: &Path) -> String {
    format!(
        r#"# Written by `cargo xtask cluster up`.
{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{COREDNS_HEALTH_PORT}
    ready 127.0.0.1:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 30
    }}
    cache 30
    loadbalance
    reload
}}
.:53 {{
    bind {NODE_IP}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"#,
        kubeconfig = kubeconfig.display(),
    )
}

/// What the cluster needs beyond the bootstrap policy, as one multi-document manifest: the API
/// server's right to use kubelet's API, CoreDNS's read access, the default StorageClass and its
/// hostPath volumes.
pub fn addons(node: &Node, coredns_user: &str, apiserver_kubelet_user: &str) -> String {
    let mut text = format!(
        r#"# Written by `cargo xtask cluster up`.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: order-pipeline:kube-apiserver-kubelet-client
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: {apiserver_kubelet_user}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:kubelet-api-admin
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: {coredns_user}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
"#
    );
    for index in 0..VOLUMES {
        text.push_str(&format!(
            r#"---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: {NODE_NAME}-volume-{index}
spec:
  capacity:
    storage: {VOLUME_SIZE}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard
  hostPath:
    path: {path}
    type: Directory
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - key: kubernetes.io/hostname
          operator: In
          values: [{NODE_NAME}]
"#,
            path = volume_path(node, index).display(),
        ));
    }
    text
}

pub fn volume_path(node: &Node, index: usize) -> PathBuf {
    node.volumes_dir().join(index.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node::new(PathBuf::from("/home/op/run/cluster"))
    }

    #[test]
    fn containerd_runs_apart_on_cgroupfs_with_the_imported_pause_image() {
        let text = containerd_toml(&node());
        assert!(text.contains(r#"root = "/home/op/run/cluster/containerd/root""#));
        assert!(text.contains(r#"address = "/run/order-pipeline/containerd.sock""#));
        assert!(text.contains("SystemdCgroup = false"));
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains(&format!(r#"sandbox_image = "{PAUSE_IMAGE}""#)));
        assert!(text.contains(r#"bin_dir = "/usr/lib/cni""#));
        assert!(text.contains(r#"config_path = "/home/op/run/cluster/containerd/certs.d""#));
        assert!(text.contains(r#"Root = "/run/order-pipeline/runc""#));
        assert!(text.contains("netns_mounts_under_state_dir = true"));
    }

    #[test]
    fn the_pod_network_is_the_bridge_with_the_node_as_gateway_and_no_masquerade() {
        let text = cni_conflist(&node());
        let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(json["cniVersion"], "1.0.0");
        let bridge = &json["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], BRIDGE);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], POD_CIDR);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "10.244.0.1");
        assert_eq!(bridge["ipam"]["dataDir"], "/home/op/run/cluster/cni-ipam");
        assert_eq!(json["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn kubelet_uses_cgroupfs_on_cgroup_v1_and_answers_only_with_authentication() {
        let text = kubelet_yaml(&node(), Path::new("/pki/ca.crt"));
        assert!(text.contains("failCgroupV1: false"));
        assert!(text.contains("cgroupDriver: cgroupfs"));
        assert!(
            text.contains("containerRuntimeEndpoint: unix:///run/order-pipeline/containerd.sock")
        );
        assert!(text.contains("readOnlyPort: 0"));
        assert!(text.contains("anonymous:\n    enabled: false"));
        assert!(text.contains("mode: Webhook"));
        assert!(text.contains("clusterDNS:\n- 10.244.0.1"));
        assert!(text.contains("resolvConf: /home/op/run/cluster/resolv.conf"));
        // Nothing of the node's under the machine's /var/log/pods.
        assert!(text.contains("podLogsDir: /home/op/run/cluster/pod-logs"));
    }

    #[test]
    fn node_ports_answer_on_loopback_and_the_bridge_only() {
        let text = kube_proxy_yaml(Path::new("/k/kube-proxy.kubeconfig"));
        assert!(text.contains("mode: iptables"));
        assert!(text.contains("nodePortAddresses:\n- 127.0.0.0/8\n- 10.244.0.0/24\n"));
        assert!(text.contains("maxPerCore: 0"));
    }

    #[test]
    fn dns_answers_the_cluster_and_forwards_nothing() {
        let text = corefile(Path::new("/k/coredns.kubeconfig"));
        assert!(!text.contains("forward"), "{text}");
        assert!(text.contains("kubernetes cluster.local in-addr.arpa ip6.arpa"));
        assert!(text.contains("rcode NXDOMAIN"));
        assert_eq!(text.matches("bind 10.244.0.1").count(), 2);
        // The trimmed build links exactly the plugins the Corefile names.
        let mut directives: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#') && !line.ends_with('{') && *line != "}")
            .filter_map(|line| line.split_whitespace().next())
            .filter(|word| !["kubeconfig", "pods", "ttl", "rcode"].contains(word))
            .chain(["kubernetes", "template"])
            .collect();
        directives.sort_unstable();
        directives.dedup();
        let mut linked = crate::env::kube::build::COREDNS_PLUGINS.to_vec();
        linked.sort_unstable();
        assert_eq!(directives, linked);
    }

    #[test]
    fn addons_offer_a_default_class_and_one_volume_per_directory() {
        let text = addons(&node(), "system:coredns", "kube-apiserver-kubelet-client");
        assert!(text.contains("storageclass.kubernetes.io/is-default-class: \"true\""));
        assert_eq!(text.matches("kind: PersistentVolume\n").count(), VOLUMES);
        assert!(text.contains("path: /home/op/run/cluster/volumes/7\n"));
        assert!(text.contains("name: system:kubelet-api-admin"));
        assert_eq!(text.matches("\n---\n").count(), 3 + VOLUMES);
    }
}
