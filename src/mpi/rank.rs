//! A serving rank: takes tasks from the pool over MPI and runs them in a
//! local process pool of its own, so that a crash, a hang or a time limit
//! costs one task and not the rank (which MPI could not replace).
//!
//! The rank's main thread makes every MPI call; the local pool's reader
//! threads tell it of ended tasks through a channel, and it sends their
//! answers back in batches.
//!
//! ```text
//!  pool (rank 0) ══ Hello, Run, Kill, Close, Quit ══▶ main thread (MPI) ── submit_raw ──▶ local ProcessPool
//!                ◀══ Ready, Done, Closed ═══════════════ │  ◀── ended ids ── done callbacks ◀──┘
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use crossbeam_channel::Sender;
use mpi::traits::Communicator;

use super::comm::{self, Backoff, Comm, Endpoint, SPAWNED_ARG};
use super::wire::{self, Answer, Done, FromRank, Hello, Incoming, Outgoing, RankOptions, ToRank};
use crate::process::task::Raw;
use crate::process::{spawn, ProcessOptions, ProcessPool};
use crate::{Error, Future, Registry};

/// How this process was started, if as a rank that serves a pool.
enum Role {
    /// By `mpirun`, as a rank other than 0.
    Launched,
    /// By a pool's `MPI_Comm_spawn`.
    Spawned,
}

fn role() -> Option<Role> {
    if std::env::args_os().any(|a| a == SPAWNED_ARG) {
        return Some(Role::Spawned);
    }
    let rank = crate::RANK_ENV.iter().find_map(|v| std::env::var(v).ok())?;
    match rank.trim().parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(Role::Launched),
    }
}

/// Serves a pool if this process is one of its ranks, then ends the
/// process; in any other process, returns at once.
pub(crate) fn serve_if_rank(registry: &Registry) {
    let Some(role) = role() else { return };
    let code = match serve(registry, role) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("twinpool rank (pid {}): {e}", std::process::id());
            1
        }
    };
    std::process::exit(code);
}

fn serve(registry: &Registry, role: Role) -> Result<(), String> {
    let universe = comm::init()?;
    let world = universe.world();
    let comm = match role {
        Role::Launched => Comm::World(world),
        Role::Spawned => Comm::Inter(
            world
                .parent()
                .ok_or("started as a spawned rank, but MPI knows no parent")?,
        ),
    };
    let mut rank = Rank {
        ep: Endpoint::new(comm),
        registry,
        host: host_name(),
        session: None,
        last_alive: std::time::Instant::now(),
    };
    let (ended_tx, ended) = crossbeam_channel::unbounded::<u64>();
    let mut backoff = Backoff::new();
    let mut woke: Option<u64> = None;
    loop {
        let mut busy = false;
        while let Some(incoming) = rank.ep.recv(backoff.probes()) {
            busy = true;
            if rank.handle(incoming, &ended_tx) == Step::Quit {
                // The pool's program is ending: nobody waits for what still
                // runs here.
                if let Some(s) = rank.session.take() {
                    s.pool.signal_workers(libc::SIGKILL);
                }
                rank.ep.wait_sends();
                drop(rank);
                drop(universe);
                return Ok(());
            }
        }
        busy |= rank.answer(woke.take().into_iter().chain(ended.try_iter()));
        if rank.last_alive.elapsed() >= ALIVE {
            if let Some(s) = &rank.session {
                let stats = s.pool.stats();
                let msg = FromRank::Alive {
                    restarts: stats.worker_restarts,
                    live: stats.live_workers,
                };
                rank.send(&msg, Vec::new());
            }
            rank.last_alive = std::time::Instant::now();
        }
        // Sends that ended (heartbeats among them) are no work: probe again
        // at once, but let the back-off cool.
        if rank.ep.progress() && !busy {
            continue;
        }
        if busy {
            backoff.reset();
            continue;
        }
        match backoff.wait(&ended) {
            Ok(id) => woke = id,
            Err(()) => return Ok(()),
        }
    }
}

