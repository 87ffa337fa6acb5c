//! The I/O around the scheduler: it feeds the scheduler events and carries
//! out its actions through a [`Transport`].
//!
//! The scheduler lives behind one mutex. Whoever has an event (a submitting
//! thread, a worker's reader, the clock, the spawner) locks it, hands the
//! event over with the time, and carries out the actions that follow. Only
//! what cannot block is done under the lock: queueing tasks on a link (so
//! they reach each worker in the scheduler's order) and revokes (a
//! compare-and-swap, answered back into the scheduler at once). Everything
//! else runs after the lock is released: completing futures (user
//! callbacks), writing, signalling, starting workers.
//!
//! Two threads of its own: the **clock**, which ticks the scheduler at its
//! next deadline (time limits, back-off, stop grace, taking work back for an
//! idle worker) and now and then asks each link to look for a death its
//! channel missed; and the **spawner**, started on the first replacement,
//! which starts workers (the handshake can take up to `connect_timeout`).
//! The clock keeps the driver alive until the pool has finished, even once
//! the executor is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::scheduler::{Action, Config, Death, Revoked, Scheduler, Stop, TaskId, WorkerId};
use super::task::RemoteTask;
use super::transport::{Events, Link, Transport};
use crate::{deadlock, Error};

/// How often the clock asks each link to look for a death its channel
/// missed.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What the scheduler's lock guards.
struct Core {
    sched: Scheduler<RemoteTask>,
    links: HashMap<WorkerId, Arc<dyn Link>>,
    /// When the clock will next wake up.
    clock_at: Option<Instant>,
    /// The spawner's channel, once it runs.
    spawner: Option<Sender<WorkerId>>,
}

/// The process pool's engine; see the module doc.
pub(crate) struct Driver {
    pool: u64,
    core: Mutex<Core>,
    transport: Arc<dyn Transport>,
    /// Wakes the clock: its deadline moved earlier, or the pool finished.
    clock: Sender<()>,
    finished: Mutex<bool>,
    finished_cv: Condvar,
    /// Tasks that ended with their worker's answer or an error, and how
    /// many of them failed, for [`stats`](Self::stats).
    ended: AtomicU64,
    failed: AtomicU64,
    /// Itself, for the spawner thread and for links.
    me: Weak<Driver>,
}

/// What carrying out actions leaves for after the lock.
#[derive(Default)]
struct After {
    fails: Vec<(RemoteTask, Error)>,
    flush: Vec<Arc<dyn Link>>,
    stops: Vec<(Arc<dyn Link>, Stop)>,
    starts: Vec<WorkerId>,
    finished: bool,
    wake_clock: bool,
}

impl Driver {
    /// A driver for a pool whose workers `ids` are about to be started
    /// (see [`start_workers`](Self::start_workers)); starts the clock.
    pub(crate) fn new(
        pool: u64,
        cfg: Config,
        ids: &[WorkerId],
        transport: Arc<dyn Transport>,
    ) -> Result<Arc<Driver>, Error> {
        let (clock, ticks) = crossbeam_channel::unbounded();
        let driver = Arc::new_cyclic(|me| Driver {
            pool,
            core: Mutex::new(Core {
                sched: Scheduler::new(cfg, ids, Instant::now()),
                links: HashMap::new(),
                clock_at: None,
                spawner: None,
            }),
            transport,
            clock,
            finished: Mutex::new(false),
            finished_cv: Condvar::new(),
            ended: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            me: me.clone(),
        });
        // The clock holds the driver until the pool has finished, so that a
        // pool whose executor is dropped without waiting (on one of its own
        // threads) still finishes its work.
        let d = driver.clone();
        std::thread::Builder::new()
            .name(format!("twinpool-{pool}-clock"))
            .spawn(move || run_clock(&d, &ticks))
            .map_err(|e| Error::Spawn {
                reason: format!("could not start the pool's clock thread: {e}"),
            })?;
        Ok(driver)
    }

