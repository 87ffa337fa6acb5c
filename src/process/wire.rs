//! The wire protocol between a pool and its worker processes.
//!
//! After the handshake ([`Hello`], sent once through ipc-channel's one-shot
//! server) every message is a *frame*: plain bytes on an ipc-channel bytes
//! channel, holding one or more records. Batching records in one frame is how
//! short tasks stream to a worker without a system call each.
//!
//! A record is a tag byte and fields; integers are little-endian, byte
//! strings are a `u32` length and the bytes. Payloads are the codec's bytes
//! (see [`crate::codec`]) and are copied once, with no per-byte encoding.
//!
//! Decoding never panics and never allocates more than the frame holds: every
//! length is checked against the bytes that remain.
//!
//! Payloads of [`BIG`] bytes or more do not go in the frame: they are copied
//! into a shared-memory segment, mostly one reused from payload to payload
//! (see [`Big`]), and a [`Note`] on a side channel says where they lie.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ipc_channel::ipc::IpcSharedMemory;
use serde::{Deserialize, Serialize};

/// Bumped whenever the frames or the handshake change.
pub(crate) const PROTOCOL_VERSION: u32 = 3;

/// The handshake a worker sends when it connects.
#[derive(Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The worker's [`PROTOCOL_VERSION`].
    pub(crate) version: u32,
    /// The worker's process id.
    pub(crate) pid: u32,
    /// Every task the worker holds: name, argument type, result type.
    pub(crate) tasks: Vec<(String, String, String)>,
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
}

/// Payloads of this many bytes or more cross in a shared-memory segment
/// instead of inside the frame: one copy in, one copy out, and no trip
/// through the socket.
pub(crate) const BIG: usize = 1 << 20;

/// Segments a process keeps for reuse (see [`Big`]).
const SLOTS: usize = 4;

/// Segments larger than this are used once and unmapped, not kept.
const MAX_KEPT: usize = 256 << 20;

/// Where a big payload lies, sent on the side channel just before the frame
/// that holds its [`Body::Shared`].
#[derive(Serialize, Deserialize)]
pub(crate) struct Note {
    /// The slot of the sender's segment pool the payload is in, or `None`
    /// for a segment used once.
    slot: Option<u32>,
    /// The payload's length: it starts at the segment's first byte.
    len: u64,
    /// The segment, unless the receiver holds it already (in `slot`, from
    /// an earlier note).
    segment: Option<IpcSharedMemory>,
}

/// A payload held in memory: bytes, or a shared-memory segment.
pub(crate) enum Held {
    /// Small: the bytes, written inside the frame.
    Bytes(Vec<u8>),
    /// Big: in a shared-memory segment, named by a [`Note`].
    Shared(Box<Big>),
}

impl Held {
    /// `bytes`, copied into a shared-memory segment when it is big.
    pub(crate) fn new(bytes: Vec<u8>) -> Held {
        if bytes.len() >= BIG {
            Held::Shared(Box::new(Big::copy_of(&bytes)))
        } else {
            Held::Bytes(bytes)
        }
    }

    /// A copy of `bytes`, which are big, in a shared-memory segment.
    pub(crate) fn big(bytes: &[u8]) -> Held {
        Held::Shared(Box::new(Big::copy_of(bytes)))
    }

    /// How it is written in a frame.
    pub(crate) fn body(&self) -> BodyRef<'_> {
        match self {
            Held::Bytes(b) => BodyRef::Inline(b),
            Held::Shared(_) => BodyRef::Shared,
        }
    }

    /// Its segment, if it has one.
    pub(crate) fn segment(&self) -> Option<&Big> {
        match self {
            Held::Bytes(_) => None,
            Held::Shared(big) => Some(big),
        }
    }
}

impl std::ops::Deref for Held {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Held::Bytes(b) => b,
            Held::Shared(big) => big,
        }
    }
}

