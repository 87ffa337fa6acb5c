//! The process back end, driven for real: this test program is its own worker
//! (its `main` calls `serve_if_worker` first), so it has a small harness of
//! its own instead of libtest's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use twinpool::{as_completed, serve_if_worker, Error, Executor, MapOptions, Registry};

mod proc_common;
use common::{children, flag_file, LONG};
use proc_common as common;

/// A typed task: registered and submitted by its value, types checked by
/// the compiler.
#[twinpool::task]
fn cube(x: u64) -> u64 {
    x * x * x
}

/// Two arguments (a tuple on the wire), under a name of its own.
#[twinpool::task(name = "typed_add")]
fn typed_add(a: i64, b: i64) -> i64 {
    a + b
}

fn tasks() -> Registry {
    Registry::new()
        .task(cube)
        .task(typed_add)
        .register("square", |x: u64| x * x)
        .register("add", |(a, b): (i64, i64)| a + b)
        .register("pid", |_: ()| std::process::id())
        .register("len", |v: Vec<u8>| v.len() as u64)
        .register("bytes", |n: u64| vec![7u8; n as usize])
        .register("echo_string", |s: String| s)
        .register("echo_bytes", |b: Vec<u8>| b)
        .register("panic", |msg: String| -> u64 { panic!("{msg}") })
        .register("noisy", |n: u32| {
            for i in 0..n {
                println!("noisy line {i}");
                eprintln!("noisy error line {i}");
            }
            n
        })
        .register("sleep_ms", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        // Blocks until the file named by its argument exists: the test
        // controls when it finishes without timing.
        .register("wait_for_file", |path: String| {
            common::wait_for_file(&path);
            std::process::id()
        })
        .register("exit", |code: i32| -> u64 { std::process::exit(code) })
        // Exits with its argument's length mod 128: a worker that dies with a
        // big argument in hand.
        .register("exit_big", |v: Vec<u8>| -> u64 {
            std::process::exit((v.len() % 128) as i32)
        })
        .register("init_fail", |_: ()| -> () { panic!("initializer says no") })
        .register("init_ok", |_: ()| ())
}

fn pool(n: usize) -> Executor {
    Executor::processes(n, tasks()).expect("the pool starts")
}

fn typed_tasks_cross_to_workers() {
    use twinpool::Task;
    let ex = pool(2);
    assert_eq!(ex.submit_task(cube, 3).unwrap().result(), Ok(27));
    let sums: Vec<i64> = ex
        .map_task(typed_add, vec![(1, 2), (3, 4), (5, 6)])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(sums, [3, 7, 11]);
    // The same task by its name: the path of the function, or the name given.
    assert!(
        <cube as Task>::NAME.ends_with("::cube"),
        "{}",
        <cube as Task>::NAME
    );
    assert_eq!(
        ex.submit_named::<u64, u64>(<cube as Task>::NAME, 2)
            .unwrap()
            .result(),
        Ok(8)
    );
    assert_eq!(
        ex.submit_named::<(i64, i64), i64>("typed_add", (2, 2))
            .unwrap()
            .result(),
        Ok(4)
    );
    // The function itself, in this process.
    assert_eq!(cube::call(4), 64);
}

fn stats_count_what_the_pool_does() {
    let ex = pool(2);
    let s = ex.stats();
    assert_eq!(
        (s.live_workers, s.finished, s.worker_restarts),
        (2, 0, 0),
        "{s:?}"
    );
    // Both workers held by tasks that wait for a file, and more behind them.
    let flag = flag_file("stats");
    let holders: Vec<_> = (0..2)
        .map(|_| {
            ex.submit_named::<String, u32>("wait_for_file", flag.clone())
                .unwrap()
        })
        .collect();
    let behind: Vec<_> = (0..10_u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    common::eventually("both holders sent", || ex.stats().running >= 2);
    let s = ex.stats();
    // Sent ahead counts as running (as in Python); the rest is queued.
    assert_eq!(s.queued + s.running, 12, "{s:?}");
    assert_eq!(s.finished, 0, "{s:?}");
    std::fs::write(&flag, b"go").unwrap();
    for f in holders {
        f.result_timeout(LONG).unwrap();
    }
    for f in behind {
        f.result_timeout(LONG).unwrap();
    }
    // A panic fails its task; a worker that exits fails its task and is
    // replaced.
    let panicked = ex
        .submit_named::<String, u64>("panic", "counted".into())
        .unwrap();
    assert!(panicked.result_timeout(LONG).is_err());
    let died = ex.submit_named::<i32, u64>("exit", 3).unwrap();
    assert!(died.result_timeout(LONG).is_err());
    common::eventually("the ends counted and the worker replaced", || {
        let s = ex.stats();
        s.finished == 14 && s.worker_restarts == 1 && s.live_workers == 2
    });
    let s = ex.stats();
    assert_eq!((s.failed, s.queued, s.running), (2, 0, 0), "{s:?}");
    let _ = std::fs::remove_file(&flag);
}

fn named_submit_and_result() {
    let ex = pool(2);
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 12)
            .unwrap()
            .result()
            .unwrap(),
        144
    );
    assert_eq!(
        ex.submit_named::<(i64, i64), i64>("add", (40, 2))
            .unwrap()
            .result()
            .unwrap(),
        42
    );
    assert_eq!(ex.max_workers(), 2);
}

