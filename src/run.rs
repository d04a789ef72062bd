//! `ukload run`: the seed's five phases, for real.
//!
//! 1. Spawn: a pool of `concurrency` threads takes instance indices from a
//!    channel; each forks its launcher in a new process group and then waits
//!    for that instance's boot. No fixed sleeps.
//! 2. Boot: spawn → first successful reply (or console marker), per instance.
//! 3. Memory: RSS and PSS of each instance's whole process tree.
//! 4. CIDs: uniqueness and range, from what each guest reports it was given.
//! 5. Cleanup: SIGTERM all in parallel, SIGKILL after the grace period, reap,
//!    verify by marker that nothing is left.

use crate::cid::{CidLease, CidRange, CidRegistry, HolderInfo};
use crate::framing::Framing;
use crate::launcher::{InstanceCtx, LaunchError, LauncherConfig};
use crate::memory::TreeMemory;
use crate::probe::{self, BootFailure};
use crate::progress::{self, Event, ProgressMode};
use crate::supervisor::cgroup::InstanceCgroup;
use crate::supervisor::teardown::{self, Target, TeardownReport};
use crate::supervisor::{Command, Redirect, Supervisor};
use crate::{ENV_CID, ENV_INSTANCE, ENV_RUN};
use serde::Serialize;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which memory figure the target is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemMetric {
    Pss,
    Rss,
}

impl std::str::FromStr for MemMetric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pss" => Ok(MemMetric::Pss),
            "rss" => Ok(MemMetric::Rss),
            _ => Err(format!("unknown memory metric {s:?}: expected pss or rss")),
        }
    }
}

/// Everything `ukload run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub count: u32,
    pub concurrency: u32,
    pub boot_timeout: Duration,
    pub max_boot_ms: f64,
    pub max_mem_mb: f64,
    pub mem_metric: MemMetric,
    pub cid_range: CidRange,
    pub port: u32,
    pub grace: Duration,
    pub min_success_pct: f64,
    pub log_dir: PathBuf,
    pub framing: Framing,
    pub launcher: LauncherConfig,
    /// The tool-call phase (`--tool-call`), if asked for.
    pub tool_call: Option<crate::toolcall::ToolCall>,
    /// Tool-call latency target, ms.
    pub max_tool_ms: f64,
    /// vsock connection latency target, ms (`--max-connect-ms`; none: not checked).
    pub max_connect_ms: Option<f64>,
    /// Progress on stderr: human lines, JSON events, or nothing.
    pub progress: ProgressMode,
}

/// One instance's record, filled phase by phase.
#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    pub index: u32,
    /// The CID the registry gave it.
    pub cid: u32,
    /// The CID the guest reports having (None: it did not say).
    pub reported_cid: Option<u32>,
    pub log: PathBuf,
    /// The launch command line (also the first lines of the log).
    pub command: Option<String>,
    /// Helpers started before it (e.g. the vhost-user vsock backend).
    pub helper_commands: Vec<String>,
    pub pid: Option<i32>,
    pub pgid: Option<i32>,
    /// Every pid of its tree when memory was sampled.
    pub pids: Vec<i32>,
    /// Time the spawn call took (fork to exec done).
    pub spawn_ms: Option<f64>,
    /// When its first process was forked, ms from the start of the run.
    pub spawned_at_ms: Option<f64>,
    /// Spawn → first successful reply (the boot time).
    pub boot_ms: Option<f64>,
    /// The boot probe's vsock connection: connect + hybrid handshake, ms.
    pub connect_ms: Option<f64>,
    /// Spawn → the guest's own "listening" stamp (same host clock; process launcher).
    pub guest_ready_ms: Option<f64>,
    /// What the probe added after the guest was ready.
    pub probe_overhead_ms: Option<f64>,
    /// VMs: launcher spawn → guest kernel start (VMM, firmware, decompression).
    pub vmm_ms: Option<f64>,
    /// VMs: guest kernel start → agent ready (the guest's CLOCK_BOOTTIME).
    pub guest_kernel_ms: Option<f64>,
    pub boot_error: Option<String>,
    /// The tool-call phase: latency of `tools/call`, connect + initialize, result, failure.
    pub tool_ms: Option<f64>,
    pub tool_session_ms: Option<f64>,
    pub tool_result: Option<String>,
    pub tool_error: Option<String>,
    /// The MCP revision and era the tool call spoke, e.g. `2026-07-28 (modern)`.
    pub tool_protocol: Option<String>,
    /// The MCP server's start as the tool phase saw it: its first request
    /// to the first answer, ms ([`crate::toolcall::ToolOutcome::server_start_ms`]).
    pub server_start_ms: Option<f64>,
    pub rss_kb: Option<u64>,
    pub pss_kb: Option<u64>,
    /// How its launcher ended, when it did.
    pub exit_status: Option<String>,
    pub teardown: Option<String>,
    pub teardown_ms: Option<f64>,
    /// Booted, then died before cleanup (all its processes gone, or its
    /// launcher exited although it was not expected to daemonize): how.
    pub crashed: Option<String>,
    /// Launcher may exit 0 after daemonizing its VMM (not serialized).
    #[serde(skip)]
    pub may_daemonize: bool,
}

