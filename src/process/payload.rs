//! Big payloads: shared-memory segments beside the frames.
//!
//! Payloads of [`BIG`] bytes or more do not go inside a frame: they are
//! copied into a shared-memory segment, mostly one reused from payload to
//! payload (see [`Big`]), and a [`Note`] on a side channel says where they
//! lie. The frame itself carries only a mark (see `frames.rs`).
//!
//! ipc-channel creates and maps segments with `assert!`s on the system
//! calls, so running out of file descriptors or memory would panic inside
//! it: [`Big::copy_of`] turns such a panic into an error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ipc_channel::ipc::IpcSharedMemory;
use serde::{Deserialize, Serialize};

/// Payloads of this many bytes or more cross in a shared-memory segment
/// instead of inside the frame: one copy in, one copy out, and no trip
/// through the socket. Chosen by measurement: builds with 32, 64 and
/// 128 KiB, run in turn twice (each size beside raw ipc-channel bytes in
/// the same run, `cargo bench -p twinpool-benches --bench process_pool --
/// q11_payload`), sent 64 KiB at 0.96 to 1.16 GiB/s in a segment against
/// 0.71 to 0.75 inside the frame, and no size slower. (An earlier probe
/// had found 64 KiB faster inside the frame; it ran before workers kept
/// their heap, see `worker.rs`, when every big buffer in the worker came
/// from fresh pages either way.) Through the socket, a payload above ~200
/// KiB would also be cut into fragments over a fresh socket pair each.
pub(crate) const BIG: usize = 64 << 10;

/// Segments a process keeps for reuse (see [`Big`]).
const SPARES: usize = 4;

/// Segments up to this size are always kept for reuse; bigger ones only
/// while all kept segments together stay under a quarter of the memory the
/// system says is available (see [`Big::lend`]).
const ALWAYS_KEPT: usize = 256 << 20;

/// Where a big payload lies, sent on the side channel just before the frame
/// that holds its [`Body::Shared`].
#[derive(Serialize, Deserialize)]
pub(crate) struct Note {
    /// The spare of the sender's segment pool the payload is in, or `None`
    /// for a segment used once.
    spare: Option<u32>,
    /// The payload's length: it starts at the segment's first byte.
    len: u64,
    /// The segment, unless the receiver holds it already (in `spare`, from
    /// an earlier note).
    segment: Option<IpcSharedMemory>,
}

impl Note {
    /// A note that hands over a whole segment (of a
    /// [`Shared`](crate::Shared) handle).
    pub(crate) fn whole(segment: &IpcSharedMemory) -> Note {
        Note {
            spare: None,
            len: segment.len() as u64,
            segment: Some(segment.clone()),
        }
    }

    /// The whole segment a note hands over, if it holds `len` bytes.
    pub(crate) fn into_whole(self, len: u64) -> Result<IpcSharedMemory, BadNote> {
        match self {
            Note {
                spare: None,
                len: n,
                segment: Some(segment),
            } if n == len && segment.len() as u64 == len => Ok(segment),
            _ => Err(BadNote("a shared handle came without its segment")),
        }
    }
}

/// A payload held in memory: bytes, or a shared-memory segment.
pub(crate) enum Held {
    /// Small: the bytes, written inside the frame.
    Bytes(Vec<u8>),
    /// Big: in a shared-memory segment, named by a [`Note`].
    Shared(Box<Big>),
}

impl Held {
    /// `bytes`, copied into a shared-memory segment when it is big; an
    /// error says why no segment could be made.
    pub(crate) fn new(bytes: Vec<u8>) -> Result<Held, String> {
        if bytes.len() >= BIG {
            Held::big(&bytes)
        } else {
            Ok(Held::Bytes(bytes))
        }
    }

