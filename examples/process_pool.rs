//! The article's `ProcessPoolExecutor` section: the same API as the thread
//! pool, except that only what pickle can serialise crosses to the workers,
//! because the work runs in other processes.
//!
//! In twinpool the counterpart of "picklable" is "serde": a task is a named
//! function with serde argument and result types, registered in a
//! [`Registry`] that the parent and its workers both build. This program is
//! its own worker: `serve_if_worker` comes first in `main`, and the pool
//! re-runs this executable for each worker process.
//!
//! Run it with `cargo run --example process_pool`.

use std::collections::BTreeMap;

use twinpool::{as_completed, serve_if_worker, Error, Executor, Registry};

/// A fake "get the headers of a URL": this example runs offline, so it makes
/// headers up instead of asking the network. It runs in a worker process.
fn get_headers(url: String) -> (String, BTreeMap<String, String>) {
    let mut headers = BTreeMap::new();
    headers.insert(
        "Server".to_string(),
        format!("fake-{}", url.trim_start_matches("https://")),
    );
    headers.insert("X-Worker-Pid".to_string(), std::process::id().to_string());
    (url, headers)
}

/// Counts the primes below `n` the slow way: CPU work, where processes beat
/// threads in Python because of the GIL.
fn count_primes(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..k).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

fn tasks() -> Registry {
    Registry::new()
        .register("get_headers", get_headers)
        .register("count_primes", count_primes)
}

fn main() -> Result<(), Error> {
    // In a worker process this serves tasks and never returns.
    serve_if_worker(&tasks());

    let pool = Executor::processes(3, tasks())?;
    println!(
        "parent pid {}; workers: {}",
        std::process::id(),
        pool.max_workers()
    );

    let urls = [
        "https://www.baidu.com/",
        "https://www.163.com/",
        "https://www.qq.com/",
    ];
    let futures = urls
        .iter()
        .map(|u| {
            pool.submit_named::<String, (String, BTreeMap<String, String>)>(
                "get_headers",
                u.to_string(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for f in as_completed(futures, None) {
        let (url, headers) = f?.result()?;
        println!("{url} served by worker {}", headers["X-Worker-Pid"]);
    }

    // map over processes, in input order; chunks cross as one message each.
    let limits = [10_000u64, 20_000, 30_000, 40_000];
    for (n, primes) in limits
        .iter()
        .zip(pool.map_named::<u64, u64, _>("count_primes", limits)?)
    {
        println!("primes below {n}: {}", primes?);
    }

    // A closure cannot cross to a process: the pool says so.
    match pool.submit(|| 1) {
        Err(e) => println!("submit(closure) on a process pool: {e}"),
        Ok(_) => unreachable!("a process pool refuses closures"),
    }
    Ok(())
}
