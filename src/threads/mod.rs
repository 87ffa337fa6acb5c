//! The thread back end: a queue and up to `max_workers` threads that pull
//! from it.
//!
//! Threads start lazily, as in Python 3.8+: a submit starts a new thread only
//! when no started thread is idle and fewer than `max_workers` exist. Each
//! thread runs the initializer once, then takes jobs until it takes a stop
//! mark. Shutdown marks the pool closed and queues one stop mark per thread
//! behind the queued jobs; threads finish what is queued (or it is cancelled
//! first) and exit.
//!
//! Once every thread has started, a submit takes no lock: it checks the
//! closed flag, queues, and checks the flag again. A job that lands behind
//! the stop marks (shutdown raced the submit) is cancelled by its submitter,
//! which then reports `Shutdown`, as a submit after shutdown does.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::{Receiver, Sender};

use crate::deadlock;
use crate::error::{drop_panic_payload, panic_message};
use crate::future::Job;
use crate::recycle::Counted;
use crate::Error;

/// Runs once in every worker thread before its first task.
pub(crate) type Initializer = Arc<dyn Fn() + Send + Sync>;

/// A job, or `None`: the mark that tells one thread to exit.
type Queue = Option<Counted<dyn Job>>;

/// What the pool's threads share with it.
struct Common {
    /// Threads that finished a job and wait for the next (Python's idle
    /// semaphore): a submit that can take one starts no thread.
    idle: AtomicUsize,
    /// Set once `max_workers` threads have started: from then on nobody
    /// counts idle threads, and a submit takes no lock.
    full: AtomicBool,
    /// Set by shutdown, before the stop marks are queued.
    closed: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a thread exits, and when a pool thread starts to
    /// wait in `shutdown`.
    exited: Condvar,
}

/// What one worker thread has done, on a cache line of its own: only its
/// thread writes it (plain stores, no read-modify-write), and
/// [`ThreadPool::stats`] sums every thread's.
#[repr(align(128))]
#[derive(Default)]
struct Tally {
    /// Tasks it ran to an end, and how many of them failed.
    finished: AtomicU64,
    failed: AtomicU64,
    /// True while it holds a task.
    busy: AtomicBool,
}

impl Tally {
    /// Adds `finished` tasks, `failed` of them failed. Its own thread only.
    fn add(&self, finished: u64, failed: u64) {
        if finished > 0 {
            let f = self.finished.load(Ordering::Relaxed);
            self.finished.store(f + finished, Ordering::Relaxed);
        }
        if failed > 0 {
            let f = self.failed.load(Ordering::Relaxed);
            self.failed.store(f + failed, Ordering::Relaxed);
        }
    }
}

struct State {
    /// Every thread's tally, the exited ones' too.
    tallies: Vec<Arc<Tally>>,
    /// Why the pool broke, once it has.
    broken: Option<String>,
    /// True once shutdown has queued one stop mark per started thread.
    marked: bool,
    started: usize,
    alive: usize,
    /// Pool threads blocked in `shutdown(wait = true)` (see
    /// [`ThreadPool::shutdown`]).
    joining: usize,
}

/// A pool of worker threads.
pub(crate) struct ThreadPool {
    id: u64,
    max_workers: usize,
    prefix: String,
    initializer: Option<Initializer>,
    tx: Sender<Queue>,
    rx: Receiver<Queue>,
    common: Arc<Common>,
    /// For tests: this many next thread starts fail, as when the operating
    /// system refuses a thread.
    #[cfg(test)]
    refuse_spawns: AtomicUsize,
}

impl Common {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ThreadPool {
    pub(crate) fn new(
        id: u64,
        max_workers: usize,
        prefix: String,
        initializer: Option<Initializer>,
    ) -> ThreadPool {
        let (tx, rx) = crossbeam_channel::unbounded();
        ThreadPool {
            id,
            max_workers,
            prefix,
            initializer,
            tx,
            rx,
            common: Arc::new(Common {
                idle: AtomicUsize::new(0),
                full: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                state: Mutex::new(State {
                    tallies: Vec::new(),
                    broken: None,
                    marked: false,
                    started: 0,
                    alive: 0,
                    joining: 0,
                }),
                exited: Condvar::new(),
            }),
            #[cfg(test)]
            refuse_spawns: AtomicUsize::new(0),
        }
    }

