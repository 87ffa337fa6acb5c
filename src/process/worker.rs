//! The worker's side: connect to the pool, then run the tasks of each frame
//! in order until told to exit or until the pool goes away.
//!
//! Three rules make the pool's accounting exact (see `scheduler.rs`):
//!
//! 1. A task runs only if the worker wins its claim (`claims.rs`); a task the
//!    pool took back is skipped.
//! 2. Its reply is sent before the next task starts, so when the worker
//!    dies, every task it finished has been answered, and at most one it
//!    started has not.
//! 3. A reply leaves as soon as its task ends, whatever runs next.
//!
//! A second thread waits on the *lifeline*, a channel the pool never writes
//! to: it ends when the pool's process is gone, and the worker then kills
//! its whole process group (itself and whatever its tasks started).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::Instant;

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcReceiver, IpcSender};

use super::claims::{ClaimTable, OUT_OF_MEMORY};
use super::frames::{
    Body, Hello, Outcome, Reader, Reply, Request, Writer, MEMORY_LIMIT_ENV, PARENT_ENV,
    PROTOCOL_VERSION, SERVER_ENV,
};
use super::payload::{Big, Held, Note, Received, Sent, BIG};
use super::spawn::task_info;
use crate::shared::Key;
use crate::{Error, Registry};
use std::collections::HashMap;

/// Starts a worker with the allocator settings glibc itself slides to once
/// a process has freed a 32 MiB buffer (its `M_MMAP_THRESHOLD` follows the
/// largest mapped buffer freed, up to 32 MiB, and `M_TRIM_THRESHOLD` is
/// twice that). A fresh worker would otherwise start at 128 KiB, so every
/// task with a payload of a few hundred KiB grew the heap, faulted in fresh
/// zeroed pages and trimmed them again: 256 KiB arguments reached 0.6 to
/// 0.7 GiB/s instead of 1.6 to 2.6 (alternating runs of the payload
/// benchmark with and without these settings). The cost is memory: a
/// worker keeps up to 64 MiB of freed heap for its next tasks, as a
/// long-running glibc program does anyway. Other C libraries are left as
/// they are.
fn keep_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Buffers up to this size come from the heap, not from a mapping
        /// of their own ...
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        /// ... and the heap keeps up to this much freed memory at its top
        /// instead of giving it back to the system.
        const TRIM_THRESHOLD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only sets the allocator's tunables, under the
        // allocator's own lock; no memory is handed over.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// Serves tasks if this process was started as a process pool's worker,
/// then ends the process; in any other process, returns at once. The public
/// face is [`crate::serve_if_worker`] (`src/serve.rs`).
pub(crate) fn serve_if_process_worker(registry: &Registry) {
    let Some(server) = std::env::var_os(SERVER_ENV) else {
        return;
    };
    let parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<libc::pid_t>().ok());
    // SAFETY: getppid touches no memory.
    let ppid = unsafe { libc::getppid() };
    let Ok(server) = server.into_string() else {
        std::process::exit(1);
    };
    let connect = match parent {
        Some(p) if p != ppid => {
            if !process_exists(p) {
                // The pool is gone already.
                std::process::exit(1);
            }
            // Either a process that a worker's task started (it inherited
            // the variables) or a worker behind a wrapper that forked: only
            // a worker can connect, since the pool accepts one connection.
            match IpcSender::<Hello>::connect(server) {
                Ok(connect) => connect,
                Err(_) => return,
            }
        }
        _ => match IpcSender::<Hello>::connect(server) {
            Ok(connect) => connect,
            Err(e) => {
                eprintln!(
                    "twinpool worker {}: could not connect to the pool: {e}",
                    std::process::id()
                );
                std::process::exit(1);
            }
        },
    };
    keep_heap();
    let limit = std::env::var(MEMORY_LIMIT_ENV)
        .ok()
        .and_then(|l| l.parse::<u64>().ok());
    let code = match serve(registry, connect, limit) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("twinpool worker {}: {e}", std::process::id());
            1
        }
    };
    std::process::exit(code);
}

/// True in a process the pool started as its worker (even one whose `main`
/// forgot to call [`crate::serve_if_worker`] first).
pub(crate) fn started_as_worker() -> bool {
    let parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<libc::pid_t>().ok());
    // SAFETY: getppid touches no memory.
    std::env::var_os(SERVER_ENV).is_some() && parent == Some(unsafe { libc::getppid() })
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

