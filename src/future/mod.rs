//! The public [`Future`]: the handle of one submitted task.
//!
//! A `Future` is a thin handle on its task's state, kept in [`state`]: the
//! phase word, the outcome, the done-callbacks and whoever waits. Both back
//! ends share that state machine; this module only gives it Python's names.

mod state;
mod waiting;

// The model checks of `state`: see that module's doc for how to run them.
#[cfg(all(test, loom))]
mod loom;

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::recycle::Counted;
use crate::Error;
use state::Until;

pub(crate) use state::{Job, Shared, Work};
#[cfg(feature = "process")]
pub(crate) use state::{Remote, StopperEntry};
pub(crate) use waiting::crowded;

/// The handle of one submitted task, like Python's `concurrent.futures.Future`.
///
/// It is `Send + Sync` for `T: Send` and not `Clone`: [`result`](Self::result)
/// consumes it and moves the value out. It is also a
/// [`std::future::Future`], so async code can `.await` a pool task.
///
/// Dropping a `Future` does not cancel its task (as in Python); call
/// [`cancel`](Self::cancel) for that.
pub struct Future<T> {
    shared: Counted<Shared<T>>,
}

impl<T> std::fmt::Debug for Future<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Future")
            .field("task", &self.shared.id())
            .finish()
    }
}

