//! Shoal resource kinds.
pub mod meta;
pub use meta::{ObjectMeta, Resource, API_VERSION};
