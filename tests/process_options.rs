//! The process pool's own options, each driven for real: retries, a memory
//! limit per worker, process groups, start-up back-off, the structural
//! check of task types at start, options a back end would ignore, and
//! durations that mean "no limit".

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};
use twinpool::{serve_if_worker, Error, Executor, Registry, WorkerExit};

mod proc_common;
use common::{alive, children, eventually, flag_file, LONG};
use proc_common as common;

/// Set in a worker whose `Job` has another layout.
const WIDE_ENV: &str = "TWINPOOL_TEST_WIDE_JOB";
/// Set in the child program that runs out of file descriptors.
const FEW_FDS_ENV: &str = "TWINPOOL_TEST_FEW_FDS";
/// Set in the child program whose pool's task starts a process, and which
/// is then killed: the directory for the task.
const DOOMED_PARENT_ENV: &str = "TWINPOOL_TEST_DOOMED_PARENT";

/// A task argument whose layout depends on the process: in a worker started
/// with `WIDE_ENV` it reads two fields, as a `Job` of another build would.
#[derive(Serialize, Debug, PartialEq)]
struct Job {
    x: u32,
}

impl<'de> Deserialize<'de> for Job {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Job, D::Error> {
        if std::env::var_os(WIDE_ENV).is_some() {
            let (x, _extra) = <(u32, u64)>::deserialize(d)?;
            Ok(Job { x })
        } else {
            let (x,) = <(u32,)>::deserialize(d)?;
            Ok(Job { x })
        }
    }
}

fn tasks() -> Registry {
    Registry::new()
        .register("square", |x: u64| x * x)
        .register("job", |j: Job| j.x)
        .register("pid", |_: ()| std::process::id())
        // Counts its runs as files in `dir`; aborts its worker until it has
        // run `crashes + 1` times.
        .register("crash_until", |(dir, crashes): (String, u32)| {
            let runs = std::fs::read_dir(&dir).map_or(0, |d| d.count()) as u32 + 1;
            std::fs::write(format!("{dir}/run-{runs}"), b"").unwrap();
            if runs <= crashes {
                std::process::abort();
            }
            runs
        })
        // Allocates and touches `n` bytes.
        .register("alloc", |n: u64| {
            let v = vec![1u8; n as usize];
            v.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>()
        })
        // Starts `sleep 1000` in the worker's process group, writes its pid
        // to "<dir>/sleeper", then returns or blocks until "<dir>/go".
        .register("start_sleeper", |(dir, block): (String, bool)| {
            // Never waited for: the point is that the pool ends it.
            #[allow(clippy::zombie_processes)]
            let child = Command::new("sleep").arg("1000").spawn().unwrap();
            std::fs::write(format!("{dir}/sleeper"), child.id().to_string()).unwrap();
            if block {
                common::wait_for_file(&format!("{dir}/go"));
            }
            child.id()
        })
        .register("wait_for_file", |path: String| {
            common::wait_for_file(&path);
            0u64
        })
        // An initializer that records each worker start, then exits its
        // worker at once: a worker program that dies right after it starts.
        .register("record_then_exit", |dir: String| -> () {
            std::fs::write(format!("{dir}/{}", std::process::id()), b"").unwrap();
            std::process::exit(0)
        })
}

fn builder(n: usize) -> twinpool::Builder {
    Executor::builder().processes(n).registry(tasks())
}

