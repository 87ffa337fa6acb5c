//! The one `Future` state machine, shared by both back ends.
//!
//! ```text
//!   Pending ──claim──▶ Running ──complete──▶ Finished ──result()──▶ Taken
//!      │
//!      └──cancel──▶ Cancelled
//! ```
//!
//! A thread-pool task carries its work inside `Pending`; whoever claims it
//! first runs it: a worker thread, or a pool thread that blocks on the future
//! and helps (see [`crate::deadlock`]). A process-pool task is pending with no
//! work here; its dispatcher claims it when it sends it to a worker, and
//! completes it when the answer comes back.
//!
//! Completion runs the done-callbacks first, on the completing thread, then
//! publishes the result and wakes waiters: when `result()` returns, every
//! callback added before completion has run. Cancellation is the exception,
//! as in Python: it wakes waiters first, then runs the callbacks on the
//! cancelling thread. No lock is held while a callback runs.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::deadlock::{self, TaskTag};
use crate::recycle::{self, Counted};
use crate::Error;

/// The work of a thread-pool task, when it has to be boxed.
pub(crate) type Work<T> = Box<dyn FnOnce() -> Result<T, Error> + Send>;
type Callback<T> = Box<dyn FnOnce(&Result<T, Error>) + Send>;
/// Told when a future ends; used by `wait` and `as_completed`.
pub(crate) type Watcher = Arc<dyn Fn() + Send + Sync>;

static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);
/// Task ids a thread takes from [`NEXT_TASK_ID`] at a time, so that a
/// submit does not pay for a shared atomic add.
const IDS_PER_THREAD: u64 = 1024;

