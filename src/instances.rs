//! `ukload ps` and `ukload cleanup`: the instances of every run on the host,
//! found by their environment markers rather than by anyone's memory of what
//! was started.
//!
//! A run is alive while its harness holds the `flock` on
//! `<runs_dir>/<run id>/harness.lock` (the kernel drops it when the harness
//! dies, however it dies), OR while the process its run id names is alive:
//! run ids are `<hex ms>-<harness pid>` ([`crate::runs::new_run_id`]), so a
//! live `ukload` with that pid which started no later than the id's time is
//! the harness, even if someone deleted `runs/<id>`. Only processes of ours
//! (same uid) are looked at at all. Processes of a run whose harness is dead are
//! leftovers (a daemonized VMM re-parented to init, say): `cleanup` ends them,
//! TERM first, KILL after a grace period, re-scanning because they may fork
//! meanwhile. It never signals a process that does not carry the run's marker
//! (see [`proc::signal_if_marked`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::memory;
use crate::paths;
use crate::proc::{self, Marked};
use crate::runs::{
    harness_alive_in, harness_pid_alive, marked_run_alive, open_harness_lock, try_flock,
    valid_run_id, LockMode, TryLock,
};
use crate::supervisor::terminate::{terminate, Group, Phase, Pidfds, Policy};
use nix::poll::PollFd;

/// After the grace period: how long cleanup keeps re-scanning and sending
/// SIGKILL to processes that keep appearing (forks) before giving up and
/// reporting survivors.
pub const KILL_DEADLINE: Duration = Duration::from_secs(5);
/// How often the whole process table is re-scanned for new marked processes
/// (reading every environment costs more than a poll).
const RESCAN_INTERVAL: Duration = Duration::from_millis(100);
/// A run directory without a `harness.lock` is removed only if it has not
/// changed for this long: a harness may have just created it and not yet
/// taken its lock.
const UNLOCKED_RUN_DIR_MIN_AGE: Duration = Duration::from_secs(10);
const KIB_PER_MIB: f64 = 1024.0;

/// One instance (or the instance-less processes of a run) as `ukload ps`
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceView {
    pub run_id: String,
    /// `None`: processes of the run without `UKLOAD_INSTANCE`.
    pub instance: Option<u32>,
    pub cid: Option<u32>,
    pub pids: Vec<i32>,
    /// Age of the oldest process (seconds in JSON, as `age_s`).
    #[serde(rename = "age_s", serialize_with = "serialize_secs")]
    pub age: Duration,
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub harness_alive: bool,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Every live marked process on the host, grouped by (run, instance).
pub fn ps() -> Vec<InstanceView> {
    ps_in(&paths::runs_dir())
}

/// [`ps`] with harness liveness read from `runs_dir`.
pub fn ps_in(runs_dir: &Path) -> Vec<InstanceView> {
    let mut marked = proc::scan_marked(None);
    marked.extend(cgroup_members(&marked));
    group_views(runs_dir, marked)
}

/// Processes in run cgroups (`ukload-<run>/i<index>-cid<cid>`) under this
/// process's own cgroup that no marker scan found: those that cleared their
/// environment are still their instance's.
fn cgroup_members(already: &[Marked]) -> Vec<Marked> {
    use crate::supervisor::cgroup;
    let Ok(parent) = cgroup::parent_dir() else {
        return Vec::new();
    };
    let known: HashSet<i32> = already.iter().map(|m| m.pid).collect();
    let mut out = Vec::new();
    for (run, dir) in cgroup::run_cgroups_in(&parent) {
        let Ok(rd) = fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((index, cid)) = cgroup::instance_of(&name) else {
                continue;
            };
            let Ok(cg) = cgroup::Cgroup::open(e.path()) else {
                continue;
            };
            for pid in cg.procs_recursive() {
                if known.contains(&pid) {
                    continue;
                }
                if let Ok(stat) = proc::stat(pid) {
                    out.push(Marked {
                        pid,
                        run: run.clone(),
                        instance: Some(index),
                        cid: Some(cid),
                        stat,
                    });
                }
            }
        }
    }
    out
}

