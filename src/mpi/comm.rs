//! MPI itself: one thread makes every MPI call of the process.
//!
//! Open MPI's communicators may not move between threads, and a process may
//! initialise MPI only once, so the pool's side keeps one thread for the
//! life of the process (started by the first MPI executor; [`client`]).
//! Every other thread talks to it through a channel of [`Order`]s; what
//! arrives from the ranks it hands to the open session's handler, on its
//! own thread. A serving rank makes its MPI calls on its main thread
//! (`rank.rs`), with the same [`Endpoint`] and [`Backoff`].
//!
//! Nothing blocks here but MPI's own receive of a message already probed:
//! sends are non-blocking (`MPI_Isend`, kept until `MPI_Test` says they are
//! done), and an idle thread probes with a back-off (yielding a few times,
//! then sleeping from 4 µs up to 50 µs between probes while messages flow,
//! up to 1 ms once they have stopped for 100 ms, as mpi4py.futures sleeps;
//! see [`Backoff`]; the thread's timer slack is cut to 1 µs so that short
//! sleeps are short)
//! instead of burning a core in a blocking receive. A sleeping pool thread
//! still wakes at once for a new order, since it sleeps on its channel.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mpi::ffi;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::raw::AsRaw;
use mpi::topology::{InterCommunicator, SimpleCommunicator};
use mpi::traits::*;

use super::wire::{Incoming, Outgoing, Owner, ToRank, MAX_MESSAGE, TAG_BLOB, TAG_HEAD};
use crate::Error;

/// The argument by which a program started with `MPI_Comm_spawn` knows it
/// is a rank of the pool that spawned it.
pub(crate) const SPAWNED_ARG: &str = "--twinpool-mpi-rank";

/// The communicator of a session.
pub(crate) enum Comm {
    /// `MPI_COMM_WORLD`: started by `mpirun`, rank 0 is the pool.
    World(SimpleCommunicator),
    /// Between a pool and the ranks it spawned (on either side).
    Inter(InterCommunicator),
}

impl Comm {
    fn raw(&self) -> ffi::MPI_Comm {
        match self {
            Comm::World(c) => c.as_raw(),
            Comm::Inter(c) => c.as_raw(),
        }
    }
}

/// A send under way, with the bytes it reads.
struct Pending {
    request: ffi::MPI_Request,
    /// Keeps the buffer alive, and unmoved, until the send is done.
    _bytes: Keep,
}

enum Keep {
    Head(Vec<u8>),
    Blob(Owner),
}

/// One side of a session's communicator: sends under way, and the receipt
/// of whole messages (a head and its blobs).
pub(crate) struct Endpoint {
    comm: Comm,
    sends: Vec<Pending>,
}

impl Endpoint {
    pub(crate) fn new(comm: Comm) -> Endpoint {
        Endpoint {
            comm,
            sends: Vec::new(),
        }
    }

    /// Starts sending `out`; returns at once.
    pub(crate) fn send(&mut self, out: Outgoing) {
        let Outgoing { peer, head, blobs } = out;
        self.isend(peer, TAG_HEAD, Keep::Head(head));
        for blob in blobs {
            self.isend(peer, TAG_BLOB, Keep::Blob(blob));
        }
    }

