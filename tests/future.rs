//! One `Future` on a thread pool (CPython's test_future.py): the
//! cancel/running/done/cancelled truth table for pending, running, cancelled
//! and finished futures; `result`, `result_timeout`, `wait`, `wait_timeout`;
//! panics turned into `Error::Panicked`; done-callbacks; and the `Send + Sync`
//! guarantee.

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{block_worker, cancelled, failed, finished, gated, thread_name, Gate, LONG, SHORT};
use twinpool::{Error, Executor, Future};

fn panicked(message: &str) -> Error {
    Error::Panicked {
        message: message.into(),
    }
}

#[test]
fn future_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Future<i32>>();
    send_sync::<Future<String>>();
    // Only `T: Send` is needed, not `T: Sync`.
    send_sync::<Future<Cell<u8>>>();
    send_sync::<Error>();
}

#[test]
fn submit_and_result() {
    let ex = Executor::threads(2);
    assert_eq!(ex.submit(|| 2u64.pow(8)).unwrap().result(), Ok(256));
    let s = ex.submit(|| "owned".to_string()).unwrap();
    assert_eq!(s.result().unwrap(), "owned");
}

#[test]
fn pending_future() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let _busy = block_worker(&ex, &gate);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let f = ex.submit(move || r.store(true, Ordering::SeqCst)).unwrap();

    assert!(!f.running());
    assert!(!f.done());
    assert!(!f.cancelled());
    assert!(!f.wait_timeout(Duration::ZERO));

    // Cancelling a pending future succeeds, and again when repeated.
    assert!(f.cancel());
    assert!(f.cancelled());
    assert!(f.done());
    assert!(!f.running());
    assert!(f.cancel());
    assert!(f.cancelled());

    gate.open();
    ex.shutdown(true, false);
    assert!(!ran.load(Ordering::SeqCst), "a cancelled task ran");
    assert_eq!(f.result(), Err(Error::Cancelled));
}

#[test]
fn running_future() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let f = gated(&ex, &gate, 7);

    assert!(f.running());
    assert!(!f.done());
    assert!(!f.cancelled());
    // A running task cannot be cancelled, and stays running.
    assert!(!f.cancel());
    assert!(f.running());
    assert!(!f.cancelled());
    assert!(!f.done());

    gate.open();
    assert_eq!(f.result_timeout(LONG), Ok(7));
}

#[test]
fn cancelled_future() {
    let f = cancelled::<i32>();
    assert!(f.cancelled());
    assert!(f.done());
    assert!(!f.running());
    assert!(f.cancel());
    assert!(f.wait_timeout(Duration::ZERO));
    assert_eq!(f.result_timeout(Duration::ZERO), Err(Error::Cancelled));
}

#[test]
fn finished_future() {
    let f = finished(42);
    assert!(f.done());
    assert!(!f.running());
    assert!(!f.cancelled());
    assert!(!f.cancel());
    assert!(!f.cancelled());
    assert!(f.wait_timeout(Duration::ZERO));
    assert_eq!(f.result_timeout(Duration::ZERO), Ok(42));
}

#[test]
fn failed_future() {
    let f = failed::<i32>("broken");
    assert!(f.done());
    assert!(!f.running());
    assert!(!f.cancelled());
    assert!(!f.cancel());
    assert_eq!(f.result_timeout(Duration::ZERO), Err(panicked("broken")));
}

#[test]
fn result_timeout_on_running_task_times_out_and_the_task_keeps_running() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let w = gate.waiter();
    let f = ex
        .submit(move || {
            started_tx.send(()).unwrap();
            w.wait();
            done_tx.send(()).unwrap();
            7
        })
        .unwrap();
    started_rx.recv_timeout(LONG).unwrap();

    assert_eq!(f.result_timeout(SHORT), Err(Error::Timeout));

    gate.open();
    done_rx
        .recv_timeout(LONG)
        .expect("the task stopped when its result timed out");
}

#[test]
fn result_timeout_on_pending_task_does_not_cancel_it() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let _busy = block_worker(&ex, &gate);
    let (done_tx, done_rx) = mpsc::channel();
    let f = ex.submit(move || done_tx.send(()).unwrap()).unwrap();

    assert_eq!(f.result_timeout(SHORT), Err(Error::Timeout));

    gate.open();
    done_rx
        .recv_timeout(LONG)
        .expect("the queued task never ran after its result timed out");
}

#[test]
fn wait_timeout_and_wait() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let f = gated(&ex, &gate, 3);
    assert!(!f.wait_timeout(SHORT));
    assert!(!f.done());

    let opener = thread::spawn(move || {
        // Makes it likely that `wait` below really blocks.
        thread::sleep(Duration::from_millis(50));
        gate.open();
    });
    f.wait();
    assert!(f.done());
    assert!(f.wait_timeout(Duration::ZERO));
    assert_eq!(f.result(), Ok(3));
    opener.join().unwrap();
}

