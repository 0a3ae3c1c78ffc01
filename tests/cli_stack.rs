//! The `shoal` binary as a new user runs it: stack deploy, services, apply,
//! rm, restarts, bad stack files and an unreachable store — against the
//! embedded store and a real etcd.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::StoreUnderTest;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs `shoal --etcd-endpoints ENDPOINT ARGS…` from the repository root.
fn shoal(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .current_dir(repo_root())
        .arg("--etcd-endpoints")
        .arg(endpoint)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shoal")
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

fn json(output: Output) -> Value {
    serde_json::from_str(&ok(output)).expect("valid JSON output")
}

/// The store's revision, read with the shoal client.
fn revision(backend: &StoreUnderTest) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = shoal_store::client::StoreConfig::for_endpoint(backend.endpoint());
        shoal_store::client::Store::connect(&config).await.unwrap().revision().await.unwrap()
    })
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded { $( #[test] fn $name() { super::$name(&super::StoreUnderTest::embedded()) } )* }
        mod etcd { $( #[test] fn $name() { super::$name(&super::StoreUnderTest::etcd()) } )* }
    };
}

on_both_backends!(
    stack_deploy_fills_every_default,
    redeploying_an_unchanged_stack_writes_nothing,
    changed_stack_bumps_generation_of_changed_services_only,
    stack_rm_removes_services_and_configs,
    apply_creates_then_reports_unchanged,
);

fn stack_deploy_fills_every_default(backend: &StoreUnderTest) {
    let e = backend.endpoint();
    let out = ok(shoal(&e, &["stack", "deploy", "-c", "examples/web-stack.yml", "web"]));
    assert!(out.contains("Creating service web_web"), "{out}");
    let services = json(shoal(&e, &["stack", "services", "web", "-o", "json"]));
    let list = services.as_array().expect("a JSON array");
    assert!(list.len() >= 2, "{services}");
    for service in list {
        let spec = &service["spec"];
        assert_eq!(service["metadata"]["generation"], 1);
        assert_eq!(service["metadata"]["labels"]["com.docker.stack.namespace"], "web");
        for key in ["updateConfig", "rollbackConfig"] {
            for field in ["parallelism", "delay", "failureAction", "monitor", "maxFailureRatio", "order"] {
                assert!(!spec[key][field].is_null(), "{key}.{field} missing in {spec}");
            }
        }
        for field in ["condition", "delay", "maxAttempts", "window"] {
            assert!(!spec["restartPolicy"][field].is_null(), "restartPolicy.{field} missing");
        }
        assert!(spec["stopGracePeriod"].is_string() && spec["stopSignal"] == "SIGTERM", "{spec}");
        if let Some(hc) = spec.get("healthcheck") {
            for field in ["interval", "timeout", "retries", "startPeriod", "startInterval"] {
                assert!(!hc[field].is_null(), "healthcheck.{field} missing");
            }
        }
    }
    let web = list.iter().find(|s| s["metadata"]["name"] == "web_web").expect("web_web");
    assert_eq!(web["spec"]["replicas"], 10);
    assert_eq!(web["spec"]["rollbackConfig"]["failureAction"], "pause");
    let table = ok(shoal(&e, &["stack", "services", "web"]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("web_web") && table.contains("0/10") && table.contains("*:8080->80/tcp"), "{table}");
    let stacks = ok(shoal(&e, &["stack", "ls"]));
    assert!(stacks.lines().any(|l| l.starts_with("web ")), "{stacks}");
}

fn redeploying_an_unchanged_stack_writes_nothing(backend: &StoreUnderTest) {
    let e = backend.endpoint();
    ok(shoal(&e, &["stack", "deploy", "-c", "examples/web-stack.yml", "web"]));
    let before = revision(backend);
    let out = ok(shoal(&e, &["stack", "deploy", "-c", "examples/web-stack.yml", "web"]));
    assert!(out.contains("Unchanged service web_web"), "{out}");
    assert_eq!(revision(backend), before, "an unchanged redeploy must not write");
    let web = json(shoal(&e, &["service", "inspect", "web_web"]));
    assert_eq!(web[0]["metadata"]["generation"], 1);
}

fn changed_stack_bumps_generation_of_changed_services_only(backend: &StoreUnderTest) {
    let e = backend.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(repo_root().join("examples/web-stack.yml")).unwrap();
    let file = copy_stack_with_configs(dir.path(), &original);
    ok(shoal(&e, &["stack", "deploy", "-c", file.to_str().unwrap(), "web"]));
    let changed = original.replacen("replicas: 10", "replicas: 5", 1);
    assert_ne!(changed, original, "examples/web-stack.yml sets `replicas: 10` for web");
    std::fs::write(&file, changed).unwrap();
    let before = revision(backend);
    let out = ok(shoal(&e, &["stack", "deploy", "-c", file.to_str().unwrap(), "web"]));
    assert!(out.contains("Updating service web_web"), "{out}");
    assert_eq!(revision(backend), before + 1, "the whole deploy is one transaction");
    let services = json(shoal(&e, &["stack", "services", "web", "-o", "json"]));
    for service in services.as_array().unwrap() {
        let expected = if service["metadata"]["name"] == "web_web" { 2 } else { 1 };
        assert_eq!(service["metadata"]["generation"], expected, "{}", service["metadata"]);
    }
}

/// Copies the web stack and the files its configs refer to into `dir`.
fn copy_stack_with_configs(dir: &Path, stack: &str) -> PathBuf {
    let examples = repo_root().join("examples");
    for entry in walk(&examples) {
        let rel = entry.strip_prefix(&examples).unwrap();
        let target = dir.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
    let file = dir.join("web-stack.yml");
    std::fs::write(&file, stack).unwrap();
    file
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path))
        } else {
            out.push(path)
        }
    }
    out
}

