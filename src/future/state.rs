//! The state of one task, shared by its [`Future`](super::Future) and by
//! whoever runs it, for both back ends.
//!
//! ```text
//!   Pending ──claim──▶ Running ──complete──▶ Finished
//!      │                  └─(process task)─▶ Completing ──▶ Finished
//!      └──cancel──▶ Cancelled
//! ```
//!
//! A thread-pool task carries its work inside the state (a [`WorkSlot`]);
//! whoever claims it first runs it: a worker thread, or a pool thread that
//! blocks on the future and helps (see [`crate::deadlock`]). A process-pool
//! task is pending with no work here (a [`Remote`], which holds what the
//! pool keeps of the task in the same block); its dispatcher claims it when
//! it sends it to a worker ([`Shared::claim_remote`]), and completes it
//! when the answer comes back ([`Shared::complete`]).
//!
//! # The phase word
//!
//! The phase and its flags are one `AtomicU32`, so the common life of a task
//! (claimed, completed, its result taken) takes no lock. Everything rarer
//! (done-callbacks, `wait`/`as_completed` watchers, an async waker, a thread
//! asleep on the condvar) lives behind the mutex, in [`Slow`], which with
//! the condvar, the task's id and its name is made on first use, out of
//! line (a [`Side`]): a task that nobody waits for the slow way never has
//! one.
//!
//! # The layout
//!
//! Thousands of tasks may be outstanding at once, so a task's block is kept
//! small: a [`Head`] of 24 bytes (the count of handles and the phase word,
//! the pool, the pointer to the [`Side`]), then the work, whose memory the
//! outcome takes over once the work has been moved out to run (the
//! [`Stage`] of a thread task). A task with a `u64` result and a closure
//! that captures a `u64` is 40 bytes, 48 with glibc's header; a process
//! task with a `u64` result and a small argument is 72, 80 with the header
//! (its layout is drawn in `process/task.rs`).
//!
//! | bits | name | meaning | set by | under the mutex? |
//! |---|---|---|---|---|
//! | 0..3 | `PENDING` (0) | not started; the work is still in its slot | [`Shared::build`] | no (not shared yet) |
//! | 0..3 | `RUNNING` (1) | claimed: this thread, or a worker process, owns the work | the claimer, by CAS from `PENDING` | no |
//! | 0..3 | `COMPLETING` (2) | a process task's (or a failed pending task's) one completer is chosen and writes the outcome | that completer, by CAS from `PENDING`/`RUNNING` | no |
//! | 0..3 | `FINISHED` (3) | the outcome is written and published | the completer | only when `SLOW` is set |
//! | 0..3 | `CANCELLED` (4) | ended without running; there is no outcome in the cell | the canceller, by CAS from `PENDING` | only when `SLOW` is set |
//! | 3 | `FAILED` | with `FINISHED`: the outcome is an error | the completer, with `FINISHED` | as `FINISHED` |
//! | 4 | `SLOW` | someone uses the mutex side: the task must end under the mutex | whoever adds a callback, watcher, waker or sleeper | yes, always |
//! | 5 | `TAKEN` | with `FINISHED`: `.await` moved the outcome out | the future's owner, in `poll` | no (the owner is alone) |
//! | 6 | `LENT` | with `FINISHED`: done-callbacks borrow the outcome, which one thread holds; `result()` and `.await` wait | the completer, with `FINISHED`; or `add_done_callback` on a finished future | yes, set and cleared |
//!
//! The rule that makes the lock-free path safe: `SLOW` is only ever set
//! under the mutex, and a completer that sees it clear publishes with one
//! compare-and-swap from the exact word it looked at. If someone set `SLOW`
//! meanwhile, the swap fails and the completer ends the task under the
//! mutex instead, where it sees everything that was added.
//!
//! The phase bits themselves move forward only, and each move out of
//! `PENDING` (or into `COMPLETING`) is a compare-and-swap: exactly one
//! thread wins it, and that thread alone touches the work and writes the
//! outcome.
//!
//! # Callbacks run after the task is published
//!
//! As in Python, the end of a task is published first (the phase becomes
//! final, sleepers, watchers and the waker are woken), and the
//! done-callbacks run after that, on the thread that ended the task:
//! inside a callback the future is done, and a wait on it returns at once.
//! No lock is held while a callback runs.
//!
//! Callbacks borrow the outcome (`&Result<T, Error>`), while `result()` and
//! `.await` move it out. So a completer with callbacks to run publishes
//! `FINISHED | LENT`, keeps the outcome on its stack while the callbacks
//! run (and those added meanwhile, which queue up for it), then puts it in
//! the cell and clears `LENT` under the mutex, waking whoever waits to take
//! it. `done()` and `wait` look for the final phase ([`Until::Ended`]);
//! `result()` and `.await` also for `LENT` to be clear
//! ([`Until::Takeable`]). A callback added after the end lends the outcome
//! the same way. A cancelled task has no outcome to lend: its callbacks get
//! their own `Err(Cancelled)` (or the error a pending task was failed with),
//! after the cancellation is published.
//!
//! A thread pool's `finishing` hook (see [`Job::run`]) runs just before the
//! outcome can be taken: after the callbacks, if any, else just before the
//! task is published. A submit that follows `result()` then finds the
//! thread idle.
//!
//! # Model checks
//!
//! The atomics, mutex, condvar and cells here come from [`crate::sync`],
//! so that under `--cfg loom` the models in `src/future/loom.rs` explore
//! every interleaving of the races above: completion against
//! `add_done_callback`, cancel against claim, completion against a waiter
//! going to sleep, and callbacks borrowing the outcome against `result()`
//! and `.await` taking it.

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::waiting;
use crate::deadlock::{self, Tagged};
use crate::recycle::{self, Counted};
use crate::sync::{AtomicPtr, AtomicU32, Condvar, Mutex, MutexGuard, Ordering, UnsafeCell};
use crate::Error;