fn serve(registry: &Registry, connect: IpcSender<Hello>, limit: Option<u64>) -> Result<(), String> {
    if let Some(limit) = limit {
        limit_memory(limit)?;
    }
    let (requests, request_rx) = ipc::bytes_channel().map_err(|e| e.to_string())?;
    let (reply_tx, replies) = ipc::bytes_channel().map_err(|e| e.to_string())?;
    let (big_requests, big_rx) = ipc::channel().map_err(|e| e.to_string())?;
    let (big_tx, big_replies) = ipc::channel().map_err(|e| e.to_string())?;
    let (releases, released) = ipc::channel().map_err(|e| e.to_string())?;
    let (lifeline, lifeline_rx) = ipc::channel::<()>().map_err(|e| e.to_string())?;
    let (claims, claims_for_pool) = ClaimTable::create()?;
    if let Some(limit) = limit {
        watch_for_out_of_memory(&claims, limit);
    }
    connect
        .send(Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            tasks: registry.entries().map(|e| task_info(e)).collect(),
            requests,
            replies,
            big_requests,
            big_replies,
            releases,
            claims: claims_for_pool,
            lifeline,
        })
        .map_err(|e| format!("could not send the handshake: {e}"))?;
    drop(connect);
    // Started after the handshake, off the pool's path to its first task;
    // a pool that died meanwhile has closed the lifeline already, which
    // this thread then sees at once.
    std::thread::Builder::new()
        .name("twinpool-lifeline".into())
        .spawn(move || {
            // Nothing is ever sent: this returns when the pool's end closes.
            let _ = lifeline_rx.recv();
            // SAFETY: kill(2) touches no memory; 0 is this process's group,
            // which the pool made for this worker alone.
            unsafe { libc::kill(0, libc::SIGKILL) };
        })
        .map_err(|e| format!("could not start the lifeline thread: {e}"))?;
    Server {
        registry,
        rx: request_rx,
        tx: reply_tx,
        big_rx,
        big_tx,
        received: Received::default(),
        sent: Sent::default(),
        released,
        unread: Vec::new(),
        shares: HashMap::new(),
        claims,
        out: Writer::default(),
    }
    .run()
}

