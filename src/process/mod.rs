//! The process back end: named tasks run in worker processes.
//!
//! * [`spawn`] starts a worker program and checks its handshake;
//! * [`wire`] is the frame format on the ipc-channel byte channels;
//! * [`dispatcher`] is the pool's side: one thread that hands queued tasks to
//!   workers, and one reader thread per worker that completes futures;
//! * [`worker`] is the worker's side ([`serve_if_worker`]).
//!
//! This file is the face the executor sees: submit a named task or a chunk,
//! shut down.

mod dispatcher;
pub(crate) mod scheduler;
#[cfg(test)]
mod sim;
mod spawn;
pub(crate) mod wire;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::future::{Shared, Stopper};
use crate::map::Chunk;
use crate::recycle::Counted;
use crate::registry::Entry;
use crate::{codec, Error, Future, Registry};
use dispatcher::{Lanes, Msg, Queued};
use wire::{Body, Held, Outcome};

pub use worker::serve_if_worker;

/// The builder's options for process pools.
#[derive(Debug, Clone)]
pub(crate) struct ProcessOptions {
    /// The worker program; `None` re-runs the current executable.
    pub(crate) program: Option<PathBuf>,
    /// A registered task each worker runs before its first task, with its
    /// encoded argument.
    pub(crate) initializer: Option<(String, Vec<u8>)>,
    /// How long a new worker has to connect.
    pub(crate) connect_timeout: Duration,
    /// The default time limit of a task.
    pub(crate) task_timeout: Option<Duration>,
    /// Replace a worker after it has run this many tasks.
    pub(crate) max_tasks_per_child: Option<usize>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            program: None,
            initializer: None,
            connect_timeout: Duration::from_secs(10),
            task_timeout: None,
            max_tasks_per_child: None,
        }
    }
}

/// Whether the pool takes work.
#[derive(Default)]
pub(crate) struct Gate {
    closed: bool,
    broken: Option<String>,
}

/// What the pool and its dispatcher share.
pub(crate) struct Common {
    gate: Mutex<Gate>,
    /// Set when the dispatcher has stopped every worker.
    finished: Mutex<bool>,
    finished_cv: Condvar,
    /// Tasks waiting in the dispatcher's queue (as of its last round).
    backlog: AtomicUsize,
    /// Set by `shutdown`: readers then tell the dispatcher of every answer.
    closing: AtomicBool,
    /// True while the dispatcher sleeps long (no task in flight).
    dispatcher_idle: AtomicBool,
}

impl Common {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the pool broken; later submits fail with `BrokenPool`.
    fn set_broken(&self, reason: &str) {
        let mut g = self.gate();
        if g.broken.is_none() {
            g.broken = Some(reason.to_string());
        }
    }

    fn set_finished(&self) {
        *self.finished.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.finished_cv.notify_all();
    }
}

/// A pool of worker processes.
pub(crate) struct ProcessPool {
    id: u64,
    tx: Sender<Msg>,
    /// The workers' lanes, to hand a task straight to an idle worker.
    lanes: Lanes,
    max_tasks: usize,
    common: Arc<Common>,
    task_timeout: Option<Duration>,
    /// Asks the dispatcher to stop a running task (`Future::kill`).
    stopper: Stopper,
}

