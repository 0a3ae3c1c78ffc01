//! Translation of each compose key, and positioned errors, on small stack
//! files written to a temporary directory.

use std::path::Path;

use super::*;
use crate::duration::Duration;
use crate::kinds::*;

fn env(name: &str) -> Option<String> {
    match name {
        "TAG" => Some("2.0".into()),
        "FROM_SHELL" => Some("shell-value".into()),
        _ => None,
    }
}

/// Writes `text` (and extra files) to a temp dir and loads it as stack `st`.
fn load_with(text: &str, files: &[(&str, &str)]) -> Result<Stack, Diagnostics> {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let path = dir.path().join("stack.yml");
    std::fs::write(&path, text).unwrap();
    load_stack(&path, "st", &env)
}

fn load(text: &str) -> Stack {
    load_with(text, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn service(text: &str) -> Service {
    load(text).services.remove(0)
}

/// `(line, column, message)` of every error.
fn errors(text: &str) -> Vec<(usize, usize, String)> {
    match load_with(text, &[]) {
        Ok(_) => panic!("loaded, but should have been refused"),
        Err(d) => d.0.into_iter().map(|d| (d.line, d.column, d.message)).collect(),
    }
}

#[test]
fn names_are_prefixed_and_objects_labelled_with_the_stack() {
    let s = service("services:\n  web:\n    image: nginx\n");
    assert_eq!(s.metadata.name, "st_web");
    assert_eq!(s.metadata.labels[STACK_NAMESPACE_LABEL], "st");
    assert_eq!(s.spec.container_labels[STACK_NAMESPACE_LABEL], "st");
    assert_eq!(s.spec, {
        let mut d = ServiceSpec::from_image("nginx");
        d.container_labels = s.spec.container_labels.clone();
        d
    });
}

#[test]
fn image_command_entrypoint_and_process_settings_are_translated() {
    let s = service(
        "services:\n  w:\n    image: app:${TAG}\n    command: sh -c 'echo hi'\n    entrypoint: [/bin/tini, --]\n    working_dir: /srv\n    user: \"1000:1000\"\n    hostname: w1\n    stop_grace_period: 1m30s\n    stop_signal: SIGQUIT\n",
    );
    assert_eq!(s.spec.image, "app:2.0");
    assert_eq!(s.spec.command.unwrap(), ["sh", "-c", "echo hi"]);
    assert_eq!(s.spec.entrypoint.unwrap(), ["/bin/tini", "--"]);
    assert_eq!(s.spec.working_dir.as_deref(), Some("/srv"));
    assert_eq!(s.spec.user.as_deref(), Some("1000:1000"));
    assert_eq!(s.spec.hostname.as_deref(), Some("w1"));
    assert_eq!(s.spec.stop_grace_period, Duration::from_secs(90));
    assert_eq!(s.spec.stop_signal, "SIGQUIT");
}

#[test]
fn environment_reads_lists_maps_env_files_and_the_shell() {
    let text = "services:\n  w:\n    image: x\n    env_file: app.env\n    environment:\n      - A=1\n      - FROM_SHELL\n      - NOT_SET\n      - B=from-env\n";
    let s = load_with(text, &[("app.env", "# comment\nB=file\nC=file\n")]).unwrap().services.remove(0);
    let env: Vec<(&str, &str)> = s.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, [("A", "1"), ("B", "from-env"), ("C", "file"), ("FROM_SHELL", "shell-value")]);
    let s = service("services:\n  w:\n    image: x\n    environment:\n      PORT: 8080\n      DEBUG: true\n");
    assert_eq!(s.spec.env["PORT"], "8080");
    assert_eq!(s.spec.env["DEBUG"], "true");
}

#[test]
fn ports_read_short_and_long_syntax() {
    let s = service("services:\n  w:\n    image: x\n    ports:\n      - 80\n      - \"8080:80\"\n      - target: 53\n        published: 53\n        protocol: udp\n        mode: host\n");
    let p = &s.spec.ports;
    assert_eq!((p[0].target, p[0].published), (80, None));
    assert_eq!((p[1].target, p[1].published), (80, Some(8080)));
    assert_eq!((p[2].protocol, p[2].mode), (PortProtocol::Udp, PublishMode::Host));
}

#[test]
fn healthchecks_are_normalized_and_filled() {
    let s = service(
        "services:\n  w:\n    image: x\n    healthcheck:\n      test: curl -f http://localhost\n      interval: 10s\n",
    );
    let h = s.spec.healthcheck.unwrap();
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost"]);
    assert_eq!((h.interval, h.timeout, h.retries), (Duration::from_secs(10), Duration::from_secs(30), 3));
    let s = service("services:\n  w:\n    image: x\n    healthcheck:\n      disable: true\n");
    assert_eq!(s.spec.healthcheck.unwrap().test, ["NONE"]);
}

#[test]
fn deploy_settings_are_translated() {
    let s = service(
        "services:
  w:
    image: x
    deploy:
      replicas: 4
      endpoint_mode: dnsrr
      labels: [team=a]
      update_config: {parallelism: 0, delay: 5s, failure_action: continue, monitor: 1m, max_failure_ratio: 0.25, order: start-first}
      rollback_config: {failure_action: pause}
      restart_policy: {condition: none, max_attempts: 2}
      placement:
        constraints: [node.role == worker, node.labels.zone != east]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 2
      resources:
        limits: {cpus: '0.5', memory: 512M, pids: 100}
        reservations: {cpus: 0.25, memory: 1g}
",
    );
    let d = &s.spec;
    assert_eq!(d.replicas, Some(4));
    assert_eq!(d.endpoint_mode, EndpointMode::Dnsrr);
    assert_eq!(s.metadata.labels["team"], "a");
    assert_eq!(d.update_config.parallelism, 0);
    assert_eq!(d.update_config.failure_action, FailureAction::Continue);
    assert_eq!(d.update_config.monitor, Duration::from_secs(60));
    assert_eq!(d.update_config.max_failure_ratio, 0.25);
    assert_eq!(d.rollback_config.order, UpdateOrder::StopFirst);
    assert_eq!(d.restart_policy.condition, RestartCondition::None);
    assert_eq!(d.restart_policy.delay, Duration::from_secs(5));
    assert_eq!(d.placement.constraints, ["node.role == worker", "node.labels.zone != east"]);
    assert_eq!(d.placement.preferences[0].spread, "node.labels.zone");
    assert_eq!(d.placement.max_replicas_per_node, Some(2));
    let limits = d.resources.limits.as_ref().unwrap();
    assert_eq!((limits.cpus, limits.memory, limits.pids), (Some(0.5), Some(512 << 20), Some(100)));
    assert_eq!(d.resources.reservations.as_ref().unwrap().memory, Some(1 << 30));
}

#[test]
fn global_mode_has_no_replicas_and_refuses_them() {
    let s = service("services:\n  a:\n    image: x\n    deploy:\n      mode: global\n");
    assert_eq!((s.spec.mode, s.spec.replicas), (ServiceMode::Global, None));
    let e = errors("services:\n  a:\n    image: x\n    deploy:\n      mode: global\n      replicas: 2\n");
    assert_eq!((e[0].0, e[0].1), (6, 17));
}

#[test]
fn configs_are_created_prefixed_and_referenced_by_object_name() {
    let text = "services:
  w:
    image: x
    configs:
      - app
      - source: ext
        target: /etc/ext.conf
        uid: 33
        mode: 0440
configs:
  app:
    file: app.conf
    labels: {k: v}
  ext:
    external: true
    name: shared-conf
";
    let stack = load_with(text, &[("app.conf", "a=1\n")]).unwrap();
    assert_eq!(stack.configs.len(), 1);
    let c = &stack.configs[0];
    assert_eq!((c.metadata.name.as_str(), c.spec.data.0.as_slice()), ("st_app", b"a=1\n".as_slice()));
    assert_eq!(c.metadata.labels["k"], "v");
    assert_eq!(c.metadata.labels[STACK_NAMESPACE_LABEL], "st");
    let refs = &stack.services[0].spec.configs;
    assert_eq!((refs[0].source.as_str(), refs[0].target.as_str(), refs[0].mode), ("st_app", "/app", 0o444));
    assert_eq!((refs[1].source.as_str(), refs[1].target.as_str()), ("shared-conf", "/etc/ext.conf"));
    assert_eq!((refs[1].uid.as_str(), refs[1].gid.as_str(), refs[1].mode), ("33", "0", 0o440));
}

#[test]
fn external_secrets_are_referenced_and_never_created() {
    let text = "services:\n  w:\n    image: x\n    secrets: [db_pw, {source: api, target: api.key}]\nsecrets:\n  db_pw:\n    external: true\n  api:\n    external: {name: api-key-v2}\n";
    let stack = load(text);
    assert!(stack.secrets.is_empty());
    let refs = &stack.services[0].spec.secrets;
    assert_eq!((refs[0].source.as_str(), refs[0].target.as_str()), ("db_pw", "/run/secrets/db_pw"));
    assert_eq!((refs[1].source.as_str(), refs[1].target.as_str()), ("api-key-v2", "/run/secrets/api.key"));
}

#[test]
fn x_env_exposes_a_reference_as_an_environment_variable() {
    let text = "services:\n  w:\n    image: x\n    secrets: [{source: db, x-env: DB_PASSWORD}, api]\nsecrets:\n  db:\n    external: true\n  api:\n    external: true\n";
    let refs = &load(text).services[0].spec.secrets;
    assert_eq!((refs[0].env.as_deref(), refs[0].target.as_str()), (Some("DB_PASSWORD"), "/run/secrets/db"));
    assert_eq!(refs[1].env, None);
}

#[test]
fn secrets_without_a_value_source_are_errors_at_their_name() {
    let e = errors("services:\n  w:\n    image: x\nsecrets:\n  s:\n    content: PW\n  t:\n    labels: {a: b}\n");
    assert_eq!((e[0].0, e[0].1), (6, 5));
    assert!(e[0].2.contains("`file:` or `environment:`"), "{}", e[0].2);
    assert_eq!((e[1].0, e[1].1), (7, 3));
}

#[test]
fn secret_files_become_values_to_seal_with_the_stack_prefix() {
    let stack = load_with(
        "services:\n  w:\n    image: x\n    secrets: [db]\nsecrets:\n  db: {file: db.txt}\n",
        &[("db.txt", "passw0rD123\n")],
    )
    .unwrap();
    assert_eq!(stack.secrets.len(), 1);
    assert_eq!((stack.secrets[0].name.as_str(), stack.secrets[0].data.as_slice()), ("st_db", &b"passw0rD123\n"[..]));
    assert!(!format!("{stack:?}").contains("passw0rD123"), "Debug never shows a value");
    assert_eq!(stack.services[0].spec.secrets[0].source, "st_db");
}

#[test]
fn references_to_undeclared_configs_are_errors() {
    let e = errors("services:\n  w:\n    image: x\n    configs: [nope]\n");
    assert_eq!((e[0].0, e[0].1), (4, 15));
    assert!(e[0].2.contains("not declared"));
}

#[test]
fn empty_config_files_are_refused() {
    let e = load_with("services:\n  w: {image: x}\nconfigs:\n  c: {file: empty.conf}\n", &[("empty.conf", "")])
        .unwrap_err();
    assert!(e.0[0].message.contains("1 byte to 500 KiB"), "{e}");
}

#[test]
fn ignored_compose_keys_warn_with_their_position() {
    let stack = load("services:\n  w:\n    image: x\n    build: .\n    cap_add: [NET_ADMIN]\n    x-note: fine\n    networks: [default]\nx-common: &c {a: 1}\n");
    let w: Vec<(usize, String)> = stack.warnings.iter().map(|d| (d.line, d.message.clone())).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[0].0, 4);
    assert!(w[0].1.contains("build them beforehand"));
    assert!(w[1].1.contains("cap_add"));
}

