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
//!
//! The escalation (signals, grace, waits, deadline) is
//! [`super::terminate`]'s; each instance is a [`Group`] there.

use super::cgroup::{self, InstanceCgroup};
use super::terminate::{send, send_group, terminate, Group, Outcome, Phase, Pidfds, Pids, Policy};
use super::{kill_group, Supervisor};
use crate::memory::InstanceIndex;
use crate::proc;
use nix::poll::{PollFd, PollFlags};
use std::cell::OnceCell;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default time between SIGTERM and SIGKILL (`--grace-ms`), for runs,
/// cycles and `ukload cleanup` alike.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(2000);

/// How long to wait for `SIGKILL`ed processes to vanish and be reaped.
const KILL_WAIT: Duration = Duration::from_secs(3);
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
pub use super::terminate::Ended;

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
/// `interrupted` is the harness's SIGINT/SIGTERM flag: if it is already
/// set, the grace period is at most [`INTERRUPTED_GRACE_MAX`]; if it becomes
/// set during the grace period, the `SIGKILL`s go out at once. Why:
/// teardown was the one phase a signal could not shorten, so ukload
/// interrupted while guests ignored `SIGTERM` stayed for the whole
/// `--grace-ms`.
///
/// The escalation itself is [`terminate`]'s; here are the run's groups
/// (one per instance, and the adopted orphans), the report, and the final
/// by-marker sweep.
pub fn teardown_interruptible(
    sup: &Supervisor,
    run_id: &str,
    targets: &[Target],
    grace: Duration,
    interrupted: &AtomicBool,
) -> TeardownReport {
    let start = Instant::now();
    let kill_index = OnceCell::new();
    let (mut instances, mut orphans) = find_groups(sup, run_id, targets, &kill_index);
    // Marker path: orphans get their SIGTERM with the instances; they are
    // killed once the instances are done.
    orphans.signal(Phase::Term);
    let outcomes = end_instances(&mut instances, grace, interrupted);
    let orphan_records = end_orphans(orphans);
    let (reports, survivors) = report_instances(&mut instances, &outcomes, start);
    let known: BTreeSet<i32> = instances.iter().flat_map(|g| g.members.clone()).collect();
    let (stragglers, survivors) = final_sweep(run_id, &known, survivors, orphan_records);
    TeardownReport {
        instances: reports,
        stragglers,
        survivors,
        ms: ms(start.elapsed()),
    }
}

/// The groups to end: one per instance, with its processes as they are now,
/// and (marker path) the harness's adopted orphans.
fn find_groups<'a>(
    sup: &'a Supervisor,
    run_id: &'a str,
    targets: &'a [Target],
    kill_index: &'a OnceCell<InstanceIndex>,
) -> (Vec<Instance<'a>>, Pids) {
    // Marker path: one process-table snapshot for every instance.
    let table = if targets.iter().any(|t| t.cgroup.is_none()) {
        proc::table()
    } else {
        Vec::new()
    };
    let index = (!table.is_empty()).then(|| InstanceIndex::new(run_id, &table));
    let instances: Vec<Instance<'a>> = targets
        .iter()
        .map(|t| Instance::new(sup, run_id, t, index.as_ref(), kill_index))
        .collect();
    // Marker path: a process that cleared its environment and left its
    // group (`env -i setsid ...`) after its parent exited was re-parented to
    // us (we are a subreaper): every child of ours that is neither a known
    // process of an instance nor the watchdog is such an orphan.
    let orphans = if table.is_empty() {
        Vec::new()
    } else {
        let members: Vec<&[i32]> = instances.iter().map(|g| g.members.as_slice()).collect();
        adopted_orphans(&table, &members)
    };
    (instances, Pids::new(&orphans))
}

