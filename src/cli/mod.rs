//! Command-line definitions of `ukload` and their validation into library
//! configurations. Every bad value gives one line naming the flag.

pub mod mcp;

use argh::FromArgs;
use std::path::PathBuf;
use std::time::Duration;
use ukload::framing::Framing;
use ukload::launcher::{self, Kind, LauncherConfig, ReadyMode};
use ukload::progress::ProgressMode;
use ukload::run::{MemMetric, RunConfig};
use ukload::toolcall::ToolCall;

/// Default instance count (the seed's medium load test).
pub const DEFAULT_COUNT: u32 = 15;
/// Default boot timeout, seconds (the seed's test timeout).
pub const DEFAULT_BOOT_TIMEOUT_S: f64 = 60.0;
/// Default boot-time target, ms.
pub const DEFAULT_MAX_BOOT_MS: f64 = 500.0;
/// Default memory target per instance, MB.
pub const DEFAULT_MAX_MEM_MB: f64 = 80.0;
/// Default SIGTERM → SIGKILL grace period, ms.
pub const DEFAULT_GRACE_MS: u64 = ukload::supervisor::teardown::DEFAULT_GRACE.as_millis() as u64;
/// Default share of instances that must boot for PARTIAL, percent.
pub const DEFAULT_MIN_SUCCESS_PCT: f64 = 80.0;
/// Default tool-call latency target, ms (the seed's).
pub const DEFAULT_MAX_TOOL_MS: f64 = 50.0;
/// Default log directory (the seed's).
pub const DEFAULT_LOG_DIR: &str = ukload::paths::DEFAULT_LOG_DIR;
/// Default CID range (the seed's).
pub const DEFAULT_CID_RANGE: &str = "200-299";
/// Longest duration any flag accepts (boot timeout, grace period, tool-call
/// deadline, injected boot delay): a day, in seconds. Beyond it a deadline is
/// a mistake, and far beyond it `Instant + Duration` overflows and would
/// panic in a worker thread (`--boot-timeout 1e19` did).
pub const MAX_DURATION_S: u64 = 24 * 60 * 60;
/// Largest `--memory`, MiB (1 TiB): a bound that keeps `MiB → bytes`
/// arithmetic, here and in any VMM, far from overflow.
pub const MAX_MEMORY_MB: u64 = 1 << 20;
/// [`MAX_DURATION_S`] in milliseconds, for the `-ms` flags.
pub const MAX_DURATION_MS: u64 = MAX_DURATION_S * 1000;

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
    pub format: Option<String>,
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
    pub launcher: Option<String>,
    #[argh(option)]
    /// instances to check the open-file limit for (default 15)
    pub count: Option<String>,
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
    pub format: Option<String>,
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

