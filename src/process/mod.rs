//! The process back end: named tasks run in worker processes.
//!
//! # How it fits together
//!
//! ```text
//!  user threads            driver.rs: one lock       one per worker (link.rs)          worker process (worker.rs)
//!  ────────────            ───────────────────       ────────────────────────          ──────────────────────────
//!  submit ─────────────▶┐
//!  kill, shutdown ─────▶│  scheduler.rs  ─ Send ──▶ outbox ─▶ writer thread ══ frames, notes ══▶ main thread:
//!  clock thread: tick ─▶│  (policy, no     │        (a small batch for an idle worker is        read a frame,
//!  spawner: started ───▶│   I/O)           │         written by the submitting thread)          claim each task,
//!                       │                  └ Revoke ▶ claim table (shared memory) ◀─ claim ── run it, reply
//!  reader: reply, lost ▶┘                                                                    before the next
//!                          ◀── reply ── reader thread ◀═══════════ replies ══════════════════ lifeline thread:
//!                                       │ completes the future (callbacks run here)          pool gone → kill
//!                                       └ at the end: reap, kill the group, report the death  the process group
//! ```
//!
//! * `scheduler.rs` decides everything; `sim.rs` checks it by seeded
//!   simulation.
//! * `driver.rs` feeds it events and carries out its actions.
//! * `transport.rs` is the seam between the two and the workers;
//!   `link.rs` is its implementation for local processes over ipc-channel,
//!   `spawn.rs` starts and reaps those processes.
//! * `frames.rs` is the wire format, `payload.rs` the shared-memory
//!   segments of big payloads, `claims.rs` the claim table.
//! * `task.rs` is a task as the pool holds it, `worker.rs` the worker's
//!   side (`serve_if_worker` in `src/serve.rs` calls it first).
//!
//! This file is the face the executor sees: start, submit a named task or
//! a chunk, shut down.
//!
//! # Words
//!
//! * **task**: one submitted call, single or a chunk of a map, known by its
//!   future's id ([`task::RemoteTask`]). The thread back end's unit is a
//!   *job*.
//! * **worker**: one worker process, known to the scheduler by a
//!   [`scheduler::WorkerId`] that is never reused; its pool-side end is its
//!   **link**.
//! * **frame**: one message on a worker's byte channel, holding records;
//!   a **note** on a side channel says where a big payload's **segment**
//!   (shared memory) lies; a process keeps a few **spare** segments for
//!   reuse.
//! * **claim**: the word in a worker's claim table that decides whether a
//!   task sent to it runs; each **send** of a task has its own claim.
//! * **in flight**, **head**, **revoke**, **doom**, **stalled**: see
//!   `scheduler.rs`.

mod claims;
mod driver;
pub(crate) mod frames;
mod link;
mod payload;
pub(crate) mod scheduler;
#[cfg(test)]
mod sim;
pub(crate) mod spawn;
pub(crate) mod task;
mod transport;
mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::future::StopperEntry;
use crate::map::Chunk;
use crate::registry::Entry;
use crate::{Error, Future, Registry};
use driver::Driver;
use link::LocalTransport;
use scheduler::{Config, Stop, WorkerId};
use spawn::StartOptions;
use task::Reach;

pub(crate) use worker::serve_if_process_worker;

/// The builder's options for process pools.
#[derive(Debug, Clone)]
pub(crate) struct ProcessOptions {
    /// The worker program; `None` re-runs the current executable.
    pub(crate) program: Option<PathBuf>,
    /// A registered task each worker runs before its first task, with its
    /// encoded argument.
    pub(crate) initializer: Option<(String, Vec<u8>)>,
    /// How long the workers of one start have to connect.
    pub(crate) connect_timeout: Duration,
    /// The default time limit of a task.
    pub(crate) task_timeout: Option<Duration>,
    /// Replace a worker after it has run this many tasks.
    pub(crate) max_tasks_per_child: Option<usize>,
    /// Run a task whose worker died under it again, up to this many times.
    pub(crate) retries: u32,
    /// Each worker's address-space limit, in bytes.
    pub(crate) memory_limit: Option<u64>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            program: None,
            initializer: None,
            connect_timeout: Duration::from_secs(10),
            task_timeout: None,
            max_tasks_per_child: None,
            retries: 0,
            memory_limit: None,
        }
    }
}

/// A pool of worker processes.
pub(crate) struct ProcessPool {
    id: u64,
    driver: Arc<Driver>,
    /// Lets `Future::kill` ask the driver to stop a running task, while
    /// the pool lives.
    _stopper: StopperEntry,
}

