//! `Executor::map` and `map_with` (CPython's executor.py map tests and 3.14's
//! buffersize tests): input order whatever the completion order, stopping
//! at the first failed item, the timeout counted from the call, chunks,
//! a bounded look-ahead over lazy (even infinite) input, option validation,
//! and dropping a `Map` cancelling what has not started.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{block_worker, Gate, LONG, SHORT};
use twinpool::{Error, Executor, MapOptions};

fn panicked(message: &str) -> Error {
    Error::Panicked {
        message: message.into(),
    }
}

fn opts() -> MapOptions {
    MapOptions::default()
}

/// A long input that counts how many items were pulled from it. (Finite,
/// so that a map that ignores `buffersize` fails an assertion instead of
/// pulling forever.)
fn counted(pulls: &Arc<AtomicUsize>) -> impl Iterator<Item = u64> + Send + 'static {
    let pulls = pulls.clone();
    (0u64..100_000).inspect(move |_| {
        pulls.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn map_options_default() {
    let o = MapOptions::default();
    assert_eq!(o.timeout, None);
    assert_eq!(o.chunksize, 1);
    assert_eq!(o.buffersize, None);
}

#[test]
fn map_gives_results_in_input_order() {
    let ex = Executor::threads(3);
    let got: Vec<u64> = ex
        .map(|x: u64| x.pow(2), 0..10)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..10).map(|x: u64| x.pow(2)).collect::<Vec<_>>());
}

#[test]
fn map_keeps_input_order_when_tasks_finish_in_reverse() {
    const N: usize = 4;
    let ex = Executor::threads(N);
    // Task i may finish only after task i + 1 has: gates[i] is opened by
    // task i + 1 as it ends, so they finish in reverse input order.
    let gates: Arc<Vec<Gate>> = Arc::new((0..N).map(|_| Gate::new()).collect());
    let finish_order = Arc::new(Mutex::new(Vec::new()));
    let (g, order) = (gates.clone(), finish_order.clone());
    let m = ex
        .map(
            move |i: usize| {
                if i + 1 < N {
                    g[i].waiter().wait();
                }
                order.lock().unwrap().push(i);
                if i > 0 {
                    g[i - 1].open();
                }
                i * 10
            },
            0..N,
        )
        .unwrap();
    let got: Vec<usize> = m.collect::<Result<_, _>>().unwrap();
    assert_eq!(got, [0, 10, 20, 30]);
    assert_eq!(*finish_order.lock().unwrap(), [3, 2, 1, 0]);
}

#[test]
fn map_stops_at_the_first_failed_item() {
    let ex = Executor::threads(2);
    let mut m = ex
        .map(
            |x: i32| {
                if x == 2 {
                    panic!("division by zero")
                }
                x
            },
            0..6,
        )
        .unwrap();
    assert_eq!(m.next(), Some(Ok(0)));
    assert_eq!(m.next(), Some(Ok(1)));
    assert_eq!(m.next(), Some(Err(panicked("division by zero"))));
    assert_eq!(m.next(), None);
    assert_eq!(m.next(), None);
}

#[test]
fn map_submits_everything_without_iteration() {
    // CPython's test_map_submits_without_iteration (bpo-11777).
    let ex = Executor::threads(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _m = ex
        .map(move |x: i32| s.lock().unwrap().push(x), 0..10)
        .unwrap();
    ex.shutdown(true, false);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}

#[test]
fn map_over_empty_input() {
    let ex = Executor::threads(1);
    assert_eq!(ex.map(|x: i32| x, Vec::new()).unwrap().count(), 0);
    let with = MapOptions {
        buffersize: Some(2),
        chunksize: 3,
        timeout: Some(LONG),
    };
    assert_eq!(
        ex.map_with(|x: i32| x, Vec::new(), with).unwrap().count(),
        0
    );
}

// ---- timeout ----

#[test]
fn map_timeout_yields_timeout_once_then_ends() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let w = gate.waiter();
    let (first_done_tx, first_done_rx) = mpsc::channel();
    let mut m = ex
        .map_with(
            move |x: i32| {
                if x == 1 {
                    w.wait();
                } else if x == 0 {
                    first_done_tx.send(()).unwrap();
                }
                x
            },
            vec![0, 1, 2],
            MapOptions {
                timeout: Some(Duration::from_secs(1)),
                ..opts()
            },
        )
        .unwrap();
    // Item 0 is done well before the deadline; item 1 stays blocked.
    first_done_rx.recv_timeout(LONG).unwrap();
    assert_eq!(m.next(), Some(Ok(0)));
    assert_eq!(m.next(), Some(Err(Error::Timeout)));
    assert_eq!(m.next(), None);
    assert_eq!(m.next(), None);
}

