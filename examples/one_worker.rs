//! The article's first snippet: a pool with one worker thread, one task.
//!
//! In Python it started a `ThreadPoolExecutor(1)` in a `with` block,
//! submitted `get_headers('https://www.baidu.com/')` (which fetched the page
//! with `requests` and returned the pair `(url, headers)`), and printed
//! `f.result()`, which blocks until the task has finished:
//!
//! ```python
//! with ThreadPoolExecutor(1) as executor:
//!     f = executor.submit(get_headers, 'https://www.baidu.com/')
//!     print(f.result())
//! ```
//!
//! Run it with `cargo run --example one_worker`.

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use twinpool::Executor;

/// A stand-in for the article's `(url, requests.get(url).headers)`, so the
/// example runs offline: no network is touched. It sleeps a little, as a
/// request would, and returns made-up headers that depend only on the URL.
fn get_headers(url: &str) -> (String, BTreeMap<&'static str, String>) {
    thread::sleep(Duration::from_millis(50));
    let host = url.trim_start_matches("https://").trim_end_matches('/');
    let headers = BTreeMap::from([
        ("Content-Type", "text/html; charset=utf-8".to_string()),
        ("Server", format!("fake-{host}")),
    ]);
    (url.to_string(), headers)
}

fn main() -> Result<(), twinpool::Error> {
    // The block plays the part of Python's `with`: dropping the executor at
    // its end shuts the pool down and waits for the worker.
    {
        let executor = Executor::threads(1);
        let f = executor.submit(|| get_headers("https://www.baidu.com/"))?;
        println!("{:?}", f.result()?);
    }
    Ok(())
}
