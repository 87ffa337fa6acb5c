//! A task of a process pool as the pool holds it: its name, its encoded
//! argument, and its future, whose result type is erased here so that the
//! scheduler and the transport handle every task alike.
//!
//! A task is made on the submitting thread ([`RemoteTask::one`],
//! [`RemoteTask::chunk`]), where its argument is encoded; it is shared
//! (`Arc`) by the scheduler, which decides its fate, and by the link that
//! writes it to a worker. It ends exactly once, by [`RemoteTask::finish`]
//! with the worker's answer, by [`RemoteTask::fail`], or by its owner's
//! cancel before it was sent.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frames::{Body, BodyRef, ClaimRef, Outcome, Writer};
use super::payload::{Big, Held, BIG};
use super::scheduler::{Handle, TaskId};
use crate::future::Shared;
use crate::map::Chunk;
use crate::recycle::Counted;
use crate::registry::Entry;
use crate::{codec, Error};

/// What a task carries to its worker.
pub(crate) enum Payload {
    /// One argument.
    One(Held),
    /// One argument of up to [`SMALL`] bytes, kept inline: a queued task
    /// with a small argument (most of them) needs no second allocation.
    Small([u8; SMALL], u8),
    /// A chunk of a map: the encoded `Vec` of its arguments.
    Chunk(Held),
    /// A payload whose encoding names [`Shared`](crate::Shared) handles:
    /// they are kept here until the task is dropped, so that the pool still
    /// holds them when their segments are handed to the worker.
    Attached(Box<Attached>),
}

/// A payload with the shared handles it names.
pub(crate) struct Attached {
    payload: Payload,
    shares: Vec<crate::Shared>,
}

impl Payload {
    /// `self` with the handles its encoding named, if any.
    fn attach(self, shares: Vec<crate::Shared>) -> Payload {
        if shares.is_empty() {
            self
        } else {
            Payload::Attached(Box::new(Attached {
                payload: self,
                shares,
            }))
        }
    }

    /// Without the handles.
    fn bare(&self) -> &Payload {
        match self {
            Payload::Attached(a) => &a.payload,
            p => p,
        }
    }
}

/// The most bytes of an argument kept inline in its task.
pub(crate) const SMALL: usize = 23;

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

/// The future's side of a task, with its result type erased.
pub(crate) trait Completion: Send + Sync {
    fn id(&self) -> TaskId;
    fn claim(&self) -> bool;
    fn cancel(&self) -> bool;
    fn fail(&self, err: Error);
    /// Ends the task with the worker's answer: true if that is an error.
    /// `ending` is told so just before the result is published.
    fn finish(&self, answer: Answer, name: &str, ending: &dyn Fn(bool)) -> bool;
}

/// A future's state and how an answer becomes its result. `D` is the type
/// of a function item (one of [`one_result`], [`chunk_result`],
/// [`one_as_chunk`]), so it takes no room: a queued task is smaller by a
/// pointer.
struct Typed<T, D> {
    shared: Counted<Shared<T>>,
    decode: D,
}

