//! A task of a process pool as the pool holds it: its name, its encoded
//! argument, and its future, whose result type is erased here so that the
//! scheduler and the transport handle every task alike.
//!
//! A task is made on the submitting thread ([`single`], [`chunk_of`]),
//! where its argument is encoded; its handles ([`RemoteTask`], cloned) are
//! held by the scheduler, which decides its fate, and by the link that
//! writes it to a worker. It ends exactly once, by [`RemoteTask::finish`]
//! with the worker's answer, by [`RemoteTask::fail`], or by its owner's
//! cancel before it was sent.
//!
//! # One block per queued task
//!
//! A program may queue a million tasks, so a task's memory is laid out
//! with care. Its future's state and what the pool keeps of it (the
//! [`Record`]: its registry entry, and a small argument inline) are one
//! block (`Shared<T, Remote<T, Typed<D>>>`, see `future/state.rs`), shared
//! by the `Future` and the pool's handles:
//!
//! ```text
//!   Future<T> ──────────┐      ┌──────────── RemoteTask (scheduler queue,
//!                       ▼      ▼                          link, claims)
//!   ┌──────────────────────────────────────────────┐
//!   │ head (count, phase, pool, side)         24 B │
//!   │ outcome cell (u64 result)               16 B │
//!   │ task id                                  8 B │
//!   │ entry (Arc<Entry>) + inline argument    24 B │
//!   └──────────────────────────────────────────────┘  72 B, 80 with malloc's header
//!                                  RemoteTask.out ──▶ Outline (argument too big
//!                                                     to be inline: bytes or a
//!                                                     segment, Shared handles)
//! ```
//!
//! An argument too big to be inline is held by the pool's handles, not by
//! the block, so it is freed (and its shared-memory segment reused) once
//! the pool is done with the task, even while the program keeps the
//! future. A queued task with a small argument and a `u64` result costs
//! 80 + 24 (the queue's handle) + 16 (the `Future`) = 120 bytes, measured
//! by the benchmarks' Q13 row.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frames::{Body, BodyRef, ClaimRef, Outcome, Writer};
use super::payload::{Big, Held, BIG};
use super::scheduler::{Handle, TaskId};
use crate::future::{Remote, Shared};
use crate::map::Chunk;
use crate::recycle::Counted;
use crate::registry::Entry;
use crate::{codec, Error};

/// What a task carries to its worker, as its argument is encoded.
pub(crate) enum Payload {
    /// One argument of up to [`SMALL`] bytes: kept inline in the task's
    /// block, no allocation of its own.
    Small(Inline),
    /// Anything bigger, out of line.
    Out(Outline),
}

/// A small argument, inline.
#[derive(Clone, Copy)]
pub(crate) struct Inline {
    len: u8,
    bytes: [u8; SMALL],
}

impl Inline {
    const EMPTY: Inline = Inline {
        len: 0,
        bytes: [0; SMALL],
    };

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A payload that is not [`Payload::Small`]: held by the pool's handles
/// ([`RemoteTask`]), not by the task's block, so that it is freed as soon
/// as the pool is done with the task, even while the program keeps the
/// task's future.
pub(crate) struct Outline {
    held: Held,
    /// True for a chunk of a map: the encoded `Vec` of its arguments.
    chunk: bool,
    /// The [`Shared`](crate::Shared) handles its encoding names: kept here
    /// until the task is dropped, so that the pool still holds them when
    /// their segments are handed to the worker.
    shares: Vec<crate::Shared>,
}

impl Payload {
    /// `bytes` inline, if they fit.
    #[cfg(feature = "mpi")]
    fn small(bytes: &[u8]) -> Option<Payload> {
        let mut inline = Inline::EMPTY;
        inline.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        inline.len = bytes.len() as u8;
        Some(Payload::Small(inline))
    }

