//! How an instance is started, and how its readiness is observed.
//!
//! - `process`: `ukload-guest` as a plain host process, reached through the
//!   hybrid Unix-socket form of vsock (the self-test; works with no hypervisor).
//! - `kraft`: Unikraft's `kraft run --rm ...`; kraft has no vsock flag, so
//!   readiness is a console line unless the user's setup provides vsock.
//! - `exec`: any command template (Firecracker, Cloud Hypervisor, a script).

pub mod qemu;

use crate::supervisor::Command;
use crate::vsock::Endpoint;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default console marker: the line `ukload-guest` prints when it listens.
pub const DEFAULT_READY_CONSOLE: &str = r"ukload-guest: ready";
/// Default kraft image (the seed's guest binary location), under `$HOME`.
pub const DEFAULT_KRAFT_IMAGE: &str = ".osvm/unikernels/unikraft_tool_executor";
/// Default guest memory for VM launchers, MiB (kraft's own default is 64Mi).
pub const DEFAULT_MEMORY_MB: u64 = 64;

/// Which launcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Process,
    Kraft,
    Exec,
    Qemu,
}

/// A flag value that is none of the choices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownChoice {
    /// What the value names (`"launcher"`, `"machine"`, ...).
    pub what: &'static str,
    pub value: String,
    /// The choices, as the message lists them.
    pub expected: &'static str,
}

impl UnknownChoice {
    pub fn new(what: &'static str, value: &str, expected: &'static str) -> UnknownChoice {
        UnknownChoice {
            what,
            value: value.to_string(),
            expected,
        }
    }
}

impl fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let UnknownChoice {
            what,
            value,
            expected,
        } = self;
        write!(f, "unknown {what} {value:?}: expected {expected}")
    }
}

impl std::error::Error for UnknownChoice {}

impl std::str::FromStr for Kind {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "process" => Ok(Kind::Process),
            "kraft" => Ok(Kind::Kraft),
            "exec" => Ok(Kind::Exec),
            "qemu" => Ok(Kind::Qemu),
            _ => Err(UnknownChoice::new(
                "launcher",
                s,
                "process, qemu, kraft or exec",
            )),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Process => "process",
            Kind::Kraft => "kraft",
            Kind::Exec => "exec",
            Kind::Qemu => "qemu",
        })
    }
}

/// How readiness is observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyMode {
    /// The launcher's natural choice.
    Auto,
    /// JSON-RPC `ping` over vsock (hybrid or kernel).
    Probe,
    /// A console line matching `--ready-console`.
    Console,
}

impl std::str::FromStr for ReadyMode {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "auto" => Ok(ReadyMode::Auto),
            "probe" | "vsock" => Ok(ReadyMode::Probe),
            "console" => Ok(ReadyMode::Console),
            _ => Err(UnknownChoice::new("readiness", s, "auto, probe or console")),
        }
    }
}

/// How one instance's readiness is observed.
#[derive(Clone, Debug)]
pub enum Readiness {
    Probe(Endpoint),
    Console(regex_lite::Regex),
    /// The console marker first, then a probe (VMs: connecting before the
    /// guest listens can stall a vsock path).
    ConsoleThenProbe(regex_lite::Regex, Endpoint),
}

impl Readiness {
    /// Where the guest is reached over vsock, if it is.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        match self {
            Readiness::Probe(ep) | Readiness::ConsoleThenProbe(_, ep) => Some(ep),
            Readiness::Console(_) => None,
        }
    }
}

/// What an instance is given.
#[derive(Clone, Debug)]
pub struct InstanceCtx {
    pub index: u32,
    pub cid: u32,
    pub port: u32,
    /// Hybrid vsock socket path for this instance (in the run directory).
    pub uds: PathBuf,
    pub memory_mb: u64,
    /// Where the launcher's output goes.
    pub log: PathBuf,
}

/// A helper started before the instance's main command (e.g. a vhost-user
/// vsock backend), in the same process group; `ready_path` is the socket it
/// creates, waited for before the next process starts.
pub struct PreStep {
    pub command: Command,
    pub ready_path: PathBuf,
}

/// A planned start.
pub struct Plan {
    pub pre: Vec<PreStep>,
    pub command: Command,
    pub readiness: Readiness,
    /// The main command may exit 0 after daemonizing its VMM (kraft's QEMU,
    /// a user's script): its exit alone does not end the instance. When
    /// false, its exit before readiness is a failed boot.
    pub may_daemonize: bool,
}

