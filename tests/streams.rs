//! `Map` and `AsCompleted` as futures-core `Stream`s (the `futures`
//! feature). A minimal executor (`block_on`, thread park + `Wake`) makes
//! progress only through wake-ups, so a missed wake fails the test (by
//! its time bound) instead of passing by polling.

mod common;

use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use common::{Gate, LONG};
use futures_core::Stream;
use twinpool::{as_completed, Error, Executor, MapOptions};

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` to its end on this thread; panics after `LONG`.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    block_on_then(fut, || {})
}

/// `block_on`, calling `first_pending` once, the first time `fut` is
/// pending: the test can let a task end only then, so that the stream must
/// be woken to see it.
fn block_on_then<F: std::future::Future>(fut: F, first_pending: impl FnOnce()) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + LONG;
    let mut first_pending = Some(first_pending);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        if let Some(f) = first_pending.take() {
            f();
        }
        let now = Instant::now();
        assert!(now < deadline, "no wake-up came: the stream hangs");
        thread::park_timeout(deadline - now);
        // Only a wake-up may lead to the next poll.
        assert!(
            Instant::now() < deadline,
            "no wake-up came: the stream hangs"
        );
    }
}

/// The next item of `stream`.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Every item of `stream`, awaited one by one.
async fn collect<S: Stream + Unpin>(mut stream: S) -> Vec<S::Item> {
    let mut out = Vec::new();
    while let Some(item) = next(&mut stream).await {
        out.push(item);
    }
    out
}

#[test]
fn a_map_streams_in_input_order() {
    let ex = Executor::threads(3);
    // The first item ends last.
    let gate = Gate::new();
    let w = gate.waiter();
    let map = ex
        .map(
            move |x: u64| {
                if x == 0 {
                    w.wait();
                }
                x * 10
            },
            0..6_u64,
        )
        .unwrap();
    let out: Vec<u64> = block_on_then(collect(map), || gate.open())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [0, 10, 20, 30, 40, 50]);
}

#[test]
fn a_chunked_lazy_map_streams_every_item() {
    let ex = Executor::threads(2);
    let opts = MapOptions::new().chunksize(7).buffersize(10);
    let map = ex.map_with(|x: u32| x + 1, 0..100_u32, opts).unwrap();
    let out: Vec<u32> = block_on(collect(map))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (1..=100).collect::<Vec<_>>());
}

#[test]
fn a_failing_item_ends_the_stream_with_its_error() {
    let ex = Executor::threads(2);
    let map = ex
        .map(
            |x: u32| {
                assert!(x != 3, "three is refused");
                x
            },
            0..6_u32,
        )
        .unwrap();
    let out = block_on(collect(map));
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(matches!(&out[3], Err(Error::Panicked { message }) if message.contains("three")));
}

#[test]
fn as_completed_streams_in_completion_order() {
    let ex = Executor::threads(2);
    let gate = Gate::new();
    let slow = common::gated(&ex, &gate, "slow");
    let fast = ex.submit(|| "fast").unwrap();
    let mut stream = as_completed(vec![slow, fast], None);
    // The slow task cannot end before the fast one is out: its gate opens
    // only once the stream is pending on it.
    let first = block_on(next(&mut stream)).unwrap().unwrap();
    assert_eq!(first.result(), Ok("fast"));
    let second = block_on_then(next(&mut stream), || gate.open())
        .unwrap()
        .unwrap();
    assert_eq!(second.result(), Ok("slow"));
    assert!(block_on(next(&mut stream)).is_none());
}

#[test]
fn as_completed_stream_times_out_once() {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let blocked = common::gated(&ex, &gate, 1);
    let done = ex.submit(|| 2).unwrap();
    let mut stream = as_completed(vec![blocked, done], Some(Duration::ZERO));
    // The deadline is checked when polled: the stream yields what has
    // ended, then the timeout, then ends.
    let items = block_on(collect(&mut stream));
    gate.open();
    assert!(
        matches!(items.last(), Some(Err(Error::Timeout))),
        "{items:?}"
    );
    assert_eq!(stream.into_remaining().len() + items.len(), 3);
}
