//! `Executor` and its `Builder`: submission, map and shutdown, handed to one
//! of two back ends.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::future::{Shared, Work};
use crate::map::{Chunk, SubmitChunk};
use crate::threads::{Initializer, ThreadPool};
use crate::{deadlock, Error, Future, Map, MapOptions, Registry};

#[cfg(feature = "process")]
use crate::process::ProcessPool;

#[cfg(feature = "mpi")]
use crate::mpi::MpiPool;

/// The back ends.
enum Backend {
    Threads(ThreadPool),
    #[cfg(feature = "process")]
    Processes(ProcessPool),
    #[cfg(feature = "mpi")]
    Mpi(MpiPool),
}

struct Inner {
    backend: Backend,
    registry: Option<Registry>,
    max_workers: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Like leaving Python's `with` block: wait for queued work. On one of
        // the pool's own threads that wait could never end (this thread is
        // one of those waited for, and others may wait on its task), so
        // there the pool closes its queue and its threads finish it alone.
        let on_own_thread = deadlock::current_pool() == Some(self.pool_id());
        self.shutdown(!on_own_thread, false);
    }
}

impl Inner {
    fn pool_id(&self) -> u64 {
        match &self.backend {
            Backend::Threads(p) => p.id(),
            #[cfg(feature = "process")]
            Backend::Processes(p) => p.id(),
            #[cfg(feature = "mpi")]
            Backend::Mpi(p) => p.id(),
        }
    }

    fn shutdown(&self, wait: bool, cancel_futures: bool) {
        match &self.backend {
            Backend::Threads(p) => p.shutdown(wait, cancel_futures),
            #[cfg(feature = "process")]
            Backend::Processes(p) => p.shutdown(wait, cancel_futures),
            #[cfg(feature = "mpi")]
            Backend::Mpi(p) => p.shutdown(wait, cancel_futures),
        }
    }
}

/// A pool of workers that runs submitted tasks: Python's `ThreadPoolExecutor`
/// and `ProcessPoolExecutor` behind one type.
///
/// * [`Executor::threads`] runs closures (and named tasks) on worker threads.
/// * [`Executor::processes`] runs named tasks from a [`Registry`] in worker
///   processes; arguments and results cross as serde values.
///
/// `Executor` is `Clone + Send + Sync`; clones share one pool. When the last
/// clone is dropped the pool shuts down as `shutdown(true, false)`, like
/// leaving Python's `with` block: queued work still runs and the drop waits
/// for it. Dropped on one of the pool's own threads (a task that held the
/// last clone), it does not wait, since that wait could never end: the
/// threads finish the queue and exit by themselves.
///
/// Each task's state (its result, its closure, its future's bookkeeping)
/// is one small heap block (40 bytes for a `u64` task whose closure
/// captures a `u64`). When a task's last handle is dropped, its block is
/// kept for the next submit instead of going back to the allocator: by the
/// dropping thread, up to 16 MiB per thread, and past that in a store
/// shared by all threads, up to 64 MiB, which a thread with none of its own
/// takes from and where a thread's blocks go when it exits. So the memory
/// kept for reuse is at most 16 MiB per thread plus 64 MiB, and a burst of
/// a million tasks costs no fresh pages the second time.
///
/// ```
/// let ex = twinpool::Executor::threads(2);
/// let f = ex.submit(|| 6 * 7)?;
/// assert_eq!(f.result()?, 42);
/// # Ok::<(), twinpool::Error>(())
/// ```
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner.backend {
            Backend::Threads(_) => "threads",
            #[cfg(feature = "process")]
            Backend::Processes(_) => "processes",
            #[cfg(feature = "mpi")]
            Backend::Mpi(_) => "mpi",
        };
        f.debug_struct("Executor")
            .field("backend", &kind)
            .field("max_workers", &self.inner.max_workers)
            .finish()
    }
}

impl Executor {
    /// A thread pool of at most `max_workers` threads, started as needed.
    ///
    /// # Panics
    /// If `max_workers` is 0 (use [`Executor::builder`] to get an error
    /// instead).
    pub fn threads(max_workers: usize) -> Executor {
        assert!(
            max_workers > 0,
            "twinpool: a pool needs at least one worker"
        );
        Executor::builder()
            .threads(max_workers)
            .build()
            .unwrap_or_else(|e| panic!("twinpool: {e}"))
    }