/// Kills and removes the run cgroups under this process's own cgroup that
/// `opts` targets: dead runs (harness lock free and harness pid gone), or a
/// live one named with `--run ID --all`. `cgroup.kill` reaches what markers
/// cannot (processes that cleared their environment).
fn cleanup_cgroups(runs_dir: &Path, opts: &CleanupOptions, report: &mut CleanupReport) {
    use crate::supervisor::cgroup;
    let Ok(parent) = cgroup::parent_dir() else {
        return;
    };
    for (run, dir) in cgroup::run_cgroups_in(&parent) {
        if opts.run.as_deref().is_some_and(|r| r != run) {
            continue;
        }
        // harness_alive_in already asks harness_pid_alive when the lock is free.
        let alive = harness_alive_in(runs_dir, &run);
        if alive && !opts.include_live {
            if !report.skipped_live_runs.contains(&run) {
                report.skipped_live_runs.push(run);
            }
            continue;
        }
        let Ok(cg) = cgroup::Cgroup::open(dir.clone()) else {
            continue;
        };
        for pid in cg.procs_recursive() {
            report.ended.push(ProcessRecord {
                pid,
                run: run.clone(),
                instance: None,
                cmdline: proc::cmdline(pid).unwrap_or_default(),
                signal: Some("SIGKILL"),
            });
        }
        let ended = cgroup::end(&dir, Instant::now() + KILL_DEADLINE);
        if !ended.emptied {
            report.errors.push(format!(
                "cgroup {} still populated after cgroup.kill",
                dir.display()
            ));
        }
        match ended.remove_error {
            None => report.removed_run_dirs.push(dir),
            Some(e) => report.errors.push(e.to_string()),
        }
    }
}

fn group_views(runs_dir: &Path, marked: Vec<Marked>) -> Vec<InstanceView> {
    let mut groups: BTreeMap<(String, Option<u32>), Vec<Marked>> = BTreeMap::new();
    for m in marked.into_iter().filter(|m| !m.stat.is_zombie()) {
        groups
            .entry((m.run.clone(), m.instance))
            .or_default()
            .push(m);
    }
    let mut alive: HashMap<String, bool> = HashMap::new();
    groups
        .into_iter()
        .map(|((run_id, instance), members)| {
            let pids: Vec<i32> = members.iter().map(|m| m.pid).collect();
            let mem = memory::tree_usage(&pids);
            let harness_alive = *alive
                .entry(run_id.clone())
                .or_insert_with(|| marked_run_alive(runs_dir, &members[0]));
            InstanceView {
                cid: members.iter().find_map(|m| m.cid),
                age: members
                    .iter()
                    .map(|m| proc::age(m.stat.start_ticks))
                    .max()
                    .unwrap_or_default(),
                run_id,
                instance,
                pids,
                rss_kb: mem.rss_kb,
                pss_kb: mem.pss_kb,
                harness_alive,
            }
        })
        .collect()
}

/// "45s", "3m07s", "2h05m", "3d04h".
fn format_age(d: Duration) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    let s = d.as_secs();
    if s < MIN {
        format!("{s}s")
    } else if s < HOUR {
        format!("{}m{:02}s", s / MIN, s % MIN)
    } else if s < DAY {
        format!("{}h{:02}m", s / HOUR, (s % HOUR) / MIN)
    } else {
        format!("{}d{:02}h", s / DAY, (s % DAY) / HOUR)
    }
}

fn format_mib(kb: u64) -> String {
    format!("{:.1}M", kb as f64 / KIB_PER_MIB)
}

