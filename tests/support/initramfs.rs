//! Building a Linux initramfs from this machine's files, for tests that
//! boot a kernel under qemu (`tests/ipvs_vm.rs`): a newc cpio writer that
//! also brings each binary's shared libraries, and the load order and bytes
//! of kernel modules from a `/lib/modules/<version>` tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A newc ("070701") cpio archive, written as the kernel unpacks an initramfs.
pub struct Cpio {
    out: Vec<u8>,
    inode: u32,
    names: BTreeSet<String>,
}

impl Default for Cpio {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpio {
    pub fn new() -> Self {
        Self { out: Vec::new(), inode: 1, names: BTreeSet::new() }
    }

    pub fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
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
    pub fn dir(&mut self, path: &str) {
        let mut so_far = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            so_far.push('/');
            so_far.push_str(part);
            self.entry(&so_far.clone(), 0o040755, &[], (0, 0));
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, 0o100000 | mode, data, (0, 0));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120777, target.as_bytes(), (0, 0));
    }

    /// A binary at `at` with every shared library `ldd` names, at the paths it names.
    pub fn binary(&mut self, host: &Path, at: &str, data: Option<Vec<u8>>) {
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

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

/// The load order of `wanted` and their dependencies, as paths under `modules`.
pub fn module_order(modules: &Path, wanted: &[&str]) -> Vec<PathBuf> {
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
pub fn module_bytes(path: &Path) -> Vec<u8> {
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
