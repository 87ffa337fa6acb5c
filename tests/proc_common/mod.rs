//! Helpers for the test programs that start worker processes. Such a program
//! is its own worker (its `main` calls `serve_if_worker` first), so it cannot
//! use libtest's harness; [`run`] is a small one.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// A bound for things that should finish: wide, for a loaded machine.
pub const LONG: Duration = Duration::from_secs(60);

/// Runs each test whose name contains one of the command-line filters (all
/// when none), prints libtest-style lines, and exits 1 if any failed.
pub fn run(tests: &[(&str, fn())]) {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            filtered += 1;
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!();
    println!(
        "test result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered} filtered out"
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// A path unique to this process and `tag`, removed if it exists. Tasks
/// block until such a file appears, so a test releases them without timing.
pub fn flag_file(tag: &str) -> String {
    let p = std::env::temp_dir().join(format!("twinpool-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p.to_string_lossy().into_owned()
}

/// Blocks until `path` exists (a worker-side helper).
pub fn wait_for_file(path: &str) {
    while !std::path::Path::new(path).exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits up to [`LONG`] for `cond`, polling.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `/proc/PID/stat` lines of this process's children, zombies included.
pub fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1) == Some(&me.as_str()) {
            out.push(stat);
        }
    }
    out
}

/// True while `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, after)| after.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// How many file descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

// ---------------------------------------------------------------------------
// Guarded tests: every test gets a directory for its gates and markers, and a
// guard that leaves no process behind, whatever the test's outcome.
// ---------------------------------------------------------------------------

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file that releases every gate of a test at once. Gates are files in
/// the test's directory; a worker-side wait ([`gate`]) also ends when this
/// file appears there, so a failing test never waits for a task that would
/// block until a gate that is never opened.
pub const RELEASE_ALL: &str = "RELEASE-ALL";

/// The directory of the test that runs now, for the panic hook.
static CURRENT_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
/// The test that runs now and when it started, for the watchdog.
static CURRENT_TEST: Mutex<Option<(String, Instant)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Worker-side: blocks until `path` exists, or the test released all its
/// gates, or `max` has passed. True if `path` itself opened the gate.
pub fn gate(path: &str, max: Duration) -> bool {
    let path = Path::new(path);
    let all = path.parent().map(|d| d.join(RELEASE_ALL));
    let deadline = Instant::now() + max;
    loop {
        if path.exists() {
            return true;
        }
        if all.as_ref().is_some_and(|a| a.exists()) || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The log of task runs in a test's directory.
pub const RUNS_LOG: &str = "runs.log";

/// Worker-side: appends `<tag> <pid>` to the test's run log, to say the
/// task with `tag` runs here. One `write(2)` on an `O_APPEND` file, kept
/// open: atomic between processes, cheap (creating a file per run costs a
/// millisecond here, which would change how tasks batch), and on disk
/// before the task goes on, so it survives a crash right after. Tags must
/// not contain whitespace.
pub fn mark_run(dir: &str, tag: &str) {
    use std::io::Write;
    // Never a log in the working directory (the repository).
    assert!(
        Path::new(dir).is_absolute(),
        "not a test directory: {dir:?}"
    );
    static LOG: Mutex<Option<(String, std::fs::File)>> = Mutex::new(None);
    let mut log = lock(&LOG);
    if log.as_ref().map(|(d, _)| d.as_str()) != Some(dir) {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(Path::new(dir).join(RUNS_LOG))
            .unwrap();
        *log = Some((dir.to_string(), file));
    }
    let line = format!("{tag} {}\n", std::process::id());
    let (_, file) = log.as_mut().unwrap();
    file.write_all(line.as_bytes()).unwrap();
}

/// The runs logged in `dir`, as (tag, pid) pairs, one per run.
pub fn runs(dir: &str) -> Vec<(String, u32)> {
    std::fs::read_to_string(Path::new(dir).join(RUNS_LOG))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (tag, pid) = line.split_once(' ')?;
            Some((tag.to_string(), pid.parse().ok()?))
        })
        .collect()
}

/// How many times the task with `tag` ran, by its markers in `dir`.
pub fn runs_of(dir: &str, tag: &str) -> usize {
    runs(dir).iter().filter(|(t, _)| t == tag).count()
}

/// Waits up to `bound` for the task with `tag` to mark its run; its pid.
pub fn started(dir: &str, tag: &str, bound: Duration) -> Option<u32> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some((_, pid)) = runs(dir).into_iter().find(|(t, _)| t == tag) {
            return Some(pid);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` up to `bound`; true if it came true.
pub fn within(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `(pid, ppid, state)` of every process on the machine.
fn processes() -> Vec<(u32, u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
        if let Some(ppid) = fields.get(1).and_then(|s| s.parse().ok()) {
            out.push((pid, ppid, state));
        }
    }
    out
}

/// Every process descended from this one (children, grandchildren, ...),
/// zombies included, with its state.
pub fn descendants() -> Vec<(u32, char)> {
    let all = processes();
    let mut found: Vec<(u32, char)> = Vec::new();
    let mut parents = vec![std::process::id()];
    while let Some(parent) = parents.pop() {
        for &(pid, ppid, state) in &all {
            if ppid == parent && !found.iter().any(|(p, _)| *p == pid) {
                found.push((pid, state));
                parents.push(pid);
            }
        }
    }
    found
}

/// True if `pid` is a live (not zombie) child of this process: the only
/// processes a test may signal.
pub fn is_live_child(pid: u32) -> bool {
    let me = std::process::id();
    processes()
        .iter()
        .any(|&(p, ppid, state)| p == pid && ppid == me && state != 'Z' && state != 'X')
}

/// The live (not zombie) children of this process.
pub fn live_children() -> Vec<u32> {
    let me = std::process::id();
    processes()
        .into_iter()
        .filter(|&(_, ppid, state)| ppid == me && state != 'Z' && state != 'X')
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Sends `signal` to `pid` if it is a live child of this process.
pub fn signal_child(pid: u32, signal: i32) -> bool {
    // SAFETY: kill(2) on a child of this process, which stays ours (its pid
    // is not reused) until it is reaped.
    is_live_child(pid) && unsafe { libc::kill(pid as i32, signal) } == 0
}

/// SIGCONT to every descendant (a test may have stopped one).
pub fn continue_descendants() {
    for (pid, _) in descendants() {
        // SAFETY: kill(2) on a descendant of this process.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    }
}

/// SIGKILLs every descendant and reaps this process's children (with
/// `PR_SET_CHILD_SUBREAPER`, orphaned grandchildren are children too).
/// Returns what was there.
pub fn kill_descendants() -> Vec<(u32, char)> {
    let first = descendants();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = descendants();
        if now.is_empty() || Instant::now() >= deadline {
            break;
        }
        for &(pid, _) in &now {
            // SAFETY: kill(2) on a descendant of this process.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for &(pid, _) in &now {
            let mut status = 0;
            // SAFETY: waitpid on a pid; ECHILD for one that is not our child.
            unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    first
}

/// A test's directory and its guard. On drop it opens every gate, then
/// waits a little for the test's processes to end, kills and reaps whatever
/// is left, and fails the test (when it has not failed already) if
/// anything was left.
pub struct Guard {
    dir: PathBuf,
}

impl Guard {
    pub fn new(tag: &str) -> Guard {
        let dir =
            std::env::temp_dir().join(format!("twinpool-faults-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        *lock(&CURRENT_DIR) = Some(dir.clone());
        Guard { dir }
    }

    /// The test's directory, for tasks' markers and gates.
    pub fn dir(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// A path in the test's directory.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Opens the gate `name` (creates the file).
    pub fn open(&self, name: &str) {
        std::fs::write(self.dir.join(name), b"").unwrap();
    }

    /// Opens every gate of the test.
    pub fn release_all(&self) {
        let _ = std::fs::write(self.dir.join(RELEASE_ALL), b"");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.release_all();
        continue_descendants();
        let panicking = std::thread::panicking();
        if !panicking {
            within(Duration::from_secs(10), || descendants().is_empty());
        }
        let left = kill_descendants();
        *lock(&CURRENT_DIR) = None;
        let _ = std::fs::remove_dir_all(&self.dir);
        if !left.is_empty() {
            let msg = format!("the test left processes behind (pid, state): {left:?}");
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Counts of what a pool may leak, in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub fds: usize,
    pub threads: usize,
    pub children: usize,
    pub zombies: usize,
    /// Entries in /dev/shm.
    pub dev_shm: usize,
    /// Distinct shared-memory (memfd) files mapped.
    pub memfd_maps: usize,
}

impl Census {
    pub fn now() -> Census {
        let kids = children();
        let zombies = kids
            .iter()
            .filter(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, a)| a.split_whitespace().next())
                    .is_some_and(|st| st == "Z")
            })
            .count();
        Census {
            fds: open_fds(),
            threads: count_dir("/proc/self/task"),
            children: kids.len() - zombies,
            zombies,
            dev_shm: count_dir("/dev/shm"),
            memfd_maps: memfd_maps("self"),
        }
    }

    /// True if no count is above `before`'s.
    pub fn within(&self, before: &Census) -> bool {
        self.fds <= before.fds
            && self.threads <= before.threads
            && self.children <= before.children
            && self.zombies <= before.zombies
            && self.dev_shm <= before.dev_shm
            && self.memfd_maps <= before.memfd_maps
    }

    /// Waits up to `bound` for the counts to come back to `before`'s; the
    /// last census taken.
    pub fn back_to(before: &Census, bound: Duration) -> Census {
        Census::until(bound, |now| now.within(before))
    }

    /// Takes a census until `ok` holds for it, for up to `bound`; the last
    /// census taken.
    pub fn until(bound: Duration, mut ok: impl FnMut(&Census) -> bool) -> Census {
        let mut now = Census::now();
        within(bound, || {
            now = Census::now();
            ok(&now)
        });
        now
    }
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

/// Distinct memfd files mapped by process `pid` ("self" for this one).
pub fn memfd_maps(pid: &str) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut inodes: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("/memfd:"))
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    inodes.len()
}

/// How many fds process `pid` has open.
pub fn fds_of(pid: u32) -> usize {
    count_dir(&format!("/proc/{pid}/fd"))
}

/// Longest a guarded test may run before the watchdog calls it hung.
pub const TEST_BUDGET: Duration = Duration::from_secs(240);

/// [`run`] for tests that start processes: each test's panics open its gates
/// (so unwinding never waits on a blocked task), a watchdog turns a hung
/// test into a failure, and the program fails if any process is left at
/// the end. Orphaned grandchildren are adopted (child subreaper) so they can
/// be seen and reaped.
pub fn run_guarded(tests: &[(&str, fn())]) {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            if let Some(dir) = lock(&CURRENT_DIR).clone() {
                let _ = std::fs::write(dir.join(RELEASE_ALL), b"");
            }
            continue_descendants();
        }
        default_hook(info);
    }));
    std::thread::spawn(watchdog);
    let timed: Vec<(&str, fn())> = tests.to_vec();
    let started = Instant::now();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    for (name, test) in timed {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            filtered += 1;
            continue;
        }
        *lock(&CURRENT_TEST) = Some((name.to_string(), Instant::now()));
        let t0 = Instant::now();
        let outcome = std::panic::catch_unwind(test);
        *lock(&CURRENT_TEST) = None;
        let secs = t0.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                println!("test {name} ... ok ({secs:.1} s)");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED ({secs:.1} s)");
                failed += 1;
            }
        }
    }
    let left = kill_descendants();
    if !left.is_empty() {
        println!("processes left at the end of the program (pid, state): {left:?}");
        failed += 1;
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!();
    println!(
        "test result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered} filtered out; finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Turns a hung test into a failure: past [`TEST_BUDGET`] it opens the
/// test's gates; if the test still does not end, it kills every descendant
/// and ends the program.
fn watchdog() {
    let mut warned: Option<String> = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some((name, since)) = lock(&CURRENT_TEST).clone() else {
            continue;
        };
        let over = since.elapsed();
        if over > TEST_BUDGET && warned.as_deref() != Some(name.as_str()) {
            eprintln!("watchdog: test {name} hung for {over:?}; opening its gates");
            if let Some(dir) = lock(&CURRENT_DIR).clone() {
                let _ = std::fs::write(dir.join(RELEASE_ALL), b"");
            }
            continue_descendants();
            warned = Some(name.clone());
        }
        if over > TEST_BUDGET + Duration::from_secs(60) {
            println!("test {name} ... FAILED (hung; watchdog ends the program)");
            let left = kill_descendants();
            println!("killed (pid, state): {left:?}");
            if let Some(dir) = lock(&CURRENT_DIR).take() {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(1);
        }
    }
}