#[derive(PartialEq, Eq)]
enum Step {
    Go,
    Quit,
}

struct Session {
    pool: ProcessPool,
    /// Tasks submitted and not yet answered, by the pool's id.
    running: HashMap<u64, Future<Raw>>,
    /// Told to close: answer `Closed` once `running` is empty.
    closing: bool,
}

struct Rank<'a> {
    ep: Endpoint,
    registry: &'a Registry,
    host: String,
    session: Option<Session>,
    /// When this rank last said it is alive.
    last_alive: std::time::Instant,
}

/// How often a rank in a session says it lives, with its local pool's
/// worker counts.
pub(crate) const ALIVE: std::time::Duration = std::time::Duration::from_millis(500);

/// The pool is always rank 0 of the communicator a rank serves on (the
/// world's rank 0, or the spawning process across the intercommunicator).
const POOL: i32 = 0;

impl Rank<'_> {
    fn handle(&mut self, mut incoming: Incoming, ended: &Sender<u64>) -> Step {
        if incoming.peer != POOL {
            return Step::Go;
        }
        let msg = match incoming.decode::<ToRank>() {
            Ok(msg) => msg,
            Err(e) => {
                eprintln!("twinpool rank (pid {}): {e}", std::process::id());
                return Step::Go;
            }
        };
        match msg {
            ToRank::Hello(hello) => self.open(*hello),
            ToRank::Run(runs) => {
                let mut failed = Vec::new();
                for run in runs {
                    let arg = incoming.take(run.arg);
                    if let Err(e) = self.run(run.id, &run.name, arg, run.chunk, run.limit, ended) {
                        failed.push(Done {
                            id: run.id,
                            result: Err(e),
                        });
                    }
                }
                if !failed.is_empty() {
                    self.send(&FromRank::Done(failed), Vec::new());
                }
            }
            ToRank::Kill(id) => {
                if let Some(f) = self.session.as_ref().and_then(|s| s.running.get(&id)) {
                    f.kill();
                }
            }
            ToRank::Signal(signal) => {
                if let Some(s) = &self.session {
                    s.pool.signal_workers(signal);
                }
            }
            ToRank::Close { cancel } => match &mut self.session {
                Some(s) => {
                    s.pool.shutdown(false, cancel);
                    s.closing = true;
                    self.maybe_closed();
                }
                None => self.send(&FromRank::Closed, Vec::new()),
            },
            ToRank::Quit => return Step::Quit,
            ToRank::Abandon => {
                if let Some(s) = self.session.take() {
                    s.pool.signal_workers(libc::SIGKILL);
                }
                std::process::exit(0);
            }
        }
        Step::Go
    }

    /// Starts a session: checks the tasks, starts the local pool.
    fn open(&mut self, hello: Hello) {
        // A new session replaces an old one the pool gave up on (its start
        // timed out): what still runs there is nobody's.
        if let Some(s) = self.session.take() {
            s.pool.signal_workers(libc::SIGKILL);
        }
        let answer = spawn::check_version(hello.version)
            .and_then(|()| {
                let ours: Vec<_> = self
                    .registry
                    .entries()
                    .map(|e| spawn::task_info(e))
                    .collect();
                spawn::check_tasks(&hello.tasks, &ours)
            })
            .and_then(|()| self.start_pool(hello.options).map_err(|e| e.to_string()));
        let msg = match answer {
            Ok(workers) => FromRank::Ready {
                workers,
                host: self.host.clone(),
            },
            Err(reason) => FromRank::Refused {
                reason,
                host: self.host.clone(),
            },
        };
        self.send(&msg, Vec::new());
    }

    fn start_pool(&mut self, o: RankOptions) -> Result<usize, Error> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = o.workers.unwrap_or(cores);
        let opts = ProcessOptions {
            program: o.program,
            initializer: o.initializer,
            connect_timeout: o.connect_timeout,
            task_timeout: o.task_timeout,
            max_tasks_per_child: o.max_tasks_per_child,
            retries: o.retries,
            memory_limit: o.memory_limit,
        };
        let pool = ProcessPool::start(
            crate::deadlock::next_pool_id(),
            workers,
            self.registry.clone(),
            opts,
        )?;
        self.session = Some(Session {
            pool,
            running: HashMap::new(),
            closing: false,
        });
        Ok(workers)
    }

    fn run(
        &mut self,
        id: u64,
        name: &str,
        arg: Vec<u8>,
        chunk: bool,
        limit: Option<std::time::Duration>,
        ended: &Sender<u64>,
    ) -> Result<(), Error> {
        let Some(s) = self.session.as_mut() else {
            return Err(Error::BrokenPool {
                reason: format!(
                    "rank on {} has no local pool (it was not started)",
                    self.host
                ),
            });
        };
        let entry = self.registry.get(name)?;
        let future = s.pool.submit_raw(entry, arg, chunk, limit)?;
        let ended = ended.clone();
        future.add_done_callback(move |_| {
            let _ = ended.send(id);
        });
        s.running.insert(id, future);
        Ok(())
    }

    /// Sends the answers of the tasks that ended; true if there were any.
    fn answer(&mut self, ids: impl Iterator<Item = u64>) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let mut done = Vec::new();
        let mut blobs = Vec::new();
        for id in ids {
            let Some(future) = s.running.remove(&id) else {
                continue;
            };
            let result = future.result().map(|raw| match raw {
                Raw::One(bytes) => Answer::One(wire::put(bytes, &mut blobs)),
                Raw::Chunk { results, failure } => Answer::Chunk {
                    results: wire::put(results, &mut blobs),
                    failure,
                },
            });
            done.push(Done { id, result });
        }
        if done.is_empty() {
            return false;
        }
        let too_big = blobs.iter().any(|b| b.bytes().len() > wire::MAX_MESSAGE);
        if too_big {
            // Answer each task alone, failing the one too big to send.
            self.send_alone(done, blobs);
        } else {
            self.send(&FromRank::Done(done), blobs);
        }
        self.maybe_closed();
        true
    }

    /// [`answer`](Self::answer)'s rare path: a result over MPI's 2 GiB
    /// message limit becomes an error of its task alone.
    fn send_alone(&mut self, done: Vec<Done>, blobs: Vec<wire::Owner>) {
        let mut blobs = blobs.into_iter();
        for d in done {
            let uses_blob = matches!(
                &d.result,
                Ok(Answer::One(wire::Bytes::Blob))
                    | Ok(Answer::Chunk {
                        results: wire::Bytes::Blob,
                        ..
                    })
            );
            let blob = if uses_blob { blobs.next() } else { None };
            match blob {
                Some(b) if b.bytes().len() > wire::MAX_MESSAGE => {
                    let err = Done {
                        id: d.id,
                        result: Err(Error::Encode {
                            what: "the result of a task".into(),
                            detail: format!(
                                "{} bytes are more than one MPI message can carry (2 GiB)",
                                b.bytes().len()
                            ),
                        }),
                    };
                    self.send(&FromRank::Done(vec![err]), Vec::new());
                }
                b => self.send(&FromRank::Done(vec![d]), b.into_iter().collect()),
            }
        }
    }

    fn maybe_closed(&mut self) {
        if let Some(s) = &self.session {
            if s.closing && s.running.is_empty() {
                self.end_session();
                self.send(&FromRank::Closed, Vec::new());
            }
        }
    }

    /// Shuts the local pool, which has no task left, down and waits for
    /// its workers to exit.
    fn end_session(&mut self) {
        if let Some(s) = self.session.take() {
            s.pool.shutdown(true, false);
        }
    }

    fn send(&mut self, msg: &FromRank, blobs: Vec<wire::Owner>) {
        self.ep.send(Outgoing::new(POOL, msg, blobs));
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "an unknown host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The program a spawned rank runs: this one.
pub(crate) fn this_program() -> Result<PathBuf, Error> {
    std::env::current_exe().map_err(|e| Error::Spawn {
        reason: format!("could not find this program's path to spawn ranks: {e}"),
    })
}