#[test]
fn every_error_of_a_file_is_reported_in_order() {
    let e = errors("services:\n  a:\n    image: x\n    replicas: 3\n  b:\n    image: y\n    deploy:\n      replicas: many\n      restart_policy: {condition: always}\n");
    let at: Vec<(usize, usize)> = e.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(at, [(4, 5), (8, 17), (9, 35)], "{e:?}");
    assert!(e[0].2.contains("unknown key `replicas`"));
}

#[test]
fn merge_keys_share_settings_between_services() {
    let stack = load("x-svc: &svc\n  image: base:1\n  deploy: {replicas: 2}\nservices:\n  a:\n    <<: *svc\n  b:\n    <<: *svc\n    image: other:1\n");
    assert_eq!(stack.services[0].spec.image, "base:1");
    assert_eq!(stack.services[1].spec.image, "other:1");
    assert_eq!(stack.services[1].spec.replicas, Some(2));
}

#[test]
fn redeploying_an_unchanged_stack_gives_byte_identical_specs() {
    let text = "services:\n  w:\n    image: x\n    environment: {Z: 1, A: 2}\n    deploy: {labels: {z: 1, a: 2}}\n";
    let a = serde_json::to_string(&load(text).services).unwrap();
    let b = serde_json::to_string(&load(text).services).unwrap();
    assert_eq!(a, b);
    assert!(a.find("\"A\"").unwrap() < a.find("\"Z\"").unwrap());
}

#[test]
fn old_file_versions_and_bad_stack_names_are_refused() {
    let e = errors("version: '2.4'\nservices:\n  w: {image: x}\n");
    assert_eq!((e[0].0, e[0].1), (1, 10));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.yml");
    std::fs::write(&path, "services:\n  w: {image: x}\n").unwrap();
    let e = load_stack(Path::new(&path), "bad stack", &env).unwrap_err();
    assert!(e.0[0].message.contains("invalid stack name"));
}

#[test]
fn unknown_top_level_keys_and_wrong_shapes_are_errors() {
    let e = errors("servics:\n  w: {image: x}\n");
    assert!(e.iter().any(|(l, c, m)| (*l, *c) == (1, 1) && m.contains("unknown top-level key")));
    let e = errors("services:\n  w:\n    image: x\n    ports: \"80\"\n");
    assert_eq!((e[0].0, e[0].1), (4, 12));
}
