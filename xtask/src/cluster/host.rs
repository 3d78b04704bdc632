//! What the node changes on this machine, and how all of it is undone: kernel settings, the
//! pods' bridge and route, the firewall rules that keep cluster traffic on the machine, and the
//! sweep that removes whatever a node leaves behind (processes in the pods' cgroups, containerd's
//! shims, mounts, network namespaces, iptables chains, cgroup directories), also after `kill -9`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::config::{BRIDGE, CLUSTER_CIDRS, NODE_IP, Node, POD_CIDR};
use crate::env::kube::SERVICE_CIDR;
use crate::env::process::{run_capture, signal};

/// The kernel settings the node needs, or that kubelet and kube-proxy change: their values from
/// before the first `up` are saved and put back by `down`.
const SYSCTLS: [(&str, Option<&str>); 10] = [
    // Pods reach each other and the host through the bridge. (Per-interface forwarding is then
    // switched off again on every other interface, see `set_sysctls`.)
    ("net/ipv4/ip_forward", Some("1")),
    // Bridged pod traffic must pass iptables, or Services (DNAT) would not work between pods.
    ("net/bridge/bridge-nf-call-iptables", Some("1")),
    // kubelet and containerd watch many files; kind's documented value.
    ("fs/inotify/max_user_instances", Some("512")),
    // Set by kubelet itself (its defaults), restored here.
    ("kernel/panic", None),
    ("kernel/panic_on_oops", None),
    ("vm/overcommit_memory", None),
    ("vm/panic_on_oom", None),
    ("kernel/keys/root_maxkeys", None),
    ("kernel/keys/root_maxbytes", None),
    // kube-proxy turns this on for NodePorts on loopback (the raw guard below keeps loopback
    // addresses from arriving on any other interface).
    ("net/ipv4/conf/all/route_localnet", None),
];

/// The firewall chains of ours; everything the cluster adds is named with one of these
/// prefixes, which is what `down` removes.
const OWN_CHAIN_PREFIXES: [&str; 3] = ["OP-", "KUBE-", "CNI-"];
/// The chains `up` hooks into the built-in ones: (table, built-in chain, our chain). kube-proxy
/// later puts its own jumps in front of ours in filter and nat; it never touches raw PREROUTING
/// or mangle POSTROUTING, the first and the last hooks a packet passes, which is where the rules
/// that matter are.
const GUARD_HOOKS: [(&str, &str, &str); 4] = [
    // Before conntrack and DNAT: nothing arriving on another interface may be addressed to (or
    // claim to come from) the cluster's ranges or loopback.
    ("raw", "PREROUTING", "OP-GUARD-ARRIVE"),
    ("filter", "FORWARD", "OP-GUARD-FORWARD"),
    ("filter", "OUTPUT", "OP-GUARD-OUTPUT"),
    // The last hook before a packet reaches the wire: these rules' counters prove nothing of the
    // cluster's went out (`leaked_packets`).
    ("mangle", "POSTROUTING", "OP-GUARD-LEAK"),
];
/// Where the pods' cgroups are, in each v1 hierarchy (and the unified one).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const KUBEPODS: &str = "kubepods";

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key)
}

fn saved_sysctls(node: &Node) -> PathBuf {
    node.dir.join("sysctl.saved")
}

/// The settings `up` changes: [`SYSCTLS`], and forwarding off again on every interface but the
/// bridge (`ip_forward=1` turns it on everywhere; the machine must not route between its other
/// interfaces because the cluster is up).
fn wanted_sysctls() -> Result<Vec<(String, Option<String>)>> {
    let mut wanted: Vec<(String, Option<String>)> = SYSCTLS
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.map(str::to_owned)))
        .collect();
    for interface in other_interfaces()? {
        wanted.push((
            format!("net/ipv4/conf/{interface}/forwarding"),
            Some("0".to_owned()),
        ));
    }
    Ok(wanted)
}

