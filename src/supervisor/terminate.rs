//! Ending processes: the one escalation policy, used by run teardown,
//! `ukload cleanup`, the watchdog and stdio MCP children.
//!
//! The policy, owned here once:
//! 1. Whatever is already gone is reported [`Ended::AlreadyGone`] and left alone.
//! 2. `SIGTERM`, followed by `SIGCONT` (a stopped process acts on `SIGTERM`
//!    only once continued), to every member; the grace period counts from
//!    these signals. During the grace, members that appear (a fork) get their
//!    `SIGTERM` too.
//! 3. At the grace's end (or at once, when the caller's interrupt flag is
//!    raised) `SIGKILL` to what is left, or `cgroup.kill` for a cgroup, which
//!    no fork chain outruns; members that appear after it are killed too.
//! 4. "Gone" is waited for on descriptors the kernel wakes: pidfds (readable
//!    once their process exits) and `cgroup.events` (`populated 0`), plus the
//!    supervisor's reap events; never by sleeping between `stat` reads. A
//!    deadline bounds the wait after `SIGKILL`; what is left then is
//!    [`Ended::Survived`].
//!
//! What a set of processes is differs between the users, so it is a trait,
//! [`Group`]: a cgroup ([`super::cgroup::Cgroup`]), a fixed set of pids (a
//! single child included, [`Pids`]), and the users' own richer groups (a run
//! instance, the marked processes of dead runs, a stdio MCP server's group)
//! built on the helpers here. Signals go through pidfds (the pid cannot have been reused by the
//! time the signal is sent) or to a process group only while its leader is
//! known to be unreaped.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::proc;

/// Longest wait between two looks at the groups' states (the kernel's
/// notifications normally wake the wait much earlier).
const TICK: Duration = Duration::from_millis(50);
/// Longest wait while no pending group offers a descriptor to wait on (a
/// stdio server's leftover group members, say).
const NO_FD_TICK: Duration = Duration::from_millis(5);

/// Which signal a phase sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `SIGTERM` (and `SIGCONT`), then the grace period.
    Term,
    /// `SIGKILL` or `cgroup.kill`, then the wait for the last exits.
    Kill,
}

impl Phase {
    /// The signal number of the phase.
    pub fn signal(self) -> i32 {
        match self {
            Phase::Term => libc::SIGTERM,
            Phase::Kill => libc::SIGKILL,
        }
    }
}

/// How a group's processes ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Nothing of it was running any more.
    AlreadyGone,
    /// All gone after `SIGTERM`.
    Terminated,
    /// Some needed `SIGKILL` after the grace period.
    Killed,
    /// Still there after `SIGKILL` (reported as survivors).
    Survived,
}

impl Ended {
    /// Its name in JSON (`already_gone`, `terminated`, `killed`, `survived`).
    pub fn key(self) -> &'static str {
        match self {
            Ended::AlreadyGone => "already_gone",
            Ended::Terminated => "terminated",
            Ended::Killed => "killed",
            Ended::Survived => "survived",
        }
    }
}

/// The outcome for one group: how it ended, and when (the moment its last
/// process was seen gone, or the end of the wait for a survivor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub ended: Ended,
    pub at: Instant,
}

/// The timing of an escalation.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// Time between `SIGTERM` and `SIGKILL`; `None`: `SIGKILL` at once (the
    /// processes are known to be unwanted leftovers).
    pub grace: Option<Duration>,
    /// After `SIGKILL`: how long to wait for the last processes to be gone.
    pub kill_wait: Duration,
    /// A flag (the harness's `SIGINT`/`SIGTERM`) that ends the grace early.
    pub hurry: Option<&'a AtomicBool>,
}

impl<'a> Policy<'a> {
    /// `SIGTERM`, `grace`, `SIGKILL`, then at most `kill_wait`.
    pub fn term_then_kill(grace: Duration, kill_wait: Duration) -> Self {
        Policy {
            grace: Some(grace),
            kill_wait,
            hurry: None,
        }
    }