    /// Queues `job`, starting a thread if none is idle and there is room.
    ///
    /// `cancel` cancels the job if it has not started; it is called when a
    /// shutdown raced this submit, so that the job is not left behind the
    /// stop marks (the submit then fails as one after shutdown does).
    pub(crate) fn submit(
        &self,
        job: Counted<dyn Job>,
        cancel: impl FnOnce() -> bool,
    ) -> Result<(), Error> {
        if !self.common.full.load(Ordering::Acquire) {
            return self.submit_starting(job, cancel);
        }
        if self.common.closed.load(Ordering::SeqCst) {
            return Err(refusal(&self.common.lock()));
        }
        // The receiver lives in `self`, so the queue cannot be disconnected.
        if self.tx.send(Some(job)).is_err() {
            return Err(Error::Shutdown);
        }
        // Shutdown (or a breaking thread) sets `closed` before it queues its
        // marks or drains the queue: if it is still unset here, the job is
        // ahead of them and will run or be failed.
        if self.common.closed.load(Ordering::SeqCst) && cancel() {
            return Err(refusal(&self.common.lock()));
        }
        Ok(())
    }

    /// Runs `f` on every queued job, taking them out of the queue; stop
    /// marks taken with them are queued again.
    fn drain(rx: &Receiver<Queue>, tx: &Sender<Queue>, f: impl Fn(&dyn Job)) {
        let mut marks = 0;
        for item in rx.try_iter() {
            match item {
                Some(job) => f(&*job),
                None => marks += 1,
            }
        }
        for _ in 0..marks {
            // Cannot fail: the receiver is alive (we just read from it).
            let _ = tx.send(None);
        }
    }

    /// The submit of a pool still starting threads: under the lock.
    ///
    /// If no thread could be started and none is alive, the job is
    /// cancelled before the error is returned: an `Err` from a submit means
    /// the task will never run, and a thread started later would otherwise
    /// find it in the queue and run it.
    fn submit_starting(
        &self,
        job: Counted<dyn Job>,
        cancel: impl FnOnce() -> bool,
    ) -> Result<(), Error> {
        let mut st = self.common.lock();
        if self.common.closed.load(Ordering::SeqCst) {
            return Err(refusal(&st));
        }
        // Under the lock, so a shutdown or a breaking thread (which take it
        // to close the pool) queue marks or drain after this job.
        if self.tx.send(Some(job)).is_err() {
            return Err(Error::Shutdown);
        }
        if st.started < self.max_workers {
            let took_idle = self
                .common
                .idle
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            if !took_idle {
                if let Err(e) = self.start_thread(&mut st) {
                    // Outside the lock: cancelling drops the task's work,
                    // which may own anything (even a clone of this pool).
                    drop(st);
                    // Nobody else can have claimed it (no thread is alive,
                    // and its future is not out yet); if somehow someone
                    // did, it runs, and the submit succeeded.
                    return if cancel() { Err(e) } else { Ok(()) };
                }
            }
        }
        Ok(())
    }

    fn start_thread(&self, st: &mut State) -> Result<(), Error> {
        let name = format!("{}_{}", self.prefix, st.started);
        let tally = Arc::new(Tally::default());
        let worker = PoolThread {
            pool: self.id,
            name: name.clone(),
            tally: tally.clone(),
            rx: self.rx.clone(),
            tx: self.tx.clone(),
            common: self.common.clone(),
            initializer: self.initializer.clone(),
        };
        let spawned = match self.refused_spawn() {
            Some(refused) => Err(refused),
            None => std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker.run()),
        };
        match spawned {
            Ok(_) => {
                st.tallies.push(tally);
                st.started += 1;
                st.alive += 1;
                if st.started == self.max_workers {
                    self.common.full.store(true, Ordering::Release);
                }
                Ok(())
            }
            // The job is queued already; an existing thread will take it.
            Err(_) if st.alive > 0 => Ok(()),
            Err(e) => Err(Error::Spawn {
                reason: format!("the operating system refused to start thread {name}: {e}"),
            }),
        }
    }