/// The whole run's result.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub instances: Vec<Instance>,
    pub teardown: Option<TeardownReport>,
    pub interrupted: Option<String>,
    pub elapsed_ms: f64,
    /// How the instances were contained: `cgroup` or `marker`, and why.
    pub containment: String,
    /// When each phase ended, ms from the start of the run.
    pub timeline: Timeline,
    /// What the harness itself used (all its threads).
    pub harness: HarnessUsage,
}

/// Phase ends, ms from the start of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// The last launcher was started.
    pub spawned_ms: f64,
    /// Every instance was ready or had failed.
    pub booted_ms: f64,
    /// Cleanup began.
    pub teardown_start_ms: f64,
    /// Cleanup ended.
    pub teardown_end_ms: f64,
}

/// The harness's own resource use (`getrusage(RUSAGE_SELF)`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HarnessUsage {
    pub cpu_user_ms: f64,
    pub cpu_sys_ms: f64,
    /// Peak resident set size of ukload itself.
    pub peak_rss_kb: u64,
}

impl HarnessUsage {
    /// This process's usage so far.
    pub fn now() -> HarnessUsage {
        use nix::sys::resource::{getrusage, UsageWho};
        let Ok(ru) = getrusage(UsageWho::RUSAGE_SELF) else {
            return HarnessUsage::default();
        };
        let ms =
            |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1000.0 + t.tv_usec() as f64 / 1000.0;
        HarnessUsage {
            cpu_user_ms: ms(ru.user_time()),
            cpu_sys_ms: ms(ru.system_time()),
            peak_rss_kb: ru.max_rss().max(0) as u64,
        }
    }
}

/// Errors that stop a run before any instance starts.
#[derive(Debug)]
pub enum RunError {
    Launch(LaunchError),
    Cid(crate::cid::CidError),
    /// A flag's value cannot work (exit 64).
    Usage(String),
    Setup(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Launch(e) => e.fmt(f),
            RunError::Cid(e) => e.fmt(f),
            RunError::Usage(m) | RunError::Setup(m) => f.write_str(m),
        }
    }
}

/// Shared by the workers.
struct Shared {
    cfg: RunConfig,
    run_id: String,
    run_dir: PathBuf,
    stop: Arc<AtomicBool>,
    sup: &'static Supervisor,
}

/// What a worker sends back.
struct Outcome {
    index: u32,
    pid: Option<i32>,
    pgid: Option<i32>,
    spawn_ms: Option<f64>,
    started_mono_ns: u64,
    /// Where the guest is reached over vsock (None: console readiness).
    endpoint: Option<crate::vsock::Endpoint>,
    ready: Result<probe::Ready, String>,
    /// The launch command line, and its helpers'.
    command: Option<String>,
    helper_commands: Vec<String>,
    may_daemonize: bool,
    /// The instance's cgroup (cgroup containment), kept until teardown.
    cgroup: Option<Arc<InstanceCgroup>>,
}

/// The guest agent's pid when it is the init of a VM.
const GUEST_INIT_PID: u32 = 1;

