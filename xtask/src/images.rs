//! `cargo xtask images`: the container images of the four workloads and the operator, built,
//! written to OCI archives and proven to run.
//!
//! An image holds nothing but a statically linked release binary (target
//! `x86_64-unknown-linux-musl`) and, for the workloads, a CA bundle, so the repository's
//! `Dockerfile` pulls nothing: every target starts `FROM scratch` and copies from a build context
//! this command stages with exactly those files. The builder is Docker when an engine answers
//! (the CLI alone is not enough), otherwise buildah as root with `vfs` storage and `chroot`
//! isolation, which needs no daemon and no OCI runtime and so works inside a VM or a container.
//!
//! Each image is tagged `order-pipeline/<name>:<version>` — the names the operator gives its
//! workloads and the Helm chart its operator — kept in the builder's local store and written to
//! `<out>/<name>-<version>.oci.tar`. Then its binary runs from the image (`--version` must print
//! the workspace version) and its size, user, ports and labels are checked; any miss fails the
//! command with the image named.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use pipeline_contract::{Workload, ports};

use crate::env::process::{run_capture, run_logged};
use crate::env::{self, Layout};

pub(crate) mod dependencies;

/// The image tag: the workspace version, which is also every binary's version, the chart's
/// appVersion and the tag the operator gives its workloads (xtask shares the workspace version).
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The images' `source` label: the workspace manifest's repository, which xtask inherits.
pub(crate) const SOURCE: &str = env!("CARGO_PKG_REPOSITORY");
/// The workload images' `licenses` label: the workspace's licence, which xtask inherits.
const LICENSE: &str = env!("CARGO_PKG_LICENSE");
/// The repository part of every image name, as the operator names its workloads' images.
pub const REPOSITORY: &str = pipeline_contract::IMAGE_REPOSITORY;
/// Static binaries run in a scratch image: no libc to load.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// An image must stay below this, uncompressed and as an archive (decimal megabytes).
const MAX_IMAGE_BYTES: u64 = 20_000_000;
/// The user the images run as; the operator's pods and the chart set the same.
const IMAGE_USER: &str = "65532:65532";
/// Where Debian's `ca-certificates` keeps the bundle the workload images carry.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The OCI labels every image carries.
const REQUIRED_LABELS: [&str; 5] = [
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.licenses",
];
/// buildah's storage driver: `vfs` works everywhere (no overlay mounts, no fuse), and these
/// images are small enough that its full copies do not matter.
const BUILDAH_STORAGE_DRIVER: &str = "vfs";

/// One image: a Dockerfile target built around one binary, a workload's or the operator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Image {
    Workload(Workload),
    Operator,
}

/// Every image, in the canonical order: each workload the contract lists, then the operator.
fn images() -> Vec<Image> {
    Workload::ALL
        .into_iter()
        .map(Image::Workload)
        .chain([Image::Operator])
        .collect()
}

/// The operator's cargo package and binary.
const OPERATOR_BINARY: &str = "order-pipeline-operator";

impl Image {
    /// The Dockerfile target and the image name.
    fn name(self) -> &'static str {
        match self {
            Image::Workload(workload) => workload.name(),
            Image::Operator => "operator",
        }
    }

    /// The cargo package that builds the binary, and the binary: its name in the build context
    /// and in the image's /usr/local/bin. A workload's package is named after it.
    fn binary(self) -> &'static str {
        match self {
            Image::Workload(workload) => workload.name(),
            Image::Operator => OPERATOR_BINARY,
        }
    }

    /// The ports the image exposes: the business port, if any, then the admin port.
    fn ports(self) -> Vec<u16> {
        let business = match self {
            Image::Workload(workload) => workload.http_port(),
            Image::Operator => None,
        };
        business.into_iter().chain([ports::ADMIN]).collect()
    }

    /// `order-pipeline/<name>:<version>`.
    fn reference(self) -> String {
        format!("{REPOSITORY}/{}:{VERSION}", self.name())
    }

    /// What `<binary> --version` prints.
    fn version_line(self) -> String {
        format!("{} {VERSION}", self.binary())
    }
}

