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

impl MemMetric {
    /// The figure's name in reports: `PSS` or `RSS`.
    pub fn label(self) -> &'static str {
        match self {
            MemMetric::Pss => "PSS",
            MemMetric::Rss => "RSS",
        }
    }
}

impl std::str::FromStr for MemMetric {
    type Err = crate::launcher::UnknownChoice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pss" => Ok(MemMetric::Pss),
            "rss" => Ok(MemMetric::Rss),
            _ => Err(crate::launcher::UnknownChoice::new(
                "memory metric",
                s,
                "pss or rss",
            )),
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
#[derive(Clone, Debug, Default, Serialize)]
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
    /// More instances than this process may open files for (exit 64).
    TooFewFiles {
        count: u32,
        /// Descriptors the run would need.
        needed: u64,
        /// The hard `RLIMIT_NOFILE`.
        limit: u64,
    },
    /// The log directory cannot be used (exit 64).
    LogDir {
        dir: PathBuf,
        problem: LogDirProblem,
    },
    /// The run directory could not be made or locked.
    RunDir(crate::runs::RunDirError),
    /// The socket pair that wakes the readiness loop could not be made.
    WakePair(std::io::Error),
    /// Not one spawner thread could be started.
    SpawnerThread(std::io::Error),
    /// `ukload cycles` could not sample its own resources (`/proc/self`).
    Sampling {
        what: &'static str,
        error: std::io::Error,
    },
}

/// Why a log directory cannot be used.
#[derive(Debug)]
pub enum LogDirProblem {
    /// Creating or checking it was refused or failed.
    Unsafe(crate::fsafe::FsafeError),
    /// The per-user fallback failed too, after the default was refused.
    Fallback {
        error: crate::fsafe::FsafeError,
        default_refused: crate::fsafe::FsafeError,
    },
    /// A file cannot be created in it.
    NotWritable(std::io::Error),
}

impl std::fmt::Display for LogDirProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogDirProblem::Unsafe(e) => e.fmt(f),
            LogDirProblem::Fallback {
                error,
                default_refused,
            } => write!(f, "{error} (the default was refused: {default_refused})"),
            LogDirProblem::NotWritable(e) => write!(f, "not writable: {e}"),
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Launch(e) => e.fmt(f),
            RunError::Cid(e) => e.fmt(f),
            RunError::TooFewFiles {
                count,
                needed,
                limit,
            } => write!(
                f,
                "{count} instances need about {needed} open files, but this process may open \
                 only {limit} (its hard RLIMIT_NOFILE): raise it (`ulimit -Hn`, or LimitNOFILE= \
                 for a service) or run fewer instances"
            ),
            RunError::LogDir { dir, problem } => write!(
                f,
                "--log-dir {}: {problem}; choose a directory of your own with --log-dir",
                dir.display()
            ),
            RunError::RunDir(e) => e.fmt(f),
            RunError::WakePair(e) => write!(f, "cannot create the readiness wake-up pair: {e}"),
            RunError::SpawnerThread(e) => write!(f, "cannot start a spawner thread: {e}"),
            RunError::Sampling { what, error } => write!(f, "sampling {what} resources: {error}"),
        }
    }
}

impl std::error::Error for RunError {}

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
    ready: Result<probe::Ready, InstanceError>,
    /// The launch command line, and its helpers'.
    command: Option<String>,
    helper_commands: Vec<String>,
    may_daemonize: bool,
    /// The instance's cgroup (cgroup containment), kept until teardown.
    cgroup: Option<Arc<InstanceCgroup>>,
}

/// The guest agent's pid when it is the init of a VM.
const GUEST_INIT_PID: u32 = 1;

/// Checks the launcher ([`preflight`]), then runs the five phases. `stop`
/// is set by SIGINT/SIGTERM.
pub fn run(
    cfg: RunConfig,
    run_id: &str,
    sup: &'static Supervisor,
    stop: Arc<AtomicBool>,
) -> Result<RunResult, RunError> {
    run_phases(cfg, run_id, sup, stop, true)
}

/// Checks that what `cfg`'s launcher needs is there (programs, QEMU's
/// acceleration and vsock backend, the guest image), recording what it
/// decided in `cfg`: the first thing [`run`] does.
pub fn preflight(cfg: &mut RunConfig, sup: &'static Supervisor) -> Result<(), RunError> {
    cfg.launcher.preflight(Some(sup)).map_err(RunError::Launch)
}

