//! A seeded simulation of the scheduler against simulated workers.
//!
//! Each run draws a random sequence of events from one seed: submits,
//! cancels and kills; workers that take frames, start and finish tasks,
//! crash, stall or exit right after they start; replies read late; starts
//! that fail; time jumps; shutdown and terminate at any point. The simulated
//! transport answers revokes exactly as the claim table does. After every
//! step the invariants of the scheduler's module doc are checked, and at the
//! end, once everything has drained, every task must have ended exactly
//! once.
//!
//! A failing run prints its seed. Replay one with
//! `TWINPOOL_SIM_SEED=<seed> cargo test --lib process::sim`; choose how many
//! runs with `TWINPOOL_SIM_RUNS` (default 10,000).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::scheduler::{Action, Config, Death, Handle, Revoked, Scheduler, Stop, TaskId, WorkerId};
use crate::error::WorkerExit;
use crate::Error;

/// splitmix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len() as u64) as usize])
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Pending,
    Claimed,
    Cancelled,
    Ended(Result<(), Error>),
}

/// A simulated future.
struct FutureState {
    id: TaskId,
    phase: Phase,
    /// How many times it ended (must end at 1).
    ends: u32,
    limit: Option<Duration>,
}

#[derive(Clone)]
struct SimHandle(Rc<RefCell<FutureState>>);

