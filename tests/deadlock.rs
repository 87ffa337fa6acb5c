//! Where Python hangs, twinpool answers.
//!
//! A task that blocks, without a timeout, on a task of its own pool that has
//! not started runs it itself ("helping"); a wait that closes a cycle of
//! tasks waiting on each other is refused with `Error::Deadlock`. These tests
//! check both, and that nothing else is refused: timed waits, waits on tasks
//! that are merely busy, and waits from threads outside the pool.
//!
//! Every test runs under a watchdog, so a hang (the bug these features are
//! about) fails the test instead of stalling the run. Ordering comes from
//! channels and barriers; the few short sleeps only widen a window and never
//! decide whether a test passes.

use std::panic::resume_unwind;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use twinpool::{as_completed, try_wait, wait, Error, Executor, Future, ReturnWhen};

/// Far longer than any of these tests needs, even on a loaded machine.
const LONG: Duration = Duration::from_secs(30);
/// How long a whole test may take before it counts as hung.
const WATCHDOG: Duration = Duration::from_secs(90);
/// The timeout of the timed waits that must time out.
const SHORT: Duration = Duration::from_millis(200);

/// Runs `body` on its own thread and fails if it does not end within
/// `WATCHDOG`. A hung body (and its pool) is leaked; the test process ends
/// anyway.
fn within_watchdog(body: impl FnOnce() + Send + 'static) {
    let (done_tx, done) = channel();
    let handle = thread::spawn(move || {
        body();
        let _ = done_tx.send(());
    });
    match done.recv_timeout(WATCHDOG) {
        Ok(()) => handle.join().unwrap(),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => resume_unwind(panic),
            Ok(()) => unreachable!("the body ended without reporting"),
        },
        Err(RecvTimeoutError::Timeout) => panic!("the test hung for {WATCHDOG:?}"),
    }
}

/// Receives with a generous limit: a missing message is a failure, not a hang.
fn recv<T>(rx: &Receiver<T>) -> T {
    rx.recv_timeout(LONG)
        .unwrap_or_else(|e| panic!("no message within {LONG:?}: {e}"))
}

/// Waits for a pool task from the test thread, with a generous limit.
fn finish<T: Send + 'static>(f: Future<T>) -> T {
    f.result_timeout(LONG)
        .unwrap_or_else(|e| panic!("the task did not finish cleanly: {e}"))
}

/// Asserts `e` is a `Deadlock` whose message names at least `tasks` tasks.
fn assert_deadlock(e: &Error, tasks: usize) {
    let Error::Deadlock { cycle } = e else {
        panic!("expected Error::Deadlock, got {e:?}");
    };
    let message = e.to_string();
    assert!(
        message.contains(cycle.as_str()),
        "the message shows the cycle: {message}"
    );
    assert!(
        cycle.matches("task #").count() >= tasks,
        "the cycle names all {tasks} tasks: {cycle}"
    );
}

fn thread_name() -> String {
    thread::current().name().unwrap_or("?").to_string()
}

