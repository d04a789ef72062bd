//! The stdio transport: an MCP server as a child process.
//!
//! MCP stdio servers are orphaned often in the wild (clients close the pipe and
//! never kill or reap the child). Here the child runs in its own process group,
//! and [`StdioChild::shutdown`] (also run on drop) always ends in a reaped child:
//! close stdin, wait a grace period, then the supervisor's one escalation
//! ([`crate::supervisor::terminate`]): SIGTERM (and SIGCONT) to the group, wait,
//! SIGKILL the group, reap. The spawn itself is one small function, [`spawn_stdio_child`], so the
//! supervisor's spawn can replace it later.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::prctl;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getppid, Pid};

use crate::supervisor::terminate::{terminate, Group, Phase, Policy};

/// How the peer ended when the session closed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseOutcome {
    /// The server process's exit status, for transports that own a process.
    pub exit_status: Option<ExitStatus>,
    /// The strongest signal that had to be sent to its process group
    /// (`None`: it exited by itself once its stdin was closed).
    pub signal_sent: Option<i32>,
    /// The process was collected by another reaper (ECHILD: a guest's PID-1
    /// reaper, a supervisor's `waitpid(-1)`): it is gone, `exit_status` unknown.
    pub reaped_elsewhere: bool,
}

/// How much of the child's stderr is kept (the most recent bytes).
pub const STDERR_TAIL_LEN: usize = 64 * 1024;
/// After stdin is closed, how long a well-behaved server gets to exit by itself.
pub const STDIN_CLOSE_GRACE: Duration = Duration::from_millis(500);
/// After SIGTERM to the group, how long before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_millis(1000);
/// After SIGKILL, how long we wait for the kernel to let us reap the child.
pub const KILL_REAP_DEADLINE: Duration = Duration::from_secs(5);
/// How long shutdown waits for the stderr reader to see end of file.
const STDERR_DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Read size of the stderr thread.
const STDERR_CHUNK: usize = 8 * 1024;
/// How much stderr goes into an error message.
const STDERR_IN_ERRORS: usize = 2 * 1024;

/// The last [`STDERR_TAIL_LEN`] bytes a child wrote to stderr, shared with the
/// thread that reads them.
#[derive(Clone, Default)]
pub struct StderrTail {
    inner: Arc<(Mutex<TailState>, Condvar)>,
}

#[derive(Default)]
struct TailState {
    bytes: VecDeque<u8>,
    total: u64,
    eof: bool,
}

