//! Shoal's controller manager: the reconcile loops.
//!
//! Empty on purpose for now: the controller runtime (watcher → reflector →
//! work queue → reconciler) and the service, scheduler, update, health and
//! endpoints loops arrive with the orchestration work. Until then `shoal up`
//! runs the embedded store only, and says so.
