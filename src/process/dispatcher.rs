//! The pool's side of a process pool: one dispatcher thread, one reader
//! thread per worker.
//!
//! Tasks wait in the dispatcher's queue, still pending (cancellable), until a
//! worker has room. Room is a window of tasks sent but not answered: for
//! tasks that take a millisecond or more it is 2 (the one running and one
//! queued beside it, like Python's call queue), for short tasks it grows so
//! that about 2 ms of work is in flight and a worker never waits for the
//! pool. The next task goes to the worker with the fewest in flight, so an
//! idle worker is served before a busy one. A task is marked running as it
//! is sent, as in Python.
//!
//! Each reader thread reads its worker's reply frames and completes futures.
//! When a worker's channel closes, the dispatcher reaps the process, fails
//! the task it was running with `WorkerDied`, sends the tasks queued behind
//! it to other workers, and starts a replacement.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcReceiver, IpcSender};

use super::spawn::{self, describe_status, Spawned};
use super::wire::{Big, Body, Held, Note, Outcome, Reader, Received, Reply, Request, Sent, Writer};
use super::{Answer, Common, ProcessOptions, RemoteJob};
use crate::{deadlock, Error, Registry};

/// Work in flight per worker is sized to about this much running time.
const IN_FLIGHT_MICROS: u32 = 2_000;
/// Most tasks in flight per worker, however short.
const MAX_WINDOW: usize = 512;
/// A frame is sent once it reaches this size, so one huge batch does not
/// wait for the rest.
const FRAME_BYTES: usize = 1 << 20;
/// How often the dispatcher checks processes and time limits while tasks run.
const TICK: Duration = Duration::from_millis(50);
/// How often it checks when no task runs.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// Consecutive failed starts of replacement workers before the pool breaks.
const MAX_START_FAILURES: u32 = 3;

/// What the dispatcher is told.
pub(crate) enum Msg {
    Task(Queued),
    /// A reader completed tasks: there may be room.
    Progress,
    /// A worker's channel closed (or it sent a malformed frame).
    Died {
        slot: usize,
        generation: u64,
        bad_frame: Option<String>,
    },
    /// A worker's initializer failed.
    InitFailed {
        slot: usize,
        generation: u64,
        message: String,
    },
    Shutdown {
        cancel: bool,
    },
    /// Stop the task with this id (`Future::kill`).
    Kill {
        task: u64,
    },
    /// Send this signal to every worker (`terminate_workers`, `kill_workers`).
    Signal(i32),
}

/// A task waiting to be sent or waiting for its answer.
pub(crate) struct Queued {
    id: u64,
    name: Arc<str>,
    payload: Payload,
    /// The task's time limit, if any.
    limit: Option<Duration>,
    job: Arc<dyn RemoteJob>,
    /// Claimed (marked running) already: sent to a worker that died before
    /// starting it.
    claimed: bool,
}

enum Payload {
    One(Held),
    Chunk(Held),
}

impl Queued {
    pub(crate) fn one(
        name: Arc<str>,
        payload: Held,
        limit: Option<Duration>,
        job: Arc<dyn RemoteJob>,
    ) -> Queued {
        Queued::new(name, Payload::One(payload), limit, job)
    }

    pub(crate) fn chunk(
        name: Arc<str>,
        items: Held,
        limit: Option<Duration>,
        job: Arc<dyn RemoteJob>,
    ) -> Queued {
        Queued::new(name, Payload::Chunk(items), limit, job)
    }

    fn new(
        name: Arc<str>,
        payload: Payload,
        limit: Option<Duration>,
        job: Arc<dyn RemoteJob>,
    ) -> Queued {
        Queued {
            id: job.id(),
            name,
            payload,
            limit,
            job,
            claimed: false,
        }
    }

    pub(crate) fn has_limit(&self) -> bool {
        self.limit.is_some()
    }

    fn write(&self, w: &mut Writer) {
        match &self.payload {
            Payload::One(p) => w.run(self.id, &self.name, p.body()),
            Payload::Chunk(p) => w.chunk(self.id, &self.name, p.body()),
        }
    }