#[test]
fn result_on_another_thread() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let f = gated(&ex, &gate, "hello");
    let waiter = thread::spawn(move || f.result());
    gate.open();
    assert_eq!(waiter.join().unwrap(), Ok("hello"));
}

#[test]
fn wait_wakes_up_when_the_future_is_cancelled() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let _busy = block_worker(&ex, &gate);
    // A Future is Sync: one thread waits on it while another cancels it.
    let f = Arc::new(ex.submit(|| 1).unwrap());
    let waiter = {
        let f = f.clone();
        thread::spawn(move || {
            f.wait();
            f.cancelled()
        })
    };
    // Makes it likely that the waiter is asleep in wait() by now.
    thread::sleep(Duration::from_millis(50));
    assert!(f.cancel());
    assert!(
        waiter.join().unwrap(),
        "wait() returned but the future was not cancelled"
    );
    let f = Arc::try_unwrap(f).unwrap();
    assert_eq!(f.result(), Err(Error::Cancelled));
}

#[test]
fn panic_messages() {
    let ex = Executor::threads(1);
    let s = ex.submit(|| -> i32 { panic!("a str payload") }).unwrap();
    assert_eq!(s.result(), Err(panicked("a str payload")));

    let n = 42;
    let s = ex
        .submit(move || -> i32 { panic!("a String payload {n}") })
        .unwrap();
    assert_eq!(s.result(), Err(panicked("a String payload 42")));

    let s = ex
        .submit(|| -> i32 { std::panic::panic_any(String::from("owned")) })
        .unwrap();
    assert_eq!(s.result(), Err(panicked("owned")));

    let s = ex.submit(|| -> i32 { std::panic::panic_any(7u8) }).unwrap();
    assert_eq!(
        s.result(),
        Err(panicked(
            "the task panicked with a value that is not a string"
        ))
    );

    // The one worker survived all of that.
    assert_eq!(ex.submit(|| 5).unwrap().result_timeout(LONG), Ok(5));
}

#[test]
fn panicked_error_displays_the_message() {
    let f = failed::<()>("disk full");
    let e = f.result().unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
}

// ---- done-callbacks ----

#[test]
fn callback_runs_on_completion_on_the_completing_thread() {
    let ex = Executor::builder()
        .threads(1)
        .thread_name_prefix("cbpool")
        .build()
        .unwrap();
    let gate = Gate::new();
    let f = gated(&ex, &gate, 5);
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    f.add_done_callback(move |r: &Result<i32, Error>| {
        *s.lock().unwrap() = Some((r.clone(), thread_name()));
    });
    assert!(
        seen.lock().unwrap().is_none(),
        "callback ran before the task ended"
    );

    gate.open();
    assert_eq!(f.result_timeout(LONG), Ok(5));
    // Callbacks added before completion have run when result() returns.
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some((Ok(5), "cbpool_0".to_string()))
    );
}

#[test]
fn callback_sees_a_panic() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let w = gate.waiter();
    let f = ex
        .submit(move || -> i32 {
            w.wait();
            panic!("kaboom")
        })
        .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    f.add_done_callback(move |r| *s.lock().unwrap() = Some(r.clone()));
    gate.open();
    assert_eq!(f.result_timeout(LONG), Err(panicked("kaboom")));
    assert_eq!(seen.lock().unwrap().clone(), Some(Err(panicked("kaboom"))));
}

#[test]
fn callbacks_run_once_in_the_order_added() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let f = gated(&ex, &gate, ());
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..5 {
        let o = order.clone();
        f.add_done_callback(move |_| o.lock().unwrap().push(i));
    }
    gate.open();
    f.result_timeout(LONG).unwrap();
    ex.shutdown(true, false);
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
}

#[test]
fn callback_on_finished_future_runs_at_once_on_the_callers_thread() {
    let f = finished(5);
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    f.add_done_callback(move |r| *s.lock().unwrap() = Some((r.clone(), thread::current().id())));
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some((Ok(5), thread::current().id()))
    );
    // The result is still there.
    assert_eq!(f.result(), Ok(5));
}

#[test]
fn callback_on_failed_future_runs_at_once() {
    let f = failed::<i32>("test");
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    f.add_done_callback(move |r| *s.lock().unwrap() = Some(r.clone()));
    assert_eq!(seen.lock().unwrap().clone(), Some(Err(panicked("test"))));
}

