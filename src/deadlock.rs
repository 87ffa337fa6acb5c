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
//! Whether a task can still finish is a least fixpoint over the recorded
//! waits (see [`doomed`]): a task that is not blocked can finish; a task
//! waiting for *all* of its targets can once all of them can; a task waiting
//! for the *first* of them once one of them can. The new wait is doomed
//! when, with it recorded, the waiting task cannot finish. Computing the
//! fixpoint, rather than searching paths depth-first, matters for mixed
//! waits: a depth-first search must cut the search off at a task already
//! on its path, and must not then remember that task's answer as final.
//!
//! Every recorded wait passed this check when it began, so before the new
//! one every recorded task could finish; a task that cannot finish now is
//! stuck because of the new wait, and the tasks that cannot finish lead
//! back to the waiter. The error names the shortest such cycle.
//!
//! Waits with a timeout add no edge: they end by themselves, so nothing
//! waiting on them is doomed. Threads outside every pool never record
//! anything and are never refused.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::Error;

/// A task as this module sees it: its id and, for named tasks, its name,
/// enough to describe it. Both are asked for only when a task waits.
pub(crate) trait Tagged {
    /// The task's id, unique in this process.
    fn task_id(&self) -> u64;
    /// The task's name, for named tasks.
    fn task_name(&self) -> Option<std::sync::Arc<str>>;
}

thread_local! {
    /// The pool this thread works for; 0 off pool threads.
    static POOL: Cell<u64> = const { Cell::new(0) };
    /// This pool thread's name, for messages.
    static THREAD: RefCell<String> = const { RefCell::new(String::new()) };
    /// The task this thread is running, innermost first when a wait runs
    /// another task inline; `None` when none. It points into the task's
    /// shared state, which outlives the `running` call that set it.
    static CURRENT: Cell<Option<NonNull<dyn Tagged>>> = const { Cell::new(None) };
}