    /// A process pool of `max_workers` worker processes running the tasks of
    /// `registry`. The workers re-run the current executable, whose `main`
    /// must call [`serve_if_worker`](crate::serve_if_worker) first.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn processes(max_workers: usize, registry: Registry) -> Result<Executor, Error> {
        Executor::builder()
            .processes(max_workers)
            .registry(registry)
            .build()
    }

    /// A [`Builder`] for the options that [`threads`](Self::threads) and
    /// [`processes`](Self::processes) leave at their defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The most tasks this pool runs at once.
    pub fn max_workers(&self) -> usize {
        self.inner.max_workers
    }

    /// What the pool is doing now: tasks queued, running, finished and
    /// failed, workers alive and restarted. See [`Stats`](crate::Stats);
    /// it takes a short lock, so it is for showing progress, not for a
    /// tight loop.
    pub fn stats(&self) -> crate::Stats {
        match &self.inner.backend {
            Backend::Threads(p) => p.stats(),
            #[cfg(feature = "process")]
            Backend::Processes(p) => p.stats(),
            #[cfg(feature = "mpi")]
            Backend::Mpi(p) => p.stats(),
        }
    }

    /// Runs `f` on a worker thread; its result comes back through the
    /// returned [`Future`]. A panic in `f` becomes [`Error::Panicked`]; the
    /// thread survives.
    ///
    /// Thread back end only: a process pool returns [`Error::Unsupported`],
    /// as a closure cannot cross to another process; register the function
    /// and use [`submit_named`](Self::submit_named).
    pub fn submit<T, F>(&self, f: F) -> Result<Future<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_work(None, move || Ok(f()))
    }

    fn submit_work<T, F>(&self, name: Option<Arc<str>>, work: F) -> Result<Future<T>, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, Error> + Send + 'static,
    {
        match &self.inner.backend {
            Backend::Threads(pool) => {
                #[cfg(feature = "tracing")]
                let span = crate::trace::task_span("threads", name.as_deref());
                #[cfg(feature = "tracing")]
                let work = {
                    let span = span.clone();
                    move || span.in_scope(work)
                };
                let (shared, job) = Shared::new(pool.id(), name, work);
                #[cfg(feature = "tracing")]
                crate::trace::record_id(&span, || shared.id());
                pool.submit(job, || shared.cancel_with(Error::Cancelled))?;
                Ok(Future::new(shared))
            }
            #[cfg(feature = "process")]
            _ => Err(Error::Unsupported {
                reason: "a process pool cannot run a closure, because a closure cannot cross \
                         to another process; register the function in the Registry and call \
                         submit_named"
                    .into(),
            }),
        }
    }

    fn registry(&self) -> Result<&Registry, Error> {
        self.inner
            .registry
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument {
                reason: "this executor has no registry, so it knows no named tasks; \
                     give one with Builder::registry"
                    .into(),
            })
    }

    /// Runs the task registered as `name` with `arg`, on either back end.
    ///
    /// An unknown name is [`Error::NotRegistered`] here. Called with other
    /// argument or result types than registered, the future ends in
    /// [`Error::Decode`], never in a wrong answer. On a thread pool the
    /// registered function is called directly, with no encoding.
    pub fn submit_named<A, R>(&self, name: &str, arg: A) -> Result<Future<R>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        self.submit_named_limited(name, arg, None)
    }

    /// Submits a typed task (see [`Task`](crate::Task)): `submit_named`
    /// under [`Task::NAME`](crate::Task::NAME), with its argument and result
    /// types checked by the compiler.
    ///
    /// ```
    /// #[twinpool::task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let tasks = twinpool::Registry::new().task(square);
    /// let ex = twinpool::Executor::builder().threads(2).registry(tasks).build()?;
    /// let f: twinpool::Future<u64> = ex.submit_task(square, 3)?;
    /// assert_eq!(f.result()?, 9);
    /// # Ok::<(), twinpool::Error>(())
    /// ```
    pub fn submit_task<T: crate::Task>(
        &self,
        _task: T,
        arg: T::Arg,
    ) -> Result<Future<T::Output>, Error> {
        self.submit_named(T::NAME, arg)
    }

    /// [`submit_named`](Self::submit_named) with a time limit for this task
    /// (overriding [`Builder::task_timeout`]), counted from when its worker
    /// starts it: a process task that runs longer has its worker killed and
    /// replaced, and ends in [`Error::TaskTimedOut`]; no other task is
    /// harmed. `Duration::MAX` is no limit. A thread cannot be stopped from
    /// outside, so a thread pool returns [`Error::Unsupported`]; wait with
    /// [`Future::result_timeout`] there instead.
    pub fn submit_named_timeout<A, R>(
        &self,
        name: &str,
        arg: A,
        limit: std::time::Duration,
    ) -> Result<Future<R>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        self.submit_named_limited(name, arg, Some(limit))
    }

    fn submit_named_limited<A, R>(
        &self,
        name: &str,
        arg: A,
        limit: Option<std::time::Duration>,
    ) -> Result<Future<R>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let entry = self.registry()?.get(name)?;
        match &self.inner.backend {
            Backend::Threads(_) if limit.is_some() => Err(unstoppable_threads()),
            Backend::Threads(_) => {
                let work: Work<R> = match entry.direct::<A, R>() {
                    Some(f) => Box::new(move || Ok(f(arg))),
                    None => {
                        let err = entry.type_mismatch::<A, R>();
                        Box::new(move || Err(err))
                    }
                };
                self.submit_work(Some(entry.name.clone()), work)
            }
            #[cfg(feature = "process")]
            Backend::Processes(pool) => pool.submit(entry, arg, limit),
            #[cfg(feature = "mpi")]
            Backend::Mpi(pool) => pool.submit(entry, arg, limit),
        }
    }

    /// Bytes that many tasks read, made once: a [`Shared`](crate::Shared)
    /// to pass (or put inside) each task's argument. In a process pool
    /// the bytes lie in one shared-memory segment that each worker maps
    /// the first time one of its tasks carries the handle, so 100 tasks
    /// reading the same 256 MiB cost one copy, not 100. In a thread pool
    /// it is an `Arc`. The handle works with every pool, not only this one;
    /// this is [`Shared::new`](crate::Shared::new) by another name, the
    /// counterpart of Dask's `scatter`.
    ///
    /// Fails only when the system cannot give a shared-memory segment that
    /// size ([`Error::Encode`] says why); it does not fail after
    /// [`shutdown`](Self::shutdown).
    pub fn share(&self, bytes: impl AsRef<[u8]>) -> Result<crate::Shared, Error> {
        crate::Shared::new(bytes.as_ref())
    }

    /// Stops every worker process at once with SIGTERM, as Python 3.14's
    /// `ProcessPoolExecutor.terminate_workers`: the pool shuts down, queued
    /// tasks are cancelled, tasks handed to a worker that had not started
    /// are taken back and never run, and running ones end in
    /// [`Error::Killed`] at once. The signal goes to each worker's whole
    /// process group; a worker still there after a grace of 2 seconds is
    /// killed. Returns when the workers are gone. A thread pool returns
    /// [`Error::Unsupported`].
    pub fn terminate_workers(&self) -> Result<(), Error> {
        self.signal_workers(15)
    }

    /// [`terminate_workers`](Self::terminate_workers) with SIGKILL, as
    /// Python 3.14's `kill_workers`.
    pub fn kill_workers(&self) -> Result<(), Error> {
        self.signal_workers(9)
    }

    fn signal_workers(&self, _signal: i32) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::Threads(_) => Err(unstoppable_threads()),
            #[cfg(feature = "process")]
            Backend::Processes(pool) => {
                pool.signal_workers(_signal);
                Ok(())
            }
            #[cfg(feature = "mpi")]
            Backend::Mpi(pool) => {
                pool.signal_workers(_signal);
                Ok(())
            }
        }
    }

    /// Calls `f` on every item on the pool; the results come back in input
    /// order, as Python's `Executor.map`. Every item is submitted before
    /// `map` returns. See [`map_with`](Self::map_with) for a deadline, chunks
    /// and a bounded look-ahead.
    ///
    /// ```
    /// let ex = twinpool::Executor::threads(3);
    /// let squares: Vec<u64> = ex.map(|x: u64| x * x, 1..=4)?.collect::<Result<_, _>>()?;
    /// assert_eq!(squares, [1, 4, 9, 16]);
    /// # Ok::<(), twinpool::Error>(())
    /// ```
    pub fn map<I, T, F>(&self, f: F, items: I) -> Result<Map<T>, Error>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        Map::eager(items.into_iter(), &MapOptions::default(), self.chunk_fn(f))
    }

    /// [`map`](Self::map) with [`MapOptions`]: a timeout counted from this
    /// call, `chunksize` items per task, and `buffersize` to submit at most
    /// that many items ahead of the consumer (the input is then pulled lazily
    /// and may be infinite, which is why it must be `Send + 'static` here).
    pub fn map_with<I, T, F>(&self, f: F, items: I, opts: MapOptions) -> Result<Map<T>, Error>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        opts.validate()?;
        let submit = self.chunk_fn(f);
        match opts.buffersize {
            None => Map::eager(items.into_iter(), &opts, submit),
            Some(n) => Map::lazy(items.into_iter(), &opts, n, submit),
        }
    }

    /// A chunk submitter that calls `f` on each item of a chunk in one task.
    fn chunk_fn<Item, T, F>(&self, f: F) -> SubmitChunk<Item, T>
    where
        Item: Send + 'static,
        F: Fn(Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        // A lazy `Map` keeps its pool alive, as Python's map generator does.
        let f = Arc::new(f);
        let ex = self.clone();
        Box::new(move |items: Vec<Item>| {
            let f = f.clone();
            ex.submit_work(None, move || Ok(run_chunk(items, &*f)))
        })
    }

    /// [`map`](Self::map) for a registered task: `name` called on every item.
    pub fn map_named<A, R, I>(&self, name: &str, items: I) -> Result<Map<R>, Error>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        Map::eager(
            items.into_iter(),
            &MapOptions::default(),
            self.named_chunk_fn(name)?,
        )
    }

    /// Maps a typed task (see [`Task`](crate::Task)) over `items`:
    /// [`map_named`](Self::map_named) under its name, types checked by the
    /// compiler.
    pub fn map_task<T, I>(&self, _task: T, items: I) -> Result<Map<T::Output>, Error>
    where
        T: crate::Task,
        I: IntoIterator<Item = T::Arg>,
    {
        self.map_named(T::NAME, items)
    }

    /// [`map_task`](Self::map_task) with options, as
    /// [`map_named_with`](Self::map_named_with).
    pub fn map_task_with<T, I>(
        &self,
        _task: T,
        items: I,
        opts: MapOptions,
    ) -> Result<Map<T::Output>, Error>
    where
        T: crate::Task,
        I: IntoIterator<Item = T::Arg>,
        I::IntoIter: Send + 'static,
    {
        self.map_named_with(T::NAME, items, opts)
    }

    /// [`map_with`](Self::map_with) for a registered task. On a process pool
    /// a chunk crosses to its worker as one message and its results come back
    /// as one message.
    pub fn map_named_with<A, R, I>(
        &self,
        name: &str,
        items: I,
        opts: MapOptions,
    ) -> Result<Map<R>, Error>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        opts.validate()?;
        let submit = self.named_chunk_fn(name)?;
        match opts.buffersize {
            None => Map::eager(items.into_iter(), &opts, submit),
            Some(n) => Map::lazy(items.into_iter(), &opts, n, submit),
        }
    }

    fn named_chunk_fn<A, R>(&self, name: &str) -> Result<SubmitChunk<A, R>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let entry = self.registry()?.get(name)?.clone();
        match &self.inner.backend {
            Backend::Threads(_) => match entry.direct::<A, R>() {
                Some(f) => Ok(self.chunk_fn(move |a| f(a))),
                None => {
                    let err = entry.type_mismatch::<A, R>();
                    let ex = self.clone();
                    Ok(Box::new(move |_items| {
                        let err = err.clone();
                        ex.submit_work(None, move || Err(err))
                    }))
                }
            },
            #[cfg(feature = "process")]
            Backend::Processes(_) => {
                let ex = self.clone();
                Ok(Box::new(move |items: Vec<A>| match &ex.inner.backend {
                    Backend::Processes(pool) => pool.submit_chunk(&entry, items),
                    _ => Err(Error::Shutdown),
                }))
            }
            #[cfg(feature = "mpi")]
            Backend::Mpi(_) => {
                let ex = self.clone();
                Ok(Box::new(move |items: Vec<A>| match &ex.inner.backend {
                    Backend::Mpi(pool) => pool.submit_chunk(&entry, items),
                    _ => Err(Error::Shutdown),
                }))
            }
        }
    }

    /// Stops taking work, as Python's `Executor.shutdown`. Idempotent.
    ///
    /// After it, `submit*` and `map*` return [`Error::Shutdown`]. With
    /// `cancel_futures`, queued tasks that have not started are cancelled.
    /// With `wait`, blocks until every task still queued or running is done.
    ///
    /// Called with `wait` from a task of this thread pool, it cannot wait
    /// for its own task, which ends only after it returns; Python raises
    /// "cannot join current thread" there. Nor can it wait for another task
    /// of the pool that is itself blocked in such a shutdown: each would
    /// wait for the other forever. So it waits for the pool's other
    /// threads, except those blocked in a `shutdown(true, _)` of their
    /// own, to finish the queue and exit, and then returns. The tasks of
    /// those threads (and what the queue still held for them) may then not
    /// have finished yet; they run on after it returns, as the caller's own
    /// task does. It never returns an error and never deadlocks on these
    /// waits.
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        self.inner.shutdown(wait, cancel_futures);
    }
}

