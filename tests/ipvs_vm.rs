//! The IPVS data plane on a kernel that has IPVS: this machine's has none,
//! so the test boots Debian's (`linux-image-amd64`) under
//! `qemu-system-x86_64 -machine accel=tcg` with an initramfs it writes
//! itself (newc cpio, in Rust): busybox, ipvsadm, iproute2's `ip`, `nft`,
//! `conntrack` when the host has it, the `shoal` binary (debug info
//! stripped), their shared libraries, the kernel modules IPVS and task
//! networking need, and an `/init` script.
//!
//! Inside the VM, `/init`:
//!
//! 1. starts two `shoal demo serve` backends, each in a network namespace
//!    of its own on a veth pair, and programs a fixture Endpoints object
//!    (VIP 10.96.204.1:80, port 80 published on 31204) with
//!    `shoal agent dataplane-apply --dataplane ipvs`; prints `ipvsadm -Ln`
//!    and the answers of real HTTP requests through the VIP and through
//!    the published port; removes it all with `--cleanup` and prints what
//!    is left;
//! 2. runs the shared conformance suite (`shoal agent
//!    dataplane-conformance --dataplane ipvs`), the one the nftables plane
//!    passes on this host (`tests/dataplane_conformance.rs`);
//! 3. runs `/up.sh` ([`UP_PHASE`]): what a user of a host with IPVS does —
//!    `shoal up` (no `--dataplane`: it must pick IPVS itself, and the
//!    userspace proxy beside it on 127.0.0.1), a service `web` with two
//!    replicas published on 8080, HTTP through 127.0.0.1:8080, the VM's
//!    address and the VIP, a rolling update to `shoal/demo:2.0` under
//!    load, then SIGTERM;
//! 4. powers off.
//!
//! The console log is checked: virtual servers with masquerading real
//! servers, both backends answering through the VIP and the published
//! port, nothing left after cleanup, every conformance check passed; and
//! for `shoal up`: IPVS chosen, the VIP and published-port virtual servers
//! with both tasks as masquerading real servers, every request answered
//! on every path (both tasks on at least one), not one failed request
//! through IPVS during the rolling update, only version 2.0 answering
//! after it, and no virtual server or listener left after SIGTERM.
//!
//! Without the kernel, qemu, busybox-static or ipvsadm the test fails
//! (never skips) saying what to install; `.ci/run` installs them. The VM
//! is killed after [`VM_TIMEOUT`] and the console log shown.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use shoal_crd::{Backend, EndpointMode, EndpointPort, Endpoints, EndpointsSpec, PortProtocol, PublishMode};
use support::initramfs::{module_bytes, module_order, Cpio};

const VM_TIMEOUT: Duration = Duration::from_secs(360);
const PACKAGES: &str = "qemu-system-x86 linux-image-amd64 busybox-static ipvsadm";
const VIP: &str = "10.96.204.1";
const PUBLISHED: u16 = 31204;
/// The VM's own address (on a dummy `eth0`, from phase 3 on) and the port `web` publishes.
const NODE_ADDRESS: &str = "10.0.2.15";
const UP_PORT: u16 = 8080;
/// Modules `/init` loads, with their dependencies (from modules.dep) before them.
const MODULES: &[&str] =
    &["crc32c_generic", "ip_vs_rr", "dummy", "veth", "bridge", "nft_masq", "nft_chain_nat", "nf_conntrack_netlink"];

fn missing(what: &str) -> ! {
    panic!("{what} is missing: this test needs `apt-get install {PACKAGES}` (as .ci/run does)")
}

/// `name` on PATH or in the sbin directories, if there.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').map(PathBuf::from).chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.map(|d| d.join(name)).find(|p| p.is_file())
}

/// `name` on PATH or in the sbin directories.
fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| missing(name))
}

/// Debian's kernel image and its module directory (the newest with IPVS).
fn debian_kernel() -> (PathBuf, PathBuf) {
    let mut kernels: Vec<(PathBuf, PathBuf)> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            let modules = PathBuf::from("/lib/modules").join(&version);
            let has_ipvs = std::fs::read_to_string(modules.join("modules.dep")).ok()?.contains("/ip_vs.ko");
            has_ipvs.then_some((e.path(), modules))
        })
        .collect();
    kernels.sort();
    kernels.pop().unwrap_or_else(|| missing("a Debian kernel with IPVS modules (/boot/vmlinuz-*, /lib/modules/*)"))
}