    fn isend(&mut self, peer: i32, tag: i32, bytes: Keep) {
        let slice: &[u8] = match &bytes {
            Keep::Head(v) => v,
            Keep::Blob(o) => o.bytes(),
        };
        // The producers refuse bigger payloads (see `MAX_MESSAGE`); clamp
        // rather than wrap if one slips through.
        let count = slice.len().min(MAX_MESSAGE) as c_int;
        // SAFETY: `ffi::RSMPI_REQUEST_NULL` is a constant of the bindings.
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: the buffer is `count` bytes long and lives, unmoved (a
        // `Vec`'s or a task's heap bytes do not move when their owner
        // does), in `Pending::_bytes` until `MPI_Test` reports the send
        // done (`progress`) or `wait_sends` has waited for it; the
        // communicator is live while this endpoint holds it; only this
        // thread makes MPI calls.
        unsafe {
            ffi::MPI_Isend(
                slice.as_ptr().cast(),
                count,
                ffi::RSMPI_UINT8_T,
                peer,
                tag,
                self.comm.raw(),
                &mut request,
            );
        }
        self.sends.push(Pending {
            request,
            _bytes: bytes,
        });
    }

    /// Lets MPI move the sends under way; true if one of them ended.
    pub(crate) fn progress(&mut self) -> bool {
        let before = self.sends.len();
        self.sends.retain_mut(|p| {
            let mut done: c_int = 0;
            // SAFETY: `p.request` is a live request of this thread's
            // sends; MPI_Test sets it to MPI_REQUEST_NULL when done.
            unsafe { ffi::MPI_Test(&mut p.request, &mut done, ffi::RSMPI_STATUS_IGNORE) };
            done == 0
        });
        self.sends.len() != before
    }

    /// Waits until every send under way is done.
    pub(crate) fn wait_sends(&mut self) {
        for mut p in self.sends.drain(..) {
            // SAFETY: as in `progress`; after MPI_Wait the buffer is free.
            unsafe { ffi::MPI_Wait(&mut p.request, ffi::RSMPI_STATUS_IGNORE) };
        }
    }

    /// A whole message, if one has arrived.
    /// `probes`: how many probes in a row before nothing counts as come
    /// (see [`Backoff::probes`]).
    pub(crate) fn recv(&mut self, probes: u32) -> Option<Incoming> {
        match &self.comm {
            Comm::World(c) => recv_on(c, probes),
            Comm::Inter(c) => recv_on(c, probes),
        }
    }
}

/// Probes in a row before the answer "nothing came" counts, while work
/// flows: Open MPI moves a message along a step per call, and may need
/// several calls to report one that has arrived (3 to 23 were seen here);
/// a thread that slept between those calls would pay its sleep for each.
const PROBES: u32 = 24;
/// The same once work has stopped: a few, so that an idle pool costs
/// little CPU (the first message then may take a few sleeps to be seen).
const COLD_PROBES: u32 = 2;

/// Takes a head and then its blobs from the same sender (MPI keeps their
/// order on one tag).
fn recv_on<C: Communicator>(c: &C, probes: u32) -> Option<Incoming> {
    let probed =
        (0..probes).find_map(|_| c.any_process().immediate_matched_probe_with_tag(TAG_HEAD))?;
    let (mut head, status) = probed.matched_receive_vec::<u8>();
    let peer = status.source_rank();
    let count = head
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes);
    head.drain(..head.len().min(4));
    let blobs: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            c.process_at_rank(peer)
                .matched_probe_with_tag(TAG_BLOB)
                .matched_receive_vec::<u8>()
                .0
        })
        .collect();
    Some(Incoming {
        peer,
        head,
        blobs: blobs.into_iter(),
    })
}

/// How long an idle MPI thread waits before it probes again.
///
/// A few yields, then sleeps that double from 4 µs. While messages have
/// come or gone in the last [`WARM`], a sleep lasts at most [`WARM_SLEEP`]:
/// the next message is likely soon, and a thread that slept a whole
/// millisecond between the hops of a round trip would make every round
/// trip slow, and so every wait long (the back-off feeds on itself). After
/// that, up to [`MAX_SLEEP`], so an idle pool costs next to no CPU.
pub(crate) struct Backoff {
    idle: u32,
    /// The last time something happened.
    active: std::time::Instant,
}

