//! A worker's claim table: the shared words that decide, exactly and
//! without a message, whether a task sent to a worker will run.
//!
//! The worker makes a small shared-memory segment and hands it to the pool
//! in its handshake. Each task sent to it is given a slot, and the slot's
//! claim word holds the number of that send and a state:
//!
//! | claim word | meaning | set by |
//! |---|---|---|
//! | `0` | free | the pool, when it frees the slot |
//! | `send << 2 \| SENT` | sent, not started | the pool, before the frame goes out |
//! | `send << 2 \| STARTED` | started | the worker, by compare-and-swap from `SENT` |
//!
//! Before it runs a task the worker swaps its claim from `SENT` to
//! `STARTED`; the pool takes a task back by swapping it from `SENT` to free.
//! Exactly one of the two swaps wins, so a task taken back never runs, and
//! a task that lost is known to run, whatever the worker is doing (stopped
//! with SIGSTOP, blocked writing, dead). The send number makes a stale frame
//! harmless: a task taken back and sent again has a new number, so the old
//! frame's swap fails even if it names the same slot. The worker writes the
//! task's start time (`CLOCK_MONOTONIC`, which both processes share) into
//! the word after the claim before it swaps, so the pool learns when a task
//! started when its swap fails.
//!
//! Two more words: how many frames the worker has read (the pool writes a
//! small frame from the submitting thread only when the worker has read all
//! the others, so the write cannot block), and flags the worker sets as it
//! dies (it ran out of memory).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc_channel::ipc::IpcSharedMemory;

/// Claim slots per worker; the scheduler keeps fewer tasks in flight.
pub(crate) const SLOTS: u32 = 1024;

const FREE: u64 = 0;
const SENT: u64 = 1;
const STARTED: u64 = 2;

/// Word 0: frames the worker has read.
const FRAMES_READ: usize = 0;
/// Word 1: flags set by a dying worker.
const FLAGS: usize = 1;
/// The worker aborted because an allocation failed.
const FLAG_OUT_OF_MEMORY: u64 = 1;
/// Slots start at this word, two words each: the claim, the start time.
const FIRST_SLOT: usize = 2;
const WORDS: usize = FIRST_SLOT + 2 * SLOTS as usize;

/// One side's view of a claim table.
pub(crate) struct ClaimTable {
    /// Keeps the segment mapped for as long as `words` is used.
    _shm: IpcSharedMemory,
    /// The segment's first word.
    words: *const AtomicU64,
}

// SAFETY: the table is only touched through atomic words (rule 1 of
// `word`), which any thread may use at once.
unsafe impl Send for ClaimTable {}
// SAFETY: as above.
unsafe impl Sync for ClaimTable {}

impl ClaimTable {
    /// For a worker: a new, zeroed table, and a handle on it to send to the
    /// pool.
    pub(crate) fn create() -> Result<(ClaimTable, IpcSharedMemory), String> {
        let shm = std::panic::catch_unwind(|| {
            IpcSharedMemory::from_byte(0, WORDS * std::mem::size_of::<u64>())
        })
        .map_err(|p| {
            let why = crate::error::panic_message(&*p);
            crate::error::drop_panic_payload(p);
            format!("could not make the claim table ({why})")
        })?;
        let to_send = shm.clone();
        Ok((ClaimTable::open(shm)?, to_send))
    }

    /// For the pool: the table a worker sent.
    pub(crate) fn open(shm: IpcSharedMemory) -> Result<ClaimTable, String> {
        // The only time the segment is seen as bytes: to learn where it
        // lies. From here on it is only used as atomic words.
        let (ptr, len) = (shm.as_ptr(), shm.len());
        if len < WORDS * std::mem::size_of::<u64>() || ptr.align_offset(8) != 0 {
            return Err(format!(
                "its claim table has {len} bytes at {ptr:p}, not {WORDS} words"
            ));
        }
        Ok(ClaimTable {
            _shm: shm,
            words: ptr.cast(),
        })
    }

