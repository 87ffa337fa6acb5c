//! Starting worker processes, checking their handshake, and reaping them.
//!
//! The pool opens an ipc-channel one-shot server per worker and starts the
//! worker program with the server's name in [`SERVER_ENV`], in a process
//! group of its own (so that a kill reaches the processes its tasks start).
//! The worker connects and sends a [`Hello`]: its protocol version, the
//! tasks it holds with the structure of their types, and its channels.
//! ipc-channel's `accept` blocks until something connects, so it runs on a
//! helper thread and the pool waits for it with a deadline, watching the
//! child meanwhile. Several workers start at once and share one deadline.
//!
//! Every child this module starts is reaped by it or handed over in a
//! [`Connected`]; on every error path the child is killed and reaped, and
//! its accept thread is released and joined.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};

use super::frames::{Hello, TaskInfo, MEMORY_LIMIT_ENV, PARENT_ENV, PROTOCOL_VERSION, SERVER_ENV};
use crate::error::WorkerExit;
use crate::{Error, Registry};

/// How workers are started.
#[derive(Debug, Clone)]
pub(crate) struct StartOptions {
    /// The worker program.
    pub(crate) program: PathBuf,
    /// How long the workers of one start have to connect.
    pub(crate) connect_timeout: Duration,
    /// Each worker's address-space limit, in bytes.
    pub(crate) memory_limit: Option<u64>,
}

/// A started, connected and checked worker.
pub(crate) struct Connected {
    pub(crate) child: Child,
    pub(crate) hello: Hello,
}

/// A worker started but not yet connected.
struct Starting {
    child: Child,
    server_name: String,
    accepted: Receiver<Result<Hello, String>>,
    accept_thread: Option<JoinHandle<()>>,
}

/// The program workers run: the given one, or this executable.
pub(crate) fn worker_program(given: Option<&PathBuf>) -> Result<PathBuf, Error> {
    match given {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().map_err(|e| Error::Spawn {
            reason: format!(
                "could not find the current executable to re-run as a worker ({e}); \
                 name a worker program with Builder::worker_program"
            ),
        }),
    }
}

/// Starts `n` workers at once and waits for them to connect, all within one
/// `connect_timeout`. If starting one fails (no such program, out of file
/// descriptors or processes), no more are started and the rest get the same
/// error.
pub(crate) fn start_many(
    opts: &StartOptions,
    n: usize,
    registry: &Registry,
) -> Vec<Result<Connected, Error>> {
    let deadline = Instant::now().checked_add(opts.connect_timeout);
    let (starting, refused) = start_in_parallel(opts, n);
    let mut results: Vec<Result<Connected, Error>> = starting
        .into_iter()
        .map(|s| {
            s.connect(deadline, opts, registry)
                .map_err(name_fd_shortage)
        })
        .collect();
    if let Some(e) = refused {
        let e = name_fd_shortage(e);
        results.resize_with(n, || Err(e.clone()));
    }
    results
}

/// Starts `n` workers, spreading the starts over up to one thread per CPU:
/// `posix_spawn` waits until its child has exec'd, which takes long enough
/// (half a millisecond and more) that doing it one after the other showed
/// in a pool's start. After a refusal no more are started; the refusal is
/// returned beside the workers that did start.
fn start_in_parallel(opts: &StartOptions, n: usize) -> (Vec<Starting>, Option<Error>) {
    let refused: Mutex<Option<Error>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    let share = || {
        let mut mine = Vec::new();
        while next.fetch_add(1, Ordering::Relaxed) < n {
            if lock(&refused).is_some() {
                break;
            }
            match start(opts) {
                Ok(s) => mine.push(s),
                Err(e) => {
                    lock(&refused).get_or_insert(e);
                    break;
                }
            }
        }
        mine
    };
    let helpers = std::thread::available_parallelism()
        .map_or(1, |c| c.get())
        .min(n)
        .saturating_sub(1);
    let starting = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..helpers)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("twinpool-start".into())
                    .spawn_scoped(scope, share)
                    .ok()
            })
            .collect();
        let mut all = share();
        for t in threads {
            // `share` has no path that panics (every error is a value).
            if let Ok(more) = t.join() {
                all.extend(more);
            }
        }
        all
    });
    (
        starting,
        refused.into_inner().unwrap_or_else(PoisonError::into_inner),
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds to a start error that this process has (nearly) run out of file
/// descriptors, when it has: that is then the cause, whatever failed
/// first (a channel, an accept, a handshake whose descriptors could not be
/// received, or the worker itself, which inherits the limit).
fn name_fd_shortage(e: Error) -> Error {
    let Error::Spawn { reason } = e else {
        return e;
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    let limit = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } {
        0 => usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX),
        _ => usize::MAX,
    };
    // Each worker takes about ten descriptors while it connects.
    if open.saturating_add(12) < limit {
        return Error::Spawn { reason };
    }
    Error::Spawn {
        reason: format!(
            "this process ran out of file descriptors while it started workers ({open} of its \
             {limit} are open: Too many open files, os error 24); raise the limit (ulimit -n) \
             or start fewer workers. What failed: {reason}"
        ),
    }
}