/// The shoal binary without debug info (a quarter of the size), else as built.
fn shoal_binary() -> Vec<u8> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_shoal"));
    let stripped = std::env::temp_dir().join(format!("shoal-ipvs-vm-{}", std::process::id()));
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(&built)
        .status()
        .is_ok_and(|s| s.success());
    let data = std::fs::read(if ok { &stripped } else { &built }).expect("reading the shoal binary");
    let _ = std::fs::remove_file(&stripped);
    data
}

/// FIXTURE: what the endpoints controller would write for service `web`
/// with two tasks, as the JSON `dataplane-apply` reads.
fn fixture() -> String {
    let backend = |i: u8| Backend {
        task: format!("task-{i}"),
        node: "vm".into(),
        address: format!("10.204.{i}.2"),
        ports: Default::default(),
    };
    let port = EndpointPort {
        protocol: PortProtocol::Tcp,
        target: 80,
        published: Some(PUBLISHED),
        publish_mode: PublishMode::Ingress,
    };
    let endpoints = Endpoints::new(
        "web",
        EndpointsSpec {
            service: "web".into(),
            endpoint_mode: EndpointMode::Vip,
            vip: Some(VIP.into()),
            ports: vec![port],
            backends: vec![backend(1), backend(2)],
            ..Default::default()
        },
    );
    serde_json::to_string_pretty(&endpoints).unwrap()
}

const INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mkdir -p /run/netns
for m in $(cat /modules/order); do insmod /modules/$m || echo "VMTEST insmod $m failed"; done
/usr/sbin/ip link set lo up
# HTTP GET with nc: busybox's wget looks up the "http" service through NSS,
# which a static binary cannot load here (it crashes).
get() { printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" | nc -w 3 "$1" "$2" 2>&1 | tail -n 1; }
echo
echo "VMTEST-BOOTED uptime $(cut -d' ' -f1 /proc/uptime)s"

for i in 1 2; do
  /usr/sbin/ip netns add be$i
  /usr/sbin/ip link add vm$i type veth peer name eth0 netns be$i
  /usr/sbin/ip addr add 10.204.$i.1/24 dev vm$i
  /usr/sbin/ip link set vm$i up
  /usr/sbin/ip -n be$i link set lo up
  /usr/sbin/ip -n be$i addr add 10.204.$i.2/24 dev eth0
  /usr/sbin/ip -n be$i link set eth0 up
  /usr/sbin/ip -n be$i route add default via 10.204.$i.1
  /usr/sbin/ip netns exec be$i env SHOAL_TASK_ID=task-$i shoal demo serve --listen 0.0.0.0:80 >/tmp/demo$i.log 2>&1 &
done
for i in 1 2; do
  n=0
  until get 10.204.$i.2 80 | grep -q task-$i; do
    n=$((n+1)); [ $n -gt 100 ] && { echo "VMTEST backend $i never answered"; cat /tmp/demo$i.log; break; }
    sleep 0.2
  done
done

shoal agent dataplane-apply --dataplane ipvs --endpoints /fixture.json --node vm
echo "VMTEST-APPLY rc=$?"
echo VMTEST-IPVSADM-BEGIN
ipvsadm -Ln
echo VMTEST-IPVSADM-END
echo "VMTEST-DUMMY $(/usr/sbin/ip -o -4 addr show dev shoal-ipvs0 | awk '{print $4}' | tr '\n' ' ')"
for i in 1 2 3 4; do echo "VMTEST-VIP $(get __VIP__ 80)"; done
for i in 1 2 3 4; do echo "VMTEST-PUBLISHED $(get 10.204.2.1 __PUBLISHED__)"; done
shoal agent dataplane-apply --dataplane ipvs --cleanup
echo "VMTEST-CLEANUP rc=$?"
echo VMTEST-LEFT-BEGIN
ipvsadm -Ln | grep -E '^(TCP|UDP)'
/usr/sbin/ip -o link show shoal-ipvs0 2>/dev/null
nft list table ip shoal-ipvs 2>/dev/null
echo VMTEST-LEFT-END
kill $(jobs -p) 2>/dev/null
/usr/sbin/ip netns del be1; /usr/sbin/ip netns del be2

shoal agent dataplane-conformance --dataplane ipvs
echo "VMTEST-CONFORMANCE rc=$?"

. /up.sh
echo "VMTEST-DONE uptime $(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
"#;

/// Phase 3, sourced by `/init`: `shoal up` as a user runs it.
///
/// HTTP goes through `shoal demo load`, which accounts for every request
/// and reports the versions and tasks that answered. (busybox `nc`, which
/// half-closes right after its request, found that the demo server dropped
/// such requests unanswered; it now allows half-close.)
///
/// Waits are generous (TCG runs 10-30x slower than the host); one that
/// times out says which and shows the end of `shoal up`'s log, and the
/// phase goes on so the host side reports what is missing.
const UP_PHASE: &str = r#"
# wait_for SECONDS WHAT COMMAND...: COMMAND every half second until it succeeds.
wait_for() {
  limit=$(($1 * 2)); what=$2; shift 2; n=0
  until "$@" >/dev/null 2>&1; do
    n=$((n+1))
    [ $n -gt $limit ] && { echo "VMTEST-UP-TIMEOUT $what"; tail -n 40 /tmp/up.log; return 1; }
    sleep 0.5
  done
}
# load URL SECONDS: `shoal demo load`'s summary on one line.
load() { shoal demo load --concurrency 1 --duration "$2" "$1" 2>&1 | tr -d '\n'; }
node_ready() { shoal node ls | grep -q ' Ready '; }
ipvs_chosen() { grep -q 'IPVS data plane' /tmp/up.log; }
both_running() { [ "$(shoal service ps web | grep -c 'Running  *Running')" -eq 2 ]; }
two_reals() { [ "$(ipvsadm -Ln -t "$1" | grep -c Masq)" -eq 2 ]; }
ipvs_conns() { ipvsadm -Ln --stats --exact -t __NODE__:__PORT__ | awk '/^TCP/ { print $3 }'; }
more_conns_than() { [ "$(ipvs_conns)" -gt "$1" ]; }
answers_version() { load "$1" 0.2s | grep -q "\"$2\": [1-9]"; }

echo "VMTEST-UP-BEGIN uptime $(cut -d' ' -f1 /proc/uptime)s"
hostname vm
echo '# the VM has no DNS server' >/etc/resolv.conf
/usr/sbin/ip link add eth0 type dummy
/usr/sbin/ip addr add __NODE__/24 dev eth0
/usr/sbin/ip link set eth0 up
shoal up --data-dir /tmp/shoal >/tmp/up.log 2>&1 &
up=$!
wait_for 120 node-ready node_ready && wait_for 30 ipvs-chosen ipvs_chosen
echo "VMTEST-UP-MODE $(grep -o 'IPVS data plane[^;]*' /tmp/up.log | head -n 1)"
# The healthcheck makes a task a backend once it listens, not as soon as it
# runs: without it the update below refuses connections (IPVS has no retry).
shoal service create --name web --replicas 2 -p __PORT__:80 \
  --health-cmd 'shoal demo probe http://127.0.0.1:80/health' --health-interval 500ms --health-retries 2 \
  shoal/demo:1.0 >/dev/null
wait_for 120 tasks-running both_running
vip=$(shoal service inspect web | grep '"vip": ' | cut -d'"' -f4)
echo "VMTEST-UP-VIP $vip"
wait_for 60 vip-reals two_reals "$vip:80" && wait_for 30 node-reals two_reals __NODE__:__PORT__ \
  && wait_for 30 loopback-answers answers_version http://127.0.0.1:__PORT__/ 1.0
echo VMTEST-UP-IPVSADM-BEGIN
ipvsadm -Ln
echo VMTEST-UP-IPVSADM-END
echo "VMTEST-UP-LOAD loopback $(load http://127.0.0.1:__PORT__/ 1s)"
echo "VMTEST-UP-LOAD node $(load http://__NODE__:__PORT__/ 1s)"
echo "VMTEST-UP-LOAD vip $(load http://$vip/ 1s)"

# Load through IPVS across the rolling update: nothing may fail (the
# draining handshake waits for both planes before a task is stopped).
# At nice 19 (busybox has no `nice`), so the update is not starved of the
# one CPU; the update starts once IPVS counts the load's connections.
conns=$(ipvs_conns)
sh -c 'renice -n 19 -p $$ >/dev/null; exec shoal demo load --concurrency 1 "$0"' http://__NODE__:__PORT__/ \
  >/tmp/during.json 2>/tmp/during.err &
during=$!
wait_for 30 load-running more_conns_than $((conns + 10))
echo "VMTEST-UP-UPDATING uptime $(cut -d' ' -f1 /proc/uptime)s"
timeout 240 shoal service update --image shoal/demo:2.0 --update-monitor 1s web >/tmp/update.log 2>&1
rc=$?
echo "VMTEST-UP-UPDATE rc=$rc uptime $(cut -d' ' -f1 /proc/uptime)s"
[ $rc -eq 0 ] || tail -n 5 /tmp/update.log
kill -TERM $during
wait $during
[ -s /tmp/during.json ] || cat /tmp/during.err
echo "VMTEST-UP-DURING node $(tr -d '\n' </tmp/during.json)"
wait_for 30 version-2 answers_version http://127.0.0.1:__PORT__/ 2.0
echo "VMTEST-UP-V2 loopback $(load http://127.0.0.1:__PORT__/ 1s)"
echo "VMTEST-UP-V2 node $(load http://__NODE__:__PORT__/ 1s)"

kill -TERM $up
n=0
while kill -0 $up 2>/dev/null && [ $n -lt 120 ]; do n=$((n+1)); sleep 0.5; done
if kill -0 $up 2>/dev/null; then echo "VMTEST-UP-STOPPED still running"; else wait $up; echo "VMTEST-UP-STOPPED rc=$?"; fi
echo VMTEST-UP-LEFT-BEGIN
ipvsadm -Ln | grep -E '^(TCP|UDP)'
netstat -ltn | grep ":__PORT__ "
/usr/sbin/ip -o link show shoal-ipvs0 2>/dev/null
nft list table ip shoal-ipvs 2>/dev/null
echo VMTEST-UP-LEFT-END
grep -E 'dataplane|WARN|ERROR' /tmp/up.log | sed 's/^/VMTEST-UP-LOG /'
"#;

/// The initramfs: tools, libraries, modules, fixture and /init.
fn initramfs(modules: &Path) -> Vec<u8> {
    let mut cpio = Cpio::new();
    for dir in ["/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/bin", "/sbin", "/usr/bin", "/usr/sbin", "/modules"] {
        cpio.dir(dir);
    }
    cpio.entry("/dev/console", 0o020600, &[], (5, 1));
    cpio.entry("/dev/null", 0o020666, &[], (1, 3));
    let busybox = tool("busybox");
    cpio.binary(&busybox, "/bin/busybox", None);
    cpio.binary(&tool("ipvsadm"), "/usr/sbin/ipvsadm", None);
    cpio.binary(&tool("ip"), "/usr/sbin/ip", None);
    cpio.binary(&tool("nft"), "/usr/sbin/nft", None);
    // Optional: the agent flushes a removed task's conntrack entries with it, best effort.
    if let Some(conntrack) = find_tool("conntrack") {
        cpio.binary(&conntrack, "/usr/sbin/conntrack", None);
    }
    cpio.binary(Path::new(env!("CARGO_BIN_EXE_shoal")), "/usr/bin/shoal", Some(shoal_binary()));
    let applets = Command::new(&busybox).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| !["ip", "busybox"].contains(a)) {
        cpio.symlink(&format!("/bin/{applet}"), "busybox");
    }
    let mut order = String::new();
    for path in module_order(modules, MODULES) {
        let name = path.file_name().unwrap().to_string_lossy().replace(".xz", "").replace(".zst", "");
        cpio.file(&format!("/modules/{name}"), 0o644, &module_bytes(&path));
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("/modules/order", 0o644, order.as_bytes());
    cpio.file("/fixture.json", 0o644, fixture().as_bytes());
    let init = INIT.replace("__VIP__", VIP).replace("__PUBLISHED__", &PUBLISHED.to_string());
    cpio.file("/init", 0o755, init.as_bytes());
    let up = UP_PHASE.replace("__NODE__", NODE_ADDRESS).replace("__PORT__", &UP_PORT.to_string());
    cpio.file("/up.sh", 0o644, up.as_bytes());
    cpio.finish()
}

/// Boots the VM; its console log and how long it ran.
fn boot(kernel: &Path, initrd: &Path, console: &Path) -> Duration {
    let log = std::fs::File::create(console).unwrap();
    let started = Instant::now();
    let mut qemu = Command::new(tool("qemu-system-x86_64"))
        .args([
            "-machine",
            "accel=tcg",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting qemu-system-x86_64: {e}"));
    loop {
        if qemu.try_wait().unwrap().is_some() {
            return started.elapsed();
        }
        if started.elapsed() > VM_TIMEOUT {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!(
                "the VM did not power off within {VM_TIMEOUT:?}; console:\n{}",
                std::fs::read_to_string(console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines between `VMTEST-<name>-BEGIN` and `-END`.
fn section<'a>(log: &'a str, name: &str) -> Vec<&'a str> {
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .skip_while(|l| *l != format!("VMTEST-{name}-BEGIN"))
        .skip(1)
        .take_while(|l| *l != format!("VMTEST-{name}-END"))
        .collect()
}

/// The `task` of every line starting with `prefix` (the demo's JSON answer).
fn answers(log: &str, prefix: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|json| {
            serde_json::from_str::<serde_json::Value>(json.trim())
                .ok()
                .and_then(|v| v["task"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("no answer: {json:?}"))
        })
        .collect()
}

/// The real servers listed under virtual server `header` (`TCP  addr:port rr`) in `ipvsadm -Ln`.
fn real_servers<'a>(ipvsadm: &'a str, header: &str) -> Vec<&'a str> {
    ipvsadm
        .lines()
        .skip_while(|l| !l.starts_with(header))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("->"))
        .collect()
}

/// A `shoal demo load` summary printed as `<prefix><path> <json>`.
struct Load {
    path: String,
    answers: u64,
    failures: u64,
    tasks: u64,
    versions: BTreeSet<String>,
    summary: String,
}

/// Every summary printed with `prefix`; one that does not parse counts as a failure.
fn loads(log: &str, prefix: &str) -> Vec<Load> {
    log.lines()
        .filter_map(|l| l.strip_prefix(prefix)?.split_once(' '))
        .map(|(path, json)| {
            let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
            let count = |name: &str| value[name].as_u64().unwrap_or_default();
            let versions = value["versions"].as_object().map(|v| v.keys().cloned().collect()).unwrap_or_default();
            Load {
                path: path.to_string(),
                answers: count("answers"),
                failures: if value.is_null() { 1 } else { count("failures") },
                tasks: count("tasks"),
                versions,
                summary: json.to_string(),
            }
        })
        .collect()
}

/// Panics unless `loads` has every path of `paths`, each answered only by
/// `version` without a failure.
fn assert_answered(loads: &[Load], paths: &[&str], version: &str, what: &str) {
    let got: Vec<&str> = loads.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(got, paths, "{what}: a load summary per path");
    for load in loads {
        assert!(
            load.answers > 0 && load.failures == 0 && load.versions == BTreeSet::from([version.to_string()]),
            "{what} through {}: every request answered by version {version} expected, got {}",
            load.path,
            load.summary
        );
    }
}

/// Phase 1: the fixture programmed with `dataplane-apply`, then removed.
fn check_fixture_phase(log: &str) {
    let context = || format!("console:\n{log}");
    assert!(log.contains("VMTEST-APPLY rc=0"), "dataplane-apply failed; {}", context());
    let ipvsadm = section(log, "IPVSADM").join("\n");
    for wanted in [
        format!("TCP  {VIP}:80 rr"),
        format!("TCP  10.204.1.1:{PUBLISHED} rr"),
        format!("TCP  10.204.2.1:{PUBLISHED} rr"),
    ] {
        assert!(ipvsadm.contains(&wanted), "virtual server {wanted:?} missing in ipvsadm -Ln:\n{ipvsadm}");
    }
    for real in ["10.204.1.2:80", "10.204.2.2:80"] {
        let masq = ipvsadm.lines().filter(|l| l.contains(&format!("-> {real}")) && l.contains("Masq")).count();
        assert_eq!(masq, 3, "real server {real} should be Masq under all three virtual servers:\n{ipvsadm}");
    }
    assert!(log.contains(&format!("VMTEST-DUMMY {VIP}/32")), "the VIP is not on shoal-ipvs0; {}", context());
    let both: BTreeSet<String> = ["task-1".to_string(), "task-2".to_string()].into();
    let vip: BTreeSet<String> = answers(log, "VMTEST-VIP ").into_iter().collect();
    assert_eq!(vip, both, "HTTP through the VIP; {}", context());
    let published: BTreeSet<String> = answers(log, "VMTEST-PUBLISHED ").into_iter().collect();
    assert_eq!(published, both, "HTTP through the published port; {}", context());
    assert!(log.contains("VMTEST-CLEANUP rc=0"), "cleanup failed; {}", context());
    let left = section(log, "LEFT");
    assert!(left.is_empty(), "cleanup left {left:?}; {}", context());
}

/// Phase 2: the shared conformance suite.
fn check_conformance(log: &str) {
    let failed: Vec<&str> = log.lines().filter(|l| l.starts_with("conformance FAIL")).collect();
    assert!(
        failed.is_empty() && log.contains("VMTEST-CONFORMANCE rc=0"),
        "conformance failures {failed:?}; console:\n{log}"
    );
}

/// Phase 3: `shoal up` chose IPVS, served `web` on every path, updated it, and left nothing.
fn check_up_phase(log: &str) {
    let context = || format!("console:\n{log}");
    let timeouts: Vec<&str> = log.lines().filter(|l| l.starts_with("VMTEST-UP-TIMEOUT")).collect();
    assert!(timeouts.is_empty(), "waits in the shoal up phase timed out: {timeouts:?}; {}", context());
    assert!(log.contains("VMTEST-UP-MODE IPVS data plane"), "shoal up did not choose IPVS; {}", context());
    let vip = log
        .lines()
        .find_map(|l| l.strip_prefix("VMTEST-UP-VIP "))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("service inspect web showed no VIP; {}", context()));
    let ipvsadm = section(log, "UP-IPVSADM").join("\n");
    for header in [format!("TCP  {vip}:80 rr"), format!("TCP  {NODE_ADDRESS}:{UP_PORT} rr")] {
        let reals = real_servers(&ipvsadm, &header);
        let masq = reals.iter().filter(|r| r.contains(":80 ") && r.contains("Masq")).count();
        assert_eq!(masq, 2, "{header:?} should have both tasks as Masq real servers:\n{ipvsadm}");
    }

    let first = loads(log, "VMTEST-UP-LOAD ");
    assert_answered(&first, &["loopback", "node", "vip"], "1.0", "HTTP to web");
    assert!(first.iter().any(|l| l.tasks == 2), "no path reached both tasks; {}", context());

    assert!(log.contains("VMTEST-UP-UPDATE rc=0"), "service update failed; {}", context());
    let during = loads(log, "VMTEST-UP-DURING ");
    let during = during.first().unwrap_or_else(|| panic!("no load summary from the update; {}", context()));
    assert!(
        during.failures == 0 && during.answers > 0,
        "requests through IPVS failed during the rolling update: {}",
        during.summary
    );
    assert_answered(&loads(log, "VMTEST-UP-V2 "), &["loopback", "node"], "2.0", "HTTP after the update");

    assert!(log.contains("VMTEST-UP-STOPPED rc=0"), "shoal up did not stop cleanly on SIGTERM; {}", context());
    assert!(log.contains("data plane removed"), "shoal up did not log `data plane removed`; {}", context());
    let left = section(log, "UP-LEFT");
    assert!(left.is_empty(), "shoal up left {left:?} behind after SIGTERM; {}", context());
}

#[test]
fn ipvs_programs_virtual_servers_that_carry_real_connections_in_a_vm() {
    let (kernel, modules) = debian_kernel();
    let dir = tempfile::Builder::new().prefix("shoal-ipvs-vm-").tempdir().unwrap();
    let built = Instant::now();
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::File::create(&initrd).unwrap().write_all(&initramfs(&modules)).unwrap();
    let size = std::fs::metadata(&initrd).unwrap().len();
    println!("initramfs: {} MiB, built in {:?}; kernel {}", size >> 20, built.elapsed(), kernel.display());
    let console = dir.path().join("console.log");
    let ran = boot(&kernel, &initrd, &console);
    let log = std::fs::read_to_string(&console).unwrap_or_default().replace('\r', "");
    println!("VM ran {ran:?}; console:\n{log}");

    assert!(log.contains("VMTEST-BOOTED"), "no boot: {log}");
    // When each phase began, in the VM's time.
    for line in
        log.lines().filter(|l| ["VMTEST-BOOTED", "VMTEST-UP-BEGIN", "VMTEST-DONE"].iter().any(|m| l.starts_with(m)))
    {
        println!("{line}");
    }
    check_fixture_phase(&log);
    check_conformance(&log);
    check_up_phase(&log);
}
