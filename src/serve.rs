//! [`serve_if_worker`]: the call a program makes first thing in `main`, so
//! that the same executable can be a pool's worker, of any kind.

use crate::Registry;

/// Serves tasks if this process was started as a pool's worker, then ends
/// the process; in any other process, returns at once.
///
/// A worker is a worker process of a process pool, or, with the `mpi`
/// feature, a rank that serves an MPI pool: a rank other than 0 of a job
/// that `mpirun` (or `srun`) started, or a rank that a pool spawned.
///
/// Call it first thing in `main`, with a registry holding the same names
/// (and types) as the pool's: code before it runs in every worker too.
///
/// A process that a worker's task starts inherits the worker's
/// environment; in it, `serve_if_worker` sees that its parent is not the
/// pool and returns, so the same program can be run from a task. A
/// wrapper script around a worker program should `exec` it.
///
/// A worker process on glibc serves with the allocator settings a
/// long-running program reaches anyway: buffers up to 32 MiB come from the
/// heap, which keeps up to 64 MiB of freed memory for the next tasks, so
/// tasks with payloads of a few hundred KiB do not fault in fresh pages
/// every time.
///
/// ```no_run
/// fn square(x: u64) -> u64 { x * x }
///
/// fn tasks() -> twinpool::Registry {
///     twinpool::Registry::new().register("square", square)
/// }
///
/// fn main() -> Result<(), twinpool::Error> {
///     twinpool::serve_if_worker(&tasks());
///     let pool = twinpool::Executor::processes(2, tasks())?;
///     assert_eq!(pool.submit_named::<u64, u64>("square", 7)?.result()?, 49);
///     Ok(())
/// }
/// ```
pub fn serve_if_worker(registry: &Registry) {
    crate::process::serve_if_process_worker(registry);
    #[cfg(feature = "mpi")]
    crate::mpi::serve_if_rank(registry);
}
