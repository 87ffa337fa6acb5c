//! `Executor::shutdown` and dropping the last `Executor` clone (CPython's
//! test_shutdown.py): no new work afterwards, queued work run or cancelled,
//! `wait` waiting for running and queued work, idempotence, and dropping the
//! last clone, also from inside one of the pool's own tasks.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{block_worker, within, Gate, LONG};
use twinpool::{Error, Executor, Future, MapOptions, Registry};

/// `n` tasks that each bump `count` and return their index.
fn counting_tasks(ex: &Executor, n: usize, count: &Arc<AtomicUsize>) -> Vec<Future<usize>> {
    (0..n)
        .map(|i| {
            let c = count.clone();
            ex.submit(move || {
                c.fetch_add(1, Ordering::SeqCst);
                i
            })
            .unwrap()
        })
        .collect()
}

#[test]
fn submit_and_map_after_shutdown_fail() {
    let ex = Executor::builder()
        .threads(2)
        .registry(Registry::new().register("double", |x: i32| x * 2))
        .build()
        .unwrap();
    ex.shutdown(true, false);

    assert!(matches!(ex.submit(|| 1), Err(Error::Shutdown)));
    assert!(matches!(ex.map(|x: i32| x, 0..3), Err(Error::Shutdown)));
    let lazy = MapOptions {
        buffersize: Some(2),
        ..MapOptions::default()
    };
    assert!(matches!(
        ex.map_with(|x: u64| x, 0u64.., lazy),
        Err(Error::Shutdown)
    ));
    assert!(matches!(
        ex.map_with(|x: i32| x, 0..3, MapOptions::default()),
        Err(Error::Shutdown)
    ));
    assert!(matches!(
        ex.submit_named::<i32, i32>("double", 1),
        Err(Error::Shutdown)
    ));
    assert!(matches!(
        ex.map_named::<i32, i32, _>("double", 0..3),
        Err(Error::Shutdown)
    ));
    // A clone shares the shut-down pool.
    let clone = ex.clone();
    assert!(matches!(clone.submit(|| 1), Err(Error::Shutdown)));
}

#[test]
fn shutdown_is_idempotent() {
    let ex = Executor::threads(2);
    assert_eq!(ex.submit(|| 1).unwrap().result(), Ok(1));
    within(LONG, move || {
        ex.shutdown(true, false);
        ex.shutdown(true, false);
        ex.shutdown(false, true);
        ex.shutdown(true, true);
        ex.shutdown(false, false);
        assert!(matches!(ex.submit(|| 1), Err(Error::Shutdown)));
        drop(ex);
    });
}

#[test]
fn shutdown_without_cancel_runs_queued_work() {
    // CPython's test_hang_issue12364.
    let ex = Executor::threads(2);
    let count = Arc::new(AtomicUsize::new(0));
    let fs = counting_tasks(&ex, 50, &count);
    ex.shutdown(true, false);
    assert_eq!(count.load(Ordering::SeqCst), 50);
    for (i, f) in fs.into_iter().enumerate() {
        assert!(f.done());
        assert_eq!(f.result(), Ok(i));
    }
}

#[test]
fn shutdown_no_wait_returns_and_queued_work_still_runs() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let busy = block_worker(&ex, &gate);
    let count = Arc::new(AtomicUsize::new(0));
    let fs = counting_tasks(&ex, 5, &count);

    // Returns at once, though the worker is blocked.
    ex.shutdown(false, false);
    assert!(!busy.done());
    assert!(fs.iter().all(|f| !f.done() && !f.cancelled()));

    gate.open();
    for (i, f) in fs.into_iter().enumerate() {
        assert_eq!(f.result_timeout(LONG), Ok(i));
    }
    assert_eq!(count.load(Ordering::SeqCst), 5);
    assert_eq!(busy.result_timeout(LONG), Ok(()));
}

#[test]
fn shutdown_wait_waits_for_running_and_queued_work() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let busy = block_worker(&ex, &gate);
    let busy2 = block_worker(&ex, &gate);
    let count = Arc::new(AtomicUsize::new(0));
    let fs = counting_tasks(&ex, 10, &count);

    let opener = thread::spawn(move || {
        // If shutdown(wait) did not wait, it would very likely return
        // before this sleep ends.
        thread::sleep(Duration::from_millis(50));
        gate.open();
    });
    ex.shutdown(true, false);

    assert!(
        busy.done() && busy2.done(),
        "shutdown did not wait for running work"
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        10,
        "shutdown did not wait for queued work"
    );
    assert!(fs.iter().all(|f| f.done()));
    opener.join().unwrap();
}

