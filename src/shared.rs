//! Put once, use many: [`Shared`] bytes that cross to each worker once.
//!
//! Sending a big input with every task copies it with every task: 100 tasks
//! reading the same 256 MiB table copy 25 GiB. A [`Shared`] is made once, in
//! one shared-memory segment; what crosses with a task is only its name (a
//! few bytes), and the segment itself is handed to each worker process the
//! first time one of its tasks carries the handle. Every worker then maps
//! the same pages: no copy per task, and none per worker. This is the
//! counterpart of Dask's `scatter`, Ray's object store and joblib's memory
//! maps.
//!
//! # How a handle crosses
//!
//! ```text
//!  pool process                                    worker process
//!  ------------                                    --------------
//!  Shared::new(bytes) ── one segment ─────────┐
//!  submit_named(.., arg holding the Shared)   │
//!    encode: the handle writes (origin, id,   │
//!    len) and is kept with the task (held     │
//!    until the task is answered)              │
//!  link: first task to this worker with it ──►│ Share record + the segment,
//!                                             │ before the task's record:
//!                                             └► the worker maps it and keeps it
//!  task record ───────────────────────────────►  decode: (origin, id, len) is
//!                                                looked up among the handles
//!                                                this process holds
//!  every handle dropped in the pool: the next
//!  frame to the worker says Forget ───────────►  the worker drops its mapping
//! ```
//!
//! The per-process table of live handles ([`KNOWN`]) is what decoding looks
//! in; a handle is in it from when it is made (or received) until its last
//! clone in that process is dropped. Decoding a handle the process does not
//! hold (one written to a file and read back elsewhere, or one made inside
//! a worker and returned to the pool) is a decode error that says so.
//!
//! In a thread pool a `Shared` is an `Arc` like any other: nothing crosses.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Error;

/// Where the bytes of a [`Shared`] lie.
#[cfg(feature = "process")]
type Bytes = ipc_channel::ipc::IpcSharedMemory;
#[cfg(not(feature = "process"))]
type Bytes = Box<[u8]>;

/// Read-only bytes that tasks share: made once, read by every task of every
/// pool without a copy per task.
///
/// Pass a `Shared` (or a value holding one) as a task's argument; the task
/// reads it as a `&[u8]` (it derefs to one). Cloning is cheap (an `Arc`).
///
/// - **Process pools:** the bytes live in one shared-memory segment. Each
///   worker process is handed the segment the first time one of its tasks
///   carries the handle, and keeps it mapped while the pool still holds a
///   clone; what crosses with each task is a few bytes. A worker unmaps the
///   segment when it is next sent work after the pool dropped its last
///   clone, or when it exits, so memory comes back without a shutdown.
/// - **Thread pools:** a `Shared` is an `Arc<[u8]>` in all but name.
///
/// The bytes are made once ([`Shared::new`], [`Shared::from_fn`],
/// [`Executor::share`](crate::Executor::share)) and never change
/// afterwards, so every reader sees the same bytes.
///
/// A `Shared` is `Serialize` and `Deserialize` so that it can sit inside a
/// task's argument or result, but it is a handle, not the data: it decodes
/// only in a process that holds it (the pool that made it, or a worker it
/// was sent to). A `Shared` made inside a worker can be used there but not
/// returned to the pool: decoding it there fails with [`Error::Decode`].
///
/// ```
/// use twinpool::{Executor, Registry, Shared};
///
/// fn count_zeros(table: Shared) -> u64 {
///     table.iter().filter(|&&b| b == 0).count() as u64
/// }
///
/// fn tasks() -> Registry {
///     Registry::new().register("count_zeros", count_zeros)
/// }
///
/// fn main() -> Result<(), twinpool::Error> {
///     twinpool::serve_if_worker(&tasks());
///     let pool = Executor::processes(2, tasks())?;
///     // One copy, into shared memory; each worker maps it once.
///     let table = pool.share(vec![0u8, 1, 0, 2])?;
///     let futures: Vec<_> = (0..4)
///         .map(|_| pool.submit_named::<Shared, u64>("count_zeros", table.clone()))
///         .collect::<Result<_, _>>()?;
///     for f in futures {
///         assert_eq!(f.result()?, 2);
///     }
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

/// What names a [`Shared`] across processes: the process that made it and
/// a number unique in that process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub(crate) origin: u32,
    pub(crate) id: u64,
}

struct Inner {
    key: Key,
    bytes: Bytes,
}

/// The handles this process holds, by key: what decoding looks in. An entry
/// is removed when its last handle is dropped.
static KNOWN: Mutex<BTreeMap<Key, Weak<Inner>>> = Mutex::new(BTreeMap::new());