fn workers_are_other_processes_and_reused() {
    let ex = pool(2);
    let pids: std::collections::HashSet<u32> = (0..20)
        .map(|_| ex.submit_named::<(), u32>("pid", ()).unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|f| f.result().unwrap())
        .collect();
    assert!(!pids.contains(&std::process::id()));
    assert!(!pids.is_empty() && pids.len() <= 2, "pids: {pids:?}");
}

fn named_map_in_order() {
    let ex = pool(2);
    let out: Vec<u64> = ex
        .map_named::<u64, u64, _>("square", 0..200)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
}

fn chunked_map_in_order() {
    let ex = pool(2);
    let opts = MapOptions {
        chunksize: 37,
        ..Default::default()
    };
    let out: Vec<u64> = ex
        .map_named_with::<u64, u64, _>("square", 0..1000, opts)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
}

/// Many big tasks and answers in flight on two workers at once, so requests
/// and answers fill the sockets both ways. A send that waits for a worker
/// must never keep that worker's answers from being read. (The deadlock
/// this guards against showed in release builds with a 1M-item chunked map;
/// this debug-build test did not catch that version, so it stands as a
/// stress test.) The map's timeout turns a hang into a failure.
fn full_sockets_both_ways_do_not_deadlock() {
    let ex = pool(2);
    let opts = MapOptions {
        timeout: Some(LONG),
        ..Default::default()
    };
    let items = (0..600u32).map(|i| vec![i as u8; 200_000]);
    let out = ex
        .map_named_with::<Vec<u8>, Vec<u8>, _>("echo_bytes", items, opts)
        .unwrap();
    for (i, r) in out.enumerate() {
        let v = r.unwrap();
        assert_eq!(v.len(), 200_000);
        assert_eq!(v[0], i as u8);
    }
}

fn chunked_map_stops_at_panic() {
    let ex = pool(1);
    let opts = MapOptions {
        chunksize: 4,
        ..Default::default()
    };
    let items: Vec<String> = vec!["a".into(), "b".into()];
    let mut m = ex
        .map_named_with::<String, u64, _>("panic", items, opts)
        .unwrap();
    assert_eq!(
        m.next(),
        Some(Err(Error::Panicked {
            message: "a".into()
        }))
    );
    assert_eq!(m.next(), None);
}

fn buffered_map_infinite_input() {
    let ex = pool(2);
    let opts = MapOptions {
        buffersize: Some(4),
        chunksize: 2,
        ..Default::default()
    };
    let out: Vec<u64> = ex
        .map_named_with::<u64, u64, _>("square", 0.., opts)
        .unwrap()
        .take(50)
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
}