/// The images named on the command line, in the canonical order; all of them when none is named.
fn select(names: &[String]) -> Result<Vec<Image>> {
    if let Some(unknown) = names
        .iter()
        .find(|name| !images().iter().any(|image| image.name() == name.as_str()))
    {
        let known: Vec<&str> = images().iter().map(|image| image.name()).collect();
        bail!(
            "unknown image {unknown:?} (expected one of {})",
            known.join(", ")
        );
    }
    Ok(images()
        .into_iter()
        .filter(|image| names.is_empty() || names.iter().any(|name| name == image.name()))
        .collect())
}

/// `<out>/<name>-<version>.oci.tar`.
fn archive_path(out: &Path, image: Image) -> PathBuf {
    out.join(format!("{}-{VERSION}.oci.tar", image.name()))
}

/// Builds the named images (all when none is named) and writes their archives to `out` (by
/// default `~/.cache/order-pipeline/images`), then verifies every one.
pub fn run(layout: &Layout, out: Option<PathBuf>, names: &[String]) -> Result<()> {
    let started = Instant::now();
    let images = select(names)?;
    let out = out.unwrap_or_else(|| layout.home.join("images"));
    let log = layout.home.join("logs/images.log");
    let root = workspace_root();

    println!("==> images: preparing the toolchain");
    let builder = Builder::detect();
    prepare(layout, builder, &root)?;
    println!("  builder: {builder}");

    let step = Instant::now();
    println!("==> images: building the release binaries for {MUSL_TARGET}");
    let binaries = build_binaries(&root)?;
    println!(
        "==> images: binaries built ({:.1}s)",
        step.elapsed().as_secs_f64()
    );

    let context = stage_context(layout, &binaries, &images)?;
    fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    let mut results = Vec::new();
    for image in &images {
        let step = Instant::now();
        println!("==> images: {}", image.reference());
        builder.build(*image, &root.join("Dockerfile"), &context, &log)?;
        let archive = archive_path(&out, *image);
        builder.export(&image.reference(), &archive, &log)?;
        let verified = verify(builder, *image, &archive)
            .with_context(|| format!("failed to verify {}", image.reference()))?;
        println!(
            "==> images: {} done ({:.1}s)",
            image.name(),
            step.elapsed().as_secs_f64()
        );
        results.push(verified);
    }

    println!("\n{}", table(&results));
    let failures: Vec<String> = results
        .iter()
        .filter(|result| !result.problems.is_empty())
        .map(|result| format!("{}: {}", result.image.name(), result.problems.join("; ")))
        .collect();
    if !failures.is_empty() {
        bail!(
            "{} image(s) failed verification:\n  {}\n(build log: {})",
            failures.len(),
            failures.join("\n  "),
            log.display()
        );
    }
    println!(
        "images built and verified in {:.1}s; archives in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
}

/// Installs what the build needs: the musl target, a C compiler for musl (aws-lc-sys and psm
/// compile C; cc-rs finds musl-tools' `musl-gcc` by itself), the CA bundle, and buildah when
/// there is no Docker engine.
fn prepare(layout: &Layout, builder: Builder, root: &Path) -> Result<()> {
    // In the workspace, so a rust-toolchain file there would choose the toolchain.
    let installed = run_capture(
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .current_dir(root),
    )
    .context("rustup is needed to add the musl target")?;
    if !installed.lines().any(|line| line.trim() == MUSL_TARGET) {
        run_logged(
            &format!("rustup target add {MUSL_TARGET}"),
            Command::new("rustup")
                .args(["target", "add", MUSL_TARGET])
                .current_dir(root),
            &layout.home.join("logs/rustup.log"),
        )?;
    }
    let mut packages = vec!["musl-tools", "ca-certificates"];
    if builder == Builder::Buildah {
        packages.push("buildah");
    }
    env::ensure_apt_packages(layout, &packages)
}

/// `cargo build --release --target x86_64-unknown-linux-musl` of every image's package, also
/// when fewer images were asked for: cargo unifies dependency features over the packages of one
/// invocation, so building one alone would give a different binary than the full build. Returns
/// the directory holding the binaries. Cargo's own progress goes to the terminal.
fn build_binaries(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--target", MUSL_TARGET])
        .current_dir(root);
    for image in images() {
        build.args(["--package", image.binary()]);
    }
    let status = build.status().context("failed to run cargo")?;
    if !status.success() {
        bail!(
            "cargo build --release --target {MUSL_TARGET} failed ({status}); see its output above"
        );
    }
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target_dir.join(MUSL_TARGET).join("release"))
}