fn task_dir(tag: &str) -> String {
    let dir = flag_file(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Creates its file when dropped: a failing test (which unwinds) releases
/// the task that waits for it, so the pool can shut down.
struct Release(String);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}

fn files_in(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Writes an executable wrapper script around this program.
fn wrapper(tag: &str, body: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let path = flag_file(tag);
    let script = body.replace("{exe}", &exe.display().to_string());
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn retries_run_a_task_again_after_its_worker_dies() {
    let ex = builder(2).retries(2).build().unwrap();
    let dir = task_dir("retries-ok");
    let runs = ex
        .submit_named::<(String, u32), u32>("crash_until", (dir.clone(), 2))
        .unwrap()
        .result_timeout(LONG);
    assert_eq!(runs, Ok(3), "two deaths, then the third try ran");
    assert_eq!(files_in(&dir), 3);

    let dir = task_dir("retries-out");
    let r = ex
        .submit_named::<(String, u32), u32>("crash_until", (dir.clone(), 5))
        .unwrap()
        .result_timeout(LONG);
    match r {
        Err(Error::WorkerDied { tries, exit, .. }) => {
            assert_eq!(tries, 3, "one try and two retries");
            assert_eq!(exit, WorkerExit::Signal(libc::SIGABRT));
        }
        other => panic!("expected WorkerDied after 3 tries, got {other:?}"),
    }
    assert_eq!(files_in(&dir), 3, "it ran exactly three times");
    let _ = std::fs::remove_dir_all(&dir);
}

fn without_retries_a_death_is_one_try() {
    let ex = builder(1).build().unwrap();
    let dir = task_dir("no-retries");
    let r = ex
        .submit_named::<(String, u32), u32>("crash_until", (dir.clone(), 1))
        .unwrap()
        .result_timeout(LONG);
    assert!(
        matches!(r, Err(Error::WorkerDied { tries: 1, .. })),
        "{r:?}"
    );
    assert_eq!(files_in(&dir), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn a_memory_limit_fails_the_task_that_passes_it() {
    let limit = 1 << 30;
    let ex = builder(1).worker_memory_limit(limit).build().unwrap();
    // Within the limit: fine.
    let small = ex.submit_named::<u64, u64>("alloc", 16 << 20).unwrap();
    assert_eq!(small.result_timeout(LONG), Ok((16 << 20) / 4096));
    let big = ex.submit_named::<u64, u64>("alloc", 8 << 30).unwrap();
    assert_eq!(big.result_timeout(LONG), Err(Error::OutOfMemory { limit }));
    let text = Error::OutOfMemory { limit }.to_string();
    assert!(text.contains(&limit.to_string()), "{text}");
    // The pool lives.
    let again = ex.submit_named::<u64, u64>("square", 9).unwrap();
    assert_eq!(again.result_timeout(LONG), Ok(81));
}

/// Reads the pid a `start_sleeper` task wrote.
fn sleeper_pid(dir: &str) -> u32 {
    let path = format!("{dir}/sleeper");
    eventually("the task to start its sleeper", || {
        Path::new(&path).exists()
    });
    let mut text = String::new();
    eventually("the sleeper's pid", || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.parse::<u32>().is_ok()
    });
    text.parse().unwrap()
}

fn kill_reaches_the_processes_a_task_started() {
    let ex = builder(1).build().unwrap();
    let dir = task_dir("group-kill");
    let _release = Release(format!("{dir}/go"));
    let f = ex
        .submit_named::<(String, bool), u32>("start_sleeper", (dir.clone(), true))
        .unwrap();
    let sleeper = sleeper_pid(&dir);
    assert!(alive(sleeper));
    assert!(f.kill());
    assert!(matches!(f.result_timeout(LONG), Err(Error::Killed { .. })));
    eventually("the task's own child to be killed too", || !alive(sleeper));
    let _ = std::fs::remove_dir_all(&dir);
}

fn a_time_limit_reaches_the_processes_a_task_started() {
    let ex = builder(1).build().unwrap();
    let dir = task_dir("group-limit");
    let _release = Release(format!("{dir}/go"));
    let limit = Duration::from_millis(300);
    let f = ex
        .submit_named_timeout::<(String, bool), u32>("start_sleeper", (dir.clone(), true), limit)
        .unwrap();
    let sleeper = sleeper_pid(&dir);
    assert_eq!(f.result_timeout(LONG), Err(Error::TaskTimedOut { limit }));
    eventually("the task's own child to be killed too", || !alive(sleeper));
    let _ = std::fs::remove_dir_all(&dir);
}

fn shutdown_ends_what_a_finished_task_left_running() {
    let ex = builder(1).build().unwrap();
    let dir = task_dir("group-shutdown");
    let f = ex
        .submit_named::<(String, bool), u32>("start_sleeper", (dir.clone(), false))
        .unwrap();
    let sleeper = f.result_timeout(LONG).unwrap();
    assert!(alive(sleeper), "the sleeper outlives its task");
    drop(ex);
    eventually("the sleeper to end with its worker", || !alive(sleeper));
    let _ = std::fs::remove_dir_all(&dir);
}

fn a_worker_that_dies_at_once_breaks_the_pool_without_a_restart_loop() {
    let dir = task_dir("restart-loop");
    let ex = builder(2)
        .initializer_named("record_then_exit", dir.clone())
        .build()
        .unwrap();
    // No task is needed for the pool to notice; a task submitted now waits
    // for a worker that never comes, and then fails.
    let first = Instant::now();
    let r = match ex.submit_named::<u64, u64>("square", 2) {
        Ok(f) => match f.result_timeout(LONG) {
            Err(Error::BrokenPool { reason }) => reason,
            other => panic!("expected BrokenPool, got {other:?}"),
        },
        Err(Error::BrokenPool { reason }) => reason,
        Err(e) => panic!("expected BrokenPool, got {e}"),
    };
    assert!(r.contains("in a row"), "{r}");
    assert!(first.elapsed() < LONG);
    let starts = files_in(&dir);
    assert!(
        (2..=20).contains(&starts),
        "{starts} worker starts: no back-off"
    );
    // And it stays broken, starting nothing more.
    assert!(matches!(
        ex.submit_named::<u64, u64>("square", 2),
        Err(Error::BrokenPool { .. })
    ));
    drop(ex);
    assert_eq!(files_in(&dir), starts);
    assert!(children().is_empty(), "children left: {:?}", children());
    let _ = std::fs::remove_dir_all(&dir);
}

fn a_worker_with_another_layout_of_a_type_is_refused_at_start() {
    let script = wrapper("wide.sh", &format!("export {WIDE_ENV}=1\nexec '{{exe}}'"));
    let r = builder(1).worker_program(&script).build();
    match r {
        Err(Error::Spawn { reason }) => {
            assert!(reason.contains("\"job\""), "{reason}");
            assert!(reason.contains("layout"), "{reason}");
        }
        other => panic!("expected Spawn, got {other:?}"),
    }
    // The same program with the same layout is fine.
    let same = wrapper("same.sh", "exec '{exe}'");
    let ex = builder(1).worker_program(&same).build().unwrap();
    let f = ex.submit_named::<Job, u32>("job", Job { x: 7 }).unwrap();
    assert_eq!(f.result_timeout(LONG), Ok(7));
    drop(ex);
    assert!(children().is_empty(), "children left: {:?}", children());
    let _ = std::fs::remove_file(&script);
    let _ = std::fs::remove_file(&same);
}

fn options_a_back_end_would_ignore_are_refused() {
    let threads = || Executor::builder().threads(1).registry(tasks());
    let refused: Vec<(&str, Result<Executor, Error>)> = vec![
        ("task_timeout", threads().task_timeout(LONG).build()),
        (
            "max_tasks_per_child",
            threads().max_tasks_per_child(3).build(),
        ),
        ("retries", threads().retries(1).build()),
        (
            "worker_memory_limit",
            threads().worker_memory_limit(1 << 30).build(),
        ),
        (
            "initializer_named",
            threads().initializer_named("pid", ()).build(),
        ),
        (
            "worker_program",
            threads().worker_program("/bin/true").build(),
        ),
        ("connect_timeout", threads().connect_timeout(LONG).build()),
        (
            "thread_name_prefix",
            builder(1).thread_name_prefix("x").build(),
        ),
        ("initializer", builder(1).initializer(|| {}).build()),
        (
            "max_tasks_per_child",
            builder(1).max_tasks_per_child(0).build(),
        ),
    ];
    for (option, r) in refused {
        match r {
            Err(Error::InvalidArgument { reason }) => {
                assert!(reason.contains(option), "{option}: {reason}")
            }
            other => panic!("{option}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert!(children().is_empty(), "a refused pool started workers");
}

fn durations_without_end_mean_no_limit() {
    let ex = builder(1)
        .connect_timeout(Duration::MAX)
        .task_timeout(Duration::MAX)
        .build()
        .unwrap();
    let f = ex.submit_named::<u64, u64>("square", 3).unwrap();
    assert_eq!(f.result_timeout(Duration::MAX), Ok(9));
    let g = ex
        .submit_named_timeout::<u64, u64>("square", 4, Duration::MAX)
        .unwrap();
    assert_eq!(g.result_timeout(LONG), Ok(16));
}

fn a_done_callback_sees_its_process_future_done() {
    let ex = builder(1).build().unwrap();
    let flag = flag_file("callback");
    let release = Release(flag.clone());
    let f = Arc::new(
        ex.submit_named::<String, u64>("wait_for_file", flag.clone())
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let me = Arc::downgrade(&f);
    f.add_done_callback(move |r| {
        let seen = me.upgrade().map(|f| (f.done(), f.wait_timeout(LONG)));
        let _ = tx.send((r.clone(), seen));
    });
    drop(release);
    let (result, seen) = rx.recv_timeout(LONG).unwrap();
    assert_eq!(result, Ok(0));
    assert_eq!(
        seen,
        Some((true, true)),
        "done and waitable inside its callback"
    );
    let _ = std::fs::remove_file(&flag);
}

fn dropping_the_executor_on_its_own_thread_lets_queued_work_finish() {
    let ex = builder(1).build().unwrap();
    let flag = flag_file("drop-on-own-thread");
    let release = Release(flag.clone());
    let first = ex
        .submit_named::<String, u64>("wait_for_file", flag.clone())
        .unwrap();
    let later: Vec<_> = (0..5u64)
        .map(|i| ex.submit_named::<u64, u64>("square", i).unwrap())
        .collect();
    // The last clone of the executor goes into a done callback, which runs
    // on one of the pool's own threads: dropping it there cannot wait.
    let (tx, rx) = std::sync::mpsc::channel();
    let last = std::sync::Mutex::new(Some(ex));
    first.add_done_callback(move |_| {
        drop(last.lock().unwrap().take());
        let _ = tx.send(());
    });
    drop(release);
    rx.recv_timeout(LONG).unwrap();
    for (i, f) in later.into_iter().enumerate() {
        assert_eq!(f.result_timeout(LONG), Ok((i * i) as u64));
    }
    eventually("the workers to exit", || children().is_empty());
}

fn the_parents_death_ends_the_processes_a_task_started() {
    let dir = task_dir("doomed-parent");
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .env(DOOMED_PARENT_ENV, &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sleeper = sleeper_pid(&dir);
    assert!(alive(sleeper));
    parent.kill().unwrap();
    parent.wait().unwrap();
    eventually(
        "the task's own child to end with the pool's process",
        || !alive(sleeper),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The child program of `the_parents_death_ends_the_processes_a_task_started`:
/// a pool whose task starts a process and blocks, until this program is
/// killed.
fn be_a_doomed_parent(dir: &str) -> ! {
    let ex = builder(1).build().unwrap();
    let _busy = ex
        .submit_named::<(String, bool), u32>("start_sleeper", (dir.to_string(), true))
        .unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn running_out_of_file_descriptors_is_named() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(FEW_FDS_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the child program hung");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
}

/// The child program of `running_out_of_file_descriptors_is_named`: with
/// only a few file descriptors left, a pool of 8 fails to start, names the
/// cause, and leaves no process behind.
fn start_with_few_fds() -> ! {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as u64;
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit touch only the struct given.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    rl.rlim_cur = open + 12;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) }, 0);
    let r = builder(8).build();
    let ok = match &r {
        Err(Error::Spawn { reason }) => {
            println!("{reason}");
            reason.contains("Too many open files") || reason.contains("os error 24")
        }
        other => {
            println!("expected Spawn, got {other:?}");
            false
        }
    };
    let left = children();
    println!("children left: {left:?}");
    std::process::exit(if ok && left.is_empty() { 0 } else { 1 });
}

fn main() {
    if std::env::var_os("TWINPOOL_WORKER_SERVER").is_some() {
        // A worker of the program with few file descriptors: it takes back
        // what its parent gave away, so that only the pool runs out.
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit touch only the struct given.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    serve_if_worker(&tasks());
    if std::env::var_os(FEW_FDS_ENV).is_some() {
        start_with_few_fds();
    }
    if let Ok(dir) = std::env::var(DOOMED_PARENT_ENV) {
        be_a_doomed_parent(&dir);
    }
    common::run(&[
        (
            "retries_run_a_task_again_after_its_worker_dies",
            retries_run_a_task_again_after_its_worker_dies,
        ),
        (
            "without_retries_a_death_is_one_try",
            without_retries_a_death_is_one_try,
        ),
        (
            "a_memory_limit_fails_the_task_that_passes_it",
            a_memory_limit_fails_the_task_that_passes_it,
        ),
        (
            "kill_reaches_the_processes_a_task_started",
            kill_reaches_the_processes_a_task_started,
        ),
        (
            "a_time_limit_reaches_the_processes_a_task_started",
            a_time_limit_reaches_the_processes_a_task_started,
        ),
        (
            "shutdown_ends_what_a_finished_task_left_running",
            shutdown_ends_what_a_finished_task_left_running,
        ),
        (
            "a_worker_that_dies_at_once_breaks_the_pool_without_a_restart_loop",
            a_worker_that_dies_at_once_breaks_the_pool_without_a_restart_loop,
        ),
        (
            "a_worker_with_another_layout_of_a_type_is_refused_at_start",
            a_worker_with_another_layout_of_a_type_is_refused_at_start,
        ),
        (
            "options_a_back_end_would_ignore_are_refused",
            options_a_back_end_would_ignore_are_refused,
        ),
        (
            "durations_without_end_mean_no_limit",
            durations_without_end_mean_no_limit,
        ),
        (
            "a_done_callback_sees_its_process_future_done",
            a_done_callback_sees_its_process_future_done,
        ),
        (
            "dropping_the_executor_on_its_own_thread_lets_queued_work_finish",
            dropping_the_executor_on_its_own_thread_lets_queued_work_finish,
        ),
        (
            "the_parents_death_ends_the_processes_a_task_started",
            the_parents_death_ends_the_processes_a_task_started,
        ),
        (
            "running_out_of_file_descriptors_is_named",
            running_out_of_file_descriptors_is_named,
        ),
    ]);
}
