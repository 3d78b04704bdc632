//! `cargo xtask crdgen`: writes the `OrderPipeline` CRD YAML generated from `operator/api` to
//! every place that ships it, or with `--check` fails when one of them is stale.
//!
//! The YAML comes from running the `crdgen` binary of `pipeline-api` rather than from calling the
//! crate, so xtask stays light: it never compiles kube or the CRD types itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Where the generated CRD lives, relative to the workspace root: the copy the operator's tests
/// and `kubectl apply` use, and the copy the Helm chart installs.
const TARGETS: [&str; 2] = [
    "crds/orderpipelines.yaml",
    "charts/order-pipeline-operator/crds/orderpipelines.yaml",
];

/// Generates the CRD and writes it to every target; with `check`, writes nothing and fails when a
/// target is missing or differs from the generated YAML.
pub fn run(check: bool) -> Result<()> {
    let root = workspace_root();
    let yaml = generate(&root)?;
    if check {
        let stale: Vec<&str> = TARGETS
            .into_iter()
            .filter(|target| fs::read_to_string(root.join(target)).ok().as_deref() != Some(&yaml))
            .collect();
        if !stale.is_empty() {
            bail!(
                "stale or missing CRD: {}; run `cargo xtask crdgen`",
                stale.join(", ")
            );
        }
        println!("CRD up to date: {}", TARGETS.join(", "));
        return Ok(());
    }
    for target in TARGETS {
        let path = root.join(target);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        fs::write(&path, &yaml).with_context(|| format!("failed to write {}", path.display()))?;
        println!("wrote {target}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cargo run --package pipeline-api --bin crdgen` and returns what it printed. Compiler
/// output goes straight to the terminal.
fn generate(root: &Path) -> Result<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["run", "--quiet", "--package", "pipeline-api"])
        .args(["--bin", "crdgen"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run cargo")?;
    if !output.status.success() {
        bail!("the crdgen binary failed ({})", output.status);
    }
    String::from_utf8(output.stdout).context("the crdgen binary printed invalid UTF-8")
}
