//! The process back end's promise, pinned from the outside: a crash, a hang
//! or a kill costs exactly the one task it hit, the pool lives on, and time
//! limits and `Future::kill` always take effect.
//!
//! Like `process_failures.rs`, this program is its own worker. Tasks
//! coordinate with the test through files in the test's directory: each run
//! of a task appends `<tag> <pid>` to the directory's run log, so a test
//! counts how often a task ran and where; blocking tasks wait for a gate file
//! (`go-<tag>`). Every test holds a [`Guard`]: a failing test opens all its
//! gates as it panics, and the guard kills and reaps whatever processes are
//! left. Waits are bounded (tens of seconds) only to turn a hang into a
//! failure; where a behaviour is about time, the bound is far from both the
//! expected and the buggy behaviour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use twinpool::{serve_if_worker, Error, Executor, Future, MapOptions, Registry};

mod proc_common;
use common::{alive, gate, mark_run, runs, runs_of, started, within, Census, Guard};
use proc_common as common;

/// Bound on a wait for something that should happen soon: turns a hang into
/// a failure.
const BOUND: Duration = Duration::from_secs(30);
/// How long a blocking task would block if nothing stopped it.
const FOREVER_MS: u64 = 120_000;

/// How a `crash` task ends its worker.
const ABORT: u8 = 0;
const SEGFAULT: u8 = 1;
const EXIT_0: u8 = 2;

/// Set in workers that take a second to exit (an `atexit` handler waits).
const SLOW_EXIT: &str = "TWINPOOL_FAULTS_SLOW_EXIT";

/// The guard tag of the test whose initializer exits.
const INIT_EXIT_TAG: &str = "init-exit";

/// The value whose decoding panics.
const BOMB: u64 = 13;

/// A result type whose `Serialize` works and whose `Deserialize` panics on
/// [`BOMB`]: the worker encodes it fine, the pool cannot decode it.
#[derive(Debug, PartialEq)]
struct Bomb(u64);

impl Serialize for Bomb {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Bomb {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == BOMB {
            panic!("Bomb::deserialize panics on {v}");
        }
        Ok(Bomb(v))
    }
}

fn tasks() -> Registry {
    Registry::new()
        .register("square", |x: u64| x * x)
        .register("pid", |_: ()| std::process::id())
        // Marks its run; returns its worker's pid.
        .register("mark", |(dir, tag): (String, String)| {
            mark_run(&dir, &tag);
            std::process::id()
        })
        // Marks its run, then ends its worker as `how` says.
        .register("crash", |(dir, tag, how): (String, String, u8)| -> u32 {
            mark_run(&dir, &tag);
            match how {
                ABORT => std::process::abort(),
                SEGFAULT => {
                    // SAFETY: none; this task exists to crash its worker.
                    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
                    0
                }
                _ => std::process::exit(0),
            }
        })
        // Marks its run, then blocks until the gate `go-<tag>` opens (or
        // `ms` pass); returns its worker's pid.
        .register("hold", |(dir, tag, ms): (String, String, u64)| {
            mark_run(&dir, &tag);
            gate(&format!("{dir}/go-{tag}"), Duration::from_millis(ms));
            std::process::id()
        })
        // Marks its run, blocks until the gate `go-<tag>` opens, then aborts.
        .register("abort_when", |(dir, tag): (String, String)| -> u32 {
            mark_run(&dir, &tag);
            gate(
                &format!("{dir}/go-{tag}"),
                Duration::from_millis(FOREVER_MS),
            );
            std::process::abort()
        })
        .register("echo", |v: Vec<u8>| v)
        .register("len", |v: Vec<u8>| v.len() as u64)
        .register("bomb", Bomb)
        // Marks its run (tag: `i`); returns `i` and its worker's pid.
        .register("logged", |(dir, i): (String, u64)| {
            mark_run(&dir, &i.to_string());
            (i, std::process::id())
        })
        // Initializers.
        .register("init_write", |(dir, text): (String, String)| {
            std::fs::write(format!("{dir}/init-{}", std::process::id()), text).unwrap();
        })
        // Marks its start in the directory of the test
        // `workers_that_exit_at_start_...` (found by the pool's pid: the
        // argument is `()`), then ends its worker.
        .register("init_exit", |_: ()| -> u8 {
            let dir = std::env::temp_dir().join(format!(
                "twinpool-faults-{}-{INIT_EXIT_TAG}",
                std::os::unix::process::parent_id()
            ));
            mark_run(&dir.to_string_lossy(), "start");
            std::process::exit(0)
        })
}

fn pool(n: usize) -> Pool {
    Pool::new(Executor::processes(n, tasks()).expect("the pool starts"))
}

/// An executor whose drop is bounded. Dropping the last clone shuts the
/// pool down and waits for its workers, which a broken pool may never
/// finish: past [`BOUND`] the test fails (and its guard kills the workers)
/// instead of hanging.
struct Pool(Option<Executor>);

impl Pool {
    fn new(ex: Executor) -> Pool {
        Pool(Some(ex))
    }
}

impl std::ops::Deref for Pool {
    type Target = Executor;
    fn deref(&self) -> &Executor {
        self.0.as_ref().unwrap()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let Some(ex) = self.0.take() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(ex);
            let _ = tx.send(());
        });
        if rx.recv_timeout(BOUND).is_err() {
            let msg = format!(
                "dropping the executor (a shutdown that waits for its workers) did not finish \
                 within {BOUND:?}"
            );
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// What each future ended in, all waited for with one deadline
/// (`Err(Timeout)`: no answer in time).
fn results_within<T: Send + 'static>(
    futures: Vec<Future<T>>,
    bound: Duration,
) -> Vec<Result<T, Error>> {
    let deadline = Instant::now() + bound;
    futures
        .into_iter()
        .map(|f| f.result_timeout(deadline.saturating_duration_since(Instant::now())))
        .collect()
}

/// Fails with every problem found (the first 12 in full).
fn assert_none(what: &str, problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    let shown: Vec<&str> = problems.iter().take(12).map(String::as_str).collect();
    panic!(
        "{what}: {} problem(s):\n  {}{}",
        problems.len(),
        shown.join("\n  "),
        if problems.len() > 12 { "\n  ..." } else { "" }
    );
}

/// `(tag, pid)` markers counted by tag.
fn run_counts(dir: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (tag, _) in runs(dir) {
        *counts.entry(tag).or_insert(0) += 1;
    }
    counts
}

/// A build result to report: an executor is dropped (bounded) and shown as
/// "an executor".
fn built(r: Result<Executor, Error>) -> Result<&'static str, Error> {
    r.map(|ex| {
        drop(Pool::new(ex));
        "an executor"
    })
}