/// Prints `views` as a table (RUN INSTANCE CID PIDS AGE RSS PSS HARNESS) or,
/// with `json`, as a JSON array.
pub fn print_ps(views: &[InstanceView], json: bool, out: &mut dyn Write) -> io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, views).map_err(io::Error::other)?;
        return writeln!(out);
    }
    let header = [
        "RUN", "INSTANCE", "CID", "PIDS", "AGE", "RSS", "PSS", "HARNESS",
    ];
    let rows: Vec<[String; 8]> = views
        .iter()
        .map(|v| {
            let opt = |o: Option<u32>| o.map_or_else(|| "-".to_string(), |x| x.to_string());
            let pids: Vec<String> = v.pids.iter().map(i32::to_string).collect();
            [
                v.run_id.clone(),
                opt(v.instance),
                opt(v.cid),
                pids.join(","),
                format_age(v.age),
                format_mib(v.rss_kb),
                format_mib(v.pss_kb),
                if v.harness_alive { "alive" } else { "dead" }.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    if rows.is_empty() {
        writeln!(out, "(no ukload processes on this host)")?;
    }
    Ok(())
}

/// What `ukload cleanup` should end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Only this run (else every run).
    pub run: Option<String>,
    /// Also end runs whose harness is alive (else they are skipped).
    pub include_live: bool,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        CleanupOptions {
            run: None,
            include_live: false,
            grace: crate::supervisor::teardown::DEFAULT_GRACE,
        }
    }
}

/// A process cleanup signalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessRecord {
    pub pid: i32,
    pub run: String,
    pub instance: Option<u32>,
    pub cmdline: String,
    /// Last signal sent to it (`"SIGTERM"` or `"SIGKILL"`), if any was.
    pub signal: Option<&'static str>,
}

/// What `ukload cleanup` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Processes that are gone.
    pub ended: Vec<ProcessRecord>,
    /// Processes still there at the deadline.
    pub survivors: Vec<ProcessRecord>,
    /// Run directories of dead runs removed.
    pub removed_run_dirs: Vec<PathBuf>,
    /// Runs left alone because their harness is alive.
    pub skipped_live_runs: Vec<String>,
    /// Signals or removals that failed, with context.
    pub errors: Vec<String>,
}

impl fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs: HashSet<&str> = self.ended.iter().map(|p| p.run.as_str()).collect();
        writeln!(
            f,
            "ended {} process(es) of {} run(s)",
            self.ended.len(),
            runs.len()
        )?;
        let describe = |p: &ProcessRecord| {
            let inst = p
                .instance
                .map_or_else(String::new, |i| format!(" instance {i}"));
            let sig = p.signal.map_or_else(String::new, |s| format!(" [{s}]"));
            format!("pid {} run {}{inst}{sig}: {}", p.pid, p.run, p.cmdline)
        };
        for p in &self.ended {
            writeln!(f, "  {}", describe(p))?;
        }
        if !self.survivors.is_empty() {
            writeln!(
                f,
                "{} process(es) SURVIVED (they may be stuck in the kernel, state D; look with `ukload ps`):",
                self.survivors.len()
            )?;
            for p in &self.survivors {
                writeln!(f, "  {}", describe(p))?;
            }
        }
        for d in &self.removed_run_dirs {
            writeln!(f, "removed {}", d.display())?;
        }
        for r in &self.skipped_live_runs {
            writeln!(
                f,
                "skipped run {r}: its harness is alive (name it with --run {r} --all to end it anyway)"
            )?;
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

/// A process cleanup is after, identified across PID reuse by its start time.
struct Tracked {
    start_ticks: u64,
    record: ProcessRecord,
    killed: bool,
}

/// Our own PID and our ancestors: never targets, even if marked (a cleanup
/// started from inside a marked shell must not end that shell).
fn self_and_ancestors(table: &[proc::ProcStat]) -> HashSet<i32> {
    let by_pid: HashMap<i32, i32> = table.iter().map(|s| (s.pid, s.ppid)).collect();
    let mut out = HashSet::new();
    let mut p = std::process::id() as i32;
    while p > 0 && out.insert(p) {
        p = by_pid.get(&p).copied().unwrap_or(0);
    }
    out
}

/// The state of one cleanup pass.
struct Cleaner<'a> {
    runs_dir: &'a Path,
    opts: &'a CleanupOptions,
    /// Harness liveness per run, decided at first sight.
    alive: HashMap<String, bool>,
    tracked: HashMap<i32, Tracked>,
    /// A pidfd per tracked process, readable once it has exited.
    exits: Pidfds,
    report: CleanupReport,
    our_pgid: i32,
    /// The phase under way: processes found later get its signal.
    phase: Phase,
    last_scan: Instant,
}

