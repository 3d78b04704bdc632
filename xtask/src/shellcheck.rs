//! `cargo xtask shellcheck`: runs ShellCheck on every shell script the repository tracks
//! (`git ls-files '*.sh'`) and fails with its findings. Debian's `shellcheck` is installed first
//! when it is missing.
//!
//! The operator's Cassandra scripts are checked as bash: their text is the command of the pods
//! that run them (`bash -c`), so they carry no shebang, and a `# shellcheck shell=bash` line would
//! change every pod template that runs them, restarting a managed Cassandra on the operator's
//! upgrade.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::env::{Layout, ensure_apt_packages, find_program};
use crate::template;

/// The tracked scripts that are run with `bash -c`, relative to the workspace root.
const BASH_C_SCRIPTS: [&str; 2] = [
    "operator/src/controller/build/cassandra-config.sh",
    "operator/src/controller/build/cassandra-credentials.sh",
];

/// What ShellCheck reports about a template's `{{NAME}}` placeholders (filled before the script
/// runs, see `images::dependencies`), which are not shell: literal braces (SC1083), and a `for`
/// over a placeholder looks like a loop over one word (SC2043).
const PLACEHOLDER_FINDINGS: &str = "SC1083,SC2043";

/// Findings known to be intended in one script, with why, for scripts that do not say so on the
/// line themselves (a `# shellcheck disable=...` there would replace the entry).
const INTENDED: [(&str, &str, &str); 1] = [(
    "xtask/src/images/dependencies/check.sh",
    "SC2016",
    "its single-quoted programs are expanded by the `sh -c`, `bash -c` and awk that run them",
)];

/// Checks every tracked `*.sh` file, printing ShellCheck's findings; fails when there are any.
pub fn run(layout: &Layout) -> Result<()> {
    if find_program("shellcheck", &[]).is_none() {
        ensure_apt_packages(layout, &["shellcheck"])?;
    }
    let root = workspace_root();
    let scripts = tracked_scripts(&root)?;
    if scripts.is_empty() {
        bail!(
            "git ls-files '*.sh' lists no shell script in {}",
            root.display()
        );
    }
    let mut failed = Vec::new();
    for script in &scripts {
        let mut command = Command::new("shellcheck");
        command.current_dir(&root);
        if BASH_C_SCRIPTS.contains(&script.as_str()) {
            command.arg("--shell=bash");
        }
        let text = fs::read_to_string(root.join(script))
            .with_context(|| format!("failed to read {script}"))?;
        let mut excluded = Vec::new();
        if template::has_placeholder(&text) {
            excluded.push(PLACEHOLDER_FINDINGS);
            println!("{script}: {PLACEHOLDER_FINDINGS} not checked (template placeholders)");
        }
        for (path, codes, why) in INTENDED {
            if path == script {
                excluded.push(codes);
                println!("{script}: {codes} not checked ({why})");
            }
        }
        if !excluded.is_empty() {
            command.arg(format!("--exclude={}", excluded.join(",")));
        }
        let status = command
            .arg("--")
            .arg(script)
            .status()
            .context("failed to run shellcheck")?;
        if !status.success() {
            failed.push(script.as_str());
        }
    }
    if !failed.is_empty() {
        bail!(
            "shellcheck found problems in {} of {} scripts: {}",
            failed.len(),
            scripts.len(),
            failed.join(", ")
        );
    }
    println!("shellcheck: {} scripts clean", scripts.len());
    Ok(())
}

/// The shell scripts git tracks, relative to `root`.
fn tracked_scripts(root: &Path) -> Result<Vec<String>> {
    let output = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z", "--", "*.sh"])
        .output()
        .context("failed to run git ls-files")?;
    if !output.status.success() {
        bail!(
            "git ls-files failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let listing =
        String::from_utf8(output.stdout).context("git ls-files printed a non-UTF-8 path")?;
    Ok(listing
        .split('\0')
        .filter(|path| !path.is_empty())
        .map(str::to_owned)
        .collect())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