    /// Its payload's shared-memory segment, if it has one.
    fn segment(&self) -> Option<&Big> {
        let (Payload::One(p) | Payload::Chunk(p)) = &self.payload;
        p.segment()
    }
}

/// What the dispatcher, the worker's reader and submitters (which send
/// straight to an idle worker) share of one worker: the tasks sent and not
/// yet answered, oldest (the one running) first.
struct LaneState {
    tasks: VecDeque<Queued>,
    /// When the oldest task started: when its predecessor's answer came, or
    /// when it was sent to an idle worker.
    head_started: Option<Instant>,
    /// Tasks sent to it, for `max_tasks_per_child`.
    sent: usize,
    /// False once the worker is dead or retiring: nothing more is sent.
    open: bool,
}

/// A worker's channels: frames, and the side channel that says where big
/// payloads lie; and which of this process's segments the worker holds.
struct LaneOut {
    requests: IpcBytesSender,
    big: IpcSender<Note>,
    sent: Sent,
}

/// One worker's lane: its tasks in flight, its channels, and its tasks'
/// running average, in µs (`u32::MAX` until the first answer).
///
/// Two locks, taken in this order: `out` for as long as a send lasts, so
/// tasks reach the worker in the order they are recorded; `state` only
/// while recording. The reader needs only `state`, so it keeps draining
/// answers while a send waits for the worker to read (the worker reads only
/// once its answers have gone out).
pub(crate) struct Lane {
    state: Mutex<LaneState>,
    out: Mutex<LaneOut>,
    avg_micros: AtomicU32,
}

impl Lane {
    /// Records `batch` as in flight on this worker and sends it; the caller
    /// holds `out` (see [`Lane`]).
    fn send(&self, out: &mut LaneOut, batch: Vec<Queued>) {
        let mut frames = Vec::new();
        let mut notes = Vec::new();
        {
            let mut st = self.lock();
            let mut w = Writer::default();
            for q in batch {
                notes.extend(q.segment().map(|big| out.sent.note(big)));
                q.write(&mut w);
                st.push(q);
                st.sent += 1;
                if w.len() >= FRAME_BYTES {
                    frames.push(w.take());
                }
            }
            if !w.is_empty() {
                frames.push(w.take());
            }
        }
        // Notes go first: the worker takes them in the order the frames
        // name them. If the worker is gone, its reader reports the death
        // and these tasks are sent again.
        for note in notes {
            let _ = out.big.send(note);
        }
        for frame in frames {
            let _ = out.requests.send(&frame);
        }
    }

    fn out(&self) -> MutexGuard<'_, LaneOut> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many tasks may be in flight on this worker.
    fn window(&self) -> usize {
        let avg = self.avg_micros.load(Ordering::Relaxed).max(1);
        ((IN_FLIGHT_MICROS / avg) as usize).clamp(2, MAX_WINDOW)
    }
}

/// The live workers' lanes, for submitters.
pub(crate) type Lanes = Arc<RwLock<Vec<Arc<Lane>>>>;

/// Sends `q` straight to an idle worker, if one is free and no task waits in
/// the dispatcher; hands it back otherwise. This keeps the dispatcher thread
/// off the path of a lone task.
pub(crate) fn send_direct(lanes: &Lanes, max_tasks: usize, q: Queued) -> Result<(), Queued> {
    let lanes = lanes.read().unwrap_or_else(PoisonError::into_inner);
    for lane in lanes.iter() {
        let Ok(mut out) = lane.out.try_lock() else {
            continue;
        };
        let idle = {
            let st = lane.lock();
            st.open && st.tasks.is_empty() && st.sent < max_tasks
        };
        if !idle {
            continue;
        }
        if !q.job.claim() {
            return Ok(()); // cancelled already: it never runs
        }
        lane.send(&mut out, vec![q]);
        return Ok(());
    }
    Err(q)
}

impl LaneState {
    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn push(&mut self, q: Queued) {
        if self.tasks.is_empty() {
            self.head_started = Some(Instant::now());
        }
        self.tasks.push_back(q);
    }

