//! `ukload-guest`: the guest agent and tool executor.
//!
//! As PID 1 inside a microVM it sets the machine up (`guest::pid1`) and
//! serves on kernel vsock; as a plain process it serves where `--listen`
//! says, typically a hybrid-vsock Unix socket standing in for guest + VMM.
//! Pid 1 alone does not make it a VM's init (`pid1::decide_role`): as pid 1
//! of a PID namespace or container it mounts nothing, serves as a plain
//! process would and reaps orphans; `--init` forces the init role.
//! It executes MCP tools itself (the built-in tools), or with
//! `--mcp-server 'CMD ARGS'` relays each connection to a fresh stdio MCP
//! server child (`guest::bridge`); `ukload/status` (the boot probe's report)
//! is always the agent's, MCP `ping` the MCP server's.
//! Exit codes: 0 after a `shutdown` request, 1 when serving fails, 64
//! (EX_USAGE) for bad arguments (and `--init` outside pid 1), 128+N after
//! signal N as a namespace's pid 1 (elsewhere the signal itself ends it).

// Every unsafe block says why it is sound (as Firecracker does).
#![deny(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;
use ukload::framing::Framing;
use ukload::guest::bridge::BridgeMode;
use ukload::guest::{self, pid1, AgentConfig, ConnectionMode, ListenAddr};
use ukload::mcp::server::EraSupport;

/// Exit status for bad command-line input (sysexits.h EX_USAGE).
const EXIT_USAGE: u8 = ukload::exit::EXIT_USAGE as u8;
/// Exit status when the agent fails after starting.
const EXIT_FAILURE: u8 = ukload::exit::EXIT_FAIL as u8;

#[derive(FromArgs)]
/// ukload guest agent: answers `ukload/status` with its boot timestamps over vsock or
/// a hybrid-vsock Unix socket, and exits 0 on `shutdown`.
struct Args {
    /// print the version and exit
    #[argh(switch)]
    version: bool,

    /// where to listen: vsock:PORT, vsock (port from --port) or uds:PATH
    /// (a hybrid-vsock Unix socket); default vsock (port 5252), as a VM's
    /// init does, so a unikernel started without arguments serves
    #[argh(option, default = "String::from(\"vsock\")")]
    listen: String,

    /// guest port (for uds:PATH or bare vsock); default 5252
    #[argh(option)]
    port: Option<u32>,

    /// message framing: line (default) or length
    #[argh(option, default = "Framing::Line")]
    framing: Framing,

    /// milliseconds to wait before listening, standing in for a guest's boot
    #[argh(option, default = "0")]
    boot_delay_ms: u64,

    /// CID to report in ukload/status replies (default: $UKLOAD_CID, else /dev/vsock's)
    #[argh(option)]
    cid: Option<u32>,

    /// do not print the "ukload-guest: ready ..." line
    #[argh(switch)]
    no_ready_line: bool,

    /// relay each connection to a fresh stdio MCP server started with this
    /// command ('CMD ARGS', split like a shell, without a shell) instead of
    /// answering with the built-in tools; ukload/status stays the agent's
    #[argh(option)]
    mcp_server: Option<String>,

    /// with --mcp-server: ms a started server may write nothing after its
    /// first request before it is ended and named as never answering
    /// (default 20000; ukload passes its tool-call deadline)
    #[argh(option)]
    mcp_server_timeout_ms: Option<u64>,

    /// MCP eras the built-in tools serve: dual (default: 2026-07-28 per
    /// request beside 2024-11-05 … 2025-11-25 after initialize), modern or legacy
    #[argh(option, default = "EraSupport::Dual")]
    mcp_era: EraSupport,

    /// act as the microVM's init (mount /proc, /sys, /dev, load the vsock
    /// drivers, serve on vsock, power off at the end) even when the root is
    /// not an initramfs; needs pid 1; never mounts over an existing mount;
    /// the other flags are then ignored
    #[argh(switch)]
    init: bool,
}

/// The built-in tools, answered by the agent itself.
fn builtin_mode(support: EraSupport) -> Arc<dyn ConnectionMode> {
    Arc::new(guest::tools::McpMode::new(support))
}