    /// `held`, a chunk's if `chunk`.
    fn out(held: Held, chunk: bool) -> Payload {
        Payload::Out(Outline {
            held,
            chunk,
            shares: Vec::new(),
        })
    }

    /// `self` with the handles its encoding named, if any.
    fn attach(self, shares: Vec<crate::Shared>) -> Payload {
        if shares.is_empty() {
            return self;
        }
        let mut out = match self {
            Payload::Out(out) => out,
            // The handles go with the bytes that name them: out of line.
            Payload::Small(inline) => Outline {
                held: Held::Bytes(inline.as_slice().to_vec()),
                chunk: false,
                shares: Vec::new(),
            },
        };
        out.shares = shares;
        Payload::Out(out)
    }
}

/// The most bytes of an argument kept inline in its task (a `u64` takes at
/// most 10).
pub(crate) const SMALL: usize = 15;

/// A worker's answer to one task or one chunk.
pub(crate) enum Answer {
    /// The encoded result, or how the task failed.
    One(Result<Held, Outcome>),
    /// The encoded results of the items that succeeded, then the failure.
    Chunk {
        results: Held,
        failure: Option<Outcome>,
    },
}

/// A task's answer as bytes, not decoded: what a rank of the MPI back end
/// sends back to the pool that handed it the task, where it is decoded.
#[cfg(feature = "mpi")]
#[derive(Debug)]
pub(crate) enum Raw {
    /// A single task's encoded result.
    One(Vec<u8>),
    /// A chunk's encoded results (those of the items that succeeded), then
    /// its failure.
    Chunk {
        results: Vec<u8>,
        failure: Option<Error>,
    },
}

/// What a process pool keeps of a task beside its future's state, in the
/// same block (see [`Remote`]).
pub(crate) struct Record {
    /// The registered task: its name is what crosses. (A thin pointer:
    /// every queued task holds one.)
    entry: Arc<Entry>,
    /// A small argument; empty if the argument is out of line.
    inline: Inline,
    /// Its span, from the submit to its end (see `crate::trace`).
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

/// A [`Record`] and how an answer becomes the task's result. `D` is the
/// type of a function item (one of [`one_result`], [`chunk_result`],
/// [`one_as_chunk`], `raw_result`), so it takes no room.
struct Typed<D> {
    record: Record,
    decode: D,
}

/// A process task's state, seen by its pool: the future's side with its
/// result type erased, and the [`Record`].
pub(crate) trait Completion: Send + Sync {
    fn record(&self) -> &Record;
    fn id(&self) -> TaskId;
    fn claim(&self) -> bool;
    fn cancel(&self) -> bool;
    fn fail(&self, err: Error);
    /// Ends the task with the worker's answer: true if that is an error.
    /// `ending` is told so just before the result is published.
    fn finish(&self, answer: Answer, ending: &dyn Fn(bool)) -> bool;
}

impl<T, D> Completion for Shared<T, Remote<T, Typed<D>>>
where
    T: Send + 'static,
    D: Fn(Answer, &str) -> Result<T, Error> + Send + Sync + 'static,
{
    fn record(&self) -> &Record {
        &self.extra().record
    }
    fn id(&self) -> TaskId {
        Shared::id(self)
    }
    fn claim(&self) -> bool {
        self.claim_remote()
    }
    fn cancel(&self) -> bool {
        self.cancel_with(Error::Cancelled)
    }
    fn fail(&self, err: Error) {
        // A task never sent is still pending; one sent is running.
        if !self.cancel_with(err.clone()) {
            self.complete(Err(err));
        }
    }
    fn finish(&self, answer: Answer, ending: &dyn Fn(bool)) -> bool {
        let name = &self.record().entry.name;
        // A result's `Deserialize` is user code: a panic in it fails this
        // task alone, not the reader thread.
        let decode = &self.extra().decode;
        let result = match catch_unwind(AssertUnwindSafe(|| decode(answer, name))) {
            Ok(result) => result,
            Err(p) => {
                let detail = format!(
                    "its Deserialize panicked: {}",
                    crate::error::panic_message(&*p)
                );
                crate::error::drop_panic_payload(p);
                Err(Error::Decode {
                    what: format!("the result of task {name:?}"),
                    detail,
                })
            }
        };
        let failed = result.is_err();
        ending(failed);
        self.complete(result);
        failed
    }
}

/// A task of a process pool, as its scheduler and links hold it: a handle
/// to the one block that holds the task's future state and its [`Record`]
/// (`Shared<T, Remote<T, Typed<D>>>`, its result type erased), and the
/// argument if it is not small. A queued task with a small argument costs
/// that block (80 bytes with malloc's header, for a `u64` result), the
/// scheduler's queue entry (this handle, 24 bytes) and the `Future` its
/// program holds (16).
#[derive(Clone)]
pub(crate) struct RemoteTask {
    state: Counted<dyn Completion>,
    out: Option<Arc<Outline>>,
}

impl RemoteTask {
    /// A new task of pool `pool` on `entry` with `payload`: the future's
    /// state and the pool's handle to it.
    fn new<T, D>(
        pool: u64,
        entry: Arc<Entry>,
        payload: Payload,
        decode: D,
    ) -> (Counted<Shared<T>>, RemoteTask)
    where
        T: Send + 'static,
        D: Fn(Answer, &str) -> Result<T, Error> + Send + Sync + 'static,
    {
        #[cfg(feature = "tracing")]
        let span = crate::trace::task_span("processes", Some(&entry.name));
        let (inline, out) = match payload {
            Payload::Small(inline) => (inline, None),
            Payload::Out(out) => (Inline::EMPTY, Some(Arc::new(out))),
        };
        let record = Record {
            entry,
            inline,
            #[cfg(feature = "tracing")]
            span,
        };
        let (shared, pools) = Shared::remote(pool, Typed { record, decode });
        #[cfg(feature = "tracing")]
        crate::trace::record_id(&pools.extra().record.span, || shared.id());
        let ptr = Counted::into_raw(pools);
        let ptr: NonNull<dyn Completion> = ptr;
        // SAFETY: `ptr` is the pool's handle from `Shared::remote`, made
        // into a raw pointer and coerced to the trait; the value starts
        // with its count either way.
        let state = unsafe { Counted::from_raw(ptr) };
        (shared, RemoteTask { state, out })
    }