    /// Starts the workers `ids` the scheduler was made with; the first
    /// error if any could not be started (the others are then stopped, and
    /// the pool finished).
    pub(crate) fn start_workers(&self, ids: &[WorkerId]) -> Result<(), Error> {
        let Some(me) = self.me.upgrade() else {
            return Err(Error::Shutdown);
        };
        let events: Arc<dyn Events> = me;
        let mut first_error = None;
        let mut started = Vec::new();
        for (id, link) in ids.iter().zip(self.transport.start(ids, &events)) {
            match link {
                Ok(link) => started.push((*id, link)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        {
            let mut core = self.lock();
            for (id, link) in &started {
                core.links.insert(*id, link.clone());
            }
        }
        for (_, link) in &started {
            link.activate();
        }
        let Some(error) = first_error else {
            return Ok(());
        };
        self.terminate(Stop::Kill, "a failed start");
        // The workers that failed to start are gone already.
        let failed: Vec<WorkerId> = (ids.iter())
            .filter(|id| !started.iter().any(|(s, _)| s == *id))
            .copied()
            .collect();
        for id in failed {
            self.run(|s, now| {
                let death = Death {
                    cause: error.clone(),
                    started: Vec::new(),
                };
                s.lost(id, death, now);
            });
        }
        self.wait_finished();
        Err(error)
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The scheduler never runs user code; a panic in it is a bug that
        // leaves it as consistent as any other step would.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands an event to the scheduler and carries out what follows.
    fn run<R>(&self, event: impl FnOnce(&mut Scheduler<RemoteTask>, Instant) -> R) -> R {
        self.run_core(|core, now| event(&mut core.sched, now))
    }

    /// [`run`](Self::run), for events that also change the links.
    fn run_core<R>(&self, event: impl FnOnce(&mut Core, Instant) -> R) -> R {
        let now = Instant::now();
        let mut core = self.lock();
        let out = event(&mut core, now);
        let after = self.carry_out(&mut core, now);
        drop(core);
        self.after(after);
        out
    }

    /// Carries out the scheduler's actions that cannot block, under its
    /// lock; collects the rest.
    fn carry_out(&self, core: &mut Core, now: Instant) -> After {
        let mut after = After::default();
        while let Some(action) = core.sched.poll_action() {
            match action {
                Action::Send { worker, tasks } => {
                    if let Some(link) = core.links.get(&worker) {
                        link.enqueue(tasks);
                        if !after.flush.iter().any(|l| Arc::ptr_eq(l, link)) {
                            after.flush.push(link.clone());
                        }
                    }
                }
                Action::Revoke { worker, task } => {
                    let answer = match core.links.get(&worker) {
                        Some(link) => link.revoke(task),
                        None => Some(Revoked::Started(None)),
                    };
                    if let Some(answer) = answer {
                        core.sched.revoked(worker, task, answer, now);
                    }
                }
                Action::Fail { task, error } => after.fails.push((task, error)),
                Action::Start { worker } => after.starts.push(worker),
                Action::Stop { worker, how } => {
                    if let Some(link) = core.links.get(&worker) {
                        after.stops.push((link.clone(), how));
                    }
                }
                Action::Finished => after.finished = true,
            }
        }
        let deadline = core.sched.next_deadline(now);
        if deadline.is_some_and(|d| core.clock_at.is_none_or(|at| d < at)) {
            core.clock_at = deadline;
            after.wake_clock = true;
        }
        if !after.starts.is_empty() && core.spawner.is_none() {
            core.spawner = self.start_spawner();
        }
        if let Some(spawner) = &core.spawner {
            for w in after.starts.drain(..) {
                let _ = spawner.send(w);
            }
        }
        after
    }

    /// Carries out the rest, without the lock.
    fn after(&self, after: After) {
        if !after.fails.is_empty() {
            let n = after.fails.len() as u64;
            self.ended.fetch_add(n, Ordering::Relaxed);
            self.failed.fetch_add(n, Ordering::Relaxed);
        }
        for (task, error) in after.fails {
            task.fail(error);
        }
        for link in after.flush {
            link.flush();
        }
        for (link, how) in after.stops {
            link.stop(how);
        }
        for w in after.starts {
            // No spawner thread could be started.
            self.run(|s, now| {
                s.start_failed(w, "could not start the pool's spawner thread".into(), now)
            });
        }
        if after.wake_clock {
            let _ = self.clock.send(());
        }
        if after.finished {
            *self.finished.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.finished_cv.notify_all();
            let _ = self.clock.send(());
        }
    }

    fn start_spawner(&self) -> Option<Sender<WorkerId>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let me = self.me.clone();
        let pool = self.pool;
        std::thread::Builder::new()
            .name(format!("twinpool-{pool}-spawner"))
            .spawn(move || run_spawner(&me, &rx))
            .ok()
            .map(|_| tx)
    }

    // ----- the face the pool sees -----

    /// Queues a task; an error means it will never run.
    pub(crate) fn submit(&self, task: RemoteTask, limit: Option<Duration>) -> Result<(), Error> {
        self.run(|s, now| s.submit(task, limit, now))
    }

    /// `Future::kill`.
    pub(crate) fn kill(&self, task: TaskId) {
        self.run(|s, now| s.kill(task, now));
    }

    pub(crate) fn shutdown(&self, cancel: bool) {
        self.run(|s, now| s.shutdown(cancel, now));
    }

    pub(crate) fn terminate(&self, how: Stop, by: &'static str) {
        self.run(|s, now| s.terminate(how, by, now));
    }

    /// What the pool is doing now; see [`Stats`](crate::Stats).
    pub(crate) fn stats(&self) -> crate::Stats {
        let mut stats = self.lock().sched.census();
        stats.finished = self.ended.load(Ordering::Relaxed);
        stats.failed = self.failed.load(Ordering::Relaxed);
        stats
    }

    /// Blocks until every worker is gone and nothing is left to do.
    pub(crate) fn wait_finished(&self) {
        let mut done = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        while !*done {
            done = self
                .finished_cv
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn is_finished(&self) -> bool {
        *self.finished.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Events for Driver {
    fn reply(&self, w: WorkerId, task: TaskId, micros: u32) -> Option<RemoteTask> {
        self.run(|s, now| s.reply(w, task, micros, now))
    }

    fn ended(&self, failed: bool) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn init_done(&self, w: WorkerId, error: Option<String>) {
        let error = error.map(|m| format!("the initializer failed in a worker: {m}"));
        self.run(|s, now| s.init_done(w, error, now));
    }

    fn revoked(&self, w: WorkerId, task: TaskId, answer: Revoked) {
        self.run(|s, now| s.revoked(w, task, answer, now));
    }

    fn lost(&self, w: WorkerId, death: Death) {
        self.run_core(|core, now| {
            core.links.remove(&w);
            core.sched.lost(w, death, now);
        });
    }
}

/// The clock thread: ticks the scheduler at its deadlines, and has links
/// look for deaths now and then, until the pool finishes.
fn run_clock(d: &Arc<Driver>, wakes: &Receiver<()>) {
    let mut next_check = Instant::now() + CHECK_EVERY;
    loop {
        let until = {
            if d.is_finished() {
                return;
            }
            let mut core = d.lock();
            let until = (core.sched.next_deadline(Instant::now()))
                .map_or(next_check, |t| t.min(next_check));
            core.clock_at = Some(until);
            until
        };
        match wakes.recv_deadline(until) {
            Ok(()) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        d.run(|s, now| s.tick(now));
        if Instant::now() >= next_check {
            next_check = Instant::now() + CHECK_EVERY;
            let links: Vec<Arc<dyn Link>> = d.lock().links.values().cloned().collect();
            for link in links {
                link.check();
            }
        }
    }
}

/// The spawner thread: starts replacement workers, several at once when
/// several are asked for together.
fn run_spawner(driver: &Weak<Driver>, asks: &Receiver<WorkerId>) {
    while let Ok(first) = asks.recv() {
        let mut ids = vec![first];
        ids.extend(asks.try_iter());
        let Some(d) = driver.upgrade() else { return };
        deadlock::enter_worker(d.pool, format!("twinpool-{}-spawner", d.pool));
        let events: Arc<dyn Events> = d.clone();
        let links = d.transport.start(&ids, &events);
        for (w, link) in ids.into_iter().zip(links) {
            match link {
                Ok(link) => {
                    d.run_core(|core, now| {
                        // The link first, so that the scheduler's first
                        // actions for the worker find it.
                        core.links.insert(w, link.clone());
                        core.sched.started(w, now);
                    });
                    link.activate();
                }
                Err(e) => d.run(|s, now| s.start_failed(w, e.to_string(), now)),
            }
        }
        if d.is_finished() {
            return;
        }
    }
}
