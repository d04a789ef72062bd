//! `ukload doctor`: what each launcher needs, present or missing, with the
//! command that fixes it. Nothing is started but short `--version` queries
//! and a cgroup that is created and removed at once.

use crate::launcher::{Kind, LauncherConfig};
use crate::run::{FDS_BASE, FDS_PER_INSTANCE};
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Oldest KraftKit whose `kraft run` flags ukload uses.
pub const KRAFT_MIN: (u32, u32, u32) = (0, 11, 6);
/// Oldest Node.js the echo MCP server runs on.
pub const NODE_MIN_MAJOR: u32 = 18;
/// How long a `--version` query may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// One finding.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
    /// How to fix it, when it is not ok.
    pub fix: Option<String>,
    /// Launchers that cannot work without it (empty: informational).
    pub needed_by: Vec<Kind>,
}

/// Everything `doctor` found.
#[derive(Debug, Clone)]
pub struct Report {
    pub launcher: Kind,
    pub count: u32,
    pub checks: Vec<Check>,
}

impl Report {
    /// Findings that stop `launcher` from working.
    pub fn blocking(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|c| !c.ok && c.needed_by.contains(&self.launcher))
    }

    /// 0 when the chosen launcher has everything it needs, 69 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.blocking().next().is_none() {
            crate::exit::EXIT_PASS
        } else {
            crate::exit::EXIT_UNAVAILABLE
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ukload doctor (launcher {}, {} instances)",
            self.launcher, self.count
        )?;
        for c in &self.checks {
            let state = match (c.ok, c.needed_by.contains(&self.launcher)) {
                (true, _) => "ok     ",
                (false, true) => "MISSING",
                (false, false) => "absent ",
            };
            writeln!(f, "  {state} {:<34} {}", c.what, c.detail)?;
            if let (false, Some(fix)) = (c.ok, &c.fix) {
                writeln!(f, "          fix: {fix}")?;
            }
        }
        let blocking: Vec<&str> = self.blocking().map(|c| c.what.as_str()).collect();
        if blocking.is_empty() {
            writeln!(f, "everything the {} launcher needs is here", self.launcher)
        } else {
            writeln!(
                f,
                "the {} launcher cannot run: missing {}",
                self.launcher,
                blocking.join(", ")
            )
        }
    }
}

/// `program --version`'s first line (of stdout, whatever its exit status),
/// within a deadline.
fn version_of(program: &str) -> Option<String> {
    let path = crate::supervisor::spawn::resolve_program(program.as_ref())?;
    let done =
        crate::subprocess::run_within(Command::new(path).arg("--version"), VERSION_TIMEOUT).ok()?;
    done.stdout.lines().next().map(|l| l.trim().to_string())
}

/// The first `a.b.c` in `text`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| w.contains('.'))
        .find_map(|w| {
            let mut it = w.split('.').map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
        })
}

fn dir_check(what: &str, dir: &Path, needed_by: Vec<Kind>) -> Check {
    // The same rules ukload applies when it creates or uses the directory.
    let (ok, detail, fix) = match crate::fsafe::check_existing_dir(dir) {
        Ok(false) => (
            true,
            format!("{} (created on first use)", dir.display()),
            None,
        ),
        Ok(true) => (true, dir.display().to_string(), None),
        Err(e) => (
            false,
            e.to_string(),
            Some(format!(
                "remove it (ukload recreates it safely) or make it yours and not writable by others: {}",
                dir.display()
            )),
        ),
    };
    Check {
        what: what.into(),
        ok,
        detail,
        fix,
        needed_by,
    }
}

/// Runs every check for `launcher` with `count` instances in mind.
pub fn examine(launcher: Kind, count: u32) -> Report {
    use Kind::*;
    let all = vec![Process, Kraft, Exec, Qemu];
    let mut checks = vec![guest_check(), node_check()];
    checks.extend(kraft_checks());
    checks.extend(microvm_checks());
    checks.push(kvm_check());
    checks.push(dir_check(
        "runtime directory (CID registry)",
        &crate::paths::runtime_dir(),
        all.clone(),
    ));
    checks.push(dir_check(
        "default log directory",
        Path::new(crate::paths::DEFAULT_LOG_DIR),
        Vec::new(),
    ));
    checks.push(open_files_check(count, all));
    checks.push(cgroup_check());
    Report {
        launcher,
        count,
        checks,
    }
}

/// The guest agent binary the process launcher runs.
fn guest_check() -> Check {
    let guest = LauncherConfig::default_guest_bin();
    let found = crate::supervisor::spawn::resolve_program(guest.as_os_str());
    Check {
        what: "ukload-guest".into(),
        ok: found.is_some(),
        detail: guest.display().to_string(),
        fix: Some("cargo build --release --bins (it is installed beside ukload)".into()),
        needed_by: vec![Kind::Process],
    }
}