/// Why a launcher cannot start anything.
#[derive(Debug)]
pub enum LaunchError {
    /// A program the launcher needs is missing (exit 69).
    NotInstalled { what: String, how: String },
    /// Bad configuration (exit 64).
    Invalid(String),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::NotInstalled { what, how } => write!(f, "{what} not found. {how}"),
            LaunchError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LaunchError {}

/// A stdio MCP server the process launcher's guest runs for each connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgedServer {
    /// The command line ('CMD ARGS'), as the guest is given it.
    pub command: String,
    /// `command` split into words (as the guest splits it).
    pub argv: Vec<String>,
    /// How long the guest lets a started server stay silent after its first
    /// request before it ends it and names it as never answering.
    pub start_timeout: Option<Duration>,
}

/// Launcher settings from the command line.
#[derive(Clone, Debug)]
pub struct LauncherConfig {
    pub kind: Kind,
    pub ready: ReadyMode,
    pub ready_console: regex_lite::Regex,
    pub framing: crate::framing::Framing,
    /// process: the guest program (default: `ukload-guest` beside `ukload`).
    pub guest_bin: PathBuf,
    pub guest_args: Vec<String>,
    /// process: a stdio MCP server the guest bridges every connection to.
    pub bridged_server: Option<BridgedServer>,
    pub guest_boot_delay_ms: u64,
    /// kraft: the kraft program, image, platform and extra arguments.
    pub kraft_bin: String,
    pub image: PathBuf,
    pub plat: Option<String>,
    pub kraft_args: Vec<String>,
    /// kraft: the application's own arguments (after the image and `--`,
    /// as `kraft run [FLAGS] IMAGE -- [APP ARGS]` takes them).
    pub app_args: Vec<String>,
    /// exec: the command template.
    pub exec_template: Option<String>,
    pub memory_mb: u64,
    /// qemu: settings, and what preflight decided (acceleration, backend).
    pub qemu: qemu::QemuConfig,
    pub qemu_resolved: Option<qemu::Resolved>,
    /// Inside a Flatpak sandbox: run launchers on the host through
    /// `flatpak-spawn --host` (`--flatpak-host`).
    pub flatpak_host: bool,
}

/// The file that exists inside every Flatpak sandbox.
pub const FLATPAK_INFO: &str = "/.flatpak-info";
/// Overrides [`FLATPAK_INFO`] (tests).
pub const ENV_FLATPAK_INFO: &str = "UKLOAD_FLATPAK_INFO";

/// Whether this process runs inside a Flatpak sandbox.
pub fn in_flatpak() -> bool {
    let path = std::env::var_os(ENV_FLATPAK_INFO)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FLATPAK_INFO));
    path.exists()
}

impl LauncherConfig {
    /// How long the guest lets a started MCP server stay silent after its
    /// first request: given the tool call's deadline, the guest names a
    /// silent server before the client would end the session without a
    /// reason.
    pub fn set_server_timeout(&mut self, t: Duration) {
        if let Some(s) = &mut self.bridged_server {
            s.start_timeout = Some(t);
        }
        if self.qemu.runs_server() {
            self.qemu.server_timeout = Some(t);
        }
    }

