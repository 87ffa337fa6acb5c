//! The process pool's policy: a state machine with no threads, no clock and
//! no system calls.
//!
//! Everything the pool decides is decided here: which worker gets which
//! task and when, when a task is taken back, when a worker is killed,
//! started, retired or stopped, and how every task ends when something goes
//! wrong. The I/O around it (see `driver.rs`) feeds it *events*, each with
//! the time, and carries out the *actions* it queues, in order:
//!
//! | event | from |
//! |---|---|
//! | [`submit`](Scheduler::submit), [`kill`](Scheduler::kill), [`shutdown`](Scheduler::shutdown), [`terminate`](Scheduler::terminate) | the user's threads |
//! | [`reply`](Scheduler::reply), [`init_done`](Scheduler::init_done), [`lost`](Scheduler::lost) | a worker's reader |
//! | [`started`](Scheduler::started), [`start_failed`](Scheduler::start_failed) | the spawner |
//! | [`revoked`](Scheduler::revoked) | the transport, answering a [`Action::Revoke`] |
//! | [`tick`](Scheduler::tick) | the clock, at [`next_deadline`](Scheduler::next_deadline) |
//!
//! The actions are [`Action`]s: send these tasks to that worker, try to take
//! this task back, end this task with that error, start a worker, stop one,
//! and "finished". This is the shape of quinn-proto and h11: because the
//! state machine owns no I/O, a seeded simulation (`sim.rs`) can drive it
//! through every interleaving of replies, deaths and time jumps and check
//! its invariants after every step, and a second transport (MPI ranks) can
//! reuse it unchanged.
//!
//! # Words
//!
//! * **task**: one submitted call (a single task or a chunk of a map), by
//!   the id of its future. A task is *queued* (here, waiting), or *on* one
//!   worker: sent, and not yet answered.
//! * **in flight**: a worker's tasks, in the order they were sent. The
//!   worker runs them in that order, so the first, the **head**, is the one
//!   running (or about to run).
//! * **returned**: tasks that came back unstarted (taken back, or left on a
//!   worker that died); they are sent again before anything queued.
//! * **revoke**: asking the transport to take back a task that was sent. The
//!   transport answers exactly: yes, and the worker will never start it; or
//!   no, the worker has started it already. (The local transport does it
//!   with a compare-and-swap on a claim word the worker must win before it
//!   runs a task, see `claims.rs`.)
//! * **doom**: killing a worker to stop its running task (a time limit or
//!   `Future::kill`). The task itself (unless it is known to run) and the
//!   tasks behind it are revoked first. If the task is taken back, it had
//!   not started: a kill ends it without harm, and a time limit, which
//!   counts from the start, has not begun (it is sent again). If one of the
//!   tasks behind it had started, the task has finished, and the doom is
//!   called off. Otherwise the worker can run nothing but that task, so
//!   killing it costs that task alone. A time limit counts from the start
//!   time the transport reports with a failed revoke, when it does.
//! * **stalled**: a worker whose head was taken back unstarted after the
//!   batching window (stopped with SIGSTOP, or stuck in its initializer).
//!   For a while ([`Config::stall`]), or until it answers, it gets work only
//!   when no other worker has room, and is not counted as idle.
//! * **worn out**: a worker that has been sent `max_tasks_per_child` tasks.
//!   It gets nothing more and is told to exit once its last task is answered.
//!
//! # Accounting
//!
//! The pool does not guess which task a dead worker was running. A worker
//! sends each reply before it starts its next task, and its reader reads the
//! channel to its end before it reports the death, so at a death every task
//! that had finished has been answered. Of the rest, the transport reports
//! exactly which had been started ([`Death::started`]): at most one. That one
//! is blamed (or tried again, with `retries`); the others go back to the
//! front of the queue.
//!
//! # Invariants
//!
//! Checked after every step of the simulation (`sim.rs`):
//!
//! 1. Every task ends exactly once: by its reply, or by one [`Action::Fail`],
//!    or by its owner's cancel before it was sent.
//! 2. A task whose reply was read is never blamed for anything.
//! 3. A task a worker never started is sent again, and runs at most once.
//! 4. A task that was cancelled, killed, timed out or failed is never sent
//!    again.
//! 5. `kill()` on a running task stops it: its worker is killed.
//! 6. Nothing is sent to a worker that died or is being stopped.
//! 7. An idle worker gets work before a busy one.
//! 8. No task waits behind a busy worker longer than the batching window
//!    while another worker is idle: it is taken back and sent there.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::Error;

/// A task, by the id of its future (unique in the process).
pub(crate) type TaskId = u64;

/// A map by task id. Ids are small sequential integers: std's SipHash,
/// built against hostile keys, is wasted on them and showed in profiles.
pub(crate) type TaskMap<V> = HashMap<TaskId, V, BuildHasherDefault<IdHasher>>;

/// Spreads a task id over 64 bits with one multiplication (Fibonacci
/// hashing); for [`TaskMap`].
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = (id ^ self.0.rotate_left(5)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
}

/// A worker, by a number the scheduler gives it when it asks for it; never
/// reused, so an event about a replaced worker is recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WorkerId(pub(crate) u64);

/// What the scheduler holds of a task: a cheap handle that the actions hand
/// back to the I/O layer (which finds the payload through it).
pub(crate) trait Handle: Clone {
    /// The task's id.
    fn id(&self) -> TaskId;
    /// Marks the task running as it is first sent; false if its owner
    /// cancelled it meanwhile (it has ended then, and is dropped).
    fn claim(&self) -> bool;
    /// Cancels the task if it was never sent; true if it is now cancelled.
    fn cancel(&self) -> bool;
}

