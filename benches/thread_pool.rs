//! The thread back end's benchmarks: what one trivial task costs (submit +
//! result, 2 workers) next to the usual Rust pools and to the raw limit of
//! two threads pulling boxed closures from a crossbeam channel, at every
//! size a program may use.
//!
//! * `q1_thread_submit_result`, `q1_thread_one_at_a_time`: the README's
//!   first question, 100k tasks submitted then collected, and one task at a
//!   time.
//! * `q7_thread_outstanding_*`: 10k, 100k, 1M and 4M tasks outstanding at
//!   once (all submitted, then all collected).
//! * `q8_thread_submitters_*`: 1, 4 and 16 threads, started for the
//!   iteration, each submitting its share of 1M tasks and collecting its own
//!   results.
//! * `q9_thread_one_at_a_time_busy`: one task at a time while the threads
//!   of another pool in the process (one per CPU) run tasks of their own,
//!   about a third of the time each. The contenders take turns in batches,
//!   so that all see the same machine; not a criterion benchmark: written
//!   as `latency.json` next to criterion's results.
//! * `q10_thread_peak_memory`: the peak resident memory per outstanding
//!   task, 1M tasks outstanding, measured from the process (VmHWM) in a
//!   child process per contender so that the peaks do not mix. Not a
//!   criterion benchmark: the children's numbers are written next to
//!   criterion's as `memory.json`.
//!
//! Every contender of a group runs in the same run, one after the other.
//! The throughput is in elements, so the report divides by it to get the
//! time per task. `benches/report.py` reads the estimates from
//! `target/criterion/`.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, BenchmarkGroup, Criterion, SamplingMode};
use criterion::{measurement::WallTime, Throughput};
use crossbeam_channel::{Receiver, Sender};

/// Tasks per iteration when all are submitted before any result is taken.
const TASKS: u64 = 100_000;
/// Tasks per iteration when each is waited for before the next is submitted.
const ROUND_TRIPS: u64 = 10_000;
/// Outstanding tasks of the `q7` groups.
const OUTSTANDING: [(&str, u64); 4] = [
    ("10k", 10_000),
    ("100k", 100_000),
    ("1m", 1_000_000),
    ("4m", 4_000_000),
];
/// Submitting threads of the `q8` groups, and the tasks they share.
const SUBMITTERS: [usize; 3] = [1, 4, 16];
const SUBMITTED: u64 = 1_000_000;
/// Outstanding tasks of the peak memory measurement.
const MEMORY_TASKS: u64 = 1_000_000;
/// Runs of each memory child; the median is kept.
const MEMORY_RUNS: usize = 3;
const WORKERS: usize = 2;

/// The trivial task, the same for every pool.
fn task(i: u64) -> u64 {
    i.wrapping_add(1)
}

/// The sum every iteration must reach (checks that each task ran once).
fn expected(n: u64) -> u64 {
    (0..n).map(task).sum()
}

type Job = Box<dyn FnOnce() -> u64 + Send>;

/// The raw limit: two threads pulling boxed closures from one crossbeam
/// channel and sending their results back over a second one.
struct RawPool {
    jobs: Option<Sender<Job>>,
    results: Receiver<u64>,
    threads: Vec<JoinHandle<()>>,
}

