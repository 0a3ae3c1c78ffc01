//! The repository's examples/ directory: every good stack and manifest
//! loads, and every file in examples/bad/ is refused at the line and column
//! its `# expect: LINE:COL` comment names.

use std::path::{Path, PathBuf};

use shoal_crd::{load_manifests, load_stack, AnyResource};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_stack_loads_without_errors() {
    let files = yaml_files(&examples());
    assert!(files.len() >= 2);
    for f in files {
        let stack = load_stack(&f, "demo", &no_env).unwrap_or_else(|e| panic!("{}:\n{e}", f.display()));
        assert!(!stack.services.is_empty(), "{}", f.display());
    }
}

#[test]
fn every_bad_example_is_refused_where_its_expect_comment_says() {
    let files = yaml_files(&examples().join("bad"));
    assert!(files.len() >= 8);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a first-line `# expect: LINE:COL`", f.display()))
            .trim();
        let errors = match load_stack(&f, "demo", &no_env) {
            Ok(_) => panic!("{} loaded, but should have been refused", f.display()),
            Err(e) => e,
        };
        let first = &errors.0[0];
        assert_eq!(format!("{}:{}", first.line, first.column), expect, "{}: got\n{errors}", f.display());
        assert!(first.to_string().starts_with(&format!("{}:{expect}: ", f.display())));
    }
}

#[test]
fn the_web_stack_says_what_the_readme_tour_says() {
    let stack = load_stack(&examples().join("web-stack.yml"), "demo", &no_env).unwrap();
    let names: Vec<&str> = stack.services.iter().map(|s| s.metadata.name.as_str()).collect();
    assert_eq!(names, ["demo_node-agent", "demo_web"]);
    let web = &stack.services[1].spec;
    assert_eq!(web.replicas, Some(10));
    assert_eq!(web.update_config.parallelism, 2);
    assert_eq!(web.update_config.delay.to_string(), "10s");
    assert_eq!(web.configs[0].source, "demo_site");
    assert_eq!(stack.configs[0].metadata.name, "demo_site");
    assert!(stack.warnings.is_empty(), "{:?}", stack.warnings);
}

#[test]
fn the_voting_app_loads_with_warnings_for_networks_volumes_and_depends_on() {
    let stack = load_stack(&examples().join("voting-app.yml"), "vote", &no_env).unwrap();
    assert_eq!(stack.services.len(), 5);
    let text: Vec<String> = stack.warnings.iter().map(ToString::to_string).collect();
    for word in ["`networks`", "`volumes`", "`depends_on`"] {
        assert!(text.iter().any(|w| w.contains(word)), "no warning about {word}: {text:#?}");
    }
}

#[test]
fn the_native_web_manifest_matches_the_stack_service() {
    let objects = load_manifests(&examples().join("native/web.yaml")).unwrap();
    let kinds: Vec<&str> = objects.iter().map(AnyResource::kind).collect();
    assert_eq!(kinds, ["Config", "Service"]);
    let stack = load_stack(&examples().join("web-stack.yml"), "demo", &no_env).unwrap();
    let AnyResource::Service(native) = &objects[1] else { panic!() };
    let stacked = &stack.services[1];
    assert_eq!(native.metadata.name, stacked.metadata.name);
    assert_eq!(native.spec.update_config, stacked.spec.update_config);
    assert_eq!(native.spec.ports, stacked.spec.ports);
    assert_eq!(native.spec.healthcheck, stacked.spec.healthcheck);
}
