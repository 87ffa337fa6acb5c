//! Put once, use many: 100 tasks on 2 worker processes each read the same
//! 256 MiB, passed as a `Shared` (made once, inside the timing) or sent with
//! every task as a `Vec<u8>` (the way without it).
//!
//! Not criterion: one round of the second way takes tens of seconds, and
//! criterion wants ten samples at least. Instead, rounds alternate between
//! the two ways, each in a fresh pool, and the median of each is printed as
//! one JSON line that `benches/report.py` reads:
//!
//! ```text
//! {"group": "q12_shared_256mib", "name": "twinpool_shared", "seconds": [..], "median_s": ..}
//! ```
//!
//! `cargo bench -p twinpool-benches --bench shared`; `TWINPOOL_BENCH_SHARED_MIB`,
//! `TWINPOOL_BENCH_SHARED_TASKS` and `TWINPOOL_BENCH_SHARED_ROUNDS` change
//! the size, the number of tasks and of rounds (defaults 256, 100, 3).

mod common;

use std::sync::Arc;
use std::time::Instant;

use twinpool::{Executor, MapOptions, Registry, Shared};

/// What each task computes from the bytes: a sum of one byte per page, so
/// that every page is read.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().step_by(4096).map(|&b| u64::from(b)).sum()
}

fn tasks() -> Registry {
    Registry::new()
        .register("read_shared", |s: Shared| checksum(&s))
        .register("read_vec", |v: Vec<u8>| checksum(&v))
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Tasks submitted ahead of the results read: a bounded look-ahead, as a
/// program sending a big payload with every task needs (100 copies of
/// 256 MiB at once would not fit in memory).
const AHEAD: usize = 4;

fn options() -> MapOptions {
    MapOptions {
        buffersize: Some(AHEAD),
        ..MapOptions::default()
    }
}

/// One round with a `Shared`: make it, then run the tasks.
fn with_shared(data: &[u8], tasks: usize, expect: u64) -> f64 {
    let ex = Executor::processes(2, self::tasks()).expect("a pool");
    let t = Instant::now();
    let shared = ex.share(data).expect("shared bytes");
    let handle = shared.clone();
    let items = (0..tasks).map(move |_| handle.clone());
    for r in ex
        .map_named_with::<Shared, u64, _>("read_shared", items, options())
        .expect("map")
    {
        assert_eq!(r.expect("a result"), expect);
    }
    let s = t.elapsed().as_secs_f64();
    drop(shared);
    ex.shutdown(true, false);
    s
}

/// One round sending the bytes with every task.
fn sending_each(data: &Arc<Vec<u8>>, tasks: usize, expect: u64) -> f64 {
    let ex = Executor::processes(2, self::tasks()).expect("a pool");
    let t = Instant::now();
    let data = data.clone();
    let items = (0..tasks).map(move |_| data.to_vec());
    for r in ex
        .map_named_with::<Vec<u8>, u64, _>("read_vec", items, options())
        .expect("map")
    {
        assert_eq!(r.expect("a result"), expect);
    }
    let s = t.elapsed().as_secs_f64();
    ex.shutdown(true, false);
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    twinpool::serve_if_worker(&tasks());
    // Only when benchmarking, and when no filter or a filter naming this
    // group was given (as criterion filters).
    if !common::runs_now("q12_shared") {
        return;
    }
    let mib = env("TWINPOOL_BENCH_SHARED_MIB", 256);
    let tasks = env("TWINPOOL_BENCH_SHARED_TASKS", 100);
    let rounds = env("TWINPOOL_BENCH_SHARED_ROUNDS", 3).max(1);
    let data: Arc<Vec<u8>> = Arc::new((0..mib << 20).map(|i| (i / 4096) as u8).collect());
    let expect = checksum(&data);
    let (mut shared, mut each) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        shared.push(with_shared(&data, tasks, expect));
        each.push(sending_each(&data, tasks, expect));
    }
    let group = format!("q12_shared_{mib}mib");
    for (name, mut seconds) in [("twinpool_shared", shared), ("twinpool_send_each", each)] {
        let list: Vec<String> = seconds.iter().map(|s| format!("{s:.4}")).collect();
        let m = median(&mut seconds);
        println!(
            "{{\"group\": \"{group}\", \"name\": \"{name}\", \"tasks\": {tasks}, \"bytes\": {}, \"seconds\": [{}], \"median_s\": {m:.4}}}",
            mib << 20,
            list.join(", ")
        );
    }
}