/// Rounds of only yielding before the first sleep.
const SPINS: u32 = 10;
/// The first and the longest sleep between probes.
const FIRST_SLEEP: Duration = Duration::from_micros(2);
const MAX_SLEEP: Duration = Duration::from_millis(1);
/// How long after the last activity sleeps stay short, and how short.
const WARM: Duration = Duration::from_millis(100);
const WARM_SLEEP: Duration = Duration::from_micros(50);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            idle: 0,
            active: std::time::Instant::now(),
        }
    }

    /// Work came or went: probe again at once, and keep sleeps short for a
    /// while.
    pub(crate) fn reset(&mut self) {
        self.idle = 0;
        self.active = std::time::Instant::now();
    }

    /// True while work came or went in the last [`WARM`].
    fn warm(&self) -> bool {
        self.active.elapsed() < WARM
    }

    /// How many probes in a row a receive makes now.
    pub(crate) fn probes(&self) -> u32 {
        if self.warm() {
            PROBES
        } else {
            COLD_PROBES
        }
    }

    /// How long to wait now: `None` for a yield.
    pub(crate) fn next(&mut self) -> Option<Duration> {
        self.idle = self.idle.saturating_add(1);
        if self.idle <= SPINS {
            return None;
        }
        let doublings = (self.idle - SPINS).min(16);
        let longest = if self.warm() { WARM_SLEEP } else { MAX_SLEEP };
        Some((FIRST_SLEEP * (1u32 << doublings)).min(longest))
    }

    /// Waits on `rx` as long as the back-off says; what came, if anything.
    pub(crate) fn wait<T>(&mut self, rx: &Receiver<T>) -> Result<Option<T>, ()> {
        match self.next() {
            None => {
                std::thread::yield_now();
                Ok(None)
            }
            Some(d) => match rx.recv_timeout(d) {
                Ok(t) => Ok(Some(t)),
                Err(RecvTimeoutError::Timeout) => Ok(None),
                Err(RecvTimeoutError::Disconnected) => Err(()),
            },
        }
    }
}

/// Initialises MPI on the calling thread, which must make every MPI call
/// of the process from then on.
pub(crate) fn init() -> Result<mpi::environment::Universe, String> {
    let (universe, _threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        .ok_or_else(|| {
            "MPI was initialised already in this process, by other code; twinpool must own \
             MPI to use it (one MPI executor per program, and no other use of MPI)"
                .to_string()
        })?;
    // The back-off's short sleeps are worth their length only with a small
    // timer slack (Linux adds 50 µs to each by default). Threads started
    // from this one inherit it.
    // SAFETY: PR_SET_TIMERSLACK takes a number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
    // Errors come back as codes instead of ending the job, where MPI can
    // (a failed spawn among them).
    // SAFETY: constants of the bindings; MPI is initialised.
    unsafe {
        ffi::MPI_Comm_set_errhandler(ffi::RSMPI_COMM_WORLD, ffi::RSMPI_ERRORS_RETURN);
        ffi::MPI_Comm_set_errhandler(ffi::RSMPI_COMM_SELF, ffi::RSMPI_ERRORS_RETURN);
    }
    Ok(universe)
}

/// Starts `n` ranks running `program` (with [`SPAWNED_ARG`]) by
/// `MPI_Comm_spawn` from this process alone.
fn spawn(program: &Path, n: usize) -> Result<InterCommunicator, String> {
    use std::ffi::CString;
    let prog = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("the program path {} holds a NUL byte", program.display()))?;
    let arg = CString::new(SPAWNED_ARG).map_err(|e| e.to_string())?;
    let mut argv = [arg.as_ptr().cast_mut(), std::ptr::null_mut()];
    let n = c_int::try_from(n).map_err(|_| format!("{n} ranks are more than MPI can count"))?;
    let mut errcodes = vec![0 as c_int; n as usize];
    // SAFETY: a constant of the bindings.
    let mut inter = unsafe { ffi::RSMPI_COMM_NULL };
    // Open MPI's placement: round robin over the nodes of the allocation,
    // and more ranks than cores allowed, as a pool of workers wants (other
    // MPI libraries ignore the key).
    let (key, value) = (c"map_by", c"node:OVERSUBSCRIBE");
    // SAFETY: a constant of the bindings.
    let mut info = unsafe { ffi::RSMPI_INFO_NULL };
    // SAFETY: `info` receives a new info object, freed below; the key and
    // value are NUL-terminated and outlive the call.
    unsafe {
        ffi::MPI_Info_create(&mut info);
        ffi::MPI_Info_set(info, key.as_ptr(), value.as_ptr());
    }
    // SAFETY: `prog` and `argv` (NULL-terminated) outlive the call;
    // `errcodes` has room for `n` codes; the spawning communicator is
    // MPI_COMM_SELF, so this process alone takes part; this is the MPI
    // thread.
    let rc = unsafe {
        ffi::MPI_Comm_spawn(
            prog.as_ptr(),
            argv.as_mut_ptr(),
            n,
            info,
            0,
            ffi::RSMPI_COMM_SELF,
            &mut inter,
            errcodes.as_mut_ptr(),
        )
    };
    // SAFETY: the info object made above, no longer used.
    unsafe { ffi::MPI_Info_free(&mut info) };
    let failed = errcodes.iter().filter(|&&c| c != 0).count();
    // SAFETY: a constant of the bindings.
    let null = unsafe { ffi::RSMPI_COMM_NULL };
    if rc != 0 || failed > 0 || inter == null {
        return Err(format!(
            "MPI_Comm_spawn of {n} ranks of {} failed (code {rc}, {failed} ranks not started); \
             see what MPI printed above",
            program.display()
        ));
    }
    // SAFETY: a live intercommunicator that MPI_Comm_spawn just made, used
    // only through this handle, which disconnects it when dropped.
    Ok(unsafe { InterCommunicator::from_raw(inter) })
}