    /// A single task of pool `pool`.
    pub(crate) fn one<R: DeserializeOwned + Send + 'static>(
        pool: u64,
        entry: Arc<Entry>,
        payload: Payload,
    ) -> (Counted<Shared<R>>, RemoteTask) {
        RemoteTask::new(pool, entry, payload, one_result::<R>)
    }

    /// A chunk of a map.
    pub(crate) fn chunk<R: DeserializeOwned + Send + 'static>(
        pool: u64,
        entry: Arc<Entry>,
        items: Payload,
    ) -> (Counted<Shared<Chunk<R>>>, RemoteTask) {
        RemoteTask::new(pool, entry, items, chunk_result::<R>)
    }

    /// A chunk of a map that holds one item: sent as a single task (its
    /// argument encoded by [`encode_arg`], so big bytes are moved, not
    /// encoded byte by byte), its answer made a chunk of one.
    pub(crate) fn chunk_of_one<R: DeserializeOwned + Send + 'static>(
        pool: u64,
        entry: Arc<Entry>,
        payload: Payload,
    ) -> (Counted<Shared<Chunk<R>>>, RemoteTask) {
        RemoteTask::new(pool, entry, payload, one_as_chunk::<R>)
    }

    /// A task whose answer is kept as bytes (see [`Raw`]): a rank of the
    /// MPI back end runs other machines' tasks with it.
    #[cfg(feature = "mpi")]
    pub(crate) fn raw(
        pool: u64,
        entry: Arc<Entry>,
        payload: Payload,
    ) -> (Counted<Shared<Raw>>, RemoteTask) {
        RemoteTask::new(pool, entry, payload, raw_result)
    }

    fn record(&self) -> &Record {
        self.state.record()
    }

    /// The task's id, unique in this process.
    pub(crate) fn id(&self) -> TaskId {
        self.state.id()
    }

    /// The body as a frame carries it, and whether it is a chunk's.
    fn body(&self) -> (BodyRef<'_>, bool) {
        match &self.out {
            Some(out) => (BodyRef::of(&out.held), out.chunk),
            None => (BodyRef::Inline(self.record().inline.as_slice()), false),
        }
    }

    /// Ends the task with `err`, sent or not.
    pub(crate) fn fail(&self, err: Error) {
        #[cfg(feature = "tracing")]
        crate::trace::ended(&self.record().span, true);
        self.state.fail(err);
    }

    /// Ends the task with the worker's answer: true if that is an error.
    pub(crate) fn finish(&self, answer: Answer) -> bool {
        self.finish_counted(answer, &|_| {})
    }

    /// [`finish`](Self::finish), telling `count` whether the task failed
    /// before anyone can see its result (so that a count read after the
    /// result includes it).
    pub(crate) fn finish_counted(&self, answer: Answer, count: &dyn Fn(bool)) -> bool {
        // Its span hears of the end before anyone can see the result.
        let ending = |failed: bool| {
            #[cfg(feature = "tracing")]
            crate::trace::ended(&self.record().span, failed);
            count(failed);
        };
        self.state.finish(answer, &ending)
    }

    /// Ends the task with an answer that another machine decoded nothing
    /// of: true if that is an error.
    #[cfg(feature = "mpi")]
    pub(crate) fn finish_raw(&self, raw: Raw, count: &dyn Fn(bool)) -> bool {
        let answer = match raw {
            Raw::One(bytes) => Answer::One(Ok(Held::Bytes(bytes))),
            Raw::Chunk { results, failure } => Answer::Chunk {
                results: Held::Bytes(results),
                failure: failure.map(Outcome::from_error),
            },
        };
        self.finish_counted(answer, count)
    }

    /// Its registered name.
    #[cfg(feature = "mpi")]
    pub(crate) fn name(&self) -> &str {
        &self.record().entry.name
    }

    /// The encoded argument (a chunk's: the sequence of its arguments), and
    /// whether it is a chunk's. An MPI task's payload is never in a
    /// segment ([`Reach::Remote`]).
    #[cfg(feature = "mpi")]
    pub(crate) fn arg(&self) -> (&[u8], bool) {
        match &self.out {
            Some(out) => (&out.held, out.chunk),
            None => (self.record().inline.as_slice(), false),
        }
    }

    /// Appends its record, with its claim, to a frame.
    pub(crate) fn write(&self, w: &mut Writer, claim: ClaimRef) {
        let name = &self.record().entry.name;
        match self.body() {
            (body, false) => w.run(self.id(), claim, name, body),
            (body, true) => w.chunk(self.id(), claim, name, body),
        }
    }

    /// About how many bytes its record takes in a frame.
    pub(crate) fn frame_bytes(&self) -> usize {
        let body = match self.body().0 {
            BodyRef::Inline(b) => b.len(),
            BodyRef::Shared => 0,
        };
        32 + self.record().entry.name.len() + body
    }

    /// Its payload's shared-memory segment, if it has one.
    pub(crate) fn segment(&self) -> Option<&Big> {
        self.out.as_ref()?.held.segment()
    }

    /// The shared handles its argument names.
    pub(crate) fn shares(&self) -> &[crate::Shared] {
        self.out.as_ref().map_or(&[], |out| &out.shares)
    }
}

