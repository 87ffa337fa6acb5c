//! The synchronisation types of a task's state ([`crate::future`]), from
//! std, or from [loom] when the crate is built with `--cfg loom` (also the
//! count of [`crate::recycle::Counted`], whose last drop frees the state).
//!
//! Loom runs a test body over and over, once for every way its threads can
//! interleave (up to a bound), and checks each run: a lost wake-up shows up
//! as a deadlock, two threads touching an [`UnsafeCell`] at once as a data
//! race, a relaxed load that may see a stale value as a failed assertion.
//! It can only see what goes through its own types, so the task state
//! (and the waker slot of `AsCompleted` as a stream, in `wait.rs`) takes
//! its atomics, mutex, condvar and cell from here, and nothing else: the
//! rest of the crate uses std directly.
//!
//! The normal build re-exports std's types unchanged (the cell gets a thin
//! wrapper with loom's closure API, which compiles to a plain pointer
//! access). `Cargo.toml` only pulls in loom for `cfg(loom)`, so a normal
//! build never compiles it. The models are in `src/future/loom.rs`; `.ci/run`
//! shows the command that runs them.
//!
//! [loom]: https://docs.rs/loom

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// Loom uses std's orderings.
pub(crate) use std::sync::atomic::Ordering;

/// `std::cell::UnsafeCell` with loom's API: the contents are reached only
/// through [`with_mut`](Self::with_mut), so that under loom every access is
/// seen and checked against the others.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `data`.
    pub(crate) const fn new(data: T) -> UnsafeCell<T> {
        UnsafeCell(std::cell::UnsafeCell::new(data))
    }

    /// Calls `f` with a pointer to the contents. Dereferencing it is up to
    /// the caller's own proof that no other thread touches the contents
    /// meanwhile.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// True when spinning while waiting is worth it. Under loom it is not: a
/// spin loop only multiplies the interleavings to explore, and the models
/// check the sleeping path, which spinning merely delays.
pub(crate) const SPIN: bool = !cfg!(loom);