impl Handle for SimHandle {
    fn id(&self) -> TaskId {
        self.0.borrow().id
    }
    fn claim(&self) -> bool {
        let mut f = self.0.borrow_mut();
        match f.phase {
            Phase::Pending => {
                f.phase = Phase::Claimed;
                true
            }
            _ => false,
        }
    }
    fn cancel(&self) -> bool {
        let mut f = self.0.borrow_mut();
        match f.phase {
            Phase::Pending => {
                f.phase = Phase::Cancelled;
                f.ends += 1;
                true
            }
            Phase::Cancelled => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Sent,
    Started,
    Revoked,
}

/// A simulated worker process.
#[derive(Default)]
struct SimWorker {
    /// Frames it has not taken yet, in order: the task and the number of
    /// its send (a task sent twice has two claims, as two claim words).
    unread: VecDeque<(TaskId, u64)>,
    /// Claims of the sends to it, by send number.
    claims: HashMap<u64, Claim>,
    /// The send number of each task's latest send to it.
    latest: HashMap<TaskId, u64>,
    /// The task it runs.
    running: Option<TaskId>,
    /// Replies written and not yet read by the pool.
    socket: VecDeque<TaskId>,
    /// Its process is dead (its end not yet reported).
    dead: bool,
    /// It was asked to exit politely.
    exiting: bool,
    /// Stopped by SIGSTOP: takes no frames.
    stopped: bool,
    /// Told to stop (any way) by the scheduler: nothing may be sent after.
    stop_asked: bool,
    /// The scheduler's view: sent and not answered/taken back, in order.
    in_flight: VecDeque<TaskId>,
    /// The last time the scheduler heard of it: a send, a reply read, a
    /// revoke answered.
    last_news: Option<Instant>,
    /// One of its heads was taken back unstarted: stalled until then, or
    /// until a reply.
    stalled: Option<Instant>,
    /// The pool has read a reply of it.
    proven: bool,
    sent_total: usize,
}

struct World {
    rng: Rng,
    seed: u64,
    cfg: Config,
    sched: Scheduler<SimHandle>,
    now: Instant,
    futures: BTreeMap<TaskId, SimHandle>,
    /// Times each task was started by a worker.
    runs: HashMap<TaskId, u32>,
    /// Tasks started on a worker whose process died while running them.
    died_running: HashMap<TaskId, u32>,
    /// Tasks whose reply was read.
    replied: HashSet<TaskId>,
    workers: BTreeMap<WorkerId, SimWorker>,
    /// Starts asked for: id, and whether it will fail.
    starting: Vec<WorkerId>,
    /// Sends so far: each send has its own number.
    sends: u64,
    /// The workers sent tasks in the batch of actions being applied.
    served: HashSet<WorkerId>,
    /// Since when each idle worker has been idle.
    idle_since: HashMap<WorkerId, Instant>,
    /// Tasks `kill()` was called on (and did not cancel).
    killed: HashSet<TaskId>,
    terminated: bool,
    /// When each task last started.
    started_at: HashMap<TaskId, Instant>,
    /// Workers in a row that failed to start or died before they answered.
    failed_in_a_row: u32,
    /// A task failed with `BrokenPool`.
    broken: bool,
    /// Ticks so far: a run that needs very many is stuck.
    ticks: u32,
    /// Workers the scheduler has been told are gone.
    gone: HashSet<WorkerId>,
    next_task: TaskId,
    closed: bool,
    finished: bool,
    log: Vec<String>,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let mut cfg = Config::new(1 + rng.below(3) as usize);
        cfg.retries = if rng.chance(30) {
            rng.below(3) as u32
        } else {
            0
        };
        if rng.chance(30) {
            cfg.max_tasks_per_child = Some(1 + rng.below(4) as usize);
        }
        cfg.max_in_flight = 2 + rng.below(6) as usize;
        if rng.chance(30) {
            cfg.task_timeout = Some(Duration::from_millis(1 + rng.below(50)));
        }
        cfg.max_failed_starts = 3 + rng.below(6) as u32;
        let now = Instant::now();
        let ready: Vec<WorkerId> = (0..cfg.workers as u64).map(WorkerId).collect();
        let sched = Scheduler::new(cfg.clone(), &ready, now);
        let mut w = World {
            rng,
            seed,
            cfg,
            sched,
            now,
            futures: BTreeMap::new(),
            runs: HashMap::new(),
            died_running: HashMap::new(),
            replied: HashSet::new(),
            workers: BTreeMap::new(),
            starting: Vec::new(),
            sends: 0,
            served: HashSet::new(),
            idle_since: HashMap::new(),
            killed: HashSet::new(),
            terminated: false,
            started_at: HashMap::new(),
            failed_in_a_row: 0,
            broken: false,
            ticks: 0,
            gone: HashSet::new(),
            next_task: 1,
            closed: false,
            finished: false,
            log: Vec::new(),
        };
        for id in ready {
            w.workers.insert(id, SimWorker::default());
        }
        w.drain_actions();
        w
    }

    fn fail(&self, what: &str) -> ! {
        let tail: Vec<&String> = self
            .log
            .iter()
            .rev()
            .take(
                std::env::var("TWINPOOL_SIM_LOG")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(40),
            )
            .collect();
        let mut text = String::new();
        for line in tail.into_iter().rev() {
            text.push_str(line);
            text.push('\n');
        }
        panic!(
            "scheduler simulation, seed {}: {what}\n(replay: TWINPOOL_SIM_SEED={})\n{:?}\nnow {:?}\n{}last steps:\n{text}",
            self.seed, self.seed, self.cfg, self.now, self.sched.describe()
        );
    }

    fn check(&self, cond: bool, what: impl FnOnce() -> String) {
        if !cond {
            self.fail(&what());
        }
    }

    // ----- carrying out the scheduler's actions -----

    fn drain_actions(&mut self) {
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 10_000 {
                self.fail("the scheduler asks for actions without end");
            }
            // One dispatch sends to several workers at once: those count
            // as served for the idle-first check.
            let batch: Vec<Action<SimHandle>> =
                std::iter::from_fn(|| self.sched.poll_action()).collect();
            if batch.is_empty() {
                return;
            }
            self.served = (batch.iter())
                .filter_map(|a| match a {
                    Action::Send { worker, .. } => Some(*worker),
                    _ => None,
                })
                .collect();
            for a in batch {
                self.apply(a);
            }
        }
    }