impl Handle for RemoteTask {
    fn id(&self) -> TaskId {
        self.state.id()
    }
    fn claim(&self) -> bool {
        self.state.claim()
    }
    fn cancel(&self) -> bool {
        self.state.cancel()
    }
}

/// Where a task's argument goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// To worker processes of this machine: big bytes go into a
    /// shared-memory segment, and the [`Shared`](crate::Shared) handles the
    /// argument names are kept with it.
    Local,
    /// To other machines (the MPI back end): plain bytes, and an argument
    /// that names a `Shared` handle is refused, as its segment exists on
    /// this machine only.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    Remote,
}

/// A task's future state, and the task to queue (none if it has ended
/// already).
pub(crate) type Made<T> = (Counted<Shared<T>>, Option<RemoteTask>);

/// The future of a task just made, once `queue` has taken the task (if
/// there is one: a task whose types did not match has ended already). An
/// `Err` from `queue` drops the task, which then never runs, and the
/// future with it.
pub(crate) fn queued<T: Send + 'static>(
    (shared, task): Made<T>,
    queue: impl FnOnce(RemoteTask) -> Result<(), Error>,
) -> Result<crate::Future<T>, Error> {
    let future = crate::Future::new(shared);
    if let Some(task) = task {
        queue(task)?;
    }
    Ok(future)
}