/// Makes `path` an executable shell script.
fn write_script(path: &str, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn exe() -> String {
    std::env::current_exe()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------
// Blame and re-runs
// ---------------------------------------------------------------------------

/// 200 quick tasks with one that ends its worker in the middle, queued
/// while the workers were busy, on 1 and on 2 workers, five runs each: the crasher alone fails, with `WorkerDied`;
/// every other task returns Ok; no task runs twice.
fn crash_mid_batch(how: u8) {
    const TASKS: usize = 200;
    const CRASHER: usize = 100;
    let mut problems = Vec::new();
    for (run, workers) in [1, 2].into_iter().flat_map(|w| [w; 5]).enumerate() {
        let g = Guard::new(&format!("crash{how}run{run}"));
        let dir = g.dir();
        let ex = pool(workers);
        // Warm the workers up, then let them wait at a gate while the tasks
        // are submitted, so that the tasks reach them in batches, as under
        // load.
        let warm: Vec<Future<u64>> = (0..300_u64)
            .map(|i| ex.submit_named("square", i).unwrap())
            .collect();
        for r in results_within(warm, BOUND) {
            r.unwrap();
        }
        let gates: Vec<Future<u32>> = (0..workers)
            .map(|_| {
                ex.submit_named("hold", (dir.clone(), "h".to_string(), FOREVER_MS))
                    .unwrap()
            })
            .collect();
        within(BOUND, || runs_of(&dir, "h") >= workers);
        let futures: Vec<Future<u32>> = (0..TASKS)
            .map(|i| {
                let tag = format!("t{i}");
                if i == CRASHER {
                    ex.submit_named("crash", (dir.clone(), tag, how))
                } else {
                    ex.submit_named("mark", (dir.clone(), tag))
                }
                .unwrap()
            })
            .collect();
        g.open("go-h");
        let results = results_within(futures, BOUND);
        for r in results_within(gates, BOUND) {
            if let Err(e) = r {
                problems.push(format!("run {run}: a gate task ended in {e:?}"));
            }
        }
        // Whatever the pool would still run, it runs before drop returns.
        drop(ex);
        let counts = run_counts(&dir);
        let ran = |i: usize| counts.get(&format!("t{i}")).copied().unwrap_or(0);
        let mut failed = Vec::new();
        let mut twice = Vec::new();
        for (i, r) in results.iter().enumerate() {
            if ran(i) > 1 {
                twice.push(i);
            }
            match (i == CRASHER, r) {
                (true, Err(Error::WorkerDied { .. })) | (false, Ok(_)) => {}
                (true, other) => problems.push(format!(
                    "run {run}, {workers} worker(s): the crasher ended in {other:?}"
                )),
                (false, Err(e)) => failed.push(format!("task {i}: {e:?}")),
            }
        }
        if !failed.is_empty() {
            problems.push(format!(
                "run {run}, {workers} worker(s): {} other task(s) failed, first: {}",
                failed.len(),
                failed[0]
            ));
        }
        if !twice.is_empty() {
            problems.push(format!(
                "run {run}, {workers} worker(s): {} task(s) ran more than once \
                 (the crasher {} time(s)): {twice:?}",
                twice.len(),
                ran(CRASHER)
            ));
        }
    }
    assert_none("a crash mid-batch", &problems);
}

fn an_abort_mid_batch_costs_only_the_task_it_hit() {
    crash_mid_batch(ABORT);
}

fn a_segfault_mid_batch_costs_only_the_task_it_hit() {
    crash_mid_batch(SEGFAULT);
}

fn an_exit_0_mid_batch_costs_only_the_task_it_hit() {
    crash_mid_batch(EXIT_0);
}

/// A pool-wide time limit of 1 s; one task would block for minutes among
/// 200 quick ones: it alone ends in `TaskTimedOut`.
fn only_the_slow_task_runs_past_the_pool_time_limit() {
    let limit = Duration::from_secs(1);
    let mut problems = Vec::new();
    for workers in [1, 2] {
        let g = Guard::new(&format!("limit{workers}"));
        let dir = g.dir();
        let ex = Pool::new(
            Executor::builder()
                .processes(workers)
                .registry(tasks())
                .task_timeout(limit)
                .build()
                .unwrap(),
        );
        let square = |i: u64| ex.submit_named::<u64, u64>("square", i).unwrap();
        let before: Vec<_> = (0..100).map(square).collect();
        let slow = ex
            .submit_named::<_, u32>("hold", (dir.clone(), "slow".to_string(), FOREVER_MS))
            .unwrap();
        let after: Vec<_> = (100..200).map(square).collect();
        let quick = results_within(before.into_iter().chain(after).collect(), BOUND);
        let slow = slow.result_timeout(BOUND);
        if slow != Err(Error::TaskTimedOut { limit }) {
            problems.push(format!(
                "{workers} worker(s): the slow task ended in {slow:?}"
            ));
        }
        for (i, r) in quick.into_iter().enumerate() {
            let i = i as u64;
            if r != Ok(i * i) {
                problems.push(format!(
                    "{workers} worker(s): quick task {i} ended in {r:?}"
                ));
            }
        }
    }
    assert_none(
        "one slow task among quick ones under task_timeout",
        &problems,
    );
}

/// 30 rounds: SIGKILL the worker of a blocking task while quick tasks flow
/// on the pool. The blocking task ends in `WorkerDied` and never runs
/// again; no quick task ever gets an error.
fn a_sigkilled_worker_costs_only_the_task_it_ran() {
    let g = Guard::new("sigkill-loop");
    let dir = g.dir();
    let ex = pool(2);
    let stop = Arc::new(AtomicBool::new(false));
    let flow = {
        let (ex, stop) = (ex.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            let mut batches = 0;
            while !stop.load(Ordering::Relaxed) && bad.is_empty() {
                let futures: Vec<_> = (0..20)
                    .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
                    .collect();
                for (i, r) in results_within(futures, BOUND).into_iter().enumerate() {
                    if r != Ok((i * i) as u64) {
                        bad.push(format!("quick task {i} of batch {batches} ended in {r:?}"));
                    }
                }
                batches += 1;
            }
            (batches, bad)
        })
    };
    let mut problems = Vec::new();
    for round in 0..30 {
        let tag = format!("r{round}");
        let victim = ex
            .submit_named::<_, u32>("hold", (dir.clone(), tag.clone(), FOREVER_MS))
            .unwrap();
        let Some(pid) = started(&dir, &tag, BOUND) else {
            problems.push(format!("round {round}: the blocking task never started"));
            break;
        };
        if !common::signal_child(pid, libc::SIGKILL) {
            problems.push(format!("round {round}: could not SIGKILL worker {pid}"));
            break;
        }
        // Its future must end; a second run would show as a second marker.
        within(BOUND, || victim.done() || runs_of(&dir, &tag) > 1);
        let ran = runs_of(&dir, &tag);
        match victim.result_timeout(Duration::ZERO) {
            Err(Error::WorkerDied { pid: p, .. }) if p == pid => {}
            other => problems.push(format!(
                "round {round}: the killed task (worker {pid}) ended in {other:?}"
            )),
        }
        if ran != 1 {
            problems.push(format!("round {round}: the killed task ran {ran} times"));
        }
        if !problems.is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (batches, bad) = flow.join().unwrap();
    problems.extend(bad);
    assert_none(
        &format!("SIGKILL of a busy worker, with {batches} batches of quick tasks meanwhile"),
        &problems,
    );
}

/// Three tasks killed while they wait behind a blocking one on a 1-worker
/// pool: `kill()` says yes, they end Cancelled or Killed, and they never
/// run, whether the blocking task then ends or kills its worker.
fn killed_before_it_started(blocker_aborts: bool) {
    let g = Guard::new(if blocker_aborts {
        "kill-pending-abort"
    } else {
        "kill-pending"
    });
    let dir = g.dir();
    let ex = pool(1);
    let b = (dir.clone(), "b".to_string());
    let blocker: Future<u32> = if blocker_aborts {
        ex.submit_named("abort_when", b).unwrap()
    } else {
        ex.submit_named("hold", (b.0, b.1, FOREVER_MS)).unwrap()
    };
    assert!(
        started(&dir, "b", BOUND).is_some(),
        "the blocking task never started"
    );
    let killed: Vec<Future<u32>> = (0..3)
        .map(|i| {
            ex.submit_named("mark", (dir.clone(), format!("k{i}")))
                .unwrap()
        })
        .collect();
    // The pool may hand the first to the worker beside the blocking task;
    // give it the chance (nothing below depends on whether it does).
    within(Duration::from_secs(2), || killed[0].running());
    let said: Vec<bool> = killed.iter().map(Future::kill).collect();
    g.open("go-b");
    let blocker = blocker.result_timeout(BOUND);
    // On the one worker, a task submitted after them runs after them.
    let after = ex
        .submit_named::<_, u32>("mark", (dir.clone(), "after".to_string()))
        .unwrap()
        .result_timeout(BOUND);
    drop(ex);
    let mut problems = Vec::new();
    match (&blocker, blocker_aborts) {
        (Err(Error::WorkerDied { .. }), true) | (Ok(_), false) => {}
        _ => problems.push(format!("the blocking task ended in {blocker:?}")),
    }
    if after.is_err() {
        problems.push(format!("the task submitted after them ended in {after:?}"));
    }
    for (i, (f, said)) in killed.into_iter().zip(said).enumerate() {
        if !said {
            problems.push(format!("kill() of task k{i} returned false"));
        }
        let ran = runs_of(&dir, &format!("k{i}"));
        if ran > 0 {
            problems.push(format!("killed task k{i} ran {ran} time(s) after kill()"));
        }
        match f.result_timeout(BOUND) {
            Err(Error::Cancelled | Error::Killed { .. }) => {}
            other => problems.push(format!("killed task k{i} ended in {other:?}")),
        }
    }
    assert_none("tasks killed before they started", &problems);
}

fn a_task_killed_before_it_started_never_runs() {
    killed_before_it_started(false);
}

fn a_task_killed_before_it_started_never_runs_after_its_worker_dies() {
    killed_before_it_started(true);
}

/// `kill()` on a task that runs (behind quick tasks that ran before it on
/// the same worker), three times: it ends in `Killed` that does not say
/// "before it started", and its worker process is gone.
fn kill_stops_the_task_that_really_runs() {
    let g = Guard::new("kill-running");
    let dir = g.dir();
    let ex = pool(1);
    let mut problems = Vec::new();
    for round in 0..3 {
        let quick: Vec<_> = (0..50)
            .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
            .collect();
        let tag = format!("r{round}");
        let f = ex
            .submit_named::<_, u32>("hold", (dir.clone(), tag.clone(), FOREVER_MS))
            .unwrap();
        let Some(pid) = started(&dir, &tag, BOUND) else {
            problems.push(format!("round {round}: the task never started"));
            break;
        };
        let said = f.kill();
        let r = f.result_timeout(BOUND);
        let gone = within(Duration::from_secs(20), || !alive(pid));
        if !said {
            problems.push(format!("round {round}: kill() returned false"));
        }
        match &r {
            Err(Error::Killed { how }) if !how.contains("before it started") => {}
            other => problems.push(format!(
                "round {round}: the running task ended in {other:?}"
            )),
        }
        if !gone {
            problems.push(format!(
                "round {round}: worker {pid}, which ran the killed task, is still alive 20 s \
                 after kill()"
            ));
        }
        if !problems.is_empty() {
            // The task may still block its worker: let it go.
            g.release_all();
        }
        for (i, r) in results_within(quick, BOUND).into_iter().enumerate() {
            if r != Ok((i * i) as u64) {
                problems.push(format!("round {round}: quick task {i} ended in {r:?}"));
            }
        }
        if !problems.is_empty() {
            break;
        }
    }
    assert_none("kill() of a running task", &problems);
}

/// `kill_workers` / `terminate_workers` with two running tasks and ten
/// blocking tasks waiting behind them: it returns long before the running
/// tasks would end, they end in `Killed`, and the ten never run.
fn stopping_workers(kill: bool) {
    let what = if kill {
        "kill_workers"
    } else {
        "terminate_workers"
    };
    let g = Guard::new(what);
    let dir = g.dir();
    let ex = pool(2);
    let hold = |tag: String| {
        ex.submit_named::<_, u32>("hold", (dir.clone(), tag, FOREVER_MS))
            .unwrap()
    };
    let running: Vec<_> = (0..2).map(|i| hold(format!("r{i}"))).collect();
    let pids: Vec<Option<u32>> = (0..2)
        .map(|i| started(&dir, &format!("r{i}"), BOUND))
        .collect();
    assert!(
        pids.iter().all(Option::is_some),
        "the running tasks never started"
    );
    let behind: Vec<_> = (0..10).map(|i| hold(format!("q{i}"))).collect();
    // Some may be handed to the workers beside the running tasks; give the
    // pool the chance (nothing below depends on whether it does).
    within(Duration::from_secs(2), || {
        behind.iter().filter(|f| f.running()).count() >= 2
    });
    let (tx, rx) = mpsc::channel();
    let stopper = {
        let ex = ex.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let r = if kill {
                ex.kill_workers()
            } else {
                ex.terminate_workers()
            };
            let _ = tx.send((r, t0.elapsed()));
        })
    };
    let mut problems = Vec::new();
    let returned = rx.recv_timeout(Duration::from_secs(20));
    match &returned {
        Ok((Ok(()), _)) => {}
        Ok((Err(e), _)) => problems.push(format!("{what}() returned {e:?}")),
        Err(_) => {
            problems.push(format!(
                "{what}() did not return within 20 s (the running tasks would block {} s)",
                FOREVER_MS / 1000
            ));
            g.release_all();
            let _ = rx.recv_timeout(BOUND);
        }
    }
    stopper.join().unwrap();
    for (i, r) in results_within(running, BOUND).into_iter().enumerate() {
        if !matches!(r, Err(Error::Killed { .. })) {
            problems.push(format!("running task r{i} ended in {r:?}"));
        }
    }
    for (i, r) in results_within(behind, BOUND).into_iter().enumerate() {
        if !matches!(r, Err(Error::Cancelled | Error::Killed { .. })) {
            problems.push(format!(
                "task q{i}, not started at {what}(), ended in {r:?}"
            ));
        }
    }
    drop(ex);
    for (tag, count) in run_counts(&dir) {
        if tag.starts_with('q') {
            problems.push(format!(
                "task {tag}, not started at {what}(), ran {count} time(s)"
            ));
        }
    }
    for pid in pids.into_iter().flatten() {
        if alive(pid) {
            problems.push(format!("worker {pid} survived {what}()"));
        }
    }
    assert_none(
        &format!("{what}() with tasks running and waiting"),
        &problems,
    );
}