/// The work of a thread-pool task, when it has to be boxed.
pub(crate) type Work<T> = Box<dyn FnOnce() -> Result<T, Error> + Send>;
/// A done-callback, boxed.
pub(super) type Callback<T> = Box<dyn FnOnce(&Result<T, Error>) + Send>;
/// Told when a future ends; used by `wait` and `as_completed`.
pub(crate) type Watcher = Arc<dyn Fn() + Send + Sync>;
/// The outcome as its cell holds it: the error boxed, so that the cell of
/// a small result stays small.
type Outcome<T> = Option<Result<T, Box<Error>>>;

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

/// The phase, in the low bits of [`Shared::phase`].
const PHASE: u32 = 0b111;
/// Not started.
const PENDING: u32 = 0;
/// Claimed: running on a thread, or sent to a worker process.
const RUNNING: u32 = 1;
/// A process task's one completer has been chosen and is writing the outcome.
const COMPLETING: u32 = 2;
/// The outcome is written and published.
const FINISHED: u32 = 3;
const CANCELLED: u32 = 4;
/// With `FINISHED`: the outcome is an error.
const FAILED: u32 = 1 << 3;
/// Something waits on the mutex side (callbacks, watchers, a waker, a
/// sleeping thread): the task must end under the mutex.
const SLOW: u32 = 1 << 4;
/// With `FINISHED`: `.await` moved the outcome out.
const TAKEN: u32 = 1 << 5;
/// With `FINISHED`: one thread runs done-callbacks that borrow the outcome;
/// it holds the outcome meanwhile, and nobody may take it. Callbacks added
/// meanwhile queue up for that thread.
const LENT: u32 = 1 << 6;

/// Finished or cancelled: `done()`, and `wait` returns.
fn is_done(word: u32) -> bool {
    matches!(word & PHASE, FINISHED | CANCELLED)
}

/// Done, and no callback borrows the outcome: `result()` may take it.
fn is_takeable(word: u32) -> bool {
    is_done(word) && word & LENT == 0
}

/// What a wait waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// The task ended: `wait` and its kin.
    Ended,
    /// The task ended and no callback borrows its outcome: `result`.
    Takeable,
}

impl Until {
    fn reached(self, word: u32) -> bool {
        match self {
            Until::Ended => is_done(word),
            Until::Takeable => is_takeable(word),
        }
    }
}

/// What sits behind the mutex.
struct Slow<T> {
    /// Callbacks, watchers and a waker: most futures never have any, so
    /// they live in a box made on first use, which keeps every task small.
    extras: Option<Box<Extras<T>>>,
    /// Threads blocked on the condvar; completion skips the notify when 0.
    sleepers: u32,
    /// When the task ended, if a thread slept on it: so that the sleeper
    /// can tell how long its wait was, apart from how long it took to be
    /// woken (see [`waiting::record`]).
    ended: Option<Instant>,
}

struct Extras<T> {
    callbacks: Vec<Callback<T>>,
    watchers: Vec<(u64, Watcher)>,
    waker: Option<Waker>,
}

impl<T> Slow<T> {
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

/// The stoppers of the live process pools (and MPI pools), by pool id. A
/// task's state names its pool by id only, so that no queued task pays for
/// a pointer to its stopper; [`Future::kill`](super::Future::kill), which is
/// rare, looks the stopper up here. A pool's entry is removed when its
/// [`StopperEntry`] drops.
static STOPPERS: std::sync::Mutex<Vec<(u64, Stopper)>> = std::sync::Mutex::new(Vec::new());

/// A pool's place in [`STOPPERS`], for as long as the pool lives.
#[cfg_attr(not(feature = "process"), allow(dead_code))]
pub(crate) struct StopperEntry(u64);

impl StopperEntry {
    /// Lets `kill()` stop the running tasks of pool `pool` with `stop`.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn new(pool: u64, stop: impl Fn(u64) + Send + Sync + 'static) -> StopperEntry {
        let mut all = STOPPERS.lock().unwrap_or_else(PoisonError::into_inner);
        all.push((pool, Arc::new(stop)));
        StopperEntry(pool)
    }
}

impl Drop for StopperEntry {
    fn drop(&mut self) {
        let mut all = STOPPERS.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|(pool, _)| *pool != self.0);
    }
}

/// The stopper of pool `pool`, if it is alive.
fn stopper_of(pool: u64) -> Option<Stopper> {
    let all = STOPPERS.lock().unwrap_or_else(PoisonError::into_inner);
    all.iter().find(|(p, _)| *p == pool).map(|(_, s)| s.clone())
}

/// The work of a task and the cell of its outcome, kept in the same
/// allocation as its state (one allocation per task, not two).
///
/// Access rule: while the task is `Pending` the slot holds the work, which
/// is touched only by the thread that moves the task out of `Pending` (to
/// run it, or to cancel it and drop it); the compare-and-swap on the phase
/// word makes that thread unique. That thread leaves an empty outcome cell
/// in its place ([`run`](Self::run), [`discard`](Self::discard)); from
/// then on the cell is touched as [`Shared`] says of the outcome.
pub(crate) trait WorkSlot<T>: Send + Sync {
    /// True for thread tasks, false for process tasks (their work is in the
    /// worker).
    fn has_work(&self) -> bool;
    /// Moves the work out, leaves an empty outcome cell, and runs the work.
    ///
    /// # Safety
    /// Only the thread that moved the task from `Pending` to `Running` may
    /// call it, once.
    unsafe fn run(&self) -> Option<Result<T, Error>>;
    /// Drops the work without running it and leaves an empty outcome cell.
    ///
    /// # Safety
    /// Only the thread that moved the task out of `Pending` may call it,
    /// once.
    unsafe fn discard(&self);
    /// Puts the outcome in its (empty) cell.
    ///
    /// # Safety
    /// The work has been moved out or discarded, and this thread alone may
    /// touch the cell now (see [`Shared`]).
    unsafe fn put(&self, outcome: Result<T, Box<Error>>);
    /// Moves the outcome out of its cell, if it is there.
    ///
    /// # Safety
    /// As for [`put`](Self::put).
    unsafe fn take(&self) -> Outcome<T>;
    /// Drops what the slot holds: the work if the task is still `pending`,
    /// else the outcome, if any.
    ///
    /// # Safety
    /// Called once, as the state is dropped (nobody else holds it).
    unsafe fn drop_slot(&mut self, pending: bool);
    /// For process tasks: the id given when the task was made (a process
    /// task needs one at once, to name it to the scheduler). A thread task
    /// gets its id from its [`Side`], when first asked.
    fn fixed_id(&self) -> Option<u64> {
        None
    }
}