/// A fresh build context holding only what the Dockerfile copies: the binaries (hard links where
/// the file system allows) and the CA bundle. Kept after the build, for a look at what went in.
fn stage_context(layout: &Layout, binaries: &Path, images: &[Image]) -> Result<PathBuf> {
    let context = layout.home.join("image-context");
    if context.exists() {
        fs::remove_dir_all(&context)
            .with_context(|| format!("failed to clear {}", context.display()))?;
    }
    fs::create_dir_all(&context)
        .with_context(|| format!("failed to create {}", context.display()))?;
    for image in images {
        let binary = binaries.join(image.binary());
        let staged = context.join(image.binary());
        fs::hard_link(&binary, &staged)
            .or_else(|_| fs::copy(&binary, &staged).map(drop))
            .with_context(|| format!("failed to stage {}", binary.display()))?;
    }
    fs::copy(CA_BUNDLE, context.join("ca-certificates.crt"))
        .with_context(|| format!("failed to stage {CA_BUNDLE}"))?;
    Ok(context)
}

/// Who builds, stores and runs the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builder {
    Docker,
    Buildah,
}

impl std::fmt::Display for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Builder::Docker => "docker (engine reachable)",
            Builder::Buildah => "buildah (no Docker engine; vfs storage, chroot isolation)",
        })
    }
}

impl Builder {
    /// Docker when `docker info` reaches an engine within a few seconds, else buildah.
    fn detect() -> Self {
        let Ok(mut child) = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return Builder::Buildah;
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Builder::Docker,
                Ok(Some(_)) | Err(_) => return Builder::Buildah,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Builder::Buildah;
                }
                Ok(None) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn command(self) -> Command {
        match self {
            Builder::Docker => Command::new("docker"),
            Builder::Buildah => {
                let mut command = Command::new("buildah");
                command.args(["--storage-driver", BUILDAH_STORAGE_DRIVER]);
                command
            }
        }
    }

    /// The image's id in the local store, if it has one.
    fn image_id(self, reference: &str) -> Option<String> {
        let output = run_capture(self.command().args(["images", "--quiet", reference])).ok()?;
        output.lines().next().map(str::to_owned)
    }

    /// Builds one Dockerfile target and tags it; removes the image the tag pointed at before,
    /// so repeated builds do not pile up untagged copies.
    fn build(self, image: Image, dockerfile: &Path, context: &Path, log: &Path) -> Result<()> {
        let reference = image.reference();
        let previous = self.image_id(&reference);
        let mut build = self.command();
        match self {
            Builder::Docker => build.arg("build"),
            Builder::Buildah => build.args(["bud", "--isolation", "chroot"]),
        };
        build
            .arg("--file")
            .arg(dockerfile)
            .args(["--target", image.name(), "--tag", &reference])
            .args(["--build-arg", &format!("VERSION={VERSION}")])
            .args(["--build-arg", &format!("SOURCE={SOURCE}")])
            .args(["--build-arg", &format!("LICENSES={LICENSE}")])
            .arg(context);
        run_logged(&format!("build {reference}"), &mut build, log)?;
        if let Some(previous) = previous
            && self.image_id(&reference).as_deref() != Some(previous.as_str())
        {
            // Still used by a container or another tag: then it stays, which is fine.
            let _ = run_capture(self.command().args(["rmi", &previous]));
        }
        Ok(())
    }

