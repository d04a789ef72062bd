//! Command-line definitions of `ukload` and their validation into library
//! configurations. Each flag's value is typed (`values`): argh parses it and
//! a bad one is one line naming the flag. What depends on several flags
//! (a CID range wide enough for COUNT, qemu's memory minimum, ...) is checked
//! here, before anything starts.

#[macro_use]
mod group;
pub mod mcp;
pub mod values;

use argh::FromArgs;
use std::path::PathBuf;
use std::time::Duration;
use ukload::cid::CidRange;
use ukload::framing::Framing;
use ukload::launcher::qemu::{Accel, Machine, VsockBackend};
use ukload::launcher::{self, Kind, LauncherConfig, ReadyMode};
use ukload::progress::ProgressMode;
use ukload::run::{MemMetric, RunConfig};
use ukload::toolcall::ToolCall;
pub use values::{
    CommandLine, Count, Deadline, Format, MemoryMib, MergeFormat, Millis, Pattern, Percent, Port,
    Positive, Seconds,
};

/// Default instance count (the seed's medium load test).
pub const DEFAULT_COUNT: u32 = 15;
/// Default boot timeout, seconds (the seed's test timeout).
pub const DEFAULT_BOOT_TIMEOUT_S: u64 = 60;
/// Default boot-time target, ms.
pub const DEFAULT_MAX_BOOT_MS: f64 = 500.0;
/// Default memory target per instance, MB.
pub const DEFAULT_MAX_MEM_MB: f64 = 80.0;
/// Default share of instances that must boot for PARTIAL, percent.
pub const DEFAULT_MIN_SUCCESS_PCT: f64 = 80.0;
/// Default tool-call latency target, ms (the seed's).
pub const DEFAULT_MAX_TOOL_MS: f64 = 50.0;
/// Default log directory (the seed's).
pub const DEFAULT_LOG_DIR: &str = ukload::paths::DEFAULT_LOG_DIR;
/// Default CID range (the seed's).
pub const DEFAULT_CID_RANGE: CidRange = CidRange {
    start: 200,
    end: 299,
};
/// Default number of measured cycles of `ukload cycles`.
pub const DEFAULT_CYCLES: u32 = 100;

#[derive(FromArgs, Debug)]
/// ukload: spawn N unikernels/microVMs, measure true boot time and memory,
/// run MCP tools over vsock, and leave no process behind.
pub struct Top {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    pub version: bool,

    /// more diagnostics on stderr, anywhere on the line: -v debug, -vv trace
    /// (RUST_LOG=debug|trace does the same; -q keeps warnings and errors only)
    #[argh(switch, short = 'v')]
    #[allow(dead_code)] // main counts and removes -v before parsing; here for --help
    pub verbose: bool,

    #[argh(subcommand)]
    pub cmd: Option<Sub>,
}

impl Top {
    /// The command's `-q`: logging then keeps warnings and errors only.
    pub fn quiet(&self) -> bool {
        match &self.cmd {
            Some(Sub::Run(a)) => a.quiet,
            Some(Sub::Cycles(a)) => a.quiet,
            Some(Sub::Mcp(m)) => match &m.cmd {
                mcp::McpCmd::Tools(a) => a.quiet,
                mcp::McpCmd::Call(a) => a.quiet,
                mcp::McpCmd::Bench(_) => false,
            },
            _ => false,
        }
    }
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
// Parsed once per process; argh needs the variants unboxed.
#[allow(clippy::large_enum_variant)]
pub enum Sub {
    Run(RunArgs),
    Ps(PsArgs),
    Cleanup(CleanupArgs),
    Cycles(CyclesArgs),
    Mcp(mcp::McpArgs),
    Image(ImageArgs),
    Doctor(DoctorArgs),
    Report(ReportArgs),
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "report")]
/// Work with JSON reports of earlier runs.
pub struct ReportArgs {
    #[argh(subcommand)]
    pub cmd: ReportCmd,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum ReportCmd {
    Merge(MergeArgs),
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "merge")]
/// Merge the JSON reports of runs on several hosts into one verdict and one
/// set of statistics (per host and overall; CID clashes are checked per
/// host). Exit 0 PASS (every host passed), 1 FAIL (any host failed), 2
/// PARTIAL; 64 for an unreadable report.
pub struct MergeArgs {
    #[argh(positional)]
    /// reports written by `ukload run --format json`
    pub files: Vec<PathBuf>,
    #[argh(option)]
    /// output: human (default), json, junit or html
    pub format: Option<MergeFormat>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "doctor")]