/// The outcome of one task's wait on another, reported by the task.
type Outcome = (&'static str, Result<(), Error>);

// ---------------------------------------------------------------------------
// Helping: waits on tasks that have not started.

#[test]
fn nested_submit_and_wait_on_one_worker_runs_the_inner_task_inline() {
    within_watchdog(|| {
        let ex = Executor::threads(1);
        let inner_ex = ex.clone();
        let outer = ex
            .submit(move || {
                let outer_thread = thread_name();
                // The only worker is busy with this task: the inner task can
                // only ever run if this wait runs it.
                let inner = inner_ex.submit(thread_name).unwrap();
                (outer_thread, inner.result())
            })
            .unwrap();
        let (outer_thread, inner_thread) = finish(outer);
        assert_eq!(inner_thread, Ok(outer_thread), "ran inline on the waiter");
    });
}

#[test]
fn nested_three_deep_on_one_worker_finishes() {
    within_watchdog(|| {
        let ex = Executor::threads(1);
        let ex1 = ex.clone();
        let f = ex
            .submit(move || {
                let ex2 = ex1.clone();
                let middle = ex1
                    .submit(move || {
                        let inner = ex2.submit(|| 1).unwrap();
                        // `wait` then `result`: helping works for both.
                        inner.wait();
                        assert!(inner.done());
                        inner.result().unwrap() + 10
                    })
                    .unwrap();
                middle.result().unwrap() + 100
            })
            .unwrap();
        assert_eq!(finish(f), 111);
    });
}

#[test]
fn chain_of_three_tasks_on_two_workers_finishes() {
    // t1 waits for t2, which runs on the other worker and waits for t3. In
    // Python t3 would sit in the queue forever: both workers are blocked.
    within_watchdog(|| {
        let ex = Executor::threads(2);
        let (t2_started_tx, t2_started) = channel();
        let ex1 = ex.clone();
        let t1 = ex
            .submit(move || {
                let ex2 = ex1.clone();
                let t2 = ex1
                    .submit(move || {
                        t2_started_tx.send(()).unwrap();
                        let t3 = ex2.submit(|| (thread_name(), 3)).unwrap();
                        let (t3_thread, v) = t3.result().unwrap();
                        (thread_name(), t3_thread, v + 2)
                    })
                    .unwrap();
                // Wait until t2 runs on the second worker, so that t1 cannot
                // run it inline: the chain really spans both workers.
                recv(&t2_started);
                let waited = t2.result();
                (thread_name(), waited)
            })
            .unwrap();
        let (t1_thread, waited) = finish(t1);
        let (t2_thread, t3_thread, v) = waited.expect("no deadlock in a chain");
        assert_eq!(v, 5);
        assert_ne!(t1_thread, t2_thread, "t2 ran on the other worker");
        assert_eq!(t3_thread, t2_thread, "t3 ran inline in t2's wait");
    });
}

// ---------------------------------------------------------------------------
// Cycles: the wait that closes one is refused.

/// The seed's `a_work` / `b_work` on `workers` threads: each task gets the
/// other's future through a channel and waits for it with `result()`.
/// Returns both tasks' outcomes, in the order the tasks reported them.
fn seed_cycle(workers: usize) -> Vec<(&'static str, Result<&'static str, Error>)> {
    let ex = Executor::threads(workers);
    let (out_tx, out) = channel();
    // With two workers both tasks must be running before either waits (the
    // seed's `time.sleep(5)`); with one, `a` runs `b` inline.
    let barrier = Arc::new(Barrier::new(workers));
    let task = |me: &'static str, other: Receiver<Future<&'static str>>| {
        let out_tx = out_tx.clone();
        let barrier = barrier.clone();
        move || {
            barrier.wait();
            let other = recv(&other);
            out_tx.send((me, other.result())).unwrap();
            me
        }
    };
    let (to_a, for_a) = channel();
    let (to_b, for_b) = channel();
    let a = ex.submit(task("a", for_a)).unwrap();
    let b = ex.submit(task("b", for_b)).unwrap();
    to_a.send(b).unwrap();
    to_b.send(a).unwrap();
    vec![recv(&out), recv(&out)]
}

#[test]
fn seed_cycle_on_two_workers_reports_deadlock_and_both_finish() {
    within_watchdog(|| {
        let outcomes = seed_cycle(2);
        let refused: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(!refused.is_empty(), "one side is refused: {outcomes:?}");
        for (me, r) in &outcomes {
            match r {
                Err(e) => assert_deadlock(e, 2),
                // The side that was not refused got the other's value.
                Ok(v) => assert_ne!(v, me, "{outcomes:?}"),
            }
        }
        let mut names: Vec<_> = outcomes.iter().map(|(me, _)| *me).collect();
        names.sort();
        assert_eq!(names, ["a", "b"], "both tasks finished");
    });
}

#[test]
fn seed_cycle_on_one_worker_refuses_the_inner_wait() {
    // `a` waits for `b`, which has not started: `a` runs it inline, and `b`'s
    // wait for `a` (running, below it on the same thread) closes the cycle.
    within_watchdog(|| {
        let outcomes = seed_cycle(1);
        assert_eq!(outcomes.len(), 2);
        assert_eq!(outcomes[0].0, "b", "b reports first, inside a's wait");
        assert_deadlock(outcomes[0].1.as_ref().unwrap_err(), 2);
        assert_eq!(outcomes[1], ("a", Ok("b")));
    });
}

#[test]
fn cycle_through_three_tasks_on_three_workers() {
    // a waits for b, b for c, c for a, each on its own worker, each with
    // `try_wait` on a shared `Arc<Future>`.
    within_watchdog(|| {
        let ex = Executor::threads(3);
        let barrier = Arc::new(Barrier::new(3));
        let (out_tx, out) = channel::<Outcome>();
        let mut senders = Vec::new();
        let mut futures = Vec::new();
        for me in ["a", "b", "c"] {
            let (next_tx, next_rx) = channel::<Arc<Future<()>>>();
            let barrier = barrier.clone();
            let out_tx = out_tx.clone();
            futures.push(Arc::new(
                ex.submit(move || {
                    barrier.wait();
                    let next = recv(&next_rx);
                    out_tx.send((me, next.try_wait())).unwrap();
                })
                .unwrap(),
            ));
            senders.push(next_tx);
        }
        for (i, to) in senders.iter().enumerate() {
            to.send(futures[(i + 1) % 3].clone()).unwrap();
        }
        let outcomes: Vec<Outcome> = (0..3).map(|_| recv(&out)).collect();
        let refused: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(!refused.is_empty(), "someone is refused: {outcomes:?}");
        for (_, r) in &refused {
            assert_deadlock(r.as_ref().unwrap_err(), 3);
        }
        for f in futures {
            assert!(f.wait_timeout(LONG), "every task finished");
        }
    });
}

#[test]
fn cycle_through_three_tasks_on_one_worker() {
    // a runs b inline, b runs c inline, c waits for a: refused, and the
    // message names the three tasks.
    within_watchdog(|| {
        let ex = Executor::threads(1);
        let (out_tx, out) = channel::<Outcome>();
        let mut senders: Vec<Sender<Future<()>>> = Vec::new();
        let mut futures = Vec::new();
        for me in ["a", "b", "c"] {
            let (next_tx, next_rx) = channel::<Future<()>>();
            let out_tx = out_tx.clone();
            futures.push(
                ex.submit(move || {
                    let next = recv(&next_rx);
                    out_tx.send((me, next.try_wait())).unwrap();
                })
                .unwrap(),
            );
            senders.push(next_tx);
        }
        let mut futures = futures.into_iter();
        let (a, b, c) = (
            futures.next().unwrap(),
            futures.next().unwrap(),
            futures.next().unwrap(),
        );
        senders[0].send(b).unwrap();
        senders[1].send(c).unwrap();
        senders[2].send(a).unwrap();
        let outcomes: Vec<Outcome> = (0..3).map(|_| recv(&out)).collect();
        assert_eq!(outcomes[0].0, "c");
        assert_deadlock(outcomes[0].1.as_ref().unwrap_err(), 3);
        assert_eq!(&outcomes[1..], [("b", Ok(())), ("a", Ok(()))]);
    });
}

#[test]
fn a_cycle_through_a_first_completed_wait_is_refused() {
    // m waits for a; a waits for the first of {b, c}; b waits for a; c
    // waits for m. Every way forward from m comes back to it: b needs a,
    // and c needs m. The wait that closes the cycle (m's, if the others are
    // in place first, as the test tries to arrange) is refused; then the
    // others all end.
    within_watchdog(|| {
        let ex = Executor::threads(4);
        let barrier = Arc::new(Barrier::new(4));
        let (out_tx, out) = channel::<Outcome>();
        let (waiting_tx, waiting) = channel::<&'static str>();
        let (to_m, for_m) = channel::<Arc<Future<()>>>();
        let (to_a, for_a) = channel::<(Future<()>, Future<()>)>();
        let (to_b, for_b) = channel::<Arc<Future<()>>>();
        let (to_c, for_c) = channel::<Future<()>>();
        let task = |me: &'static str| (barrier.clone(), out_tx.clone(), waiting_tx.clone(), me);

        let (m_barrier, m_out, _, me) = task("m");
        let m = ex
            .submit(move || {
                m_barrier.wait();
                let a = recv(&for_m);
                m_out.send((me, a.try_wait())).unwrap();
            })
            .unwrap();
        let (a_barrier, a_out, a_waiting, me) = task("a");
        let a = ex
            .submit(move || {
                a_barrier.wait();
                let (b, c) = recv(&for_a);
                a_waiting.send(me).unwrap();
                let waited = try_wait(vec![b, c], None, ReturnWhen::FirstCompleted);
                a_out.send((me, waited.map(|_| ()))).unwrap();
            })
            .unwrap();
        let (b_barrier, b_out, b_waiting, me) = task("b");
        let b = ex
            .submit(move || {
                b_barrier.wait();
                let a = recv(&for_b);
                b_waiting.send(me).unwrap();
                b_out.send((me, a.try_wait())).unwrap();
            })
            .unwrap();
        let (c_barrier, c_out, c_waiting, me) = task("c");
        let c = ex
            .submit(move || {
                c_barrier.wait();
                let m = recv(&for_c);
                c_waiting.send(me).unwrap();
                c_out.send((me, m.try_wait())).unwrap();
            })
            .unwrap();

        // c, b and a start their waits, in that order, then m.
        let a = Arc::new(a);
        to_c.send(m).unwrap();
        assert_eq!(recv(&waiting), "c");
        to_b.send(a.clone()).unwrap();
        assert_eq!(recv(&waiting), "b");
        to_a.send((b, c)).unwrap();
        assert_eq!(recv(&waiting), "a");
        // Makes it likely that a's wait is recorded before m's starts.
        thread::sleep(Duration::from_millis(100));
        to_m.send(a.clone()).unwrap();

        let outcomes: Vec<Outcome> = (0..4).map(|_| recv(&out)).collect();
        let refused: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(!refused.is_empty(), "someone is refused: {outcomes:?}");
        for (_, r) in &refused {
            assert_deadlock(r.as_ref().unwrap_err(), 2);
        }
        let mut names: Vec<_> = outcomes.iter().map(|(me, _)| *me).collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c", "m"], "every task ended");
        assert!(a.wait_timeout(LONG));
    });
}

// ---------------------------------------------------------------------------
// Timed waits end by themselves: never refused.

#[test]
fn timed_wait_inside_a_cycle_times_out_instead_of_deadlock() {
    // `a` waits for `b` without a timeout; `b` waits for `a` with one. The
    // cycle is real, but `b`'s wait ends by itself: Timeout, not Deadlock.
    for workers in [1, 2] {
        within_watchdog(move || {
            let ex = Executor::threads(workers);
            let barrier = Arc::new(Barrier::new(workers));
            let (to_a, for_a) = channel::<Future<&'static str>>();
            let (to_b, for_b) = channel::<Future<&'static str>>();
            let (out_tx, out) = channel();
            let (a_barrier, a_out) = (barrier.clone(), out_tx.clone());
            let a = ex
                .submit(move || {
                    a_barrier.wait();
                    a_out.send(("a", recv(&for_a).result())).unwrap();
                    "a"
                })
                .unwrap();
            let b = ex
                .submit(move || {
                    barrier.wait();
                    let a = recv(&for_b);
                    out_tx.send(("b", a.result_timeout(SHORT))).unwrap();
                    "b"
                })
                .unwrap();
            to_a.send(b).unwrap();
            to_b.send(a).unwrap();
            let mut outcomes = vec![recv(&out), recv(&out)];
            outcomes.sort_by_key(|(me, _)| *me);
            assert_eq!(
                outcomes,
                [("a", Ok("b")), ("b", Err(Error::Timeout))],
                "{workers} worker(s)"
            );
        });
    }
}

#[test]
fn timed_as_completed_and_wait_inside_a_cycle_time_out() {
    // The same with the many-future waits: `as_completed` yields Timeout,
    // `wait` returns with the future not done.
    type Report = (
        Option<Result<(), Error>>,
        usize,
        Result<(usize, usize), Error>,
    );
    within_watchdog(|| {
        let ex = Executor::threads(1);
        let (to_a, for_a) = channel::<Future<Report>>();
        let (to_b, for_b) = channel::<Future<Report>>();
        let a = ex
            .submit(move || recv(&for_a).result().expect("b ends by itself"))
            .unwrap();
        let b = ex
            .submit(move || {
                let a = recv(&for_b);
                let mut it = as_completed(vec![a], Some(SHORT));
                let first = it.next().map(|r| r.map(|_| ()));
                let a = it.into_remaining();
                let waited = wait(a, Some(SHORT), ReturnWhen::AllCompleted);
                let timed = try_wait(waited.not_done, Some(SHORT), ReturnWhen::FirstCompleted)
                    .map(|w| (w.done.len(), w.not_done.len()));
                (first, waited.done.len(), timed)
            })
            .unwrap();
        to_b.send(a).unwrap();
        // `b` runs inline inside `a`'s wait; take `b`'s report through `a`.
        let (tx, rx) = channel();
        b.add_done_callback(move |r| tx.send(r.clone()).unwrap());
        to_a.send(b).unwrap();
        let (first, done, timed) = recv(&rx).unwrap();
        assert_eq!(first, Some(Err(Error::Timeout)));
        assert_eq!(done, 0);
        assert_eq!(timed, Ok((0, 1)));
    });
}

// ---------------------------------------------------------------------------
// No false reports.

#[test]
fn no_deadlock_for_a_wait_on_a_task_busy_on_another_worker() {
    within_watchdog(|| {
        let ex = Executor::threads(2);
        let (started_tx, started) = channel();
        let (release_tx, release) = channel::<()>();
        let busy = Arc::new(
            ex.submit(move || {
                started_tx.send(()).unwrap();
                recv(&release);
                7
            })
            .unwrap(),
        );
        recv(&started); // `busy` is running, blocked on `release`.
        let (waiting_tx, waiting) = channel();
        let target = busy.clone();
        let waiter = ex
            .submit(move || {
                waiting_tx.send(()).unwrap();
                target.try_wait()
            })
            .unwrap();
        recv(&waiting);
        // Give the waiter time to get into its wait before the target can
        // end. (Only the test's power depends on this, never its verdict.)
        thread::sleep(Duration::from_millis(100));
        assert!(!waiter.done(), "the waiter waits while the target is busy");
        release_tx.send(()).unwrap();
        assert_eq!(finish(waiter), Ok(()));
        assert!(busy.done());
    });
}

#[test]
fn no_deadlock_through_a_chain_that_ends_in_a_busy_task() {
    // w waits for m, m waits for busy, busy waits for the test: a chain, not
    // a cycle, even though every task in it is blocked for a while.
    within_watchdog(|| {
        let ex = Executor::threads(3);
        let (started_tx, started) = channel();
        let (release_tx, release) = channel::<()>();
        let busy = ex
            .submit(move || {
                started_tx.send(()).unwrap();
                recv(&release);
            })
            .unwrap();
        recv(&started);
        let (waiting_tx, waiting) = channel();
        let m_waiting = waiting_tx.clone();
        let m = Arc::new(
            ex.submit(move || {
                m_waiting.send(()).unwrap();
                busy.try_wait()
            })
            .unwrap(),
        );
        let target = m.clone();
        let w = ex
            .submit(move || {
                waiting_tx.send(()).unwrap();
                target.try_wait()
            })
            .unwrap();
        recv(&waiting);
        recv(&waiting);
        thread::sleep(Duration::from_millis(100));
        assert!(!w.done() && !m.done(), "both wait while busy runs");
        release_tx.send(()).unwrap();
        assert_eq!(finish(w), Ok(()));
        assert!(m.wait_timeout(LONG));
        let m = Arc::try_unwrap(m).expect("w has dropped its handle");
        assert_eq!(finish(m), Ok(()));
    });
}

#[test]
fn first_completed_wait_is_not_refused_while_another_target_can_finish() {
    // b waits for the first of {a, c}; a waits for b (a cycle through a), but
    // c is busy and will finish, so b's wait is not doomed.
    within_watchdog(|| {
        let ex = Executor::threads(3);
        let (c_started_tx, c_started) = channel();
        let (release_tx, release) = channel::<()>();
        let c = ex
            .submit(move || {
                c_started_tx.send(()).unwrap();
                recv(&release);
                "c"
            })
            .unwrap();
        recv(&c_started);
        let barrier = Arc::new(Barrier::new(2));
        type BOut = Result<Vec<Result<&'static str, Error>>, Error>;
        let (to_a, for_a) = channel::<Future<BOut>>();
        let (to_b, for_b) = channel::<Future<&'static str>>();
        let (waiting_tx, waiting) = channel();
        let (a_barrier, a_waiting) = (barrier.clone(), waiting_tx.clone());
        let a = ex
            .submit(move || {
                a_barrier.wait();
                let b = recv(&for_a);
                a_waiting.send(()).unwrap();
                assert!(b.result().is_ok(), "b ends when c does");
                "a"
            })
            .unwrap();
        let b = ex
            .submit(move || {
                barrier.wait();
                let (a, c) = (recv(&for_b), recv(&for_b));
                waiting_tx.send(()).unwrap();
                let w = try_wait(vec![a, c], None, ReturnWhen::FirstCompleted)?;
                let done = w.done.into_iter().map(|f| f.result()).collect();
                Ok::<Vec<_>, Error>(done)
            })
            .unwrap();
        let (b_done_tx, b_done) = channel();
        b.add_done_callback(move |r| b_done_tx.send(r.clone()).unwrap());
        to_a.send(b).unwrap();
        to_b.send(a).unwrap();
        to_b.send(c).unwrap();
        recv(&waiting);
        recv(&waiting);
        thread::sleep(Duration::from_millis(100));
        release_tx.send(()).unwrap();
        assert_eq!(recv(&b_done), Ok(Ok(vec![Ok("c")])));
    });
}

// ---------------------------------------------------------------------------
// Threads outside the pool.

#[test]
fn waits_from_outside_the_pool_are_never_refused() {
    // While a and b form a cycle (b's timed wait keeps it standing for a
    // while), the test thread and a plain thread wait for both without a
    // timeout. They are not part of any cycle: they just get the results.
    within_watchdog(|| {
        let ex = Executor::threads(2);
        let barrier = Arc::new(Barrier::new(3));
        let (to_a, for_a) = channel::<Arc<Future<&'static str>>>();
        let (to_b, for_b) = channel::<Arc<Future<&'static str>>>();
        let a_barrier = barrier.clone();
        let a = Arc::new(
            ex.submit(move || {
                a_barrier.wait();
                recv(&for_a).try_wait().expect("b ends by itself");
                "a"
            })
            .unwrap(),
        );
        let b_barrier = barrier.clone();
        let b = Arc::new(
            ex.submit(move || {
                b_barrier.wait();
                let a = recv(&for_b);
                assert!(!a.wait_timeout(Duration::from_millis(500)));
                "b"
            })
            .unwrap(),
        );
        to_a.send(b.clone()).unwrap();
        to_b.send(a.clone()).unwrap();
        barrier.wait(); // both tasks are running
        let (plain_a, plain_b) = (a.clone(), b.clone());
        let plain = thread::spawn(move || (plain_b.try_wait(), plain_a.try_wait()));
        assert_eq!(a.try_wait(), Ok(()));
        assert_eq!(b.try_wait(), Ok(()));
        assert_eq!(plain.join().unwrap(), (Ok(()), Ok(())));
        let a = Arc::try_unwrap(a).expect("the other handles are gone");
        let b = Arc::try_unwrap(b).expect("the other handles are gone");
        assert_eq!(finish(a), "a");
        assert_eq!(finish(b), "b");
    });
}

// ---------------------------------------------------------------------------
// Many-future waits inside a cycle.

#[test]
fn as_completed_inside_a_cycle_yields_deadlock_then_ends() {
    within_watchdog(|| {
        let ex = Executor::threads(1);
        let (to_a, for_a) = channel::<Future<()>>();
        let (to_b, for_b) = channel::<Future<()>>();
        let (out_tx, out) = channel();
        let b_out = out_tx.clone();
        // a waits for b with as_completed: b has not started, so a runs it.
        let a = ex
            .submit(move || {
                let mut it = as_completed(vec![recv(&for_a)], None);
                let first = it.next().map(|r| r.map(|f| f.result()));
                let ended = it.next().is_none();
                out_tx.send(("a", first, ended, 0)).unwrap();
            })
            .unwrap();
        // b waits for a with as_completed: the wait that closes the cycle.
        let b = ex
            .submit(move || {
                let mut it = as_completed(vec![recv(&for_b)], None);
                let first = it.next().map(|r| r.map(|_| Ok(())));
                let ended = it.next().is_none();
                let remaining = it.into_remaining().len();
                b_out.send(("b", first, ended, remaining)).unwrap();
            })
            .unwrap();
        to_a.send(b).unwrap();
        to_b.send(a).unwrap();
        let (me, first, ended, remaining) = recv(&out);
        assert_eq!(me, "b", "b reports first, inside a's wait");
        match first {
            Some(Err(e)) => assert_deadlock(&e, 2),
            other => panic!("expected Some(Err(Deadlock)), got {other:?}"),
        }
        assert!(ended, "the iterator ends after the error");
        assert_eq!(remaining, 1, "into_remaining gives the future back");
        assert_eq!(recv(&out), ("a", Some(Ok(Ok(()))), true, 0));
    });
}

#[test]
fn as_completed_inside_a_cycle_on_two_workers() {
    within_watchdog(|| {
        let ex = Executor::threads(2);
        let barrier = Arc::new(Barrier::new(2));
        let (out_tx, out) = channel();
        let task = |me: &'static str, other: Receiver<Future<&'static str>>| {
            let (barrier, out_tx) = (barrier.clone(), out_tx.clone());
            move || {
                barrier.wait();
                let first = as_completed(vec![recv(&other)], None).next();
                let first = first.expect("one item").map(|f| f.result());
                out_tx.send((me, first)).unwrap();
                me
            }
        };
        let (to_a, for_a) = channel();
        let (to_b, for_b) = channel();
        let a = ex.submit(task("a", for_a)).unwrap();
        let b = ex.submit(task("b", for_b)).unwrap();
        to_a.send(b).unwrap();
        to_b.send(a).unwrap();
        let outcomes = [recv(&out), recv(&out)];
        let mut refused = 0;
        for (me, r) in &outcomes {
            match r {
                Err(e) => {
                    assert_deadlock(e, 2);
                    refused += 1;
                }
                Ok(Ok(v)) => assert_ne!(v, me),
                Ok(Err(e)) => panic!("{me}: unexpected {e}"),
            }
        }
        assert!(refused >= 1, "{outcomes:?}");
    });
}

#[test]
fn try_wait_inside_a_cycle_returns_deadlock_for_every_return_when() {
    for return_when in [
        ReturnWhen::FirstCompleted,
        ReturnWhen::FirstException,
        ReturnWhen::AllCompleted,
    ] {
        within_watchdog(move || {
            let ex = Executor::threads(1);
            let (to_a, for_a) = channel::<Future<u8>>();
            let (to_b, for_b) = channel::<Future<u8>>();
            let (out_tx, out) = channel();
            let b_out = out_tx.clone();
            // a runs b inline inside its own try_wait.
            let a = ex
                .submit(move || {
                    let waited = try_wait(vec![recv(&for_a)], None, return_when)
                        .map(|w| w.done.into_iter().map(|f| f.result()).collect::<Vec<_>>());
                    out_tx.send(("a", waited)).unwrap();
                    1
                })
                .unwrap();
            let b = ex
                .submit(move || {
                    let waited = try_wait(vec![recv(&for_b)], None, return_when)
                        .map(|w| w.done.into_iter().map(|f| f.result()).collect::<Vec<_>>());
                    b_out.send(("b", waited)).unwrap();
                    2
                })
                .unwrap();
            to_a.send(b).unwrap();
            to_b.send(a).unwrap();
            let (me, waited) = recv(&out);
            assert_eq!(me, "b", "{return_when:?}");
            assert_deadlock(waited.as_ref().unwrap_err(), 2);
            assert_eq!(recv(&out), ("a", Ok(vec![Ok(2)])), "{return_when:?}");
        });
    }
}

#[test]
fn wait_inside_a_cycle_returns_at_once_with_the_future_not_done() {
    within_watchdog(|| {
        let ex = Executor::threads(1);
        let (to_a, for_a) = channel::<Future<()>>();
        let (to_b, for_b) = channel::<Future<()>>();
        let (tx, rx) = channel();
        let a = ex.submit(move || recv(&for_a).result().unwrap()).unwrap();
        let b = ex
            .submit(move || {
                let w = wait(vec![recv(&for_b)], None, ReturnWhen::AllCompleted);
                tx.send((w.done.len(), w.not_done.len())).unwrap();
            })
            .unwrap();
        to_a.send(b).unwrap();
        to_b.send(a).unwrap();
        assert_eq!(recv(&rx), (0, 1));
    });
}

#[test]
fn all_completed_wait_is_refused_when_any_target_is_in_the_cycle() {
    // b waits for all of {a, c} where a waits for b: doomed, even though c
    // finishes (here b even runs c inline first).
    within_watchdog(|| {
        let ex = Executor::threads(1);
        let (to_a, for_a) = channel::<Future<u8>>();
        let (to_b, for_b) = channel::<Future<u8>>();
        let (tx, rx) = channel();
        let a = ex.submit(move || recv(&for_a).result().unwrap()).unwrap();
        let b = ex
            .submit(move || {
                let (a, c) = (recv(&for_b), recv(&for_b));
                let tried = try_wait(vec![a, c], None, ReturnWhen::AllCompleted);
                tx.send(tried.map(|w| w.done.len())).unwrap();
                2
            })
            .unwrap();
        let c = ex.submit(|| 3).unwrap();
        to_b.send(a).unwrap();
        to_b.send(c).unwrap();
        to_a.send(b).unwrap();
        assert_deadlock(recv(&rx).as_ref().unwrap_err(), 2);
    });
}

#[test]
fn first_exception_wait_is_not_refused_while_another_target_can_fail() {
    // b waits with FirstException for {a, c}; a waits for b (b runs inline in
    // a's wait). The wait is not doomed: if c fails, FirstException returns
    // at once, as Python's FIRST_EXCEPTION does. Here c does fail.
    within_watchdog(|| {
        let ex = Executor::threads(2);
        let (c_started_tx, c_started) = channel();
        let (release_tx, release) = channel::<()>();
        let c = ex
            .submit(move || -> u8 {
                c_started_tx.send(()).unwrap();
                recv(&release);
                panic!("c failed")
            })
            .unwrap();
        recv(&c_started);
        let (a_started_tx, a_started) = channel();
        let (to_a, for_a) = channel::<Future<u8>>();
        let (to_b, for_b) = channel::<Future<u8>>();
        let (out_tx, out) = channel();
        let a = ex
            .submit(move || {
                a_started_tx.send(()).unwrap();
                recv(&for_a).result().unwrap_or(0)
            })
            .unwrap();
        recv(&a_started);
        // Both workers are busy now: b stays queued until a runs it inline.
        let (waiting_tx, waiting) = channel();
        let b = ex
            .submit(move || {
                let (a, c) = (recv(&for_b), recv(&for_b));
                waiting_tx.send(()).unwrap();
                let waited = try_wait(vec![a, c], None, ReturnWhen::FirstException)
                    .map(|w| w.done.into_iter().map(|f| f.result()).collect::<Vec<_>>());
                out_tx.send(waited).unwrap();
                9
            })
            .unwrap();
        to_b.send(a).unwrap();
        to_b.send(c).unwrap();
        to_a.send(b).unwrap();
        recv(&waiting);
        thread::sleep(Duration::from_millis(100));
        release_tx.send(()).unwrap();
        assert_eq!(
            recv(&out),
            Ok(vec![Err(Error::Panicked {
                message: "c failed".into()
            })])
        );
    });
}