fn kill_workers_stops_running_tasks_and_runs_nothing_that_waited() {
    stopping_workers(true);
}

fn terminate_workers_stops_running_tasks_and_runs_nothing_that_waited() {
    stopping_workers(false);
}

// ---------------------------------------------------------------------------
// A dispatcher that blocks
// ---------------------------------------------------------------------------

/// A 900 KB argument (under the shared-memory threshold) waits behind a
/// task with a 500 ms limit on a 1-worker pool: the limit still fires, far
/// sooner than the task's natural end, and the big task then runs.
fn a_time_limit_fires_while_a_big_argument_waits_behind() {
    let g = Guard::new("limit-big");
    let dir = g.dir();
    let ex = pool(1);
    let limit = Duration::from_millis(500);
    let r = ex
        .submit_named_timeout::<_, u32>("hold", (dir.clone(), "r".to_string(), FOREVER_MS), limit)
        .unwrap();
    let big = ex
        .submit_named::<_, u64>("len", vec![7u8; 900 * 1024])
        .unwrap();
    let t0 = Instant::now();
    let r = r.result_timeout(Duration::from_secs(15));
    let took = t0.elapsed();
    let mut problems = Vec::new();
    if r != Err(Error::TaskTimedOut { limit }) {
        problems.push(format!(
            "the task with a 500 ms limit ended in {r:?} after {took:?} (it would block {} s)",
            FOREVER_MS / 1000
        ));
        g.release_all();
    }
    let big = big.result_timeout(BOUND);
    if big != Ok(900 * 1024) {
        problems.push(format!("the big task ended in {big:?}"));
    }
    assert_none("a time limit with a big argument queued behind", &problems);
}

