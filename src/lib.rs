//! # twinpool
//!
//! Python's `concurrent.futures` for Rust: one [`Executor`] that runs work on
//! a pool of **threads** or of **processes**, with [`Future`]s, [`wait`],
//! [`as_completed`] and an ordered [`Executor::map`].
//!
//! * [`Executor::threads`] runs closures (and named tasks) on worker threads
//!   of this process, like `ThreadPoolExecutor`.
//! * [`Executor::processes`] runs named tasks from a [`Registry`] in worker
//!   processes, like `ProcessPoolExecutor`. Arguments and results cross as
//!   serde values, the counterpart of pickle's restriction in Python. A crash
//!   in a task costs its worker, not your program.
//! * With the `mpi` feature, `Builder::mpi` and `Builder::mpi_spawn` run
//!   the same named tasks on the ranks of an MPI job, across the machines
//!   of a cluster, like `mpi4py.futures`; each rank runs them in a local
//!   process pool, so a crash still costs one task.
//!
//! ```
//! use twinpool::{as_completed, Executor};
//!
//! let ex = Executor::threads(3);
//! let futures = ["a", "bb", "ccc"]
//!     .into_iter()
//!     .map(|s| ex.submit(move || s.len()))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let mut lengths: Vec<usize> = as_completed(futures, None)
//!     .map(|f| f?.result())
//!     .collect::<Result<_, _>>()?;
//! lengths.sort();
//! assert_eq!(lengths, [1, 2, 3]);
//!
//! // map keeps input order, whatever order the tasks finish in.
//! let doubled: Vec<i32> = ex.map(|x: i32| x * 2, vec![3, 1, 2])?.collect::<Result<_, _>>()?;
//! assert_eq!(doubled, [6, 2, 4]);
//! # Ok::<(), twinpool::Error>(())
//! ```
//!
//! Where Python hangs, twinpool answers: a task that blocks on a task of its
//! own pool that has not started runs it itself, and a wait that closes a
//! cycle of tasks waiting on each other returns [`Error::Deadlock`].
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "process")]
mod codec;
mod deadlock;
mod error;
mod executor;
mod future;
mod map;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "process")]
mod process;
mod recycle;
mod registry;
#[cfg(feature = "process")]
mod schema;
#[cfg(feature = "process")]
mod serve;
mod shared;
mod stats;
mod sync;
mod threads;
#[cfg(feature = "tracing")]
mod trace;
mod wait;

pub use error::{Error, WorkerExit};

/// The variables by which an MPI launcher (Open MPI's `mpirun`, PMIx,
/// MPICH's Hydra, Slurm's `srun` with PMI) tells a process its rank.
#[cfg(feature = "process")]
pub(crate) const RANK_ENV: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];
pub use executor::{Builder, Executor};
pub use future::Future;
pub use map::{Map, MapOptions};
pub use registry::{Registry, Task};

pub use shared::Shared;
pub use stats::Stats;
/// Turns a function into a typed [`Task`] (the `macros` feature, on by
/// default).
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use twinpool_macros::task;
pub use wait::{as_completed, try_wait, wait, AsCompleted, ReturnWhen, Waited};

#[cfg(feature = "process")]
#[cfg_attr(docsrs, doc(cfg(feature = "process")))]
pub use serve::serve_if_worker;

/// Decodes `bytes` as request frames and as reply frames, discarding the
/// result: the entry point of the fuzz target in `fuzz/`. Only in builds
/// with `--cfg fuzzing` (as `cargo fuzz` makes them); not part of the API.
#[cfg(all(feature = "process", fuzzing))]
#[doc(hidden)]
pub fn __fuzz_decode_frames(bytes: &[u8]) {
    process::frames::decode_all(bytes);
}

// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
