//! Local worker processes over ipc-channel: the first [`Transport`].
//!
//! Each worker has a [`LocalLink`] with two threads of its own:
//!
//! * its **writer** takes the tasks the scheduler queued for the worker and
//!   writes them as frames (big payloads go ahead as notes on a side
//!   channel). A write can block, when the worker is busy and its socket is
//!   full; only this thread waits then. A small batch for a worker that has
//!   read every earlier frame cannot block, so the submitting thread writes
//!   it itself ([`Link::flush`]): a lone task reaches an idle worker without
//!   a thread hop. The writer thread starts the first time a batch cannot
//!   be written that way.
//! * its **reader** reads reply frames and hands each reply to the driver,
//!   then completes the task's future. When the channel ends (the worker
//!   died or exited), it reaps the process, kills what is left of its
//!   process group, and reports the death, with the tasks the worker had
//!   started, from the claim table.
//!
//! A task is taken back ([`Link::revoke`]) with a compare-and-swap on its
//! claim word (`claims.rs`): exact, immediate, and whatever the worker is
//! doing. Kills go to the worker's whole process group, and only while the
//! worker is unreaped, so the group id is still its own.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcReceiver, IpcSender};

use super::claims::{ClaimTable, SLOTS};
use super::frames::{Body, ClaimRef, Outcome, Reader, Reply, Request, Writer};
use super::payload::{Held, Note, Received, Sent};
use super::scheduler::{Death, Revoked, Stop, TaskId, TaskMap, WorkerId};
use super::spawn::{self, Connected, StartOptions};
use super::task::{Answer, RemoteTask};
use super::transport::{Events, Link, Transport};
use crate::shared::{Key, Watch};
use crate::{deadlock, Error, Registry};

/// A frame is sent once it reaches this size, so one huge batch does not
/// wait for the rest.
const FRAME_BYTES: usize = 1 << 20;
/// The most bytes the submitting thread writes itself: a frame that holds
/// any payload small enough to go inside it (`payload::BIG`), and still
/// less than a socket's buffer (about 208 KiB here), so that a write to a
/// worker that has read every earlier frame cannot block.
const DIRECT_BYTES: usize = 160 << 10;
/// How long a worker whose channel ended has to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Starts local worker processes.
pub(crate) struct LocalTransport {
    pub(crate) pool: u64,
    pub(crate) opts: StartOptions,
    pub(crate) registry: Registry,
    /// The initializer every worker runs first, with its encoded argument.
    pub(crate) initializer: Option<(String, Vec<u8>)>,
}

impl Transport for LocalTransport {
    fn start(
        &self,
        ids: &[WorkerId],
        events: &Arc<dyn Events>,
    ) -> Vec<Result<Arc<dyn Link>, Error>> {
        let started = spawn::start_many(&self.opts, ids.len(), &self.registry);
        (ids.iter().zip(started))
            .map(|(&id, connected)| {
                let link = LocalLink::start(self, id, connected?, Arc::downgrade(events))?;
                Ok(link as Arc<dyn Link>)
            })
            .collect()
    }
}

/// What waits to be written to a worker.
enum Item {
    Init { name: String, payload: Vec<u8> },
    Task(RemoteTask, ClaimRef),
    Exit,
}

/// The queue of a worker's link, and the claims of its tasks.
struct Outbox {
    items: VecDeque<Item>,
    /// The claim of each task sent and not answered or taken back, and the
    /// task itself: its payload lives until the worker can no longer read
    /// it (see `payload.rs`).
    claims: TaskMap<(ClaimRef, RemoteTask)>,
    free_slots: Vec<u32>,
    next_send: u64,
    /// Nothing more is written (the worker is killed, or gone).
    closed: bool,
}

/// The channels a link writes to.
struct Wire {
    requests: IpcBytesSender,
    big: IpcSender<Note>,
    /// Which of this process's segments the worker holds.
    sent: Sent,
    /// The [`Shared`](crate::Shared) handles the worker was handed, watched
    /// so that it is told to forget each once the pool holds it no more.
    shares: HashMap<Key, Watch>,
    /// A write failed: the worker is gone.
    broken: bool,
    /// Reused from batch to batch: what is being written, and the frame.
    batch: VecDeque<Item>,
    frame: Writer,
}

