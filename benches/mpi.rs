//! The MPI back end against mpi4py.futures (benches/mpi4py_futures.py) and
//! raw MPI. Not criterion: it runs under `mpirun`, and rank 0 prints one
//! JSON line that `benches/report.py` reads.
//!
//! ```text
//! cargo bench -p twinpool-benches --features mpi --bench mpi --no-run   # prints the executable
//! mpirun -n 3 --oversubscribe <exe>                   # twinpool: rank 0 measures, ranks 1-2 serve
//! mpirun -n 2 --oversubscribe <exe> --raw-ping-pong   # raw MPI between ranks 0 and 1
//! ```
//!
//! (As root, Open MPI also wants `OMPI_ALLOW_RUN_AS_ROOT=1
//! OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`.) `python3 benches/report.py --only mpi`
//! does all of it, alternating the contenders in fresh jobs.
//!
//! The twinpool job measures, each the median of several rounds on one
//! executor with `workers_per_rank(1)` (2 ranks, so 2 worker processes, as
//! mpi4py.futures has 2 worker ranks):
//!
//! * (a) `pipelined`: submit N tiny tasks (`inc: u64 -> u64`), then take
//!   every result; ns per task.
//! * (b) `map`: `map_named_with` over 1M items, chunksize 10,000; ns per
//!   item and the whole map's time.
//! * (c) `round_trip`: one task, its result, the next; µs per round trip.
//! * and, to see where (c)'s time goes, the same round trip on a local
//!   1-worker process pool of rank 0 (no MPI: the ipc-channel leg alone).
//!
//! The raw job (`--raw-ping-pong`, 2 ranks; chosen before
//! `serve_if_worker`, and it never builds a twinpool executor, since
//! twinpool would initialise MPI itself) measures (d): an 8-byte message
//! from rank 0 to rank 1 and back, with blocking `MPI_Send`/`MPI_Recv`; and
//! the same ping-pong received by non-blocking probes with the back-off
//! twinpool's MPI threads use while messages flow (bursts of probes, a few
//! yields, then sleeps from 4 µs doubling to 50 µs), which is what one MPI
//! hop of twinpool can cost at best.
//!
//! `TWINPOOL_BENCH_MPI_TASKS`, `_ITEMS`, `_CHUNK`, `_ROUND_TRIPS`, `_PINGS`
//! and `_ROUNDS` change the sizes (defaults 20,000, 1,000,000, 10,000,
//! 2,000, 10,000 and 5); every rank must see the same values (mpirun
//! passes its environment to the ranks of its own node).

use std::hint::black_box;
use std::time::{Duration, Instant};

use twinpool::{Executor, MapOptions, Registry};

/// The tiny task.
fn inc(x: u64) -> u64 {
    x.wrapping_add(1)
}

fn tasks() -> Registry {
    Registry::new().register("inc", inc)
}

/// The argument that selects the raw MPI ping-pong.
const RAW_ARG: &str = "--raw-ping-pong";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(format!("TWINPOOL_BENCH_MPI_{name}"))
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// True in a process that an MPI launcher started.
fn under_mpirun() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