/// The task of a submit of `entry` on `arg` to pool `pool`: its future's
/// state, and the task to queue. No task if `A` and `R` are not the
/// entry's types: the future has ended with that error then. An argument
/// that cannot be encoded is an error, and nothing is made.
pub(crate) fn single<A, R>(
    pool: u64,
    entry: &Arc<Entry>,
    arg: A,
    reach: Reach,
) -> Result<Made<R>, Error>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    if let Some(ended) = mismatch::<A, R, R>(pool, entry) {
        return Ok((ended, None));
    }
    let payload = encode_arg(entry, arg, reach)?;
    let (shared, task) = RemoteTask::one(pool, entry.clone(), payload);
    Ok((shared, Some(task)))
}

/// The task of a chunk of a map of `entry` over `items` (a single item
/// goes as a single task: see [`RemoteTask::chunk_of_one`]), as for
/// [`single`].
pub(crate) fn chunk_of<A, R>(
    pool: u64,
    entry: &Arc<Entry>,
    mut items: Vec<A>,
    reach: Reach,
) -> Result<Made<Chunk<R>>, Error>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    if let Some(ended) = mismatch::<A, R, Chunk<R>>(pool, entry) {
        return Ok((ended, None));
    }
    let (shared, task) = match (items.pop(), items.is_empty()) {
        (Some(one), true) => {
            let payload = encode_arg(entry, one, reach)?;
            RemoteTask::chunk_of_one(pool, entry.clone(), payload)
        }
        (last, _) => {
            items.extend(last);
            let payload = encode_chunk(entry, &items, reach)?;
            RemoteTask::chunk(pool, entry.clone(), payload)
        }
    };
    Ok((shared, Some(task)))
}

/// If `A` and `R` are not `entry`'s types: a future state (of result type
/// `T`) already ended with the error that says so.
fn mismatch<A: 'static, R: 'static, T: Send + 'static>(
    pool: u64,
    entry: &Entry,
) -> Option<Counted<Shared<T>>> {
    if entry.matches::<A, R>() {
        return None;
    }
    let (shared, _) = Shared::<T>::remote(pool, ());
    shared.complete(Err(entry.type_mismatch::<A, R>()));
    Some(shared)
}

/// Encodes a task's argument: inline when it is small, into a shared-memory
/// segment when it is big and stays on this machine. A `Vec<u8>` or
/// `String` is its own encoding: it is moved, not copied (a big one is
/// copied once, into the segment).
fn encode_arg<A: Serialize + 'static>(
    entry: &Entry,
    arg: A,
    reach: Reach,
) -> Result<Payload, Error> {
    let big = match reach {
        Reach::Local => BIG,
        Reach::Remote => usize::MAX,
    };
    let (payload, shares) = crate::shared::collect(|| encode_held(entry, arg, big));
    with_shares(payload?, shares, reach, || {
        format!("the argument of task {:?}", entry.name)
    })
}