/// The child process and whether it has been reaped.
struct Process {
    child: Child,
    reaped: bool,
}

/// The pool's end of one local worker; see the module doc.
pub(crate) struct LocalLink {
    worker: WorkerId,
    pid: u32,
    claims: ClaimTable,
    memory_limit: Option<u64>,
    outbox: Mutex<Outbox>,
    /// Wakes the writer.
    wake: Condvar,
    wire: Mutex<Wire>,
    frames_sent: AtomicU64,
    process: Mutex<Process>,
    /// Held until the worker is reaped: its closing tells the worker the
    /// pool is gone (see `worker.rs`).
    lifeline: Mutex<Option<IpcSender<()>>>,
    /// The reader thread, and the writer once it runs.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Set once the driver has registered the link: the reader reports
    /// nothing before (see `Link`).
    active: Mutex<bool>,
    activated: Condvar,
    writer_started: std::sync::atomic::AtomicBool,
    pool: u64,
    me: Weak<LocalLink>,
}

/// The reader's way to the driver: it waits until the link is active.
struct Reporter<'a> {
    link: &'a LocalLink,
    events: &'a Weak<dyn Events>,
}

impl Reporter<'_> {
    fn upgrade(&self) -> Option<Arc<dyn Events>> {
        let mut active = lock(&self.link.active);
        while !*active {
            active = (self.link.activated.wait(active)).unwrap_or_else(PoisonError::into_inner);
        }
        drop(active);
        self.events.upgrade()
    }
}

