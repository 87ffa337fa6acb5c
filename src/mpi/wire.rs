//! What crosses between the pool (rank 0, or the program that spawned the
//! ranks) and a serving rank: one *head* message per batch, postcard-encoded,
//! and after it the batch's big byte strings, each a *blob* of its own.
//!
//! A head starts with the number of blobs that follow it (4 bytes, little
//! endian). MPI keeps the order of messages between two processes on one
//! tag, so the receiver takes that many blobs from the same sender right
//! after the head. A blob is sent straight from where it lies (a task's
//! argument, a result's `Vec`): big bytes are never copied into a head.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::frames::TaskInfo;
use crate::process::task::RemoteTask;
use crate::Error;

/// The tag of heads.
pub(crate) const TAG_HEAD: i32 = 0x7470;
/// The tag of blobs.
pub(crate) const TAG_BLOB: i32 = 0x7471;

/// Bytes up to this size go inside the head; bigger ones as a blob.
pub(crate) const BLOB: usize = 32 * 1024;

/// The most bytes one MPI message carries (its count is a C `int`).
pub(crate) const MAX_MESSAGE: usize = i32::MAX as usize;

/// Bytes in a head: inline, or the next blob.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Bytes {
    Inline(Vec<u8>),
    Blob,
}

/// From the pool to a rank.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToRank {
    /// Start serving: check the tasks, start the local pool, answer
    /// [`FromRank::Ready`] or [`FromRank::Refused`].
    Hello(Box<Hello>),
    /// Run these tasks.
    Run(Vec<Run>),
    /// Stop this task, running or not (`Future::kill`).
    Kill(u64),
    /// Stop every local worker with this signal (`kill_workers`,
    /// `terminate_workers`).
    Signal(i32),
    /// Shut the local pool down once its tasks have ended (cancelling those
    /// not started if `cancel`); answer [`FromRank::Closed`].
    Close { cancel: bool },
    /// End the process: the pool's program is ending.
    Quit,
    /// End the process at once, without `MPI_Finalize` (which would wait
    /// for ranks that died): other ranks of the session were lost.
    Abandon,
}

/// The start of a session.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// `process::frames::PROTOCOL_VERSION` of the pool.
    pub(crate) version: u32,
    /// Every task the pool may send, with its types' fingerprints.
    pub(crate) tasks: Vec<TaskInfo>,
    /// How to build the rank's local pool.
    pub(crate) options: RankOptions,
}

/// The local pool a rank runs its tasks in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RankOptions {
    /// Worker processes per rank; `None`: one per core of the rank's node.
    pub(crate) workers: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) retries: u32,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) connect_timeout: Duration,
    pub(crate) initializer: Option<(String, Vec<u8>)>,
    pub(crate) program: Option<std::path::PathBuf>,
}

/// One task to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Run {
    /// The task's id in the pool.
    pub(crate) id: u64,
    pub(crate) name: String,
    /// True if `arg` is a chunk's sequence of arguments.
    pub(crate) chunk: bool,
    /// Its time limit, if not the pool's default.
    pub(crate) limit: Option<Duration>,
    pub(crate) arg: Bytes,
}

/// From a rank to the pool.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromRank {
    /// Serving, with this many local workers.
    Ready { workers: usize, host: String },
    /// Not serving: why.
    Refused { reason: String, host: String },
    /// These tasks ended.
    Done(Vec<Done>),
    /// The local pool is shut down.
    Closed,
    /// Sent twice a second in a session: the rank lives, and its local
    /// pool has restarted this many workers and has this many alive.
    Alive { restarts: u64, live: usize },
}

/// How one task ended.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) id: u64,
    pub(crate) result: Result<Answer, Error>,
}

/// A task's answer, undecoded (see `process::task::Raw`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    One(Bytes),
    Chunk {
        results: Bytes,
        failure: Option<Error>,
    },
}

/// Bytes a blob is sent from, kept alive until its send completes.
pub(crate) enum Owner {
    Vec(Vec<u8>),
    /// A task's argument.
    Task(RemoteTask),
}

impl Owner {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Owner::Vec(v) => v,
            Owner::Task(t) => t.arg().0,
        }
    }
}

/// A message on its way out: its head, then its blobs.
pub(crate) struct Outgoing {
    /// The rank it goes to, in the communicator of the session.
    pub(crate) peer: i32,
    pub(crate) head: Vec<u8>,
    pub(crate) blobs: Vec<Owner>,
}

impl Outgoing {
    /// `msg` to `peer`, with `blobs` behind it.
    pub(crate) fn new<M: Serialize>(peer: i32, msg: &M, blobs: Vec<Owner>) -> Outgoing {
        let mut head = (blobs.len() as u32).to_le_bytes().to_vec();
        // Encoding our own message types into a Vec cannot fail.
        if let Ok(body) = postcard::to_extend(msg, Vec::new()) {
            head.extend_from_slice(&body);
        }
        Outgoing { peer, head, blobs }
    }
}

/// A message as it came in.
pub(crate) struct Incoming {
    /// The rank it came from.
    pub(crate) peer: i32,
    /// Its head, without the blob count.
    pub(crate) head: Vec<u8>,
    pub(crate) blobs: std::vec::IntoIter<Vec<u8>>,
}

impl Incoming {
    /// Decodes the head.
    pub(crate) fn decode<M: serde::de::DeserializeOwned>(&self) -> Result<M, String> {
        postcard::from_bytes(&self.head).map_err(|e| format!("a malformed message: {e}"))
    }

    /// The bytes `b` stands for: inline, or the next blob.
    pub(crate) fn take(&mut self, b: Bytes) -> Vec<u8> {
        match b {
            Bytes::Inline(v) => v,
            Bytes::Blob => self.blobs.next().unwrap_or_default(),
        }
    }
}

/// `bytes` for a head: inline when small, else a blob appended to `blobs`.
pub(crate) fn put(bytes: Vec<u8>, blobs: &mut Vec<Owner>) -> Bytes {
    if bytes.len() <= BLOB {
        Bytes::Inline(bytes)
    } else {
        blobs.push(Owner::Vec(bytes));
        Bytes::Blob
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_counts_its_blobs_and_round_trips() {
        let mut blobs = Vec::new();
        let small = put(vec![1, 2, 3], &mut blobs);
        let big = put(vec![7; BLOB + 1], &mut blobs);
        let msg = FromRank::Done(vec![
            Done {
                id: 1,
                result: Ok(Answer::One(small)),
            },
            Done {
                id: 2,
                result: Ok(Answer::One(big)),
            },
            Done {
                id: 3,
                result: Err(Error::Panicked {
                    message: "boom".into(),
                }),
            },
        ]);
        let out = Outgoing::new(5, &msg, blobs);
        assert_eq!(out.head[..4], 1u32.to_le_bytes());
        let blobs: Vec<Vec<u8>> = out.blobs.iter().map(|b| b.bytes().to_vec()).collect();
        let mut inc = Incoming {
            peer: 5,
            head: out.head[4..].to_vec(),
            blobs: blobs.into_iter(),
        };
        let FromRank::Done(done) = inc.decode::<FromRank>().unwrap() else {
            panic!("not Done");
        };
        let mut lens = Vec::new();
        for d in done {
            match d.result {
                Ok(Answer::One(b)) => lens.push(inc.take(b).len()),
                Err(e) => assert_eq!(e.to_string(), "the task panicked: boom"),
                Ok(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(lens, [3, BLOB + 1]);
    }
}