    /// `SIGKILL` at once, then at most `kill_wait`.
    pub fn kill(kill_wait: Duration) -> Self {
        Policy {
            grace: None,
            kill_wait,
            hurry: None,
        }
    }

    /// The grace ends as soon as `flag` is set.
    pub fn hurried_by(self, flag: &'a AtomicBool) -> Self {
        Policy {
            hurry: Some(flag),
            ..self
        }
    }
}

/// A set of processes to end. [`terminate`] drives it; implementations say
/// what their members are, how they are signalled and how their end is seen.
pub trait Group {
    /// Whether nothing of it is left (pending work, such as reaping a
    /// launcher, may be waited for briefly here).
    fn gone(&mut self) -> bool;
    /// Starts `phase`: every current member gets the phase's signal
    /// (`SIGTERM` followed by `SIGCONT`; `SIGKILL` or `cgroup.kill`).
    fn signal(&mut self, phase: Phase);
    /// Called at every wake-up during `phase`: members that appeared since
    /// (forks) get the phase's signal. Default: nothing to look for.
    fn refresh(&mut self, _phase: Phase) {}
    /// Descriptors whose readiness means something may have ended (pidfds:
    /// `POLLIN`; `cgroup.events`: `POLLPRI`). An exited process's pidfd stays
    /// readable: [`Group::gone`] must stop offering it.
    fn wake_fds(&self) -> Vec<PollFd<'_>>;
}

/// Ends every group in `groups` together, as [`Policy`] says, and reports
/// how each ended, in the same order.
pub fn terminate(groups: &mut [&mut dyn Group], policy: &Policy<'_>) -> Vec<Outcome> {
    let first = match policy.grace {
        Some(_) => Phase::Term,
        None => Phase::Kill,
    };
    let mut out: Vec<Option<Outcome>> = groups
        .iter_mut()
        .map(|g| {
            if g.gone() {
                Some(Outcome {
                    ended: Ended::AlreadyGone,
                    at: Instant::now(),
                })
            } else {
                g.signal(first);
                None
            }
        })
        .collect();
    // The grace counts from the first signals, not from the checks before.
    let mut phase = first;
    let mut until = Instant::now() + policy.grace.unwrap_or(policy.kill_wait);
    loop {
        let settled = settle(groups, &mut out, phase);
        let now = Instant::now();
        if settled {
            break;
        }
        let hurry = policy.hurry.is_some_and(|f| f.load(Ordering::Relaxed));
        if phase == Phase::Term && (now >= until || hurry) {
            phase = Phase::Kill;
            until = now + policy.kill_wait;
            for_pending(groups, &out, |g| g.signal(Phase::Kill));
            continue;
        }
        if now >= until {
            break;
        }
        for_pending(groups, &out, |g| g.refresh(phase));
        wait(groups, &out, until);
    }
    let end = Instant::now();
    out.into_iter()
        .map(|o| {
            o.unwrap_or(Outcome {
                ended: Ended::Survived,
                at: end,
            })
        })
        .collect()
}

/// Records the groups found gone in `phase`; true once all are.
fn settle(groups: &mut [&mut dyn Group], out: &mut [Option<Outcome>], phase: Phase) -> bool {
    let ended = match phase {
        Phase::Term => Ended::Terminated,
        Phase::Kill => Ended::Killed,
    };
    for (g, o) in groups.iter_mut().zip(out.iter_mut()) {
        if o.is_none() && g.gone() {
            *o = Some(Outcome {
                ended,
                at: Instant::now(),
            });
        }
    }
    out.iter().all(Option::is_some)
}

fn for_pending(
    groups: &mut [&mut dyn Group],
    out: &[Option<Outcome>],
    mut f: impl FnMut(&mut dyn Group),
) {
    for (g, o) in groups.iter_mut().zip(out) {
        if o.is_none() {
            f(&mut **g);
        }
    }
}

