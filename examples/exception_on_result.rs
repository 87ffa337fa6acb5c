//! The article's last thread snippet: an exception in a task is only seen
//! when `result()` is asked for.
//!
//! In Python the task raised `ValueError('123')`. With `a.result()` commented
//! out the program printed nothing at all: the executor caught the exception
//! and kept it in the future. Uncommenting the line made `result()` re-raise
//! it, showing `ValueError: 123`:
//!
//! ```python
//! def raise_exception():
//!     raise ValueError('123')
//!
//! with ThreadPoolExecutor(1) as executor:
//!     a = executor.submit(raise_exception)
//!     # a.result()
//! ```
//!
//! In twinpool a panic in a task is caught the same way and kept in the
//! future; `result()` returns it as `Err(Error::Panicked { message })`.
//! Run it with `cargo run --example exception_on_result`.

use std::thread;

use twinpool::Executor;

/// Rust's counterpart of `raise ValueError('123')`.
fn raise_exception() -> u32 {
    panic!("123")
}

fn pool() -> Result<Executor, twinpool::Error> {
    Executor::builder()
        .threads(1)
        .thread_name_prefix("worker")
        .build()
}

fn main() -> Result<(), twinpool::Error> {
    // Rust's default panic hook prints "thread '...' panicked at ..." to
    // stderr the moment a task panics, which Python does not do. Keep the
    // pool's threads quiet to mirror the article; twinpool catches the panic
    // and keeps its message either way.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !thread::current()
            .name()
            .is_some_and(|n| n.starts_with("worker"))
        {
            default_hook(info);
        }
    }));

    // `# a.result()`: the task panics, nobody asks, nothing is shown.
    {
        let executor = pool()?;
        let _a = executor.submit(raise_exception)?;
    }
    println!("without result(): nothing was reported");

    // `a.result()`: the error comes out here.
    let executor = pool()?;
    let a = executor.submit(raise_exception)?;
    match a.result() {
        Ok(v) => println!("unexpected: the task returned {v}"),
        Err(e) => {
            println!("with result(): {e:?}");
            println!("which reads: {e}");
        }
    }
    Ok(())
}