/// The pool's policy settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// How many workers the pool keeps.
    pub(crate) workers: usize,
    /// How many more times a task whose worker died while running it is
    /// run again.
    pub(crate) retries: u32,
    /// Replace a worker after it has been sent this many tasks.
    pub(crate) max_tasks_per_child: Option<usize>,
    /// The batching window: a worker is sent about this much work ahead,
    /// and a task waits at most this long behind a busy worker while
    /// another is idle.
    pub(crate) window: Duration,
    /// The most tasks in flight on one worker.
    pub(crate) max_in_flight: usize,
    /// Workers in a row that fail to start (or die before they answer
    /// anything) before the pool is broken.
    pub(crate) max_failed_starts: u32,
    /// The wait before a start after a failed one; it doubles with each
    /// failure in a row, up to `max_backoff`.
    pub(crate) first_backoff: Duration,
    /// The longest wait between starts.
    pub(crate) max_backoff: Duration,
    /// How long a worker told to exit (or sent SIGTERM) has before it is
    /// killed.
    pub(crate) stop_grace: Duration,
    /// How long a stalled worker is passed over.
    pub(crate) stall: Duration,
    /// The time limit of a task submitted without one of its own.
    pub(crate) task_timeout: Option<Duration>,
}

impl Config {
    /// The defaults, for `workers` workers.
    pub(crate) fn new(workers: usize) -> Config {
        Config {
            workers,
            retries: 0,
            max_tasks_per_child: None,
            window: Duration::from_millis(2),
            max_in_flight: 512,
            max_failed_starts: 8,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            stop_grace: Duration::from_secs(2),
            stall: Duration::from_millis(50),
            task_timeout: None,
        }
    }
}

/// How a worker ended, as its transport saw it.
#[derive(Debug, Clone)]
pub(crate) struct Death {
    /// The error its running task gets: [`Error::WorkerDied`] (whose
    /// `tries` the scheduler fills in) or [`Error::OutOfMemory`].
    pub(crate) cause: Error,
    /// Its unanswered tasks that it had started.
    pub(crate) started: Vec<TaskId>,
}

/// How to stop a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Ask it to exit once it has answered what it holds.
    Exit,
    /// Kill it and every process of its group at once.
    Kill,
    /// Send this signal to it and its group (`terminate_workers`).
    Signal(i32),
}

/// The transport's answer to [`Action::Revoke`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// Taken back: the worker will never start it.
    Taken,
    /// Too late: the worker started it, at this time if the transport
    /// knows.
    Started(Option<Instant>),
}

/// What the scheduler asks the I/O layer to do.
#[derive(Debug)]
pub(crate) enum Action<H> {
    /// Send these tasks to the worker, in this order.
    Send { worker: WorkerId, tasks: Vec<H> },
    /// Try to take the task back; answer with [`Scheduler::revoked`].
    Revoke { worker: WorkerId, task: TaskId },
    /// End the task with this error.
    Fail { task: H, error: Error },
    /// Start a worker under this id; answer with [`Scheduler::started`] or
    /// [`Scheduler::start_failed`].
    Start { worker: WorkerId },
    /// Stop the worker; its end comes back as [`Scheduler::lost`].
    Stop { worker: WorkerId, how: Stop },
    /// The pool is closed and every worker is gone: nothing more will
    /// happen. Queued once.
    Finished,
}

/// Why a task is being stopped (`kill()` or `terminate_workers`); the error
/// it ends in depends on whether it had started.
#[derive(Debug, Clone, Copy)]
enum Halt {
    Kill,
    Terminate(&'static str),
}

impl Halt {
    fn error(self, ran: bool) -> Error {
        let how = match (self, ran) {
            (Halt::Kill, true) => {
                "Future::kill stopped it while it ran; its worker process was killed and replaced"
                    .to_string()
            }
            (Halt::Kill, false) => "Future::kill stopped it before it started".to_string(),
            (Halt::Terminate(by), true) => format!("{by} killed its worker process while it ran"),
            (Halt::Terminate(by), false) => {
                format!("{by} stopped the pool before it started")
            }
        };
        Error::Killed { how }
    }
}

/// Why a worker is being killed: to stop its task, or because the task
/// ran past its time limit.
#[derive(Debug, Clone, Copy)]
enum Doom {
    Halt(Halt),
    Limit(Duration),
}

impl Doom {
    /// The error of the task, which ran.
    fn error(self) -> Error {
        match self {
            Doom::Halt(h) => h.error(true),
            Doom::Limit(limit) => Error::TaskTimedOut { limit },
        }
    }
}

/// Why a revoke is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// To send it to an idle worker.
    Rebalance,
    /// `kill()`: if it has not started it ends at once.
    Kill,
    /// A doom takes back its task and the tasks behind it.
    Doom,
    /// `terminate_workers`.
    Terminate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Queued,
    On(WorkerId),
}

/// A task taken off the queue to be sent for the first time, and its limit.
type Popped<H> = (H, Option<Duration>);

/// A task that was sent (and claimed then), on a worker or returned.
struct Task<H> {
    handle: H,
    limit: Option<Duration>,
    at: Place,
    /// Times its worker died while running it.
    tries: u32,
    /// Known to have started on its worker (a revoke of it failed).
    started: bool,
    /// When it started, if the transport said.
    started_at: Option<Instant>,
    /// Known to have finished: a task sent after it has started, so its
    /// reply is on its way.
    finished: bool,
    /// A revoke for it is out.
    revoking: Option<Why>,
    /// It is to be stopped, as soon as it is known whether it started.
    halt: Option<Halt>,
}

enum WorkerState {
    Live,
    /// Being killed to stop `task`, once the revokes of it (unless it is
    /// known to run) and of the tasks behind it (`waiting` of them) are
    /// answered; called off if it had not started, or if one of those had
    /// (it has finished then).
    Dooming {
        task: TaskId,
        doom: Doom,
        waiting: usize,
    },
    /// Told to stop at `since`, in this way.
    Stopping {
        since: Instant,
        how: Stop,
    },
}