    fn apply(&mut self, action: Action<SimHandle>) {
        match action {
            Action::Send { worker, tasks } => {
                let ids: Vec<TaskId> = tasks.iter().map(Handle::id).collect();
                self.log.push(format!("send {ids:?} to {worker:?}"));
                self.check(!self.gone.contains(&worker), || {
                    format!("sent {ids:?} to {worker:?}, which was reported gone")
                });
                let w = &self.workers[&worker];
                self.check(!w.stop_asked, || {
                    format!("sent {ids:?} to {worker:?} after telling it to stop")
                });
                // Invariant 7: an idle worker gets work before a busy one.
                if !w.in_flight.is_empty() {
                    let mut idle = self.eligible_idle(Some(worker));
                    idle.retain(|w| !self.served.contains(w));
                    self.check(idle.is_empty(), || {
                        format!("sent {ids:?} to busy {worker:?} while {idle:?} idled")
                    });
                }
                for t in &tasks {
                    let f = t.0.borrow();
                    self.check(f.phase == Phase::Claimed && f.ends == 0, || {
                        format!("sent task {} which is {:?}", f.id, f.phase)
                    });
                }
                let now = self.now;
                let max = self.cfg.max_tasks_per_child;
                let Some(w) = self.workers.get_mut(&worker) else {
                    unreachable!()
                };
                w.last_news = Some(now);
                for id in ids {
                    w.in_flight.push_back(id);
                    self.sends += 1;
                    w.claims.insert(self.sends, Claim::Sent);
                    w.latest.insert(id, self.sends);
                    w.unread.push_back((id, self.sends));
                    w.sent_total += 1;
                }
                let total = w.sent_total;
                self.check(max.is_none_or(|m| total <= m), || {
                    format!("{worker:?} was sent {total} tasks, over max_tasks_per_child")
                });
            }
            Action::Revoke { worker, task } => {
                let now = self.now;
                let w = self
                    .workers
                    .get_mut(&worker)
                    .unwrap_or_else(|| unreachable!());
                let send = w.latest.get(&task).copied().unwrap_or(0);
                let taken = w.claims.get(&send) == Some(&Claim::Sent);
                if taken {
                    w.claims.insert(send, Claim::Revoked);
                    let was_head = w.in_flight.front() == Some(&task);
                    w.in_flight.retain(|&t| t != task);
                    w.sent_total -= 1;
                    if was_head {
                        w.stalled = now.checked_add(self.cfg.stall);
                    }
                }
                w.last_news = Some(now);
                self.log
                    .push(format!("revoke {task} on {worker:?}: taken {taken}"));
                let answer = if taken {
                    Revoked::Taken
                } else {
                    Revoked::Started(self.started_at.get(&task).copied())
                };
                self.sched.revoked(worker, task, answer, now);
            }
            Action::Fail { task, error } => {
                let id = task.id();
                self.log.push(format!("fail {id}: {error}"));
                // Failing a task its owner cancelled while it was queued is
                // a no-op, as for a real future.
                if task.0.borrow().phase != Phase::Cancelled {
                    self.end(&task, Err(error.clone()));
                }
                // Every error must have its cause.
                match &error {
                    Error::Killed { .. } => self
                        .check(self.killed.contains(&id) || self.terminated, || {
                            format!("task {id} killed, but nobody asked")
                        }),
                    Error::TaskTimedOut { limit } => {
                        let ran = self
                            .started_at
                            .get(&id)
                            .map(|t| self.now.duration_since(*t));
                        self.check(ran.is_some_and(|ran| ran >= *limit), || {
                            format!("task {id} timed out on {limit:?} after running {ran:?}")
                        });
                    }
                    Error::BrokenPool { .. } => {
                        self.broken = true;
                    }
                    Error::WorkerDied { .. } => {}
                    other => self.fail(&format!("task {id} failed with {other}")),
                }
                // Invariant 2/3: only a task its worker died running is
                // blamed for a death.
                if matches!(error, Error::WorkerDied { .. }) {
                    let died = self.died_running.get(&id).copied().unwrap_or(0);
                    self.check(died > 0, || {
                        format!("task {id} blamed for a death it did not run into")
                    });
                    if let Error::WorkerDied { tries, .. } = error {
                        self.check(tries == died, || {
                            format!("task {id} reports {tries} tries, ran into {died} deaths")
                        });
                    }
                }
                // It leaves whichever worker held it.
                for w in self.workers.values_mut() {
                    w.in_flight.retain(|&t| t != id);
                }
            }
            Action::Start { worker } => {
                self.log.push(format!("start {worker:?}"));
                self.starting.push(worker);
            }
            Action::Stop { worker, how } => {
                self.log.push(format!("stop {worker:?} {how:?}"));
                let w = self
                    .workers
                    .get_mut(&worker)
                    .unwrap_or_else(|| unreachable!());
                w.stop_asked = true;
                match how {
                    Stop::Exit => w.exiting = true,
                    Stop::Kill | Stop::Signal(_) => {
                        w.stopped = false;
                        self.die(worker);
                    }
                }
            }
            Action::Finished => {
                self.log.push("finished".into());
                self.check(!self.finished, || "finished twice".into());
                self.finished = true;
            }
        }
    }

