//! Ordered `map`: results in input order, with chunks, a deadline and a
//! bounded look-ahead.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::future::deadline_after;
use crate::{Error, Future};
#[cfg(feature = "futures")]
use std::future::Future as _;

/// Options for [`Executor::map_with`](crate::Executor::map_with) and
/// [`Executor::map_named_with`](crate::Executor::map_named_with), as the
/// keyword arguments of Python's `Executor.map`.
///
/// Build it with its methods, or as a struct with `..Default::default()`
/// (its fields are public):
///
/// ```
/// use std::time::Duration;
/// let opts = twinpool::MapOptions::new()
///     .timeout(Duration::from_secs(10))
///     .chunksize(100);
/// assert_eq!(opts.buffersize, None);
///
/// let same = twinpool::MapOptions {
///     timeout: Some(Duration::from_secs(10)),
///     chunksize: 100,
///     ..Default::default()
/// };
/// assert_eq!(opts, same);
/// ```
///
/// The methods are the way that keeps compiling if options are added: the
/// struct is not `#[non_exhaustive]`, since programs build it by its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOptions {
    /// A deadline for the whole map, counted from the `map` call. When it
    /// passes, the iterator yields `Err(Error::Timeout)` once and ends, and
    /// what has not started is cancelled.
    pub timeout: Option<Duration>,
    /// How many items one task handles (default 1). Larger chunks cost less
    /// per item; the thread back end honours it too (Python ignores it there).
    pub chunksize: usize,
    /// At most this many items submitted ahead of the consumer (Python
    /// 3.14's `buffersize`); `None` submits every item before `map` returns.
    /// With `buffersize`, the input is pulled lazily, so it may be infinite.
    /// When `chunksize` is larger, chunks shrink to `buffersize` items.
    pub buffersize: Option<usize>,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            timeout: None,
            chunksize: 1,
            buffersize: None,
        }
    }
}

impl MapOptions {
    /// The defaults: no timeout, chunks of 1, every item submitted at once.
    pub fn new() -> MapOptions {
        MapOptions::default()
    }

    /// A deadline for the whole map, counted from the `map` call
    /// (`Duration::MAX`: none).
    pub fn timeout(mut self, timeout: Duration) -> MapOptions {
        self.timeout = Some(timeout);
        self
    }

    /// How many items one task handles (at least 1, or the map call returns
    /// `Error::InvalidArgument`).
    pub fn chunksize(mut self, chunksize: usize) -> MapOptions {
        self.chunksize = chunksize;
        self
    }

    /// At most `n` items submitted ahead of the consumer (at least 1, or the
    /// map call returns `Error::InvalidArgument`).
    pub fn buffersize(mut self, n: usize) -> MapOptions {
        self.buffersize = Some(n);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.chunksize == 0 {
            return Err(Error::InvalidArgument {
                reason: "MapOptions::chunksize must be at least 1".into(),
            });
        }
        if self.buffersize == Some(0) {
            return Err(Error::InvalidArgument {
                reason: "MapOptions::buffersize must be at least 1 (or None for no limit)".into(),
            });
        }
        Ok(())
    }
}

/// The results of one chunk, in order, ending early at the first error.
pub(crate) type Chunk<T> = Vec<Result<T, Error>>;

/// Submits one chunk of items as one task.
pub(crate) type SubmitChunk<Item, T> =
    Box<dyn FnMut(Vec<Item>) -> Result<Future<Chunk<T>>, Error> + Send>;

/// Pulls the next chunk from the input and submits it: `None` when the input
/// is exhausted, else the chunk's future and how many items it holds.
type Source<T> = Box<dyn FnMut() -> Option<Result<(Future<Chunk<T>>, usize), Error>> + Send>;

/// The iterator [`Executor::map`](crate::Executor::map) returns: each item's
/// result, in input order.
///
/// A failed item (a panic, a cancelled or broken task) is yielded as `Err`
/// and ends the iterator, as an exception ends Python's. Dropping a `Map`
/// cancels every item that has not started.
pub struct Map<T: Send + 'static> {
    /// Submitted chunks, oldest first, with their item counts.
    pending: VecDeque<(Future<Chunk<T>>, usize)>,
    /// The rest of the chunk being yielded.
    ready: std::vec::IntoIter<Result<T, Error>>,
    /// Lazy input (with `buffersize`); `None` once exhausted.
    source: Option<Source<T>>,
    /// Items submitted and not yet yielded, and the most allowed.
    outstanding: usize,
    buffersize: usize,
    chunk: usize,
    deadline: Option<Instant>,
    /// Submitting more input failed; yielded after what was submitted.
    submit_error: Option<Error>,
    ended: bool,
}

impl<T: Send + 'static> std::fmt::Debug for Map<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("chunks_pending", &self.pending.len())
            .field("ended", &self.ended)
            .finish()
    }
}

fn next_chunk<Item>(items: &mut impl Iterator<Item = Item>, size: usize) -> Vec<Item> {
    items.by_ref().take(size).collect()
}

