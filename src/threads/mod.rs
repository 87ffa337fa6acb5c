//! The thread back end: a queue and up to `max_workers` threads that pull
//! from it.
//!
//! Threads start lazily, as in Python 3.8+: a submit starts a new thread only
//! when no started thread is idle and fewer than `max_workers` exist. Each
//! thread runs the initializer once, then takes jobs until the queue is closed
//! and empty. Shutdown closes the queue; threads finish what is queued (or it
//! is cancelled first) and exit.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::{Receiver, Sender};

use crate::deadlock;
use crate::future::Job;
use crate::recycle::Counted;
use crate::Error;

/// Runs once in every worker thread before its first task.
pub(crate) type Initializer = Arc<dyn Fn() + Send + Sync>;

type Queue = Counted<dyn Job>;

/// What the pool's threads share with it.
struct Common {
    /// Threads that finished a job and wait for the next (Python's idle
    /// semaphore): a submit that can take one starts no thread.
    idle: AtomicUsize,
    /// Set once `max_workers` threads have started: from then on nobody
    /// counts idle threads, which keeps a shared counter off the hot path.
    full: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a thread exits.
    exited: Condvar,
}

struct State {
    /// `None` once shut down: the queue is closed.
    tx: Option<Sender<Queue>>,
    /// Why the pool broke, once it has.
    broken: Option<String>,
    started: usize,
    alive: usize,
}

/// A pool of worker threads.
pub(crate) struct ThreadPool {
    id: u64,
    max_workers: usize,
    prefix: String,
    initializer: Option<Initializer>,
    rx: Receiver<Queue>,
    common: Arc<Common>,
}

impl Common {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ThreadPool {
    pub(crate) fn new(
        id: u64,
        max_workers: usize,
        prefix: String,
        initializer: Option<Initializer>,
    ) -> ThreadPool {
        let (tx, rx) = crossbeam_channel::unbounded();
        ThreadPool {
            id,
            max_workers,
            prefix,
            initializer,
            rx,
            common: Arc::new(Common {
                idle: AtomicUsize::new(0),
                full: AtomicBool::new(false),
                state: Mutex::new(State {
                    tx: Some(tx),
                    broken: None,
                    started: 0,
                    alive: 0,
                }),
                exited: Condvar::new(),
            }),
        }
    }

    /// Queues `job`, starting a thread if none is idle and there is room.
    pub(crate) fn submit(&self, job: Queue) -> Result<(), Error> {
        let mut st = self.common.lock();
        if let Some(reason) = &st.broken {
            return Err(Error::BrokenPool {
                reason: reason.clone(),
            });
        }
        let Some(tx) = &st.tx else {
            return Err(Error::Shutdown);
        };
        // The receiver lives in `self`, so the queue cannot be disconnected.
        if tx.send(job).is_err() {
            return Err(Error::Shutdown);
        }
        if st.started < self.max_workers {
            let took_idle = self
                .common
                .idle
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            if !took_idle {
                self.start_thread(&mut st)?;
            }
        }
        Ok(())
    }

    fn start_thread(&self, st: &mut State) -> Result<(), Error> {
        let name = format!("{}_{}", self.prefix, st.started);
        let worker = Worker {
            pool: self.id,
            name: name.clone(),
            rx: self.rx.clone(),
            common: self.common.clone(),
            initializer: self.initializer.clone(),
        };
        match std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || worker.run())
        {
            Ok(_) => {
                st.started += 1;
                st.alive += 1;
                if st.started == self.max_workers {
                    self.common.full.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
            // The job is queued already; an existing thread will take it.
            Err(_) if st.alive > 0 => Ok(()),
            Err(e) => Err(Error::Spawn {
                reason: format!("the operating system refused to start thread {name}: {e}"),
            }),
        }
    }

    /// Closes the queue; cancels what is queued if `cancel_futures`; waits
    /// for the threads to exit if `wait` (not counting the calling thread
    /// when it is one of them).
    pub(crate) fn shutdown(&self, wait: bool, cancel_futures: bool) {
        let mut st = self.common.lock();
        st.tx = None;
        if cancel_futures {
            drop(st);
            for job in self.rx.try_iter() {
                job.cancel();
            }
            st = self.common.lock();
        }
        if !wait {
            return;
        }
        let me = usize::from(deadlock::current_pool() == Some(self.id));
        while st.alive > me {
            st = self
                .common
                .exited
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

/// One worker thread's loop.
struct Worker {
    pool: u64,
    name: String,
    rx: Receiver<Queue>,
    common: Arc<Common>,
    initializer: Option<Initializer>,
}

impl Worker {
    fn run(self) {
        deadlock::enter_worker(self.pool, self.name.clone());
        let initialized = match &self.initializer {
            Some(init) => catch_unwind(AssertUnwindSafe(|| init())).map_err(|p| {
                format!(
                    "the initializer panicked in thread {}: {}",
                    self.name,
                    crate::error::panic_message(&*p)
                )
            }),
            None => Ok(()),
        };
        match initialized {
            Ok(()) => {
                // Idle from just before the result is published: a caller
                // that gets the result and submits again must find this
                // thread idle, not start another one.
                // Once the pool is full nobody counts idle threads; this
                // thread then stops reading `full` too, so that its cache
                // line, which a submit writes, is not bounced per task.
                let full = Cell::new(false);
                let idle = || {
                    if full.get() {
                    } else if self.common.full.load(Ordering::Relaxed) {
                        full.set(true);
                    } else {
                        self.common.idle.fetch_add(1, Ordering::AcqRel);
                    }
                };
                for job in self.rx.iter() {
                    job.run(&idle);
                }
            }
            Err(reason) => self.break_pool(reason),
        }
        let mut st = self.common.lock();
        st.alive -= 1;
        self.common.exited.notify_all();
    }

    /// Marks the pool broken and fails everything queued with `BrokenPool`.
    fn break_pool(&self, reason: String) {
        log::error!("twinpool: {reason}; the pool is broken");
        let mut st = self.common.lock();
        if st.broken.is_none() {
            st.broken = Some(reason.clone());
        }
        drop(st);
        for job in self.rx.try_iter() {
            job.fail_if_pending(Error::BrokenPool {
                reason: reason.clone(),
            });
        }
    }
}
