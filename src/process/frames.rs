//! The wire protocol between a pool and its worker processes.
//!
//! After the handshake ([`Hello`], sent once through ipc-channel's one-shot
//! server) every message is a *frame*: plain bytes on an ipc-channel bytes
//! channel, holding one or more records. Batching records in one frame is how
//! short tasks stream to a worker without a system call each.
//!
//! A record is a tag byte and fields; integers are little-endian, byte
//! strings are a `u32` length and the bytes. Payloads are the codec's bytes
//! (see [`crate::codec`]) and are copied once, with no per-byte encoding; a
//! big payload is only a mark here, its bytes lie in a shared-memory segment
//! (see `payload.rs`).
//!
//! Each task record names its claim: the slot of the worker's claim table
//! and the number of this send (see `claims.rs`). The worker runs a task
//! only if it wins that claim.
//!
//! Decoding never panics and never allocates more than the frame holds: every
//! length is checked against the bytes that remain.

use serde::{Deserialize, Serialize};

use super::payload::{Held, Note};

/// Bumped whenever the frames or the handshake change.
pub(crate) const PROTOCOL_VERSION: u32 = 5;

/// The environment variable that tells a process it is a pool's worker: the
/// name of the pool's one-shot server to connect to.
pub(crate) const SERVER_ENV: &str = "TWINPOOL_WORKER_SERVER";

/// The environment variable holding the pool's process id.
pub(crate) const PARENT_ENV: &str = "TWINPOOL_WORKER_PARENT";

/// The environment variable holding a worker's memory limit, in bytes.
pub(crate) const MEMORY_LIMIT_ENV: &str = "TWINPOOL_WORKER_MEMORY_LIMIT";

/// One task a worker holds, as its handshake describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskInfo {
    pub(crate) name: String,
    /// The Rust type names of the argument and the result.
    pub(crate) arg_type: String,
    pub(crate) ret_type: String,
    /// The structural fingerprints of the argument and result types, and
    /// their canonical forms for messages (see `schema.rs`).
    pub(crate) arg_shape: (u64, String),
    pub(crate) ret_shape: (u64, String),
}

/// The handshake a worker sends when it connects.
#[derive(Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The worker's [`PROTOCOL_VERSION`].
    pub(crate) version: u32,
    /// The worker's process id, as it sees it (for messages only: the pool
    /// signals the process it started).
    pub(crate) pid: u32,
    /// Every task the worker holds.
    pub(crate) tasks: Vec<TaskInfo>,
    /// Where the pool sends request frames.
    pub(crate) requests: ipc_channel::ipc::IpcBytesSender,
    /// Where the pool reads reply frames.
    pub(crate) replies: ipc_channel::ipc::IpcBytesReceiver,
    /// Where the pool says where each big argument lies.
    pub(crate) big_requests: ipc_channel::ipc::IpcSender<Note>,
    /// Where the pool reads where each big result lies.
    pub(crate) big_replies: ipc_channel::ipc::IpcReceiver<Note>,
    /// Where the pool says it is done with a big result in a pooled
    /// segment (by task id), so the worker may reuse the segment.
    pub(crate) releases: ipc_channel::ipc::IpcSender<u64>,
    /// The worker's claim table (see `claims.rs`).
    pub(crate) claims: ipc_channel::ipc::IpcSharedMemory,
    /// Never written: the worker kills its process group when the pool's
    /// end closes, that is when the pool's process is gone.
    pub(crate) lifeline: ipc_channel::ipc::IpcSender<()>,
}

/// Where a task's claim lies: a slot of the worker's claim table, and the
/// number of this send of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClaimRef {
    pub(crate) slot: u32,
    pub(crate) send: u64,
}

/// The length that marks a payload as "in a shared-memory segment".
const SHARED_MARK: u32 = u32::MAX;

/// A payload as read from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// Where the next [`Note`] on the side channel says, which the sender
    /// sent before this frame.
    Shared,
}

/// A payload to write into a frame.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyRef<'a> {
    Inline(&'a [u8]),
    Shared,
}

impl Body {
    pub(crate) fn as_ref(&self) -> BodyRef<'_> {
        match self {
            Body::Inline(b) => BodyRef::Inline(b),
            Body::Shared => BodyRef::Shared,
        }
    }
}

