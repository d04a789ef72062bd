//! Ending a run's instances: `SIGTERM` to every instance's processes at
//! once, `SIGKILL` after the grace period, reap, then verify that nothing is
//! left.
//!
//! With cgroup containment an instance's processes are its cgroup's
//! members, whatever they did to their environment, session or parentage;
//! "gone" is `populated 0`, waited for on `cgroup.events` notifications; the
//! `SIGKILL` is `cgroup.kill`, which a fork chain cannot outrun. Members
//! without the run's marker are reported (`unmarked`): they tried to hide.
//! Without cgroups, processes are found by process group, parentage and
//! marker, as before.

use super::cgroup::{self, InstanceCgroup};
use super::{kill_group, Supervisor};
use crate::proc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default time between SIGTERM and SIGKILL (`--grace-ms`), for runs,
/// cycles and `ukload cleanup` alike.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(2000);

/// How often teardown checks whether processes are gone.
const POLL: Duration = Duration::from_millis(5);
/// How long to wait for `SIGKILL`ed processes to vanish and be reaped.
const KILL_WAIT: Duration = Duration::from_secs(3);
/// Longest wait between two looks at cgroup states (notifications wake earlier).
const CGROUP_TICK: Duration = Duration::from_millis(50);
/// How long to wait for a launcher's exit status once its cgroup is empty
/// (the reaper collects it within a tick).
const REAP_WAIT: Duration = Duration::from_millis(200);
/// How long the final by-marker sweep may take.
const STRAGGLER_SWEEP: Duration = Duration::from_millis(500);
/// Longest grace period when the harness was interrupted before teardown:
/// an interrupted ukload must be gone, with everything it started, within
/// about two seconds, whatever `--grace-ms` says.
pub const INTERRUPTED_GRACE_MAX: Duration = Duration::from_secs(1);

/// One instance to end: its launcher pid and process group, and its cgroup
/// when the run is contained by cgroups.
#[derive(Clone, Debug)]
pub struct Target {
    pub instance: u32,
    pub pid: i32,
    pub pgid: i32,
    pub cgroup: Option<Arc<InstanceCgroup>>,
}

/// How an instance's processes ended.
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

/// Outcome for one instance.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceTeardown {
    pub instance: u32,
    /// Every pid that belonged to it when teardown started.
    pub pids: Vec<i32>,
    /// Processes found in its cgroup without the run's marker (they cleared
    /// their environment): contained anyway, and reported.
    pub unmarked: Vec<Survivor>,
    pub ended: Ended,
    /// From the start of teardown until its last process was gone.
    pub ms: f64,
}

/// A process of the run still alive after teardown.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Survivor {
    pub pid: i32,
    pub instance: Option<u32>,
    pub cmdline: String,
}

/// The whole teardown.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TeardownReport {
    pub instances: Vec<InstanceTeardown>,
    /// Marked processes outside every instance's tree, killed by the final sweep.
    pub stragglers: Vec<Survivor>,
    /// Marked processes still alive at the end: any makes the run FAIL.
    pub survivors: Vec<Survivor>,
    pub ms: f64,
}

fn alive(pid: i32) -> bool {
    proc::stat(pid).map(|s| s.state != 'Z').unwrap_or(false)
}

/// Ends every instance in `targets` (in parallel) and verifies by marker.
pub fn teardown(
    sup: &Supervisor,
    run_id: &str,
    targets: &[Target],
    grace: Duration,
) -> TeardownReport {
    teardown_interruptible(sup, run_id, targets, grace, &AtomicBool::new(false))
}

