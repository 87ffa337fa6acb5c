//! The same `Executor` over the ranks of an MPI job.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_pool
//! mpirun -n 3 target/release/examples/mpi_pool          # rank 0 is the pool, ranks 1-2 serve
//! target/release/examples/mpi_pool --spawn 2            # a singleton spawns 2 ranks
//! srun -n 3 target/release/examples/mpi_pool            # the same under Slurm
//! ```
//!
//! Every rank runs this `main`; all but the pool's never get past
//! `serve_if_worker`.

use twinpool::{as_completed, Executor, Registry};

/// Steps of the Collatz sequence from `n` down to 1.
fn collatz(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

/// The host a task ran on, and the process that ran it.
fn whereabouts(_: ()) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{} (pid {})", host.trim(), std::process::id())
}

fn tasks() -> Registry {
    Registry::new()
        .register("collatz", collatz)
        .register("whereabouts", whereabouts)
}

fn main() -> Result<(), twinpool::Error> {
    twinpool::serve_if_worker(&tasks());

    let args: Vec<String> = std::env::args().collect();
    let spawn = args
        .iter()
        .position(|a| a == "--spawn")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let builder = Executor::builder().registry(tasks()).workers_per_rank(2);
    let ex = match spawn {
        Some(n) => builder.mpi_spawn(n),
        None => builder.mpi(),
    }
    .build()?;
    println!("{} worker processes over the ranks", ex.max_workers());

    // One task per worker, to see where they run.
    let futures = (0..ex.max_workers())
        .map(|_| ex.submit_named::<(), String>("whereabouts", ()))
        .collect::<Result<Vec<_>, _>>()?;
    for f in as_completed(futures, None) {
        println!("ran on {}", f?.result()?);
    }

    // A chunked map: 100 items cross per message, results in input order.
    let opts = twinpool::MapOptions::new().chunksize(100);
    let steps: Vec<u32> = ex
        .map_named_with::<u64, u32, _>("collatz", 1..=10_000, opts)?
        .collect::<Result<_, _>>()?;
    let (longest, at) = steps
        .iter()
        .zip(1..)
        .max()
        .map(|(s, n)| (*s, n))
        .unwrap_or((0, 0));
    println!("the longest Collatz run below 10,000 starts at {at}: {longest} steps");
    Ok(())
}