impl ProcessPool {
    /// Starts `n` workers running the tasks of `registry`; returns when all
    /// have connected, or with the first start error.
    pub(crate) fn start(
        id: u64,
        n: usize,
        registry: Registry,
        opts: ProcessOptions,
    ) -> Result<ProcessPool, Error> {
        if std::env::var_os(worker::SERVER_ENV).is_some() {
            // Started as a worker, but `main` did not call `serve_if_worker`
            // first: starting workers here would recurse without end.
            return Err(Error::Spawn {
                reason: "this process was started as a pool's worker, but its main built a \
                         process pool without calling twinpool::serve_if_worker first; call it \
                         first thing in main"
                    .into(),
            });
        }
        if let Some((name, _)) = &opts.initializer {
            registry.get(name)?;
        }
        let common = Arc::new(Common {
            gate: Mutex::new(Gate::default()),
            finished: Mutex::new(false),
            finished_cv: Condvar::new(),
            backlog: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            dispatcher_idle: AtomicBool::new(false),
        });
        let task_timeout = opts.task_timeout;
        let max_tasks = opts.max_tasks_per_child.unwrap_or(usize::MAX);
        let (tx, lanes) = dispatcher::start(id, n, registry, opts, common.clone())?;
        let kill_tx = tx.clone();
        let stopper: Stopper = Arc::new(move |task| {
            let _ = kill_tx.send(Msg::Kill { task });
        });
        Ok(ProcessPool {
            id,
            tx,
            lanes,
            max_tasks,
            common,
            task_timeout,
            stopper,
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn send(&self, q: Queued) -> Result<(), Error> {
        let g = self.common.gate();
        if let Some(reason) = &g.broken {
            return Err(Error::BrokenPool {
                reason: reason.clone(),
            });
        }
        if g.closed {
            return Err(Error::Shutdown);
        }
        // The gate stays locked until the task is handed over, so a
        // shutdown cannot slip between the check above and the hand-over.
        // With nothing waiting in the dispatcher, an idle worker gets the
        // task straight from this thread.
        let q = if self.common.backlog.load(Ordering::Relaxed) == 0 && self.tx.is_empty() {
            let limited = q.has_limit();
            match dispatcher::send_direct(&self.lanes, self.max_tasks, q) {
                Ok(()) => {
                    // A sleeping dispatcher must wake to watch a time limit.
                    if limited && self.common.dispatcher_idle.load(Ordering::Relaxed) {
                        let _ = self.tx.send(Msg::Progress);
                    }
                    return Ok(());
                }
                Err(q) => q,
            }
        } else {
            q
        };
        let sent = self.tx.send(Msg::Task(q)).map_err(|_| Error::Shutdown);
        drop(g);
        sent
    }

    fn new_shared<T: Send + 'static>(&self, entry: &Entry) -> Counted<Shared<T>> {
        Shared::remote(self.id, Some(entry.name.clone()), self.stopper.clone())
    }

    /// Queues task `entry` on `arg`, with a time limit (`None`: the pool's
    /// default). The argument is encoded here, so an argument that cannot be
    /// encoded is an error of this call.
    pub(crate) fn submit<A, R>(
        &self,
        entry: &Arc<Entry>,
        arg: &A,
        limit: Option<Duration>,
    ) -> Result<Future<R>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let shared = self.new_shared(entry);
        let future = Future::new(shared.clone());
        if !entry.matches::<A, R>() {
            shared.complete(Err(entry.type_mismatch::<A, R>()));
            return Ok(future);
        }
        let payload = encode_arg(entry, arg)?;
        self.send(Queued::one(
            entry.name.clone(),
            payload,
            limit.or(self.task_timeout),
            Arc::new(RemoteTask {
                shared,
                decode: one_result::<R>,
            }),
        ))?;
        Ok(future)
    }

    /// Queues task `entry` on each of `items`, as one message and one task.
    pub(crate) fn submit_chunk<A, R>(
        &self,
        entry: &Arc<Entry>,
        items: &[A],
    ) -> Result<Future<Chunk<R>>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let shared = self.new_shared(entry);
        let future = Future::new(shared.clone());
        if !entry.matches::<A, R>() {
            shared.complete(Err(entry.type_mismatch::<A, R>()));
            return Ok(future);
        }
        let what = || format!("the arguments of task {:?}", entry.name);
        let payloads = Held::new(codec::encode_seq(items, what)?);
        self.send(Queued::chunk(
            entry.name.clone(),
            payloads,
            self.task_timeout,
            Arc::new(RemoteTask {
                shared,
                decode: chunk_result::<R>,
            }),
        ))?;
        Ok(future)
    }

    /// Stops every worker at once with `signal` (SIGTERM or SIGKILL), as
    /// Python 3.14's `terminate_workers` and `kill_workers`: shuts down,
    /// cancels queued tasks, and ends running ones in `Error::Killed`.
    pub(crate) fn signal_workers(&self, signal: i32) {
        self.shutdown(false, true);
        let _ = self.tx.send(Msg::Signal(signal));
        self.shutdown(true, false);
    }