thread_local! {
    /// The next id this thread hands out, and the end of its block.
    static TASK_IDS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A task id unique in this process.
fn next_task_id() -> u64 {
    let block = || {
        let first = NEXT_TASK_ID.fetch_add(IDS_PER_THREAD, Ordering::Relaxed);
        (first, first + IDS_PER_THREAD)
    };
    TASK_IDS
        .try_with(|ids| {
            let (mut next, mut end) = ids.get();
            if next == end {
                (next, end) = block();
            }
            ids.set((next + 1, end));
            next
        })
        .unwrap_or_else(|_| block().0)
}

/// How long a waiter spins and yields before it sleeps on the condvar.
const SPIN_BUDGET: Duration = Duration::from_micros(50);

enum State<T> {
    /// Not started.
    Pending,
    Running,
    Cancelled,
    /// The error is boxed so that a task's state stays small (two cache
    /// lines for small results); only failures pay for the box.
    Finished(Result<T, Box<Error>>),
    /// Finished, with the result lent out to a done-callback added after the
    /// end, which runs outside the lock (`failed`: the result is an `Err`).
    Lent {
        failed: bool,
    },
    /// The result was moved out by `result()` or `.await`.
    Taken,
}

struct Inner<T> {
    state: State<T>,
    /// Callbacks, watchers and a waker: most futures never have any, so
    /// they live in a box made on first use, which keeps every task small.
    extras: Option<Box<Extras<T>>>,
    /// Threads blocked on the condvar; completion skips the notify when 0.
    sleepers: u32,
}

struct Extras<T> {
    callbacks: Vec<Callback<T>>,
    watchers: Vec<(u64, Watcher)>,
    waker: Option<Waker>,
}

impl<T> Inner<T> {
    fn extras(&mut self) -> &mut Extras<T> {
        self.extras.get_or_insert_with(|| {
            Box::new(Extras {
                callbacks: Vec::new(),
                watchers: Vec::new(),
                waker: None,
            })
        })
    }

    fn take_callbacks(&mut self) -> Vec<Callback<T>> {
        match self.extras.as_mut() {
            Some(e) => std::mem::take(&mut e.callbacks),
            None => Vec::new(),
        }
    }
}

/// Asks a process pool to stop the running task with this id.
pub(crate) type Stopper = Arc<dyn Fn(u64) + Send + Sync>;

/// The work of a task, kept in the same allocation as its state (one
/// allocation per task, not two).
///
/// Access rule: the work is touched only by the thread that moves the task
/// out of `Pending` (to run it, or to cancel it and drop it); the state lock
/// makes that thread unique.
pub(crate) trait WorkSlot<T>: Send + Sync {
    /// True for thread tasks, false for process tasks (their work is in the
    /// worker).
    fn has_work(&self) -> bool;
    /// Runs the work.
    ///
    /// # Safety
    /// Only the thread that moved the task from `Pending` to `Running` may
    /// call it, once.
    unsafe fn run(&self) -> Option<Result<T, Error>>;
    /// Drops the work without running it.
    ///
    /// # Safety
    /// Only the thread that moved the task out of `Pending` may call it.
    unsafe fn discard(&self);
    /// For process tasks: how to stop the task once it runs.
    fn stopper(&self) -> Option<&Stopper> {
        None
    }
}

/// A thread task's closure.
pub(crate) struct Closure<F>(UnsafeCell<Option<F>>);

// SAFETY: the closure is only touched by the one thread that moved the task
// out of `Pending` (see `WorkSlot`), so sharing the slot only ever moves `F`
// to that thread: `F: Send` is enough.
unsafe impl<F: Send> Sync for Closure<F> {}

impl<T, F> WorkSlot<T> for Closure<F>
where
    F: FnOnce() -> Result<T, Error> + Send,
{
    fn has_work(&self) -> bool {
        true
    }
    unsafe fn run(&self) -> Option<Result<T, Error>> {
        // SAFETY: the caller is the only thread touching the slot.
        unsafe { (*self.0.get()).take() }.map(|f| f())
    }
    unsafe fn discard(&self) {
        // SAFETY: the caller is the only thread touching the slot.
        drop(unsafe { (*self.0.get()).take() });
    }
}

/// A process task has no work here: its worker runs it. It holds how to
/// stop it.
#[cfg_attr(not(feature = "process"), allow(dead_code))]
pub(crate) struct Remote(Stopper);

impl<T> WorkSlot<T> for Remote {
    fn has_work(&self) -> bool {
        false
    }
    unsafe fn run(&self) -> Option<Result<T, Error>> {
        None
    }
    unsafe fn discard(&self) {}
    fn stopper(&self) -> Option<&Stopper> {
        Some(&self.0)
    }
}

/// The state one task shares between its `Future` and whoever runs it, and
/// the task's work itself (`W`: a [`Closure`] or [`Remote`], erased to
/// `dyn WorkSlot<T>` once built).
///
/// `repr(C)` with the count first: see [`recycle::place`].
#[repr(C)]
pub(crate) struct Shared<T, W: ?Sized = dyn WorkSlot<T>> {
    /// The count of [`Counted`] handles (the future's, the queue's, ...).
    refs: AtomicUsize,
    tag: TaskTag,
    pool: u64,
    inner: Mutex<Inner<T>>,
    cond: Condvar,
    /// Set (under the lock) when the task ends, so a waiter can spin on it
    /// briefly before it sleeps, and `done()` need not lock.
    ended: AtomicBool,
    work: W,
}

/// A task in a thread pool's queue, with its result type erased.
pub(crate) trait Job: Send + Sync {
    /// Runs the task on this thread unless it was cancelled or claimed.
    /// `finishing` is called exactly once on this thread: after the task's
    /// callbacks and just before its result is published, or at once if
    /// there was nothing to run. A pool counts its thread idle there, so a
    /// submit that follows a `result()` finds the thread idle.
    fn run(&self, finishing: &dyn Fn());
    /// Cancels the task if it has not started.
    fn cancel(&self) -> bool;
    /// Fails the task with `err` if it has not started.
    fn fail_if_pending(&self, err: Error);
}

impl<T> State<T> {
    fn is_done(&self) -> bool {
        matches!(
            self,
            State::Cancelled | State::Finished(_) | State::Lent { .. } | State::Taken
        )
    }
}

impl<T: Send + 'static> Shared<T> {
    /// A new pending thread task of `pool` that runs `work`: two handles to
    /// one state, the future's and the queue's.
    pub(crate) fn new<F>(
        pool: u64,
        name: Option<Arc<str>>,
        work: F,
    ) -> (Counted<Shared<T>>, Counted<dyn Job>)
    where
        F: FnOnce() -> Result<T, Error> + Send + 'static,
    {
        let work = Closure(UnsafeCell::new(Some(work)));
        // SAFETY: `Shared` is `repr(C)` and starts with its count; two
        // handles for a count of two.
        unsafe {
            let ptr = recycle::place(Shared::build(pool, name, work), 2);
            (Counted::from_raw(ptr), Counted::from_raw(ptr))
        }
    }

    /// A new pending process task that `stopper` can stop while it runs.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn remote(pool: u64, name: Option<Arc<str>>, stopper: Stopper) -> Counted<Self> {
        // SAFETY: `Shared` is `repr(C)` and starts with its count; one
        // handle for a count of one.
        unsafe {
            Counted::from_raw(recycle::place(
                Shared::build(pool, name, Remote(stopper)),
                1,
            ))
        }
    }
}