    fn end(&self, task: &SimHandle, result: Result<(), Error>) {
        let mut f = task.0.borrow_mut();
        f.ends += 1;
        let id = f.id;
        let ends = f.ends;
        let was = f.phase.clone();
        f.phase = Phase::Ended(result);
        drop(f);
        self.check(ends == 1, || {
            format!("task {id} ended {ends} times (was {was:?})")
        });
    }

    /// Workers that are idle and could take work (the simulation's view).
    fn eligible_idle(&self, except: Option<WorkerId>) -> Vec<WorkerId> {
        let max = self.cfg.max_tasks_per_child;
        (self.workers.iter())
            .filter(|(id, w)| {
                Some(**id) != except
                    && !self.gone.contains(id)
                    && !w.stop_asked
                    && w.stalled.is_none_or(|until| self.now >= until)
                    && w.in_flight.is_empty()
                    && max.is_none_or(|m| w.sent_total < m)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The worker's process dies now.
    fn die(&mut self, worker: WorkerId) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.dead {
            return;
        }
        w.dead = true;
        if let Some(t) = w.running.take() {
            *self.died_running.entry(t).or_default() += 1;
        }
    }

    // ----- random events -----

    fn step(&mut self) {
        let choice = self.rng.below(100);
        match choice {
            0..=19 => self.submit(),
            20..=24 => self.owner_cancel(),
            25..=29 => self.kill(),
            30..=49 => self.worker_takes_frame(),
            50..=64 => self.worker_finishes(),
            65..=74 => self.pool_reads_reply(),
            75..=77 => self.crash(),
            78..=80 => self.report_lost(),
            81..=84 => self.start_result(),
            85..=93 => self.time_passes(),
            94..=95 => self.stop_or_continue(),
            96..=97 if !self.closed => {
                let cancel = self.rng.chance(50);
                self.log.push(format!("shutdown cancel={cancel}"));
                self.closed = true;
                self.sched.shutdown(cancel, self.now);
            }
            98 if !self.closed && self.rng.chance(30) => {
                self.log.push("terminate".into());
                self.closed = true;
                self.terminated = true;
                self.sched
                    .terminate(Stop::Signal(15), "terminate", self.now);
            }
            _ => self.time_passes(),
        }
        self.drain_actions();
        self.check_waiting();
    }

    fn submit(&mut self) {
        let id = self.next_task;
        self.next_task += 1;
        let limit = if self.rng.chance(20) {
            Some(Duration::from_millis(1 + self.rng.below(50)))
        } else {
            None
        };
        let handle = SimHandle(Rc::new(RefCell::new(FutureState {
            id,
            phase: Phase::Pending,
            ends: 0,
            // A task without a limit of its own has the pool's.
            limit: limit.or(self.cfg.task_timeout),
        })));
        let accepted = self.sched.submit(handle.clone(), limit, self.now);
        self.log.push(format!(
            "submit {id} limit {limit:?}: {:?}",
            accepted.as_ref().err()
        ));
        match accepted {
            Ok(()) => {
                self.check(!self.closed, || {
                    format!("task {id} accepted after shutdown")
                });
                let fails = self.failed_in_a_row;
                self.check(fails < self.cfg.max_failed_starts, || {
                    format!("task {id} accepted after {fails} failed starts in a row")
                });
                self.check(!self.broken, || {
                    format!("task {id} accepted by a broken pool")
                });
                self.futures.insert(id, handle);
            }
            Err(Error::Shutdown) => self.check(self.closed, || "refused while open".into()),
            Err(Error::BrokenPool { .. }) => {}
            Err(e) => self.fail(&format!("submit refused with {e}")),
        }
    }

    fn random_future(&mut self) -> Option<SimHandle> {
        if self.futures.is_empty() {
            return None;
        }
        let first = *self.futures.keys().next()?;
        let last = *self.futures.keys().next_back()?;
        let pick = first + self.rng.below(last - first + 1);
        self.futures.range(pick..).next().map(|(_, h)| h.clone())
    }

    fn owner_cancel(&mut self) {
        if let Some(h) = self.random_future() {
            let ok = h.cancel();
            self.log.push(format!("owner cancels {}: {ok}", h.id()));
        }
    }

    /// `Future::kill`: cancel if pending, else ask the pool.
    fn kill(&mut self) {
        let Some(h) = self.random_future() else {
            return;
        };
        let id = h.id();
        if h.cancel() {
            self.log.push(format!("kill {id}: cancelled"));
            return;
        }
        if h.0.borrow().phase != Phase::Claimed {
            return;
        }
        // Which worker runs it right now, as the world knows.
        let running_on = (self.workers.iter())
            .find(|(_, w)| !w.dead && w.running == Some(id))
            .map(|(id, _)| *id);
        self.log
            .push(format!("kill {id} (running on {running_on:?})"));
        self.killed.insert(id);
        self.sched.kill(id, self.now);
        self.drain_actions();
        // Invariant 5: kill() on a running task stops it.
        if let Some(w) = running_on {
            let ended = matches!(&h.0.borrow().phase, Phase::Ended(Err(Error::Killed { .. })));
            let killed = self.workers[&w].dead;
            self.check(ended && killed, || {
                format!("kill of task {id} running on {w:?}: ended {ended}, worker killed {killed}")
            });
        }
    }

    fn live_workers(&self) -> Vec<WorkerId> {
        (self.workers.iter())
            .filter(|(_, w)| !w.dead)
            .map(|(id, _)| *id)
            .collect()
    }

    fn worker_takes_frame(&mut self) {
        let candidates: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| !w.dead && !w.stopped && w.running.is_none())
            .map(|(id, _)| *id)
            .collect();
        let Some(id) = self.rng.pick(&candidates) else {
            return;
        };
        let w = self.workers.get_mut(&id).unwrap_or_else(|| unreachable!());
        let Some((t, send)) = w.unread.pop_front() else {
            if w.exiting {
                // Everything read: it exits.
                self.log.push(format!("{id:?} exits"));
                self.die(id);
            }
            return;
        };
        if w.claims.get(&send) == Some(&Claim::Sent) {
            w.claims.insert(send, Claim::Started);
            w.running = Some(t);
            self.started_at.insert(t, self.now);
            *self.runs.entry(t).or_default() += 1;
            self.log.push(format!("{id:?} starts {t}"));
            // Invariant 3: a task runs once, plus once per death it ran
            // into (retries).
            let runs = self.runs[&t];
            let deaths = self.died_running.get(&t).copied().unwrap_or(0);
            self.check(runs <= deaths + 1 && deaths <= self.cfg.retries, || {
                format!("task {t} started {runs} times after {deaths} deaths")
            });
        } else {
            self.log.push(format!("{id:?} skips {t} (taken back)"));
        }
    }

    fn worker_finishes(&mut self) {
        let candidates: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| !w.dead && !w.stopped && w.running.is_some())
            .map(|(id, _)| *id)
            .collect();
        let Some(id) = self.rng.pick(&candidates) else {
            return;
        };
        let w = self.workers.get_mut(&id).unwrap_or_else(|| unreachable!());
        if let Some(t) = w.running.take() {
            // The reply leaves before the next task starts.
            w.socket.push_back(t);
            self.log.push(format!("{id:?} finishes {t}"));
        }
    }