/// A thread task's work, then its outcome, in the same bytes.
union Stage<T, F> {
    work: ManuallyDrop<F>,
    outcome: ManuallyDrop<Outcome<T>>,
}

/// A thread task's closure, which its outcome replaces once it runs.
pub(crate) struct Closure<T, F>(UnsafeCell<Stage<T, F>>);

// SAFETY: the stage is only touched as `WorkSlot` says: the work by the one
// thread that moved the task out of `Pending`, the outcome by one thread at
// a time. Sharing the slot so only ever moves `F` and `T` to another thread:
// `F: Send` and `T: Send` are enough. (`Send` itself is derived: the union
// is `Send` when its fields are.)
unsafe impl<T: Send, F: Send> Sync for Closure<T, F> {}

impl<T, F> WorkSlot<T> for Closure<T, F>
where
    F: FnOnce() -> Result<T, Error> + Send,
    T: Send,
{
    fn has_work(&self) -> bool {
        true
    }
    unsafe fn run(&self) -> Option<Result<T, Error>> {
        // SAFETY: the caller is the only thread touching the stage, which
        // holds the work (the task was pending): it is moved out once, and
        // an empty outcome written over it before it runs, so that a panic
        // in it leaves the stage valid.
        let f = self.0.with_mut(|s| unsafe {
            let f = ManuallyDrop::take(&mut (*s).work);
            (*s).outcome = ManuallyDrop::new(None);
            f
        });
        Some(f())
    }
    unsafe fn discard(&self) {
        // SAFETY: as for `run`.
        let f = self.0.with_mut(|s| unsafe {
            let f = ManuallyDrop::take(&mut (*s).work);
            (*s).outcome = ManuallyDrop::new(None);
            f
        });
        drop(f);
    }
    unsafe fn put(&self, outcome: Result<T, Box<Error>>) {
        // SAFETY: the caller's promise: the stage holds the outcome cell,
        // and only this thread touches it.
        self.0
            .with_mut(|s| unsafe { *(*s).outcome = Some(outcome) });
    }
    unsafe fn take(&self) -> Outcome<T> {
        // SAFETY: as for `put`.
        self.0.with_mut(|s| unsafe { (*(*s).outcome).take() })
    }
    unsafe fn drop_slot(&mut self, pending: bool) {
        // SAFETY: the caller's promise; the phase says which field is live:
        // the work until the task leaves `Pending`, the outcome after.
        self.0.with_mut(|s| unsafe {
            if pending {
                ManuallyDrop::drop(&mut (*s).work);
            } else {
                ManuallyDrop::drop(&mut (*s).outcome);
            }
        });
    }
}

/// A process task has no work here: its worker runs it. It holds its id,
/// the outcome cell, and `X`: what the pool keeps of the task (for a
/// process pool, its name and encoded argument; see `process/task.rs`), so
/// that a queued process task is one block, not two. Keeping the id here
/// rather than in a [`Side`] spares every queued process task that
/// allocation: a side is made only if someone sleeps on the task. How to
/// stop the task is found by its pool's id ([`STOPPERS`]).
#[cfg_attr(not(feature = "process"), allow(dead_code))]
pub(crate) struct Remote<T, X = ()> {
    outcome: UnsafeCell<Outcome<T>>,
    id: u64,
    extra: X,
}

/// A process task's state, with `X` beside it.
pub(crate) type RemoteState<T, X> = Shared<T, Remote<T, X>>;

// SAFETY: the outcome cell is only touched by one thread at a time (see
// `Shared`), which only moves `T` between threads: `T: Send` is enough;
// `X` is shared as it is, so it must be `Sync` itself.
unsafe impl<T: Send, X: Sync> Sync for Remote<T, X> {}

impl<T: Send, X: Send + Sync> WorkSlot<T> for Remote<T, X> {
    fn has_work(&self) -> bool {
        false
    }
    unsafe fn run(&self) -> Option<Result<T, Error>> {
        None
    }
    unsafe fn discard(&self) {}
    unsafe fn put(&self, outcome: Result<T, Box<Error>>) {
        // SAFETY: the caller's promise.
        self.outcome
            .with_mut(|cell| unsafe { *cell = Some(outcome) });
    }
    unsafe fn take(&self) -> Outcome<T> {
        // SAFETY: the caller's promise.
        self.outcome.with_mut(|cell| unsafe { (*cell).take() })
    }
    unsafe fn drop_slot(&mut self, _pending: bool) {
        // The cell drops itself.
    }
    fn fixed_id(&self) -> Option<u64> {
        Some(self.id)
    }
}

/// The state one task shares between its `Future` and whoever runs it:
/// its [`Head`], then the task's work and outcome (`W`: a [`Closure`] or a
/// [`Remote`], erased to `dyn WorkSlot<T>` once built).
///
/// The outcome cell (in `W`) is written by the thread that completes the
/// task, before it publishes `FINISHED` without `LENT` (or before it clears
/// `LENT`); after that it is only moved out by the future's owner (`result`
/// consumes the future, `poll` has it `&mut`) once `LENT` is clear, or lent
/// to callbacks by the one thread that sets `LENT` (under the mutex), which
/// puts it back before it clears `LENT`.
///
/// `repr(C)` with the count first: see [`recycle::place`]. It is `Sync`
/// because its parts are: `W`'s own `Sync` asks `T: Send`, as the outcome
/// moves between threads.
#[repr(C)]
pub(crate) struct Shared<T, W: ?Sized + WorkSlot<T> = dyn WorkSlot<T>> {
    head: Head<T>,
    work: W,
}