impl RawPool {
    fn new(n: usize) -> RawPool {
        let (jobs, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (result_tx, results) = crossbeam_channel::unbounded();
        let threads = (0..n)
            .map(|_| {
                let job_rx = job_rx.clone();
                let result_tx = result_tx.clone();
                std::thread::spawn(move || {
                    for job in job_rx {
                        if result_tx.send(job()).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        RawPool {
            jobs: Some(jobs),
            results,
            threads,
        }
    }

    fn submit(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            jobs.send(job).expect("the raw pool's threads are alive");
        }
    }
}

impl Drop for RawPool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The raw limit for several submitters: the same two threads, but each
/// job sends its result to the channel of the thread that submitted it.
struct RawReplyPool {
    jobs: Option<Sender<Box<dyn FnOnce() + Send>>>,
    threads: Vec<JoinHandle<()>>,
}

impl RawReplyPool {
    fn new(n: usize) -> RawReplyPool {
        let (jobs, job_rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        let threads = (0..n)
            .map(|_| {
                let job_rx = job_rx.clone();
                std::thread::spawn(move || {
                    for job in job_rx {
                        job();
                    }
                })
            })
            .collect();
        RawReplyPool {
            jobs: Some(jobs),
            threads,
        }
    }

    fn execute(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(jobs) = &self.jobs {
            jobs.send(Box::new(job))
                .expect("the raw pool's threads are alive");
        }
    }
}

impl Drop for RawReplyPool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The contenders, each with the same two kinds of work.
enum Pool {
    Twinpool(twinpool::Executor),
    Raw(RawPool),
    RawReply(RawReplyPool),
    Threadpool(threadpool::ThreadPool),
    Rayon(rayon::ThreadPool),
}

/// The contenders of a group, in the order they run.
const NAMES: [&str; 4] = ["twinpool", "raw_crossbeam", "threadpool", "rayon_spawn"];

impl Pool {
    /// A pool of `WORKERS` threads; `reply` picks the raw pool whose jobs
    /// answer to their own submitter (for several submitters).
    fn new(name: &str, reply: bool) -> Pool {
        match name {
            "twinpool" => Pool::Twinpool(twinpool::Executor::threads(WORKERS)),
            "raw_crossbeam" if reply => Pool::RawReply(RawReplyPool::new(WORKERS)),
            "raw_crossbeam" => Pool::Raw(RawPool::new(WORKERS)),
            "threadpool" => Pool::Threadpool(threadpool::ThreadPool::new(WORKERS)),
            "rayon_spawn" => Pool::Rayon(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(WORKERS)
                    .build()
                    .expect("a rayon pool"),
            ),
            _ => unreachable!("no contender named {name}"),
        }
    }

    /// Submits tasks `from..from + n`, then collects their results; returns
    /// their sum. Safe to call from several threads at once, except on the
    /// raw pool with one shared result channel.
    fn burst(&self, from: u64, n: u64) -> u64 {
        match self {
            Pool::Twinpool(ex) => {
                let futures: Vec<_> = (from..from + n)
                    .map(|i| ex.submit(move || task(i)).expect("submit"))
                    .collect();
                futures
                    .into_iter()
                    .map(|f| f.result().expect("result"))
                    .sum()
            }
            Pool::Raw(raw) => {
                for i in from..from + n {
                    raw.submit(Box::new(move || task(i)));
                }
                raw.results.iter().take(n as usize).sum()
            }
            Pool::RawReply(raw) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                for i in from..from + n {
                    let tx = tx.clone();
                    raw.execute(move || {
                        let _ = tx.send(task(i));
                    });
                }
                drop(tx);
                rx.iter().sum()
            }
            Pool::Threadpool(pool) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                for i in from..from + n {
                    let tx = tx.clone();
                    pool.execute(move || {
                        let _ = tx.send(task(i));
                    });
                }
                drop(tx);
                rx.iter().sum()
            }
            Pool::Rayon(pool) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                for i in from..from + n {
                    let tx = tx.clone();
                    pool.spawn(move || {
                        let _ = tx.send(task(i));
                    });
                }
                drop(tx);
                rx.iter().sum()
            }
        }
    }

    /// `n` tasks, each submitted once the previous one's result is back;
    /// returns the sum of the results. `reply` carries them for the pools
    /// without futures.
    fn one_at_a_time(&self, n: u64, reply: &(Sender<u64>, Receiver<u64>)) -> u64 {
        let (tx, rx) = reply;
        let mut sum = 0;
        match self {
            Pool::Twinpool(ex) => {
                for i in 0..n {
                    sum += ex
                        .submit(move || task(i))
                        .expect("submit")
                        .result()
                        .expect("result");
                }
            }
            Pool::Raw(raw) => {
                for i in 0..n {
                    raw.submit(Box::new(move || task(i)));
                    sum += raw.results.recv().expect("a result");
                }
            }
            Pool::RawReply(raw) => {
                for i in 0..n {
                    let tx = tx.clone();
                    raw.execute(move || {
                        let _ = tx.send(task(i));
                    });
                    sum += rx.recv().expect("a result");
                }
            }
            Pool::Threadpool(pool) => {
                for i in 0..n {
                    let tx = tx.clone();
                    pool.execute(move || {
                        let _ = tx.send(task(i));
                    });
                    sum += rx.recv().expect("a result");
                }
            }
            Pool::Rayon(pool) => {
                for i in 0..n {
                    let tx = tx.clone();
                    pool.spawn(move || {
                        let _ = tx.send(task(i));
                    });
                    sum += rx.recv().expect("a result");
                }
            }
        }
        black_box(sum)
    }
}

fn configure(g: &mut BenchmarkGroup<'_, WallTime>, tasks: u64) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(tasks));
}

/// The README's first question: 100k tasks submitted, then collected; and
/// one task at a time.
fn q1_thread_submit_result(c: &mut Criterion) {
    let mut g = c.benchmark_group("q1_thread_submit_result");
    configure(&mut g, TASKS);
    let want = expected(TASKS);
    for name in NAMES {
        let pool = Pool::new(name, false);
        g.bench_function(name, |b| b.iter(|| assert_eq!(pool.burst(0, TASKS), want)));
    }
    g.finish();

    let mut g = c.benchmark_group("q1_thread_one_at_a_time");
    configure(&mut g, ROUND_TRIPS);
    let want = expected(ROUND_TRIPS);
    let reply = crossbeam_channel::unbounded();
    for name in NAMES {
        let pool = Pool::new(name, false);
        g.bench_function(name, |b| {
            b.iter(|| assert_eq!(pool.one_at_a_time(ROUND_TRIPS, &reply), want))
        });
    }
    g.finish();
}

/// 10k to 4M tasks outstanding at once, 2 workers.
fn q7_thread_outstanding(c: &mut Criterion) {
    for (label, n) in OUTSTANDING {
        let mut g = c.benchmark_group(format!("q7_thread_outstanding_{label}"));
        configure(&mut g, n);
        if n >= 1_000_000 {
            // An iteration takes a good part of a second: criterion's
            // fewest samples (10), one iteration each.
            g.warm_up_time(Duration::from_millis(100))
                .measurement_time(Duration::from_millis(100));
        }
        let want = expected(n);
        for name in NAMES {
            let pool = Pool::new(name, false);
            g.bench_function(name, |b| b.iter(|| assert_eq!(pool.burst(0, n), want)));
        }
        g.finish();
    }
}

/// 1, 4 and 16 threads, started for each iteration (so that nothing they
/// keep per thread outlives it), each submitting its share of 1M tasks and
/// collecting its own results.
fn q8_thread_submitters(c: &mut Criterion) {
    let want = expected(SUBMITTED);
    for threads in SUBMITTERS {
        let mut g = c.benchmark_group(format!("q8_thread_submitters_{threads}"));
        configure(&mut g, SUBMITTED);
        g.warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(100));
        let share = SUBMITTED / threads as u64;
        for name in NAMES {
            let pool = Pool::new(name, true);
            g.bench_function(name, |b| {
                b.iter(|| {
                    let sum: u64 = std::thread::scope(|s| {
                        let pool = &pool;
                        let handles: Vec<_> = (0..threads as u64)
                            .map(|t| s.spawn(move || pool.burst(t * share, share)))
                            .collect();
                        handles.into_iter().map(|h| h.join().unwrap()).sum()
                    });
                    assert_eq!(sum, want);
                })
            });
        }
        g.finish();
    }
}

/// How long a task of the busy pool computes, and how long its thread then
/// waits for the next one (a sleep: in fact the timer's slack makes it
/// about 100 µs).
const BUSY_WORK: Duration = Duration::from_micros(50);
const BUSY_IDLE: Duration = Duration::from_micros(50);

/// Threads of another pool, one per CPU, that run tasks of [`BUSY_WORK`]
/// with short waits between them until dropped: about a third of every CPU
/// busy, so that the CPUs are sometimes all taken and sometimes not, as in
/// a program whose other pools serve work of their own.
struct Busy {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Busy {
    fn start() -> Busy {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cpus)
            .map(|i| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("other_pool_{i}"))
                    .spawn(move || {
                        let mut x = i as u64;
                        while !stop.load(Ordering::Relaxed) {
                            let task = std::time::Instant::now();
                            while task.elapsed() < BUSY_WORK {
                                for _ in 0..100 {
                                    x = black_box(
                                        x.wrapping_mul(6364136223846793005).wrapping_add(1),
                                    );
                                }
                            }
                            std::thread::sleep(BUSY_IDLE);
                        }
                        black_box(x);
                    })
                    .expect("a busy thread")
            })
            .collect();
        Busy { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Rounds of the latency measurement, and round trips per contender and
/// round.
const BUSY_ROUNDS: usize = 400;
const BUSY_BATCH: u64 = 250;
const LATENCY_GROUP: &str = "q9_thread_one_at_a_time_busy";

/// One task at a time while another pool's threads are busy (see
/// [`Busy`]). Not a criterion benchmark: on a shared machine the scheduler's
/// mood changes within seconds, so the contenders take turns, a batch of
/// round trips each per round (in a rotating order), all pools alive at
/// once, and each one's mean is taken over all its batches. Written as
/// `latency.json` beside criterion's results.
fn q9_thread_one_at_a_time_busy() {
    let dir = common::criterion_dir().expect("criterion's directory");
    let reply = crossbeam_channel::unbounded();
    let pools: Vec<Pool> = NAMES.iter().map(|name| Pool::new(name, false)).collect();
    let want = expected(BUSY_BATCH);
    // Warm up each pool (threads started, caches filled).
    for pool in &pools {
        assert_eq!(pool.one_at_a_time(BUSY_BATCH, &reply), want);
    }
    let busy = Busy::start();
    let mut batches = vec![Vec::new(); pools.len()];
    for round in 0..BUSY_ROUNDS {
        for k in 0..pools.len() {
            let i = (round + k) % pools.len();
            let start = std::time::Instant::now();
            assert_eq!(pools[i].one_at_a_time(BUSY_BATCH, &reply), want);
            batches[i].push(start.elapsed().as_nanos() as f64 / BUSY_BATCH as f64);
        }
    }
    drop(busy);
    for (name, ns) in NAMES.iter().zip(&batches) {
        let mean = ns.iter().sum::<f64>() / ns.len() as f64;
        let lo = ns.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ns.iter().copied().fold(0.0, f64::max);
        println!("{LATENCY_GROUP}/{name}: mean {mean:.0} ns per round trip (batches from {lo:.0} to {hi:.0})");
        let out = dir.join(LATENCY_GROUP).join(name);
        std::fs::create_dir_all(&out).expect("criterion's directory");
        let json = format!(
            "{{\"ns_per_task\": {mean}, \"lo\": {lo}, \"hi\": {hi}, \"tasks\": {}, \"batches\": {}}}\n",
            BUSY_BATCH * BUSY_ROUNDS as u64,
            ns.len()
        );
        std::fs::write(out.join("latency.json"), json).expect("latency.json");
    }
}

/// Names the contender a memory child measures.
const MEMORY_CHILD_ENV: &str = "TWINPOOL_BENCH_MEMORY_CHILD";
const MEMORY_GROUP: &str = "q10_thread_peak_memory";

/// In a child: `MEMORY_TASKS` tasks outstanding on the contender `name`;
/// prints the resident set before, its peak after, and their difference
/// per task.
fn memory_child(name: &str) {
    let pool = Pool::new(name, false);
    // Start the threads and warm up the code paths, with few tasks.
    assert_eq!(pool.burst(0, 1_000), expected(1_000));
    common::memory_child(MEMORY_TASKS, || {
        assert_eq!(pool.burst(0, MEMORY_TASKS), expected(MEMORY_TASKS));
    });
}

/// The peak memory per outstanding task of each contender, each in a child
/// process of its own (`MEMORY_RUNS` times, the median kept), written to
/// `<criterion>/q10_thread_peak_memory/<contender>/memory.json`.
fn q10_thread_peak_memory() {
    for name in NAMES {
        common::memory_runs(MEMORY_CHILD_ENV, MEMORY_GROUP, name, MEMORY_RUNS);
    }
}

criterion_group!(
    benches,
    q1_thread_submit_result,
    q7_thread_outstanding,
    q8_thread_submitters
);

fn main() {
    if let Ok(name) = std::env::var(MEMORY_CHILD_ENV) {
        memory_child(&name);
        return;
    }
    benches();
    // The groups that are not criterion's: only when benchmarking (cargo
    // bench passes --bench), and filtered as criterion filters: when no
    // filter is given, or the filter (a regular expression; read here as
    // `a|b|...` alternatives) names the group.
    if common::runs_now(LATENCY_GROUP) {
        q9_thread_one_at_a_time_busy();
    }
    if common::runs_now(MEMORY_GROUP) {
        q10_thread_peak_memory();
    }
    Criterion::default().configure_from_args().final_summary();
}