impl StderrTail {
    fn state(&self) -> MutexGuard<'_, TailState> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, chunk: &[u8]) {
        let mut st = self.state();
        st.total += chunk.len() as u64;
        let chunk = &chunk[chunk.len().saturating_sub(STDERR_TAIL_LEN)..];
        let overflow = (st.bytes.len() + chunk.len()).saturating_sub(STDERR_TAIL_LEN);
        st.bytes.drain(..overflow);
        st.bytes.extend(chunk);
    }

    fn set_eof(&self) {
        self.state().eof = true;
        self.inner.1.notify_all();
    }

    /// The kept bytes, decoded lossily.
    pub fn contents(&self) -> String {
        let st = self.state();
        let (a, b) = st.bytes.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Total bytes the child wrote to stderr (including those no longer kept).
    pub fn total_bytes(&self) -> u64 {
        self.state().total
    }

    /// Waits until end of file or `timeout`; returns whether end of file was seen.
    pub fn wait_eof(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        while !st.eof {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .inner
                .1
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// The end of the kept text, at most `max` bytes, starting at a line boundary when possible.
    pub fn last(&self, max: usize) -> String {
        let text = self.contents();
        let text = text.trim_end();
        if text.len() <= max {
            return text.to_string();
        }
        let mut start = text.len() - max;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        let tail = &text[start..];
        match tail.find('\n') {
            Some(nl) if nl + 1 < tail.len() => tail[nl + 1..].to_string(),
            _ => tail.to_string(),
        }
    }
}

/// A spawned stdio MCP server. Owns the child until it is reaped.
pub struct StdioChild {
    argv: Vec<String>,
    pid: u32,
    state: Mutex<ChildState>,
    stderr: StderrTail,
    stderr_thread: Mutex<Option<JoinHandle<()>>>,
}

struct ChildState {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    /// Whether the child is gone: reaped here (with its status) or elsewhere.
    exit: Exit,
    /// Set once shutdown finished.
    outcome: Option<CloseOutcome>,
}

/// Whether the child has been reaped, and by whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// Not reaped yet (it may be a zombie).
    Running,
    /// Reaped here, with its status.
    Reaped(ExitStatus),
    /// `waitpid` said ECHILD: another reaper (a PID-1 reaper inside a guest, a
    /// supervisor's `waitpid(-1)`) collected it first. Gone, status unknown.
    ReapedElsewhere,
}

impl Exit {
    fn is_running(self) -> bool {
        self == Exit::Running
    }

    fn status(self) -> Option<ExitStatus> {
        match self {
            Exit::Reaped(s) => Some(s),
            _ => None,
        }
    }
}

/// How a stdio MCP server is started, beyond its command line.
#[derive(Clone, Debug, Default)]
pub struct SpawnOptions {
    /// Kill the child (SIGKILL) when the *thread* that spawns it dies, through
    /// `PR_SET_PDEATHSIG`; also refuses to start if the parent already died
    /// between `fork` and the `prctl`. Linux ties the signal to the forking
    /// thread, not the process: only set it when spawning from a thread that
    /// outlives the child (the CLI's main thread, a guest connection thread that
    /// reaps its child before it returns). Off by default for that reason.
    pub die_with_parent: bool,
    /// Extra environment variables for the child (e.g. the `UKLOAD_RUN` marker).
    pub env: Vec<(OsString, OsString)>,
    /// Run the child in this root directory: `chroot` + `chdir("/")` between
    /// fork and exec (the program is then looked up inside it). Only for a
    /// microVM's init serving a server from its root filesystem image
    /// (needs CAP_SYS_CHROOT).
    pub root: Option<PathBuf>,
    /// Also copy the child's stderr to ours, each line prefixed with this
    /// (a microVM's console log), up to [`STDERR_ECHO_LIMIT`] bytes.
    pub stderr_echo_prefix: Option<String>,
}

/// Stderr bytes of one child copied to ours with
/// [`SpawnOptions::stderr_echo_prefix`]: copying stops after the line that
/// reaches it (lines are cut at 8 KiB, so at most that much more is shown);
/// the rest is only kept in the tail.
/// A serial console is slow (every byte is emulated I/O under TCG): a server
/// flooding stderr must not stall the guest.
pub const STDERR_ECHO_LIMIT: u64 = 64 * 1024;

/// Spawns `argv` with piped stdin/stdout, stderr kept in a [`StderrTail`], in a
/// new process group whose id is the child's pid.
///
/// The single place a stdio MCP server is started (to be swapped for the supervisor's spawn).
pub fn spawn_stdio_child(argv: &[String]) -> io::Result<StdioChild> {
    spawn_stdio_child_with(argv, &SpawnOptions::default())
}

/// [`spawn_stdio_child`] with [`SpawnOptions`].
pub fn spawn_stdio_child_with(argv: &[String], opts: &SpawnOptions) -> io::Result<StdioChild> {
    let (program, args) = argv.split_first().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty command for the stdio MCP server",
        )
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(root) = &opts.root {
        let root = CString::new(root.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("root directory {} contains a NUL byte", root.display()),
            )
        })?;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (chroot, chdir) on strings prepared before the
        // fork; it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || enter_root(&root));
        }
    }
    if opts.die_with_parent {
        // Captured before the fork: in the child, getppid() must still be this.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (prctl, getppid, through nix's thin wrappers); it
        // allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || die_with_parent(parent));
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("spawning {argv:?}: {e}")))?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let stderr = StderrTail::default();
    let tail = stderr.clone();
    let echo = opts.stderr_echo_prefix.clone();
    let thread = match stderr_pipe {
        Some(pipe) => std::thread::Builder::new()
            .name(format!("mcp-stderr-{pid}"))
            .spawn(move || drain_stderr(pipe, tail, echo.as_deref()))
            .map(Some),
        None => Ok(None),
    };
    let out = StdioChild {
        argv: argv.to_vec(),
        pid,
        state: Mutex::new(ChildState {
            child,
            stdin,
            stdout,
            exit: Exit::Running,
            outcome: None,
        }),
        stderr,
        stderr_thread: Mutex::new(None),
    };
    match thread {
        Ok(handle) => {
            *out.stderr_thread.lock().unwrap_or_else(|p| p.into_inner()) = handle;
            Ok(out)
        }
        // Dropping `out` kills and reaps the child.
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("starting the stderr reader for pid {pid}: {e}"),
        )),
    }
}

