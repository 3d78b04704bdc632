//! What every child shares: metadata (name, namespace, labels, the owner reference), selectors,
//! the restricted security contexts, container resources, and the small objects (Secrets,
//! Services, PodDisruptionBudgets) the workloads and the dependencies both make. Also the typed
//! shorthands for environment variables, ports and volumes that the pod builders use.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pipeline_api::Resources;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use sha2::{Digest, Sha256};

use super::{MANAGED_BY, names};

/// Every managed dependency's pod runs as this user and group (the official Redis and Cassandra
/// images' own user; the RabbitMQ image's is another, which does not matter). No image needs a
/// passwd entry for it: the operator sets `HOME` where a program wants one, and every writable
/// path is a volume, made writable for the group by `fsGroup`.
pub(super) const DEPENDENCY_USER: i64 = 999;

/// Every child and pod of a pipeline carries this label with the pipeline's name. The
/// `app.kubernetes.io/*` labels are shared conventions (a Helm release called `shop` sets
/// `app.kubernetes.io/instance: shop` too), so what grants access, the NetworkPolicies, selects
/// on this one: only this operator sets a label of its API group.
pub(crate) const PIPELINE_LABEL: &str = "orderpipeline.dev/pipeline";
/// Which part of the pipeline an object is (`gateway`, `rabbitmq`, ...): what the status
/// reports each Deployment's and StatefulSet's replicas under.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// The pipeline a build is for: what every child's metadata carries.
pub(super) struct Parent<'a> {
    pub(super) name: &'a str,
    pub(super) namespace: &'a str,
    pub(super) owner: OwnerReference,
}

impl Parent<'_> {
    pub(super) fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "order-pipeline".to_owned(),
            ),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.name.to_owned(),
            ),
            (COMPONENT_LABEL.to_owned(), component.to_owned()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                MANAGED_BY.to_owned(),
            ),
            (PIPELINE_LABEL.to_owned(), self.name.to_owned()),
        ])
    }

    pub(super) fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/instance".to_owned(),
                self.name.to_owned(),
            ),
            (
                "app.kubernetes.io/component".to_owned(),
                component.to_owned(),
            ),
        ])
    }

    /// [`Self::selector`] as a label selector (Deployments, StatefulSets, budgets, policies).
    pub(super) fn label_selector(&self, component: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.selector(component)),
            ..LabelSelector::default()
        }
    }

    /// The pods of this pipeline, whatever their component, by [`PIPELINE_LABEL`].
    pub(super) fn pipeline_pods(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([(
                PIPELINE_LABEL.to_owned(),
                self.name.to_owned(),
            )])),
            ..LabelSelector::default()
        }
    }

    /// The pods of one component of this pipeline, by [`PIPELINE_LABEL`]: what a NetworkPolicy
    /// applies to. (Workload selectors, immutable in Deployments and StatefulSets, stay on
    /// [`Self::selector`].)
    pub(super) fn pipeline_component(&self, component: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([
                (PIPELINE_LABEL.to_owned(), self.name.to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    component.to_owned(),
                ),
            ])),
            ..LabelSelector::default()
        }
    }

    pub(super) fn metadata(&self, name: &str, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The labels of a pod template.
    pub(super) fn pod_metadata(&self, component: &str) -> ObjectMeta {
        ObjectMeta {
            labels: Some(self.labels(component)),
            ..ObjectMeta::default()
        }
    }

    pub(super) fn secret(&self, name: &str, component: &str, data: &[(&str, &str)]) -> Secret {
        // `data`, never `stringData`: an apply of `stringData` is a write every time.
        let data: BTreeMap<String, ByteString> = data
            .iter()
            .map(|(key, value)| ((*key).to_owned(), ByteString(value.as_bytes().to_vec())))
            .collect();
        Secret {
            metadata: self.metadata(name, component),
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    pub(super) fn service(
        &self,
        name: &str,
        component: &str,
        ports: &[(&str, u16)],
        headless: bool,
    ) -> Service {
        let ports = ports
            .iter()
            .map(|(port_name, port)| ServicePort {
                name: Some((*port_name).to_owned()),
                port: i32::from(*port),
                target_port: Some(IntOrString::String((*port_name).to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            })
            .collect();
        let mut spec = ServiceSpec {
            selector: Some(self.selector(component)),
            ports: Some(ports),
            type_: Some("ClusterIP".to_owned()),
            ..ServiceSpec::default()
        };
        if headless {
            spec.cluster_ip = Some("None".to_owned());
            // Peers must find each other before they are ready (cluster formation).
            spec.publish_not_ready_addresses = Some(true);
        }
        Service {
            metadata: self.metadata(name, component),
            spec: Some(spec),
            ..Service::default()
        }
    }

    /// At most one pod of `component` down at a time, named `name` (the component's own
    /// object name).
    pub(super) fn disruption_budget(&self, name: &str, component: &str) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.metadata(name, component),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(self.label_selector(component)),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }
}

/// Every container's: no privilege escalation, a read-only root filesystem, no capabilities
/// (the restricted Pod Security Standard).
pub(super) fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// Every pod's: not root, as `user` (and its group, which owns the volumes), the runtime's
/// default seccomp profile.
pub(super) fn pod_security(user: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(user),
        fs_group: Some(user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The spec's resources as they are, or the small ones of the short-lived helpers (and of a
/// workload whose spec sets none).
pub(super) fn resources(resources: Option<&Resources>) -> ResourceRequirements {
    let quantities = |map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(key, value)| (key.clone(), Quantity(value.clone())))
            .collect()
    };
    match resources {
        Some(resources) => ResourceRequirements {
            requests: Some(quantities(&resources.requests)),
            limits: Some(quantities(&resources.limits)),
            ..ResourceRequirements::default()
        },
        None => ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("50m".to_owned())),
                ("memory".to_owned(), Quantity("64Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("256Mi".to_owned()),
            )])),
            ..ResourceRequirements::default()
        },
    }
}