/// The same with `kill()` instead of a limit.
fn kill_takes_effect_while_a_big_argument_waits_behind() {
    let g = Guard::new("kill-big");
    let dir = g.dir();
    let ex = pool(1);
    let r = ex
        .submit_named::<_, u32>("hold", (dir.clone(), "r".to_string(), FOREVER_MS))
        .unwrap();
    let big = ex
        .submit_named::<_, u64>("len", vec![7u8; 900 * 1024])
        .unwrap();
    assert!(
        started(&dir, "r", BOUND).is_some(),
        "the task never started"
    );
    // The pool may be handing the big argument to the busy worker; give it
    // the chance to (nothing below depends on whether it does).
    within(Duration::from_secs(2), || big.running());
    let said = r.kill();
    let t0 = Instant::now();
    let r = r.result_timeout(Duration::from_secs(15));
    let took = t0.elapsed();
    let mut problems = Vec::new();
    if !said {
        problems.push("kill() returned false".to_string());
    }
    if !matches!(r, Err(Error::Killed { .. })) {
        problems.push(format!(
            "the killed task ended in {r:?} after {took:?} (it would block {} s)",
            FOREVER_MS / 1000
        ));
        g.release_all();
    }
    let big = big.result_timeout(BOUND);
    if big != Ok(900 * 1024) {
        problems.push(format!("the big task ended in {big:?}"));
    }
    assert_none("kill() with a big argument queued behind", &problems);
}

/// 100 arguments of 200 KiB wait behind a task with a 2 s limit, on a
/// worker that has run quick tasks before: the limit fires, then
/// `kill_workers()` returns, well within wide bounds.
fn a_time_limit_and_kill_workers_take_effect_behind_many_queued_arguments() {
    let g = Guard::new("limit-many");
    let dir = g.dir();
    let ex = pool(1);
    // A worker that has run quick tasks: the pool keeps more in flight.
    let warm: Vec<Future<u64>> = (0..300_u64)
        .map(|i| ex.submit_named("square", i).unwrap())
        .collect();
    for r in results_within(warm, BOUND) {
        r.unwrap();
    }
    let limit = Duration::from_secs(2);
    let r = ex
        .submit_named_timeout::<_, u32>("hold", (dir.clone(), "r".to_string(), FOREVER_MS), limit)
        .unwrap();
    let queued: Vec<Future<u64>> = (0..100)
        .map(|_| ex.submit_named("len", vec![1u8; 200 * 1024]).unwrap())
        .collect();
    let mut problems = Vec::new();
    let t0 = Instant::now();
    let r = r.result_timeout(Duration::from_secs(15));
    if r != Err(Error::TaskTimedOut { limit }) {
        problems.push(format!(
            "the task with a 2 s limit ended in {r:?} after {:?}",
            t0.elapsed()
        ));
    }
    let (tx, rx) = mpsc::channel();
    let stopper = {
        let ex = ex.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let r = ex.kill_workers();
            let _ = tx.send((r, t0.elapsed()));
        })
    };
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok((Ok(()), _)) => {}
        Ok((Err(e), _)) => problems.push(format!("kill_workers() returned {e:?}")),
        Err(_) => {
            problems.push("kill_workers() did not return within 20 s".to_string());
            g.release_all();
            let _ = rx.recv_timeout(BOUND);
        }
    }
    stopper.join().unwrap();
    for (i, q) in results_within(queued, BOUND).into_iter().enumerate() {
        match q {
            Ok(204_800) | Err(Error::Cancelled | Error::Killed { .. }) => {}
            other => problems.push(format!("queued task {i} ended in {other:?}")),
        }
    }
    assert_none("many big arguments queued behind a limited task", &problems);
}

/// Pool of 2, one worker busy with a blocking task: 50 quick tasks all
/// finish while it still blocks.
fn quick_tasks_do_not_wait_behind_a_blocking_one() {
    let g = Guard::new("hol");
    let dir = g.dir();
    let ex = pool(2);
    let b = ex
        .submit_named::<_, u32>("hold", (dir.clone(), "b".to_string(), FOREVER_MS))
        .unwrap();
    assert!(
        started(&dir, "b", BOUND).is_some(),
        "the blocking task never started"
    );
    let quick: Vec<_> = (0..50)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    let mut problems = Vec::new();
    for (i, r) in results_within(quick, Duration::from_secs(20))
        .into_iter()
        .enumerate()
    {
        if r != Ok((i * i) as u64) {
            problems.push(format!("quick task {i} ended in {r:?} within 20 s"));
        }
    }
    if b.done() {
        problems.push("the blocking task ended before its gate opened".into());
    }
    g.open("go-b");
    if let Err(e) = b.result_timeout(BOUND) {
        problems.push(format!("the blocking task ended in {e:?}"));
    }
    assert_none("quick tasks beside a blocking one", &problems);
}

/// Pool of 2 with one worker stopped (SIGSTOP) while idle: 50 quick tasks
/// all finish on the other one.
fn quick_tasks_do_not_wait_for_a_stopped_worker() {
    let g = Guard::new("stopped");
    let dir = g.dir();
    let ex = pool(2);
    // One blocking task per worker, to learn both pids.
    let both: Vec<_> = (0..2)
        .map(|i| {
            ex.submit_named::<_, u32>("hold", (dir.clone(), format!("p{i}"), FOREVER_MS))
                .unwrap()
        })
        .collect();
    let pids: Vec<u32> = (0..2)
        .map(|i| started(&dir, &format!("p{i}"), BOUND).expect("both workers report"))
        .collect();
    g.open("go-p0");
    g.open("go-p1");
    for r in results_within(both, BOUND) {
        r.unwrap();
    }
    assert!(common::signal_child(pids[0], libc::SIGSTOP));
    let quick: Vec<_> = (0..50)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    let mut problems = Vec::new();
    for (i, r) in results_within(quick, Duration::from_secs(20))
        .into_iter()
        .enumerate()
    {
        if r != Ok((i * i) as u64) {
            problems.push(format!(
                "quick task {i} ended in {r:?} within 20 s, with worker {} stopped",
                pids[0]
            ));
        }
    }
    common::signal_child(pids[0], libc::SIGCONT);
    assert_none("quick tasks with one worker stopped", &problems);
}

