//! Tasks that submit to their own pool and block on the result (the
//! part that is thread-pool behaviour): where Python's
//! `ThreadPoolExecutor` hangs, a waiting task runs the pending subtask
//! itself. tests/deadlock.rs covers the cycle detection in depth.
//!
//! A hang inside the pool leaves its task holding an `Executor` clone, so
//! the test's own clone is never the last one and the timed `result` below
//! fails the test instead of hanging it.

mod common;

use common::{thread_name, LONG};
use twinpool::{as_completed, wait, Executor, ReturnWhen};

#[test]
fn nested_submit_and_wait_on_one_worker() {
    let ex = Executor::threads(1);
    let inner = ex.clone();
    let f = ex
        .submit(move || {
            let me = thread_name();
            let sub = inner.submit(|| (5, thread_name())).unwrap();
            let (v, ran_on) = sub.result().unwrap();
            // The only worker is busy waiting, so it ran the subtask itself.
            assert_eq!(ran_on, me);
            v + 1
        })
        .unwrap();
    assert_eq!(f.result_timeout(LONG), Ok(6));
}

#[test]
fn chain_of_three_tasks_on_two_workers() {
    let ex = Executor::threads(2);
    let (ex_a, ex_b) = (ex.clone(), ex.clone());
    let a = ex
        .submit(move || {
            let b = ex_a
                .submit(move || {
                    let c = ex_b.submit(|| 1).unwrap();
                    c.result().unwrap() + 10
                })
                .unwrap();
            b.result().unwrap() + 100
        })
        .unwrap();
    assert_eq!(a.result_timeout(LONG), Ok(111));
}

#[test]
fn nested_map_on_one_worker() {
    let ex = Executor::threads(1);
    let inner = ex.clone();
    let f = ex
        .submit(move || {
            inner
                .map(|x: u32| x * 2, 0..5)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        })
        .unwrap();
    assert_eq!(f.result_timeout(LONG), Ok(vec![0, 2, 4, 6, 8]));
}

#[test]
fn nested_wait_and_as_completed_on_one_worker() {
    let ex = Executor::threads(1);
    let inner = ex.clone();
    let f = ex
        .submit(move || {
            let fs = (0..3).map(|i| inner.submit(move || i).unwrap()).collect();
            let w = wait(fs, None, ReturnWhen::AllCompleted);
            assert!(w.not_done.is_empty());
            let fs: Vec<_> = (0..3).map(|i| inner.submit(move || i).unwrap()).collect();
            let sum: i32 = as_completed(fs, None)
                .map(|f| f.unwrap().result().unwrap())
                .sum();
            (w.done.len(), sum)
        })
        .unwrap();
    assert_eq!(f.result_timeout(LONG), Ok((3, 3)));
}