impl Cleaner<'_> {
    /// Scans for targets; signals the new ones with `sig`. Returns how many
    /// targets the scan saw.
    fn scan_and_signal(&mut self, sig: i32) -> usize {
        self.last_scan = Instant::now();
        let table = proc::table();
        let protected = self_and_ancestors(&table);
        let marked = proc::scan_marked_in(&table, self.opts.run.as_deref());
        let mut seen = 0;
        for m in marked {
            if m.stat.is_zombie() || protected.contains(&m.pid) {
                continue;
            }
            let live = *self
                .alive
                .entry(m.run.clone())
                .or_insert_with(|| marked_run_alive(self.runs_dir, &m));
            if live && !self.opts.include_live {
                if !self.report.skipped_live_runs.contains(&m.run) {
                    self.report.skipped_live_runs.push(m.run.clone());
                }
                continue;
            }
            seen += 1;
            let is_new = match self.tracked.get(&m.pid) {
                Some(t) => t.start_ticks != m.stat.start_ticks,
                None => true,
            };
            if is_new {
                if let Some(old) = self.tracked.remove(&m.pid) {
                    // The PID was reused by another marked process: the old one is gone.
                    self.report.ended.push(old.record);
                    self.exits.forget(m.pid);
                }
                self.watch(&m);
                let record = ProcessRecord {
                    pid: m.pid,
                    run: m.run.clone(),
                    instance: m.instance,
                    cmdline: proc::cmdline(m.pid).unwrap_or_else(|_| format!("[{}]", m.stat.comm)),
                    signal: None,
                };
                self.tracked.insert(
                    m.pid,
                    Tracked {
                        start_ticks: m.stat.start_ticks,
                        record,
                        killed: false,
                    },
                );
                self.signal(&m, sig);
            } else if sig == libc::SIGKILL {
                self.signal(&m, sig);
            }
        }
        seen
    }

    /// Sends `sig` to `m` (and to its group if it leads one), once per
    /// process and signal; a stopped process also gets SIGCONT so that it
    /// can act on SIGTERM.
    fn signal(&mut self, m: &Marked, sig: i32) {
        let Some(t) = self.tracked.get_mut(&m.pid) else {
            return;
        };
        if sig == libc::SIGKILL {
            if t.killed {
                return;
            }
            t.killed = true;
        }
        let name = if sig == libc::SIGKILL {
            "SIGKILL"
        } else {
            "SIGTERM"
        };
        match proc::signal_if_marked(m.pid, &m.run, sig) {
            Ok(true) => t.record.signal = Some(name),
            Ok(false) => {}
            Err(e) => self
                .report
                .errors
                .push(format!("{name} to pid {} (run {}): {e}", m.pid, m.run)),
        }
        if m.stat.pgid == m.pid && m.pid != self.our_pgid {
            if let Err(e) = proc::signal_group_if_leader_marked(m.pid, &m.run, sig) {
                self.report.errors.push(format!(
                    "{name} to process group {} (run {}): {e}",
                    m.pid, m.run
                ));
            }
        }
        if sig == libc::SIGTERM {
            let _ = proc::signal_if_marked(m.pid, &m.run, libc::SIGCONT);
        }
    }

    /// Watches `m`'s exit through a pidfd, if the pidfd is of the process
    /// the scan saw (same start time): else it is gone already.
    fn watch(&mut self, m: &Marked) {
        if self.exits.watch(m.pid)
            && !proc::stat(m.pid).is_ok_and(|st| st.start_ticks == m.stat.start_ticks)
        {
            self.exits.forget(m.pid);
        }
    }

    /// Moves tracked processes that exited (their pidfd is readable, or
    /// none could be opened) to `ended`; returns how many are still running.
    fn reap_gone(&mut self) -> usize {
        self.exits.prune();
        let gone: Vec<i32> = self
            .tracked
            .keys()
            .copied()
            .filter(|pid| self.exits.get(*pid).is_none())
            .collect();
        for pid in gone {
            if let Some(t) = self.tracked.remove(&pid) {
                self.report.ended.push(t.record);
            }
        }
        self.tracked.len()
    }

    /// `SIGKILL` to every tracked process, and to marked ones found now.
    fn kill_all(&mut self) {
        let pids: Vec<(i32, String)> = self
            .tracked
            .iter()
            .map(|(pid, t)| (*pid, t.record.run.clone()))
            .collect();
        for (pid, run) in pids {
            let Ok(stat) = proc::stat(pid) else {
                continue;
            };
            let m = Marked {
                pid,
                run,
                instance: None,
                cid: None,
                stat,
            };
            self.signal(&m, libc::SIGKILL);
        }
        self.scan_and_signal(libc::SIGKILL);
    }
    /// Removes run directories of dead runs (the named run only, if any)
    /// that have no surviving process.
    fn remove_dead_run_dirs(&mut self) {
        let survivors: HashSet<&str> = self
            .report
            .survivors
            .iter()
            .map(|p| p.run.as_str())
            .collect();
        let names: Vec<String> = match &self.opts.run {
            Some(r) => vec![r.clone()],
            None => match fs::read_dir(self.runs_dir) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect(),
                Err(_) => Vec::new(),
            },
        };
        let mut removed = Vec::new();
        for name in names {
            if !valid_run_id(&name) || survivors.contains(name.as_str()) {
                continue;
            }
            let dir = self.runs_dir.join(&name);
            if !dir.is_dir() {
                continue;
            }
            match remove_run_dir_if_dead(self.runs_dir, &name) {
                Ok(true) => removed.push(dir),
                Ok(false) => {}
                Err(e) => self
                    .report
                    .errors
                    .push(format!("removing {}: {e}", dir.display())),
            }
        }
        self.report.removed_run_dirs = removed;
    }
}

