//! A process pool whose workers are a dedicated program, `twinpool-worker`
//! (in `worker-bin/`), instead of this executable. The parent and the worker
//! share one registry through `worker-bin/src/tasks.rs`; the handshake checks
//! that every name and type matches before any task is sent.
//!
//! Build the worker first, then run this:
//!
//! ```text
//! cargo build --release -p twinpool-worker
//! cargo run --release --example dedicated_worker
//! ```

use std::path::PathBuf;

use twinpool::{Error, Executor};

include!("../worker-bin/src/tasks.rs");

/// `twinpool-worker` next to this example's own target directory.
fn worker_program() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/examples/dedicated_worker -> target/<profile>/
    let dir = exe.parent()?.parent()?;
    let program = dir.join("twinpool-worker");
    program.exists().then_some(program)
}

fn main() -> Result<(), Error> {
    let Some(program) = worker_program() else {
        eprintln!("build the worker program first: cargo build --release -p twinpool-worker");
        std::process::exit(2);
    };
    let pool = Executor::builder()
        .processes(2)
        .registry(tasks())
        .worker_program(&program)
        .build()?;
    let text = "the quick brown fox jumps over the lazy dog";
    let words = pool
        .submit_named::<String, u64>("word_count", text.into())?
        .result()?;
    println!("{words} words, counted by {}", program.display());
    let squares: Vec<u64> = pool
        .map_named("square", 1..=5u64)?
        .collect::<Result<_, _>>()?;
    println!("squares: {squares:?}");
    Ok(())
}