/// Sleeps until a pending group's descriptor wakes, [`TICK`] passes or
/// `until` is reached.
fn wait(groups: &[&mut dyn Group], out: &[Option<Outcome>], until: Instant) {
    let mut fds: Vec<PollFd<'_>> = Vec::new();
    for (g, o) in groups.iter().zip(out) {
        if o.is_none() {
            fds.extend(g.wake_fds());
        }
    }
    let timeout = until.saturating_duration_since(Instant::now()).min(TICK);
    if timeout.is_zero() {
        return;
    }
    if fds.is_empty() {
        std::thread::sleep(timeout.min(NO_FD_TICK));
        return;
    }
    let _ = poll(&mut fds, crate::clock::poll_timeout(timeout));
}

/// Sends `phase`'s signal through a pidfd: `SIGTERM` is followed by
/// `SIGCONT`. False if the process has exited (or could not be signalled).
pub fn send(fd: &OwnedFd, phase: Phase) -> bool {
    let sent = proc::pidfd_send_signal(fd, phase.signal()).is_ok();
    if sent && phase == Phase::Term {
        let _ = proc::pidfd_send_signal(fd, libc::SIGCONT);
    }
    sent
}

/// Sends `phase`'s signal to process group `pgid` (`SIGTERM` followed by
/// `SIGCONT`). The caller guarantees the id is still the group it means
/// (its leader is not reaped yet, or a member was just seen in it).
pub fn send_group(pgid: i32, phase: Phase) -> std::io::Result<bool> {
    let sent = super::kill_group(pgid, phase.signal())?;
    if sent && phase == Phase::Term {
        let _ = super::kill_group(pgid, libc::SIGCONT);
    }
    Ok(sent)
}

/// Pidfds of processes being waited for: each is readable once its process
/// has exited (a zombie counts as exited).
#[derive(Debug, Default)]
pub struct Pidfds {
    fds: BTreeMap<i32, OwnedFd>,
}

impl Pidfds {
    /// Starts watching `pid`; false if it was already watched or has exited
    /// (no pidfd could be opened).
    pub fn watch(&mut self, pid: i32) -> bool {
        if self.fds.contains_key(&pid) {
            return false;
        }
        match proc::pidfd_open(pid) {
            Ok(fd) => {
                self.fds.insert(pid, fd);
                true
            }
            Err(_) => false,
        }
    }

    /// The pidfd of a watched process.
    pub fn get(&self, pid: i32) -> Option<&OwnedFd> {
        self.fds.get(&pid)
    }

    /// Stops watching `pid`.
    pub fn forget(&mut self, pid: i32) -> Option<OwnedFd> {
        self.fds.remove(&pid)
    }

    /// Forgets every process that has exited (one `poll`, no waiting).
    pub fn prune(&mut self) {
        let pids: Vec<i32> = self.fds.keys().copied().collect();
        let mut fds: Vec<PollFd<'_>> = self
            .fds
            .values()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        if fds.is_empty() || poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) <= 0 {
            return;
        }
        let done: Vec<i32> = pids
            .into_iter()
            .zip(&fds)
            .filter(|(_, f)| f.any().unwrap_or(true))
            .map(|(p, _)| p)
            .collect();
        drop(fds);
        for p in &done {
            self.fds.remove(p);
        }
    }

    /// Whether no watched process is left.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Watched pids.
    pub fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.fds.keys().copied()
    }

    /// Sends `phase`'s signal to every watched process.
    pub fn send_all(&self, phase: Phase) {
        for fd in self.fds.values() {
            send(fd, phase);
        }
    }

    /// The descriptors to wait on.
    pub fn wake_fds(&self) -> Vec<PollFd<'_>> {
        self.fds
            .values()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect()
    }
}

/// A fixed set of processes (a single child, adopted orphans).
#[derive(Debug, Default)]
pub struct Pids {
    fds: Pidfds,
}

impl Pids {
    /// Watches `pids` (those already gone are skipped).
    pub fn new(pids: &[i32]) -> Pids {
        let mut fds = Pidfds::default();
        for &p in pids {
            fds.watch(p);
        }
        Pids { fds }
    }

    /// Still-running members.
    pub fn pids(&self) -> Vec<i32> {
        self.fds.pids().collect()
    }
}