fn panic_is_reported_and_worker_keeps_serving() {
    let ex = pool(1);
    let pid = ex
        .submit_named::<(), u32>("pid", ())
        .unwrap()
        .result()
        .unwrap();
    let err = ex
        .submit_named::<String, u64>("panic", "kaboom".into())
        .unwrap()
        .result();
    assert_eq!(
        err,
        Err(Error::Panicked {
            message: "kaboom".into()
        })
    );
    assert_eq!(
        ex.submit_named::<(), u32>("pid", ())
            .unwrap()
            .result()
            .unwrap(),
        pid
    );
}

fn wrong_types_are_decode_errors() {
    let ex = pool(1);
    let r = ex.submit_named::<i32, u64>("square", 3).unwrap().result();
    assert!(matches!(r, Err(Error::Decode { .. })), "{r:?}");
    let r = ex
        .submit_named::<u64, String>("square", 3)
        .unwrap()
        .result();
    assert!(matches!(r, Err(Error::Decode { .. })), "{r:?}");
    // The worker is unharmed.
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 3)
            .unwrap()
            .result()
            .unwrap(),
        9
    );
}

fn unknown_name_and_closures_are_refused() {
    let ex = pool(1);
    assert_eq!(
        ex.submit_named::<u64, u64>("cube", 3).err(),
        Some(Error::NotRegistered {
            name: "cube".into()
        })
    );
    match ex.submit(|| 1) {
        Err(Error::Unsupported { reason }) => assert!(reason.contains("submit_named"), "{reason}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

fn large_arguments_and_results() {
    let ex = pool(1);
    let n = 16 << 20;
    let big = vec![1u8; n];
    assert_eq!(
        ex.submit_named::<Vec<u8>, u64>("len", big)
            .unwrap()
            .result()
            .unwrap(),
        n as u64
    );
    let back = ex
        .submit_named::<u64, Vec<u8>>("bytes", n as u64)
        .unwrap()
        .result()
        .unwrap();
    assert_eq!(back.len(), n);
    assert!(back.iter().all(|&b| b == 7));
    let s = "é".repeat(1 << 20);
    assert_eq!(
        ex.submit_named::<String, String>("echo_string", s.clone())
            .unwrap()
            .result()
            .unwrap(),
        s
    );
}

/// `n` bytes that differ from those of every other `i` at most places.
fn pattern(i: usize, n: usize) -> Vec<u8> {
    let seed = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n as u64)
        .map(|j| (seed.wrapping_add(j.wrapping_mul(0x2545_F491_4F6C_DD1D)) >> 56) as u8)
        .collect()
}

/// A big payload's size: 1 to 3 MiB, different for each `i`, so segments
/// are reused for smaller payloads and replaced by bigger ones.
fn big_size(i: usize) -> usize {
    (1 << 20) + (i * 700_001) % (2 << 20)
}

/// Checks that `echo_bytes` of payload `i` came back byte for byte.
fn check_echo(i: usize, got: Result<Vec<u8>, Error>) {
    let got = got.unwrap();
    assert!(
        got == pattern(i, big_size(i)),
        "big payload {i} came back changed ({} bytes, {} sent)",
        got.len(),
        big_size(i)
    );
}

/// Big arguments are copied into a few shared-memory segments the pool
/// reuses from task to task (a segment is reused only once its task is
/// answered); big results come back in segments too. Many big tasks in
/// flight on one worker at once (more than there are reusable segments),
/// of changing sizes, must each come back byte for byte, round after round.
fn many_big_payloads_in_flight_on_one_worker() {
    let ex = pool(1);
    // Short tasks first, so the worker's window grows and the big tasks
    // below are sent to it together, while it is busy.
    let warm: u64 = ex
        .map_named::<u64, u64, _>("square", 0..2000)
        .unwrap()
        .map(Result::unwrap)
        .sum();
    assert_eq!(warm, (0..2000u64).map(|x| x * x).sum());
    for round in 0..3 {
        let flag = flag_file(&format!("big-{round}"));
        let blocker = ex
            .submit_named::<String, u32>("wait_for_file", flag.clone())
            .unwrap();
        let ids: Vec<usize> = (round * 12..round * 12 + 12).collect();
        let echoes: Vec<_> = ids
            .iter()
            .map(|&i| {
                ex.submit_named::<Vec<u8>, Vec<u8>>("echo_bytes", pattern(i, big_size(i)))
                    .unwrap()
            })
            .collect();
        std::fs::write(&flag, b"go").unwrap();
        blocker.result_timeout(LONG).unwrap();
        for (i, f) in ids.into_iter().zip(echoes) {
            check_echo(i, f.result_timeout(LONG));
        }
        let _ = std::fs::remove_file(&flag);
    }
}

/// A worker that dies holding a big argument, with big tasks queued behind
/// it: the replacement worker, which holds none of the pool's segments yet,
/// gets every payload intact, and the dead task's segment is reused.
fn worker_death_with_big_payloads_in_flight() {
    let ex = pool(1);
    check_echo(
        100,
        ex.submit_named("echo_bytes", pattern(100, big_size(100)))
            .unwrap()
            .result_timeout(LONG),
    );
    let doomed = ex
        .submit_named::<Vec<u8>, u64>("exit_big", vec![1u8; (1 << 20) + 5])
        .unwrap();
    let behind: Vec<_> = (101..107)
        .map(|i| {
            ex.submit_named::<Vec<u8>, Vec<u8>>("echo_bytes", pattern(i, big_size(i)))
                .unwrap()
        })
        .collect();
    match doomed.result_timeout(LONG) {
        Err(Error::WorkerDied { status, .. }) => assert!(status.contains("code 5"), "{status}"),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    for (i, f) in (101..).zip(behind) {
        check_echo(i, f.result_timeout(LONG));
    }
    for i in 107..110 {
        check_echo(
            i,
            ex.submit_named("echo_bytes", pattern(i, big_size(i)))
                .unwrap()
                .result_timeout(LONG),
        );
    }
}

fn noisy_task_does_not_disturb_the_pool() {
    let ex = pool(1);
    assert_eq!(
        ex.submit_named::<u32, u32>("noisy", 3000)
            .unwrap()
            .result()
            .unwrap(),
        3000
    );
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 5)
            .unwrap()
            .result()
            .unwrap(),
        25
    );
}

fn queued_tasks_can_be_cancelled() {
    let ex = pool(1);
    let flag = flag_file("cancel");
    let blocker = ex
        .submit_named::<String, u32>("wait_for_file", flag.clone())
        .unwrap();
    // Slow tasks: at most one more is sent beside the running one; the rest
    // stay in the parent, cancellable.
    let queued: Vec<_> = (0..6)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    let cancelled = queued.iter().filter(|f| f.cancel()).count();
    assert!(
        cancelled >= 4,
        "only {cancelled} of 6 queued tasks could be cancelled"
    );
    std::fs::write(&flag, b"go").unwrap();
    blocker.result().unwrap();
    for f in queued {
        let was_cancelled = f.cancelled();
        match f.result() {
            Err(Error::Cancelled) => assert!(was_cancelled),
            Ok(_) => assert!(!was_cancelled),
            other => panic!("unexpected {other:?}"),
        }
    }
    let _ = std::fs::remove_file(&flag);
}

fn as_completed_and_timeouts() {
    let ex = pool(2);
    let flag = flag_file("ascompleted");
    let slow = ex
        .submit_named::<String, u32>("wait_for_file", flag.clone())
        .unwrap();
    let fast = ex.submit_named::<u64, u64>("square", 4).unwrap();
    assert_eq!(fast.result_timeout(LONG).unwrap(), 16);
    let mut it = as_completed(vec![slow], Some(Duration::from_millis(100)));
    assert_eq!(it.next().map(|r| r.err()), Some(Some(Error::Timeout)));
    let slow = it.into_remaining().pop().unwrap();
    assert!(!slow.wait_timeout(Duration::from_millis(50)));
    std::fs::write(&flag, b"go").unwrap();
    let done: Vec<_> = as_completed(vec![slow], Some(LONG)).collect();
    assert_eq!(done.len(), 1);
    assert!(done.into_iter().next().unwrap().unwrap().result().is_ok());
    let _ = std::fs::remove_file(&flag);
}

fn worker_exit_is_worker_died_and_pool_survives() {
    let ex = pool(1);
    let r = ex
        .submit_named::<i32, u64>("exit", 3)
        .unwrap()
        .result_timeout(LONG);
    match r {
        Err(Error::WorkerDied { status, .. }) => assert!(status.contains("code 3"), "{status}"),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 6)
            .unwrap()
            .result_timeout(LONG)
            .unwrap(),
        36
    );
}

