//! Which rank gets which task: the MPI pool's policy, a state machine with
//! no threads, no clock and no MPI calls (the shape of
//! `process/scheduler.rs`, one level up).
//!
//! A rank runs its tasks in a local process pool of its own, whose
//! scheduler handles everything inside the rank: time limits, retries,
//! crashes, `max_tasks_per_child`. This one only decides how the tasks are
//! spread over the ranks, and how the pool as a whole ends.
//!
//! | event | from |
//! |---|---|
//! | [`submit`](Dispatch::submit), [`kill`](Dispatch::kill), [`shutdown`](Dispatch::shutdown), [`terminate`](Dispatch::terminate) | the user's threads |
//! | [`done`](Dispatch::done), [`closed`](Dispatch::closed), [`heard`](Dispatch::heard) | the MPI thread, from a rank's messages |
//! | [`tick`](Dispatch::tick) | the MPI thread, every 100 ms |
//!
//! # Words
//!
//! * **room**: how many tasks a rank may hold unanswered: enough that its
//!   workers never wait for the next message, and no more, so that a task
//!   does not queue behind a slow rank while another has nothing to do. It
//!   follows the rank's pace (the mean time between its answers while it
//!   is busy): as many tasks as it finishes in [`AHEAD`], between
//!   [`MIN_DEPTH`] and [`MAX_DEPTH`] per local worker; [`DEPTH`] per
//!   worker before the first answers. So tiny tasks are pipelined deeply,
//!   and long ones are held back here, where `cancel` still works.
//! * **lost**: a rank silent for longer than the *silence* allowed (a
//!   serving rank says it is alive twice a second). Its process died: the
//!   tasks it held end in [`Error::BrokenPool`], and it gets nothing more.
//!   (Under `mpirun` MPI ends the whole job when a rank dies; ranks this
//!   process spawned can die alone.)
//! * **on** a rank: sent to it and not yet answered. A task is marked
//!   running as it is sent (so `cancel` is refused from then on, as in
//!   Python's pools for the tasks handed to their call queue).
//!
//! # Invariants
//!
//! Checked after every step of the seeded simulation below:
//!
//! 1. Every task ends exactly once: by its answer, by one [`Action::Fail`],
//!    or by its owner's cancel before it was sent.
//! 2. No rank holds more tasks than its room.
//! 3. A killed task's late answer is dropped; a cancelled task is never
//!    sent.
//! 4. Nothing is sent after a rank was told to close, and every rank is
//!    told once, after its last task was answered.
//! 5. [`Action::Finished`] comes once, after every rank answered its close.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::process::scheduler::{Handle, TaskId, TaskMap};
use crate::Error;

/// Tasks per local worker a rank may hold before its pace is known.
pub(crate) const DEPTH: usize = 4;
/// The fewest and the most tasks per local worker a rank may hold.
pub(crate) const MIN_DEPTH: usize = 2;
pub(crate) const MAX_DEPTH: usize = 128;
/// How much of a rank's work is sent ahead of its answers.
pub(crate) const AHEAD: Duration = Duration::from_millis(5);

/// What the I/O layer must do, in order.
#[derive(Debug)]
pub(crate) enum Action<H> {
    /// Send these tasks, each with its time limit, to rank `rank`.
    Run {
        rank: usize,
        tasks: Vec<(H, Option<Duration>)>,
    },
    /// Ask rank `rank` to stop `task`.
    Kill { rank: usize, task: TaskId },
    /// End this task with this error (it may be on a rank: its answer will
    /// be dropped).
    Fail(H, Error),
    /// Ask every local worker of rank `rank` to stop with `signal`.
    Signal { rank: usize, signal: i32 },
    /// Ask rank `rank` to shut its local pool down.
    Close { rank: usize, cancel: bool },
    /// Every task has ended and every rank has closed.
    Finished,
}