#[test]
fn shutdown_cancel_futures_cancels_queued_work() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let busy = block_worker(&ex, &gate);
    let count = Arc::new(AtomicUsize::new(0));
    let fs = counting_tasks(&ex, 5, &count);
    let callbacks = Arc::new(AtomicUsize::new(0));
    for f in &fs {
        let c = callbacks.clone();
        f.add_done_callback(move |r| {
            assert_eq!(r, &Err(Error::Cancelled));
            c.fetch_add(1, Ordering::SeqCst);
        });
    }

    ex.shutdown(false, true);

    assert!(
        fs.iter().all(|f| f.cancelled()),
        "queued work was not cancelled"
    );
    assert_eq!(callbacks.load(Ordering::SeqCst), 5);
    // The running task is not cancelled and finishes.
    assert!(!busy.cancelled());
    gate.open();
    assert_eq!(busy.result_timeout(LONG), Ok(()));
    ex.shutdown(true, false);
    assert_eq!(count.load(Ordering::SeqCst), 0, "cancelled work ran");
    for f in fs {
        assert_eq!(f.result(), Err(Error::Cancelled));
    }
}

#[test]
fn shutdown_wait_and_cancel_futures() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let busy = block_worker(&ex, &gate);
    let count = Arc::new(AtomicUsize::new(0));
    let fs = counting_tasks(&ex, 5, &count);
    // Open the gate only once shutdown has cancelled the last queued task
    // (its callback runs on the cancelling thread), so the worker cannot
    // take queued work before shutdown cancels it.
    let (cancelled_tx, cancelled_rx) = mpsc::channel();
    fs.last().unwrap().add_done_callback(move |_| {
        let _ = cancelled_tx.send(());
    });
    let opener = thread::spawn(move || {
        cancelled_rx.recv_timeout(LONG).unwrap();
        gate.open();
    });

    ex.shutdown(true, true);

    assert!(
        busy.done() && !busy.cancelled(),
        "shutdown did not wait for the running task"
    );
    assert!(fs.iter().all(|f| f.cancelled()));
    assert_eq!(count.load(Ordering::SeqCst), 0);
    opener.join().unwrap();
}

#[test]
fn shutdown_after_a_cancelled_submit_does_not_hang() {
    // CPython's test_hang_gh94440.
    let ex = Executor::threads(1);
    assert_eq!(ex.submit(|| 0).unwrap().result(), Ok(0));
    let f = ex.submit(|| 1).unwrap();
    f.cancel();
    within(LONG, move || ex.shutdown(true, false));
}

#[test]
fn shutdown_from_inside_a_task() {
    let ex = Executor::threads(2);
    let inner = ex.clone();
    let f = ex
        .submit(move || {
            inner.shutdown(true, false);
            matches!(inner.submit(|| ()), Err(Error::Shutdown))
        })
        .unwrap();
    assert_eq!(f.result_timeout(LONG), Ok(true));
}

#[test]
fn two_tasks_that_both_shut_down_their_pool_with_wait_both_finish() {
    // Each task's shutdown(wait) waits for the pool's other threads; were
    // each to wait for the other, both would hang (Python answers both
    // with "cannot join current thread").
    within(LONG * 3, || {
        let ex = Executor::threads(2);
        let both_running = Arc::new(Barrier::new(2));
        let task = || {
            let ex = ex.clone();
            let both_running = both_running.clone();
            move || {
                both_running.wait();
                ex.shutdown(true, false);
                matches!(ex.submit(|| ()), Err(Error::Shutdown))
            }
        };
        let a = ex.submit(task()).unwrap();
        let b = ex.submit(task()).unwrap();
        assert_eq!(a.result_timeout(LONG), Ok(true));
        assert_eq!(b.result_timeout(LONG), Ok(true));
    });
}

#[test]
fn shutdown_wait_inside_a_task_still_waits_for_the_other_threads_work() {
    within(LONG * 3, || {
        let ex = Executor::threads(2);
        let gate = Gate::new();
        let busy = block_worker(&ex, &gate);
        let inner = ex.clone();
        let f = ex
            .submit(move || {
                inner.shutdown(true, false);
                busy.done()
            })
            .unwrap();
        let opener = thread::spawn(move || {
            // If the shutdown did not wait for the busy worker, it would
            // very likely return before this sleep ends.
            thread::sleep(Duration::from_millis(50));
            gate.open();
        });
        assert_eq!(
            f.result_timeout(LONG),
            Ok(true),
            "the shutdown returned before the other thread's task ended"
        );
        opener.join().unwrap();
    });
}