impl<'a> BodyRef<'a> {
    /// How a held payload is written in a frame.
    pub(crate) fn of(held: &'a Held) -> BodyRef<'a> {
        match held {
            Held::Bytes(b) => BodyRef::Inline(b),
            Held::Shared(_) => BodyRef::Shared,
        }
    }
}

/// A request from the pool to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Run the initializer task `name` before anything else.
    Init { name: String, payload: Vec<u8> },
    /// Run task `name` on one argument, if its claim is won.
    Run {
        id: u64,
        claim: ClaimRef,
        name: String,
        payload: Body,
    },
    /// Run task `name` on each argument in order, stopping at a failure,
    /// if its claim is won. The payload is the codec's encoding of the whole
    /// `Vec` of arguments.
    Chunk {
        id: u64,
        claim: ClaimRef,
        name: String,
        payload: Body,
    },
    /// Finish and exit.
    Exit,
    /// The next [`Note`] on the side channel holds the segment of the
    /// [`Shared`](crate::Shared) handle `(origin, id)` of `len` bytes: keep
    /// it mapped until told to forget it. Written before the first task
    /// record that carries the handle.
    Share { origin: u32, id: u64, len: u64 },
    /// The pool holds the handle `(origin, id)` no more: let it go.
    Forget { origin: u32, id: u64 },
}

/// How one call ended in the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The encoded result.
    Ok(Body),
    /// The task panicked with this message.
    Panicked(String),
    /// The argument could not be decoded (`decode`) or the result encoded.
    Failed {
        decode: bool,
        what: String,
        detail: String,
    },
}

impl Outcome {
    /// The failed outcome that becomes `err` again when decoded: a failure
    /// that crossed from another machine as an [`Error`](crate::Error).
    #[cfg(feature = "mpi")]
    pub(crate) fn from_error(err: crate::Error) -> Outcome {
        match err {
            crate::Error::Panicked { message } => Outcome::Panicked(message),
            crate::Error::Decode { what, detail } => Outcome::Failed {
                decode: true,
                what,
                detail,
            },
            crate::Error::Encode { what, detail } => Outcome::Failed {
                decode: false,
                what,
                detail,
            },
            other => Outcome::Panicked(other.to_string()),
        }
    }
}

/// A reply from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The initializer ran; `Some(message)` if it failed.
    Init(Option<String>),
    /// Task `id` ended after `micros` of running.
    Done {
        id: u64,
        micros: u32,
        outcome: Outcome,
    },
    /// Chunk `id` ended: the encoded `Vec` of the results of the items
    /// that succeeded, in order, then how the first failure ended, if any.
    Chunk {
        id: u64,
        micros: u32,
        results: Body,
        failure: Option<Outcome>,
    },
}

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadFrame(pub(crate) &'static str);

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed frame: {}", self.0)
    }
}

// Record tags.
const INIT: u8 = 1;
const RUN: u8 = 2;
const CHUNK: u8 = 3;
const EXIT: u8 = 4;
const DONE: u8 = 5;
const CHUNK_DONE: u8 = 6;
const SHARE: u8 = 7;
const FORGET: u8 = 8;
const OK: u8 = 1;
const PANICKED: u8 = 2;
const FAILED_DECODE: u8 = 3;
const FAILED_ENCODE: u8 = 4;

/// Appends records to a frame.
#[derive(Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The frame so far; the writer is empty afterwards.
    #[cfg(test)]
    pub(crate) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The frame so far, to send; then [`clear`](Self::clear) it to reuse
    /// its buffer.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the frame, keeping its buffer.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Payloads of BIG bytes or more go in shared memory, so only a
        // message or name over 4 GiB could be longer: it is cut, never
        // written with a wrong length.
        let b = &b[..b.len().min(SHARED_MARK as usize - 1)];
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn request(&mut self, r: &Request) {
        match r {
            Request::Init { name, payload } => {
                self.u8(INIT);
                self.bytes(name.as_bytes());
                self.bytes(payload);
            }
            Request::Run {
                id,
                claim,
                name,
                payload,
            } => self.run(*id, *claim, name, payload.as_ref()),
            Request::Chunk {
                id,
                claim,
                name,
                payload,
            } => self.chunk(*id, *claim, name, payload.as_ref()),
            Request::Exit => self.u8(EXIT),
            Request::Share { origin, id, len } => {
                self.u8(SHARE);
                self.u32(*origin);
                self.u64(*id);
                self.u64(*len);
            }
            Request::Forget { origin, id } => {
                self.u8(FORGET);
                self.u32(*origin);
                self.u64(*id);
            }
        }
    }

    /// A `Run` record, without building a `Request`.
    pub(crate) fn run(&mut self, id: u64, claim: ClaimRef, name: &str, payload: BodyRef<'_>) {
        self.call(RUN, id, claim, name, payload);
    }

    /// A `Chunk` record, without building a `Request`.
    pub(crate) fn chunk(&mut self, id: u64, claim: ClaimRef, name: &str, payload: BodyRef<'_>) {
        self.call(CHUNK, id, claim, name, payload);
    }

    fn call(&mut self, tag: u8, id: u64, claim: ClaimRef, name: &str, payload: BodyRef<'_>) {
        self.u8(tag);
        self.u64(id);
        self.u32(claim.slot);
        self.u64(claim.send);
        self.bytes(name.as_bytes());
        self.body(payload);
    }

    fn body(&mut self, b: BodyRef<'_>) {
        match b {
            BodyRef::Inline(bytes) => self.bytes(bytes),
            BodyRef::Shared => self.u32(SHARED_MARK),
        }
    }

    pub(crate) fn reply(&mut self, r: &Reply) {
        match r {
            Reply::Init(err) => {
                self.u8(INIT);
                match err {
                    None => self.u8(0),
                    Some(msg) => {
                        self.u8(1);
                        self.bytes(msg.as_bytes());
                    }
                }
            }
            Reply::Done {
                id,
                micros,
                outcome,
            } => {
                self.u8(DONE);
                self.u64(*id);
                self.u32(*micros);
                self.outcome(outcome);
            }
            Reply::Chunk {
                id,
                micros,
                results,
                failure,
            } => {
                self.u8(CHUNK_DONE);
                self.u64(*id);
                self.u32(*micros);
                self.body(results.as_ref());
                match failure {
                    None => self.u8(0),
                    Some(o) => {
                        self.u8(1);
                        self.outcome(o);
                    }
                }
            }
        }
    }

    fn outcome(&mut self, o: &Outcome) {
        match o {
            Outcome::Ok(b) => {
                self.u8(OK);
                self.body(b.as_ref());
            }
            Outcome::Panicked(msg) => {
                self.u8(PANICKED);
                self.bytes(msg.as_bytes());
            }
            Outcome::Failed {
                decode,
                what,
                detail,
            } => {
                self.u8(if *decode {
                    FAILED_DECODE
                } else {
                    FAILED_ENCODE
                });
                self.bytes(what.as_bytes());
                self.bytes(detail.as_bytes());
            }
        }
    }
}

