//! Building the control plane's binaries with Go from the module proxy, once per pinned version.
//!
//! kwok and helm install with a plain `go install <package>@<version>`. Kubernetes and etcd cannot:
//! their go.mod files `replace` sibling modules (Kubernetes' staging repositories; etcd's api,
//! client and pkg modules) with directories of their own repository, and `go install` refuses a
//! module with replace directives. For those two a small wrapper module is generated from the
//! release's own go.mod: it requires the release and points every locally replaced sibling at the
//! version published from that same release, then `go build` runs inside it.
//!
//! Go's default module and build caches are used on purpose: a machine or CI runner that has built
//! once rebuilds in seconds. Results are installed under `bin/<name>-<version>/`, and a directory
//! only takes that name, with its completion marker, once every binary is in it, so an interrupted
//! build is simply redone.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::super::process::{run_capture, run_logged};
use super::super::{Layout, find_program, remove_dir_if_exists};
use super::{COREDNS_VERSION, ETCD_VERSION, HELM_VERSION, KUBERNETES_VERSION, KWOK_VERSION};

/// Written last into an installed directory; its presence means every binary is there.
const MARKER: &str = ".complete";
/// etcd 3.6.16, kwok 0.8.0 and helm 3.22.0 declare `go 1.26.0`.
const MIN_GO: (u32, u32) = (1, 26);

/// Where the built programs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub kwok: PathBuf,
    /// kwok's default ("fast") stages, a kustomize directory kwok loads with `--config`.
    pub kwok_stages: PathBuf,
    pub helm: PathBuf,
}

/// Builds whatever is not installed yet, one build at a time.
pub fn ensure(layout: &Layout) -> Result<Binaries> {
    let bin = layout.bin();
    let kubernetes_dir = bin.join(format!("kubernetes-{KUBERNETES_VERSION}"));
    let etcd_dir = bin.join(format!("etcd-{ETCD_VERSION}"));
    let kwok_dir = bin.join(format!("kwok-{KWOK_VERSION}"));
    let helm_dir = bin.join(format!("helm-{HELM_VERSION}"));

    // Go is only needed when something is missing: a machine with everything built runs without.
    if [&kubernetes_dir, &etcd_dir, &kwok_dir, &helm_dir]
        .iter()
        .any(|dir| !is_complete(dir))
    {
        let go = find_go()?;
        if !is_complete(&kubernetes_dir) {
            build_wrapped(layout, &go, &kubernetes()?, &kubernetes_dir)?;
        }
        if !is_complete(&etcd_dir) {
            build_wrapped(layout, &go, &etcd(), &etcd_dir)?;
        }
        if !is_complete(&kwok_dir) {
            build_kwok(layout, &go, &kwok_dir)?;
        }
        if !is_complete(&helm_dir) {
            build_helm(layout, &go, &helm_dir)?;
        }
    }

    Ok(Binaries {
        etcd: etcd_dir.join("etcd"),
        kube_apiserver: kubernetes_dir.join("kube-apiserver"),
        kube_controller_manager: kubernetes_dir.join("kube-controller-manager"),
        kube_scheduler: kubernetes_dir.join("kube-scheduler"),
        kubectl: kubernetes_dir.join("kubectl"),
        kwok: kwok_dir.join("kwok"),
        kwok_stages: kwok_dir.join("stage/fast"),
        helm: helm_dir.join("helm"),
    })
}

/// Where the real node's programs are (see [`ensure_node`]).
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
    pub coredns: PathBuf,
    /// The statically linked pause program every pod sandbox runs.
    pub pause: PathBuf,
}