#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "run")]
/// Run a load test: spawn, boot, memory, CIDs, cleanup. Exit 0 PASS, 2 PARTIAL,
/// 1 FAIL, 64 bad usage, 69 launcher program missing, 74 report not written
/// (stdout full or closed), 75 CID range full, 130/143 interrupted.
pub struct RunArgs {
    #[argh(positional)]
    /// number of instances (default 15)
    pub count: Option<String>,
    #[argh(option)]
    /// launcher: process (default), qemu, kraft, exec
    pub launcher: Option<String>,
    #[argh(option)]
    /// max instances spawning/booting at once (default: all)
    pub concurrency: Option<String>,
    #[argh(option)]
    /// seconds an instance may take to boot (default 60, at most 86400)
    pub boot_timeout: Option<String>,
    #[argh(option)]
    /// boot-time target in ms (default 500)
    pub max_boot_ms: Option<String>,
    #[argh(option)]
    /// memory target per instance in MB (default 80)
    pub max_mem_mb: Option<String>,
    #[argh(option)]
    /// memory figure checked against the target: pss (default) or rss
    pub mem_metric: Option<String>,
    #[argh(option)]
    /// CID range, e.g. 200-299 (default)
    pub cid_range: Option<String>,
    #[argh(option)]
    /// guest vsock port (default 5252)
    pub port: Option<String>,
    #[argh(option)]
    /// ms between SIGTERM and SIGKILL at cleanup (default 2000, at most 86400000)
    pub grace_ms: Option<String>,
    #[argh(option)]
    /// percent of instances that must boot for PARTIAL (default 80)
    pub min_success: Option<String>,
    #[argh(option)]
    /// output: human (default) or json
    pub format: Option<String>,
    #[argh(option)]
    /// directory of per-instance logs (default /tmp/osvm-load-test)
    pub log_dir: Option<PathBuf>,
    #[argh(option)]
    /// framing on vsock: line (default, MCP's) or length (4-byte LE prefix)
    pub framing: Option<String>,
    #[argh(option)]
    /// readiness: auto (default), probe (JSON-RPC ping over vsock) or console
    pub ready: Option<String>,
    #[argh(option)]
    /// console line that means "ready" (regex; default "ukload-guest: ready")
    pub ready_console: Option<String>,
    #[argh(option)]
    /// process launcher: guest program (default: ukload-guest beside ukload)
    pub guest_bin: Option<PathBuf>,
    #[argh(option)]
    /// process launcher: extra argument for the guest (repeatable)
    pub guest_arg: Vec<String>,
    #[argh(option)]
    /// process launcher: boot delay the guest injects, ms (default 0, at most
    /// 86400000)
    pub guest_boot_delay_ms: Option<String>,
    #[argh(option)]
    /// kraft launcher: the kraft program (default: kraft on PATH)
    pub kraft_bin: Option<String>,
    #[argh(option)]
    /// kraft launcher: image (default ~/.osvm/unikernels/unikraft_tool_executor)
    pub image: Option<PathBuf>,
    #[argh(option)]
    /// kraft launcher: --plat value (e.g. qemu)
    pub plat: Option<String>,
    #[argh(option)]
    /// kraft launcher: extra argument for `kraft run` (repeatable; placeholders allowed)
    pub kraft_arg: Vec<String>,
    #[argh(option)]
    /// kraft launcher: an argument for the application itself, after the
    /// image and `--` (repeatable; placeholders {index} {cid} {port}), e.g.
    /// --app-arg=--listen --app-arg=vsock:{port}
    pub app_arg: Vec<String>,
    #[argh(option)]
    /// exec launcher: command template with {index} {cid} {port} {uds} {memory_mb} {log}
    pub exec: Option<String>,
    #[argh(option)]
    /// guest memory in MiB for VM launchers (default: qemu 80, at least 32;
    /// kraft 64)
    pub memory: Option<String>,
    #[argh(option)]
    /// qemu launcher: the QEMU program (default qemu-system-x86_64)
    pub qemu_bin: Option<String>,
    #[argh(option)]
    /// qemu launcher: guest kernel (default: vmlinux in the image cache)
    pub kernel: Option<PathBuf>,
    #[argh(option)]
    /// qemu launcher: guest initramfs (default: initramfs.cpio in the image cache)
    pub initrd: Option<PathBuf>,
    #[argh(option)]
    /// qemu launcher: microvm (default) or pc
    pub machine: Option<String>,
    #[argh(option)]
    /// qemu launcher: auto (default: KVM only if it really boots here), kvm or tcg
    pub accel: Option<String>,
    #[argh(option)]
    /// qemu launcher: auto (default), vhost-user (vhost-device-vsock) or vhost (kernel)
    pub vsock_backend: Option<String>,
    #[argh(option)]
    /// qemu launcher: TCG translation cache in MiB (default 8; use 16 with a Debian kernel)
    pub tb_size_mb: Option<String>,
    #[argh(option)]
    /// qemu launcher: extra kernel command-line word (repeatable)
    pub kernel_arg: Vec<String>,
    #[argh(option)]
    /// a real stdio MCP server each instance runs ('CMD ARGS', split like a
    /// shell): process launcher: the guest bridges to it; qemu launcher: it
    /// runs inside every VM from a read-only root filesystem image
    pub mcp_server: Option<String>,
    #[argh(option)]
    /// qemu launcher with --mcp-server: the root filesystem image (erofs)
    /// holding the server (default: built from --mcp-server and --include)
    pub rootfs: Option<PathBuf>,
    #[argh(option)]
    /// qemu launcher with --mcp-server: a file for the built image,
    /// HOST[:GUEST] (repeatable)
    pub include: Vec<String>,
    #[argh(option)]
    /// after boot, each instance executes this MCP tool: TOOL or TOOL:{JSON args}
    pub tool_call: Option<String>,
    #[argh(option)]
    /// text the tool result must contain (else the call counts as wrong)
    pub tool_expect: Option<String>,
    #[argh(option)]
    /// tool-call latency target in ms (default 50)
    pub max_tool_ms: Option<String>,
    #[argh(option)]
    /// vsock connection latency target in ms (connect + hybrid handshake of
    /// the boot probe; the guide's "< 10 ms"); reported always, checked only
    /// when given
    pub max_connect_ms: Option<String>,
    #[argh(option)]
    /// deadline of one tool call in ms (default 10000; 180000 with
    /// --mcp-server and --launcher qemu; at most 86400000)
    pub tool_timeout_ms: Option<String>,
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
    #[argh(switch)]
    /// inside a Flatpak sandbox: start launchers on the host through
    /// `flatpak-spawn --host` (without it ukload refuses to run there)
    pub flatpak_host: bool,
    #[argh(switch, short = 'q')]
    /// no progress lines on stderr (warnings and errors still show)
    pub quiet: bool,
    #[argh(option)]
    /// progress on stderr: human (default) or json (one event per line:
    /// spawning, spawned, booted, boot_failed, tool, memory, teardown, ...)
    pub progress: Option<String>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ps")]
/// List live instances of every run on this host (run id, CID, pids, age, memory).
pub struct PsArgs {
    #[argh(option)]
    /// output: human (default) or json
    pub format: Option<String>,
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
    pub grace_ms: Option<String>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cycles")]
/// Spawn, boot and terminate repeatedly (the seed's leak and rapid-cycle
/// tests): reports success rate, boot times, and ukload's own open fds,
/// threads and RSS at start and end. Exit 0 when every cycle was clean and
/// none of them grew beyond its tolerance, 1 otherwise (the message names
/// the metric), 64 bad usage, 74 report not written (stdout full or closed).
pub struct CyclesArgs {
    #[argh(option)]
    /// cycles to run after one warm-up cycle (default 100)
    pub cycles: Option<String>,
    #[argh(option)]
    /// instances per cycle (default 1)
    pub per_cycle: Option<String>,
    #[argh(option)]
    /// launcher: process (default), qemu, kraft, exec
    pub launcher: Option<String>,
    #[argh(option)]
    /// process launcher: guest program (default: ukload-guest beside ukload)
    pub guest_bin: Option<PathBuf>,
    #[argh(option)]
    /// process launcher: extra argument for the guest (repeatable)
    pub guest_arg: Vec<String>,
    #[argh(option)]
    /// process launcher: boot delay the guest injects, ms (default 0, at most
    /// 86400000)
    pub guest_boot_delay_ms: Option<String>,
    #[argh(option)]
    /// exec launcher: command template
    pub exec: Option<String>,
    #[argh(option)]
    /// seconds an instance may take to boot (default 60, at most 86400)
    pub boot_timeout: Option<String>,
    #[argh(option)]
    /// ms between SIGTERM and SIGKILL at each cleanup (default 2000, at most
    /// 86400000)
    pub grace_ms: Option<String>,
    #[argh(option)]
    /// CID range, e.g. 200-299 (default)
    pub cid_range: Option<String>,
    #[argh(option)]
    /// framing on vsock: line (default) or length
    pub framing: Option<String>,
    #[argh(option)]
    /// directory of per-instance logs (default /tmp/osvm-load-test)
    pub log_dir: Option<PathBuf>,
    #[argh(option)]
    /// output: human (default) or json
    pub format: Option<String>,
    #[argh(option)]
    /// percentage of cycles that must be clean for exit 0 (default 100; the
    /// seed's rapid spawn/terminate test allows 75); a cycle that leaves a
    /// process behind, a leak or an interruption fails whatever it says
    pub min_success: Option<String>,
    #[argh(switch, short = 'q')]
    /// no progress lines on stderr (warnings and errors still show)
    pub quiet: bool,
    #[argh(option)]
    /// progress on stderr: human (default) or json (one event per line:
    /// spawning, spawned, booted, boot_failed, tool, memory, teardown, ...)
    pub progress: Option<String>,
}

/// Default number of measured cycles of `ukload cycles`.
pub const DEFAULT_CYCLES: u32 = 100;

impl CyclesArgs {
    /// Validates every flag (the run flags through `RunArgs`, so they get the
    /// same checks and messages); nothing has started yet.
    pub fn to_config(&self) -> Result<(ukload::cycles::CyclesConfig, Format), Usage> {
        let cycles = match &self.cycles {
            None => DEFAULT_CYCLES,
            Some(s) => num::<u32>("--cycles", s, "a whole number of cycles >= 1")?,
        };
        if cycles == 0 {
            return Err(Usage("--cycles 0: give at least 1 cycle".into()));
        }
        let per_cycle = self.per_cycle.clone().unwrap_or_else(|| "1".into());
        let per: u32 = num("--per-cycle", &per_cycle, "a whole number >= 1")?;
        if per == 0 {
            return Err(Usage("--per-cycle 0: give at least 1 instance".into()));
        }
        // The run flags `cycles` shares, checked by `RunArgs` (same checks,
        // same messages); each cycle's run is quiet.
        let run = RunArgs {
            count: Some(per_cycle),
            quiet: true,
            launcher: self.launcher.clone(),
            guest_bin: self.guest_bin.clone(),
            guest_boot_delay_ms: self.guest_boot_delay_ms.clone(),
            exec: self.exec.clone(),
            boot_timeout: self.boot_timeout.clone(),
            grace_ms: self.grace_ms.clone(),
            cid_range: self.cid_range.clone(),
            framing: self.framing.clone(),
            log_dir: self.log_dir.clone(),
            guest_arg: self.guest_arg.clone(),
            ..RunArgs::default()
        };
        let (run_cfg, _) = run.to_config()?;
        let fmt = format(&self.format)?;
        let min_success_pct = match &self.min_success {
            None => 100.0,
            Some(s) => {
                let v: f64 = num("--min-success", s, "a percentage 0..100")?;
                if !(0.0..=100.0).contains(&v) {
                    return Err(Usage(format!(
                        "--min-success {s}: expected a percentage 0..100"
                    )));
                }
                v
            }
        };
        Ok((
            ukload::cycles::CyclesConfig {
                cycles,
                run: run_cfg,
                progress: progress_mode(self.quiet, &self.progress)?,
                min_success_pct,
            },
            fmt,
        ))
    }
}

/// `-q` and `--progress`: what progress shows.
fn progress_mode(quiet: bool, progress: &Option<String>) -> Result<ProgressMode, Usage> {
    match (quiet, progress) {
        (true, Some(_)) => Err(Usage(
            "-q and --progress contradict each other: choose one".into(),
        )),
        (true, None) => Ok(ProgressMode::Off),
        (false, None) => Ok(ProgressMode::Human),
        (false, Some(p)) => p.parse().map_err(|e| Usage(format!("--progress: {e}"))),
    }
}

/// A bad command line: the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

fn num<T: std::str::FromStr>(flag: &str, v: &str, what: &str) -> Result<T, Usage> {
    v.trim()
        .parse::<T>()
        .map_err(|_| Usage(format!("{flag} {v:?}: expected {what}")))
}

fn positive_f64(flag: &str, v: &Option<String>, default: f64) -> Result<f64, Usage> {
    match v {
        None => Ok(default),
        Some(s) => {
            let x: f64 = num(flag, s, "a positive number")?;
            if x.is_finite() && x > 0.0 {
                Ok(x)
            } else {
                Err(Usage(format!("{flag} {s:?}: expected a positive number")))
            }
        }
    }
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A readable report (`human`, also spelled `text`; for `mcp call`: the
    /// result's text).
    Human,
    Json,
}

/// `--format`: human (or text) or json.
pub fn format(v: &Option<String>) -> Result<Format, Usage> {
    format_spelled(v, "human")
}

/// [`format`], whose error names the readable form `text_name`.
pub fn format_spelled(v: &Option<String>, text_name: &str) -> Result<Format, Usage> {
    match v.as_deref() {
        None | Some("human") | Some("text") => Ok(Format::Human),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(Usage(format!(
            "--format {other:?}: expected {text_name} or json"
        ))),
    }
}

/// A whole number of milliseconds, at most [`MAX_DURATION_MS`].
fn millis(flag: &str, v: &str) -> Result<u64, Usage> {
    let ms = num::<u64>(flag, v, "milliseconds (a whole number)")?;
    if ms > MAX_DURATION_MS {
        return Err(Usage(format!(
            "{flag} {v}: too long; at most {MAX_DURATION_MS} ms (a day)"
        )));
    }
    Ok(ms)
}

/// Grace period flag.
pub fn grace(v: &Option<String>) -> Result<Duration, Usage> {
    Ok(match v {
        None => Duration::from_millis(DEFAULT_GRACE_MS),
        Some(s) => Duration::from_millis(millis("--grace-ms", s)?),
    })
}

impl RunArgs {
    /// Validates every flag; nothing has started yet.
    pub fn to_config(&self) -> Result<(RunConfig, Format), Usage> {
        let (count, concurrency) = self.count_and_concurrency()?;
        let kind: Kind = match &self.launcher {
            None => Kind::Process,
            Some(s) => s.parse().map_err(|e| Usage(format!("--launcher: {e}")))?,
        };
        let boot_timeout = self.boot_timeout()?;
        let max_boot_ms = positive_f64("--max-boot-ms", &self.max_boot_ms, DEFAULT_MAX_BOOT_MS)?;
        let max_mem_mb = positive_f64("--max-mem-mb", &self.max_mem_mb, DEFAULT_MAX_MEM_MB)?;
        let mem_metric: MemMetric = match &self.mem_metric {
            None => MemMetric::Pss,
            Some(s) => s.parse().map_err(|e| Usage(format!("--mem-metric: {e}")))?,
        };
        let cid_range = self.cid_range(count)?;
        let port = self.port()?;
        let grace = grace(&self.grace_ms)?;
        let min_success_pct = self.min_success()?;
        let fmt = format(&self.format)?;
        let mut lc = self.launcher_config(kind)?;
        let tool_call = self.tool_call(&lc)?;
        // A bridged server that stays silent is reported by the guest before
        // the client's own deadline would end the session without a reason.
        if lc.qemu.runs_server() {
            let t = tool_call
                .as_ref()
                .map_or(ukload::toolcall::DEFAULT_TOOL_TIMEOUT, |c| c.timeout);
            lc.qemu.server_timeout = Some(t);
        }
        let max_tool_ms = positive_f64("--max-tool-ms", &self.max_tool_ms, DEFAULT_MAX_TOOL_MS)?;
        let max_connect_ms = match &self.max_connect_ms {
            None => None,
            Some(_) => Some(positive_f64("--max-connect-ms", &self.max_connect_ms, 0.0)?),
        };
        let cfg = RunConfig {
            tool_call,
            max_tool_ms,
            max_connect_ms,
            count,
            concurrency,
            // Positive, finite and at most a day: checked by boot_timeout().
            boot_timeout: Duration::from_secs_f64(boot_timeout),
            max_boot_ms,
            max_mem_mb,
            mem_metric,
            cid_range,
            port,
            grace,
            min_success_pct,
            log_dir: self
                .log_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR)),
            framing: lc.framing,
            launcher: lc,
            progress: progress_mode(self.quiet, &self.progress)?,
        };
        Ok((cfg, fmt))
    }