/// A big payload: the first `len` bytes of a shared-memory segment.
///
/// A sender copies each big payload into a segment of its process's pool of
/// [`SLOTS`] segments, reused from payload to payload: after the first time,
/// no segment is created, no page is faulted in, and the receiver, which
/// keeps the segments it was sent mapped by slot, is sent only a [`Note`].
/// A segment is lent to one payload at a time, for as long as the payload
/// lives (until its task is answered, or its worker is dead), so it is
/// never overwritten while a worker may still read it. When every slot is
/// lent, or the payload is over [`MAX_KEPT`] bytes, the payload gets a
/// segment of its own, used once.
///
/// The pool's arguments live in its queue until answered; a worker's
/// results are dropped on its side as soon as they are sent, so the worker
/// keeps a pooled result until the pool's [`Release`] says it was read.
pub(crate) struct Big {
    /// The segment (shared with the pool's slot only while not lent, or
    /// with the receiver's [`Received`]).
    shm: Arc<IpcSharedMemory>,
    /// The payload's length; the segment may be longer.
    len: usize,
    /// The pool slot and segment id it was lent from: returned on drop.
    lent: Option<(usize, u64)>,
    /// On the receiving side of a pooled result: tells the worker, on
    /// drop, that it may reuse the segment.
    _release: Option<Release>,
}

/// Tells a worker, when dropped, that the pool is done with the result of
/// task `id`, which lies in one of the worker's pooled segments.
///
/// It is sent when the payload is dropped, whenever that is, so the worker
/// never overwrites a result the pool may still read. Sending never blocks
/// for long: a worker has at most [`SLOTS`] pooled results unreleased, so at
/// most that many releases wait in its channel.
pub(crate) struct Release {
    to: ipc_channel::ipc::IpcSender<u64>,
    id: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        // A worker that is gone needs no release.
        let _ = self.to.send(self.id);
    }
}

/// One slot of a process's segment pool.
struct Slot {
    /// The segment, while it is not lent.
    segment: Option<Arc<IpcSharedMemory>>,
    /// Its id, unique in this process: a receiver holding this id in this
    /// slot holds this segment.
    id: u64,
    /// Whether a [`Big`] holds the segment now.
    lent: bool,
}

/// This process's segment pool.
static POOL: Mutex<[Slot; SLOTS]> = Mutex::new(
    [const {
        Slot {
            segment: None,
            id: 0,
            lent: false,
        }
    }; SLOTS],
);

/// The next segment id (0 is "none").
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A slot of the pool marked lent (see [`Big::lend`]).
struct Lent {
    slot: usize,
    /// Its segment, if it has one yet.
    segment: Option<Arc<IpcSharedMemory>>,
    /// That segment's id.
    id: u64,
}

impl Big {
    /// A copy of `bytes` in a pooled segment if one is free, else in a
    /// segment of its own.
    fn copy_of(bytes: &[u8]) -> Big {
        let len = bytes.len();
        let Some(mut lent) = Self::lend(len) else {
            return Big {
                shm: Self::fresh(bytes),
                len,
                lent: None,
                _release: None,
            };
        };
        // A segment too small is replaced by a new one; the old one is
        // unmapped here, outside the pool's lock (a receiver keeps its own
        // mapping until the slot's next note replaces it).
        let mut reused = lent.segment.take().filter(|m| m.len() >= len);
        let written = reused.as_mut().and_then(Arc::get_mut).map(|segment| {
            // SAFETY: `get_mut` proves this is the process's only handle on
            // the mapping, and no receiver reads the segment before a note
            // sent after this names it.
            let dst = unsafe { segment.deref_mut() };
            dst[..len].copy_from_slice(bytes);
        });
        let shm = match (reused, written) {
            (Some(shm), Some(())) => shm,
            _ => {
                lent.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                Self::fresh(bytes)
            }
        };
        Big {
            shm,
            len,
            lent: Some((lent.slot, lent.id)),
            _release: None,
        }
    }

    /// Whether it lies in a segment of this process's pool, which is
    /// reused once this is dropped.
    pub(crate) fn is_pooled(&self) -> bool {
        self.lent.is_some()
    }