/// Check what each launcher needs (guest binary, node, kraft and its image,
/// QEMU, kernel, initramfs, vhost-device-vsock, /dev/vhost-vsock, KVM, the
/// runtime directory, open-file limits, cgroup v2): ok or missing, with the
/// command that fixes it. Exit 0 when the chosen launcher has everything, 69
/// otherwise.
pub struct DoctorArgs {
    #[argh(option)]
    /// launcher whose needs decide the exit code: process (default), qemu,
    /// kraft, exec
    pub launcher: Option<Kind>,
    #[argh(option)]
    /// instances to check the open-file limit for (default 15)
    pub count: Option<Count>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "image")]
/// The microVM guest image (kernel + initramfs with ukload-guest as /init) in
/// the cache ($UKLOAD_CACHE_DIR, else $XDG_CACHE_HOME/ukload, else ~/.cache/ukload).
pub struct ImageArgs {
    #[argh(subcommand)]
    pub cmd: ImageCmd,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum ImageCmd {
    Build(ImageBuildArgs),
    Info(ImageInfoArgs),
    SlimKernel(ImageSlimArgs),
    Rootfs(ImageRootfsArgs),
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rootfs")]
/// Build a read-only erofs root filesystem for a stdio MCP server in a
/// microVM: the program (found on PATH), its #! interpreter, its shared
/// libraries (read from the ELF files), Python's standard library for
/// python3, files named by the command's arguments, and every --include.
/// Cached by content in <cache>/rootfs/; prints the image's path. Exit 64
/// for a missing program, library or include, 69 without mkfs.erofs, 74 when
/// a file cannot be read or written, 1 when mkfs.erofs fails.
pub struct ImageRootfsArgs {
    #[argh(option)]
    /// the server command, e.g. 'node /srv/echo_server.js' (split like a
    /// shell would, without one); the guest runs it by default
    pub command: String,
    #[argh(option)]
    /// HOST[:GUEST]: a file or directory tree to put in the image (GUEST
    /// defaults to HOST's absolute path; repeatable)
    pub include: Vec<String>,
    #[argh(option)]
    /// also copy the image to this path
    pub out: Option<PathBuf>,
    #[argh(option)]
    /// output: human (default; the image path) or json
    pub format: Option<Format>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "slim-kernel")]
/// Rewrite a vmlinux so QEMU maps and copies only its non-zero pages (same
/// memory image; about 15 MB less per VM). Run by scripts/setup-microvm.sh.
pub struct ImageSlimArgs {
    #[argh(positional)]
    /// the vmlinux to read
    pub input: PathBuf,
    #[argh(positional)]
    /// where to write (default: in place)
    pub output: Option<PathBuf>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "build")]
/// Write the initramfs from a static guest binary and the cached kernel modules.
pub struct ImageBuildArgs {
    #[argh(option)]
    /// static ukload-guest to use as /init (default: the cached one; build it
    /// with `bash scripts/build-guest-image.sh`)
    pub guest: Option<PathBuf>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "info")]
/// Say what is in the image cache, what is missing and how to make it.
pub struct ImageInfoArgs {}