/// Saves the current values once (a second `up` must not save what the first one set), then
/// sets the ones the node needs, in order.
pub fn set_sysctls(node: &Node) -> Result<()> {
    let wanted = wanted_sysctls()?;
    let saved = saved_sysctls(node);
    if !saved.exists() {
        let mut text = String::new();
        for (key, _) in &wanted {
            if let Ok(value) = fs::read_to_string(sysctl_path(key)) {
                text.push_str(&format!("{key}={}\n", value.trim()));
            }
        }
        fs::create_dir_all(&node.dir)?;
        fs::write(&saved, text).with_context(|| format!("failed to write {}", saved.display()))?;
    }
    for (key, value) in &wanted {
        if let Some(value) = value {
            fs::write(sysctl_path(key), value)
                .with_context(|| format!("failed to set {key}={value}"))?;
        }
    }
    Ok(())
}

pub fn restore_sysctls(node: &Node) -> Result<()> {
    let saved = saved_sysctls(node);
    let Ok(text) = fs::read_to_string(&saved) else {
        return Ok(());
    };
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            fs::write(sysctl_path(key), value)
                .with_context(|| format!("failed to restore {key}={value}"))?;
        }
    }
    fs::remove_file(&saved).with_context(|| format!("failed to remove {}", saved.display()))
}

fn ip(args: &[&str]) -> Result<String> {
    run_capture(Command::new("ip").args(args))
}

/// Every interface but loopback and the bridge (and the pods' veths on it): where cluster traffic
/// must never arrive from or leave through.
pub fn other_interfaces() -> Result<Vec<String>> {
    let ports = bridge_ports();
    let listing = ip(&["-o", "link", "show"])?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let name = line.split(':').nth(1)?.trim();
            Some(name.split('@').next()?.to_owned())
        })
        .filter(|name| name != "lo" && name != BRIDGE && !ports.contains(name))
        .collect())
}

/// The bridge with the node's address, and the Service range routed into it, so the host's own
/// packets to a ClusterIP never take the default route before kube-proxy rewrites them.
pub fn create_bridge() -> Result<()> {
    if ip(&["link", "show", BRIDGE]).is_err() {
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    }
    let prefix = POD_CIDR.split_once('/').map_or("24", |(_, prefix)| prefix);
    let address = format!("{NODE_IP}/{prefix}");
    let shown = ip(&["-4", "address", "show", "dev", BRIDGE])?;
    if !shown.contains(&address) {
        ip(&["address", "add", &address, "dev", BRIDGE])?;
    }
    ip(&["link", "set", BRIDGE, "up"])?;
    ip(&["route", "replace", SERVICE_CIDR, "dev", BRIDGE])?;
    Ok(())
}

/// The iptables rules, as (table, chain, arguments after `-A <chain>`), that keep every packet of
/// the cluster on this machine. Each chain first lets loopback and the bridge through, so the
/// rules hold for every other interface, present or added later (a second NIC, a VPN).
pub fn guard_rules() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let words = |text: &str| {
        text.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut rules = Vec::new();
    for (table, chain, direction) in [
        ("raw", "OP-GUARD-ARRIVE", "-i"),
        ("filter", "OP-GUARD-OUTPUT", "-o"),
        ("mangle", "OP-GUARD-LEAK", "-o"),
    ] {
        for interface in ["lo", BRIDGE] {
            rules.push((
                table,
                chain,
                words(&format!("{direction} {interface} -j RETURN")),
            ));
        }
    }
    for cidr in CLUSTER_CIDRS.iter().chain(&["127.0.0.0/8"]) {
        rules.push((
            "raw",
            "OP-GUARD-ARRIVE",
            words(&format!("-d {cidr} -j DROP")),
        ));
    }
    for cidr in CLUSTER_CIDRS {
        rules.push((
            "raw",
            "OP-GUARD-ARRIVE",
            words(&format!("-s {cidr} -j DROP")),
        ));
        rules.push((
            "filter",
            "OP-GUARD-OUTPUT",
            words(&format!("-d {cidr} -j REJECT")),
        ));
        for direction in ["-s", "-d"] {
            rules.push((
                "mangle",
                "OP-GUARD-LEAK",
                words(&format!("{direction} {cidr} -j DROP")),
            ));
        }
    }
    // Pods talk to pods and to the host; nothing they send is forwarded anywhere else.
    rules.push((
        "filter",
        "OP-GUARD-FORWARD",
        words(&format!("-i {BRIDGE} ! -o {BRIDGE} -j REJECT")),
    ));
    rules.push((
        "filter",
        "OP-GUARD-FORWARD",
        words(&format!("! -i {BRIDGE} -o {BRIDGE} -j DROP")),
    ));
    rules
}

