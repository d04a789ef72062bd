//! `ukload cycles`: spawn → boot → terminate, repeated (the seed's leak and
//! rapid-cycle tests), checking that ukload itself does not leak.
//!
//! Each cycle is a whole quiet run of `per_cycle` instances under one run id
//! (so the watchdog started for that id covers every cycle); the launcher is
//! checked once, before the first ([`run::preflight`]). After
//! one warm-up cycle (lazy statics, allocator arenas and thread-locals are
//! created by the first run, not leaked by every run), ukload's own open
//! file descriptors (`/proc/self/fd`), threads (`/proc/self/task`) and RSS
//! (`VmRSS` of `/proc/self/status`) are sampled; they are sampled again after
//! the last cycle, and growth beyond the tolerances below fails the command
//! with a message naming the metric.

use crate::exit::{EXIT_FAIL, EXIT_PASS};
use crate::progress::{self, Event, ProgressMode};
use crate::run::{self, RunConfig, RunError};
use crate::stats::Stats;
use crate::supervisor::Supervisor;
use serde::Serialize;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Open descriptors ukload may gain over all cycles. Zero would be exact for
/// ukload itself; 2 leaves room for a descriptor a library opens lazily
/// (e.g. a `/proc` or log file cached on first use) without hiding a leak of
/// one descriptor per cycle, which would show as +N after N cycles.
pub const FD_GROWTH_MAX: usize = 2;
/// Threads ukload may gain: none. Worker threads are joined at the end of
/// every run; only the reaper thread lives on, and it existed at the start.
pub const THREAD_GROWTH_MAX: usize = 0;
/// RSS (KiB) ukload may gain over all cycles: 4 MiB absorbs allocator
/// fragmentation and the boot-time samples kept for the report (8 bytes per
/// boot), while a leak of 4 KiB per cycle shows over 1000 cycles. Measured
/// on 2026-11-27 (debug build, process launcher, one instance per cycle,
/// `--format json -q`, Linux 6.18, 2 shared cores): +92, +120 and +144 kB
/// over 300 cycles, +128 kB over 1000 (it does not grow with the cycles).
pub const RSS_GROWTH_MAX_KB: u64 = 4 * 1024;
/// Cycles run before the start sample and not counted.
pub const WARMUP_CYCLES: u32 = 1;
/// Progress is printed every this many cycles (and on every failure).
const PROGRESS_EVERY: u32 = 10;
/// Failure messages kept in the report (the first ones).
const FAILURES_KEPT: usize = 10;

/// What `ukload cycles` was asked to do.
#[derive(Clone, Debug)]
pub struct CyclesConfig {
    /// Measured cycles (after the warm-up).
    pub cycles: u32,
    /// Configuration of each cycle's run; `count` is the instances per cycle.
    pub run: RunConfig,
    /// Progress on stderr (a failed cycle at once, a summary every
    /// [`PROGRESS_EVERY`] cycles).
    pub progress: ProgressMode,
    /// Percentage of clean cycles needed for exit 0 (`--min-success`).
    pub min_success_pct: f64,
}

/// The host and the guests at one moment of `ukload cycles`, so that a leak
/// in the guests or the VMM shows, not only one in ukload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HostSample {
    /// `MemAvailable` of `/proc/meminfo`.
    pub mem_available_kb: u64,
    /// Mean PSS of one instance in that cycle (booted instances).
    pub instance_pss_kb: u64,
}

/// The value of a `Key:   N kB` line of a `/proc` file (`meminfo`, `status`).
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// `MemAvailable` from `/proc/meminfo`, kB.
pub fn mem_available_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| kb_field(&t, "MemAvailable"))
        .unwrap_or(0)
}

fn host_sample(r: &run::RunResult) -> HostSample {
    let pss: Vec<u64> = r.instances.iter().filter_map(|i| i.pss_kb).collect();
    HostSample {
        mem_available_kb: mem_available_kb(),
        instance_pss_kb: if pss.is_empty() {
            0
        } else {
            pss.iter().sum::<u64>() / pss.len() as u64
        },
    }
}

/// ukload's own resource use at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceSample {
    /// Entries of `/proc/self/fd`.
    pub fds: usize,
    /// Entries of `/proc/self/task`.
    pub threads: usize,
    /// `VmRSS` of `/proc/self/status`, KiB.
    pub rss_kb: u64,
}