/// What the pool's threads ask of the MPI thread.
pub(crate) enum Order {
    /// Open a session: with `spawn`, over `n` ranks running that program
    /// (spawned now, or kept from an earlier session); else over the ranks
    /// of `mpirun`. Answers the ranks' numbers.
    Open {
        spawn: Option<(usize, std::path::PathBuf)>,
        handler: Handler,
        reply: Sender<Result<Vec<i32>, Error>>,
    },
    /// Send a message in the open session.
    Send(Outgoing),
    /// End the session (its ranks wait for the next). `lost`: some of its
    /// ranks died; spawned ranks are then given up (a disconnect from a
    /// dead rank could wait for ever) and spawned anew next time.
    Close { reply: Sender<()>, lost: bool },
    /// The program is ending: every rank is told to quit, and MPI is
    /// finalised.
    Finalize { reply: Sender<()> },
}

/// What the open session is told, on the MPI thread.
pub(crate) enum Event {
    /// A message from one of its ranks.
    Message(Incoming),
    /// About [`TICK`] has passed.
    Tick,
}

/// How often an open session hears [`Event::Tick`].
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// What the open session does with its events; runs on the MPI thread.
/// It answers whether the event was work (a heartbeat is not): only work
/// keeps the back-off's sleeps short (see [`Backoff`]).
pub(crate) type Handler = Box<dyn FnMut(Event) -> bool + Send>;

/// The pool's handle on the MPI thread.
pub(crate) struct Client {
    orders: Sender<Order>,
    thread: std::thread::ThreadId,
}

impl Client {
    /// Sends `order`; false if the MPI thread is gone (MPI finalised).
    pub(crate) fn order(&self, order: Order) -> bool {
        self.orders.send(order).is_ok()
    }

    /// True on the MPI thread (where a wait for it would never end).
    pub(crate) fn on_mpi_thread(&self) -> bool {
        std::thread::current().id() == self.thread
    }
}

static CLIENT: OnceLock<Result<Client, String>> = OnceLock::new();