fn stack_rm_removes_services_and_configs(backend: &StoreUnderTest) {
    let e = backend.endpoint();
    ok(shoal(&e, &["stack", "deploy", "-c", "examples/web-stack.yml", "web"]));
    let before = revision(backend);
    let out = ok(shoal(&e, &["stack", "rm", "web"]));
    assert!(out.contains("Removing service web_web"), "{out}");
    assert_eq!(revision(backend), before + 1, "removal is one transaction");
    assert_eq!(json(shoal(&e, &["service", "ls", "-o", "json"])), serde_json::json!([]));
    assert_eq!(json(shoal(&e, &["get", "configs", "-o", "json"])), serde_json::json!([]));
    assert!(ok(shoal(&e, &["stack", "rm", "web"])).contains("Nothing found in stack: web"));
}

fn apply_creates_then_reports_unchanged(backend: &StoreUnderTest) {
    let e = backend.endpoint();
    let out = ok(shoal(&e, &["apply", "-f", "examples/native/web.yaml"]));
    assert!(out.contains("service/") && out.contains(" created"), "{out}");
    let before = revision(backend);
    let again = ok(shoal(&e, &["apply", "-f", "examples/native/web.yaml"]));
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");
    assert_eq!(revision(backend), before);
}

/// `# expect: LINE:COL` on the first line of each bad example.
fn expected_position(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("# expect:")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("{} lacks `# expect: LINE:COL`", file.display()))
}

#[test]
fn bad_stack_files_name_line_and_column_and_change_nothing() {
    let backend = StoreUnderTest::embedded();
    let e = backend.endpoint();
    ok(shoal(&e, &["stack", "deploy", "-c", "examples/web-stack.yml", "web"]));
    let before = revision(&backend);
    let bad_dir = repo_root().join("examples/bad");
    let mut files: Vec<PathBuf> =
        walk(&bad_dir).into_iter().filter(|p| p.extension().is_some_and(|x| x == "yml")).collect();
    files.sort();
    assert!(files.len() >= 6, "examples/bad has a file per kind of mistake");
    for file in files {
        let rel = file.strip_prefix(repo_root()).unwrap().to_str().unwrap().to_string();
        let output = shoal(&e, &["stack", "deploy", "-c", &rel, "web"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{rel} must be refused");
        let position = format!("{rel}:{}:", expected_position(&file));
        assert!(stderr.contains(&position), "{rel}: expected `{position}` in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(revision(&backend), before, "refused stack files must not write");
}

#[test]
fn restarted_store_keeps_stacks_and_continues_revisions() {
    let mut backend = StoreUnderTest::embedded();
    let e = backend.endpoint();
    ok(shoal(&e, &["stack", "deploy", "-c", "examples/web-stack.yml", "web"]));
    let before = revision(&backend);
    backend.restart();
    assert_eq!(revision(&backend), before);
    let services = json(shoal(&e, &["stack", "services", "web", "-o", "json"]));
    assert!(services.as_array().unwrap().iter().any(|s| s["metadata"]["name"] == "web_web"));
    ok(shoal(&e, &["stack", "rm", "web"]));
    assert_eq!(revision(&backend), before + 1);
}

#[test]
fn unreachable_store_gives_one_line_naming_the_endpoint() {
    let started = Instant::now();
    let output = shoal("http://127.0.0.1:9", &["stack", "ls"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert!(stderr.contains("http://127.0.0.1:9"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn schema_prints_json_schema_for_every_kind() {
    for kind in ["Service", "task", "nodes", "Config", "secret", "Event"] {
        let schema = json(shoal("http://127.0.0.1:9", &["schema", kind]));
        assert!(schema.get("properties").is_some() || schema.get("$defs").is_some(), "{kind}: {schema}");
    }
    let output = shoal("http://127.0.0.1:9", &["schema", "pods"]);
    assert!(!output.status.success());
}

#[test]
fn silent_listener_times_out_naming_the_endpoint() {
    // Accepts TCP connections (the kernel's backlog) but never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let output = shoal(&endpoint, &["--connect-timeout", "2", "service", "ls"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    assert!(stderr.contains(&endpoint) && stderr.contains("no answer within 2s"), "{stderr}");
}

#[test]
fn stack_file_mistakes_are_reported_before_the_store_is_contacted() {
    let output = shoal("http://127.0.0.1:9", &["stack", "deploy", "-c", "examples/bad/negative-replicas.yml", "web"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("examples/bad/negative-replicas.yml:8:17:"), "{stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");
}