/// What the reader thread owns.
struct ReaderSide {
    replies: IpcBytesReceiver,
    big_replies: IpcReceiver<Note>,
    received: Received,
    releases: IpcSender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under these locks; a poisoned one still holds
    // consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalLink {
    fn start(
        transport: &LocalTransport,
        worker: WorkerId,
        connected: Connected,
        events: Weak<dyn Events>,
    ) -> Result<Arc<LocalLink>, Error> {
        let Connected { mut child, hello } = connected;
        let pid = child.id();
        let claims = match ClaimTable::open(hello.claims) {
            Ok(c) => c,
            Err(reason) => {
                spawn::reap(&mut child, Duration::ZERO);
                return Err(Error::Spawn {
                    reason: format!("worker process {pid} does not match this pool: {reason}"),
                });
            }
        };
        let mut items = VecDeque::new();
        if let Some((name, payload)) = &transport.initializer {
            items.push_back(Item::Init {
                name: name.clone(),
                payload: payload.clone(),
            });
        }
        let link = Arc::new_cyclic(|me| LocalLink {
            me: me.clone(),
            pool: transport.pool,
            writer_started: std::sync::atomic::AtomicBool::new(false),
            worker,
            pid,
            claims,
            memory_limit: transport.opts.memory_limit,
            outbox: Mutex::new(Outbox {
                items,
                claims: TaskMap::default(),
                free_slots: (0..SLOTS).rev().collect(),
                next_send: 1,
                closed: false,
            }),
            wake: Condvar::new(),
            wire: Mutex::new(Wire {
                requests: hello.requests,
                big: hello.big_requests,
                sent: Sent::default(),
                shares: HashMap::new(),
                broken: false,
                batch: VecDeque::new(),
                frame: Writer::default(),
            }),
            frames_sent: AtomicU64::new(0),
            process: Mutex::new(Process {
                child,
                reaped: false,
            }),
            lifeline: Mutex::new(Some(hello.lifeline)),
            threads: Mutex::new(Vec::new()),
            active: Mutex::new(false),
            activated: Condvar::new(),
        });
        let reader = ReaderSide {
            replies: hello.replies,
            big_replies: hello.big_replies,
            received: Received::default(),
            releases: hello.releases,
        };
        let pool = transport.pool;
        let (l, name) = (link.clone(), format!("twinpool-{pool}-reader-{pid}"));
        let read = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                deadlock::enter_worker(pool, name);
                l.read(reader, &events);
            });
        match read {
            Ok(r) => {
                lock(&link.threads).push(r);
                link.flush();
                Ok(link)
            }
            Err(e) => {
                link.abandon();
                Err(Error::Spawn {
                    reason: format!("could not start the thread that reads a new worker: {e}"),
                })
            }
        }
    }

    /// Starts the writer thread, the first time a batch needs it.
    fn start_writer(&self) {
        if self.writer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let name = format!("twinpool-{}-writer-{}", self.pool, self.pid);
        match std::thread::Builder::new()
            .name(name)
            .spawn(move || me.write())
        {
            Ok(t) => lock(&self.threads).push(t),
            Err(e) => {
                // Nothing can reach the worker: end it, and its tasks go
                // to others.
                log::error!("twinpool: could not start a worker's writer thread: {e}");
                self.signal(libc::SIGKILL);
            }
        }
    }

    // ----- the writer -----

    /// The writer thread: writes what is queued until the link closes.
    fn write(&self) {
        loop {
            {
                let mut ob = lock(&self.outbox);
                while ob.items.is_empty() && !ob.closed {
                    ob = self.wake.wait(ob).unwrap_or_else(PoisonError::into_inner);
                }
                if ob.closed {
                    return;
                }
            }
            let mut wire = lock(&self.wire);
            let wire = &mut *wire;
            std::mem::swap(&mut lock(&self.outbox).items, &mut wire.batch);
            self.send(wire);
        }
    }

    /// Writes the batch taken from the outbox as frames, each preceded by
    /// the notes of its big payloads. The caller holds the wire, and took
    /// the batch from the outbox while holding it, so frames leave in the
    /// order queued.
    fn send(&self, wire: &mut Wire) {
        let Wire {
            requests,
            big,
            sent,
            shares,
            broken,
            batch,
            frame,
        } = wire;
        if *broken {
            batch.clear();
            return;
        }
        if !shares.is_empty() {
            shares.retain(|&Key { origin, id }, watch| {
                let gone = watch.is_gone();
                if gone {
                    frame.request(&Request::Forget { origin, id });
                }
                !gone
            });
        }
        let mut notes = Vec::new();
        for item in batch.drain(..) {
            match item {
                Item::Init { name, payload } => frame.request(&Request::Init { name, payload }),
                Item::Exit => frame.request(&Request::Exit),
                Item::Task(task, claim) => {
                    for handle in task.shares() {
                        let key = handle.key();
                        if let Slot::Vacant(held) = shares.entry(key) {
                            held.insert(handle.watch());
                            let (origin, id) = (key.origin, key.id);
                            let len = handle.len() as u64;
                            frame.request(&Request::Share { origin, id, len });
                            notes.push(Note::whole(handle.segment()));
                        }
                    }
                    notes.extend(task.segment().map(|b| sent.note(b)));
                    task.write(frame, claim);
                }
            }
            if frame.len() >= FRAME_BYTES {
                *broken |= !self.send_frame(requests, big, &mut notes, frame);
            }
        }
        if !frame.is_empty() {
            *broken |= !self.send_frame(requests, big, &mut notes, frame);
        }
    }

    /// Sends one frame after its notes; false if the worker is gone (its
    /// reader reports that).
    fn send_frame(
        &self,
        requests: &IpcBytesSender,
        big: &IpcSender<Note>,
        notes: &mut Vec<Note>,
        frame: &mut Writer,
    ) -> bool {
        // Notes go first: the worker takes them in the order the frames
        // name them.
        let sent = catch_unwind(AssertUnwindSafe(|| {
            notes.drain(..).all(|note| big.send(note).is_ok())
                && requests.send(frame.as_bytes()).is_ok()
        }));
        frame.clear();
        self.frames_sent.fetch_add(1, Ordering::Release);
        match sent {
            Ok(sent) => sent,
            Err(p) => {
                crate::error::drop_panic_payload(p);
                false
            }
        }
    }

    // ----- the reader -----

    /// The reader thread: reads replies until the channel ends, then reaps
    /// the worker and reports its death.
    fn read(&self, mut side: ReaderSide, events: &Weak<dyn Events>) {
        let events = &Reporter { link: self, events };
        let bad = loop {
            // ipc-channel asserts on some system calls (out of file
            // descriptors while a big frame arrives): a panic there ends
            // the channel like any other failure.
            let frame = match catch_unwind(AssertUnwindSafe(|| side.replies.recv())) {
                Ok(Ok(frame)) => frame,
                Ok(Err(_)) => break None,
                Err(p) => {
                    let why = crate::error::panic_message(&*p);
                    crate::error::drop_panic_payload(p);
                    break Some(format!("channel that failed ({why})"));
                }
            };
            if let Err(e) = self.read_frame(&frame, &mut side, events) {
                break Some(e);
            }
        };
        if bad.is_some() {
            self.stop(Stop::Kill);
        }
        lock(&self.outbox).closed = true;
        self.wake.notify_all();
        let status = self.reap();
        let (mut status, exit) = spawn::describe_exit(status);
        if let Some(why) = bad {
            status = format!("sent a {why} and was killed ({status})");
        }
        let started = self.started_unanswered();
        // The worker is reaped: the payloads it was sent may go.
        let held = std::mem::take(&mut lock(&self.outbox).claims);
        drop(held);
        let cause = match self.memory_limit {
            Some(limit) if self.claims.out_of_memory() => Error::OutOfMemory { limit },
            _ => Error::WorkerDied {
                pid: self.pid,
                status,
                exit,
                tries: 0,
            },
        };
        if let Some(events) = events.upgrade() {
            events.lost(self.worker, Death { cause, started });
        }
    }

    fn read_frame(
        &self,
        frame: &[u8],
        side: &mut ReaderSide,
        events: &Reporter<'_>,
    ) -> Result<(), String> {
        let mut reader = Reader::new(frame);
        while let Some(reply) = reader.reply().map_err(|e| e.to_string())? {
            let (id, micros, answer) = match reply {
                Reply::Init(error) => {
                    if let Some(events) = events.upgrade() {
                        events.init_done(self.worker, error);
                    }
                    continue;
                }
                Reply::Done {
                    id,
                    micros,
                    outcome: Outcome::Ok(body),
                } => (id, micros, Answer::One(Ok(side.held(body, id)?))),
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
                    let results = side.held(results, id)?;
                    (id, micros, Answer::Chunk { results, failure })
                }
            };
            let events = events.upgrade();
            let task = (events.as_ref()).and_then(|events| events.reply(self.worker, id, micros));
            self.answered(id);
            // The future completes outside every lock: its callbacks run
            // here. No task: it ended otherwise (killed, timed out), and the
            // answer is dropped.
            if let Some(task) = task {
                let failed = task.finish(answer);
                if let Some(events) = &events {
                    events.ended(failed);
                }
            }
        }
        Ok(())
    }

    /// Waits for the worker to exit (killing it after a grace), kills what
    /// is left of its process group, and reaps it.
    fn reap(&self) -> Option<std::process::ExitStatus> {
        // Not under the lock: a kill meanwhile must not wait for this.
        let pid = lock(&self.process).child.id();
        spawn::wait_exited(pid, EXIT_GRACE);
        let mut p = lock(&self.process);
        let status = spawn::reap(&mut p.child, Duration::ZERO);
        p.reaped = true;
        drop(p);
        // The worker is gone: its lifeline has nothing left to guard.
        lock(&self.lifeline).take();
        status
    }

    /// The tasks the worker started and did not answer.
    fn started_unanswered(&self) -> Vec<TaskId> {
        let ob = lock(&self.outbox);
        (ob.claims.iter())
            .filter(|(_, (c, _))| self.claims.started(c.slot, c.send))
            .map(|(&t, _)| t)
            .collect()
    }

    /// Signals the worker's process group, unless the worker was reaped.
    fn signal(&self, signal: i32) {
        let p = lock(&self.process);
        if !p.reaped {
            spawn::signal_group(&p.child, signal);
        }
    }
}

