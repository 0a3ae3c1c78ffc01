//! One structured line per reconcile decision — controller, object,
//! generation, action, reason — because reconcile logs are a product
//! feature: an operator reads them to learn why the system did what it did.
//!
//! A [`Recorder`] is handed to reconcilers (usually in their context).
//! Today it writes a `tracing` line; the same calls will also store Event
//! objects once that kind exists, without changing the reconcilers.

use std::sync::Arc;

use shoal_crd::Resource;

/// One decision about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The object's name.
    pub object: String,
    /// The object's generation the decision was made on (0 when deleted).
    pub generation: i64,
    /// What was done, as a short verb phrase (`created task`, `scaled down`, `nothing`).
    pub action: String,
    /// Why, in words a user can act on.
    pub reason: String,
}

impl Decision {
    /// A decision about `object` as it is cached.
    pub fn about<R: Resource>(object: &R, action: impl Into<String>, reason: impl Into<String>) -> Self {
        let meta = object.metadata();
        Self { object: meta.name.clone(), generation: meta.generation, action: action.into(), reason: reason.into() }
    }

    /// A decision about an object that is gone (or was never read).
    pub fn about_name(object: &str, action: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { object: object.to_string(), generation: 0, action: action.into(), reason: reason.into() }
    }
}

/// Records the decisions of one controller.
#[derive(Debug, Clone)]
pub struct Recorder {
    controller: Arc<str>,
}

impl Recorder {
    /// A recorder for the controller named `controller`.
    pub fn new(controller: &str) -> Self {
        Self { controller: controller.into() }
    }

    /// The controller's name.
    pub fn controller(&self) -> &str {
        &self.controller
    }

    /// Records one decision.
    pub fn record(&self, decision: &Decision) {
        tracing::info!(
            controller = %self.controller,
            object = %decision.object,
            generation = decision.generation,
            action = %decision.action,
            reason = %decision.reason,
            "decision"
        );
    }
}
