//! `twinpool::wait` (CPython's test_wait.py): each `ReturnWhen`, futures that
//! were already done, the timeout (returns what it has, never fails), and
//! that `done` and `not_done` keep the input order.

mod common;

use std::thread;
use std::time::Duration;

use common::{block_worker, cancelled, failed, finished, gated, Gate, LONG, SHORT};
use twinpool::{wait, Error, Executor, Future, ReturnWhen};

/// The results of `futures`, in order (they must be done).
fn results<T: Send + 'static>(futures: Vec<Future<T>>) -> Vec<Result<T, Error>> {
    futures
        .into_iter()
        .map(|f| {
            assert!(f.done());
            f.result_timeout(Duration::ZERO)
        })
        .collect()
}

fn panicked(message: &str) -> Error {
    Error::Panicked {
        message: message.into(),
    }
}

#[test]
fn empty_input_returns_at_once() {
    for rw in [
        ReturnWhen::FirstCompleted,
        ReturnWhen::FirstException,
        ReturnWhen::AllCompleted,
    ] {
        let w = wait(Vec::<Future<()>>::new(), None, rw);
        assert!(w.done.is_empty() && w.not_done.is_empty());
    }
}

#[test]
fn first_completed() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let slow = gated(&ex, &gate, 0);
    let quick = ex.submit(|| 42).unwrap();

    let w = wait(vec![slow, quick], None, ReturnWhen::FirstCompleted);

    assert_eq!(results(w.done), [Ok(42)]);
    assert_eq!(w.not_done.len(), 1);
    assert!(!w.not_done[0].done());
    gate.open();
    let slow = w.not_done.into_iter().next().unwrap();
    assert_eq!(slow.result_timeout(LONG), Ok(0));
}

#[test]
fn first_completed_with_some_already_done() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let blocked = gated(&ex, &gate, 0);

    // Returns at once: the blocked task cannot finish until the gate opens.
    let w = wait(
        vec![cancelled(), blocked, finished(5)],
        None,
        ReturnWhen::FirstCompleted,
    );

    assert_eq!(results(w.done), [Err(Error::Cancelled), Ok(5)]);
    assert_eq!(w.not_done.len(), 1);
    assert!(w.not_done[0].running());
}

#[test]
fn first_exception() {
    let ex = Executor::threads(3);
    let ok = ex.submit(|| 42).unwrap();
    assert!(ok.wait_timeout(LONG));

    let fail_gate = Gate::new();
    let w = fail_gate.waiter();
    let failing = ex
        .submit(move || -> i32 {
            w.wait();
            panic!("this is an exception")
        })
        .unwrap();
    let gate = Gate::new();
    let blocked = gated(&ex, &gate, 3);

    let opener = thread::spawn(move || {
        // Makes it likely that wait() is already waiting.
        thread::sleep(Duration::from_millis(20));
        fail_gate.open();
    });
    let w = wait(vec![ok, failing, blocked], None, ReturnWhen::FirstException);
    opener.join().unwrap();

    assert_eq!(
        results(w.done),
        [Ok(42), Err(panicked("this is an exception"))]
    );
    assert_eq!(w.not_done.len(), 1);
    assert!(!w.not_done[0].done());
}

#[test]
fn first_exception_with_one_already_failed() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let blocked = gated(&ex, &gate, 1);

    let w = wait(
        vec![failed("earlier"), blocked],
        None,
        ReturnWhen::FirstException,
    );

    assert_eq!(results(w.done), [Err(panicked("earlier"))]);
    assert_eq!(w.not_done.len(), 1);
}

#[test]
fn first_exception_some_already_done() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let blocked = gated(&ex, &gate, 0);
    let div_by_zero = ex
        .submit(|| -> i32 { panic!("attempt to divide by zero") })
        .unwrap();

    let w = wait(
        vec![finished(1), cancelled(), div_by_zero, blocked],
        None,
        ReturnWhen::FirstException,
    );

    assert_eq!(
        results(w.done),
        [
            Ok(1),
            Err(Error::Cancelled),
            Err(panicked("attempt to divide by zero"))
        ]
    );
    assert_eq!(w.not_done.len(), 1);
}

#[test]
fn first_exception_does_not_count_cancellation() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let later = gated(&ex, &gate, 9);

    let opener = thread::spawn(move || {
        // If wait() wrongly returned at the cancelled future, it would very
        // likely do so before this sleep ends.
        thread::sleep(Duration::from_millis(50));
        gate.open();
    });
    let w = wait(vec![cancelled(), later], None, ReturnWhen::FirstException);
    opener.join().unwrap();

    assert!(w.not_done.is_empty(), "returned at a cancellation");
    assert_eq!(results(w.done), [Err(Error::Cancelled), Ok(9)]);
}