    /// A new segment holding `bytes`.
    fn fresh(bytes: &[u8]) -> Arc<IpcSharedMemory> {
        Arc::new(IpcSharedMemory::from_bytes(bytes))
    }

    /// Marks a free slot lent, preferring one whose segment holds `len`
    /// bytes; `None` if every slot is lent or `len` is over [`MAX_KEPT`].
    fn lend(len: usize) -> Option<Lent> {
        if len > MAX_KEPT {
            return None;
        }
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = |s: &Slot| s.segment.as_ref().is_some_and(|m| m.len() >= len);
        let i = (pool.iter())
            .position(|s| !s.lent && fits(s))
            .or_else(|| pool.iter().position(|s| !s.lent))?;
        let slot = &mut pool[i];
        slot.lent = true;
        Some(Lent {
            slot: i,
            segment: slot.segment.take(),
            id: slot.id,
        })
    }
}

impl Drop for Big {
    fn drop(&mut self) {
        if let Some((i, id)) = self.lent {
            let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
            pool[i] = Slot {
                segment: Some(self.shm.clone()),
                id,
                lent: false,
            };
        }
    }
}

impl std::ops::Deref for Big {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.shm[..self.len]
    }
}

/// The receiving side: which of the sender's segments the receiver holds.
#[derive(Default)]
pub(crate) struct Received {
    slots: [Option<Arc<IpcSharedMemory>>; SLOTS],
}

impl Received {
    /// The payload `note` points to; keeps the segment it carries, if any,
    /// for later notes naming the same slot. With `release_to` (a worker's
    /// release channel and the task's id), a payload in a pooled segment
    /// sends its release when it is dropped.
    pub(crate) fn open(
        &mut self,
        note: Note,
        release_to: Option<(&ipc_channel::ipc::IpcSender<u64>, u64)>,
    ) -> Result<Held, BadFrame> {
        let release = release_to
            .filter(|_| note.slot.is_some())
            .map(|(to, id)| Release { to: to.clone(), id });
        let shm = match (note.slot, note.segment) {
            (None, Some(segment)) => Arc::new(segment),
            (None, None) => return Err(BadFrame("a big payload came without its segment")),
            (Some(slot), segment) => {
                let Some(kept) = self.slots.get_mut(slot as usize) else {
                    return Err(BadFrame("a big payload names an unknown segment slot"));
                };
                if let Some(segment) = segment {
                    *kept = Some(Arc::new(segment));
                }
                match kept {
                    Some(shm) => shm.clone(),
                    None => return Err(BadFrame("a big payload names a segment never sent")),
                }
            }
        };
        match usize::try_from(note.len) {
            Ok(len) if len <= shm.len() => Ok(Held::Shared(Box::new(Big {
                shm,
                len,
                lent: None,
                _release: release,
            }))),
            _ => Err(BadFrame("a big payload is longer than its segment")),
        }
    }
}

/// The sending side: which of this process's segments the receiver holds.
#[derive(Default)]
pub(crate) struct Sent {
    ids: [u64; SLOTS],
}