#[test]
fn callback_runs_on_cancel_with_cancelled() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let _busy = block_worker(&ex, &gate);
    let f = ex.submit(|| 1).unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    f.add_done_callback(move |r| *s.lock().unwrap() = Some((r.clone(), thread::current().id())));
    assert!(seen.lock().unwrap().is_none());

    assert!(f.cancel());
    // It ran inside cancel(), on this thread.
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some((Err(Error::Cancelled), thread::current().id()))
    );
}

#[test]
fn callback_on_cancelled_future_runs_at_once_with_cancelled() {
    let f = cancelled::<i32>();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    f.add_done_callback(move |r| *s.lock().unwrap() = Some(r.clone()));
    assert_eq!(seen.lock().unwrap().clone(), Some(Err(Error::Cancelled)));
}

#[test]
fn panicking_callback_does_not_stop_the_others_or_the_pool() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let f = gated(&ex, &gate, 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    f.add_done_callback(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        panic!("doh!");
    });
    let c = calls.clone();
    f.add_done_callback(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    gate.open();
    assert_eq!(f.result_timeout(LONG), Ok(1));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // The only worker thread survived the panicking callback.
    assert_eq!(ex.submit(|| 2).unwrap().result_timeout(LONG), Ok(2));
}

#[test]
fn panicking_callback_on_finished_future_is_caught() {
    let f = finished(1);
    f.add_done_callback(|_| panic!("doh!"));
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    f.add_done_callback(move |_| r.store(true, Ordering::SeqCst));
    assert!(ran.load(Ordering::SeqCst));
    // The future still works.
    assert!(f.done());
    assert_eq!(f.result(), Ok(1));
}

#[test]
fn callback_on_a_finished_future_may_use_that_future() {
    // No lock is held while the callback runs: touching the same future from
    // inside it must not hang.
    let fut = Arc::new(finished(5_u32));
    let (tx, rx) = mpsc::channel();
    let inner = fut.clone();
    let seen = common::within(LONG, move || {
        fut.add_done_callback(move |r| {
            let again = inner.clone();
            // A callback added from inside a callback runs too.
            inner.add_done_callback(move |r2| {
                tx.send((*r2.as_ref().unwrap(), again.done())).unwrap();
            });
            assert_eq!(r, &Ok(5));
            assert!(inner.done());
            assert!(!inner.cancel());
        });
        rx.recv_timeout(LONG).unwrap()
    });
    assert_eq!(seen, (5, true));
}

/// Callbacks added while tasks are completing on other threads (the race
/// the lock-free completion has to get right): each runs exactly once,
/// with the task's result, and before `result()` returns.
#[test]
fn callbacks_racing_completion_each_run_once_before_result() {
    let ex = Executor::threads(2);
    for round in 0..20 {
        let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..500).map(|_| AtomicUsize::new(0)).collect());
        let futures: Vec<_> = (0..500usize)
            .map(|i| {
                let f = ex.submit(move || i * 3).unwrap();
                let runs = runs.clone();
                f.add_done_callback(move |r| {
                    assert_eq!(r, &Ok(i * 3));
                    runs[i].fetch_add(1, Ordering::SeqCst);
                });
                f
            })
            .collect();
        for (i, f) in futures.into_iter().enumerate() {
            assert_eq!(f.result(), Ok(i * 3), "round {round}");
            assert_eq!(runs[i].load(Ordering::SeqCst), 1, "round {round}, task {i}");
        }
    }
}

/// Cancels racing the workers' claims: every task either ran once and
/// finished, or never ran and is cancelled, never both or neither.
#[test]
fn cancels_racing_claims_leave_each_task_run_once_or_cancelled() {
    let ex = Executor::threads(2);
    for round in 0..20 {
        let ran: Arc<Vec<AtomicUsize>> = Arc::new((0..500).map(|_| AtomicUsize::new(0)).collect());
        let futures: Vec<_> = (0..500usize)
            .map(|i| {
                let ran = ran.clone();
                ex.submit(move || {
                    ran[i].fetch_add(1, Ordering::SeqCst);
                    i
                })
                .unwrap()
            })
            .collect();
        let cancelled: Vec<bool> = futures.iter().rev().map(|f| f.cancel()).collect();
        for (i, (f, was_cancelled)) in futures
            .into_iter()
            .zip(cancelled.into_iter().rev())
            .enumerate()
        {
            let result = f.result();
            let runs = ran[i].load(Ordering::SeqCst);
            if was_cancelled {
                assert_eq!(
                    (result, runs),
                    (Err(Error::Cancelled), 0),
                    "round {round}, task {i}"
                );
            } else {
                assert_eq!((result, runs), (Ok(i), 1), "round {round}, task {i}");
            }
        }
    }
}

