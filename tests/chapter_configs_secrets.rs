//! The reference chapter's configs and secrets sections, command by command,
//! with `shoal` in place of `docker`; each output compared in shape with what
//! the chapter shows. Against the embedded store and a real etcd, with a
//! controller (for the cluster key) and no agent: what happens inside a task
//! (`docker exec … cat /run/secrets/…`) is `tests/secrets_delivery.rs`.
//!
//! Sequences already covered verbatim by `tests/configs_secrets.rs` are not
//! repeated here: `config create app.properties ./my-app.properties` with its
//! `Spec.Data` decoded, `service create --name nginx --config
//! source=app.properties,target=/etc/myapp/conf/app.properties,mode=0440`,
//! `config rm` refused in Docker's words then `service rm nginx` and `config
//! rm app.properties` (`configs_follow_the_chapter`); `secret create
//! sample-secret -`, `secret create other-secret ./secret-value.txt`, `secret
//! ls`/`inspect` without the value, `secret not found: api-secret-key`, `secret
//! rm` refused while in use (`secrets_are_stored_only_encrypted`).

mod support;

use std::process::Output;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use support::secrets::{failure, ok, Controller};
use support::{etcdctl_ok, free_port, shoal_with_stdin, wait_until, StoreUnderTest};

fn shoal(store: &StoreUnderTest, args: &[&str]) -> Output {
    shoal_with_stdin(store, args, b"")
}

/// `docker config inspect NAME | jq -r '.[].Spec.Data' | base64 -d`.
fn decoded_data(inspect: &str) -> Vec<u8> {
    let objects: Vec<Value> = serde_json::from_str(inspect).unwrap();
    objects
        .iter()
        .flat_map(|o| base64::engine::general_purpose::STANDARD.decode(o["Spec"]["Data"].as_str().unwrap()).unwrap())
        .collect()
}

/// The service's spec as `service inspect` shows it.
fn spec_of(store: &StoreUnderTest, service: &str) -> Value {
    let inspect: Value = serde_json::from_str(&ok(shoal(store, &["service", "inspect", service]))).unwrap();
    inspect[0]["spec"].clone()
}

/// "Storing configuration data in Swarm": `hello-config` from stdin.
fn hello_config_from_stdin_is_listed_and_inspected_as_docker_shows_it(store: &StoreUnderTest) {
    // $ echo "Hello world" | docker config create hello-config -
    // 941xbaen80tdycup0wm01nspr
    let id = ok(shoal_with_stdin(store, &["config", "create", "hello-config", "-"], b"Hello world\n"));
    let id = id.trim();
    assert!(!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()), "one ID and nothing else: {id:?}");

    // $ docker config ls
    // ID       NAME        CREATED            UPDATED
    // rrin36..  hello-config  About a minute ago   About a minute ago
    let ls = ok(shoal(store, &["config", "ls"]));
    let mut lines = ls.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "CREATED", "UPDATED"]);
    let row = lines.find(|l| l.contains("hello-config")).expect("hello-config is listed");
    assert!(id.starts_with(row.split_whitespace().next().unwrap()), "the short ID: {row}");
    assert_eq!(row.matches(" ago").count(), 2, "created and updated, as ages: {row}");

    // $ docker config inspect hello-config
    let inspect = ok(shoal(store, &["config", "inspect", "hello-config"]));
    let shown: Value = serde_json::from_str(&inspect).unwrap();
    let object = shown.as_array().filter(|a| a.len() == 1).map(|a| &a[0]).expect("a JSON array of one object");
    let mut keys: Vec<&String> = object.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["CreatedAt", "ID", "Spec", "UpdatedAt", "Version"]);
    assert_eq!(object["ID"], id);
    assert!(object["Version"]["Index"].as_i64().unwrap() > 0);
    assert_eq!(object["Spec"]["Name"], "hello-config");
    assert_eq!(object["Spec"]["Labels"], serde_json::json!({}));
    assert_eq!(object["Spec"]["Data"], "SGVsbG8gd29ybGQK", "the chapter's exact base64");

    // $ docker config inspect hello-config | jq .[].Spec.Data | xargs echo | base64 --decode
    // Hello world
    assert_eq!(decoded_data(&inspect), b"Hello world\n");
}