    /// COUNT and `--concurrency` (default: all at once), both at least 1.
    fn count_and_concurrency(&self) -> Result<(u32, u32), Usage> {
        let count = match &self.count {
            None => DEFAULT_COUNT,
            Some(s) => num::<u32>("COUNT", s, "a whole number of instances")?,
        };
        if count == 0 {
            return Err(Usage(
                "COUNT 0: nothing to run; give at least 1 instance".into(),
            ));
        }
        let concurrency = match &self.concurrency {
            None => count,
            Some(s) => num::<u32>("--concurrency", s, "a whole number >= 1")?,
        };
        if concurrency == 0 {
            return Err(Usage(
                "--concurrency 0: at least one spawn must be allowed in flight".into(),
            ));
        }
        Ok((count, concurrency))
    }

    /// `--boot-timeout`, seconds: positive and at most a day.
    fn boot_timeout(&self) -> Result<f64, Usage> {
        let boot_timeout =
            positive_f64("--boot-timeout", &self.boot_timeout, DEFAULT_BOOT_TIMEOUT_S)?;
        if boot_timeout > MAX_DURATION_S as f64 {
            return Err(Usage(format!(
                "--boot-timeout {}: too long; at most {MAX_DURATION_S} seconds (a day)",
                self.boot_timeout.as_deref().unwrap_or_default()
            )));
        }
        Ok(boot_timeout)
    }

