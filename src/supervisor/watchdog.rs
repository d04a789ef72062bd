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

use std::io::{self, PipeReader, PipeWriter, Read};
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags};

use super::terminate::{terminate, Group, Phase, Pidfds, Policy};
use nix::sys::prctl;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, setsid, ForkResult, Pid};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the watchdog keeps sweeping after the harness is gone (processes
/// may still be forking when it starts).
const SWEEP_DEADLINE: Duration = Duration::from_millis(1500);
/// Poll timeout while waiting for the harness to go away (also how often a
/// stopped harness is looked for).
const IDLE_POLL_MS: u16 = 250;
/// How long the watchdog waits for a killed run cgroup to empty.
const CGROUP_KILL_WAIT: Duration = Duration::from_millis(1500);

/// The harness's end of the watchdog pipe.
pub struct Watchdog {
    pid: i32,
    _tx: PipeWriter,
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
    // Close-on-exec, as std's pipes are.
    let (rx, tx) = io::pipe()?;
    let harness = Pid::this();
    // SAFETY: the process is single-threaded (checked above), so the child
    // may run arbitrary code after fork.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(tx);
            watch(rx, run_id, cgroup, harness);
        }
        ForkResult::Parent { child } => {
            drop(rx);
            Ok(Watchdog {
                pid: child.as_raw(),
                _tx: tx,
            })
        }
    }
}

/// Leaves the harness's session and process group and its standard streams.
fn detach() {
    // A freshly forked child is not a group leader: setsid cannot fail in
    // a way we could act on.
    let _ = setsid();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = dup2_stdin(&null);
        let _ = dup2_stdout(&null);
        let _ = dup2_stderr(&null);
    }
}

fn watch(mut rx: PipeReader, run_id: &str, cgroup: Option<&Path>, harness: Pid) -> ! {
    detach();
    // Terminal ^C reaches our group too: the harness handles it; the
    // watchdog must outlive the harness's teardown. Blocked rather than
    // ignored (the same effect for a process that never execs, and no
    // `unsafe` disposition change): they stay pending until `_exit`.
    let mut ignored = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        ignored.add(sig);
    }
    let _ = ignored.thread_block();
    let _ = prctl::set_name(c"ukload-watchdog");
    loop {
        let mut pfd = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut pfd, IDLE_POLL_MS).unwrap_or(0);
        if n > 0 && pfd[0].any().unwrap_or(true) {
            let mut b = [0u8; 16];
            match rx.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if crate::proc::stat(harness.as_raw()).is_ok_and(|st| st.state == 'T' && st.tty_nr == 0) {
            // The harness is alive (our pipe to it is open), so its pid
            // cannot have been reused.
            let _ = kill(harness, Signal::SIGCONT);
        }
    }
    if let Some(dir) = cgroup {
        super::cgroup::end(dir, Instant::now() + CGROUP_KILL_WAIT);
    }
    sweep(run_id, SWEEP_DEADLINE);
    let _ = std::fs::remove_dir_all(crate::paths::runs_dir().join(run_id));
    // SAFETY: _exit ends the process at once; it skips atexit handlers and
    // stdio buffers copied from the harness (nix has no wrapper for it).
    unsafe { libc::_exit(0) }
}

/// Kills (SIGKILL) every live process marked with `run_id`, again for
/// those that appear meanwhile, until none is left or `deadline` passes
/// ([`terminate`] with an immediate kill). What is still alive then is the
/// caller's to find (teardown reports it from its own scan).
pub fn sweep(run_id: &str, deadline: Duration) {
    let mut marked = MarkedRun {
        run_id,
        live: Vec::new(),
        exits: Pidfds::default(),
    };
    terminate(&mut [&mut marked], &Policy::kill(deadline));
}

/// The live processes marked with a run, as a [`Group`]: found by a scan of
/// the process table, killed through pidfds (only if they still carry the
/// marker), with the groups they lead.
struct MarkedRun<'a> {
    run_id: &'a str,
    /// The last scan's live processes (pid, leads its own group).
    live: Vec<(i32, bool)>,
    exits: Pidfds,
}

impl MarkedRun<'_> {
    /// Re-reads the live marked processes; returns how many there are.
    fn scan(&mut self) -> usize {
        self.live = crate::proc::scan_marked(Some(self.run_id))
            .into_iter()
            .filter(|m| !m.stat.is_zombie())
            .map(|m| (m.pid, m.stat.pgid == m.pid))
            .collect();
        self.live.len()
    }
}

impl Group for MarkedRun<'_> {
    fn gone(&mut self) -> bool {
        self.exits.prune();
        self.scan() == 0
    }
    fn signal(&mut self, _phase: Phase) {
        // Only SIGKILL is sent here (the run's harness is gone or done).
        for &(pid, leader) in &self.live {
            self.exits.watch(pid);
            let _ = crate::proc::signal_if_marked(pid, self.run_id, libc::SIGKILL);
            if leader {
                let _ = super::kill_group(pid, libc::SIGKILL);
            }
        }
    }
    fn refresh(&mut self, phase: Phase) {
        // `gone` has just re-read the live ones: kill what appeared.
        self.signal(phase);
    }
    fn wake_fds(&self) -> Vec<PollFd<'_>> {
        self.exits.wake_fds()
    }
}