    /// Writes the image `reference` names to `archive` as an OCI archive.
    fn export(self, reference: &str, archive: &Path, log: &Path) -> Result<()> {
        let partial = archive.with_extension("tar.partial");
        let _ = fs::remove_file(&partial);
        match self {
            Builder::Docker => run_logged(
                &format!("docker save {reference}"),
                self.command()
                    .args(["save", "--output"])
                    .arg(&partial)
                    .arg(reference),
                log,
            )?,
            Builder::Buildah => {
                // Through an OCI layout directory rather than straight to `oci-archive:`, to add
                // the image name containerd reads (`kind load image-archive` imports through
                // containerd, which ignores a bare `org.opencontainers.image.ref.name`).
                let layout = archive.with_extension("layout");
                if layout.exists() {
                    fs::remove_dir_all(&layout)
                        .with_context(|| format!("failed to clear {}", layout.display()))?;
                }
                run_logged(
                    &format!("buildah push {reference}"),
                    self.command()
                        .args(["push", "--quiet", reference])
                        .arg(format!("oci:{}:{reference}", layout.display())),
                    log,
                )?;
                let index_path = layout.join("index.json");
                let index = read(&index_path)?;
                let named = name_for_containerd(&index, reference)
                    .with_context(|| format!("unexpected OCI index in {}", index_path.display()))?;
                fs::write(&index_path, named)
                    .with_context(|| format!("failed to write {}", index_path.display()))?;
                // Fixed order, owner and times: the same image gives the same archive.
                run_logged(
                    &format!("tar {}", archive.display()),
                    Command::new("tar")
                        .args(["--create", "--sort=name", "--mtime=@0"])
                        .args(["--owner=0", "--group=0", "--numeric-owner", "--file"])
                        .arg(&partial)
                        .arg("--directory")
                        .arg(&layout)
                        .args(["oci-layout", "index.json", "blobs"]),
                    log,
                )?;
                fs::remove_dir_all(&layout)
                    .with_context(|| format!("failed to remove {}", layout.display()))?;
            }
        }
        fs::rename(&partial, archive)
            .with_context(|| format!("failed to write {}", archive.display()))
    }

    /// Evaluates a Go template against the image's configuration (`{{.Config.X}}` rewritten to
    /// each tool's spelling).
    fn inspect(self, reference: &str, template: &str) -> Result<String> {
        let mut inspect = self.command();
        match self {
            Builder::Docker => inspect.args(["image", "inspect", "--format"]).arg(template),
            Builder::Buildah => inspect
                .args(["inspect", "--type", "image", "--format"])
                .arg(template.replace(".Config.", ".OCIv1.Config.")),
        };
        Ok(run_capture(inspect.arg(reference))?.trim().to_owned())
    }

    /// The image's uncompressed size in bytes, as its store reports it.
    fn image_size(self, reference: &str) -> Result<u64> {
        match self {
            Builder::Docker => {
                let size = self.inspect(reference, "{{.Size}}")?;
                size.parse()
                    .with_context(|| format!("docker reported size {size:?}"))
            }
            Builder::Buildah => {
                let size = run_capture(self.command().args([
                    "images",
                    "--format",
                    "{{.Size}}",
                    reference,
                ]))?;
                let size = size.lines().next().unwrap_or_default();
                parse_human_size(size).with_context(|| format!("buildah reported size {size:?}"))
            }
        }
    }