flag_group! { $
    /// How instances are started, watched and ended: the flags `run` and
    /// `cycles` share.
    InstanceFlags, with_instance_flags, instance_flags {
        /// launcher: process (default), qemu, kraft, exec
        #[argh(option)]
        launcher: (Option<Kind>),
        /// seconds an instance may take to boot (default 60, at most 86400)
        #[argh(option)]
        boot_timeout: (Option<Seconds>),
        /// ms between SIGTERM and SIGKILL at cleanup (default 2000, at most
        /// 86400000)
        #[argh(option)]
        grace_ms: (Option<Millis>),
        /// CID range, e.g. 200-299 (default)
        #[argh(option)]
        cid_range: (Option<CidRange>),
        /// guest vsock port (default 5252)
        #[argh(option)]
        port: (Option<Port>),
        /// directory of per-instance logs (default /tmp/osvm-load-test)
        #[argh(option)]
        log_dir: (Option<PathBuf>),
        /// framing on vsock: line (default, MCP's) or length (4-byte LE prefix)
        #[argh(option)]
        framing: (Option<Framing>),
        /// readiness: auto (default), probe (JSON-RPC ping over vsock) or console
        #[argh(option)]
        ready: (Option<ReadyMode>),
        /// console line that means "ready" (regex; default "ukload-guest: ready")
        #[argh(option)]
        ready_console: (Option<Pattern>),
        /// process launcher: guest program (default: ukload-guest beside ukload)
        #[argh(option)]
        guest_bin: (Option<PathBuf>),
        /// process launcher: extra argument for the guest (repeatable)
        #[argh(option)]
        guest_arg: (Vec<String>),
        /// process launcher: boot delay the guest injects, ms (default 0, at
        /// most 86400000)
        #[argh(option)]
        guest_boot_delay_ms: (Option<Millis>),
        /// kraft launcher: the kraft program (default: kraft on PATH)
        #[argh(option)]
        kraft_bin: (Option<String>),
        /// kraft launcher: image (default ~/.osvm/unikernels/unikraft_tool_executor)
        #[argh(option)]
        image: (Option<PathBuf>),
        /// kraft launcher: --plat value (e.g. qemu)
        #[argh(option)]
        plat: (Option<String>),
        /// kraft launcher: extra argument for `kraft run` (repeatable;
        /// placeholders allowed)
        #[argh(option)]
        kraft_arg: (Vec<String>),
        /// kraft launcher: an argument for the application itself, after the
        /// image and `--` (repeatable; placeholders {index} {cid} {port}), e.g.
        /// --app-arg=--listen --app-arg=vsock:{port}
        #[argh(option)]
        app_arg: (Vec<String>),
        /// exec launcher: command template with {index} {cid} {port} {uds}
        /// {memory_mb} {log}
        #[argh(option)]
        exec: (Option<String>),
        /// guest memory in MiB for VM launchers (default: qemu 80, at least 32;
        /// kraft 64)
        #[argh(option)]
        memory: (Option<MemoryMib>),
        /// qemu launcher: the QEMU program (default qemu-system-x86_64)
        #[argh(option)]
        qemu_bin: (Option<String>),
        /// qemu launcher: guest kernel (default: vmlinux in the image cache)
        #[argh(option)]
        kernel: (Option<PathBuf>),
        /// qemu launcher: guest initramfs (default: initramfs.cpio in the
        /// image cache)
        #[argh(option)]
        initrd: (Option<PathBuf>),
        /// qemu launcher: microvm (default) or pc
        #[argh(option)]
        machine: (Option<Machine>),
        /// qemu launcher: auto (default: KVM only if it really boots here), kvm
        /// or tcg
        #[argh(option)]
        accel: (Option<Accel>),
        /// qemu launcher: auto (default), vhost-user (vhost-device-vsock) or
        /// vhost (kernel)
        #[argh(option)]
        vsock_backend: (Option<VsockBackend>),
        /// qemu launcher: TCG translation cache in MiB (default 8; use 16 with
        /// a Debian kernel)
        #[argh(option)]
        tb_size_mb: (Option<Count>),
        /// qemu launcher: extra kernel command-line word (repeatable)
        #[argh(option)]
        kernel_arg: (Vec<String>),
        /// a real stdio MCP server each instance runs ('CMD ARGS', split like a
        /// shell): process launcher: the guest bridges to it; qemu launcher: it
        /// runs inside every VM from a read-only root filesystem image
        #[argh(option)]
        mcp_server: (Option<CommandLine>),
        /// qemu launcher with --mcp-server: the root filesystem image (erofs)
        /// holding the server (default: built from --mcp-server and --include)
        #[argh(option)]
        rootfs: (Option<PathBuf>),
        /// qemu launcher with --mcp-server: a file for the built image,
        /// HOST[:GUEST] (repeatable)
        #[argh(option)]
        include: (Vec<String>),
        /// inside a Flatpak sandbox: start launchers on the host through
        /// `flatpak-spawn --host` (without it ukload refuses to run there)
        #[argh(switch)]
        flatpak_host: (bool),
    }
}

