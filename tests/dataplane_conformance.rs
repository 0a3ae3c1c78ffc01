//! The shared data-plane conformance suite (`shoal agent
//! dataplane-conformance`, [`shoal_agent::dataplane::conformance`]) run
//! against the nftables plane (and the userspace proxy, whose checks are
//! the published port's: it has no VIPs) on this host, in a throwaway network
//! namespace playing the node so the host's own tables are not touched.
//! The IPVS plane runs the same suite inside a VM (`tests/ipvs_vm.rs`).
//!
//! As root only (fails, never skips, otherwise).

use std::process::Command;

/// Deletes the node namespace (and with it everything the suite left in it).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_nftables_data_plane_passes_the_conformance_suite_in_a_namespace() {
    assert!(shoal_agent::sys::is_root(), "this test needs root: it creates network namespaces (CI runs as root)");
    let node = Netns(format!("shoal-cfnode-{}", std::process::id()));
    let created = Command::new("ip").args(["netns", "add", &node.0]).status().expect("running ip");
    assert!(created.success(), "ip netns add {} failed", node.0);
    let output = Command::new("ip")
        .args(["netns", "exec", &node.0, env!("CARGO_BIN_EXE_shoal")])
        .args(["agent", "dataplane-conformance", "--dataplane", "nftables"])
        .output()
        .expect("running shoal agent dataplane-conformance");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "conformance failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("14 of 14 checks passed"), "{stdout}");
}

#[test]
fn the_userspace_data_plane_passes_the_published_port_checks_in_a_namespace() {
    assert!(shoal_agent::sys::is_root(), "this test needs root: it creates network namespaces (CI runs as root)");
    let node = Netns(format!("shoal-cfus-{}", std::process::id()));
    let created = Command::new("ip").args(["netns", "add", &node.0]).status().expect("running ip");
    assert!(created.success(), "ip netns add {} failed", node.0);
    let output = Command::new("ip")
        .args(["netns", "exec", &node.0, env!("CARGO_BIN_EXE_shoal")])
        .args(["agent", "dataplane-conformance", "--dataplane", "userspace"])
        .output()
        .expect("running shoal agent dataplane-conformance");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "conformance failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("9 of 9 checks passed"), "no VIPs, every published-port check: {stdout}");
}