thread_local! {
    /// Tasks this pool thread ran inline while it waited (see
    /// `Shared::try_help`), and how many of them failed, since its pool
    /// last took the count ([`take_helped`]). Kept here, beside the rest of
    /// what a pool thread knows of the tasks it runs, so that the future
    /// needs to know nothing of pools.
    static HELPED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Counts a task this thread ran inline while waiting.
pub(crate) fn note_helped(failed: bool) {
    let _ = HELPED.try_with(|h| {
        let (n, f) = h.get();
        h.set((n + 1, f + u64::from(failed)));
    });
}

/// The tasks this thread ran inline since the last call, and how many of
/// them failed.
pub(crate) fn take_helped() -> (u64, u64) {
    HELPED.try_with(|h| h.replace((0, 0))).unwrap_or((0, 0))
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

static NEXT_POOL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new pool's id, unique in the process: what [`current_pool`] answers
/// on the pool's threads.
pub(crate) fn next_pool_id() -> u64 {
    NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
pub(crate) fn running<R>(tag: &(dyn Tagged + 'static), f: impl FnOnce() -> R) -> R {
    struct Restore(Option<NonNull<dyn Tagged>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(Some(NonNull::from(tag)))));
    f()
}

/// The task this pool thread is running, described for messages.
fn current_task() -> Option<(u64, String)> {
    current_pool()?;
    let tag = CURRENT.with(Cell::get)?;
    // SAFETY: a CURRENT that is set was set by `running`, which is still on
    // this thread's stack, and points into state its caller keeps alive.
    let tag = unsafe { tag.as_ref() };
    let id = tag.task_id();
    Some((
        id,
        THREAD.with(|t| describe(id, tag.task_name(), &t.borrow())),
    ))
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

fn describe(id: u64, name: Option<std::sync::Arc<str>>, thread: &str) -> String {
    match name {
        Some(name) => format!("task #{id} ({name:?}) on thread {thread}"),
        None => format!("task #{id} on thread {thread}"),
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
    if let Some(cycle) = doomed(&*g, me, all, targets) {
        let mut text = who;
        for (i, id) in cycle.path.iter().enumerate() {
            let sep = if i == 0 {
                " waits for "
            } else {
                ", which waits for "
            };
            if let Some(edge) = g.get(id) {
                text.push_str(sep);
                text.push_str(&edge.who);
            }
        }
        match g.get(&cycle.closes) {
            Some(edge) if cycle.closes != me => {
                text.push_str(", which waits for ");
                text.push_str(&edge.who);
                text.push_str(" again");
            }
            _ => text.push_str(", which waits for the first"),
        }
        return Err(Error::Deadlock { cycle: text });
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

/// The recorded waits as the search reads them: who waits, whether for all
/// of its targets, and for which.
trait Waits {
    /// The wait task `t` is blocked in, if any.
    fn wait_of(&self, t: u64) -> Option<(bool, &[u64])>;
}

impl Waits for HashMap<u64, Edge> {
    fn wait_of(&self, t: u64) -> Option<(bool, &[u64])> {
        self.get(&t).map(|e| (e.all, &e.targets[..]))
    }
}

/// Why a wait is doomed: the tasks through which it comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cycle {
    /// The tasks in order: the waiting task waits for the first, each for
    /// the next, and the last for `closes`. None of them can finish.
    path: Vec<u64>,
    /// The task the last one waits for: the waiting task itself, unless the
    /// wait leads into a knot of stuck tasks that does not come back to it.
    closes: u64,
}

/// If task `me`, about to wait for `targets` (`all` of them, or the first
/// to finish), could then never finish: the [`Cycle`] that holds it.
///
/// Over the tasks reachable from `me` through the waits (`me`'s own wait
/// being the new one), it computes which can still finish, as a least
/// fixpoint, with a work list: a task that is not blocked (nor `me`) can
/// finish; a blocked task can once as many of its targets can as it needs
/// (all of them, or one); an empty wait ends at once. Each task that can
/// finish is counted once against each task waiting on it, so the cost is
/// the number of (task, target) pairs reachable.
fn doomed(waits: &impl Waits, me: u64, all: bool, targets: &[u64]) -> Option<Cycle> {
    let wait_of = |t: u64| {
        if t == me {
            Some((all, targets))
        } else {
            waits.wait_of(t)
        }
    };
    // The reachable blocked tasks, each with its distinct targets; and who
    // waits on each task.
    let mut blocked: HashMap<u64, (bool, Vec<u64>)> = HashMap::new();
    let mut waiters: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut can: HashSet<u64> = HashSet::new();
    let mut finished: VecDeque<u64> = VecDeque::new();
    let mut seen: HashSet<u64> = HashSet::from([me]);
    let mut open = vec![me];
    while let Some(t) = open.pop() {
        let Some((all, ts)) = wait_of(t) else {
            can.insert(t);
            finished.push_back(t);
            continue;
        };
        let mut distinct = ts.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for &u in &distinct {
            waiters.entry(u).or_default().push(t);
            if seen.insert(u) {
                open.push(u);
            }
        }
        blocked.insert(t, (all, distinct));
    }
    // How many more targets each blocked task needs.
    let mut need: HashMap<u64, usize> = HashMap::new();
    for (&t, (all, ts)) in &blocked {
        let n = if *all { ts.len() } else { ts.len().min(1) };
        if n == 0 {
            can.insert(t);
            finished.push_back(t);
        } else {
            need.insert(t, n);
        }
    }
    while let Some(f) = finished.pop_front() {
        for &w in waiters.get(&f).map_or(&[][..], |w| &w[..]) {
            let Some(n) = need.get_mut(&w) else { continue };
            *n -= 1;
            if *n == 0 {
                need.remove(&w);
                if can.insert(w) {
                    finished.push_back(w);
                }
            }
        }
    }
    if can.contains(&me) {
        return None;
    }
    Some(stuck_path(&blocked, &can, me))
}

/// The shortest path from `me` back to itself through tasks that cannot
/// finish; failing that, one into a knot of such tasks. Every task that
/// cannot finish waits for at least one other such task (all its targets,
/// for a wait on the first), so the walk never runs dry.
fn stuck_path(blocked: &HashMap<u64, (bool, Vec<u64>)>, can: &HashSet<u64>, me: u64) -> Cycle {
    let stuck_targets = |t: u64| {
        blocked
            .get(&t)
            .into_iter()
            .flat_map(|(_, ts)| ts.iter().copied())
            .filter(|u| !can.contains(u))
    };
    // Breadth first from `me`, for the shortest way back.
    let mut parent: HashMap<u64, u64> = HashMap::new();
    let mut queue = VecDeque::from([me]);
    while let Some(t) = queue.pop_front() {
        for u in stuck_targets(t) {
            if u == me {
                let mut path = vec![];
                let mut at = t;
                while at != me {
                    path.push(at);
                    // Every task queued but `me` has a parent.
                    let Some(&up) = parent.get(&at) else { break };
                    at = up;
                }
                path.reverse();
                return Cycle { path, closes: me };
            }
            if let Entry::Vacant(e) = parent.entry(u) {
                e.insert(t);
                queue.push_back(u);
            }
        }
    }
    // No way back to `me` (the recorded waits were stuck without it): walk
    // to the first task seen twice.
    let mut path = Vec::new();
    let mut on_path = HashSet::from([me]);
    let mut at = me;
    loop {
        let Some(next) = stuck_targets(at).next() else {
            return Cycle { path, closes: at };
        };
        if !on_path.insert(next) {
            return Cycle { path, closes: next };
        }
        path.push(next);
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built graph: task -> (all, targets).
    struct Graph(HashMap<u64, (bool, Vec<u64>)>);

    impl Waits for Graph {
        fn wait_of(&self, t: u64) -> Option<(bool, &[u64])> {
            self.0.get(&t).map(|(all, ts)| (*all, &ts[..]))
        }
    }

    const ALL: bool = true;
    const ANY: bool = false;

    fn graph(waits: &[(u64, bool, &[u64])]) -> Graph {
        Graph(
            waits
                .iter()
                .map(|&(t, all, ts)| (t, (all, ts.to_vec())))
                .collect(),
        )
    }

    #[test]
    fn a_wait_on_a_task_that_is_not_blocked_is_fine() {
        assert_eq!(doomed(&graph(&[]), 1, ALL, &[2]), None);
        assert_eq!(doomed(&graph(&[(2, ALL, &[3])]), 1, ALL, &[2]), None);
    }

    #[test]
    fn a_two_task_cycle_is_doomed() {
        let g = graph(&[(2, ALL, &[1])]);
        assert_eq!(
            doomed(&g, 1, ALL, &[2]),
            Some(Cycle {
                path: vec![2],
                closes: 1
            })
        );
    }

    #[test]
    fn a_wait_on_itself_is_doomed() {
        assert_eq!(
            doomed(&graph(&[]), 1, ALL, &[1]),
            Some(Cycle {
                path: vec![],
                closes: 1
            })
        );
    }

    #[test]
    fn an_empty_wait_ends_at_once() {
        assert_eq!(doomed(&graph(&[]), 1, ANY, &[]), None);
        assert_eq!(doomed(&graph(&[]), 1, ALL, &[]), None);
    }

    #[test]
    fn all_is_doomed_by_one_target_and_first_only_by_all() {
        // 2 waits for 1; 3 is free.
        let g = graph(&[(2, ALL, &[1])]);
        assert!(doomed(&g, 1, ALL, &[3, 2]).is_some());
        assert_eq!(doomed(&g, 1, ANY, &[3, 2]), None);
        assert!(doomed(&g, 1, ANY, &[2]).is_some());
    }

    /// The shape a depth-first search with a "not doomed" cache got wrong:
    /// m (1) waits for a (2); a for the first of b (3) or c (4); b for a;
    /// c for m. Whichever of the four waits comes last, it is refused.
    #[test]
    fn a_cycle_through_a_wait_on_the_first_is_found_whichever_wait_closes_it() {
        let (m, a, b, c) = (1, 2, 3, 4);
        let waits: [(u64, bool, &[u64]); 4] = [
            (m, ALL, &[a]),
            (a, ANY, &[b, c]),
            (b, ALL, &[a]),
            (c, ALL, &[m]),
        ];
        for last in 0..4 {
            let others: Vec<_> = (0..4).filter(|&i| i != last).map(|i| waits[i]).collect();
            let (me, all, targets) = waits[last];
            let found = doomed(&graph(&others), me, all, targets);
            let cycle = found.unwrap_or_else(|| panic!("missed with task {me} last"));
            assert_eq!(cycle.closes, me);
            assert_path(&graph(&others), me, targets, &cycle);
        }
        // And with a's targets the other way round.
        let g = graph(&[(a, ANY, &[c, b]), (b, ALL, &[a]), (c, ALL, &[m])]);
        assert_eq!(
            doomed(&g, m, ALL, &[a]),
            Some(Cycle {
                path: vec![a, c],
                closes: m
            })
        );
    }

    #[test]
    fn a_wait_on_the_first_with_one_way_out_is_fine() {
        // a (2) waits for the first of b (3) or c (4); b waits for m; c is
        // not blocked: m's wait on a ends when c does.
        let g = graph(&[(2, ANY, &[3, 4]), (3, ALL, &[1])]);
        assert_eq!(doomed(&g, 1, ALL, &[2]), None);
    }

    /// Checks that `cycle` is a real path: `me` waits for its first task,
    /// each task waits for the next, the last for `closes`.
    fn assert_path(g: &Graph, me: u64, targets: &[u64], cycle: &Cycle) {
        let mut from = targets;
        for &t in &cycle.path {
            assert!(from.contains(&t), "{cycle:?} is no path");
            from = g.wait_of(t).map_or(&[][..], |(_, ts)| ts);
        }
        assert!(from.contains(&cycle.closes), "{cycle:?} does not close");
        assert!(cycle.closes == me || cycle.path.contains(&cycle.closes));
    }

    /// A small, fixed pseudo-random sequence (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Which tasks of `all_waits` (task -> wait, every task in 1..=n) can
    /// finish: the least fixpoint, by brute force as the intersection of
    /// every set closed under "can finish" (Knaster-Tarski).
    fn finishable_by_brute_force(n: u64, waits: &HashMap<u64, (bool, Vec<u64>)>) -> Vec<bool> {
        let ids: Vec<u64> = (1..=n).collect();
        let mut least = (1u32 << n) - 1;
        for set in 0..(1u32 << n) {
            let has = |t: u64| set & (1 << (t - 1)) != 0;
            let closed = ids.iter().all(|&t| {
                let can = match waits.get(&t) {
                    None => true,
                    Some((true, ts)) => ts.iter().all(|&u| has(u)),
                    Some((false, ts)) => ts.is_empty() || ts.iter().any(|&u| has(u)),
                };
                !can || has(t)
            });
            if closed {
                least &= set;
            }
        }
        ids.iter().map(|&t| least & (1 << (t - 1)) != 0).collect()
    }

    /// Whether `me` reaches itself through tasks that cannot finish.
    fn comes_back(me: u64, waits: &HashMap<u64, (bool, Vec<u64>)>, finishable: &[bool]) -> bool {
        let mut seen = HashSet::new();
        let mut open = vec![me];
        while let Some(t) = open.pop() {
            for &u in waits.get(&t).map_or(&[][..], |(_, ts)| ts) {
                if finishable[(u - 1) as usize] {
                    continue;
                }
                if u == me {
                    return true;
                }
                if seen.insert(u) {
                    open.push(u);
                }
            }
        }
        false
    }

    #[test]
    fn random_small_graphs_agree_with_brute_force() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut doomed_seen = 0;
        for _ in 0..20_000 {
            let n = 1 + rng.below(6);
            let mut waits = HashMap::new();
            for t in 1..=n {
                // Task 1 is the one about to wait: it always has a wait.
                if t != 1 && rng.below(3) == 0 {
                    continue;
                }
                let all = rng.below(2) == 0;
                let k = rng.below(4);
                let targets: Vec<u64> = (0..k).map(|_| 1 + rng.below(n)).collect();
                waits.insert(t, (all, targets));
            }
            let (all, targets) = waits[&1].clone();
            let recorded = Graph(
                waits
                    .iter()
                    .filter(|(&t, _)| t != 1)
                    .map(|(&t, w)| (t, w.clone()))
                    .collect(),
            );
            let finishable = finishable_by_brute_force(n, &waits);
            let found = doomed(&recorded, 1, all, &targets);
            assert_eq!(
                found.is_some(),
                !finishable[0],
                "graph {waits:?}: doomed {found:?}, brute force says finishable {finishable:?}"
            );
            if let Some(cycle) = found {
                doomed_seen += 1;
                assert_path(&recorded, 1, &targets, &cycle);
                for &t in &cycle.path {
                    assert!(!finishable[(t - 1) as usize], "{t} in {cycle:?} can finish");
                }
                if comes_back(1, &waits, &finishable) {
                    assert_eq!(cycle.closes, 1, "{waits:?}: {cycle:?}");
                }
            }
        }
        assert!(
            doomed_seen > 1000,
            "the graphs cover doomed waits: {doomed_seen}"
        );
    }
}