flag_group! { $
    /// What a command shows while it works and prints at the end: the flags
    /// `run` and `cycles` share.
    OutputFlags, with_output_flags, output_flags {
        /// output: human (default) or json
        #[argh(option)]
        format: (Option<Format>),
        /// no progress lines on stderr (warnings and errors still show)
        #[argh(switch, short = 'q')]
        quiet: (bool),
        /// progress on stderr: human (default) or json (one event per line:
        /// spawning, spawned, booted, boot_failed, tool, memory, teardown, ...)
        #[argh(option)]
        progress: (Option<ProgressMode>),
    }
}

with_instance_flags! { [with_output_flags]
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "run")]
    /// Run a load test: spawn, boot, memory, CIDs, cleanup. Exit 0 PASS, 2 PARTIAL,
    /// 1 FAIL, 64 bad usage, 69 launcher program missing, 74 report not written
    /// (stdout full or closed), 75 CID range full, 130/143 interrupted.
    pub struct RunArgs {
        #[argh(positional)]
        /// number of instances (default 15)
        pub count: Option<Count>,
        #[argh(option)]
        /// max instances spawning/booting at once (default: all)
        pub concurrency: Option<Count>,
        #[argh(option)]
        /// boot-time target in ms (default 500)
        pub max_boot_ms: Option<Positive>,
        #[argh(option)]
        /// memory target per instance in MB (default 80)
        pub max_mem_mb: Option<Positive>,
        #[argh(option)]
        /// memory figure checked against the target: pss (default) or rss
        pub mem_metric: Option<MemMetric>,
        #[argh(option)]
        /// percent of instances that must boot for PARTIAL (default 80)
        pub min_success: Option<Percent>,
        #[argh(option)]
        /// after boot, each instance executes this MCP tool: TOOL or TOOL:{JSON args}
        pub tool_call: Option<ToolCall>,
        #[argh(option)]
        /// text the tool result must contain (else the call counts as wrong)
        pub tool_expect: Option<String>,
        #[argh(option)]
        /// tool-call latency target in ms (default 50)
        pub max_tool_ms: Option<Positive>,
        #[argh(option)]
        /// vsock connection latency target in ms (connect + hybrid handshake of
        /// the boot probe; the guide's "< 10 ms"); reported always, checked only
        /// when given
        pub max_connect_ms: Option<Positive>,
        #[argh(option)]
        /// deadline of one tool call in ms (default 10000; 180000 with
        /// --mcp-server and --launcher qemu; at most 86400000)
        pub tool_timeout_ms: Option<Deadline>,
        #[argh(option)]
        /// also write a JUnit XML file (a testcase per instance per phase) for CI
        pub junit: Option<PathBuf>,
        #[argh(option)]
        /// also write a Prometheus text-format file (node_exporter textfile
        /// collector), atomically
        pub prom: Option<PathBuf>,
        #[argh(option)]
        /// also write a self-contained HTML report (timeline, boot histogram,
        /// memory per instance; inline SVG, no network)
        pub html: Option<PathBuf>,
    }
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ps")]
/// List live instances of every run on this host (run id, CID, pids, age, memory).
pub struct PsArgs {
    #[argh(option)]
    /// output: human (default) or json
    pub format: Option<Format>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cleanup")]
/// End processes left by earlier runs (found by their UKLOAD_RUN marker only)
/// and free their CIDs. Runs whose harness is alive are left alone unless
/// --all is given (--run ID alone does not end a live run: use --run ID --all).
pub struct CleanupArgs {
    #[argh(option)]
    /// only this run id
    pub run: Option<String>,
    #[argh(switch)]
    /// also end runs whose harness is still alive (with --run: only that one)
    pub all: bool,
    #[argh(option)]
    /// ms between SIGTERM and SIGKILL (default 2000, at most 86400000)
    pub grace_ms: Option<Millis>,
}

with_instance_flags! { [with_output_flags]
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "cycles")]
    /// Spawn, boot and terminate repeatedly (the seed's leak and rapid-cycle
    /// tests): reports success rate, boot times, and ukload's own open fds,
    /// threads and RSS at start and end. Takes every flag of `run` that says
    /// how instances are started and ended. Exit 0 when every cycle was clean
    /// and none of them grew beyond its tolerance, 1 otherwise (the message
    /// names the metric), 64 bad usage, 74 report not written (stdout full or
    /// closed).
    pub struct CyclesArgs {
        #[argh(option)]
        /// cycles to run after one warm-up cycle (default 100)
        pub cycles: Option<Count>,
        #[argh(option)]
        /// instances per cycle (default 1)
        pub per_cycle: Option<Count>,
        #[argh(option)]
        /// percentage of cycles that must be clean for exit 0 (default 100; the
        /// seed's rapid spawn/terminate test allows 75); a cycle that leaves a
        /// process behind, a leak or an interruption fails whatever it says
        pub min_success: Option<Percent>,
    }
}