    /// A copy of `bytes`, which are big, in a shared-memory segment.
    pub(crate) fn big(bytes: &[u8]) -> Result<Held, String> {
        Ok(Held::Shared(Box::new(Big::copy_of(bytes)?)))
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
/// [`SPARES`] segments, reused from payload to payload: after the first time,
/// no segment is created, no page is faulted in, and the receiver, which
/// keeps the segments it was sent mapped by spare, is sent only a [`Note`].
/// A segment is lent to one payload at a time, for as long as the payload
/// lives (until its task is answered, or its worker is dead), so it is
/// never overwritten while a worker may still read it. When every spare is
/// lent, or the payload is too big to keep (see [`Big::lend`]), the payload
/// gets a segment of its own, used once.
///
/// The pool's arguments live in its queue until answered; a worker's
/// results are dropped on its side as soon as they are sent, so the worker
/// keeps a pooled result until the pool's [`Release`] says it was read.
pub(crate) struct Big {
    /// The segment (shared with the pool's spare only while not lent, or
    /// with the receiver's [`Received`]).
    shm: Arc<IpcSharedMemory>,
    /// The payload's length; the segment may be longer.
    len: usize,
    /// The pool spare and segment id it was lent from: returned on drop.
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
/// for long: a worker has at most [`SPARES`] pooled results unreleased, so at
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

/// One spare of a process's segment pool.
struct Spare {
    /// The segment, while it is not lent.
    segment: Option<Arc<IpcSharedMemory>>,
    /// Its id, unique in this process: a receiver holding this id in this
    /// spare holds this segment.
    id: u64,
    /// Whether a [`Big`] holds the segment now.
    lent: bool,
}

/// This process's segment pool.
static POOL: Mutex<[Spare; SPARES]> = Mutex::new(
    [const {
        Spare {
            segment: None,
            id: 0,
            lent: false,
        }
    }; SPARES],
);

/// The next segment id (0 is "none").
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A spare of the pool marked lent (see [`Big::lend`]).
struct Lent {
    spare: usize,
    /// Its segment, if it has one yet.
    segment: Option<Arc<IpcSharedMemory>>,
    /// That segment's id.
    id: u64,
}

impl Big {
    /// A copy of `bytes` in a pooled segment if one is free, else in a
    /// segment of its own.
    fn copy_of(bytes: &[u8]) -> Result<Big, String> {
        let len = bytes.len();
        let Some(mut lent) = Self::lend(len) else {
            return Ok(Big {
                shm: Self::fresh(bytes)?,
                len,
                lent: None,
                _release: None,
            });
        };
        // A segment too small is replaced by a new one; the old one is
        // unmapped here, outside the pool's lock (a receiver keeps its own
        // mapping until the spare's next note replaces it).
        let mut reused = lent.segment.take().filter(|m| m.len() >= len);
        let written = reused.as_mut().and_then(Arc::get_mut).map(|segment| {
            // SAFETY: the rules this relies on, and where they are kept:
            // 1. No other handle of this process maps the segment now:
            //    `Arc::get_mut` just proved it.
            // 2. No other process reads it now. A spare is lent to one
            //    payload at a time (`lend` marks it under the pool's lock)
            //    and comes back only when that payload is dropped
            //    (`Drop for Big`). The pool drops a payload only once the
            //    worker it was sent to can no longer read it: it answered
            //    the task, or lost the task's claim (it then never decodes
            //    it: `worker.rs`), or was reaped (`link.rs` keeps every
            //    task it sent until one of those).
            // 3. A receiver reads a spare only for the payload of a note
            //    sent after this write: notes name spares by number, and
            //    the next note for this one is sent once it is lent again.
            let dst = unsafe { segment.deref_mut() };
            crate::codec::copy_into(&mut dst[..len], bytes);
        });
        let shm = match (reused, written) {
            (Some(shm), Some(())) => shm,
            _ => match Self::fresh(bytes) {
                Ok(shm) => {
                    lent.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    shm
                }
                Err(e) => {
                    // The spare goes back empty.
                    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
                    pool[lent.spare] = Spare {
                        segment: None,
                        id: 0,
                        lent: false,
                    };
                    return Err(e);
                }
            },
        };
        Ok(Big {
            shm,
            len,
            lent: Some((lent.spare, lent.id)),
            _release: None,
        })
    }

    /// Whether it lies in a segment of this process's pool, which is
    /// reused once this is dropped.
    pub(crate) fn is_pooled(&self) -> bool {
        self.lent.is_some()
    }

    /// A new segment holding `bytes`. ipc-channel asserts that the system
    /// calls succeed; out of file descriptors or memory, that assert is
    /// caught here and becomes the error.
    fn fresh(bytes: &[u8]) -> Result<Arc<IpcSharedMemory>, String> {
        catch_unwind(AssertUnwindSafe(|| IpcSharedMemory::from_bytes(bytes)))
            .map(Arc::new)
            .map_err(|p| {
                let detail = crate::error::panic_message(&*p);
                crate::error::drop_panic_payload(p);
                format!(
                    "could not make a shared-memory segment of {} bytes ({detail}; {})",
                    bytes.len(),
                    std::io::Error::last_os_error()
                )
            })
    }

    /// Marks a free spare lent, preferring one whose segment holds `len`
    /// bytes; `None` if every spare is lent, or if `len` is over
    /// [`ALWAYS_KEPT`] and keeping it would take more than a quarter of the
    /// memory available.
    fn lend(len: usize) -> Option<Lent> {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if len > ALWAYS_KEPT {
            let kept: usize = (pool.iter())
                .filter_map(|s| s.segment.as_ref().map(|m| m.len()))
                .sum();
            if kept.saturating_add(len) > available_memory() / 4 {
                return None;
            }
        }
        let fits = |s: &Spare| s.segment.as_ref().is_some_and(|m| m.len() >= len);
        let i = (pool.iter())
            .position(|s| !s.lent && fits(s))
            .or_else(|| pool.iter().position(|s| !s.lent))?;
        let spare = &mut pool[i];
        spare.lent = true;
        Some(Lent {
            spare: i,
            segment: spare.segment.take(),
            id: spare.id,
        })
    }
}

impl Drop for Big {
    fn drop(&mut self) {
        if let Some((i, id)) = self.lent {
            let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
            pool[i] = Spare {
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
    spares: [Option<Arc<IpcSharedMemory>>; SPARES],
}

impl Received {
    /// The payload `note` points to; keeps the segment it carries, if any,
    /// for later notes naming the same spare. With `release_to` (a worker's
    /// release channel and the task's id), a payload in a pooled segment
    /// sends its release when it is dropped.
    pub(crate) fn open(
        &mut self,
        note: Note,
        release_to: Option<(&ipc_channel::ipc::IpcSender<u64>, u64)>,
    ) -> Result<Held, BadNote> {
        let release = release_to
            .filter(|_| note.spare.is_some())
            .map(|(to, id)| Release { to: to.clone(), id });
        let shm = match (note.spare, note.segment) {
            (None, Some(segment)) => Arc::new(segment),
            (None, None) => return Err(BadNote("a big payload came without its segment")),
            (Some(spare), segment) => {
                let Some(kept) = self.spares.get_mut(spare as usize) else {
                    return Err(BadNote("a big payload names an unknown segment spare"));
                };
                if let Some(segment) = segment {
                    *kept = Some(Arc::new(segment));
                }
                match kept {
                    Some(shm) => shm.clone(),
                    None => return Err(BadNote("a big payload names a segment never sent")),
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
            _ => Err(BadNote("a big payload is longer than its segment")),
        }
    }
}

/// The sending side: which of this process's segments the receiver holds.
#[derive(Default)]
pub(crate) struct Sent {
    ids: [u64; SPARES],
}

impl Sent {
    /// The note that tells the receiver where `big` lies, with the segment
    /// itself when the receiver does not hold it yet.
    pub(crate) fn note(&mut self, big: &Big) -> Note {
        let len = big.len as u64;
        match big.lent {
            Some((spare, id)) if self.ids[spare] == id => Note {
                spare: Some(spare as u32),
                len,
                segment: None,
            },
            Some((spare, id)) => {
                self.ids[spare] = id;
                Note {
                    spare: Some(spare as u32),
                    len,
                    segment: Some((*big.shm).clone()),
                }
            }
            None => Note {
                spare: None,
                len,
                segment: Some((*big.shm).clone()),
            },
        }
    }
}

/// The memory the system says is available for new allocations
/// (`MemAvailable` of `/proc/meminfo`), in bytes; 0 when it cannot say.
fn available_memory() -> usize {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (meminfo.lines())
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// A note that names what the receiver does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadNote(pub(crate) &'static str);

impl std::fmt::Display for BadNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed note of a big payload: {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver is sent a pooled segment once, then only notes naming it;
    /// a segment is reused only once the payload in it is dropped.
    #[test]
    fn segments_are_sent_once_and_reused_after_drop() {
        let (mut sent, mut received) = (Sent::default(), Received::default());
        let a = Big::copy_of(&[1; BIG]).unwrap();
        let b = Big::copy_of(&[2; BIG]).unwrap();
        let (Some((spare_a, id_a)), Some((spare_b, _))) = (a.lent, b.lent) else {
            panic!("the pool lent no segment");
        };
        assert_ne!(spare_a, spare_b, "one segment lent twice");
        let note = sent.note(&a);
        assert!(note.segment.is_some());
        assert!(received.open(note, None).unwrap().iter().all(|&x| x == 1));
        assert!(sent.note(&a).segment.is_none());
        let note = sent.note(&b);
        assert!(received.open(note, None).unwrap().iter().all(|&x| x == 2));
        drop(a);
        // Smaller than the segment: only its own bytes are the payload.
        let c = Big::copy_of(&[3; BIG - 1]).unwrap();
        if c.lent == Some((spare_a, id_a)) {
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
        let note = |spare, len, segment| Note {
            spare,
            len,
            segment,
        };
        assert!(received.open(note(None, 0, None), None).is_err());
        assert!(received.open(note(Some(0), 0, None), None).is_err());
        assert!(received
            .open(note(Some(SPARES as u32), 0, None), None)
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
}
