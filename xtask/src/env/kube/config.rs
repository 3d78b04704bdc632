//! The text the control plane is configured with (kubeconfigs, the fake nodes) and the parsing of
//! what it answers, kept free of I/O so it can be tested.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};

/// Name of the cluster, user entry and context in the kubeconfigs.
const CONTEXT: &str = "order-pipeline";

/// The first usable address of an IPv4 CIDR; the API server gives it to the `kubernetes` Service,
/// so the serving certificate must name it.
pub fn first_host_address(cidr: &str) -> Result<Ipv4Addr> {
    let (address, prefix) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr:?} is not a CIDR"))?;
    let address: Ipv4Addr = address
        .parse()
        .with_context(|| format!("{cidr:?} does not start with an IPv4 address"))?;
    let prefix: u32 = prefix
        .parse()
        .with_context(|| format!("{cidr:?} has no numeric prefix length"))?;
    if prefix > 30 {
        bail!("{cidr:?} has no room for a host address");
    }
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Ok(Ipv4Addr::from((u32::from(address) & mask) + 1))
}

/// A kubeconfig for one identity with everything embedded, so it keeps working when copied
/// (into a container, another shell's `$KUBECONFIG`) and no client has to resolve relative paths.
pub fn kubeconfig(
    server: &str,
    ca_pem: &[u8],
    user: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> String {
    format!(
        "# Written by `cargo xtask env up`; rewritten on every `up`.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {CONTEXT}\n\
         \x20 cluster:\n\
         \x20   server: {server}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n\
         - name: {user}\n\
         \x20 user:\n\
         \x20   client-certificate-data: {cert}\n\
         \x20   client-key-data: {key}\n\
         contexts:\n\
         - name: {CONTEXT}\n\
         \x20 context:\n\
         \x20   cluster: {CONTEXT}\n\
         \x20   user: {user}\n\
         current-context: {CONTEXT}\n\
         preferences: {{}}\n",
        ca = base64(ca_pem),
        cert = base64(cert_pem),
        key = base64(key_pem),
    )
}

/// Standard base64 with padding, as kubeconfig's `*-data` fields expect.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The Kubernetes name of the machine's architecture, for the nodes' `kubernetes.io/arch`, so
/// images and charts that select on it schedule the way they would on a real node of this host.
fn kubernetes_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A fake node for kwok: the annotation kwok selects its nodes by, the well-known labels, room for
/// any test's Pods, and its own Pod CIDR and address so Pods get distinct, valid IPs (10.88.0.0/24
/// and 10.244.0.0/16 are outside the Service range and never routed anywhere). Status is only
/// honoured on creation; kwok fills in conditions and keeps them current. `kubelet_version` is
/// what the node reports, so version-skew checks see a kubelet matching the control plane.
pub fn node_manifest(
    name: &str,
    index: usize,
    annotation: (&str, &str),
    kubelet_version: &str,
) -> String {
    let (annotation_key, annotation_value) = annotation;
    let arch = kubernetes_arch();
    format!(
        "apiVersion: v1\n\
         kind: Node\n\
         metadata:\n\
         \x20 name: {name}\n\
         \x20 annotations:\n\
         \x20   {annotation_key}: {annotation_value}\n\
         \x20 labels:\n\
         \x20   kubernetes.io/arch: {arch}\n\
         \x20   kubernetes.io/hostname: {name}\n\
         \x20   kubernetes.io/os: linux\n\
         \x20   node.kubernetes.io/instance-type: kwok\n\
         \x20   topology.kubernetes.io/zone: zone-{index}\n\
         \x20   type: kwok\n\
         spec:\n\
         \x20 podCIDR: 10.244.{index}.0/24\n\
         \x20 podCIDRs:\n\
         \x20 - 10.244.{index}.0/24\n\
         status:\n\
         \x20 addresses:\n\
         \x20 - type: InternalIP\n\
         \x20   address: 10.88.0.{host}\n\
         \x20 - type: Hostname\n\
         \x20   address: {name}\n\
         \x20 allocatable:\n\
         {resources}\
         \x20 capacity:\n\
         {resources}\
         \x20 nodeInfo:\n\
         \x20   architecture: {arch}\n\
         \x20   operatingSystem: linux\n\
         \x20   kubeletVersion: {kubelet_version}\n",
        host = 10 + index,
        // Fake nodes cost nothing: room for the operator benchmark's hundred pipelines (about
        // 700 pods) on three of them.
        resources =
            "    cpu: \"256\"\n    memory: 1Ti\n    pods: \"1000\"\n    ephemeral-storage: 1Ti\n",
    )
}

/// One line per node: name, Ready status, taint keys.
pub const NODE_READINESS_JSONPATH: &str = r#"{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.spec.taints[*].key}{"\n"}{end}"#;

/// Taints the node lifecycle controller keeps on a node until it has seen it Ready; the scheduler
/// will not place Pods there meanwhile.
const NOT_READY_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// What keeps the expected nodes from taking Pods, from a [`NODE_READINESS_JSONPATH`] listing;
/// empty when all are Ready and untainted.
pub fn unready_nodes(listing: &str, expected: &[&str]) -> Vec<String> {
    expected
        .iter()
        .filter_map(|&name| {
            let Some(line) = listing
                .lines()
                .find(|line| line.split_whitespace().next() == Some(name))
            else {
                return Some(format!("{name} does not exist"));
            };
            let mut fields = line.split_whitespace().skip(1);
            if fields.next() != Some("True") {
                return Some(format!("{name} is not Ready"));
            }
            let taints: Vec<&str> = fields
                .filter(|taint| NOT_READY_TAINTS.contains(taint))
                .collect();
            (!taints.is_empty()).then(|| format!("{name} still has taint {}", taints.join(", ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_address_of_service_cidr() {
        assert_eq!(
            first_host_address("10.96.0.0/16").unwrap(),
            Ipv4Addr::new(10, 96, 0, 1)
        );
        assert_eq!(
            first_host_address("10.96.7.9/16").unwrap(),
            Ipv4Addr::new(10, 96, 0, 1)
        );
        assert_eq!(
            first_host_address("0.0.0.0/0").unwrap(),
            Ipv4Addr::new(0, 0, 0, 1)
        );
        assert!(first_host_address("10.96.0.0").is_err());
        assert!(first_host_address("10.96.0.0/31").is_err());
        assert!(first_host_address("fd00::/108").is_err());
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "base64({input:?})");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn kubeconfig_embeds_credentials_and_selects_its_context() {
        let text = kubeconfig("https://127.0.0.1:6443", b"ca", "admin", b"cert", b"key");
        assert!(text.contains("    server: https://127.0.0.1:6443\n"));
        assert!(text.contains("    certificate-authority-data: Y2E=\n"));
        assert!(text.contains("- name: admin\n  user:\n    client-certificate-data: Y2VydA==\n"));
        assert!(text.contains("    client-key-data: a2V5\n"));
        assert!(text.contains("    user: admin\n"));
        assert!(text.contains("current-context: order-pipeline\n"));
    }

    #[test]
    fn node_manifest_is_selected_by_kwok_and_has_capacity() {
        let text = node_manifest("kwok-node-1", 1, ("kwok.x-k8s.io/node", "fake"), "v1.34.4");
        assert!(text.contains("  name: kwok-node-1\n"));
        assert!(text.contains("  annotations:\n    kwok.x-k8s.io/node: fake\n"));
        assert!(text.contains("    kubernetes.io/hostname: kwok-node-1\n"));
        assert!(text.contains("  podCIDR: 10.244.1.0/24\n"));
        assert!(text.contains("    address: 10.88.0.11\n"));
        assert!(text.contains("    cpu: \"256\"\n    memory: 1Ti\n    pods: \"1000\"\n"));
        assert!(text.contains("    kubeletVersion: v1.34.4\n"));
        assert!(!text.contains("taints"));
    }

    #[test]
    fn ready_untainted_nodes_pass() {
        let listing = "kwok-node-0 True \nkwok-node-1 True \nkwok-node-2 True\n";
        assert!(unready_nodes(listing, &["kwok-node-0", "kwok-node-1", "kwok-node-2"]).is_empty());
    }

    #[test]
    fn unready_missing_and_tainted_nodes_are_reported() {
        let listing = "kwok-node-0 False node.kubernetes.io/not-ready\n\
                       kwok-node-1 True node.kubernetes.io/not-ready\n\
                       kwok-node-3 True \n";
        assert_eq!(
            unready_nodes(listing, &["kwok-node-0", "kwok-node-1", "kwok-node-2"]),
            vec![
                "kwok-node-0 is not Ready".to_string(),
                "kwok-node-1 still has taint node.kubernetes.io/not-ready".to_string(),
                "kwok-node-2 does not exist".to_string(),
            ]
        );
    }

    #[test]
    fn a_nodes_own_taints_do_not_block() {
        let listing = "kwok-node-0 True dedicated\n";
        assert!(unready_nodes(listing, &["kwok-node-0"]).is_empty());
    }

    #[test]
    fn node_without_conditions_yet_is_not_ready() {
        assert_eq!(
            unready_nodes("kwok-node-0  \n", &["kwok-node-0"]),
            vec!["kwok-node-0 is not Ready".to_string()]
        );
    }
}