fn main() {
    // Before serve_if_worker: in the raw job, ranks other than 0 must not
    // serve twinpool, and no process may let twinpool initialise MPI.
    if std::env::args().any(|a| a == RAW_ARG) {
        raw::main();
        return;
    }
    twinpool::serve_if_worker(&tasks());
    if !under_mpirun() {
        // `cargo bench --features mpi` runs this alone: nothing to serve.
        println!(
            "the mpi bench runs under mpirun: `mpirun -n 3 --oversubscribe {}` \
             (and `... -n 2 ... {RAW_ARG}`), or `python3 benches/report.py --only mpi`",
            std::env::args().next().unwrap_or_default()
        );
        return;
    }
    if let Err(e) = pool_main() {
        eprintln!("mpi bench: {e}");
        std::process::exit(1);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
    format!("[{}]", items.join(", "))
}

/// (a): submit `n` tasks, then take every result; seconds.
fn pipelined(ex: &Executor, n: u64) -> Result<f64, twinpool::Error> {
    let t = Instant::now();
    let futures = (0..n)
        .map(|i| ex.submit_named::<u64, u64>("inc", i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sum = 0u64;
    for f in futures {
        sum = sum.wrapping_add(f.result()?);
    }
    let s = t.elapsed().as_secs_f64();
    assert_eq!(sum, n * (n + 1) / 2);
    Ok(s)
}

/// (b): a chunked map of `items` items; seconds.
fn map(ex: &Executor, items: u64, chunk: usize) -> Result<f64, twinpool::Error> {
    let t = Instant::now();
    let mut sum = 0u64;
    for r in
        ex.map_named_with::<u64, u64, _>("inc", 0..items, MapOptions::new().chunksize(chunk))?
    {
        sum = sum.wrapping_add(r?);
    }
    let s = t.elapsed().as_secs_f64();
    assert_eq!(sum, items * (items + 1) / 2);
    Ok(s)
}

/// (c): `n` round trips, one task at a time; seconds.
fn round_trips(ex: &Executor, n: u64) -> Result<f64, twinpool::Error> {
    let t = Instant::now();
    for i in 0..n {
        let r = ex.submit_named::<u64, u64>("inc", i)?.result()?;
        assert_eq!(black_box(r), i + 1);
    }
    Ok(t.elapsed().as_secs_f64())
}

fn pool_main() -> Result<(), twinpool::Error> {
    let n = env("TASKS", 20_000);
    let items = env("ITEMS", 1_000_000);
    let chunk = env("CHUNK", 10_000) as usize;
    let trips = env("ROUND_TRIPS", 2_000);
    let rounds = env("ROUNDS", 5).max(1);

    let t = Instant::now();
    let ex = Executor::builder()
        .registry(tasks())
        .workers_per_rank(1)
        .mpi()
        .build()?;
    let start_s = t.elapsed().as_secs_f64();
    // The ipc-channel leg alone: a local pool of one worker process.
    let local = Executor::processes(1, tasks())?;

    // Warm-up: every worker started, every buffer grown.
    pipelined(&ex, n.min(2_000))?;
    map(&ex, items.min(100_000), chunk)?;
    round_trips(&ex, 200)?;
    round_trips(&local, 200)?;

    let (mut a, mut b, mut c, mut l) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        a.push(pipelined(&ex, n)? / n as f64 * 1e9);
        b.push(map(&ex, items, chunk)?);
        c.push(round_trips(&ex, trips)? / trips as f64 * 1e6);
        l.push(round_trips(&local, trips)? / trips as f64 * 1e6);
    }
    let workers = ex.max_workers();
    local.shutdown(true, false);
    ex.shutdown(true, false);
    let map_ns: Vec<f64> = b.iter().map(|s| s / items as f64 * 1e9).collect();
    println!(
        "{{\"contender\": \"twinpool\", \"workers\": {workers}, \"rounds\": {rounds}, \
         \"start_s\": {start_s:.4}, \
         \"tasks\": {n}, \"pipelined_ns_per_task\": {:.1}, \"pipelined_runs\": {}, \
         \"items\": {items}, \"chunksize\": {chunk}, \"map_ns_per_item\": {:.2}, \
         \"map_s\": {:.4}, \"map_runs_s\": {}, \
         \"round_trips\": {trips}, \"round_trip_us\": {:.2}, \"round_trip_runs_us\": {}, \
         \"local_round_trip_us\": {:.2}, \"local_round_trip_runs_us\": {}}}",
        median(&a),
        list(&a),
        median(&map_ns),
        median(&b),
        list(&b),
        median(&c),
        list(&c),
        median(&l),
        list(&l),
    );
    Ok(())
}

/// (d): raw MPI ping-pong between ranks 0 and 1, no twinpool.
mod raw {
    use super::*;
    use mpi::traits::*;

    /// twinpool's back-off between probes while messages flow
    /// (src/mpi/comm.rs): bursts of 24 probes; 10 yields, then sleeps from
    /// 4 µs doubling up to 50 µs, with a timer slack of 1 µs.
    struct Backoff(u32);

    impl Backoff {
        fn wait(&mut self) {
            self.0 += 1;
            if self.0 <= 10 {
                std::thread::yield_now();
            } else {
                let d = Duration::from_micros(2) * (1u32 << (self.0 - 10).min(16));
                std::thread::sleep(d.min(Duration::from_micros(50)));
            }
        }
    }

    /// Receives one u64 from `from`, by blocking receive or by probing.
    fn recv(world: &impl Communicator, from: i32, polled: bool) -> u64 {
        let p = world.process_at_rank(from);
        if polled {
            // SAFETY: PR_SET_TIMERSLACK takes a number, touches no memory.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
            let mut backoff = Backoff(0);
            while !(0..24).any(|_| p.immediate_probe().is_some()) {
                backoff.wait();
            }
        }
        p.receive::<u64>().0
    }

    /// `n` ping-pongs; seconds on rank 0 (rank 1 echoes, returns 0).
    fn ping_pong(world: &impl Communicator, n: u64, polled: bool) -> f64 {
        let t = Instant::now();
        for i in 0..n {
            if world.rank() == 0 {
                world.process_at_rank(1).send(&i);
                let back = recv(world, 1, polled);
                assert_eq!(back, i + 1);
            } else {
                let x = recv(world, 0, polled);
                world.process_at_rank(0).send(&(x + 1));
            }
        }
        t.elapsed().as_secs_f64()
    }

    pub(super) fn main() {
        let universe = mpi::initialize().expect("MPI initialises");
        let world = universe.world();
        if world.size() < 2 {
            eprintln!("the raw ping-pong needs 2 ranks: mpirun -n 2 ... {RAW_ARG}");
            std::process::exit(1);
        }
        let n = env("PINGS", 10_000);
        let rounds = env("ROUNDS", 5).max(1);
        if world.rank() > 1 {
            return; // only ranks 0 and 1 play
        }
        ping_pong(&world, 1_000, false);
        ping_pong(&world, 1_000, true);
        let (mut blocking, mut polled) = (vec![], vec![]);
        for _ in 0..rounds {
            blocking.push(ping_pong(&world, n, false) / n as f64 * 1e6);
            polled.push(ping_pong(&world, n, true) / n as f64 * 1e6);
        }
        if world.rank() == 0 {
            println!(
                "{{\"contender\": \"raw_mpi\", \"rounds\": {rounds}, \"pings\": {n}, \"bytes\": 8, \
                 \"ping_pong_us\": {:.3}, \"ping_pong_runs_us\": {}, \
                 \"polled_ping_pong_us\": {:.3}, \"polled_ping_pong_runs_us\": {}}}",
                median(&blocking),
                list(&blocking),
                median(&polled),
                list(&polled),
            );
        }
    }
}