impl ProcessPool {
    /// Starts `n` workers running the tasks of `registry`; returns when all
    /// have connected, or with the first start error (and then no worker is
    /// left behind).
    pub(crate) fn start(
        id: u64,
        n: usize,
        registry: Registry,
        opts: ProcessOptions,
    ) -> Result<ProcessPool, Error> {
        if worker::started_as_worker() {
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
        let transport = Arc::new(LocalTransport {
            pool: id,
            opts: StartOptions {
                program: spawn::worker_program(opts.program.as_ref())?,
                connect_timeout: opts.connect_timeout,
                memory_limit: opts.memory_limit,
            },
            registry,
            initializer: opts.initializer.clone(),
        });
        let mut cfg = Config::new(n);
        cfg.retries = opts.retries;
        cfg.max_tasks_per_child = opts.max_tasks_per_child;
        cfg.task_timeout = opts.task_timeout;
        let ids: Vec<WorkerId> = (0..n as u64).map(WorkerId).collect();
        let driver = Driver::new(id, cfg, &ids, transport)?;
        driver.start_workers(&ids)?;
        let weak: Weak<Driver> = Arc::downgrade(&driver);
        let stopper = StopperEntry::new(id, move |task| {
            if let Some(driver) = weak.upgrade() {
                driver.kill(task);
            }
        });
        Ok(ProcessPool {
            id,
            driver,
            _stopper: stopper,
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// What the pool is doing now; see [`Stats`](crate::Stats).
    pub(crate) fn stats(&self) -> crate::Stats {
        self.driver.stats()
    }

    /// Queues task `entry` on `arg`, with a time limit (`None`: the pool's
    /// default). The argument is encoded here, so an argument that cannot be
    /// encoded is an error of this call.
    pub(crate) fn submit<A, R>(
        &self,
        entry: &Arc<Entry>,
        arg: A,
        limit: Option<Duration>,
    ) -> Result<Future<R>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let made = task::single(self.id, entry, arg, Reach::Local)?;
        task::queued(made, |task| self.driver.submit(task, limit))
    }

    /// Queues task `entry` on each of `items`, as one message and one task
    /// (a single item goes as a single task: see
    /// [`RemoteTask::chunk_of_one`]).
    pub(crate) fn submit_chunk<A, R>(
        &self,
        entry: &Arc<Entry>,
        items: Vec<A>,
    ) -> Result<Future<Chunk<R>>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let made = task::chunk_of(self.id, entry, items, Reach::Local)?;
        task::queued(made, |task| self.driver.submit(task, None))
    }

    /// Queues task `entry` on an argument encoded elsewhere (a chunk's if
    /// `chunk`), keeping its answer as bytes: how a rank of the MPI back
    /// end runs the tasks another machine sends it.
    #[cfg(feature = "mpi")]
    pub(crate) fn submit_raw(
        &self,
        entry: &Arc<Entry>,
        arg: Vec<u8>,
        chunk: bool,
        limit: Option<Duration>,
    ) -> Result<Future<task::Raw>, Error> {
        let payload = task::payload_of(arg, chunk, &entry.name)?;
        let (shared, task) = task::RemoteTask::raw(self.id, entry.clone(), payload);
        task::queued((shared, Some(task)), |task| self.driver.submit(task, limit))
    }

    /// Stops every worker at once with `signal` (SIGTERM or SIGKILL), as
    /// Python 3.14's `terminate_workers` and `kill_workers`: the pool shuts
    /// down, queued tasks are cancelled, tasks sent but not started never
    /// run, and running ones end in `Error::Killed` at once. Returns when
    /// every worker is gone (a worker that outlives SIGTERM is killed after
    /// a grace).
    pub(crate) fn signal_workers(&self, signal: i32) {
        let (how, by) = if signal == libc::SIGKILL {
            (Stop::Kill, "Executor::kill_workers")
        } else {
            (Stop::Signal(signal), "Executor::terminate_workers")
        };
        self.driver.terminate(how, by);
        if crate::deadlock::current_pool() != Some(self.id) {
            self.driver.wait_finished();
        }
    }

    /// Stops taking work; cancels what is queued if `cancel_futures`; waits
    /// until every worker has exited if `wait` (unless called on one of the
    /// pool's own threads, where that wait could never end).
    pub(crate) fn shutdown(&self, wait: bool, cancel_futures: bool) {
        self.driver.shutdown(cancel_futures);
        if wait && crate::deadlock::current_pool() != Some(self.id) {
            self.driver.wait_finished();
        }
    }
}
