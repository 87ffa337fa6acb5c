//! When a waiter spins and when it sleeps.
//!
//! A wait for a task that is about to end is answered far sooner by
//! spinning than by sleeping on the condvar and being woken (the futex
//! round trip costs more than a trivial task, and a process round trip
//! takes about half again as long through a sleep). But spinning only
//! pays while two things hold:
//!
//! * **the task ends within the spin.** Each thread keeps a moving
//!   average of how long its recent waits lasted ([`record`]); it spins
//!   about twice that, at most [`SPIN_MAX`], and not at all (beyond a
//!   short spin of about a microsecond) when its waits have recently taken
//!   longer than that. A wait that sleeps counts until the task ended (the
//!   completer notes the time for its sleepers), not until the sleeper was
//!   woken: so a thread whose tasks become short again spins again, and
//!   the slowness of sleeping itself does not talk it out of spinning.
//! * **the CPU is not wanted for the task itself.** A spinning waiter
//!   holds a CPU that the worker it waits for may need. When the machine
//!   has more runnable threads than CPUs ([`crowded`]: the running count of
//!   `/proc/loadavg`, read at most once a millisecond), a waiter does not
//!   spin at all past the short spin: it hands its CPU over, yielding at
//!   most [`HAND_OFF`] times (checking the task after each), then sleeps.
//!   This is a hand-off, not a spin: the worker that the submit just woke
//!   is most often queued on the submitter's own CPU (the kernel wakes a
//!   thread near its waker), and a yield gives it that CPU at once, where
//!   a sleep would cost a futex wake and two context switches per task.
//!   It is bounded by a count, not a time, so a waiter never yield-spins
//!   on a crowded machine; crossbeam-channel's blocking receive, the raw
//!   pool's waiter, does the same four yields before it parks.
//!
//! Measured with the report's benchmarks on 2 CPUs, the earlier rule (on
//! a crowded machine, 5 µs of spinning without yielding, then sleep)
//! against the hand-off, builds alternating (runs of each: three of
//! group 9, two of group 2, four of groups 3 and 1b; the raw peer's range
//! is from the same runs, two of them for groups 3 and 1b):
//!
//! | work | earlier rule | hand-off | raw peer |
//! |---|---|---|---|
//! | one task at a time beside a busy pool (group 9), µs | 16.5-21.1 | 9.6-9.7 | crossbeam 4.7-14.4 |
//! | pipelined process tasks (group 2), ms per 100k | 821-884 | 643-653 | ipc-channel 571-637 |
//! | process round trip (group 3), ms per 2k | 74-94 | 73-86 | ipc-channel 153-208 |
//! | one task at a time, quiet (group 1b), ms per 10k | 4.1-6.4 | 4.1-5.6 | crossbeam 4.6-7.2 |
//!
//! The pool thread does its part of the hand-off: when its queue is
//! empty on a crowded machine, it yields once before it blocks, which
//! gives the CPU back to the waiter queued behind it (`next_item` in
//! `threads/mod.rs`); that took group 9 from 9.6-10.9 µs to 6.8-10.5 µs
//! (four more interleaved runs each).
//!
//! Group 9's busy pool is another pool's threads (one per CPU) busy a
//! third of the time, with three more pools alive in the process. In a
//! probe of it those threads finished as many of their own tasks per
//! millisecond under either rule (9.5-10.7), so the yields took nothing
//! measurable from them. In the runs where the raw pool is still faster
//! there, its round trip more often ends within its longer short spin
//! (about 3 µs), which holds a CPU that a crowded machine's worker may
//! need (a 3 µs short spin here was slower: 11.3-14.0 µs in three runs).
//!
//! A pipeline of process tasks on 2 CPUs crowds the machine by itself
//! (the worker, the pool's reader thread, the waiter): there the hand-off
//! gives the reader thread the CPU it needs, where the earlier rule's
//! sleeping waiter had to be woken for each result.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest a waiter spins before it sleeps.
pub(super) const SPIN_MAX: Duration = Duration::from_micros(100);
const SPIN_MAX_NS: u64 = SPIN_MAX.as_nanos() as u64;
/// Added to twice the recent waits, so that a wait a little longer than the
/// last ones is still caught.
const MARGIN_NS: u64 = 4_000;
/// The short spin every wait starts with: `2^0 + ... + 2^(STEPS-1)` spin
/// hints (31, about 0.75 µs on the 2-CPU machine of the report).
pub(super) const SHORT_SPIN_STEPS: u32 = 5;
/// The most yields of a waiter on a crowded machine before it sleeps.
pub(super) const HAND_OFF: u32 = 4;
/// How long a reading of `/proc/loadavg` is trusted.
const CROWD_READ_EVERY: Duration = Duration::from_millis(1);

