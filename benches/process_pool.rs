//! The process back end's benchmarks: next to procspawn, raw ipc-channel and
//! a raw pipe (questions 2 to 6), the chunked map on both back ends,
//! payloads from 1 KiB to 1 GiB (11) and the parent's memory per queued
//! task (13).
//!
//! This bench program is its own worker: its `main` first lets a twinpool
//! worker serve (`serve_if_worker`), then a procspawn child (`procspawn::init`),
//! then a raw echo child (see [`raw`]), and only then runs criterion. The raw
//! children are this executable again, told by `RAW_CHILD_ENV` what to be.
//! Every child is reaped: pools on drop, raw children by their `Drop`.
//!
//! `benches/report.py` reads the estimates from `target/criterion/`; the
//! throughput of each benchmark says what one iteration holds (tasks or
//! bytes), so the report can give the time per task or MiB/s.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

mod common;

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use twinpool::{Executor, MapOptions, Registry};

/// Tasks per iteration of the pipelined benchmark (the 100k).
const PIPELINED: u64 = 100_000;
/// procspawn makes two ipc channels and a round trip per task, so it gets
/// fewer tasks per iteration; the report is per task.
const PROCSPAWN_PIPELINED: u64 = 2_000;
/// procspawn handles in flight at once (each holds file descriptors).
const PROCSPAWN_WINDOW: usize = 64;
/// Round trips per iteration.
const ROUND_TRIPS: u64 = 2_000;
/// procspawn round trips per iteration.
const PROCSPAWN_ROUND_TRIPS: u64 = 500;
/// Items of the chunked map and its chunk size.
const MAP_ITEMS: u64 = 1_000_000;
const CHUNK: usize = 1_000;
/// Bytes sent to a worker in the transfer benchmark.
const BIG: usize = 64 << 20;

/// The trivial task.
fn inc(x: u64) -> u64 {
    x.wrapping_add(1)
}

fn len(v: Vec<u8>) -> u64 {
    v.len() as u64
}

fn inc_chunk(v: Vec<u64>) -> Vec<u64> {
    v.into_iter().map(inc).collect()
}

/// Holds its worker for `ms` milliseconds: the task the queued ones wait
/// behind.
fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn tasks() -> Registry {
    Registry::new()
        .register("inc", inc)
        .register("len", len)
        .register("sleep_ms", sleep_ms)
}

/// The sum of `inc` over `0..n`, which every iteration checks.
fn expected(n: u64) -> u64 {
    (0..n).map(inc).sum()
}

/// The raw peers: a child process (this executable again) that echoes.
mod raw {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::time::{Duration, Instant};