/// In the forked child: SIGKILL when the forking thread dies; fail the spawn if
/// the parent is already gone (the signal would never come then).
///
/// Only async-signal-safe calls: it runs between `fork` and `exec`.
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid().as_raw() != parent {
        // The parent died before the prctl took effect: no signal will come.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// In the forked child: `chroot(root)` then `chdir("/")`.
///
/// Only async-signal-safe calls: it runs between `fork` and `exec`.
fn enter_root(root: &CString) -> io::Result<()> {
    // SAFETY: chroot takes a valid NUL-terminated path that outlives the call and
    // affects only the calling (child) process.
    if unsafe { libc::chroot(root.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: chdir takes a valid NUL-terminated static path.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn drain_stderr(mut pipe: impl Read, tail: StderrTail, echo_prefix: Option<&str>) {
    let mut buf = [0u8; STDERR_CHUNK];
    let mut echo = echo_prefix.map(StderrEcho::new);
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tail.push(&buf[..n]);
                if let Some(e) = echo.as_mut() {
                    e.push(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if let Some(e) = echo.as_mut() {
        e.finish();
    }
    tail.set_eof();
}

/// Copies a child's stderr to ours line by line with a prefix, until
/// [`STDERR_ECHO_LIMIT`] bytes have been shown.
struct StderrEcho<'a> {
    prefix: &'a str,
    line: Vec<u8>,
    shown: u64,
    cut: bool,
}

impl<'a> StderrEcho<'a> {
    fn new(prefix: &'a str) -> Self {
        StderrEcho {
            prefix,
            line: Vec::new(),
            shown: 0,
            cut: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.cut {
                return;
            }
            if b == b'\n' {
                self.flush_line();
            } else {
                self.line.push(b);
                if self.line.len() >= STDERR_CHUNK {
                    self.flush_line();
                }
            }
        }
    }

    fn flush_line(&mut self) {
        if self.cut {
            return;
        }
        self.shown += self.line.len() as u64 + 1;
        log::info!(
            target: crate::logging::RAW_TARGET,
            "{}{}",
            self.prefix,
            String::from_utf8_lossy(&self.line)
        );
        self.line.clear();
        if self.shown >= STDERR_ECHO_LIMIT {
            self.cut = true;
            log::info!(
                target: crate::logging::RAW_TARGET,
                "{}(more than {STDERR_ECHO_LIMIT} bytes of stderr: the rest is not shown)",
                self.prefix
            );
        }
    }

    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.flush_line();
        }
    }
}

impl StdioChild {
    /// The child's pid, which is also its process-group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// A handle on the child's stderr tail.
    pub fn stderr_tail(&self) -> StderrTail {
        self.stderr.clone()
    }

    fn state(&self) -> MutexGuard<'_, ChildState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the child's stdin (the writer of a transport).
    pub fn take_stdin(&self) -> Option<ChildStdin> {
        self.state().stdin.take()
    }

    /// Takes the child's stdout (the reader of a transport).
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.state().stdout.take()
    }

    /// A description for messages: `stdio server pid N (argv)`.
    pub fn describe(&self) -> String {
        format!(
            "stdio MCP server pid {} ({})",
            self.pid,
            self.argv.join(" ")
        )
    }

    /// The exit status if the child has exited (reaping it), without blocking.
    /// `None` also when another reaper collected it (see [`StdioChild::has_exited`]).
    pub fn try_status(&self) -> io::Result<Option<ExitStatus>> {
        let mut st = self.state();
        if st.exit.is_running() {
            st.exit = poll_exit(&mut st.child)?;
        }
        Ok(st.exit.status())
    }

    /// Whether the child is gone (reaped here or by another reaper), without blocking.
    pub fn has_exited(&self) -> io::Result<bool> {
        let mut st = self.state();
        if st.exit.is_running() {
            st.exit = poll_exit(&mut st.child)?;
        }
        Ok(!st.exit.is_running())
    }

    /// Ends the child and reaps it; idempotent (later calls return the first outcome).
    ///
    /// Closes stdin (if still held here), waits [`STDIN_CLOSE_GRACE`] for the child to
    /// exit; if it has not, or other members of its process group remain, SIGTERM to
    /// the group, [`TERM_GRACE`], SIGKILL to the group, then reaps (bounded by
    /// [`KILL_REAP_DEADLINE`]). Errors only if the child could not be reaped.
    pub fn shutdown(&self) -> io::Result<CloseOutcome> {
        let mut st = self.state();
        if let Some(outcome) = &st.outcome {
            return Ok(outcome.clone());
        }
        drop(st.stdin.take());
        let pgid = self.pid as libc::pid_t;
        if st.exit.is_running() {
            st.exit = wait_deadline(&mut st.child, Instant::now() + STDIN_CLOSE_GRACE)?;
        }
        let mut signal_sent = None;
        if st.exit.is_running() || group_alive(pgid) {
            let mut group = ChildGroup::new(&mut st, pgid);
            terminate(
                &mut [&mut group],
                &Policy::term_then_kill(TERM_GRACE, KILL_REAP_DEADLINE),
            );
            signal_sent = group.sent.map(Phase::signal);
            if let Some(e) = group.error {
                return Err(e);
            }
        }
        if st.exit.is_running() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}: not reaped {KILL_REAP_DEADLINE:?} after SIGKILL",
                    self.describe()
                ),
            ));
        }
        drop(st.stdout.take());
        let outcome = CloseOutcome {
            exit_status: st.exit.status(),
            signal_sent,
            reaped_elsewhere: st.exit == Exit::ReapedElsewhere,
        };
        st.outcome = Some(outcome.clone());
        drop(st);
        // The pipe reaches end of file once the whole group is gone; a process that
        // left the group and kept stderr open would keep the thread: leave it detached.
        if self.stderr.wait_eof(STDERR_DRAIN_GRACE) {
            if let Some(handle) = self
                .stderr_thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                let _ = handle.join();
            }
        }
        Ok(outcome)
    }
}