struct Worker {
    state: WorkerState,
    in_flight: VecDeque<TaskId>,
    /// When its current task (the first not known to have finished) became
    /// current: the start of its time limit.
    since: Instant,
    /// A running average of its tasks' run time, in µs.
    avg_micros: Option<u32>,
    /// Tasks sent to it and not taken back (for `max_tasks_per_child`).
    sent: usize,
    /// It has answered something: it was a good start.
    proven: bool,
    /// Stalled until then (see the module doc).
    stalled: Option<Instant>,
}

impl Worker {
    fn new(now: Instant) -> Worker {
        Worker {
            state: WorkerState::Live,
            in_flight: VecDeque::new(),
            since: now,
            avg_micros: None,
            sent: 0,
            proven: false,
            stalled: None,
        }
    }

    fn live(&self) -> bool {
        matches!(self.state, WorkerState::Live)
    }
}

/// The process pool's policy; see the module doc.
pub(crate) struct Scheduler<H> {
    cfg: Config,
    tasks: TaskMap<Task<H>>,
    /// Tasks that came back unstarted: sent before `queue`. (Stale ids of
    /// tasks that ended meanwhile are skipped.)
    returned: VecDeque<TaskId>,
    /// Tasks never sent, in submit order: kept out of `tasks`, so that a
    /// queued task costs only its handle here. A million may be queued, so
    /// a limit of its own (rare: most tasks have the pool's,
    /// [`Config::task_timeout`]) is kept aside, in `limits`.
    queue: VecDeque<H>,
    /// The time limits of tasks in `queue` that have one of their own.
    limits: TaskMap<Duration>,
    /// Tasks waiting to be sent: `queue` and the live part of `returned`.
    waiting: usize,
    workers: BTreeMap<WorkerId, Worker>,
    /// Starts asked for and not yet answered.
    starting: usize,
    /// Starts asked for in all (each replaces a worker: the first workers
    /// are started before the scheduler).
    restarts: u64,
    next_worker: u64,
    /// Failed starts in a row, and no start before `next_start`.
    failed_starts: u32,
    next_start: Option<Instant>,
    closing: bool,
    terminating: bool,
    broken: Option<String>,
    finished: bool,
    actions: VecDeque<Action<H>>,
}

impl<H: Handle> Scheduler<H> {
    /// A scheduler whose pool has the workers `ready` (started and
    /// connected) at `now`.
    pub(crate) fn new(cfg: Config, ready: &[WorkerId], now: Instant) -> Self {
        let mut s = Scheduler {
            cfg,
            tasks: TaskMap::default(),
            returned: VecDeque::new(),
            queue: VecDeque::new(),
            limits: TaskMap::default(),
            waiting: 0,
            workers: BTreeMap::new(),
            starting: 0,
            restarts: 0,
            next_worker: 0,
            failed_starts: 0,
            next_start: None,
            closing: false,
            terminating: false,
            broken: None,
            finished: false,
            actions: VecDeque::new(),
        };
        for &w in ready {
            s.workers.insert(w, Worker::new(now));
            s.next_worker = s.next_worker.max(w.0 + 1);
        }
        s.after(now);
        s
    }

    /// The pool's state for [`Stats`](crate::Stats): queued and running
    /// tasks (sent counts as running), workers live, workers started to
    /// replace others. The driver adds the counts of ended tasks.
    pub(crate) fn census(&self) -> crate::Stats {
        crate::Stats {
            queued: self.waiting,
            running: self.workers.values().map(|w| w.in_flight.len()).sum(),
            live_workers: self.workers.values().filter(|w| w.live()).count(),
            worker_restarts: self.restarts,
            ..crate::Stats::default()
        }
    }

    /// The next action to carry out, in order.
    pub(crate) fn poll_action(&mut self) -> Option<Action<H>> {
        self.actions.pop_front()
    }