/// Reads records from a frame.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

type Res<T> = Result<T, BadFrame>;

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if n > self.buf.len() {
            return Err(BadFrame("a field runs past the end of the frame"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Res<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Res<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn body(&mut self) -> Res<Body> {
        let n = self.u32()?;
        if n == SHARED_MARK {
            return Ok(Body::Shared);
        }
        Ok(Body::Inline(self.take(n as usize)?.to_vec()))
    }

    fn claim(&mut self) -> Res<ClaimRef> {
        Ok(ClaimRef {
            slot: self.u32()?,
            send: self.u64()?,
        })
    }

    fn bytes(&mut self) -> Res<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Res<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| BadFrame("a name is not UTF-8"))
    }
    /// The next request, or `None` at the end of the frame.
    pub(crate) fn request(&mut self) -> Res<Option<Request>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(match self.u8()? {
            INIT => Request::Init {
                name: self.string()?,
                payload: self.bytes()?.to_vec(),
            },
            RUN => Request::Run {
                id: self.u64()?,
                claim: self.claim()?,
                name: self.string()?,
                payload: self.body()?,
            },
            CHUNK => Request::Chunk {
                id: self.u64()?,
                claim: self.claim()?,
                name: self.string()?,
                payload: self.body()?,
            },
            EXIT => Request::Exit,
            SHARE => Request::Share {
                origin: self.u32()?,
                id: self.u64()?,
                len: self.u64()?,
            },
            FORGET => Request::Forget {
                origin: self.u32()?,
                id: self.u64()?,
            },
            _ => return Err(BadFrame("unknown request tag")),
        }))
    }

    /// The next reply, or `None` at the end of the frame.
    pub(crate) fn reply(&mut self) -> Res<Option<Reply>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(match self.u8()? {
            INIT => match self.u8()? {
                0 => Reply::Init(None),
                1 => Reply::Init(Some(self.lossy()?)),
                _ => return Err(BadFrame("unknown initializer status")),
            },
            DONE => Reply::Done {
                id: self.u64()?,
                micros: self.u32()?,
                outcome: self.outcome()?,
            },
            CHUNK_DONE => Reply::Chunk {
                id: self.u64()?,
                micros: self.u32()?,
                results: self.body()?,
                failure: match self.u8()? {
                    0 => None,
                    1 => Some(self.outcome()?),
                    _ => return Err(BadFrame("unknown chunk status")),
                },
            },
            _ => return Err(BadFrame("unknown reply tag")),
        }))
    }

    fn lossy(&mut self) -> Res<String> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    fn outcome(&mut self) -> Res<Outcome> {
        Ok(match self.u8()? {
            OK => Outcome::Ok(self.body()?),
            PANICKED => Outcome::Panicked(self.lossy()?),
            tag @ (FAILED_DECODE | FAILED_ENCODE) => Outcome::Failed {
                decode: tag == FAILED_DECODE,
                what: self.lossy()?,
                detail: self.lossy()?,
            },
            _ => return Err(BadFrame("unknown outcome tag")),
        })
    }
}