struct Rank {
    /// Its local workers.
    workers: usize,
    load: usize,
    /// The mean time between its answers while it is busy (a moving
    /// average), once known.
    pace: Option<Duration>,
    /// When its last answer came, while it is busy.
    last_answer: Option<Instant>,
    /// Told to close.
    closing: bool,
    /// Answered its close, or lost.
    closed: bool,
    lost: bool,
    /// When it was last heard from.
    heard: Instant,
    /// How errors name it ("MPI rank 2 on node7").
    label: String,
}

struct On<H> {
    rank: usize,
    handle: H,
    /// Ended here already (killed, or failed by `terminate`): its answer is
    /// dropped.
    ended: bool,
}

/// The policy; see the module doc.
pub(crate) struct Dispatch<H> {
    ranks: Vec<Rank>,
    queue: VecDeque<(H, Option<Duration>)>,
    on: TaskMap<On<H>>,
    /// `Some(cancel)` once shut down.
    shutdown: Option<bool>,
    /// How long a rank may be silent before it counts as lost.
    silence: Duration,
    /// The time of the latest event that told it.
    now: Instant,
    finished: bool,
    actions: Vec<Action<H>>,
}

impl Rank {
    /// How many tasks it may hold now.
    fn room(&self) -> usize {
        let per_worker = match self.pace {
            None => DEPTH,
            Some(pace) => {
                let n = AHEAD.as_nanos() / pace.as_nanos().max(1);
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                (n / self.workers).clamp(MIN_DEPTH, MAX_DEPTH)
            }
        };
        per_worker.saturating_mul(self.workers)
    }

    /// One of its tasks was answered at `now`.
    fn answered(&mut self, now: Instant) {
        if let Some(last) = self.last_answer {
            // Answers come in batches: the gaps average to the time per
            // task (a moving average over about 16 answers).
            let gap = now.saturating_duration_since(last);
            self.pace = Some(match self.pace {
                None => gap,
                Some(p) => (p * 15 + gap) / 16,
            });
        }
        self.load = self.load.saturating_sub(1);
        // An idle time is no part of its pace.
        self.last_answer = (self.load > 0).then_some(now);
    }
}

impl<H: Handle> Dispatch<H> {
    /// A dispatcher over ranks with these numbers of local workers and
    /// these names, all heard from at `now`, that counts a rank silent for
    /// `silence` as lost.
    pub(crate) fn new(ranks: Vec<(usize, String)>, now: Instant, silence: Duration) -> Self {
        Dispatch {
            ranks: ranks
                .into_iter()
                .map(|(w, label)| Rank {
                    label,
                    workers: w.max(1),
                    load: 0,
                    pace: None,
                    last_answer: None,
                    closing: false,
                    closed: false,
                    lost: false,
                    heard: now,
                })
                .collect(),
            queue: VecDeque::new(),
            on: TaskMap::default(),
            shutdown: None,
            silence,
            now,
            finished: false,
            actions: Vec::new(),
        }
    }

    /// The actions queued since the last call.
    pub(crate) fn take_actions(&mut self) -> Vec<Action<H>> {
        std::mem::take(&mut self.actions)
    }

    /// Tasks waiting here.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Tasks on a rank.
    pub(crate) fn on_ranks(&self) -> usize {
        self.on.len()
    }

    /// A new task, with its time limit, at `now`. The front end refuses
    /// submits after
    /// [`shutdown`](Self::shutdown); one that comes anyway ends in
    /// [`Error::Shutdown`].
    pub(crate) fn submit(&mut self, task: H, limit: Option<Duration>, now: Instant) {
        self.now = self.now.max(now);
        if self.shutdown.is_some() {
            self.actions.push(Action::Fail(task, Error::Shutdown));
            return;
        }
        if !self.alive() {
            self.actions.push(Action::Fail(task, all_lost()));
            return;
        }
        self.queue.push_back((task, limit));
        self.pump();
    }

    /// Rank `rank` answered `task` at `now`: its handle, if the answer is
    /// its result.
    pub(crate) fn done(&mut self, rank: usize, task: TaskId, now: Instant) -> Option<H> {
        self.now = self.now.max(now);
        let on = self.on.get(&task)?;
        if on.rank != rank {
            return None;
        }
        let on = self.on.remove(&task)?;
        if let Some(r) = self.ranks.get_mut(rank) {
            r.answered(now);
        }
        self.pump();
        self.maybe_close();
        (!on.ended).then_some(on.handle)
    }

