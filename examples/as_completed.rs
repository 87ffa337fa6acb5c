//! The article's second snippet: three worker threads and `as_completed`.
//!
//! In Python it submitted `get_headers` for three URLs to a
//! `ThreadPoolExecutor(3)` and printed each result as its task finished,
//! in the order they finished rather than the order they were submitted:
//!
//! ```python
//! with ThreadPoolExecutor(3) as executor:
//!     fs = [
//!         executor.submit(get_headers, 'https://www.baidu.com/'),
//!         executor.submit(get_headers, 'https://www.163.com/'),
//!         executor.submit(get_headers, 'https://www.qq.com/'),
//!     ]
//!     for f in as_completed(fs):
//!         print(f.result())
//! ```
//!
//! Run it with `cargo run --example as_completed`. The lines come out in
//! completion order, which depends on the (simulated) network: usually 163,
//! then qq, then baidu, but nothing here forces that order.

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use twinpool::{as_completed, Executor};

const URLS: [&str; 3] = [
    "https://www.baidu.com/",
    "https://www.163.com/",
    "https://www.qq.com/",
];

/// A stand-in for the article's `(url, requests.get(url).headers)`, so the
/// example runs offline: no network is touched. Each URL "takes" a different
/// time (baidu the longest) and gets made-up headers.
fn get_headers(url: &str) -> (String, BTreeMap<&'static str, String>) {
    let millis = match url {
        "https://www.baidu.com/" => 300,
        "https://www.qq.com/" => 200,
        _ => 100,
    };
    thread::sleep(Duration::from_millis(millis));
    let host = url.trim_start_matches("https://").trim_end_matches('/');
    let headers = BTreeMap::from([
        ("Content-Type", "text/html; charset=utf-8".to_string()),
        ("Server", format!("fake-{host}")),
    ]);
    (url.to_string(), headers)
}

fn main() -> Result<(), twinpool::Error> {
    let executor = Executor::threads(3);
    let fs = URLS
        .into_iter()
        .map(|url| executor.submit(move || get_headers(url)))
        .collect::<Result<Vec<_>, _>>()?;
    // `as_completed` yields each future as it finishes; `result()` then
    // returns at once. (With a timeout it would yield `Err(Error::Timeout)`.)
    for f in as_completed(fs, None) {
        println!("{:?}", f?.result()?);
    }
    Ok(())
}