/// 200 quick tasks, then one that blocks, on 1 worker: the 200 results all
/// arrive while it blocks.
fn results_are_not_held_back_while_the_next_task_blocks() {
    let g = Guard::new("held");
    let dir = g.dir();
    let ex = pool(1);
    let quick: Vec<_> = (0..200)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    let b = ex
        .submit_named::<_, u32>("hold", (dir.clone(), "b".to_string(), FOREVER_MS))
        .unwrap();
    assert!(
        started(&dir, "b", BOUND).is_some(),
        "the blocking task never started"
    );
    let mut problems = Vec::new();
    for (i, r) in results_within(quick, Duration::from_secs(20))
        .into_iter()
        .enumerate()
    {
        if r != Ok((i * i) as u64) {
            problems.push(format!(
                "quick task {i} ended in {r:?} within 20 s, while the next task blocked"
            ));
        }
    }
    g.open("go-b");
    if let Err(e) = b.result_timeout(BOUND) {
        problems.push(format!("the blocking task ended in {e:?}"));
    }
    assert_none("results of tasks before a blocking one", &problems);
}

// ---------------------------------------------------------------------------
// Start, handshake, bad input
// ---------------------------------------------------------------------------

/// `initializer_named` with a `(String, String)` argument: each worker runs
/// it with that argument, and the pool works.
fn an_initializer_gets_its_argument_in_every_worker() {
    let g = Guard::new("init-arg");
    let dir = g.dir();
    let text = "set up by the initializer".to_string();
    let ex = Pool::new(
        Executor::builder()
            .processes(2)
            .registry(tasks())
            .initializer_named("init_write", (dir.clone(), text.clone()))
            .build()
            .expect("the pool starts"),
    );
    let square = ex
        .submit_named::<u64, u64>("square", 7)
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(square, Ok(49), "a pool with an initializer runs a task");
    let both: Vec<_> = (0..2)
        .map(|i| {
            ex.submit_named::<_, u32>("hold", (dir.clone(), format!("p{i}"), FOREVER_MS))
                .unwrap()
        })
        .collect();
    let pids: Vec<u32> = (0..2)
        .map(|i| started(&dir, &format!("p{i}"), BOUND).expect("both workers report"))
        .collect();
    g.open("go-p0");
    g.open("go-p1");
    for r in results_within(both, BOUND) {
        r.unwrap();
    }
    for pid in pids {
        let got = std::fs::read_to_string(format!("{dir}/init-{pid}"));
        assert_eq!(
            got.as_deref().ok(),
            Some(text.as_str()),
            "what the initializer of worker {pid} wrote"
        );
    }
}

/// Workers whose initializer exits at once, with nothing submitted: the
/// pool stops restarting them after a few tries, and work then gets
/// `BrokenPool`.
fn workers_that_exit_at_start_are_not_restarted_without_end() {
    let g = Guard::new(INIT_EXIT_TAG);
    let dir = g.dir();
    let built = Executor::builder()
        .processes(2)
        .registry(tasks())
        .initializer_named("init_exit", ())
        .build();
    // Restarts end when the count of starts stays the same for 2 s.
    let t0 = Instant::now();
    let mut last = runs_of(&dir, "start");
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_secs(2) && t0.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(100));
        let now = runs_of(&dir, "start");
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    let mut problems = Vec::new();
    if stable_since.elapsed() < Duration::from_secs(2) {
        problems.push(format!(
            "workers were still being restarted after {:?}: {last} starts so far",
            t0.elapsed()
        ));
    } else if last > 12 {
        problems.push(format!("{last} worker starts before the pool stopped"));
    }
    match built {
        Err(Error::BrokenPool { .. } | Error::Spawn { .. }) => {}
        Err(e) => problems.push(format!("build() returned {e:?}")),
        Ok(ex) => {
            let ex = Pool::new(ex);
            let r = ex
                .submit_named::<u64, u64>("square", 2)
                .and_then(|f| f.result_timeout(BOUND));
            if !matches!(r, Err(Error::BrokenPool { .. })) {
                problems.push(format!("a task submitted afterwards ended in {r:?}"));
            }
        }
    }
    assert_none("workers that exit right after their handshake", &problems);
}

fn max_tasks_per_child_of_zero_is_an_invalid_argument() {
    let _g = Guard::new("max-tasks-0");
    let r = Executor::builder()
        .processes(1)
        .registry(tasks())
        .max_tasks_per_child(0)
        .build();
    assert!(
        matches!(r, Err(Error::InvalidArgument { .. })),
        "build() with max_tasks_per_child(0) returned {:?}",
        built(r)
    );
}

/// A wrapper worker program whose 3rd start exits before connecting (the
/// others take a second to exit when told to): each `processes(4)` build
/// is `Err(Spawn)` and, by the time it returns, leaves no process and no
/// zombie behind; nor, in the end, any fd or thread.
fn a_failed_start_leaves_nothing_behind() {
    let g = Guard::new("failed-start");
    let wrapper = g.path("third-fails.sh");
    let attempt = |i: usize| {
        let starts = g.path(&format!("starts{i}"));
        std::fs::create_dir_all(&starts).unwrap();
        // mkdir is atomic: the workers, started together, each get a number.
        write_script(
            &wrapper,
            &format!(
                "export {SLOW_EXIT}=1\nfor i in 1 2 3 4 5 6 7 8; do\n  \
                 if mkdir '{starts}/'$i 2>/dev/null; then\n    \
                 [ $i = 3 ] && exit 5\n    exec '{exe}'\n  fi\ndone\nexec '{exe}'",
                exe = exe()
            ),
        );
        let r = Executor::builder()
            .processes(4)
            .registry(tasks())
            .worker_program(&wrapper)
            .build();
        (built(r), Census::now())
    };
    // Warm-up: a pool that starts, and one failed start.
    drop(pool(4));
    let _ = attempt(0);
    let before = Census::now();
    let mut problems = Vec::new();
    for i in 1..=5 {
        let (r, census) = attempt(i);
        if !matches!(r, Err(Error::Spawn { .. })) {
            problems.push(format!("attempt {i}: build() returned {r:?}"));
        }
        if census.children > 0 || census.zombies > 0 {
            problems.push(format!(
                "attempt {i}: as build() returned its error, {} child process(es) and {} \
                 zombie(s) were left: {:?}",
                census.children,
                census.zombies,
                common::descendants()
            ));
        }
    }
    let after = Census::back_to(&before, Duration::from_secs(10));
    if !after.within(&before) {
        problems.push(format!(
            "after 5 failed starts: {after:?}, before them: {before:?}"
        ));
    }
    assert_none("failed starts", &problems);
}

