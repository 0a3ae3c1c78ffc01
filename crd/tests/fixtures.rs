//! Stack files in the shapes real projects write (see tests/fixtures/):
//! each deploys, or is refused with a clear reason at the right place.

use std::path::{Path, PathBuf};

use shoal_crd::{load_stack, Stack};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(path)
}

fn deploy(name: &str) -> Stack {
    load_stack(&fixture(name), "app", &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn resources_and_placement_from_the_docker_docs_deploy() {
    let s = deploy("resources-and-placement.yml").services.remove(0);
    assert_eq!(s.metadata.name, "app_redis");
    let limits = s.spec.resources.limits.unwrap();
    assert_eq!((limits.cpus, limits.memory, limits.pids), (Some(0.5), Some(50 << 20), Some(1)));
    assert_eq!(s.spec.placement.constraints.len(), 2);
    assert_eq!(s.spec.placement.max_replicas_per_node, Some(1));
    assert_eq!(s.spec.restart_policy.window.to_string(), "2m0s");
}

#[test]
fn configs_and_external_secrets_in_long_syntax_deploy() {
    let stack = deploy("configs-and-external-secrets.yml");
    assert_eq!(stack.configs.len(), 1, "only the file config is created");
    let spec = &stack.services[0].spec;
    let configs: Vec<(&str, &str, u32)> =
        spec.configs.iter().map(|c| (c.source.as_str(), c.target.as_str(), c.mode)).collect();
    assert_eq!(
        configs,
        [("app_nginx_conf", "/etc/nginx/conf.d/site.conf", 0o440), ("my_other_config", "/my_other_config", 0o444)]
    );
    let secrets: Vec<(&str, &str, u32)> =
        spec.secrets.iter().map(|c| (c.source.as_str(), c.target.as_str(), c.mode)).collect();
    assert_eq!(
        secrets,
        [("site_key", "/run/secrets/site.key", 0o400), ("site_cert_2024", "/run/secrets/site_cert", 0o444)]
    );
}

#[test]
fn extension_fields_with_anchors_and_merge_keys_deploy() {
    let stack = deploy("extension-anchors.yml");
    let api = &stack.services[0];
    assert_eq!(api.spec.image, "example/api:latest");
    assert_eq!(api.spec.replicas, Some(3));
    assert_eq!(api.spec.env["LOG_LEVEL"], "info");
    assert_eq!(api.spec.env["PORT"], "8080");
    let jobs = &stack.services[1];
    assert_eq!(jobs.spec.replicas, Some(2));
    assert_eq!(jobs.spec.update_config.delay.to_string(), "30s");
    assert_eq!(jobs.spec.update_config.order, shoal_crd::UpdateOrder::StartFirst);
    assert!(stack.warnings.iter().any(|w| w.message.contains("`logging` is ignored")), "{:?}", stack.warnings);
}

#[test]
fn secrets_from_files_become_values_to_seal() {
    let stack = deploy("secrets-from-files.yml");
    let names: Vec<&str> = stack.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["app_db_password", "app_db_root_password"]);
    assert_eq!(stack.secrets[0].data, b"s3cr3t-db\n");
    assert_eq!(stack.secrets[0].labels.get("com.docker.stack.namespace").map(String::as_str), Some("app"));
    // The value never shows in debug output.
    assert!(!format!("{:?}", stack.secrets[0]).contains("s3cr3t"));
}

#[test]
fn a_secret_file_that_does_not_exist_is_refused_at_its_position() {
    let errors = load_stack(&repo_file("examples/bad/missing-secret-file.yml"), "app", &|_| None).unwrap_err();
    assert_eq!((errors.0[0].line, errors.0[0].column), (10, 11), "{errors}");
}

#[test]
fn a_development_compose_file_deploys_with_a_warning_per_ignored_key() {
    let stack = deploy("dev-compose-with-build.yml");
    assert_eq!(stack.services.len(), 2);
    let ignored: Vec<&str> = stack.warnings.iter().map(|w| w.message.split('`').nth(1).unwrap_or_default()).collect();
    assert_eq!(ignored, ["build", "container_name", "volumes", "depends_on", "restart"]);
}