/// Reads ukload's own fds, threads and RSS.
pub fn sample() -> io::Result<ResourceSample> {
    let count = |dir: &str| -> io::Result<usize> {
        Ok(std::fs::read_dir(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {dir}: {e}")))?
            .count())
    };
    // read_dir holds one descriptor of its own while counting /proc/self/fd.
    let fds = count("/proc/self/fd")?.saturating_sub(1);
    let threads = count("/proc/self/task")?;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| io::Error::new(e.kind(), format!("reading /proc/self/status: {e}")))?;
    let rss_kb = kb_field(&status, "VmRSS")
        .ok_or_else(|| io::Error::other("/proc/self/status has no VmRSS line"))?;
    Ok(ResourceSample {
        fds,
        threads,
        rss_kb,
    })
}

/// Growth of `end` over `start` beyond the tolerances, one message per
/// metric, naming it. Empty: flat.
pub fn check_growth(start: &ResourceSample, end: &ResourceSample) -> Vec<String> {
    let mut leaks = Vec::new();
    if end.fds > start.fds + FD_GROWTH_MAX {
        leaks.push(format!(
            "open file descriptors grew from {} to {} (tolerance +{FD_GROWTH_MAX})",
            start.fds, end.fds
        ));
    }
    if end.threads > start.threads + THREAD_GROWTH_MAX {
        leaks.push(format!(
            "threads grew from {} to {} (tolerance +{THREAD_GROWTH_MAX})",
            start.threads, end.threads
        ));
    }
    if end.rss_kb > start.rss_kb + RSS_GROWTH_MAX_KB {
        leaks.push(format!(
            "RSS grew from {} kB to {} kB (tolerance +{RSS_GROWTH_MAX_KB} kB)",
            start.rss_kb, end.rss_kb
        ));
    }
    leaks
}

/// The outcome of `ukload cycles`.
#[derive(Clone, Debug, Serialize)]
pub struct CyclesReport {
    pub run_id: String,
    /// Cycles asked for (after the warm-up).
    pub cycles: u32,
    /// Cycles completed (fewer if interrupted).
    pub completed: u32,
    pub per_cycle: u32,
    /// Cycles in which every instance booted and nothing was left behind.
    pub succeeded: u32,
    pub success_pct: f64,
    /// Boot times of every instance of every measured cycle.
    pub boot_ms: Option<Stats>,
    pub start: ResourceSample,
    pub end: ResourceSample,
    /// One message per metric that grew beyond its tolerance.
    pub leaks: Vec<String>,
    /// Percentage of clean cycles needed for exit 0.
    pub min_success_pct: f64,
    /// Cycles that left a process behind (these fail the run whatever
    /// `--min-success` says).
    pub left_behind: u32,
    /// The host's available memory and the guests' PSS in the first and
    /// the last measured cycle.
    pub host_first: HostSample,
    pub host_last: HostSample,
    /// The first failures, "cycle N: why".
    pub failures: Vec<String>,
    pub interrupted: bool,
    pub elapsed_ms: f64,
}

impl CyclesReport {
    /// 0 when at least `--min-success` % of the cycles were clean (all, by
    /// default), none left a process behind, nothing grew and all ran; 1
    /// otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.leaks.is_empty()
            && self.left_behind == 0
            && self.completed == self.cycles
            && self.success_pct >= self.min_success_pct
            && !self.interrupted
        {
            EXIT_PASS
        } else {
            EXIT_FAIL
        }
    }

    /// The human report.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "ukload cycles: {} of {} cycle(s) of {} instance(s) (run {}), after {WARMUP_CYCLES} warm-up cycle(s)",
            self.completed, self.cycles, self.per_cycle, self.run_id
        )?;
        writeln!(
            out,
            "  succeeded: {}/{} ({:.1}%, at least {}% needed)",
            self.succeeded, self.completed, self.success_pct, self.min_success_pct
        )?;
        if self.left_behind > 0 {
            writeln!(
                out,
                "  ✗ {} cycle(s) left processes behind",
                self.left_behind
            )?;
        }
        writeln!(
            out,
            "  host MemAvailable: {} kB -> {} kB; PSS per instance: {} kB -> {} kB (first -> last cycle)",
            self.host_first.mem_available_kb,
            self.host_last.mem_available_kb,
            self.host_first.instance_pss_kb,
            self.host_last.instance_pss_kb
        )?;
        if let Some(b) = &self.boot_ms {
            writeln!(
                out,
                "  boot: min {:.1}ms, median {:.1}ms, p95 {:.1}ms, max {:.1}ms, mean {:.1}ms ({} boots)",
                b.min, b.median, b.p95, b.max, b.mean, b.count
            )?;
        }
        writeln!(
            out,
            "  open fds: {} -> {} (tolerance +{FD_GROWTH_MAX})",
            self.start.fds, self.end.fds
        )?;
        writeln!(
            out,
            "  threads:  {} -> {} (tolerance +{THREAD_GROWTH_MAX})",
            self.start.threads, self.end.threads
        )?;
        writeln!(
            out,
            "  RSS:      {} kB -> {} kB (tolerance +{RSS_GROWTH_MAX_KB} kB)",
            self.start.rss_kb, self.end.rss_kb
        )?;
        for f in &self.failures {
            writeln!(out, "  ✗ {f}")?;
        }
        for l in &self.leaks {
            writeln!(out, "  ✗ leak: {l}")?;
        }
        if self.interrupted {
            writeln!(out, "  ✗ interrupted by signal")?;
        }
        match self.exit_code() {
            EXIT_PASS if self.succeeded == self.completed => {
                writeln!(out, "✓ PASS - every cycle clean, resources flat")
            }
            EXIT_PASS => writeln!(
                out,
                "✓ PASS - {:.1}% of cycles clean (at least {}% needed), nothing left behind, resources flat",
                self.success_pct, self.min_success_pct
            ),
            _ => writeln!(out, "✗ FAIL"),
        }
    }
}