    /// Stops taking work; cancels what is queued if `cancel_futures`; waits
    /// until every worker has exited if `wait` (unless called on one of the
    /// pool's own threads, where that wait could never end).
    pub(crate) fn shutdown(&self, wait: bool, cancel_futures: bool) {
        {
            let mut g = self.common.gate();
            if !g.closed || cancel_futures {
                g.closed = true;
                self.common.closing.store(true, Ordering::Relaxed);
                let _ = self.tx.send(Msg::Shutdown {
                    cancel: cancel_futures,
                });
            }
        }
        if !wait || crate::deadlock::current_pool() == Some(self.id) {
            return;
        }
        let mut done = self
            .common
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*done {
            done = self
                .common
                .finished_cv
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Encodes a task's argument, into a shared-memory segment when it is big
/// (a big `Vec<u8>` or `String` is copied there directly).
fn encode_arg<A: Serialize + 'static>(entry: &Entry, arg: &A) -> Result<Held, Error> {
    if let Some(raw) = codec::raw_bytes(arg).filter(|b| b.len() >= wire::BIG) {
        return Ok(Held::big(raw));
    }
    let what = || format!("the argument of task {:?}", entry.name);
    Ok(Held::new(codec::encode(arg, what)?))
}

/// A queued process task with its result type erased.
pub(crate) trait RemoteJob: Send + Sync {
    /// The task's id (its future's).
    fn id(&self) -> u64;
    /// Marks it running as it is sent; false if it was cancelled.
    fn claim(&self) -> bool;
    /// Cancels it if it has not been sent.
    fn cancel(&self) -> bool;
    /// Ends it with `err`, sent or not.
    fn fail(&self, err: Error);
    /// Ends it with the worker's answer.
    fn finish(&self, answer: Answer);
}

/// A worker's answer to one task or one chunk.
pub(crate) enum Answer {
    /// The encoded result, or how the task failed.
    One(Result<Held, Outcome>),
    /// The encoded results of the items that succeeded, then the failure.
    Chunk {
        results: Held,
        failure: Option<Outcome>,
    },
}

fn not_the_answer(name: &str) -> Error {
    Error::Decode {
        what: format!("the result of task {name:?}"),
        detail: "the worker answered a single task with a chunk, or the reverse".into(),
    }
}

/// A process task: its future's state, and how its answer becomes its
/// result ([`one_result`] or [`chunk_result`]).
struct RemoteTask<T> {
    shared: Counted<Shared<T>>,
    decode: fn(Answer, &str) -> Result<T, Error>,
}

/// The result an outcome stands for.
fn decode_outcome<R: DeserializeOwned + 'static>(outcome: Outcome, name: &str) -> Result<R, Error> {
    match outcome {
        Outcome::Ok(Body::Inline(bytes)) => {
            codec::decode(&bytes, || format!("the result of task {name:?}"))
        }
        Outcome::Ok(Body::Shared) => Err(not_the_answer(name)),
        Outcome::Panicked(message) => Err(Error::Panicked { message }),
        Outcome::Failed {
            decode: true,
            what,
            detail,
        } => Err(Error::Decode { what, detail }),
        Outcome::Failed { what, detail, .. } => Err(Error::Encode { what, detail }),
    }
}

impl<T: Send + 'static> RemoteJob for RemoteTask<T> {
    fn id(&self) -> u64 {
        self.shared.id()
    }
    fn claim(&self) -> bool {
        self.shared.claim_remote()
    }
    fn cancel(&self) -> bool {
        self.shared.cancel_with(Error::Cancelled)
    }
    fn fail(&self, err: Error) {
        if !self.shared.cancel_with(err.clone()) {
            self.shared.complete(Err(err));
        }
    }
    fn finish(&self, answer: Answer) {
        let name = self.shared.name();
        self.shared.complete((self.decode)(answer, &name));
    }
}

/// The result of a single task.
fn one_result<R: DeserializeOwned + 'static>(answer: Answer, name: &str) -> Result<R, Error> {
    match answer {
        Answer::One(Ok(bytes)) => codec::decode(&bytes, || format!("the result of task {name:?}")),
        Answer::One(Err(o)) => decode_outcome(o, name),
        Answer::Chunk { .. } => Err(not_the_answer(name)),
    }
}

/// The results of a chunk: those of the items that succeeded, then the
/// first failure.
fn chunk_result<R: DeserializeOwned + 'static>(
    answer: Answer,
    name: &str,
) -> Result<Chunk<R>, Error> {
    let Answer::Chunk { results, failure } = answer else {
        return Err(not_the_answer(name));
    };
    let values = codec::decode_seq::<R>(&results, || format!("the results of task {name:?}"));
    Ok(match values {
        Ok(values) => {
            let mut chunk: Chunk<R> = values.into_iter().map(Ok).collect();
            chunk.extend(failure.map(|f| decode_outcome::<R>(f, name)));
            chunk
        }
        Err(e) => vec![Err(e)],
    })
}
