//! Helpers shared by the integration tests: a gate that holds tasks until the
//! test lets them go, futures in each final state, and time bounds.
//!
//! Every blocking helper has a bound, so a broken pool makes a test fail
//! instead of hanging the whole suite.
#![allow(dead_code)] // each test file uses its own subset

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use twinpool::{Executor, Future};

/// The bound for anything that should finish: wide, so a loaded machine
/// never trips it.
pub const LONG: Duration = Duration::from_secs(30);

/// A timeout that is meant to fire: only used where the task waited on is
/// known to be blocked.
pub const SHORT: Duration = Duration::from_millis(100);

/// How long a gated task waits before it gives up (and panics), so that a
/// test that forgets to open its gate fails instead of hanging.
const GATE_BOUND: Duration = Duration::from_secs(60);

type Latch = Arc<(Mutex<bool>, Condvar)>;

/// Holds tasks until the test opens it. Dropping the gate opens it, so a
/// failing test (which unwinds) releases its workers and its executor can
/// shut down.
pub struct Gate {
    latch: Latch,
}

/// What a task holds to wait at a [`Gate`]. Dropping it does not open the
/// gate (a cancelled task's closure is dropped without running).
#[derive(Clone)]
pub struct Waiter {
    latch: Latch,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            latch: Arc::new((Mutex::new(false), Condvar::new())),
        }
    }

    pub fn waiter(&self) -> Waiter {
        Waiter {
            latch: self.latch.clone(),
        }
    }

    pub fn open(&self) {
        let (open, cond) = &*self.latch;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cond.notify_all();
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

impl Waiter {
    /// Blocks until the gate opens; panics if it stays shut for a minute.
    pub fn wait(&self) {
        let (open, cond) = &*self.latch;
        let deadline = Instant::now() + GATE_BOUND;
        let mut g = open.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            let now = Instant::now();
            assert!(now < deadline, "test bug: a gate was never opened");
            g = cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn is_open(&self) -> bool {
        *self.latch.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The name of the current thread ("" if it has none).
pub fn thread_name() -> String {
    thread::current().name().unwrap_or("").to_string()
}

/// Submits a task that waits at `gate` and then returns `value`; returns
/// once the task is known to be running.
pub fn gated<T: Send + 'static>(ex: &Executor, gate: &Gate, value: T) -> Future<T> {
    let (started_tx, started_rx) = mpsc::channel();
    let w = gate.waiter();
    let f = ex
        .submit(move || {
            started_tx.send(()).unwrap();
            w.wait();
            value
        })
        .unwrap();
    started_rx
        .recv_timeout(LONG)
        .expect("the gated task did not start");
    assert!(f.running());
    f
}

/// Occupies one worker of `ex` until `gate` opens; returns once it runs.
pub fn block_worker(ex: &Executor, gate: &Gate) -> Future<()> {
    gated(ex, gate, ())
}

/// A future that finished with `Ok(value)` (on a pool of its own).
pub fn finished<T: Send + 'static>(value: T) -> Future<T> {
    let ex = Executor::threads(1);
    let f = ex.submit(move || value).unwrap();
    assert!(f.wait_timeout(LONG));
    f
}

/// A future whose task panicked with `message` (on a pool of its own).
pub fn failed<T: Send + 'static>(message: &'static str) -> Future<T> {
    let ex = Executor::threads(1);
    let f = ex.submit(move || -> T { panic!("{message}") }).unwrap();
    assert!(f.wait_timeout(LONG));
    f
}

/// A future cancelled before it ran (on a pool of its own).
pub fn cancelled<T: Send + 'static>() -> Future<T> {
    let ex = Executor::threads(1);
    let gate = Gate::new();
    let _busy = block_worker(&ex, &gate);
    let f = ex
        .submit(|| -> T { panic!("a cancelled task ran") })
        .unwrap();
    assert!(f.cancel());
    f
}

/// Runs `f` on a helper thread and returns its result; panics if it takes
/// longer than `bound` (the helper thread is then left behind), so a hang
/// becomes a failure.
pub fn within<R: Send + 'static>(bound: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(bound) {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("did not finish within {bound:?}: it hangs"),
    }
}

/// Waits (polling) until `cond` holds; panics after [`LONG`].
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}