/// Why one run was not a clean cycle, if it was not: an instance that did
/// not boot or died after booting, a process that dropped the run's marker
/// (contained only by its cgroup), or anything left behind.
fn cycle_failure(r: &run::RunResult) -> Option<String> {
    let mut why: Vec<String> = Vec::new();
    let failed: Vec<String> = r
        .instances
        .iter()
        .filter_map(|i| i.boot_error.as_ref().map(|e| format!("[{}] {e}", i.index)))
        .collect();
    if !failed.is_empty() {
        why.push(format!(
            "{} did not boot: {}",
            failed.len(),
            failed.join("; ")
        ));
    }
    let crashed: Vec<String> = r
        .instances
        .iter()
        .filter_map(|i| i.crashed.as_ref().map(|e| format!("[{}] {e}", i.index)))
        .collect();
    if !crashed.is_empty() {
        why.push(format!(
            "{} died after booting: {}",
            crashed.len(),
            crashed.join("; ")
        ));
    }
    if let Some(t) = &r.teardown {
        let unmarked: usize = t.instances.iter().map(|i| i.unmarked.len()).sum();
        if unmarked > 0 {
            why.push(format!(
                "{unmarked} process(es) dropped the run's marker (escapes, ended by cgroup)"
            ));
        }
        if !t.stragglers.is_empty() {
            why.push(format!(
                "{} process(es) escaped their instance (found by marker or as adopted orphans, and ended)",
                t.stragglers.len()
            ));
        }
        if !t.survivors.is_empty() {
            why.push(format!("{} process(es) left behind", t.survivors.len()));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Runs the cycles. `stop` is the SIGINT/SIGTERM flag: the current cycle is
/// torn down and no further one starts.
pub fn run_cycles(
    cfg: &CyclesConfig,
    run_id: &str,
    sup: &'static Supervisor,
    stop: Arc<AtomicBool>,
) -> Result<CyclesReport, RunError> {
    let t0 = Instant::now();
    let mut run_cfg = cfg.run.clone();
    run_cfg.progress = ProgressMode::Off;
    let sample_or =
        |what: &'static str| sample().map_err(|error| RunError::Sampling { what, error });
    run::preflight(&mut run_cfg, sup)?;
    for _ in 0..WARMUP_CYCLES {
        // Its outcome is not counted; a failing guest fails the measured cycles.
        run::run_preflighted(run_cfg.clone(), run_id, sup, stop.clone())?;
    }
    let start = sample_or("start")?;
    let mut tally = CycleTally {
        boots: Vec::with_capacity(cfg.cycles as usize * run_cfg.count as usize),
        ..CycleTally::default()
    };
    for n in 1..=cfg.cycles {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let r = run::run_preflighted(run_cfg.clone(), run_id, sup, stop.clone())?;
        if r.interrupted.is_some() {
            break;
        }
        tally.record(cfg, n, &r);
        if cfg.progress.on() && n % PROGRESS_EVERY == 0 {
            emit_cycle_progress(cfg, n, tally.succeeded);
        }
    }
    let end = sample_or("end")?;
    Ok(CyclesReport {
        run_id: run_id.to_string(),
        cycles: cfg.cycles,
        completed: tally.completed,
        per_cycle: run_cfg.count,
        succeeded: tally.succeeded,
        success_pct: tally.success_pct(),
        boot_ms: Stats::of(&tally.boots),
        start,
        end,
        leaks: check_growth(&start, &end),
        min_success_pct: cfg.min_success_pct,
        left_behind: tally.left_behind,
        host_first: tally.host_first,
        host_last: tally.host_last,
        failures: tally.failures,
        interrupted: stop.load(Ordering::Relaxed),
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
    })
}

/// What the measured cycles add up to so far.
#[derive(Default)]
struct CycleTally {
    /// Boot times of every instance of every cycle.
    boots: Vec<f64>,
    /// The first [`FAILURES_KEPT`] failed cycles and why.
    failures: Vec<String>,
    completed: u32,
    succeeded: u32,
    /// Cycles that left processes behind.
    left_behind: u32,
    host_first: HostSample,
    host_last: HostSample,
}

impl CycleTally {
    /// Counts cycle `n`'s run: its boots, the host figures, processes left
    /// behind, and whether it was clean (a failure is announced and kept).
    fn record(&mut self, cfg: &CyclesConfig, n: u32, r: &run::RunResult) {
        self.completed += 1;
        self.host_last = host_sample(r);
        if self.completed == 1 {
            self.host_first = self.host_last;
        }
        if r.teardown.as_ref().is_some_and(|t| !t.survivors.is_empty()) {
            self.left_behind += 1;
        }
        self.boots
            .extend(r.instances.iter().filter_map(|i| i.boot_ms));
        match cycle_failure(r) {
            None => self.succeeded += 1,
            Some(why) => {
                progress::emit(
                    cfg.progress,
                    Event::CycleFailed {
                        cycle: n,
                        of: cfg.cycles,
                        why: why.clone(),
                    },
                );
                if self.failures.len() < FAILURES_KEPT {
                    self.failures.push(format!("cycle {n}: {why}"));
                }
            }
        }
    }

    /// Clean cycles as a percentage of the completed ones (0 for none).
    fn success_pct(&self) -> f64 {
        if self.completed == 0 {
            0.0
        } else {
            f64::from(self.succeeded) * 100.0 / f64::from(self.completed)
        }
    }
}

/// Announces progress after cycle `n`: the clean cycles so far and this
/// process's file descriptors and threads.
fn emit_cycle_progress(cfg: &CyclesConfig, n: u32, clean: u32) {
    let now = sample();
    progress::emit(
        cfg.progress,
        Event::CycleProgress {
            cycle: n,
            of: cfg.cycles,
            clean,
            fds: now.as_ref().map_or(0, |s| s.fds),
            threads: now.as_ref().map_or(0, |s| s.threads),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kb_fields_of_proc_files() {
        let t = "MemTotal:       16 kB\nMemAvailable:    8123 kB\nVmRSS:\t  42 kB\n";
        assert_eq!(kb_field(t, "MemAvailable"), Some(8123));
        assert_eq!(kb_field(t, "VmRSS"), Some(42));
        assert_eq!(kb_field(t, "Mem"), None);
        assert!(mem_available_kb() > 0);
    }

    #[test]
    fn sample_reads_this_process() {
        let s = sample().unwrap();
        assert!(s.fds >= 3, "{s:?}");
        assert!(s.threads >= 1 && s.rss_kb > 0, "{s:?}");
    }

    #[test]
    fn growth_beyond_tolerance_names_the_metric() {
        let a = ResourceSample {
            fds: 10,
            threads: 2,
            rss_kb: 10_000,
        };
        assert!(check_growth(&a, &a).is_empty());
        let within = ResourceSample {
            fds: 10 + FD_GROWTH_MAX,
            threads: 2 + THREAD_GROWTH_MAX,
            rss_kb: 10_000 + RSS_GROWTH_MAX_KB,
        };
        assert!(check_growth(&a, &within).is_empty());
        let fds = ResourceSample {
            fds: 11 + FD_GROWTH_MAX,
            ..a
        };
        let g = check_growth(&a, &fds);
        assert_eq!(g.len(), 1);
        assert!(g[0].contains("file descriptors"), "{g:?}");
        let all = ResourceSample {
            fds: 100,
            threads: 3 + THREAD_GROWTH_MAX,
            rss_kb: 10_001 + RSS_GROWTH_MAX_KB,
        };
        let g = check_growth(&a, &all).join(" | ");
        assert!(
            g.contains("descriptors") && g.contains("threads") && g.contains("RSS"),
            "{g}"
        );
    }
}