impl<T, W> Shared<T, W> {
    fn build(pool: u64, name: Option<Arc<str>>, work: W) -> Self {
        Shared {
            refs: AtomicUsize::new(0),
            tag: TaskTag {
                id: next_task_id(),
                name,
            },
            pool,
            inner: Mutex::new(Inner {
                state: State::Pending,
                extras: None,
                sleepers: 0,
            }),
            cond: Condvar::new(),
            ended: AtomicBool::new(false),
            work,
        }
    }
}

impl<T: Send + 'static, W: WorkSlot<T> + ?Sized> Shared<T, W> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // User code never runs under this lock except callbacks on a finished
        // future, which are caught; a poisoned lock still holds a valid state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The task's name, for named tasks ("a closure" otherwise).
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn name(&self) -> Arc<str> {
        self.tag.name.clone().unwrap_or_else(|| "a closure".into())
    }

    /// The task's id, unique in this process.
    pub(crate) fn id(&self) -> u64 {
        self.tag.id
    }

    /// Moves a pending thread task to running: true if this thread now owns
    /// its work; false if it was cancelled or claimed, or runs elsewhere.
    fn claim(&self) -> bool {
        if !self.work.has_work() {
            return false;
        }
        let mut g = self.lock();
        if matches!(g.state, State::Pending) {
            g.state = State::Running;
            true
        } else {
            false
        }
    }

    /// For process tasks: marks the task running as it is sent to a worker.
    /// False if it was cancelled (it must then not be sent).
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn claim_remote(&self) -> bool {
        let mut g = self.lock();
        if matches!(g.state, State::Pending) && !self.work.has_work() {
            g.state = State::Running;
            true
        } else {
            false
        }
    }

    /// Runs the work this thread claimed, catching a panic, and completes
    /// the future.
    fn run_claimed(&self, finishing: &dyn Fn()) {
        let outcome = deadlock::running(&self.tag, || {
            // SAFETY: the caller claimed the task, so this thread alone may
            // touch its work, and it does so once.
            catch_unwind(AssertUnwindSafe(|| unsafe { self.work.run() }))
        });
        let result = match outcome {
            Ok(Some(r)) => r,
            Ok(None) => Err(Error::Cancelled),
            Err(p) => Err(Error::from_panic(p)),
        };
        self.complete_then(result, finishing);
    }

    /// Ends a running task with `result`: callbacks, then waiters.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn complete(&self, result: Result<T, Error>) {
        self.complete_then(result, &|| {});
    }

    /// [`complete`](Self::complete), calling `finishing` after the callbacks
    /// and before the result is published.
    fn complete_then(&self, result: Result<T, Error>, finishing: &dyn Fn()) {
        let mut g = self.lock();
        if g.state.is_done() {
            drop(g);
            finishing();
            return;
        }
        loop {
            let callbacks = g.take_callbacks();
            if callbacks.is_empty() {
                break;
            }
            drop(g);
            run_callbacks(callbacks, &result);
            g = self.lock();
        }
        finishing();
        g.state = State::Finished(result.map_err(Box::new));
        self.ended.store(true, Ordering::Release);
        self.wake_all(g);
    }

    /// Publishes a final state to everyone waiting; releases the lock.
    fn wake_all(&self, mut g: MutexGuard<'_, Inner<T>>) {
        if g.sleepers > 0 {
            self.cond.notify_all();
        }
        let Some(extras) = g.extras.as_mut() else {
            return;
        };
        let watchers = std::mem::take(&mut extras.watchers);
        let waker = extras.waker.take();
        drop(g);
        for (_, w) in watchers {
            w();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends a pending task with `err` (`Cancelled` gives the cancelled
    /// state). True if it was pending, or already cancelled.
    pub(crate) fn cancel_with(&self, err: Error) -> bool {
        let mut g = self.lock();
        if !matches!(g.state, State::Pending) {
            return matches!(g.state, State::Cancelled);
        }
        let callbacks = g.take_callbacks();
        self.ended.store(true, Ordering::Release);
        g.state = if err == Error::Cancelled {
            State::Cancelled
        } else {
            State::Finished(Err(Box::new(err.clone())))
        };
        self.wake_all(g);
        // The work may own anything, even the last handle of an executor:
        // drop it outside the lock.
        // SAFETY: this thread moved the task out of `Pending`.
        unsafe { self.work.discard() };
        run_callbacks(callbacks, &Err(err));
        true
    }

    /// Waits until the task ends or `deadline` passes: Ok(true) when it
    /// ended, Ok(false) on timeout. An untimed wait on a pool thread helps
    /// (runs the task here if it has not started) or is refused with
    /// `Deadlock` when it could never end.
    fn wait_until(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        // Held until this wait returns: the recorded "I wait for this task".
        let mut _edge = None;
        if self.spin_until_ended(deadline) {
            return Ok(true);
        }
        let mut checked = deadline.is_some() || deadlock::current_pool().is_none();
        let mut g = self.lock();
        loop {
            if g.state.is_done() {
                return Ok(true);
            }
            if !checked {
                drop(g);
                if !self.try_help() {
                    _edge = deadlock::begin_wait(&[self.tag.id], true)?;
                    checked = true;
                }
                g = self.lock();
                continue;
            }
            g.sleepers += 1;
            match deadline {
                None => g = self.cond.wait(g).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        g.sleepers -= 1;
                        return Ok(false);
                    }
                    g = self
                        .cond
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            g.sleepers -= 1;
        }
    }

    /// Spins, then yields, for up to [`SPIN_BUDGET`], in case the task is
    /// about to end: that answer is much cheaper than sleeping and being
    /// woken (a process round trip costs about half again as much through a
    /// sleep). Yielding lets the threads that would answer run. True if it
    /// ended.
    fn spin_until_ended(&self, deadline: Option<Instant>) -> bool {
        for step in 0..7 {
            if self.ended.load(Ordering::Acquire) {
                return true;
            }
            for _ in 0..(1u32 << step) {
                std::hint::spin_loop();
            }
        }
        let now = Instant::now();
        let until = match deadline {
            Some(d) => d.min(now + SPIN_BUDGET),
            None => now + SPIN_BUDGET,
        };
        while Instant::now() < until {
            if self.ended.load(Ordering::Acquire) {
                return true;
            }
            std::thread::yield_now();
        }
        self.ended.load(Ordering::Acquire)
    }

    /// On a thread of this task's pool: if the task has not started, runs it
    /// here and returns true.
    pub(crate) fn try_help(&self) -> bool {
        if deadlock::current_pool() != Some(self.pool) {
            return false;
        }
        if !self.claim() {
            return false;
        }
        // While it runs inline, the waiting task waits for it: record that so
        // a cycle through it is still seen.
        let edge = deadlock::begin_wait(&[self.tag.id], true);
        self.run_claimed(&|| {});
        drop(edge);
        true
    }

    fn is_done(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// True if the task finished with an error (not counting cancellation).
    pub(crate) fn failed(&self) -> bool {
        matches!(
            self.lock().state,
            State::Finished(Err(_)) | State::Lent { failed: true }
        )
    }

    /// Calls `w` when the task ends. Returns false, without keeping `w`, if
    /// it has ended already.
    pub(crate) fn watch(&self, key: u64, w: Watcher) -> bool {
        let mut g = self.lock();
        if g.state.is_done() {
            return false;
        }
        g.extras().watchers.push((key, w));
        true
    }

    /// Forgets the watcher registered under `key`.
    pub(crate) fn unwatch(&self, key: u64) {
        if let Some(e) = self.lock().extras.as_mut() {
            e.watchers.retain(|(k, _)| *k != key);
        }
    }

    /// Moves the result out of a finished future.
    fn take(&self, g: &mut Inner<T>) -> Result<T, Error> {
        match std::mem::replace(&mut g.state, State::Taken) {
            State::Finished(r) => r.map_err(|e| *e),
            State::Cancelled => {
                g.state = State::Cancelled;
                Err(Error::Cancelled)
            }
            other => {
                g.state = other;
                Err(Error::InvalidArgument {
                    reason: "the result of this future was already taken by .await".into(),
                })
            }
        }
    }
}

impl<T: Send + 'static, W: WorkSlot<T> + ?Sized> Job for Shared<T, W> {
    fn run(&self, finishing: &dyn Fn()) {
        if self.claim() {
            self.run_claimed(finishing);
        } else {
            finishing();
        }
    }

    fn cancel(&self) -> bool {
        self.cancel_with(Error::Cancelled)
    }

    fn fail_if_pending(&self, err: Error) {
        self.cancel_with(err);
    }
}

fn run_callbacks<T>(callbacks: Vec<Callback<T>>, result: &Result<T, Error>) {
    for cb in callbacks {
        run_callback(cb, result);
    }
}

fn run_callback<T>(cb: Callback<T>, result: &Result<T, Error>) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| cb(result))) {
        log::error!(
            "a done-callback panicked (the other callbacks still run): {}",
            crate::error::panic_message(&*p)
        );
    }
}

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
            .field("task", &self.shared.tag.id)
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
    /// Called from a task of the same pool on a task that has not started,
    /// it runs that task on the calling thread instead of sleeping, so nested
    /// submit-and-wait works with one worker. If the wait could never end
    /// (tasks waiting on each other in a cycle) it returns
    /// [`Error::Deadlock`] at once instead of hanging.
    pub fn result(self) -> Result<T, Error> {
        self.shared.wait_until(None)?;
        let mut g = self.shared.lock();
        self.shared.take(&mut g)
    }

    /// Like [`result`](Self::result), but gives up with [`Error::Timeout`]
    /// after `timeout`. The task keeps running. A timed wait never helps and
    /// is never refused as a deadlock: it ends by itself.
    pub fn result_timeout(self, timeout: Duration) -> Result<T, Error> {
        if !self.shared.wait_until(Some(deadline_after(timeout)))? {
            return Err(Error::Timeout);
        }
        let mut g = self.shared.lock();
        self.shared.take(&mut g)
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
        self.shared.wait_until(None).map(|_| ())
    }

    /// Blocks until the task ends or `timeout` passes; true when it ended.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        matches!(
            self.shared.wait_until(Some(deadline_after(timeout))),
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
    /// A task that has not started is cancelled, as by [`cancel`](Self::cancel).
    /// A process task that runs has its worker process killed (the pool
    /// starts a replacement and re-sends the other tasks that worker held);
    /// its future ends in [`Error::Killed`] shortly after this returns. A
    /// process task that was handed to a worker but had not started there
    /// ends in `Killed` at once; the worker may still run it, and its result
    /// is dropped.
    ///
    /// Returns true if the task was cancelled or is being stopped; false if
    /// it had finished, or if it runs on a thread, which cannot be stopped
    /// from outside.
    pub fn kill(&self) -> bool {
        if self.cancel() {
            return true;
        }
        match (self.shared.work.stopper(), self.running()) {
            (Some(stop), true) => {
                stop(self.shared.tag.id);
                true
            }
            _ => false,
        }
    }

    /// True if the task was cancelled.
    pub fn cancelled(&self) -> bool {
        matches!(self.shared.lock().state, State::Cancelled)
    }

    /// True while the task runs (for a process pool: from the moment it is
    /// sent to a worker, as in Python).
    pub fn running(&self) -> bool {
        matches!(self.shared.lock().state, State::Running)
    }

    /// True if the task was cancelled or has finished.
    pub fn done(&self) -> bool {
        self.shared.is_done()
    }

    /// Calls `f` with the result once the task ends.
    ///
    /// If the task is still pending or running, `f` runs on the thread that
    /// completes it (a pool thread or a process pool's reader thread), before
    /// `result()` returns to anyone, or on the thread that cancels it. If the
    /// task has already ended, `f` runs at once on the caller's thread (or,
    /// if another callback added after the end is running at that moment, on
    /// that callback's thread, right after it). No lock is held while a
    /// callback runs, so it may use this same future. A panicking callback is
    /// caught and logged; the other callbacks still run.
    pub fn add_done_callback<F>(&self, f: F)
    where
        F: FnOnce(&Result<T, Error>) + Send + 'static,
    {
        let mut g = self.shared.lock();
        match &g.state {
            State::Pending | State::Running => g.extras().callbacks.push(Box::new(f)),
            State::Cancelled => {
                drop(g);
                run_callback(Box::new(f), &Err(Error::Cancelled));
            }
            State::Finished(r) => {
                let failed = r.is_err();
                let State::Finished(r) = std::mem::replace(&mut g.state, State::Lent { failed })
                else {
                    return;
                };
                let r = r.map_err(|e| *e);
                drop(g);
                run_callback(Box::new(f), &r);
                // Callbacks added while the result was lent run here too.
                let mut g = self.shared.lock();
                loop {
                    let callbacks = g.take_callbacks();
                    if callbacks.is_empty() {
                        break;
                    }
                    drop(g);
                    run_callbacks(callbacks, &r);
                    g = self.shared.lock();
                }
                g.state = State::Finished(r.map_err(Box::new));
            }
            State::Lent { .. } => g.extras().callbacks.push(Box::new(f)),
            State::Taken => {
                drop(g);
                run_callback(
                    Box::new(f),
                    &Err(Error::InvalidArgument {
                        reason: "the result of this future was already taken by .await".into(),
                    }),
                );
            }
        }
    }
}

impl<T: Send + 'static> std::future::Future for Future<T> {
    type Output = Result<T, Error>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = &self.shared;
        let mut g = shared.lock();
        if g.state.is_done() {
            return Poll::Ready(shared.take(&mut g));
        }
        let extras = g.extras();
        match &extras.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => extras.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// `now + timeout`, saturating far in the future for huge timeouts.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trivial task's state (result, closure and all) fits in two cache
    /// lines, the 128-byte class of [`crate::recycle`].
    #[test]
    fn a_small_task_state_fits_in_two_cache_lines() {
        fn state_of<F: FnOnce() -> Result<u64, Error> + Send + 'static>(f: F) -> usize {
            let (shared, job) = Shared::new(0, None, f);
            drop(job);
            std::mem::size_of_val(&*shared)
        }
        let n = 7u64;
        let size = state_of(move || Ok(n + 1));
        assert!(size <= 128, "a u64 task's state takes {size} bytes");
    }
}