/// Encodes `arg`; bytes from `big` up go into a shared-memory segment.
fn encode_held<A: Serialize + 'static>(
    entry: &Entry,
    arg: A,
    big: usize,
) -> Result<Payload, Error> {
    let what = || format!("the argument of task {:?}", entry.name);
    let bytes = match codec::into_raw_bytes(arg) {
        Ok(bytes) => bytes,
        Err(arg) => {
            let mut small = [0u8; SMALL];
            match codec::encode_into(&arg, &mut small) {
                Some(n) => {
                    return Ok(Payload::Small(Inline {
                        len: n as u8,
                        bytes: small,
                    }))
                }
                None => codec::encode(&arg, what)?,
            }
        }
    };
    let held = if bytes.len() >= big {
        Held::big(&bytes)
    } else {
        Ok(Held::Bytes(bytes))
    };
    held.map(|held| Payload::out(held, false))
        .map_err(|detail| Error::Encode {
            what: what(),
            detail,
        })
}

/// Encodes the arguments of a chunk as one sequence, as [`encode_arg`]
/// does one.
fn encode_chunk<A: Serialize + 'static>(
    entry: &Entry,
    items: &[A],
    reach: Reach,
) -> Result<Payload, Error> {
    let what = || format!("the arguments of task {:?}", entry.name);
    let (bytes, shares) = crate::shared::collect(|| codec::encode_seq(items, what));
    let bytes = bytes?;
    let held = match reach {
        Reach::Local => Held::new(bytes).map_err(|detail| Error::Encode {
            what: what(),
            detail,
        })?,
        Reach::Remote => Held::Bytes(bytes),
    };
    with_shares(Payload::out(held, true), shares, reach, what)
}

/// `payload` with the [`Shared`](crate::Shared) handles its encoding named
/// (`what` it encodes, for the error): kept for this machine, refused for
/// another.
fn with_shares(
    payload: Payload,
    shares: Vec<crate::Shared>,
    reach: Reach,
    what: impl Fn() -> String,
) -> Result<Payload, Error> {
    if reach == Reach::Remote && !shares.is_empty() {
        return Err(Error::Unsupported {
            reason: format!(
                "{} holds a twinpool::Shared, whose bytes lie in shared memory on this \
                 machine and cannot reach other machines; pass the bytes themselves",
                what()
            ),
        });
    }
    Ok(payload.attach(shares))
}

/// A payload of bytes encoded elsewhere (by the pool of another machine):
/// a chunk's if `chunk`. Big bytes go into a shared-memory segment for the
/// local worker.
#[cfg(feature = "mpi")]
pub(crate) fn payload_of(bytes: Vec<u8>, chunk: bool, name: &str) -> Result<Payload, Error> {
    if !chunk {
        if let Some(small) = Payload::small(&bytes) {
            return Ok(small);
        }
    }
    let held = Held::new(bytes).map_err(|detail| Error::Encode {
        what: format!("the argument of task {name:?}"),
        detail,
    })?;
    Ok(Payload::out(held, chunk))
}

fn not_the_answer(name: &str) -> Error {
    Error::Decode {
        what: format!("the result of task {name:?}"),
        detail: "the worker answered a single task with a chunk, or the reverse".into(),
    }
}

/// The result an outcome stands for.
fn decode_outcome<R: DeserializeOwned + 'static>(outcome: Outcome, name: &str) -> Result<R, Error> {
    match outcome {
        Outcome::Ok(Body::Inline(bytes)) => {
            codec::decode(&bytes, || format!("the result of task {name:?}"))
        }
        Outcome::Ok(Body::Shared) => Err(not_the_answer(name)),
        Outcome::Panicked(message) => Err(Error::Panicked { message }),
        Outcome::Failed {
            decode: true,
            what,
            detail,
        } => Err(Error::Decode { what, detail }),
        Outcome::Failed { what, detail, .. } => Err(Error::Encode { what, detail }),
    }
}