/// The part of a task's state that does not depend on its work.
#[repr(C)]
pub(crate) struct Head<T> {
    /// The count of [`Counted`] handles (the future's, the queue's, ...),
    /// which `Counted` reads as the first field.
    refs: AtomicU32,
    /// The phase and its flags: see the table in the module doc.
    phase: AtomicU32,
    pool: u64,
    /// The [`Side`], null until first needed; set once (by compare and
    /// swap), freed with the state.
    side: AtomicPtr<Side<T>>,
}

/// What a task needs only when someone waits for it the slow way, or asks
/// who it is: made on first use ([`Head::side`]).
struct Side<T> {
    slow: Mutex<Slow<T>>,
    cond: Condvar,
    /// The task's id, unique in this process, given when the side is made.
    id: u64,
    /// The task's name, for named tasks.
    name: Option<Arc<str>>,
}

impl<T> Side<T> {
    fn new(name: Option<Arc<str>>) -> Box<Side<T>> {
        Box::new(Side {
            slow: Mutex::new(Slow {
                extras: None,
                sleepers: 0,
                ended: None,
            }),
            cond: Condvar::new(),
            id: next_task_id(),
            name,
        })
    }
}

impl<T> Head<T> {
    /// The side, made now if it is not there yet.
    fn side(&self) -> &Side<T> {
        let side = self.side.load(Ordering::Acquire);
        if !side.is_null() {
            // SAFETY: once set, the side lives as long as the state.
            return unsafe { &*side };
        }
        let new = Box::into_raw(Side::new(None));
        match self
            .side
            .compare_exchange(null_mut(), new, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: set now, it lives as long as the state.
            Ok(_) => unsafe { &*new },
            Err(won) => {
                // SAFETY: `new` was never shared.
                drop(unsafe { Box::from_raw(new) });
                // SAFETY: as above.
                unsafe { &*won }
            }
        }
    }
}

impl<T> Drop for Head<T> {
    fn drop(&mut self) {
        let side = self.side.load(Ordering::Acquire);
        if !side.is_null() {
            // SAFETY: made by `Box::into_raw` in `side` or `build`, and the
            // state (dropped now) was its only owner.
            drop(unsafe { Box::from_raw(side) });
        }
    }
}

impl<T> Tagged for Head<T> {
    fn task_id(&self) -> u64 {
        self.side().id
    }
    fn task_name(&self) -> Option<Arc<str>> {
        self.side().name.clone()
    }
}

impl<T, W: ?Sized + WorkSlot<T>> Drop for Shared<T, W> {
    fn drop(&mut self) {
        let pending = self.head.phase.load(Ordering::Acquire) & PHASE == PENDING;
        // SAFETY: dropped once, with the last handle; the phase says which
        // of work and outcome the slot holds.
        unsafe { self.work.drop_slot(pending) };
    }
}

/// A task in a thread pool's queue, with its result type erased.
pub(crate) trait Job: Send + Sync {
    /// Runs the task on this thread unless it was cancelled or claimed.
    /// `finishing` is called exactly once on this thread: just before the
    /// task's result can be taken by `result()` (after its done-callbacks,
    /// which run once the task is published as done), or at once if there
    /// was nothing to run. A pool counts its thread idle there, so a submit
    /// that follows a `result()` finds the thread idle. Returns whether it
    /// ran here, and if so whether it ended in an error: `Some(failed)`.
    fn run(&self, finishing: &dyn Fn()) -> Option<bool>;
    /// Cancels the task if it has not started.
    fn cancel(&self) -> bool;
    /// Fails the task with `err` if it has not started.
    fn fail_if_pending(&self, err: Error);
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
        let work = Closure(UnsafeCell::new(Stage {
            work: ManuallyDrop::new(work),
        }));
        // SAFETY: `Shared` is `repr(C)` and starts with its count; two
        // handles for a count of two.
        unsafe {
            let ptr = recycle::place(Shared::build(pool, name, work), 2);
            (Counted::from_raw(ptr), Counted::from_raw(ptr))
        }
    }

    /// A new pending process task of pool `pool`, with `extra` (what the
    /// pool keeps of it) in the same block: the future's handle, and the
    /// pool's, which sees `extra`. It has no name here (its name travels
    /// with the task to the worker, and the name a state keeps only serves
    /// thread tasks that run in this process), so it needs no [`Side`]
    /// until someone sleeps on it.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn remote<X: Send + Sync + 'static>(
        pool: u64,
        extra: X,
    ) -> (Counted<Self>, Counted<RemoteState<T, X>>) {
        let remote = Remote {
            outcome: UnsafeCell::new(None),
            id: next_task_id(),
            extra,
        };
        // SAFETY: `Shared` is `repr(C)` and starts with its count; two
        // handles for a count of two.
        unsafe {
            let ptr = recycle::place(Shared::build(pool, None, remote), 2);
            (Counted::from_raw(ptr), Counted::from_raw(ptr))
        }
    }
}

impl<T: Send, X: Send + Sync> Shared<T, Remote<T, X>> {
    /// What the pool keeps of this process task.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn extra(&self) -> &X {
        &self.work.extra
    }
}

impl<T, W: WorkSlot<T>> Shared<T, W> {
    /// A pending task. A named task gets its side at once (it holds the
    /// name); others when first needed.
    fn build(pool: u64, name: Option<Arc<str>>, work: W) -> Self {
        let side = match name {
            Some(name) => Box::into_raw(Side::new(Some(name))),
            None => null_mut(),
        };
        Shared {
            head: Head {
                refs: AtomicU32::new(0),
                phase: AtomicU32::new(PENDING),
                pool,
                side: AtomicPtr::new(side),
            },
            work,
        }
    }
}