impl Drop for StdioChild {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; shutdown already escalated to SIGKILL.
        let _ = StdioChild::shutdown(self);
    }
}

/// A stdio server's process group as a [`Group`] for [`terminate`]: the
/// child (reaped here, or by another reaper) and whatever else is in its
/// group. It is gone once the child is reaped and (before `SIGKILL`) the
/// group is empty; after `SIGKILL` only the child's reaping is waited for.
struct ChildGroup<'a> {
    st: &'a mut ChildState,
    pgid: libc::pid_t,
    /// Readable once the child has exited (`None` where there is no `pidfd_open`).
    pidfd: Option<OwnedFd>,
    /// The strongest phase whose signal went to the group.
    sent: Option<Phase>,
    /// The first error (a failed signal or `waitpid`).
    error: Option<io::Error>,
}

impl<'a> ChildGroup<'a> {
    fn new(st: &'a mut ChildState, pgid: libc::pid_t) -> Self {
        let pidfd = st
            .exit
            .is_running()
            .then(|| pidfd_open(pgid as u32))
            .flatten();
        ChildGroup {
            st,
            pgid,
            pidfd,
            sent: None,
            error: None,
        }
    }
}

impl Group for ChildGroup<'_> {
    fn gone(&mut self) -> bool {
        if self.st.exit.is_running() {
            match poll_exit(&mut self.st.child) {
                Ok(exit) => self.st.exit = exit,
                Err(e) => {
                    self.error.get_or_insert(e);
                    return true;
                }
            }
        }
        !self.st.exit.is_running() && (self.sent == Some(Phase::Kill) || !group_alive(self.pgid))
    }
    fn signal(&mut self, phase: Phase) {
        self.sent = Some(phase);
        // A stopped server acts on SIGTERM only once continued.
        let cont = (phase == Phase::Term).then_some(libc::SIGCONT);
        for sig in std::iter::once(phase.signal()).chain(cont) {
            // pgid is the group this module created for its own child
            // (process_group(0) makes pgid == pid), and the child is not yet
            // reaped or the group still has members, so the id is ours.
            if let Err(e) = crate::supervisor::kill_group(self.pgid, sig) {
                self.error.get_or_insert(e);
            }
        }
    }
    fn wake_fds(&self) -> Vec<PollFd<'_>> {
        match &self.pidfd {
            Some(fd) if self.st.exit.is_running() => {
                vec![PollFd::new(fd.as_fd(), PollFlags::POLLIN)]
            }
            _ => Vec::new(),
        }
    }
}