/// Five workers that never connect, with a 2 s connect timeout: the Spawn
/// error comes within 2 s plus slack, not 2 s per worker.
fn a_connect_timeout_bounds_the_whole_start() {
    let g = Guard::new("connect-timeout");
    let wrapper = g.path("never-connects.sh");
    write_script(&wrapper, "exec sleep 60");
    let t0 = Instant::now();
    let r = Executor::builder()
        .processes(5)
        .registry(tasks())
        .connect_timeout(Duration::from_secs(2))
        .worker_program(&wrapper)
        .build();
    let took = t0.elapsed();
    let r = built(r);
    let mut problems = Vec::new();
    if !matches!(r, Err(Error::Spawn { .. })) {
        problems.push(format!("build() returned {r:?}"));
    }
    if took >= Duration::from_secs(6) {
        problems.push(format!(
            "build() took {took:?} with connect_timeout(2 s) (bound: 6 s)"
        ));
    }
    if !within(Duration::from_secs(10), || common::children().is_empty()) {
        problems.push(format!("processes left: {:?}", common::descendants()));
    }
    assert_none("a start whose workers never connect", &problems);
}

fn connect_timeout_of_duration_max_is_no_limit() {
    let _g = Guard::new("connect-max");
    let ex = Pool::new(
        Executor::builder()
            .processes(1)
            .registry(tasks())
            .connect_timeout(Duration::MAX)
            .build()
            .expect("a pool with connect_timeout(Duration::MAX) starts"),
    );
    let r = ex
        .submit_named::<u64, u64>("square", 3)
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(r, Ok(9));
}

/// A task that runs a while (300 ms: the pool checks its limit as it
/// runs) under a limit of `Duration::MAX` ends normally.
fn runs_a_while(ex: &Executor, dir: &str, limit: Option<Duration>) -> Result<u32, Error> {
    let arg = (dir.to_string(), "while".to_string(), 300_u64);
    match limit {
        Some(limit) => ex.submit_named_timeout("hold", arg, limit),
        None => ex.submit_named("hold", arg),
    }?
    .result_timeout(BOUND)
}

fn task_timeout_of_duration_max_is_no_limit() {
    let g = Guard::new("task-timeout-max");
    let ex = Pool::new(
        Executor::builder()
            .processes(1)
            .registry(tasks())
            .task_timeout(Duration::MAX)
            .build()
            .expect("a pool with task_timeout(Duration::MAX) starts"),
    );
    let r = ex
        .submit_named::<u64, u64>("square", 3)
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(r, Ok(9));
    let chunked: Result<Vec<u64>, Error> = ex
        .map_named_with::<u64, u64, _>(
            "square",
            0..20,
            MapOptions {
                chunksize: 5,
                timeout: Some(BOUND),
                ..MapOptions::default()
            },
        )
        .unwrap()
        .collect();
    assert_eq!(chunked, Ok((0..20).map(|x| x * x).collect()));
    let r = runs_a_while(&ex, &g.dir(), None);
    assert!(r.is_ok(), "a task that runs 300 ms ended in {r:?}");
}

fn submit_with_a_limit_of_duration_max_is_no_limit() {
    let g = Guard::new("submit-max");
    let ex = pool(1);
    let r = ex
        .submit_named_timeout::<u64, u64>("square", 3, Duration::MAX)
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(r, Ok(9));
    let r = runs_a_while(&ex, &g.dir(), Some(Duration::MAX));
    assert!(r.is_ok(), "a task that runs 300 ms ended in {r:?}");
}

/// A result whose `Deserialize` panics: that future ends in `Decode` or
/// `Panicked`, and the pool goes on.
fn a_result_that_panics_while_decoding_fails_only_its_task() {
    let _g = Guard::new("bomb");
    let ex = pool(1);
    let r = ex
        .submit_named::<u64, Bomb>("bomb", BOMB)
        .unwrap()
        .result_timeout(BOUND);
    let mut problems = Vec::new();
    if !matches!(r, Err(Error::Decode { .. } | Error::Panicked { .. })) {
        problems.push(format!(
            "the task whose result panics in decoding ended in {r:?}"
        ));
    }
    let next = ex
        .submit_named::<u64, Bomb>("bomb", 1)
        .unwrap()
        .result_timeout(BOUND);
    if next != Ok(Bomb(1)) {
        problems.push(format!("the next task ended in {next:?}"));
    }
    assert_none("a result that panics while decoding", &problems);
}

/// The same in a chunked map: the item whose result panics in decoding (and
/// at most the others of its chunk) ends in `Decode` or `Panicked`, never
/// `WorkerDied`; the other chunks are Ok.
fn a_chunked_map_result_that_panics_while_decoding_fails_only_its_chunk() {
    let _g = Guard::new("bomb-map");
    let ex = pool(1);
    let results: Vec<Result<Bomb, Error>> = ex
        .map_named_with::<u64, Bomb, _>(
            "bomb",
            0..20,
            MapOptions {
                chunksize: 5,
                timeout: Some(BOUND),
                ..MapOptions::default()
            },
        )
        .unwrap()
        .collect();
    // A map ends at its first failed item, as Python's does: the items
    // before the bomb come back, the bomb's own result is the error, and
    // nothing after it (not even the rest of its chunk) is yielded.
    let mut problems = Vec::new();
    if results.len() != BOMB as usize + 1 {
        problems.push(format!(
            "{} results, not {} (up to the bomb): {results:?}",
            results.len(),
            BOMB + 1
        ));
    }
    for (i, r) in results.iter().enumerate() {
        let i = i as u64;
        match r {
            Ok(b) if *b == Bomb(i) && i != BOMB => {}
            Err(Error::Decode { .. } | Error::Panicked { .. }) if i == BOMB => {}
            other => problems.push(format!("item {i} ended in {other:?}")),
        }
    }
    assert_none(
        "a chunked map whose result panics while decoding",
        &problems,
    );
}

