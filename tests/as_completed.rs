//! `twinpool::as_completed` (CPython's test_as_completed.py): futures already
//! done come first, the rest in the order they finish; the timeout yields
//! `Err(Timeout)` once and ends, and `into_remaining` gives back what had not
//! finished.

mod common;

use std::thread;
use std::time::Duration;

use common::{block_worker, cancelled, failed, finished, gated, Gate, LONG, SHORT};
use twinpool::{as_completed, Error, Executor, Future};

fn panicked(message: &str) -> Error {
    Error::Panicked {
        message: message.into(),
    }
}

/// The result of a yielded future (it must be done).
fn value<T: Send + 'static>(item: Option<Result<Future<T>, Error>>) -> Result<T, Error> {
    let f = item
        .expect("as_completed ended early")
        .expect("as_completed failed");
    assert!(f.done(), "as_completed yielded a future that is not done");
    f.result_timeout(Duration::ZERO)
}

#[test]
fn no_timeout_yields_every_future_once() {
    let ex = Executor::threads(2);
    let fs = vec![
        cancelled(),
        failed("oserror"),
        finished(1),
        ex.submit(|| 2 * 21).unwrap(),
        ex.submit(|| 7 * 6).unwrap(),
    ];
    let mut got: Vec<String> = as_completed(fs, None)
        .map(|f| format!("{:?}", f.unwrap().result()))
        .collect();
    got.sort();
    let mut want: Vec<String> = [
        Err(Error::Cancelled),
        Err(panicked("oserror")),
        Ok(1),
        Ok(42),
        Ok(42),
    ]
    .iter()
    .map(|r| format!("{r:?}"))
    .collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn empty_input_ends_at_once() {
    assert!(as_completed(Vec::<Future<()>>::new(), None)
        .next()
        .is_none());
    assert!(as_completed(Vec::<Future<()>>::new(), Some(Duration::ZERO))
        .next()
        .is_none());
}

#[test]
fn already_done_futures_come_first_in_input_order() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let blocked = gated(&ex, &gate, 0);
    let mut it = as_completed(vec![blocked, finished(1), failed("x"), cancelled()], None);
    // None of these may wait: the blocked task cannot finish yet.
    assert_eq!(value(it.next()), Ok(1));
    assert_eq!(value(it.next()), Err(panicked("x")));
    assert_eq!(value(it.next()), Err(Error::Cancelled));
    gate.open();
    assert_eq!(value(it.next()), Ok(0));
    assert!(it.next().is_none());
}

#[test]
fn yields_in_completion_order() {
    let ex = Executor::threads(3);
    let gates = [Gate::new(), Gate::new(), Gate::new()];
    let fs: Vec<Future<usize>> = gates
        .iter()
        .enumerate()
        .map(|(i, g)| gated(&ex, g, i))
        .collect();
    let mut it = as_completed(fs, Some(LONG));
    // Only the task whose gate is open can finish, so each step has one
    // right answer.
    for i in [2, 0, 1] {
        gates[i].open();
        assert_eq!(value(it.next()), Ok(i));
    }
    assert!(it.next().is_none());
}

#[test]
fn timeout_yields_timeout_once_then_ends() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let blocked = gated(&ex, &gate, 7);
    let mut it = as_completed(vec![finished(1), blocked, cancelled()], Some(SHORT));

    assert_eq!(value(it.next()), Ok(1));
    assert_eq!(value(it.next()), Err(Error::Cancelled));
    assert_eq!(it.next().map(|r| r.map(|_| ())), Some(Err(Error::Timeout)));
    assert!(it.next().is_none());
    assert!(it.next().is_none());

    let rest = it.into_remaining();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].running());
    gate.open();
    let f = rest.into_iter().next().unwrap();
    assert_eq!(f.result_timeout(LONG), Ok(7));
}

#[test]
fn zero_timeout_still_yields_what_is_done() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let blocked = gated(&ex, &gate, 0);
    let pending = ex.submit(|| 0).unwrap();
    let mut it = as_completed(
        vec![cancelled(), pending, blocked, finished(3)],
        Some(Duration::ZERO),
    );
    assert_eq!(value(it.next()), Err(Error::Cancelled));
    assert_eq!(value(it.next()), Ok(3));
    assert!(matches!(it.next(), Some(Err(Error::Timeout))));
    assert!(it.next().is_none());
    let rest = it.into_remaining();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|f| !f.done()));
}

#[test]
fn timeout_never_fires_when_everything_is_done() {
    let it = as_completed(vec![finished(1), finished(2)], Some(Duration::ZERO));
    let got: Vec<i32> = it.map(|f| f.unwrap().result().unwrap()).collect();
    assert_eq!(got, [1, 2]);
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
            // Makes it likely that as_completed is already waiting.
            thread::sleep(Duration::from_millis(20));
            ex.shutdown(false, true);
        })
    };
    let mut it = as_completed(vec![pending], Some(LONG));
    assert_eq!(value(it.next()), Err(Error::Cancelled));
    assert!(it.next().is_none());
    canceller.join().unwrap();
}

#[test]
fn as_completed_accepts_any_iterator() {
    let ex = Executor::threads(2);
    let total: i32 = as_completed((1..=4).map(|i| ex.submit(move || i).unwrap()), None)
        .map(|f| f.unwrap().result().unwrap())
        .sum();
    assert_eq!(total, 10);
}