/// Node.js, recent enough for the echo MCP server (informational).
fn node_check() -> Check {
    let node = version_of("node");
    let node_major = node.as_deref().and_then(|v| {
        v.trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    Check {
        what: format!("node >= {NODE_MIN_MAJOR} (echo MCP server)"),
        ok: node_major.is_some_and(|m| m >= NODE_MIN_MAJOR),
        detail: node.unwrap_or_else(|| "not on PATH".into()),
        fix: Some("apt-get install nodejs (Debian 12 has 18)".into()),
        needed_by: Vec::new(),
    }
}

/// A recent enough `kraft` and the default unikernel image.
fn kraft_checks() -> [Check; 2] {
    let kraft = version_of("kraft");
    let kv = kraft.as_deref().and_then(parse_version);
    let image = LauncherConfig::default_kraft_image();
    [
        Check {
            what: format!("kraft >= {}.{}.{}", KRAFT_MIN.0, KRAFT_MIN.1, KRAFT_MIN.2),
            ok: kv.is_some_and(|v| v >= KRAFT_MIN),
            detail: kraft.unwrap_or_else(|| "not on PATH".into()),
            fix: Some(
                "curl -sSf https://get.kraftkit.sh | sh; export PATH=\"$HOME/.kraftkit/bin:$PATH\""
                    .into(),
            ),
            needed_by: vec![Kind::Kraft],
        },
        Check {
            what: "kraft image (default --image)".into(),
            ok: image.exists(),
            detail: image.display().to_string(),
            fix: Some("bash scripts/build-unikraft-tool-executor.sh".into()),
            needed_by: vec![Kind::Kraft],
        },
    ]
}

/// Each piece of the microVM guest image, then the (optional) kernel vsock
/// backend.
fn microvm_checks() -> Vec<Check> {
    let mut checks: Vec<Check> = crate::image::pieces()
        .into_iter()
        .map(|p| Check {
            what: format!("microVM: {}", p.name),
            ok: p.present,
            detail: p.path.display().to_string(),
            fix: Some(p.how.to_string()),
            needed_by: vec![Kind::Qemu],
        })
        .collect();
    checks.push(Check {
        what: "/dev/vhost-vsock (kernel vsock backend)".into(),
        ok: Path::new("/dev/vhost-vsock").exists(),
        detail: "optional: without it QEMU uses vhost-device-vsock (hybrid sockets)".into(),
        fix: Some("modprobe vhost_vsock (on a host that allows it)".into()),
        needed_by: Vec::new(),
    });
    checks
}

/// Whether KVM is there and really boots a guest (informational: QEMU falls
/// back to TCG).
fn kvm_check() -> Check {
    let kvm = Path::new("/dev/kvm").exists();
    let qemu_cfg = crate::launcher::qemu::QemuConfig::default();
    let can_probe = kvm
        && qemu_cfg.kernel.is_file()
        && qemu_cfg.initrd.is_file()
        && crate::supervisor::spawn::resolve_program(qemu_cfg.qemu_bin.as_ref()).is_some();
    // Whether KVM really boots a guest: the qemu launcher's probe, cached per
    // host and kernel (it boots one VM once; needs the supervisor to reap it).
    let boots = can_probe
        && crate::supervisor::Supervisor::init().is_ok_and(|sup| qemu_cfg.kvm_really_boots(sup));
    let kvm_state = match (kvm, can_probe, boots) {
        (false, _, _) => "no /dev/kvm: QEMU uses TCG (software emulation)".to_string(),
        (true, false, _) => {
            "present; not probed (the microVM pieces are missing): the first qemu run probes it"
                .to_string()
        }
        (true, true, true) => "boots a guest".to_string(),
        (true, true, false) => {
            "present but cannot boot a guest here (probed): TCG is used".to_string()
        }
    };
    Check {
        what: "KVM".into(),
        ok: boots,
        detail: kvm_state,
        fix: Some("optional: microVMs run under TCG without it, slower".into()),
        needed_by: Vec::new(),
    }
}

/// Whether the hard open-files limit allows `count` instances.
fn open_files_check(count: u32, needed_by: Vec<Kind>) -> Check {
    let (rlim_cur, rlim_max) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap_or((0, 0));
    let need = u64::from(count) * FDS_PER_INSTANCE + FDS_BASE;
    Check {
        what: format!("open files for {count} instances"),
        ok: rlim_max >= need,
        detail: format!(
            "need about {need}; soft {} (raised at start), hard {}",
            rlim_cur, rlim_max
        ),
        fix: Some(format!(
            "raise the hard limit: ulimit -Hn {need} (as root), or LimitNOFILE={need} for a service"
        )),
        needed_by,
    }
}

/// Whether a run can contain its processes in a cgroup v2 here: creates one
/// and removes it at once.
fn cgroup_check() -> Check {
    let probe_id = format!("doctor-{}", std::process::id());
    let (ok, detail) = match crate::supervisor::cgroup::RunCgroup::create(&probe_id) {
        Ok(c) => {
            let path = c.path().display().to_string();
            c.kill_and_remove(Instant::now() + Duration::from_secs(1));
            (true, format!("cgroup v2 writable here ({path})"))
        }
        Err(e) => (
            false,
            format!("falls back to process groups and markers: {e}"),
        ),
    };
    Check {
        what: "containment by cgroup v2".into(),
        ok,
        detail,
        fix: Some(
            "run as root, or inside a delegated cgroup (systemd-run --user --scope -p Delegate=yes ukload ...)"
                .into(),
        ),
        needed_by: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_version_lines() {
        assert_eq!(
            parse_version("kraft version 0.11.6 (abc)"),
            Some((0, 11, 6))
        );
        assert_eq!(parse_version("v20.20.2"), Some((20, 20, 2)));
        assert_eq!(parse_version("no version"), None);
        assert!(parse_version("kraft 0.12.0").unwrap() >= KRAFT_MIN);
        assert!(parse_version("kraft 0.11.5").unwrap() < KRAFT_MIN);
    }
}
