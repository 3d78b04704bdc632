//! The cluster's certificates and keys, made once with `openssl` and kept under `run/kube/pki/`.
//!
//! The cluster CA signs the API server's serving certificate and the client certificates the
//! admin and each component authenticate with (the API server trusts it through
//! `--client-ca-file` and takes the user from the CN and the groups from O). A second CA, as in a
//! kubeadm cluster, signs only the front proxy's client certificate: whoever holds a certificate
//! from that CA may assert any identity in request headers, so it must not be the CA every client
//! certificate comes from. Configuring it is what lets the controller manager and scheduler
//! delegate authentication to the API server without error, and aggregated API servers work. The
//! service-account key pair is separate again: its private half signs service-account tokens, its
//! public half lets the API server verify them.
//!
//! Each certificate's openssl config is kept next to it; a certificate is made again when the
//! config this code wants differs (say, a new SAN) or when the CA had to be made again.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::super::process::run_capture;

pub const ADMIN: &str = "admin";
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";
pub const KWOK: &str = "kwok";
/// The API server's identity towards aggregated API servers.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
/// The real node's kubelet, as the Node authorizer and NodeRestriction expect it:
/// `system:node:<node name>` in group `system:nodes`.
pub const KUBELET: &str = "kubelet";
/// The bootstrap policy binds `system:node-proxier` to this user.
pub const KUBE_PROXY: &str = "kube-proxy";
/// CoreDNS, running on the node's host; `cluster up` grants it what it reads.
pub const COREDNS: &str = "coredns";
/// The API server's identity towards kubelets (logs, exec, port-forward).
pub const APISERVER_KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";
/// The user names of the two identities above.
pub const COREDNS_USER: &str = "system:coredns";
pub const APISERVER_KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

const CA: &str = "ca";
const FRONT_PROXY_CA: &str = "front-proxy-ca";
/// Each CA's file stem and common name.
const CAS: [(&str, &str); 2] = [
    (CA, "order-pipeline-kubernetes-ca"),
    (FRONT_PROXY_CA, "order-pipeline-front-proxy-ca"),
];
const SERVICE_ACCOUNT: &str = "service-account";
/// Ten years: a developer's environment must never stop working because a certificate expired.
const VALIDITY_DAYS: &str = "3650";

/// One key pair and certificate signed by one of the CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// File stem of its key, certificate and openssl config.
    pub name: &'static str,
    /// File stem of the CA that signs it.
    pub issuer: &'static str,
    /// The Kubernetes user name.
    pub common_name: String,
    /// The Kubernetes group.
    pub organization: Option<&'static str>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server { dns: Vec<String>, ips: Vec<String> },
}

/// Everyone the cluster needs a certificate for.
pub fn identities(service_ip: &Ipv4Addr, cluster_domain: &str) -> Vec<Identity> {
    let client = |name, common_name: &str, organization| Identity {
        name,
        issuer: CA,
        common_name: common_name.to_string(),
        organization,
        usage: Usage::Client,
    };
    vec![
        Identity {
            name: APISERVER,
            issuer: CA,
            common_name: "kube-apiserver".to_string(),
            organization: None,
            usage: Usage::Server {
                // Every name a client may use: loopback from the host, and the `kubernetes`
                // Service's names and ClusterIP for anything that follows in-cluster conventions.
                dns: vec![
                    "localhost".to_string(),
                    "kubernetes".to_string(),
                    "kubernetes.default".to_string(),
                    "kubernetes.default.svc".to_string(),
                    format!("kubernetes.default.svc.{cluster_domain}"),
                ],
                ips: vec!["127.0.0.1".to_string(), service_ip.to_string()],
            },
        },
        client(ADMIN, "kubernetes-admin", Some("system:masters")),
        // These user names are the ones the bootstrap RBAC policy binds the components' roles to.
        client(CONTROLLER_MANAGER, "system:kube-controller-manager", None),
        client(SCHEDULER, "system:kube-scheduler", None),
        // kwok patches node and pod status, holds node leases and deletes pods; upstream grants
        // that through a ClusterRole of its own that would drift from the version we pin. kwok
        // is test machinery, not code under test, so it gets a superuser group under its own
        // name (which audit and managedFields still show).
        client(KWOK, "kwok-controller", Some("system:masters")),
        Identity {
            name: FRONT_PROXY_CLIENT,
            issuer: FRONT_PROXY_CA,
            common_name: FRONT_PROXY_CLIENT.to_string(),
            organization: None,
            usage: Usage::Client,
        },
    ]
}