    /// `--cid-range`, wide enough for `count` instances.
    fn cid_range(&self, count: u32) -> Result<ukload::cid::CidRange, Usage> {
        let range_s = self.cid_range.as_deref().unwrap_or(DEFAULT_CID_RANGE);
        let cid_range: ukload::cid::CidRange = range_s
            .parse()
            // The parse error already names the flag and the value.
            .map_err(|e: <ukload::cid::CidRange as std::str::FromStr>::Err| Usage(e.to_string()))?;
        if count as usize > cid_range.len() {
            return Err(Usage(format!(
                "COUNT {count} is larger than --cid-range {cid_range} ({} CIDs); widen the range or run fewer",
                cid_range.len()
            )));
        }
        Ok(cid_range)
    }

    /// `--port`: a vsock port other than 0 and the wildcard.
    fn port(&self) -> Result<u32, Usage> {
        let port = match &self.port {
            None => ukload::DEFAULT_PORT,
            Some(s) => num::<u32>("--port", s, "a port number 1..4294967294")?,
        };
        if port == 0 || port == u32::MAX {
            return Err(Usage(format!(
                "--port {port}: expected a port number 1..4294967294"
            )));
        }
        Ok(port)
    }

    /// `--min-success`: a percentage 0..100, `%` optional.
    fn min_success(&self) -> Result<f64, Usage> {
        let Some(s) = &self.min_success else {
            return Ok(DEFAULT_MIN_SUCCESS_PCT);
        };
        let v: f64 = num(
            "--min-success",
            s.trim_end_matches('%'),
            "a percentage 0..100",
        )?;
        if !(0.0..=100.0).contains(&v) {
            return Err(Usage(format!(
                "--min-success {s}: expected a percentage 0..100"
            )));
        }
        Ok(v)
    }