fn unstoppable_threads() -> Error {
    Error::Unsupported {
        reason: "a thread cannot be stopped from outside, so thread pools have no task time \
                 limits and no terminate_workers/kill_workers; use a process pool for work \
                 that must be stoppable"
            .into(),
    }
}

/// Calls `f` on each item in order, stopping at the first panic.
fn run_chunk<Item, T>(items: Vec<Item>, f: &(impl Fn(Item) -> T + ?Sized)) -> Chunk<T> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match catch_unwind(AssertUnwindSafe(|| f(item))) {
            Ok(v) => out.push(Ok(v)),
            Err(p) => {
                out.push(Err(Error::from_panic(p)));
                break;
            }
        }
    }
    out
}

/// Which back end a [`Builder`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Kind {
    #[default]
    Threads,
    #[cfg(feature = "process")]
    Processes,
    #[cfg(feature = "mpi")]
    Mpi,
}

/// Options for an [`Executor`]; start with [`Executor::builder`].
///
/// ```
/// let ex = twinpool::Executor::builder()
///     .threads(4)
///     .thread_name_prefix("fetch")
///     .build()?;
/// assert_eq!(ex.max_workers(), 4);
/// # Ok::<(), twinpool::Error>(())
/// ```
#[derive(Default)]
pub struct Builder {
    kind: Kind,
    workers: Option<usize>,
    registry: Option<Registry>,
    thread_name_prefix: Option<String>,
    initializer: Option<Initializer>,
    #[cfg(feature = "process")]
    process: crate::process::ProcessOptions,
    /// The encoded argument of `initializer_named`, or why it failed.
    #[cfg(feature = "process")]
    initializer_arg: Option<Result<Vec<u8>, Error>>,
    /// The process-pool options given, by name, so that a thread pool can
    /// refuse them instead of ignoring them.
    #[cfg(feature = "process")]
    process_only: Vec<&'static str>,
    #[cfg(feature = "mpi")]
    mpi: crate::mpi::MpiOptions,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("kind", &self.kind)
            .field("workers", &self.workers)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A thread pool of at most `n` threads. Without this or
    /// [`processes`](Self::processes), the builder makes a thread pool of
    /// `min(32, available_parallelism + 4)` threads, as Python does.
    pub fn threads(mut self, n: usize) -> Builder {
        self.kind = Kind::Threads;
        self.workers = Some(n);
        self
    }