/// Runs the escalation over every instance at once.
fn end_instances(
    instances: &mut [Instance<'_>],
    grace: Duration,
    interrupted: &AtomicBool,
) -> Vec<Outcome> {
    let interrupted_before = interrupted.load(Ordering::Relaxed);
    let mut policy = Policy::term_then_kill(grace, KILL_WAIT);
    if interrupted_before {
        policy.grace = Some(grace.min(INTERRUPTED_GRACE_MAX));
    } else {
        policy = policy.hurried_by(interrupted);
    }
    let mut groups: Vec<&mut dyn Group> =
        instances.iter_mut().map(|g| g as &mut dyn Group).collect();
    terminate(&mut groups, &policy)
}

/// Kills the adopted orphans (they had their `SIGTERM` at the start) and
/// returns them as stragglers.
fn end_orphans(mut orphans: Pids) -> Vec<Survivor> {
    let records: Vec<Survivor> = orphans
        .pids()
        .into_iter()
        .map(|pid| Survivor {
            pid,
            instance: None,
            cmdline: proc::cmdline(pid).unwrap_or_default(),
        })
        .collect();
    if !records.is_empty() {
        terminate(&mut [&mut orphans], &Policy::kill(KILL_WAIT));
    }
    records
}

/// Each instance's outcome, and the survivors of those that survived (their
/// cgroups are removed otherwise).
fn report_instances(
    instances: &mut [Instance<'_>],
    outcomes: &[Outcome],
    start: Instant,
) -> (Vec<InstanceTeardown>, Vec<Survivor>) {
    let mut survivors = Vec::new();
    let reports = instances
        .iter_mut()
        .zip(outcomes)
        .map(|(g, o)| {
            if o.ended == Ended::Survived {
                survivors.extend(g.survivors());
            } else if let Some(c) = &g.t.cgroup {
                let _ = c.cg.remove();
            }
            let at = match o.ended {
                Ended::AlreadyGone => 0.0,
                _ => ms(o.at.saturating_duration_since(start)),
            };
            InstanceTeardown {
                instance: g.t.instance,
                pids: g.members.clone(),
                unmarked: std::mem::take(&mut g.unmarked),
                ended: o.ended,
                ms: at,
            }
        })
        .collect();
    (reports, survivors)
}

/// Anything else with our marker (forked after we looked, escaped its
/// group, or moved itself out of its cgroup) gets the same treatment; what
/// still lives is a survivor. Returns the stragglers and every survivor.
fn final_sweep(
    run_id: &str,
    known: &BTreeSet<i32>,
    mut survivors: Vec<Survivor>,
    orphans: Vec<Survivor>,
) -> (Vec<Survivor>, Vec<Survivor>) {
    let marked = |skip: &dyn Fn(i32) -> bool| -> Vec<Survivor> {
        proc::scan_marked(Some(run_id))
            .into_iter()
            .filter(|m| m.stat.state != 'Z' && !skip(m.pid))
            .map(|m| Survivor {
                pid: m.pid,
                instance: m.instance,
                cmdline: proc::cmdline(m.pid).unwrap_or_default(),
            })
            .collect()
    };
    let mut stragglers = marked(&|p| known.contains(&p));
    stragglers.extend(orphans);
    super::watchdog::sweep(run_id, STRAGGLER_SWEEP);
    let seen: BTreeSet<i32> = survivors.iter().map(|s| s.pid).collect();
    survivors.extend(marked(&|p| seen.contains(&p)));
    (stragglers, survivors)
}

/// Children of the harness (adopted orphans, since we are a subreaper) that
/// belong to no instance's known processes and are not the watchdog, and
/// their descendants.
fn adopted_orphans(table: &[proc::ProcStat], members: &[&[i32]]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let dog = super::watchdog_pid();
    let known: HashSet<i32> = members.iter().copied().flatten().copied().collect();
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

/// One instance as a [`Group`]: its cgroup's members (cgroup containment),
/// or its launcher's tree and every process marked with it (marker path).
struct Instance<'a> {
    sup: &'a Supervisor,
    run_id: &'a str,
    t: &'a Target,
    /// Every pid that belonged to it since teardown started, in the order
    /// found.
    members: Vec<i32>,
    /// The same pids, for membership tests.
    member_set: HashSet<i32>,
    /// Marker path: a pidfd per member, polled for its exit (no stat loop).
    exits: Pidfds,
    signalled: HashSet<i32>,
    unmarked: Vec<Survivor>,
    /// Marker path: the process table re-read once for every instance when
    /// the `SIGKILL`s go out (processes may have forked during the grace).
    kill_index: &'a OnceCell<InstanceIndex>,
}

impl<'a> Instance<'a> {
    fn new(
        sup: &'a Supervisor,
        run_id: &'a str,
        t: &'a Target,
        index: Option<&InstanceIndex>,
        kill_index: &'a OnceCell<InstanceIndex>,
    ) -> Self {
        let mut g = Instance {
            sup,
            run_id,
            t,
            members: Vec::new(),
            member_set: HashSet::new(),
            exits: Pidfds::default(),
            signalled: HashSet::new(),
            unmarked: Vec::new(),
            kill_index,
        };
        let pids = g.find(index);
        g.add(&pids);
        g
    }

    /// Its processes now: its cgroup's members, or (marker path) its
    /// launcher's tree and every process marked with it.
    fn find(&self, index: Option<&InstanceIndex>) -> Vec<i32> {
        match (&self.t.cgroup, index) {
            (Some(c), _) => c.cg.procs_recursive(),
            (None, Some(ix)) => ix.pids(self.t.pid, self.t.instance),
            (None, None) => vec![self.t.pid],
        }
    }

    /// Adds members (marker path: watching their exits).
    fn add(&mut self, pids: &[i32]) {
        for &p in pids {
            if self.t.cgroup.is_none() {
                self.exits.watch(p);
            }
            if self.member_set.insert(p) {
                self.members.push(p);
            }
        }
    }

    /// Whether the launcher's exit status is known: its processes have
    /// exited; give the reaper a moment to collect it.
    fn launcher_reaped(&self) -> bool {
        let pid = self.t.pid;
        self.sup.try_status(pid).is_some() || self.sup.wait_timeout(pid, REAP_WAIT).is_some()
    }

    /// What is still alive of it after `SIGKILL`.
    fn survivors(&self) -> Vec<Survivor> {
        let pids: Vec<i32> = match &self.t.cgroup {
            Some(c) => c.cg.procs_recursive(),
            None => self.members.iter().copied().filter(|&p| alive(p)).collect(),
        };
        pids.into_iter()
            .map(|pid| Survivor {
                pid,
                instance: Some(self.t.instance),
                cmdline: proc::cmdline(pid).unwrap_or_default(),
            })
            .collect()
    }

    /// Signals the instance: its launcher's group (while the leader is not
    /// reaped, so the group id cannot have been reused), then each of
    /// `pids`. Cgroup members are signalled through a pidfd after checking,
    /// on that pidfd's process, that it is still in the instance's cgroup;
    /// marker-path members only if they carry the run's marker.
    fn signal_members(&mut self, pids: &[i32], phase: Phase) {
        if self.sup.try_status(self.t.pid).is_none() {
            let _ = send_group(self.t.pgid, phase);
        }
        match &self.t.cgroup {
            Some(c) => {
                note_unmarked(self.run_id, self.t.pid, pids, &mut self.unmarked);
                let name =
                    c.cg.path()
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                for &p in pids {
                    self.signalled.insert(p);
                    let Ok(fd) = proc::pidfd_open(p) else {
                        continue;
                    };
                    if in_instance_cgroup(p, &name, self.run_id) {
                        send(&fd, phase);
                    }
                }
            }
            None => {
                for &p in pids {
                    self.signalled.insert(p);
                    self.signal_marked(p, phase);
                }
            }
        }
    }

    /// Marker path: signals `p` if it carries the run's marker, and the
    /// group it leads (a marked daemon that made its own session/group).
    fn signal_marked(&self, p: i32, phase: Phase) {
        if let Ok(true) = proc::signal_if_marked(p, self.run_id, phase.signal()) {
            if phase == Phase::Term {
                let _ = proc::signal_if_marked(p, self.run_id, libc::SIGCONT);
            }
            if let Ok(st) = proc::stat(p) {
                if st.pgid == p && p != self.t.pgid {
                    let _ = kill_group(p, phase.signal());
                }
            }
        }
    }

    /// `SIGKILL`: with a cgroup, note the hidden members, then one
    /// `cgroup.kill` ends them all, forks included; on the marker path,
    /// re-read the process table (one snapshot for all instances) and kill
    /// every member.
    fn kill(&mut self) {
        match &self.t.cgroup {
            Some(c) => {
                let now_members = c.cg.procs_recursive();
                note_unmarked(self.run_id, self.t.pid, &now_members, &mut self.unmarked);
                self.add(&now_members);
                let _ = c.cg.kill();
                if self.sup.try_status(self.t.pid).is_none() {
                    let _ = send_group(self.t.pgid, Phase::Kill);
                }
            }
            None => {
                let ix = self
                    .kill_index
                    .get_or_init(|| InstanceIndex::new(self.run_id, &proc::table()));
                let pids = self.find(Some(ix));
                self.add(&pids);
                let all = self.members.clone();
                self.signal_members(&all, Phase::Kill);
            }
        }
    }
}

impl Group for Instance<'_> {
    fn gone(&mut self) -> bool {
        let empty = match &self.t.cgroup {
            Some(c) => !c.cg.populated(),
            None => {
                self.exits.prune();
                self.exits.is_empty()
            }
        };
        empty && self.launcher_reaped()
    }

    fn signal(&mut self, phase: Phase) {
        match phase {
            Phase::Term => {
                let pids = self.members.clone();
                self.signal_members(&pids, Phase::Term);
            }
            Phase::Kill => self.kill(),
        }
    }

    /// During the grace period: new members of a cgroup (a fork chain) get
    /// their `SIGTERM` too. After it, on kernels without `cgroup.kill`, the
    /// per-member `SIGKILL` is repeated (it misses what forked meanwhile).
    fn refresh(&mut self, phase: Phase) {
        let Some(c) = &self.t.cgroup else {
            return;
        };
        if phase != Phase::Term {
            if !c.cg.kill_is_atomic() {
                let _ = c.cg.kill();
            }
            return;
        }
        let fresh: Vec<i32> =
            c.cg.procs_recursive()
                .into_iter()
                .filter(|p| !self.signalled.contains(p))
                .collect();
        if !fresh.is_empty() {
            self.add(&fresh);
            self.signal_members(&fresh, Phase::Term);
        }
    }

    fn wake_fds(&self) -> Vec<PollFd<'_>> {
        match &self.t.cgroup {
            Some(c) => vec![PollFd::new(c.cg.events_fd(), PollFlags::POLLPRI)],
            None => self.exits.wake_fds(),
        }
    }
}

/// Whether `pid` is (now) in the instance cgroup `name` of run `run_id`.
fn in_instance_cgroup(pid: i32, name: &str, run_id: &str) -> bool {
    cgroup::cgroup_of(pid).is_some_and(|cg| {
        cg.split('/').any(|c| c == name) && cg.contains(&format!("{}{run_id}", cgroup::RUN_PREFIX))
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
