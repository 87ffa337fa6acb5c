//! The MPI back end: named tasks run on the ranks of an MPI job, each rank
//! running them in a local process pool of its own.
//!
//! # How it fits together
//!
//! ```text
//!  pool's process (rank 0, or a singleton that spawned its ranks)        each serving rank (rank.rs)
//!  ───────────────────────────────────────────────────────────────        ─────────────────────────────
//!  user threads: submit, kill, shutdown ─▶ Core: one lock around          main thread, the only one that
//!                                          dispatch.rs (policy, no I/O)   calls MPI: Hello → start a local
//!                                            │ Run, Kill, Close            ProcessPool; Run → submit_raw;
//!                                            ▼                             an ended task → Done (batched)
//!                      MPI thread (comm.rs) ══ heads + blobs over MPI ══▶      │
//!                      probes with back-off ◀══ Ready, Done, Closed ═════      ▼
//!                        │ completes futures (callbacks run here)          worker processes, as on one
//!                        └ atexit: Quit to every rank, MPI_Finalize        machine (process/)
//! ```
//!
//! * `dispatch.rs` decides which rank gets which task; a seeded simulation
//!   checks it.
//! * `comm.rs` owns MPI: the one MPI thread, non-blocking sends, probing
//!   with a back-off, spawning ranks, finalising at exit.
//! * `wire.rs` is what crosses; `rank.rs` is a serving rank.
//!
//! # Words
//!
//! * **rank**: one serving process of the job, known to the dispatcher by
//!   its index (0 for the first serving rank, whatever its MPI rank);
//!   **peer** is its MPI rank in the session's communicator.
//! * **session**: one executor's life over the ranks: Hello, tasks, Close.
//!   Ranks serve one session after another until the pool's program ends
//!   (spawned ones: or until a session asks for another number of ranks).
//! * **worker**, **task**: as in `process/`, inside a rank.

mod comm;
mod dispatch;
mod rank;
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// How long a rank may say nothing before it counts as lost (a serving
/// rank says it is alive every [`rank::ALIVE`]).
const SILENCE: Duration = Duration::from_secs(10);

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::future::StopperEntry;
use crate::map::Chunk;
use crate::process::task::{self, Raw, Reach, RemoteTask};
use crate::process::{spawn, ProcessOptions};
use crate::registry::Entry;
use crate::{Error, Future, Registry};
use comm::{Client, Event, Order};
use dispatch::{Action, Dispatch};
use wire::{Answer, Bytes, FromRank, Incoming, Outgoing, Owner, RankOptions, ToRank};

pub(crate) use rank::serve_if_rank;

/// The builder's options for MPI pools.
#[derive(Debug, Clone, Default)]
pub(crate) struct MpiOptions {
    /// `Some(n)`: spawn `n` ranks; `None`: serve on the ranks of `mpirun`.
    pub(crate) spawn: Option<usize>,
    /// Worker processes per rank; `None`: one per core of its node.
    pub(crate) workers_per_rank: Option<usize>,
}

/// A pool over the ranks of an MPI job.
pub(crate) struct MpiPool {
    id: u64,
    core: Arc<Core>,
    /// Lets `Future::kill` stop a running task, while the pool lives.
    _stopper: StopperEntry,
    workers: usize,
}

/// What the pool's threads and the MPI thread share.
struct Core {
    state: Mutex<State>,
    /// Signalled when the pool has finished.
    finished: Condvar,
    client: &'static Client,
    /// Each rank's MPI rank in the session's communicator.
    peers: Vec<i32>,
    ended: AtomicU64,
    failed: AtomicU64,
}

struct State {
    dispatch: Dispatch<RemoteTask>,
    /// Each rank's worker restarts and live workers, as it last said.
    workers: Vec<(u64, usize)>,
    /// Shut down: submits are refused.
    closed: bool,
    finished: bool,
}

/// Where the MPI thread delivers a session's messages: to the start while
/// it waits for the ranks' answers, then to the pool.
struct Route {
    start: Sender<(i32, FromRank)>,
    core: OnceLock<Weak<Core>>,
}

