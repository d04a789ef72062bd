//! Reports: the human one in the seed's phase structure, and one JSON
//! document for scripts. The verdict and the exit code come from here.

use crate::run::{Instance, MemMetric, RunConfig, RunResult};
use crate::stats::Stats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::exit::*;

/// The run's judgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Partial,
    Fail,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Pass => EXIT_PASS,
            Verdict::Partial => EXIT_PARTIAL,
            Verdict::Fail => EXIT_FAIL,
        }
    }

    /// `PASS`, `PARTIAL` or `FAIL`, as every report spells it.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Partial => "PARTIAL",
            Verdict::Fail => "FAIL",
        }
    }
}

/// Phase 4's findings.
#[derive(Clone, Debug, Serialize)]
pub struct CidCheck {
    /// CIDs held by more than one instance, with the instances.
    pub collisions: BTreeMap<u32, Vec<u32>>,
    /// Instances whose CID is outside the range.
    pub out_of_range: Vec<u32>,
    /// Instances whose guest reports a CID other than the one allocated.
    pub mismatched: Vec<u32>,
    /// How many CIDs were confirmed by the guests themselves.
    pub verified: usize,
    pub unique: usize,
}

impl CidCheck {
    pub fn ok(&self) -> bool {
        self.collisions.is_empty() && self.out_of_range.is_empty() && self.mismatched.is_empty()
    }
}

/// Phase 4: what each guest says it was given (allocated CID where it does not say).
pub fn check_cids(instances: &[Instance], cfg: &RunConfig) -> CidCheck {
    let mut by_cid: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut out_of_range = Vec::new();
    let mut mismatched = Vec::new();
    let mut verified = 0;
    for i in instances.iter().filter(|i| i.pid.is_some()) {
        let cid = i.reported_cid.unwrap_or(i.cid);
        if i.reported_cid.is_some() {
            verified += 1;
        }
        if i.reported_cid.is_some_and(|r| r != i.cid) {
            mismatched.push(i.index);
        }
        if !cfg.cid_range.contains(cid) {
            out_of_range.push(i.index);
        }
        by_cid.entry(cid).or_default().push(i.index);
    }
    let unique = by_cid.len();
    by_cid.retain(|_, v| v.len() > 1);
    CidCheck {
        collisions: by_cid,
        out_of_range,
        mismatched,
        verified,
        unique,
    }
}

/// Everything the verdict is made of.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub verdict: Verdict,
    pub exit_code: i32,
    pub reasons: Vec<String>,
    pub booted: usize,
    pub total: usize,
    pub boot_ms: Option<Stats>,
    pub boot_over_target: Vec<u32>,
    pub mem_mb: Option<Stats>,
    pub mem_over_target: Vec<u32>,
    pub total_rss_kb: u64,
    pub total_pss_kb: u64,
    /// Tool-call latency (when `--tool-call` was given).
    pub tool_ms: Option<Stats>,
    /// The MCP server's start (first request to first answer), when tools ran.
    pub server_start_ms: Option<Stats>,
    pub tool_over_target: Vec<u32>,
    /// Booted instances whose tool call failed or returned a wrong result.
    pub tool_failed: Vec<u32>,
    pub cids: CidCheck,
    pub survivors: usize,
    /// The boot probes' vsock connection latency (connect + handshake).
    pub connect_ms: Option<Stats>,
    /// Instances whose connection took longer than `--max-connect-ms`.
    pub connect_over_target: Vec<u32>,
    /// Booted instances that died before cleanup.
    pub crashed: Vec<u32>,
    /// Instances that needed SIGKILL after the grace period.
    pub killed: Vec<u32>,
    /// Processes found in instance cgroups without the run's marker.
    pub unmarked: usize,
    /// How instances were contained.
    pub containment: String,
}

/// Instance `i`'s memory by metric `m`, MB (`None`: not measured).
pub(crate) fn mem_mb(i: &Instance, m: MemMetric) -> Option<f64> {
    let kb = match m {
        MemMetric::Pss => i.pss_kb?,
        MemMetric::Rss => i.rss_kb?,
    };
    Some(kb as f64 / 1024.0)
}