    /// Word `i` of the table.
    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < WORDS);
        // SAFETY: the rules this relies on, and where they are kept:
        // 1. The segment is accessed only through these atomic words, in
        //    both processes: this is the one accessor, here and in the
        //    worker (which uses this same type); nothing reads it as bytes
        //    after `open`.
        // 2. It stays mapped while `self` lives: `_shm` owns the mapping.
        // 3. `i` is in bounds: every caller passes a constant below
        //    `FIRST_SLOT` or `FIRST_SLOT + 2 * slot (+ 1)` with
        //    `slot < SLOTS`, checked by `slot_word`; `open` checked that the
        //    segment holds `WORDS` words.
        // 4. It is aligned: `open` checked the start (mmap gives pages).
        // The other process may write any value into any word; every value
        // read is only compared, never trusted as an index or length.
        unsafe { &*self.words.add(i) }
    }

    /// The claim word and the start-time word of `slot`, if it exists.
    fn slot_word(&self, slot: u32) -> Option<(&AtomicU64, &AtomicU64)> {
        let i = FIRST_SLOT + 2 * usize::try_from(slot).ok().filter(|&s| s < SLOTS as usize)?;
        Some((self.word(i), self.word(i + 1)))
    }

    // ----- the pool's side -----

    /// Marks `slot` as holding send number `send`, not started.
    pub(crate) fn arm(&self, slot: u32, send: u64) {
        if let Some((claim, _)) = self.slot_word(slot) {
            claim.store(send << 2 | SENT, Ordering::Release);
        }
    }

    /// Takes send `send` in `slot` back: `Ok` if the worker will never
    /// start it, else `Err` with when it started (if the worker said).
    pub(crate) fn take_back(&self, slot: u32, send: u64) -> Result<(), Option<Instant>> {
        let Some((claim, at)) = self.slot_word(slot) else {
            return Err(None);
        };
        match claim.compare_exchange(send << 2 | SENT, FREE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(now) if now == send << 2 | STARTED => Err(instant_of(at.load(Ordering::Acquire))),
            Err(_) => Err(None),
        }
    }

    /// True if the worker started send `send` in `slot`.
    pub(crate) fn started(&self, slot: u32, send: u64) -> bool {
        self.slot_word(slot)
            .is_some_and(|(claim, _)| claim.load(Ordering::Acquire) == send << 2 | STARTED)
    }

    /// Frees `slot` once its task is answered or taken back.
    pub(crate) fn free(&self, slot: u32) {
        if let Some((claim, _)) = self.slot_word(slot) {
            claim.store(FREE, Ordering::Release);
        }
    }

    /// How many frames the worker has read.
    pub(crate) fn frames_read(&self) -> u64 {
        self.word(FRAMES_READ).load(Ordering::Acquire)
    }

    /// True if the worker died because an allocation failed.
    pub(crate) fn out_of_memory(&self) -> bool {
        self.word(FLAGS).load(Ordering::Acquire) & FLAG_OUT_OF_MEMORY != 0
    }

    // ----- the worker's side -----

    /// Claims send `send` in `slot` to run it now: true if the pool has not
    /// taken it back (and never will).
    pub(crate) fn start(&self, slot: u32, send: u64) -> bool {
        let Some((claim, at)) = self.slot_word(slot) else {
            return false;
        };
        at.store(monotonic_nanos(), Ordering::Relaxed);
        claim
            .compare_exchange(
                send << 2 | SENT,
                send << 2 | STARTED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Counts one more frame read.
    pub(crate) fn frame_read(&self) {
        self.word(FRAMES_READ).fetch_add(1, Ordering::Release);
    }

    /// The flags word, for a signal handler that marks the death (see
    /// `worker.rs`); it lives as long as the table.
    pub(crate) fn flags(&self) -> &AtomicU64 {
        self.word(FLAGS)
    }
}

/// The flag a worker sets as it aborts for lack of memory.
pub(crate) const OUT_OF_MEMORY: u64 = FLAG_OUT_OF_MEMORY;

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// The `Instant` of a `CLOCK_MONOTONIC` reading taken in another process
/// (Rust's `Instant` is that clock on Linux, but opaque).
fn instant_of(nanos: u64) -> Option<Instant> {
    if nanos == 0 {
        return None;
    }
    let (now, now_nanos) = (Instant::now(), monotonic_nanos());
    now.checked_sub(Duration::from_nanos(now_nanos.saturating_sub(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool and a worker each see the table through their own handle;
    /// exactly one of a start and a take-back wins, and an old send never
    /// claims a new one.
    #[test]
    fn one_side_wins_each_claim() {
        let (worker, sent) = ClaimTable::create().unwrap();
        let pool = ClaimTable::open(sent).unwrap();
        pool.arm(5, 1);
        assert!(worker.start(5, 1));
        assert!(pool.started(5, 1));
        let started = pool.take_back(5, 1).unwrap_err();
        assert!(started.is_some_and(|at| at <= Instant::now()));
        pool.free(5);

        pool.arm(5, 2);
        assert_eq!(pool.take_back(5, 2), Ok(()));
        assert!(!worker.start(5, 2), "a task taken back ran");
        // The same slot, sent again under a new number: the old frame's
        // claim fails, the new one's wins.
        pool.arm(5, 3);
        assert!(!worker.start(5, 2));
        assert!(worker.start(5, 3));
        assert_eq!(pool.take_back(5, 3).map_err(|_| ()), Err(()));

        assert!(!worker.start(SLOTS, 1), "a slot out of range");
        assert_eq!(pool.frames_read(), 0);
        worker.frame_read();
        assert_eq!(pool.frames_read(), 1);
        assert!(!pool.out_of_memory());
        worker.flags().fetch_or(OUT_OF_MEMORY, Ordering::Relaxed);
        assert!(pool.out_of_memory());
    }

    /// Many racing starts and take-backs: each send is won by exactly one
    /// side.
    #[test]
    fn racing_claims_have_one_winner() {
        let (worker, sent) = ClaimTable::create().unwrap();
        let pool = ClaimTable::open(sent).unwrap();
        let rounds = 20_000u64;
        let won_by_worker = std::thread::scope(|s| {
            let (go_tx, go_rx) = std::sync::mpsc::sync_channel::<u64>(0);
            let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<bool>(0);
            let w = &worker;
            s.spawn(move || {
                for send in go_rx {
                    let _ = done_tx.send(w.start(7, send));
                }
            });
            let mut won = 0;
            for send in 1..=rounds {
                pool.arm(7, send);
                go_tx.send(send).unwrap();
                let taken = pool.take_back(7, send).is_ok();
                let started = done_rx.recv().unwrap();
                assert!(
                    taken != started,
                    "send {send}: taken {taken}, started {started}"
                );
                won += u64::from(started);
                pool.free(7);
            }
            won
        });
        assert!(won_by_worker <= rounds);
    }
}
