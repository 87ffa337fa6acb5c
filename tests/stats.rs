//! `Executor::stats` on the thread back end: queued, running, finished,
//! failed and live workers as a program would read them to show progress.
//! (The process back end's are in `tests/process.rs`.)

mod common;

use common::{block_worker, eventually, Gate, LONG};
use twinpool::{Executor, Stats};

#[test]
fn a_fresh_pool_has_done_nothing() {
    let ex = Executor::threads(2);
    assert_eq!(ex.stats(), Stats::default());
}

#[test]
fn queued_running_then_finished_and_failed() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let a = block_worker(&ex, &gate);
    let b = block_worker(&ex, &gate);
    let queued: Vec<_> = (0..5_u64).map(|i| ex.submit(move || i).unwrap()).collect();
    let boom = ex
        .submit(|| -> u64 { panic!("counted as failed") })
        .unwrap();
    let s = ex.stats();
    assert_eq!((s.queued, s.running, s.live_workers), (6, 2, 2), "{s:?}");
    assert_eq!(
        (s.finished, s.failed, s.worker_restarts),
        (0, 0, 0),
        "{s:?}"
    );

    gate.open();
    a.result().unwrap();
    b.result().unwrap();
    for f in queued {
        f.result().unwrap();
    }
    assert!(boom.result().is_err());
    // A task is counted just after its result is out: wait for the count.
    eventually("all eight counted", || ex.stats().finished == 8);
    let s = ex.stats();
    assert_eq!((s.queued, s.running, s.failed), (0, 0, 1), "{s:?}");

    ex.shutdown(true, false);
    let s = ex.stats();
    assert_eq!((s.finished, s.failed, s.live_workers), (8, 1, 0), "{s:?}");
}

#[test]
fn cancelled_tasks_are_not_counted() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let blocker = block_worker(&ex, &gate);
    let never = ex.submit(|| 1_u8).unwrap();
    assert!(never.cancel());
    gate.open();
    blocker.result().unwrap();
    ex.shutdown(true, false);
    let s = ex.stats();
    assert_eq!((s.finished, s.failed, s.queued), (1, 0, 0), "{s:?}");
}

#[test]
fn a_task_run_inline_by_a_waiting_task_is_counted() {
    // One thread: the outer task waits for the inner one, which has not
    // started, so the outer task's thread runs it inline.
    let ex = Executor::threads(1);
    let inner_ex = ex.clone();
    let outer = ex
        .submit(move || {
            let inner = inner_ex.submit(|| 2_u32).unwrap();
            // Without a timeout: a wait with one does not run the task
            // inline.
            inner.result().unwrap() + 1
        })
        .unwrap();
    assert_eq!(outer.result_timeout(LONG), Ok(3));
    ex.shutdown(true, false);
    let s = ex.stats();
    assert_eq!((s.finished, s.failed), (2, 0), "{s:?}");
}
