//! The thread back end itself (CPython's test_thread_pool.py and the
//! executor-wide parts of executor.py): the `max_workers` bound, lazy thread
//! start and reuse, thread names, the default size, the builder's checks,
//! the initializer (and a panicking one breaking the pool), panicking tasks,
//! tasks that submit to their own pool, named tasks on threads, and the
//! `Clone + Send + Sync` guarantee.

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{thread_name, Gate, LONG};
use twinpool::{Error, Executor, Future, Registry};

#[test]
fn executor_is_clone_send_sync() {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    clone_send_sync::<Executor>();
    clone_send_sync::<Registry>();
}

#[test]
fn max_workers_is_reported() {
    assert_eq!(Executor::threads(3).max_workers(), 3);
    let ex = Executor::builder().threads(7).build().unwrap();
    assert_eq!(ex.max_workers(), 7);
}

#[test]
fn default_max_workers_is_min_32_and_cores_plus_4() {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let ex = Executor::builder().build().unwrap();
    assert_eq!(ex.max_workers(), 32.min(cores + 4));
}

#[test]
fn zero_workers_is_an_invalid_argument() {
    assert!(matches!(
        Executor::builder().threads(0).build(),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
#[should_panic]
fn threads_zero_panics() {
    let _ = Executor::threads(0);
}

#[test]
fn never_more_than_max_workers_tasks_at_once() {
    // CPython's test_saturation.
    const N: usize = 3;
    let ex = Executor::builder()
        .threads(N)
        .thread_name_prefix("bound")
        .build()
        .unwrap();
    let gate = Gate::new();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = mpsc::channel();
    let fs: Vec<Future<String>> = (0..15 * N)
        .map(|_| {
            let (running, peak, started, w) = (
                running.clone(),
                peak.clone(),
                started_tx.clone(),
                gate.waiter(),
            );
            ex.submit(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                started.send(()).unwrap();
                w.wait();
                running.fetch_sub(1, Ordering::SeqCst);
                thread_name()
            })
            .unwrap()
        })
        .collect();

    for _ in 0..N {
        started_rx.recv_timeout(LONG).unwrap();
    }
    // Makes it likely that an extra task would have started by now.
    thread::sleep(Duration::from_millis(100));
    assert!(
        started_rx.try_recv().is_err(),
        "more than {N} tasks started"
    );
    assert_eq!(peak.load(Ordering::SeqCst), N);

    gate.open();
    let names: BTreeSet<String> = fs
        .into_iter()
        .map(|f| f.result_timeout(LONG).unwrap())
        .collect();
    assert_eq!(peak.load(Ordering::SeqCst), N);
    let want: BTreeSet<String> = (0..N).map(|i| format!("bound_{i}")).collect();
    assert_eq!(names, want, "the pool did not use exactly {N} threads");
}

#[test]
fn sequential_work_reuses_one_thread() {
    // CPython's test_idle_thread_reuse: threads start lazily, and an idle
    // thread is reused rather than a new one started.
    let ex = Executor::builder()
        .thread_name_prefix("reuse")
        .build()
        .unwrap();
    assert!(ex.max_workers() >= 5);
    for _ in 0..20 {
        let name = ex.submit(thread_name).unwrap().result().unwrap();
        assert_eq!(name, "reuse_0");
    }
}

#[test]
fn thread_names_use_the_prefix() {
    // CPython's test_thread_names_assigned.
    const N: usize = 5;
    let ex = Executor::builder()
        .threads(N)
        .thread_name_prefix("SpecialPool")
        .build()
        .unwrap();
    let gate = Gate::new();
    let (started_tx, started_rx) = mpsc::channel();
    let fs: Vec<Future<String>> = (0..N)
        .map(|_| {
            let (started, w) = (started_tx.clone(), gate.waiter());
            ex.submit(move || {
                started.send(()).unwrap();
                // All N run at once, so each is on its own thread.
                w.wait();
                thread_name()
            })
            .unwrap()
        })
        .collect();
    for _ in 0..N {
        started_rx.recv_timeout(LONG).unwrap();
    }
    gate.open();
    let names: BTreeSet<String> = fs.into_iter().map(|f| f.result().unwrap()).collect();
    let want: BTreeSet<String> = (0..N).map(|i| format!("SpecialPool_{i}")).collect();
    assert_eq!(names, want);
}

#[test]
fn default_thread_names_are_distinct_per_pool() {
    // CPython's test_thread_names_default: "<prefix>_<n>", with a default
    // prefix unique to the pool.
    let name_in = |ex: &Executor| ex.submit(thread_name).unwrap().result().unwrap();
    let a = name_in(&Executor::threads(2));
    let b = name_in(&Executor::threads(2));
    for name in [&a, &b] {
        let (prefix, n) = name.rsplit_once('_').expect("no _ in the thread name");
        assert!(!prefix.is_empty(), "{name}");
        assert_eq!(n, "0", "{name}");
    }
    assert_ne!(a, b, "two pools have the same default thread names");
}

thread_local! {
    static INITIALIZED: Cell<u32> = const { Cell::new(0) };
}

#[test]
fn initializer_runs_once_per_worker_before_its_tasks() {
    const N: usize = 3;
    let inits = Arc::new(Mutex::new(Vec::new()));
    let i = inits.clone();
    let ex = Executor::builder()
        .threads(N)
        .thread_name_prefix("init")
        .initializer(move || {
            INITIALIZED.with(|c| c.set(c.get() + 1));
            i.lock().unwrap().push(thread_name());
        })
        .build()
        .unwrap();
    // N tasks at once force N threads; more tasks reuse them.
    let gate = Gate::new();
    let (started_tx, started_rx) = mpsc::channel();
    let mut fs: Vec<Future<u32>> = (0..N)
        .map(|_| {
            let (started, w) = (started_tx.clone(), gate.waiter());
            ex.submit(move || {
                started.send(()).unwrap();
                w.wait();
                INITIALIZED.with(Cell::get)
            })
            .unwrap()
        })
        .collect();
    for _ in 0..N {
        started_rx.recv_timeout(LONG).unwrap();
    }
    gate.open();
    fs.extend((0..20).map(|_| ex.submit(|| INITIALIZED.with(Cell::get)).unwrap()));
    for f in fs {
        // Every task ran on a thread whose initializer had run exactly once.
        assert_eq!(f.result_timeout(LONG), Ok(1));
    }
    ex.shutdown(true, false);
    let mut inits = inits.lock().unwrap().clone();
    inits.sort();
    assert_eq!(inits, ["init_0", "init_1", "init_2"]);
}

#[test]
fn panicking_initializer_breaks_the_pool() {
    let ex = Executor::builder()
        .threads(2)
        .initializer(|| panic!("no database"))
        .build()
        .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    // The first submit always queues: the pool cannot break before it has
    // a thread.
    let first = ex.submit(move || r.store(true, Ordering::SeqCst)).unwrap();
    let more: Vec<Result<Future<()>, Error>> = (0..5).map(|_| ex.submit(|| ())).collect();

    match first.result_timeout(LONG) {
        Err(Error::BrokenPool { reason }) => {
            assert!(reason.contains("no database"), "{reason}")
        }
        other => panic!("expected BrokenPool, got {other:?}"),
    }
    // Whatever was submitted while the pool broke fails the same way,
    // either at submit or through its future.
    for r in more {
        let result = r.and_then(|f| f.result_timeout(LONG));
        assert!(
            matches!(result, Err(Error::BrokenPool { .. })),
            "{result:?}"
        );
    }
    // Later work is refused at once.
    assert!(matches!(ex.submit(|| ()), Err(Error::BrokenPool { .. })));
    assert!(matches!(
        ex.map(|x: i32| x, 0..3),
        Err(Error::BrokenPool { .. })
    ));
    assert!(!ran.load(Ordering::SeqCst), "a task ran on a broken pool");
    // And the broken pool still shuts down.
    common::within(LONG, move || drop(ex));
}

#[test]
fn panicking_tasks_do_not_kill_the_worker() {
    let ex = Executor::threads(1);
    for i in 0..5 {
        let f = ex
            .submit(move || -> i32 { panic!("task {i} failed") })
            .unwrap();
        assert_eq!(
            f.result_timeout(LONG),
            Err(Error::Panicked {
                message: format!("task {i} failed")
            })
        );
    }
    assert_eq!(ex.submit(|| 42).unwrap().result_timeout(LONG), Ok(42));
}

#[test]
fn task_submits_to_its_own_pool() {
    let ex = Executor::threads(1);
    let inner = ex.clone();
    // The outer task returns the inner future without waiting on it.
    let outer = ex.submit(move || inner.submit(|| 21 * 2).unwrap()).unwrap();
    let inner_future = outer.result_timeout(LONG).unwrap();
    assert_eq!(inner_future.result_timeout(LONG), Ok(42));
}

#[test]
fn task_submits_many_to_its_own_pool_and_collects_them() {
    let ex = Executor::threads(2);
    let inner = ex.clone();
    let outer = ex
        .submit(move || {
            (0..10)
                .map(|i| inner.submit(move || i * i).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap();
    let total: i32 = outer
        .result_timeout(LONG)
        .unwrap()
        .into_iter()
        .map(|f| f.result_timeout(LONG).unwrap())
        .sum();
    assert_eq!(total, (0..10).map(|i| i * i).sum());
}

#[test]
fn named_tasks_run_on_threads() {
    let ex = Executor::builder()
        .threads(2)
        .registry(
            Registry::new()
                .register("square", |x: u64| x * x)
                .register("add", |(a, b): (i64, i64)| a + b),
        )
        .build()
        .unwrap();
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 7).unwrap().result(),
        Ok(49)
    );
    assert_eq!(
        ex.submit_named::<(i64, i64), i64>("add", (2, -5))
            .unwrap()
            .result(),
        Ok(-3)
    );
    let squares: Vec<u64> = ex
        .map_named::<u64, u64, _>("square", 1..=4)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(squares, [1, 4, 9, 16]);

    assert!(matches!(
        ex.submit_named::<u64, u64>("cube", 2),
        Err(Error::NotRegistered { name }) if name == "cube"
    ));
    // Called with other types than registered: an error, never a wrong value.
    let wrong = ex.submit_named::<i32, u64>("square", 7);
    let result = wrong.and_then(|f| f.result_timeout(LONG));
    assert!(
        matches!(
            result,
            Err(Error::Decode { .. }) | Err(Error::Encode { .. })
        ),
        "{result:?}"
    );
}

// ---- panics whose payload panics again when dropped ----

/// A panic payload whose `Drop` panics: dropping it carelessly is a second
/// panic, outside any `catch_unwind` of the pool.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("bomb");
    }
}

/// What a task that panics with something other than a string reports.
fn not_a_string() -> Error {
    Error::Panicked {
        message: "the task panicked with a value that is not a string".into(),
    }
}

#[test]
fn a_panic_payload_that_panics_on_drop_fails_only_its_task() {
    // On a helper thread: a dead worker would hang the pool's shutdown.
    common::within(LONG * 3, || {
        let ex = Executor::threads(1);
        let f = ex
            .submit(|| -> i32 { std::panic::panic_any(Bomb) })
            .unwrap();
        assert_eq!(f.result_timeout(LONG), Err(not_a_string()));
        // The pool's only thread survived it.
        assert_eq!(ex.submit(|| 5).unwrap().result_timeout(LONG), Ok(5));
    });
}

#[test]
fn a_map_item_panicking_with_such_a_payload_fails_that_item() {
    common::within(LONG * 3, || {
        let ex = Executor::threads(1);
        let results: Vec<Result<i32, Error>> = ex
            .map(
                |x: i32| {
                    if x == 1 {
                        std::panic::panic_any(Bomb)
                    }
                    x
                },
                0..3,
            )
            .unwrap()
            .collect();
        // As in Python, the map ends at its first error.
        assert_eq!(results, [Ok(0), Err(not_a_string())]);
        assert_eq!(ex.submit(|| 5).unwrap().result_timeout(LONG), Ok(5));
    });
}

#[test]
fn a_done_callback_panicking_with_such_a_payload_is_caught() {
    common::within(LONG * 3, || {
        let ex = Executor::threads(1);
        let gate = Gate::new();
        let w = gate.waiter();
        let f = ex
            .submit(move || {
                w.wait();
                1
            })
            .unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        f.add_done_callback(|_| std::panic::panic_any(Bomb));
        let r = ran.clone();
        f.add_done_callback(move |_| r.store(true, Ordering::SeqCst));
        gate.open();
        assert_eq!(f.result_timeout(LONG), Ok(1));
        assert!(ran.load(Ordering::SeqCst), "the next callback did not run");
        assert_eq!(ex.submit(|| 5).unwrap().result_timeout(LONG), Ok(5));
    });
}

#[test]
fn an_initializer_panicking_with_such_a_payload_breaks_the_pool() {
    common::within(LONG * 3, || {
        let ex = Executor::builder()
            .threads(1)
            .initializer(|| std::panic::panic_any(Bomb))
            .build()
            .unwrap();
        let f = ex.submit(|| ()).unwrap();
        let result = f.result_timeout(LONG);
        assert!(
            matches!(result, Err(Error::BrokenPool { .. })),
            "{result:?}"
        );
        common::within(LONG, move || drop(ex));
    });
}