/// Whether any process (zombies included) is left in group `pgid`.
fn group_alive(pgid: libc::pid_t) -> bool {
    // No signal: only the existence/permission check, nothing is sent.
    matches!(
        killpg(Pid::from_raw(pgid), None),
        Ok(()) | Err(Errno::EPERM)
    )
}

/// Reaps `child` if it has exited, without blocking. ECHILD means another reaper
/// got it first (a guest's PID-1 reaper, a supervisor's `waitpid(-1)`): it is gone,
/// which is never retried.
fn poll_exit(child: &mut Child) -> io::Result<Exit> {
    let pid = child.id();
    exit_of(child.try_wait(), pid)
}

/// Waits for `child` to exit until `deadline`, reaping it. `Exit::Running` on
/// timeout; ECHILD as in [`poll_exit`]. The wait itself is
/// [`crate::subprocess::wait_until`] (asleep on a pidfd where there is one).
fn wait_deadline(child: &mut Child, deadline: Instant) -> io::Result<Exit> {
    let pid = child.id();
    exit_of(crate::subprocess::wait_until(child, deadline), pid)
}

/// What a `waitpid` on our child `pid` said, as an [`Exit`].
fn exit_of(waited: io::Result<Option<ExitStatus>>, pid: u32) -> io::Result<Exit> {
    match waited {
        Ok(Some(status)) => Ok(Exit::Reaped(status)),
        Ok(None) => Ok(Exit::Running),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(Exit::ReapedElsewhere),
        Err(e) => Err(io::Error::new(e.kind(), format!("waitpid({pid}): {e}"))),
    }
}

/// A pidfd for our unreaped child `pid` (so the pid cannot have been reused);
/// `None` where the kernel has no `pidfd_open`.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    crate::proc::pidfd_open(pid as i32).ok()
}