impl<T: Send + 'static> Future<T> {
    pub(crate) fn new(shared: Counted<Shared<T>>) -> Self {
        Future { shared }
    }

    pub(crate) fn shared(&self) -> &Counted<Shared<T>> {
        &self.shared
    }

    /// Blocks until the task ends and returns its result.
    ///
    /// The result is moved out, and done-callbacks borrow it while they run
    /// (see [`add_done_callback`](Self::add_done_callback)): so `result`
    /// also waits until the callbacks that run at the task's end have
    /// returned. When it returns, every callback added before the task
    /// ended has run. [`wait`](Self::wait) and [`done`](Self::done) do not
    /// wait for callbacks.
    ///
    /// Called from a task of the same pool on a task that has not started,
    /// it runs that task on the calling thread instead of sleeping, so nested
    /// submit-and-wait works with one worker. If the wait could never end
    /// (tasks waiting on each other in a cycle) it returns
    /// [`Error::Deadlock`] at once instead of hanging.
    ///
    /// A wait for a task that has not ended spins only while that pays:
    /// for about twice as long as this thread's recent waits lasted, at
    /// most 100 µs and not at all when they took longer. While the machine
    /// has more runnable threads than CPUs it does not spin: it yields at
    /// most four times (handing its CPU to the worker that runs the task,
    /// often queued behind it) and then sleeps until the task ends.
    /// [`wait`](Self::wait) and the timed waits do the same; `.await`
    /// never spins.
    pub fn result(self) -> Result<T, Error> {
        self.shared.wait_until(Until::Takeable, None)?;
        // SAFETY: `self` is owned here.
        unsafe { self.shared.take(false) }
    }

    /// Like [`result`](Self::result), but gives up with [`Error::Timeout`]
    /// after `timeout` (also when the task has ended but its done-callbacks
    /// still run then). The task keeps running. A timed wait never helps and
    /// is never refused as a deadlock: it ends by itself.
    pub fn result_timeout(self, timeout: Duration) -> Result<T, Error> {
        if !self
            .shared
            .wait_until(Until::Takeable, Some(deadline_after(timeout)))?
        {
            return Err(Error::Timeout);
        }
        // SAFETY: `self` is owned here.
        unsafe { self.shared.take(false) }
    }

    /// Blocks until the task ends (finished or cancelled).
    ///
    /// A wait that could never end (see [`result`](Self::result)) returns at
    /// once with the future still not done, and logs the cycle; use
    /// [`try_wait`](Self::try_wait) to get the [`Error::Deadlock`].
    pub fn wait(&self) {
        if let Err(e) = self.try_wait() {
            log::error!("{e}");
        }
    }

    /// Blocks until the task ends; `Err(Error::Deadlock)` if it never could.
    pub fn try_wait(&self) -> Result<(), Error> {
        self.shared.wait_until(Until::Ended, None).map(|_| ())
    }

    /// Blocks until the task ends or `timeout` passes; true when it ended.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        matches!(
            self.shared
                .wait_until(Until::Ended, Some(deadline_after(timeout))),
            Ok(true)
        )
    }

    /// Cancels the task if it has not started: it will never run and its
    /// result is [`Error::Cancelled`]. Returns true if the task is now
    /// cancelled (also when it already was), false if it is running or has
    /// finished.
    pub fn cancel(&self) -> bool {
        self.shared.cancel_with(Error::Cancelled)
    }

    /// Stops the task, even one already running in a worker process.
    ///
    /// A task still queued is cancelled, as by [`cancel`](Self::cancel). A
    /// process task that was handed to a worker but had not started there
    /// is taken back: it never runs, and ends in [`Error::Killed`] ("before
    /// it started") before this returns. A process task that runs has its
    /// worker killed, with every process of the worker's group (the pool
    /// starts a replacement; the tasks the worker held and had not started
    /// run elsewhere); it ends in `Killed` before this returns, and the
    /// worker is gone shortly after. Which of the two it was is decided
    /// exactly, by the claim the worker must win before it starts a task.
    ///
    /// Returns true if the task was cancelled or is being stopped; false if
    /// it had finished, or if it runs on a thread, which cannot be stopped
    /// from outside. A task that finishes just as it is killed may end with
    /// its result even though this returned true.
    pub fn kill(&self) -> bool {
        if self.cancel() {
            return true;
        }
        match (self.shared.stopper(), self.running()) {
            (Some(stop), true) => {
                stop(self.shared.id());
                true
            }
            _ => false,
        }
    }

    /// True if the task was cancelled.
    pub fn cancelled(&self) -> bool {
        self.shared.is_cancelled()
    }

    /// True while the task runs (for a process pool: from the moment it is
    /// sent to a worker, as in Python).
    pub fn running(&self) -> bool {
        self.shared.is_running()
    }

    /// True if the task was cancelled or has finished.
    pub fn done(&self) -> bool {
        self.shared.is_done()
    }

    /// Calls `f` with the result once the task ends.
    ///
    /// As in Python, the task is first published as done, then its
    /// callbacks run: inside `f` the future is [`done`](Self::done), and
    /// [`wait`](Self::wait) or [`wait_timeout`](Self::wait_timeout) on it
    /// (through an `Arc<Future<T>>` that `f` captured) return at once.
    /// Waiters in `wait`, [`wait`](crate::wait()) and
    /// [`as_completed`](crate::as_completed) are woken before the callbacks
    /// run, too.
    ///
    /// If the task is still pending or running, `f` runs on the thread that
    /// completes it (a pool thread or a process pool's reader thread), or on
    /// the thread that cancels it, in the order the callbacks were added. If
    /// the task has already ended, `f` runs at once on the caller's thread
    /// (or, if other callbacks are running at that moment with the result
    /// lent to them, on their thread, right after them).
    ///
    /// `f` borrows the result, so [`result`](Self::result) and `.await`,
    /// which move it out, wait until the callbacks running at the task's
    /// end have returned: a callback that blocks delays them. No lock is
    /// held while a callback runs, so it may use this same future. A
    /// panicking callback is caught and logged; the other callbacks still
    /// run.
    pub fn add_done_callback<F>(&self, f: F)
    where
        F: FnOnce(&Result<T, Error>) + Send + 'static,
    {
        self.shared.add_callback(Box::new(f));
    }
}

impl<T: Send + 'static> std::future::Future for Future<T> {
    type Output = Result<T, Error>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `poll` has the future `&mut`.
        unsafe { self.shared.poll_outcome(cx) }
    }
}

/// `now + timeout`, saturating far in the future for huge timeouts.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365))
}
