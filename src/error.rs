//! The one error type of the crate, and how a caught panic becomes one.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Everything that can go wrong when submitting work or waiting for it.
///
/// Each variant's `Display` is a sentence that says what happened and what to
/// do about it. The enum is `#[non_exhaustive]`: match the variants you
/// handle and keep a `_` arm. It is `Serialize` and `Deserialize`, so an
/// error can cross to another process (the MPI back end carries the errors
/// of other machines' tasks this way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The future was cancelled before its task started, so the task never ran.
    #[error("the task was cancelled before it started, so it never ran")]
    Cancelled,

    /// A deadline passed: `result_timeout`, a `map` timeout or an
    /// `as_completed` timeout. The task itself keeps running.
    #[error("the deadline passed before the result was ready; the task may still be running")]
    Timeout,

    /// `submit*` or `map*` was called after `shutdown`.
    #[error("the executor has been shut down and accepts no new work; build a new executor")]
    Shutdown,

    /// The task panicked; `message` is the panic's text.
    #[error("the task panicked: {message}")]
    Panicked {
        /// The panic payload when it was a `&str` or `String`, else a fixed text.
        message: String,
    },

    /// The worker process running the task exited or was killed, and the
    /// task was not run again (see `Builder::retries`).
    #[error(
        "worker process {pid} died while running the task ({status}); the task did not finish{}",
        tries_note(*tries)
    )]
    WorkerDied {
        /// The worker's process id.
        pid: u32,
        /// How it ended, in words: "exited with code 3", "was killed by
        /// signal 9 (SIGKILL)".
        status: String,
        /// How it ended, to match on.
        exit: WorkerExit,
        /// How many times the task was run, each time ending in its
        /// worker's death (1 without `Builder::retries`).
        tries: u32,
    },

    /// The task's worker process ran out of the memory it is allowed
    /// (`Builder::worker_memory_limit`); the worker was replaced.
    #[error(
        "the task needed more memory than its worker process may use ({limit} bytes, set by \
         Builder::worker_memory_limit); the worker was replaced and the task did not finish"
    )]
    OutOfMemory {
        /// The limit, in bytes of address space.
        limit: u64,
    },

    /// The task ran past its time limit (`Builder::task_timeout` or
    /// `Executor::submit_named_timeout`); its worker process was killed and
    /// replaced. Distinct from [`Error::Timeout`], which a caller's own wait
    /// gets while the task goes on.
    #[error("the task ran past its time limit of {limit:?}, so its worker process was killed and replaced")]
    TaskTimedOut {
        /// The limit it ran past.
        limit: std::time::Duration,
    },

    /// The task was stopped by [`Future::kill`](crate::Future::kill) or
    /// [`Executor::kill_workers`](crate::Executor::kill_workers) /
    /// [`terminate_workers`](crate::Executor::terminate_workers).
    #[error("the task was stopped on request ({how})")]
    Killed {
        /// What stopped it.
        how: String,
    },

    /// The pool can no longer run tasks.
    #[error("the pool is broken and can run no more tasks: {reason}; build a new executor")]
    BrokenPool {
        /// Why the pool broke (for example the initializer's panic message).
        reason: String,
    },

    /// No task is registered under this name.
    #[error("no task named {name:?} is registered; add it with Registry::register in the registry the executor (and its workers) use")]
    NotRegistered {
        /// The name that was asked for.
        name: String,
    },

    /// The operation is not supported by this back end.
    #[error("not supported: {reason}")]
    Unsupported {
        /// What was asked for and what to do instead.
        reason: String,
    },

    /// An argument or result could not be encoded to cross to a worker.
    #[error("could not encode {what}: {detail}")]
    Encode {
        /// What was being encoded (for example "the argument of task \"square\"").
        what: String,
        /// The codec's own explanation.
        detail: String,
    },

    /// An argument or result could not be decoded on the other side.
    #[error("could not decode {what}: {detail}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// Why it failed (wrong type, truncated or trailing bytes, ...).
        detail: String,
    },

    /// A worker could not be started: a process (or it did not connect),
    /// or a thread of a thread pool.
    #[error("could not start a worker: {reason}")]
    Spawn {
        /// What went wrong and what to check.
        reason: String,
    },

    /// A parameter was out of range (0 workers, chunksize 0, ...).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Which parameter and what it must be.
        reason: String,
    },

    /// The future is in no state to answer this call: its result was
    /// already taken (by `.await`, which moves it out), or a call that needs
    /// an ended task came before it ended. Python's `InvalidStateError`.
    #[error("invalid state: {reason}")]
    InvalidState {
        /// What the future's state is, and why the call cannot be answered.
        reason: String,
    },

    /// A blocking wait inside the pool could never finish: the tasks named in
    /// `cycle` wait on each other.
    #[error("deadlock: this wait could never finish because {cycle}; wait with a timeout or restructure the tasks so they do not wait on each other")]
    Deadlock {
        /// The tasks in the cycle, in order, each with its id, name and thread.
        cycle: String,
    },
}

/// How a worker process ended, in [`Error::WorkerDied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum WorkerExit {
    /// It exited with this code (`std::process::exit`, or returning from
    /// `main`).
    Code(i32),
    /// It was killed by this signal (9 for SIGKILL, 11 for SIGSEGV, 6 for
    /// SIGABRT, ...).
    Signal(i32),
    /// How it ended could not be read.
    Unknown,
}

/// ", after 3 tries", when a task was run more than once.
fn tries_note(tries: u32) -> String {
    if tries > 1 {
        format!(", after {tries} tries")
    } else {
        String::new()
    }
}

impl Error {
    /// The `Panicked` error for a caught panic payload; the payload is
    /// dropped with [`drop_panic_payload`].
    pub(crate) fn from_panic(payload: Box<dyn Any + Send>) -> Error {
        let message = panic_message(&*payload);
        drop_panic_payload(payload);
        Error::Panicked { message }
    }
}

/// Drops a caught panic payload without letting a second panic out.
///
/// A payload is any value (`std::panic::panic_any`), and its `Drop` may
/// panic too. Dropped carelessly after a `catch_unwind`, that second panic
/// unwinds through the library: on a pool thread it kills the thread, and
/// the task's future never ends. So every payload the library catches is
/// dropped here, inside a `catch_unwind` of its own; the payload of that
/// second panic is leaked with `mem::forget` rather than dropped, since
/// its `Drop` could panic in turn.
pub(crate) fn drop_panic_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// The text of a panic payload: `&str` and `String` as they are, anything
/// else as a fixed sentence.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the task panicked with a value that is not a string".to_string()
    }
}