impl StdioChild {
    /// Context for an error after the stream ended: exit status and stderr
    /// tail, waiting up to `wait` for them to be complete.
    pub fn diagnostics(&self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        self.stderr.wait_eof(wait);
        let exit = {
            let mut st = self.state();
            if st.exit.is_running() {
                st.exit = wait_deadline(&mut st.child, deadline).unwrap_or(Exit::Running);
            }
            st.exit
        };
        let mut out = match exit {
            Exit::Reaped(s) => format!("pid {} exited ({s})", self.pid),
            Exit::ReapedElsewhere => format!("pid {} exited (reaped by another process)", self.pid),
            Exit::Running => format!("pid {} still running", self.pid),
        };
        let tail = self.stderr.last(STDERR_IN_ERRORS);
        if tail.is_empty() {
            out.push_str("; its stderr is empty");
        } else {
            out.push_str("; last stderr:\n");
            out.push_str(&tail);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How often the tests look at a child's state.
    const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(5);

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn pid_exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn cooperative_child_exits_on_stdin_close_without_signals() {
        let child = spawn_stdio_child(&sh("cat >/dev/null; echo bye >&2; exit 7")).unwrap();
        let pid = child.pid();
        let outcome = child.shutdown().unwrap();
        assert_eq!(outcome.exit_status.unwrap().code(), Some(7));
        assert_eq!(outcome.signal_sent, None);
        assert_eq!(child.stderr_tail().contents(), "bye\n");
        assert!(!pid_exists(pid));
        // Idempotent.
        assert_eq!(child.shutdown().unwrap(), outcome);
    }

    #[test]
    fn child_ignoring_stdin_and_sigterm_is_killed_and_reaped() {
        // `exec` keeps a single process in the group; it ignores TERM and never reads.
        let child = spawn_stdio_child(&sh("trap '' TERM; exec sleep 30")).unwrap();
        let pid = child.pid();
        let start = Instant::now();
        let outcome = child.shutdown().unwrap();
        assert_eq!(outcome.signal_sent, Some(libc::SIGKILL));
        assert!(start.elapsed() < STDIN_CLOSE_GRACE + TERM_GRACE + KILL_REAP_DEADLINE);
        assert!(!pid_exists(pid));
        assert!(!group_alive(pid as i32));
    }

    #[test]
    fn drop_reaps_the_child() {
        let child = spawn_stdio_child(&sh("exec sleep 30")).unwrap();
        let pid = child.pid();
        drop(child);
        assert!(!pid_exists(pid));
    }

    #[test]
    fn child_reaped_by_another_reaper_counts_as_gone() {
        let child = spawn_stdio_child(&sh("exit 3")).unwrap();
        let pid = Pid::from_raw(child.pid() as libc::pid_t);
        // waitpid on our own child, standing in for a PID-1 reaper.
        let st = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(st.pid(), Some(pid));
        assert!(child.has_exited().unwrap());
        let start = Instant::now();
        let outcome = child.shutdown().unwrap();
        assert!(outcome.reaped_elsewhere, "{outcome:?}");
        assert_eq!(outcome.exit_status, None);
        assert!(start.elapsed() < STDIN_CLOSE_GRACE, "looped on ECHILD");
    }

    #[test]
    fn die_with_parent_kills_the_child_when_its_spawning_thread_ends() {
        use std::os::unix::process::ExitStatusExt;
        let opts = SpawnOptions {
            die_with_parent: true,
            env: vec![("UKLOAD_TEST_MARK".into(), "m-1".into())],
            ..Default::default()
        };
        let child = std::thread::spawn(move || {
            let child =
                spawn_stdio_child_with(&sh("echo \"$UKLOAD_TEST_MARK\" >&2; exec sleep 30"), &opts)
                    .unwrap();
            // Let it start (and show its environment) before this thread ends.
            let deadline = Instant::now() + KILL_REAP_DEADLINE;
            while child.stderr_tail().contents().is_empty() {
                assert!(Instant::now() < deadline, "child never wrote to stderr");
                std::thread::sleep(EXIT_POLL_INTERVAL);
            }
            child
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + KILL_REAP_DEADLINE;
        while !child.has_exited().unwrap() {
            assert!(
                Instant::now() < deadline,
                "child outlived its spawning thread"
            );
            std::thread::sleep(EXIT_POLL_INTERVAL);
        }
        let outcome = child.shutdown().unwrap();
        assert_eq!(outcome.exit_status.unwrap().signal(), Some(libc::SIGKILL));
        assert!(child.stderr_tail().wait_eof(KILL_REAP_DEADLINE));
        assert_eq!(child.stderr_tail().contents(), "m-1\n");
    }

    #[test]
    fn spawn_failure_names_the_command() {
        let err = spawn_stdio_child(&["/nonexistent/mcp-server".to_string()])
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/mcp-server"), "{err}");
        assert!(spawn_stdio_child(&[]).is_err());
    }

    #[test]
    fn stderr_tail_keeps_only_the_last_bytes() {
        let tail = StderrTail::default();
        tail.push(&vec![b'a'; STDERR_TAIL_LEN]);
        tail.push(b"\nlast line");
        assert_eq!(tail.total_bytes(), STDERR_TAIL_LEN as u64 + 10);
        let text = tail.contents();
        assert_eq!(text.len(), STDERR_TAIL_LEN);
        assert!(text.ends_with("\nlast line"));
        assert_eq!(tail.last(20), "last line");
    }
}