/// Rounds of big arguments echoed back on 2 workers, after warm-up rounds:
/// each round sends six of 2 MiB (more than the 4 pooled segments can hold
/// at once) and one of 257 MiB (more than a pooled segment may be)
/// together. Fds, threads, /dev/shm entries and mapped segments of this
/// process come back to their counts after the warm-up. A worker keeps, by
/// design, up to 4 segments of the pool's arguments and up to 4 of its own
/// results mapped for reuse, and fills them as payloads happen to overlap:
/// its segments may still grow after the warm-up, but never past those 8
/// (and its claim table), and its other file descriptors not at all.
fn big_payloads_leave_nothing_behind() {
    const SMALL: usize = 2 << 20;
    const HUGE: usize = 257 << 20;
    /// Segments a worker may keep: 4 received, 4 of its own, its claims.
    const WORKER_SEGMENTS: usize = 9;
    /// Segments this process may keep: 4 of its own, and from each of the
    /// two workers 4 received and its claim table.
    const PARENT_SEGMENTS: usize = 4 + 2 * (4 + 1);
    let _g = Guard::new("big");
    let ex = pool(2);
    let round = |smalls: usize| -> Result<(), String> {
        let sizes = std::iter::repeat_n(SMALL, smalls).chain([HUGE]);
        let futures: Vec<(usize, Future<Vec<u8>>)> = sizes
            .map(|size| {
                let mut v = vec![0u8; size];
                v[0] = 1;
                v[size - 1] = 2;
                (size, ex.submit_named("echo", v).unwrap())
            })
            .collect();
        for (size, f) in futures {
            let back = f
                .result_timeout(BOUND)
                .map_err(|e| format!("echo of {size} bytes ended in {e:?}"))?;
            if back.len() != size || back[0] != 1 || back[size - 1] != 2 {
                return Err(format!("echo of {size} bytes came back wrong"));
            }
        }
        Ok(())
    };
    // The workers' pids: one blocking task on each.
    let workers = || -> Vec<u32> {
        let dir = _g.dir();
        let tag = format!("w{}", runs(&dir).len());
        let both: Vec<Future<u32>> = (0..2)
            .map(|_| {
                ex.submit_named("hold", (dir.clone(), tag.clone(), FOREVER_MS))
                    .unwrap()
            })
            .collect();
        within(BOUND, || runs_of(&dir, &tag) == 2);
        _g.open(&format!("go-{tag}"));
        let mut pids: Vec<u32> = results_within(both, BOUND)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        pids.sort_unstable();
        pids
    };
    // Warm-up: with twelve at once, every process fills (nearly always all)
    // the segments it keeps for reuse, and every receiver maps them.
    for _ in 0..3 {
        round(12).unwrap();
    }
    let pids = workers();
    let worker_census = || -> Vec<(usize, usize)> {
        (pids.iter())
            .map(|&p| (common::fds_of(p), common::memfd_maps(&p.to_string())))
            .collect()
    };
    let before = Census::now();
    let workers_before = worker_census();
    let mut problems = Vec::new();
    for i in 0..6 {
        if let Err(e) = round(6) {
            problems.push(format!("round {i}: {e}"));
            break;
        }
    }
    if workers() != pids {
        problems.push("a worker was replaced during the rounds".into());
    }
    // The rounds may fill a kept segment that the warm-up left empty (which
    // ones fill depends on timing): more segments, each with its fd, are
    // fine up to the bound; nothing else may grow.
    let steady = |now: &Census| {
        let kept_more = now.memfd_maps.saturating_sub(before.memfd_maps);
        let without_kept = Census {
            fds: now.fds.saturating_sub(kept_more),
            memfd_maps: now.memfd_maps - kept_more,
            ..*now
        };
        without_kept.within(&before) && now.memfd_maps <= PARENT_SEGMENTS
    };
    let after = Census::until(Duration::from_secs(10), steady);
    if !steady(&after) {
        problems.push(format!(
            "this process after the rounds: {after:?}; before: {before:?} \
             (it may keep {PARENT_SEGMENTS} segments)"
        ));
    }
    let workers_after = worker_census();
    let leaked = |(a, b): (&(usize, usize), &(usize, usize))| {
        // Fds beyond the new kept segments, or more segments than kept.
        a.0.saturating_sub(b.0) > a.1.saturating_sub(b.1) || a.1 > WORKER_SEGMENTS
    };
    if workers_after.iter().zip(&workers_before).any(leaked) {
        problems.push(format!(
            "the workers after the rounds: (fds, memfd maps) {workers_after:?}; before: \
             {workers_before:?}"
        ));
    }
    assert_none("big payloads", &problems);
}