    fn read_reply(&mut self, id: WorkerId) -> bool {
        let now = self.now;
        let Some(w) = self.workers.get_mut(&id) else {
            return false;
        };
        let Some(t) = w.socket.pop_front() else {
            return false;
        };
        w.in_flight.retain(|&x| x != t);
        w.last_news = Some(now);
        w.stalled = None;
        w.proven = true;
        self.failed_in_a_row = 0;
        let micros = self.rng.below(5000) as u32;
        let handle = self.sched.reply(id, t, micros, now);
        self.log
            .push(format!("read reply {t} from {id:?}: {}", handle.is_some()));
        if let Some(h) = handle {
            self.check(h.id() == t, || "reply gave another task".into());
            self.end(&h, Ok(()));
            self.replied.insert(t);
        }
        true
    }

    fn pool_reads_reply(&mut self) {
        let candidates: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| !w.socket.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if let Some(id) = self.rng.pick(&candidates) {
            self.read_reply(id);
        }
    }

    fn crash(&mut self) {
        let live = self.live_workers();
        if let Some(id) = self.rng.pick(&live) {
            self.log.push(format!("{id:?} crashes"));
            self.die(id);
        }
    }

    /// A dead worker's reader reads its channel to the end, then reports.
    fn report_lost(&mut self) {
        let dead: Vec<WorkerId> = (self.workers.iter())
            .filter(|(id, w)| w.dead && !self.gone.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let Some(id) = self.rng.pick(&dead) else {
            return;
        };
        while self.read_reply(id) {
            self.drain_actions();
        }
        let w = &self.workers[&id];
        let started: Vec<TaskId> = (w.latest.iter())
            .filter(|(_, send)| w.claims.get(send) == Some(&Claim::Started))
            .map(|(t, _)| *t)
            .filter(|t| !self.replied.contains(t))
            .collect();
        self.log.push(format!("{id:?} lost, started {started:?}"));
        if !w.proven && started.is_empty() && !w.stop_asked {
            self.failed_in_a_row += 1;
        }
        self.gone.insert(id);
        let death = Death {
            cause: Error::WorkerDied {
                pid: id.0 as u32,
                status: "crashed".into(),
                exit: WorkerExit::Signal(9),
                tries: 0,
            },
            started,
        };
        self.sched.lost(id, death, self.now);
    }

    fn start_result(&mut self) {
        if self.starting.is_empty() {
            return;
        }
        let i = self.rng.below(self.starting.len() as u64) as usize;
        let id = self.starting.remove(i);
        if self.rng.chance(15) {
            self.failed_in_a_row += 1;
            self.log.push(format!("{id:?} fails to start"));
            self.sched
                .start_failed(id, "could not start".into(), self.now);
        } else {
            let doomed = self.rng.chance(10);
            self.log
                .push(format!("{id:?} started (dies at once: {doomed})"));
            self.workers.insert(id, SimWorker::default());
            self.sched.started(id, self.now);
            if doomed {
                self.drain_actions();
                self.die(id);
            }
        }
    }

    fn stop_or_continue(&mut self) {
        let live = self.live_workers();
        if let Some(id) = self.rng.pick(&live) {
            let w = self.workers.get_mut(&id).unwrap_or_else(|| unreachable!());
            w.stopped = !w.stopped;
            let stopped = w.stopped;
            self.log.push(format!("{id:?} stopped={stopped}"));
        }
    }

    fn time_passes(&mut self) {
        let jump = match self.rng.below(10) {
            0..=5 => Duration::from_micros(self.rng.below(3000)),
            6..=8 => Duration::from_millis(self.rng.below(60)),
            _ => Duration::from_secs(1 + self.rng.below(3)),
        };
        self.now += jump;
        self.tick_if_due();
    }

    /// What the clock thread does: tick once the deadline has come.
    fn tick_if_due(&mut self) {
        while let Some(deadline) = self.sched.next_deadline(self.now) {
            self.ticks += 1;
            if self.ticks > 20_000 {
                self.fail("the clock ticks without end");
            }
            if deadline > self.now {
                break;
            }
            self.log.push(format!("tick at +{:?}", deadline));
            self.sched.tick(self.now);
            self.drain_actions();
        }
    }

    /// Invariant 8, checked once the clock is up to date: while a worker
    /// has been idle and nothing is queued, no task waits unstarted behind a
    /// busy worker for longer than the window. The scheduler learns that a
    /// worker's task runs long only from news of that worker (a send, a
    /// reply, a revoke answered), and may need one revoke to learn that its
    /// head has finished, hence two windows from the later of those.
    fn check_waiting(&mut self) {
        self.tick_if_due();
        let idle = self.eligible_idle(None);
        let now = self.now;
        self.idle_since.retain(|w, _| idle.contains(w));
        for w in &idle {
            self.idle_since.entry(*w).or_insert(now);
        }
        if self.closed {
            return;
        }
        let Some(idle_from) = self.idle_since.values().min().copied() else {
            return;
        };
        let queued = (self.futures.values()).any(|f| {
            let f = f.0.borrow();
            f.phase == Phase::Pending
                || (f.phase == Phase::Claimed
                    && !self.workers.values().any(|w| w.in_flight.contains(&f.id)))
        });
        if queued {
            return;
        }
        for (id, w) in &self.workers {
            if w.dead || w.stop_asked || self.gone.contains(id) {
                continue;
            }
            let Some(news) = w.last_news else {
                continue;
            };
            let from = news.max(idle_from);
            if now.duration_since(from) <= 2 * self.cfg.window {
                continue;
            }
            let waiting = (w.in_flight.iter()).find(|t| {
                let send = w.latest.get(t).copied().unwrap_or(0);
                w.claims.get(&send) == Some(&Claim::Sent)
            });
            self.check(waiting.is_none(), || {
                format!(
                    "task {waiting:?} waits behind busy {id:?} for {:?} while {idle:?} idle",
                    now.duration_since(from),
                )
            });
        }
    }

    /// Lets everything finish: workers run and answer, dead ones are
    /// reported, starts answered, time passes; then every task must have
    /// ended exactly once and the pool must have finished.
    fn drain(&mut self) {
        if !self.closed {
            self.closed = true;
            self.sched.shutdown(self.rng.chance(50), self.now);
            self.drain_actions();
        }
        for w in self.workers.values_mut() {
            w.stopped = false;
        }
        for _ in 0..100_000 {
            if self.finished {
                break;
            }
            let before = self.log.len();
            self.worker_takes_frame();
            self.drain_actions();
            self.worker_finishes();
            self.drain_actions();
            self.pool_reads_reply();
            self.drain_actions();
            self.report_lost();
            self.drain_actions();
            self.start_result();
            self.drain_actions();
            if self.log.len() == before {
                self.now += Duration::from_millis(100);
                self.tick_if_due();
            }
            self.drain_actions();
        }
        self.check(self.finished, || "never finished after shutdown".into());
        for (id, f) in &self.futures {
            let f = f.0.borrow();
            self.check(f.ends == 1, || {
                format!("task {id} ended {} times, is {:?}", f.ends, f.phase)
            });
            if let (Phase::Ended(Err(Error::TaskTimedOut { limit })), Some(l)) = (&f.phase, f.limit)
            {
                self.check(*limit == l, || {
                    format!("task {id} timed out on another limit")
                });
            }
        }
    }
}

fn run(seed: u64) {
    let mut world = World::new(seed);
    let steps = 50 + world.rng.below(400);
    for _ in 0..steps {
        world.step();
    }
    world.drain();
}

#[test]
fn scheduler_keeps_its_invariants() {
    if let Some(seed) = std::env::var("TWINPOOL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed);
        return;
    }
    let runs: u64 = std::env::var("TWINPOOL_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    for seed in 0..runs {
        run(seed);
    }
}
