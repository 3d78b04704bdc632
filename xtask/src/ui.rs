//! `cargo xtask ui`: builds the dashboard's web page (Preact with Vite, from
//! `workloads/dashboard/ui/`) into its committed `dist/`, which the dashboard binary embeds; with
//! `--check`, builds into a temporary directory and fails when the committed bundle differs (like
//! `crdgen --check`), so a change to the page's source cannot ship without its bundle.
//!
//! The dependencies come from the committed `package-lock.json` (`npm ci`), and Vite writes
//! fixed file names, so the same sources always give the same bytes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::env::{self, Layout};

/// The page's sources, relative to the workspace root.
pub const UI_DIR: &str = "workloads/dashboard/ui";
/// The committed bundle, relative to [`UI_DIR`].
const DIST: &str = "dist";
/// Read by `ui/vite.config.js`: where to write the bundle instead of `dist/`.
const OUT_DIR_VARIABLE: &str = "DASHBOARD_UI_OUT_DIR";

pub fn run(layout: &Layout, check: bool) -> Result<()> {
    let ui = ui_dir();
    install_dependencies(layout, &ui)?;
    if !check {
        vite_build(layout, &ui, &ui.join(DIST))?;
        println!("wrote {UI_DIR}/{DIST}");
        return Ok(());
    }
    let scratch = layout.home.join("ui-check");
    vite_build(layout, &ui, &scratch)?;
    let built = files(&scratch)?;
    let committed = files(&ui.join(DIST))?;
    let mut stale: Vec<String> = built
        .iter()
        .filter(|(name, bytes)| committed.get(*name) != Some(bytes))
        .map(|(name, _)| name.clone())
        .collect();
    stale.extend(
        committed
            .keys()
            .filter(|name| !built.contains_key(*name))
            .map(|name| format!("{name} (no longer built)")),
    );
    fs::remove_dir_all(&scratch).ok();
    if !stale.is_empty() {
        bail!(
            "the committed dashboard bundle is stale: {}; run `cargo xtask ui` and commit {UI_DIR}/{DIST}",
            stale.join(", ")
        );
    }
    println!(
        "dashboard bundle up to date: {UI_DIR}/{DIST} ({} files)",
        built.len()
    );
    Ok(())
}

pub fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(UI_DIR)
}

/// Node and npm (Debian's `nodejs` and `npm` when missing), then the locked dependencies.
pub fn install_dependencies(layout: &Layout, ui: &Path) -> Result<()> {
    let npm_works = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !npm_works {
        println!("==> installing Node.js and npm (Debian packages)");
        env::ensure_apt_packages(layout, &["nodejs", "npm"])?;
    }
    println!("==> npm ci ({UI_DIR})");
    let log = layout.home.join("logs/ui-npm.log");
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund"]).current_dir(ui);
    run_logged(&mut npm, &log, "npm ci")
}

fn vite_build(layout: &Layout, ui: &Path, out: &Path) -> Result<()> {
    println!("==> vite build -> {}", out.display());
    let log = layout.home.join("logs/ui-build.log");
    let mut vite = Command::new("npx");
    vite.args(["--no-install", "vite", "build"])
        .env(OUT_DIR_VARIABLE, out)
        .current_dir(ui);
    run_logged(&mut vite, &log, "vite build")
}

fn run_logged(command: &mut Command, log: &Path, what: &str) -> Result<()> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let file =
        fs::File::create(log).with_context(|| format!("failed to create {}", log.display()))?;
    let status = command
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("failed to start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); see {}", log.display());
    }
    Ok(())
}

/// Every file under `root`, by its path relative to it.
fn files(root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("failed to list {}", dir.display()));
            }
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path
                    .strip_prefix(root)
                    .expect("listed under the root")
                    .to_string_lossy()
                    .into_owned();
                let bytes = fs::read(&path)
                    .with_context(|| format!("failed to read {}", path.display()))?;
                found.insert(name, bytes);
            }
        }
    }
    Ok(found)
}
