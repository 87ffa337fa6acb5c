//! `twinpool-worker`: a dedicated worker program for twinpool process pools.
//!
//! By default a process pool re-runs its own executable as the worker. A
//! dedicated program is the other way: a small binary that holds only the
//! tasks, named with `Builder::worker_program`. Write your own like this one:
//! a `main` that calls `twinpool::serve_if_worker` with the registry, and
//! says what it is when run by hand.
//!
//! ```text
//! let pool = twinpool::Executor::builder()
//!     .processes(4)
//!     .registry(tasks())                       // the same names and types
//!     .worker_program("target/release/twinpool-worker")
//!     .build()?;
//! ```

include!("tasks.rs");

fn main() {
    twinpool::serve_if_worker(&tasks());
    // Not started by a pool: say what this program is for.
    let registry = tasks();
    let names: Vec<&str> = registry.names().collect();
    println!(
        "twinpool-worker: a worker program for twinpool process pools; it serves {}.\n\
         A pool starts it (Builder::worker_program); it does nothing when run by hand.",
        names.join(", ")
    );
}
