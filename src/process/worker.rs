//! The worker side: connect to the pool, then run request frames until told
//! to exit or until the pool goes away.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcReceiver, IpcSender};

use super::wire::{
    Big, Body, Held, Hello, Note, Outcome, Reader, Received, Reply, Request, Sent, Writer, BIG,
    PROTOCOL_VERSION,
};
use crate::{Error, Registry};

/// The environment variable that tells a process it is a pool's worker: the
/// name of the pool's one-shot server to connect to.
pub(crate) const SERVER_ENV: &str = "TWINPOOL_WORKER_SERVER";

/// The environment variable holding the pool's process id.
pub(crate) const PARENT_ENV: &str = "TWINPOOL_WORKER_PARENT";

/// Replies wait at most this long to be batched with later ones.
const FLUSH_AFTER: Duration = Duration::from_micros(200);

/// Serves tasks if this process was started as a pool's worker, then ends
/// the process; in any other process, returns at once.
///
/// Call it first thing in `main`, with a registry holding the same names
/// (and types) as the pool's: code before it runs in every worker too.
///
/// ```no_run
/// fn square(x: u64) -> u64 { x * x }
///
/// fn tasks() -> twinpool::Registry {
///     twinpool::Registry::new().register("square", square)
/// }
///
/// fn main() -> Result<(), twinpool::Error> {
///     twinpool::serve_if_worker(&tasks());
///     let pool = twinpool::Executor::processes(2, tasks())?;
///     assert_eq!(pool.submit_named::<u64, u64>("square", 7)?.result()?, 49);
///     Ok(())
/// }
/// ```
pub fn serve_if_worker(registry: &Registry) {
    let Some(server) = std::env::var_os(SERVER_ENV) else {
        return;
    };
    // Processes this worker's tasks start are not workers.
    std::env::remove_var(SERVER_ENV);
    let parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    std::env::remove_var(PARENT_ENV);
    die_with_parent(parent);
    let code = match server.into_string() {
        Ok(server) => match serve(registry, server) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("twinpool worker {}: {e}", std::process::id());
                1
            }
        },
        Err(_) => 1,
    };
    std::process::exit(code);
}

/// Asks the kernel to kill this worker when the pool's thread that started
/// it ends, so a killed pool leaves no worker behind; exits at once if the
/// pool is already gone.
/// (Elsewhere than Linux there is no parent-death signal; the worker still
/// exits when the pool's channel closes.)
fn die_with_parent(parent: Option<i32>) {
    // SAFETY: prctl and getppid touch no memory of ours.
    unsafe {
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if parent.is_some_and(|p| libc::getppid() != p) {
            std::process::exit(1);
        }
    }
}

fn serve(registry: &Registry, server: String) -> Result<(), String> {
    let connect = IpcSender::<Hello>::connect(server)
        .map_err(|e| format!("could not connect to the pool: {e}"))?;
    let (requests, request_rx) = ipc::bytes_channel().map_err(|e| e.to_string())?;
    let (reply_tx, replies) = ipc::bytes_channel().map_err(|e| e.to_string())?;
    let (big_requests, big_rx) = ipc::channel().map_err(|e| e.to_string())?;
    let (big_tx, big_replies) = ipc::channel().map_err(|e| e.to_string())?;
    let (releases, released) = ipc::channel().map_err(|e| e.to_string())?;
    let tasks = registry
        .entries()
        .map(|e| {
            (
                e.name.to_string(),
                e.arg_type.to_string(),
                e.ret_type.to_string(),
            )
        })
        .collect();
    connect
        .send(Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            tasks,
            requests,
            replies,
            big_requests,
            big_replies,
            releases,
        })
        .map_err(|e| format!("could not send the handshake: {e}"))?;
    drop(connect);
    Worker {
        registry,
        rx: request_rx,
        tx: reply_tx,
        big_rx,
        big_tx,
        received: Received::default(),
        sent: Sent::default(),
        released,
        unread: Vec::new(),
        queue: VecDeque::new(),
        out: Writer::default(),
        oldest: None,
    }
    .run()
}

struct Worker<'a> {
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
    /// Requests received and not yet run.
    queue: VecDeque<Request>,
    /// Replies not yet sent, and when the first of them was written.
    out: Writer,
    oldest: Option<Instant>,
}