/// The identities of a control plane with a real node named `node_name` at `node_ip`: the API
/// server also answers at the node's address (pods reach it there through the `kubernetes`
/// Service), and the kubelet, kube-proxy, CoreDNS and the API server's kubelet client get
/// certificates of their own.
pub fn with_real_node(
    mut identities: Vec<Identity>,
    node_ip: &Ipv4Addr,
    node_name: &str,
) -> Vec<Identity> {
    for identity in &mut identities {
        if identity.name == APISERVER
            && let Usage::Server { ips, .. } = &mut identity.usage
        {
            ips.push(node_ip.to_string());
        }
    }
    let client = |name, common_name: String, organization| Identity {
        name,
        issuer: CA,
        common_name,
        organization,
        usage: Usage::Client,
    };
    // kwok has no part in a cluster with a real node.
    identities.retain(|identity| identity.name != KWOK);
    identities.extend([
        client(
            KUBELET,
            format!("system:node:{node_name}"),
            Some("system:nodes"),
        ),
        client(KUBE_PROXY, "system:kube-proxy".to_string(), None),
        client(COREDNS, COREDNS_USER.to_string(), None),
        client(
            APISERVER_KUBELET_CLIENT,
            APISERVER_KUBELET_CLIENT_USER.to_string(),
            None,
        ),
    ]);
    identities
}