/// An environment variable with a literal value.
pub(super) fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// An environment variable read from a Secret's key, so the value never appears in the pod spec.
pub(super) fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A volume holding one key of a Secret as the file `path`, readable by the pod's group
/// (`fsGroup`) only: the rest of the Secret stays out of the pod.
pub(super) fn secret_file_volume(volume: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: volume.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(vec![KeyToPath {
                key: key.to_owned(),
                path: path.to_owned(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// An environment variable from the downward API (`metadata.name`, `status.podIP`).
pub(super) fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A named TCP port of a container.
pub(super) fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

/// Hex digits of the spec hash in a Job's name: 40 (longest pipeline name) + 16
/// (`-cassandra-auth-`, the longest infix) + 7 = 63, the most a Job name may have.
pub(super) const JOB_HASH_LENGTH: usize = 7;

/// `<pipeline>-<component>-<hash of the spec>`: a Job's pod template is immutable, so an apply of
/// a changed one would fail; a changed spec is a new Job instead, and an unchanged one
/// re-applies as a no-op.
pub(super) fn hashed_job_name(pipeline: &str, component: &str, spec: &JobSpec) -> String {
    let hash = hex::encode(Sha256::digest(serde_json::to_vec(spec).unwrap_or_default()));
    names::hashed_job(pipeline, component, &hash[..JOB_HASH_LENGTH])
}

impl Parent<'_> {
    /// A Job of the pipeline's that runs `pod` (its containers, volumes and host name) once to
    /// completion, as the dependency user with no API token, retried 4 times and deleted an hour
    /// after it finished, named by [`hashed_job_name`]. Each attempt may wait minutes for its
    /// dependency (the scripts' own loops).
    pub(super) fn hashed_job(&self, component: &str, pod: PodSpec) -> Job {
        let spec = JobSpec {
            backoff_limit: Some(4),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(self.pod_metadata(component)),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security(DEPENDENCY_USER)),
                    ..pod
                }),
            },
            ..JobSpec::default()
        };
        Job {
            metadata: self.metadata(&hashed_job_name(self.name, component, &spec), component),
            spec: Some(spec),
            ..Job::default()
        }
    }
}

/// A scratch volume that lives as long as the pod.
pub(super) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use serde_json::json;

    #[test]
    fn pods_meet_the_restricted_pod_security_standard() {
        let children = build_default(&pipeline(json!({})), &secrets(), "0.1.0").unwrap();
        let templates = children
            .deployments
            .iter()
            .map(|d| d.spec.as_ref().unwrap().template.clone())
            .chain(
                children
                    .stateful_sets
                    .iter()
                    .map(|s| s.spec.as_ref().unwrap().template.clone()),
            )
            .chain(
                children
                    .jobs
                    .iter()
                    .map(|j| j.spec.as_ref().unwrap().template.clone()),
            );
        assert_eq!(children.jobs.len(), 1, "the Cassandra credentials Job");
        for template in templates {
            let spec = template.spec.unwrap();
            let pod = spec.security_context.unwrap();
            assert_eq!(pod.run_as_non_root, Some(true));
            assert_eq!(pod.seccomp_profile.unwrap().type_, "RuntimeDefault");
            let init_containers = spec.init_containers.into_iter().flatten();
            for container in spec.containers.into_iter().chain(init_containers) {
                let security = container.security_context.unwrap();
                assert_eq!(security.allow_privilege_escalation, Some(false));
                assert_eq!(security.read_only_root_filesystem, Some(true));
                assert_eq!(
                    security.capabilities.unwrap().drop,
                    Some(vec!["ALL".to_owned()])
                );
            }
        }
    }
}
