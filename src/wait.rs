//! Waiting on many futures: `wait` and `as_completed`.
//!
//! Both put a watcher on each future that is not done; the watcher reports
//! the future's index when it ends. Watchers are removed when the wait ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::future::deadline_after;
use crate::{deadlock, Error, Future};

static NEXT_WATCH_KEY: AtomicU64 = AtomicU64::new(1);

/// When [`wait`] returns, as Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`
/// and `ALL_COMPLETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReturnWhen {
    /// As soon as any future ends (finished or cancelled).
    FirstCompleted,
    /// As soon as any future ends with an error other than
    /// [`Error::Cancelled`]; if none does, when all have ended.
    FirstException,
    /// When every future has ended.
    AllCompleted,
}

/// What [`wait`] returns: the futures split by whether they had ended, each
/// part in input order.
#[derive(Debug)]
pub struct Waited<T> {
    /// The futures that had ended (finished or cancelled).
    pub done: Vec<Future<T>>,
    /// The futures still pending or running.
    pub not_done: Vec<Future<T>>,
}

/// Puts a watcher under `key` on every future; the returned channel gets
/// the index of each as it ends (at once for those already done, in order).
fn watch_all<T: Send + 'static>(futures: &[Option<Future<T>>], key: u64) -> Receiver<usize> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, f) in futures.iter().enumerate() {
        let Some(f) = f else { continue };
        let t = tx.clone();
        if !f.shared().watch(
            key,
            Arc::new(move || {
                let _ = t.send(i);
            }),
        ) {
            let _ = tx.send(i);
        }
    }
    rx
}

fn unwatch_all<T: Send + 'static>(futures: &[Option<Future<T>>], key: u64) {
    for f in futures.iter().flatten() {
        f.shared().unwatch(key);
    }
}

/// The index of the next future to end, `Ok(None)` on timeout. An untimed
/// wait on a pool thread first runs a not-started task of its own pool here,
/// and is refused with `Deadlock` if it could never end (`all`: it needs
/// every future, else any one).
fn next_ended<T: Send + 'static>(
    futures: &[Option<Future<T>>],
    rx: &Receiver<usize>,
    deadline: Option<Instant>,
    all: bool,
) -> Result<Option<usize>, Error> {
    if let Ok(i) = rx.try_recv() {
        return Ok(Some(i));
    }
    let mut _edge = None;
    if deadline.is_none() && deadlock::current_pool().is_some() {
        let open = || futures.iter().flatten().filter(|f| !f.done());
        if open().any(|f| f.shared().try_help()) {
            return Ok(rx.try_recv().ok());
        }
        let ids: Vec<u64> = open().map(|f| f.shared().id()).collect();
        _edge = deadlock::begin_wait(&ids, all)?;
    }
    match deadline {
        None => Ok(rx.recv().ok()),
        Some(d) => match rx.recv_deadline(d) {
            Ok(i) => Ok(Some(i)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Ok(None),
        },
    }
}

/// Waits for the futures as Python's `concurrent.futures.wait` does.
///
/// Returns when `return_when` is met or `timeout` passes, whichever is first;
/// it never fails on timeout, it returns what it has. With no timeout, on a
/// pool thread, a wait that could never end (a cycle of tasks waiting on each
/// other) returns at once with what it has and logs the cycle; use
/// [`try_wait`] to get [`Error::Deadlock`] instead.
///
/// ```
/// use twinpool::{wait, Executor, ReturnWhen};
/// let ex = Executor::threads(2);
/// let fs = (0..4).map(|i| ex.submit(move || i * 2)).collect::<Result<Vec<_>, _>>()?;
/// let w = wait(fs, None, ReturnWhen::AllCompleted);
/// assert_eq!(w.done.len(), 4);
/// assert!(w.not_done.is_empty());
/// # Ok::<(), twinpool::Error>(())
/// ```
pub fn wait<T: Send + 'static>(
    futures: Vec<Future<T>>,
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> Waited<T> {
    let mut slots: Vec<Option<Future<T>>> = futures.into_iter().map(Some).collect();
    if let Err(e) = wait_slots(&slots, timeout, return_when) {
        log::error!("{e}");
    }
    split(&mut slots)
}

/// Like [`wait`], but a wait that could never end is `Err(Error::Deadlock)`;
/// the futures are dropped then, as they could never be waited on.
pub fn try_wait<T: Send + 'static>(
    futures: Vec<Future<T>>,
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> Result<Waited<T>, Error> {
    let mut slots: Vec<Option<Future<T>>> = futures.into_iter().map(Some).collect();
    wait_slots(&slots, timeout, return_when)?;
    Ok(split(&mut slots))
}

fn split<T: Send + 'static>(slots: &mut [Option<Future<T>>]) -> Waited<T> {
    let (done, not_done) = slots
        .iter_mut()
        .filter_map(Option::take)
        .partition(|f| f.done());
    Waited { done, not_done }
}