impl<T, W: ?Sized + WorkSlot<T>> Shared<T, W> {
    /// The task's id, unique in this process: a process task's from its
    /// slot, a thread task's from its side (given on first use).
    pub(crate) fn id(&self) -> u64 {
        match self.work.fixed_id() {
            Some(id) => id,
            None => self.head.side().id,
        }
    }
}

impl<T: Send + 'static, W: WorkSlot<T> + ?Sized + 'static> Shared<T, W> {
    /// Puts `result` in the outcome cell.
    ///
    /// # Safety
    /// This thread alone may touch the cell now (see [`Shared`]), and the
    /// work is out of the slot.
    unsafe fn put_outcome(&self, result: Result<T, Error>) {
        // SAFETY: the caller's promise.
        unsafe { self.work.put(result.map_err(Box::new)) };
    }

    /// Moves the outcome out of its cell, if it is there.
    ///
    /// # Safety
    /// As for [`put_outcome`](Self::put_outcome).
    unsafe fn take_outcome(&self) -> Option<Result<T, Error>> {
        // SAFETY: the caller's promise.
        let boxed = unsafe { self.work.take() };
        boxed.map(|r| r.map_err(|e| *e))
    }

    fn lock(&self) -> MutexGuard<'_, Slow<T>> {
        // User code never runs under this lock, so a poisoned lock (a panic
        // in the library itself) still holds valid data.
        (self.head.side().slow)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the mutex side and sets `SLOW`, so that the task ends under
    /// the lock from now on; returns the guard and the word as it was.
    fn lock_slow(&self) -> (MutexGuard<'_, Slow<T>>, u32) {
        let g = self.lock();
        let word = self.head.phase.fetch_or(SLOW, Ordering::AcqRel);
        (g, word)
    }

    /// Moves the phase from `from` to `to`, keeping the flags; false if the
    /// phase is not `from`.
    fn advance(&self, from: u32, to: u32) -> bool {
        self.advance_from(&[from], to)
    }

    /// Moves the phase from any of `from` to `to`, keeping the flags; false
    /// if the phase is none of them.
    fn advance_from(&self, from: &[u32], to: u32) -> bool {
        let mut word = self.head.phase.load(Ordering::Acquire);
        loop {
            if !from.contains(&(word & PHASE)) {
                return false;
            }
            match self.head.phase.compare_exchange_weak(
                word,
                (word & !PHASE) | to,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// Moves a pending thread task to running: true if this thread now owns
    /// its work; false if it was cancelled or claimed, or runs elsewhere.
    fn claim(&self) -> bool {
        self.work.has_work() && self.advance(PENDING, RUNNING)
    }

    /// For process tasks: marks the task running as it is sent to a worker.
    /// False if it was cancelled (it must then not be sent).
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn claim_remote(&self) -> bool {
        !self.work.has_work() && self.advance(PENDING, RUNNING)
    }

    /// Runs the work this thread claimed, catching a panic, and completes
    /// the future.
    /// Returns whether the task failed: known here before the result is
    /// published, so that the pool thread's count does not read the phase
    /// word again once a waiter has it in its cache.
    fn run_claimed(&self, finishing: &dyn Fn()) -> bool {
        let outcome = deadlock::running(&self.head, || {
            // SAFETY: the caller claimed the task, so this thread alone may
            // touch its work, and it does so once.
            catch_unwind(AssertUnwindSafe(|| unsafe { self.work.run() }))
        });
        let result = match outcome {
            Ok(Some(r)) => r,
            Ok(None) => Err(Error::Cancelled),
            Err(p) => Err(Error::from_panic(p)),
        };
        let failed = result.is_err();
        // SAFETY: this thread claimed the task: it is its one completer.
        unsafe { self.publish(result, finishing) };
        failed
    }

    /// Ends a process task with `result` (it may not have been sent yet,
    /// e.g. when its argument could not be encoded): waiters, then
    /// callbacks. Of several threads that race to complete it, the first wins
    /// and the others' results are dropped.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn complete(&self, result: Result<T, Error>) {
        if self.advance_from(&[PENDING, RUNNING], COMPLETING) {
            // SAFETY: moving it to `COMPLETING` made this thread the one
            // completer.
            unsafe { self.publish(result, &|| {}) };
        }
    }

    /// Publishes `result` and wakes whoever waits, then runs the
    /// done-callbacks; calls `finishing` just before the result can be
    /// taken.
    ///
    /// # Safety
    /// Only the task's one completer calls it, once: the thread that claimed
    /// a thread task, or that moved a process task to `COMPLETING`.
    unsafe fn publish(&self, result: Result<T, Error>, finishing: &dyn Fn()) {
        let word = self.head.phase.load(Ordering::Acquire);
        if word & SLOW != 0 {
            // SAFETY: the caller's promise.
            return unsafe { self.publish_slow(result, finishing) };
        }
        finishing();
        // SAFETY: the caller's promise.
        if let Err(result) = unsafe { self.publish_fast(word, result) } {
            // SAFETY: the caller's promise; `finishing` was called.
            unsafe { self.publish_slow(result, &|| {}) };
        }
    }

    /// Publishes `result` without the lock, if the phase word is still
    /// `word` (which has no `SLOW`); gives it back if someone set `SLOW`
    /// meanwhile, and the task must end under the lock.
    ///
    /// # Safety
    /// As for [`publish`](Self::publish).
    unsafe fn publish_fast(
        &self,
        word: u32,
        result: Result<T, Error>,
    ) -> Result<(), Result<T, Error>> {
        let done = (word & !PHASE) | FINISHED | if result.is_err() { FAILED } else { 0 };
        // SAFETY: the outcome is not published yet, and this thread is the
        // one completer: nobody else touches the cell.
        unsafe { self.put_outcome(result) };
        match (self.head.phase).compare_exchange(word, done, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => Ok(()),
            // SAFETY: as above, it is still unpublished.
            Err(_) => match unsafe { self.take_outcome() } {
                Some(result) => Err(result),
                None => Ok(()),
            },
        }
    }

    /// Ends the task under the lock, in Python's order: publishes it as
    /// finished and wakes sleepers, watchers and the waker; then, if there
    /// are done-callbacks, runs them (also those added while they run) with
    /// the outcome lent to them (`LENT`), and only then lets `result()`
    /// take it. `finishing` is called just before that.
    ///
    /// # Safety
    /// As for [`publish`](Self::publish).
    unsafe fn publish_slow(&self, result: Result<T, Error>, finishing: &dyn Fn()) {
        let failed = if result.is_err() { FAILED } else { 0 };
        let mut g = self.lock();
        let callbacks = g.take_callbacks();
        if callbacks.is_empty() {
            finishing();
            // SAFETY: the outcome is not published yet, and this thread is
            // the one completer; `SLOW` is set, so nobody reads the cell
            // before the phase is published below, under the lock.
            unsafe { self.put_outcome(result) };
            self.end_locked(g, FINISHED | failed);
            return;
        }
        // Done from here on, but the outcome stays with this thread while
        // callbacks borrow it; callbacks added meanwhile queue up for it.
        self.end_locked(g, FINISHED | failed | LENT);
        run_callbacks(callbacks, &result);
        // SAFETY: this thread set `LENT` above.
        unsafe { self.end_lending(result, finishing) };
    }

    /// Publishes the final phase `fin` (with its flags) under the lock `g`,
    /// then wakes sleepers, watchers and the waker; releases the lock.
    fn end_locked(&self, g: MutexGuard<'_, Slow<T>>, fin: u32) {
        // Nobody else changes the word now: flags are set under the lock,
        // and the phase is this thread's to move.
        let word = self.head.phase.load(Ordering::Relaxed);
        self.head
            .phase
            .store((word & !PHASE) | fin, Ordering::Release);
        self.wake_all(g);
    }

    /// After the phase became final under the lock: wakes sleepers,
    /// watchers and the waker; releases the lock.
    fn wake_all(&self, mut g: MutexGuard<'_, Slow<T>>) {
        let sleepers = g.sleepers > 0;
        if sleepers && crate::sync::SPIN {
            g.ended = Some(Instant::now());
        }
        let (watchers, waker) = match g.extras.as_mut() {
            Some(extras) => (std::mem::take(&mut extras.watchers), extras.waker.take()),
            None => (Vec::new(), None),
        };
        drop(g);
        if sleepers {
            self.head.side().cond.notify_all();
        }
        for (_, w) in watchers {
            w();
        }
        if let Some(w) = waker {
            // Someone else's code: a panic in it must not stop this thread
            // halfway through ending the task.
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| w.wake())) {
                log::error!(
                    "an async waker panicked when woken: {}",
                    crate::error::panic_message(&*p)
                );
                crate::error::drop_panic_payload(p);
            }
        }
    }