    use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};

    /// `pipe`, or `ipc:<one-shot server name>`.
    const RAW_CHILD_ENV: &str = "TWINPOOL_BENCH_RAW_CHILD";

    type Handshake = (IpcBytesSender, IpcBytesReceiver);

    /// The child's answer to one message: 8 bytes (a u64) come back as that
    /// value + 1 (the trivial task); a longer message comes back as its
    /// length.
    fn answer(msg: &[u8]) -> [u8; 8] {
        match <[u8; 8]>::try_from(msg) {
            Ok(b) => u64::from_le_bytes(b).wrapping_add(1).to_le_bytes(),
            Err(_) => (msg.len() as u64).to_le_bytes(),
        }
    }

    /// In a raw child, echoes until the parent hangs up, then exits; in any
    /// other process returns at once.
    pub fn serve_if_child() {
        let Ok(mode) = std::env::var(RAW_CHILD_ENV) else {
            return;
        };
        std::env::remove_var(RAW_CHILD_ENV);
        let code = if mode == "pipe" {
            pipe_echo()
        } else if let Some(name) = mode.strip_prefix("ipc:") {
            ipc_echo(name)
        } else {
            Err(format!("unknown raw child mode {mode:?}"))
        };
        match code {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("raw bench child: {e}");
                std::process::exit(1)
            }
        }
    }

    fn pipe_echo() -> Result<(), String> {
        let mut stdin = std::io::stdin().lock();
        let mut stdout = std::io::stdout().lock();
        let mut buf = [0u8; 8];
        while stdin.read_exact(&mut buf).is_ok() {
            stdout
                .write_all(&answer(&buf))
                .and_then(|()| stdout.flush())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn ipc_echo(name: &str) -> Result<(), String> {
        let connect =
            IpcSender::<Handshake>::connect(name.to_string()).map_err(|e| e.to_string())?;
        let (req_tx, requests) = ipc::bytes_channel().map_err(|e| e.to_string())?;
        let (replies, rep_rx) = ipc::bytes_channel().map_err(|e| e.to_string())?;
        connect.send((req_tx, rep_rx)).map_err(|e| e.to_string())?;
        while let Ok(msg) = requests.recv() {
            if msg.is_empty() {
                break;
            }
            replies.send(&answer(&msg)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A raw child needs no parent-death signal: it reads until its parent
    /// hangs up, which the parent's death does too. Without a `pre_exec`
    /// hook std starts it with `posix_spawn` (a vfork), the fast way.
    fn command(mode: String) -> Command {
        let exe = std::env::current_exe().expect("the bench executable");
        let mut cmd = Command::new(exe);
        cmd.env(RAW_CHILD_ENV, mode);
        cmd
    }

    /// The same with a `pre_exec` hook setting the parent-death signal, as
    /// twinpool's `spawn::start` had until commit 5e41bd3: std must then
    /// `fork`, which copies the parent's page tables.
    fn command_with_pre_exec(mode: String) -> Command {
        let mut cmd = command(mode);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Waits up to a second for `child` to exit, then kills it; reaps it.
    fn reap(child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A child connected by two ipc-channel byte channels.
    pub struct IpcChild {
        child: Child,
        pub tx: IpcBytesSender,
        pub rx: IpcBytesReceiver,
    }

    impl IpcChild {
        pub fn start() -> IpcChild {
            let (server, name) = IpcOneShotServer::<Handshake>::new().expect("a one-shot server");
            let child = command(format!("ipc:{name}"))
                .stdin(Stdio::null())
                .spawn()
                .expect("the raw ipc child starts");
            let (_, (tx, rx)) = server.accept().expect("the raw ipc child connects");
            IpcChild { child, tx, rx }
        }

        /// Sends `x`, returns the answer.
        pub fn round_trip(&self, msg: &[u8]) -> u64 {
            self.tx.send(msg).expect("send to the raw child");
            self.recv()
        }

        pub fn recv(&self) -> u64 {
            let reply = self.rx.recv().expect("a reply from the raw child");
            u64::from_le_bytes(reply.as_slice().try_into().expect("8 bytes"))
        }
    }

    impl Drop for IpcChild {
        fn drop(&mut self) {
            let _ = self.tx.send(&[]);
            reap(&mut self.child);
        }
    }

    /// A child connected by its stdin and stdout.
    pub struct PipeChild {
        child: Child,
        stdin: Option<ChildStdin>,
        stdout: ChildStdout,
    }

    impl PipeChild {
        pub fn start() -> PipeChild {
            PipeChild::start_with(command("pipe".into()))
        }

        /// Started with a `pre_exec` hook, so by `fork`.
        pub fn start_forked() -> PipeChild {
            PipeChild::start_with(command_with_pre_exec("pipe".into()))
        }

        fn start_with(mut cmd: Command) -> PipeChild {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("the raw pipe child starts");
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().expect("a piped stdout");
            PipeChild {
                child,
                stdin,
                stdout,
            }
        }

        pub fn round_trip(&mut self, x: u64) -> u64 {
            let stdin = self.stdin.as_mut().expect("stdin is open");
            stdin
                .write_all(&x.to_le_bytes())
                .expect("write to the raw child");
            let mut buf = [0u8; 8];
            self.stdout
                .read_exact(&mut buf)
                .expect("read from the raw child");
            u64::from_le_bytes(buf)
        }
    }

    impl Drop for PipeChild {
        fn drop(&mut self) {
            self.stdin = None; // EOF: the child exits
            reap(&mut self.child);
        }
    }
}

fn configure(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

fn procspawn_pool(n: usize) -> procspawn::Pool {
    procspawn::Pool::new(n).expect("a procspawn pool")
}

/// Runs `inc` on `0..n` through a procspawn pool with at most
/// `PROCSPAWN_WINDOW` handles in flight; returns the sum of the results.
fn procspawn_windowed(pool: &procspawn::Pool, n: u64) -> u64 {
    let mut in_flight = VecDeque::with_capacity(PROCSPAWN_WINDOW);
    let mut sum = 0;
    for i in 0..n {
        if in_flight.len() == PROCSPAWN_WINDOW {
            let h: procspawn::JoinHandle<u64> = in_flight.pop_front().expect("a handle");
            sum += h.join().expect("procspawn result");
        }
        in_flight.push_back(pool.spawn(i, inc));
    }
    sum + in_flight
        .into_iter()
        .map(|h| h.join().expect("procspawn result"))
        .sum::<u64>()
}

/// Q2: 100k trivial named tasks through one worker, all submitted before
/// any result is taken.
fn q2_process_pipelined(c: &mut Criterion, one: &Executor) {
    let mut g = c.benchmark_group("q2_process_pipelined");
    configure(&mut g);
    g.throughput(Throughput::Elements(PIPELINED));
    let want = expected(PIPELINED);
    g.bench_function("twinpool", |b| {
        b.iter(|| {
            let futures: Vec<_> = (0..PIPELINED)
                .map(|i| one.submit_named::<u64, u64>("inc", i).expect("submit"))
                .collect();
            let sum: u64 = futures
                .into_iter()
                .map(|f| f.result().expect("result"))
                .sum();
            assert_eq!(sum, want);
        })
    });

    // Raw ipc-channel: one thread sends every message while this one
    // receives the echoes, one message per task.
    let child = raw::IpcChild::start();
    g.bench_function("raw_ipc_channel", |b| {
        b.iter(|| {
            let tx = child.tx.clone();
            let sender = std::thread::spawn(move || {
                for i in 0..PIPELINED {
                    tx.send(&i.to_le_bytes()).expect("send to the raw child");
                }
            });
            let sum: u64 = (0..PIPELINED).map(|_| child.recv()).sum();
            sender.join().expect("the sender thread");
            assert_eq!(sum, want);
        })
    });
    drop(child);

    let pool = procspawn_pool(1);
    g.throughput(Throughput::Elements(PROCSPAWN_PIPELINED));
    let want = expected(PROCSPAWN_PIPELINED);
    g.bench_function("procspawn", |b| {
        b.iter(|| assert_eq!(procspawn_windowed(&pool, PROCSPAWN_PIPELINED), want))
    });
    drop(pool);
    g.finish();
}

/// Q3: one task at a time through one worker.
fn q3_process_round_trip(c: &mut Criterion, one: &Executor) {
    let mut g = c.benchmark_group("q3_process_round_trip");
    configure(&mut g);
    g.throughput(Throughput::Elements(ROUND_TRIPS));
    let want = expected(ROUND_TRIPS);
    g.bench_function("twinpool", |b| {
        b.iter(|| {
            let sum: u64 = (0..ROUND_TRIPS)
                .map(|i| {
                    one.submit_named::<u64, u64>("inc", i)
                        .expect("submit")
                        .result()
                        .expect("result")
                })
                .sum();
            assert_eq!(sum, want);
        })
    });

    let child = raw::IpcChild::start();
    g.bench_function("raw_ipc_channel", |b| {
        b.iter(|| {
            let sum: u64 = (0..ROUND_TRIPS)
                .map(|i| child.round_trip(&i.to_le_bytes()))
                .sum();
            assert_eq!(sum, want);
        })
    });
    drop(child);

    let mut child = raw::PipeChild::start();
    g.bench_function("raw_pipe", |b| {
        b.iter(|| {
            let sum: u64 = (0..ROUND_TRIPS).map(|i| child.round_trip(i)).sum();
            assert_eq!(sum, want);
        })
    });
    drop(child);

    let pool = procspawn_pool(1);
    g.throughput(Throughput::Elements(PROCSPAWN_ROUND_TRIPS));
    let want = expected(PROCSPAWN_ROUND_TRIPS);
    g.bench_function("procspawn", |b| {
        b.iter(|| {
            let sum: u64 = (0..PROCSPAWN_ROUND_TRIPS)
                .map(|i| pool.spawn(i, inc).join().expect("procspawn result"))
                .sum();
            assert_eq!(sum, want);
        })
    });
    drop(pool);
    g.finish();
}

/// Q4: a map of 1M items in chunks of 1000, over 2 worker processes and
/// over 2 threads.
fn q4_chunked_map(c: &mut Criterion) {
    let mut g = c.benchmark_group("q4_chunked_map");
    configure(&mut g);
    g.throughput(Throughput::Elements(MAP_ITEMS));
    let want = expected(MAP_ITEMS);
    let opts = || MapOptions {
        chunksize: CHUNK,
        ..Default::default()
    };

    let two = Executor::processes(2, tasks()).expect("a process pool");
    g.bench_function("twinpool_processes", |b| {
        b.iter(|| {
            let sum: u64 = two
                .map_named_with::<u64, u64, _>("inc", 0..MAP_ITEMS, opts())
                .expect("map")
                .map(|r| r.expect("result"))
                .sum();
            assert_eq!(sum, want);
        })
    });
    drop(two);

    // procspawn: one spawn per chunk, at most PROCSPAWN_WINDOW in flight.
    let pool = procspawn_pool(2);
    g.bench_function("procspawn_chunks", |b| {
        b.iter(|| {
            let mut in_flight = VecDeque::new();
            let mut sum = 0;
            let mut next = 0;
            while next < MAP_ITEMS || !in_flight.is_empty() {
                if next < MAP_ITEMS && in_flight.len() < PROCSPAWN_WINDOW {
                    let end = (next + CHUNK as u64).min(MAP_ITEMS);
                    in_flight.push_back(pool.spawn((next..end).collect(), inc_chunk));
                    next = end;
                } else {
                    let h: procspawn::JoinHandle<Vec<u64>> =
                        in_flight.pop_front().expect("a handle");
                    sum += h.join().expect("procspawn result").iter().sum::<u64>();
                }
            }
            assert_eq!(sum, want);
        })
    });
    drop(pool);

    let threads = Executor::threads(2);
    g.bench_function("twinpool_threads", |b| {
        b.iter(|| {
            let sum: u64 = threads
                .map_with(inc, 0..MAP_ITEMS, opts())
                .expect("map")
                .map(|r| r.expect("result"))
                .sum();
            assert_eq!(sum, want);
        })
    });
    drop(threads);

    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a rayon pool");
    g.bench_function("rayon_par_iter", |b| {
        use rayon::prelude::*;
        b.iter(|| {
            let out: Vec<u64> = rayon_pool.install(|| {
                // u64 ranges are not indexed in rayon; u32 ones are.
                (0..MAP_ITEMS as u32)
                    .into_par_iter()
                    .with_min_len(CHUNK)
                    .map(|i| inc(u64::from(i)))
                    .collect()
            });
            assert_eq!(out.iter().sum::<u64>(), want);
        })
    });
    g.finish();
}

/// Q5: a 64 MiB `Vec<u8>` to a worker and its length back.
fn q5_transfer_64mib(c: &mut Criterion, one: &Executor) {
    let mut g = c.benchmark_group("q5_transfer_64mib");
    configure(&mut g);
    g.throughput(Throughput::Bytes(BIG as u64));
    let data: Vec<u8> = (0..BIG).map(|i| i as u8).collect();

    let mut dst = vec![0u8; BIG];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&data));
            black_box(&mut dst);
        })
    });
    drop(dst);

    bench_send_vec(&mut g, one, &data);

    let child = raw::IpcChild::start();
    g.bench_function("raw_ipc_channel", |b| {
        b.iter(|| assert_eq!(child.round_trip(&data), BIG as u64))
    });
    drop(child);

    let pool = procspawn_pool(1);
    g.bench_function("procspawn", |b| {
        b.iter_batched(
            || data.clone(),
            |v| {
                let n = pool.spawn(v, len).join().expect("procspawn result");
                assert_eq!(n, BIG as u64);
            },
            BatchSize::PerIteration,
        )
    });
    drop(pool);
    g.finish();
}

/// twinpool's contender in Q5 and Q11: `data` as a `Vec<u8>` to the worker
/// of `one`, its length back. The argument is moved into the task, so each
/// iteration gets a fresh copy, made outside the timing (an allocation that
/// size costs the raw peer nothing it would not pay anyway).
fn bench_send_vec(g: &mut BenchmarkGroup<'_, WallTime>, one: &Executor, data: &[u8]) {
    g.bench_function("twinpool", |b| {
        b.iter_batched(
            || data.to_vec(),
            |v| {
                let n = one
                    .submit_named::<Vec<u8>, u64>("len", v)
                    .expect("submit")
                    .result()
                    .expect("result");
                assert_eq!(n, data.len() as u64);
            },
            BatchSize::PerIteration,
        )
    });
}

/// The payload sizes of Q11, with their labels.
const PAYLOADS: [(&str, usize); 8] = [
    ("1kib", 1 << 10),
    ("16kib", 16 << 10),
    ("64kib", 64 << 10),
    ("256kib", 256 << 10),
    ("1mib", 1 << 20),
    ("16mib", 16 << 20),
    ("256mib", 256 << 20),
    ("1gib", 1 << 30),
];

/// Q11: a `Vec<u8>` of each size to a worker and its length back, one at a
/// time, beside raw ipc-channel bytes carrying the same bytes.
fn q11_payloads(c: &mut Criterion, one: &Executor) {
    let child = raw::IpcChild::start();
    for (label, size) in PAYLOADS {
        let mut g = c.benchmark_group(format!("q11_payload_{label}"));
        configure(&mut g);
        g.throughput(Throughput::Bytes(size as u64));
        let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        bench_send_vec(&mut g, one, &data);
        g.bench_function("raw_ipc_channel", |b| {
            b.iter(|| assert_eq!(child.round_trip(&data), size as u64))
        });
        g.finish();
    }
    drop(child);
}

/// Q6: start a pool of 2 workers, run 2 tasks, shut it down.
///
/// Measured twice: in the fresh bench process (the headline, as in a
/// program that starts its pool early), and again while this process holds
/// 256 MiB of touched heap, which shows how the start scales with the
/// parent's memory (a `fork` copies its page tables; `posix_spawn` does not).
fn q6_pool_start(c: &mut Criterion, group: &str) {
    let mut g = c.benchmark_group(group);
    configure(&mut g);
    g.bench_function("twinpool", |b| {
        b.iter(|| {
            let ex = Executor::processes(2, tasks()).expect("a process pool");
            let a = ex.submit_named::<u64, u64>("inc", 1).expect("submit");
            let b = ex.submit_named::<u64, u64>("inc", 2).expect("submit");
            assert_eq!(a.result().expect("result") + b.result().expect("result"), 5);
            drop(ex);
        })
    });
    g.bench_function("procspawn", |b| {
        b.iter(|| {
            let pool = procspawn_pool(2);
            let a = pool.spawn(1, inc);
            let b = pool.spawn(2, inc);
            assert_eq!(a.join().expect("result") + b.join().expect("result"), 5);
            pool.shutdown();
        })
    });
    g.bench_function("raw_spawn_pipe", |b| {
        b.iter(|| {
            let mut a = raw::PipeChild::start();
            let mut b = raw::PipeChild::start();
            assert_eq!(a.round_trip(1) + b.round_trip(2), 5);
        })
    });
    // Not a peer but a diagnosis: the same started by fork (a pre_exec hook).
    g.bench_function("raw_spawn_pipe_fork", |b| {
        b.iter(|| {
            let mut a = raw::PipeChild::start_forked();
            let mut b = raw::PipeChild::start_forked();
            assert_eq!(a.round_trip(1) + b.round_trip(2), 5);
        })
    });
    g.finish();
}

/// Tasks queued in the parent in the memory measurement (Q13).
const QUEUED: u64 = 1_000_000;
/// Child processes measured; the median is kept.
const QUEUED_RUNS: usize = 3;
const QUEUED_CHILD_ENV: &str = "TWINPOOL_BENCH_QUEUED_CHILD";
const QUEUED_GROUP: &str = "q13_process_queued_memory";

/// In a child: `QUEUED` small tasks queued behind a task that holds the
/// only worker; the parent's peak memory they add, per task, futures
/// included (a program must hold them to get the results).
fn queued_memory_child() {
    let ex = Executor::processes(1, tasks()).expect("a process pool");
    // Warm up the code paths and the buffers.
    for i in 0..1_000 {
        let f = ex.submit_named::<u64, u64>("inc", i).expect("submit");
        assert_eq!(f.result().expect("result"), i + 1);
    }
    let _holder = ex
        .submit_named::<u64, ()>("sleep_ms", 600_000)
        .expect("submit");
    let mut queued = Vec::new();
    common::memory_child(QUEUED, || {
        queued = (0..QUEUED)
            .map(|i| ex.submit_named::<u64, u64>("inc", i).expect("submit"))
            .collect();
    });
    // Nothing more to run: end the worker now rather than in ten minutes.
    let _ = ex.kill_workers();
    drop(queued);
    ex.shutdown(true, true);
}

fn main() {
    // Worker processes re-run this program: let each serve and exit first.
    twinpool::serve_if_worker(&tasks());
    procspawn::init();
    raw::serve_if_child();
    if std::env::var_os(QUEUED_CHILD_ENV).is_some() {
        queued_memory_child();
        return;
    }

    let mut c = Criterion::default().configure_from_args();
    // First, while this process is small.
    q6_pool_start(&mut c, "q6_pool_start");
    let one = Executor::processes(1, tasks()).expect("a process pool");
    q2_process_pipelined(&mut c, &one);
    q3_process_round_trip(&mut c, &one);
    q5_transfer_64mib(&mut c, &one);
    q11_payloads(&mut c, &one);
    drop(one);
    q4_chunked_map(&mut c);
    let heap: Vec<u8> = vec![1; 256 << 20];
    q6_pool_start(&mut c, "q6_pool_start_256mib_heap");
    black_box(&heap);
    drop(heap);
    if common::runs_now(QUEUED_GROUP) {
        common::memory_runs(QUEUED_CHILD_ENV, QUEUED_GROUP, "twinpool", QUEUED_RUNS);
    }
    c.final_summary();
}
