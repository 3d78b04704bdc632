//! `cargo xtask browser-test`: the dashboard's page in a real browser, against the pipeline of
//! `cargo xtask run` (started if it is not running): Debian's Chromium, driven by playwright-core
//! (locked in the page's `package.json`) through `workloads/dashboard/ui/browser-test.mjs`.
//!
//! This side installs what the test needs, stocks a SKU of its own in Redis (as the README's
//! `redis-cli SET inventory:<sku> N` does), and passes the addresses; the script places orders
//! through the gateway, checks the page follows without a reload, and saves a screenshot.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use pipeline_contract::keys::Keys;
use pipeline_contract::ports;

use crate::env::{self, Layout};
use crate::{pipeline, ui};

/// What the script stocks its SKU with: two orders fit, a third does not.
const STOCK: u32 = 5;

pub fn run(layout: &Layout, readme_screenshot: bool) -> Result<()> {
    println!("==> installing Chromium (Debian package)");
    env::ensure_apt_packages(layout, &["chromium"])?;
    let chromium = env::find_program("chromium", &["/usr/bin/chromium"])
        .context("chromium is not installed")?;
    let ui = ui::ui_dir();
    ui::install_dependencies(layout, &ui)?;
    pipeline::run(layout, pipeline::Profile::Release)?;

    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let sku = format!("browser-test-{run_id}");
    stock(&Keys::default().inventory(&sku))?;
    println!("==> stocked {sku} with {STOCK}");

    let own = layout.home.join("browser-test/dashboard.png");
    std::fs::create_dir_all(own.parent().expect("a file under a directory"))?;
    let mut screenshots = vec![own];
    if readme_screenshot {
        screenshots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png"));
    }
    let screenshot_list: Vec<String> = screenshots
        .iter()
        .map(|path| path.display().to_string())
        .collect();

    println!("==> node browser-test.mjs");
    let status = Command::new("node")
        .arg("browser-test.mjs")
        .current_dir(&ui)
        .env(
            "DASHBOARD_URL",
            format!("http://127.0.0.1:{}", ports::DASHBOARD_HTTP),
        )
        .env(
            "GATEWAY_URL",
            format!("http://127.0.0.1:{}", ports::GATEWAY_HTTP),
        )
        .env("SKU", &sku)
        .env("STOCK", STOCK.to_string())
        .env("RUN_ID", run_id.to_string())
        .env("SCREENSHOTS", screenshot_list.join("\n"))
        .env("CHROMIUM", chromium)
        .status()
        .context("failed to run node")?;
    if !status.success() {
        bail!(
            "the browser test failed ({status}); the workloads' logs are in {}",
            layout.run().join("pipeline").display()
        );
    }
    println!(
        "browser test passed; screenshot: {}",
        screenshot_list.join(", ")
    );
    Ok(())
}

/// `SET <key> STOCK` through `redis-cli` on the environment's Redis (the `default` user, as the
/// README's walkthrough does).
fn stock(key: &str) -> Result<()> {
    let output = Command::new("redis-cli")
        .args(["-p", &env::redis::PORT.to_string(), "SET", key])
        .arg(STOCK.to_string())
        .output()
        .context("failed to run redis-cli")?;
    let reply = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || reply.trim() != "OK" {
        bail!("redis-cli SET {key} answered: {}", reply.trim());
    }
    Ok(())
}