    /// `--framing`, `--ready` and `--ready-console`: how readiness is seen.
    fn readiness(&self) -> Result<(Framing, ReadyMode, regex_lite::Regex), Usage> {
        let framing: Framing = match self.framing.as_deref() {
            None | Some("line") => Framing::Line,
            Some("length") => Framing::Length,
            Some(o) => return Err(Usage(format!("--framing {o:?}: expected line or length"))),
        };
        let ready: ReadyMode = match &self.ready {
            None => ReadyMode::Auto,
            Some(s) => s.parse().map_err(|e| Usage(format!("--ready: {e}")))?,
        };
        let pattern = self
            .ready_console
            .as_deref()
            .unwrap_or(launcher::DEFAULT_READY_CONSOLE);
        let ready_console = regex_lite::Regex::new(pattern).map_err(|e| {
            Usage(format!(
                "--ready-console {pattern:?}: not a valid regex: {e}"
            ))
        })?;
        Ok((framing, ready, ready_console))
    }

    /// Everything the launcher of `kind` is given.
    fn launcher_config(&self, kind: Kind) -> Result<LauncherConfig, Usage> {
        let (framing, ready, ready_console) = self.readiness()?;
        let guest_boot_delay_ms = match &self.guest_boot_delay_ms {
            None => 0,
            Some(s) => millis("--guest-boot-delay-ms", s)?,
        };
        let memory_mb = self.memory_mb(kind)?;
        if let Some(d) = &self.log_dir {
            if d.as_os_str().is_empty() {
                return Err(Usage("--log-dir \"\": give a directory".into()));
            }
        }
        let mut qemu = self.qemu_config()?;
        let guest_args = self.mcp_server(kind, &mut qemu)?;
        Ok(LauncherConfig {
            qemu,
            qemu_resolved: None,
            flatpak_host: self.flatpak_host,
            app_args: self.app_arg.clone(),
            kind,
            ready,
            ready_console,
            framing,
            guest_bin: self
                .guest_bin
                .clone()
                .unwrap_or_else(LauncherConfig::default_guest_bin),
            guest_args,
            guest_boot_delay_ms,
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

    /// `--memory`, MiB: the launcher's default, enough for a qemu guest,
    /// at most [`MAX_MEMORY_MB`].
    fn memory_mb(&self, kind: Kind) -> Result<u64, Usage> {
        let memory_mb = match &self.memory {
            None if kind == Kind::Qemu => launcher::qemu::DEFAULT_QEMU_MEMORY_MB,
            None => launcher::DEFAULT_MEMORY_MB,
            Some(s) => num::<u64>(
                "--memory",
                s.trim_end_matches("Mi").trim_end_matches('M'),
                "MiB (a whole number)",
            )?,
        };
        if memory_mb == 0 {
            return Err(Usage("--memory 0: a guest needs some memory".into()));
        }
        let min_vm = launcher::qemu::MIN_QEMU_MEMORY_MB;
        if kind == Kind::Qemu && memory_mb < min_vm {
            return Err(Usage(format!(
                "--memory {memory_mb}: too little for the qemu launcher's guest; give at least \
                 {min_vm} MiB (below that QEMU exits 0 without booting and without a word)"
            )));
        }
        if memory_mb > MAX_MEMORY_MB {
            return Err(Usage(format!(
                "--memory {memory_mb}: more than {MAX_MEMORY_MB} MiB (1 TiB) per guest"
            )));
        }
        Ok(memory_mb)
    }

    /// The qemu launcher's own flags (binary, kernel, machine, vsock backend, ...).
    fn qemu_config(&self) -> Result<launcher::qemu::QemuConfig, Usage> {
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
        if let Some(m) = &self.machine {
            qemu.machine = m.parse().map_err(|e| Usage(format!("--machine: {e}")))?;
        }
        if let Some(a) = &self.accel {
            qemu.accel = a.parse().map_err(|e| Usage(format!("--accel: {e}")))?;
        }
        if let Some(b) = &self.vsock_backend {
            qemu.backend = b
                .parse()
                .map_err(|e| Usage(format!("--vsock-backend: {e}")))?;
        }
        if let Some(t) = &self.tb_size_mb {
            qemu.tb_size_mb = num::<u64>("--tb-size-mb", t, "MiB (a whole number >= 1)")?;
            if qemu.tb_size_mb == 0 {
                return Err(Usage("--tb-size-mb 0: give at least 1 MiB".into()));
            }
        }
        qemu.append = self.kernel_arg.clone();
        Ok(qemu)
    }

    /// `--mcp-server`, `--rootfs` and `--include`: the process launcher's
    /// guest gets the server in its arguments (returned with the
    /// `--guest-arg`s), the qemu launcher an image given or to build.
    fn mcp_server(
        &self,
        kind: Kind,
        qemu: &mut launcher::qemu::QemuConfig,
    ) -> Result<Vec<String>, Usage> {
        self.check_image_flags(kind)?;
        let mut guest_args = self.guest_arg.clone();
        match (&self.mcp_server, kind) {
            (None, _) => {
                // --rootfs alone: the image's manifest names the server.
                qemu.rootfs = self.rootfs.clone();
            }
            (Some(cmd), Kind::Process) => {
                ukload::mcp::split_command(cmd)
                    .ok()
                    .filter(|argv| !argv.is_empty())
                    .ok_or_else(|| {
                        Usage(format!(
                            "--mcp-server {cmd:?}: expected a command line, e.g. 'node server.js'"
                        ))
                    })?;
                guest_args.push("--mcp-server".into());
                guest_args.push(cmd.clone());
            }
            (Some(cmd), Kind::Qemu) => {
                // Parsed (and its --include values checked) here; the image is
                // built by the launcher's preflight, before any VM starts.
                let spec = ukload::rootfs::RootfsSpec::parse(cmd, &self.include).map_err(|e| {
                    Usage(
                        format!("--mcp-server {cmd:?}: {}", e).replace("--command", "--mcp-server"),
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
        Ok(guest_args)
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

    /// `--tool-call`, `--tool-expect` and `--tool-timeout-ms`; a server in
    /// an emulated VM gets a longer default deadline.
    fn tool_call(&self, lc: &LauncherConfig) -> Result<Option<ToolCall>, Usage> {
        // Checked even without --tool-call, so a bad value is never ignored.
        let tool_timeout_ms = match &self.tool_timeout_ms {
            None => None,
            Some(ms) => Some(millis("--tool-timeout-ms", ms)?),
        };
        let Some(t) = &self.tool_call else {
            if self.tool_expect.is_some() {
                return Err(Usage("--tool-expect needs --tool-call TOOL".into()));
            }
            return Ok(None);
        };
        let mut call: ToolCall = t
            .parse()
            .map_err(|e| Usage(format!("--tool-call {t}: {e}")))?;
        call.expect = self.tool_expect.clone();
        if let Some(ms) = tool_timeout_ms {
            if ms == 0 {
                return Err(Usage(
                    "--tool-timeout-ms 0: give a deadline of at least 1 ms".into(),
                ));
            }
            call.timeout = Duration::from_millis(ms);
        } else if lc.qemu.runs_server() {
            // A real server in an emulated VM: Node takes 10 s (one
            // VM) to 70 s (ten) to start under TCG (docs/microvm.md).
            call.timeout = launcher::qemu::DEFAULT_VM_SERVER_TOOL_TIMEOUT;
        }
        Ok(Some(call))
    }
}