impl Group for Pids {
    fn gone(&mut self) -> bool {
        self.fds.prune();
        self.fds.is_empty()
    }
    fn signal(&mut self, phase: Phase) {
        self.fds.send_all(phase);
    }
    fn wake_fds(&self) -> Vec<PollFd<'_>> {
        self.fds.wake_fds()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    /// Generous: these tests assert outcomes, never durations.
    const GRACE: Duration = Duration::from_millis(500);
    const KILL_WAIT: Duration = Duration::from_secs(10);

    /// Starts `sh -c script` in a new process group and waits until it
    /// printed its readiness line (its traps are set).
    fn sh(script: &str) -> Child {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let mut out = child.stdout.take().unwrap();
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut out, &mut b).expect("child ready");
        child
    }

    fn reap(mut c: Child) -> std::process::ExitStatus {
        c.wait().expect("reap")
    }

    /// The live members of process group `pgid` now.
    fn group_members(pgid: i32) -> Vec<i32> {
        proc::table()
            .into_iter()
            .filter(|s| s.pgid == pgid && !s.is_zombie())
            .map(|s| s.pid)
            .collect()
    }

    fn wait_stopped(pid: i32) {
        let deadline = Instant::now() + KILL_WAIT;
        while !proc::stat(pid).is_ok_and(|s| s.state == 'T') {
            assert!(Instant::now() < deadline, "pid {pid} never stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_process_that_ignores_sigterm_needs_sigkill() {
        let child = sh("trap '' TERM; echo r; while :; do sleep 1; done");
        let pid = child.id() as i32;
        let mut g = Pids::new(&[pid]);
        let out = terminate(&mut [&mut g], &Policy::term_then_kill(GRACE, KILL_WAIT));
        assert_eq!(out[0].ended, Ended::Killed);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(reap(child).signal(), Some(libc::SIGKILL));
        // Its `sleep` is in its group: end it too (the test leaves nothing).
        let mut rest = Pids::new(&group_members(pid));
        terminate(&mut [&mut rest], &Policy::kill(KILL_WAIT));
        assert_eq!(group_members(pid), Vec::<i32>::new());
    }

    #[test]
    fn a_stopped_process_is_continued_and_ends_on_sigterm() {
        // A handled SIGTERM stays pending while the process is stopped.
        let child = sh("trap 'exit 7' TERM; echo r; while :; do sleep 0.05; done");
        let pid = child.id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP).unwrap();
        wait_stopped(pid);
        let mut g = Pids::new(&[pid]);
        let out = terminate(&mut [&mut g], &Policy::term_then_kill(KILL_WAIT, KILL_WAIT));
        assert_eq!(out[0].ended, Ended::Terminated);
        assert_eq!(reap(child).code(), Some(7));
    }

    #[test]
    fn a_cooperative_set_ends_on_sigterm_and_a_gone_one_is_already_gone() {
        // The `sleep` is forked before the readiness line.
        let child = sh("sleep 60 & echo r; wait");
        let pgid = child.id() as i32;
        let members = group_members(pgid);
        assert_eq!(members.len(), 2, "sh and its sleep: {members:?}");
        let mut g = Pids::new(&members);
        let out = terminate(&mut [&mut g], &Policy::term_then_kill(KILL_WAIT, KILL_WAIT));
        assert_eq!(out[0].ended, Ended::Terminated);
        reap(child);
        assert_eq!(group_members(pgid), Vec::<i32>::new());
        let mut again = Pids::new(&members);
        let out = terminate(&mut [&mut again], &Policy::kill(KILL_WAIT));
        assert_eq!(out[0].ended, Ended::AlreadyGone);
    }

    #[test]
    fn a_raised_hurry_flag_ends_the_grace_at_once() {
        let child = sh("trap '' TERM; echo r; exec sleep 60");
        let pid = child.id() as i32;
        let flag = AtomicBool::new(true);
        let mut g = Pids::new(&[pid]);
        // A grace far longer than the test may take: only the flag ends it.
        let policy = Policy::term_then_kill(Duration::from_secs(3600), KILL_WAIT).hurried_by(&flag);
        let out = terminate(&mut [&mut g], &policy);
        assert_eq!(out[0].ended, Ended::Killed);
        reap(child);
    }
}
