//! The seam between the scheduler and the workers.
//!
//! The driver (`driver.rs`) talks to workers only through these traits, so
//! that the same scheduler can run workers of another kind. Local worker
//! processes over ipc-channel (`link.rs`) are the first kind. Nothing here
//! names a process id, a file descriptor or a signal: a transport says how
//! a worker ended as a [`Death`], and takes [`Stop`] orders.
//!
//! Every method of [`Link`] returns at once: none may wait for a worker.
//! What a worker says comes back through [`Events`], from threads of the
//! transport's own.

use std::sync::Arc;

use super::scheduler::{Death, Revoked, Stop, TaskId, WorkerId};
use super::task::RemoteTask;
use crate::Error;

/// Starts workers.
pub(crate) trait Transport: Send + Sync {
    /// Starts one worker per id, at once, and waits until each is connected
    /// and checked, or has failed; the results are in the order of `ids`.
    /// Blocks: the driver calls it on a thread of its own.
    fn start(
        &self,
        ids: &[WorkerId],
        events: &Arc<dyn Events>,
    ) -> Vec<Result<Arc<dyn Link>, Error>>;
}

/// The pool's end of one worker.
///
/// A link reports nothing through [`Events`] until it is
/// [`activate`](Link::activate)d: the driver first registers it, so that
/// even a worker that dies at once is reported to a scheduler that knows
/// it.
pub(crate) trait Link: Send + Sync {
    /// Lets the link report its worker's events from now on.
    fn activate(&self);

    /// Queues these tasks for the worker, in order. Called under the
    /// scheduler's lock, so tasks reach a worker in the order the scheduler
    /// sent them; it must not block.
    fn enqueue(&self, tasks: Vec<RemoteTask>);

    /// Gets queued tasks moving, after the scheduler's lock is released:
    /// may write them at once when that cannot block.
    fn flush(&self);

    /// Tries to take a task back. `Some` answer now, or `None` when the
    /// answer will come through [`Events::revoked`].
    fn revoke(&self, task: TaskId) -> Option<Revoked>;

    /// The reply of `task` was read: its place at the worker is free.
    fn answered(&self, task: TaskId);

    /// Stops the worker; its end comes back through [`Events::lost`].
    fn stop(&self, how: Stop);

    /// Looks for a death the worker's channel has not reported (called now
    /// and then by the clock).
    fn check(&self);

    /// Kills the worker and waits until it is gone; for a pool that fails
    /// to start, before any event is delivered.
    fn abandon(&self);
}

/// What a transport tells the driver. Each call may run the pool's
/// policy and complete futures (user callbacks) on the calling thread.
pub(crate) trait Events: Send + Sync {
    /// The reply of `task` was read from worker `w`, after `micros` of
    /// running: its handle if the answer is its result (see
    /// `Scheduler::reply`).
    fn reply(&self, w: WorkerId, task: TaskId, micros: u32) -> Option<RemoteTask>;

    /// A task the reply of which [`reply`](Self::reply) handed out has
    /// ended with that answer; `failed` if the answer was an error.
    fn ended(&self, failed: bool);

    /// Worker `w` ran its initializer; `Some(message)` if it failed.
    fn init_done(&self, w: WorkerId, error: Option<String>);

    /// The answer to a revoke that `Link::revoke` did not answer at once.
    /// (The local transport answers every revoke at once; a transport over
    /// a network answers here.)
    #[allow(dead_code)]
    fn revoked(&self, w: WorkerId, task: TaskId, answer: Revoked);

    /// Worker `w` is gone, and everything it sent has been read.
    fn lost(&self, w: WorkerId, death: Death);
}