impl Sent {
    /// The note that tells the receiver where `big` lies, with the segment
    /// itself when the receiver does not hold it yet.
    pub(crate) fn note(&mut self, big: &Big) -> Note {
        let len = big.len as u64;
        match big.lent {
            Some((slot, id)) if self.ids[slot] == id => Note {
                slot: Some(slot as u32),
                len,
                segment: None,
            },
            Some((slot, id)) => {
                self.ids[slot] = id;
                Note {
                    slot: Some(slot as u32),
                    len,
                    segment: Some((*big.shm).clone()),
                }
            }
            None => Note {
                slot: None,
                len,
                segment: Some((*big.shm).clone()),
            },
        }
    }
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

/// A request from the pool to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Run the initializer task `name` before anything else.
    Init { name: String, payload: Vec<u8> },
    /// Run task `name` on one argument.
    Run {
        id: u64,
        name: String,
        payload: Body,
    },
    /// Run task `name` on each argument in order, stopping at a failure.
    /// The payload is the codec's encoding of the whole `Vec` of arguments.
    Chunk {
        id: u64,
        name: String,
        payload: Body,
    },
    /// Finish and exit.
    Exit,
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
    pub(crate) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
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
            Request::Run { id, name, payload } => self.run(*id, name, payload.as_ref()),
            Request::Chunk { id, name, payload } => self.chunk(*id, name, payload.as_ref()),
            Request::Exit => self.u8(EXIT),
        }
    }

    /// A `Run` record, without building a `Request`.
    pub(crate) fn run(&mut self, id: u64, name: &str, payload: BodyRef<'_>) {
        self.call(RUN, id, name, payload);
    }

    /// A `Chunk` record, without building a `Request`.
    pub(crate) fn chunk(&mut self, id: u64, name: &str, payload: BodyRef<'_>) {
        self.call(CHUNK, id, name, payload);
    }

    fn call(&mut self, tag: u8, id: u64, name: &str, payload: BodyRef<'_>) {
        self.u8(tag);
        self.u64(id);
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
                name: self.string()?,
                payload: self.body()?,
            },
            CHUNK => Request::Chunk {
                id: self.u64()?,
                name: self.string()?,
                payload: self.body()?,
            },
            EXIT => Request::Exit,
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
                name: "square".into(),
                payload: Body::Inline(vec![9]),
            },
            Request::Run {
                id: 11,
                name: "len".into(),
                payload: Body::Shared,
            },
            Request::Chunk {
                id: 8,
                name: "add".into(),
                payload: Body::Inline(vec![3, 1, 2, 3]),
            },
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

    /// A receiver is sent a pooled segment once, then only notes naming it;
    /// a segment is reused only once the payload in it is dropped.
    #[test]
    fn segments_are_sent_once_and_reused_after_drop() {
        let (mut sent, mut received) = (Sent::default(), Received::default());
        let a = Big::copy_of(&[1; BIG]);
        let b = Big::copy_of(&[2; BIG]);
        let (Some((slot_a, id_a)), Some((slot_b, _))) = (a.lent, b.lent) else {
            panic!("the pool lent no segment");
        };
        assert_ne!(slot_a, slot_b, "one segment lent twice");
        let note = sent.note(&a);
        assert!(note.segment.is_some());
        assert!(received.open(note, None).unwrap().iter().all(|&x| x == 1));
        assert!(sent.note(&a).segment.is_none());
        let note = sent.note(&b);
        assert!(received.open(note, None).unwrap().iter().all(|&x| x == 2));
        drop(a);
        // Smaller than the segment: only its own bytes are the payload.
        let c = Big::copy_of(&[3; BIG - 1]);
        if c.lent == Some((slot_a, id_a)) {
            let note = sent.note(&c);
            assert!(note.segment.is_none(), "a segment sent twice");
            let held = received.open(note, None).unwrap();
            assert_eq!(held.len(), BIG - 1);
            assert!(held.iter().all(|&x| x == 3));
        }
    }

    /// Notes that name what the receiver does not hold are errors.
    #[test]
    fn bad_notes_are_errors() {
        let mut received = Received::default();
        let note = |slot, len, segment| Note { slot, len, segment };
        assert!(received.open(note(None, 0, None), None).is_err());
        assert!(received.open(note(Some(0), 0, None), None).is_err());
        assert!(received
            .open(note(Some(SLOTS as u32), 0, None), None)
            .is_err());
        let shm = || Some(IpcSharedMemory::from_bytes(&[5; 10]));
        assert!(received.open(note(None, 11, shm()), None).is_err());
        assert!(received.open(note(Some(1), 11, shm()), None).is_err());
        assert_eq!(
            &*received.open(note(Some(1), 4, None), None).unwrap(),
            &[5; 4]
        );
        assert_eq!(
            &*received.open(note(None, 10, shm()), None).unwrap(),
            &[5; 10]
        );
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