/// Starts one worker; [`Starting::connect`] waits for it.
fn start(opts: &StartOptions) -> Result<Starting, Error> {
    let (server, server_name) = IpcOneShotServer::<Hello>::new().map_err(|e| Error::Spawn {
        reason: format!("could not open a channel for a new worker: {e}"),
    })?;
    let mut cmd = Command::new(&opts.program);
    cmd.env(SERVER_ENV, &server_name)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        // Its own process group: a kill reaches whatever its tasks start.
        .process_group(0);
    // A worker is no rank of an MPI job, even when its pool runs in one:
    // without these, a worker of a rank's pool (or a program one of its
    // tasks starts) would take itself for a rank (see `mpi::rank`).
    for var in crate::RANK_ENV {
        cmd.env_remove(var);
    }
    if let Some(limit) = opts.memory_limit {
        cmd.env(MEMORY_LIMIT_ENV, limit.to_string());
        // Printing a backtrace after a failed allocation would overwrite
        // the error number that tells the worker's abort handler why it
        // aborts (see `worker.rs`).
        cmd.env_remove("RUST_BACKTRACE");
    }
    // No `pre_exec` hook: it would make std fork the whole parent instead
    // of using posix_spawn, several times slower for a large parent.
    let child = cmd.spawn().map_err(|e| Error::Spawn {
        reason: match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => format!(
                "could not run the worker program {}: {e}; check that it exists and is \
                 executable (Builder::worker_program)",
                opts.program.display()
            ),
            _ => format!(
                "the system refused to start the worker program {}: {e}",
                opts.program.display()
            ),
        },
    })?;
    let (tx, accepted) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("twinpool-accept".into())
        .spawn(move || {
            // ipc-channel asserts on some system calls (out of file
            // descriptors): a panic is an error like any other.
            let result = std::panic::catch_unwind(move || server.accept())
                .map_err(|p| {
                    let why = crate::error::panic_message(&*p);
                    crate::error::drop_panic_payload(p);
                    why
                })
                .and_then(|r| r.map(|(_, hello)| hello).map_err(|e| e.to_string()));
            let _ = tx.send(result);
        });
    let mut starting = Starting {
        child,
        server_name,
        accepted,
        accept_thread: None,
    };
    match spawned {
        Ok(thread) => {
            starting.accept_thread = Some(thread);
            Ok(starting)
        }
        Err(e) => {
            starting.stop();
            Err(Error::Spawn {
                reason: format!("could not start a thread to accept a worker: {e}"),
            })
        }
    }
}

