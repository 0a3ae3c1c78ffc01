//! Configs and secrets as the chapter uses them, with `shoal` in place of
//! `docker`: create from a file or stdin, ls, inspect, `--config`/`--secret`
//! on services, removal refused while in use, stack files' `secrets:` with
//! `file:` — and no secret value anywhere in the store, read raw with
//! etcdctl. Against the embedded store and a real etcd.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::secrets::{failure, ok, Controller};
use support::{etcdctl_ok, shoal_with_stdin, StoreUnderTest};

fn shoal(store: &StoreUnderTest, args: &[&str]) -> Output {
    shoal_with_stdin(store, args, b"")
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

/// Every stored secret, read raw: name → (key id its data key is wrapped to, generation).
fn wraps(store: &StoreUnderTest) -> std::collections::BTreeMap<String, (String, i64)> {
    let raw = etcdctl_ok(&store.endpoint(), &["get", "--prefix", "/shoal/secrets/", "--print-value-only"]);
    raw.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let secret: Value = serde_json::from_str(line).unwrap();
            let key_id = secret["spec"]["sealed"]["dataKey"]["keyId"].as_str().unwrap().to_string();
            let generation = secret["metadata"]["generation"].as_i64().unwrap();
            (secret["metadata"]["name"].as_str().unwrap().to_string(), (key_id, generation))
        })
        .collect()
}

fn key_ids_in(file: &Path) -> Vec<String> {
    let file: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    file["keys"].as_array().unwrap().iter().map(|k| k["keyId"].as_str().unwrap().to_string()).collect()
}

fn published_key_id(store: &StoreUnderTest) -> String {
    let raw = etcdctl_ok(&store.endpoint(), &["get", "/shoal/keys/secrets", "--print-value-only"]);
    serde_json::from_str::<Value>(raw.trim()).unwrap()["keyId"].as_str().unwrap().to_string()
}

fn the_cluster_key_rotates_without_new_versions_and_an_interrupted_rotation_finishes_on_rerun(store: &StoreUnderTest) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("secrets.key");
    let _controller = Controller::start(store, &key_file);
    let values = ["first-Secret-value", "second-Secret-value", "third-Secret-value"];
    for (name, value) in ["a", "b", "c"].iter().zip(values) {
        ok(shoal_with_stdin(store, &["secret", "create", name, "-"], value.as_bytes()));
    }
    ok(shoal(store, &["service", "create", "--name", "web", "--replicas", "2", "--secret", "a", "x"]));
    let old = key_ids_in(&key_file);
    assert_eq!(old.len(), 1);
    let before = wraps(store);
    assert!(before.values().all(|(key, generation)| key == &old[0] && *generation == 1), "{before:?}");
    let rotate = |extra: &[&str]| {
        let mut args = vec!["cluster-key", "rotate", "--encryption-key-file", key_file.to_str().unwrap()];
        args.extend(extra);
        shoal(store, &args)
    };

    // Interrupted after one secret: both keys in the file, the new one published.
    let stopped = rotate(&["--stop-after", "1"]);
    let stopped_out = String::from_utf8_lossy(&stopped.stdout).into_owned();
    assert!(failure(stopped).contains("run the command again to finish"));
    assert!(stopped_out.contains("[1/3] secret "), "{stopped_out}");
    let keys = key_ids_in(&key_file);
    assert_eq!(keys.len(), 2, "the old key stays, decrypt-only, until the rotation finishes");
    let new = keys[0].clone();
    assert_eq!(keys[1], old[0]);
    assert_eq!(published_key_id(store), new, "new values are sealed to the new key at once");
    let halfway = wraps(store);
    assert_eq!(halfway.values().filter(|(key, _)| key == &new).count(), 1, "{halfway:?}");
    // Meanwhile a new secret is sealed to the new key.
    ok(shoal_with_stdin(store, &["secret", "create", "d", "-"], b"fourth-Secret-value"));

    // Run again: it resumes (no third key), re-wraps the rest, retires the old key.
    let finished = ok(rotate(&[]));
    assert!(finished.contains(&format!("Resuming the unfinished rotation to key {new}")), "{finished}");
    assert!(finished.contains(&format!("Retired key {}", old[0])), "{finished}");
    assert!(finished.contains("2 secrets re-wrapped, 2 already on it"), "{finished}");
    assert_eq!(key_ids_in(&key_file), std::slice::from_ref(&new), "the old key is gone from the file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let after = wraps(store);
    assert_eq!(after.len(), 4);
    assert!(after.values().all(|(key, generation)| key == &new && *generation == 1), "no new version: {after:?}");
    let service: Value = serde_json::from_str(&ok(shoal(store, &["service", "inspect", "web"]))).unwrap();
    assert_eq!(service[0]["metadata"]["generation"], 1, "the service did not change");

    // Nothing secret in the store, the output or the key file's neighbourhood.
    let raw = etcdctl_ok(&store.endpoint(), &["get", "--prefix", "/shoal"]);
    for value in values.iter().chain(&["fourth-Secret-value"]) {
        assert!(!raw.contains(value) && !finished.contains(value) && !stopped_out.contains(value));
    }
    assert!(!raw.contains("privateKey") && !finished.contains("privateKey"));

    // A new version after the rotation is sealed to the new key, as v2.
    assert_eq!(ok(shoal_with_stdin(store, &["secret", "rotate", "a", "-"], b"new-a")).trim(), "a v2");
    assert_eq!(wraps(store)["a"], (new, 2));
}

sync_on_both_backends!(
    configs_follow_the_chapter,
    empty_and_oversized_values_are_refused,
    secrets_need_the_cluster_key_first,
    secrets_are_stored_only_encrypted,
    stack_secrets_from_files_are_sealed_and_versioned,
    the_cluster_key_rotates_without_new_versions_and_an_interrupted_rotation_finishes_on_rerun,
);