    /// A process pool of `n` worker processes. Needs a
    /// [`registry`](Self::registry).
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn processes(mut self, n: usize) -> Builder {
        self.kind = Kind::Processes;
        self.workers = Some(n);
        self
    }

    /// A process pool of one worker process per CPU
    /// (`available_parallelism`), the default of Python's
    /// `ProcessPoolExecutor()`. Needs a [`registry`](Self::registry).
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn processes_per_cpu(mut self) -> Builder {
        self.kind = Kind::Processes;
        self.workers = None;
        self
    }

    /// A pool over the ranks of the MPI job this program runs in, started
    /// with `mpirun -n N ./app`: rank 0 returns from
    /// [`serve_if_worker`](crate::serve_if_worker) and builds this pool;
    /// every other rank serves it from that same call and never returns,
    /// as with mpi4py's `MPICommExecutor`. Each rank runs its tasks in a
    /// local process pool of [`workers_per_rank`](Self::workers_per_rank)
    /// workers, so a crash or a time limit costs one task, as on one
    /// machine. Needs a [`registry`](Self::registry); the process-pool
    /// options apply to every rank's local pool. The README's "Past one
    /// machine" shows both ways to start, and how it runs under Slurm.
    ///
    /// What still ends the job: the pool's process dying (rank 0), or a
    /// serving rank's own process dying (not one of its workers). Open MPI
    /// then aborts every process of the job, as for any MPI program. Ranks
    /// spawned by [`mpi_spawn`](Self::mpi_spawn) can die without taking the
    /// pool's process along: a rank silent for 10 s (a live one speaks
    /// twice a second) counts as lost, and the tasks it held end in
    /// [`Error::BrokenPool`] naming it.
    ///
    /// [`build`](Self::build) fails with [`Error::Spawn`] when the program
    /// runs alone (not under `mpirun`), when a rank holds other tasks or
    /// types, and when the ranks do not answer within the
    /// [`connect_timeout`](Self::connect_timeout) (plus 5 s).
    #[cfg(feature = "mpi")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
    pub fn mpi(mut self) -> Builder {
        self.kind = Kind::Mpi;
        self.mpi.spawn = None;
        self
    }