/// Builds what a real node needs beyond the control plane, once per version: kubelet and
/// kube-proxy from the same Kubernetes release, CoreDNS with only the plugins the cluster's
/// Corefile uses, and pause compiled from the release's own C source.
pub fn ensure_node(layout: &Layout) -> Result<NodeBinaries> {
    let bin = layout.bin();
    let node_dir = bin.join(format!("kubernetes-node-{KUBERNETES_VERSION}"));
    let coredns_dir = bin.join(format!("coredns-{COREDNS_VERSION}"));
    let pause_dir = bin.join(format!("pause-{KUBERNETES_VERSION}"));
    if [&node_dir, &coredns_dir, &pause_dir]
        .iter()
        .any(|dir| !is_complete(dir))
    {
        let go = find_go()?;
        if !is_complete(&node_dir) {
            build_wrapped(layout, &go, &kubernetes_node()?, &node_dir)?;
        }
        if !is_complete(&coredns_dir) {
            build_coredns(layout, &go, &coredns_dir)?;
        }
        if !is_complete(&pause_dir) {
            build_pause(layout, &go, &pause_dir)?;
        }
    }
    Ok(NodeBinaries {
        kubelet: node_dir.join("kubelet"),
        kube_proxy: node_dir.join("kube-proxy"),
        coredns: coredns_dir.join("coredns"),
        pause: pause_dir.join("pause"),
    })
}

/// The CoreDNS plugins the node's Corefile uses. CoreDNS's own `main` links all ~60 plugins,
/// cloud DNS providers and their SDKs among them; this one links only these, which roughly halves
/// what is downloaded and compiled.
pub const COREDNS_PLUGINS: [&str; 9] = [
    "bind",
    "cache",
    "errors",
    "health",
    "kubernetes",
    "loadbalance",
    "ready",
    "reload",
    "template",
];

/// The `main` package of the trimmed CoreDNS: the upstream `coredns.go` with the listed plugins
/// instead of `core/plugin`, which imports every one. The plugins' execution order stays the one
/// of upstream's generated `dnsserver.Directives`, which names all plugins whether linked or not.
pub fn coredns_main(plugins: &[&str]) -> String {
    let mut text = String::from(
        "// Generated by `cargo xtask cluster up`: CoreDNS with only the plugins the node uses.\n\
         package main\n\nimport (\n",
    );
    for plugin in plugins {
        text.push_str(&format!(
            "\t_ \"github.com/coredns/coredns/plugin/{plugin}\"\n"
        ));
    }
    text.push_str(
        "\n\t\"github.com/coredns/coredns/coremain\"\n)\n\nfunc main() {\n\tcoremain.Run()\n}\n",
    );
    text
}