    /// Runs the callbacks queued while this thread lent the outcome to
    /// callbacks, calls `finishing`, puts the outcome back in the cell and
    /// clears `LENT`; then wakes those waiting to take it (`result()`, a
    /// waker).
    ///
    /// # Safety
    /// This thread set `LENT`, and holds the outcome taken out of the cell
    /// (or never put in).
    unsafe fn end_lending(&self, result: Result<T, Error>, finishing: &dyn Fn()) {
        let mut g = self.lock();
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
        // SAFETY: `LENT` keeps everyone else off the cell until it is
        // cleared just below, under the lock.
        unsafe { self.put_outcome(result) };
        self.head.phase.fetch_and(!LENT, Ordering::Release);
        self.wake_all(g);
    }

    /// Ends a pending task with `err` (`Cancelled` gives the cancelled
    /// state). True if it was pending, or already cancelled.
    pub(crate) fn cancel_with(&self, err: Error) -> bool {
        let cancelling = err == Error::Cancelled;
        let to = if cancelling { CANCELLED } else { COMPLETING };
        if !self.advance(PENDING, to) {
            return self.head.phase.load(Ordering::Acquire) & PHASE == CANCELLED;
        }
        if !cancelling {
            // The outcome takes the work's place: drop the work first. It
            // may own anything, even the last handle of an executor: no
            // lock is held here.
            // SAFETY: this thread moved the task out of `Pending`.
            unsafe { self.work.discard() };
            // SAFETY: moving it to `COMPLETING` made this thread the one
            // completer; the outcome is published below.
            unsafe { self.put_outcome(Err(err.clone())) };
        }
        let fin = if cancelling {
            CANCELLED
        } else {
            FINISHED | FAILED
        };
        let mut word = self.head.phase.load(Ordering::Acquire);
        let callbacks = loop {
            if word & SLOW != 0 {
                let mut g = self.lock();
                let callbacks = g.take_callbacks();
                self.end_locked(g, fin);
                break callbacks;
            }
            match self.head.phase.compare_exchange(
                word,
                (word & !PHASE) | fin,
                Ordering::Release,
                Ordering::Acquire,
            ) {
                Ok(_) => break Vec::new(),
                Err(now) => word = now,
            }
        };
        if cancelling {
            // The work may own anything, even the last handle of an
            // executor: drop it outside the lock. A cancelled task has no
            // outcome, so nobody else touches the slot.
            // SAFETY: this thread moved the task out of `Pending`.
            unsafe { self.work.discard() };
        }
        run_callbacks(callbacks, &Err(err));
        true
    }