impl<T, D> Completion for Typed<T, D>
where
    T: Send + 'static,
    D: Fn(Answer, &str) -> Result<T, Error> + Send + Sync,
{
    fn id(&self) -> TaskId {
        self.shared.id()
    }
    fn claim(&self) -> bool {
        self.shared.claim_remote()
    }
    fn cancel(&self) -> bool {
        self.shared.cancel_with(Error::Cancelled)
    }
    fn fail(&self, err: Error) {
        // A task never sent is still pending; one sent is running.
        if !self.shared.cancel_with(err.clone()) {
            self.shared.complete(Err(err));
        }
    }
    fn finish(&self, answer: Answer, name: &str, ending: &dyn Fn(bool)) -> bool {
        // A result's `Deserialize` is user code: a panic in it fails this
        // task alone, not the reader thread.
        let result = match catch_unwind(AssertUnwindSafe(|| (self.decode)(answer, name))) {
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
        self.shared.complete(result);
        failed
    }
}

/// A task of a process pool; see the module doc. Its future's side is its
/// last field, so that one allocation holds it all (`Arc<RemoteTask>` is
/// `Arc<RemoteTask<dyn Completion>>`).
pub(crate) struct RemoteTask<C: ?Sized = dyn Completion> {
    /// The registered task: its name is what crosses. (A thin pointer:
    /// every queued task holds one.)
    entry: Arc<Entry>,
    payload: Payload,
    /// Its span, from the submit to its end (see `crate::trace`).
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    job: C,
}

impl RemoteTask {
    /// A single task whose future is `shared`.
    pub(crate) fn one<R: DeserializeOwned + Send + 'static>(
        shared: Counted<Shared<R>>,
        entry: Arc<Entry>,
        payload: Payload,
    ) -> Arc<RemoteTask> {
        RemoteTask::new(shared, entry, payload, one_result::<R>)
    }

    /// A chunk of a map whose future is `shared`.
    pub(crate) fn chunk<R: DeserializeOwned + Send + 'static>(
        shared: Counted<Shared<Chunk<R>>>,
        entry: Arc<Entry>,
        items: Payload,
    ) -> Arc<RemoteTask> {
        RemoteTask::new(shared, entry, items, chunk_result::<R>)
    }

    /// A chunk of a map that holds one item: sent as a single task (its
    /// argument encoded by [`encode_arg`], so big bytes are moved, not
    /// encoded byte by byte), its answer made a chunk of one.
    pub(crate) fn chunk_of_one<R: DeserializeOwned + Send + 'static>(
        shared: Counted<Shared<Chunk<R>>>,
        entry: Arc<Entry>,
        payload: Payload,
    ) -> Arc<RemoteTask> {
        RemoteTask::new(shared, entry, payload, one_as_chunk::<R>)
    }

    /// A task whose answer is kept as bytes (see [`Raw`]): a rank of the
    /// MPI back end runs other machines' tasks with it.
    #[cfg(feature = "mpi")]
    pub(crate) fn raw(
        shared: Counted<Shared<Raw>>,
        entry: Arc<Entry>,
        payload: Payload,
    ) -> Arc<RemoteTask> {
        RemoteTask::new(shared, entry, payload, raw_result)
    }

    fn new<T, D>(
        shared: Counted<Shared<T>>,
        entry: Arc<Entry>,
        payload: Payload,
        decode: D,
    ) -> Arc<RemoteTask>
    where
        T: Send + 'static,
        D: Fn(Answer, &str) -> Result<T, Error> + Send + Sync + 'static,
    {
        #[cfg(feature = "tracing")]
        let span = crate::trace::task_span("processes", Some(&entry.name));
        #[cfg(feature = "tracing")]
        crate::trace::record_id(&span, || shared.id());
        Arc::new(RemoteTask {
            entry,
            payload,
            #[cfg(feature = "tracing")]
            span,
            job: Typed { shared, decode },
        })
    }

    /// Ends the task with `err`, sent or not.
    pub(crate) fn fail(&self, err: Error) {
        #[cfg(feature = "tracing")]
        crate::trace::ended(&self.span, true);
        self.job.fail(err);
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
            crate::trace::ended(&self.span, failed);
            count(failed);
        };
        self.job.finish(answer, &self.entry.name, &ending)
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
        &self.entry.name
    }

    /// The encoded argument (a chunk's: the sequence of its arguments), and
    /// whether it is a chunk's.
    #[cfg(feature = "mpi")]
    pub(crate) fn arg(&self) -> (&[u8], bool) {
        match self.payload.bare() {
            Payload::One(p) => (p, false),
            Payload::Small(b, n) => (&b[..usize::from(*n)], false),
            Payload::Chunk(p) => (p, true),
            Payload::Attached(_) => {
                unreachable_attached();
                (&[], false)
            }
        }
    }

    /// Appends its record, with its claim, to a frame.
    pub(crate) fn write(&self, w: &mut Writer, claim: ClaimRef) {
        match self.payload.bare() {
            Payload::One(p) => w.run(self.job.id(), claim, &self.entry.name, BodyRef::of(p)),
            Payload::Small(b, n) => {
                let bytes = &b[..usize::from(*n)];
                w.run(
                    self.job.id(),
                    claim,
                    &self.entry.name,
                    BodyRef::Inline(bytes),
                );
            }
            Payload::Chunk(p) => w.chunk(self.job.id(), claim, &self.entry.name, BodyRef::of(p)),
            Payload::Attached(_) => unreachable_attached(),
        }
    }

    /// About how many bytes its record takes in a frame.
    pub(crate) fn frame_bytes(&self) -> usize {
        let body = match self.payload.bare() {
            Payload::One(Held::Bytes(b)) | Payload::Chunk(Held::Bytes(b)) => b.len(),
            Payload::Small(_, n) => usize::from(*n),
            Payload::One(Held::Shared(_)) | Payload::Chunk(Held::Shared(_)) => 0,
            Payload::Attached(_) => 0,
        };
        32 + self.entry.name.len() + body
    }

    /// Its payload's shared-memory segment, if it has one.
    pub(crate) fn segment(&self) -> Option<&Big> {
        match self.payload.bare() {
            Payload::One(p) | Payload::Chunk(p) => p.segment(),
            Payload::Small(..) | Payload::Attached(_) => None,
        }
    }

    /// The shared handles its argument names.
    pub(crate) fn shares(&self) -> &[crate::Shared] {
        match &self.payload {
            Payload::Attached(a) => &a.shares,
            _ => &[],
        }
    }
}