/// Waiters that go to sleep while tasks complete (the `SLOW` path) are all
/// woken: many threads each wait on every future of a batch.
#[test]
fn sleeping_waiters_racing_completion_are_all_woken() {
    let ex = Executor::threads(2);
    for _ in 0..10 {
        let futures: Arc<Vec<Future<usize>>> = Arc::new(
            (0..200usize)
                .map(|i| {
                    ex.submit(move || {
                        // Long enough that some waiters give up spinning.
                        thread::sleep(Duration::from_micros(if i % 50 == 0 { 200 } else { 0 }));
                        i
                    })
                    .unwrap()
                })
                .collect(),
        );
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let futures = futures.clone();
                thread::spawn(move || futures.iter().all(|f| f.wait_timeout(LONG)))
            })
            .collect();
        for w in waiters {
            assert!(
                w.join().unwrap(),
                "a waiter timed out: a completion missed it"
            );
        }
    }
}

// ---- the order of completion and callbacks (Python's) ----

/// As in Python, a future is published as done (its waiters woken) before
/// its done-callbacks run: inside a callback, the future is done.
#[test]
fn a_done_callback_sees_its_future_done() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let f = Arc::new(gated(&ex, &gate, 5));
    let (tx, rx) = mpsc::channel();
    let inner = f.clone();
    f.add_done_callback(move |r| {
        tx.send((r.clone(), inner.done(), inner.running())).unwrap();
    });
    gate.open();
    let seen = rx.recv_timeout(LONG).expect("the callback did not run");
    assert_eq!(seen, (Ok(5), true, false));
}

/// A callback that waits on its own future returns from that wait at once:
/// the future is done before its callbacks run. (Were the callbacks run
/// first, the completing thread would wait for itself.)
#[test]
fn a_done_callback_waiting_on_its_own_future_returns_at_once() {
    // On a helper thread: were the callback's wait to hang, the pool could
    // not shut down, and the test must fail rather than hang.
    let (done, untimed_returned) = common::within(LONG * 3, || {
        let ex = Executor::threads(1);
        let gate = Gate::new();
        let f = Arc::new(gated(&ex, &gate, 5));
        let (tx, rx) = mpsc::channel();
        let inner = f.clone();
        f.add_done_callback(move |_| {
            let done = inner.wait_timeout(LONG);
            inner.wait();
            tx.send((done, true)).unwrap();
        });
        gate.open();
        let seen = rx
            .recv_timeout(LONG * 2)
            .expect("the callback did not report");
        // The pool's thread is free again.
        assert_eq!(ex.submit(|| 6).unwrap().result_timeout(LONG), Ok(6));
        seen
    });
    assert!(done, "wait_timeout inside the callback timed out");
    assert!(untimed_returned);
}

/// The same for a future that is cancelled: inside its callback it is
/// cancelled and done, and a wait on it returns at once.
#[test]
fn a_done_callback_of_a_cancelled_future_sees_it_done() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let _busy = block_worker(&ex, &gate);
    let f = Arc::new(ex.submit(|| 1).unwrap());
    let (tx, rx) = mpsc::channel();
    let inner = f.clone();
    f.add_done_callback(move |r| {
        let waited = inner.wait_timeout(LONG);
        tx.send((r.clone(), inner.done(), inner.cancelled(), waited))
            .unwrap();
    });
    assert!(f.cancel());
    let seen = rx.recv_timeout(LONG * 2).expect("the callback did not run");
    assert_eq!(seen, (Err(Error::Cancelled), true, true, true));
}

/// `wait` returns once the future is published, while its callbacks may
/// still run; `result` (which moves the outcome the callbacks borrow) waits
/// for them to finish.
#[test]
fn result_waits_for_the_done_callbacks_while_wait_does_not() {
    let ex = Executor::threads(1);
    let task_gate = Gate::new();
    let f = gated(&ex, &task_gate, 5);
    let callback_gate = Gate::new();
    let held = callback_gate.waiter();
    let (in_callback_tx, in_callback) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let fin = finished.clone();
    f.add_done_callback(move |r| {
        in_callback_tx.send(()).unwrap();
        held.wait();
        assert_eq!(r, &Ok(5));
        fin.store(true, Ordering::SeqCst);
    });
    task_gate.open();
    in_callback
        .recv_timeout(LONG)
        .expect("the callback did not run");
    // The callback is held: the future is done all the same.
    assert!(f.done());
    assert!(f.wait_timeout(Duration::ZERO));
    let opener = thread::spawn(move || {
        // Makes it likely that result() below really waits for the callback.
        thread::sleep(Duration::from_millis(50));
        callback_gate.open();
    });
    assert_eq!(f.result_timeout(LONG), Ok(5));
    assert!(
        finished.load(Ordering::SeqCst),
        "result() returned while a callback still borrowed the outcome"
    );
    opener.join().unwrap();
}
