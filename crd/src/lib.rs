//! Shoal's resource kinds and everything that turns user files into them.
//!
//! - [`meta`]: `ObjectMeta` and the [`Resource`] trait the store is generic over.
//! - [`kinds`]: Service, Task, Node, Config, Secret, Event.
//! - [`defaults`]: Docker's defaults, applied in one place.
//! - [`duration`], [`names`]: value syntax and name rules.
//! - [`schema`]: JSON schemas per kind.
//! - [`yaml`]: positioned YAML trees and YAML output.
//! - [`compose`]: stack files (compose v3 / compose-spec) → objects.
//! - [`manifest`]: native multi-document manifests → objects.
//! - [`diagnostics`]: `FILE:LINE:COL: message` errors and warnings.
//! - [`sealing`]: envelope encryption of secret values.

pub mod compose;
pub mod defaults;
pub mod diagnostics;
pub mod duration;
pub mod kinds;
pub mod manifest;
pub mod meta;
pub mod names;
pub mod schema;
pub mod sealing;
pub mod validate;
pub mod yaml;

pub use compose::{load_stack, Stack, STACK_NAMESPACE_LABEL};
pub use diagnostics::{Diagnostic, Diagnostics};
pub use duration::{parse_duration, Duration};
pub use kinds::*;
pub use manifest::{load_manifests, AnyResource};
pub use meta::{ObjectMeta, Resource, API_VERSION};
pub use schema::{canonical_kind, kind_names, schema_for, KIND_TABLE};