/// The next key number of this process.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn known() -> std::sync::MutexGuard<'static, BTreeMap<Key, Weak<Inner>>> {
    KNOWN.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut known = known();
        // Only this handle's own entry: its weak count is what is left.
        if known.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            known.remove(&self.key);
        }
    }
}

impl Shared {
    /// A copy of `bytes`, made once, to share. Fails only when the system
    /// cannot give a shared-memory segment that size (out of memory or of
    /// file descriptors): [`Error::Encode`] then says why.
    pub fn new(bytes: &[u8]) -> Result<Shared, Error> {
        Self::from_fn(bytes.len(), |dst| dst.copy_from_slice(bytes))
    }

    /// `len` bytes written in place by `fill`, which is handed them zeroed:
    /// big inputs are built straight in the shared segment, with no copy
    /// (and no second buffer) at all.
    ///
    /// ```
    /// let squares = twinpool::Shared::from_fn(256, |b| {
    ///     for (i, x) in b.iter_mut().enumerate() {
    ///         *x = (i * i) as u8;
    ///     }
    /// })?;
    /// assert_eq!(squares[3], 9);
    /// # Ok::<(), twinpool::Error>(())
    /// ```
    pub fn from_fn(len: usize, fill: impl FnOnce(&mut [u8])) -> Result<Shared, Error> {
        let mut bytes = zeroed(len)?;
        fill(writable(&mut bytes));
        let key = Key {
            origin: std::process::id(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        Ok(Shared::register(key, bytes))
    }

    /// A handle for `bytes`, entered in [`KNOWN`] under `key`.
    fn register(key: Key, bytes: Bytes) -> Shared {
        let inner = Arc::new(Inner { key, bytes });
        known().insert(key, Arc::downgrade(&inner));
        Shared { inner }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.inner.bytes.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.inner.bytes
    }

    pub(crate) fn key(&self) -> Key {
        self.inner.key
    }

    #[cfg(feature = "process")]
    /// Watches this handle without keeping it alive.
    pub(crate) fn watch(&self) -> Watch {
        Watch(Arc::downgrade(&self.inner))
    }

    /// The segment, to hand to a worker.
    #[cfg(feature = "process")]
    pub(crate) fn segment(&self) -> &ipc_channel::ipc::IpcSharedMemory {
        &self.inner.bytes
    }

    /// A handle for a segment the pool sent this worker.
    #[cfg(feature = "process")]
    pub(crate) fn received(key: Key, segment: ipc_channel::ipc::IpcSharedMemory) -> Shared {
        if let Some(held) = known().get(&key).and_then(Weak::upgrade) {
            return Shared { inner: held };
        }
        Shared::register(key, segment)
    }
}

/// A zeroed buffer of `len` bytes; an error if the system has none.
#[cfg(feature = "process")]
fn zeroed(len: usize) -> Result<Bytes, Error> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    // ipc-channel asserts that its system calls succeed: that assert is
    // caught here and becomes the error.
    catch_unwind(AssertUnwindSafe(|| Bytes::from_byte(0, len))).map_err(|p| {
        let detail = crate::error::panic_message(&*p);
        crate::error::drop_panic_payload(p);
        Error::Encode {
            what: format!("the {len} bytes to share"),
            detail: format!(
                "could not make a shared-memory segment that size ({detail}; {})",
                std::io::Error::last_os_error()
            ),
        }
    })
}

#[cfg(not(feature = "process"))]
fn zeroed(len: usize) -> Result<Bytes, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|e| Error::Encode {
        what: format!("the {len} bytes to share"),
        detail: e.to_string(),
    })?;
    v.resize(len, 0);
    Ok(v.into_boxed_slice())
}

/// The bytes of a segment just made, to fill.
#[cfg(feature = "process")]
fn writable(bytes: &mut Bytes) -> &mut [u8] {
    // SAFETY: the rules this relies on, and where they are kept:
    // 1. Nobody else maps the segment yet: `zeroed` made it and the only
    //    handle is `bytes`, borrowed mutably here; no clone of it exists
    //    until `from_fn` wraps it in its `Arc` after `fill` returns.
    // 2. It is never written again: `Shared` gives out only `&[u8]`.
    unsafe { bytes.deref_mut() }
}

#[cfg(not(feature = "process"))]
fn writable(bytes: &mut Bytes) -> &mut [u8] {
    bytes
}

impl std::ops::Deref for Shared {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("len", &self.len())
            .field("origin", &self.inner.key.origin)
            .field("id", &self.inner.key.id)
            .finish()
    }
}

/// Two handles are equal when they name the same shared bytes.
impl PartialEq for Shared {
    fn eq(&self, other: &Shared) -> bool {
        self.inner.key == other.inner.key
    }
}

impl Eq for Shared {}

#[cfg(feature = "process")]
/// A [`Shared`] watched without being kept alive (see
/// [`Shared::watch`]): how a link knows when to tell a worker to let go.
pub(crate) struct Watch(Weak<Inner>);