/// [`teardown`] for a harness that can be interrupted (`interrupted` is its
/// SIGINT/SIGTERM flag). If it is already set, the grace period is at most
/// [`INTERRUPTED_GRACE_MAX`]; if it becomes set during the grace period,
/// the `SIGKILL`s go out at once. Why: teardown was the one phase a signal
/// could not shorten, so ukload interrupted while guests ignored `SIGTERM`
/// stayed for the whole `--grace-ms`.
pub fn teardown_interruptible(
    sup: &Supervisor,
    run_id: &str,
    targets: &[Target],
    grace: Duration,
    interrupted: &AtomicBool,
) -> TeardownReport {
    let start = Instant::now();
    let interrupted_before = interrupted.load(Ordering::Relaxed);
    let grace = if interrupted_before {
        grace.min(INTERRUPTED_GRACE_MAX)
    } else {
        grace
    };
    // Marker path: one process-table snapshot for every instance.
    let table = if targets.iter().any(|t| t.cgroup.is_none()) {
        proc::table()
    } else {
        Vec::new()
    };
    let index = (!table.is_empty()).then(|| crate::memory::InstanceIndex::new(run_id, &table));
    let mut members: Vec<Vec<i32>> = targets
        .iter()
        .map(|t| members_of(t, index.as_ref()))
        .collect();
    // Marker path: a process that cleared its environment and left its
    // group (`env -i setsid ...`) after its parent exited was re-parented to
    // us (we are a subreaper): every child of ours that is neither a known
    // process of an instance nor the watchdog is such an orphan.
    let orphans: Vec<i32> = if table.is_empty() {
        Vec::new()
    } else {
        adopted_orphans(&table, &members)
    };
    for &p in &orphans {
        signal_pid(p, libc::SIGTERM);
    }
    // Marker path: a pidfd per process, polled for its exit (no stat loop).
    let mut exits: Vec<Vec<(i32, std::os::fd::OwnedFd)>> = targets
        .iter()
        .zip(&members)
        .map(|(t, m)| {
            let mut v = Vec::new();
            if t.cgroup.is_none() {
                open_exits(m, &mut v);
            }
            v
        })
        .collect();
    let mut signalled: Vec<HashSet<i32>> = vec![HashSet::new(); targets.len()];
    let mut unmarked: Vec<Vec<Survivor>> = vec![Vec::new(); targets.len()];
    let mut state: Vec<Option<(Ended, f64)>> = vec![None; targets.len()];
    for (i, t) in targets.iter().enumerate() {
        if gone(sup, t, &members[i]) {
            state[i] = Some((Ended::AlreadyGone, 0.0));
        } else {
            let pids = members[i].clone();
            signal_members(
                sup,
                run_id,
                t,
                &pids,
                libc::SIGTERM,
                &mut signalled[i],
                &mut unmarked[i],
            );
        }
    }
    // The grace period counts from the SIGTERMs, not from the start of the
    // bookkeeping before them.
    let grace_end = Instant::now() + grace;
    let mut killed = false;
    let mut kill_deadline = None;
    loop {
        let now = Instant::now();
        for (i, t) in targets.iter().enumerate() {
            if state[i].is_none() && gone(sup, t, &members[i]) {
                let how = if killed {
                    Ended::Killed
                } else {
                    Ended::Terminated
                };
                state[i] = Some((how, ms(start.elapsed())));
            }
        }
        if state.iter().all(Option::is_some) {
            break;
        }
        let hurry = !interrupted_before && interrupted.load(Ordering::Relaxed);
        if !killed && (now >= grace_end || hurry) {
            killed = true;
            let mut fresh_index: Option<crate::memory::InstanceIndex> = None;
            kill_deadline = Some(now + KILL_WAIT);
            for (i, t) in targets.iter().enumerate() {
                if state[i].is_some() {
                    continue;
                }
                if let Some(c) = &t.cgroup {
                    // Whatever it forked meanwhile is in the cgroup: note the
                    // hidden ones, then one write ends them all.
                    let now_members = c.cg.procs_recursive();
                    note_unmarked(run_id, t.pid, &now_members, &mut unmarked[i]);
                    merge(&mut members[i], &now_members);
                    let _ = c.cg.kill();
                    if sup.try_status(t.pid).is_none() {
                        let _ = kill_group(t.pgid, libc::SIGKILL);
                    }
                } else {
                    // Re-read: processes may have forked during the grace
                    // period (one snapshot for all instances).
                    let ix = fresh_index.get_or_insert_with(|| {
                        crate::memory::InstanceIndex::new(run_id, &proc::table())
                    });
                    let pids = members_of(t, Some(ix));
                    open_exits(&pids, &mut exits[i]);
                    merge(&mut members[i], &pids);
                    let all = members[i].clone();
                    signal_members(
                        sup,
                        run_id,
                        t,
                        &all,
                        libc::SIGKILL,
                        &mut signalled[i],
                        &mut unmarked[i],
                    );
                }
            }
        } else if !killed {
            // During the grace period: new members of a cgroup (a fork chain)
            // get their SIGTERM too.
            for (i, t) in targets.iter().enumerate() {
                if let (None, Some(c)) = (&state[i], &t.cgroup) {
                    let now_members = c.cg.procs_recursive();
                    let fresh: Vec<i32> = now_members
                        .iter()
                        .copied()
                        .filter(|p| !signalled[i].contains(p))
                        .collect();
                    if !fresh.is_empty() {
                        merge(&mut members[i], &fresh);
                        signal_members(
                            sup,
                            run_id,
                            t,
                            &fresh,
                            libc::SIGTERM,
                            &mut signalled[i],
                            &mut unmarked[i],
                        );
                    }
                }
            }
        }
        if kill_deadline.is_some_and(|d| now >= d) {
            break;
        }
        wait_a_little(targets, &state, &mut exits, now, grace_end, kill_deadline);
    }
    let mut survivors: Vec<Survivor> = Vec::new();
    let mut orphan_records: Vec<Survivor> = Vec::new();
    if !orphans.is_empty() {
        orphan_records = orphans
            .iter()
            .map(|&pid| Survivor {
                pid,
                instance: None,
                cmdline: proc::cmdline(pid).unwrap_or_default(),
            })
            .collect();
        let end = Instant::now() + KILL_WAIT;
        let mut left: Vec<i32> = orphans.clone();
        while !left.is_empty() && Instant::now() < end {
            for &p in &left {
                signal_pid(p, libc::SIGKILL);
            }
            std::thread::sleep(POLL);
            left.retain(|&p| alive(p) && sup.try_status(p).is_none());
        }
    }
    let instances = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (ended, ms) = state[i].unwrap_or((Ended::Survived, ms(start.elapsed())));
            if ended == Ended::Survived && t.cgroup.is_none() {
                survivors.extend(members[i].iter().copied().filter(|&p| alive(p)).map(|pid| {
                    Survivor {
                        pid,
                        instance: Some(t.instance),
                        cmdline: proc::cmdline(pid).unwrap_or_default(),
                    }
                }));
            }
            if let Some(c) = &t.cgroup {
                if ended == Ended::Survived {
                    survivors.extend(c.cg.procs_recursive().into_iter().map(|pid| Survivor {
                        pid,
                        instance: Some(t.instance),
                        cmdline: proc::cmdline(pid).unwrap_or_default(),
                    }));
                } else {
                    let _ = c.cg.remove();
                }
            }
            InstanceTeardown {
                instance: t.instance,
                pids: members[i].clone(),
                unmarked: std::mem::take(&mut unmarked[i]),
                ended,
                ms,
            }
        })
        .collect();
    // Anything else with our marker (forked after we looked, escaped its
    // group, or moved itself out of its cgroup) gets the same treatment;
    // what still lives is a survivor.
    let known: BTreeSet<i32> = members.iter().flatten().copied().collect();
    let mut stragglers: Vec<Survivor> = proc::scan_marked(Some(run_id))
        .into_iter()
        .filter(|m| m.stat.state != 'Z' && !known.contains(&m.pid))
        .map(|m| Survivor {
            pid: m.pid,
            instance: m.instance,
            cmdline: proc::cmdline(m.pid).unwrap_or_default(),
        })
        .collect();
    stragglers.extend(orphan_records);
    super::watchdog::sweep(run_id, STRAGGLER_SWEEP);
    let seen: BTreeSet<i32> = survivors.iter().map(|s| s.pid).collect();
    survivors.extend(
        proc::scan_marked(Some(run_id))
            .into_iter()
            .filter(|m| m.stat.state != 'Z' && !seen.contains(&m.pid))
            .map(|m| Survivor {
                pid: m.pid,
                instance: m.instance,
                cmdline: proc::cmdline(m.pid).unwrap_or_default(),
            }),
    );
    TeardownReport {
        instances,
        stragglers,
        survivors,
        ms: ms(start.elapsed()),
    }
}