#[test]
fn first_exception_without_failure_waits_for_all() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let a = gated(&ex, &gate, 1);
    let b = ex.submit(|| 2).unwrap();
    let opener = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        gate.open();
    });
    let w = wait(vec![a, b], None, ReturnWhen::FirstException);
    opener.join().unwrap();
    assert!(w.not_done.is_empty());
    assert_eq!(results(w.done), [Ok(1), Ok(2)]);
}

#[test]
fn all_completed() {
    let ex = Executor::threads(2);
    let div = ex.submit(|| -> i32 { panic!("division by zero") }).unwrap();
    let mul = ex.submit(|| 2 * 21).unwrap();

    let w = wait(
        vec![finished(42), cancelled(), failed("oserror"), div, mul],
        None,
        ReturnWhen::AllCompleted,
    );

    assert!(w.not_done.is_empty());
    assert_eq!(
        results(w.done),
        [
            Ok(42),
            Err(Error::Cancelled),
            Err(panicked("oserror")),
            Err(panicked("division by zero")),
            Ok(42)
        ]
    );
}

#[test]
fn done_keeps_input_order_not_completion_order() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let first_in = gated(&ex, &gate, "first in, last done");
    let second_in = ex.submit(|| "second in, first done").unwrap();
    assert!(second_in.wait_timeout(LONG));
    gate.open();

    let w = wait(vec![first_in, second_in], None, ReturnWhen::AllCompleted);

    assert_eq!(
        results(w.done),
        [Ok("first in, last done"), Ok("second in, first done")]
    );
}

#[test]
fn timeout_returns_what_is_done() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let blocked = gated(&ex, &gate, 0);

    let w = wait(
        vec![cancelled(), failed("e"), blocked, finished(1)],
        Some(SHORT),
        ReturnWhen::AllCompleted,
    );

    assert_eq!(
        results(w.done),
        [Err(Error::Cancelled), Err(panicked("e")), Ok(1)]
    );
    assert_eq!(w.not_done.len(), 1);
    assert!(w.not_done[0].running());
    gate.open();
}

#[test]
fn timeout_with_nothing_done_returns_everything_not_done() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let running = gated(&ex, &gate, 0);
    let pending = ex.submit(|| 1).unwrap();
    for rw in [
        ReturnWhen::FirstCompleted,
        ReturnWhen::FirstException,
        ReturnWhen::AllCompleted,
    ] {
        for timeout in [Duration::ZERO, Duration::from_millis(50)] {
            let w = wait(Vec::<Future<i32>>::new(), Some(timeout), rw);
            assert!(w.done.is_empty() && w.not_done.is_empty());
        }
    }
    let w = wait(
        vec![running, pending],
        Some(SHORT),
        ReturnWhen::FirstCompleted,
    );
    assert!(w.done.is_empty());
    assert_eq!(w.not_done.len(), 2);
    let w = wait(w.not_done, Some(Duration::ZERO), ReturnWhen::FirstException);
    assert!(w.done.is_empty());
    assert_eq!(w.not_done.len(), 2);

    gate.open();
    let w = wait(w.not_done, Some(LONG), ReturnWhen::AllCompleted);
    assert!(w.not_done.is_empty());
    assert_eq!(results(w.done), [Ok(0), Ok(1)]);
}

#[test]
fn wakes_when_a_future_is_cancelled() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let _busy = block_worker(&ex, &gate);
    let pending = ex.submit(|| 1).unwrap();
    let canceller = {
        let ex = ex.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            // Cancels `pending`, which wait() below is waiting on.
            ex.shutdown(false, true);
        })
    };
    let w = wait(vec![pending], Some(LONG), ReturnWhen::FirstCompleted);
    canceller.join().unwrap();
    assert_eq!(results(w.done), [Err(Error::Cancelled)]);
}

#[test]
fn many_futures_finishing_together() {
    // CPython's test_pending_calls_race.
    let ex = Executor::threads(4);
    let gate = Gate::new();
    let futures: Vec<Future<usize>> = (0..100)
        .map(|i| {
            let w = gate.waiter();
            ex.submit(move || {
                w.wait();
                i
            })
            .unwrap()
        })
        .collect();
    gate.open();
    let w = wait(futures, None, ReturnWhen::AllCompleted);
    assert!(w.not_done.is_empty());
    let got: Vec<usize> = results(w.done).into_iter().map(Result::unwrap).collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}