/// [`run`] for a `cfg` that has passed [`preflight`] already: `ukload
/// cycles` checks once, not before every cycle (the checks look programs up
/// and may start QEMU for its KVM probe).
pub fn run_preflighted(
    cfg: RunConfig,
    run_id: &str,
    sup: &'static Supervisor,
    stop: Arc<AtomicBool>,
) -> Result<RunResult, RunError> {
    run_phases(cfg, run_id, sup, stop, false)
}

/// The run; `check_launcher`: [`preflight`] first (inside the run's time).
fn run_phases(
    cfg: RunConfig,
    run_id: &str,
    sup: &'static Supervisor,
    stop: Arc<AtomicBool>,
    check_launcher: bool,
) -> Result<RunResult, RunError> {
    let mut state = RunState::prepare(cfg, run_id, sup, stop, check_launcher)?;
    state.spawn_and_boot()?;
    state.tool_calls();
    state.measure_memory();
    let td = state.teardown();
    Ok(state.finish(td))
}

/// A run's state carried through its phases.
struct RunState {
    t0: Instant,
    t0_mono_ns: u64,
    cfg: RunConfig,
    run_id: String,
    sup: &'static Supervisor,
    stop: Arc<AtomicBool>,
    run_dir: PathBuf,
    /// Held for the run's life: `ukload cleanup` leaves a locked run alone.
    _harness_lock: File,
    /// The CIDs, locked for the run's life.
    leases: Vec<CidLease>,
    instances: Vec<Instance>,
    cgroups: Vec<Option<Arc<InstanceCgroup>>>,
    endpoints: Vec<Option<crate::vsock::Endpoint>>,
    timeline: Timeline,
}