/// "Using secrets": the service fails until `api-secret-key` exists, then
/// the short form mounts it at /run/secrets, the long form where asked.
fn a_service_gets_its_secret_once_it_exists_at_the_default_or_a_custom_target(store: &StoreUnderTest) {
    let dir = tempfile::tempdir().unwrap();
    let _controller = Controller::start(store, &dir.path().join("secrets.key"));
    let create_web = || {
        shoal(
            store,
            &[
                "service",
                "create",
                "--name",
                "web",
                "--secret",
                "api-secret-key",
                "--publish",
                "8000:8000",
                "training/whoami:latest",
            ],
        )
    };
    // secret not found: api-secret-key.
    assert!(failure(create_web()).contains("secret not found: api-secret-key"));

    // $ echo "my secret key" | docker secret create api-secret-key -
    ok(shoal_with_stdin(store, &["secret", "create", "api-secret-key", "-"], b"my secret key\n"));
    // "if we re-run the service create command, it will succeed"
    assert_eq!(ok(create_web()).trim(), "web");
    let spec = spec_of(store, "web");
    assert_eq!(spec["secrets"][0]["source"], "api-secret-key");
    assert_eq!(spec["secrets"][0]["target"], "/run/secrets/api-secret-key");
    assert_eq!(spec["ports"][0]["published"], 8000);

    // $ docker service create --name web -p 8000:8000 \
    //     --secret source=api-secret-key,target=/run/my-secrets/api-secret-key \
    //     fundamentalsofdocker/whoami:latest
    // (the chapter's alternative to the first `web`, which goes first)
    ok(shoal(store, &["service", "rm", "web"]));
    let long = "source=api-secret-key,target=/run/my-secrets/api-secret-key";
    let created = ok(shoal(
        store,
        &[
            "service",
            "create",
            "--name",
            "web",
            "-p",
            "8000:8000",
            "--secret",
            long,
            "fundamentalsofdocker/whoami:latest",
        ],
    ));
    assert_eq!(created.trim(), "web");
    assert_eq!(spec_of(store, "web")["secrets"][0]["target"], "/run/my-secrets/api-secret-key");

    // "Secrets and legacy applications": `demo-secret` for an app that wants
    // DEMO_SECRET — the chapter's entrypoint script, or Shoal's `env=`.
    ok(shoal_with_stdin(store, &["secret", "create", "demo-secret", "-"], b"passw0rD123\n"));
    ok(shoal(store, &["service", "create", "--name", "demo", "--secret", "demo-secret", "secrets-demo:1.0"]));
    let as_env = "source=demo-secret,env=DEMO_SECRET";
    ok(shoal(store, &["service", "create", "--name", "legacy", "--secret", as_env, "secrets-demo:1.0"]));
    let reference = &spec_of(store, "legacy")["secrets"][0];
    assert_eq!(
        (reference["target"].as_str(), reference["env"].as_str()),
        (Some("/run/secrets/demo-secret"), Some("DEMO_SECRET"))
    );

    let raw = etcdctl_ok(&store.endpoint(), &["get", "--prefix", "/shoal"]);
    assert!(!raw.contains("my secret key") && !raw.contains("passw0rD123"), "no plaintext in the store");
}