impl<T: Send + 'static> Map<T> {
    fn empty(chunk: usize, buffersize: usize, timeout: Option<Duration>) -> Self {
        Map {
            pending: VecDeque::new(),
            ready: Vec::new().into_iter(),
            source: None,
            outstanding: 0,
            buffersize,
            chunk,
            deadline: timeout.map(deadline_after),
            submit_error: None,
            ended: false,
        }
    }

    /// Submits every chunk now.
    pub(crate) fn eager<Item>(
        mut items: impl Iterator<Item = Item>,
        opts: &MapOptions,
        mut submit: SubmitChunk<Item, T>,
    ) -> Result<Self, Error> {
        let mut map = Map::empty(opts.chunksize, usize::MAX, opts.timeout);
        loop {
            let chunk = next_chunk(&mut items, opts.chunksize);
            if chunk.is_empty() {
                return Ok(map);
            }
            let n = chunk.len();
            // On error, dropping `map` cancels what was submitted.
            map.pending.push_back((submit(chunk)?, n));
        }
    }

    /// Submits at most `buffersize` items ahead of the consumer.
    pub(crate) fn lazy<Item: 'static>(
        mut items: impl Iterator<Item = Item> + Send + 'static,
        opts: &MapOptions,
        buffersize: usize,
        mut submit: SubmitChunk<Item, T>,
    ) -> Result<Self, Error> {
        let chunk = opts.chunksize.min(buffersize);
        let mut map = Map::empty(chunk, buffersize, opts.timeout);
        map.source = Some(Box::new(move || {
            let items = next_chunk(&mut items, chunk);
            if items.is_empty() {
                return None;
            }
            let n = items.len();
            Some(submit(items).map(|f| (f, n)))
        }));
        if let Some(Err(e)) = map.top_up() {
            return Err(e);
        }
        Ok(map)
    }

    /// Submits chunks while there is room in the look-ahead; an error from
    /// submitting is handed back.
    fn top_up(&mut self) -> Option<Result<(), Error>> {
        while self.outstanding + self.chunk <= self.buffersize {
            let source = self.source.as_mut()?;
            match source() {
                None => self.source = None,
                Some(Ok((fut, n))) => {
                    self.outstanding += n;
                    self.pending.push_back((fut, n));
                }
                Some(Err(e)) => {
                    self.source = None;
                    return Some(Err(e));
                }
            }
        }
        None
    }

    /// Ends the iterator: cancels what has not started.
    fn end(&mut self) {
        self.ended = true;
        self.source = None;
        for (fut, _) in self.pending.drain(..) {
            fut.cancel();
        }
    }

    fn end_with(&mut self, e: Error) -> Option<Result<T, Error>> {
        self.end();
        Some(Err(e))
    }
}

impl<T: Send + 'static> Map<T> {
    /// The next item of the chunk being yielded, if there is one: what
    /// `next` returns then.
    fn next_ready(&mut self) -> Option<Option<Result<T, Error>>> {
        let r = self.ready.next()?;
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Err(e) = r {
            return Some(self.end_with(e));
        }
        if let Some(Err(e)) = self.top_up() {
            // The items already submitted come first.
            self.submit_error = Some(e);
        }
        Some(Some(r))
    }

    /// Takes in the answer of the oldest chunk, of `n` items: its results
    /// to yield next, or the error that ends the map.
    fn take_chunk(
        &mut self,
        n: usize,
        answer: Result<Chunk<T>, Error>,
    ) -> Option<Option<Result<T, Error>>> {
        match answer {
            Ok(chunk) => {
                // A chunk that ended early at an error has fewer results.
                self.outstanding = self.outstanding.saturating_sub(n - chunk.len());
                self.ready = chunk.into_iter();
                None
            }
            Err(e) => Some(self.end_with(e)),
        }
    }
}

impl<T: Send + 'static> Iterator for Map<T> {
    type Item = Result<T, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(out) = self.next_ready() {
                return out;
            }
            let Some((fut, n)) = self.pending.pop_front() else {
                self.ended = true;
                return self.submit_error.take().map(Err);
            };
            // Wait without consuming the future, so that one that will not
            // be waited for any more is cancelled with the rest (Python's
            // `_result_or_cancel`): the item that timed out must not run later.
            let waited = match self.deadline {
                None => fut.try_wait(),
                Some(d) => {
                    if fut.wait_timeout(d.saturating_duration_since(Instant::now())) {
                        Ok(())
                    } else {
                        Err(Error::Timeout)
                    }
                }
            };
            if let Err(e) = waited {
                fut.cancel();
                return self.end_with(e);
            }
            if let Some(out) = self.take_chunk(n, fut.result()) {
                return out;
            }
        }
    }
}

/// With the `futures` feature, a `Map` is also a
/// [`Stream`](futures_core::Stream) of the same items in the same order,
/// for async code: polling it never blocks; it is woken when the next
/// result in order is ready.
///
/// It is an `Iterator` as well, so a stream method of the same name needs
/// its trait named: `StreamExt::next(&mut stream).await`.
///
/// Its timeout is checked each time it is polled; nothing wakes it at the
/// deadline itself (futures-core has no timer), so in async code bound the
/// wait with your runtime's timer (`tokio::time::timeout`) if a task may
/// never end.
#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl<T: Send + 'static> futures_core::Stream for Map<T> {
    type Item = Result<T, Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(out) = this.next_ready() {
                return Poll::Ready(out);
            }
            let Some((fut, _)) = this.pending.front_mut() else {
                this.ended = true;
                return Poll::Ready(this.submit_error.take().map(Err));
            };
            if this.deadline.is_some_and(|d| Instant::now() >= d) {
                fut.cancel();
                return Poll::Ready(this.end_with(Error::Timeout));
            }
            let answer = match std::pin::Pin::new(fut).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(answer) => answer,
            };
            let n = this.pending.pop_front().map_or(0, |(_, n)| n);
            if let Some(out) = this.take_chunk(n, answer) {
                return Poll::Ready(out);
            }
        }
    }
}

// A `Map` holds its results by value and never relies on staying at one
// address (no self-references, nothing pinned inside), so moving it after
// a poll is fine whatever `T` is.
impl<T: Send + 'static> Unpin for Map<T> {}

impl<T: Send + 'static> Drop for Map<T> {
    fn drop(&mut self) {
        self.end();
    }
}