    /// Takes the task with `id` (normally the oldest); the next one starts.
    fn take(&mut self, id: u64) -> Option<Queued> {
        let i = self.tasks.iter().position(|q| q.id == id)?;
        if i == 0 {
            self.head_started = Some(Instant::now());
        }
        self.tasks.remove(i)
    }

    fn drain(&mut self) -> VecDeque<Queued> {
        std::mem::take(&mut self.tasks)
    }
}

/// One live worker process.
struct Slot {
    generation: u64,
    pid: u32,
    child: Child,
    lane: Arc<Lane>,
    reader: Option<JoinHandle<()>>,
    /// Why the pool killed it: the error its running task gets.
    doom: Option<Error>,
}

struct Dispatcher {
    pool: u64,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    common: Arc<Common>,
    registry: Registry,
    opts: ProcessOptions,
    program: PathBuf,
    queue: VecDeque<Queued>,
    slots: Vec<Option<Slot>>,
    /// The open lanes, shared with submitters.
    lanes: Lanes,
    next_generation: u64,
    closing: bool,
    broken: Option<String>,
    start_failures: u32,
}

/// Starts the dispatcher thread, which starts `n` workers; returns the
/// channel to it once they are all connected.
pub(crate) fn start(
    pool: u64,
    n: usize,
    registry: Registry,
    opts: ProcessOptions,
    common: Arc<Common>,
) -> Result<(Sender<Msg>, Lanes), Error> {
    let program = spawn::worker_program(opts.program.as_ref())?;
    let lanes: Lanes = Arc::default();
    let (tx, rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let mut d = Dispatcher {
        pool,
        rx,
        tx: tx.clone(),
        common,
        registry,
        opts,
        program,
        queue: VecDeque::new(),
        slots: Vec::new(),
        lanes: lanes.clone(),
        next_generation: 0,
        closing: false,
        broken: None,
        start_failures: 0,
    };
    // Workers are started from this long-lived thread: their parent-death
    // signal fires when the thread that started them ends.
    std::thread::Builder::new()
        .name(format!("twinpool-{pool}-dispatcher"))
        .spawn(move || {
            deadlock::enter_worker(pool, format!("twinpool-{pool}-dispatcher"));
            match d.start_workers(n) {
                Ok(()) => {
                    let _ = ready_tx.send(Ok(()));
                    d.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    d.stop_workers();
                }
            }
            d.common.set_finished();
        })
        .map_err(|e| Error::Spawn {
            reason: format!("could not start the pool's dispatcher thread: {e}"),
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((tx, lanes)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Spawn {
            reason: "the pool's dispatcher thread ended while starting workers".into(),
        }),
    }
}

impl Dispatcher {
    /// Starts `n` workers at once, then waits for each to connect.
    fn start_workers(&mut self, n: usize) -> Result<(), Error> {
        let mut starting = Vec::with_capacity(n);
        for _ in 0..n {
            starting.push(spawn::start(&self.program)?);
        }
        let mut first_error = None;
        for s in starting {
            match s.connect(self.opts.connect_timeout, &self.registry) {
                Ok(spawned) if first_error.is_none() => {
                    let slot = self.slots.len();
                    self.slots.push(None);
                    self.install(slot, spawned);
                }
                Ok(mut spawned) => {
                    let _ = spawned.child.kill();
                    let _ = spawned.child.wait();
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Puts a connected worker in `slot`: starts its reader, sends its
    /// initializer.
    fn install(&mut self, slot: usize, spawned: Spawned) {
        let Spawned { child, hello } = spawned;
        self.next_generation += 1;
        let generation = self.next_generation;
        let lane = Arc::new(Lane {
            out: Mutex::new(LaneOut {
                requests: hello.requests,
                big: hello.big_requests,
                sent: Sent::default(),
            }),
            state: Mutex::new(LaneState {
                tasks: VecDeque::new(),
                head_started: None,
                sent: 0,
                open: true,
            }),
            avg_micros: AtomicU32::new(u32::MAX),
        });
        let reader = ReaderThread {
            slot,
            generation,
            replies: hello.replies,
            big_replies: hello.big_replies,
            received: Received::default(),
            releases: hello.releases,
            lane: lane.clone(),
            tx: self.tx.clone(),
            common: self.common.clone(),
            always_report: self.opts.max_tasks_per_child.is_some(),
        };
        let pool = self.pool;
        let reader = std::thread::Builder::new()
            .name(format!("twinpool-{pool}-reader-{}", hello.pid))
            .spawn(move || {
                deadlock::enter_worker(pool, format!("twinpool-{pool}-reader"));
                reader.run()
            })
            .ok();
        if let Some((name, payload)) = &self.opts.initializer {
            let mut w = Writer::default();
            w.request(&Request::Init {
                name: name.clone(),
                payload: payload.clone(),
            });
            // A failure to send shows up as the worker's death.
            let _ = lane.out().requests.send(&w.take());
        }
        self.lanes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(lane.clone());
        self.slots[slot] = Some(Slot {
            generation,
            pid: hello.pid,
            child,
            lane,
            reader,
            doom: None,
        });
    }

    /// Closes a worker's lane: nothing more is sent to it.
    fn close_lane(&self, lane: &Arc<Lane>) {
        lane.lock().open = false;
        self.lanes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|l| !Arc::ptr_eq(l, lane));
    }

    fn run(&mut self) {
        loop {
            // Wake up now and then to watch the processes themselves and
            // the tasks' time limits (a dead worker's channel does not always
            // say so): often while tasks run, seldom when idle, since a
            // submitter may hand a task straight to a worker.
            let tick = if self.all_idle() { IDLE_TICK } else { TICK };
            self.common
                .dispatcher_idle
                .store(tick == IDLE_TICK, Ordering::Relaxed);
            let msg = match self.rx.recv_timeout(tick) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(msg) = msg {
                self.handle(msg);
            }
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
            self.watch();
            self.retire_worn_out();
            self.dispatch();
            self.common
                .backlog
                .store(self.queue.len(), Ordering::Relaxed);
            if self.closing && self.queue.is_empty() && self.all_idle() {
                break;
            }
        }
        self.stop_workers();
    }

    fn all_idle(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .all(|s| s.lane.lock().is_empty())
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Task(q) => match &self.broken {
                Some(reason) => q.job.fail(Error::BrokenPool {
                    reason: reason.clone(),
                }),
                None => self.queue.push_back(q),
            },
            Msg::Progress => {}
            Msg::Shutdown { cancel } => {
                self.closing = true;
                if cancel {
                    self.queue.retain(|q| q.claimed || !q.job.cancel());
                }
            }
            Msg::Died {
                slot,
                generation,
                bad_frame,
            } => {
                if self.slot(slot, generation).is_some() {
                    self.worker_died(slot, bad_frame, true);
                }
            }
            Msg::InitFailed {
                slot,
                generation,
                message,
            } => {
                let Some(s) = self.slot(slot, generation) else {
                    return;
                };
                let reason = format!(
                    "the initializer failed in worker process {}: {message}",
                    s.pid
                );
                let lane = s.lane.clone();
                self.close_lane(&lane);
                let in_flight: Vec<Queued> = lane.lock().drain().into();
                self.break_pool(reason, in_flight);
            }
            Msg::Kill { task } => self.kill_task(task),
            Msg::Signal(signal) => {
                let how = match signal {
                    libc::SIGKILL => "Executor::kill_workers",
                    _ => "Executor::terminate_workers",
                };
                for i in 0..self.slots.len() {
                    if let Some(s) = self.slots[i].as_mut() {
                        s.doom = Some(Error::Killed { how: how.into() });
                        // SAFETY: kill(2) on our own child's pid, which
                        // stays ours until it is reaped below.
                        unsafe { libc::kill(s.pid as libc::pid_t, signal) };
                        self.worker_died(i, None, false);
                    }
                }
            }
        }
    }

    /// `Future::kill`: a running task costs its worker; one sent but not
    /// started ends at once (the worker may still run it; its answer is
    /// dropped).
    fn kill_task(&mut self, task: u64) {
        for i in 0..self.slots.len() {
            let Some(s) = self.slots[i].as_mut() else {
                continue;
            };
            let in_flight = s.lane.lock();
            let Some(pos) = in_flight.tasks.iter().position(|q| q.id == task) else {
                continue;
            };
            let killed = Error::Killed {
                how: format!("Future::kill; worker process {} was killed", s.pid),
            };
            if pos > 0 {
                let not_started = Error::Killed {
                    how: "Future::kill, before it started".into(),
                };
                let job = in_flight.tasks.get(pos).map(|q| q.job.clone());
                // Its callbacks run without the lane's lock.
                drop(in_flight);
                if let Some(job) = job {
                    job.fail(not_started);
                }
                return;
            }
            drop(in_flight);
            s.doom = Some(killed);
            let _ = s.child.kill();
            self.worker_died(i, None, false);
            return;
        }
    }

    /// Kills the workers whose running task is past its time limit, and
    /// notices workers that died without their channel saying so.
    fn watch(&mut self) {
        for i in 0..self.slots.len() {
            let Some(s) = self.slots[i].as_mut() else {
                continue;
            };
            let over = {
                let in_flight = s.lane.lock();
                match (in_flight.tasks.front(), in_flight.head_started) {
                    (Some(q), Some(started)) => q.limit.filter(|l| started.elapsed() > *l),
                    _ => None,
                }
            };
            if let Some(limit) = over {
                s.doom = Some(Error::TaskTimedOut { limit });
                let _ = s.child.kill();
                self.worker_died(i, None, false);
            } else if matches!(s.child.try_wait(), Ok(Some(_))) {
                self.worker_died(i, None, false);
            }
        }
    }

    /// With `max_tasks_per_child`: replaces each worker that has run its
    /// share, once its last task is answered.
    fn retire_worn_out(&mut self) {
        let Some(max) = self.opts.max_tasks_per_child else {
            return;
        };
        for i in 0..self.slots.len() {
            let worn_out = self.slots[i].as_ref().is_some_and(|s| {
                let lane = s.lane.lock();
                lane.sent >= max && lane.is_empty()
            });
            if !worn_out {
                continue;
            }
            if let Some(mut s) = self.slots[i].take() {
                self.close_lane(&s.lane);
                stop_worker(&mut s);
            }
            if self.broken.is_none() && !(self.closing && self.queue.is_empty()) {
                self.replace(i);
            }
        }
    }

    fn slot(&self, slot: usize, generation: u64) -> Option<&Slot> {
        self.slots
            .get(slot)?
            .as_ref()
            .filter(|s| s.generation == generation)
    }

    /// Fails everything queued and `also` with `BrokenPool`; later submits
    /// fail too.
    fn break_pool(&mut self, reason: String, also: Vec<Queued>) {
        log::error!("twinpool: the process pool is broken: {reason}");
        self.common.set_broken(&reason);
        for q in self.queue.drain(..).chain(also) {
            q.job.fail(Error::BrokenPool {
                reason: reason.clone(),
            });
        }
        self.broken = Some(reason);
    }

    /// Sends queued tasks to workers with room, each to the least busy
    /// worker at that moment, batched into one frame per worker.
    fn dispatch(&mut self) {
        if self.broken.is_some() || self.queue.is_empty() {
            return;
        }
        let max_tasks = self.opts.max_tasks_per_child.unwrap_or(usize::MAX);
        let lanes: Vec<Arc<Lane>> = self
            .slots
            .iter()
            .flatten()
            .map(|s| s.lane.clone())
            .collect();
        // Per lane: tasks in flight, and room for more.
        let mut room: Vec<(usize, usize)> = lanes
            .iter()
            .map(|l| {
                let st = l.lock();
                let busy = st.len();
                let free = if st.open {
                    let by_window = l.window().saturating_sub(busy);
                    by_window.min(max_tasks.saturating_sub(st.sent))
                } else {
                    0
                };
                (busy, free)
            })
            .collect();
        let mut batches: Vec<Vec<Queued>> = lanes.iter().map(|_| Vec::new()).collect();
        while !self.queue.is_empty() {
            let best = (0..lanes.len())
                .filter(|&i| room[i].1 > 0)
                .min_by_key(|&i| room[i].0);
            let Some(i) = best else {
                break;
            };
            let Some(mut q) = self.queue.pop_front() else {
                break;
            };
            if !q.claimed && !q.job.claim() {
                continue; // cancelled while queued: it never runs
            }
            q.claimed = true;
            batches[i].push(q);
            room[i].0 += 1;
            room[i].1 -= 1;
        }
        for (lane, batch) in lanes.iter().zip(batches) {
            if batch.is_empty() {
                continue;
            }
            lane.send(&mut lane.out(), batch);
        }
    }

    /// A worker died (or was killed): reap it, fail its running task,
    /// re-queue the rest, replace it. `from_reader` when its reader thread
    /// reported it (and so has ended).
    fn worker_died(&mut self, slot: usize, bad_frame: Option<String>, from_reader: bool) {
        let Some(mut s) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.close_lane(&s.lane);
        if bad_frame.is_some() {
            let _ = s.child.kill();
        }
        let status = describe_status(reap(&mut s.child, Duration::from_secs(2)));
        let status = match bad_frame {
            Some(why) => format!("it sent a {why} and was killed"),
            None => status,
        };
        // A reader that did not report the death may still be blocked on a
        // channel some other process holds open: leave it to end alone.
        if let Some(reader) = s.reader.take().filter(|_| from_reader) {
            let _ = reader.join();
        }
        let mut in_flight = s.lane.lock().drain();
        if let Some(running) = in_flight.pop_front() {
            let err = s.doom.take().unwrap_or(Error::WorkerDied {
                pid: s.pid,
                status,
                exit: crate::WorkerExit::Unknown,
                tries: 1,
            });
            log::warn!(
                "twinpool: worker process {} stopped while running task {:?}: {err}",
                s.pid,
                running.name
            );
            running.job.fail(err);
        }
        // The tasks queued behind it never started: they go first to the
        // other workers.
        while let Some(q) = in_flight.pop_back() {
            self.queue.push_front(q);
        }
        if self.broken.is_none() && !(self.closing && self.queue.is_empty()) {
            self.replace(slot);
        }
    }

    /// Starts a worker in `slot`; breaks the pool after repeated failures.
    fn replace(&mut self, slot: usize) {
        let started = spawn::start(&self.program)
            .and_then(|s| s.connect(self.opts.connect_timeout, &self.registry));
        match started {
            Ok(spawned) => {
                self.start_failures = 0;
                self.install(slot, spawned);
            }
            Err(e) => {
                self.start_failures += 1;
                log::error!("twinpool: could not replace a worker: {e}");
                let none_left = self.slots.iter().all(Option::is_none);
                if self.start_failures >= MAX_START_FAILURES || none_left {
                    self.break_pool(format!("no worker could be started: {e}"), Vec::new());
                }
            }
        }
    }

    /// Tells every worker to exit, then reaps them (killing any that do not
    /// exit in time) and joins their readers.
    fn stop_workers(&mut self) {
        for s in self.slots.iter().flatten() {
            send_exit(s);
        }
        // Each reader reports when its worker's channel closes, which is
        // when the worker exits: wait for those reports (not a polling
        // loop), for a while, then kill whatever is left.
        let mut exited: Vec<(usize, u64)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let live = |d: &Self| d.slots.iter().flatten().count();
        while exited.len() < live(self) {
            match self.rx.recv_deadline(deadline) {
                Ok(Msg::Died {
                    slot, generation, ..
                }) => exited.push((slot, generation)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let slots: Vec<(usize, Slot)> = self
            .slots
            .drain(..)
            .enumerate()
            .filter_map(|(i, s)| Some((i, s?)))
            .collect();
        for (i, mut s) in slots {
            self.close_lane(&s.lane);
            let grace = if exited.contains(&(i, s.generation)) {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            reap(&mut s.child, grace);
            if let Some(reader) = s.reader.take() {
                let _ = reader.join();
            }
            let left = s.lane.lock().drain();
            for q in left {
                q.job.fail(Error::WorkerDied {
                    exit: crate::WorkerExit::Unknown,
                    tries: 1,
                    pid: s.pid,
                    status: "was stopped at shutdown".into(),
                });
            }
        }
    }
}

fn send_exit(s: &Slot) {
    let mut exit = Writer::default();
    exit.request(&Request::Exit);
    let _ = s.lane.out().requests.send(&exit.take());
}

/// Asks a worker to exit, reaps it (killing it if it does not exit in
/// time) and joins its reader.
fn stop_worker(s: &mut Slot) {
    send_exit(s);
    reap(&mut s.child, Duration::from_secs(5));
    if let Some(reader) = s.reader.take() {
        let _ = reader.join();
    }
}

/// Waits up to `grace` for `child` to exit, then kills it; always reaps it.
fn reap(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    // A worker told to exit is usually gone within microseconds: poll
    // often at first, then back off.
    let mut pause = Duration::from_micros(20);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

/// Reads one worker's replies and completes their futures.
struct ReaderThread {
    slot: usize,
    generation: u64,
    replies: IpcBytesReceiver,
    big_replies: IpcReceiver<Note>,
    /// The worker's segments this reader keeps mapped.
    received: Received,
    /// Where results in the worker's pooled segments are released.
    releases: IpcSender<u64>,
    lane: Arc<Lane>,
    tx: Sender<Msg>,
    common: Arc<Common>,
    /// Tell the dispatcher after every frame (it counts tasks per worker).
    always_report: bool,
}

impl ReaderThread {
    fn run(mut self) {
        let bad_frame = loop {
            let Ok(frame) = self.replies.recv() else {
                break None;
            };
            if let Err(e) = self.read(&frame) {
                break Some(e);
            }
            // The dispatcher needs to hear of answers only when tasks wait
            // for room, when it is closing, or when it counts tasks.
            if self.always_report
                || self.common.backlog.load(Ordering::Relaxed) > 0
                || self.common.closing.load(Ordering::Relaxed)
            {
                let _ = self.tx.send(Msg::Progress);
            }
        };
        let _ = self.tx.send(Msg::Died {
            slot: self.slot,
            generation: self.generation,
            bad_frame,
        });
    }

    fn read(&mut self, frame: &[u8]) -> Result<(), String> {
        let mut reader = Reader::new(frame);
        while let Some(reply) = reader.reply().map_err(|e| e.to_string())? {
            let (id, micros, answer) = match reply {
                Reply::Init(None) => continue,
                Reply::Init(Some(message)) => {
                    let _ = self.tx.send(Msg::InitFailed {
                        slot: self.slot,
                        generation: self.generation,
                        message,
                    });
                    continue;
                }
                Reply::Done {
                    id,
                    micros,
                    outcome: Outcome::Ok(body),
                } => (id, micros, Answer::One(Ok(self.held(body, id)?))),
                Reply::Done {
                    id,
                    micros,
                    outcome,
                } => (id, micros, Answer::One(Err(outcome))),
                Reply::Chunk {
                    id,
                    micros,
                    results,
                    failure,
                } => {
                    let results = self.held(results, id)?;
                    (id, micros, Answer::Chunk { results, failure })
                }
            };
            self.record(micros);
            // The lock is released before `finish` runs the callbacks. No
            // task: it was stopped by `Future::kill` before it started, and
            // its answer is dropped.
            let q = self.lane.lock().take(id);
            if let Some(q) = q {
                q.job.finish(answer);
            }
        }
        Ok(())
    }

    /// The payload of task `id`'s reply: inline, or where the next note
    /// says (then released to the worker when dropped).
    fn held(&mut self, body: Body, id: u64) -> Result<Held, String> {
        match body {
            Body::Inline(bytes) => Ok(Held::Bytes(bytes)),
            Body::Shared => {
                let note = (self.big_replies.recv())
                    .map_err(|e| format!("broken channel for big results ({e})"))?;
                (self.received.open(note, Some((&self.releases, id)))).map_err(|e| e.to_string())
            }
        }
    }

    fn record(&self, micros: u32) {
        let avg = &self.lane.avg_micros;
        let old = avg.load(Ordering::Relaxed);
        let new = if old == u32::MAX {
            micros
        } else {
            ((u64::from(old) * 7 + u64::from(micros)) / 8) as u32
        };
        avg.store(new.min(u32::MAX - 1), Ordering::Relaxed);
    }
}