    /// A pool over `n` new MPI ranks that this program starts with
    /// `MPI_Comm_spawn` of its own executable, as mpi4py's
    /// `MPIPoolExecutor(max_workers=n)`: for a program started without
    /// `mpirun` (an MPI singleton) or as one rank of a job. The spawned
    /// ranks serve from [`serve_if_worker`](crate::serve_if_worker). They
    /// outlive the executor: a later `mpi_spawn(n)` executor with the same
    /// `n` uses them again (MPI's spawn is slow, and in Open MPI not
    /// reliable when repeated), and they exit when the program ends or
    /// when an executor asks for another number of ranks. Otherwise as
    /// [`mpi`](Self::mpi).
    ///
    /// The ranks are placed round robin over the nodes of the job's
    /// allocation, more of them than cores if asked (Open MPI's
    /// `map_by node:OVERSUBSCRIBE`). A spawn MPI refuses is an
    /// [`Error::Spawn`], and the program goes on.
    #[cfg(feature = "mpi")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
    pub fn mpi_spawn(mut self, n: usize) -> Builder {
        self.kind = Kind::Mpi;
        self.mpi.spawn = Some(n);
        self
    }

    /// For an MPI pool: how many worker processes each rank runs its tasks
    /// in. Default: one per core of the rank's node
    /// (`available_parallelism` there). Each rank holds at most 4 tasks per
    /// worker; the rest wait in the pool's process, where `cancel` still
    /// works.
    #[cfg(feature = "mpi")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
    pub fn workers_per_rank(mut self, k: usize) -> Builder {
        self.mpi.workers_per_rank = Some(k);
        self.process_only.push("Builder::workers_per_rank");
        self
    }