/// A big argument is freed, and its shared-memory segment reused, once its
/// task has ended, even while the program keeps the task's future: keeping
/// the futures of many finished big tasks maps no more segments in this
/// process than the pool keeps for reuse anyway.
fn a_kept_future_does_not_keep_its_big_argument() {
    const SIZE: usize = 2 << 20;
    const KEPT: usize = 16;
    let _g = Guard::new("kept-futures");
    let ex = pool(1);
    let len = || ex.submit_named::<_, u64>("len", vec![7u8; SIZE]).unwrap();
    // Warm-up: every segment this process and the worker keep is made.
    for _ in 0..3 {
        let batch: Vec<Future<u64>> = (0..8).map(|_| len()).collect();
        for f in results_within(batch, BOUND) {
            assert_eq!(f.unwrap(), SIZE as u64);
        }
    }
    let before = Census::now();
    // One at a time, each future kept once its task has ended.
    let mut kept = Vec::new();
    for i in 0..KEPT {
        let f = len();
        assert!(within(BOUND, || f.done()), "task {i} did not end");
        kept.push(f);
    }
    let after = Census::back_to(&before, Duration::from_secs(10));
    let problems = if after.within(&before) {
        Vec::new()
    } else {
        vec![format!(
            "with the futures of {KEPT} finished tasks of {SIZE} bytes kept: {after:?}; \
             before them: {before:?}"
        )]
    };
    for f in results_within(kept, BOUND) {
        assert_eq!(f.unwrap(), SIZE as u64);
    }
    assert_none("kept futures", &problems);
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// A pool of 3 runs 10,000 quick tasks in a steady flow while 200 SIGKILLs
/// hit random workers: every future is answered exactly once (Ok, or
/// `WorkerDied` for at most one task per kill), no task runs twice, and
/// after drop fds, threads, children, zombies and shared memory are back.
fn ten_thousand_tasks_survive_two_hundred_sigkills() {
    const TASKS: usize = 10_000;
    const KILLS: usize = 200;
    const WAVE: usize = TASKS / KILLS;
    const IN_FLIGHT: usize = 8;
    let g = Guard::new("stress");
    let dir = g.dir();
    // Warm-up: a pool that runs a task and loses a worker.
    {
        let ex = pool(3);
        let pid = ex
            .submit_named::<(), u32>("pid", ())
            .unwrap()
            .result_timeout(BOUND)
            .unwrap();
        common::signal_child(pid, libc::SIGKILL);
        let _ = ex
            .submit_named::<u64, u64>("square", 2)
            .unwrap()
            .result_timeout(BOUND);
    }
    let before = Census::now();
    let answers: Arc<Vec<AtomicUsize>> =
        Arc::new((0..TASKS).map(|_| AtomicUsize::new(0)).collect());
    let pids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut problems = Vec::new();
    let mut kills = 0;
    let mut victims: Vec<u32> = Vec::new();
    let mut futures: Vec<Future<(u64, u32)>> = Vec::with_capacity(TASKS);
    let submitted;
    {
        let ex = pool(3);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let t0 = Instant::now();
        for wave in 0..KILLS {
            // A steady flow: at most IN_FLIGHT waves in flight, so the
            // workers are busy whenever a kill lands.
            if wave >= IN_FLIGHT {
                let older = &futures[(wave - IN_FLIGHT) * WAVE..(wave - IN_FLIGHT + 1) * WAVE];
                if !within(BOUND, || older.iter().all(Future::done)) {
                    problems.push(format!(
                        "wave {} got no answers within {BOUND:?}",
                        wave - IN_FLIGHT
                    ));
                    break;
                }
            }
            for i in wave * WAVE..(wave + 1) * WAVE {
                let f: Future<(u64, u32)> =
                    ex.submit_named("logged", (dir.clone(), i as u64)).unwrap();
                let (answers, pids) = (answers.clone(), pids.clone());
                f.add_done_callback(move |r| {
                    answers[i].fetch_add(1, Ordering::SeqCst);
                    if let Ok((_, pid)) = r {
                        let mut pids = pids.lock().unwrap();
                        if !pids.contains(pid) {
                            pids.push(*pid);
                        }
                    }
                });
                futures.push(f);
            }
            // Kill a random worker that has answered a task (so it is
            // connected, not starting) and still lives. When none is known,
            // ask one for its pid.
            let deadline = Instant::now() + BOUND;
            let killed = loop {
                let children = common::live_children();
                let live: Vec<u32> = (pids.lock().unwrap().iter().copied())
                    .filter(|p| children.contains(p) && !victims.contains(p))
                    .collect();
                if let Some(&pid) = live.get(rng.below(live.len().max(1))) {
                    if common::signal_child(pid, libc::SIGKILL) {
                        victims.push(pid);
                        break true;
                    }
                } else if let Ok(pid) = ex
                    .submit_named::<(), u32>("pid", ())
                    .and_then(|f| f.result_timeout(BOUND))
                {
                    pids.lock().unwrap().push(pid);
                }
                if Instant::now() >= deadline {
                    break false;
                }
            };
            if !killed {
                problems.push(format!("wave {wave}: found no live worker to kill"));
                break;
            }
            kills += 1;
        }
        submitted = futures.len();
        if !within(BOUND, || futures.iter().all(Future::done)) {
            let open = futures.iter().filter(|f| !f.done()).count();
            problems.push(format!(
                "{open} of {submitted} futures unanswered {BOUND:?} after the last submit"
            ));
        }
        let mut died = 0;
        for (i, f) in futures.drain(..).enumerate() {
            match f.result_timeout(Duration::ZERO) {
                Ok((j, _)) if j == i as u64 => {}
                Err(Error::WorkerDied { .. }) => died += 1,
                other => problems.push(format!("task {i} ended in {other:?}")),
            }
        }
        if died > kills {
            problems.push(format!("{died} tasks got WorkerDied from {kills} kills"));
        }
        eprintln!(
            "stress: {submitted} tasks, {kills} kills, {died} WorkerDied, {:?}",
            t0.elapsed()
        );
    }
    for (i, n) in answers.iter().enumerate() {
        let n = n.load(Ordering::SeqCst);
        if n != 1 && i < submitted {
            problems.push(format!("task {i} was answered {n} times"));
        }
    }
    let mut twice: Vec<(u64, usize)> = run_counts(&dir)
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .filter_map(|(tag, n)| Some((tag.parse().ok()?, n)))
        .collect();
    twice.sort_unstable();
    if !twice.is_empty() {
        problems.push(format!(
            "{} tasks ran more than once (task, runs): {:?}",
            twice.len(),
            &twice[..twice.len().min(10)]
        ));
    }
    let after = Census::back_to(&before, Duration::from_secs(15));
    if !after.within(&before) {
        problems.push(format!(
            "after drop: {after:?}; before the pool: {before:?}"
        ));
    }
    assert_none("10,000 tasks and 200 SIGKILLs", &problems);
}

fn main() {
    if std::env::var_os(SLOW_EXIT).is_some() {
        extern "C" fn linger() {
            std::thread::sleep(Duration::from_secs(1));
        }
        // SAFETY: registers a plain function, once, before any thread.
        unsafe { libc::atexit(linger) };
    }
    serve_if_worker(&tasks());
    common::run_guarded(&[
        // Blame and re-runs.
        (
            "an_abort_mid_batch_costs_only_the_task_it_hit",
            an_abort_mid_batch_costs_only_the_task_it_hit,
        ),
        (
            "a_segfault_mid_batch_costs_only_the_task_it_hit",
            a_segfault_mid_batch_costs_only_the_task_it_hit,
        ),
        (
            "an_exit_0_mid_batch_costs_only_the_task_it_hit",
            an_exit_0_mid_batch_costs_only_the_task_it_hit,
        ),
        (
            "only_the_slow_task_runs_past_the_pool_time_limit",
            only_the_slow_task_runs_past_the_pool_time_limit,
        ),
        (
            "a_sigkilled_worker_costs_only_the_task_it_ran",
            a_sigkilled_worker_costs_only_the_task_it_ran,
        ),
        (
            "a_task_killed_before_it_started_never_runs",
            a_task_killed_before_it_started_never_runs,
        ),
        (
            "a_task_killed_before_it_started_never_runs_after_its_worker_dies",
            a_task_killed_before_it_started_never_runs_after_its_worker_dies,
        ),
        (
            "kill_stops_the_task_that_really_runs",
            kill_stops_the_task_that_really_runs,
        ),
        (
            "kill_workers_stops_running_tasks_and_runs_nothing_that_waited",
            kill_workers_stops_running_tasks_and_runs_nothing_that_waited,
        ),
        (
            "terminate_workers_stops_running_tasks_and_runs_nothing_that_waited",
            terminate_workers_stops_running_tasks_and_runs_nothing_that_waited,
        ),
        // A dispatcher that blocks.
        (
            "a_time_limit_fires_while_a_big_argument_waits_behind",
            a_time_limit_fires_while_a_big_argument_waits_behind,
        ),
        (
            "kill_takes_effect_while_a_big_argument_waits_behind",
            kill_takes_effect_while_a_big_argument_waits_behind,
        ),
        (
            "a_time_limit_and_kill_workers_take_effect_behind_many_queued_arguments",
            a_time_limit_and_kill_workers_take_effect_behind_many_queued_arguments,
        ),
        (
            "quick_tasks_do_not_wait_behind_a_blocking_one",
            quick_tasks_do_not_wait_behind_a_blocking_one,
        ),
        (
            "quick_tasks_do_not_wait_for_a_stopped_worker",
            quick_tasks_do_not_wait_for_a_stopped_worker,
        ),
        (
            "results_are_not_held_back_while_the_next_task_blocks",
            results_are_not_held_back_while_the_next_task_blocks,
        ),
        // Start, handshake, bad input.
        (
            "an_initializer_gets_its_argument_in_every_worker",
            an_initializer_gets_its_argument_in_every_worker,
        ),
        (
            "workers_that_exit_at_start_are_not_restarted_without_end",
            workers_that_exit_at_start_are_not_restarted_without_end,
        ),
        (
            "max_tasks_per_child_of_zero_is_an_invalid_argument",
            max_tasks_per_child_of_zero_is_an_invalid_argument,
        ),
        (
            "a_failed_start_leaves_nothing_behind",
            a_failed_start_leaves_nothing_behind,
        ),
        (
            "a_connect_timeout_bounds_the_whole_start",
            a_connect_timeout_bounds_the_whole_start,
        ),
        (
            "connect_timeout_of_duration_max_is_no_limit",
            connect_timeout_of_duration_max_is_no_limit,
        ),
        (
            "task_timeout_of_duration_max_is_no_limit",
            task_timeout_of_duration_max_is_no_limit,
        ),
        (
            "submit_with_a_limit_of_duration_max_is_no_limit",
            submit_with_a_limit_of_duration_max_is_no_limit,
        ),
        (
            "a_result_that_panics_while_decoding_fails_only_its_task",
            a_result_that_panics_while_decoding_fails_only_its_task,
        ),
        (
            "a_chunked_map_result_that_panics_while_decoding_fails_only_its_chunk",
            a_chunked_map_result_that_panics_while_decoding_fails_only_its_chunk,
        ),
        (
            "big_payloads_leave_nothing_behind",
            big_payloads_leave_nothing_behind,
        ),
        (
            "a_kept_future_does_not_keep_its_big_argument",
            a_kept_future_does_not_keep_its_big_argument,
        ),
        (
            "ten_thousand_tasks_survive_two_hundred_sigkills",
            ten_thousand_tasks_survive_two_hundred_sigkills,
        ),
    ]);
}
