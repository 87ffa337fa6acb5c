//! Awaiting process-pool work from a tokio program without blocking the
//! runtime's threads: a `twinpool::Future` is a `std::future::Future`, and
//! with the `futures` feature a `Map` and `as_completed` are `Stream`s.
//! While the workers compute, the runtime keeps serving other tasks (here,
//! a ticker).
//!
//! `cargo run -p twinpool-extras --example tokio_process_pool`

use std::time::Duration;

use futures::StreamExt;
use twinpool::{as_completed, Executor, MapOptions, Registry};

/// Burns about `ms` milliseconds of CPU and returns its argument.
#[twinpool::task]
fn busy(ms: u64) -> u64 {
    let until = std::time::Instant::now() + Duration::from_millis(ms);
    let mut x = ms;
    while std::time::Instant::now() < until {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
    ms
}

fn tasks() -> Registry {
    Registry::new().task(busy)
}

fn main() -> Result<(), twinpool::Error> {
    // In a worker process this serves tasks and never returns: before the
    // runtime starts.
    twinpool::serve_if_worker(&tasks());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .map_err(|e| twinpool::Error::Spawn {
            reason: format!("no tokio runtime: {e}"),
        })?;
    runtime.block_on(run())
}

async fn run() -> Result<(), twinpool::Error> {
    let pool = Executor::processes(2, tasks())?;

    // Something else the runtime serves meanwhile.
    let ticker = tokio::spawn(async {
        let mut ticks = 0;
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        loop {
            interval.tick().await;
            ticks += 1;
            if ticks == 10 {
                return ticks;
            }
        }
    });

    // One task, awaited.
    let one = pool.submit_task(busy, 200)?.await?;
    println!("one task: {one} ms of work");

    // A map, as a stream: results in input order, awaited one by one.
    // (A `Map` is an `Iterator` too: name the stream's `next`.)
    let mut squares = pool.map_task_with(busy, [300, 100, 200], MapOptions::new())?;
    while let Some(ms) = StreamExt::next(&mut squares).await {
        println!("map, in input order: {} ms", ms?);
    }

    // as_completed, as a stream: futures as they end.
    let futures = [250, 50, 150]
        .into_iter()
        .map(|ms| pool.submit_task(busy, ms))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ended = as_completed(futures, None);
    while let Some(f) = StreamExt::next(&mut ended).await {
        println!("as_completed, as they end: {} ms", f?.result()?);
    }

    let ticks = ticker.await.unwrap_or(0);
    println!("the runtime ticked {ticks} times meanwhile");
    Ok(())
}
