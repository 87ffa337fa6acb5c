//! Spans for `tracing` (the `tracing` feature): one span per task, named
//! `twinpool.task`, with the fields `backend` (`"threads"` or
//! `"processes"`), `task_id` and `name` (of a named task; empty for a
//! closure).
//!
//! The span is made on the submitting thread, so the submitter's current
//! span is its parent. A thread task's work runs inside it on the worker
//! thread (so the task's own events and spans nest under it); a process
//! task's span lives in the parent from the submit until the task ends,
//! and records an event `ended` there with `outcome = "ok"` or `"error"`
//! (the work itself runs in another process, out of this subscriber's
//! sight). Without a subscriber, or with this target disabled, a span
//! costs a check of the callsite's interest and nothing else; the task id
//! is only looked up for an enabled span.

use tracing::field::Empty;
use tracing::Span;

/// The span of a task of `backend`, child of the caller's current span;
/// `task_id` is recorded by [`record_id`] once the task has one.
pub(crate) fn task_span(backend: &'static str, name: Option<&str>) -> Span {
    tracing::info_span!(
        target: "twinpool",
        "twinpool.task",
        backend,
        task_id = Empty,
        name = name.unwrap_or(""),
    )
}

/// Records the task's id in `span`, asking for it only if the span is
/// enabled (a thread task's id is made on first use).
pub(crate) fn record_id(span: &Span, id: impl FnOnce() -> u64) {
    if !span.is_disabled() {
        span.record("task_id", id());
    }
}

/// Marks the end of a process task in its span.
#[cfg(feature = "process")]
pub(crate) fn ended(span: &Span, failed: bool) {
    let outcome = if failed { "error" } else { "ok" };
    tracing::debug!(target: "twinpool", parent: span, outcome, "ended");
}