    /// When [`tick`](Self::tick) should next be called, if ever, as of
    /// `now`.
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        let idle = self.idle_worker_exists(now);
        for w in self.workers.values() {
            // A stall that ends may let an idle worker take work back.
            at(w.stalled.filter(|&t| t > now));
            match &w.state {
                WorkerState::Live => {
                    at(self.limit_deadline(w));
                    if idle && self.waiting == 0 && self.revocable(w).next().is_some() {
                        at(w.since.checked_add(self.cfg.window));
                    }
                }
                WorkerState::Stopping { since, how } if *how != Stop::Kill => {
                    at(since.checked_add(self.cfg.stop_grace));
                }
                _ => {}
            }
        }
        if self.serving() < self.wanted() {
            at(self.next_start);
        }
        next
    }

    /// The state, for the simulation's failure reports.
    #[cfg(test)]
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for (id, w) in &self.workers {
            let state = match &w.state {
                WorkerState::Live => "live".to_string(),
                WorkerState::Dooming {
                    task,
                    doom,
                    waiting,
                } => {
                    format!("dooming {task} {doom:?} waiting {waiting}")
                }
                WorkerState::Stopping { how, .. } => format!("stopping {how:?}"),
            };
            let tasks: Vec<String> = (w.in_flight.iter())
                .map(|t| match self.tasks.get(t) {
                    Some(t) => format!(
                        "{}{}{}{} limit {:?} at {:?}",
                        t.handle.id(),
                        if t.started { "s" } else { "" },
                        if t.finished { "f" } else { "" },
                        if t.revoking.is_some() { "r" } else { "" },
                        t.limit,
                        t.started_at
                    ),
                    None => format!("{t}?"),
                })
                .collect();
            out.push_str(&format!("{id:?} {state} {tasks:?} since {:?}\n", w.since));
        }
        out.push_str(&format!("waiting {}\n", self.waiting));
        out
    }

    // ----- events from the user's threads -----

    /// Queues a task with a time limit of its own (`None`: the pool's,
    /// [`Config::task_timeout`]); refused once the pool is closed or broken
    /// (the task then never runs).
    pub(crate) fn submit(
        &mut self,
        task: H,
        limit: Option<Duration>,
        now: Instant,
    ) -> Result<(), Error> {
        if let Some(reason) = &self.broken {
            return Err(Error::BrokenPool {
                reason: reason.clone(),
            });
        }
        if self.closing {
            return Err(Error::Shutdown);
        }
        if let Some(limit) = limit {
            self.limits.insert(task.id(), limit);
        }
        self.queue.push_back(task);
        self.waiting += 1;
        self.after(now);
        Ok(())
    }

    /// `Future::kill`: stops the task, running or not.
    pub(crate) fn kill(&mut self, id: TaskId, now: Instant) {
        self.halt(id, Halt::Kill, now);
        self.after(now);
    }

    /// Stops taking work; with `cancel`, cancels the queued tasks that were
    /// never sent. The workers exit once the rest is done.
    pub(crate) fn shutdown(&mut self, cancel: bool, now: Instant) {
        self.closing = true;
        if cancel {
            // Tasks never sent are cancelled; returned ones were sent, and
            // run, as in Python, where a task handed to a worker is running.
            let before = self.queue.len();
            let limits = &mut self.limits;
            self.queue.retain(|t| {
                let cancelled = t.cancel();
                if cancelled {
                    limits.remove(&t.id());
                }
                !cancelled
            });
            self.waiting -= before - self.queue.len();
        }
        self.after(now);
    }

    /// Stops every worker at once with `how` (`terminate_workers`,
    /// `kill_workers`, named by `by`): queued tasks are cancelled, tasks
    /// that had not started end in `Killed` and never run, running ones end
    /// in `Killed` now.
    pub(crate) fn terminate(&mut self, how: Stop, by: &'static str, now: Instant) {
        self.closing = true;
        self.terminating = true;
        let (returned, fresh) = self.drain_queued();
        for task in fresh {
            task.cancel();
        }
        for id in returned {
            self.fail(id, Halt::Terminate(by).error(false));
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for w in ids {
            self.stop_worker(w, how, now);
            let in_flight: Vec<TaskId> = self.workers[&w].in_flight.iter().copied().collect();
            for t in in_flight {
                self.halt(t, Halt::Terminate(by), now);
            }
        }
        self.after(now);
    }

    // ----- events from the workers -----

    /// A connected worker is ready (a replacement asked for by
    /// [`Action::Start`]).
    pub(crate) fn started(&mut self, w: WorkerId, now: Instant) {
        self.starting = self.starting.saturating_sub(1);
        self.workers.insert(w, Worker::new(now));
        self.after(now);
    }

    /// A worker could not be started.
    pub(crate) fn start_failed(&mut self, _w: WorkerId, reason: String, now: Instant) {
        self.starting = self.starting.saturating_sub(1);
        self.failed_start(reason, now);
        self.after(now);
    }

    /// A worker ran its initializer: `Some(message)` if it failed, which
    /// breaks the pool.
    pub(crate) fn init_done(&mut self, w: WorkerId, error: Option<String>, now: Instant) {
        let Some(worker) = self.workers.get_mut(&w) else {
            return;
        };
        match error {
            None => {
                worker.proven = true;
                worker.stalled = None;
            }
            Some(reason) => {
                // The worker exits after a failed initializer: whatever it
                // holds never runs.
                let held: Vec<TaskId> = worker.in_flight.drain(..).collect();
                self.stop_worker(w, Stop::Exit, now);
                self.break_pool(reason.clone());
                for id in held {
                    self.fail(
                        id,
                        Error::BrokenPool {
                            reason: reason.clone(),
                        },
                    );
                }
            }
        }
        self.after(now);
    }

    /// Task `id` on worker `w` was answered after `micros` of running.
    /// Returns its handle when the answer is its result: not when the task
    /// ended otherwise meanwhile (killed, timed out), or the worker is not
    /// the one that holds it.
    pub(crate) fn reply(
        &mut self,
        w: WorkerId,
        id: TaskId,
        micros: u32,
        now: Instant,
    ) -> Option<H> {
        let worker = self.workers.get_mut(&w)?;
        worker.proven = true;
        worker.stalled = None;
        worker.avg_micros = Some(match worker.avg_micros {
            None => micros,
            Some(old) => ((u64::from(old) * 7 + u64::from(micros)) / 8) as u32,
        });
        self.failed_starts = 0;
        if !self.take_off(w, id, now) {
            return None;
        }
        let task = self.tasks.remove(&id)?;
        self.after(now);
        Some(task.handle)
    }

    /// The answer to [`Action::Revoke`].
    pub(crate) fn revoked(&mut self, w: WorkerId, id: TaskId, answer: Revoked, now: Instant) {
        let taken = answer == Revoked::Taken;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if task.at != Place::On(w) {
            return;
        }
        let why = task.revoking.take();
        let halt = task.halt.take();
        let Some(worker) = self.workers.get_mut(&w) else {
            return;
        };
        let was_head = worker.in_flight.front() == Some(&id);
        let mut target_of = None;
        if let WorkerState::Dooming {
            task,
            doom,
            waiting,
            ..
        } = &mut worker.state
        {
            if why == Some(Why::Doom) {
                *waiting = waiting.saturating_sub(1);
            }
            if *task == id {
                target_of = Some(*doom);
            }
        }
        if taken {
            worker.sent = worker.sent.saturating_sub(1);
            let stalled = match target_of {
                Some(Doom::Limit(_)) => true,
                _ => was_head && why == Some(Why::Rebalance),
            };
            if stalled {
                worker.stalled = now.checked_add(self.cfg.stall);
            }
            self.take_off(w, id, now);
            match (halt, target_of) {
                // A task that never started is stopped without harm...
                (Some(h), _) | (None, Some(Doom::Halt(h))) => self.fail(id, h.error(false)),
                // ... and one that never started has not used its time.
                (None, Some(Doom::Limit(_)) | None) => self.requeue(id),
            }
            self.settle_doom(w, now);
        } else {
            // It has started, so everything before it has finished: that
            // may be the task a doom is for, which is then called off.
            let at = match answer {
                Revoked::Started(at) => at,
                Revoked::Taken => None,
            };
            self.learn_started(w, id, at, now);
            let mut halt = halt;
            if let (Some(h), Some(_)) = (halt, target_of) {
                // The doom goes on, for the kill.
                if let Some(Worker {
                    state: WorkerState::Dooming { doom, .. },
                    ..
                }) = self.workers.get_mut(&w)
                {
                    *doom = Doom::Halt(h);
                }
                halt = None;
            }
            self.settle_doom(w, now);
            if let Some(h) = halt {
                self.halt_started(w, id, h, now);
            }
        }
        self.after(now);
    }

    /// Worker `w` is gone: its reader has read everything it sent, and it
    /// has been reaped.
    pub(crate) fn lost(&mut self, w: WorkerId, death: Death, now: Instant) {
        let Some(worker) = self.workers.remove(&w) else {
            return;
        };
        let stopped_by_us = matches!(worker.state, WorkerState::Stopping { .. });
        let crashed_a_task = worker.in_flight.iter().any(|t| death.started.contains(t));
        for id in worker.in_flight {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            task.revoking = None;
            let ran = death.started.contains(&id);
            if let Some(h) = task.halt.take() {
                self.fail(id, h.error(ran));
            } else if !ran {
                self.requeue(id);
            } else {
                task.tries += 1;
                if task.tries <= self.cfg.retries {
                    self.requeue(id);
                } else {
                    let error = with_tries(death.cause.clone(), task.tries);
                    self.fail(id, error);
                }
            }
        }
        if !(worker.proven || crashed_a_task || stopped_by_us) {
            self.failed_start(death_reason(&death.cause), now);
        }
        self.after(now);
    }

    /// Time passed: enforce time limits, escalate stops, take work back
    /// from busy workers for idle ones, start workers after a back-off.
    pub(crate) fn tick(&mut self, now: Instant) {
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for w in ids {
            let Some(worker) = self.workers.get(&w) else {
                continue;
            };
            if let WorkerState::Stopping { since, how } = worker.state {
                let grace_over = (since.checked_add(self.cfg.stop_grace)).is_some_and(|t| now >= t);
                if how != Stop::Kill && grace_over {
                    self.stop_worker(w, Stop::Kill, now);
                }
            } else if self.limit_deadline(worker).is_some_and(|d| now >= d) {
                if let Some(current) = self.current(worker) {
                    let limit = (self.tasks.get(&current))
                        .and_then(|t| t.limit)
                        .unwrap_or_default();
                    self.doom(w, current, Doom::Limit(limit), now);
                }
            }
        }
        self.after(now);
    }

    // ----- policy -----

    /// After every event: take work back for idle workers, send what can
    /// be sent, stop workers with nothing left to do, start workers, and
    /// finish.
    fn after(&mut self, now: Instant) {
        self.dispatch(now);
        self.rebalance(now);
        self.stop_idle(now);
        self.start_more(now);
        if !self.finished
            && self.closing_or_broken()
            && self.workers.is_empty()
            && self.starting == 0
            && self.waiting == 0
        {
            self.finished = true;
            self.actions.push_back(Action::Finished);
        }
    }

    fn closing_or_broken(&self) -> bool {
        self.closing || self.broken.is_some()
    }

    /// How many workers the pool wants now.
    fn wanted(&self) -> usize {
        if self.broken.is_some() || self.terminating || (self.closing && self.waiting == 0) {
            0
        } else {
            self.cfg.workers
        }
    }

    /// Workers that will take more work (a doom may yet be called off),
    /// and those starting.
    fn serving(&self) -> usize {
        let serving = (self.workers.values())
            .filter(|w| !matches!(w.state, WorkerState::Stopping { .. }) && !self.worn_out(w))
            .count();
        serving + self.starting
    }

    fn worn_out(&self, w: &Worker) -> bool {
        self.cfg.max_tasks_per_child.is_some_and(|m| w.sent >= m)
    }

    fn start_more(&mut self, now: Instant) {
        while self.serving() < self.wanted() {
            if self.next_start.is_some_and(|t| now < t) {
                return;
            }
            let worker = WorkerId(self.next_worker);
            self.next_worker += 1;
            self.starting += 1;
            self.restarts += 1;
            self.actions.push_back(Action::Start { worker });
        }
    }

    /// A start failed (or a worker died before it answered anything): back
    /// off, and break the pool after too many in a row.
    fn failed_start(&mut self, reason: String, now: Instant) {
        self.failed_starts += 1;
        if self.failed_starts >= self.cfg.max_failed_starts {
            self.break_pool(format!(
                "{} worker processes in a row failed to start or died before running a task; \
                 the last {reason}",
                self.failed_starts
            ));
            return;
        }
        let doublings = self.failed_starts.saturating_sub(1).min(30);
        let backoff = (self.cfg.first_backoff)
            .saturating_mul(1 << doublings)
            .min(self.cfg.max_backoff);
        self.next_start = now.checked_add(backoff);
    }

    /// Marks the pool broken: queued tasks fail with `BrokenPool`, later
    /// submits are refused, no worker is started; tasks in flight finish.
    fn break_pool(&mut self, reason: String) {
        if self.broken.is_some() {
            return;
        }
        self.broken = Some(reason.clone());
        let (returned, fresh) = self.drain_queued();
        let broken = || Error::BrokenPool {
            reason: reason.clone(),
        };
        for id in returned {
            self.fail(id, broken());
        }
        for task in fresh {
            self.actions.push_back(Action::Fail {
                task,
                error: broken(),
            });
        }
    }

    /// Tells idle workers with nothing left to do (closing, broken) and
    /// worn-out workers to exit.
    fn stop_idle(&mut self, now: Instant) {
        let done = self.closing_or_broken() && self.waiting == 0;
        let idle: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| w.live() && w.in_flight.is_empty() && (done || self.worn_out(w)))
            .map(|(&id, _)| id)
            .collect();
        for w in idle {
            self.stop_worker(w, Stop::Exit, now);
        }
    }

    fn stop_worker(&mut self, w: WorkerId, how: Stop, now: Instant) {
        let Some(worker) = self.workers.get_mut(&w) else {
            return;
        };
        match &worker.state {
            WorkerState::Stopping {
                how: Stop::Kill, ..
            } => return,
            WorkerState::Stopping { how: old, .. } if *old == how => return,
            _ => {}
        }
        let doomed =
            match std::mem::replace(&mut worker.state, WorkerState::Stopping { since: now, how }) {
                WorkerState::Dooming { task, doom, .. } => Some((task, doom)),
                _ => None,
            };
        self.actions.push_back(Action::Stop { worker: w, how });
        if let Some((task, doom)) = doomed {
            if self.holds(w, task) {
                self.take_off(w, task, now);
                self.fail(task, doom.error());
            }
        }
    }

    /// How many more tasks worker `w` may be sent now.
    fn room(&self, w: &Worker) -> usize {
        if !w.live() {
            return 0;
        }
        let window = match w.avg_micros {
            None => 2,
            Some(avg) => {
                let fits = self.cfg.window.as_micros() / u128::from(avg.max(1));
                usize::try_from(fits)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1)
                    .clamp(2, self.cfg.max_in_flight.max(2))
            }
        };
        let by_window = window.saturating_sub(w.in_flight.len());
        let by_age =
            (self.cfg.max_tasks_per_child).map_or(usize::MAX, |m| m.saturating_sub(w.sent));
        by_window.min(by_age)
    }

    /// The worker the next task goes to: an idle one first, then the least
    /// busy, a stalled one last.
    fn pick_worker(&self, now: Instant) -> Option<WorkerId> {
        (self.workers.iter())
            .filter(|(_, w)| self.room(w) > 0)
            .min_by_key(|(&id, w)| (stalled(w, now), w.in_flight.len(), id))
            .map(|(&id, _)| id)
    }

    fn idle_worker_exists(&self, now: Instant) -> bool {
        (self.workers.values())
            .any(|w| w.live() && w.in_flight.is_empty() && !stalled(w, now) && self.room(w) > 0)
    }

    /// The tasks of a worker that a rebalance may take back: those not
    /// known to have started, and not being revoked already.
    fn revocable<'a>(&'a self, w: &'a Worker) -> impl Iterator<Item = TaskId> + 'a {
        (w.in_flight.iter().copied()).filter(move |t| {
            (self.tasks.get(t)).is_some_and(|t| !t.started && t.revoking.is_none())
        })
    }

    /// Empties the queues: the returned tasks still queued (the caller
    /// fails each), and the tasks never sent.
    fn drain_queued(&mut self) -> (Vec<TaskId>, Vec<H>) {
        let returned: Vec<TaskId> = self.returned.drain(..).collect();
        let returned = (returned.into_iter())
            .filter(|id| self.tasks.get(id).is_some_and(|t| t.at == Place::Queued))
            .collect::<Vec<_>>();
        let fresh: Vec<H> = self.queue.drain(..).collect();
        self.limits.clear();
        // The returned ones stop waiting as they are failed.
        self.waiting -= fresh.len();
        (returned, fresh)
    }

    /// Takes the next task to send off the queues (returned ones first):
    /// its id, and for a task never sent, what it was submitted with.
    fn pop_queued(&mut self) -> Option<(TaskId, Option<Popped<H>>)> {
        while let Some(id) = self.returned.pop_front() {
            if self.tasks.get(&id).is_some_and(|t| t.at == Place::Queued) {
                return Some((id, None));
            }
        }
        let fresh = self.queue.pop_front()?;
        let id = fresh.id();
        let limit = self.limits.remove(&id).or(self.cfg.task_timeout);
        Some((id, Some((fresh, limit))))
    }

    /// Sends queued tasks to workers with room, batched per worker.
    fn dispatch(&mut self, now: Instant) {
        if self.broken.is_some() || self.waiting == 0 {
            return;
        }
        // Per worker, in the order first served: usually one or two.
        let mut batches: Vec<(WorkerId, Vec<H>)> = Vec::new();
        while self.waiting > 0 {
            let Some(w) = self.pick_worker(now) else {
                break;
            };
            let Some((id, fresh)) = self.pop_queued() else {
                break;
            };
            self.waiting -= 1;
            if let Some((handle, limit)) = fresh {
                if !handle.claim() {
                    continue; // cancelled by its owner: it has ended already
                }
                self.tasks.insert(
                    id,
                    Task {
                        handle,
                        limit,
                        at: Place::Queued,
                        tries: 0,
                        started: false,
                        started_at: None,
                        finished: false,
                        revoking: None,
                        halt: None,
                    },
                );
            }
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            task.at = Place::On(w);
            let handle = task.handle.clone();
            let Some(worker) = self.workers.get_mut(&w) else {
                continue;
            };
            if worker.in_flight.is_empty() {
                worker.since = now;
            }
            worker.in_flight.push_back(id);
            worker.sent += 1;
            match batches.iter_mut().find(|(b, _)| *b == w) {
                Some((_, batch)) => batch.push(handle),
                None => batches.push((w, vec![handle])),
            }
        }
        for (worker, tasks) in batches {
            self.actions.push_back(Action::Send { worker, tasks });
        }
    }

    /// When nothing is queued and a worker is idle, takes back the tasks
    /// that wait behind a task that has run for longer than the window (and
    /// that task itself, if it has not started: a stalled worker).
    fn rebalance(&mut self, now: Instant) {
        if self.waiting > 0 || !self.idle_worker_exists(now) {
            return;
        }
        let mut revokes = Vec::new();
        for (&w, worker) in &self.workers {
            if !worker.live() || worker.in_flight.is_empty() {
                continue;
            }
            let due = worker.since.checked_add(self.cfg.window);
            if due.is_none_or(|due| now < due) {
                continue;
            }
            revokes.extend(self.revocable(worker).map(|t| (w, t)));
        }
        for (w, t) in revokes {
            self.revoke(w, t, Why::Rebalance);
        }
    }

    fn revoke(&mut self, worker: WorkerId, task: TaskId, why: Why) {
        if let Some(t) = self.tasks.get_mut(&task) {
            t.revoking = Some(why);
            self.actions.push_back(Action::Revoke { worker, task });
        }
    }

    /// Stops task `id` with `halt`: at once if it is queued, else once it
    /// is known whether it started.
    fn halt(&mut self, id: TaskId, halt: Halt, now: Instant) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let Place::On(w) = task.at else {
            self.fail(id, halt.error(false));
            return;
        };
        if task.finished {
            // Too late: its reply is on its way.
            return;
        }
        if task.revoking.is_some() || !task.started {
            // Once the revoke is answered it is known whether it started.
            task.halt = Some(halt);
            if task.revoking.is_none() {
                let why = match halt {
                    Halt::Kill => Why::Kill,
                    Halt::Terminate(_) => Why::Terminate,
                };
                self.revoke(w, id, why);
            }
            return;
        }
        self.halt_started(w, id, halt, now);
    }

    /// Stops task `id`, known to have started on worker `w`.
    fn halt_started(&mut self, w: WorkerId, id: TaskId, halt: Halt, now: Instant) {
        match self.workers.get(&w).map(|w| &w.state) {
            Some(WorkerState::Live) => self.doom(w, id, Doom::Halt(halt), now),
            Some(WorkerState::Stopping { .. }) => {
                // Its worker is being stopped, which stops it.
                self.take_off(w, id, now);
                self.fail(id, halt.error(true));
            }
            // A doom for another task is settling: try again after it.
            Some(WorkerState::Dooming { .. }) => {
                if let Some(task) = self.tasks.get_mut(&id) {
                    task.halt = Some(halt);
                }
            }
            None => {}
        }
    }

    /// Kills worker `w` to stop its running task `id`, once the task is
    /// known to run and the tasks behind it are taken back (see the module
    /// doc).
    fn doom(&mut self, w: WorkerId, id: TaskId, doom: Doom, now: Instant) {
        let Some(worker) = self.workers.get(&w) else {
            return;
        };
        if !worker.live() {
            return;
        }
        let known_started = self.tasks.get(&id).is_some_and(|t| t.started);
        let revokes: Vec<TaskId> = (worker.in_flight.iter())
            .skip_while(|&&t| t != id)
            .skip(usize::from(known_started))
            .copied()
            .filter(|t| self.tasks.get(t).is_some_and(|t| t.revoking.is_none()))
            .collect();
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.state = WorkerState::Dooming {
                task: id,
                doom,
                waiting: revokes.len(),
            };
        }
        for t in revokes {
            self.revoke(w, t, Why::Doom);
        }
        self.settle_doom(w, now);
    }

    /// Once every revoke of a doom is answered: kill the worker if its task
    /// runs, else call the doom off.
    fn settle_doom(&mut self, w: WorkerId, now: Instant) {
        let Some(worker) = self.workers.get(&w) else {
            return;
        };
        let WorkerState::Dooming { task, waiting, .. } = worker.state else {
            return;
        };
        if waiting > 0 {
            return;
        }
        let runs = self.holds(w, task) && self.tasks.get(&task).is_some_and(|t| !t.finished);
        // A time limit counts from the start, which may be known only now.
        let in_time = match worker.state {
            WorkerState::Dooming {
                doom: Doom::Limit(limit),
                ..
            } => (self.tasks.get(&task))
                .and_then(|t| t.started_at?.checked_add(limit))
                .is_some_and(|deadline| now < deadline),
            _ => false,
        };
        if runs && !in_time {
            self.stop_worker(w, Stop::Kill, now);
            return;
        }
        let Some(worker) = self.workers.get_mut(&w) else {
            return;
        };
        worker.state = WorkerState::Live;
        // A kill that waited for this doom to settle goes on.
        let waiting: Vec<(TaskId, Halt)> = (worker.in_flight.iter())
            .filter_map(|t| {
                let task = self.tasks.get(t)?;
                Some((*t, task.halt?)).filter(|_| task.started && task.revoking.is_none())
            })
            .collect();
        for (t, h) in waiting {
            if let Some(task) = self.tasks.get_mut(&t) {
                task.halt = None;
            }
            self.halt_started(w, t, h, now);
        }
    }

    /// True if task `id` is on worker `w`.
    fn holds(&self, w: WorkerId, id: TaskId) -> bool {
        self.tasks.get(&id).is_some_and(|t| t.at == Place::On(w))
    }

    /// Sends a task that came back unstarted again, before the queue (or
    /// fails it, if the pool is broken).
    fn requeue(&mut self, id: TaskId) {
        if let Some(reason) = self.broken.clone() {
            self.fail(id, Error::BrokenPool { reason });
            return;
        }
        if let Some(task) = self.tasks.get_mut(&id) {
            task.at = Place::Queued;
            task.revoking = None;
            task.started = false;
            task.started_at = None;
            task.finished = false;
            self.returned.push_back(id);
            self.waiting += 1;
        }
    }

    /// Ends task `id` with `error`.
    fn fail(&mut self, id: TaskId, error: Error) {
        if let Some(task) = self.tasks.remove(&id) {
            if task.at == Place::Queued {
                self.waiting -= 1;
            }
            self.actions.push_back(Action::Fail {
                task: task.handle,
                error,
            });
        }
    }

    /// The task worker `w` runs now, as far as is known: its first task in
    /// flight not known to have finished.
    fn current(&self, w: &Worker) -> Option<TaskId> {
        (w.in_flight.iter())
            .copied()
            .find(|t| self.tasks.get(t).is_none_or(|t| !t.finished))
    }

    /// Moves the start of `w`'s time limit to `now` if its current task is
    /// no longer `before`.
    fn current_moved(&mut self, w: WorkerId, before: Option<TaskId>, now: Instant) {
        let Some(worker) = self.workers.get(&w) else {
            return;
        };
        if self.current(worker) != before {
            if let Some(worker) = self.workers.get_mut(&w) {
                worker.since = now;
            }
        }
    }

    /// Takes task `id` off worker `w`'s tasks in flight; false if it was not
    /// there.
    fn take_off(&mut self, w: WorkerId, id: TaskId, now: Instant) -> bool {
        let Some(worker) = self.workers.get(&w) else {
            return false;
        };
        let before = self.current(worker);
        let Some(worker) = self.workers.get_mut(&w) else {
            return false;
        };
        let Some(pos) = worker.in_flight.iter().position(|&t| t == id) else {
            return false;
        };
        worker.in_flight.remove(pos);
        self.current_moved(w, before, now);
        true
    }

    /// A revoke of task `id` on `w` failed: it has started, so every task
    /// sent to `w` before it has finished.
    fn learn_started(&mut self, w: WorkerId, id: TaskId, at: Option<Instant>, now: Instant) {
        let Some(worker) = self.workers.get(&w) else {
            return;
        };
        let before = self.current(worker);
        let earlier: Vec<TaskId> = (worker.in_flight.iter())
            .copied()
            .take_while(|&t| t != id)
            .collect();
        for t in earlier {
            if let Some(task) = self.tasks.get_mut(&t) {
                task.started = true;
                task.finished = true;
            }
        }
        if let Some(task) = self.tasks.get_mut(&id) {
            task.started = true;
            task.started_at = task.started_at.or(at);
        }
        self.current_moved(w, before, now);
    }

    /// When the current task of live worker `w` passes its time limit.
    fn limit_deadline(&self, w: &Worker) -> Option<Instant> {
        if !w.live() {
            return None;
        }
        let task = self.tasks.get(&self.current(w)?)?;
        if task.revoking.is_some() || task.halt.is_some() {
            return None;
        }
        task.started_at.unwrap_or(w.since).checked_add(task.limit?)
    }
}