/// The PKI directory and the files in it.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.cert(CA)
    }
    pub fn ca_key(&self) -> PathBuf {
        self.key(CA)
    }
    pub fn front_proxy_ca_cert(&self) -> PathBuf {
        self.cert(FRONT_PROXY_CA)
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    fn config(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.cnf"))
    }
    pub fn service_account_private_key(&self) -> PathBuf {
        self.key(SERVICE_ACCOUNT)
    }
    pub fn service_account_public_key(&self) -> PathBuf {
        self.dir.join(format!("{SERVICE_ACCOUNT}.pub"))
    }

    pub fn read_ca_cert(&self) -> Result<Vec<u8>> {
        read(&self.ca_cert())
    }
    pub fn read_cert(&self, name: &str) -> Result<Vec<u8>> {
        read(&self.cert(name))
    }
    pub fn read_key(&self, name: &str) -> Result<Vec<u8>> {
        read(&self.key(name))
    }

    /// Makes whatever is missing or out of date; keeps everything else, so restarts keep their
    /// credentials and the tokens already issued stay valid.
    pub fn ensure(&self, identities: &[Identity]) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("failed to create {}", self.dir.display()))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("failed to restrict {}", self.dir.display()))?;

        for (ca, common_name) in CAS {
            if self.cert(ca).is_file() && self.key(ca).is_file() {
                continue;
            }
            // Certificates signed by a previous CA would no longer be trusted: forgetting their
            // configs makes the loop below sign new ones.
            for identity in identities.iter().filter(|identity| identity.issuer == ca) {
                remove_if_exists(&self.config(identity.name))?;
            }
            self.make_ca(ca, common_name)?;
        }
        for identity in identities {
            let wanted = leaf_config(identity);
            let current = fs::read_to_string(self.config(identity.name)).unwrap_or_default();
            let complete = self.cert(identity.name).is_file() && self.key(identity.name).is_file();
            if !complete || current != wanted {
                self.make_leaf(identity, &wanted)?;
            }
        }
        if !(self.service_account_private_key().is_file()
            && self.service_account_public_key().is_file())
        {
            self.make_service_account_keys()?;
        }
        Ok(())
    }

    fn make_ca(&self, name: &str, common_name: &str) -> Result<()> {
        println!("  creating CA {common_name} in {}", self.dir.display());
        let config = self.config(name);
        write(&config, &ca_config(common_name))?;
        run_capture(
            openssl()
                .args([
                    "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
                ])
                .args(["-days", VALIDITY_DAYS])
                .arg("-config")
                .arg(&config)
                .arg("-keyout")
                .arg(self.key(name))
                .arg("-out")
                .arg(self.cert(name)),
        )
        .with_context(|| format!("failed to create the {name} CA"))?;
        restrict(&self.key(name))
    }

    fn make_leaf(&self, identity: &Identity, config_text: &str) -> Result<()> {
        println!("  issuing the {} certificate", identity.name);
        // The config only takes its final name once the certificate exists, so a failure here is
        // retried on the next `up` instead of being mistaken for an up-to-date certificate.
        let pending_config = self.dir.join(format!("{}.cnf.pending", identity.name));
        let request = self.dir.join(format!("{}.csr", identity.name));
        write(&pending_config, config_text)?;
        run_capture(
            openssl()
                .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256"])
                .arg("-config")
                .arg(&pending_config)
                .arg("-keyout")
                .arg(self.key(identity.name))
                .arg("-out")
                .arg(&request),
        )
        .with_context(|| format!("failed to create the {} key", identity.name))?;
        restrict(&self.key(identity.name))?;
        run_capture(
            openssl()
                .args(["x509", "-req", "-sha256", "-days", VALIDITY_DAYS])
                .arg("-in")
                .arg(&request)
                .arg("-CA")
                .arg(self.cert(identity.issuer))
                .arg("-CAkey")
                .arg(self.key(identity.issuer))
                .arg("-CAcreateserial")
                .arg("-CAserial")
                .arg(self.dir.join(format!("{}.srl", identity.issuer)))
                .arg("-extfile")
                .arg(&pending_config)
                .args(["-extensions", "ext"])
                .arg("-out")
                .arg(self.cert(identity.name)),
        )
        .with_context(|| format!("failed to sign the {} certificate", identity.name))?;
        remove_if_exists(&request)?;
        fs::rename(&pending_config, self.config(identity.name))
            .with_context(|| format!("failed to record {}", self.config(identity.name).display()))
    }

    fn make_service_account_keys(&self) -> Result<()> {
        println!("  creating the service-account signing key");
        let private = self.service_account_private_key();
        run_capture(
            openssl()
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .arg("-out")
                .arg(&private),
        )
        .context("failed to create the service-account key")?;
        restrict(&private)?;
        run_capture(
            openssl()
                .args(["pkey", "-pubout"])
                .arg("-in")
                .arg(&private)
                .arg("-out")
                .arg(self.service_account_public_key()),
        )
        .context("failed to derive the service-account public key")
        .map(drop)
    }
}

/// The CA's openssl config: self-signed, allowed to sign certificates and nothing else. Written
/// out in full so the result does not depend on the machine's openssl.cnf.
pub fn ca_config(common_name: &str) -> String {
    format!(
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         x509_extensions = ca_ext\n\
         [dn]\n\
         CN = {common_name}\n\
         [ca_ext]\n\
         basicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n\
         subjectKeyIdentifier = hash\n"
    )
}

/// A leaf certificate's openssl config: the subject for the request and the extensions (section
/// `ext`) the CA signs in.
pub fn leaf_config(identity: &Identity) -> String {
    let mut text = String::from("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n");
    if let Some(organization) = identity.organization {
        text.push_str(&format!("O = {organization}\n"));
    }
    text.push_str(&format!("CN = {}\n", identity.common_name));
    text.push_str(
        "[ext]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid:always\n",
    );
    match &identity.usage {
        Usage::Client => text.push_str("extendedKeyUsage = clientAuth\n"),
        Usage::Server { dns, ips } => {
            text.push_str("extendedKeyUsage = serverAuth\nsubjectAltName = @alt\n[alt]\n");
            for (index, name) in dns.iter().enumerate() {
                text.push_str(&format!("DNS.{} = {name}\n", index + 1));
            }
            for (index, ip) in ips.iter().enumerate() {
                text.push_str(&format!("IP.{} = {ip}\n", index + 1));
            }
        }
    }
    text
}