fn failing_initializer_breaks_the_pool() {
    let ex = Executor::builder()
        .processes(1)
        .registry(tasks())
        .initializer_named("init_fail", ())
        .build()
        .unwrap();
    let r = ex
        .submit_named::<u64, u64>("square", 2)
        .unwrap()
        .result_timeout(LONG);
    match r {
        Err(Error::BrokenPool { reason }) => {
            assert!(reason.contains("initializer says no"), "{reason}")
        }
        other => panic!("expected BrokenPool, got {other:?}"),
    }
    // Later work is refused at once.
    let mut later = None;
    for _ in 0..1000 {
        match ex.submit_named::<u64, u64>("square", 2) {
            Err(e) => {
                later = Some(e);
                break;
            }
            Ok(f) => assert!(matches!(
                f.result_timeout(LONG),
                Err(Error::BrokenPool { .. })
            )),
        }
    }
    assert!(matches!(later, Some(Error::BrokenPool { .. })), "{later:?}");
}

fn working_initializer_runs_first() {
    let ex = Executor::builder()
        .processes(1)
        .registry(tasks())
        .initializer_named("init_ok", ())
        .build()
        .unwrap();
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 2)
            .unwrap()
            .result_timeout(LONG)
            .unwrap(),
        4
    );
}

fn missing_worker_program_is_spawn_error() {
    let r = Executor::builder()
        .processes(1)
        .registry(tasks())
        .worker_program("/nonexistent/twinpool-worker")
        .build();
    assert!(matches!(r, Err(Error::Spawn { .. })), "{r:?}");
}