impl ReaderSide {
    /// The payload of task `id`'s reply: inline, or where the next note
    /// says (released to the worker when dropped).
    fn held(&mut self, body: Body, id: u64) -> Result<Held, String> {
        match body {
            Body::Inline(bytes) => Ok(Held::Bytes(bytes)),
            Body::Shared => {
                let note = catch_unwind(AssertUnwindSafe(|| self.big_replies.recv()))
                    .map_err(|p| {
                        crate::error::drop_panic_payload(p);
                        "broken channel for big results".to_string()
                    })?
                    .map_err(|e| format!("broken channel for big results ({e})"))?;
                (self.received.open(note, Some((&self.releases, id)))).map_err(|e| e.to_string())
            }
        }
    }
}

impl Link for LocalLink {
    fn activate(&self) {
        *lock(&self.active) = true;
        self.activated.notify_all();
    }

    fn enqueue(&self, tasks: Vec<RemoteTask>) {
        let mut ob = lock(&self.outbox);
        for task in tasks {
            let Some(slot) = ob.free_slots.pop() else {
                // The scheduler keeps far fewer tasks in flight than there
                // are slots, so this does not happen; if it did, the worker
                // is replaced, and its tasks that did not start (this one
                // among them) run elsewhere.
                log::error!("twinpool: a worker's claim table is full; replacing the worker");
                self.signal(libc::SIGKILL);
                break;
            };
            let claim = ClaimRef {
                slot,
                send: ob.next_send,
            };
            ob.next_send += 1;
            self.claims.arm(claim.slot, claim.send);
            ob.claims.insert(task_id(&task), (claim, task.clone()));
            ob.items.push_back(Item::Task(task, claim));
        }
    }