/// The error a failed outcome stands for.
#[cfg(feature = "mpi")]
fn outcome_error(outcome: Outcome, name: &str) -> Error {
    match decode_outcome::<serde::de::IgnoredAny>(outcome, name) {
        Err(e) => e,
        Ok(_) => not_the_answer(name),
    }
}

/// Bytes out of their holder (copied out of a segment).
#[cfg(feature = "mpi")]
fn into_vec(held: Held) -> Vec<u8> {
    match held {
        Held::Bytes(bytes) => bytes,
        Held::Shared(big) => big.to_vec(),
    }
}

/// An answer as bytes, undecoded.
#[cfg(feature = "mpi")]
fn raw_result(answer: Answer, name: &str) -> Result<Raw, Error> {
    match answer {
        Answer::One(Ok(held)) => Ok(Raw::One(into_vec(held))),
        Answer::One(Err(outcome)) => Err(outcome_error(outcome, name)),
        Answer::Chunk { results, failure } => Ok(Raw::Chunk {
            results: into_vec(results),
            failure: failure.map(|f| outcome_error(f, name)),
        }),
    }
}

/// The result of a single task.
fn one_result<R: DeserializeOwned + 'static>(answer: Answer, name: &str) -> Result<R, Error> {
    match answer {
        Answer::One(Ok(bytes)) => codec::decode(&bytes, || format!("the result of task {name:?}")),
        Answer::One(Err(o)) => decode_outcome(o, name),
        Answer::Chunk { .. } => Err(not_the_answer(name)),
    }
}

/// The result of a single task, as a chunk of one.
fn one_as_chunk<R: DeserializeOwned + 'static>(
    answer: Answer,
    name: &str,
) -> Result<Chunk<R>, Error> {
    match answer {
        Answer::One(_) => Ok(std::iter::once(one_result::<R>(answer, name)).collect()),
        Answer::Chunk { .. } => Err(not_the_answer(name)),
    }
}

/// The results of a chunk: those of the items that succeeded, then the
/// first failure.
fn chunk_result<R: DeserializeOwned + 'static>(
    answer: Answer,
    name: &str,
) -> Result<Chunk<R>, Error> {
    let Answer::Chunk { results, failure } = answer else {
        return Err(not_the_answer(name));
    };
    // Item by item: a result that fails to decode ends its own item, and
    // the items before it keep theirs.
    let what = || format!("the results of task {name:?}");
    let (values, broken) = codec::decode_seq_items::<R>(&results, what);
    let mut chunk: Chunk<R> = values.into_iter().map(Ok).collect();
    match broken {
        Some(e) => chunk.push(Err(e)),
        None => chunk.extend(failure.map(|f| decode_outcome::<R>(f, name))),
    }
    Ok(chunk)
}

#[cfg(all(test, not(feature = "tracing")))]
mod tests {
    use super::*;

    fn state_size<T: Send, D: Send + Sync>(_decode: D) -> usize {
        std::mem::size_of::<Shared<T, Remote<T, Typed<D>>>>()
    }

    /// A queued process task with a small argument and a `u64` result is
    /// one block of at most 72 bytes (80 with malloc's header): the parent
    /// holds a million queued tasks in about 120 MB, their futures and
    /// queue entries included.
    #[test]
    fn a_queued_small_task_is_one_block_of_72_bytes() {
        assert!(state_size::<u64, _>(one_result::<u64>) <= 72);
        // The pool's handle is a pointer, a vtable and the out-of-line
        // argument; the future is a pointer and a vtable.
        assert_eq!(std::mem::size_of::<RemoteTask>(), 24);
    }
}