/// Signals one process through a pidfd (the pid was read from the process
/// table just now; the pidfd pins it, so the signal cannot reach a newcomer
/// that reused the pid after it was opened).
fn signal_pid(pid: i32, sig: i32) {
    if let Ok(fd) = proc::pidfd_open(pid) {
        let _ = proc::pidfd_send_signal(&fd, sig);
    }
}

/// Children of the harness (adopted orphans, since we are a subreaper) that
/// belong to no instance's known processes and are not the watchdog, and
/// their descendants.
fn adopted_orphans(table: &[proc::ProcStat], members: &[Vec<i32>]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let dog = super::watchdog_pid();
    let known: HashSet<i32> = members.iter().flatten().copied().collect();
    let mut out = Vec::new();
    for st in table {
        if st.ppid == me && st.pid != dog && !known.contains(&st.pid) && !st.is_zombie() {
            out.push(st.pid);
            out.extend(proc::descendants(st.pid, table));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// An instance's processes: its cgroup's members, or (marker path) its
/// launcher's tree and every process marked with it.
fn members_of(t: &Target, index: Option<&crate::memory::InstanceIndex>) -> Vec<i32> {
    match (&t.cgroup, index) {
        (Some(c), _) => c.cg.procs_recursive(),
        (None, Some(ix)) => ix.pids(t.pid, t.instance),
        (None, None) => vec![t.pid],
    }
}

fn merge(into: &mut Vec<i32>, more: &[i32]) {
    let have: BTreeSet<i32> = into.iter().copied().collect();
    into.extend(more.iter().copied().filter(|p| !have.contains(p)));
}

/// Is everything of `t` gone (and its launcher reaped)?
fn gone(sup: &Supervisor, t: &Target, members: &[i32]) -> bool {
    match &t.cgroup {
        Some(c) => {
            if c.cg.populated() {
                return false;
            }
            // Empty: its processes have exited; give the reaper a moment so
            // the launcher's exit status is known.
            sup.try_status(t.pid).is_some() || sup.wait_timeout(t.pid, REAP_WAIT).is_some()
        }
        None => {
            members.iter().all(|&p| !alive(p))
                && (sup.try_status(t.pid).is_some() || sup.wait_timeout(t.pid, REAP_WAIT).is_some())
        }
    }
}

/// Sleeps until something may have changed: a pending instance's
/// `cgroup.events` (cgroup containment) or one of its processes' pidfds
/// (marker fallback: readable once the process has exited), never past the
/// grace's or the kill wait's end. Pidfds found readable are dropped, so a
/// process that exited does not wake the loop again.
fn wait_a_little(
    targets: &[Target],
    state: &[Option<(Ended, f64)>],
    exits: &mut [Vec<(i32, std::os::fd::OwnedFd)>],
    now: Instant,
    grace_end: Instant,
    kill_deadline: Option<Instant>,
) {
    use std::os::fd::AsFd;
    let mut fds: Vec<PollFd<'_>> = Vec::new();
    let mut owners: Vec<(usize, usize)> = Vec::new();
    for (i, (t, st)) in targets.iter().zip(state).enumerate() {
        if st.is_some() {
            continue;
        }
        match &t.cgroup {
            Some(c) => fds.push(PollFd::new(c.cg.events_fd(), PollFlags::POLLPRI)),
            None => {
                for (k, (_, fd)) in exits[i].iter().enumerate() {
                    owners.push((fds.len(), i * 1_000_000 + k));
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
        }
    }
    let until = kill_deadline.unwrap_or(grace_end);
    let timeout = until.saturating_duration_since(now).min(CGROUP_TICK);
    if timeout.is_zero() {
        return;
    }
    if fds.is_empty() {
        std::thread::sleep(timeout.min(POLL));
        return;
    }
    let ms = PollTimeout::try_from(timeout.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
    let _ = poll(&mut fds, ms);
    let mut done: Vec<(usize, usize)> = owners
        .iter()
        .filter(|(slot, _)| {
            fds[*slot]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN))
        })
        .map(|(_, key)| (key / 1_000_000, key % 1_000_000))
        .collect();
    // Remove from the back so indices stay valid.
    done.sort_unstable_by(|a, b| b.cmp(a));
    for (i, k) in done {
        exits[i].swap_remove(k);
    }
}

/// Pidfds of `pids` (processes already gone are skipped).
fn open_exits(pids: &[i32], into: &mut Vec<(i32, std::os::fd::OwnedFd)>) {
    for &p in pids {
        if into.iter().any(|(q, _)| *q == p) {
            continue;
        }
        if let Ok(fd) = proc::pidfd_open(p) {
            into.push((p, fd));
        }
    }
}

/// Records members that do not carry the run's marker. The environment of
/// a process whose memory is gone after the read is not evidence (an
/// exiting process releases what `/proc/PID/environ` reads, possibly in the
/// middle of the read, cutting off the marker at its end), nor is the
/// launcher itself (between
/// `fork` and `exec` it still has the harness's environment).
fn note_unmarked(run_id: &str, launcher: i32, pids: &[i32], unmarked: &mut Vec<Survivor>) {
    let marker = format!("{}={run_id}", crate::ENV_RUN);
    for &pid in pids {
        if pid == launcher || unmarked.iter().any(|u| u.pid == pid) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()) {
            continue;
        }
        if !has_memory(pid) {
            // Exiting: its memory was released during or before the read, so
            // the environment read may be empty or cut short.
            continue;
        }
        unmarked.push(Survivor {
            pid,
            instance: None,
            cmdline: proc::cmdline(pid).unwrap_or_default(),
        });
    }
}

/// Whether `pid` still has its address space (`VmRSS` in its status): an
/// empty environment then really is empty, not released by an exit.
fn has_memory(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| s.lines().any(|l| l.starts_with("VmRSS:")))
        .unwrap_or(false)
}

/// Signals an instance: its launcher's group (while the leader is not
/// reaped, so the group id cannot have been reused), then each member.
/// Cgroup members are signalled through a pidfd after checking, on that
/// pidfd's process, that it is still in the instance's cgroup; marker-path
/// members only if they carry the run's marker.
fn signal_members(
    sup: &Supervisor,
    run_id: &str,
    t: &Target,
    pids: &[i32],
    sig: i32,
    signalled: &mut HashSet<i32>,
    unmarked: &mut Vec<Survivor>,
) {
    // A stopped process acts on SIGTERM only once continued: SIGCONT follows.
    let cont = sig == libc::SIGTERM;
    if sup.try_status(t.pid).is_none() {
        let _ = kill_group(t.pgid, sig);
        if cont {
            let _ = kill_group(t.pgid, libc::SIGCONT);
        }
    }
    match &t.cgroup {
        Some(c) => {
            note_unmarked(run_id, t.pid, pids, unmarked);
            let name =
                c.cg.path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
            for &p in pids {
                signalled.insert(p);
                let Ok(fd) = proc::pidfd_open(p) else {
                    continue;
                };
                let inside = cgroup::cgroup_of(p).is_some_and(|cg| {
                    cg.split('/').any(|c| c == name)
                        && cg.contains(&format!("{}{run_id}", cgroup::RUN_PREFIX))
                });
                if inside {
                    let _ = proc::pidfd_send_signal(&fd, sig);
                    if cont {
                        let _ = proc::pidfd_send_signal(&fd, libc::SIGCONT);
                    }
                }
            }
        }
        None => {
            for &p in pids {
                signalled.insert(p);
                if let Ok(true) = proc::signal_if_marked(p, run_id, sig) {
                    if cont {
                        let _ = proc::signal_if_marked(p, run_id, libc::SIGCONT);
                    }
                    // A marked daemon that made its own session/group (setsid): its group too.
                    if let Ok(st) = proc::stat(p) {
                        if st.pgid == p && p != t.pgid {
                            let _ = kill_group(p, sig);
                        }
                    }
                }
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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

impl InstanceTeardown {
    /// How it ended, in the report's words.
    pub fn ended_word(&self) -> &'static str {
        match self.ended {
            Ended::AlreadyGone => "already gone",
            Ended::Terminated => "terminated (SIGTERM)",
            Ended::Killed => "killed (SIGKILL after grace period)",
            Ended::Survived => "STILL RUNNING after SIGKILL",
        }
    }
}