/// "Updating secrets": the chapter's manual method, as ONE update, and
/// Shoal's `secret rotate`.
fn a_secret_is_replaced_in_one_update_or_rotated_in_place(store: &StoreUnderTest) {
    let dir = tempfile::tempdir().unwrap();
    let _controller = Controller::start(store, &dir.path().join("secrets.key"));
    ok(shoal_with_stdin(store, &["secret", "create", "db-password", "-"], b"passw0rD\n"));
    // $ docker service create --name web --publish 80:80 --secret db-password nginx:alpine
    ok(shoal(
        store,
        &["service", "create", "--name", "web", "--publish", "80:80", "--secret", "db-password", "nginx:alpine"],
    ));
    // $ echo "newPassw0rD" | docker secret create db-password-v2 -
    ok(shoal_with_stdin(store, &["secret", "create", "db-password-v2", "-"], b"newPassw0rD\n"));

    // The chapter removes, then adds, in two updates (a window without the
    // file); in one update the tasks go straight from the old to the new.
    // No agent runs here, so the update is not followed (`--detach`).
    let updated = ok(shoal(
        store,
        &[
            "service",
            "update",
            "--detach",
            "--secret-rm",
            "db-password",
            "--secret-add",
            "source=db-password-v2,target=db-password",
            "web",
        ],
    ));
    assert_eq!(updated.trim(), "web");
    let inspect: Value = serde_json::from_str(&ok(shoal(store, &["service", "inspect", "web"]))).unwrap();
    assert_eq!(inspect[0]["metadata"]["generation"], 2, "one update, one new generation");
    let secrets = inspect[0]["spec"]["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 1);
    assert_eq!(
        (secrets[0]["source"].as_str(), secrets[0]["target"].as_str()),
        (Some("db-password-v2"), Some("/run/secrets/db-password"))
    );
    // The old version is no longer in use: it can go.
    assert_eq!(ok(shoal(store, &["secret", "rm", "db-password"])).trim(), "db-password");

    // Shoal's way: a new version under the same name; every user rolls onto it.
    let rotated = shoal_with_stdin(store, &["secret", "rotate", "db-password-v2", "-"], b"n3wer-Passw0rD\n");
    let stderr = String::from_utf8_lossy(&rotated.stderr).into_owned();
    assert_eq!(ok(rotated).trim(), "db-password-v2 v2");
    assert!(stderr.contains("rolling web onto it"), "{stderr}");
    let unchanged = shoal_with_stdin(store, &["secret", "rotate", "db-password-v2", "-"], b"n3wer-Passw0rD\n");
    let stderr = String::from_utf8_lossy(&unchanged.stderr).into_owned();
    assert_eq!(ok(unchanged).trim(), "db-password-v2 v2", "the same value is not a new version");
    assert!(stderr.contains("the value is unchanged"), "{stderr}");
}

/// The stack-file form: top-level `configs:` and `secrets:` from files,
/// referenced by a service in the long syntax.
fn a_stack_file_declares_its_configs_and_secrets_at_the_top_level(store: &StoreUnderTest) {
    let dir = tempfile::tempdir().unwrap();
    let _controller = Controller::start(store, &dir.path().join("secrets.key"));
    let properties = "username=pguser\ndatabase=products\nport=5432\ndbhost=postgres.acme.com\n";
    std::fs::write(dir.path().join("my-app.properties"), properties).unwrap();
    std::fs::write(dir.path().join("db-password.txt"), "passw0rD123\n").unwrap();
    let compose = dir.path().join("stack.yml");
    std::fs::write(
        &compose,
        r#"version: "3.8"
services:
  web:
    image: nginx:alpine
    configs:
      - source: app.properties
        target: /etc/myapp/conf/app.properties
        mode: 0440
    secrets:
      - db-password
configs:
  app.properties:
    file: ./my-app.properties
secrets:
  db-password:
    file: ./db-password.txt
"#,
    )
    .unwrap();
    let deployed = ok(shoal(store, &["stack", "deploy", "-c", compose.to_str().unwrap(), "app"]));
    for line in ["Creating config app_app.properties", "Creating secret app_db-password", "Creating service app_web"] {
        assert!(deployed.contains(line), "{deployed}");
    }
    let spec = spec_of(store, "app_web");
    assert_eq!(spec["configs"][0]["source"], "app_app.properties");
    assert_eq!(spec["configs"][0]["mode"], 0o440);
    assert_eq!(
        (spec["secrets"][0]["source"].as_str(), spec["secrets"][0]["target"].as_str()),
        (Some("app_db-password"), Some("/run/secrets/db-password"))
    );
    let inspect = ok(shoal(store, &["config", "inspect", "app_app.properties"]));
    assert_eq!(decoded_data(&inspect), properties.as_bytes());
    assert!(!etcdctl_ok(&store.endpoint(), &["get", "--prefix", "/shoal"]).contains("passw0rD123"));
    let refused = failure(shoal(store, &["config", "rm", "app_app.properties"]));
    assert!(refused.contains("config 'app_app.properties' is in use by the following service: app_web"), "{refused}");

    ok(shoal(store, &["stack", "rm", "app"]));
    assert!(!ok(shoal(store, &["config", "ls"])).contains("app_app.properties"));
    assert!(!ok(shoal(store, &["secret", "ls"])).contains("app_db-password"));
}

sync_on_both_backends!(
    hello_config_from_stdin_is_listed_and_inspected_as_docker_shows_it,
    a_service_gets_its_secret_once_it_exists_at_the_default_or_a_custom_target,
    a_secret_is_replaced_in_one_update_or_rotated_in_place,
    a_stack_file_declares_its_configs_and_secrets_at_the_top_level,
);

/// "Simulating secrets in a development environment": the chapter mounts a
/// `./dev-secrets` folder at /run/secrets; `shoal up --dev-secrets` turns its
/// files into real (sealed) secrets instead. `shoal up` has its own store.
#[test]
fn dev_secrets_become_sealed_secrets_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("dev-secrets");
    std::fs::create_dir(&folder).unwrap();
    // $ echo "demo secret value" > ./dev-secrets/sample-secret
    std::fs::write(folder.join("sample-secret"), "demo secret value\n").unwrap();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["up", "--no-agent", "--listen", &endpoint, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--dev-secrets")
        .arg(&folder)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start shoal up");
    let endpoint = format!("http://{endpoint}");
    let client = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["--etcd-endpoints", &endpoint])
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let listed = wait_until(Duration::from_secs(20), || {
        String::from_utf8_lossy(&client(&["secret", "ls"]).stdout).contains("sample-secret")
    });
    let inspect = String::from_utf8_lossy(&client(&["secret", "inspect", "sample-secret"]).stdout).into_owned();
    let raw = etcdctl_ok(&endpoint, &["get", "--prefix", "/shoal/secrets/"]);
    let _ = up.kill();
    let _ = up.wait();
    assert!(listed, "the dev secret was not created");
    assert!(inspect.contains("shoal.dev/dev-secret") && !inspect.contains("demo secret value"), "{inspect}");
    assert!(raw.contains("ciphertext") && !raw.contains("demo secret value"), "sealed, not in plaintext");
}
