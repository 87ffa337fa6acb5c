//! The process back end (being built: issue 3).
use crate::registry::Entry;
use crate::{Error, Future, Registry};
use std::sync::Arc;

/// Process-pool options of the builder.
#[derive(Default, Debug)]
pub(crate) struct ProcessOptions {}

pub(crate) struct ProcessPool {
    id: u64,
}

impl ProcessPool {
    pub(crate) fn start(
        _id: u64,
        _n: usize,
        _r: Registry,
        _o: ProcessOptions,
    ) -> Result<Self, Error> {
        Err(Error::Unsupported {
            reason: "the process back end is not built yet".into(),
        })
    }
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
    pub(crate) fn submit<A, R>(&self, _e: &Arc<Entry>, _a: &A) -> Result<Future<R>, Error> {
        Err(Error::Shutdown)
    }
    pub(crate) fn submit_chunk<A, R>(
        &self,
        _e: &Arc<Entry>,
        _a: &[A],
    ) -> Result<Future<Vec<Result<R, Error>>>, Error> {
        Err(Error::Shutdown)
    }
    pub(crate) fn shutdown(&self, _wait: bool, _cancel: bool) {}
}

/// Serves tasks if this process was started as a pool worker; else returns.
pub fn serve_if_worker(_registry: &Registry) {}
