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
//! * **no other thread wants the CPU.** A spinning waiter holds a CPU that
//!   the thread it waits for, or any other, may need. When the machine has
//!   more runnable threads than CPUs ([`crowded`]: the running count of
//!   `/proc/loadavg`, read at most once a millisecond), a waiter never
//!   yields (a yield hands the CPU to whoever is runnable, for a whole time
//!   slice if it is another pool's busy thread) and spins without yielding
//!   for at most [`CROWDED_SPIN`], which catches a task that its worker is
//!   running on another CPU; then it sleeps. Interleaved beside a pool
//!   whose threads were busy a third of the time, sleeping at once made a
//!   round trip 0.8-2.5x as long as a raw crossbeam pool's (which spins
//!   and yields), 1.4x as a rule; the short spin brought it to 0.9-1.2x in
//!   40-round runs, and to 1.4-2.5x in 400-round runs (three of them).
//!   What the raw pool has that this rule gives up: when the machine is
//!   crowded, the worker that was woken for the task is runnable but has
//!   no CPU, and a yield hands it the waiter's; a waiter that sleeps
//!   instead costs a futex wake and two context switches per task (in the
//!   slow rounds of a probe, 12,000-13,000 voluntary switches of the
//!   waiting thread per 20,000 one-at-a-time tasks, against 300-800 for
//!   the raw pool; counted from `/proc/thread-self/status`).
//!
//! What the rule against yielding on a crowded machine costs: a pipeline
//! of process tasks on 2 CPUs crowds the machine by itself (the worker,
//! the pool's reader thread, the waiter), so a waiter that catches up with
//! the results sleeps, and the reader wakes it for each one. Pipelined
//! process tasks took 13-37% longer that way than with the earlier
//! yielding spin (4 interleaved runs; the same code ignoring crowding was
//! as fast as the yielding spin). A single process round trip (the waiter
//! and the worker, 2 threads) is not crowded and spins as before.

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
/// The longest a waiter spins on a crowded machine, without yielding.
pub(super) const CROWDED_SPIN: Duration = Duration::from_micros(5);
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

/// How long to spin now, past the short spin, and whether to yield while
/// spinning: what recent waits buy ([`spin_for`]; zero when they took
/// longer than [`SPIN_MAX`]), yielding; on a [`crowded`] machine at most
/// [`CROWDED_SPIN`] of that, never yielding.
pub(super) fn budget() -> (Duration, bool) {
    let spin = spin_for(RECENT_NS.try_with(Cell::get).unwrap_or(0));
    if spin.is_zero() {
        return (spin, false);
    }
    if crowded() {
        return (spin.min(CROWDED_SPIN), false);
    }
    (spin, true)
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
pub(super) fn crowded() -> bool {
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
    fn the_running_count_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            // This thread runs, so at least 1.
            assert!(read_running().is_some_and(|n| n >= 1));
        }
    }
}