impl Starting {
    /// Waits until the worker connects, exits, or `deadline` passes, then
    /// checks its handshake against `registry`.
    fn connect(
        mut self,
        deadline: Option<Instant>,
        opts: &StartOptions,
        registry: &Registry,
    ) -> Result<Connected, Error> {
        let program = opts.program.display();
        let failed = |reason: String| Error::Spawn { reason };
        let hello = loop {
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(POLL),
                None => POLL,
            };
            match self.accepted.recv_timeout(wait) {
                Ok(Ok(hello)) => break hello,
                Ok(Err(e)) => {
                    let status = self.stop();
                    return Err(failed(format!(
                        "could not accept the connection of worker program {program}: {e}; it {}",
                        describe_status(status)
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.stop();
                    return Err(failed(format!(
                        "lost the connection of worker program {program}; it {}",
                        describe_status(status)
                    )));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if exited(&self.child) {
                // It may have connected just before it exited, or the
                // accept may have failed in this process: that says more.
                let accepted = self.accepted.recv_timeout(Duration::from_millis(50));
                let status = self.stop();
                return Err(failed(match accepted {
                    Ok(Err(e)) => format!(
                        "could not accept the connection of worker program {program}: {e}; it {}",
                        describe_status(status)
                    ),
                    _ => format!(
                        "worker program {program} {} before connecting to the pool; does its \
                         main call twinpool::serve_if_worker first (and does a wrapper script \
                         exec it)?",
                        describe_status(status)
                    ),
                }));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.stop();
                return Err(failed(format!(
                    "worker program {program} did not connect within {:?}; does its main call \
                     twinpool::serve_if_worker first? (Builder::connect_timeout sets the limit)",
                    opts.connect_timeout
                )));
            }
        };
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        if let Err(reason) = check_hello(&hello, registry) {
            self.stop();
            return Err(failed(format!(
                "worker program {program} does not match this pool: {reason}"
            )));
        }
        Ok(Connected {
            child: self.child,
            hello,
        })
    }

    /// Kills and reaps the child, and frees and joins the accept thread.
    fn stop(&mut self) -> Option<ExitStatus> {
        let status = reap(&mut self.child, Duration::ZERO);
        if let Some(t) = self.accept_thread.take() {
            // `accept` blocks until something connects: connect and hang
            // up, so that its thread ends.
            if !t.is_finished() {
                if let Ok(tx) = IpcSender::<Hello>::connect(self.server_name.clone()) {
                    drop(tx);
                }
            }
            let _ = t.join();
        }
        status
    }
}

/// How often a start looks at its child while it waits for the connection.
const POLL: Duration = Duration::from_millis(20);

/// Checks that the worker speaks our protocol and holds every task of
/// `registry` with the same types, down to their structure.
fn check_hello(hello: &Hello, registry: &Registry) -> Result<(), String> {
    check_version(hello.version)?;
    let ours: Vec<TaskInfo> = registry.entries().map(|e| task_info(e)).collect();
    check_tasks(&ours, &hello.tasks)
}

/// Checks that the other side speaks our protocol version.
pub(crate) fn check_version(theirs: u32) -> Result<(), String> {
    if theirs != PROTOCOL_VERSION {
        return Err(format!(
            "it speaks twinpool protocol {theirs} but this pool speaks {PROTOCOL_VERSION}; \
             build both with the same twinpool version"
        ));
    }
    Ok(())
}

/// Checks that `theirs` (what a worker holds) has every task of `ours` (what
/// the pool may send) with the same types, down to their structure.
pub(crate) fn check_tasks(ours: &[TaskInfo], theirs: &[TaskInfo]) -> Result<(), String> {
    for ours in ours {
        let Some(theirs) = theirs.iter().find(|t| t.name == ours.name) else {
            return Err(format!(
                "it has no task named {:?}; register it in the worker's registry too",
                ours.name
            ));
        };
        if theirs.arg_type != ours.arg_type || theirs.ret_type != ours.ret_type {
            return Err(format!(
                "its task {:?} is fn({}) -> {} but this pool's is fn({}) -> {}",
                ours.name, theirs.arg_type, theirs.ret_type, ours.arg_type, ours.ret_type
            ));
        }
        for (what, a, b) in [
            ("argument", &theirs.arg_shape, &ours.arg_shape),
            ("result", &theirs.ret_shape, &ours.ret_shape),
        ] {
            if a.0 != b.0 {
                return Err(format!(
                    "the {what} type of its task {:?} has another layout: the worker's is {} \
                     but this pool's is {}; build the pool and the worker from the same source",
                    ours.name, a.1, b.1
                ));
            }
        }
    }
    Ok(())
}

/// How a registered task is described in a handshake.
pub(crate) fn task_info(entry: &crate::registry::Entry) -> TaskInfo {
    let (arg, ret) = (entry.arg_shape.get(), entry.ret_shape.get());
    TaskInfo {
        name: entry.name.to_string(),
        arg_type: entry.arg_type.to_string(),
        ret_type: entry.ret_type.to_string(),
        arg_shape: (arg.fingerprint(), arg.canonical().to_string()),
        ret_shape: (ret.fingerprint(), ret.canonical().to_string()),
    }
}

/// True once `child` has exited; it is left unreaped (a zombie), so its
/// process id, and the id of its process group, cannot be reused yet.
pub(crate) fn exited(child: &Child) -> bool {
    exited_pid(child.id())
}

/// [`exited`], by the process id of a child of ours that is not reaped.
fn exited_pid(pid: u32) -> bool {
    let pid: libc::id_t = pid;
    // SAFETY: a zeroed siginfo_t is a valid value, and waitid writes only
    // into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child's pid; WNOWAIT leaves it unreaped.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed).
    r != 0 || unsafe { info.si_pid() } != 0
}

/// Sends `signal` to `child` and every process of its group. The child
/// must not have been reaped (see [`exited`]): its id then still names its
/// group and nothing else.
pub(crate) fn signal_group(child: &Child, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) touches no memory. The child is unreaped, so its
        // group id is still its own (rule kept by every caller: only
        // `reap` reaps, and it signals first).
        unsafe { libc::kill(-pid, signal) };
    }
}

/// Waits up to `timeout` for our unreaped child `pid` to exit, leaving it
/// unreaped; true if it has. Woken by the exit itself through a pidfd
/// (Linux 5.3 and later), else looks now and then.
pub(crate) fn wait_exited(pid: u32, timeout: Duration) -> bool {
    if exited_pid(pid) || timeout.is_zero() {
        return exited_pid(pid);
    }
    let deadline = Instant::now().checked_add(timeout);
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: pidfd_open only makes a descriptor; the pid is our
        // child's, unreaped, so it names no other process.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if let Ok(fd) = libc::c_int::try_from(fd) {
            if fd >= 0 {
                while !exited_pid(pid as u32) {
                    let left = deadline.map_or(Duration::from_secs(3600), |d| {
                        d.saturating_duration_since(Instant::now())
                    });
                    if left.is_zero() {
                        break;
                    }
                    let ms =
                        libc::c_int::try_from(left.as_millis() + 1).unwrap_or(libc::c_int::MAX);
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: poll reads and writes only `pfd`.
                    unsafe { libc::poll(&mut pfd, 1, ms) };
                }
                // SAFETY: `fd` is ours, opened above, closed once.
                unsafe { libc::close(fd) };
                return exited_pid(pid as u32);
            }
        }
    }
    // No pidfd: look often at first, then back off.
    let mut pause = Duration::from_micros(20);
    while !exited_pid(pid) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
    exited_pid(pid)
}

/// Waits up to `grace` for `child` to exit, then kills it; kills what is
/// left of its process group (processes its tasks started); reaps it.
pub(crate) fn reap(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    wait_exited(child.id(), grace);
    signal_group(child, libc::SIGKILL);
    child.wait().ok()
}

/// How a worker ended, in words and to match on: "exited with code 3",
/// "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe_exit(status: Option<ExitStatus>) -> (String, WorkerExit) {
    let Some(status) = status else {
        return (
            "ended in a way that could not be read".into(),
            WorkerExit::Unknown,
        );
    };
    if let Some(code) = status.code() {
        return (format!("exited with code {code}"), WorkerExit::Code(code));
    }
    match status.signal() {
        Some(sig) => (
            format!("was killed by signal {sig} ({})", signal_name(sig)),
            WorkerExit::Signal(sig),
        ),
        None => (format!("ended with status {status}"), WorkerExit::Unknown),
    }
}

fn describe_status(status: Option<ExitStatus>) -> String {
    describe_exit(status).0
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        _ => "another signal",
    }
}
