//! How a service's `image` becomes a command for the process runtime: a
//! local image catalog.
//!
//! # The mapping
//!
//! An image reference `[registry/]name[:tag][@digest]` is looked up, first
//! match wins:
//! 1. in the catalog file (`shoal agent --image-catalog FILE`) under
//!    `name:tag`, then under `name` alone (any tag);
//! 2. built in: `shoal/demo:<tag>` runs `[<this shoal binary>, "demo",
//!    "serve"]` with `DEMO_VERSION=<tag>` (tag `latest` when absent) and
//!    this binary's directory first on `PATH`, so a healthcheck can run
//!    `["CMD", "shoal", "demo", "probe", "http://127.0.0.1/health"]` without
//!    host tools (the demo image's `wget`).
//!
//! A `docker.io/` or `docker.io/library/` prefix is ignored. An image found
//! nowhere is refused: the task is `rejected` with "image not found in the
//! local catalog: X".
//!
//! The catalog file is YAML or JSON, a map from image to either an
//! entrypoint list or an object with `entrypoint`, `command` and `env`:
//!
//! ```yaml
//! busybox: ["/bin/busybox"]
//! redis:7:
//!   entrypoint: ["/usr/bin/redis-server"]
//!   command: ["--port", "6379"]
//!   env: { REDIS_MODE: standalone }
//! ```
//!
//! Docker's rules then apply: the service's `entrypoint` replaces the
//! image's (and drops the image's `command`); the service's `command`
//! replaces the image's `command`; the process runs `entrypoint + command`.
//! The environment is the image's, then the service's `env` on top; the
//! agent adds `SHOAL_IMAGE` and the task's identity (see `launch`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shoal_crd::ServiceSpec;

use crate::launch::DEFAULT_PATH;

/// The image the agent runs itself as, for docs and tests.
pub const DEMO_IMAGE: &str = "shoal/demo";

/// Why an image could not be turned into a command.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image not found in the local catalog: {0}")]
    NotFound(String),
    #[error("image {0} has no command: set an entrypoint or command on the service, or in the catalog")]
    NoCommand(String),
    #[error("cannot read the image catalog {path}: {source}")]
    ReadCatalog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid image catalog {path}: {message}")]
    ParseCatalog { path: PathBuf, message: String },
}

/// What an image runs, before the service's overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// One catalog file entry: a bare entrypoint list or the full object.
#[derive(Deserialize)]
#[serde(untagged)]
enum CatalogEntry {
    Entrypoint(Vec<String>),
    Full(ImageConfig),
}

/// The process to run for a task: argv and the image-and-service environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Images this node can run.
#[derive(Debug, Clone)]
pub struct ImageCatalog {
    entries: BTreeMap<String, ImageConfig>,
    shoal_exe: PathBuf,
}

impl ImageCatalog {
    /// Only the built-in images; `shoal_exe` is the binary `shoal/demo` runs.
    pub fn builtin(shoal_exe: PathBuf) -> Self {
        Self { entries: BTreeMap::new(), shoal_exe }
    }

    /// Adds the entries of a catalog file (they win over built-ins).
    pub fn with_file(mut self, path: &Path) -> Result<Self, ImageError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ImageError::ReadCatalog { path: path.into(), source })?;
        let entries =
            parse_catalog(&text).map_err(|message| ImageError::ParseCatalog { path: path.into(), message })?;
        self.entries.extend(entries);
        Ok(self)
    }

    /// The image's own entrypoint, command and env.
    pub fn lookup(&self, image: &str) -> Result<ImageConfig, ImageError> {
        let (name, tag) = split_reference(image);
        let tagged = format!("{name}:{}", tag.unwrap_or("latest"));
        if let Some(found) = self.entries.get(&tagged).or_else(|| self.entries.get(name)) {
            return Ok(found.clone());
        }
        if name == DEMO_IMAGE {
            let path = match self.shoal_exe.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => format!("{}:{DEFAULT_PATH}", dir.display()),
                _ => DEFAULT_PATH.to_string(),
            };
            return Ok(ImageConfig {
                entrypoint: vec![self.shoal_exe.display().to_string(), "demo".into(), "serve".into()],
                command: vec![],
                env: BTreeMap::from([("DEMO_VERSION".into(), tag.unwrap_or("latest").into()), ("PATH".into(), path)]),
            });
        }
        Err(ImageError::NotFound(image.to_string()))
    }

    /// What a task of `spec` runs, Docker's override rules applied.
    pub fn resolve(&self, spec: &ServiceSpec) -> Result<ResolvedImage, ImageError> {
        let image = self.lookup(&spec.image)?;
        let (entrypoint, command) = match (&spec.entrypoint, &spec.command) {
            (Some(entrypoint), command) => (entrypoint.clone(), command.clone().unwrap_or_default()),
            (None, Some(command)) => (image.entrypoint, command.clone()),
            (None, None) => (image.entrypoint, image.command),
        };
        let argv: Vec<String> = entrypoint.into_iter().chain(command).collect();
        if argv.is_empty() {
            return Err(ImageError::NoCommand(spec.image.clone()));
        }
        let mut env = image.env;
        env.extend(spec.env.clone());
        Ok(ResolvedImage { argv, env })
    }
}