    /// The named tasks this pool can run; required for a process pool, and
    /// for [`Executor::submit_named`] on a thread pool.
    pub fn registry(mut self, registry: Registry) -> Builder {
        self.registry = Some(registry);
        self
    }

    /// Names the worker threads `{prefix}_{n}` (default `twinpool-{pool}`).
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Builder {
        self.thread_name_prefix = Some(prefix.into());
        self
    }

    /// Runs `init` once in every worker thread before its first task. If it
    /// panics the pool is broken: queued and later work gets
    /// [`Error::BrokenPool`] with the panic's text.
    pub fn initializer<F>(mut self, init: F) -> Builder
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.initializer = Some(Arc::new(init));
        self
    }

    /// The program worker processes run: one whose `main` calls
    /// [`serve_if_worker`](crate::serve_if_worker) with a registry holding
    /// the same task names and types. Default: the current executable.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn worker_program(mut self, path: impl Into<std::path::PathBuf>) -> Builder {
        self.process.program = Some(path.into());
        self.process_only.push("Builder::worker_program");
        self
    }

    /// How long new worker processes have to start and connect before they
    /// count as failed ([`Error::Spawn`]). Workers started together share
    /// the one deadline: a pool of 5 workers that never connect fails after
    /// `timeout`, not five times that. Default: 10 seconds;
    /// `Duration::MAX` waits without end.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Builder {
        self.process.connect_timeout = timeout;
        self.process_only.push("Builder::connect_timeout");
        self
    }

    /// For a process pool: runs the registered task `name` on `arg` in every
    /// worker process before its first task, the counterpart of Python's
    /// `initializer` and `initargs` (a closure cannot cross to a worker, so
    /// the initializer is named). If it panics or fails, the pool is broken:
    /// queued and later work gets [`Error::BrokenPool`] naming the cause.
    /// An argument that cannot be encoded is an error of
    /// [`build`](Self::build).
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn initializer_named<A: Serialize + 'static>(mut self, name: &str, arg: A) -> Builder {
        let payload =
            crate::codec::encode(&arg, || format!("the argument of initializer {name:?}"));
        self.initializer_arg = Some(payload);
        self.process.initializer = Some((name.to_string(), Vec::new()));
        self.process_only.push("Builder::initializer_named");
        self
    }

    /// For a process pool: the default time limit of every task, counted
    /// from when its worker starts it. A task that runs longer has its
    /// worker (and the processes it started) killed and replaced, and ends
    /// in [`Error::TaskTimedOut`] within about 100 ms of its limit, whatever
    /// else is queued; no other task is harmed. See
    /// [`Executor::submit_named_timeout`] for a limit per call. Default:
    /// none; `Duration::MAX` is none too.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn task_timeout(mut self, limit: std::time::Duration) -> Builder {
        self.process.task_timeout = Some(limit);
        self.process_only.push("Builder::task_timeout");
        self
    }

    /// For a process pool: replace each worker process after it has run `n`
    /// tasks (a chunk of a map counts as one), as Python's
    /// `max_tasks_per_child`; a cure for leaks in foreign code. 0 is
    /// [`Error::InvalidArgument`] at [`build`](Self::build), as Python's
    /// `ValueError`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn max_tasks_per_child(mut self, n: usize) -> Builder {
        self.process.max_tasks_per_child = Some(n);
        self.process_only.push("Builder::max_tasks_per_child");
        self
    }

    /// For a process pool: a task whose worker process dies while running
    /// it (a crash, a signal, running out of memory) runs again, on another
    /// worker, up to `n` more times, as Ray's `max_retries` and Dask's
    /// `retries`. The error after the last try, [`Error::WorkerDied`], says
    /// how many tries ran in its `tries`. A task that panics, times out or
    /// is killed is not tried again: only a death is. Default: 0.
    ///
    /// A task may then run more than once: give it only work that is safe
    /// to repeat.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn retries(mut self, n: u32) -> Builder {
        self.process.retries = n;
        self.process_only.push("Builder::retries");
        self
    }

    /// For a process pool: caps the address space of each worker process at
    /// `bytes` (`setrlimit(RLIMIT_AS)`, like Dask's `memory_limit`), so a
    /// task that would take all the machine's memory fails instead. The
    /// task that runs past it ends in [`Error::OutOfMemory`] naming the
    /// limit, its worker is replaced, and the pool lives.
    ///
    /// The limit counts the whole address space of the worker, its program
    /// and libraries included (tens of MiB): leave room for them. Memory
    /// that a task asks for in one go beyond the limit fails at once;
    /// Rust aborts the worker when an allocation fails, and the pool reads
    /// that as this error.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn worker_memory_limit(mut self, bytes: u64) -> Builder {
        self.process.memory_limit = Some(bytes);
        self.process_only.push("Builder::worker_memory_limit");
        self
    }

    /// Builds the executor.
    ///
    /// [`Error::InvalidArgument`] for 0 workers, and for an option the
    /// chosen back end would ignore: the process-pool options
    /// ([`task_timeout`](Self::task_timeout), `max_tasks_per_child`,
    /// `retries`, `worker_memory_limit`, `initializer_named`,
    /// `worker_program`, `connect_timeout`) on a thread pool, and
    /// [`thread_name_prefix`](Self::thread_name_prefix) or the closure
    /// [`initializer`](Self::initializer) on a process pool.
    pub fn build(self) -> Result<Executor, Error> {
        let id = deadlock::next_pool_id();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let backend = match self.kind {
            Kind::Threads => {
                let n = self.workers.unwrap_or_else(|| (cores + 4).min(32));
                check_workers(n)?;
                #[cfg(feature = "process")]
                if let Some(option) = self.process_only.first() {
                    return Err(Error::InvalidArgument {
                        reason: format!(
                            "{option} is an option of process pools, and a thread pool would \
                             ignore it; build a process pool (Builder::processes) or leave it out"
                        ),
                    });
                }
                let prefix = self
                    .thread_name_prefix
                    .unwrap_or_else(|| format!("twinpool-{id}"));
                (
                    Backend::Threads(ThreadPool::new(id, n, prefix, self.initializer)),
                    n,
                )
            }
            #[cfg(feature = "process")]
            Kind::Processes => {
                let n = self.workers.unwrap_or(cores);
                check_workers(n)?;
                #[cfg(feature = "mpi")]
                if self.mpi.workers_per_rank.is_some() {
                    return Err(Error::InvalidArgument {
                        reason: "Builder::workers_per_rank is an option of MPI pools, and a \
                                 local process pool would ignore it; give the number of \
                                 workers to Builder::processes"
                            .into(),
                    });
                }
                let (registry, process) = self.process_parts()?;
                let pool = ProcessPool::start(id, n, registry, process)?;
                (Backend::Processes(pool), n)
            }
            #[cfg(feature = "mpi")]
            Kind::Mpi => {
                if let Some(n) = self.mpi.spawn {
                    check_workers(n)?;
                }
                if let Some(k) = self.mpi.workers_per_rank {
                    check_workers(k)?;
                }
                let mpi = self.mpi.clone();
                let (registry, process) = self.process_parts()?;
                let pool = MpiPool::start(id, registry, process, mpi)?;
                let n = pool.workers();
                (Backend::Mpi(pool), n)
            }
        };
        let (backend, max_workers) = backend;
        Ok(Executor {
            inner: Arc::new(Inner {
                backend,
                registry: self.registry,
                max_workers,
            }),
        })
    }
}