    /// Runs the image's entrypoint with `--version`, as the image's user, and returns its output.
    fn run_version(self, reference: &str) -> Result<String> {
        match self {
            Builder::Docker => run_capture(self.command().args([
                "run",
                "--rm",
                "--network",
                "none",
                reference,
                "--version",
            ])),
            Builder::Buildah => {
                // `buildah run` ignores the entrypoint: run exactly what it names.
                let entrypoint = parse_go_list(&self.inspect(reference, "{{.Config.Entrypoint}}")?);
                if entrypoint.is_empty() {
                    bail!("the image has no entrypoint");
                }
                let name = run_capture(self.command().args([
                    "from",
                    "--pull-never",
                    "--quiet",
                    reference,
                ]))?;
                let container = WorkingContainer {
                    builder: self,
                    name: name.trim().to_owned(),
                };
                run_capture(
                    self.command()
                        .args(["run", "--isolation", "chroot", &container.name, "--"])
                        .args(&entrypoint)
                        .arg("--version"),
                )
            }
        }
    }
}

/// A buildah working container, removed when dropped (whether the run succeeded or not).
#[derive(Debug)]
struct WorkingContainer {
    builder: Builder,
    name: String,
}

impl Drop for WorkingContainer {
    fn drop(&mut self) {
        let _ = run_capture(self.builder.command().args(["rm", &self.name]));
    }
}

/// What the checks found for one image.
#[derive(Debug)]
struct Verified {
    image: Image,
    image_bytes: u64,
    archive_bytes: u64,
    /// What `--version` printed from inside the image.
    version_output: String,
    /// Every check that failed; empty when the image is good.
    problems: Vec<String>,
}

/// Runs the image's binary and checks its size, archive, user, ports and labels.
fn verify(builder: Builder, image: Image, archive: &Path) -> Result<Verified> {
    let reference = image.reference();
    println!("  verifying {reference}");
    let mut problems = Vec::new();

    let version_output = match builder.run_version(&reference) {
        Ok(output) => {
            let output = output.trim().to_owned();
            if output != image.version_line() {
                problems.push(format!(
                    "`--version` printed {output:?}, expected {:?}",
                    image.version_line()
                ));
            }
            output
        }
        Err(error) => {
            problems.push(format!("`--version` did not run from the image: {error:#}"));
            String::new()
        }
    };

    let image_bytes = builder.image_size(&reference)?;
    let archive_bytes = fs::metadata(archive)
        .with_context(|| format!("failed to read {}", archive.display()))?
        .len();
    for (what, bytes) in [("image", image_bytes), ("archive", archive_bytes)] {
        if bytes >= MAX_IMAGE_BYTES {
            problems.push(format!(
                "{what} is {}, the limit is {}",
                megabytes(bytes),
                megabytes(MAX_IMAGE_BYTES)
            ));
        }
    }

    let user = builder.inspect(&reference, "{{.Config.User}}")?;
    if user != IMAGE_USER {
        problems.push(format!("runs as {user:?}, expected {IMAGE_USER:?}"));
    }
    let exposed = builder.inspect(&reference, "{{.Config.ExposedPorts}}")?;
    for port in image.ports() {
        if !exposed.contains(&format!("{port}/tcp")) {
            problems.push(format!("does not expose {port}/tcp (exposes {exposed})"));
        }
    }
    for label in REQUIRED_LABELS {
        let value = builder.inspect(
            &reference,
            &format!("{{{{index .Config.Labels {label:?}}}}}"),
        )?;
        let expected = match label {
            "org.opencontainers.image.version" => Some(VERSION),
            "org.opencontainers.image.source" => Some(SOURCE),
            "org.opencontainers.image.licenses" => Some(LICENSE),
            _ => None,
        };
        if value.is_empty() || value == "<no value>" {
            problems.push(format!("label {label} is missing"));
        } else if let Some(expected) = expected
            && value != expected
        {
            problems.push(format!("label {label} is {value:?}, expected {expected:?}"));
        }
    }
    Ok(Verified {
        image,
        image_bytes,
        archive_bytes,
        version_output,
        problems,
    })
}