#[test]
fn map_timeout_counts_from_the_call() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let w = gate.waiter();
    let mut m = ex
        .map_with(
            move |x: i32| {
                w.wait();
                x
            },
            vec![0],
            MapOptions {
                timeout: Some(TIMEOUT),
                ..opts()
            },
        )
        .unwrap();
    // The deadline passes before the first next(); a timeout counted from
    // next() would make it wait a further TIMEOUT.
    thread::sleep(TIMEOUT + Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(m.next(), Some(Err(Error::Timeout)));
    let waited = start.elapsed();
    assert!(
        waited < TIMEOUT,
        "next() waited {waited:?}: the timeout was counted from next(), not from map()"
    );
}

#[test]
fn map_timeout_cancels_what_has_not_started() {
    // CPython's test_executor_map_current_future_cancel.
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let first = block_worker(&ex, &gate);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let mut m = ex
        .map_with(
            move |s: &'static str| r.lock().unwrap().push(s),
            ["second", "third"],
            MapOptions {
                timeout: Some(Duration::ZERO),
                ..opts()
            },
        )
        .unwrap();
    assert_eq!(m.next(), Some(Err(Error::Timeout)));
    assert_eq!(m.next(), None);
    gate.open();
    first.result_timeout(LONG).unwrap();
    ex.shutdown(true, false);
    // "second" was the item being waited on when the timeout fired, "third"
    // was still queued: neither may run.
    assert_eq!(*ran.lock().unwrap(), Vec::<&str>::new());
}

// ---- chunksize ----

#[test]
fn chunksize_keeps_input_order() {
    let ex = Executor::threads(3);
    for chunksize in [1, 2, 3, 7, 10, 11, 100] {
        let got: Vec<u64> = ex
            .map_with(
                |x: u64| x * x,
                0..10,
                MapOptions {
                    chunksize,
                    ..opts()
                },
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            got,
            (0..10).map(|x| x * x).collect::<Vec<_>>(),
            "chunksize {chunksize}"
        );
    }
}

#[test]
fn chunksize_runs_a_chunk_as_one_task() {
    // Item 0 blocks its chunk [0..5]; the other chunk [5..10] runs on the
    // second worker meanwhile. Items 1..5 must wait for item 0, as they are
    // in its task; as separate tasks they would run on the second worker.
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let w = gate.waiter();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let m = ex
        .map_with(
            move |x: i32| {
                if x == 0 {
                    w.wait();
                }
                r.lock().unwrap().push(x);
                x
            },
            0..10,
            MapOptions {
                chunksize: 5,
                ..opts()
            },
        )
        .unwrap();
    common::eventually("the second chunk ran", || ran.lock().unwrap().len() >= 5);
    // Makes it likely that a wrongly separate item 1 would have run by now.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(*ran.lock().unwrap(), [5, 6, 7, 8, 9]);
    gate.open();
    let got: Vec<i32> = m.collect::<Result<_, _>>().unwrap();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(*ran.lock().unwrap(), [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]);
}

