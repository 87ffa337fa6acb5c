//! Worker processes that fail cost one task, never the pool. Each
//! failure is caused for real; each test checks the exact error on the
//! affected future and that the pool then still runs new tasks.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use twinpool::{serve_if_worker, Error, Executor, Registry};

mod proc_common;
use common::{alive, children, eventually, flag_file, open_fds, LONG};
use proc_common as common;

/// Set in the child program of `parent_death_ends_workers`.
const PARENT_MODE: &str = "TWINPOOL_TEST_PARENT_DIR";
/// Set in a worker program whose main forgets `serve_if_worker`.
const FORGETFUL_MODE: &str = "TWINPOOL_TEST_FORGETFUL";

fn tasks() -> Registry {
    Registry::new()
        .register("square", |x: u64| x * x)
        .register("pid", |_: ()| std::process::id())
        .register("exit", |code: i32| -> u64 { std::process::exit(code) })
        .register("abort", |_: ()| -> u64 { std::process::abort() })
        .register("segfault", |_: ()| -> u64 {
            // SAFETY: none; this task exists to crash its worker.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
            0
        })
        .register("sleep_ms", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        // Writes "<dir>/<pid>" so the test knows the task runs and where,
        // then blocks until "<dir>/go" exists.
        .register("report_then_wait", |dir: String| {
            std::fs::write(format!("{dir}/{}", std::process::id()), b"").unwrap();
            common::wait_for_file(&format!("{dir}/go"));
            std::process::id()
        })
        // Blocks until the file exists, then aborts.
        .register("abort_when", |path: String| -> u64 {
            common::wait_for_file(&path);
            std::process::abort()
        })
        .register("init_panics", |_: ()| -> () { panic!("no database") })
}

fn pool(n: usize) -> Executor {
    Executor::processes(n, tasks()).expect("the pool starts")
}

/// A fresh directory for `report_then_wait`.
fn task_dir(tag: &str) -> String {
    let dir = flag_file(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until `report_then_wait` tasks have reported `n` pids in `dir`.
fn reported_pids(dir: &str, n: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    eventually("tasks to report their worker pids", || {
        pids = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.len() >= n
    });
    pids
}

fn still_serves(ex: &Executor) {
    let f = ex.submit_named::<u64, u64>("square", 7).unwrap();
    assert_eq!(f.result_timeout(LONG).unwrap(), 49);
}

fn expect_died(r: Result<u64, Error>, status_has: &str) {
    match r {
        Err(Error::WorkerDied { status, .. }) => {
            assert!(
                status.contains(status_has),
                "status {status:?} lacks {status_has:?}"
            )
        }
        other => panic!("expected WorkerDied ({status_has}), got {other:?}"),
    }
}

fn exit_code_is_reported() {
    let ex = pool(1);
    expect_died(
        ex.submit_named::<i32, u64>("exit", 7)
            .unwrap()
            .result_timeout(LONG),
        "exited with code 7",
    );
    still_serves(&ex);
}

fn abort_is_reported() {
    let ex = pool(1);
    expect_died(
        ex.submit_named::<(), u64>("abort", ())
            .unwrap()
            .result_timeout(LONG),
        "SIGABRT",
    );
    still_serves(&ex);
}

fn segfault_is_reported() {
    let ex = pool(1);
    expect_died(
        ex.submit_named::<(), u64>("segfault", ())
            .unwrap()
            .result_timeout(LONG),
        "SIGSEGV",
    );
    still_serves(&ex);
}

fn sigkill_mid_task_is_reported_and_others_untouched() {
    let ex = pool(2);
    let dir = task_dir("sigkill");
    let victim = ex
        .submit_named::<String, u32>("report_then_wait", dir.clone())
        .unwrap();
    let pid = reported_pids(&dir, 1)[0];
    // A task on the other worker keeps going.
    let other = ex.submit_named::<u64, u64>("sleep_ms", 1).unwrap();
    // SAFETY: kill(2) on a worker pid this test owns.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    match victim.result_timeout(LONG) {
        Err(Error::WorkerDied {
            pid: p,
            status,
            exit,
            tries,
        }) => {
            assert_eq!(p, pid);
            assert!(status.contains("SIGKILL"), "{status}");
            assert_eq!(exit, twinpool::WorkerExit::Signal(libc::SIGKILL));
            assert_eq!(tries, 1);
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(other.result_timeout(LONG).unwrap(), 1);
    still_serves(&ex);
    assert_eq!(ex.max_workers(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tasks_queued_behind_a_death_are_resent() {
    let ex = pool(1);
    let flag = flag_file("resend");
    let doomed = ex
        .submit_named::<String, u64>("abort_when", flag.clone())
        .unwrap();
    let behind: Vec<_> = (0..3)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    std::fs::write(&flag, b"").unwrap();
    expect_died(doomed.result_timeout(LONG), "SIGABRT");
    for (i, f) in behind.into_iter().enumerate() {
        assert_eq!(f.result_timeout(LONG).unwrap(), (i * i) as u64);
    }
    let _ = std::fs::remove_file(&flag);
}

fn task_past_its_limit_is_killed() {
    let ex = pool(1);
    let limit = Duration::from_millis(200);
    let r = ex
        .submit_named_timeout::<u64, u64>("sleep_ms", 600_000, limit)
        .unwrap()
        .result_timeout(LONG);
    assert_eq!(r, Err(Error::TaskTimedOut { limit }));
    still_serves(&ex);
    // A task within its limit is untouched.
    let ok = ex
        .submit_named_timeout::<u64, u64>("sleep_ms", 1, LONG)
        .unwrap();
    assert_eq!(ok.result_timeout(LONG).unwrap(), 1);
}

fn builder_task_timeout_applies_to_every_task() {
    let limit = Duration::from_millis(200);
    let ex = Executor::builder()
        .processes(1)
        .registry(tasks())
        .task_timeout(limit)
        .build()
        .unwrap();
    let r = ex
        .submit_named::<u64, u64>("sleep_ms", 600_000)
        .unwrap()
        .result_timeout(LONG);
    assert_eq!(r, Err(Error::TaskTimedOut { limit }));
    still_serves(&ex);
}

fn kill_stops_a_running_task() {
    let ex = pool(1);
    let dir = task_dir("kill");
    let f = ex
        .submit_named::<String, u32>("report_then_wait", dir.clone())
        .unwrap();
    let pid = reported_pids(&dir, 1)[0];
    assert!(f.running());
    assert!(f.kill());
    assert!(matches!(f.result_timeout(LONG), Err(Error::Killed { .. })));
    eventually("the killed worker to be gone", || !alive(pid));
    still_serves(&ex);
    let _ = std::fs::remove_dir_all(&dir);
}

fn kill_on_a_pending_task_cancels_it() {
    let ex = pool(1);
    let dir = task_dir("kill-pending");
    let blocker = ex
        .submit_named::<String, u32>("report_then_wait", dir.clone())
        .unwrap();
    reported_pids(&dir, 1);
    // One more may be sent beside the running task; the third waits in the
    // parent and is still pending.
    let _second = ex.submit_named::<u64, u64>("square", 1).unwrap();
    let third = ex.submit_named::<u64, u64>("square", 2).unwrap();
    assert!(third.kill());
    assert!(third.cancelled());
    std::fs::write(format!("{dir}/go"), b"").unwrap();
    blocker.result_timeout(LONG).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn terminate_workers_stops_everything() {
    let ex = pool(2);
    let dir = task_dir("terminate");
    let running: Vec<_> = (0..2)
        .map(|_| {
            ex.submit_named::<String, u32>("report_then_wait", dir.clone())
                .unwrap()
        })
        .collect();
    let pids = reported_pids(&dir, 2);
    ex.terminate_workers().unwrap();
    for f in running {
        assert!(matches!(f.result_timeout(LONG), Err(Error::Killed { .. })));
    }
    for pid in pids {
        assert!(!alive(pid), "worker {pid} survived terminate_workers");
    }
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 1).err(),
        Some(Error::Shutdown)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn kill_workers_on_threads_is_unsupported() {
    let ex = Executor::threads(1);
    assert!(matches!(ex.kill_workers(), Err(Error::Unsupported { .. })));
}

fn max_tasks_per_child_replaces_workers() {
    let ex = Executor::builder()
        .processes(1)
        .registry(tasks())
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..6)
        .map(|_| {
            ex.submit_named::<(), u32>("pid", ())
                .unwrap()
                .result_timeout(LONG)
                .unwrap()
        })
        .collect();
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[2], pids[3]);
    assert_eq!(pids[4], pids[5]);
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "pids: {pids:?}");
}

fn failing_initializer_breaks_the_pool_once() {
    let ex = Executor::builder()
        .processes(2)
        .registry(tasks())
        .initializer_named("init_panics", ())
        .build()
        .unwrap();
    let r = ex
        .submit_named::<u64, u64>("square", 2)
        .unwrap()
        .result_timeout(LONG);
    match r {
        Err(Error::BrokenPool { reason }) => assert!(reason.contains("no database"), "{reason}"),
        other => panic!("expected BrokenPool, got {other:?}"),
    }
    drop(ex);
    assert!(children().is_empty(), "workers left: {:?}", children());
}

fn parent_death_ends_workers() {
    let dir = task_dir("parent");
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .env(PARENT_MODE, &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pids = reported_pids(&dir, 2);
    parent.kill().unwrap();
    parent.wait().unwrap();
    for pid in pids {
        eventually("workers to end after their parent was killed", || {
            !alive(pid)
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The child program of `parent_death_ends_workers`: a pool whose two
/// workers block, until this process is killed.
fn be_a_parent(dir: &str) -> ! {
    let ex = pool(2);
    let _busy: Vec<_> = (0..2)
        .map(|_| {
            ex.submit_named::<String, u32>("report_then_wait", dir.to_string())
                .unwrap()
        })
        .collect();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn resources_come_back_after_many_tasks_and_deaths() {
    let fds_before = open_fds();
    let ex = pool(2);
    let squares: u64 = ex
        .map_named::<u64, u64, _>("square", 0..10_000)
        .unwrap()
        .map(Result::unwrap)
        .sum();
    assert_eq!(squares, (0..10_000u64).map(|x| x * x).sum());
    for _ in 0..100 {
        expect_died(
            ex.submit_named::<i32, u64>("exit", 1)
                .unwrap()
                .result_timeout(LONG),
            "code 1",
        );
    }
    still_serves(&ex);
    drop(ex);
    assert!(children().is_empty(), "children left: {:?}", children());
    // The accept threads of the replacements close their ends as they finish.
    eventually("file descriptors to come back", || open_fds() <= fds_before);
}

fn worker_that_forgets_serve_if_worker_is_a_spawn_error() {
    // Its main builds a pool of its own instead of serving: that pool must
    // refuse to start (else workers would start workers without end), and
    // this pool must report the worker that exited without connecting.
    let exe = std::env::current_exe().unwrap();
    let wrapper = flag_file("forgetful.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport {FORGETFUL_MODE}=1\nexec '{}'\n",
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let r = Executor::builder()
        .processes(1)
        .registry(tasks())
        .worker_program(&wrapper)
        .build();
    match r {
        Err(Error::Spawn { reason }) => {
            assert!(reason.contains("exited with code 3"), "{reason}");
            assert!(reason.contains("serve_if_worker"), "{reason}");
        }
        other => panic!("expected Spawn, got {other:?}"),
    }
    assert!(children().is_empty(), "children left: {:?}", children());
    let _ = std::fs::remove_file(&wrapper);
}

fn main() {
    if std::env::var_os(FORGETFUL_MODE).is_some() {
        // No serve_if_worker here, on purpose.
        match Executor::processes(1, tasks()) {
            Err(Error::Spawn { reason }) if reason.contains("serve_if_worker") => {
                std::process::exit(3)
            }
            other => {
                eprintln!("a forgetful worker built a pool: {other:?}");
                std::process::exit(4)
            }
        }
    }
    if let Ok(dir) = std::env::var(PARENT_MODE) {
        // A worker started by the child program must not act as a parent.
        serve_if_worker(&tasks());
        be_a_parent(&dir);
    }
    serve_if_worker(&tasks());
    common::run(&[
        ("exit_code_is_reported", exit_code_is_reported),
        ("abort_is_reported", abort_is_reported),
        ("segfault_is_reported", segfault_is_reported),
        (
            "sigkill_mid_task_is_reported_and_others_untouched",
            sigkill_mid_task_is_reported_and_others_untouched,
        ),
        (
            "tasks_queued_behind_a_death_are_resent",
            tasks_queued_behind_a_death_are_resent,
        ),
        (
            "task_past_its_limit_is_killed",
            task_past_its_limit_is_killed,
        ),
        (
            "builder_task_timeout_applies_to_every_task",
            builder_task_timeout_applies_to_every_task,
        ),
        ("kill_stops_a_running_task", kill_stops_a_running_task),
        (
            "kill_on_a_pending_task_cancels_it",
            kill_on_a_pending_task_cancels_it,
        ),
        (
            "terminate_workers_stops_everything",
            terminate_workers_stops_everything,
        ),
        (
            "kill_workers_on_threads_is_unsupported",
            kill_workers_on_threads_is_unsupported,
        ),
        (
            "max_tasks_per_child_replaces_workers",
            max_tasks_per_child_replaces_workers,
        ),
        (
            "failing_initializer_breaks_the_pool_once",
            failing_initializer_breaks_the_pool_once,
        ),
        ("parent_death_ends_workers", parent_death_ends_workers),
        (
            "worker_that_forgets_serve_if_worker_is_a_spawn_error",
            worker_that_forgets_serve_if_worker_is_a_spawn_error,
        ),
        (
            "resources_come_back_after_many_tasks_and_deaths",
            resources_come_back_after_many_tasks_and_deaths,
        ),
    ]);
}
