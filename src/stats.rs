//! What a pool is doing now, for a program to show: [`Stats`].

/// A snapshot of a pool, from [`Executor::stats`](crate::Executor::stats):
/// how much work waits, runs and has ended, and how its workers fare.
///
/// Each field is read on its own, while the pool works, so the fields of
/// one snapshot need not add up exactly (a task may end between two
/// reads). A chunk of a `map` with `chunksize` is one task here; to count
/// items, count what the `Map` iterator yields.
///
/// ```
/// let ex = twinpool::Executor::threads(2);
/// let f = ex.submit(|| 6 * 7)?;
/// assert_eq!(f.result()?, 42);
/// ex.shutdown(true, false);
/// let stats = ex.stats();
/// assert_eq!((stats.finished, stats.failed), (1, 0));
/// assert_eq!((stats.queued, stats.running), (0, 0));
/// # Ok::<(), twinpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks submitted that no worker has taken yet (cancelled ones may
    /// count until a worker skips them).
    pub queued: usize,
    /// Tasks a worker holds: running on a thread, or sent to a worker
    /// process (which, as in Python, counts as running) and not answered.
    pub running: usize,
    /// Tasks that ended after they ran or were sent, with a result or an
    /// error: everything but cancellations.
    pub finished: u64,
    /// Of `finished`, those that ended in an error (a panic, a time limit,
    /// a dead worker, a kill, a result that did not decode, ...).
    pub failed: u64,
    /// Worker processes started to replace others (after a crash, a kill,
    /// a time limit, `max_tasks_per_child`, ...). A thread pool never
    /// replaces its threads: 0.
    pub worker_restarts: u64,
    /// Workers alive now: threads started and not exited, or worker
    /// processes connected and not lost.
    pub live_workers: usize,
}