impl Builder {
    /// Checks the options of a pool of processes (local or MPI) and returns
    /// its registry and options.
    #[cfg(feature = "process")]
    fn process_parts(&self) -> Result<(Registry, crate::process::ProcessOptions), Error> {
        let ignored = [
            (
                self.thread_name_prefix.is_some(),
                "Builder::thread_name_prefix",
            ),
            (
                self.initializer.is_some(),
                "Builder::initializer (a closure cannot cross to a worker process; \
                 use Builder::initializer_named)",
            ),
        ];
        if let Some((_, option)) = ignored.iter().find(|(given, _)| *given) {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "{option} is an option of thread pools, and a process pool would \
                     ignore it; leave it out"
                ),
            });
        }
        if self.process.max_tasks_per_child == Some(0) {
            return Err(Error::InvalidArgument {
                reason: "Builder::max_tasks_per_child must be at least 1".into(),
            });
        }
        let mut process = self.process.clone();
        if let (Some((_, payload)), Some(arg)) =
            (process.initializer.as_mut(), self.initializer_arg.clone())
        {
            *payload = arg?;
        }
        let registry = self
            .registry
            .clone()
            .ok_or_else(|| Error::InvalidArgument {
                reason: "a process pool needs a Registry of named tasks; \
                     give one with Builder::registry"
                    .into(),
            })?;
        Ok((registry, process))
    }
}

fn check_workers(n: usize) -> Result<(), Error> {
    if n == 0 {
        return Err(Error::InvalidArgument {
            reason: "max_workers must be at least 1".into(),
        });
    }
    Ok(())
}