/// Runs the five phases. `stop` is set by SIGINT/SIGTERM.
pub fn run(
    cfg: RunConfig,
    run_id: &str,
    sup: &'static Supervisor,
    stop: Arc<AtomicBool>,
) -> Result<RunResult, RunError> {
    let t0 = Instant::now();
    let t0_mono_ns = crate::clock::monotonic_ns();
    let mut cfg = cfg;
    cfg.launcher.preflight().map_err(RunError::Launch)?;
    let fd_limit = crate::supervisor::raise_fd_limit();
    let fds_needed = u64::from(cfg.count) * FDS_PER_INSTANCE + FDS_BASE;
    if fd_limit > 0 && fds_needed > fd_limit {
        return Err(RunError::Usage(format!(
            "{} instances need about {fds_needed} open files, but this process may open only \
             {fd_limit} (its hard RLIMIT_NOFILE): raise it (`ulimit -Hn`, or LimitNOFILE= for a \
             service) or run fewer instances",
            cfg.count
        )));
    }
    // The log directory: created or checked so that nobody else can plant
    // links in it (crate::fsafe). The default, a fixed path under /tmp, may
    // belong to someone else: then logs go to a per-user directory, said so.
    let usage = |dir: &std::path::Path, e: &dyn std::fmt::Display| {
        RunError::Usage(format!(
            "--log-dir {}: {e}; choose a directory of your own with --log-dir",
            dir.display()
        ))
    };
    if let Err(e) = crate::fsafe::ensure_dir(&cfg.log_dir, crate::paths::LOG_DIR_MODE) {
        let fallback = crate::paths::fallback_log_dir();
        if !(e.is_refusal() && cfg.log_dir == std::path::Path::new(crate::paths::DEFAULT_LOG_DIR)) {
            return Err(usage(&cfg.log_dir, &e));
        }
        crate::fsafe::ensure_dir(&fallback, crate::paths::LOG_DIR_MODE)
            .map_err(|e2| usage(&fallback, &format!("{e2} (the default was refused: {e})")))?;
        log::warn!(
            "not using the default log directory: {e}. Logs go to {} (choose with --log-dir)",
            fallback.display()
        );
        cfg.log_dir = fallback;
    }
    // Writable? O_EXCL never follows a symlink and never opens an existing file.
    let probe_file = cfg.log_dir.join(format!(".ukload-write-test-{run_id}"));
    File::options()
        .write(true)
        .create_new(true)
        .open(&probe_file)
        .map_err(|e| usage(&cfg.log_dir, &format!("not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe_file);
    let (run_dir, _harness_lock) =
        crate::runs::make_run_dir(run_id).map_err(|e| RunError::Setup(e.to_string()))?;
    let registry = CidRegistry::open(&crate::paths::cid_dir()).map_err(RunError::Cid)?;
    let holder = HolderInfo {
        pid: std::process::id(),
        run_id: run_id.to_string(),
        instance: None,
    };
    let mut leases: Vec<CidLease> = registry
        .allocate(cfg.cid_range, cfg.count as usize, &holder)
        .map_err(RunError::Cid)?;
    for (i, l) in leases.iter_mut().enumerate() {
        let _ = l.set_instance(i as u32);
    }
    let cids: Vec<u32> = leases.iter().map(|l| l.cid).collect();

    let mut instances: Vec<Instance> = cids
        .iter()
        .enumerate()
        .map(|(i, &cid)| Instance {
            index: i as u32,
            cid,
            reported_cid: None,
            log: crate::launcher::log_path(&cfg.log_dir, i as u32, cid),
            pid: None,
            pgid: None,
            pids: Vec::new(),
            spawn_ms: None,
            spawned_at_ms: None,
            boot_ms: None,
            connect_ms: None,
            guest_ready_ms: None,
            probe_overhead_ms: None,
            vmm_ms: None,
            guest_kernel_ms: None,
            boot_error: None,
            tool_ms: None,
            tool_session_ms: None,
            tool_result: None,
            tool_error: None,
            tool_protocol: None,
            server_start_ms: None,
            rss_kb: None,
            pss_kb: None,
            exit_status: None,
            teardown: None,
            teardown_ms: None,
            crashed: None,
            may_daemonize: false,
            command: None,
            helper_commands: Vec::new(),
        })
        .collect();
    let mut cgroups: Vec<Option<Arc<InstanceCgroup>>> = vec![None; instances.len()];

    let progress = cfg.progress;
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        run_id: run_id.to_string(),
        run_dir: run_dir.clone(),
        stop: stop.clone(),
        sup,
    });

    // Phases 1 and 2: a few spawner threads fork the launchers, at most
    // `concurrency` instances in flight (spawned, not yet ready or failed);
    // this thread watches every pending boot in one readiness loop.
    progress::emit(
        progress,
        Event::Spawning {
            run_id: run_id.to_string(),
            count: cfg.count,
            concurrency: cfg.concurrency,
        },
    );
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<(u32, u32)>();
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Started>();
    // One token per instance in flight: a spawner puts one in before it
    // forks, the loop takes one out when that instance is done.
    let in_flight = cfg.concurrency.clamp(1, cfg.count.max(1)) as usize;
    let (slot_tx, slot_rx) = crossbeam_channel::bounded::<()>(in_flight);
    let (wake_rx, wake_tx) = std::os::unix::net::UnixStream::pair()
        .and_then(|(a, b)| {
            a.set_nonblocking(true)?;
            b.set_nonblocking(true)?;
            Ok((a, b))
        })
        .map_err(|e| RunError::Setup(format!("cannot create the readiness wake-up pair: {e}")))?;
    let wake_tx = Arc::new(wake_tx);
    for inst in &instances {
        let _ = job_tx.send((inst.index, inst.cid));
    }
    drop(job_tx);
    let spawners = (in_flight as u32).min(SPAWNERS);
    let mut handles = Vec::new();
    for w in 0..spawners {
        let rx = job_rx.clone();
        let tx = out_tx.clone();
        let slots = slot_tx.clone();
        let wake = wake_tx.clone();
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ukload-spawner-{w}"))
            .stack_size(SPAWNER_STACK)
            .spawn(move || {
                while let Ok((index, cid)) = rx.recv() {
                    if !take_slot(&slots, &sh.stop) {
                        break;
                    }
                    let _ = tx.send(start_instance(&sh, index, cid));
                    let _ = (&*wake).write(&[1]);
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            // Out of threads (e.g. `ulimit -u`): the spawners we have do it.
            Err(e) if !handles.is_empty() => {
                log::warn!("could start only {} spawner thread(s): {e}", handles.len());
                break;
            }
            Err(e) => {
                return Err(RunError::Setup(format!(
                    "cannot start a spawner thread: {e}"
                )))
            }
        }
    }
    drop(out_tx);
    drop(slot_tx);
    let mut endpoints: Vec<Option<crate::vsock::Endpoint>> = vec![None; instances.len()];
    let mut waiting: Vec<Option<Outcome>> = (0..instances.len()).map(|_| None).collect();
    let mut watcher = crate::readiness::Watcher::new(stop.clone());
    let mut spawners_done = false;
    let mut timeline = Timeline::default();
    loop {
        loop {
            match out_rx.try_recv() {
                Ok(st) => {
                    let i = st.outcome.index as usize;
                    endpoints[i] = st.outcome.endpoint.clone();
                    cgroups[i] = st.outcome.cgroup.clone();
                    match st.pending {
                        Some(p) => {
                            waiting[i] = Some(st.outcome);
                            watcher.add(p);
                        }
                        None => {
                            record_outcome(&mut instances[i], st.outcome, progress, t0_mono_ns);
                            let _ = slot_rx.try_recv();
                        }
                    }
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    if !spawners_done {
                        timeline.spawned_ms = ms_since(t0);
                    }
                    spawners_done = true;
                    break;
                }
            }
        }
        if spawners_done && watcher.is_empty() {
            timeline.booted_ms = ms_since(t0);
            break;
        }
        for d in watcher.turn(Some(wake_rx.as_fd())) {
            let i = d.index as usize;
            if let Some(mut o) = waiting[i].take() {
                let log = instances[i].log.clone();
                o.ready = d.result.map_err(|e| describe_failure(e, &log));
                record_outcome(&mut instances[i], o, progress, t0_mono_ns);
            }
            let _ = slot_rx.try_recv();
        }
    }
    for h in handles {
        let _ = h.join();
    }

    // The tool-call phase: every booted instance executes the tool.
    if let (Some(call), false) = (&cfg.tool_call, stop.load(Ordering::Relaxed)) {
        progress::emit(
            progress,
            Event::ToolPhase {
                tool: call.name.clone(),
            },
        );
        tool_phase(&cfg, call, &mut instances, &endpoints, &stop);
    }

    // Phase 3: memory of every live instance's whole tree.
    if !stop.load(Ordering::Relaxed) {
        progress::emit(progress, Event::Memory);
        test_pause("memory", &stop);
        note_crashes(sup, run_id, &mut instances, &cgroups);
        // Marker path: one snapshot for every instance.
        let index = (!cgroups.iter().all(Option::is_some))
            .then(|| crate::memory::InstanceIndex::new(run_id, &crate::proc::table()));
        for inst in instances.iter_mut() {
            if let (Some(pid), None, None) = (inst.pid, &inst.boot_error, &inst.crashed) {
                let pids = match (&cgroups[inst.index as usize], &index) {
                    (Some(c), _) => c.cg.procs_recursive(),
                    (None, Some(ix)) => ix.pids(pid, inst.index),
                    (None, None) => Vec::new(),
                };
                let m: TreeMemory = crate::memory::tree_usage(&pids);
                inst.pids = m.pids.iter().map(|(p, _)| *p).collect();
                inst.rss_kb = Some(m.rss_kb);
                inst.pss_kb = Some(m.pss_kb);
            }
        }
    }

    // Phase 5: cleanup (phase 4 is computed from the records by the report).
    if !stop.load(Ordering::Relaxed) {
        note_crashes(sup, run_id, &mut instances, &cgroups);
    }
    let targets: Vec<Target> = instances
        .iter()
        .filter_map(|i| {
            Some(Target {
                instance: i.index,
                pid: i.pid?,
                pgid: i.pgid?,
                cgroup: cgroups[i.index as usize].clone(),
            })
        })
        .collect();
    progress::emit(
        progress,
        Event::Teardown {
            instances: targets.len(),
        },
    );
    timeline.teardown_start_ms = ms_since(t0);
    let td = teardown::teardown_interruptible(sup, run_id, &targets, cfg.grace, &stop);
    timeline.teardown_end_ms = ms_since(t0);
    for t in &td.instances {
        let inst = &mut instances[t.instance as usize];
        log::debug!(
            "[{}] teardown: {} after {:.1} ms",
            t.instance,
            t.ended.key(),
            t.ms
        );
        inst.teardown = Some(t.ended.key().to_string());
        inst.teardown_ms = Some(t.ms);
        if let Some(pid) = inst.pid {
            inst.exit_status = sup.try_status(pid).map(|e| e.to_string());
        }
        if t.ended == teardown::Ended::AlreadyGone
            && inst.boot_ms.is_some()
            && inst.crashed.is_none()
            && !stop.load(Ordering::Relaxed)
        {
            inst.crashed = Some(match &inst.exit_status {
                Some(e) => format!("gone before cleanup ({e})"),
                None => "gone before cleanup".into(),
            });
        }
    }
    // Instance cgroups are removed by the teardown; drop our handles.
    drop(cgroups);
    // Launcher statuses are read; forget them and any adopted orphans'.
    sup.forget_all();
    drop(leases);
    let _ = std::fs::remove_dir_all(&run_dir);
    let interrupted = stop
        .load(Ordering::Relaxed)
        .then(|| "interrupted by signal".to_string());
    Ok(RunResult {
        run_id: run_id.to_string(),
        instances,
        teardown: Some(td),
        interrupted,
        elapsed_ms: ns_to_ms(t0.elapsed().as_nanos() as u64),
        containment: crate::supervisor::containment()
            .map(|c| c.describe())
            .unwrap_or_else(|| "process groups and markers".into()),
        timeline,
        harness: HarnessUsage::now(),
    })
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// An instance a spawner started (or failed to), and what the readiness
/// loop is to watch for it.
struct Started {
    outcome: Outcome,
    pending: Option<crate::readiness::Pending>,
}

/// How many threads fork launchers: forking is quick, waiting for boots is
/// the readiness loop's, so a few suffice whatever the instance count.
const SPAWNERS: u32 = 4;
/// How often a spawner waiting for a free in-flight slot looks at the stop flag.
const SLOT_POLL: Duration = Duration::from_millis(20);

/// Takes an in-flight slot, waiting while `concurrency` instances are in
/// flight; false if the run is stopping.
fn take_slot(slots: &crossbeam_channel::Sender<()>, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match slots.send_timeout((), SLOT_POLL) {
            Ok(()) => return !stop.load(Ordering::Relaxed),
            Err(crossbeam_channel::SendTimeoutError::Timeout(())) => {}
            Err(crossbeam_channel::SendTimeoutError::Disconnected(())) => return false,
        }
    }
}

/// Phases 1 and 2 of one instance, into its record.
fn record_outcome(inst: &mut Instance, o: Outcome, progress: ProgressMode, t0_mono_ns: u64) {
    inst.may_daemonize = o.may_daemonize;
    if o.started_mono_ns > 0 {
        inst.spawned_at_ms = Some(ns_to_ms(o.started_mono_ns.saturating_sub(t0_mono_ns)));
    }
    if o.command.is_some() {
        inst.command = o.command;
        inst.helper_commands = o.helper_commands;
    }
    inst.pid = o.pid;
    inst.pgid = o.pgid;
    inst.spawn_ms = o.spawn_ms;
    match o.ready {
        Ok(r) => {
            let spawn_at_ns = o.started_mono_ns;
            inst.boot_ms = Some(ns_to_ms(r.at_mono_ns.saturating_sub(spawn_at_ns)));
            inst.connect_ms = r.connect_ms;
            if let Some(info) = &r.info {
                inst.reported_cid = info.cid;
                if info.pid == GUEST_INIT_PID {
                    // Inside a VM: the guest's clocks are its own. Its
                    // boot-relative stamp is kernel start → agent ready;
                    // its monotonic ready → reply is the probe's share;
                    // the rest of the boot is the VMM (and firmware).
                    let guest = ns_to_ms(info.ready_boottime_ns);
                    let probe = ns_to_ms(info.now_mono_ns.saturating_sub(info.ready_mono_ns));
                    inst.guest_kernel_ms = Some(guest);
                    inst.probe_overhead_ms = Some(probe);
                    inst.vmm_ms = inst.boot_ms.map(|b| (b - guest - probe).max(0.0));
                } else if info.ready_mono_ns >= spawn_at_ns && info.ready_mono_ns <= r.at_mono_ns {
                    // Same host, same CLOCK_MONOTONIC: the guest's own ready stamp.
                    let g = ns_to_ms(info.ready_mono_ns - spawn_at_ns);
                    inst.guest_ready_ms = Some(g);
                    inst.probe_overhead_ms = inst.boot_ms.map(|b| b - g);
                }
            } else if let Some(line) = &r.console_line {
                inst.reported_cid = probe::cid_in_line(line);
            }
            progress::emit(
                progress,
                Event::Booted {
                    instance: inst.index,
                    boot_ms: inst.boot_ms.unwrap_or(0.0),
                    cid: inst.cid,
                },
            );
        }
        Err(e) => {
            progress::emit(
                progress,
                Event::BootFailed {
                    instance: inst.index,
                    error: e.clone(),
                },
            );
            inst.boot_error = Some(e);
        }
    }
}

/// Marks booted instances that died before cleanup: every process gone,
/// or the launcher exited although it was not expected to daemonize. Their
/// memory is not measured (it would read as a flattering 0 MB) and they do
/// not count as booted-and-healthy.
fn note_crashes(
    sup: &Supervisor,
    run_id: &str,
    instances: &mut [Instance],
    cgroups: &[Option<Arc<InstanceCgroup>>],
) {
    // Marker path: one snapshot, and only if a launcher has exited.
    let mut index: Option<crate::memory::InstanceIndex> = None;
    for inst in instances.iter_mut() {
        let (Some(pid), Some(_), None) = (inst.pid, inst.boot_ms, &inst.crashed) else {
            continue;
        };
        let exit = sup.try_status(pid);
        let left = match &cgroups[inst.index as usize] {
            Some(c) => c.cg.populated(),
            None if exit.is_none() => true,
            None => !index
                .get_or_insert_with(|| {
                    crate::memory::InstanceIndex::new(run_id, &crate::proc::table())
                })
                .pids(pid, inst.index)
                .is_empty(),
        };
        let why = match exit {
            Some(e) if !inst.may_daemonize => Some(format!("launcher exited after boot ({e})")),
            Some(e) if !left => Some(format!("no process left ({e})")),
            None if !left => Some("no process left".to_string()),
            _ => None,
        };
        if let Some(w) = why {
            inst.exit_status = exit.map(|e| e.to_string());
            inst.crashed = Some(w);
        }
    }
}

/// Test-only hook: `UKLOAD_TEST_PAUSE_PHASE=memory:MS` makes the run pause
/// for MS ms (at most [`TEST_PAUSE_MAX`]) at the start of that phase, ending
/// early if the run is interrupted. Why: the memory phase takes milliseconds,
/// too short for tests that kill ukload *during* it (tests/harness_kill_tests.rs)
/// to hit reliably. Unset (always, outside tests) it costs one lookup.
pub const ENV_TEST_PAUSE_PHASE: &str = "UKLOAD_TEST_PAUSE_PHASE";
/// Longest pause [`ENV_TEST_PAUSE_PHASE`] can ask for.
const TEST_PAUSE_MAX: Duration = Duration::from_secs(60);
/// How often a test pause looks at the stop flag.
const TEST_PAUSE_TICK: Duration = Duration::from_millis(10);

fn test_pause(phase: &str, stop: &AtomicBool) {
    let Ok(v) = std::env::var(ENV_TEST_PAUSE_PHASE) else {
        return;
    };
    let Some(ms) = v
        .split_once(':')
        .filter(|(p, _)| *p == phase)
        .and_then(|(_, ms)| ms.parse::<u64>().ok())
    else {
        return;
    };
    let end = Instant::now() + Duration::from_millis(ms).min(TEST_PAUSE_MAX);
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(TEST_PAUSE_TICK));
    }
}

/// Runs the tool call on every booted instance, `concurrency` at a time.
fn tool_phase(
    cfg: &RunConfig,
    call: &crate::toolcall::ToolCall,
    instances: &mut [Instance],
    endpoints: &[Option<crate::vsock::Endpoint>],
    stop: &AtomicBool,
) {
    let jobs: Vec<usize> = instances
        .iter()
        .filter(|i| i.boot_ms.is_some())
        .map(|i| i.index as usize)
        .collect();
    let next = AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let workers = (cfg.concurrency as usize).clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= jobs.len() || stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = jobs[k];
                let out = match &endpoints[i] {
                    Some(ep) => crate::toolcall::execute(ep, cfg.framing, call, stop),
                    None => crate::toolcall::ToolOutcome {
                        session_ms: None,
                        protocol: None,
                        server_start_ms: None,
                        call_ms: None,
                        text: None,
                        error: Some(
                            "no vsock endpoint: readiness was a console line (use --ready probe)"
                                .into(),
                        ),
                    },
                };
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i, out));
            });
        }
    });
    for (i, o) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        let inst = &mut instances[i];
        inst.tool_ms = o.call_ms;
        inst.tool_session_ms = o.session_ms;
        inst.tool_result = o.text;
        inst.tool_error = o.error;
        inst.tool_protocol = o.protocol;
        inst.server_start_ms = o.server_start_ms;
        if inst.tool_error.is_some() || inst.tool_ms.is_some() {
            progress::emit(
                cfg.progress,
                Event::Tool {
                    instance: i as u32,
                    ms: inst.tool_ms,
                    error: inst.tool_error.clone(),
                },
            );
        }
    }
}

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Phase 1 and 2 for one instance, on a worker thread.
fn start_instance(sh: &Shared, index: u32, cid: u32) -> Started {
    match spawn_instance(sh, index, cid) {
        Ok(st) => st,
        Err(outcome) => Started {
            outcome,
            pending: None,
        },
    }
}

