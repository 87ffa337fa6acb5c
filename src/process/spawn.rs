//! Starting a worker process and checking its handshake.
//!
//! The pool opens an ipc-channel one-shot server and starts the worker
//! program with the server's name in [`SERVER_ENV`]. The worker connects and
//! sends a [`Hello`]: its protocol version, its pid, the tasks it holds, and
//! the two byte channels the pool will use. ipc-channel's `accept` blocks
//! forever, so it runs on a helper thread and the pool waits for it with a
//! deadline, watching the child meanwhile.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcOneShotServer, IpcSender};

use super::wire::{Hello, PROTOCOL_VERSION};
use super::worker::{PARENT_ENV, SERVER_ENV};
use crate::{Error, Registry};

/// A started, connected worker.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) hello: Hello,
}

/// A worker started but not yet connected.
pub(crate) struct Starting {
    child: Child,
    server_name: String,
    accepted: crossbeam_channel::Receiver<Result<Hello, String>>,
    program: PathBuf,
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

/// Starts `program` as a worker; call [`Starting::connect`] next. Start
/// several before connecting any, so they boot in parallel.
pub(crate) fn start(program: &PathBuf) -> Result<Starting, Error> {
    let (server, server_name) = IpcOneShotServer::<Hello>::new().map_err(|e| Error::Spawn {
        reason: format!("could not open the channel for a new worker: {e}"),
    })?;
    let mut cmd = Command::new(program);
    cmd.env(SERVER_ENV, &server_name)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null());
    // No `pre_exec` hook here: it would make std fork the whole parent
    // instead of using posix_spawn, several times slower for a large
    // parent. The worker sets its own parent-death signal (see `worker`).
    let child = cmd.spawn().map_err(|e| Error::Spawn {
        reason: format!(
            "could not run the worker program {}: {e}; check that it exists and is executable \
             (Builder::worker_program)",
            program.display()
        ),
    })?;
    let (tx, accepted) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("twinpool-accept".into())
        .spawn(move || {
            let _ = tx.send(
                server
                    .accept()
                    .map(|(_, hello)| hello)
                    .map_err(|e| e.to_string()),
            );
        })
        .map_err(|e| Error::Spawn {
            reason: format!("could not start a thread to accept a worker: {e}"),
        })?;
    Ok(Starting {
        child,
        server_name,
        accepted,
        program: program.clone(),
    })
}

impl Starting {
    /// Waits until the worker connects, exits, or `timeout` passes, then
    /// checks its handshake against `registry`.
    pub(crate) fn connect(
        mut self,
        timeout: Duration,
        registry: &Registry,
    ) -> Result<Spawned, Error> {
        let deadline = Instant::now() + timeout;
        let failed = |reason: String| Error::Spawn { reason };
        let hello = loop {
            match self.accepted.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(hello)) => break hello,
                Ok(Err(e)) => {
                    let status = self.stop();
                    return Err(failed(format!(
                        "worker program {} broke its connection to the pool ({e}); it {}",
                        self.program.display(),
                        describe_status(status)
                    )));
                }
                Err(_) => {}
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.unblock_accept();
                return Err(failed(format!(
                    "worker program {} {} before connecting to the pool; \
                     does its main call twinpool::serve_if_worker first?",
                    self.program.display(),
                    describe_status(Some(status))
                )));
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(failed(format!(
                    "worker program {} did not connect within {:?}; does its main call \
                     twinpool::serve_if_worker first? (Builder::connect_timeout sets the limit)",
                    self.program.display(),
                    timeout
                )));
            }
        };
        let spawned = Spawned {
            child: self.child,
            hello,
        };
        if let Err(reason) = check_hello(&spawned.hello, registry) {
            let mut child = spawned.child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!(
                "worker program {} does not match this pool: {reason}",
                self.program.display()
            )));
        }
        Ok(spawned)
    }

    /// Kills and reaps the child, and frees the accept thread.
    fn stop(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.unblock_accept();
        status
    }

    /// `accept` blocks until something connects: connect and hang up, so its
    /// thread ends.
    fn unblock_accept(&self) {
        if let Ok(tx) = IpcSender::<Hello>::connect(self.server_name.clone()) {
            drop(tx);
        }
    }
}

/// Checks that the worker speaks our protocol and holds every task of
/// `registry` with the same types.
fn check_hello(hello: &Hello, registry: &Registry) -> Result<(), String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "it speaks twinpool protocol {} but this pool speaks {}; build both with the same \
             twinpool version",
            hello.version, PROTOCOL_VERSION
        ));
    }
    for entry in registry.entries() {
        let theirs = hello.tasks.iter().find(|(n, _, _)| **n == *entry.name);
        match theirs {
            None => {
                return Err(format!(
                    "it has no task named {:?}; register it in the worker's registry too",
                    entry.name
                ))
            }
            Some((_, a, r)) if a != entry.arg_type || r != entry.ret_type => {
                return Err(format!(
                    "its task {:?} is fn({a}) -> {r} but this pool's is fn({}) -> {}",
                    entry.name, entry.arg_type, entry.ret_type
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// "exited with code 3", "was killed by signal 9 (SIGKILL)", ...
pub(crate) fn describe_status(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "ended in a way that could not be read".into();
    };
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(sig) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        None => format!("ended with status {status}"),
    }
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