/// Judges a run by the rules in the README.
pub fn summarize(r: &RunResult, cfg: &RunConfig) -> Summary {
    let mut s = measure(r, cfg);
    s.reasons = instance_reasons(&s, cfg);
    s.reasons.extend(cleanup_reasons(&s, r, cfg));
    let healthy = s.booted - s.crashed.len();
    let min_ok = s.total > 0 && (healthy as f64) * 100.0 >= cfg.min_success_pct * s.total as f64;
    s.verdict = if s.reasons.is_empty() {
        Verdict::Pass
    } else if min_ok && s.survivors == 0 && r.interrupted.is_none() {
        Verdict::Partial
    } else {
        Verdict::Fail
    };
    s.exit_code = s.verdict.exit_code();
    s
}

/// The indices of the instances for which `pick` holds.
fn indices(instances: &[&Instance], pick: impl Fn(&Instance) -> bool) -> Vec<u32> {
    instances
        .iter()
        .filter(|i| pick(i))
        .map(|i| i.index)
        .collect()
}

/// The statistics of `figure` over the instances that have it.
fn stats_of(instances: &[&Instance], figure: impl Fn(&Instance) -> Option<f64>) -> Option<Stats> {
    Stats::of(
        &instances
            .iter()
            .filter_map(|i| figure(i))
            .collect::<Vec<_>>(),
    )
}

/// The run's figures and findings, before judging (no reasons, a PASS).
fn measure(r: &RunResult, cfg: &RunConfig) -> Summary {
    let booted: Vec<&Instance> = r.instances.iter().filter(|i| i.boot_ms.is_some()).collect();
    let metric = cfg.mem_metric;
    let tool_failed = match cfg.tool_call {
        Some(_) => indices(&booted, |i| i.tool_error.is_some() || i.tool_ms.is_none()),
        None => Vec::new(),
    };
    let connect_over_target = match cfg.max_connect_ms {
        None => Vec::new(),
        Some(max) => indices(&booted, |i| i.connect_ms.is_some_and(|c| c > max)),
    };
    let ended = || r.teardown.iter().flat_map(|t| &t.instances);
    Summary {
        verdict: Verdict::Pass,
        exit_code: Verdict::Pass.exit_code(),
        reasons: Vec::new(),
        booted: booted.len(),
        total: r.instances.len(),
        boot_ms: stats_of(&booted, |i| i.boot_ms),
        boot_over_target: indices(&booted, |i| i.boot_ms.unwrap_or(0.0) > cfg.max_boot_ms),
        mem_mb: stats_of(&booted, |i| mem_mb(i, metric)),
        mem_over_target: indices(&booted, |i| {
            mem_mb(i, metric).is_some_and(|m| m > cfg.max_mem_mb)
        }),
        total_rss_kb: booted.iter().filter_map(|i| i.rss_kb).sum(),
        total_pss_kb: booted.iter().filter_map(|i| i.pss_kb).sum(),
        tool_ms: stats_of(&booted, |i| i.tool_ms),
        server_start_ms: stats_of(&booted, |i| i.server_start_ms),
        tool_over_target: indices(&booted, |i| {
            i.tool_error.is_none() && i.tool_ms.is_some_and(|t| t > cfg.max_tool_ms)
        }),
        tool_failed,
        cids: check_cids(&r.instances, cfg),
        survivors: r.teardown.as_ref().map(|t| t.survivors.len()).unwrap_or(0),
        connect_ms: stats_of(&booted, |i| i.connect_ms),
        connect_over_target,
        crashed: indices(&booted, |i| i.crashed.is_some()),
        killed: ended()
            .filter(|t| t.ended == crate::supervisor::teardown::Ended::Killed)
            .map(|t| t.instance)
            .collect(),
        unmarked: ended().map(|t| t.unmarked.len()).sum(),
        containment: r.containment.clone(),
    }
}