#[test]
fn panic_in_the_middle_of_a_chunk() {
    let ex = Executor::threads(2);
    let mut m = ex
        .map_with(
            |x: i32| {
                if x == 6 {
                    panic!("bad item {x}");
                }
                x
            },
            0..12,
            MapOptions {
                chunksize: 4,
                ..opts()
            },
        )
        .unwrap();
    // The chunk [4, 5, 6, 7] gives 4 and 5, then the error.
    for i in 0..6 {
        assert_eq!(m.next(), Some(Ok(i)));
    }
    assert_eq!(m.next(), Some(Err(panicked("bad item 6"))));
    assert_eq!(m.next(), None);
}

// ---- buffersize ----

#[test]
fn buffersize_limits_how_far_the_input_is_pulled() {
    let ex = Executor::threads(2);
    let pulls = Arc::new(AtomicUsize::new(0));
    let mut m = ex
        .map_with(
            |x: u64| x * 2,
            counted(&pulls),
            MapOptions {
                buffersize: Some(3),
                ..opts()
            },
        )
        .unwrap();
    assert!(pulls.load(Ordering::SeqCst) <= 3);
    for k in 1..=20u64 {
        assert_eq!(m.next(), Some(Ok(2 * (k - 1))));
        let p = pulls.load(Ordering::SeqCst) as u64;
        assert!(
            (k..=k + 3).contains(&p),
            "{p} items pulled after {k} were yielded (buffersize 3)"
        );
    }
    drop(m);
    // Nothing pulls the input once the Map is gone.
    let after = pulls.load(Ordering::SeqCst);
    ex.shutdown(true, false);
    assert_eq!(pulls.load(Ordering::SeqCst), after);
}

#[test]
fn buffersize_with_chunks_limits_the_pull_too() {
    let ex = Executor::threads(2);
    let pulls = Arc::new(AtomicUsize::new(0));
    let mut m = ex
        .map_with(
            |x: u64| x + 1,
            counted(&pulls),
            MapOptions {
                buffersize: Some(5),
                chunksize: 2,
                ..opts()
            },
        )
        .unwrap();
    assert!(pulls.load(Ordering::SeqCst) <= 5);
    for k in 1..=30u64 {
        assert_eq!(m.next(), Some(Ok(k)));
        let p = pulls.load(Ordering::SeqCst) as u64;
        assert!(
            (k..=k + 5).contains(&p),
            "{p} items pulled after {k} were yielded (buffersize 5)"
        );
    }
}

#[test]
fn buffersize_over_an_infinite_input_with_take() {
    let ex = Executor::threads(2);
    let got: Vec<u64> = ex
        .map_with(
            |x: u64| x * 3,
            0u64..,
            MapOptions {
                buffersize: Some(4),
                chunksize: 10,
                ..opts()
            },
        )
        .unwrap()
        .take(25)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..25).map(|x| x * 3).collect::<Vec<_>>());
}

#[test]
fn buffersize_larger_than_the_input() {
    let ex = Executor::threads(2);
    let got: Vec<i32> = ex
        .map_with(
            |x: i32| -x,
            vec![1, 2, 3],
            MapOptions {
                buffersize: Some(100),
                ..opts()
            },
        )
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, [-1, -2, -3]);
}

#[test]
fn buffersize_does_not_submit_past_a_full_buffer() {
    // Even when every submitted task has finished, nothing more is
    // submitted until the consumer takes a result.
    let ex = Executor::threads(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let mut m = ex
        .map_with(
            move |x: u64| {
                r.fetch_add(1, Ordering::SeqCst);
                x
            },
            0u64..10_000,
            MapOptions {
                buffersize: Some(2),
                ..opts()
            },
        )
        .unwrap();
    common::eventually("the first two items ran", || {
        ran.load(Ordering::SeqCst) == 2
    });
    // Makes a wrong extra submission likely to have run by now.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert_eq!(m.next(), Some(Ok(0)));
    common::eventually("a third item ran", || ran.load(Ordering::SeqCst) == 3);
}

#[test]
fn invalid_map_options() {
    let ex = Executor::threads(1);
    let zero_chunk = MapOptions {
        chunksize: 0,
        ..opts()
    };
    assert!(matches!(
        ex.map_with(|x: i32| x, 0..3, zero_chunk),
        Err(Error::InvalidArgument { .. })
    ));
    let zero_buffer = MapOptions {
        buffersize: Some(0),
        ..opts()
    };
    assert!(matches!(
        ex.map_with(|x: i32| x, 0..3, zero_buffer),
        Err(Error::InvalidArgument { .. })
    ));
    // Also over an infinite input, which must not be pulled at all.
    let zero_buffer = MapOptions {
        buffersize: Some(0),
        ..opts()
    };
    assert!(matches!(
        ex.map_with(|x: u64| x, 0u64.., zero_buffer),
        Err(Error::InvalidArgument { .. })
    ));
}

// ---- dropping a Map ----

#[test]
fn dropping_a_map_cancels_what_has_not_started() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let busy = block_worker(&ex, &gate);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let m = ex
        .map(move |x: i32| r.lock().unwrap().push(x), 0..5)
        .unwrap();
    drop(m);
    gate.open();
    busy.result_timeout(LONG).unwrap();
    ex.shutdown(true, false);
    assert_eq!(*ran.lock().unwrap(), Vec::<i32>::new());
}

