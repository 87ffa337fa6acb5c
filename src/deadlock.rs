//! Who waits on whom: the bookkeeping that turns a hang into `Error::Deadlock`.
//!
//! Every pool thread knows which task it is running (a stack, because a thread
//! that helps runs a second task inside the wait of the first). When such a
//! task blocks without a timeout on other tasks, it records an edge "this task
//! waits for those" in one process-wide graph, under one lock. Before adding
//! the edge it asks whether the wait could ever end: it could not when every
//! way forward leads back to the waiting task. Then the wait is refused with
//! [`Error::Deadlock`] instead of blocking.
//!
//! A wait on *all* of several tasks is doomed when any of them is; a wait on
//! the *first* of several only when all of them are. Waits with a timeout add
//! no edge: they end by themselves, so nothing waiting on them is doomed.
//! Threads outside every pool never record anything and are never refused.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::Error;

/// A task's id and, for named tasks, its name: enough to describe it.
pub(crate) struct TaskTag {
    pub(crate) id: u64,
    pub(crate) name: Option<std::sync::Arc<str>>,
}

thread_local! {
    /// The pool this thread works for; 0 off pool threads.
    static POOL: Cell<u64> = const { Cell::new(0) };
    /// This pool thread's name, for messages.
    static THREAD: RefCell<String> = const { RefCell::new(String::new()) };
    /// The task this thread is running, innermost first when a wait runs
    /// another task inline; null when none. It points into the task's
    /// shared state, which outlives the `running` call that set it.
    static CURRENT: Cell<*const TaskTag> = const { Cell::new(std::ptr::null()) };
}

/// One recorded blocking wait.
struct Edge {
    /// Describes the waiting task, for the error message.
    who: String,
    /// True when the wait needs all targets, false when any one will do.
    all: bool,
    targets: Vec<u64>,
}

static GRAPH: Mutex<Option<HashMap<u64, Edge>>> = Mutex::new(None);

fn graph() -> MutexGuard<'static, Option<HashMap<u64, Edge>>> {
    // The graph holds no invariant a panic could break half-way.
    GRAPH.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks the current thread as a worker of `pool` (ids start at 1) named
/// `thread`.
pub(crate) fn enter_worker(pool: u64, thread: String) {
    POOL.with(|p| p.set(pool));
    THREAD.with(|t| *t.borrow_mut() = thread);
}

/// The pool this thread works for, if any.
pub(crate) fn current_pool() -> Option<u64> {
    match POOL.with(Cell::get) {
        0 => None,
        pool => Some(pool),
    }
}

/// Runs `f` as task `tag` on this thread: a blocking wait inside `f` is
/// recorded as this task's. Cheap: a pointer is set and restored.
pub(crate) fn running<R>(tag: &TaskTag, f: impl FnOnce() -> R) -> R {
    struct Restore(*const TaskTag);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(tag)));
    f()
}

/// The task this pool thread is running, described for messages.
fn current_task() -> Option<(u64, String)> {
    current_pool()?;
    let tag = CURRENT.with(Cell::get);
    // SAFETY: a non-null CURRENT was set by `running`, which is still on
    // this thread's stack, and points into state its caller keeps alive.
    let tag = unsafe { tag.as_ref() }?;
    Some((tag.id, THREAD.with(|t| describe(tag, &t.borrow()))))
}

/// Removes the edge of a wait when the wait ends.
pub(crate) struct WaitGuard {
    task: u64,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some(g) = graph().as_mut() {
            g.remove(&self.task);
        }
    }
}

fn describe(tag: &TaskTag, thread: &str) -> String {
    match &tag.name {
        Some(name) => format!("task #{} ({name:?}) on thread {thread}", tag.id),
        None => format!("task #{} on thread {thread}", tag.id),
    }
}

/// Records that the current task is about to block, without a timeout, on
/// `targets` (all of them when `all`, else the first to finish).
///
/// Returns `Ok(None)` off pool threads, `Ok(Some(guard))` when the wait may
/// block (drop the guard when it ends) and `Err(Deadlock)` when it never could
/// end.
pub(crate) fn begin_wait(targets: &[u64], all: bool) -> Result<Option<WaitGuard>, Error> {
    let me = current_task();
    let Some((me, who)) = me else {
        return Ok(None);
    };
    let mut guard = graph();
    let g = guard.get_or_insert_with(HashMap::new);
    let doomed = Search {
        g: &*g,
        me,
        done: HashMap::new(),
        open: HashSet::new(),
    }
    .wait_is_doomed(all, targets);
    if let Some(path) = doomed {
        let mut cycle = who;
        for (i, id) in path.iter().enumerate() {
            let sep = if i == 0 {
                " waits for "
            } else {
                ", which waits for "
            };
            if let Some(edge) = g.get(id) {
                cycle.push_str(sep);
                cycle.push_str(&edge.who);
            }
        }
        cycle.push_str(", which waits for the first");
        return Err(Error::Deadlock { cycle });
    }
    g.insert(
        me,
        Edge {
            who,
            all,
            targets: targets.to_vec(),
        },
    );
    Ok(Some(WaitGuard { task: me }))
}

/// A search for a way back to `me` through the recorded waits.
struct Search<'a> {
    g: &'a HashMap<u64, Edge>,
    me: u64,
    /// Tasks already decided: `Some(path back to me)` when doomed.
    done: HashMap<u64, Option<Vec<u64>>>,
    /// Tasks on the current search path.
    open: HashSet<u64>,
}

impl Search<'_> {
    /// If a wait on `targets` (all of them, or the first) could never end,
    /// the tasks through which it comes back to `me`.
    fn wait_is_doomed(&mut self, all: bool, targets: &[u64]) -> Option<Vec<u64>> {
        let mut first = None;
        for &t in targets {
            match self.task_is_doomed(t) {
                Some(path) if all => return Some(path),
                Some(path) => first = first.or(Some(path)),
                None if !all => return None,
                None => {}
            }
        }
        if all {
            None
        } else {
            first
        }
    }

    /// If task `t` can never finish while `me` is blocked, the path from `t`
    /// back to `me` (`t` first; `me` itself gives an empty path).
    fn task_is_doomed(&mut self, t: u64) -> Option<Vec<u64>> {
        if t == self.me {
            return Some(Vec::new());
        }
        if let Some(known) = self.done.get(&t) {
            return known.clone();
        }
        // A task already on the search path closes a cycle without `me`:
        // those tasks are stuck already, but that gives `me` no way back.
        let edge = self.g.get(&t)?; // not blocked: it will finish
        if !self.open.insert(t) {
            return None;
        }
        let result = self.wait_is_doomed(edge.all, &edge.targets).map(|rest| {
            let mut path = vec![t];
            path.extend(rest);
            path
        });
        self.open.remove(&t);
        self.done.insert(t, result.clone());
        result
    }
}
