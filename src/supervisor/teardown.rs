//! Ending a run's instances: `SIGTERM` to every instance's process group and
//! adopted descendants at once, `SIGKILL` after the grace period, reap, then
//! verify by the run's marker that nothing is left.

use super::{kill_group, Supervisor};
use crate::proc;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often teardown checks whether processes are gone.
const POLL: Duration = Duration::from_millis(5);
/// How long to wait for `SIGKILL`ed processes to vanish and be reaped.
const KILL_WAIT: Duration = Duration::from_secs(3);
/// How long the final by-marker sweep may take.
const STRAGGLER_SWEEP: Duration = Duration::from_millis(500);
/// Longest grace period when the harness was interrupted before teardown:
/// an interrupted ukload must be gone, with everything it started, within
/// about two seconds, whatever `--grace-ms` says.
pub const INTERRUPTED_GRACE_MAX: Duration = Duration::from_secs(1);

/// One instance to end: its launcher pid and process group.
#[derive(Clone, Debug)]
pub struct Target {
    pub instance: u32,
    pub pid: i32,
    pub pgid: i32,
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

fn signal_all(sup: &Supervisor, run_id: &str, t: &Target, pids: &[i32], sig: i32) {
    // The launcher's group, as long as its leader is not reaped (so the group
    // id cannot have been reused).
    if sup.try_status(t.pid).is_none() {
        let _ = kill_group(t.pgid, sig);
    }
    for &p in pids {
        if let Ok(true) = proc::signal_if_marked(p, run_id, sig) {
            // A marked daemon that made its own session/group (setsid): its group too.
            if let Ok(st) = proc::stat(p) {
                if st.pgid == p && p != t.pgid {
                    let _ = kill_group(p, sig);
                }
            }
        }
    }
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
    let table = proc::table();
    let members: Vec<Vec<i32>> = targets
        .iter()
        .map(|t| crate::memory::instance_pids(t.pid, run_id, t.instance, &table))
        .collect();
    let mut state: Vec<Option<(Ended, f64)>> = vec![None; targets.len()];
    for (i, t) in targets.iter().enumerate() {
        if members[i].iter().all(|&p| !alive(p)) && sup.try_status(t.pid).is_some() {
            state[i] = Some((Ended::AlreadyGone, 0.0));
        } else {
            signal_all(sup, run_id, t, &members[i], libc::SIGTERM);
        }
    }
    let mut killed = false;
    let mut kill_deadline = None;
    loop {
        let now = Instant::now();
        for (i, t) in targets.iter().enumerate() {
            if state[i].is_none()
                && members[i].iter().all(|&p| !alive(p))
                && sup.try_status(t.pid).is_some()
            {
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
        if !killed && (now >= start + grace || hurry) {
            killed = true;
            kill_deadline = Some(now + KILL_WAIT);
            for (i, t) in targets.iter().enumerate() {
                if state[i].is_none() {
                    // Re-read: processes may have forked during the grace period.
                    let pids =
                        crate::memory::instance_pids(t.pid, run_id, t.instance, &proc::table());
                    let all: BTreeSet<i32> =
                        members[i].iter().chain(pids.iter()).copied().collect();
                    signal_all(
                        sup,
                        run_id,
                        t,
                        &all.into_iter().collect::<Vec<_>>(),
                        libc::SIGKILL,
                    );
                }
            }
        }
        if kill_deadline.is_some_and(|d| now >= d) {
            break;
        }
        std::thread::sleep(POLL);
    }
    let instances = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (ended, ms) = state[i].unwrap_or((Ended::Survived, ms(start.elapsed())));
            InstanceTeardown {
                instance: t.instance,
                pids: members[i].clone(),
                ended,
                ms,
            }
        })
        .collect();
    // Anything else with our marker (forked after we looked, or escaped its
    // group) gets the same treatment; what still lives is a survivor.
    let known: BTreeSet<i32> = members.iter().flatten().copied().collect();
    let stragglers: Vec<Survivor> = proc::scan_marked(Some(run_id))
        .into_iter()
        .filter(|m| m.stat.state != 'Z' && !known.contains(&m.pid))
        .map(|m| Survivor {
            pid: m.pid,
            instance: m.instance,
            cmdline: proc::cmdline(m.pid).unwrap_or_default(),
        })
        .collect();
    super::watchdog::sweep(run_id, STRAGGLER_SWEEP);
    let survivors = proc::scan_marked(Some(run_id))
        .into_iter()
        .filter(|m| m.stat.state != 'Z')
        .map(|m| Survivor {
            pid: m.pid,
            instance: m.instance,
            cmdline: proc::cmdline(m.pid).unwrap_or_default(),
        })
        .collect();
    TeardownReport {
        instances,
        stragglers,
        survivors,
        ms: ms(start.elapsed()),
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
