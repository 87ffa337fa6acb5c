//! Model checks of the task state ([`super::state`]) with loom.
//!
//! Each test runs a small scene of two threads over and over, once for every
//! way loom can interleave their steps on the state's atomics, mutex,
//! condvar and outcome cell (see [`crate::sync`]), and checks every run:
//!
//! * completion racing `add_done_callback`: the callback runs exactly once,
//!   on one side or the other, with the result, and sees the future done;
//! * cancel racing a worker's claim: exactly one wins, the loser sees it,
//!   and the work runs only if the cancel lost;
//! * completion racing a waiter going to sleep: the waiter is always woken
//!   (a lost wake-up would leave it asleep, which loom reports as a
//!   deadlock);
//! * the callbacks that run after the task is published, against
//!   `result()` and `.await` taking the outcome: never while a callback
//!   borrows it (loom's cell reports two threads in the outcome at once,
//!   and the callback checks it still sees the value);
//! * a callback added while the completer runs the others: it runs once,
//!   after them, before `result()` returns;
//! * two threads that make a task's side (its mutex, made on first use)
//!   at once: both end up on one side, and both callbacks run.
//!
//! Run them with (see `.ci/run`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release --lib --target-dir target/loom -- future::loom wait::loom
//! ```
//!
//! The scenes are kept small (one task, two threads, a callback or two) so
//! that every model explores all interleavings in seconds; loom's own
//! exploration bound is left at its default (exhaustive).

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::thread;

use super::{Future, Shared};
use crate::Error;

/// A process task (no work of its own) that has been sent to a worker.
fn remote_running() -> crate::recycle::Counted<Shared<u32>> {
    let shared = Shared::<u32>::remote(0, ()).0;
    assert!(shared.claim_remote());
    shared
}

