//! The article's deadlock snippet: two tasks that wait on each other.
//!
//! In Python, task `a` slept, then printed `b.result()`; task `b` slept, then
//! printed `a.result()`, on a `ThreadPoolExecutor(2)`. The sleeps made sure
//! both tasks were running before either waited, and the program never
//! ended: each thread waited for the other forever.
//!
//! ```python
//! def a_work():
//!     time.sleep(5)
//!     print(b.result())
//!     return 'a'
//!
//! def b_work():
//!     time.sleep(5)
//!     print(a.result())
//!     return 'b'
//!
//! with ThreadPoolExecutor(2) as executor:
//!     a = executor.submit(a_work)
//!     b = executor.submit(b_work)
//! ```
//!
//! twinpool sees the cycle: the wait that would close it returns
//! `Err(Error::Deadlock { .. })` at once, naming the tasks, instead of
//! blocking. That task goes on and finishes, which lets the other one finish
//! too. Which of the two gets the error depends on which waits second.
//! Run it with `cargo run --example deadlock`.
//!
//! A `twinpool::Future` is not `Clone` and `result()` consumes it, so each
//! task receives the other's future through a channel once both exist. A
//! barrier stands in for the article's `time.sleep(5)`, and every wait of the
//! main thread is bounded, so the example ends even if something goes wrong.

use std::process::exit;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use twinpool::{Error, Executor, Future};

const LIMIT: Duration = Duration::from_secs(10);

/// The body of both tasks: wait until both run, then wait for the other.
fn work(
    me: &'static str,
    both_running: Arc<Barrier>,
    other: Receiver<Future<&'static str>>,
) -> &'static str {
    both_running.wait();
    let other = other.recv_timeout(LIMIT).expect("the other task's future");
    match other.result() {
        Ok(value) => println!("{me}: the other task returned {value:?}"),
        Err(e) => println!("{me}: {e}"),
    }
    me
}

fn main() -> Result<(), Error> {
    let executor = Executor::threads(2);
    let barrier = Arc::new(Barrier::new(2));
    let (to_a, for_a) = channel();
    let (to_b, for_b) = channel();
    let a_barrier = barrier.clone();
    let a = executor.submit(move || work("a", a_barrier, for_a))?;
    let b = executor.submit(move || work("b", barrier, for_b))?;

    // Told when each task ends, so main can wait with a limit.
    let (ended_tx, ended) = channel();
    for f in [&a, &b] {
        let ended_tx = ended_tx.clone();
        f.add_done_callback(move |r| {
            let _ = ended_tx.send(r.clone());
        });
    }
    to_a.send(b).expect("task a is alive");
    to_b.send(a).expect("task b is alive");

    for _ in 0..2 {
        match ended.recv_timeout(LIMIT) {
            Ok(result) => println!("a task ended with {result:?}"),
            Err(_) => {
                eprintln!("the tasks are still stuck after {LIMIT:?}");
                exit(1);
            }
        }
    }
    Ok(())
}