/// Phase 1 for one instance: its launcher (and helpers) started, and what
/// the readiness loop must watch; `Err` is a failed start.
// Built once per instance and moved once: boxing the error buys nothing.
#[allow(clippy::result_large_err)]
fn spawn_instance(sh: &Shared, index: u32, cid: u32) -> Result<Started, Outcome> {
    let cfg = &sh.cfg;
    let log = crate::launcher::log_path(&cfg.log_dir, index, cid);
    let ctx = InstanceCtx {
        index,
        cid,
        port: cfg.port,
        uds: sh.run_dir.join(format!("i{index}.vsock")),
        memory_mb: cfg.launcher.memory_mb,
        log: log.clone(),
    };
    let cgroup = match crate::supervisor::run_cgroup().map(|r| r.instance(index, cid)) {
        None => None,
        Some(Ok(c)) => Some(Arc::new(c)),
        Some(Err(e)) => {
            return Err(started_fail(
                index,
                None,
                None,
                format!("cannot create the instance's cgroup: {e}"),
            ))
        }
    };
    let fail = |msg: String| started_fail(index, None, cgroup.clone(), msg);
    let plan = cfg.launcher.plan(&ctx);
    // No symlink or hard link followed, nobody else's file truncated.
    let mut log_file = match crate::fsafe::open_log(&log) {
        Ok(f) => f,
        Err(e) => return Err(fail(format!("cannot open log: {e}"))),
    };
    // The launch commands head the log (the guide's "tracks spawn commands");
    // console readiness reads the log after them.
    let helper_commands: Vec<String> = plan.pre.iter().map(|p| p.command.display()).collect();
    let command = plan.command.display();
    log::debug!(
        "[{index}] launch (CID {cid}, log {}): {command}",
        log.display()
    );
    for h in &helper_commands {
        log::debug!("[{index}] helper: {h}");
    }
    let mut header = String::new();
    for h in &helper_commands {
        header.push_str(&format!("{}helper: {h}\n", probe::LOG_HEADER_PREFIX));
    }
    header.push_str(&format!("{}launch: {command}\n", probe::LOG_HEADER_PREFIX));
    if let Err(e) = log_file.write_all(header.as_bytes()) {
        return Err(fail(format!("cannot write log {}: {e}", log.display())));
    }
    let log_skip = header.len() as u64;
    let mark = |cmd: Command| -> Result<Command, String> {
        let out = log_file
            .try_clone()
            .map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
        let err = log_file
            .try_clone()
            .map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
        let cmd = match &cgroup {
            Some(c) => cmd.into_cgroup(c.dir_fd(), c.procs_fd()),
            None => cmd,
        };
        let cmd = cmd
            .env(ENV_RUN, &sh.run_id)
            .env(ENV_INSTANCE, index.to_string())
            .env(ENV_CID, cid.to_string())
            // So `ukload cleanup` from another runtime directory finds our harness lock.
            .env(crate::paths::ENV_RUNTIME_DIR, crate::paths::runtime_dir())
            .stdin(Redirect::Null)
            .stdout(Redirect::File(out))
            .stderr(Redirect::File(err));
        Ok(if cfg.launcher.flatpak_host {
            // `--watch-bus`: the host process ends when we do.
            cmd.wrapped_in("flatpak-spawn", &["--host", "--watch-bus"])
        } else {
            cmd
        })
    };
    let t_spawn = Instant::now();
    // Helpers first (e.g. a vhost-user backend), the first leading the
    // instance's process group; each must create its socket before the next.
    let mut first: Option<crate::supervisor::Child> = None;
    let boot_deadline = deadline_after(t_spawn, cfg.boot_timeout);
    let mut helpers: Vec<(i32, String)> = Vec::new();
    for pre in plan.pre {
        let mut cmd = match mark(pre.command) {
            Ok(c) => c,
            Err(e) => return Err(fail(e)),
        };
        if let Some(f) = &first {
            cmd = cmd.join_process_group(f.pgid);
        }
        let shown = cmd.display();
        let c = match sh.sup.spawn(cmd) {
            Ok(c) => c,
            Err(e) => {
                return Err(started_fail(
                    index,
                    first.as_ref(),
                    cgroup.clone(),
                    format!("spawn failed: {e} (command: {shown})"),
                ))
            }
        };
        let pre_pid = c.pid;
        helpers.push((pre_pid, shown.clone()));
        if first.is_none() {
            first = Some(c);
        }
        if let Err(e) = wait_for_path(&pre.ready_path, boot_deadline, &sh.stop, &|| {
            sh.sup.try_status(pre_pid)
        }) {
            return Err(started_fail(
                index,
                first.as_ref(),
                cgroup.clone(),
                format!("{e} (command: {shown}); log: {}", log.display()),
            ));
        }
    }
    let mut cmd = match mark(plan.command) {
        Ok(c) => c,
        Err(e) => return Err(started_fail(index, first.as_ref(), cgroup.clone(), e)),
    };
    if let Some(f) = &first {
        cmd = cmd.join_process_group(f.pgid);
    }
    let shown = cmd.display();
    let child = match sh.sup.spawn(cmd) {
        Ok(c) => c,
        Err(e) => {
            return Err(started_fail(
                index,
                first.as_ref(),
                cgroup.clone(),
                format!("spawn failed: {e} (command: {shown})"),
            ))
        }
    };
    let spawn_ms = t_spawn.elapsed().as_secs_f64() * 1000.0;
    progress::emit(
        cfg.progress,
        Event::Spawned {
            instance: index,
            pid: child.pid,
            cid,
        },
    );
    // Boot time counts from the instance's first process.
    let (started, started_mono_ns) = match &first {
        Some(f) => (f.started, f.started_mono_ns),
        None => (child.started, child.started_mono_ns),
    };
    let deadline = deadline_after(started, cfg.boot_timeout);
    let pid = child.pid;
    let run_id = sh.run_id.clone();
    let log_for_dead = log.clone();
    let may_daemonize = plan.may_daemonize;
    let cg_for_dead = cgroup.clone();
    let sup = sh.sup;
    let dead = move || -> Option<String> {
        // A helper (e.g. the vhost-user vsock backend) that died dooms the
        // boot: say so now, not at the boot deadline.
        for (hp, shown) in &helpers {
            if let Some(e) = sup.try_status(*hp) {
                return Some(format!(
                    "helper {shown} {e}; log: {}",
                    log_for_dead.display()
                ));
            }
        }
        let exit = sup.try_status(pid)?;
        if exit.success() && may_daemonize {
            // A launcher may daemonize its VMM and exit 0: only dead if nothing is left.
            let left = match &cg_for_dead {
                Some(c) => c.cg.populated(),
                None => !crate::memory::instance_pids(pid, &run_id, index, &crate::proc::table())
                    .is_empty(),
            };
            if left {
                return None;
            }
            return Some(format!(
                "{exit}, and no process of the instance is left; log: {}",
                log_for_dead.display()
            ));
        }
        Some(format!("{exit}; log: {}", log_for_dead.display()))
    };
    let endpoint = plan.readiness.endpoint().cloned();
    let pending = crate::readiness::Pending {
        index,
        readiness: plan.readiness,
        framing: cfg.framing,
        log,
        log_skip,
        started,
        deadline,
        dead: Box::new(dead),
    };
    Ok(Started {
        outcome: Outcome {
            index,
            pid: Some(pid),
            pgid: Some(child.pgid),
            spawn_ms: Some(spawn_ms),
            started_mono_ns,
            endpoint,
            // Filled in by the readiness loop.
            ready: Err(String::new()),
            command: Some(command),
            helper_commands,
            may_daemonize,
            cgroup,
        },
        pending: Some(pending),
    })
}

