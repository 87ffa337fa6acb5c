//! Named, type-erased tasks.
//!
//! A process pool cannot send a closure to another process, so work that
//! crosses is named: the parent and its workers build the same [`Registry`],
//! the parent sends a name and an encoded argument, the worker looks the name
//! up and calls the function. Each entry keeps the function twice: as itself,
//! for the thread back end to call directly when the types match, and behind
//! an encoded-bytes adapter for worker processes.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[cfg(feature = "process")]
use crate::schema::LazyShape;
#[cfg(feature = "process")]
use crate::Error;

/// Calls a registered function on an encoded argument; gives the encoded
/// result.
#[cfg(feature = "process")]
pub(crate) type BytesFn = dyn Fn(&[u8]) -> Result<Vec<u8>, Error> + Send + Sync;

/// Calls a registered function on each of an encoded sequence of arguments,
/// stopping at the first panic: the encoded results of those that
/// succeeded, and the failure. The caller catches nothing: panics are
/// caught per item inside.
#[cfg(feature = "process")]
pub(crate) type ChunkFn = dyn Fn(&[u8]) -> (Vec<u8>, Option<Error>) + Send + Sync;

/// One registered task.
pub(crate) struct Entry {
    pub(crate) name: Arc<str>,
    pub(crate) arg_type: &'static str,
    pub(crate) ret_type: &'static str,
    arg_id: TypeId,
    ret_id: TypeId,
    /// An `Arc<dyn Fn(A) -> R + Send + Sync>`.
    direct: Box<dyn Any + Send + Sync>,
    #[cfg(feature = "process")]
    pub(crate) call_bytes: Box<BytesFn>,
    #[cfg(feature = "process")]
    pub(crate) call_chunk: Box<ChunkFn>,
    /// The structure of the argument type, for the handshake to compare
    /// with a worker's: unlike `arg_type`, it tells two layouts of one
    /// struct apart. Traced on first use.
    #[cfg(feature = "process")]
    #[allow(dead_code)] // read by the handshake, which is being rebuilt
    pub(crate) arg_shape: LazyShape,
    /// The structure of the result type, as `arg_shape`.
    #[cfg(feature = "process")]
    #[allow(dead_code)] // read by the handshake, which is being rebuilt
    pub(crate) ret_shape: LazyShape,
}

type DirectFn<A, R> = Arc<dyn Fn(A) -> R + Send + Sync>;

/// A named task whose argument and result types the compiler knows: what
/// [`#[task]`](crate::task) makes of a function (the `macros` feature), or
/// what a program writes by hand for a unit struct.
///
/// The string API calls a task by its name and checks the types at run time
/// (`submit_named::<u64, String>("square", 3)` compiles, and its future
/// ends in [`Error::Decode`](crate::Error::Decode)). A `Task` is registered
/// with [`Registry::task`] and submitted with
/// [`Executor::submit_task`](crate::Executor::submit_task) or
/// [`Executor::map_task`](crate::Executor::map_task), which take
/// `Self::Arg` and give `Future<Self::Output>`: a wrong type does not
/// compile. Under the hood it is the same named task: `NAME` is what
/// crosses to a worker, so a worker program registers it the same way.
///
/// ```
/// use twinpool::{Executor, Registry, Task};
///
/// #[derive(Clone, Copy)]
/// struct Square;
///
/// impl Task for Square {
///     type Arg = u64;
///     type Output = u64;
///     const NAME: &'static str = "square";
///     fn run(x: u64) -> u64 {
///         x * x
///     }
/// }
///
/// let ex = Executor::builder().threads(2).registry(Registry::new().task(Square)).build()?;
/// assert_eq!(ex.submit_task(Square, 7)?.result()?, 49);
/// # Ok::<(), twinpool::Error>(())
/// ```
pub trait Task: Copy + Send + Sync + 'static {
    /// The argument (several arguments: a tuple).
    type Arg: Serialize + DeserializeOwned + Send + 'static;
    /// The result.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The name it is registered and sent under.
    const NAME: &'static str;
    /// Runs the task.
    fn run(arg: Self::Arg) -> Self::Output;
}

impl Entry {
    /// The function itself, if it takes `A` and returns `R`.
    pub(crate) fn direct<A: 'static, R: 'static>(&self) -> Option<DirectFn<A, R>> {
        if self.arg_id != TypeId::of::<A>() || self.ret_id != TypeId::of::<R>() {
            return None;
        }
        self.direct.downcast_ref::<DirectFn<A, R>>().cloned()
    }

    /// True if the task takes `A` and returns `R`.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn matches<A: 'static, R: 'static>(&self) -> bool {
        self.arg_id == TypeId::of::<A>() && self.ret_id == TypeId::of::<R>()
    }

    /// The sentence for a call with other types than registered.
    pub(crate) fn type_mismatch<A, R>(&self) -> crate::Error {
        crate::Error::Decode {
            what: format!("the argument of task {:?}", self.name),
            detail: format!(
                "it was registered as fn({}) -> {} but called as fn({}) -> {}; \
                 call it with the registered types",
                self.arg_type,
                self.ret_type,
                std::any::type_name::<A>(),
                std::any::type_name::<R>()
            ),
        }
    }
}