/// A bad command line: the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

impl RunArgs {
    /// Checks what depends on several flags and builds the run's
    /// configuration; nothing has started yet.
    pub fn to_config(&self) -> Result<(RunConfig, Format), Usage> {
        let count = self.count.map_or(DEFAULT_COUNT, Count::get);
        let (mut cfg, fmt) = self
            .instance_flags()
            .run_config(count, &self.output_flags())?;
        cfg.concurrency = self.concurrency.map_or(count, Count::get);
        cfg.tool_call = self.tool_call(&cfg.launcher)?;
        if let Some(call) = &cfg.tool_call {
            cfg.launcher.set_server_timeout(call.timeout);
        }
        cfg.max_boot_ms = self.max_boot_ms.map_or(DEFAULT_MAX_BOOT_MS, |p| p.0);
        cfg.max_mem_mb = self.max_mem_mb.map_or(DEFAULT_MAX_MEM_MB, |p| p.0);
        cfg.mem_metric = self.mem_metric.unwrap_or(MemMetric::Pss);
        cfg.min_success_pct = self.min_success.map_or(DEFAULT_MIN_SUCCESS_PCT, |p| p.0);
        cfg.max_tool_ms = self.max_tool_ms.map_or(DEFAULT_MAX_TOOL_MS, |p| p.0);
        cfg.max_connect_ms = self.max_connect_ms.map(|p| p.0);
        Ok((cfg, fmt))
    }

    /// `--tool-call`, `--tool-expect` and `--tool-timeout-ms`; a server in
    /// an emulated VM gets a longer default deadline.
    fn tool_call(&self, lc: &LauncherConfig) -> Result<Option<ToolCall>, Usage> {
        let Some(call) = &self.tool_call else {
            if self.tool_expect.is_some() {
                return Err(Usage("--tool-expect needs --tool-call TOOL".into()));
            }
            return Ok(None);
        };
        let mut call = call.clone();
        call.expect = self.tool_expect.clone();
        if let Some(Deadline(d)) = self.tool_timeout_ms {
            call.timeout = d;
        } else if lc.qemu.runs_server() {
            // A real server in an emulated VM: Node takes 10 s (one
            // VM) to 70 s (ten) to start under TCG (docs/microvm.md).
            call.timeout = launcher::qemu::DEFAULT_VM_SERVER_TOOL_TIMEOUT;
        }
        Ok(Some(call))
    }
}

impl CyclesArgs {
    /// Checks what depends on several flags (the instance flags as `run`
    /// checks them, with the same messages); nothing has started yet.
    pub fn to_config(&self) -> Result<(ukload::cycles::CyclesConfig, Format), Usage> {
        let per_cycle = self.per_cycle.map_or(1, Count::get);
        let (run, fmt) = self
            .instance_flags()
            .run_config(per_cycle, &self.output_flags())?;
        Ok((
            ukload::cycles::CyclesConfig {
                cycles: self.cycles.map_or(DEFAULT_CYCLES, Count::get),
                progress: run.progress,
                run: RunConfig {
                    // Each cycle's run is quiet: the cycles report progress.
                    progress: ProgressMode::Off,
                    ..run
                },
                min_success_pct: self.min_success.map_or(100.0, |p| p.0),
            },
            fmt,
        ))
    }
}

