//! The controller runtime, after kube-rs's kube-runtime: the store's
//! watcher and reflector keep a cache per kind; a [`Controller`] turns
//! cache changes (its own kind's, mapped ones of other kinds, and a
//! periodic resync) into keys on a [`WorkQueue`]; its runner hands each
//! key to the reconciler with the *current* cached object.
//!
//! - [`queue`]: deduplicating, delaying, per-key serializing work queue with backoff.
//! - [`controller`]: [`Controller`], [`Action`] and the runner.
//! - [`events`]: one structured log line per reconcile decision.
//!
//! The contract is fixed:
//! `reconcile(key, Option<Arc<R>>, Arc<Ctx>) -> Result<Action, E>` and
//! `error_policy(&key, &E, &Ctx) -> Action`.
//!
//! # Guarantees
//! - No reconcile runs before every watched cache has loaded its first
//!   complete list (an empty cache is "not known yet", not "nothing").
//! - One object is never reconciled twice at once; changes that arrive
//!   while it runs are coalesced into one more reconcile after it.
//! - Every change of a watched object leads to at least one reconcile that
//!   starts after the change was cached; a deleted object's key gets one
//!   reconcile with `None`.
//! - A failing object is retried no sooner than its backoff (100 ms
//!   doubling to 60 s by default), reset by its next success.
//! - After the shutdown future resolves, no new reconcile starts; the ones
//!   in flight finish.
//!
//! # Caveats
//! - Level-triggered, not edge-triggered: intermediate states may never be
//!   seen (several changes, one reconcile). Reconcilers must compute what to
//!   do from the current state alone.
//! - The cache may be stale: every write must still go through the store's
//!   compare-and-swap, and a conflict is an ordinary error to retry.
//! - A reconcile of a deleted object that asks to be requeued is requeued
//!   (and sees `None` again): return [`Action::await_change`] once cleanup
//!   is done.
//! - Leadership is not checked here: run a controller with a fenced store
//!   and the leadership's `lost()` as its shutdown, so a deposed leader's
//!   in-flight writes fail in the store.
//! - Each change diffs the cache of its kind (O(objects)); fine at Swarm's
//!   scale, to revisit with an event-carrying reflector if it shows up.

pub mod controller;
pub mod events;
pub mod queue;

pub use controller::{Action, Controller};
pub use events::{Decision, Recorder};
pub use queue::{Backoff, Outcome, WorkQueue};
