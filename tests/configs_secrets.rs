//! Configs and secrets as the chapter uses them, with `shoal` in place of
//! `docker`: create from a file or stdin, ls, inspect, `--config`/`--secret`
//! on services, removal refused while in use, stack files' `secrets:` with
//! `file:` — and no secret value anywhere in the store, read raw with
//! etcdctl. Against the embedded store and a real etcd.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{etcdctl_ok, shoal_with_stdin, wait_until, StoreUnderTest};

fn shoal(store: &StoreUnderTest, args: &[&str]) -> Output {
    shoal_with_stdin(store, args, b"")
}

fn ok(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "shoal failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn failure(output: Output) -> String {
    assert!(!output.status.success(), "shoal should have failed: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `shoal controller` with its own key file: it publishes the cluster's
/// public key, which `secret create` needs. Killed on drop.
struct Controller(Child);

impl Controller {
    fn start(store: &StoreUnderTest, key_file: &Path) -> Self {
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

fn configs_follow_the_chapter(store: &StoreUnderTest) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.properties");
    let content = "username=pguser\ndatabase=products\nport=5432\n";
    std::fs::write(&file, content).unwrap();
    let id = ok(shoal(store, &["config", "create", "app.properties", file.to_str().unwrap()]));
    assert_eq!(id.trim().len(), 32, "create prints the full ID: {id}");
    ok(shoal_with_stdin(store, &["config", "create", "from-stdin", "-"], b"\x00\x01binary"));

    let ls = ok(shoal(store, &["config", "ls"]));
    assert!(ls.starts_with("ID") && ls.contains("CREATED") && ls.contains("UPDATED"), "{ls}");
    assert!(ls.contains("app.properties") && ls.contains(&id.trim()[..12]), "{ls}");

    let inspect: Value = serde_json::from_str(&ok(shoal(store, &["config", "inspect", "app.properties"]))).unwrap();
    assert_eq!(inspect[0]["Spec"]["Name"], "app.properties");
    assert_eq!(inspect[0]["ID"], id.trim());
    assert!(inspect[0]["Version"]["Index"].as_i64().unwrap() > 0);
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.decode(inspect[0]["Spec"]["Data"].as_str().unwrap()).unwrap();
    assert_eq!(data, content.as_bytes(), "Spec.Data | base64 -d gives the content back");
    let binary: Value = serde_json::from_str(&ok(shoal(store, &["config", "inspect", "from-stdin"]))).unwrap();
    assert_eq!(binary[0]["Spec"]["Data"], "AAFiaW5hcnk=");

    let missing = failure(shoal(store, &["service", "create", "--name", "x", "--config", "nope", "nginx"]));
    assert!(missing.contains("config not found: nope"), "{missing}");
    let flag = "source=app.properties,target=/etc/myapp/conf/app.properties,mode=0440";
    ok(shoal(store, &["service", "create", "--name", "nginx", "--config", flag, "nginx:1.13-alpine"]));
    let service: Value = serde_json::from_str(&ok(shoal(store, &["service", "inspect", "nginx"]))).unwrap();
    let reference = &service[0]["spec"]["configs"][0];
    assert_eq!(
        (reference["target"].as_str(), reference["mode"].as_u64()),
        (Some("/etc/myapp/conf/app.properties"), Some(0o440))
    );

    let refused = failure(shoal(store, &["config", "rm", "app.properties"]));
    assert!(refused.contains("config 'app.properties' is in use by the following service: nginx"), "{refused}");
    ok(shoal(store, &["service", "create", "--name", "web", "--config", "app.properties", "nginx"]));
    let refused = failure(shoal(store, &["config", "rm", "app.properties"]));
    assert!(refused.contains("is in use by the following services: nginx, web"), "{refused}");

    ok(shoal(store, &["service", "rm", "nginx", "web"]));
    assert_eq!(ok(shoal(store, &["config", "rm", "app.properties"])).trim(), "app.properties");
    let gone = failure(shoal(store, &["config", "inspect", "app.properties"]));
    assert!(gone.contains("no such config: app.properties"), "{gone}");
}

fn empty_and_oversized_values_are_refused(store: &StoreUnderTest) {
    let empty = failure(shoal_with_stdin(store, &["config", "create", "c", "-"], b""));
    assert!(empty.contains("config data is empty"), "{empty}");
    let big = vec![b'x'; 500 * 1024 + 1];
    let too_big = failure(shoal_with_stdin(store, &["secret", "create", "s", "-"], &big));
    assert!(too_big.contains("a secret holds 1 byte to 500 KiB"), "{too_big}");
}

fn secrets_need_the_cluster_key_first(store: &StoreUnderTest) {
    let err = failure(shoal_with_stdin(store, &["secret", "create", "s", "-"], b"value"));
    assert!(err.contains("shoal controller"), "the error says how to get a key: {err}");
}

fn secrets_are_stored_only_encrypted(store: &StoreUnderTest) {
    let dir = tempfile::tempdir().unwrap();
    let _controller = Controller::start(store, &dir.path().join("secrets.key"));
    let id = ok(shoal_with_stdin(
        store,
        &["secret", "create", "--label", "env=prod", "sample-secret", "-"],
        b"sample secret value\n",
    ));
    let file = dir.path().join("secret-value.txt");
    std::fs::write(&file, "other secret\n").unwrap();
    ok(shoal(store, &["secret", "create", "other-secret", file.to_str().unwrap()]));

    let ls = ok(shoal(store, &["secret", "ls"]));
    assert!(ls.contains("sample-secret") && ls.contains("other-secret") && ls.contains(&id.trim()[..12]), "{ls}");
    for format in ["json", "yaml"] {
        let shown = ok(shoal(store, &["secret", "inspect", "-o", format, "sample-secret"]));
        assert!(shown.contains("sample-secret") && shown.contains("env"), "{shown}");
        assert!(
            !shown.contains("sample secret value") && !shown.contains("ciphertext") && !shown.contains("Data"),
            "{shown}"
        );
    }
    let listed = ok(shoal(store, &["secret", "ls", "-o", "json"]));
    assert!(!listed.contains("ciphertext"), "{listed}");

    let raw = etcdctl_ok(&store.endpoint(), &["get", "--prefix", "/shoal"]);
    assert!(raw.contains("/shoal/secrets/sample-secret"), "the secret is stored");
    use base64::Engine;
    for value in ["sample secret value", "other secret"] {
        assert!(!raw.contains(value), "plaintext {value:?} in the store");
        assert!(
            !raw.contains(&base64::engine::general_purpose::STANDARD.encode(format!("{value}\n"))),
            "base64 of {value:?} in the store"
        );
    }
    assert!(!raw.contains("privateKey"), "the private key never reaches the store");

    let missing = failure(shoal(store, &["service", "create", "--name", "web", "--secret", "api-secret-key", "x"]));
    assert!(missing.contains("secret not found: api-secret-key"), "{missing}");
    ok(shoal(
        store,
        &["service", "create", "--name", "web", "--secret", "source=sample-secret,target=/run/my-secrets/key", "x"],
    ));
    let refused = failure(shoal(store, &["secret", "rm", "sample-secret"]));
    assert!(refused.contains("secret 'sample-secret' is in use by the following service: web"), "{refused}");
    assert_eq!(ok(shoal(store, &["secret", "rm", "other-secret"])).trim(), "other-secret");
}

fn stack_secrets_from_files_are_sealed_and_versioned(store: &StoreUnderTest) {
    let dir = tempfile::tempdir().unwrap();
    let _controller = Controller::start(store, &dir.path().join("secrets.key"));
    let compose = dir.path().join("stack.yml");
    std::fs::write(
        &compose,
        "services:\n  web:\n    image: x\n    secrets: [db]\nsecrets:\n  db:\n    file: ./db.txt\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("db.txt"), "passw0rD123").unwrap();
    let deploy = || shoal(store, &["stack", "deploy", "-c", compose.to_str().unwrap(), "app"]);
    let first = ok(deploy());
    assert!(first.contains("Creating secret app_db"), "{first}");
    let again = ok(deploy());
    assert!(again.contains("Unchanged secret app_db"), "an unchanged file is not a new version: {again}");

    std::fs::write(dir.path().join("db.txt"), "newPassw0rD").unwrap();
    let changed = ok(deploy());
    assert!(
        changed.contains("Updating secret app_db"),
        "a changed file is a new version, not an error (moby#33808): {changed}"
    );
    let raw = etcdctl_ok(&store.endpoint(), &["get", "/shoal/secrets/app_db", "--print-value-only"]);
    let stored: Value = serde_json::from_str(raw.trim()).unwrap();
    assert_eq!(stored["metadata"]["generation"], 2, "the version is the generation");
    let all = etcdctl_ok(&store.endpoint(), &["get", "--prefix", "/shoal"]);
    assert!(!all.contains("passw0rD123") && !all.contains("newPassw0rD"), "no plaintext in the store");
    ok(shoal(store, &["stack", "rm", "app"]));
    assert!(!ok(shoal(store, &["secret", "ls"])).contains("app_db"));
}

sync_on_both_backends!(
    configs_follow_the_chapter,
    empty_and_oversized_values_are_refused,
    secrets_need_the_cluster_key_first,
    secrets_are_stored_only_encrypted,
    stack_secrets_from_files_are_sealed_and_versioned,
);
