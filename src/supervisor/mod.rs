//! The one place that owns children: it forks them ([`spawn`]), is their
//! child subreaper, reaps every one of them (direct children and adopted
//! orphans alike) and remembers how each ended, kills whole process groups,
//! and keeps a watchdog process that ends everything of the run if the
//! harness itself dies.
//!
//! Reaping is done by one thread that waits for `SIGCHLD` on a self-pipe
//! (with a poll timeout, so it never blocks forever) and then drains
//! `waitpid(-1, WNOHANG)`. Nothing else in the process may call `waitpid`.

pub mod cgroup;
pub mod spawn;
pub mod teardown;
pub mod terminate;
pub mod watchdog;

pub use spawn::{Child, Command, Redirect, SpawnError};

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::prctl;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How often the reaper looks for exited children even without a `SIGCHLD`
/// (a safety net: signals can coalesce, and the poll needs a timeout anyway).
const REAPER_TICK_MS: u16 = 50;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// How a reaped child ended, from its raw wait status; `None` for a
    /// status that is not an end (stopped, continued: not asked for, so not
    /// expected). Any signal number, real-time ones included.
    pub fn from_raw(status: i32) -> Option<Exit> {
        if libc::WIFEXITED(status) {
            Some(Exit::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Exit::Signal(libc::WTERMSIG(status)))
        } else {
            None
        }
    }
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by {}", signal_name(*s)),
        }
    }
}

/// Collects every child that has exited (`waitpid(-1, WNOHANG)` until none
/// is left) and hands each `(pid, raw wait status)` to `record`: the one
/// reaping loop of the host supervisor and of the guest's PID 1.
///
/// Raw libc, not nix's `waitpid`: nix decodes the status into a `WaitStatus`
/// and fails with EINVAL when the signal that killed the child is not in its
/// `Signal` enum (real-time signals) — after the kernel already reaped it,
/// so the status (and, for the host, the instance's end) would be lost.
pub fn reap_exited(mut record: impl FnMut(i32, i32)) {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out-pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return; // 0: children alive but none exited; -1: ECHILD, no children.
        }
        record(pid, status);
    }
}

/// `SIGTERM`-style name of a signal number.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// The process-wide supervisor. Create it with [`Supervisor::init`] before
/// starting any child.
pub struct Supervisor {
    exited: Mutex<HashMap<i32, Exit>>,
    changed: Condvar,
}

static SUPERVISOR: OnceLock<Supervisor> = OnceLock::new();
static CONTAINMENT: OnceLock<cgroup::Containment> = OnceLock::new();

static WATCHDOG_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Records the watchdog's pid (a child of the harness that teardown must not
/// take for an adopted orphan).
pub fn set_watchdog_pid(pid: i32) {
    WATCHDOG_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
}

/// The watchdog's pid, 0 if none.
pub fn watchdog_pid() -> i32 {
    WATCHDOG_PID.load(std::sync::atomic::Ordering::Relaxed)
}

/// Records the harness's containment (once, before any instance starts).
pub fn set_containment(c: cgroup::Containment) -> &'static cgroup::Containment {
    CONTAINMENT.get_or_init(|| c)
}

/// The harness's containment, if [`set_containment`] ran.
pub fn containment() -> Option<&'static cgroup::Containment> {
    CONTAINMENT.get()
}

/// The run's cgroup, when the harness contains its instances by cgroup.
pub fn run_cgroup() -> Option<&'static cgroup::RunCgroup> {
    containment().and_then(cgroup::Containment::run_cgroup)
}

impl Supervisor {
    /// Makes this process a child subreaper and starts the reaper thread.
    /// Idempotent.
    pub fn init() -> io::Result<&'static Supervisor> {
        if let Some(s) = SUPERVISOR.get() {
            return Ok(s);
        }
        prctl::set_child_subreaper(true)?;
        let (mut rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(libc::SIGCHLD, tx)?;
        let sup = SUPERVISOR.get_or_init(|| Supervisor {
            exited: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
        });
        std::thread::Builder::new()
            .name("ukload-reaper".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    let mut pfd = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut pfd, REAPER_TICK_MS);
                    while rx.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
                    sup.reap_all();
                }
            })?;
        Ok(sup)
    }

    fn reap_all(&self) {
        let mut reaped = Vec::new();
        reap_exited(|pid, status| reaped.extend(Exit::from_raw(status).map(|e| (pid, e))));
        if !reaped.is_empty() {
            let mut map = self.exited.lock().unwrap_or_else(|e| e.into_inner());
            map.extend(reaped);
            self.changed.notify_all();
        }
    }

    /// Starts a child (see [`spawn::spawn`]).
    pub fn spawn(&self, cmd: Command) -> Result<Child, SpawnError> {
        spawn::spawn(cmd)
    }

    /// How `pid` ended, if it has been reaped.
    pub fn try_status(&self, pid: i32) -> Option<Exit> {
        self.exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .copied()
    }

    /// Waits until `pid` is reaped or `timeout` passes.
    pub fn wait_timeout(&self, pid: i32, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        let mut map = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = map.get(&pid) {
                return Some(*e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            map = self
                .changed
                .wait_timeout(map, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Forgets statuses of pids nobody will ask about again (keeps memory flat
    /// over thousands of cycles).
    pub fn forget(&self, pids: &[i32]) {
        let mut map = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        for p in pids {
            map.remove(p);
        }
    }

    /// Forgets every recorded status (adopted orphans nobody asked about).
    pub fn forget_all(&self) {
        self.exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (each
/// instance holds a few descriptors for its whole life: its CID lock, its
/// cgroup's files, its probe). Returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    // Raising the soft limit up to the hard one needs no privilege.
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A signal number as nix's [`Signal`]; 0 (existence check only) is `None`.
/// `EINVAL` for a number that is not a signal.
pub fn signal(sig: i32) -> io::Result<Option<Signal>> {
    if sig == 0 {
        return Ok(None);
    }
    Ok(Some(Signal::try_from(sig)?))
}

/// Sends `sig` to process group `pgid`. `Ok(false)` if the group is gone;
/// a failed `kill` says `kill(-pgid, sig)` in its message.
pub fn kill_group(pgid: i32, sig: i32) -> io::Result<bool> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    match killpg(Pid::from_raw(pgid), signal(sig)?) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => {
            let err = io::Error::from(e);
            Err(io::Error::new(
                err.kind(),
                format!("kill(-{pgid}, {sig}): {err}"),
            ))
        }
    }
}