impl MpiPool {
    /// Opens a session over the ranks (spawning them if asked), checks that
    /// each holds the registry's tasks with the same types, and starts each
    /// rank's local pool; returns when all are ready, or with the first
    /// failure (and then the ranks are released).
    pub(crate) fn start(
        id: u64,
        registry: Registry,
        opts: ProcessOptions,
        mpi: MpiOptions,
    ) -> Result<MpiPool, Error> {
        let client = comm::client()?;
        let (start_tx, answers) = crossbeam_channel::unbounded();
        let route = Arc::new(Route {
            start: start_tx,
            core: OnceLock::new(),
        });
        let handler_route = route.clone();
        let handler: comm::Handler = Box::new(move |event| match event {
            Event::Message(incoming) => handler_route.deliver(incoming),
            Event::Tick => {
                handler_route.tick();
                false
            }
        });
        let spawn = match mpi.spawn {
            Some(n) => Some((n, rank::this_program()?)),
            None => None,
        };
        let (reply, opened) = crossbeam_channel::bounded(1);
        if !client.order(Order::Open {
            spawn,
            handler,
            reply,
        }) {
            return Err(gone());
        }
        // MPI_Comm_spawn cannot be interrupted; if it never returns (Open
        // MPI's singleton spawn can hang), the build fails instead.
        let spawn_deadline = opts.connect_timeout.saturating_add(Duration::from_secs(30));
        let peers = match opened.recv_timeout(spawn_deadline) {
            Ok(peers) => peers?,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                return Err(Error::Spawn {
                    reason: format!(
                        "MPI did not start the ranks within {spawn_deadline:?}; MPI may be \
                         unusable in this process now"
                    ),
                })
            }
            Err(_) => return Err(gone()),
        };
        let hello = wire::Hello {
            version: crate::process::frames::PROTOCOL_VERSION,
            tasks: registry.entries().map(|e| spawn::task_info(e)).collect(),
            options: RankOptions {
                workers: mpi.workers_per_rank,
                task_timeout: opts.task_timeout,
                max_tasks_per_child: opts.max_tasks_per_child,
                retries: opts.retries,
                memory_limit: opts.memory_limit,
                connect_timeout: opts.connect_timeout,
                initializer: opts.initializer.clone(),
                program: opts.program.clone(),
            },
        };
        let msg = ToRank::Hello(Box::new(hello));
        for &peer in &peers {
            client.order(Order::Send(Outgoing::new(peer, &msg, Vec::new())));
        }
        // Each rank starts its workers within `connect_timeout`; the
        // answer then has to cross back.
        let deadline = crate::future::deadline_after(
            opts.connect_timeout.saturating_add(Duration::from_secs(5)),
        );
        let mut workers: Vec<Option<(usize, String)>> = vec![None; peers.len()];
        let mut refused: Option<String> = None;
        while workers.iter().any(Option::is_none) && refused.is_none() {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            match answers.recv_timeout(wait) {
                Ok((peer, FromRank::Ready { workers: w, host })) => {
                    if let Some(i) = peers.iter().position(|&p| p == peer) {
                        workers[i] = Some((w, format!("MPI rank {peer} on {host}")));
                    }
                }
                Ok((peer, FromRank::Refused { reason, host })) => {
                    refused = Some(format!(
                        "MPI rank {peer} on {host} refused the pool: {reason}"
                    ));
                }
                Ok(_) => {}
                Err(_) => {
                    let missing: Vec<i32> = peers
                        .iter()
                        .zip(&workers)
                        .filter(|(_, w)| w.is_none())
                        .map(|(p, _)| *p)
                        .collect();
                    refused = Some(format!(
                        "MPI ranks {missing:?} did not answer within the connect timeout; \
                         does their main call twinpool::serve_if_worker first?"
                    ));
                }
            }
        }
        if let Some(reason) = refused {
            release(client, &peers, &answers);
            return Err(Error::Spawn { reason });
        }
        let ranks: Vec<(usize, String)> = workers.into_iter().flatten().collect();
        let live_workers = ranks.iter().map(|(w, _)| w).sum();
        let workers = ranks.iter().map(|(w, _)| (0, *w)).collect();
        let core = Arc::new(Core {
            state: Mutex::new(State {
                dispatch: Dispatch::new(ranks, Instant::now(), SILENCE),
                workers,
                closed: false,
                finished: false,
            }),
            finished: Condvar::new(),
            client,
            peers,
            ended: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let _ = route.core.set(Arc::downgrade(&core));
        let weak = Arc::downgrade(&core);
        let stopper = StopperEntry::new(id, move |task| {
            if let Some(core) = weak.upgrade() {
                core.kill(task);
            }
        });
        Ok(MpiPool {
            id,
            core,
            _stopper: stopper,
            workers: live_workers,
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Worker processes over all ranks.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// What the pool is doing now; see [`Stats`](crate::Stats).
    pub(crate) fn stats(&self) -> crate::Stats {
        let st = self.core.lock();
        crate::Stats {
            queued: st.dispatch.queued(),
            running: st.dispatch.on_ranks(),
            finished: self.core.ended.load(Ordering::Relaxed),
            failed: self.core.failed.load(Ordering::Relaxed),
            worker_restarts: st.workers.iter().map(|w| w.0).sum(),
            live_workers: if st.finished {
                0
            } else {
                (st.workers.iter().enumerate())
                    .filter(|(rank, _)| !st.dispatch.is_lost(*rank))
                    .map(|(_, w)| w.1)
                    .sum()
            },
        }
    }

    /// Queues task `entry` on `arg`, with a time limit (`None`: the pool's
    /// default, which each rank's local pool holds).
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
        let made = task::single(self.id, entry, arg, Reach::Remote)?;
        task::queued(made, |task| {
            fits(&task)?;
            self.core.submit(task, limit)
        })
    }

    /// Queues task `entry` on each of `items`, as one message and one task.
    pub(crate) fn submit_chunk<A, R>(
        &self,
        entry: &Arc<Entry>,
        items: Vec<A>,
    ) -> Result<Future<Chunk<R>>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let made = task::chunk_of(self.id, entry, items, Reach::Remote)?;
        task::queued(made, |task| {
            fits(&task)?;
            self.core.submit(task, None)
        })
    }

    /// `kill_workers` / `terminate_workers`: every rank stops its workers
    /// with `signal`; the pool shuts down, cancelling what is queued.
    /// Returns when every rank has closed.
    pub(crate) fn signal_workers(&self, signal: i32) {
        {
            let mut st = self.core.lock();
            st.closed = true;
            st.dispatch.terminate(signal);
            self.core.execute(st);
        }
        self.core.wait_finished();
    }

    /// Stops taking work; cancels what is queued if `cancel_futures`; waits
    /// until every rank has closed its local pool if `wait`.
    pub(crate) fn shutdown(&self, wait: bool, cancel_futures: bool) {
        {
            let mut st = self.core.lock();
            st.closed = true;
            st.dispatch.shutdown(cancel_futures);
            self.core.execute(st);
        }
        if wait {
            self.core.wait_finished();
        }
    }
}

/// A payload MPI cannot carry in one message is refused at submit.
fn fits(task: &RemoteTask) -> Result<(), Error> {
    let len = task.arg().0.len();
    if len > wire::MAX_MESSAGE {
        return Err(Error::Encode {
            what: format!("the argument of task {:?}", task.name()),
            detail: format!(
                "{len} bytes are more than one MPI message can carry (2 GiB); split the work"
            ),
        });
    }
    Ok(())
}

fn gone() -> Error {
    Error::BrokenPool {
        reason: "MPI was finalised: the program is ending".into(),
    }
}

/// After a failed start: closes the ranks that did start, and ends the
/// session.
fn release(client: &Client, peers: &[i32], answers: &Receiver<(i32, FromRank)>) {
    for &peer in peers {
        let msg = ToRank::Close { cancel: true };
        client.order(Order::Send(Outgoing::new(peer, &msg, Vec::new())));
    }
    let deadline = crate::future::deadline_after(Duration::from_secs(10));
    let mut closed = 0;
    while closed < peers.len() {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        match answers.recv_timeout(wait) {
            Ok((_, FromRank::Closed)) => closed += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let (reply, done) = crossbeam_channel::bounded(1);
    if client.order(Order::Close { reply, lost: false }) {
        let _ = done.recv_timeout(Duration::from_secs(30));
    }
}

impl Route {
    /// On the MPI thread: a message from a rank; false if it was only a
    /// heartbeat.
    fn deliver(&self, mut incoming: Incoming) -> bool {
        let msg = match incoming.decode::<FromRank>() {
            Ok(msg) => msg,
            Err(e) => {
                log::error!("twinpool: MPI rank {}: {e}", incoming.peer);
                return false;
            }
        };
        let core = self.core.get().and_then(Weak::upgrade);
        if let Some(core) = &core {
            core.heard(incoming.peer);
        }
        match (msg, core) {
            (FromRank::Alive { restarts, live }, Some(core)) => {
                core.workers_of(incoming.peer, restarts, live);
                return false;
            }
            (FromRank::Done(done), Some(core)) => core.done(incoming.peer, done, &mut incoming),
            (FromRank::Closed, Some(core)) => core.closed(incoming.peer),
            (msg, _) => {
                let _ = self.start.send((incoming.peer, msg));
            }
        }
        true
    }
}

impl Route {
    /// On the MPI thread, every [`comm::TICK`].
    fn tick(&self) {
        if let Some(core) = self.core.get().and_then(Weak::upgrade) {
            let mut st = core.lock();
            st.dispatch.tick(Instant::now());
            core.execute(st);
        }
    }
}

impl Core {
    /// What rank `peer` says of its local pool.
    fn workers_of(&self, peer: i32, restarts: u64, live: usize) {
        if let Some(rank) = self.index(peer) {
            if let Some(w) = self.lock().workers.get_mut(rank) {
                *w = (restarts, live);
            }
        }
    }

    fn heard(&self, peer: i32) {
        if let Some(rank) = self.index(peer) {
            self.lock().dispatch.heard(rank, Instant::now());
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn index(&self, peer: i32) -> Option<usize> {
        self.peers.iter().position(|&p| p == peer)
    }

    fn submit(&self, task: RemoteTask, limit: Option<Duration>) -> Result<(), Error> {
        let mut st = self.lock();
        if st.closed {
            return Err(Error::Shutdown);
        }
        if !st.dispatch.alive() {
            return Err(Error::BrokenPool {
                reason: "every MPI rank of the pool is lost (their processes died, or their \
                         machines are gone); build a new executor"
                    .into(),
            });
        }
        st.dispatch.submit(task, limit, Instant::now());
        self.execute(st);
        Ok(())
    }

    fn kill(&self, task: u64) {
        let mut st = self.lock();
        st.dispatch.kill(task);
        self.execute(st);
    }

    /// On the MPI thread: a rank answered.
    fn done(&self, peer: i32, done: Vec<wire::Done>, incoming: &mut Incoming) {
        let Some(rank) = self.index(peer) else { return };
        // Blobs come in the order of the answers: take each answer's
        // bytes whether or not its task still waits.
        let answers: Vec<(u64, Result<Raw, Error>)> = done
            .into_iter()
            .map(|d| {
                let result = d.result.map(|a| match a {
                    Answer::One(b) => Raw::One(incoming.take(b)),
                    Answer::Chunk { results, failure } => Raw::Chunk {
                        results: incoming.take(results),
                        failure,
                    },
                });
                (d.id, result)
            })
            .collect();
        let mut ending = Vec::with_capacity(answers.len());
        let now = Instant::now();
        let mut st = self.lock();
        for (id, result) in answers {
            if let Some(task) = st.dispatch.done(rank, id, now) {
                ending.push((task, result));
            }
        }
        self.execute(st);
        for (task, result) in ending {
            match result {
                Ok(raw) => {
                    task.finish_raw(raw, &|failed| self.count(failed));
                }
                Err(e) => {
                    self.count(true);
                    task.fail(e);
                }
            }
        }
    }

    /// On the MPI thread: a rank closed its local pool.
    fn closed(&self, peer: i32) {
        let Some(rank) = self.index(peer) else { return };
        let mut st = self.lock();
        st.dispatch.closed(rank);
        self.execute(st);
    }

    /// Carries out the dispatcher's actions: messages are queued for the
    /// MPI thread under the lock (so they leave in the order decided);
    /// futures are completed after it is released.
    fn execute(&self, mut st: MutexGuard<'_, State>) {
        let actions = st.dispatch.take_actions();
        let mut fail = Vec::new();
        for action in actions {
            match action {
                Action::Run { rank, tasks } => {
                    let mut runs = Vec::with_capacity(tasks.len());
                    let mut blobs = Vec::new();
                    for (task, limit) in &tasks {
                        let (bytes, chunk) = task.arg();
                        let arg = if bytes.len() <= wire::BLOB {
                            Bytes::Inline(bytes.to_vec())
                        } else {
                            blobs.push(Owner::Task(task.clone()));
                            Bytes::Blob
                        };
                        runs.push(wire::Run {
                            id: task.id(),
                            name: task.name().to_string(),
                            chunk,
                            limit: *limit,
                            arg,
                        });
                    }
                    if !self.send(rank, &ToRank::Run(runs), blobs) {
                        fail.extend(tasks.into_iter().map(|(t, _)| (t, gone())));
                    }
                }
                Action::Kill { rank, task } => {
                    self.send(rank, &ToRank::Kill(task), Vec::new());
                }
                Action::Signal { rank, signal } => {
                    self.send(rank, &ToRank::Signal(signal), Vec::new());
                }
                Action::Close { rank, cancel } => {
                    self.send(rank, &ToRank::Close { cancel }, Vec::new());
                }
                Action::Fail(task, err) => fail.push((task, err)),
                Action::Finished => {
                    st.finished = true;
                    self.finished.notify_all();
                    // The ranks wait for the next session. Nothing waits
                    // for the answer: this may run on the MPI thread.
                    let (reply, _) = crossbeam_channel::bounded(1);
                    let lost = st.dispatch.lost_any();
                    self.client.order(Order::Close { reply, lost });
                }
            }
        }
        drop(st);
        for (task, err) in fail {
            self.count(true);
            task.fail(err);
        }
    }

    /// Counts a task that ends, before its result can be seen.
    fn count(&self, failed: bool) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send(&self, rank: usize, msg: &ToRank, blobs: Vec<Owner>) -> bool {
        let Some(&peer) = self.peers.get(rank) else {
            return false;
        };
        self.client
            .order(Order::Send(Outgoing::new(peer, msg, blobs)))
    }

    /// Waits until every rank has closed; at once on the MPI thread (a
    /// done-callback that shuts the pool down), where it would wait for
    /// itself.
    fn wait_finished(&self) {
        if self.client.on_mpi_thread() {
            return;
        }
        let mut st = self.lock();
        while !st.finished {
            st = self
                .finished
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