impl Handle for Arc<RemoteTask> {
    fn id(&self) -> TaskId {
        self.job.id()
    }
    fn claim(&self) -> bool {
        self.job.claim()
    }
    fn cancel(&self) -> bool {
        self.job.cancel()
    }
}

/// `attach` never nests, so a bare payload is never `Attached`.
fn unreachable_attached() {
    debug_assert!(false, "a payload attached twice");
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

/// The task of a submit of `entry` on `arg`, whose future is `shared`;
/// `None` if `A` and `R` are not the entry's types, and then the future has
/// ended with that error.
pub(crate) fn single<A, R>(
    shared: Counted<Shared<R>>,
    entry: &Arc<Entry>,
    arg: A,
    reach: Reach,
) -> Result<Option<Arc<RemoteTask>>, Error>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    if !types_match::<A, R, _>(&shared, entry) {
        return Ok(None);
    }
    let payload = encode_arg(entry, arg, reach)?;
    Ok(Some(RemoteTask::one(shared, entry.clone(), payload)))
}

/// The task of a chunk of a map of `entry` over `items` (a single item
/// goes as a single task: see [`RemoteTask::chunk_of_one`]); `None` as
/// for [`single`].
pub(crate) fn chunk_of<A, R>(
    shared: Counted<Shared<Chunk<R>>>,
    entry: &Arc<Entry>,
    mut items: Vec<A>,
    reach: Reach,
) -> Result<Option<Arc<RemoteTask>>, Error>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    if !types_match::<A, R, _>(&shared, entry) {
        return Ok(None);
    }
    Ok(Some(match (items.pop(), items.is_empty()) {
        (Some(one), true) => {
            let payload = encode_arg(entry, one, reach)?;
            RemoteTask::chunk_of_one(shared, entry.clone(), payload)
        }
        (last, _) => {
            items.extend(last);
            let payload = encode_chunk(entry, &items, reach)?;
            RemoteTask::chunk(shared, entry.clone(), payload)
        }
    }))
}

/// True if `A` and `R` are `entry`'s types; else ends the future `shared`
/// with the error that says so.
fn types_match<A: 'static, R: 'static, T: Send + 'static>(
    shared: &Counted<Shared<T>>,
    entry: &Entry,
) -> bool {
    if entry.matches::<A, R>() {
        return true;
    }
    shared.complete(Err(entry.type_mismatch::<A, R>()));
    false
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
                Some(n) => return Ok(Payload::Small(small, n as u8)),
                None => codec::encode(&arg, what)?,
            }
        }
    };
    let held = if bytes.len() >= big {
        Held::big(&bytes)
    } else {
        Ok(Held::Bytes(bytes))
    };
    held.map(Payload::One).map_err(|detail| Error::Encode {
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
    with_shares(Payload::Chunk(held), shares, reach, what)
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
    if !chunk && bytes.len() <= SMALL {
        let mut small = [0u8; SMALL];
        small[..bytes.len()].copy_from_slice(&bytes);
        return Ok(Payload::Small(small, bytes.len() as u8));
    }
    let held = Held::new(bytes).map_err(|detail| Error::Encode {
        what: format!("the argument of task {name:?}"),
        detail,
    })?;
    Ok(if chunk {
        Payload::Chunk(held)
    } else {
        Payload::One(held)
    })
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