fn worker_that_never_connects_is_spawn_error() {
    let r = Executor::builder()
        .processes(1)
        .registry(tasks())
        .worker_program("/bin/sleep")
        .connect_timeout(Duration::from_millis(300))
        .build();
    match r {
        Err(Error::Spawn { reason }) => assert!(reason.contains("serve_if_worker"), "{reason}"),
        other => panic!("expected Spawn, got {other:?}"),
    }
}

fn worker_missing_a_task_is_spawn_error() {
    let extra = tasks().register("only_in_parent", |x: u8| x);
    let r = Executor::processes(1, extra);
    match r {
        Err(Error::Spawn { reason }) => assert!(reason.contains("only_in_parent"), "{reason}"),
        other => panic!("expected Spawn, got {other:?}"),
    }
}

fn shutdown_refuses_and_callbacks_run() {
    let ex = pool(1);
    let hits = Arc::new(AtomicUsize::new(0));
    let f = ex.submit_named::<u64, u64>("square", 3).unwrap();
    let h = hits.clone();
    f.add_done_callback(move |r| {
        assert_eq!(r, &Ok(9));
        h.fetch_add(1, Ordering::SeqCst);
    });
    ex.shutdown(true, false);
    assert_eq!(f.result().unwrap(), 9);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 3).err(),
        Some(Error::Shutdown)
    );
}

fn processes_per_cpu_is_the_default_size() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let ex = Executor::builder()
        .processes_per_cpu()
        .registry(tasks())
        .build()
        .unwrap();
    assert_eq!(ex.max_workers(), cpus);
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 3)
            .unwrap()
            .result_timeout(LONG)
            .unwrap(),
        9
    );
}