/// The summary printed at the end.
fn table(results: &[Verified]) -> String {
    let mut text = format!(
        "{:<10} {:<34} {:>9} {:>9}  {:<30} {}\n",
        "name", "image", "size", "archive", "--version", "result"
    );
    for result in results {
        let _ = writeln!(
            text,
            "{:<10} {:<34} {:>9} {:>9}  {:<30} {}",
            result.image.name(),
            result.image.reference(),
            megabytes(result.image_bytes),
            megabytes(result.archive_bytes),
            result.version_output,
            if result.problems.is_empty() {
                "ok"
            } else {
                "FAILED"
            }
        );
    }
    text
}

/// Decimal megabytes with one decimal, as registries and the size limit count them.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Parses a size as container tools print it (`562 KB`, `14.3 MB`, `1.2GB`: decimal units).
fn parse_human_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" | "K" => 1e3,
        "MB" | "M" => 1e6,
        "GB" | "G" => 1e9,
        _ => return None,
    };
    Some((number * factor).round() as u64)
}

/// Splits a list as Go templates print it (`[/usr/local/bin/gateway --flag]`).
fn parse_go_list(text: &str) -> Vec<String> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Containerd's image-name annotation in an OCI index.
const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// Adds containerd's image-name annotation ([`CONTAINERD_IMAGE_NAME`], the fully qualified
/// name Kubernetes resolves `order-pipeline/<name>:<version>` to, and a name with a registry
/// host such as `localhost/...` stays as it is) to an OCI index holding one manifest, as buildah
/// writes it. An annotation already there is kept.
fn name_for_containerd(index_json: &str, reference: &str) -> Result<String> {
    let mut index: serde_json::Value =
        serde_json::from_str(index_json).context("the OCI index is not JSON")?;
    let annotations = match index.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        Some(manifests) if manifests.len() == 1 => manifests[0]
            .get_mut("annotations")
            .and_then(|a| a.as_object_mut())
            .context("the OCI index's manifest has no annotations")?,
        _ => bail!("expected an OCI index with exactly one manifest"),
    };
    annotations
        .entry(CONTAINERD_IMAGE_NAME)
        .or_insert_with(|| crate::cluster::qualified_reference(reference).into());
    Ok(index.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_all_images_by_default_and_named_ones_in_order() {
        let names = |images: Vec<Image>| images.iter().map(|i| i.name()).collect::<Vec<_>>();
        assert_eq!(
            names(select(&[]).unwrap()),
            ["gateway", "processor", "notifier", "dashboard", "operator"]
        );
        let picked = select(&["operator".into(), "gateway".into(), "operator".into()]).unwrap();
        assert_eq!(names(picked), ["gateway", "operator"]);
        let error = select(&["web".into()]).unwrap_err().to_string();
        assert!(
            error.contains("\"web\"") && error.contains("dashboard"),
            "{error}"
        );
    }

    #[test]
    fn names_archives_and_references_by_version() {
        let operator = Image::Operator;
        assert_eq!(
            operator.reference(),
            format!("order-pipeline/operator:{VERSION}")
        );
        assert_eq!(
            archive_path(Path::new("/cache/images"), operator),
            PathBuf::from(format!("/cache/images/operator-{VERSION}.oci.tar"))
        );
        assert_eq!(
            operator.version_line(),
            format!("order-pipeline-operator {VERSION}")
        );
    }

    #[test]
    fn parses_sizes_as_container_tools_print_them() {
        assert_eq!(parse_human_size("562 KB"), Some(562_000));
        assert_eq!(parse_human_size("14.3 MB"), Some(14_300_000));
        assert_eq!(parse_human_size("1.2GB"), Some(1_200_000_000));
        assert_eq!(parse_human_size("0 B"), Some(0));
        assert_eq!(parse_human_size("12 parsecs"), None);
        assert_eq!(parse_human_size(""), None);
        assert_eq!(megabytes(14_349_999), "14.3 MB");
    }

    #[test]
    fn parses_go_template_lists() {
        assert_eq!(
            parse_go_list("[/usr/local/bin/gateway]\n"),
            ["/usr/local/bin/gateway"]
        );
        assert_eq!(parse_go_list("[/bin/a --b]"), ["/bin/a", "--b"]);
        assert!(parse_go_list("[]").is_empty());
    }

    #[test]
    fn names_the_image_for_containerd() {
        let index = r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:ab","size":1,"annotations":{"org.opencontainers.image.ref.name":"order-pipeline/gateway:0.1.0"}}]}"#;
        let named = name_for_containerd(index, "order-pipeline/gateway:0.1.0").unwrap();
        assert!(named.contains(r#""annotations":{"io.containerd.image.name":"docker.io/order-pipeline/gateway:0.1.0","org.opencontainers.image.ref.name":"order-pipeline/gateway:0.1.0"}"#), "{named}");
        // Idempotent, and refuses what it does not understand.
        assert_eq!(name_for_containerd(&named, "x").unwrap(), named);
        assert!(name_for_containerd(r#"{"manifests":[]}"#, "x").is_err());
        // A name with a registry host is already what the CRI looks up.
        let deps = name_for_containerd(
            index,
            "localhost/order-pipeline-deps/redis:7.0.15-0123456789ab",
        )
        .unwrap();
        assert!(deps.contains(r#""io.containerd.image.name":"localhost/order-pipeline-deps/redis:7.0.15-0123456789ab""#), "{deps}");
    }

    /// The Dockerfile and this command agree on the targets, binaries, ports and user, and the
    /// Dockerfile pulls nothing.
    #[test]
    fn dockerfile_has_a_scratch_target_per_image() {
        let dockerfile = fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
        let stages: Vec<(&str, &str)> = dockerfile
            .split("\nFROM ")
            .skip(1)
            .map(|stage| {
                let header = stage.lines().next().unwrap();
                let (_base, name) = header.split_once(" AS ").unwrap();
                (name.trim(), stage)
            })
            .collect();
        let stage = |name: &str| {
            stages
                .iter()
                .find(|(stage, _)| *stage == name)
                .map(|(_, body)| *body)
                .unwrap_or_else(|| panic!("no Dockerfile target {name}"))
        };
        for line in dockerfile.lines().filter(|line| line.starts_with("FROM ")) {
            let base = line["FROM ".len()..].split_whitespace().next().unwrap();
            assert!(
                base == "scratch" || stages.iter().any(|(name, _)| *name == base),
                "the Dockerfile pulls {base}"
            );
        }
        assert!(stage("base").contains(&format!("USER {IMAGE_USER}")));
        for image in images() {
            let name = image.name();
            let body = stage(name);
            let path = format!("/usr/local/bin/{}", image.binary());
            assert!(
                body.contains(&format!("COPY {} {path}\n", image.binary())),
                "{name}"
            );
            assert!(body.contains(&format!("ENTRYPOINT [\"{path}\"]")), "{name}");
            let ports: Vec<String> = image.ports().iter().map(u16::to_string).collect();
            assert!(
                body.contains(&format!("EXPOSE {}\n", ports.join(" "))),
                "{name}"
            );
            assert!(!body.contains("\nUSER "), "{name} overrides the user");
        }
    }

    /// The Helm chart runs the operator image with the chart's appVersion as its tag, and this
    /// command tags images with the workspace version: they must be the same.
    #[test]
    fn chart_app_version_is_the_image_tag() {
        let chart =
            fs::read_to_string(workspace_root().join("charts/order-pipeline-operator/Chart.yaml"))
                .unwrap();
        let app_version = chart
            .lines()
            .find_map(|line| line.strip_prefix("appVersion:"))
            .map(|value| value.trim().trim_matches('"'))
            .expect("Chart.yaml has an appVersion");
        assert_eq!(app_version, VERSION);
        let values =
            fs::read_to_string(workspace_root().join("charts/order-pipeline-operator/values.yaml"))
                .unwrap();
        assert!(values.contains(&format!("repository: {REPOSITORY}/operator\n")));
    }
}