fn iptables(binary: &str, args: &[&str]) -> Result<String> {
    run_capture(Command::new(binary).arg("-w").args(args))
}

/// Creates our chains, fills them and hooks each into its built-in chain (first, at the time).
/// Idempotent: a rerun flushes and refills the chains.
pub fn install_guards() -> Result<()> {
    for (table, _, chain) in GUARD_HOOKS {
        // -N fails when the chain exists; flushing makes a rerun start from the same rules.
        let _ = iptables("iptables", &["-t", table, "-N", chain]);
        iptables("iptables", &["-t", table, "-F", chain])?;
    }
    for (table, chain, rule) in guard_rules() {
        let mut args = vec!["-t", table, "-A", chain];
        args.extend(rule.iter().map(String::as_str));
        iptables("iptables", &args)?;
    }
    for (table, builtin, chain) in GUARD_HOOKS {
        if iptables("iptables", &["-t", table, "-C", builtin, "-j", chain]).is_err() {
            iptables("iptables", &["-t", table, "-I", builtin, "1", "-j", chain])?;
        }
    }
    Ok(())
}

/// Packets of the pod or Service ranges that reached an interface other than loopback and the
/// bridge on their way out (and were dropped there): must stay 0.
pub fn leaked_packets() -> Result<u64> {
    let listing = iptables(
        "iptables",
        &["-t", "mangle", "-L", "OP-GUARD-LEAK", "-n", "-v", "-x"],
    )?;
    Ok(dropped_packets(&listing))
}

/// The packet counts of the DROP rules in `iptables -L <chain> -n -v -x` output (the RETURN
/// rules that let loopback and the bridge through count everything else).
pub fn dropped_packets(listing: &str) -> u64 {
    listing
        .lines()
        .skip(2)
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            let packets = columns.next()?.parse::<u64>().ok()?;
            let _bytes = columns.next()?;
            (columns.next()? == "DROP").then_some(packets)
        })
        .sum()
}

/// Removes every chain of ours, kube-proxy's, kubelet's and the CNI plugins' from all tables, for
/// IPv4 and IPv6: first the rules in other chains that jump to them, then the chains.
pub fn remove_chains() -> Result<()> {
    for binary in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle", "raw"] {
            let Ok(listing) = iptables(binary, &["-t", table, "-S"]) else {
                continue;
            };
            let plan = chain_removal(&listing);
            for rule in &plan.rules {
                let mut args = vec!["-t", table, "-D"];
                args.extend(rule.iter().map(String::as_str));
                iptables(binary, &args)
                    .with_context(|| format!("{binary} -t {table} -D {}", rule.join(" ")))?;
            }
            for chain in &plan.chains {
                iptables(binary, &["-t", table, "-F", chain])?;
            }
            for chain in &plan.chains {
                iptables(binary, &["-t", table, "-X", chain])?;
            }
        }
    }
    Ok(())
}

/// What to remove from one table's `iptables -S` listing: the rules of built-in or foreign
/// chains that jump to one of ours, and our chains.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChainRemoval {
    pub rules: Vec<Vec<String>>,
    pub chains: Vec<String>,
}

fn is_own_chain(name: &str) -> bool {
    OWN_CHAIN_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Splits one line of `iptables -S` into arguments as a shell would: `--comment "a b"` is one
/// argument, without the quotes (iptables quotes comments with spaces and escapes `"` and `\\`).
pub fn iptables_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut characters = line.chars();
    while let Some(character) = characters.next() {
        match character {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = characters.next() {
                    current.push(next);
                }
            }
            ' ' | '\t' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            other => {
                current.push(other);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

pub fn chain_removal(listing: &str) -> ChainRemoval {
    let mut plan = ChainRemoval::default();
    for line in listing.lines() {
        let words = iptables_words(line);
        match words.first().map(String::as_str) {
            Some("-N") if words.len() == 2 && is_own_chain(&words[1]) => {
                plan.chains.push(words[1].clone());
            }
            Some("-A") if words.len() > 2 && !is_own_chain(&words[1]) => {
                let jumps_to_ours = words
                    .windows(2)
                    .any(|pair| (pair[0] == "-j" || pair[0] == "-g") && is_own_chain(&pair[1]));
                if jumps_to_ours {
                    plan.rules.push(words[1..].to_vec());
                }
            }
            _ => {}
        }
    }
    plan
}

/// Every directory of the pods' cgroups, in every hierarchy, deepest first.
fn pod_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = fs::read_dir(CGROUP_ROOT) else {
        return found;
    };
    for hierarchy in hierarchies.flatten() {
        let top = hierarchy.path().join(KUBEPODS);
        if top.is_dir() {
            collect_dirs(&top, &mut found);
        }
    }
    found.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    found
}

fn collect_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
    found.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                collect_dirs(&entry.path(), found);
            }
        }
    }
}

