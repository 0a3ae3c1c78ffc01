//! The Event kind: one line of a controller's reasoning made visible to
//! users (`shoal events`). Written only by controllers; never updated.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kind;

kind!(
    /// Something a controller decided, and why.
    Event, EventSpec, "events"
);

/// Written by the controller that decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSpec {
    /// Which loop (`service`, `scheduler`, `update`, …).
    pub controller: String,
    /// The object acted on.
    pub object: ObjectReference,
    /// Its generation at the time.
    #[serde(default)]
    pub generation: i64,
    /// What was done (`scale-up`, `assign`, `pause-update`).
    pub action: String,
    /// Why.
    pub reason: String,
    pub time: DateTime<Utc>,
}

/// Kind and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    pub kind: String,
    pub name: String,
}