/// Parses a catalog file (YAML; JSON is YAML too).
pub fn parse_catalog(text: &str) -> Result<BTreeMap<String, ImageConfig>, String> {
    let raw: BTreeMap<String, CatalogEntry> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(raw
        .into_iter()
        .map(|(image, entry)| {
            let config = match entry {
                CatalogEntry::Entrypoint(entrypoint) => ImageConfig { entrypoint, ..Default::default() },
                CatalogEntry::Full(config) => config,
            };
            let (name, tag) = split_reference(&image);
            let key = match tag {
                Some(tag) => format!("{name}:{tag}"),
                None => name.to_string(),
            };
            (key, config)
        })
        .collect())
}

/// `docker.io/library/redis:7@sha256:…` → (`redis`, Some(`7`)).
pub fn split_reference(image: &str) -> (&str, Option<&str>) {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    let image = image.strip_prefix("docker.io/").unwrap_or(image);
    let image = image.strip_prefix("library/").unwrap_or(image);
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (image, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> ImageCatalog {
        let mut catalog = ImageCatalog::builtin("/usr/bin/shoal".into());
        catalog.entries = parse_catalog(
            "busybox: [\"/bin/busybox\"]\n\
             redis:7:\n  entrypoint: [redis-server]\n  command: [--port, \"6379\"]\n  env: {MODE: a}\n",
        )
        .unwrap();
        catalog
    }

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec::from_image(image)
    }

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(split_reference("nginx"), ("nginx", None));
        assert_eq!(split_reference("shoal/demo:1.0"), ("shoal/demo", Some("1.0")));
        assert_eq!(split_reference("localhost:5000/app"), ("localhost:5000/app", None));
        assert_eq!(split_reference("docker.io/library/redis:7@sha256:ab"), ("redis", Some("7")));
    }

    #[test]
    fn the_demo_image_runs_this_binary_with_its_tag_as_version() {
        let resolved = catalog().resolve(&spec("shoal/demo:1.0")).unwrap();
        assert_eq!(resolved.argv, ["/usr/bin/shoal", "demo", "serve"]);
        assert_eq!(resolved.env["DEMO_VERSION"], "1.0");
        assert_eq!(resolved.env["PATH"], format!("/usr/bin:{DEFAULT_PATH}"), "`shoal` is found first, by probes too");
    }

    #[test]
    fn catalog_entries_match_by_tag_then_by_name() {
        let c = catalog();
        assert_eq!(c.resolve(&spec("redis:7")).unwrap().argv, ["redis-server", "--port", "6379"]);
        assert!(matches!(c.resolve(&spec("redis:6")), Err(ImageError::NotFound(_))));
        assert_eq!(c.resolve(&spec("busybox:1.36")).unwrap().argv, ["/bin/busybox"]);
    }

    #[test]
    fn service_entrypoint_drops_image_command_and_command_replaces_it() {
        let c = catalog();
        let mut s = spec("redis:7");
        s.command = Some(vec!["--port".into(), "7000".into()]);
        assert_eq!(c.resolve(&s).unwrap().argv, ["redis-server", "--port", "7000"]);
        s.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
        s.command = None;
        assert_eq!(c.resolve(&s).unwrap().argv, ["/bin/sh", "-c"]);
        s.env.insert("MODE".into(), "b".into());
        assert_eq!(c.resolve(&s).unwrap().env["MODE"], "b");
    }

    #[test]
    fn unknown_images_are_refused_by_name() {
        let err = catalog().resolve(&spec("ghost:1")).unwrap_err();
        assert_eq!(err.to_string(), "image not found in the local catalog: ghost:1");
        assert!(catalog().resolve(&spec("busybox")).is_ok());
        let json = parse_catalog(r#"{"app:2": ["/opt/app"]}"#).unwrap();
        assert_eq!(json["app:2"].entrypoint, ["/opt/app"]);
    }
}