#[test]
fn dropping_a_partly_consumed_map_lets_the_running_item_finish() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let w = gate.waiter();
    let (started_tx, started_rx) = mpsc::channel();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let mut m = ex
        .map(
            move |x: i32| {
                if x == 1 {
                    started_tx.send(()).unwrap();
                    w.wait();
                }
                r.lock().unwrap().push(x);
                x
            },
            0..6,
        )
        .unwrap();
    assert_eq!(m.next(), Some(Ok(0)));
    started_rx.recv_timeout(LONG).unwrap();
    drop(m); // item 1 is running, items 2..6 are queued
    gate.open();
    ex.shutdown(true, false);
    assert_eq!(*ran.lock().unwrap(), [0, 1]);
}

#[test]
fn dropping_a_lazy_map_cancels_what_it_submitted() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let busy = block_worker(&ex, &gate);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let m = ex
        .map_with(
            move |_: u64| {
                r.fetch_add(1, Ordering::SeqCst);
            },
            0u64..1_000,
            MapOptions {
                buffersize: Some(3),
                ..opts()
            },
        )
        .unwrap();
    drop(m);
    gate.open();
    busy.result_timeout(LONG).unwrap();
    ex.shutdown(true, false);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn results_can_outlive_the_executor() {
    // CPython's test_del_shutdown: dropping the executor waits for the
    // submitted items, whose results stay readable.
    let ex = Executor::threads(3);
    let m = ex.map(|x: i32| x.abs(), -5..5).unwrap();
    drop(ex);
    let got: Vec<i32> = m.collect::<Result<_, _>>().unwrap();
    assert_eq!(got, [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]);
}

#[test]
fn map_timeout_short_when_items_are_blocked() {
    // The whole map shares one deadline: with every item blocked, the first
    // next() times out and the iterator ends.
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let w = gate.waiter();
    let mut m = ex
        .map_with(
            move |x: i32| {
                w.wait();
                x
            },
            0..4,
            MapOptions {
                timeout: Some(SHORT),
                ..opts()
            },
        )
        .unwrap();
    assert_eq!(m.next(), Some(Err(Error::Timeout)));
    assert_eq!(m.next(), None);
}

#[test]
fn map_options_built_by_methods() {
    let ex = Executor::threads(2);
    let opts = MapOptions::new()
        .chunksize(3)
        .buffersize(2)
        .timeout(Duration::MAX);
    assert_eq!(opts.chunksize, 3);
    assert_eq!(opts.buffersize, Some(2));
    // Duration::MAX is no deadline at all, not an overflow.
    let out: Vec<u64> = ex
        .map_with(|x: u64| x * 2, 0..10, opts)
        .expect("map")
        .collect::<Result<_, _>>()
        .expect("results");
    assert_eq!(out, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    assert!(matches!(
        ex.map_with(|x: u64| x, 0..3, MapOptions::new().chunksize(0)),
        Err(Error::InvalidArgument { .. })
    ));
}
