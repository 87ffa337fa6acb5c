//! Awaiting a pool task from async code: `twinpool::Future<T>` is a
//! `std::future::Future<Output = Result<T, Error>>` that wakes its waker when
//! the task ends (finished, panicked or cancelled). Uses a minimal
//! `block_on` (thread park + `std::task::Wake`) that makes progress only
//! through wake-ups, so a missing wake fails instead of passing by polling.

mod common;

use std::future::Future as _;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use common::{block_worker, eventually, gated, Gate, LONG};
use twinpool::{Error, Executor};

/// A waker that counts its wake-ups and unparks its thread.
struct Counter {
    wakes: AtomicUsize,
    thread: Thread,
}

impl Counter {
    fn new() -> Arc<Counter> {
        Arc::new(Counter {
            wakes: AtomicUsize::new(0),
            thread: thread::current(),
        })
    }

    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Runs `fut` to completion on this thread, polling again only after a
/// wake-up. Panics if no wake-up comes within [`LONG`].
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let counter = Counter::new();
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + LONG;
    loop {
        let seen = counter.wakes();
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        while counter.wakes() == seen {
            let now = Instant::now();
            assert!(now < deadline, "a pending future was never woken");
            thread::park_timeout(deadline - now);
        }
    }
}

#[test]
fn await_a_task() {
    let ex = Executor::threads(2);
    let f = ex.submit(|| 6 * 7).unwrap();
    assert_eq!(block_on(f), Ok(42));
}

#[test]
fn await_several_tasks_in_an_async_block() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let a = gated(&ex, &gate, 1);
    let b = ex.submit(|| 2).unwrap();
    let opener = thread::spawn(move || {
        // Makes it likely that the first await really has to wait.
        thread::sleep(Duration::from_millis(20));
        gate.open();
    });
    let sum = block_on(async move {
        let a = a.await?;
        let b = b.await?;
        Ok::<_, Error>(a + b)
    });
    assert_eq!(sum, Ok(3));
    opener.join().unwrap();
}

#[test]
fn pending_until_the_task_ends_then_woken() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let mut f = gated(&ex, &gate, "done");
    let counter = Counter::new();
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);

    assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
    assert_eq!(counter.wakes(), 0);

    gate.open();
    eventually("the waker was woken", || counter.wakes() >= 1);
    assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(Ok("done")));
}

#[test]
fn the_latest_waker_is_woken() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let mut f = gated(&ex, &gate, ());
    let (first, second) = (Counter::new(), Counter::new());
    let first_waker = Waker::from(first.clone());
    let second_waker = Waker::from(second.clone());

    assert!(Pin::new(&mut f)
        .poll(&mut Context::from_waker(&first_waker))
        .is_pending());
    // The future moved to another async task: polled with another waker.
    assert!(Pin::new(&mut f)
        .poll(&mut Context::from_waker(&second_waker))
        .is_pending());

    gate.open();
    eventually("the second waker was woken", || second.wakes() >= 1);
    assert_eq!(
        Pin::new(&mut f).poll(&mut Context::from_waker(&second_waker)),
        Poll::Ready(Ok(()))
    );
}

#[test]
fn await_a_panicked_task() {
    let ex = Executor::threads(1);
    let f = ex.submit(|| -> u8 { panic!("async boom") }).unwrap();
    assert_eq!(
        block_on(f),
        Err(Error::Panicked {
            message: "async boom".into()
        })
    );
}

#[test]
fn cancelling_wakes_an_awaiting_task() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let _busy = block_worker(&ex, &gate);
    let mut f = ex.submit(|| 1).unwrap();
    let counter = Counter::new();
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);

    assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
    assert!(f.cancel());
    eventually("the waker was woken", || counter.wakes() >= 1);
    assert_eq!(
        Pin::new(&mut f).poll(&mut cx),
        Poll::Ready(Err(Error::Cancelled))
    );
}

#[test]
fn await_on_another_thread_than_the_submitter() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let f = gated(&ex, &gate, 5);
    let waiter = thread::spawn(move || block_on(f));
    gate.open();
    assert_eq!(waiter.join().unwrap(), Ok(5));
}

#[test]
fn a_result_taken_by_await_is_an_invalid_state_error() {
    let ex = Executor::threads(1);
    let mut future = ex.submit(|| 7_u64).expect("submit");
    assert_eq!(block_on(&mut future), Ok(7));
    match future.result() {
        Err(Error::InvalidState { reason }) => assert!(reason.contains(".await"), "{reason}"),
        other => panic!("expected InvalidState, got {other:?}"),
    }
}
