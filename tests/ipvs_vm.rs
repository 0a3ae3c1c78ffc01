//! The IPVS data plane on a kernel that has IPVS: this machine's has none,
//! so the test boots Debian's (`linux-image-amd64`) under
//! `qemu-system-x86_64 -machine accel=tcg` with an initramfs it writes
//! itself (newc cpio, in Rust): busybox, ipvsadm, iproute2's `ip`, `nft`,
//! the `shoal` binary (debug info stripped), their shared libraries, the
//! kernel modules IPVS needs, and an `/init` script.
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
//! 3. powers off.
//!
//! The console log is checked: virtual servers with masquerading real
//! servers, both backends answering through the VIP and the published
//! port, nothing left after cleanup, every conformance check passed.
//!
//! Without the kernel, qemu, busybox-static or ipvsadm the test fails
//! (never skips) saying what to install; `.ci/run` installs them. The VM
//! is killed after [`VM_TIMEOUT`] and the console log shown.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_crd::{Backend, EndpointMode, EndpointPort, Endpoints, EndpointsSpec, PortProtocol, PublishMode};

const VM_TIMEOUT: Duration = Duration::from_secs(180);
const PACKAGES: &str = "qemu-system-x86 linux-image-amd64 busybox-static ipvsadm";
const VIP: &str = "10.96.204.1";
const PUBLISHED: u16 = 31204;
/// Modules `/init` loads, with their dependencies (from modules.dep) before them.
const MODULES: &[&str] = &["crc32c_generic", "ip_vs_rr", "dummy", "veth", "nft_masq", "nft_chain_nat"];

fn missing(what: &str) -> ! {
    panic!("{what} is missing: this test needs `apt-get install {PACKAGES}` (as .ci/run does)")
}

/// `name` on PATH or in the sbin directories.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').map(PathBuf::from).chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| missing(name))
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

/// A newc ("070701") cpio archive, written as the kernel unpacks an initramfs.
struct Cpio {
    out: Vec<u8>,
    inode: u32,
    names: BTreeSet<String>,
}

impl Cpio {
    fn new() -> Self {
        Self { out: Vec::new(), inode: 1, names: BTreeSet::new() }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let name = name.trim_start_matches('/');
        if !self.names.insert(name.to_string()) {
            return;
        }
        self.inode += 1;
        let fields = [self.inode, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// `path` and every parent directory.
    fn dir(&mut self, path: &str) {
        let mut so_far = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            so_far.push('/');
            so_far.push_str(part);
            self.entry(&so_far.clone(), 0o040755, &[], (0, 0));
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, 0o100000 | mode, data, (0, 0));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120777, target.as_bytes(), (0, 0));
    }

    /// A binary at `at` with every shared library `ldd` names, at the paths it names.
    fn binary(&mut self, host: &Path, at: &str, data: Option<Vec<u8>>) {
        let data = data.unwrap_or_else(|| std::fs::read(host).unwrap_or_else(|e| panic!("{}: {e}", host.display())));
        self.file(at, 0o755, &data);
        let ldd = Command::new("ldd").arg(host).output().expect("running ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else { continue };
            if !self.names.contains(path.trim_start_matches('/')) {
                let library = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
                self.file(path, 0o755, &library);
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

/// The load order of `wanted` and their dependencies, as paths under `modules`.
fn module_order(modules: &Path, wanted: &[&str]) -> Vec<PathBuf> {
    let dep = std::fs::read_to_string(modules.join("modules.dep")).expect("reading modules.dep");
    let deps: std::collections::BTreeMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.to_string(), d.split_whitespace().map(str::to_string).collect()))
        .collect();
    let stem = |p: &str| p.rsplit('/').next().unwrap_or(p).split('.').next().unwrap_or(p).replace('-', "_");
    fn visit(m: &str, deps: &std::collections::BTreeMap<String, Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, order);
        }
        order.push(m.to_string());
    }
    let mut order = Vec::new();
    for name in wanted {
        let path = deps
            .keys()
            .find(|p| stem(p) == name.replace('-', "_"))
            .unwrap_or_else(|| panic!("module {name} not in {}", modules.display()));
        visit(path, &deps, &mut order);
    }
    order.into_iter().map(|p| modules.join(p)).collect()
}

/// A module's bytes, decompressed when Debian ships it compressed.
fn module_bytes(path: &Path) -> Vec<u8> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    let output = Command::new(tool).arg("-dc").arg(path).output().unwrap_or_else(|e| panic!("{tool} -dc {name}: {e}"));
    assert!(output.status.success(), "{tool} -dc {name} failed");
    output.stdout
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
mkdir -p /run/netns /tmp
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
echo VMTEST-DONE
poweroff -f
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
            "512",
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
    let context = || format!("console:\n{log}");

    let booted =
        log.lines().find(|l| l.starts_with("VMTEST-BOOTED")).unwrap_or_else(|| panic!("no boot: {}", context()));
    println!("{booted}");
    assert!(log.contains("VMTEST-APPLY rc=0"), "dataplane-apply failed; {}", context());
    let ipvsadm = section(&log, "IPVSADM").join("\n");
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
    let vip: BTreeSet<String> = answers(&log, "VMTEST-VIP ").into_iter().collect();
    assert_eq!(vip, both, "HTTP through the VIP; {}", context());
    let published: BTreeSet<String> = answers(&log, "VMTEST-PUBLISHED ").into_iter().collect();
    assert_eq!(published, both, "HTTP through the published port; {}", context());
    assert!(log.contains("VMTEST-CLEANUP rc=0"), "cleanup failed; {}", context());
    let left = section(&log, "LEFT");
    assert!(left.is_empty(), "cleanup left {left:?}; {}", context());
    let failed: Vec<&str> = log.lines().filter(|l| l.starts_with("conformance FAIL")).collect();
    assert!(
        failed.is_empty() && log.contains("VMTEST-CONFORMANCE rc=0"),
        "conformance failures {failed:?}; {}",
        context()
    );
}