    /// The guest program installed beside the running `ukload`.
    pub fn default_guest_bin() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ukload-guest")))
            .unwrap_or_else(|| PathBuf::from("ukload-guest"))
    }

    /// The seed's default kraft image path.
    pub fn default_kraft_image() -> PathBuf {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(DEFAULT_KRAFT_IMAGE)
    }

    /// Checks that what the launcher needs is there, before anything starts.
    /// `sup` reaps whatever a check starts (QEMU's KVM probe).
    pub fn preflight(
        &mut self,
        sup: Option<&crate::supervisor::Supervisor>,
    ) -> Result<(), LaunchError> {
        if in_flatpak() && !self.flatpak_host {
            return Err(LaunchError::Invalid(
                "ukload runs inside a Flatpak sandbox: launchers started here would run in the \
                 sandbox, not on the host. Pass --flatpak-host to start them on the host through \
                 `flatpak-spawn --host` (their containment is then the host's process groups and \
                 markers, reached through the portal), or run ukload outside the sandbox."
                    .into(),
            ));
        }
        if self.flatpak_host
            && crate::supervisor::spawn::resolve_program("flatpak-spawn".as_ref()).is_none()
        {
            return Err(LaunchError::NotInstalled {
                what: "flatpak-spawn".into(),
                how: "--flatpak-host needs flatpak-spawn (it is in every Flatpak runtime); \
                      without a sandbox, drop --flatpak-host."
                    .into(),
            });
        }
        match self.kind {
            Kind::Qemu => {
                self.qemu_resolved = Some(self.qemu.preflight(self.memory_mb, sup)?);
                Ok(())
            }
            Kind::Process => {
                if crate::supervisor::spawn::resolve_program(self.guest_bin.as_os_str()).is_none() {
                    return Err(LaunchError::NotInstalled {
                        what: format!("guest program {}", self.guest_bin.display()),
                        how:
                            "Build it with `cargo build --bins`, or name it with --guest-bin PATH."
                                .into(),
                    });
                }
                Ok(())
            }
            Kind::Kraft => {
                if crate::supervisor::spawn::resolve_program(self.kraft_bin.as_ref()).is_none() {
                    return Err(LaunchError::NotInstalled {
                        what: format!("kraft ({})", self.kraft_bin),
                        how: "To install KraftKit: (curl -sSf https://get.kraftkit.sh | sh; then export PATH=\"$HOME/.kraftkit/bin:$PATH\"), \
                              name it with --kraft-bin PATH, or use --launcher process."
                            .into(),
                    });
                }
                if !self.image.exists() {
                    return Err(LaunchError::Invalid(format!(
                        "--image {}: no such file; build it with `bash scripts/build-unikraft-tool-executor.sh` or name another with --image",
                        self.image.display()
                    )));
                }
                Ok(())
            }
            Kind::Exec => {
                let t = self.exec_template.as_deref().unwrap_or("");
                if t.trim().is_empty() {
                    return Err(LaunchError::Invalid(
                        "--launcher exec needs --exec 'COMMAND TEMPLATE' (placeholders {index} {cid} {port} {uds} {memory_mb} {log})".into(),
                    ));
                }
                if let Some(bad) = unknown_placeholder(t) {
                    return Err(LaunchError::Invalid(format!(
                        "--exec: unknown placeholder {{{bad}}}; known: {{index}} {{cid}} {{port}} {{uds}} {{memory_mb}} {{log}}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// The command and readiness for one instance.
    pub fn plan(&self, ctx: &InstanceCtx) -> Plan {
        match self.kind {
            Kind::Qemu => {
                let r = self.qemu_resolved.unwrap_or(qemu::Resolved {
                    kvm: false,
                    backend: qemu::VsockBackend::VhostUser,
                    tsc_khz: qemu::host_tsc_khz(),
                    acpi_off: false,
                });
                self.qemu.plan(&r, ctx, &self.ready_console)
            }
            Kind::Process => self.plan_process(ctx),
            Kind::Kraft => self.plan_kraft(ctx),
            Kind::Exec => self.plan_exec(ctx),
        }
    }

    /// Readiness by the console line.
    fn console(&self) -> Readiness {
        Readiness::Console(self.ready_console.clone())
    }

    /// `ukload-guest` as a host process on the hybrid vsock socket.
    fn plan_process(&self, ctx: &InstanceCtx) -> Plan {
        let mut cmd = Command::new(self.guest_bin.as_os_str())
            .arg("--listen")
            .arg(format!("uds:{}", ctx.uds.display()))
            .arg("--port")
            .arg(ctx.port.to_string())
            .arg("--cid")
            .arg(ctx.cid.to_string())
            .arg("--framing")
            .arg(self.framing.as_str())
            .arg("--boot-delay-ms")
            .arg(self.guest_boot_delay_ms.to_string())
            .args(self.guest_args.iter());
        if let Some(s) = &self.bridged_server {
            cmd = cmd.arg("--mcp-server").arg(&s.command);
            if let Some(t) = s.start_timeout {
                cmd = cmd
                    .arg("--mcp-server-timeout-ms")
                    .arg(t.as_millis().max(1).to_string());
            }
        }
        let readiness = if self.ready == ReadyMode::Console {
            self.console()
        } else {
            hybrid(ctx)
        };
        Plan {
            // A --guest-bin may daemonize like a VMM would.
            may_daemonize: true,
            pre: Vec::new(),
            command: cmd,
            readiness,
        }
    }

    /// `kraft run --rm`; vsock only when asked (`--ready probe`).
    fn plan_kraft(&self, ctx: &InstanceCtx) -> Plan {
        let mut args: Vec<OsString> = vec![
            "run".into(),
            "--rm".into(),
            "--memory".into(),
            format!("{}Mi", ctx.memory_mb).into(),
        ];
        if let Some(p) = &self.plat {
            args.push("--plat".into());
            args.push(p.into());
        }
        args.extend(
            self.kraft_args
                .iter()
                .map(|a| OsString::from(expand(a, ctx))),
        );
        args.push(self.image.clone().into());
        if !self.app_args.is_empty() {
            args.push("--".into());
            args.extend(self.app_args.iter().map(|a| OsString::from(expand(a, ctx))));
        }
        let readiness = if self.ready == ReadyMode::Probe {
            vsock(ctx)
        } else {
            self.console()
        };
        Plan {
            may_daemonize: true,
            pre: Vec::new(),
            command: Command::new(&self.kraft_bin).args(args),
            readiness,
        }
    }

    /// The `--exec` template through `/bin/sh -c`; hybrid vsock when it
    /// names `{uds}`.
    fn plan_exec(&self, ctx: &InstanceCtx) -> Plan {
        let t = self.exec_template.as_deref().unwrap_or("");
        let cmd = Command::new("/bin/sh").arg("-c").arg(expand(t, ctx));
        let readiness = match self.ready {
            ReadyMode::Console => self.console(),
            _ if t.contains("{uds}") => hybrid(ctx),
            _ => vsock(ctx),
        };
        Plan {
            may_daemonize: true,
            pre: Vec::new(),
            command: cmd,
            readiness,
        }
    }
}

/// Readiness by a probe over the hybrid (Unix-socket) form of vsock.
fn hybrid(ctx: &InstanceCtx) -> Readiness {
    Readiness::Probe(Endpoint::Hybrid {
        path: ctx.uds.clone(),
        port: ctx.port,
    })
}

/// Readiness by a probe over AF_VSOCK to the instance's CID.
fn vsock(ctx: &InstanceCtx) -> Readiness {
    Readiness::Probe(Endpoint::Vsock {
        cid: ctx.cid,
        port: ctx.port,
    })
}

const PLACEHOLDERS: [&str; 6] = ["index", "cid", "port", "uds", "memory_mb", "log"];

fn unknown_placeholder(t: &str) -> Option<String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !PLACEHOLDERS.contains(&name)
        {
            return Some(name.to_string());
        }
        rest = &after[close + 1..];
    }
    None
}

/// Quotes a value for `/bin/sh`.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Replaces the placeholders in a template (values shell-quoted).
pub fn expand(t: &str, ctx: &InstanceCtx) -> String {
    t.replace("{index}", &ctx.index.to_string())
        .replace("{cid}", &ctx.cid.to_string())
        .replace("{port}", &ctx.port.to_string())
        .replace("{uds}", &sh_quote(&ctx.uds.to_string_lossy()))
        .replace("{memory_mb}", &ctx.memory_mb.to_string())
        .replace("{log}", &sh_quote(&ctx.log.to_string_lossy()))
}

/// Path for instance `index`'s log, as the seed names it.
pub fn log_path(dir: &Path, index: u32, cid: u32) -> PathBuf {
    dir.join(format!("unikernel_{index}_cid{cid}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> InstanceCtx {
        InstanceCtx {
            index: 3,
            cid: 203,
            port: 5252,
            uds: PathBuf::from("/run/x y/i3.sock"),
            memory_mb: 64,
            log: PathBuf::from("/tmp/l.log"),
        }
    }

    #[test]
    fn expand_fills_every_placeholder_and_quotes_paths() {
        let s = expand(
            "vmm --cid {cid} --sock {uds} --i {index} -m {memory_mb} {port} {log}",
            &ctx(),
        );
        assert_eq!(
            s,
            "vmm --cid 203 --sock '/run/x y/i3.sock' --i 3 -m 64 5252 /tmp/l.log"
        );
    }

    #[test]
    fn unknown_placeholders_are_named() {
        assert_eq!(unknown_placeholder("a {cid} {nope}"), Some("nope".into()));
        assert_eq!(unknown_placeholder("awk '{print $1}' {cid}"), None);
    }

    #[test]
    fn log_path_follows_the_seed() {
        assert_eq!(
            log_path(Path::new("/tmp/osvm-load-test"), 0, 247),
            PathBuf::from("/tmp/osvm-load-test/unikernel_0_cid247.log")
        );
    }
}
