//! A small process forked before any thread exists, joined to the harness by
//! a pipe. If the harness dies in any way (even `SIGKILL`), the pipe reaches
//! end-of-file and the watchdog kills the run's cgroup (every instance, and
//! whatever they forked), ends every process carrying the run's marker, and
//! removes the run's cgroups and run directory. The harness's CID locks are
//! released by the kernel when its descriptors close.
//!
//! The watchdog leaves the harness's session and process group (`setsid`)
//! and its standard streams: CI runners and `timeout -s KILL` kill the job's
//! whole process group, which must end the harness but not its watchdog, and
//! a watchdog holding the harness's stdout would keep a pipeline open.
//!
//! It also resumes a harness that was stopped (`SIGSTOP`, e.g. by a guest
//! running `kill -STOP $PPID`) while it has no controlling terminal: a
//! stopped harness misses every deadline it promised. With a terminal, a
//! stop is the user's `^Z` and is left alone.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the watchdog keeps sweeping after the harness is gone (processes
/// may still be forking when it starts).
const SWEEP_DEADLINE: Duration = Duration::from_millis(1500);
/// Pause between sweeps.
const SWEEP_INTERVAL: Duration = Duration::from_millis(20);
/// Poll timeout while waiting for the harness to go away (also how often a
/// stopped harness is looked for).
const IDLE_POLL_MS: i32 = 250;
/// How long the watchdog waits for a killed run cgroup to empty.
const CGROUP_KILL_WAIT: Duration = Duration::from_millis(1500);

/// The harness's end of the watchdog pipe.
pub struct Watchdog {
    pid: i32,
    _tx: OwnedFd,
}

impl Watchdog {
    /// The watchdog's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Normal end: closing the pipe lets the watchdog make a last sweep (which
    /// finds nothing after a clean teardown) and exit.
    pub fn finish(self) {}
}

/// Forks the watchdog for `run_id`; `cgroup` is the run's cgroup directory
/// when the run is contained by cgroups.
///
/// Must be called while the process has a single thread: the child runs
/// ordinary Rust code after `fork`, which is sound only then.
pub fn start(run_id: &str, cgroup: Option<&Path>) -> io::Result<Watchdog> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if threads != 1 {
        return Err(io::Error::other(format!(
            "watchdog must be started before any thread ({threads} threads running)"
        )));
    }
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; we own both descriptors.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let harness = std::process::id() as i32;
    // SAFETY: the process is single-threaded (checked above), so the child
    // may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(tx);
        watch(rx, run_id, cgroup, harness);
    }
    drop(rx);
    Ok(Watchdog { pid, _tx: tx })
}

/// Leaves the harness's session and process group and its standard streams.
fn detach() {
    // SAFETY: setsid takes no arguments; in a freshly forked child that is
    // not a group leader it cannot fail in a way we could act on.
    unsafe { libc::setsid() };
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors from a descriptor we own.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn watch(rx: OwnedFd, run_id: &str, cgroup: Option<&Path>, harness: i32) -> ! {
    detach();
    // SAFETY: ignoring signals and naming the process take no pointers
    // except a static NUL-terminated name.
    unsafe {
        // Terminal ^C reaches our group too: the harness handles it; the
        // watchdog must outlive the harness's teardown.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_NAME, c"ukload-watchdog".as_ptr(), 0, 0, 0);
    }
    loop {
        let mut pfd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; bounded timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, IDLE_POLL_MS) };
        if n > 0 && pfd.revents != 0 {
            let mut b = [0u8; 16];
            // SAFETY: reading into a stack buffer of the given length.
            let r = unsafe { libc::read(rx.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
            if r <= 0 {
                break;
            }
        }
        if crate::proc::stat(harness).is_ok_and(|st| st.state == 'T' && st.tty_nr == 0) {
            // SAFETY: kill with plain integers; the harness is alive (our
            // pipe to it is open), so its pid cannot have been reused.
            unsafe { libc::kill(harness, libc::SIGCONT) };
        }
    }
    if let Some(dir) = cgroup {
        super::cgroup::end(dir, Instant::now() + CGROUP_KILL_WAIT);
    }
    sweep(run_id, SWEEP_DEADLINE);
    let _ = std::fs::remove_dir_all(crate::paths::runs_dir().join(run_id));
    // SAFETY: _exit skips atexit handlers and stdio buffers copied from the harness.
    unsafe { libc::_exit(0) }
}

/// Kills (SIGKILL) every live process marked with `run_id`, repeatedly, until
/// none is left or `deadline` passes. Returns how many are still alive.
pub fn sweep(run_id: &str, deadline: Duration) -> usize {
    let end = Instant::now() + deadline;
    loop {
        let live: Vec<_> = crate::proc::scan_marked(Some(run_id))
            .into_iter()
            .filter(|m| m.stat.state != 'Z')
            .collect();
        if live.is_empty() || Instant::now() >= end {
            return live.len();
        }
        for m in &live {
            let _ = crate::proc::signal_if_marked(m.pid, run_id, libc::SIGKILL);
            if m.stat.pgid == m.pid {
                let _ = super::kill_group(m.pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(SWEEP_INTERVAL);
    }
}