    /// `Future::kill` of a task that runs: it ends now in
    /// [`Error::Killed`], and its rank is asked to stop it. A task still
    /// queued here was cancelled by the future itself.
    pub(crate) fn kill(&mut self, task: TaskId) {
        if let Some(on) = self.on.get_mut(&task) {
            if !on.ended {
                on.ended = true;
                self.actions.push(Action::Fail(
                    on.handle.clone(),
                    Error::Killed {
                        how: "Future::kill, on its rank".into(),
                    },
                ));
                self.actions.push(Action::Kill {
                    rank: on.rank,
                    task,
                });
            }
        }
    }

    /// Takes no more tasks; cancels the queued ones if `cancel`. Each rank
    /// is told to close once it has answered its last task.
    pub(crate) fn shutdown(&mut self, cancel: bool) {
        let cancel = cancel || self.shutdown == Some(true);
        self.shutdown = Some(cancel);
        if cancel {
            for (task, _) in self.queue.drain(..) {
                task.cancel();
            }
        }
        self.maybe_close();
        self.maybe_finish();
    }

    /// `kill_workers` / `terminate_workers`: shuts down, cancelling what is
    /// queued, and has every rank stop its workers with `signal`; their
    /// tasks end in `Error::Killed` as their ranks answer.
    pub(crate) fn terminate(&mut self, signal: i32) {
        self.shutdown(true);
        for (rank, r) in self.ranks.iter().enumerate() {
            if !r.closing {
                self.actions.push(Action::Signal { rank, signal });
            }
        }
    }

    /// Rank `rank` has shut its local pool down.
    pub(crate) fn closed(&mut self, rank: usize) {
        if let Some(r) = self.ranks.get_mut(rank) {
            if r.closing {
                r.closed = true;
            }
        }
        self.maybe_finish();
    }

    /// Rank `rank` said something at `now`.
    pub(crate) fn heard(&mut self, rank: usize, now: Instant) {
        if let Some(r) = self.ranks.get_mut(rank) {
            r.heard = r.heard.max(now);
        }
    }

