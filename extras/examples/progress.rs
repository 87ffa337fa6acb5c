//! Progress bars over pool work with indicatif: over `as_completed`, and
//! over a chunked `map` counting items, not chunks (a bar that counted the
//! futures of a `chunksize` map would move in jumps of a chunk, and end at
//! the number of chunks). The bar's message shows `Executor::stats()`.
//!
//! `cargo run -p twinpool-extras --example progress`

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use twinpool::{as_completed, Executor, MapOptions, Registry};

/// About `ms` milliseconds of work; returns `x` squared.
#[twinpool::task]
fn slow_square(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

fn tasks() -> Registry {
    Registry::new().task(slow_square)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// The pool's state in a few words.
fn state(pool: &Executor) -> String {
    let s = pool.stats();
    format!(
        "queued {}, running {}, done {}",
        s.queued, s.running, s.finished
    )
}

fn main() -> Result<(), twinpool::Error> {
    twinpool::serve_if_worker(&tasks());
    let pool = Executor::processes(2, tasks())?;

    // As they end: one step per future.
    let futures = (0..40_u64)
        .map(|x| pool.submit_task(slow_square, (x, 5 + x % 7)))
        .collect::<Result<Vec<_>, _>>()?;
    let bar1 = bar(40, "as_completed");
    for f in as_completed(futures, None) {
        f?.result()?;
        bar1.inc(1);
        bar1.set_message(state(&pool));
    }
    bar1.finish();

    // A map in chunks of 25 items: one step per item, as the map yields
    // them, whatever the chunk size.
    let items = 500_u64;
    let bar2 = bar(items, "map, chunks 25");
    let opts = MapOptions::new().chunksize(25);
    let mut sum = 0;
    for r in pool.map_task_with(slow_square, (0..items).map(|x| (x, 1)), opts)? {
        sum += r?;
        bar2.inc(1);
        bar2.set_message(state(&pool));
    }
    bar2.finish();
    println!("sum of squares below {items}: {sum}");
    Ok(())
}