impl OutputFlags {
    /// `--format`, and what progress shows: `-q` and `--progress`.
    fn to_modes(&self) -> Result<(Format, ProgressMode), Usage> {
        let progress = match (self.quiet, self.progress) {
            (true, Some(_)) => {
                return Err(Usage(
                    "-q and --progress contradict each other: choose one".into(),
                ))
            }
            (true, None) => ProgressMode::Off,
            (false, p) => p.unwrap_or(ProgressMode::Human),
        };
        Ok((self.format.unwrap_or(Format::Human), progress))
    }
}

impl InstanceFlags {
    /// A run of `count` instances as these flags describe it, with the
    /// default targets and no tool call; checks what depends on several
    /// flags.
    pub fn run_config(
        &self,
        count: u32,
        output: &OutputFlags,
    ) -> Result<(RunConfig, Format), Usage> {
        let (fmt, progress) = output.to_modes()?;
        let cid_range = self.cid_range.unwrap_or(DEFAULT_CID_RANGE);
        if count as usize > cid_range.len() {
            return Err(Usage(format!(
                "COUNT {count} is larger than --cid-range {cid_range} ({} CIDs); widen the range or run fewer",
                cid_range.len()
            )));
        }
        let mut launcher = self.launcher_config()?;
        // Replaced by the tool call's deadline when there is one.
        launcher.set_server_timeout(ukload::toolcall::DEFAULT_TOOL_TIMEOUT);
        let cfg = RunConfig {
            tool_call: None,
            max_tool_ms: DEFAULT_MAX_TOOL_MS,
            max_connect_ms: None,
            count,
            concurrency: count,
            boot_timeout: self
                .boot_timeout
                .map_or(Duration::from_secs(DEFAULT_BOOT_TIMEOUT_S), |s| s.0),
            max_boot_ms: DEFAULT_MAX_BOOT_MS,
            max_mem_mb: DEFAULT_MAX_MEM_MB,
            mem_metric: MemMetric::Pss,
            cid_range,
            port: self.port.map_or(ukload::DEFAULT_PORT, |p| p.0),
            grace: self
                .grace_ms
                .map_or(ukload::supervisor::teardown::DEFAULT_GRACE, |m| m.0),
            min_success_pct: DEFAULT_MIN_SUCCESS_PCT,
            log_dir: self
                .log_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR)),
            framing: launcher.framing,
            launcher,
            progress,
        };
        Ok((cfg, fmt))
    }

    /// Everything the launcher is given.
    fn launcher_config(&self) -> Result<LauncherConfig, Usage> {
        let kind = self.launcher.unwrap_or(Kind::Process);
        let memory_mb = self.memory_mb(kind)?;
        if let Some(d) = &self.log_dir {
            if d.as_os_str().is_empty() {
                return Err(Usage("--log-dir \"\": give a directory".into()));
            }
        }
        let mut qemu = self.qemu_config();
        let bridged_server = self.mcp_server(kind, &mut qemu)?;
        let ready_console = match &self.ready_console {
            Some(Pattern(re)) => re.clone(),
            None => regex_lite::Regex::new(launcher::DEFAULT_READY_CONSOLE)
                .expect("the default console pattern is a valid regex"),
        };
        Ok(LauncherConfig {
            qemu,
            qemu_resolved: None,
            flatpak_host: self.flatpak_host,
            app_args: self.app_arg.clone(),
            kind,
            ready: self.ready.unwrap_or(ReadyMode::Auto),
            ready_console,
            framing: self.framing.unwrap_or(Framing::Line),
            guest_bin: self
                .guest_bin
                .clone()
                .unwrap_or_else(LauncherConfig::default_guest_bin),
            guest_args: self.guest_arg.clone(),
            bridged_server,
            guest_boot_delay_ms: self
                .guest_boot_delay_ms
                .map_or(0, |m| m.0.as_millis() as u64),
            kraft_bin: self.kraft_bin.clone().unwrap_or_else(|| "kraft".into()),
            image: self
                .image
                .clone()
                .unwrap_or_else(LauncherConfig::default_kraft_image),
            plat: self.plat.clone(),
            kraft_args: self.kraft_arg.clone(),
            exec_template: self.exec.clone(),
            memory_mb,
        })
    }

    /// `--memory`, MiB: the launcher's default; enough for a qemu guest.
    fn memory_mb(&self, kind: Kind) -> Result<u64, Usage> {
        let memory_mb = match self.memory {
            None if kind == Kind::Qemu => launcher::qemu::DEFAULT_QEMU_MEMORY_MB,
            None => launcher::DEFAULT_MEMORY_MB,
            Some(MemoryMib(mb)) => mb,
        };
        let min_vm = launcher::qemu::MIN_QEMU_MEMORY_MB;
        if kind == Kind::Qemu && memory_mb < min_vm {
            return Err(Usage(format!(
                "--memory {memory_mb}: too little for the qemu launcher's guest; give at least \
                 {min_vm} MiB (below that QEMU exits 0 without booting and without a word)"
            )));
        }
        Ok(memory_mb)
    }

    /// The qemu launcher's own flags (binary, kernel, machine, vsock backend, ...).
    fn qemu_config(&self) -> launcher::qemu::QemuConfig {
        let mut qemu = launcher::qemu::QemuConfig::default();
        if let Some(b) = &self.qemu_bin {
            qemu.qemu_bin = b.clone();
        }
        if let Some(k) = &self.kernel {
            qemu.kernel = k.clone();
        }
        if let Some(i) = &self.initrd {
            qemu.initrd = i.clone();
        }
        if let Some(m) = self.machine {
            qemu.machine = m;
        }
        if let Some(a) = self.accel {
            qemu.accel = a;
        }
        if let Some(b) = self.vsock_backend {
            qemu.backend = b;
        }
        if let Some(t) = self.tb_size_mb {
            qemu.tb_size_mb = t.0;
        }
        qemu.append = self.kernel_arg.clone();
        qemu
    }

    /// `--mcp-server`, `--rootfs` and `--include`: the process launcher's
    /// guest bridges to the server (returned), the qemu launcher gets an
    /// image given or to build.
    fn mcp_server(
        &self,
        kind: Kind,
        qemu: &mut launcher::qemu::QemuConfig,
    ) -> Result<Option<launcher::BridgedServer>, Usage> {
        self.check_image_flags(kind)?;
        match (&self.mcp_server, kind) {
            (None, _) => {
                // --rootfs alone: the image's manifest names the server.
                qemu.rootfs = self.rootfs.clone();
            }
            (Some(cmd), Kind::Process) => {
                return Ok(Some(launcher::BridgedServer {
                    command: cmd.text.clone(),
                    argv: cmd.argv.clone(),
                    start_timeout: None,
                }));
            }
            (Some(cmd), Kind::Qemu) => {
                // Parsed (and its --include values checked) here; the image is
                // built by the launcher's preflight, before any VM starts.
                let spec =
                    ukload::rootfs::RootfsSpec::parse(&cmd.text, &self.include).map_err(|e| {
                        Usage(
                            format!("--mcp-server {:?}: {}", cmd.text, e)
                                .replace("--command", "--mcp-server"),
                        )
                    })?;
                match &self.rootfs {
                    Some(img) => {
                        qemu.rootfs = Some(img.clone());
                        qemu.server = Some(spec.command);
                    }
                    None => qemu.build_rootfs = Some(spec),
                }
            }
            (Some(_), other) => {
                return Err(Usage(format!(
                    "--mcp-server works with --launcher process or qemu, not {other:?}"
                )))
            }
        }
        Ok(None)
    }

    /// `--rootfs` and `--include`: qemu only, not together, `--include`
    /// only with `--mcp-server`.
    fn check_image_flags(&self, kind: Kind) -> Result<(), Usage> {
        let uses_image = self.rootfs.is_some() || !self.include.is_empty();
        if uses_image && kind != Kind::Qemu {
            return Err(Usage(format!(
                "--rootfs and --include are for --launcher qemu, not {kind:?} (the process \
                 launcher runs --mcp-server on the host)"
            )));
        }
        if self.rootfs.is_some() && !self.include.is_empty() {
            return Err(Usage(
                "--include adds files to the image built from --mcp-server; with --rootfs IMAGE \
                 the image is given: leave one of them out"
                    .into(),
            ));
        }
        if !self.include.is_empty() && self.mcp_server.is_none() {
            return Err(Usage(
                "--include needs --mcp-server 'CMD ARGS' (the server the built image holds)".into(),
            ));
        }
        Ok(())
    }
}