/// What failed in the instances themselves: boots, crashes, targets, tool calls.
fn instance_reasons(s: &Summary, cfg: &RunConfig) -> Vec<String> {
    let mut reasons = Vec::new();
    if s.booted < s.total {
        reasons.push(format!(
            "{} of {} instances did not boot",
            s.total - s.booted,
            s.total
        ));
    }
    if !s.crashed.is_empty() {
        reasons.push(format!(
            "{} instance(s) died after booting, before cleanup",
            s.crashed.len()
        ));
    }
    if !s.boot_over_target.is_empty() {
        reasons.push(format!(
            "{} instance(s) booted slower than {} ms",
            s.boot_over_target.len(),
            cfg.max_boot_ms
        ));
    }
    if !s.mem_over_target.is_empty() {
        reasons.push(format!(
            "{} instance(s) used more than {} MB ({:?})",
            s.mem_over_target.len(),
            cfg.max_mem_mb,
            cfg.mem_metric
        ));
    }
    if let (false, Some(max)) = (s.connect_over_target.is_empty(), cfg.max_connect_ms) {
        reasons.push(format!(
            "{} vsock connection(s) slower than {max} ms",
            s.connect_over_target.len()
        ));
    }
    if !s.tool_failed.is_empty() {
        reasons.push(format!(
            "{} tool call(s) failed or returned a wrong result",
            s.tool_failed.len()
        ));
    }
    if !s.tool_over_target.is_empty() {
        reasons.push(format!(
            "{} tool call(s) slower than {} ms",
            s.tool_over_target.len(),
            cfg.max_tool_ms
        ));
    }
    reasons
}

/// What failed around the instances: CIDs, containment, cleanup, a signal.
fn cleanup_reasons(s: &Summary, r: &RunResult, cfg: &RunConfig) -> Vec<String> {
    let mut reasons = Vec::new();
    if !s.cids.ok() {
        reasons.push("CID check failed (collision, mismatch or out of range)".into());
    }
    let escaped = r.teardown.as_ref().map_or(0, |t| t.stragglers.len());
    if escaped > 0 {
        reasons.push(format!(
            "{escaped} process(es) escaped their instance (found by marker or as adopted orphans, and ended)"
        ));
    }
    if s.unmarked > 0 {
        reasons.push(format!(
            "{} process(es) dropped the run's marker (found in their instance's cgroup and ended)",
            s.unmarked
        ));
    }
    if !s.killed.is_empty() && r.interrupted.is_none() {
        reasons.push(format!(
            "{} instance(s) did not stop on SIGTERM within the {} ms grace period (SIGKILLed)",
            s.killed.len(),
            cfg.grace.as_millis()
        ));
    }
    if s.survivors > 0 {
        reasons.push(format!(
            "{} process(es) left behind after cleanup",
            s.survivors
        ));
    }
    if let Some(why) = &r.interrupted {
        reasons.push(why.clone());
    }
    reasons
}

/// The configuration as reported.
#[derive(Serialize)]
struct ConfigView<'a> {
    launcher: String,
    count: u32,
    concurrency: u32,
    port: u32,
    cid_range: String,
    max_boot_ms: f64,
    max_mem_mb: f64,
    mem_metric: MemMetric,
    boot_timeout_s: f64,
    grace_ms: u128,
    min_success_pct: f64,
    framing: String,
    log_dir: &'a std::path::Path,
    tool_call: Option<String>,
    max_tool_ms: f64,
    max_connect_ms: Option<f64>,
    /// The real MCP server every instance runs: qemu, its argv in the guest
    /// (`None` with a root filesystem image given: its manifest's command);
    /// process, the command the guest bridges to, as split.
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_server: Option<&'a [String]>,
    /// qemu launcher: the root filesystem image every VM attaches.
    #[serde(skip_serializing_if = "Option::is_none")]
    rootfs: Option<&'a std::path::Path>,
}

