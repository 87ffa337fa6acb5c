//! The article's `map` snippet, and its point: `map` yields results in input
//! order, not in the order the tasks finish.
//!
//! In Python it ran `executor.map(get_headers, urls)` on a
//! `ThreadPoolExecutor(3)` and printed each result. The article notes that the
//! first result printed is always baidu's, however quickly the others answer,
//! because `Executor.map` submits everything and then pops the futures in
//! input order:
//!
//! ```python
//! with ThreadPoolExecutor(3) as executor:
//!     urls = ['https://www.baidu.com/', 'https://www.163.com/', 'https://www.qq.com/']
//!     for result in executor.map(get_headers, urls):
//!         print(result)
//! ```
//!
//! Run it with `cargo run --example map_order`. Here the first URL is made
//! the slowest, and the program prints the order the tasks finished in next
//! to the order `map` gave the results in. Both orders are deterministic.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use twinpool::Executor;

const URLS: [&str; 3] = [
    "https://www.baidu.com/",
    "https://www.163.com/",
    "https://www.qq.com/",
];

/// The order in which the fake network answers: the first URL is the slowest.
const ANSWER_ORDER: [&str; 3] = [URLS[1], URLS[2], URLS[0]];

/// How many requests the fake network has answered, and the log of which.
static ANSWERED: Mutex<Vec<&str>> = Mutex::new(Vec::new());
static NEXT_TURN: Condvar = Condvar::new();

/// A stand-in for the article's `(url, requests.get(url).headers)`, so the
/// example runs offline: no network is touched. It "takes" a little time,
/// then waits for its turn to be answered, so the requests finish in
/// `ANSWER_ORDER` whatever the scheduler does; it logs each as it finishes.
/// (Every request waits for the ones before it, so this needs one worker per
/// URL; the pool below has three.)
fn get_headers(url: &'static str) -> (&'static str, BTreeMap<&'static str, String>) {
    thread::sleep(Duration::from_millis(50));
    let turn = ANSWER_ORDER.iter().position(|u| *u == url).unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut answered = ANSWERED.lock().unwrap();
    while answered.len() != turn {
        assert!(Instant::now() < give_up, "the fake network got stuck");
        answered = NEXT_TURN
            .wait_timeout(answered, Duration::from_millis(100))
            .unwrap()
            .0;
    }
    answered.push(url);
    NEXT_TURN.notify_all();
    let host = url.trim_start_matches("https://").trim_end_matches('/');
    let headers = BTreeMap::from([
        ("Content-Type", "text/html; charset=utf-8".to_string()),
        ("Server", format!("fake-{host}")),
    ]);
    (url, headers)
}

fn main() -> Result<(), twinpool::Error> {
    let executor = Executor::threads(3);
    let mut map_order = Vec::new();
    for result in executor.map(get_headers, URLS)? {
        let (url, headers) = result?;
        println!("map yielded {url} {headers:?}");
        map_order.push(url);
    }
    println!("finished in order: {:?}", ANSWERED.lock().unwrap());
    println!("map's order:       {map_order:?}");
    Ok(())
}