impl Worker<'_> {
    fn run(mut self) -> Result<(), String> {
        loop {
            let Some(request) = self.queue.pop_front() else {
                self.flush()?;
                match self.rx.recv() {
                    Ok(frame) => self.read(&frame)?,
                    // The pool is gone: nothing left to serve.
                    Err(_) => return Ok(()),
                }
                continue;
            };
            match request {
                Request::Exit => return self.flush(),
                Request::Init { name, payload } => {
                    let failed = match self.call(&name, &payload) {
                        Ok(_) => None,
                        Err(Outcome::Panicked(m)) => Some(format!("it panicked: {m}")),
                        Err(Outcome::Failed { what, detail, .. }) => {
                            Some(format!("{what}: {detail}"))
                        }
                        Err(Outcome::Ok(_)) => None,
                    };
                    let stop = failed.is_some();
                    self.reply(&Reply::Init(failed))?;
                    if stop {
                        return self.flush();
                    }
                }
                Request::Run { id, name, payload } => {
                    let payload = self.take_body(payload)?;
                    let start = Instant::now();
                    let outcome = match self.call(&name, &payload) {
                        Ok(bytes) => Outcome::Ok(self.put_body(id, bytes)?),
                        Err(failed) => failed,
                    };
                    let micros = micros_since(start);
                    self.reply(&Reply::Done {
                        id,
                        micros,
                        outcome,
                    })?;
                }
                Request::Chunk { id, name, payload } => {
                    let payload = self.take_body(payload)?;
                    let start = Instant::now();
                    let (results, failure) = match self.registry.get(&name) {
                        Ok(entry) => {
                            let (results, failure) = (entry.call_chunk)(&payload);
                            (results, failure.map(|e| outcome_of(&name, e)))
                        }
                        Err(e) => (Vec::new(), Some(outcome_of(&name, e))),
                    };
                    let micros = micros_since(start);
                    let results = self.put_body(id, results)?;
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

    fn read(&mut self, frame: &[u8]) -> Result<(), String> {
        let mut reader = Reader::new(frame);
        while let Some(r) = reader.request().map_err(|e| e.to_string())? {
            self.queue.push_back(r);
        }
        Ok(())
    }

    /// Calls task `name`, catching a panic: the encoded result, or how it
    /// failed.
    fn call(&self, name: &str, payload: &[u8]) -> Result<Vec<u8>, Outcome> {
        let entry = self.registry.get(name).map_err(|e| outcome_of(name, e))?;
        match catch_unwind(AssertUnwindSafe(|| (entry.call_bytes)(payload))) {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(outcome_of(name, e)),
            Err(p) => Err(Outcome::Panicked(crate::error::panic_message(&*p))),
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
    /// shared-memory segment, pooled if one is free. A pooled one is kept
    /// until the pool says it has read it.
    fn put_body(&mut self, id: u64, bytes: Vec<u8>) -> Result<Body, String> {
        if bytes.len() < BIG {
            return Ok(Body::Inline(bytes));
        }
        // Only for big results: each look at the release channel is a
        // system call, too dear for every small reply.
        while let Ok(done) = self.released.try_recv() {
            self.unread.retain(|(task, _)| *task != done);
        }
        let big = match Held::new(bytes) {
            Held::Bytes(b) => return Ok(Body::Inline(b)),
            Held::Shared(big) => big,
        };
        self.big_tx.send(self.sent.note(&big)).map_err(|e| {
            format!("could not send a big result to the pool ({e}); the pool is gone")
        })?;
        if big.is_pooled() {
            self.unread.push((id, big));
        }
        Ok(Body::Shared)
    }

    /// Queues a reply; sends the batch when nothing else is waiting to run,
    /// when the oldest reply has waited long enough, or when tasks are not
    /// trivial (the next one may be long: its predecessor's reply goes now).
    fn reply(&mut self, r: &Reply) -> Result<(), String> {
        let micros = match r {
            Reply::Done { micros, .. } | Reply::Chunk { micros, .. } => *micros,
            Reply::Init(_) => u32::MAX,
        };
        self.out.reply(r);
        let oldest = *self.oldest.get_or_insert_with(Instant::now);
        if self.queue.is_empty()
            || u128::from(micros) >= FLUSH_AFTER.as_micros()
            || oldest.elapsed() >= FLUSH_AFTER
            || self.out.len() > 1 << 20
        {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        self.oldest = None;
        if self.out.is_empty() {
            return Ok(());
        }
        let frame = self.out.take();
        self.tx
            .send(&frame)
            .map_err(|e| format!("could not send results to the pool: {e}"))
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