/// The MPI thread, started (and MPI initialised) on first use.
pub(crate) fn client() -> Result<&'static Client, Error> {
    CLIENT
        .get_or_init(start_client)
        .as_ref()
        .map_err(|reason| Error::Spawn {
            reason: reason.clone(),
        })
}

fn start_client() -> Result<Client, String> {
    let (orders, rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("twinpool-mpi".into())
        .spawn(move || match init() {
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
            Ok(universe) => {
                let world = universe.world();
                let _ = ready_tx.send(Ok(()));
                pool_thread(universe, world, rx);
            }
        })
        .map_err(|e| format!("could not start the MPI thread: {e}"))?;
    let id = thread.thread().id();
    ready
        .recv()
        .map_err(|_| "the MPI thread ended while it started MPI".to_string())??;
    // SAFETY: `finalize_at_exit` is an `extern "C" fn()` that never unwinds.
    unsafe { libc::atexit(finalize_at_exit) };
    Ok(Client { orders, thread: id })
}

/// At the program's end: every rank is told to quit, MPI is finalised (so
/// `mpirun` sees a clean end). Waits at most 30 s.
extern "C" fn finalize_at_exit() {
    let Some(Ok(client)) = CLIENT.get() else {
        return;
    };
    if client.on_mpi_thread() {
        return;
    }
    let (reply, done) = crossbeam_channel::bounded(1);
    if client.order(Order::Finalize { reply }) {
        let _ = done.recv_timeout(Duration::from_secs(30));
    }
}

/// Ranks this process spawned: they serve one session after another until
/// the program ends, or until a session asks for another number of them.
struct Spawned {
    ep: Endpoint,
    peers: Vec<i32>,
}

/// What the MPI thread of the pool's process holds.
struct PoolSide {
    world: Endpoint,
    /// This process is rank 0 of a world that `mpirun` started.
    launched: bool,
    size: i32,
    spawned: Option<Spawned>,
    /// The open session's handler; it runs over `spawned` if
    /// `over_spawned`, else over the world.
    session: Option<Handler>,
    over_spawned: bool,
}

impl PoolSide {
    /// Opens a session; answers its ranks' numbers.
    fn open(
        &mut self,
        how: Option<(usize, std::path::PathBuf)>,
        handler: Handler,
    ) -> Result<Vec<i32>, Error> {
        if self.session.is_some() {
            return Err(Error::Unsupported {
                reason: "an MPI executor is open already in this process: its ranks serve one \
                         executor at a time; shut it down first"
                    .into(),
            });
        }
        let peers = match how {
            Some((n, program)) => {
                if self.spawned.as_ref().is_some_and(|s| s.peers.len() != n) {
                    // Another number of ranks: the old ones go.
                    if let Some(mut old) = self.spawned.take() {
                        quit(&mut old.ep, &old.peers);
                    }
                }
                if self.spawned.is_none() {
                    let inter = spawn(&program, n).map_err(|reason| Error::Spawn { reason })?;
                    self.spawned = Some(Spawned {
                        ep: Endpoint::new(Comm::Inter(inter)),
                        peers: (0..n as i32).collect(),
                    });
                }
                self.over_spawned = true;
                self.spawned
                    .as_ref()
                    .map(|s| s.peers.clone())
                    .unwrap_or_default()
            }
            None if self.launched => {
                self.over_spawned = false;
                (1..self.size).collect()
            }
            None => {
                return Err(Error::Spawn {
                    reason: if self.size <= 1 {
                        "this program runs alone, not under mpirun, so there are no ranks to \
                         serve: start it with `mpirun -n N` (N >= 2), or ask for ranks with \
                         Builder::mpi_spawn(n)"
                            .into()
                    } else {
                        "only rank 0 runs the pool; the other ranks serve it: call \
                         twinpool::serve_if_worker first thing in main"
                            .into()
                    },
                })
            }
        };
        self.session = Some(handler);
        Ok(peers)
    }

    /// The endpoint of the open session (the world's when none is open).
    fn endpoint(&mut self) -> &mut Endpoint {
        match &mut self.spawned {
            Some(s) if self.over_spawned => &mut s.ep,
            _ => &mut self.world,
        }
    }

    /// Hands what arrived to the session: whether anything did, and
    /// whether any of it was work. Messages that come when no session is
    /// open (late answers of a closed one) are dropped.
    fn receive(&mut self, probes: u32) -> (bool, bool) {
        let (mut any, mut work) = (false, false);
        while let Some(incoming) = self.endpoint().recv(probes) {
            any = true;
            if let Some(handler) = self.session.as_mut() {
                work |= handler(Event::Message(incoming));
            }
        }
        (any, work)
    }

    fn progress(&mut self) -> bool {
        let mut any = self.world.progress();
        if let Some(s) = &mut self.spawned {
            any |= s.ep.progress();
        }
        any
    }

    /// The program ends: every rank quits, and MPI is finalised.
    fn finalize(mut self, universe: mpi::environment::Universe) {
        if let Some(mut s) = self.spawned.take() {
            quit(&mut s.ep, &s.peers);
            // Dropping the endpoint disconnects the spawned ranks.
        }
        if self.launched {
            let peers: Vec<i32> = (1..self.size).collect();
            quit(&mut self.world, &peers);
        }
        self.world.wait_sends();
        drop(self);
        drop(universe);
    }
}

/// The MPI thread of the pool's process.
fn pool_thread(
    universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    rx: Receiver<Order>,
) {
    let size = world.size();
    let mut side = PoolSide {
        launched: world.rank() == 0 && size > 1,
        size,
        world: Endpoint::new(Comm::World(world)),
        spawned: None,
        session: None,
        over_spawned: false,
    };
    let mut backoff = Backoff::new();
    let mut next: Option<Order> = None;
    let mut last_tick = std::time::Instant::now();
    loop {
        let mut busy = false;
        while let Some(order) = next.take().or_else(|| rx.try_recv().ok()) {
            busy = true;
            match order {
                Order::Open {
                    spawn: how,
                    handler,
                    reply,
                } => {
                    let _ = reply.send(side.open(how, handler));
                }
                Order::Send(out) => side.endpoint().send(out),
                Order::Close { reply, lost } => {
                    side.session = None;
                    if lost && side.over_spawned {
                        if let Some(mut s) = side.spawned.take() {
                            // The survivors go at once; nothing waits for
                            // the dead, and the endpoint is never
                            // disconnected (that would wait for them): it
                            // is leaked on purpose.
                            for &peer in &s.peers {
                                s.ep.send(Outgoing::new(peer, &ToRank::Abandon, Vec::new()));
                            }
                            std::mem::forget(s);
                        }
                    }
                    let _ = reply.send(());
                }
                Order::Finalize { reply } => {
                    side.finalize(universe);
                    let _ = reply.send(());
                    return;
                }
            }
        }
        let (arrived, work) = side.receive(backoff.probes());
        // Sends that ended and heartbeats are no work: probe again at once,
        // but let the back-off cool.
        let moved = arrived | side.progress();
        if last_tick.elapsed() >= TICK {
            last_tick = std::time::Instant::now();
            if let Some(handler) = side.session.as_mut() {
                handler(Event::Tick);
            }
        }
        if busy || work {
            backoff.reset();
            continue;
        }
        if moved {
            continue;
        }
        match backoff.wait(&rx) {
            Ok(order) => next = order,
            // Every sender is gone: cannot happen while the static client
            // lives, which is for the life of the process.
            Err(()) => return,
        }
    }
}

/// Tells `peers` to quit and waits until the message has left.
fn quit(ep: &mut Endpoint, peers: &[i32]) {
    for &peer in peers {
        ep.send(Outgoing::new(peer, &ToRank::Quit, Vec::new()));
    }
    ep.wait_sends();
}