/// The processes still in the pods' cgroups.
pub fn pod_processes() -> Vec<u32> {
    let mut pids: Vec<u32> = pod_cgroups()
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|line| line.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn kill(pid: u32) {
    // A process that exited meanwhile is what was wanted.
    let _ = signal(pid, "KILL");
}

/// SIGKILL to every process in the pods' cgroups until none is left: what containerd would have
/// done, also when containerd and kubelet are gone.
pub fn kill_pod_processes(timeout: Duration) -> Result<usize> {
    let started = Instant::now();
    let mut killed = 0;
    loop {
        let pids = pod_processes();
        if pids.is_empty() {
            return Ok(killed);
        }
        if started.elapsed() > timeout {
            bail!("processes {pids:?} in the pods' cgroups survived SIGKILL for {timeout:?}");
        }
        for pid in &pids {
            kill(*pid);
        }
        killed += pids.len();
        thread::sleep(Duration::from_millis(200));
    }
}

/// containerd's runc shims for our socket; they outlive containerd by design.
pub fn shim_processes(node: &Node) -> Vec<u32> {
    let socket = node.containerd_socket().display().to_string();
    processes_matching(|command_line| {
        command_line
            .first()
            .is_some_and(|program| program.ends_with("containerd-shim-runc-v2"))
            && command_line.iter().any(|argument| argument == &socket)
    })
}

/// Processes whose command line (NUL-separated arguments) satisfies `matches`.
pub fn processes_matching(matches: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|bytes| {
                let arguments: Vec<String> = bytes
                    .split(|byte| *byte == 0)
                    .filter(|part| !part.is_empty())
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect();
                !arguments.is_empty() && matches(&arguments)
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

pub fn kill_all(pids: &[u32]) {
    for pid in pids {
        kill(*pid);
    }
}

/// Mount points under any of `prefixes`, deepest first (so a bind mount's submounts go before it).
pub fn mounts_under(prefixes: &[PathBuf]) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts_in(&text, prefixes)
}

pub fn mounts_in(mountinfo: &str, prefixes: &[PathBuf]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|point| PathBuf::from(unescape_mount_path(point)))
        .filter(|point| prefixes.iter().any(|prefix| point.starts_with(prefix)))
        .collect();
    found.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    found.dedup();
    found
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && let Some(digits) = text.get(index + 1..index + 4)
            && let Ok(value) = u8::from_str_radix(digits, 8)
        {
            out.push(value);
            index += 4;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn unmount_all(prefixes: &[PathBuf]) -> Result<()> {
    // A mount can hide another at the same point; repeat until nothing is left.
    for _ in 0..5 {
        let mounts = mounts_under(prefixes);
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            let plain = Command::new("umount").arg(&mount).output();
            if !plain.is_ok_and(|output| output.status.success()) {
                let _ = Command::new("umount").arg("-l").arg(&mount).output();
            }
        }
    }
    let left = mounts_under(prefixes);
    if !left.is_empty() {
        bail!("could not unmount {left:?}");
    }
    Ok(())
}

/// The network namespaces containerd's CRI made for this node's pods: with
/// `netns_mounts_under_state_dir`, under its state directory, never the machine's `/run/netns`.
pub fn pod_network_namespaces(node: &Node) -> Vec<PathBuf> {
    let dir = node
        .containerd_state()
        .join("io.containerd.grpc.v1.cri/netns");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

/// The bridge and whatever is still attached to it. The pods' namespaces went with their mounts
/// (`unmount_all`): a namespace no process and no mount holds is destroyed with its veth pair.
pub fn remove_network() -> Result<()> {
    for veth in bridge_ports() {
        let _ = ip(&["link", "delete", &veth]);
    }
    if ip(&["link", "show", BRIDGE]).is_ok() {
        ip(&["link", "delete", BRIDGE])?;
    }
    Ok(())
}

/// The interfaces attached to the bridge (the pods' veths).
pub fn bridge_ports() -> Vec<String> {
    ip(&["-o", "link", "show", "master", BRIDGE])
        .map(|listing| {
            listing
                .lines()
                .filter_map(|line| {
                    let name = line.split(':').nth(1)?.trim();
                    Some(name.split('@').next()?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Connection-tracking entries of the cluster's ranges: they would outlive the node and misroute
/// the next `up`'s connections, which get the same pod addresses.
pub fn conntrack_entries() -> usize {
    CLUSTER_CIDRS
        .iter()
        .flat_map(|cidr| [["-L", "-s", cidr], ["-L", "-d", cidr]])
        .filter_map(|args| {
            Command::new("conntrack")
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
        })
        .map(|output| String::from_utf8_lossy(&output.stdout).lines().count())
        .sum()
}

pub fn flush_conntrack() {
    for cidr in CLUSTER_CIDRS {
        for direction in ["-s", "-d"] {
            // Exits 1 when nothing matched: not an error here.
            let _ = Command::new("conntrack")
                .args(["-D", direction, cidr])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

pub fn remove_pod_cgroups() -> Result<()> {
    for dir in pod_cgroups() {
        // cgroupfs directories are removed with rmdir only; the files in them are virtual.
        if let Err(error) = fs::remove_dir(&dir)
            && dir.exists()
        {
            return Err(error)
                .with_context(|| format!("failed to remove cgroup {}", dir.display()));
        }
    }
    Ok(())
}

/// What of a node is still on the machine, by kind; empty when `down` left nothing behind.
pub fn leftovers(
    node: &Node,
    daemons: &[(String, Option<u32>)],
) -> BTreeMap<&'static str, Vec<String>> {
    let mut found = BTreeMap::new();
    let mut put = |kind: &'static str, items: Vec<String>| {
        if !items.is_empty() {
            found.insert(kind, items);
        }
    };
    put(
        "processes",
        daemons
            .iter()
            .filter_map(|(name, pid)| pid.map(|pid| format!("{name} (pid {pid})")))
            .chain(
                shim_processes(node)
                    .into_iter()
                    .map(|pid| format!("containerd-shim (pid {pid})")),
            )
            .chain(
                pod_processes()
                    .into_iter()
                    .map(|pid| format!("pod process (pid {pid})")),
            )
            .collect(),
    );
    put(
        "mounts",
        mounts_under(&mount_prefixes(node))
            .into_iter()
            .map(|path| path.display().to_string())
            .collect(),
    );
    put(
        "network namespaces",
        pod_network_namespaces(node)
            .into_iter()
            .map(|path| path.display().to_string())
            .collect(),
    );
    let tracked = conntrack_entries();
    if tracked > 0 {
        put(
            "conntrack entries",
            vec![format!("{tracked} of {}", CLUSTER_CIDRS.join(", "))],
        );
    }
    put(
        "files outside the cluster's directory",
        machine_paths(node)
            .into_iter()
            .filter(|path| path.exists() || path.is_symlink())
            .map(|path| path.display().to_string())
            .collect(),
    );
    let mut links = bridge_ports();
    if ip(&["link", "show", BRIDGE]).is_ok() {
        links.push(BRIDGE.to_owned());
    }
    put("links", links);
    let mut chains = Vec::new();
    for binary in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle", "raw"] {
            if let Ok(listing) = iptables(binary, &["-t", table, "-S"]) {
                let plan = chain_removal(&listing);
                chains.extend(
                    plan.chains
                        .iter()
                        .map(|chain| format!("{binary} {table} {chain}")),
                );
                chains.extend(
                    plan.rules
                        .iter()
                        .map(|rule| format!("{binary} {table} rule -A {}", rule.join(" "))),
                );
            }
        }
    }
    put("iptables", chains);
    put(
        "cgroups",
        pod_cgroups()
            .into_iter()
            .map(|path| path.display().to_string())
            .collect(),
    );
    found
}

/// Everything the node mounts is below one of these.
pub fn mount_prefixes(node: &Node) -> Vec<PathBuf> {
    vec![
        node.kubelet_dir(),
        node.runtime_dir.clone(),
        node.containerd_root(),
    ]
}

/// What kubelet, containerd and the CNI plugins write outside the node's own directories whatever
/// they are configured with: kubelet's device-plugin socket directory and the container-log
/// links (both fixed paths), containerd 1.6's shim socket directory, and the CNI result cache.
/// `down` removes exactly the entries of this node.
pub fn machine_paths(node: &Node) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let logs = node.pod_logs_dir();
    for entry in fs::read_dir("/var/log/containers")
        .into_iter()
        .flatten()
        .flatten()
    {
        if fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(&logs)) {
            paths.push(entry.path());
        }
    }
    for entry in fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("order-pipeline-") || name.starts_with("cni-loopback-") {
            paths.push(entry.path());
        }
    }
    // Made by kubelet and containerd only when this node ran; `up` records whether they existed
    // before (`MachineDirs`), and `down` removes them only if not.
    for dir in created_machine_dirs(node) {
        paths.push(dir);
    }
    paths
}

/// Directories kubelet, containerd and the CNI plugins make at fixed paths on their first start.
const MACHINE_DIRS: [&str; 4] = [
    "/var/lib/kubelet",
    "/run/containerd",
    "/var/lib/cni",
    "/var/log/containers",
];

fn machine_dirs_record(node: &Node) -> PathBuf {
    node.dir.join("machine-dirs.created")
}

/// Records which of [`MACHINE_DIRS`] do not exist yet, before the node's first start; they are
/// then the node's to remove. Kept across `up`s, like the saved kernel settings.
pub fn record_machine_dirs(node: &Node) -> Result<()> {
    let record = machine_dirs_record(node);
    if record.exists() {
        return Ok(());
    }
    let absent: Vec<&str> = MACHINE_DIRS
        .iter()
        .copied()
        .filter(|dir| !Path::new(dir).exists())
        .collect();
    fs::write(&record, absent.join("\n"))
        .with_context(|| format!("failed to write {}", record.display()))
}

fn created_machine_dirs(node: &Node) -> Vec<PathBuf> {
    fs::read_to_string(machine_dirs_record(node))
        .unwrap_or_default()
        .lines()
        .filter(|line| MACHINE_DIRS.contains(line))
        .map(PathBuf::from)
        .collect()
}

pub fn remove_machine_paths(node: &Node) -> Result<()> {
    for path in machine_paths(node) {
        let removed = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("failed to remove {}", path.display()));
            }
        }
    }
    let _ = fs::remove_file(machine_dirs_record(node));
    Ok(())
}

/// What the guards do, for `up`'s output.
pub fn describe_guards() -> String {
    format!(
        "pod ({POD_CIDR}) and Service ({SERVICE_CIDR}) traffic confined to loopback and {BRIDGE}: \
         dropped on arrival from and on the way out to any other interface"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_keep_the_cluster_ranges_on_loopback_and_the_bridge() {
        let lines: Vec<String> = guard_rules()
            .iter()
            .map(|(table, chain, rule)| format!("{table} {chain} {}", rule.join(" ")))
            .collect();
        let position = |expected: &str| {
            lines
                .iter()
                .position(|line| line == expected)
                .unwrap_or_else(|| panic!("missing {expected}: {lines:#?}"))
        };
        // Loopback and the bridge pass first, in each chain that guards interfaces.
        for (chain, direction) in [
            ("raw OP-GUARD-ARRIVE", "-i"),
            ("filter OP-GUARD-OUTPUT", "-o"),
            ("mangle OP-GUARD-LEAK", "-o"),
        ] {
            let bridge = position(&format!("{chain} {direction} op0 -j RETURN"));
            let lo = position(&format!("{chain} {direction} lo -j RETURN"));
            let first_drop = lines
                .iter()
                .position(|line| line.starts_with(chain) && !line.ends_with("RETURN"))
                .unwrap();
            assert!(
                bridge < first_drop && lo < first_drop,
                "{chain}: {lines:#?}"
            );
        }
        for expected in [
            "raw OP-GUARD-ARRIVE -d 10.244.0.0/24 -j DROP",
            "raw OP-GUARD-ARRIVE -d 10.96.0.0/16 -j DROP",
            "raw OP-GUARD-ARRIVE -d 127.0.0.0/8 -j DROP",
            "raw OP-GUARD-ARRIVE -s 10.244.0.0/24 -j DROP",
            "filter OP-GUARD-OUTPUT -d 10.96.0.0/16 -j REJECT",
            "mangle OP-GUARD-LEAK -s 10.244.0.0/24 -j DROP",
            "mangle OP-GUARD-LEAK -d 10.96.0.0/16 -j DROP",
            "filter OP-GUARD-FORWARD -i op0 ! -o op0 -j REJECT",
        ] {
            position(expected);
        }
        // Never a rule on all of 10.0.0.0/8: the machine's own resolver may live there.
        assert!(lines.iter().all(|line| !line.contains("10.0.0.0/8")));
    }

    #[test]
    fn only_dropped_packets_count_as_leaked() {
        let listing = "Chain OP-GUARD-LEAK (1 references)\n\
            \x20   pkts      bytes target     prot opt in     out     source               destination\n\
            \x20  85854 31401588 RETURN     0    --  *      lo      0.0.0.0/0            0.0.0.0/0\n\
            \x20  14686  6522595 RETURN     0    --  *      op0     0.0.0.0/0            0.0.0.0/0\n\
            \x20      3      180 DROP       0    --  *      *       10.244.0.0/24        0.0.0.0/0\n\
            \x20      0        0 DROP       0    --  *      *       0.0.0.0/0            10.96.0.0/16\n";
        assert_eq!(dropped_packets(listing), 3);
    }

    #[test]
    fn chain_removal_takes_our_chains_and_the_jumps_to_them_only() {
        let listing = "-P INPUT ACCEPT\n\
                       -P FORWARD ACCEPT\n\
                       -N KUBE-FIREWALL\n\
                       -N OP-GUARD-ARRIVE\n\
                       -N DOCKER\n\
                       -A INPUT -j OP-GUARD-ARRIVE\n\
                       -A INPUT -j KUBE-FIREWALL\n\
                       -A INPUT -j DOCKER\n\
                       -A OUTPUT -m comment --comment \"kube rules\" -j KUBE-FIREWALL\n\
                       -A KUBE-FIREWALL -j DROP\n\
                       -A DOCKER -j KUBE-FIREWALL\n";
        let plan = chain_removal(listing);
        assert_eq!(plan.chains, vec!["KUBE-FIREWALL", "OP-GUARD-ARRIVE"]);
        assert_eq!(
            plan.rules,
            vec![
                vec!["INPUT", "-j", "OP-GUARD-ARRIVE"],
                vec!["INPUT", "-j", "KUBE-FIREWALL"],
                vec![
                    "OUTPUT",
                    "-m",
                    "comment",
                    "--comment",
                    "kube rules",
                    "-j",
                    "KUBE-FIREWALL"
                ],
                vec!["DOCKER", "-j", "KUBE-FIREWALL"],
            ]
        );
    }

    #[test]
    fn mounts_are_found_under_the_prefixes_deepest_first_with_escapes_read() {
        let mountinfo = "\
24 1 254:0 / / rw - ext4 /dev/vda rw\n\
90 24 254:0 /k /c/kubelet rw shared:1 - ext4 /dev/vda rw\n\
91 90 0:50 / /c/kubelet/pods/a/volumes/kubernetes.io~empty-dir/x\\040y rw - tmpfs tmpfs rw\n\
92 24 0:51 / /run/order-pipeline/containerd/t/rootfs rw - overlay overlay rw\n\
93 24 0:52 / /c/kubeletx rw - tmpfs tmpfs rw\n";
        let found = mounts_in(
            mountinfo,
            &[
                PathBuf::from("/c/kubelet"),
                PathBuf::from("/run/order-pipeline"),
            ],
        );
        assert_eq!(
            found,
            vec![
                PathBuf::from("/c/kubelet/pods/a/volumes/kubernetes.io~empty-dir/x y"),
                PathBuf::from("/run/order-pipeline/containerd/t/rootfs"),
                PathBuf::from("/c/kubelet"),
            ]
        );
    }
}