/// The marked processes of the targeted runs, as one [`Group`] for
/// [`terminate`]: re-scanned every [`RESCAN_INTERVAL`] (they may fork), their
/// exits waited for on pidfds.
impl Group for Cleaner<'_> {
    fn gone(&mut self) -> bool {
        // None left: confirm nothing new appeared (a fork just before its
        // parent died).
        self.reap_gone() == 0 && self.scan_and_signal(self.phase.signal()) == 0
    }
    fn signal(&mut self, phase: Phase) {
        self.phase = phase;
        match phase {
            Phase::Term => {
                self.scan_and_signal(libc::SIGTERM);
            }
            Phase::Kill => self.kill_all(),
        }
    }
    fn refresh(&mut self, phase: Phase) {
        if self.last_scan.elapsed() >= RESCAN_INTERVAL {
            self.scan_and_signal(phase.signal());
        }
    }
    fn wake_fds(&self) -> Vec<PollFd<'_>> {
        self.exits.wake_fds()
    }
}

/// Removes `<runs_dir>/<name>` if its harness is dead, holding the harness
/// lock meanwhile so that no harness can take the directory over halfway.
/// Returns whether it was removed.
fn remove_run_dir_if_dead(runs_dir: &Path, name: &str) -> io::Result<bool> {
    let dir = runs_dir.join(name);
    let lock = match open_harness_lock(runs_dir, name) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if harness_pid_alive(name) {
        return Ok(false);
    }
    match &lock {
        Some(f) => {
            if try_flock(f, LockMode::Exclusive)? == TryLock::WouldBlock {
                return Ok(false);
            }
        }
        None => {
            // No lock file: a harness may be creating the directory now.
            let modified = fs::metadata(&dir)?.modified()?;
            let age = SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default();
            if age < UNLOCKED_RUN_DIR_MIN_AGE {
                return Ok(false);
            }
        }
    }
    fs::remove_dir_all(&dir)?;
    drop(lock);
    Ok(true)
}