    /// The time is `now`: ranks silent for too long are lost.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let silence = self.silence;
        let lost: Vec<usize> = (self.ranks.iter().enumerate())
            .filter(|(_, r)| !r.closed && now.saturating_duration_since(r.heard) > silence)
            .map(|(i, _)| i)
            .collect();
        for rank in lost {
            self.lose(rank);
        }
    }

    /// True while some rank is not lost.
    pub(crate) fn alive(&self) -> bool {
        self.ranks.iter().any(|r| !r.lost)
    }

    /// True if rank `rank` was lost.
    pub(crate) fn is_lost(&self, rank: usize) -> bool {
        self.ranks.get(rank).is_some_and(|r| r.lost)
    }

    /// True if a rank was lost.
    pub(crate) fn lost_any(&self) -> bool {
        self.ranks.iter().any(|r| r.lost)
    }

    /// Rank `rank` is gone: its tasks fail, and it counts as closed.
    fn lose(&mut self, rank: usize) {
        let Some(r) = self.ranks.get_mut(rank) else {
            return;
        };
        r.lost = true;
        r.closing = true;
        r.closed = true;
        r.load = 0;
        let silence = self.silence;
        let label = r.label.clone();
        let gone: Vec<TaskId> = (self.on.iter())
            .filter(|(_, on)| on.rank == rank)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(on) = self.on.remove(&id) {
                if !on.ended {
                    let reason = format!(
                        "{label}, which held the task, said nothing for {silence:?}: its \
                         process died, or its machine is gone"
                    );
                    self.actions
                        .push(Action::Fail(on.handle, Error::BrokenPool { reason }));
                }
            }
        }
        if !self.alive() {
            for (task, _) in self.queue.drain(..) {
                self.actions.push(Action::Fail(task, all_lost()));
            }
        }
        self.pump();
        self.maybe_close();
        self.maybe_finish();
    }

    fn maybe_finish(&mut self) {
        if !self.finished && self.shutdown.is_some() && self.ranks.iter().all(|r| r.closed) {
            self.finished = true;
            self.actions.push(Action::Finished);
        }
    }

    /// Sends what can be sent: each task to the rank with the fewest tasks
    /// per worker among those with room, in batches.
    fn pump(&mut self) {
        let mut batches: Vec<Vec<(H, Option<Duration>)>> = Vec::new();
        while !self.queue.is_empty() {
            let best = self
                .ranks
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.closing && r.load < r.room())
                .min_by_key(|(i, r)| (r.load * 1024 / r.workers, *i))
                .map(|(i, _)| i);
            let Some(rank) = best else { break };
            let Some((task, limit)) = self.queue.pop_front() else {
                break;
            };
            if !task.claim() {
                // Cancelled by its owner while queued: it has ended.
                continue;
            }
            let r = &mut self.ranks[rank];
            if r.load == 0 {
                // Its pace counts from now: the first answer's gap is the
                // time the first task took.
                r.last_answer = Some(self.now);
            }
            r.load += 1;
            self.on.insert(
                task.id(),
                On {
                    rank,
                    handle: task.clone(),
                    ended: false,
                },
            );
            if batches.len() <= rank {
                batches.resize_with(rank + 1, Vec::new);
            }
            batches[rank].push((task, limit));
        }
        for (rank, tasks) in batches.into_iter().enumerate() {
            if !tasks.is_empty() {
                self.actions.push(Action::Run { rank, tasks });
            }
        }
    }

    /// After shutdown, tells each rank with nothing left to close.
    fn maybe_close(&mut self) {
        let Some(cancel) = self.shutdown else { return };
        if !self.queue.is_empty() {
            return;
        }
        for (rank, r) in self.ranks.iter_mut().enumerate() {
            if !r.closing && r.load == 0 {
                r.closing = true;
                self.actions.push(Action::Close { rank, cancel });
            }
        }
    }
}