thread_local! {
    /// How long this thread's recent waits lasted past the short spin, in
    /// nanoseconds (each at most 2 x SPIN_MAX): a moving average in which
    /// each new wait weighs an eighth, so that one slow wait among quick
    /// ones does not stop the spinning.
    static RECENT_NS: Cell<u64> = const { Cell::new(0) };
}

/// Counts a wait that lasted `waited` past the short spin.
pub(super) fn record(waited: Duration) {
    let x = (waited.as_nanos() as u64).min(2 * SPIN_MAX_NS);
    let _ = RECENT_NS.try_with(|avg| {
        let a = avg.get();
        avg.set(a - a / 8 + x / 8);
    });
}

/// What a waiter does once its short spin found the task not ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Spin {
    /// Sleep at once: recent waits took longer than [`SPIN_MAX`].
    Sleep,
    /// The machine is [`crowded`]: yield at most [`HAND_OFF`] times, then
    /// sleep.
    HandOff,
    /// Spin this long, yielding between looks, then sleep: about twice
    /// the recent waits ([`spin_for`]).
    Yielding(Duration),
}

/// What a waiter does now, past the short spin (see the module doc).
pub(super) fn next() -> Spin {
    choose(RECENT_NS.try_with(Cell::get).unwrap_or(0), crowded)
}

/// The rule of [`next`] for recent waits of `avg` nanoseconds; `crowded`
/// is asked only when spinning would pay.
fn choose(avg: u64, crowded: impl FnOnce() -> bool) -> Spin {
    let spin = spin_for(avg);
    if spin.is_zero() {
        Spin::Sleep
    } else if crowded() {
        Spin::HandOff
    } else {
        Spin::Yielding(spin)
    }
}

/// The spin that recent waits of `avg` nanoseconds buy.
fn spin_for(avg: u64) -> Duration {
    if avg > SPIN_MAX_NS {
        return Duration::ZERO;
    }
    Duration::from_nanos((2 * avg + MARGIN_NS).min(SPIN_MAX_NS))
}

/// When the process's clock starts, for timestamps in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The CPUs this process may use.
fn cpus() -> u64 {
    static CPUS: OnceLock<u64> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
}

/// The last reading of the running count: when (µs since [`epoch`], plus
/// one, so that 0 means never) in the high bits, the count in the low 16.
static READING: AtomicU64 = AtomicU64::new(0);

/// True when the machine has more runnable threads (this one included)
/// than this process has CPUs. Unknown (no `/proc/loadavg`) is false.
pub(crate) fn crowded() -> bool {
    let now = epoch().elapsed().as_micros() as u64 + 1;
    let last = READING.load(Ordering::Relaxed);
    let running =
        if last != 0 && now.saturating_sub(last >> 16) < CROWD_READ_EVERY.as_micros() as u64 {
            last & 0xffff
        } else {
            let running = read_running().unwrap_or(0).min(0xffff);
            READING.store((now << 16) | running, Ordering::Relaxed);
            running
        };
    running > cpus()
}

/// The threads running or runnable on the machine now: the fourth field
/// of `/proc/loadavg` is `running/total`.
fn read_running() -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; 128];
    let n = std::fs::File::open("/proc/loadavg")
        .ok()?
        .read(&mut buf)
        .ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn recent() -> u64 {
        RECENT_NS.with(Cell::get)
    }

    #[test]
    fn short_waits_buy_a_short_spin_and_long_ones_none() {
        for _ in 0..64 {
            record(Duration::from_micros(1));
        }
        let short = spin_for(recent());
        assert!(
            short > Duration::ZERO && short < Duration::from_micros(10),
            "{short:?}"
        );
        for _ in 0..64 {
            record(Duration::from_millis(5));
        }
        assert_eq!(spin_for(recent()), Duration::ZERO);
        // Woken quickly again: the spin comes back.
        for _ in 0..64 {
            record(Duration::from_micros(20));
        }
        let back = spin_for(recent());
        assert!(
            back >= Duration::from_micros(40) && back <= SPIN_MAX,
            "{back:?}"
        );
    }

    #[test]
    fn a_crowded_machine_gets_a_hand_off_and_long_waits_a_sleep() {
        let short = 2_000;
        let long = 2 * SPIN_MAX_NS;
        assert_eq!(choose(short, || true), Spin::HandOff);
        assert!(
            matches!(choose(short, || false), Spin::Yielding(d) if d > Duration::ZERO && d <= SPIN_MAX)
        );
        // Spinning would not pay: the machine's load is not even read.
        assert_eq!(choose(long, || unreachable!()), Spin::Sleep);
    }

    #[test]
    fn the_running_count_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            // This thread runs, so at least 1.
            assert!(read_running().is_some_and(|n| n >= 1));
        }
    }
}