#[cfg(feature = "process")]
impl Watch {
    /// Whether every handle of this process is gone.
    pub(crate) fn is_gone(&self) -> bool {
        self.0.strong_count() == 0
    }
}

// ----- crossing inside a task's argument -----

/// The serde name of a handle on the wire.
const NAME: &str = "twinpool::Shared";

std::thread_local! {
    /// The handles met while encoding a task's argument, when someone
    /// collects them (see [`collect`]).
    static ATTACHED: std::cell::RefCell<Option<Vec<Shared>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(feature = "process")]
/// Runs `encode` and returns, with its result, every distinct handle it
/// serialized: a process pool keeps them with the task (so the pool's
/// handle outlives the task) and hands their segments to the worker.
pub(crate) fn collect<T>(encode: impl FnOnce() -> T) -> (T, Vec<Shared>) {
    /// Puts back what was collected before, even if `encode` panics.
    struct Restore(Option<Vec<Shared>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            let _ = ATTACHED.try_with(|a| *a.borrow_mut() = outer);
        }
    }
    let outer = ATTACHED.with(|a| a.borrow_mut().replace(Vec::new()));
    let restore = Restore(outer);
    let value = encode();
    let attached = ATTACHED.with(|a| a.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    (value, attached)
}

std::thread_local! {
    /// Why the last handle decoded on this thread was refused: postcard
    /// drops the message of a custom error, so the codec takes it from here
    /// (see [`take_refusal`]).
    static REFUSAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

#[cfg(feature = "process")]
/// Why a handle was just refused, if one was (once).
pub(crate) fn take_refusal() -> Option<String> {
    REFUSAL.try_with(|r| r.borrow_mut().take()).ok().flatten()
}

impl Serialize for Shared {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let _ = ATTACHED.try_with(|a| {
            if let Some(list) = a.borrow_mut().as_mut() {
                if !list.iter().any(|s| s.key() == self.key()) {
                    list.push(self.clone());
                }
            }
        });
        let Key { origin, id } = self.key();
        serializer.serialize_newtype_struct(NAME, &(origin, id, self.len() as u64))
    }
}

impl<'de> Deserialize<'de> for Shared {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Shared, D::Error> {
        struct Handle;
        impl<'de> Visitor<'de> for Handle {
            type Value = Shared;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a twinpool::Shared handle")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Shared, D::Error> {
                let (origin, id, len) = <(u32, u64, u64)>::deserialize(d)?;
                let key = Key { origin, id };
                let held = known().get(&key).and_then(Weak::upgrade);
                let why = match held {
                    Some(inner) if inner.bytes.len() as u64 == len => return Ok(Shared { inner }),
                    Some(_) => format!(
                        "a Shared handle of process {origin} says {len} bytes, \
                         but the bytes this process holds under its name differ"
                    ),
                    None => format!(
                        "a Shared handle ({len} bytes, made by process {origin}) that this \
                         process does not hold: a Shared crosses only inside a task's \
                         argument (or back in its result) between a pool and its workers, \
                         and one made inside a worker cannot be returned to the pool"
                    ),
                };
                let err = de::Error::custom(&why);
                let _ = REFUSAL.try_with(|r| *r.borrow_mut() = Some(why));
                Err(err)
            }
        }
        deserializer.deserialize_newtype_struct(NAME, Handle)
    }
}

#[cfg(all(test, feature = "process"))]
mod tests {
    use super::*;

    #[test]
    fn handles_decode_only_where_held() {
        let a = Shared::new(b"abc").unwrap();
        let bytes = postcard::to_allocvec(&a).unwrap();
        let b: Shared = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(a, b);
        assert_eq!(&*b, b"abc");
        drop((a, b));
        // Every handle gone: the name no longer decodes.
        assert!(postcard::from_bytes::<Shared>(&bytes).is_err());
        assert!(take_refusal().unwrap().contains("does not hold"));
    }

    #[test]
    fn collect_finds_each_handle_once() {
        let a = Shared::new(&[1; 10]).unwrap();
        let b = Shared::from_fn(0, |_| {}).unwrap();
        let ((), attached) = collect(|| {
            let v = vec![a.clone(), b.clone(), a.clone()];
            postcard::to_allocvec(&v).unwrap();
        });
        assert_eq!(attached, vec![a.clone(), b.clone()]);
        // Outside `collect`, nothing is gathered.
        postcard::to_allocvec(&a).unwrap();
        let ((), none) = collect(|| ());
        assert!(none.is_empty());
    }

    #[test]
    fn watch_sees_the_last_handle_go() {
        let a = Shared::new(&[7; 3]).unwrap();
        let w = a.watch();
        let b = a.clone();
        drop(a);
        assert!(!w.is_gone());
        drop(b);
        assert!(w.is_gone());
    }
}