// ---- dropping the last clone ----

#[test]
fn dropping_the_last_clone_waits_for_queued_work() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let busy = block_worker(&ex, &gate);
    let count = Arc::new(AtomicUsize::new(0));
    let fs = counting_tasks(&ex, 5, &count);
    let clone = ex.clone();
    drop(ex); // not the last clone: returns at once
    assert!(!busy.done());

    let opener = thread::spawn(move || {
        // If the drop did not wait, it would very likely return before
        // this sleep ends.
        thread::sleep(Duration::from_millis(50));
        gate.open();
    });
    drop(clone);

    assert!(busy.done());
    assert_eq!(count.load(Ordering::SeqCst), 5);
    for (i, f) in fs.into_iter().enumerate() {
        assert!(f.done());
        assert_eq!(f.result(), Ok(i));
    }
    opener.join().unwrap();
}

#[test]
fn dropping_the_last_clone_inside_a_task_does_not_deadlock() {
    let ex = Executor::threads(1);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let last = ex.clone();
    let holder = ex
        .submit(move || {
            go_rx.recv_timeout(LONG).unwrap();
            // The last clone, dropped on the pool's only thread.
            drop(last);
            "dropped"
        })
        .unwrap();
    // Queued behind the holder: still runs after the pool shut down.
    let queued = ex.submit(|| "queued ran").unwrap();
    drop(ex); // the task still holds a clone: returns at once
    go_tx.send(()).unwrap();

    assert_eq!(holder.result_timeout(LONG), Ok("dropped"));
    assert_eq!(queued.result_timeout(LONG), Ok("queued ran"));
}

#[test]
fn dropping_the_last_clone_inside_a_task_with_other_workers_busy() {
    let ex = Executor::threads(3);
    let gate = Gate::new();
    let busy = block_worker(&ex, &gate);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let last = ex.clone();
    let holder = ex
        .submit(move || {
            go_rx.recv_timeout(LONG).unwrap();
            drop(last);
        })
        .unwrap();
    drop(ex);
    go_tx.send(()).unwrap();
    // The drop inside the task must not wait for the busy worker (it would,
    // and could, only by blocking a pool thread).
    assert_eq!(holder.result_timeout(LONG), Ok(()));
    gate.open();
    assert_eq!(busy.result_timeout(LONG), Ok(()));
}

#[test]
fn executor_used_like_pythons_with_block() {
    // CPython's test_context_manager_shutdown.
    let results = within(LONG, || {
        let ex = Executor::threads(5);
        let m = ex.map(|x: i32| x.abs(), -5..5).unwrap();
        let out: Vec<i32> = m.collect::<Result<_, _>>().unwrap();
        drop(ex);
        out
    });
    assert_eq!(results, [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]);
}

/// Submits that race a shutdown (once every thread has started, a submit
/// takes no lock) are either refused with `Shutdown` or run: none is left
/// queued behind the threads' stop marks with a future that never ends.
#[test]
fn submits_racing_a_shutdown_are_refused_or_run() {
    for round in 0..50 {
        let ex = Executor::threads(2);
        // Start both threads so that later submits take the lock-free path.
        let warm: Vec<_> = (0..2).map(|i| ex.submit(move || i).unwrap()).collect();
        for f in warm {
            f.result().unwrap();
        }
        let start = Arc::new(std::sync::Barrier::new(3));
        let submitters: Vec<_> = (0..2)
            .map(|_| {
                let ex = ex.clone();
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    let mut accepted = Vec::new();
                    for i in 0..2_000usize {
                        match ex.submit(move || i) {
                            Ok(f) => accepted.push((i, f)),
                            Err(Error::Shutdown) => break,
                            Err(e) => panic!("round {round}: unexpected {e}"),
                        }
                    }
                    accepted
                })
            })
            .collect();
        start.wait();
        ex.shutdown(false, false);
        for s in submitters {
            for (i, f) in s.join().unwrap() {
                assert_eq!(f.result_timeout(LONG), Ok(i), "round {round}, task {i}");
            }
        }
    }
}