impl RunState {
    /// Checks the launcher (if `check_launcher`), limits and log directory,
    /// makes the run directory and leases the CIDs: nothing is started yet.
    fn prepare(
        mut cfg: RunConfig,
        run_id: &str,
        sup: &'static Supervisor,
        stop: Arc<AtomicBool>,
        check_launcher: bool,
    ) -> Result<RunState, RunError> {
        let t0 = Instant::now();
        let t0_mono_ns = crate::clock::monotonic_ns();
        if check_launcher {
            preflight(&mut cfg, sup)?;
        }
        check_fd_limit(cfg.count)?;
        cfg.log_dir = usable_log_dir(&cfg.log_dir, run_id)?;
        let (run_dir, harness_lock) =
            crate::runs::make_run_dir(run_id).map_err(RunError::RunDir)?;
        let leases = lease_cids(&cfg, run_id)?;
        let instances: Vec<Instance> = leases
            .iter()
            .enumerate()
            .map(|(i, l)| Instance::new(i as u32, l.cid, &cfg.log_dir))
            .collect();
        let n = instances.len();
        Ok(RunState {
            t0,
            t0_mono_ns,
            cfg,
            run_id: run_id.to_string(),
            sup,
            stop,
            run_dir,
            _harness_lock: harness_lock,
            leases,
            instances,
            cgroups: vec![None; n],
            endpoints: vec![None; n],
            timeline: Timeline::default(),
        })
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Phases 1 and 2: a few spawner threads fork the launchers, at most
    /// `concurrency` instances in flight (spawned, not yet ready or failed);
    /// this thread watches every pending boot in one readiness loop.
    fn spawn_and_boot(&mut self) -> Result<(), RunError> {
        progress::emit(
            self.cfg.progress,
            Event::Spawning {
                run_id: self.run_id.clone(),
                count: self.cfg.count,
                concurrency: self.cfg.concurrency,
            },
        );
        let shared = Arc::new(Shared {
            cfg: self.cfg.clone(),
            run_id: self.run_id.clone(),
            run_dir: self.run_dir.clone(),
            stop: self.stop.clone(),
            sup: self.sup,
        });
        let jobs: Vec<(u32, u32)> = self.instances.iter().map(|i| (i.index, i.cid)).collect();
        let pool = SpawnPool::start(shared, &jobs)?;
        self.await_boots(&pool);
        for h in pool.handles {
            let _ = h.join();
        }
        Ok(())
    }

    /// The readiness loop: takes what the spawners started, watches every
    /// pending boot, records each instance when it is ready or has failed.
    fn await_boots(&mut self, pool: &SpawnPool) {
        let mut waiting: Vec<Option<Outcome>> = (0..self.instances.len()).map(|_| None).collect();
        let mut watcher = crate::readiness::Watcher::new(self.stop.clone());
        let mut spawners_done = false;
        loop {
            if !spawners_done && self.take_started(pool, &mut waiting, &mut watcher) {
                spawners_done = true;
                self.timeline.spawned_ms = ms_since(self.t0);
            }
            if spawners_done && watcher.is_empty() {
                self.timeline.booted_ms = ms_since(self.t0);
                return;
            }
            for d in watcher.turn(Some(pool.wake_rx.as_fd())) {
                let i = d.index as usize;
                if let Some(mut o) = waiting[i].take() {
                    let log = &self.instances[i].log;
                    o.ready = d.result.map_err(|e| InstanceError::boot(e, log));
                    self.record(i, o);
                }
                let _ = pool.slot_rx.try_recv();
            }
        }
    }

    /// Takes every instance the spawners have sent so far: a started one
    /// joins the watcher, a failed one is recorded. True once all spawners
    /// are done.
    fn take_started(
        &mut self,
        pool: &SpawnPool,
        waiting: &mut [Option<Outcome>],
        watcher: &mut crate::readiness::Watcher,
    ) -> bool {
        loop {
            let st = match pool.out_rx.try_recv() {
                Ok(st) => st,
                Err(crossbeam_channel::TryRecvError::Empty) => return false,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return true,
            };
            let i = st.outcome.index as usize;
            self.endpoints[i] = st.outcome.endpoint.clone();
            self.cgroups[i] = st.outcome.cgroup.clone();
            match st.pending {
                Some(p) => {
                    waiting[i] = Some(st.outcome);
                    watcher.add(p);
                }
                None => {
                    self.record(i, st.outcome);
                    let _ = pool.slot_rx.try_recv();
                }
            }
        }
    }

    /// Phases 1 and 2 of instance `i`, into its record.
    fn record(&mut self, i: usize, o: Outcome) {
        record_outcome(
            &mut self.instances[i],
            o,
            self.cfg.progress,
            self.t0_mono_ns,
        );
    }

    /// The tool-call phase: every booted instance executes the tool.
    fn tool_calls(&mut self) {
        let Some(call) = &self.cfg.tool_call else {
            return;
        };
        if self.stopping() {
            return;
        }
        progress::emit(
            self.cfg.progress,
            Event::ToolPhase {
                tool: call.name.clone(),
            },
        );
        tool_phase(
            &self.cfg,
            call,
            &mut self.instances,
            &self.endpoints,
            &self.stop,
        );
    }

    /// Phase 3: memory of every live instance's whole tree.
    fn measure_memory(&mut self) {
        if self.stopping() {
            return;
        }
        progress::emit(self.cfg.progress, Event::Memory);
        test_pause("memory", &self.stop);
        note_crashes(self.sup, &self.run_id, &mut self.instances, &self.cgroups);
        // Marker path: one snapshot for every instance.
        let index = (!self.cgroups.iter().all(Option::is_some))
            .then(|| crate::memory::InstanceIndex::new(&self.run_id, &crate::proc::table()));
        for inst in self.instances.iter_mut() {
            let (Some(pid), None, None) = (inst.pid, &inst.boot_error, &inst.crashed) else {
                continue;
            };
            let pids = match (&self.cgroups[inst.index as usize], &index) {
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

    /// Phase 5: cleanup (phase 4 is computed from the records by the
    /// report). Every started instance is ended and its end recorded.
    fn teardown(&mut self) -> TeardownReport {
        if !self.stopping() {
            note_crashes(self.sup, &self.run_id, &mut self.instances, &self.cgroups);
        }
        let targets: Vec<Target> = self
            .instances
            .iter()
            .filter_map(|i| {
                Some(Target {
                    instance: i.index,
                    pid: i.pid?,
                    pgid: i.pgid?,
                    cgroup: self.cgroups[i.index as usize].clone(),
                })
            })
            .collect();
        progress::emit(
            self.cfg.progress,
            Event::Teardown {
                instances: targets.len(),
            },
        );
        self.timeline.teardown_start_ms = ms_since(self.t0);
        let td = teardown::teardown_interruptible(
            self.sup,
            &self.run_id,
            &targets,
            self.cfg.grace,
            &self.stop,
        );
        self.timeline.teardown_end_ms = ms_since(self.t0);
        for t in &td.instances {
            self.record_teardown(t);
        }
        td
    }

    /// How one instance ended at cleanup, into its record; a booted one
    /// that was already gone had crashed.
    fn record_teardown(&mut self, t: &teardown::InstanceTeardown) {
        let stopping = self.stopping();
        let inst = &mut self.instances[t.instance as usize];
        log::debug!(
            "[{}] teardown: {} after {:.1} ms",
            t.instance,
            t.ended.key(),
            t.ms
        );
        inst.teardown = Some(t.ended.key().to_string());
        inst.teardown_ms = Some(t.ms);
        if let Some(pid) = inst.pid {
            inst.exit_status = self.sup.try_status(pid).map(|e| e.to_string());
        }
        if t.ended == teardown::Ended::AlreadyGone
            && inst.boot_ms.is_some()
            && inst.crashed.is_none()
            && !stopping
        {
            inst.crashed = Some(match &inst.exit_status {
                Some(e) => format!("gone before cleanup ({e})"),
                None => "gone before cleanup".into(),
            });
        }
    }

    /// Releases what the run held (cgroup handles, launcher statuses, CID
    /// leases, the run directory) and assembles the result.
    fn finish(self, td: TeardownReport) -> RunResult {
        let interrupted = self.stopping().then(|| "interrupted by signal".to_string());
        // Instance cgroups are removed by the teardown; drop our handles.
        drop(self.cgroups);
        // Launcher statuses are read; forget them and any adopted orphans'.
        self.sup.forget_all();
        drop(self.leases);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        RunResult {
            run_id: self.run_id,
            instances: self.instances,
            teardown: Some(td),
            interrupted,
            elapsed_ms: ns_to_ms(self.t0.elapsed().as_nanos() as u64),
            containment: crate::supervisor::containment()
                .map(|c| c.describe())
                .unwrap_or_else(|| "process groups and markers".into()),
            timeline: self.timeline,
            harness: HarnessUsage::now(),
        }
    }
}

/// Refuses a count this process cannot open files for (the hard limit is
/// raised to the soft first).
fn check_fd_limit(count: u32) -> Result<(), RunError> {
    let limit = crate::supervisor::raise_fd_limit();
    let needed = u64::from(count) * FDS_PER_INSTANCE + FDS_BASE;
    if limit > 0 && needed > limit {
        return Err(RunError::TooFewFiles {
            count,
            needed,
            limit,
        });
    }
    Ok(())
}

/// The log directory to use: `asked`, created or checked so that nobody
/// else can plant links in it (crate::fsafe), and writable. The default, a
/// fixed path under /tmp, may belong to someone else: then logs go to a
/// per-user directory, said so.
fn usable_log_dir(asked: &std::path::Path, run_id: &str) -> Result<PathBuf, RunError> {
    let refused = |dir: &std::path::Path, problem| RunError::LogDir {
        dir: dir.to_path_buf(),
        problem,
    };
    let mut dir = asked.to_path_buf();
    if let Err(e) = crate::fsafe::ensure_dir(asked, crate::paths::LOG_DIR_MODE) {
        let fallback = crate::paths::fallback_log_dir();
        if !(e.is_refusal() && asked == std::path::Path::new(crate::paths::DEFAULT_LOG_DIR)) {
            return Err(refused(asked, LogDirProblem::Unsafe(e)));
        }
        if let Err(e2) = crate::fsafe::ensure_dir(&fallback, crate::paths::LOG_DIR_MODE) {
            let problem = LogDirProblem::Fallback {
                error: e2,
                default_refused: e,
            };
            return Err(refused(&fallback, problem));
        }
        log::warn!(
            "not using the default log directory: {e}. Logs go to {} (choose with --log-dir)",
            fallback.display()
        );
        dir = fallback;
    }
    // Writable? O_EXCL never follows a symlink and never opens an existing file.
    let probe_file = dir.join(format!(".ukload-write-test-{run_id}"));
    File::options()
        .write(true)
        .create_new(true)
        .open(&probe_file)
        .map_err(|e| refused(&dir, LogDirProblem::NotWritable(e)))?;
    let _ = std::fs::remove_file(&probe_file);
    Ok(dir)
}

/// One CID lease per instance from the host-wide registry, each naming
/// the instance that holds it.
fn lease_cids(cfg: &RunConfig, run_id: &str) -> Result<Vec<CidLease>, RunError> {
    let registry = CidRegistry::open(&crate::paths::cid_dir()).map_err(RunError::Cid)?;
    let holder = HolderInfo {
        pid: std::process::id(),
        run_id: run_id.to_string(),
        instance: None,
    };
    let mut leases = registry
        .allocate(cfg.cid_range, cfg.count as usize, &holder)
        .map_err(RunError::Cid)?;
    for (i, l) in leases.iter_mut().enumerate() {
        let _ = l.set_instance(i as u32);
    }
    Ok(leases)
}

impl Instance {
    /// A fresh record: instance `index` on `cid`, logging under `log_dir`.
    fn new(index: u32, cid: u32, log_dir: &std::path::Path) -> Instance {
        Instance {
            index,
            cid,
            log: crate::launcher::log_path(log_dir, index, cid),
            ..Instance::default()
        }
    }
}

/// The spawner threads and the channels the readiness loop reads.
struct SpawnPool {
    handles: Vec<std::thread::JoinHandle<()>>,
    /// What the spawners started (or failed to).
    out_rx: crossbeam_channel::Receiver<Started>,
    /// In-flight tokens: one taken out when an instance is done.
    slot_rx: crossbeam_channel::Receiver<()>,
    /// Readable when a spawner has sent something.
    wake_rx: std::os::unix::net::UnixStream,
}

impl SpawnPool {
    /// Queues `jobs` (index, CID) and starts the spawner threads; fewer
    /// than asked is fine, none is an error.
    fn start(sh: Arc<Shared>, jobs: &[(u32, u32)]) -> Result<SpawnPool, RunError> {
        let cfg = &sh.cfg;
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
            .map_err(RunError::WakePair)?;
        let wake_tx = Arc::new(wake_tx);
        for &job in jobs {
            let _ = job_tx.send(job);
        }
        drop(job_tx);
        let spawners = (in_flight as u32).min(SPAWNERS);
        let mut handles = Vec::new();
        for w in 0..spawners {
            let (rx, tx, slots) = (job_rx.clone(), out_tx.clone(), slot_tx.clone());
            let (wake, sh) = (wake_tx.clone(), sh.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("ukload-spawner-{w}"))
                .stack_size(SPAWNER_STACK)
                .spawn(move || spawner(&sh, &rx, &tx, &slots, &wake));
            match spawned {
                Ok(h) => handles.push(h),
                // Out of threads (e.g. `ulimit -u`): the spawners we have do it.
                Err(e) if !handles.is_empty() => {
                    log::warn!("could start only {} spawner thread(s): {e}", handles.len());
                    break;
                }
                Err(e) => return Err(RunError::SpawnerThread(e)),
            }
        }
        Ok(SpawnPool {
            handles,
            out_rx,
            slot_rx,
            wake_rx,
        })
    }
}

/// A spawner thread: takes an in-flight slot, starts the next instance,
/// sends it and wakes the readiness loop, until the jobs run out or the
/// run stops.
fn spawner(
    sh: &Shared,
    jobs: &crossbeam_channel::Receiver<(u32, u32)>,
    out: &crossbeam_channel::Sender<Started>,
    slots: &crossbeam_channel::Sender<()>,
    wake: &std::os::unix::net::UnixStream,
) {
    while let Ok((index, cid)) = jobs.recv() {
        if !take_slot(slots, &sh.stop) {
            break;
        }
        let _ = out.send(start_instance(sh, index, cid));
        let _ = (&*wake).write(&[1]);
    }
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
            let e = e.to_string();
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
                        error: Some(
                            "no vsock endpoint: readiness was a console line (use --ready probe)"
                                .into(),
                        ),
                        ..Default::default()
                    },
                };
                // Shown as each call ends, not when the phase does.
                if out.error.is_some() || out.call_ms.is_some() {
                    progress::emit(
                        cfg.progress,
                        Event::Tool {
                            instance: i as u32,
                            ms: out.call_ms,
                            error: out.error.clone(),
                        },
                    );
                }
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

/// Why an instance did not start or boot (its record's `boot_error`).
#[derive(Debug)]
enum InstanceError {
    /// Its cgroup could not be created.
    Cgroup(std::io::Error),
    /// Its log could not be opened safely.
    OpenLog(crate::fsafe::FsafeError),
    /// The launch commands could not be written to its log.
    WriteLog {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Its log could not be duplicated for a child's stdout or stderr.
    CloneLog {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A helper or the launcher could not be started.
    Spawn {
        command: String,
        error: crate::supervisor::SpawnError,
    },
    /// A helper did not create its socket.
    Helper {
        command: String,
        log: PathBuf,
        error: HelperWaitError,
    },
    /// Started, but did not become ready; the last lines of its log.
    Boot {
        failure: BootFailure,
        log_tail: Vec<String>,
    },
    /// Started; the readiness loop has not said yet (never recorded).
    Watching,
}

impl InstanceError {
    /// A failed boot, with the last lines of `log` unless it was interrupted.
    fn boot(failure: BootFailure, log: &std::path::Path) -> InstanceError {
        let log_tail = match failure {
            BootFailure::Interrupted => Vec::new(),
            _ => probe::log_tail(log, BOOT_LOG_TAIL_LINES),
        };
        InstanceError::Boot { failure, log_tail }
    }
}

/// Log lines quoted after a failed boot.
const BOOT_LOG_TAIL_LINES: usize = 3;

impl std::fmt::Display for InstanceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstanceError::Cgroup(e) => write!(f, "cannot create the instance's cgroup: {e}"),
            InstanceError::OpenLog(e) => write!(f, "cannot open log: {e}"),
            InstanceError::WriteLog { path, error } => {
                write!(f, "cannot write log {}: {error}", path.display())
            }
            InstanceError::CloneLog { path, error } => {
                write!(f, "cannot open log {}: {error}", path.display())
            }
            InstanceError::Spawn { command, error } => {
                write!(f, "spawn failed: {error} (command: {command})")
            }
            InstanceError::Helper {
                command,
                log,
                error,
            } => write!(f, "{error} (command: {command}); log: {}", log.display()),
            InstanceError::Boot { failure, log_tail } if log_tail.is_empty() => failure.fmt(f),
            InstanceError::Boot { failure, log_tail } => {
                write!(f, "{failure}; last log lines: {}", log_tail.join(" | "))
            }
            InstanceError::Watching => f.write_str("boot still being watched"),
        }
    }
}

/// Why a helper's socket did not appear.
#[derive(Debug)]
enum HelperWaitError {
    /// The helper exited first.
    Exited {
        exit: crate::supervisor::Exit,
        path: PathBuf,
    },
    /// The run was interrupted.
    Interrupted,
    /// The boot deadline passed.
    Deadline { path: PathBuf },
}

impl std::fmt::Display for HelperWaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelperWaitError::Exited { exit, path } => {
                write!(
                    f,
                    "helper exited ({exit}) before creating {}",
                    path.display()
                )
            }
            HelperWaitError::Interrupted => f.write_str("interrupted"),
            HelperWaitError::Deadline { path } => write!(
                f,
                "helper did not create {} before the boot deadline",
                path.display()
            ),
        }
    }
}