/// Descriptors an instance holds for its life (CID lock, cgroup files, log
/// and probe sockets while they are in use), with a margin.
pub const FDS_PER_INSTANCE: u64 = 6;
/// Descriptors the harness needs besides its instances.
pub const FDS_BASE: u64 = 64;

/// Stack of a spawner thread: it forks and waits for helpers' sockets, its
/// buffers on the heap; the 2 MiB default is far more than it uses.
const SPAWNER_STACK: usize = 256 * 1024;

/// `start + d`, saturating far in the future instead of overflowing.
fn deadline_after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .unwrap_or_else(|| start + Duration::from_secs(FAR_FUTURE_SECS))
}

/// A deadline that cannot be represented is this far away (a year).
const FAR_FUTURE_SECS: u64 = 365 * 24 * 3600;

/// How often a helper's socket is looked for.
const PRE_POLL: Duration = Duration::from_millis(2);

/// Waits until a helper process has created `path`.
fn wait_for_path(
    path: &std::path::Path,
    deadline: Instant,
    stop: &AtomicBool,
    exited: &dyn Fn() -> Option<crate::supervisor::Exit>,
) -> Result<(), String> {
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Some(e) = exited() {
            return Err(format!(
                "helper exited ({e}) before creating {}",
                path.display()
            ));
        }
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "helper did not create {} before the boot deadline",
                path.display()
            ));
        }
        std::thread::sleep(PRE_POLL);
    }
}

/// A failed start. When some process of the instance was already started
/// (`first`), its pid and group are reported so that cleanup ends it.
fn started_fail(
    index: u32,
    first: Option<&crate::supervisor::Child>,
    cgroup: Option<Arc<InstanceCgroup>>,
    msg: String,
) -> Outcome {
    Outcome {
        cgroup,
        index,
        pid: first.map(|c| c.pid),
        pgid: first.map(|c| c.pgid),
        spawn_ms: None,
        started_mono_ns: first.map(|c| c.started_mono_ns).unwrap_or(0),
        endpoint: None,
        ready: Err(msg),
        command: None,
        helper_commands: Vec::new(),
        may_daemonize: false,
    }
}

fn describe_failure(e: BootFailure, log: &std::path::Path) -> String {
    let tail = probe::log_tail(log, 3);
    if tail.is_empty() || matches!(e, BootFailure::Interrupted) {
        e.to_string()
    } else {
        format!("{e}; last log lines: {}", tail.join(" | "))
    }
}