    /// Closes the queue; cancels what is queued if `cancel_futures`; waits
    /// for the threads to exit if `wait`.
    ///
    /// Called with `wait` on one of the pool's own threads, it cannot wait
    /// for that thread (it exits only once the task that called this
    /// returns), nor for another pool thread blocked here too: each would
    /// wait for the other forever. So such a caller counts itself in
    /// `joining`, and waits only until every thread still alive is one of
    /// those joining.
    pub(crate) fn shutdown(&self, wait: bool, cancel_futures: bool) {
        let mut st = self.common.lock();
        // Closed before the marks are queued: see `submit`.
        self.common.closed.store(true, Ordering::SeqCst);
        if cancel_futures {
            drop(st);
            Self::drain(&self.rx, &self.tx, |job| {
                job.cancel();
            });
            st = self.common.lock();
        }
        if !st.marked {
            st.marked = true;
            for _ in 0..st.started {
                // Cannot fail: the receiver lives in `self`.
                let _ = self.tx.send(None);
            }
        }
        if !wait {
            return;
        }
        let on_own_thread = deadlock::current_pool() == Some(self.id);
        if on_own_thread {
            st.joining += 1;
            // Those already joining count one more thread they need not
            // wait for.
            self.common.exited.notify_all();
        }
        let joining = |st: &State| if on_own_thread { st.joining } else { 0 };
        while st.alive > joining(&st) {
            st = self
                .common
                .exited
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if on_own_thread {
            st.joining -= 1;
        }
    }

    /// What the pool is doing now; see [`Stats`](crate::Stats).
    pub(crate) fn stats(&self) -> crate::Stats {
        let st = self.common.lock();
        let mut stats = crate::Stats {
            live_workers: st.alive,
            ..crate::Stats::default()
        };
        // After shutdown one stop mark per live thread waits in the queue
        // (about: a thread that took its mark counts until it exits).
        let marks = if st.marked { st.alive } else { 0 };
        for t in &st.tallies {
            stats.finished += t.finished.load(Ordering::Relaxed);
            stats.failed += t.failed.load(Ordering::Relaxed);
            stats.running += usize::from(t.busy.load(Ordering::Relaxed));
        }
        drop(st);
        // Stop marks are not tasks.
        stats.queued = self.rx.len().saturating_sub(marks);
        stats
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// For tests: an error in place of the next thread start, while
    /// `refuse_spawns` counts any.
    #[cfg(test)]
    fn refused_spawn(&self) -> Option<std::io::Error> {
        self.refuse_spawns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()
            .map(|_| std::io::Error::other("refused by a test"))
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn refused_spawn(&self) -> Option<std::io::Error> {
        None
    }
}

impl Drop for ThreadPool {
    /// Threads exit on stop marks, not on a closed channel (they hold
    /// senders of their own): make sure they get them.
    fn drop(&mut self) {
        self.shutdown(false, false);
    }
}

/// Why a submit is refused once the pool is closed: broken (a breaking
/// thread closes the pool too), or shut down.
fn refusal(st: &State) -> Error {
    match &st.broken {
        Some(reason) => Error::BrokenPool {
            reason: reason.clone(),
        },
        None => Error::Shutdown,
    }
}

/// One worker thread's loop.
struct PoolThread {
    pool: u64,
    name: String,
    /// What it has done, for [`ThreadPool::stats`].
    tally: Arc<Tally>,
    rx: Receiver<Queue>,
    /// For putting back stop marks it drained (see `break_pool`).
    tx: Sender<Queue>,
    common: Arc<Common>,
    initializer: Option<Initializer>,
}

/// The next item of a pool thread's queue; `None` if the queue is gone.
///
/// When the queue is empty on a crowded machine (more runnable threads
/// than CPUs, see `future::crowded`), the thread yields once before it
/// blocks: the thread that waits for the result it just published has
/// most often handed this CPU over to it (a waiter's hand-off, see
/// `future/waiting.rs`) and is queued here, and without the yield it would
/// wait for the spin of this thread's blocking receive (about 3 µs) first.
/// In the report's group 9 (one task at a time beside a busy pool, 2 CPUs,
/// four interleaved runs each) a round trip took 6.8-10.5 µs with the
/// yield against 9.6-10.9 µs without.
fn next_item(rx: &Receiver<Queue>) -> Option<Queue> {
    match rx.try_recv() {
        Ok(item) => return Some(item),
        Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
        Err(crossbeam_channel::TryRecvError::Empty) => {}
    }
    if crate::sync::SPIN && crate::future::crowded() {
        std::thread::yield_now();
    }
    rx.recv().ok()
}

impl PoolThread {
    fn run(self) {
        deadlock::enter_worker(self.pool, self.name.clone());
        let initialized = match &self.initializer {
            Some(init) => catch_unwind(AssertUnwindSafe(|| init())).map_err(|p| {
                let reason = format!(
                    "the initializer panicked in thread {}: {}",
                    self.name,
                    panic_message(&*p)
                );
                drop_panic_payload(p);
                reason
            }),
            None => Ok(()),
        };
        match initialized {
            Ok(()) => {
                // Idle from just before the result is published: a caller
                // that gets the result and submits again must find this
                // thread idle, not start another one.
                // Once the pool is full nobody counts idle threads; this
                // thread then stops reading `full` too, so that its cache
                // line, which a submit writes, is not bounced per task.
                let full = Cell::new(false);
                let idle = || {
                    if full.get() {
                    } else if self.common.full.load(Ordering::Relaxed) {
                        full.set(true);
                    } else {
                        self.common.idle.fetch_add(1, Ordering::AcqRel);
                    }
                };
                let tally = &*self.tally;
                while let Some(Some(job)) = next_item(&self.rx) {
                    tally.busy.store(true, Ordering::Relaxed);
                    // A task's panics are caught around its work and each
                    // callback. This catches what escapes all the same (a
                    // result nobody took whose drop panics, with the job's
                    // last handle), so the thread lives on and `alive`
                    // stays true.
                    let ran = catch_unwind(AssertUnwindSafe(|| {
                        let ran = job.run(&idle);
                        drop(job);
                        ran
                    }));
                    tally.busy.store(false, Ordering::Relaxed);
                    // Tasks it ran inline while this one waited count too.
                    let (helped, helped_failed) = deadlock::take_helped();
                    let (here, here_failed) = match ran {
                        Ok(Some(failed)) => (1, u64::from(failed)),
                        // Cancelled before it ran; or the panic above, which
                        // came after the task had ended and been counted
                        // by nobody: it ran.
                        Ok(None) => (0, 0),
                        Err(_) => (1, 0),
                    };
                    tally.add(here + helped, here_failed + helped_failed);
                    if let Err(p) = ran {
                        log::error!(
                            "twinpool: a panic escaped a task on thread {}: {}",
                            self.name,
                            panic_message(&*p)
                        );
                        drop_panic_payload(p);
                    }
                }
            }
            Err(reason) => self.break_pool(reason),
        }
        let mut st = self.common.lock();
        st.alive -= 1;
        self.common.exited.notify_all();
    }

    /// Marks the pool broken and fails everything queued with `BrokenPool`.
    fn break_pool(&self, reason: String) {
        log::error!("twinpool: {reason}; the pool is broken");
        let mut st = self.common.lock();
        if st.broken.is_none() {
            st.broken = Some(reason.clone());
        }
        // Closed before the drain: see `ThreadPool::submit`.
        self.common.closed.store(true, Ordering::SeqCst);
        drop(st);
        // Stop marks go back: other threads still need theirs.
        ThreadPool::drain(&self.rx, &self.tx, |job| {
            job.fail_if_pending(Error::BrokenPool {
                reason: reason.clone(),
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::*;
    use crate::future::{Future, Shared};

    /// Submits `work` to `pool` as `Executor::submit` does.
    fn submit<T: Send + 'static>(
        pool: &ThreadPool,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Future<T>, Error> {
        let (shared, job) = Shared::new(pool.id(), None, move || Ok(work()));
        pool.submit(job, || shared.cancel_with(Error::Cancelled))?;
        Ok(Future::new(shared))
    }

    #[test]
    fn a_submit_that_could_start_no_thread_never_runs_its_task() {
        let pool = ThreadPool::new(u64::MAX, 1, "refused".into(), None);
        pool.refuse_spawns.store(1, Ordering::SeqCst);
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let refused = submit(&pool, move || r.store(true, Ordering::SeqCst));
        assert!(matches!(refused, Err(Error::Spawn { .. })), "{refused:?}");
        // The next submit starts the thread; one thread takes the queue in
        // order, so a task left behind by the first submit would run first.
        let next = submit(&pool, || 5).expect("the second thread start works");
        assert_eq!(next.result_timeout(Duration::from_secs(30)), Ok(5));
        pool.shutdown(true, false);
        assert!(
            !ran.load(Ordering::SeqCst),
            "a task whose submit failed ran anyway"
        );
    }
}
