//! Waiting on many futures: `wait` and `as_completed`.
//!
//! Both put a watcher on each future that is not done; the watcher reports
//! the future's index when it ends. Watchers are removed when the wait ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
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
/// Each watcher then wakes the waker in `wake`, if one is there (for
/// `AsCompleted` as a stream).
fn watch_all<T: Send + 'static>(
    futures: &[Option<Future<T>>],
    key: u64,
    wake: Option<&Arc<WakerSlot>>,
) -> Receiver<usize> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, f) in futures.iter().enumerate() {
        let Some(f) = f else { continue };
        let t = tx.clone();
        let wake = wake.cloned();
        if !f.shared().watch(
            key,
            Arc::new(move || {
                let _ = t.send(i);
                if let Some(w) = &wake {
                    w.wake();
                }
            }),
        ) {
            let _ = tx.send(i);
        }
    }
    rx
}

/// Where a stream leaves the waker of its last poll, for the watchers to
/// wake. Until a stream polls, `armed` is false and a watcher does not
/// touch the lock: a plain iterator pays one fence per future that ends.
/// Its atomic, fence and mutex come from [`crate::sync`], so that the
/// loom model at the end of this file checks it.
#[derive(Default)]
struct WakerSlot {
    armed: crate::sync::AtomicBool,
    waker: crate::sync::Mutex<Option<std::task::Waker>>,
}

impl WakerSlot {
    #[cfg_attr(not(feature = "futures"), allow(dead_code))]
    fn set(&self, waker: &std::task::Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
        drop(slot);
        // A store then a read on each side (here: `armed`, then the
        // channel; a watcher: the channel, then `armed`), each with a
        // SeqCst fence between: at least one side sees the other's write.
        // Either the watcher sees `armed` and wakes the waker set above, or
        // this poll's read of the channel, which follows, sees its index.
        self.armed.store(true, Ordering::Relaxed);
        crate::sync::fence(Ordering::SeqCst);
    }

    /// Called by a watcher after it sent its index.
    fn wake(&self) {
        crate::sync::fence(Ordering::SeqCst);
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        let waker = (self.waker.lock().unwrap_or_else(PoisonError::into_inner)).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
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
    let rx = watch_all(slots, key, None);
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
    let wake = Arc::new(WakerSlot::default());
    let rx = watch_all(&futures, key, Some(&wake));
    AsCompleted {
        futures,
        left,
        key,
        rx,
        wake,
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
    /// The waker of the last poll, when it is used as a stream.
    #[cfg_attr(not(feature = "futures"), allow(dead_code))]
    wake: Arc<WakerSlot>,
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

/// With the `futures` feature, `AsCompleted` is also a
/// [`Stream`](futures_core::Stream) of the same items, for async code:
/// polling it never blocks, and it is woken as each future ends.
///
/// It is an `Iterator` as well, so a stream method of the same name needs
/// its trait named: `StreamExt::next(&mut stream).await`.
///
/// Its timeout is checked each time it is polled; nothing wakes it at the
/// deadline itself (futures-core has no timer), so bound the wait with your
/// runtime's timer if a task may never end. A stream is not a pool
/// thread's blocking wait, so it neither runs tasks inline nor reports
/// deadlocks.
#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl<T: Send + 'static> futures_core::Stream for AsCompleted<T> {
    type Item = Result<Future<T>, Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.ended || this.left == 0 {
            return Poll::Ready(None);
        }
        // The waker goes in before the channel is read: a future that ends
        // after the read wakes this one.
        this.wake.set(cx.waker());
        while let Ok(i) = this.rx.try_recv() {
            if let Some(f) = this.futures.get_mut(i).and_then(Option::take) {
                this.left -= 1;
                return Poll::Ready(Some(Ok(f)));
            }
        }
        if this.deadline.is_some_and(|d| Instant::now() >= d) {
            this.ended = true;
            return Poll::Ready(Some(Err(Error::Timeout)));
        }
        Poll::Pending
    }
}

// Nothing in an `AsCompleted` relies on staying at one address.
impl<T: Send + 'static> Unpin for AsCompleted<T> {}

impl<T: Send + 'static> Drop for AsCompleted<T> {
    fn drop(&mut self) {
        self.unwatch();
    }
}

/// A loom model of [`WakerSlot`]: a future that ends while a stream polls
/// is never lost. The channel is modelled by an atomic flag with the
/// release and acquire orderings a channel at least has. Run with the
/// other models (see `.ci/run`).
#[cfg(all(test, loom))]
mod loom {
    use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::thread;

    use super::WakerSlot;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn an_end_racing_a_poll_is_seen_or_wakes_it() {
        loom::model(|| {
            let slot = Arc::new(WakerSlot::default());
            let sent = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (slot, sent) = (slot.clone(), sent.clone());
                thread::spawn(move || {
                    sent.store(true, Release);
                    slot.wake();
                })
            };
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            // The poll: the waker in, then the channel read.
            slot.set(&waker);
            let seen = sent.load(Acquire);
            watcher.join().unwrap();
            assert!(
                seen || count.0.load(SeqCst) == 1,
                "the poll saw nothing and nobody woke it"
            );
        });
    }
}