fn wait_slots<T: Send + 'static>(
    slots: &[Option<Future<T>>],
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> Result<(), Error> {
    let deadline = timeout.map(deadline_after);
    let met = || {
        let mut all_done = true;
        for f in slots.iter().flatten() {
            match (f.done(), return_when) {
                (true, ReturnWhen::FirstCompleted) => return true,
                (true, ReturnWhen::FirstException) if f.shared().failed() => return true,
                (false, _) => all_done = false,
                _ => {}
            }
        }
        all_done
    };
    if met() {
        return Ok(());
    }
    let key = NEXT_WATCH_KEY.fetch_add(1, Ordering::Relaxed);
    let rx = watch_all(slots, key);
    // FirstException can end as soon as any target fails, so like
    // FirstCompleted it is doomed only when every target is.
    let all = return_when == ReturnWhen::AllCompleted;
    let outcome = loop {
        if met() {
            break Ok(());
        }
        match next_ended(slots, &rx, deadline, all) {
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    unwatch_all(slots, key);
    outcome
}

/// Yields futures as they end, as Python's `concurrent.futures.as_completed`:
/// those already done first (in input order), then each as it ends.
///
/// When `timeout` (counted from this call) passes, the iterator yields
/// `Err(Error::Timeout)` once and ends; [`AsCompleted::into_remaining`] gives
/// back the futures that had not ended. Used on a pool thread without a
/// timeout, a wait that could never end yields `Err(Error::Deadlock)` and
/// ends.
///
/// ```
/// use twinpool::{as_completed, Executor};
/// let ex = Executor::threads(3);
/// let fs = (1..=3).map(|i| ex.submit(move || i * 10)).collect::<Result<Vec<_>, _>>()?;
/// let mut total = 0;
/// for f in as_completed(fs, None) {
///     total += f?.result()?;
/// }
/// assert_eq!(total, 60);
/// # Ok::<(), twinpool::Error>(())
/// ```
pub fn as_completed<T, I>(futures: I, timeout: Option<Duration>) -> AsCompleted<T>
where
    T: Send + 'static,
    I: IntoIterator<Item = Future<T>>,
{
    let futures: Vec<Option<Future<T>>> = futures.into_iter().map(Some).collect();
    let left = futures.len();
    let key = NEXT_WATCH_KEY.fetch_add(1, Ordering::Relaxed);
    let rx = watch_all(&futures, key);
    AsCompleted {
        futures,
        left,
        key,
        rx,
        deadline: timeout.map(deadline_after),
        ended: false,
    }
}

/// The iterator [`as_completed`] returns.
pub struct AsCompleted<T: Send + 'static> {
    futures: Vec<Option<Future<T>>>,
    left: usize,
    key: u64,
    rx: Receiver<usize>,
    deadline: Option<Instant>,
    ended: bool,
}

impl<T: Send + 'static> std::fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.left)
            .finish()
    }
}

impl<T: Send + 'static> AsCompleted<T> {
    /// The futures not yielded yet, in input order.
    pub fn into_remaining(mut self) -> Vec<Future<T>> {
        self.unwatch();
        self.futures.iter_mut().filter_map(Option::take).collect()
    }

    fn unwatch(&mut self) {
        unwatch_all(&self.futures, self.key);
    }
}

impl<T: Send + 'static> Iterator for AsCompleted<T> {
    type Item = Result<Future<T>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.ended && self.left > 0 {
            match next_ended(&self.futures, &self.rx, self.deadline, false) {
                Ok(Some(i)) => {
                    if let Some(f) = self.futures.get_mut(i).and_then(Option::take) {
                        self.left -= 1;
                        return Some(Ok(f));
                    }
                }
                Ok(None) if self.deadline.is_some_and(|d| Instant::now() >= d) => {
                    self.ended = true;
                    return Some(Err(Error::Timeout));
                }
                Ok(None) => {}
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

impl<T: Send + 'static> Drop for AsCompleted<T> {
    fn drop(&mut self) {
        self.unwatch();
    }
}
