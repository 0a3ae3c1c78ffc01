//! What the configs and secrets tests share: a `shoal controller` holding
//! its own key file, and checks of a command's outcome.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{etcdctl_ok, wait_until, StoreUnderTest};

/// `shoal controller` with its own key file: it publishes the cluster's
/// public key, which `secret create` needs. Killed on drop.
pub struct Controller(Child);

impl Controller {
    pub fn start(store: &StoreUnderTest, key_file: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["--etcd-endpoints", &store.endpoint(), "controller", "--encryption-key-file"])
            .arg(key_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start shoal controller");
        let published = wait_until(Duration::from_secs(20), || {
            etcdctl_ok(&store.endpoint(), &["get", "/shoal/keys/secrets", "--print-value-only"]).contains("keyId")
        });
        assert!(published, "the controller did not publish the cluster key");
        Controller(child)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stdout of a command that must have succeeded.
pub fn ok(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "shoal failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The stderr of a command that must have failed.
pub fn failure(output: Output) -> String {
    assert!(!output.status.success(), "shoal should have failed: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}