fn config_view(cfg: &RunConfig) -> ConfigView<'_> {
    ConfigView {
        launcher: cfg.launcher.kind.to_string(),
        count: cfg.count,
        concurrency: cfg.concurrency,
        port: cfg.port,
        cid_range: cfg.cid_range.to_string(),
        max_boot_ms: cfg.max_boot_ms,
        max_mem_mb: cfg.max_mem_mb,
        mem_metric: cfg.mem_metric,
        boot_timeout_s: cfg.boot_timeout.as_secs_f64(),
        grace_ms: cfg.grace.as_millis(),
        min_success_pct: cfg.min_success_pct,
        framing: format!("{:?}", cfg.framing).to_lowercase(),
        log_dir: &cfg.log_dir,
        tool_call: cfg.tool_call.as_ref().map(|c| c.name.clone()),
        max_tool_ms: cfg.max_tool_ms,
        max_connect_ms: cfg.max_connect_ms,
        mcp_server: cfg.launcher.qemu.server.as_deref().or(cfg
            .launcher
            .bridged_server
            .as_ref()
            .map(|s| s.argv.as_slice())),
        rootfs: cfg.launcher.qemu.rootfs.as_deref(),
    }
}

/// Writes the JSON document.
pub fn write_json(
    out: &mut dyn Write,
    r: &RunResult,
    cfg: &RunConfig,
    s: &Summary,
) -> io::Result<()> {
    let doc = serde_json::json!({
        "run_id": r.run_id,
        "host": hostname(),
        "config": config_view(cfg),
        "instances": r.instances,
        "summary": s,
        "teardown": r.teardown,
        "elapsed_ms": r.elapsed_ms,
        "containment": r.containment,
        "timeline": r.timeline,
        "harness": r.harness,
        "verdict": s.verdict,
        "exit_code": s.exit_code,
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

/// This machine's name (for reports merged across hosts).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

const RULE: &str = "================================";
/// Bins of the terminal's boot-time histogram.
const SPARK_BINS: usize = 24;

fn mb(kb: u64) -> String {
    format!("{:.1}MB", kb as f64 / 1024.0)
}

/// Writes the human report (the seed's "Sample Output", with true numbers);
/// on a terminal (`tty`) the boot times also get a one-line histogram.
pub fn write_human(
    out: &mut dyn Write,
    r: &RunResult,
    cfg: &RunConfig,
    s: &Summary,
    tty: bool,
) -> io::Result<()> {
    let h = Human { r, cfg, s, tty };
    h.config(out)?;
    h.spawning(out)?;
    h.boots(out)?;
    h.boot_stats(out)?;
    h.tools(out)?;
    h.memory(out)?;
    h.cids(out)?;
    h.cleanup(out)?;
    h.timeline(out)?;
    h.assessment(out)
}

/// The human report's sections, written from a run and its summary.
struct Human<'a> {
    r: &'a RunResult,
    cfg: &'a RunConfig,
    s: &'a Summary,
    /// On a terminal: the boot times also get a histogram.
    tty: bool,
}

impl Human<'_> {
    /// The title and the configuration.
    fn config(&self, out: &mut dyn Write) -> io::Result<()> {
        let (r, cfg) = (self.r, self.cfg);
        writeln!(out, "{RULE}\nUnikernel Load Testing\n{RULE}\n")?;
        writeln!(out, "Configuration:")?;
        writeln!(out, "  Run id: {}", r.run_id)?;
        writeln!(out, "  Launcher: {}", cfg.launcher.kind)?;
        writeln!(out, "  Containment: {}", r.containment)?;
        writeln!(out, "  Number of unikernels: {}", cfg.count)?;
        writeln!(out, "  Concurrency: {}", cfg.concurrency)?;
        writeln!(out, "  Vsock port: {}", cfg.port)?;
        writeln!(out, "  CID range: {}", cfg.cid_range)?;
        writeln!(out, "  Max boot time: {}ms", cfg.max_boot_ms)?;
        writeln!(
            out,
            "  Max memory per instance: {}MB ({})",
            cfg.max_mem_mb,
            cfg.mem_metric.label()
        )?;
        writeln!(out, "  Test timeout: {}s", cfg.boot_timeout.as_secs_f64())?;
        writeln!(out, "  Logs: {}", cfg.log_dir.display())?;
        if let Some(img) = &cfg.launcher.qemu.rootfs {
            let server = cfg
                .launcher
                .qemu
                .server
                .as_ref()
                .map_or("the image's manifest command".to_string(), |a| a.join(" "));
            writeln!(
                out,
                "  MCP server in every VM: {server} (root filesystem {})",
                img.display()
            )?;
        }
        if let Some(s) = &cfg.launcher.bridged_server {
            writeln!(out, "  MCP server bridged by every guest: {}", s.command)?;
        }
        Ok(())
    }

    /// Phase 1: each instance's start, and its launch commands.
    fn spawning(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = self.r;
        writeln!(out, "\nPhase 1: Concurrent Spawning")?;
        for i in &r.instances {
            match (i.pid, i.spawn_ms) {
                (Some(pid), Some(ms)) => writeln!(
                    out,
                    "[{}] Spawning unikernel with CID {}... pid {} (process group {}), spawned in {:.1}ms",
                    i.index,
                    i.cid,
                    pid,
                    i.pgid.unwrap_or(pid),
                    ms
                )?,
                _ => writeln!(
                    out,
                    "[{}] Spawning unikernel with CID {}... FAILED: {}",
                    i.index,
                    i.cid,
                    i.boot_error.as_deref().unwrap_or("not started")
                )?,
            }
            for h in &i.helper_commands {
                writeln!(out, "    helper: {h}")?;
            }
            if let Some(c) = &i.command {
                writeln!(out, "    $ {c}")?;
            }
        }
        Ok(())
    }

    /// Phase 2: each instance's boot, or why it failed.
    fn boots(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = self.r;
        writeln!(out, "\nPhase 2: Boot Time Analysis")?;
        for i in &r.instances {
            match (i.boot_ms, &i.boot_error) {
                (Some(ms), _) => {
                    let detail = match (
                        i.guest_ready_ms,
                        i.vmm_ms,
                        i.guest_kernel_ms,
                        i.probe_overhead_ms,
                    ) {
                        (Some(g), _, _, Some(p)) => {
                            format!(" [guest ready at {g:.1}ms, probe +{p:.1}ms]")
                        }
                        (_, Some(v), Some(k), Some(p)) => {
                            format!(
                                " [VMM+firmware {v:.1}ms, guest kernel+init {k:.1}ms, probe {p:.1}ms]"
                            )
                        }
                        _ => String::new(),
                    };
                    writeln!(
                        out,
                        "[{}] Boot successful: {:.1}ms (CID {}){}",
                        i.index, ms, i.cid, detail
                    )?
                }
                (None, Some(e)) if i.pid.is_some() => writeln!(
                    out,
                    "[{}] Boot FAILED (CID {}): {}; log: {}",
                    i.index,
                    i.cid,
                    e,
                    i.log.display()
                )?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Phase 2's figures: boot times and vsock connection latency against their targets.
    fn boot_stats(&self, out: &mut dyn Write) -> io::Result<()> {
        let (r, cfg, s, tty) = (self.r, self.cfg, &self.s, self.tty);
        match &s.boot_ms {
            Some(b) => {
                writeln!(
                    out,
                    "Boot times ({} of {} booted): min {:.1}ms, median {:.1}ms, p95 {:.1}ms, max {:.1}ms",
                    s.booted, s.total, b.min, b.median, b.p95, b.max
                )?;
                if tty {
                    let boots: Vec<f64> = r.instances.iter().filter_map(|i| i.boot_ms).collect();
                    if let Some(line) = crate::stats::sparkline(&boots, SPARK_BINS) {
                        writeln!(out, "  {line}")?;
                    }
                }
                if let Some(c) = &s.connect_ms {
                    let verdict = match cfg.max_connect_ms {
                        None => String::new(),
                        Some(max) if s.connect_over_target.is_empty() => {
                            format!(" ✓ within {max}ms")
                        }
                        Some(max) => format!(
                            " ✗ {} over {max}ms: {:?}",
                            s.connect_over_target.len(),
                            s.connect_over_target
                        ),
                    };
                    writeln!(
                        out,
                        "vsock connection (connect + handshake): min {:.2}ms, median {:.2}ms, p95 {:.2}ms, max {:.2}ms{verdict}",
                        c.min, c.median, c.p95, c.max
                    )?;
                }
                if s.boot_over_target.is_empty() {
                    writeln!(out, "✓ Boot times within target (<{}ms)", cfg.max_boot_ms)?;
                } else {
                    writeln!(
                        out,
                        "✗ {} instance(s) over the {}ms target: {:?}",
                        s.boot_over_target.len(),
                        cfg.max_boot_ms,
                        s.boot_over_target
                    )?;
                }
            }
            None => writeln!(out, "✗ No instance booted")?,
        }
        Ok(())
    }

    /// The tool-call phase, when there was one.
    fn tools(&self, out: &mut dyn Write) -> io::Result<()> {
        let (r, cfg, s) = (self.r, self.cfg, &self.s);
        if let Some(call) = &cfg.tool_call {
            writeln!(
                out,
                "\nTool Execution: {} (target <{}ms)",
                call.name, cfg.max_tool_ms
            )?;
            for i in r.instances.iter().filter(|i| i.boot_ms.is_some()) {
                match (&i.tool_error, i.tool_ms) {
                    (None, Some(ms)) => writeln!(
                        out,
                        "[{}] {:.2}ms (server start {:.1}ms, session {:.1}ms, MCP {}): {}",
                        i.index,
                        ms,
                        i.server_start_ms.unwrap_or(0.0),
                        i.tool_session_ms.unwrap_or(0.0),
                        i.tool_protocol.as_deref().unwrap_or("?"),
                        i.tool_result.as_deref().unwrap_or("")
                    )?,
                    (Some(e), _) => writeln!(out, "[{}] FAILED: {e}", i.index)?,
                    _ => writeln!(out, "[{}] not run", i.index)?,
                }
            }
            if let Some(t) = &s.tool_ms {
                writeln!(
                    out,
                    "Tool call latency: min {:.2}ms, median {:.2}ms, p95 {:.2}ms, max {:.2}ms",
                    t.min, t.median, t.p95, t.max
                )?;
            }
            if let Some(t) = &s.server_start_ms {
                writeln!(
                    out,
                    "Server start (first request to first answer): min {:.1}ms, median {:.1}ms, max {:.1}ms",
                    t.min, t.median, t.max
                )?;
            }
            if s.tool_failed.is_empty() && s.tool_over_target.is_empty() {
                writeln!(out, "✓ Tool calls succeeded within target")?;
            } else {
                if !s.tool_failed.is_empty() {
                    writeln!(out, "✗ Tool calls failed: instances {:?}", s.tool_failed)?;
                }
                if !s.tool_over_target.is_empty() {
                    writeln!(
                        out,
                        "✗ Tool calls over {}ms: instances {:?}",
                        cfg.max_tool_ms, s.tool_over_target
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Phase 3: each instance's memory, totals and the target.
    fn memory(&self, out: &mut dyn Write) -> io::Result<()> {
        let (r, cfg, s) = (self.r, self.cfg, &self.s);
        writeln!(out, "\nPhase 3: Memory Usage Analysis")?;
        for i in &r.instances {
            if let Some(why) = &i.crashed {
                writeln!(out, "[{}] ✗ CRASHED after booting: {why}", i.index)?;
            }
            if let (Some(rss), Some(pss)) = (i.rss_kb, i.pss_kb) {
                writeln!(
                    out,
                    "[{}] PSS {}, RSS {} ({} processes)",
                    i.index,
                    mb(pss),
                    mb(rss),
                    i.pids.len()
                )?;
            }
        }
        if s.booted > 0 {
            writeln!(
                out,
                "Total memory usage: PSS {}, RSS {}",
                mb(s.total_pss_kb),
                mb(s.total_rss_kb)
            )?;
            // Over the instances measured (a crashed one has no figure).
            let measured = r
                .instances
                .iter()
                .filter(|i| i.boot_ms.is_some() && i.pss_kb.is_some())
                .count()
                .max(1) as u64;
            writeln!(
                out,
                "Average memory per unikernel: PSS {}, RSS {}",
                mb(s.total_pss_kb / measured),
                mb(s.total_rss_kb / measured)
            )?;
            if s.mem_over_target.is_empty() {
                writeln!(
                    out,
                    "✓ Memory usage within target (<{}MB {})",
                    cfg.max_mem_mb,
                    cfg.mem_metric.label()
                )?;
            } else {
                writeln!(
                    out,
                    "✗ {} instance(s) over {}MB: {:?}",
                    s.mem_over_target.len(),
                    cfg.max_mem_mb,
                    s.mem_over_target
                )?;
            }
        } else {
            writeln!(out, "(no booted instance to measure)")?;
        }
        Ok(())
    }

    /// Phase 4: CID uniqueness and range.
    fn cids(&self, out: &mut dyn Write) -> io::Result<()> {
        let (cfg, s) = (self.cfg, &self.s);
        writeln!(out, "\nPhase 4: CID Allocation Analysis")?;
        let c = &s.cids;
        if c.collisions.is_empty() {
            writeln!(
                out,
                "✓ No CID collisions detected ({} unique CIDs, {} confirmed by the guests)",
                c.unique, c.verified
            )?;
        } else {
            for (cid, who) in &c.collisions {
                writeln!(out, "✗ CID {cid} used by instances {who:?}")?;
            }
        }
        if !c.mismatched.is_empty() {
            writeln!(
                out,
                "✗ Guests report a CID other than the one allocated: instances {:?}",
                c.mismatched
            )?;
        }
        if c.out_of_range.is_empty() {
            writeln!(out, "✓ All CIDs within {}", cfg.cid_range)?;
        } else {
            writeln!(
                out,
                "✗ CIDs outside {}: instances {:?}",
                cfg.cid_range, c.out_of_range
            )?;
        }
        Ok(())
    }

    /// Phase 5: how each instance ended, and what was found left over.
    fn cleanup(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = self.r;
        writeln!(out, "\nPhase 5: Cleanup")?;
        if let Some(td) = &r.teardown {
            for t in &td.instances {
                let i = &r.instances[t.instance as usize];
                writeln!(
                    out,
                    "[{}] Terminating PID {} ({} process(es))... {} in {:.1}ms{}",
                    t.instance,
                    i.pid.unwrap_or(0),
                    t.pids.len(),
                    t.ended_word(),
                    t.ms,
                    i.exit_status
                        .as_ref()
                        .map(|e| format!("; launcher {e}"))
                        .unwrap_or_default()
                )?;
            }
            for t in &td.instances {
                for u in &t.unmarked {
                    writeln!(
                        out,
                        "! [{}] process without the run's marker, found in the instance's cgroup: pid {} ({})",
                        t.instance, u.pid, u.cmdline
                    )?;
                }
            }
            for st in &td.stragglers {
                writeln!(
                    out,
                    "! Straggler found by marker and killed: pid {} ({})",
                    st.pid, st.cmdline
                )?;
            }
            if td.survivors.is_empty() {
                writeln!(
                    out,
                    "✓ No process left behind (containment: {}; checked every process for UKLOAD_RUN={})",
                    r.containment, r.run_id
                )?;
            } else {
                for sv in &td.survivors {
                    writeln!(out, "✗ Survivor: pid {} ({})", sv.pid, sv.cmdline)?;
                }
            }
        }
        Ok(())
    }

    /// When each phase ended, and what ukload itself used.
    fn timeline(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = self.r;
        writeln!(
            out,
            "\nTimeline: all spawned at {:.0} ms, all booted or failed at {:.0} ms, cleanup {:.0} ms, total {:.0} ms",
            r.timeline.spawned_ms,
            r.timeline.booted_ms,
            r.timeline.teardown_end_ms - r.timeline.teardown_start_ms,
            r.elapsed_ms
        )?;
        writeln!(
            out,
            "ukload itself: CPU {:.0} ms user + {:.0} ms system, peak RSS {}",
            r.harness.cpu_user_ms,
            r.harness.cpu_sys_ms,
            mb(r.harness.peak_rss_kb)
        )?;
        Ok(())
    }

    /// The verdict and its reasons.
    fn assessment(&self, out: &mut dyn Write) -> io::Result<()> {
        let s = &self.s;
        writeln!(out, "\nOverall Assessment:")?;
        match s.verdict {
            Verdict::Pass => writeln!(out, "✓ PASS - All tests successful")?,
            Verdict::Partial => writeln!(out, "⚠ PARTIAL - {}", s.reasons.join("; "))?,
            Verdict::Fail => writeln!(out, "✗ FAIL - {}", s.reasons.join("; "))?,
        }
        Ok(())
    }
}