#[test]
fn completion_racing_add_done_callback_runs_it_once_with_the_result() {
    loom::model(|| {
        let shared = remote_running();
        let completer = {
            let shared = shared.clone();
            thread::spawn(move || shared.complete(Ok(5)))
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let future = Future::new(shared.clone());
        let (seen, r) = (shared.clone(), runs.clone());
        future.add_done_callback(move |result| {
            assert_eq!(result, &Ok(5));
            assert!(seen.is_done(), "a callback ran before the task was done");
            r.fetch_add(1, SeqCst);
        });
        completer.join().unwrap();
        assert_eq!(runs.load(SeqCst), 1);
        assert_eq!(future.result(), Ok(5));
    });
}

#[test]
fn cancel_racing_a_claim_has_exactly_one_winner() {
    loom::model(|| {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let (shared, job) = Shared::new(0, None, move || {
            r.fetch_add(1, SeqCst);
            Ok(7u32)
        });
        let future = Future::new(shared);
        let finishing = Arc::new(AtomicUsize::new(0));
        let worker = {
            let finishing = finishing.clone();
            thread::spawn(move || {
                job.run(&|| {
                    finishing.fetch_add(1, SeqCst);
                })
            })
        };
        let cancelled = future.cancel();
        worker.join().unwrap();
        assert_eq!(finishing.load(SeqCst), 1, "finishing runs exactly once");
        if cancelled {
            assert_eq!(ran.load(SeqCst), 0, "a cancelled task ran");
            assert!(future.cancelled());
            assert_eq!(future.result(), Err(Error::Cancelled));
        } else {
            assert_eq!(ran.load(SeqCst), 1);
            assert!(!future.cancelled());
            assert!(!future.cancel(), "the loser's second try still loses");
            assert_eq!(future.result(), Ok(7));
        }
    });
}

#[test]
fn cancel_racing_a_claim_with_a_callback_reports_the_winner() {
    loom::model(|| {
        let (shared, job) = Shared::new(0, None, || Ok(7u32));
        let future = Future::new(shared);
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        future.add_done_callback(move |r| {
            let code = match r {
                Ok(7) => 1,
                Err(Error::Cancelled) => 2,
                _ => 3,
            };
            assert_eq!(s.swap(code, SeqCst), 0, "a callback ran twice");
        });
        let worker = thread::spawn(move || job.run(&|| {}));
        let cancelled = future.cancel();
        worker.join().unwrap();
        assert_eq!(seen.load(SeqCst), if cancelled { 2 } else { 1 });
    });
}

#[test]
fn completion_racing_a_waiter_going_to_sleep_wakes_it() {
    loom::model(|| {
        let (shared, job) = Shared::new(0, None, || Ok(3u32));
        let future = Future::new(shared);
        let worker = thread::spawn(move || job.run(&|| {}));
        // Untimed: a lost wake-up leaves this thread asleep forever, which
        // loom reports.
        future.wait();
        assert!(future.done());
        assert_eq!(future.result(), Ok(3));
        worker.join().unwrap();
    });
}

#[test]
fn result_never_takes_the_outcome_while_a_callback_borrows_it() {
    loom::model(|| {
        let (shared, job) = Shared::new(0, None, || Ok(String::from("five")));
        let future = Future::new(shared.clone());
        let borrowing = Arc::new(AtomicBool::new(false));
        let returned = Arc::new(AtomicBool::new(false));
        let (b, done) = (borrowing.clone(), returned.clone());
        future.add_done_callback(move |r| {
            assert!(shared.is_done(), "a callback ran before the task was done");
            b.store(true, SeqCst);
            thread::yield_now();
            assert_eq!(
                r.as_deref(),
                Ok("five"),
                "the outcome moved under a callback"
            );
            b.store(false, SeqCst);
            done.store(true, SeqCst);
        });
        let worker = thread::spawn(move || job.run(&|| {}));
        let result = future.result();
        assert!(!borrowing.load(SeqCst));
        assert!(
            returned.load(SeqCst),
            "result() returned while a callback still ran"
        );
        assert_eq!(result.as_deref(), Ok("five"));
        worker.join().unwrap();
    });
}

#[test]
fn await_never_takes_the_outcome_while_a_callback_borrows_it() {
    loom::model(|| {
        let (shared, job) = Shared::new(0, None, || Ok(String::from("five")));
        let future = Future::new(shared);
        let returned = Arc::new(AtomicBool::new(false));
        let done = returned.clone();
        future.add_done_callback(move |r| {
            assert_eq!(r.as_deref(), Ok("five"));
            done.store(true, SeqCst);
        });
        let worker = thread::spawn(move || job.run(&|| {}));
        // A lost wake-up (at the publish, or where the callbacks end) would
        // leave block_on asleep, which loom reports.
        let result = loom::future::block_on(future);
        assert!(
            returned.load(SeqCst),
            ".await returned while a callback ran"
        );
        assert_eq!(result.as_deref(), Ok("five"));
        worker.join().unwrap();
    });
}

#[test]
fn a_callback_added_while_others_run_runs_once_after_them() {
    loom::model(|| {
        let shared = remote_running();
        let future = Future::new(shared.clone());
        let order = Arc::new(loom::sync::Mutex::new(Vec::new()));
        let o = order.clone();
        future.add_done_callback(move |r| {
            assert_eq!(r, &Ok(1));
            o.lock().unwrap().push(1);
        });
        let completer = thread::spawn(move || shared.complete(Ok(1)));
        let o = order.clone();
        future.add_done_callback(move |r| {
            assert_eq!(r, &Ok(1));
            o.lock().unwrap().push(2);
        });
        assert_eq!(future.result(), Ok(1));
        assert_eq!(*order.lock().unwrap(), [1, 2]);
        completer.join().unwrap();
    });
}

#[test]
fn two_threads_making_the_side_at_once_share_one() {
    loom::model(|| {
        let shared = remote_running();
        let future = Arc::new(Future::new(shared.clone()));
        let runs = Arc::new(AtomicUsize::new(0));
        let other = {
            let (future, runs) = (future.clone(), runs.clone());
            thread::spawn(move || {
                future.add_done_callback(move |r| {
                    assert_eq!(r, &Ok(1));
                    runs.fetch_add(1, SeqCst);
                })
            })
        };
        let r = runs.clone();
        future.add_done_callback(move |r2| {
            assert_eq!(r2, &Ok(1));
            r.fetch_add(1, SeqCst);
        });
        other.join().unwrap();
        shared.complete(Ok(1));
        assert_eq!(runs.load(SeqCst), 2, "a callback was left on a lost side");
    });
}