/// Phase 1 for one instance: its launcher (and helpers) started, and what
/// the readiness loop must watch; `Err` is a failed start.
// Built once per instance and moved once: boxing the error buys nothing.
#[allow(clippy::result_large_err)]
fn spawn_instance(sh: &Shared, index: u32, cid: u32) -> Result<Started, Outcome> {
    let cfg = &sh.cfg;
    let mut launch = Launch::new(sh, index, cid)?;
    let plan = cfg.launcher.plan(&launch.ctx());
    let (log_file, header) = launch.open_log(&plan)?;
    let t_spawn = Instant::now();
    let boot_deadline = deadline_after(t_spawn, cfg.boot_timeout);
    for pre in plan.pre {
        launch.start_helper(&log_file, pre, boot_deadline)?;
    }
    let (child, _) = launch.spawn(&log_file, plan.command)?;
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
    let first = launch.first.as_ref().unwrap_or(&child);
    let (started, started_mono_ns) = (first.started, first.started_mono_ns);
    let pending = crate::readiness::Pending {
        index,
        readiness: plan.readiness,
        framing: cfg.framing,
        log: launch.log.clone(),
        log_skip: header.len,
        started,
        deadline: deadline_after(started, cfg.boot_timeout),
        dead: launch.dead_check(child.pid, plan.may_daemonize),
    };
    Ok(Started {
        outcome: Outcome {
            index,
            pid: Some(child.pid),
            pgid: Some(child.pgid),
            spawn_ms: Some(spawn_ms),
            started_mono_ns,
            endpoint: pending.readiness.endpoint().cloned(),
            // Filled in by the readiness loop.
            ready: Err(InstanceError::Watching),
            command: Some(header.command),
            helper_commands: header.helpers,
            may_daemonize: plan.may_daemonize,
            cgroup: launch.cgroup,
        },
        pending: Some(pending),
    })
}