/// Ends leftover processes: see [`cleanup_in`].
pub fn cleanup(opts: CleanupOptions) -> CleanupReport {
    cleanup_in(&paths::runs_dir(), &opts)
}

/// Ends every marked process of the runs selected by `opts` whose harness is
/// dead (or of all selected runs with `include_live`): SIGTERM, then SIGKILL
/// after `opts.grace` to what is left, re-scanning for processes forked
/// meanwhile until none remain or [`KILL_DEADLINE`] passes. Then removes the
/// directories (under `runs_dir`) of selected runs whose harness is dead.
/// Unmarked processes are never signalled, nor our own process or its
/// ancestors.
pub fn cleanup_in(runs_dir: &Path, opts: &CleanupOptions) -> CleanupReport {
    let mut c = Cleaner {
        runs_dir,
        opts,
        alive: HashMap::new(),
        tracked: HashMap::new(),
        exits: Pidfds::default(),
        report: CleanupReport::default(),
        our_pgid: nix::unistd::getpgrp().as_raw(),
        phase: Phase::Term,
        last_scan: Instant::now(),
    };
    if let Some(r) = &opts.run {
        if !valid_run_id(r) {
            c.report
                .errors
                .push(format!("run id {r:?} is not a valid run directory name"));
            return c.report;
        }
    }
    terminate(
        &mut [&mut c],
        &Policy::term_then_kill(opts.grace, KILL_DEADLINE),
    );
    c.reap_gone();
    // After the gentle marker pass: whatever is still in a targeted run's
    // cgroup (unmarked processes included) goes with one cgroup.kill.
    cleanup_cgroups(runs_dir, opts, &mut c.report);
    let mut survivors: Vec<ProcessRecord> = c.tracked.drain().map(|(_, t)| t.record).collect();
    survivors.sort_by_key(|p| p.pid);
    c.report.survivors = survivors;
    c.report
        .ended
        .sort_by(|a, b| (&a.run, a.pid).cmp(&(&b.run, b.pid)));
    c.remove_dead_run_dirs();
    c.report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_compact() {
        assert_eq!(format_age(Duration::from_secs(45)), "45s");
        assert_eq!(format_age(Duration::from_secs(187)), "3m07s");
        assert_eq!(format_age(Duration::from_secs(7500)), "2h05m");
        assert_eq!(
            format_age(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d04h"
        );
    }

    #[test]
    fn table_has_the_columns_and_json_the_fields() {
        let v = InstanceView {
            run_id: "r1".into(),
            instance: Some(0),
            cid: Some(200),
            pids: vec![10, 11],
            age: Duration::from_secs(61),
            rss_kb: 2048,
            pss_kb: 1024,
            harness_alive: false,
        };
        let mut out = Vec::new();
        print_ps(std::slice::from_ref(&v), false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["RUN", "INSTANCE", "CID", "PIDS", "AGE", "RSS", "PSS", "HARNESS"]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["r1", "0", "200", "10,11", "1m01s", "2.0M", "1.0M", "dead"]
        );

        let mut out = Vec::new();
        print_ps(&[v], true, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json[0]["run_id"], "r1");
        assert_eq!(json[0]["age_s"], 61.0);
        assert_eq!(json[0]["pids"][1], 11);
        assert_eq!(json[0]["harness_alive"], false);
    }
}