fn all_lost() -> Error {
    Error::BrokenPool {
        reason: "every MPI rank of the pool is lost (their processes died, or their \
                 machines are gone); build a new executor"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[derive(Clone)]
    struct T(TaskId, Rc<Cell<bool>>);

    impl Handle for T {
        fn id(&self) -> TaskId {
            self.0
        }
        fn claim(&self) -> bool {
            !self.1.replace(true)
        }
        fn cancel(&self) -> bool {
            false
        }
    }

    /// Runs `n` tasks through one rank of 2 workers, each answered `each`
    /// after the one before; returns the rank's room at the end.
    fn room_after(each: Duration, n: u64) -> usize {
        let start = Instant::now();
        let mut d = Dispatch::new(vec![(2, "rank".into())], start, Duration::MAX);
        let mut now = start;
        for id in 0..n {
            d.submit(T(id, Rc::default()), None, now);
        }
        let mut next = 0;
        while next < n {
            now += each;
            d.take_actions();
            // Each task is on the rank by the time it is answered.
            assert!(d.done(0, next, now).is_some());
            next += 1;
        }
        d.ranks[0].room()
    }

    #[test]
    fn tiny_tasks_are_sent_far_ahead_and_long_ones_are_held_back() {
        // Before any answer: DEPTH per worker.
        let d: Dispatch<T> = Dispatch::new(vec![(2, "r".into())], Instant::now(), Duration::MAX);
        assert_eq!(d.ranks[0].room(), 2 * DEPTH);
        // 10 µs a task: 5 ms of work is 500 tasks, capped per worker.
        assert_eq!(room_after(Duration::from_micros(10), 300), 2 * MAX_DEPTH);
        // 100 µs a task: 50 tasks, 25 per worker.
        assert_eq!(room_after(Duration::from_micros(100), 300), 50);
        // A second a task: the least, MIN_DEPTH per worker.
        assert_eq!(room_after(Duration::from_secs(1), 40), 2 * MIN_DEPTH);
    }
}

#[cfg(test)]
mod sim {
    //! A seeded simulation: random submits, answers (in any order), kills,
    //! cancels, shutdowns and terminations, with the invariants of the
    //! module doc checked after every step. A failing seed is printed;
    //! `TWINPOOL_SIM_SEED=n` replays it alone.

    use std::cell::Cell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use super::*;

    const PENDING: u8 = 0;
    const RUNNING: u8 = 1;
    const ENDED: u8 = 2;

    #[derive(Clone, Debug)]
    struct Task {
        id: TaskId,
        state: Rc<Cell<u8>>,
        ends: Rc<Cell<u32>>,
    }

    impl Task {
        fn end(&self) {
            self.state.set(ENDED);
            self.ends.set(self.ends.get() + 1);
        }
    }

    impl Handle for Task {
        fn id(&self) -> TaskId {
            self.id
        }
        fn claim(&self) -> bool {
            if self.state.get() == PENDING {
                self.state.set(RUNNING);
                true
            } else {
                false
            }
        }
        fn cancel(&self) -> bool {
            if self.state.get() == PENDING {
                self.end();
                true
            } else {
                false
            }
        }
    }

    /// xorshift64*: small, and the same on every machine.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    struct World {
        d: Dispatch<Task>,
        tasks: Vec<Task>,
        /// What each rank holds, as the ranks see it.
        held: Vec<Vec<TaskId>>,
        close_told: Vec<u32>,
        closed_sent: Vec<bool>,
        finished: u32,
        killed: Vec<TaskId>,
        workers: Vec<usize>,
        /// Ranks whose process died: they say nothing more.
        dead: Vec<bool>,
    }

    impl World {
        fn apply(&mut self) {
            for a in self.d.take_actions() {
                match a {
                    Action::Run { rank, tasks } => {
                        assert!(self.close_told[rank] == 0, "a send after close");
                        assert!(!self.d.ranks[rank].lost, "a send to a lost rank");
                        for (t, _) in tasks {
                            assert_eq!(t.state.get(), RUNNING, "a task sent unclaimed");
                            self.held[rank].push(t.id);
                        }
                        let room = self.d.ranks[rank].room();
                        assert!(self.held[rank].len() <= room, "rank {rank} over its room");
                        let most = self.workers[rank].max(1) * MAX_DEPTH;
                        assert!(
                            room <= most
                                && room >= self.workers[rank].max(1) * MIN_DEPTH.min(DEPTH)
                        );
                    }
                    Action::Kill { rank, task } => {
                        assert!(self.held[rank].contains(&task) || self.is_ended(task));
                    }
                    Action::Fail(t, _) => {
                        if t.state.get() != ENDED {
                            t.end();
                        }
                        assert_eq!(t.ends.get(), 1, "task {} ended twice", t.id);
                    }
                    Action::Signal { .. } => {}
                    Action::Close { rank, .. } => {
                        assert!(
                            self.dead[rank] || self.held[rank].is_empty(),
                            "close with tasks left"
                        );
                        self.close_told[rank] += 1;
                        assert_eq!(self.close_told[rank], 1, "rank told to close twice");
                    }
                    Action::Finished => {
                        self.finished += 1;
                        assert!((0..self.closed_sent.len())
                            .all(|r| self.closed_sent[r] || self.d.ranks[r].lost));
                    }
                }
            }
        }

        fn is_ended(&self, id: TaskId) -> bool {
            self.tasks[id as usize].state.get() == ENDED
        }
    }

    fn run(seed: u64) {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let workers: Vec<usize> = (0..1 + rng.below(4)).map(|_| rng.below(3)).collect();
        let n = workers.len();
        let silence = Duration::from_millis(20);
        let start = Instant::now();
        let mut now = start;
        let mut w = World {
            d: Dispatch::new(
                (workers.iter().enumerate())
                    .map(|(i, &w)| (w, format!("rank {i}")))
                    .collect(),
                start,
                silence,
            ),
            dead: vec![false; workers.len()],
            tasks: Vec::new(),
            held: vec![Vec::new(); n],
            close_told: vec![0; n],
            closed_sent: vec![false; n],
            finished: 0,
            killed: Vec::new(),
            workers,
        };
        let mut answered: HashMap<TaskId, u32> = HashMap::new();
        for _ in 0..400 {
            // A millisecond passes; the live ranks say they are alive.
            now += Duration::from_millis(1);
            for rank in 0..n {
                if !w.dead[rank] && rng.below(2) == 0 {
                    w.d.heard(rank, now);
                }
            }
            w.d.tick(now);
            w.apply();
            match rng.below(10) {
                0..=3 => {
                    let t = Task {
                        id: w.tasks.len() as TaskId,
                        state: Rc::new(Cell::new(PENDING)),
                        ends: Rc::new(Cell::new(0)),
                    };
                    w.tasks.push(t.clone());
                    w.d.submit(t, None, now);
                }
                4..=6 => {
                    // A rank answers one of its tasks, in any order.
                    let rank = rng.below(n);
                    if !w.dead[rank] && !w.held[rank].is_empty() {
                        let i = rng.below(w.held[rank].len());
                        let id = w.held[rank].swap_remove(i);
                        if let Some(t) = w.d.done(rank, id, now) {
                            assert!(!w.killed.contains(&id), "a killed task's answer used");
                            t.end();
                            assert_eq!(t.ends.get(), 1);
                            *answered.entry(id).or_default() += 1;
                        }
                    }
                }
                7 => {
                    if !w.tasks.is_empty() {
                        let t = w.tasks[rng.below(w.tasks.len())].clone();
                        // Future::kill: cancel if pending, else the pool.
                        if !t.cancel() && t.state.get() == RUNNING {
                            w.killed.push(t.id);
                            w.d.kill(t.id);
                        }
                    }
                }
                8 => {
                    if !w.tasks.is_empty() {
                        let t = &w.tasks[rng.below(w.tasks.len())];
                        t.cancel();
                    }
                }
                _ => match rng.below(10) {
                    0 => w.d.shutdown(rng.below(2) == 0),
                    1 => w.d.terminate(9),
                    2 => {
                        // A rank's process dies, with what it held.
                        let rank = rng.below(n);
                        w.dead[rank] = true;
                        w.held[rank].clear();
                    }
                    _ => {
                        // A rank told to close answers.
                        let rank = rng.below(n);
                        if !w.dead[rank] && w.close_told[rank] == 1 && !w.closed_sent[rank] {
                            w.closed_sent[rank] = true;
                            w.d.closed(rank);
                        }
                    }
                },
            }
            w.apply();
        }
        // The end: shut down, every live rank answers all, then its close;
        // the dead ones fall silent for good.
        w.d.shutdown(false);
        w.apply();
        now += silence * 2;
        for rank in 0..n {
            if !w.dead[rank] {
                w.d.heard(rank, now);
            }
        }
        w.d.tick(now);
        w.apply();
        for rank in 0..n {
            while let Some(id) = w.held[rank].pop() {
                if let Some(t) = w.d.done(rank, id, now) {
                    t.end();
                }
                w.apply();
            }
        }
        for rank in 0..n {
            if !w.closed_sent[rank] && !w.dead[rank] && !w.d.ranks[rank].lost {
                assert_eq!(
                    w.close_told[rank], 1,
                    "seed {seed}: rank {rank} never closed"
                );
                w.closed_sent[rank] = true;
                w.d.closed(rank);
                w.apply();
            }
        }
        assert_eq!(w.finished, 1, "seed {seed}: not finished once");
        for t in &w.tasks {
            assert_eq!(
                t.ends.get(),
                1,
                "seed {seed}: task {} ended {} times",
                t.id,
                t.ends.get()
            );
        }
        assert_eq!(w.d.queued() + w.d.on_ranks(), 0);
    }

    #[test]
    fn seeded_runs_keep_the_invariants() {
        if let Some(seed) = std::env::var("TWINPOOL_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return run(seed);
        }
        for seed in 0..2000 {
            let r = std::panic::catch_unwind(|| run(seed));
            assert!(
                r.is_ok(),
                "failed seed {seed}; replay: TWINPOOL_SIM_SEED={seed}"
            );
        }
    }
}