/// One instance's start in progress. What it has started so far is what a
/// failure reports, so that cleanup ends it.
struct Launch<'a> {
    sh: &'a Shared,
    index: u32,
    cid: u32,
    log: PathBuf,
    cgroup: Option<Arc<InstanceCgroup>>,
    /// The first process started: it leads the instance's process group.
    first: Option<crate::supervisor::Child>,
    /// The helpers started: pid and command line.
    helpers: Vec<(i32, String)>,
}

/// The launch commands written at the head of an instance's log.
struct LogHeader {
    command: String,
    helpers: Vec<String>,
    /// Its length: console readiness reads the log after it.
    len: u64,
}

impl<'a> Launch<'a> {
    /// A start with nothing started yet; the instance's cgroup is created
    /// (cgroup containment).
    #[allow(clippy::result_large_err)]
    fn new(sh: &'a Shared, index: u32, cid: u32) -> Result<Launch<'a>, Outcome> {
        let cgroup = match crate::supervisor::run_cgroup().map(|r| r.instance(index, cid)) {
            None => None,
            Some(Ok(c)) => Some(Arc::new(c)),
            Some(Err(e)) => return Err(started_fail(index, None, None, InstanceError::Cgroup(e))),
        };
        Ok(Launch {
            sh,
            index,
            cid,
            log: crate::launcher::log_path(&sh.cfg.log_dir, index, cid),
            cgroup,
            first: None,
            helpers: Vec::new(),
        })
    }

    /// What the launcher plans the instance's start from.
    fn ctx(&self) -> InstanceCtx {
        InstanceCtx {
            index: self.index,
            cid: self.cid,
            port: self.sh.cfg.port,
            uds: self.sh.run_dir.join(format!("i{}.vsock", self.index)),
            memory_mb: self.sh.cfg.launcher.memory_mb,
            log: self.log.clone(),
        }
    }

    /// A failed start, reporting what was started so far.
    fn fail(&self, e: InstanceError) -> Outcome {
        started_fail(self.index, self.first.as_ref(), self.cgroup.clone(), e)
    }

    /// Opens the log (no symlink or hard link followed, nobody else's file
    /// truncated) and writes the launch commands at its head (the guide's
    /// "tracks spawn commands").
    #[allow(clippy::result_large_err)]
    fn open_log(&self, plan: &crate::launcher::Plan) -> Result<(File, LogHeader), Outcome> {
        let (index, cid) = (self.index, self.cid);
        let mut log_file =
            crate::fsafe::open_log(&self.log).map_err(|e| self.fail(InstanceError::OpenLog(e)))?;
        let helpers: Vec<String> = plan.pre.iter().map(|p| p.command.display()).collect();
        let command = plan.command.display();
        let log = self.log.display();
        log::debug!("[{index}] launch (CID {cid}, log {log}): {command}");
        for h in &helpers {
            log::debug!("[{index}] helper: {h}");
        }
        let mut text = String::new();
        for h in &helpers {
            text.push_str(&format!("{}helper: {h}\n", probe::LOG_HEADER_PREFIX));
        }
        text.push_str(&format!("{}launch: {command}\n", probe::LOG_HEADER_PREFIX));
        if let Err(error) = log_file.write_all(text.as_bytes()) {
            let path = self.log.clone();
            return Err(self.fail(InstanceError::WriteLog { path, error }));
        }
        let len = text.len() as u64;
        Ok((
            log_file,
            LogHeader {
                command,
                helpers,
                len,
            },
        ))
    }

    /// `cmd` as this instance runs it: output to its log, its markers in
    /// the environment, in its cgroup and process group (and on the host,
    /// from a Flatpak sandbox).
    fn command(&self, log_file: &File, cmd: Command) -> Result<Command, InstanceError> {
        let clone = || {
            log_file
                .try_clone()
                .map_err(|error| InstanceError::CloneLog {
                    path: self.log.clone(),
                    error,
                })
        };
        let (out, err) = (clone()?, clone()?);
        let cmd = match &self.cgroup {
            Some(c) => cmd.into_cgroup(c.dir_fd(), c.procs_fd()),
            None => cmd,
        };
        let cmd = cmd
            .env(ENV_RUN, &self.sh.run_id)
            .env(ENV_INSTANCE, self.index.to_string())
            .env(ENV_CID, self.cid.to_string())
            // So `ukload cleanup` from another runtime directory finds our harness lock.
            .env(crate::paths::ENV_RUNTIME_DIR, crate::paths::runtime_dir())
            .stdin(Redirect::Null)
            .stdout(Redirect::File(out))
            .stderr(Redirect::File(err));
        let cmd = match &self.first {
            Some(f) => cmd.join_process_group(f.pgid),
            None => cmd,
        };
        Ok(if self.sh.cfg.launcher.flatpak_host {
            // `--watch-bus`: the host process ends when we do.
            cmd.wrapped_in("flatpak-spawn", &["--host", "--watch-bus"])
        } else {
            cmd
        })
    }

    /// Starts one of the instance's processes (the first leads its group),
    /// and says with what command line.
    #[allow(clippy::result_large_err)]
    fn spawn(
        &mut self,
        log_file: &File,
        cmd: Command,
    ) -> Result<(crate::supervisor::Child, String), Outcome> {
        let cmd = self.command(log_file, cmd).map_err(|e| self.fail(e))?;
        let command = cmd.display();
        match self.sh.sup.spawn(cmd) {
            Ok(c) => Ok((c, command)),
            Err(error) => Err(self.fail(InstanceError::Spawn { command, error })),
        }
    }

    /// Starts a helper (e.g. a vhost-user backend) and waits until it has
    /// created its socket: each must before the next process starts.
    #[allow(clippy::result_large_err)]
    fn start_helper(
        &mut self,
        log_file: &File,
        pre: crate::launcher::PreStep,
        deadline: Instant,
    ) -> Result<(), Outcome> {
        let (c, shown) = self.spawn(log_file, pre.command)?;
        let pid = c.pid;
        self.helpers.push((pid, shown.clone()));
        if self.first.is_none() {
            self.first = Some(c);
        }
        let sup = self.sh.sup;
        wait_for_path(&pre.ready_path, deadline, &self.sh.stop, &|| {
            sup.try_status(pid)
        })
        .map_err(|error| {
            self.fail(InstanceError::Helper {
                command: shown,
                log: self.log.clone(),
                error,
            })
        })
    }

    /// What the readiness loop asks to learn that the instance died before
    /// it was ready: a helper exited, or the launcher did (unless it may
    /// daemonize and some process of the instance is left).
    fn dead_check(&self, pid: i32, may_daemonize: bool) -> crate::readiness::DeadCheck {
        let helpers = self.helpers.clone();
        let (run_id, index) = (self.sh.run_id.clone(), self.index);
        let log = self.log.clone();
        let cgroup = self.cgroup.clone();
        let sup = self.sh.sup;
        Box::new(move || -> Option<String> {
            // A helper (e.g. the vhost-user vsock backend) that died dooms the
            // boot: say so now, not at the boot deadline.
            for (hp, shown) in &helpers {
                if let Some(e) = sup.try_status(*hp) {
                    return Some(format!("helper {shown} {e}; log: {}", log.display()));
                }
            }
            let exit = sup.try_status(pid)?;
            if exit.success() && may_daemonize {
                // A launcher may daemonize its VMM and exit 0: only dead if nothing is left.
                let left = match &cgroup {
                    Some(c) => c.cg.populated(),
                    None => {
                        let table = crate::proc::table();
                        !crate::memory::instance_pids(pid, &run_id, index, &table).is_empty()
                    }
                };
                if left {
                    return None;
                }
                return Some(format!(
                    "{exit}, and no process of the instance is left; log: {}",
                    log.display()
                ));
            }
            Some(format!("{exit}; log: {}", log.display()))
        })
    }
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
) -> Result<(), HelperWaitError> {
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Some(exit) = exited() {
            let path = path.to_path_buf();
            return Err(HelperWaitError::Exited { exit, path });
        }
        if stop.load(Ordering::Relaxed) {
            return Err(HelperWaitError::Interrupted);
        }
        if Instant::now() >= deadline {
            let path = path.to_path_buf();
            return Err(HelperWaitError::Deadline { path });
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
    error: InstanceError,
) -> Outcome {
    Outcome {
        cgroup,
        index,
        pid: first.map(|c| c.pid),
        pgid: first.map(|c| c.pgid),
        spawn_ms: None,
        started_mono_ns: first.map(|c| c.started_mono_ns).unwrap_or(0),
        endpoint: None,
        ready: Err(error),
        command: None,
        helper_commands: Vec::new(),
        may_daemonize: false,
    }
}