/// Caps this process's address space at `limit` bytes.
fn limit_memory(limit: u64) -> Result<(), String> {
    let cap = libc::rlim_t::try_from(limit).unwrap_or(libc::RLIM_INFINITY);
    let rl = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: setrlimit reads only the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) } != 0 {
        return Err(format!(
            "could not limit the worker's memory to {limit} bytes: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The flags word of the claim table, for the abort handler.
static FLAGS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// The worker's memory limit, in pages, for the abort handler.
static LIMIT_PAGES: AtomicU64 = AtomicU64::new(u64::MAX);

/// Marks the claim table when this worker aborts for lack of memory (Rust
/// aborts the process when an allocation fails), so the pool can tell the
/// task "out of memory" rather than "killed by SIGABRT". The abort counts
/// as out of memory when the failed call's error number is still `ENOMEM`
/// (a big allocation beyond the limit), or when the address space is
/// within a tenth of the limit (many small ones).
fn watch_for_out_of_memory(claims: &ClaimTable, limit: u64) {
    // SAFETY: sysconf touches no memory.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    LIMIT_PAGES.store(limit / page.max(1), Ordering::Release);
    FLAGS.store(
        std::ptr::from_ref(claims.flags()).cast_mut(),
        Ordering::Release,
    );
    // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe
    // (see `on_abort`) and uses a table that lives until the process ends
    // (`serve` never returns while it runs).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_abort as *const () as libc::sighandler_t;
        // Once: abort() then ends the process with SIGABRT as usual.
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigaction(libc::SIGABRT, &sa, std::ptr::null_mut());
    }
}

/// The SIGABRT handler of a worker with a memory limit. It only reads
/// errno, reads `/proc/self/statm` with open/read/close, and does atomic
/// operations: all async-signal-safe.
extern "C" fn on_abort(_: libc::c_int) {
    // SAFETY: __errno_location gives this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    let near_limit = address_space_pages()
        .is_some_and(|pages| pages >= LIMIT_PAGES.load(Ordering::Acquire) / 10 * 9);
    let flags = FLAGS.load(Ordering::Acquire);
    if (errno == libc::ENOMEM || near_limit) && !flags.is_null() {
        // SAFETY: set by `watch_for_out_of_memory` to a word of the claim
        // table, which outlives every abort of this process.
        unsafe { (*flags).fetch_or(OUT_OF_MEMORY, Ordering::Release) };
    }
}

/// The size of this process's address space, in pages: the first field of
/// `/proc/self/statm`, read without allocating.
fn address_space_pages() -> Option<u64> {
    let mut buf = [0u8; 64];
    // SAFETY: open, read and close are async-signal-safe; read writes at
    // most `buf.len()` bytes into `buf`.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let n = usize::try_from(n).ok()?;
    let mut pages: u64 = 0;
    for &b in buf.get(..n)?.iter().take_while(|b| b.is_ascii_digit()) {
        pages = pages.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(pages)
}

/// The worker's serving loop: its channels and what it keeps between
/// tasks.
struct Server<'a> {
    registry: &'a Registry,
    rx: IpcBytesReceiver,
    tx: IpcBytesSender,
    /// Where big arguments lie, and where big results lie.
    big_rx: IpcReceiver<Note>,
    big_tx: IpcSender<Note>,
    /// The pool's segments this worker keeps mapped.
    received: Received,
    /// Notes for the segments of big results.
    sent: Sent,
    /// Ids of the tasks whose pooled results the pool has read.
    released: IpcReceiver<u64>,
    /// Results in pooled segments the pool has not said it read, by task
    /// id: their segments go back to the pool only once it has.
    unread: Vec<(u64, Box<Big>)>,
    claims: ClaimTable,
    /// The pool's [`Shared`](crate::Shared) handles this worker was handed
    /// and keeps mapped until the pool says to forget them.
    shares: HashMap<Key, crate::Shared>,
    /// The reply being written, its buffer reused.
    out: Writer,
}

impl Server<'_> {
    fn run(mut self) -> Result<(), String> {
        loop {
            let frame = match self.rx.recv() {
                Ok(frame) => frame,
                // The pool is gone: nothing left to serve.
                Err(_) => return Ok(()),
            };
            self.claims.frame_read();
            for (request, payload) in self.read(&frame)? {
                match request {
                    Request::Exit => return Ok(()),
                    // Taken in `read`, in frame order.
                    Request::Share { .. } | Request::Forget { .. } => {}
                    Request::Init { name, payload } => {
                        let failed = match self.call(&name, &payload) {
                            Ok(_) | Err(Outcome::Ok(_)) => None,
                            Err(Outcome::Panicked(m)) => Some(format!("it panicked: {m}")),
                            Err(Outcome::Failed { what, detail, .. }) => {
                                Some(format!("{what}: {detail}"))
                            }
                        };
                        let stop = failed.is_some();
                        self.reply(&Reply::Init(failed))?;
                        if stop {
                            return Ok(());
                        }
                    }
                    Request::Run {
                        id, claim, name, ..
                    } => {
                        if !self.claims.start(claim.slot, claim.send) {
                            continue; // taken back by the pool
                        }
                        let start = Instant::now();
                        let outcome = match self.call(&name, &payload) {
                            Ok(bytes) => match self.put_body(id, bytes)? {
                                Ok(body) => Outcome::Ok(body),
                                Err(failed) => failed,
                            },
                            Err(failed) => failed,
                        };
                        let micros = micros_since(start);
                        self.reply(&Reply::Done {
                            id,
                            micros,
                            outcome,
                        })?;
                    }
                    Request::Chunk {
                        id, claim, name, ..
                    } => {
                        if !self.claims.start(claim.slot, claim.send) {
                            continue;
                        }
                        let start = Instant::now();
                        let (results, mut failure) = match self.registry.get(&name) {
                            Ok(entry) => {
                                let (results, failure) = (entry.call_chunk)(&payload);
                                (results, failure.map(|e| outcome_of(&name, e)))
                            }
                            Err(e) => (Vec::new(), Some(outcome_of(&name, e))),
                        };
                        let micros = micros_since(start);
                        let results = match self.put_body(id, results)? {
                            Ok(body) => body,
                            Err(failed) => {
                                failure = Some(failed);
                                Body::Inline(Vec::new())
                            }
                        };
                        self.reply(&Reply::Chunk {
                            id,
                            micros,
                            results,
                            failure,
                        })?;
                    }
                }
            }
        }
    }

    /// The requests of a frame, each with its payload. Big payloads are
    /// opened now, in frame order, also those of tasks that will turn out
    /// to be taken back: the notes come in that order.
    fn read(&mut self, frame: &[u8]) -> Result<Vec<(Request, Held)>, String> {
        let mut reader = Reader::new(frame);
        let mut out = Vec::new();
        while let Some(mut r) = reader.request().map_err(|e| e.to_string())? {
            let payload = match &mut r {
                Request::Run { payload, .. } | Request::Chunk { payload, .. } => {
                    self.take_body(std::mem::replace(payload, Body::Shared))?
                }
                Request::Share { origin, id, len } => {
                    let note = self.big_rx.recv().map_err(|e| {
                        format!("lost the pool's channel for big arguments ({e}); the pool is gone")
                    })?;
                    let segment = note.into_whole(*len).map_err(|e| e.to_string())?;
                    let key = Key {
                        origin: *origin,
                        id: *id,
                    };
                    self.shares
                        .insert(key, crate::Shared::received(key, segment));
                    continue;
                }
                Request::Forget { origin, id } => {
                    self.shares.remove(&Key {
                        origin: *origin,
                        id: *id,
                    });
                    continue;
                }
                _ => Held::Bytes(Vec::new()),
            };
            out.push((r, payload));
        }
        Ok(out)
    }

    /// Calls task `name`, catching a panic: the encoded result, or how it
    /// failed.
    fn call(&self, name: &str, payload: &[u8]) -> Result<Vec<u8>, Outcome> {
        let entry = self.registry.get(name).map_err(|e| outcome_of(name, e))?;
        match catch_unwind(AssertUnwindSafe(|| (entry.call_bytes)(payload))) {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(outcome_of(name, e)),
            Err(p) => {
                let message = crate::error::panic_message(&*p);
                crate::error::drop_panic_payload(p);
                Err(Outcome::Panicked(message))
            }
        }
    }

    /// A request's payload: inline, or where the next note says.
    fn take_body(&mut self, body: Body) -> Result<Held, String> {
        match body {
            Body::Inline(bytes) => Ok(Held::Bytes(bytes)),
            Body::Shared => {
                let note = self.big_rx.recv().map_err(|e| {
                    format!("lost the pool's channel for big arguments ({e}); the pool is gone")
                })?;
                self.received.open(note, None).map_err(|e| e.to_string())
            }
        }
    }

    /// The result of task `id` to reply with: a big one goes ahead in a
    /// shared-memory segment, pooled if one is free (and kept until the
    /// pool says it has read it). `Ok(Err(..))` if no segment could be
    /// made; `Err` if the pool is gone.
    fn put_body(&mut self, id: u64, bytes: Vec<u8>) -> Result<Result<Body, Outcome>, String> {
        if bytes.len() < BIG {
            return Ok(Ok(Body::Inline(bytes)));
        }
        // Only for big results: each look at the release channel is a
        // system call, too dear for every small reply.
        while let Ok(done) = self.released.try_recv() {
            self.unread.retain(|(task, _)| *task != done);
        }
        let big = match Held::new(bytes) {
            Ok(Held::Bytes(b)) => return Ok(Ok(Body::Inline(b))),
            Ok(Held::Shared(big)) => big,
            Err(detail) => {
                return Ok(Err(Outcome::Failed {
                    decode: false,
                    what: "a big result".into(),
                    detail,
                }))
            }
        };
        self.big_tx.send(self.sent.note(&big)).map_err(|e| {
            format!("could not send a big result to the pool ({e}); the pool is gone")
        })?;
        if big.is_pooled() {
            self.unread.push((id, big));
        }
        Ok(Ok(Body::Shared))
    }

    /// Sends a reply now: it leaves before the next task starts.
    fn reply(&mut self, r: &Reply) -> Result<(), String> {
        self.out.reply(r);
        let sent = self.tx.send(self.out.as_bytes());
        self.out.clear();
        sent.map_err(|e| format!("could not send results to the pool: {e}"))
    }
}

/// The outcome that reports `e` from task `name` to the pool.
fn outcome_of(name: &str, e: Error) -> Outcome {
    match e {
        Error::Panicked { message } => Outcome::Panicked(message),
        Error::Decode { what, detail } => Outcome::Failed {
            decode: true,
            what,
            detail,
        },
        Error::Encode { what, detail } => Outcome::Failed {
            decode: false,
            what,
            detail,
        },
        other => Outcome::Failed {
            decode: true,
            what: format!("task {name:?}"),
            detail: other.to_string(),
        },
    }
}

fn micros_since(start: Instant) -> u32 {
    u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX)
}