fn main() -> ExitCode {
    guest::mark_process_start();
    // First, so that every diagnostic below goes through it: lines on stderr
    // prefixed `ukload-guest: ` (as a VM's init, stderr is /dev/console, or
    // becomes it once PID 1 has mounted /dev; the logger writes to fd 2 each
    // time). The `ready` line is not a diagnostic: it stays on stdout.
    let rust_log = std::env::var("RUST_LOG").ok();
    ukload::logging::init(
        "ukload-guest",
        ukload::logging::level(0, false, rust_log.as_deref()),
    );
    // Decided before parsing: a VM's init gets no `--listen` (its argv is
    // whatever the kernel passes on), and the reaper must start before any thread.
    let init_flag = std::env::args().skip(1).any(|a| a == pid1::INIT_FLAG);
    let evidence = pid1::InitEvidence::gather(init_flag);
    match pid1::decide_role(&evidence) {
        pid1::Role::VmInit => {
            let unforced = pid1::InitEvidence {
                init_flag: false,
                ..evidence.clone()
            };
            if let pid1::Role::NamespacePid1 { why } = pid1::decide_role(&unforced) {
                log::warn!(
                    "init: {} given: acting as the VM's init although {why}",
                    pid1::INIT_FLAG
                );
            }
            run_as_pid1()
        }
        pid1::Role::NamespacePid1 { why } => {
            log::info!(
                "pid 1 but not a VM's init ({why}): mounting nothing, \
                 serving as an ordinary agent and reaping orphans (use {} to force the init role)",
                pid1::INIT_FLAG
            );
            if let Err(e) = pid1::start_namespace_reaper() {
                log::error!("{e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
        pid1::Role::Process if init_flag => {
            return usage_error(&format!(
                "{}: this process is pid {}, not 1; only a VM's init (or a PID namespace's \
                 pid 1) can take the init role",
                pid1::INIT_FLAG,
                evidence.pid
            ));
        }
        pid1::Role::Process => {}
    }
    let (cfg, mode) = match parse_args() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    match guest::run_agent_mode(cfg, mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// PID 1 must never exit (the kernel would panic): every path ends in
/// power-off.
fn run_as_pid1() -> ! {
    let p = match pid1::init_as_pid1() {
        Ok(p) => p,
        Err(e) => {
            log::error!("PID 1 setup failed: {e}");
            pid1::poweroff();
        }
    };
    let cfg = AgentConfig {
        listen: ListenAddr::Vsock { port: p.port },
        ..AgentConfig::default()
    };
    let mode: Arc<dyn ConnectionMode> = match &p.server {
        None => builtin_mode(EraSupport::Dual),
        // A root filesystem image with an MCP server: every connection is
        // bridged to the server, run chrooted in the mounted image.
        Some(spec) => {
            let bridge = pid1::mount_rootfs(spec)
                .and_then(BridgeMode::new)
                .map(|b| b.in_root(ukload::vmabi::ROOTFS_DIR.into()));
            match bridge {
                Ok(b) => {
                    log::info!("init: MCP server: {}", b.argv().join(" "));
                    let b = match spec.start_timeout {
                        Some(t) => b.with_start_timeout(t),
                        None => b,
                    };
                    // Started now (this thread lives as long as the VM) so
                    // that its start-up overlaps the boot; a failure here is
                    // reported again, to the host, when a connection starts one.
                    if let Err(e) = b.start_spare() {
                        log::error!("init: starting the MCP server: {e}");
                    }
                    Arc::new(b)
                }
                Err(e) => {
                    log::error!("PID 1 setup failed: {e}");
                    pid1::poweroff();
                }
            }
        }
    };
    if let Err(e) = guest::run_agent_mode(cfg, mode) {
        log::error!("{e}");
    }
    pid1::poweroff();
}

/// Parses the command line; on failure prints one line naming the problem
/// (or the help text) and returns the exit code.
fn parse_args() -> Result<(AgentConfig, Arc<dyn ConnectionMode>), ExitCode> {
    let argv: Vec<String> = std::env::args().collect();
    let cmd = argv
        .first()
        .map(|s| s.rsplit('/').next().unwrap_or(s))
        .unwrap_or("ukload-guest");
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    let args = match Args::from_args(&[cmd], &rest) {
        Ok(a) => a,
        Err(early) => {
            return Err(match early.status {
                Ok(()) => {
                    print!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => usage_error(&early.output),
            });
        }
    };
    if args.version {
        println!("ukload-guest {}", env!("CARGO_PKG_VERSION"));
        return Err(ExitCode::SUCCESS);
    }
    debug_assert!(!args.init, "--init is handled in main before parsing");
    let listen =
        guest::parse_listen(&args.listen, args.port).map_err(|e| usage_error(&e.to_string()))?;
    let mode: Arc<dyn ConnectionMode> = match &args.mcp_server {
        None => builtin_mode(args.mcp_era),
        Some(cmd) => {
            let argv = ukload::mcp::split_command(cmd)
                .map_err(|e| usage_error(&format!("--mcp-server {cmd:?}: {e}")))?;
            let bridge = BridgeMode::new(argv).map_err(|e| usage_error(&e))?;
            Arc::new(match args.mcp_server_timeout_ms {
                Some(0) => {
                    return Err(usage_error("--mcp-server-timeout-ms 0: give at least 1 ms"))
                }
                Some(ms) => bridge.with_start_timeout(Duration::from_millis(ms)),
                None => bridge,
            })
        }
    };
    let cfg = AgentConfig {
        listen,
        framing: args.framing,
        boot_delay: Duration::from_millis(args.boot_delay_ms),
        cid: args.cid,
        ready_marker: !args.no_ready_line,
    };
    Ok((cfg, mode))
}

/// Prints `msg` as one line on stderr and gives the usage exit code.
fn usage_error(msg: &str) -> ExitCode {
    let one_line: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    log::error!("{}", one_line.join(" "));
    ExitCode::from(EXIT_USAGE)
}