    fn flush(&self) {
        let direct = self.frames_sent.load(Ordering::Acquire) == self.claims.frames_read();
        if direct {
            if let Ok(mut wire) = self.wire.try_lock() {
                let wire = &mut *wire;
                let taken = {
                    let mut ob = lock(&self.outbox);
                    let small = ob.items.iter().try_fold(0usize, |n, item| match item {
                        Item::Task(t, _) if t.segment().is_none() => Some(n + t.frame_bytes()),
                        Item::Init { name, payload } => Some(n + 16 + name.len() + payload.len()),
                        Item::Exit => Some(n + 1),
                        Item::Task(..) => None,
                    });
                    let take = small.is_some_and(|n| n <= DIRECT_BYTES) && !ob.closed;
                    if take {
                        std::mem::swap(&mut ob.items, &mut wire.batch);
                    }
                    take
                };
                if taken {
                    self.send(wire);
                    return;
                }
            }
        }
        self.start_writer();
        self.wake.notify_one();
    }

    fn revoke(&self, task: TaskId) -> Option<Revoked> {
        let mut ob = lock(&self.outbox);
        let Some(claim) = ob.claims.get(&task).map(|(c, _)| *c) else {
            return Some(Revoked::Started(None));
        };
        match self.claims.take_back(claim.slot, claim.send) {
            Ok(()) => {
                ob.claims.remove(&task);
                ob.free_slots.push(claim.slot);
                // Not written yet: it never will be.
                ob.items
                    .retain(|item| !matches!(item, Item::Task(t, _) if task_id(t) == task));
                Some(Revoked::Taken)
            }
            Err(at) => Some(Revoked::Started(at)),
        }
    }

    fn answered(&self, task: TaskId) {
        let mut ob = lock(&self.outbox);
        if let Some((claim, _)) = ob.claims.remove(&task) {
            self.claims.free(claim.slot);
            ob.free_slots.push(claim.slot);
        }
    }

    fn stop(&self, how: Stop) {
        match how {
            Stop::Exit => {
                lock(&self.outbox).items.push_back(Item::Exit);
                self.flush();
            }
            Stop::Kill => self.signal(libc::SIGKILL),
            Stop::Signal(signal) => self.signal(signal),
        }
    }

    fn check(&self) {
        let p = lock(&self.process);
        // Dead, but its channel has not ended: a process its tasks started
        // holds it open. Killing the group ends it.
        if !p.reaped && spawn::exited(&p.child) {
            spawn::signal_group(&p.child, libc::SIGKILL);
        }
    }

    fn abandon(&self) {
        // Its reader may report to a driver that does not know it: that
        // driver ignores it.
        self.activate();
        self.signal(libc::SIGKILL);
        lock(&self.outbox).closed = true;
        self.wake.notify_all();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        // If its reader never ran, reap here.
        let mut p = lock(&self.process);
        if !p.reaped {
            spawn::reap(&mut p.child, Duration::ZERO);
            p.reaped = true;
        }
    }
}

fn task_id(task: &RemoteTask) -> TaskId {
    super::scheduler::Handle::id(task)
}
