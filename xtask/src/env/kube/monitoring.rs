//! The Prometheus Operator's ServiceMonitor and PodMonitor CRDs in the environment's control
//! plane, so the chart's ServiceMonitor and the operator's PodMonitors are checked against the
//! schema real clusters run, not against our idea of it.
//!
//! The CRD files are the ones the prometheus-operator Go module publishes at the pinned release
//! (`example/prometheus-operator-crd/`), fetched with `go mod download` and copied under
//! `crds/prometheus-operator-<version>/`, then server-side applied on every `up` (a no-op when
//! they are there already). Only these two kinds: the Prometheus, Alertmanager and other CRDs
//! describe servers this environment does not run.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::super::process::run_capture;
use super::super::{Layout, remove_dir_if_exists};
use super::State;
use super::build::{self, Binaries};

/// The release whose CRDs are installed (its API, `monitoring.coreos.com/v1`, is the one the
/// operator writes).
pub const PROMETHEUS_OPERATOR_VERSION: &str = "v0.85.0";
const MODULE: &str = "github.com/prometheus-operator/prometheus-operator";
/// Where the module keeps the CRDs it publishes, without the descriptions' full text.
const CRD_DIR: &str = "example/prometheus-operator-crd";
/// The files installed, with the CRD each defines.
const CRDS: [(&str, &str); 2] = [
    (
        "monitoring.coreos.com_podmonitors.yaml",
        "podmonitors.monitoring.coreos.com",
    ),
    (
        "monitoring.coreos.com_servicemonitors.yaml",
        "servicemonitors.monitoring.coreos.com",
    ),
];
/// The field manager of the environment's own writes.
const MANAGER: &str = "order-pipeline-env";

/// Where the pinned release's CRD files are kept.
pub fn crd_dir(layout: &Layout) -> PathBuf {
    layout
        .home
        .join("crds")
        .join(format!("prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}"))
}

/// Applies the two CRDs (fetching their files first when they are not cached) and waits until
/// the API server serves them.
pub fn install(layout: &Layout, state: &State, binaries: &Binaries) -> Result<()> {
    let dir = ensure_files(layout)?;
    let mut apply = state.kubectl(binaries);
    apply.args([
        "apply",
        "--server-side",
        "--force-conflicts",
        &format!("--field-manager={MANAGER}"),
    ]);
    for (file, _) in CRDS {
        apply.arg("--filename").arg(dir.join(file));
    }
    run_capture(&mut apply).context("failed to apply the Prometheus Operator CRDs")?;
    let mut wait = state.kubectl(binaries);
    wait.args([
        "wait",
        "--for=condition=Established",
        &format!("--timeout={}s", Duration::from_secs(60).as_secs()),
    ]);
    for (_, name) in CRDS {
        wait.arg(format!("customresourcedefinition/{name}"));
    }
    run_capture(&mut wait).context("the Prometheus Operator CRDs were not established")?;
    println!(
        "  prometheus-operator {PROMETHEUS_OPERATOR_VERSION} CRDs installed (PodMonitor, \
         ServiceMonitor)"
    );
    Ok(())
}

/// The cached CRD files, fetched from the module proxy when they are not all there. They are
/// copied into a staging directory that takes the final name only once complete, so an
/// interrupted copy is redone.
fn ensure_files(layout: &Layout) -> Result<PathBuf> {
    let dir = crd_dir(layout);
    if CRDS.iter().all(|(file, _)| dir.join(file).is_file()) {
        return Ok(dir);
    }
    let go = build::find_go()?;
    let work = layout.go().join("build").join(format!(
        "prometheus-operator-crds-{PROMETHEUS_OPERATOR_VERSION}"
    ));
    fs::create_dir_all(&work).with_context(|| format!("failed to create {}", work.display()))?;
    let source = build::download(&go, &work, MODULE, PROMETHEUS_OPERATOR_VERSION)?;
    let staging = dir.with_file_name(format!(
        ".prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}.partial"
    ));
    remove_dir_if_exists(&staging)?;
    fs::create_dir_all(&staging)
        .with_context(|| format!("failed to create {}", staging.display()))?;
    for (file, _) in CRDS {
        copy(&source.dir.join(CRD_DIR).join(file), &staging.join(file))?;
    }
    remove_dir_if_exists(&dir)?;
    fs::rename(&staging, &dir).with_context(|| format!("failed to install {}", dir.display()))?;
    Ok(dir)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("failed to copy {} to {}", from.display(), to.display()))
}
