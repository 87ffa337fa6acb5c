//! The MPI back end, end to end: under `mpirun -n 3` (rank 0 is the pool),
//! and as a singleton that spawns its 2 ranks; each also with
//! `--mca btl tcp,self`, so that messages cross TCP as between hosts.
//!
//! Run by `cargo test --features mpi`, this binary is the *driver*: it
//! starts itself under `mpirun` and as a singleton, in process groups of
//! their own and with a time limit, reports what they printed, and checks
//! that no rank or worker is left behind (killing any that are, and then
//! failing). Started with `TWINPOOL_MPI_TEST` set, it runs the cases.
//! Without `mpirun` on the PATH it says so and passes.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twinpool::{as_completed, Error, Executor, MapOptions, Registry, WorkerExit};

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Waits (up to a minute) until the file `path` exists: a gate the test
/// opens when it is ready.
fn gate(path: String) -> bool {
    let start = Instant::now();
    while !Path::new(&path).exists() {
        if start.elapsed() > Duration::from_secs(60) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Leaves a file named `i` in `dir`, then sleeps `ms`: the test sees which
/// tasks have started.
fn mark_then_sleep((dir, i, ms): (String, u32, u64)) -> u64 {
    let _ = std::fs::write(Path::new(&dir).join(i.to_string()), b"");
    sleep_ms(ms)
}

fn boom(_: ()) -> u64 {
    panic!("boom on purpose")
}

fn segfault(_: ()) -> u64 {
    // A real fault: a raised SIGSEGV only reaches std's stack-overflow
    // handler, which returns.
    // SAFETY: none: the write faults, on purpose, and the worker dies.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    0
}

fn checksum(bytes: Vec<u8>) -> (u64, Vec<u8>) {
    let sum = bytes.iter().map(|&b| u64::from(b)).sum();
    (sum, bytes)
}

/// The worker's process id.
fn own_pid(_: ()) -> u32 {
    std::process::id()
}

/// The serving rank's process id: the parent of the worker that runs this.
fn rank_pid(_: ()) -> u32 {
    // SAFETY: getppid touches no memory.
    unsafe { libc::getppid() as u32 }
}

fn mismatch(x: u32) -> u32 {
    x
}

fn tasks() -> Registry {
    Registry::new()
        .register("square", square)
        .register("sleep_ms", sleep_ms)
        .register("mark_then_sleep", mark_then_sleep)
        .register("gate", gate)
        .register("boom", boom)
        .register("segfault", segfault)
        .register("checksum", checksum)
        .register("mismatch", mismatch)
        .register("rank_pid", rank_pid)
        .register("own_pid", own_pid)
}

/// The tasks with one of another type than the ranks hold.
fn other_tasks() -> Registry {
    Registry::new()
        .register("square", square)
        .register("mismatch", |x: u64| x)
}

const MODE: &str = "TWINPOOL_MPI_TEST";

fn main() {
    twinpool::serve_if_worker(&tasks());
    match std::env::var(MODE).as_deref() {
        Ok("launched") => run_cases(None),
        Ok("spawned") => run_cases(Some(2)),
        Ok("exits_while_busy") => exits_while_busy(),
        _ => drive(),
    }
}

// ─── the cases, in the pool's process ───────────────────────────────────

type Case = fn(&dyn Fn() -> Executor, &Path);

fn run_cases(spawn: Option<usize>) {
    let cases: &[(&str, Case)] = &[
        ("submit_and_result", submit_and_result),
        ("map_keeps_order_with_chunks", map_keeps_order_with_chunks),
        (
            "as_completed_yields_every_future",
            as_completed_yields_every_future,
        ),
        ("callbacks_run", callbacks_run),
        (
            "cancel_takes_back_tasks_still_queued",
            cancel_takes_back_tasks_still_queued,
        ),
        (
            "shutdown_cancels_what_is_queued",
            shutdown_cancels_what_is_queued,
        ),
        ("a_panic_costs_its_task", a_panic_costs_its_task),
        ("a_segfault_costs_its_task", a_segfault_costs_its_task),
        ("a_time_limit_stops_its_task", a_time_limit_stops_its_task),
        ("kill_stops_a_running_task", kill_stops_a_running_task),
        (
            "kill_workers_stops_every_task",
            kill_workers_stops_every_task,
        ),
        ("big_payloads_cross_whole", big_payloads_cross_whole),
        (
            "other_types_are_refused_at_start",
            other_types_are_refused_at_start,
        ),
        ("stats_count_the_tasks", stats_count_the_tasks),
        ("await_works", await_works),
        ("pool_options_reach_the_ranks", pool_options_reach_the_ranks),
        // Last: it kills a rank. Under mpirun that ends the job, so it
        // runs on spawned ranks only.
        ("a_dead_rank_fails_its_tasks", a_dead_rank_fails_its_tasks),
    ];
    let only = std::env::var("TWINPOOL_MPI_CASE").ok();
    let dir = std::env::temp_dir().join(format!("twinpool-mpi-{}", std::process::id()));
    let build = move || -> Executor {
        let b = Executor::builder().registry(tasks()).workers_per_rank(1);
        let b = match spawn {
            Some(n) => b.mpi_spawn(n),
            None => b.mpi(),
        };
        b.build().expect("the MPI pool starts")
    };
    let mut failed = 0;
    for (name, case) in cases {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        let case_dir = dir.join(name);
        std::fs::create_dir_all(&case_dir).expect("a temporary directory");
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(|| case(&build, &case_dir));
        match outcome {
            Ok(()) => println!("case {name} ... ok ({:.2?})", start.elapsed()),
            Err(_) => {
                println!("case {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed > 0 {
        println!("{failed} cases failed");
        std::process::exit(1);
    }
}

fn submit_and_result(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    assert_eq!(ex.max_workers(), 2);
    let futures: Vec<_> = (0..200u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(f.result().unwrap(), i * i);
    }
    // A name the pool does not know, and a wrong type, fail the call.
    assert!(matches!(
        ex.submit_named::<u64, u64>("nope", 1),
        Err(Error::NotRegistered { .. })
    ));
    let wrong = ex.submit_named::<u64, String>("square", 1).unwrap();
    assert!(matches!(wrong.result(), Err(Error::Decode { .. })));
}

fn map_keeps_order_with_chunks(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    for chunksize in [1, 7, 100] {
        let opts = MapOptions::new().chunksize(chunksize);
        let got: Vec<u64> = ex
            .map_named_with::<u64, u64, _>("square", 0..1000u64, opts)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
        assert_eq!(got, want, "chunksize {chunksize}");
    }
}

fn as_completed_yields_every_future(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    let futures: Vec<_> = [40u64, 1, 20, 5, 30, 2]
        .into_iter()
        .map(|ms| ex.submit_named::<u64, u64>("sleep_ms", ms).unwrap())
        .collect();
    let mut got: Vec<u64> = as_completed(futures, Some(Duration::from_secs(60)))
        .map(|f| f.unwrap().result().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, [1, 2, 5, 20, 30, 40]);
}

fn callbacks_run(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    let (tx, rx) = std::sync::mpsc::channel();
    let f = ex.submit_named::<u64, u64>("square", 9).unwrap();
    f.add_done_callback(move |r| {
        let _ = tx.send(r.clone());
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), Ok(81));
}

/// Fills every rank's room with tasks held at a gate; what is submitted
/// after them waits in the pool's process, where `cancel` takes it back.
fn fill_ranks(ex: &Executor, dir: &Path) -> (PathBuf, Vec<twinpool::Future<bool>>) {
    let open = dir.join("open");
    let held: Vec<_> = (0..2 * 4)
        .map(|_| {
            ex.submit_named::<String, bool>("gate", open.display().to_string())
                .unwrap()
        })
        .collect();
    (open, held)
}

fn cancel_takes_back_tasks_still_queued(build: &dyn Fn() -> Executor, dir: &Path) {
    let ex = build();
    let (open, held) = fill_ranks(&ex, dir);
    let queued: Vec<_> = (0..10u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    for f in &queued[5..] {
        assert!(f.cancel(), "a task still queued is cancelled");
    }
    assert!(
        held.iter().all(|f| !f.cancel()),
        "a task sent to a rank runs"
    );
    std::fs::write(&open, b"").unwrap();
    for f in held {
        assert_eq!(f.result(), Ok(true));
    }
    for (i, f) in queued.into_iter().enumerate() {
        let i = i as u64;
        if i < 5 {
            assert_eq!(f.result(), Ok(i * i));
        } else {
            assert_eq!(f.result(), Err(Error::Cancelled));
        }
    }
}

fn shutdown_cancels_what_is_queued(build: &dyn Fn() -> Executor, dir: &Path) {
    let ex = build();
    let (open, held) = fill_ranks(&ex, dir);
    let queued: Vec<_> = (0..6u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    ex.shutdown(false, true);
    assert!(matches!(
        ex.submit_named::<u64, u64>("square", 1),
        Err(Error::Shutdown)
    ));
    std::fs::write(&open, b"").unwrap();
    ex.shutdown(true, false);
    for f in held {
        assert_eq!(f.result(), Ok(true));
    }
    for f in queued {
        assert_eq!(f.result(), Err(Error::Cancelled));
    }
}

fn a_panic_costs_its_task(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    let f = ex.submit_named::<(), u64>("boom", ()).unwrap();
    match f.result() {
        Err(Error::Panicked { message }) => assert!(message.contains("boom on purpose")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 3).unwrap().result(),
        Ok(9)
    );
}

fn a_segfault_costs_its_task(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    let before: Vec<_> = (0..20u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    let f = ex.submit_named::<(), u64>("segfault", ()).unwrap();
    let after: Vec<_> = (0..20u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    match f.result() {
        Err(Error::WorkerDied { exit, .. }) => assert_eq!(exit, WorkerExit::Signal(11)),
        other => panic!("{other:?}"),
    }
    // The rank replaced its worker, and says so twice a second.
    let start = Instant::now();
    while ex.stats().worker_restarts < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            ex.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, f) in before.into_iter().chain(after).enumerate() {
        let i = (i % 20) as u64;
        assert_eq!(f.result(), Ok(i * i), "an innocent task");
    }
}

fn a_time_limit_stops_its_task(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    let limit = Duration::from_millis(300);
    let start = Instant::now();
    let f = ex
        .submit_named_timeout::<u64, u64>("sleep_ms", 60_000, limit)
        .unwrap();
    assert_eq!(f.result(), Err(Error::TaskTimedOut { limit }));
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 4).unwrap().result(),
        Ok(16)
    );
}

fn kill_stops_a_running_task(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    let start = Instant::now();
    let f = ex.submit_named::<u64, u64>("sleep_ms", 60_000).unwrap();
    assert!(f.running());
    assert!(f.kill());
    assert!(matches!(f.result(), Err(Error::Killed { .. })));
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 5).unwrap().result(),
        Ok(25)
    );
    // The rank stopped the task: its pool closes long before the minute.
    ex.shutdown(true, false);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

fn kill_workers_stops_every_task(build: &dyn Fn() -> Executor, dir: &Path) {
    let ex = build();
    let start = Instant::now();
    let dir_name = dir.display().to_string();
    let sent: Vec<_> = (0..8u32)
        .map(|i| {
            let arg = (dir_name.clone(), i, 60_000u64);
            ex.submit_named::<_, u64>("mark_then_sleep", arg).unwrap()
        })
        .collect();
    let queued: Vec<_> = (0..4u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    // Each rank's one worker has started one task, which holds it.
    while std::fs::read_dir(dir).map_or(0, |d| d.count()) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the tasks never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    ex.kill_workers().unwrap();
    // The two that run are killed; those behind them never start: killed
    // "before it started" if a worker held them, else cancelled.
    let started: Vec<u32> = (0..8)
        .filter(|i| dir.join(i.to_string()).exists())
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    for (i, f) in (0..8u32).zip(sent) {
        match f.result() {
            Err(Error::Killed { .. }) => {}
            Err(Error::Cancelled) => assert!(!started.contains(&i), "task {i} ran"),
            other => panic!("{other:?}"),
        }
    }
    for f in queued {
        assert_eq!(f.result(), Err(Error::Cancelled));
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(
        ex.submit_named::<u64, u64>("square", 1),
        Err(Error::Shutdown)
    ));
}

fn big_payloads_cross_whole(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    for len in [0usize, 100, 40_000, 3 << 20] {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let want: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
        let (sum, back) = ex
            .submit_named::<Vec<u8>, (u64, Vec<u8>)>("checksum", bytes.clone())
            .unwrap()
            .result()
            .unwrap();
        assert_eq!(sum, want, "{len} bytes");
        assert!(back == bytes, "{len} bytes came back changed");
    }
}

fn other_types_are_refused_at_start(_: &dyn Fn() -> Executor, _: &Path) {
    let b = Executor::builder()
        .registry(other_tasks())
        .workers_per_rank(1);
    let b = match std::env::var(MODE).as_deref() {
        Ok("spawned") => b.mpi_spawn(2),
        _ => b.mpi(),
    };
    match b.build() {
        Err(Error::Spawn { reason }) => assert!(reason.contains("mismatch"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

fn stats_count_the_tasks(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    let fs: Vec<_> = (0..10u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    let bad = ex.submit_named::<(), u64>("boom", ()).unwrap();
    for f in fs {
        f.result().unwrap();
    }
    assert!(bad.result().is_err());
    let s = ex.stats();
    assert_eq!((s.finished, s.failed, s.queued, s.running), (11, 1, 0, 0));
    assert_eq!(s.live_workers, 2);
}

/// The program ends while its ranks run tasks of a minute: they are told
/// to quit, their workers are killed, and the job ends at once.
fn exits_while_busy() {
    let ex = Executor::builder()
        .registry(tasks())
        .workers_per_rank(1)
        .mpi()
        .build()
        .expect("the MPI pool starts");
    let fs: Vec<_> = (0..4)
        .map(|_| ex.submit_named::<u64, u64>("sleep_ms", 60_000).unwrap())
        .collect();
    while !fs.iter().all(|f| f.running()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("case exits_while_busy ... exiting");
    std::process::exit(0);
}

/// Polls a future to its end on this thread, parking between polls.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

fn await_works(build: &dyn Fn() -> Executor, _: &Path) {
    let ex = build();
    let f = ex.submit_named::<u64, u64>("square", 12).unwrap();
    assert_eq!(block_on(async move { f.await.map(|x| x + 1) }), Ok(145));
}

fn pool_options_reach_the_ranks(_: &dyn Fn() -> Executor, _: &Path) {
    let b = Executor::builder()
        .registry(tasks())
        .workers_per_rank(1)
        .max_tasks_per_child(1)
        .task_timeout(Duration::from_millis(300));
    let b = match std::env::var(MODE).as_deref() {
        Ok("spawned") => b.mpi_spawn(2),
        _ => b.mpi(),
    };
    let ex = b.build().unwrap();
    // Each worker runs one task, then a new one takes its place.
    let pids: std::collections::HashSet<u32> = (0..6)
        .map(|_| {
            ex.submit_named::<(), u32>("own_pid", ())
                .unwrap()
                .result()
                .unwrap()
        })
        .collect();
    assert_eq!(pids.len(), 6);
    // The pool's time limit holds on the ranks.
    let f = ex.submit_named::<u64, u64>("sleep_ms", 60_000).unwrap();
    assert_eq!(
        f.result(),
        Err(Error::TaskTimedOut {
            limit: Duration::from_millis(300)
        })
    );
}

fn a_dead_rank_fails_its_tasks(build: &dyn Fn() -> Executor, _: &Path) {
    if std::env::var(MODE).as_deref() != Ok("spawned") {
        return;
    }
    let ex = build();
    let pid = ex
        .submit_named::<(), u32>("rank_pid", ())
        .unwrap()
        .result()
        .unwrap();
    // One task per rank: the least loaded rank gets each.
    let fs: Vec<_> = (0..2)
        .map(|_| ex.submit_named::<u64, u64>("sleep_ms", 60_000).unwrap())
        .collect();
    // SAFETY: signals the rank process a task of ours reported.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // The task the dead rank held fails once the rank has been silent too
    // long. (Open MPI may end the other spawned rank too.)
    let waited = twinpool::wait(
        fs,
        Some(Duration::from_secs(60)),
        twinpool::ReturnWhen::FirstCompleted,
    );
    assert!(!waited.done.is_empty(), "no task ended");
    ex.kill_workers().unwrap();
    let mut lost = 0;
    for f in waited.done.into_iter().chain(waited.not_done) {
        match f.result() {
            Err(Error::BrokenPool { reason }) => {
                assert!(reason.contains("said nothing"), "{reason}");
                lost += 1;
            }
            Err(Error::Killed { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(lost >= 1);
    drop(ex);
    // A new executor spawns new ranks.
    let ex = build();
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 6).unwrap().result(),
        Ok(36)
    );
}

// ─── the driver ─────────────────────────────────────────────────────────

fn drive() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        println!("mpirun is not on the PATH: the MPI tests are skipped");
        return;
    }
    let me = std::env::current_exe().expect("the test's own path");
    let runs: [(&str, Vec<&str>, &str); 4] = [
        ("launched", vec!["-n", "3", "--oversubscribe"], "launched"),
        (
            "launched over TCP",
            vec!["-n", "3", "--oversubscribe", "--mca", "btl", "tcp,self"],
            "launched",
        ),
        ("spawned", vec![], "spawned"),
        ("spawned over TCP", vec![], "spawned"),
    ];
    let mut failed = Vec::new();
    let exiting = (
        "ends while busy",
        vec!["-n", "3", "--oversubscribe"],
        "exits_while_busy",
    );
    for (what, mpirun_args, mode) in runs.into_iter().chain([exiting]) {
        let mut cmd = if mode != "spawned" {
            let mut c = Command::new("mpirun");
            c.args(&mpirun_args).args(["-x", MODE]);
            if let Ok(case) = std::env::var("TWINPOOL_MPI_CASE") {
                c.args(["-x", "TWINPOOL_MPI_CASE"]);
                let _ = case;
            }
            c.arg(&me);
            c
        } else {
            Command::new(&me)
        };
        if what.ends_with("TCP") {
            cmd.env("OMPI_MCA_btl", "tcp,self");
        }
        cmd.env(MODE, mode)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .stdin(Stdio::null())
            .process_group(0);
        println!("── {what}");
        let limit = if mode == "exits_while_busy" {
            // The tasks sleep a minute: ending sooner shows they were
            // stopped.
            Duration::from_secs(40)
        } else {
            Duration::from_secs(240)
        };
        let ok = run_limited(cmd, limit);
        if !ok {
            failed.push(what);
        }
        if let Err(left) = nothing_left(&me) {
            println!("left behind after {what}: {left}");
            failed.push("processes left behind");
        }
    }
    if !failed.is_empty() {
        panic!("MPI test runs failed: {failed:?}");
    }
    println!("all MPI test runs passed");
}

/// Runs `cmd` (in a process group of its own) to its end, or kills its
/// group after `limit`; true if it exited with 0.
fn run_limited(mut cmd: Command, limit: Duration) -> bool {
    let mut child = cmd.spawn().expect("mpirun or the test starts");
    let pgid = child.id() as i32;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // Whatever it left in its group goes too.
                // SAFETY: signals the process group this driver started.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                return status.success();
            }
            Ok(None) if start.elapsed() > limit => {
                println!("still running after {limit:?}: killing its process group");
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return false,
        }
    }
}

/// Waits (up to 20 s) until no process runs this test's binary or an
/// Open MPI daemon of ours; kills and names whatever is still there.
fn nothing_left(me: &Path) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let left = ours(me);
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            for (pid, _) in &left {
                // SAFETY: signals a process that runs this test's binary.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            return Err(format!("{left:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live processes (not zombies) running `me`, other than this one.
fn ours(me: &Path) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
            continue;
        };
        if exe == me {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}