/// Reads every record of `frame` both as requests and as replies, to the
/// first error. For the fuzz target and the tests: it must never panic.
#[cfg(any(test, fuzzing))]
pub(crate) fn decode_all(frame: &[u8]) {
    let mut rd = Reader::new(frame);
    while let Ok(Some(_)) = rd.request() {}
    let mut rd = Reader::new(frame);
    while let Ok(Some(_)) = rd.reply() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Init {
                name: "init".into(),
                payload: vec![1, 2],
            },
            Request::Run {
                id: 7,
                claim: ClaimRef { slot: 3, send: 9 },
                name: "square".into(),
                payload: Body::Inline(vec![9]),
            },
            Request::Run {
                id: 11,
                claim: ClaimRef {
                    slot: u32::MAX,
                    send: u64::MAX,
                },
                name: "len".into(),
                payload: Body::Shared,
            },
            Request::Chunk {
                id: 8,
                claim: ClaimRef { slot: 0, send: 1 },
                name: "add".into(),
                payload: Body::Inline(vec![3, 1, 2, 3]),
            },
            Request::Share {
                origin: 12,
                id: u64::MAX,
                len: 1 << 40,
            },
            Request::Forget { origin: 12, id: 5 },
            Request::Exit,
        ]
    }

    fn replies() -> Vec<Reply> {
        vec![
            Reply::Init(Some("boom".into())),
            Reply::Done {
                id: 7,
                micros: 12,
                outcome: Outcome::Ok(Body::Inline(vec![81])),
            },
            Reply::Chunk {
                id: 8,
                micros: 3,
                results: Body::Inline(vec![2, 4, 6]),
                failure: Some(Outcome::Panicked("p".into())),
            },
            Reply::Chunk {
                id: 9,
                micros: 3,
                results: Body::Shared,
                failure: Some(Outcome::Failed {
                    decode: true,
                    what: "w".into(),
                    detail: "d".into(),
                }),
            },
            Reply::Chunk {
                id: 10,
                micros: 0,
                results: Body::Inline(vec![0]),
                failure: None,
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut w = Writer::default();
        for r in requests() {
            w.request(&r);
        }
        let frame = w.take();
        let mut rd = Reader::new(&frame);
        let mut got = Vec::new();
        while let Some(r) = rd.request().unwrap() {
            got.push(r);
        }
        assert_eq!(got, requests());

        for r in replies() {
            w.reply(&r);
        }
        let frame = w.take();
        let mut rd = Reader::new(&frame);
        let mut got = Vec::new();
        while let Some(r) = rd.reply().unwrap() {
            got.push(r);
        }
        assert_eq!(got, replies());
    }

    /// Every truncation of a valid frame inside a record is an error, and
    /// one at a record boundary gives exactly the records before it.
    #[test]
    fn truncated_frames_are_errors() {
        let mut w = Writer::default();
        let mut bounds = vec![0];
        for r in requests() {
            w.request(&r);
            bounds.push(w.len());
        }
        let frame = w.take();
        for cut in 0..=frame.len() {
            let mut rd = Reader::new(&frame[..cut]);
            let mut n = 0;
            let ended = loop {
                match rd.request() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => break Ok(n),
                    Err(e) => break Err(e),
                }
            };
            match bounds.iter().position(|&b| b == cut) {
                Some(records) => assert_eq!(ended, Ok(records), "cut at {cut}"),
                None => assert!(ended.is_err(), "cut at {cut} read {ended:?}"),
            }
        }

        for r in replies() {
            w.reply(&r);
        }
        let frame = w.take();
        for cut in 0..frame.len() {
            decode_all(&frame[..cut]);
        }
    }

    /// A length that claims more bytes than the frame holds is refused
    /// before anything is allocated for it.
    #[test]
    fn huge_lengths_are_refused() {
        let mut frame = vec![CHUNK];
        frame.extend_from_slice(&1u64.to_le_bytes());
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend_from_slice(&2u64.to_le_bytes());
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend_from_slice(&(SHARED_MARK - 1).to_le_bytes());
        assert!(Reader::new(&frame).request().is_err());
        // The largest length is the shared-memory mark: no bytes follow.
        let at = frame.len() - 4;
        frame[at..].copy_from_slice(&SHARED_MARK.to_le_bytes());
        assert!(matches!(
            Reader::new(&frame).request(),
            Ok(Some(Request::Chunk {
                payload: Body::Shared,
                ..
            }))
        ));
    }

    /// Pseudo-random bytes never panic the decoders.
    #[test]
    fn random_frames_do_not_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000usize {
            let frame: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 8) as u8
                })
                .collect();
            decode_all(&frame);
        }
    }
}