    /// Waits until `until` is reached or `deadline` passes: Ok(true) when
    /// it was reached, Ok(false) on timeout. An untimed wait on a pool
    /// thread for a task that has not ended helps (runs the task here if it
    /// has not started) or is refused with `Deadlock` when it could never
    /// end. A wait only for the callbacks of a task that has ended neither
    /// helps nor is checked: those callbacks already run.
    #[inline]
    pub(super) fn wait_until(
        &self,
        until: Until,
        deadline: Option<Instant>,
    ) -> Result<bool, Error> {
        // Most results of a burst are taken when the task has long ended:
        // no wait at all, and nothing to count for the spin.
        if until.reached(self.head.phase.load(Ordering::Acquire)) {
            return Ok(true);
        }
        self.wait_for_end(until, deadline)
    }

    /// [`wait_until`](Self::wait_until) once a first look found the task
    /// not there yet.
    fn wait_for_end(&self, until: Until, deadline: Option<Instant>) -> Result<bool, Error> {
        // Held until this wait returns: the recorded "I wait for this task".
        let mut _edge = None;
        let started = match self.spin_until(until, deadline) {
            Ok(()) => return Ok(true),
            Err(started) => started,
        };
        let mut checked = deadline.is_some() || deadlock::current_pool().is_none();
        let (mut g, _) = self.lock_slow();
        loop {
            let word = self.head.phase.load(Ordering::Acquire);
            if until.reached(word) {
                if let Some(started) = started {
                    let ended = g.ended.unwrap_or_else(Instant::now);
                    waiting::record(ended.saturating_duration_since(started));
                }
                return Ok(true);
            }
            if !checked && !is_done(word) {
                drop(g);
                if !self.try_help() {
                    _edge = deadlock::begin_wait(&[self.id()], true)?;
                    checked = true;
                }
                g = self.lock();
                continue;
            }
            g.sleepers += 1;
            match deadline {
                None => {
                    g = self
                        .head
                        .side()
                        .cond
                        .wait(g)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        g.sleepers -= 1;
                        return Ok(false);
                    }
                    g = (self.head.side().cond)
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            g.sleepers -= 1;
        }
    }

    /// Spins while it pays, in case the task is about to end: that answer
    /// is much cheaper than sleeping and being woken. First a short spin
    /// (under a microsecond), then what [`waiting::next`] says: sleep at
    /// once; on a crowded machine hand the CPU over with a few yields; or
    /// spin with yields for about twice this thread's recent waits.
    /// Ok if `until` was reached;
    /// else when the longer spin began, for [`waiting::record`] once the
    /// wait ends (`None` under loom, where nothing spins).
    fn spin_until(&self, until: Until, deadline: Option<Instant>) -> Result<(), Option<Instant>> {
        let reached = || until.reached(self.head.phase.load(Ordering::Acquire));
        if !crate::sync::SPIN {
            return if reached() { Ok(()) } else { Err(None) };
        }
        for step in 0..waiting::SHORT_SPIN_STEPS {
            if reached() {
                waiting::record(std::time::Duration::ZERO);
                return Ok(());
            }
            for _ in 0..(1u32 << step) {
                std::hint::spin_loop();
            }
        }
        let started = Instant::now();
        // The most yields, and when to stop looking whatever their count.
        let (yields, end) = match waiting::next() {
            waiting::Spin::Sleep => (0, None),
            waiting::Spin::HandOff => (waiting::HAND_OFF, deadline),
            waiting::Spin::Yielding(budget) => {
                let end = started + budget;
                (u32::MAX, Some(deadline.map_or(end, |d| d.min(end))))
            }
        };
        let mut yielded = 0;
        loop {
            if reached() {
                waiting::record(started.elapsed());
                return Ok(());
            }
            if yielded == yields || end.is_some_and(|end| Instant::now() >= end) {
                return Err(Some(started));
            }
            // When the machine is not crowded, this yield costs a system
            // call and gives the CPU away only to a thread the scheduler
            // put on this one, such as the one that will end the task.
            // When it is, it hands this CPU to the worker woken for the
            // task, most often queued here.
            std::thread::yield_now();
            yielded += 1;
        }
    }

    /// On a thread of this task's pool: if the task has not started, runs it
    /// here and returns true.
    pub(crate) fn try_help(&self) -> bool {
        if deadlock::current_pool() != Some(self.head.pool) {
            return false;
        }
        if !self.claim() {
            return false;
        }
        // While it runs inline, the waiting task waits for it: record that so
        // a cycle through it is still seen.
        let edge = deadlock::begin_wait(&[self.id()], true);
        let failed = self.run_claimed(&|| {});
        drop(edge);
        // The pool thread counts it with the task it was running.
        deadlock::note_helped(failed);
        true
    }

    pub(super) fn is_done(&self) -> bool {
        is_done(self.head.phase.load(Ordering::Acquire))
    }

    /// True if the task finished with an error (not counting cancellation).
    pub(crate) fn failed(&self) -> bool {
        let word = self.head.phase.load(Ordering::Acquire);
        word & PHASE == FINISHED && word & FAILED != 0
    }

    /// Calls `w` when the task ends. Returns false, without keeping `w`, if
    /// it has ended already.
    pub(crate) fn watch(&self, key: u64, w: Watcher) -> bool {
        let (mut g, word) = self.lock_slow();
        if is_done(word) {
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

    /// Moves the outcome out of an ended task;
    /// `mark`: remember that it was taken (for `poll`; `result` consumes
    /// the future, so nobody could ask again).
    ///
    /// # Safety
    /// The caller owns the task's `Future` exclusively (`result` consumes
    /// it, `poll` has it `&mut`), so no thread can start lending the
    /// outcome to callbacks but the completer, which sets `LENT` as it
    /// publishes.
    pub(super) unsafe fn take(&self, mark: bool) -> Result<T, Error> {
        let word = self.head.phase.load(Ordering::Acquire);
        match word & PHASE {
            FINISHED if word & (TAKEN | LENT) == 0 => {
                if mark {
                    self.head.phase.fetch_or(TAKEN, Ordering::Relaxed);
                }
                // SAFETY: published, and the caller's exclusivity keeps
                // everyone else off the cell.
                unsafe { self.take_outcome() }.unwrap_or_else(|| Err(taken()))
            }
            CANCELLED => Err(Error::Cancelled),
            FINISHED if word & TAKEN != 0 => Err(taken()),
            _ => Err(Error::InvalidState {
                reason: "the task has not ended yet".into(),
            }),
        }
    }
}

impl<T: Send + 'static> Shared<T> {
    /// True if the task was cancelled.
    pub(super) fn is_cancelled(&self) -> bool {
        self.head.phase.load(Ordering::Acquire) & PHASE == CANCELLED
    }

    /// True while the task runs (claimed, not yet published).
    pub(super) fn is_running(&self) -> bool {
        matches!(
            self.head.phase.load(Ordering::Acquire) & PHASE,
            RUNNING | COMPLETING
        )
    }

    /// How to stop the task once it runs: its pool's stopper, for a
    /// process task whose pool is alive.
    pub(super) fn stopper(&self) -> Option<Stopper> {
        if self.work.has_work() {
            return None;
        }
        stopper_of(self.head.pool)
    }

    /// Runs `cb` with the outcome once the task ends: see
    /// [`Future::add_done_callback`](super::Future::add_done_callback).
    pub(super) fn add_callback(&self, cb: Callback<T>) {
        let (mut g, word) = self.lock_slow();
        if !is_done(word) || word & LENT != 0 {
            // The completer, or the thread the outcome is lent to, runs it.
            g.extras().callbacks.push(cb);
            return;
        }
        if word & PHASE == CANCELLED {
            drop(g);
            run_callback(cb, &Err(Error::Cancelled));
            return;
        }
        // SAFETY: finished and not lent: nobody but the owner touches the
        // cell, and the owner cannot take it while the caller borrows its
        // future. Under the lock, with `LENT` set below before it is
        // released, this thread becomes the one lender.
        let Some(r) = (unsafe { self.take_outcome() }) else {
            drop(g);
            run_callback(cb, &Err(taken()));
            return;
        };
        self.head.phase.fetch_or(LENT, Ordering::Relaxed);
        drop(g);
        run_callback(cb, &r);
        // SAFETY: this thread set `LENT` above and holds the outcome.
        unsafe { self.end_lending(r, &|| {}) };
    }

    /// The `poll` of `Future`: the outcome once ended, else registers the
    /// waker.
    ///
    /// # Safety
    /// The caller has the task's `Future` `&mut`.
    pub(super) unsafe fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        if is_takeable(self.head.phase.load(Ordering::Acquire)) {
            // SAFETY: the caller's promise.
            return Poll::Ready(unsafe { self.take(true) });
        }
        // Not ended, or callbacks borrow the outcome: the end of either
        // wakes the waker, under the lock.
        let (mut g, word) = self.lock_slow();
        if is_takeable(word) {
            drop(g);
            // SAFETY: as above.
            return Poll::Ready(unsafe { self.take(true) });
        }
        let extras = g.extras();
        match &extras.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => extras.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The error for a result asked for after `.await` took it.
fn taken() -> Error {
    Error::InvalidState {
        reason: "the result of this future was already taken by .await".into(),
    }
}

impl<T: Send + 'static, W: WorkSlot<T> + ?Sized + 'static> Job for Shared<T, W> {
    fn run(&self, finishing: &dyn Fn()) -> Option<bool> {
        if self.claim() {
            Some(self.run_claimed(finishing))
        } else {
            finishing();
            None
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
        crate::error::drop_panic_payload(p);
    }
}

// Plain unit tests; under loom, the models in `super::loom` instead.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Future;
    use std::sync::atomic::AtomicUsize;

    /// A trivial task's state (result, closure and all) takes 40 bytes, a
    /// 48-byte chunk of glibc's malloc, and well under a cache line.
    #[test]
    fn a_small_task_state_takes_40_bytes() {
        fn state_of<F: FnOnce() -> Result<u64, Error> + Send + 'static>(f: F) -> usize {
            let (shared, job) = Shared::new(0, None, f);
            drop(job);
            std::mem::size_of_val(&*shared)
        }
        let n = 7u64;
        let size = state_of(move || Ok(n + 1));
        assert!(size <= 40, "a u64 task's state takes {size} bytes");
    }

    /// The race the lock-free completion must get right, played step by
    /// step: the completer looks at the word (no `SLOW`), a callback is
    /// added, then the completer tries to publish with its stale look.
    #[test]
    fn a_callback_added_after_the_completers_look_still_runs() {
        let shared = Shared::<u64>::remote(0, ()).0;
        assert!(shared.claim_remote());
        assert!(shared.advance(RUNNING, COMPLETING));
        let look = shared.head.phase.load(Ordering::Acquire);
        assert_eq!(look & SLOW, 0);

        let future = Future::new(shared.clone());
        let ran = Arc::new(AtomicUsize::new(0));
        let seen = ran.clone();
        future.add_done_callback(move |r| {
            assert_eq!(r, &Ok(5));
            seen.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the task has not ended");

        // SAFETY: this thread moved the task to COMPLETING.
        let back = unsafe { shared.publish_fast(look, Ok(5)) };
        let Err(result) = back else {
            panic!("a stale look must not publish: the callback would be lost");
        };
        assert!(!future.done());
        // SAFETY: as above.
        unsafe { shared.publish_slow(result, &|| {}) };
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(future.result(), Ok(5));
    }

    /// Without anyone on the mutex side, completion publishes lock-free.
    #[test]
    fn a_lone_completion_publishes_without_the_lock() {
        let shared = Shared::<u64>::remote(0, ()).0;
        assert!(shared.claim_remote());
        assert!(shared.advance(RUNNING, COMPLETING));
        let look = shared.head.phase.load(Ordering::Acquire);
        // SAFETY: this thread moved the task to COMPLETING.
        assert!(unsafe { shared.publish_fast(look, Err(Error::Timeout)) }.is_ok());
        assert!(shared.failed());
        assert_eq!(Future::new(shared).result(), Err(Error::Timeout));
    }
}