/// True while worker `w` is stalled.
fn stalled(w: &Worker, now: Instant) -> bool {
    w.stalled.is_some_and(|until| now < until)
}

/// `cause` with the number of runs filled in.
fn with_tries(cause: Error, runs: u32) -> Error {
    match cause {
        Error::WorkerDied {
            pid,
            status,
            exit,
            tries: _,
        } => Error::WorkerDied {
            pid,
            status,
            exit,
            tries: runs,
        },
        other => other,
    }
}

/// "worker process 12 exited with code 3", for a failed-start message.
fn death_reason(cause: &Error) -> String {
    match cause {
        Error::WorkerDied { pid, status, .. } => format!("worker process {pid} {status}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task handle with nothing behind it.
    #[derive(Clone, Debug)]
    struct Plain(TaskId);

    impl Handle for Plain {
        fn id(&self) -> TaskId {
            self.0
        }
        fn claim(&self) -> bool {
            true
        }
        fn cancel(&self) -> bool {
            true
        }
    }

    /// Runs `limits` (each task's own) through a one-worker pool whose
    /// default limit is 1 s, where each task runs until it is stopped: the
    /// limits the tasks were stopped on, in order.
    fn limits_applied(limits: &[Option<Duration>]) -> Vec<Duration> {
        let mut cfg = Config::new(1);
        cfg.task_timeout = Some(Duration::from_secs(1));
        let mut now = Instant::now();
        let mut s = Scheduler::new(cfg, &[WorkerId(0)], now);
        for (id, limit) in limits.iter().enumerate() {
            s.submit(Plain(id as TaskId), *limit, now).unwrap();
        }
        let mut stopped = Vec::new();
        // The worker's tasks in order, and when the first one started.
        let (mut next, mut held, mut started) = (WorkerId(0), Vec::new(), now);
        for _ in 0..50 {
            while let Some(action) = s.poll_action() {
                match action {
                    Action::Send { tasks, .. } => {
                        if held.is_empty() {
                            started = now;
                        }
                        held.extend(tasks.iter().map(Handle::id));
                    }
                    Action::Revoke { worker, task } => {
                        let answer = if held.first() == Some(&task) {
                            Revoked::Started(Some(started))
                        } else {
                            held.retain(|t| *t != task);
                            Revoked::Taken
                        };
                        s.revoked(worker, task, answer, now);
                    }
                    Action::Fail {
                        error: Error::TaskTimedOut { limit },
                        ..
                    } => stopped.push(limit),
                    Action::Stop { worker, .. } => {
                        let death = Death {
                            cause: Error::WorkerDied {
                                pid: 1,
                                status: "killed".into(),
                                exit: crate::WorkerExit::Signal(9),
                                tries: 0,
                            },
                            started: held.drain(..1.min(held.len())).collect(),
                        };
                        held.clear();
                        s.lost(worker, death, now);
                    }
                    Action::Start { worker } => next = worker,
                    _ => {}
                }
            }
            if s.workers.is_empty() {
                s.started(next, now);
            }
            now += Duration::from_secs(3);
            s.tick(now);
        }
        stopped
    }

    /// A task without a limit of its own has the pool's; one with its own
    /// has that one.
    #[test]
    fn queued_tasks_keep_their_own_limit_or_take_the_pools() {
        let own = Duration::from_millis(1500);
        assert_eq!(
            limits_applied(&[None, Some(own), None]),
            [Duration::from_secs(1), own, Duration::from_secs(1)]
        );
    }
}