/// Task functions by name, shared by a pool and its worker processes.
///
/// Build the same registry in the parent and in every worker (the usual way:
/// one function that returns it, called in `main` before
/// [`serve_if_worker`](crate::serve_if_worker)). Arguments and results are
/// serde types; use a tuple for several arguments.
///
/// ```
/// fn square(x: u64) -> u64 { x * x }
///
/// let registry = twinpool::Registry::new()
///     .register("square", square)
///     .register("add", |(a, b): (i64, i64)| a + b);
/// assert!(registry.contains("add"));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Arc<Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.tasks.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a typed task under its [`Task::NAME`]: the same as
    /// `register(T::NAME, T::run)`, so that
    /// [`Executor::submit_task`](crate::Executor::submit_task) can check its
    /// types at compile time. Panics, as `register` does, if the name is
    /// taken.
    pub fn task<T: Task>(self, _task: T) -> Registry {
        self.register(T::NAME, T::run)
    }

    /// Adds `f` under `name`.
    ///
    /// # Panics
    /// If `name` is registered already: two functions under one name is a
    /// programming error, caught by the first test that builds the registry.
    pub fn register<A, R, F>(mut self, name: &str, f: F) -> Registry
    where
        A: DeserializeOwned + Serialize + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        assert!(
            !self.tasks.contains_key(name),
            "twinpool: the task name {name:?} is registered twice; each name must be unique"
        );
        let f: DirectFn<A, R> = Arc::new(f);
        let name: Arc<str> = name.into();
        #[cfg(feature = "process")]
        let call_bytes: Box<BytesFn> = {
            let f = f.clone();
            let name = name.clone();
            Box::new(move |bytes: &[u8]| {
                let arg: A =
                    crate::codec::decode(bytes, || format!("the argument of task {name:?}"))?;
                crate::codec::encode(&f(arg), || format!("the result of task {name:?}"))
            })
        };
        #[cfg(feature = "process")]
        let call_chunk: Box<ChunkFn> = {
            let f = f.clone();
            let name = name.clone();
            Box::new(move |bytes: &[u8]| chunk_call(&*f, &name, bytes))
        };
        let entry = Entry {
            name: name.clone(),
            arg_type: std::any::type_name::<A>(),
            ret_type: std::any::type_name::<R>(),
            arg_id: TypeId::of::<A>(),
            ret_id: TypeId::of::<R>(),
            direct: Box::new(f),
            #[cfg(feature = "process")]
            call_bytes,
            #[cfg(feature = "process")]
            call_chunk,
            #[cfg(feature = "process")]
            arg_shape: LazyShape::of::<A>(),
            #[cfg(feature = "process")]
            ret_shape: LazyShape::of::<R>(),
        };
        self.tasks.insert(name.to_string(), Arc::new(entry));
        self
    }

    /// True if a task is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }

    /// The registered names, in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    pub(crate) fn get(&self, name: &str) -> Result<&Arc<Entry>, crate::Error> {
        self.tasks
            .get(name)
            .ok_or_else(|| crate::Error::NotRegistered { name: name.into() })
    }

    /// Every entry, in name order.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.tasks.values()
    }
}

/// Runs `f` on each argument of an encoded chunk, in order, until one
/// panics; encodes the results as one sequence.
#[cfg(feature = "process")]
fn chunk_call<A, R>(
    f: &(dyn Fn(A) -> R + Send + Sync),
    name: &str,
    bytes: &[u8],
) -> (Vec<u8>, Option<Error>)
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let items: Vec<A> =
        match crate::codec::decode_seq(bytes, || format!("the arguments of task {name:?}")) {
            Ok(items) => items,
            Err(e) => return (Vec::new(), Some(e)),
        };
    let mut results = Vec::with_capacity(items.len());
    let mut failure = None;
    for item in items {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item))) {
            Ok(r) => results.push(r),
            Err(p) => {
                failure = Some(Error::from_panic(p));
                break;
            }
        }
    }
    match crate::codec::encode_seq(&results, || format!("the results of task {name:?}")) {
        Ok(bytes) => (bytes, failure),
        Err(e) => (Vec::new(), Some(e)),
    }
}

#[cfg(all(test, feature = "process"))]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Job {
        id: u32,
        tags: Vec<String>,
    }

    fn tasks() -> Registry {
        Registry::new()
            .register("len", |job: Job| job.tags.len() as u64 + u64::from(job.id))
            .register("bytes", |b: Vec<u8>| b)
    }

    #[test]
    fn entries_carry_the_shapes_of_their_types() {
        let registry = tasks();
        let len = registry.get("len").unwrap();
        assert_eq!(
            len.arg_shape.get().canonical(),
            "struct Job { id: u32, tags: seq<str> }"
        );
        assert_eq!(len.ret_shape.get().canonical(), "u64");
        let bytes = registry.get("bytes").unwrap();
        assert_eq!(bytes.arg_shape.get().canonical(), "raw(seq<u8>)");
        // Two builds of one registry (here: two calls) agree.
        let again = tasks();
        assert_eq!(
            again.get("len").unwrap().arg_shape.get().fingerprint(),
            len.arg_shape.get().fingerprint()
        );
    }
}
