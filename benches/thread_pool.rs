//! Question 1 of the benchmarks: what does one trivial task cost on the thread back
//! end (submit + result, 2 workers), next to the usual Rust pools and to the
//! raw limit of two threads pulling boxed closures from a crossbeam channel?
//!
//! Each iteration runs `TASKS` tasks (the 1M is scaled down so that
//! criterion can take 10 samples in a few seconds); the throughput is in
//! elements, so the report divides by it to get the time per task.
//! `benches/report.py` reads the estimates from `target/criterion/`.

use std::hint::black_box;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use criterion::{measurement::WallTime, Throughput};
use crossbeam_channel::{Receiver, Sender};

/// Tasks per iteration when all are submitted before any result is taken.
const TASKS: u64 = 100_000;
/// Tasks per iteration when each is waited for before the next is submitted.
const ROUND_TRIPS: u64 = 10_000;
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

fn configure(g: &mut BenchmarkGroup<'_, WallTime>, tasks: u64) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(tasks));
}

fn q1_thread_submit_result(c: &mut Criterion) {
    let mut g = c.benchmark_group("q1_thread_submit_result");
    configure(&mut g, TASKS);
    let want = expected(TASKS);

    let ex = twinpool::Executor::threads(WORKERS);
    g.bench_function("twinpool", |b| {
        b.iter(|| {
            let futures: Vec<_> = (0..TASKS)
                .map(|i| ex.submit(move || task(i)).expect("submit"))
                .collect();
            let sum: u64 = futures
                .into_iter()
                .map(|f| f.result().expect("result"))
                .sum();
            assert_eq!(sum, want);
        })
    });

    let pool = threadpool::ThreadPool::new(WORKERS);
    g.bench_function("threadpool", |b| {
        b.iter(|| {
            let (tx, rx) = crossbeam_channel::unbounded();
            for i in 0..TASKS {
                let tx = tx.clone();
                pool.execute(move || {
                    let _ = tx.send(task(i));
                });
            }
            drop(tx);
            let sum: u64 = rx.iter().sum();
            assert_eq!(sum, want);
        })
    });
    drop(pool);

    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("a rayon pool");
    g.bench_function("rayon_spawn", |b| {
        b.iter(|| {
            let (tx, rx) = crossbeam_channel::unbounded();
            for i in 0..TASKS {
                let tx = tx.clone();
                rayon_pool.spawn(move || {
                    let _ = tx.send(task(i));
                });
            }
            drop(tx);
            let sum: u64 = rx.iter().sum();
            assert_eq!(sum, want);
        })
    });
    drop(rayon_pool);

    let raw = RawPool::new(WORKERS);
    g.bench_function("raw_crossbeam", |b| {
        b.iter(|| {
            for i in 0..TASKS {
                raw.submit(Box::new(move || task(i)));
            }
            let sum: u64 = raw.results.iter().take(TASKS as usize).sum();
            assert_eq!(sum, want);
        })
    });
    g.finish();

    // One task at a time: submit, wait for its result, then the next.
    let mut g = c.benchmark_group("q1_thread_one_at_a_time");
    configure(&mut g, ROUND_TRIPS);
    let want = expected(ROUND_TRIPS);
    g.bench_function("twinpool", |b| {
        b.iter(|| {
            let mut sum = 0;
            for i in 0..ROUND_TRIPS {
                sum += ex
                    .submit(move || task(i))
                    .expect("submit")
                    .result()
                    .expect("result");
            }
            assert_eq!(sum, want);
        })
    });
    let pool = threadpool::ThreadPool::new(WORKERS);
    g.bench_function("threadpool", |b| {
        let (tx, rx) = crossbeam_channel::unbounded();
        b.iter(|| {
            let mut sum = 0;
            for i in 0..ROUND_TRIPS {
                let tx = tx.clone();
                pool.execute(move || {
                    let _ = tx.send(task(i));
                });
                sum += rx.recv().expect("a result");
            }
            assert_eq!(sum, want);
        })
    });
    drop(pool);
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("a rayon pool");
    g.bench_function("rayon_spawn", |b| {
        let (tx, rx) = crossbeam_channel::unbounded();
        b.iter(|| {
            let mut sum = 0;
            for i in 0..ROUND_TRIPS {
                let tx = tx.clone();
                rayon_pool.spawn(move || {
                    let _ = tx.send(task(i));
                });
                sum += rx.recv().expect("a result");
            }
            assert_eq!(sum, want);
        })
    });
    drop(rayon_pool);
    g.bench_function("raw_crossbeam", |b| {
        b.iter(|| {
            let mut sum = 0;
            for i in 0..ROUND_TRIPS {
                raw.submit(Box::new(move || task(i)));
                sum += raw.results.recv().expect("a result");
            }
            assert_eq!(black_box(sum), want);
        })
    });
    g.finish();
    drop(raw);
    drop(ex);
}

criterion_group!(benches, q1_thread_submit_result);
criterion_main!(benches);