fn registry_on_the_thread_back_end() {
    let ex = Executor::builder()
        .threads(2)
        .registry(tasks())
        .build()
        .unwrap();
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 9)
            .unwrap()
            .result()
            .unwrap(),
        81
    );
    // Thread back end: the task runs in this process.
    assert_eq!(
        ex.submit_named::<(), u32>("pid", ())
            .unwrap()
            .result()
            .unwrap(),
        std::process::id()
    );
    let r = ex.submit_named::<i32, u64>("square", 3).unwrap().result();
    assert!(matches!(r, Err(Error::Decode { .. })), "{r:?}");
    let v: Vec<u64> = ex
        .map_named::<u64, u64, _>("square", 1..4)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(v, [1, 4, 9]);
}

fn no_child_process_left_after_shutdown() {
    let ex = pool(2);
    ex.submit_named::<u64, u64>("square", 1)
        .unwrap()
        .result()
        .unwrap();
    assert!(!children().is_empty());
    drop(ex);
    let left = children();
    assert!(left.is_empty(), "children left after shutdown: {left:?}");
}

fn main() {
    serve_if_worker(&tasks());
    let tests: &[(&str, fn())] = &[
        ("named_submit_and_result", named_submit_and_result),
        ("typed_tasks_cross_to_workers", typed_tasks_cross_to_workers),
        (
            "stats_count_what_the_pool_does",
            stats_count_what_the_pool_does,
        ),
        (
            "workers_are_other_processes_and_reused",
            workers_are_other_processes_and_reused,
        ),
        ("named_map_in_order", named_map_in_order),
        ("chunked_map_in_order", chunked_map_in_order),
        (
            "full_sockets_both_ways_do_not_deadlock",
            full_sockets_both_ways_do_not_deadlock,
        ),
        ("chunked_map_stops_at_panic", chunked_map_stops_at_panic),
        ("buffered_map_infinite_input", buffered_map_infinite_input),
        (
            "panic_is_reported_and_worker_keeps_serving",
            panic_is_reported_and_worker_keeps_serving,
        ),
        (
            "wrong_types_are_decode_errors",
            wrong_types_are_decode_errors,
        ),
        (
            "unknown_name_and_closures_are_refused",
            unknown_name_and_closures_are_refused,
        ),
        ("large_arguments_and_results", large_arguments_and_results),
        (
            "many_big_payloads_in_flight_on_one_worker",
            many_big_payloads_in_flight_on_one_worker,
        ),
        (
            "worker_death_with_big_payloads_in_flight",
            worker_death_with_big_payloads_in_flight,
        ),
        (
            "noisy_task_does_not_disturb_the_pool",
            noisy_task_does_not_disturb_the_pool,
        ),
        (
            "queued_tasks_can_be_cancelled",
            queued_tasks_can_be_cancelled,
        ),
        ("as_completed_and_timeouts", as_completed_and_timeouts),
        (
            "worker_exit_is_worker_died_and_pool_survives",
            worker_exit_is_worker_died_and_pool_survives,
        ),
        (
            "failing_initializer_breaks_the_pool",
            failing_initializer_breaks_the_pool,
        ),
        (
            "working_initializer_runs_first",
            working_initializer_runs_first,
        ),
        (
            "missing_worker_program_is_spawn_error",
            missing_worker_program_is_spawn_error,
        ),
        (
            "worker_that_never_connects_is_spawn_error",
            worker_that_never_connects_is_spawn_error,
        ),
        (
            "worker_missing_a_task_is_spawn_error",
            worker_missing_a_task_is_spawn_error,
        ),
        (
            "shutdown_refuses_and_callbacks_run",
            shutdown_refuses_and_callbacks_run,
        ),
        (
            "processes_per_cpu_is_the_default_size",
            processes_per_cpu_is_the_default_size,
        ),
        (
            "registry_on_the_thread_back_end",
            registry_on_the_thread_back_end,
        ),
        // Last: it checks that every earlier pool reaped its workers.
        (
            "no_child_process_left_after_shutdown",
            no_child_process_left_after_shutdown,
        ),
    ];
    common::run(tests);
}