fn build_coredns(layout: &Layout, go: &Path, install_dir: &Path) -> Result<()> {
    let start = Instant::now();
    println!("  building coredns {COREDNS_VERSION} (once per version)");
    let dir = fresh_build_dir(layout, "coredns", COREDNS_VERSION)?;
    let log = dir.join("build.log");
    let upstream = download(go, &dir, "github.com/coredns/coredns", COREDNS_VERSION)?;
    let upstream_go_mod = fs::read_to_string(&upstream.go_mod)
        .with_context(|| format!("failed to read {}", upstream.go_mod.display()))?;
    if !local_replacements(&upstream_go_mod).is_empty() {
        bail!("coredns {COREDNS_VERSION}'s go.mod replaces modules with local directories");
    }
    let mut go_mod = String::from("module orderpipeline/build/coredns\n\n");
    for line in upstream_go_mod.lines().map(strip_comment) {
        if line.starts_with("go ") || line.starts_with("godebug ") {
            go_mod.push_str(line);
            go_mod.push('\n');
        }
    }
    go_mod.push_str(&format!(
        "\nrequire github.com/coredns/coredns {COREDNS_VERSION}\n"
    ));
    fs::write(dir.join("go.mod"), go_mod).context("failed to write the coredns go.mod")?;
    fs::write(dir.join("main.go"), coredns_main(&COREDNS_PLUGINS))
        .context("failed to write the coredns main package")?;
    // tidy resolves the plugins' dependencies at the versions CoreDNS's own go.mod selects.
    run_logged(
        "go mod tidy (coredns)",
        go_command(go, &dir).args(["mod", "tidy"]),
        &log,
    )?;
    let staging = fresh_staging_dir(install_dir)?;
    run_logged(
        "go build coredns",
        go_command(go, &dir)
            .env("CGO_ENABLED", "0")
            .args([
                "build",
                "-trimpath",
                "-ldflags",
                &format!(
                    "-s -w -X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}"
                ),
                "-o",
            ])
            .arg(staging.join("coredns"))
            .arg("."),
        &log,
    )?;
    install(
        &staging,
        install_dir,
        &format!("github.com/coredns/coredns@{COREDNS_VERSION}"),
    )?;
    println!(
        "  built coredns {COREDNS_VERSION} in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The pause program, compiled as the release's `build/pause/Makefile` does: static, from
/// `build/pause/linux/pause.c` of the Kubernetes module already in Go's module cache.
fn build_pause(layout: &Layout, go: &Path, install_dir: &Path) -> Result<()> {
    let dir = fresh_build_dir(layout, "pause", KUBERNETES_VERSION)?;
    let source = download(go, &dir, "k8s.io/kubernetes", KUBERNETES_VERSION)?
        .dir
        .join("build/pause/linux/pause.c");
    let staging = fresh_staging_dir(install_dir)?;
    let output = staging.join("pause");
    run_logged(
        "gcc pause.c",
        Command::new("gcc")
            .args(["-Os", "-Wall", "-Werror", "-static"])
            .arg(format!("-DVERSION={KUBERNETES_VERSION}-orderpipeline"))
            .arg("-o")
            .arg(&output)
            .arg(&source),
        &dir.join("build.log"),
    )?;
    run_logged(
        "strip pause",
        Command::new("strip").arg(&output),
        &dir.join("build.log"),
    )?;
    install(
        &staging,
        install_dir,
        &format!("pause from k8s.io/kubernetes@{KUBERNETES_VERSION}"),
    )
}

pub(in crate::env) fn is_complete(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// The Go toolchain, new enough for every pinned module.
pub(in crate::env) fn find_go() -> Result<PathBuf> {
    // PATH first, so a newer Go someone put there wins; then where the go.dev tarball installs,
    // which non-login shells often do not have on PATH.
    let go = find_program("go", &[])
        .or_else(|| find_program("go", &["/usr/local/go/bin/go"]))
        .context(
            "go is not installed, and the Kubernetes binaries are built from source with it. \
             Install Go 1.26 or newer from https://go.dev/dl/ into /usr/local/go (Debian's \
             `golang` package is too old)",
        )?;
    let version = run_capture(Command::new(&go).args(["env", "GOVERSION"]))?;
    if let Some(found) = parse_go_version(version.trim())
        && found < MIN_GO
    {
        bail!(
            "{} is {}, but building the pinned Kubernetes components needs Go {}.{} or newer; \
             install it from https://go.dev/dl/",
            go.display(),
            version.trim(),
            MIN_GO.0,
            MIN_GO.1
        );
    }
    Ok(go)
}

/// `go1.26.8` (or `go1.26rc1`) → (1, 26); `None` for development builds, which are let through.
pub fn parse_go_version(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// A `go` command for a build directory. `GOWORK=off` keeps a go.work somewhere above the
/// directory from pulling the build into someone else's workspace.
pub(in crate::env) fn go_command(go: &Path, dir: &Path) -> Command {
    let mut command = Command::new(go);
    command.current_dir(dir).env("GOWORK", "off");
    command
}

/// A directory for one build's files and log, emptied first so nothing of an earlier attempt
/// (a half-written go.mod, an old log) leaks into this one.
pub(in crate::env) fn fresh_build_dir(
    layout: &Layout,
    name: &str,
    version: &str,
) -> Result<PathBuf> {
    let dir = layout.go().join("build").join(format!("{name}-{version}"));
    remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    Ok(dir)
}

/// An empty directory next to `install_dir` to build into.
pub(in crate::env) fn fresh_staging_dir(install_dir: &Path) -> Result<PathBuf> {
    let name = install_dir
        .file_name()
        .context("install directory has a name")?
        .to_string_lossy();
    let staging = install_dir.with_file_name(format!(".{name}.partial"));
    remove_dir_if_exists(&staging)?;
    fs::create_dir_all(&staging)
        .with_context(|| format!("failed to create {}", staging.display()))?;
    Ok(staging)
}

/// Marks the staging directory complete and moves it to its final name.
pub(in crate::env) fn install(staging: &Path, install_dir: &Path, what: &str) -> Result<()> {
    fs::write(staging.join(MARKER), format!("{what}\n"))
        .with_context(|| format!("failed to write the marker in {}", staging.display()))?;
    remove_dir_if_exists(install_dir)?;
    fs::rename(staging, install_dir)
        .with_context(|| format!("failed to install {}", install_dir.display()))
}

/// What `go mod download -json <module>@<version>` reports: the module's go.mod file and source.
/// What `go mod download -json` says of a module: where its go.mod and its source are.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Downloaded {
    #[serde(rename = "GoMod")]
    go_mod: PathBuf,
    #[serde(rename = "Dir")]
    pub dir: PathBuf,
}

pub(super) fn download(go: &Path, dir: &Path, module: &str, version: &str) -> Result<Downloaded> {
    println!("  downloading {module}@{version}");
    let json = run_capture(
        go_command(go, dir)
            .args(["mod", "download", "-json"])
            .arg(format!("{module}@{version}")),
    )
    .with_context(|| format!("failed to download {module}@{version}"))?;
    serde_json::from_str(&json)
        .with_context(|| format!("`go mod download -json` gave no GoMod and Dir: {json}"))
}

/// A release built through a generated wrapper module (see the module documentation).
#[derive(Debug)]
struct Wrapped {
    /// Names the build directory and the wrapper module.
    name: &'static str,
    module: &'static str,
    version: &'static str,
    /// Local `replace` targets starting with this are the release's sibling modules.
    sibling_prefix: &'static str,
    /// The version the siblings are published at from this release.
    sibling_version: String,
    /// Main packages, each with the name its binary is installed as.
    binaries: Vec<(&'static str, &'static str)>,
    ldflags: String,
}

fn kubernetes() -> Result<Wrapped> {
    kubernetes_release(
        "kubernetes",
        vec![
            ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
            (
                "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-controller-manager",
            ),
            ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
            ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
        ],
    )
}

/// The node's own programs: built apart from the control plane so the kwok environment, which
/// needs none of them, never pays for them; they share the Go build cache with it, so the second
/// build compiles little beyond the two main packages.
fn kubernetes_node() -> Result<Wrapped> {
    kubernetes_release(
        "kubernetes-node",
        vec![
            ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
            ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
        ],
    )
}

fn kubernetes_release(
    name: &'static str,
    binaries: Vec<(&'static str, &'static str)>,
) -> Result<Wrapped> {
    let (major, minor) = release_major_minor(KUBERNETES_VERSION)?;
    // What the release build stamps (hack/lib/version.sh), so `kubectl version` and the API
    // server's /version report the real version instead of v0.0.0-master.
    let mut ldflags = String::from("-s -w");
    for package in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        ldflags.push_str(&format!(
            " -X {package}.gitVersion={KUBERNETES_VERSION} -X {package}.gitMajor={major} \
             -X {package}.gitMinor={minor} -X {package}.gitTreeState=clean"
        ));
    }
    Ok(Wrapped {
        name,
        module: "k8s.io/kubernetes",
        version: KUBERNETES_VERSION,
        sibling_prefix: "./staging/",
        sibling_version: staging_version(KUBERNETES_VERSION)?,
        binaries,
        ldflags,
    })
}

fn etcd() -> Wrapped {
    Wrapped {
        name: "etcd",
        module: "go.etcd.io/etcd/server/v3",
        version: ETCD_VERSION,
        // The server module's siblings are its neighbours in the repository (../api, ../pkg, …);
        // its `./FORBIDDEN_DEPENDENCY` replacements only guard against bad imports.
        sibling_prefix: "../",
        sibling_version: ETCD_VERSION.to_string(),
        binaries: vec![("go.etcd.io/etcd/server/v3", "etcd")],
        ldflags: "-s -w".to_string(),
    }
}

fn build_wrapped(layout: &Layout, go: &Path, spec: &Wrapped, install_dir: &Path) -> Result<()> {
    let start = Instant::now();
    println!(
        "  building {} {} (once per version)",
        spec.name, spec.version
    );
    let dir = fresh_build_dir(layout, spec.name, spec.version)?;
    let log = dir.join("build.log");
    let upstream = download(go, &dir, spec.module, spec.version)?;
    let upstream_go_mod = fs::read_to_string(&upstream.go_mod)
        .with_context(|| format!("failed to read {}", upstream.go_mod.display()))?;
    let go_mod = wrapper_go_mod(
        &format!("orderpipeline/build/{}", spec.name),
        spec.module,
        spec.version,
        &upstream_go_mod,
        spec.sibling_prefix,
        &spec.sibling_version,
    )?;
    fs::write(dir.join("go.mod"), go_mod).context("failed to write the wrapper go.mod")?;

    let packages: Vec<&str> = spec.binaries.iter().map(|(package, _)| *package).collect();
    run_logged(
        &format!("go get {}@{}", spec.module, spec.version),
        go_command(go, &dir).arg("get").args(
            packages
                .iter()
                .map(|package| format!("{package}@{}", spec.version)),
        ),
        &log,
    )?;
    let staging = fresh_staging_dir(install_dir)?;
    // `-o <dir>/` builds every package in one command, so they share compilation and link in
    // parallel.
    let output = format!("{}/", staging.display());
    run_logged(
        &format!(
            "go build {}",
            spec.binaries
                .iter()
                .map(|(_, name)| *name)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        go_command(go, &dir)
            .args([
                "build",
                "-trimpath",
                "-ldflags",
                &spec.ldflags,
                "-o",
                &output,
            ])
            .args(&packages),
        &log,
    )?;
    for (package, name) in &spec.binaries {
        let built = staging.join(go_default_binary_name(package));
        let wanted = staging.join(name);
        if built != wanted {
            fs::rename(&built, &wanted)
                .with_context(|| format!("failed to rename {} to {name}", built.display()))?;
        }
    }
    install(
        &staging,
        install_dir,
        &format!("{}@{}", spec.module, spec.version),
    )?;
    println!(
        "  built {} {} in {:.0}s",
        spec.name,
        spec.version,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `go install <package>@<version>` into a staging directory.
fn go_install(
    go: &Path,
    dir: &Path,
    package: &str,
    version: &str,
    ldflags: &str,
    staging: &Path,
) -> Result<()> {
    run_logged(
        &format!("go install {package}@{version}"),
        go_command(go, dir)
            .env("GOBIN", staging)
            .args(["install", "-trimpath", "-ldflags", ldflags])
            .arg(format!("{package}@{version}")),
        &dir.join("build.log"),
    )
}

fn build_kwok(layout: &Layout, go: &Path, install_dir: &Path) -> Result<()> {
    let start = Instant::now();
    println!("  building kwok {KWOK_VERSION} (once per version)");
    let dir = fresh_build_dir(layout, "kwok", KWOK_VERSION)?;
    let staging = fresh_staging_dir(install_dir)?;
    go_install(
        go,
        &dir,
        "sigs.k8s.io/kwok/cmd/kwok",
        KWOK_VERSION,
        "-s -w",
        &staging,
    )?;
    // The stages ship as YAML in kwok's source, not inside the binary; a copy next to the binary
    // keeps working when Go's module cache is cleaned.
    let source = download(go, &dir, "sigs.k8s.io/kwok", KWOK_VERSION)?;
    copy_yaml_tree(&source.dir.join("kustomize/stage"), &staging.join("stage"))?;
    if !staging.join("stage/fast/kustomization.yaml").is_file() {
        bail!("kwok {KWOK_VERSION} has no kustomize/stage/fast; its default stages moved");
    }
    install(
        &staging,
        install_dir,
        &format!("sigs.k8s.io/kwok@{KWOK_VERSION}"),
    )?;
    println!(
        "  built kwok {KWOK_VERSION} in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn build_helm(layout: &Layout, go: &Path, install_dir: &Path) -> Result<()> {
    let start = Instant::now();
    println!("  building helm {HELM_VERSION} (once per version)");
    let dir = fresh_build_dir(layout, "helm", HELM_VERSION)?;
    let staging = fresh_staging_dir(install_dir)?;
    let source = download(go, &dir, "helm.sh/helm/v3", HELM_VERSION)?;
    let go_mod = fs::read_to_string(&source.go_mod)
        .with_context(|| format!("failed to read {}", source.go_mod.display()))?;
    // As helm's Makefile does for a release: its version, and the Kubernetes version `helm
    // template` assumes without a cluster, derived from the client-go it is built with.
    let (major, minor) = helm_default_kube_version(&go_mod)
        .context("helm's go.mod does not require k8s.io/client-go v0.x.y")?;
    let mut ldflags = format!("-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}");
    for package in [
        "helm.sh/helm/v3/pkg/chartutil",
        "helm.sh/helm/v3/pkg/lint/rules",
    ] {
        ldflags.push_str(&format!(
            " -X {package}.k8sVersionMajor={major} -X {package}.k8sVersionMinor={minor}"
        ));
    }
    go_install(
        go,
        &dir,
        "helm.sh/helm/v3/cmd/helm",
        HELM_VERSION,
        &ldflags,
        &staging,
    )?;
    install(
        &staging,
        install_dir,
        &format!("helm.sh/helm/v3@{HELM_VERSION}"),
    )?;
    println!(
        "  built helm {HELM_VERSION} in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Copies the YAML files of a directory tree, leaving out tests' fixtures.
fn copy_yaml_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("failed to create {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("failed to read {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type()?.is_dir() {
            if name != "testdata" {
                copy_yaml_tree(&path, &to.join(&name))?;
            }
        } else if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            let target = to.join(&name);
            // Through read and write rather than fs::copy: the module cache's files are
            // read-only, and the copy should not be.
            let bytes =
                fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
            fs::write(&target, bytes)
                .with_context(|| format!("failed to write {}", target.display()))?;
        }
    }
    Ok(())
}

/// The wrapper module's go.mod: it requires `module@version` and replaces each sibling the
/// upstream go.mod points at a local directory under `sibling_prefix` with the published module at
/// `sibling_version`. The upstream `go` and `godebug` lines are kept, so the build uses the
/// language version and runtime defaults the release was made with.
pub fn wrapper_go_mod(
    wrapper: &str,
    module: &str,
    version: &str,
    upstream: &str,
    sibling_prefix: &str,
    sibling_version: &str,
) -> Result<String> {
    let siblings: Vec<String> = local_replacements(upstream)
        .into_iter()
        .filter(|(_, target)| target.starts_with(sibling_prefix))
        .map(|(path, _)| path)
        .collect();
    if siblings.is_empty() {
        bail!(
            "{module}@{version}'s go.mod replaces nothing with a directory under {sibling_prefix}; \
             its layout changed and the wrapper module needs revisiting"
        );
    }
    let mut text = format!(
        "// Generated by `cargo xtask env up` from {module}@{version}'s go.mod.\n\
         module {wrapper}\n\n"
    );
    for line in upstream.lines().map(strip_comment) {
        if line.starts_with("go ") || line.starts_with("godebug ") {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(&format!("\nrequire {module} {version}\n\nreplace (\n"));
    for path in siblings {
        text.push_str(&format!("\t{path} => {path} {sibling_version}\n"));
    }
    text.push_str(")\n");
    Ok(text)
}

/// `(module path, directory)` for every replace directive of a go.mod whose target is a local
/// directory, in file order; both the one-line and the block form.
pub fn local_replacements(go_mod: &str) -> Vec<(String, String)> {
    let mut replacements = Vec::new();
    let mut in_block = false;
    for line in go_mod.lines().map(strip_comment) {
        let directive = if in_block {
            if line == ")" {
                in_block = false;
                continue;
            }
            line
        } else if let Some(rest) = line.strip_prefix("replace") {
            let rest = rest.trim();
            if rest == "(" {
                in_block = true;
                continue;
            }
            if !line.starts_with("replace ") && !line.starts_with("replace\t") {
                continue;
            }
            rest
        } else {
            continue;
        };
        let Some((left, right)) = directive.split_once("=>") else {
            continue;
        };
        let (Some(path), Some(target), None) = (
            left.split_whitespace().next(),
            right.split_whitespace().next(),
            right.split_whitespace().nth(1),
        ) else {
            // A target with a version is a module, not a directory.
            continue;
        };
        if target.starts_with("./") || target.starts_with("../") || target.starts_with('/') {
            replacements.push((path.to_string(), target.to_string()));
        }
    }
    replacements
}

fn strip_comment(line: &str) -> &str {
    line.split_once("//").map_or(line, |(code, _)| code).trim()
}

/// `v1.34.4` → `v0.34.4`: Kubernetes publishes its staging modules as v0 of the same minor.
pub fn staging_version(kubernetes: &str) -> Result<String> {
    let rest = kubernetes
        .strip_prefix("v1.")
        .with_context(|| format!("{kubernetes:?} is not a v1.x.y Kubernetes version"))?;
    Ok(format!("v0.{rest}"))
}

/// `v1.34.4` → ("1", "34").
fn release_major_minor(version: &str) -> Result<(&str, &str)> {
    let mut parts = version.trim_start_matches('v').split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => bail!("{version:?} is not a vMAJOR.MINOR.PATCH version"),
    }
}

/// The default Kubernetes version helm's Makefile stamps: client-go `v0.M.p` means `1.M`.
pub fn helm_default_kube_version(go_mod: &str) -> Option<(u32, u32)> {
    go_mod.lines().map(strip_comment).find_map(|line| {
        let line = line.strip_prefix("require").map_or(line, str::trim);
        let mut words = line.split_whitespace();
        if words.next() != Some("k8s.io/client-go") {
            return None;
        }
        let version = words.next()?.strip_prefix('v')?;
        let mut numbers = version.split('.');
        let major: u32 = numbers.next()?.parse().ok()?;
        let minor: u32 = numbers.next()?.parse().ok()?;
        Some((major + 1, minor))
    })
}

/// The file name `go build -o <dir>/` gives a main package: its last path element, or the one
/// before when the last is a major-version suffix (`…/server/v3` → `server`).
pub fn go_default_binary_name(package: &str) -> &str {
    let mut elements = package.rsplit('/');
    let last = elements.next().unwrap_or(package);
    match elements.next() {
        Some(previous) if is_major_version_suffix(last) => previous,
        _ => last,
    }
}

/// `v2`, `v3`, … but not `v0`, `v1` or `v01`.
fn is_major_version_suffix(element: &str) -> bool {
    element.strip_prefix('v').is_some_and(|digits| {
        !digits.is_empty()
            && digits.bytes().all(|byte| byte.is_ascii_digit())
            && !digits.starts_with('0')
            && digits != "1"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBERNETES_GO_MOD: &str = "\
// This is a generated file. Do not edit directly.

module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
	github.com/spf13/cobra v1.9.1
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go // a comment
	github.com/example/fork => github.com/example/fork v1.2.3
)

replace example.com/old v1.0.0 => ./third_party/old
";

    const ETCD_GO_MOD: &str = "\
module go.etcd.io/etcd/server/v3

go 1.26.0

toolchain go1.26.10

require go.etcd.io/etcd/api/v3 v3.6.16

replace (
	go.etcd.io/etcd/api/v3 => ../api
	go.etcd.io/etcd/client/pkg/v3 => ../client/pkg
)

// Bad imports are sometimes causing attempts to pull that code.
replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY

replace go.etcd.io/tests/v3 => ./FORBIDDEN_DEPENDENCY
";

    #[test]
    fn local_replacements_reads_blocks_and_single_lines() {
        assert_eq!(
            local_replacements(ETCD_GO_MOD),
            vec![
                ("go.etcd.io/etcd/api/v3".to_string(), "../api".to_string()),
                (
                    "go.etcd.io/etcd/client/pkg/v3".to_string(),
                    "../client/pkg".to_string()
                ),
                (
                    "go.etcd.io/etcd".to_string(),
                    "./FORBIDDEN_DEPENDENCY".to_string()
                ),
                (
                    "go.etcd.io/tests/v3".to_string(),
                    "./FORBIDDEN_DEPENDENCY".to_string()
                ),
            ]
        );
    }

    #[test]
    fn module_replacements_are_not_local() {
        let replaced: Vec<String> = local_replacements(KUBERNETES_GO_MOD)
            .into_iter()
            .map(|(path, _)| path)
            .collect();
        assert_eq!(
            replaced,
            vec!["k8s.io/api", "k8s.io/client-go", "example.com/old"]
        );
    }

    #[test]
    fn kubernetes_wrapper_pins_staging_modules_and_keeps_go_and_godebug() {
        let text = wrapper_go_mod(
            "orderpipeline/build/kubernetes",
            "k8s.io/kubernetes",
            "v1.34.4",
            KUBERNETES_GO_MOD,
            "./staging/",
            "v0.34.4",
        )
        .unwrap();
        assert_eq!(
            text,
            "// Generated by `cargo xtask env up` from k8s.io/kubernetes@v1.34.4's go.mod.\n\
             module orderpipeline/build/kubernetes\n\
             \n\
             go 1.24.0\n\
             godebug default=go1.24\n\
             \n\
             require k8s.io/kubernetes v1.34.4\n\
             \n\
             replace (\n\
             \tk8s.io/api => k8s.io/api v0.34.4\n\
             \tk8s.io/client-go => k8s.io/client-go v0.34.4\n\
             )\n"
        );
    }

    #[test]
    fn etcd_wrapper_skips_forbidden_dependency_guards_and_toolchain() {
        let text = wrapper_go_mod(
            "orderpipeline/build/etcd",
            "go.etcd.io/etcd/server/v3",
            "v3.6.16",
            ETCD_GO_MOD,
            "../",
            "v3.6.16",
        )
        .unwrap();
        assert!(text.contains("\ngo 1.26.0\n"));
        assert!(!text.contains("toolchain"));
        assert!(text.contains("\tgo.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.16\n"));
        assert!(text.contains(
            "\tgo.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 v3.6.16\n"
        ));
        assert!(!text.contains("FORBIDDEN"));
        assert!(!text.contains("go.etcd.io/etcd =>"));
    }

    #[test]
    fn wrapper_fails_when_the_upstream_layout_changed() {
        assert!(
            wrapper_go_mod("w", "m", "v1", "module m\n\ngo 1.24\n", "./staging/", "v0").is_err()
        );
    }

    #[test]
    fn staging_version_is_v0_of_the_same_release() {
        assert_eq!(staging_version("v1.34.4").unwrap(), "v0.34.4");
        assert!(staging_version("v2.0.0").is_err());
    }

    #[test]
    fn release_major_minor_splits_version() {
        assert_eq!(release_major_minor("v1.34.4").unwrap(), ("1", "34"));
        assert!(release_major_minor("v1").is_err());
    }

    #[test]
    fn go_versions() {
        assert_eq!(parse_go_version("go1.26.8"), Some((1, 26)));
        assert_eq!(parse_go_version("go1.26rc1"), Some((1, 26)));
        assert_eq!(parse_go_version("go1.9"), Some((1, 9)));
        assert_eq!(parse_go_version("devel go1.27-abcdef"), None);
        assert!(parse_go_version("go1.24.3").unwrap() < MIN_GO);
    }

    #[test]
    fn helm_kube_version_follows_client_go() {
        let go_mod = "module helm.sh/helm/v3\n\nrequire (\n\tk8s.io/api v0.37.0\n\tk8s.io/client-go v0.37.0\n)\n";
        assert_eq!(helm_default_kube_version(go_mod), Some((1, 37)));
        assert_eq!(
            helm_default_kube_version("require k8s.io/client-go v0.34.2 // indirect\n"),
            Some((1, 34))
        );
        assert_eq!(helm_default_kube_version("module x\n"), None);
    }

    #[test]
    fn default_binary_names_skip_major_version_suffixes() {
        assert_eq!(
            go_default_binary_name("k8s.io/kubernetes/cmd/kubectl"),
            "kubectl"
        );
        assert_eq!(
            go_default_binary_name("go.etcd.io/etcd/server/v3"),
            "server"
        );
        assert_eq!(go_default_binary_name("example.com/tool/v1"), "v1");
        assert_eq!(go_default_binary_name("example.com/tool/v0"), "v0");
        assert_eq!(go_default_binary_name("v3"), "v3");
    }

    #[test]
    fn reads_what_go_mod_download_says() {
        let json = "{\n\t\"Path\": \"k8s.io/kubernetes\",\n\t\"GoMod\": \"/root/go/pkg/mod/cache/download/k8s.io/kubernetes/@v/v1.34.4.mod\",\n\t\"Dir\": \"/tmp/a \\\"quoted\\\" dir\"\n}\n";
        let downloaded: Downloaded = serde_json::from_str(json).unwrap();
        assert_eq!(
            downloaded.go_mod,
            Path::new("/root/go/pkg/mod/cache/download/k8s.io/kubernetes/@v/v1.34.4.mod")
        );
        assert_eq!(downloaded.dir, Path::new("/tmp/a \"quoted\" dir"));
        assert!(serde_json::from_str::<Downloaded>(r#"{"Path": "x", "Dir": "/d"}"#).is_err());
    }
}