fn openssl() -> Command {
    Command::new("openssl")
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("failed to read {}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

/// Private keys are readable by their owner only, whatever the umask.
fn restrict(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("failed to restrict {}", path.display()))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("failed to remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_carries_user_group_and_client_usage_only() {
        let identity = Identity {
            name: ADMIN,
            issuer: CA,
            common_name: "kubernetes-admin".to_string(),
            organization: Some("system:masters"),
            usage: Usage::Client,
        };
        let text = leaf_config(&identity);
        assert!(text.contains("[dn]\nO = system:masters\nCN = kubernetes-admin\n"));
        assert!(text.contains("extendedKeyUsage = clientAuth\n"));
        assert!(text.contains("basicConstraints = critical, CA:FALSE\n"));
        assert!(!text.contains("subjectAltName"));
        assert!(!text.contains("serverAuth"));
    }

    #[test]
    fn component_config_has_no_organization_line() {
        let identity = Identity {
            name: SCHEDULER,
            issuer: CA,
            common_name: "system:kube-scheduler".to_string(),
            organization: None,
            usage: Usage::Client,
        };
        assert!(leaf_config(&identity).contains("[dn]\nCN = system:kube-scheduler\n[ext]\n"));
    }

    #[test]
    fn apiserver_certificate_names_loopback_and_the_kubernetes_service() {
        let identities = identities(&Ipv4Addr::new(10, 96, 0, 1), "cluster.local");
        let apiserver = identities
            .iter()
            .find(|identity| identity.name == APISERVER)
            .unwrap();
        let text = leaf_config(apiserver);
        assert!(text.contains("extendedKeyUsage = serverAuth\nsubjectAltName = @alt\n[alt]\n"));
        for san in [
            "DNS.1 = localhost\n",
            "DNS.2 = kubernetes\n",
            "DNS.5 = kubernetes.default.svc.cluster.local\n",
            "IP.1 = 127.0.0.1\n",
            "IP.2 = 10.96.0.1\n",
        ] {
            assert!(text.contains(san), "missing {san:?} in\n{text}");
        }
    }

    #[test]
    fn components_use_the_names_bootstrap_rbac_binds() {
        let identities = identities(&Ipv4Addr::new(10, 96, 0, 1), "cluster.local");
        let common_name = |name: &str| {
            identities
                .iter()
                .find(|identity| identity.name == name)
                .map(|identity| identity.common_name.clone())
                .unwrap()
        };
        assert_eq!(
            common_name(CONTROLLER_MANAGER),
            "system:kube-controller-manager"
        );
        assert_eq!(common_name(SCHEDULER), "system:kube-scheduler");
    }

    #[test]
    fn only_the_front_proxy_client_comes_from_the_front_proxy_ca() {
        let identities = identities(&Ipv4Addr::new(10, 96, 0, 1), "cluster.local");
        let from_front_proxy_ca: Vec<&str> = identities
            .iter()
            .filter(|identity| identity.issuer == FRONT_PROXY_CA)
            .map(|identity| identity.name)
            .collect();
        assert_eq!(from_front_proxy_ca, vec![FRONT_PROXY_CLIENT]);
        assert!(
            identities
                .iter()
                .all(|identity| CAS.iter().any(|(ca, _)| *ca == identity.issuer))
        );
    }

    #[test]
    fn ca_config_is_a_critical_ca() {
        let text = ca_config("test-ca");
        assert!(text.contains("CN = test-ca\n"));
        assert!(text.contains("x509_extensions = ca_ext\n"));
        assert!(text.contains("basicConstraints = critical, CA:TRUE\n"));
        assert!(text.contains("keyCertSign"));
    }
}
