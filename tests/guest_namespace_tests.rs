//! `ukload-guest` as pid 1 of a PID namespace on this host
//! (`unshare --pid --fork --kill-child ukload-guest ...`): it must not take
//! itself for a VM's init. Once it mounted proc, sysfs and devtmpfs over the
//! host's, and `/proc` showed no process to anyone until unmounted.
//!
//! No mount namespace is used: the agent shares the host's mounts, which is
//! exactly the dangerous case. The tests read the host's `/proc/self/mountinfo`
//! before and after and check that `/proc` still lists processes.
//! They skip (printing why) where `unshare --pid` is missing or not
//! permitted, except under `CI=true`, where that is a failure.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use ukload::framing::Framing;
use ukload::jsonrpc::{self, PingInfo};
use ukload::vsock::{self, Endpoint};

/// Generous: debug builds on a shared 2-core machine.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
/// How soon the agent must be gone after SIGTERM.
const EXIT_DEADLINE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);
/// A host lists far more processes than this in `/proc`.
const MIN_HOST_PIDS: usize = 10;
/// The pseudo file systems a VM's init mounts.
const PSEUDO_FS: [&str; 3] = ["proc", "sysfs", "devtmpfs"];

/// Whether `unshare --pid --fork` works here; `Err(reason)` otherwise.
fn unshare_works() -> Result<(), String> {
    match Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "true"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Err(format!("unshare not runnable: {e}")),
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "unshare --pid --fork is not permitted: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
    }
}

/// Returns from the test, saying why, when `unshare --pid` cannot run
/// (a failure under CI=true).
macro_rules! require_unshare {
    () => {
        if let Err(why) = unshare_works() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but {why}");
            }
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Mount ids and types of every proc/sysfs/devtmpfs mount the host sees.
fn pseudo_mounts() -> BTreeSet<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    info.lines()
        .filter_map(|line| {
            let id = line.split_whitespace().next()?.to_string();
            let fstype = line.split(" - ").nth(1)?.split_whitespace().next()?;
            PSEUDO_FS
                .contains(&fstype)
                .then(|| (id, fstype.to_string()))
        })
        .collect()
}

/// Numeric entries of the host's `/proc`.
fn host_pid_count() -> usize {
    std::fs::read_dir("/proc")
        .expect("reading /proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}

/// The host's `/proc` still works: our own stat is readable and it lists
/// the host's processes.
fn assert_host_proc_intact(what: &str) {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .unwrap_or_else(|e| panic!("{what}: /proc/self/stat unreadable: {e}"));
    assert!(
        stat.starts_with(&format!("{} ", std::process::id())),
        "{what}: /proc/self/stat is not ours: {stat}"
    );
    let n = host_pid_count();
    assert!(
        n > MIN_HOST_PIDS,
        "{what}: /proc lists only {n} processes: something is mounted over it"
    );
}

/// `unshare --pid --fork --kill-child ukload-guest --listen uds:DIR/g.sock
/// EXTRA` with a unique run marker; killed (by pid) and checked for
/// leftovers on drop.
struct NamespacedGuest {
    child: Child,
    marker: String,
    dir: common::TempDir,
}

impl NamespacedGuest {
    fn spawn(tag: &str, extra: &[&str]) -> NamespacedGuest {
        let dir = common::TempDir::new(tag);
        let marker = format!("ns-{tag}-{}", std::process::id());
        let listen = format!("uds:{}", dir.path().join("g.sock").display());
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(common::guest_bin())
            .args(["--listen", &listen])
            .args(extra)
            .env(ukload::ENV_RUN, &marker)
            .env_remove(ukload::ENV_CID)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning unshare");
        NamespacedGuest { child, marker, dir }
    }

    fn sock(&self) -> std::path::PathBuf {
        self.dir.path().join("g.sock")
    }

    /// The agent's host pid (the marked process that is not `unshare`).
    fn agent_pid(&self) -> i32 {
        let end = Instant::now() + TEST_DEADLINE;
        loop {
            let agent = common::run_processes(&self.marker)
                .into_iter()
                .find(|(pid, cmd)| *pid != self.child.id() as i32 && cmd.contains("ukload-guest"));
            if let Some((pid, _)) = agent {
                return pid;
            }
            assert!(Instant::now() < end, "the agent never appeared");
            std::thread::sleep(POLL);
        }
    }

    fn wait_exit(&mut self, d: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + d;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Everything the agent wrote on stderr (after it exited).
    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for NamespacedGuest {
    fn drop(&mut self) {
        // Ending unshare ends the agent too (--kill-child); then anything
        // left with our marker is killed by pid and reported.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let left = common::wait_no_processes(&self.marker, EXIT_DEADLINE);
        common::kill_run(&self.marker);
        if !std::thread::panicking() {
            assert!(left.is_empty(), "left behind: {left:?}");
        }
    }
}

fn ping(sock: &Path, deadline: Instant) -> PingInfo {
    let ep = Endpoint::Hybrid {
        path: sock.to_path_buf(),
        port: ukload::DEFAULT_PORT,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "agent not reachable before the deadline");
        match vsock::connect(&ep, left) {
            Ok(mut s) => {
                let v = jsonrpc::call(
                    &mut s,
                    Framing::Line,
                    1,
                    jsonrpc::STATUS_METHOD,
                    json!({}),
                    deadline,
                )
                .expect("ukload/status");
                return serde_json::from_value(v).expect("a PingInfo");
            }
            Err(e) if e.is_retryable() => std::thread::sleep(POLL),
            Err(e) => panic!("connect failed for good: {e}"),
        }
    }
}

#[test]
fn pid_1_of_a_pid_namespace_mounts_nothing_serves_and_exits_on_sigterm() {
    require_unshare!();
    let before = pseudo_mounts();
    let mut g = NamespacedGuest::spawn("serve", &[]);
    let info = ping(&g.sock(), Instant::now() + TEST_DEADLINE);
    assert_eq!(info.pid, 1, "the agent is pid 1 in its namespace");
    assert_host_proc_intact("while the agent runs");
    assert_eq!(
        pseudo_mounts(),
        before,
        "the agent mounted a pseudo file system on the host"
    );

    // As pid 1 of a namespace the kernel drops SIGTERM without a handler;
    // the agent takes it like an ordinary process: exit 128 + 15.
    let pid = g.agent_pid();
    // SAFETY: signalling the agent we started, found by our own marker.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let st = g
        .wait_exit(EXIT_DEADLINE)
        .expect("the agent ignored SIGTERM");
    assert_eq!(st.code(), Some(143), "unshare passes the agent's status on");
    let err = g.stderr();
    assert!(
        err.contains("pid 1 but not a VM's init") && err.contains("/proc is already mounted"),
        "{err}"
    );
    assert_host_proc_intact("after the agent exited");
    assert_eq!(pseudo_mounts(), before);
}

#[test]
fn init_flag_in_a_pid_namespace_refuses_to_mount_over_the_hosts_proc() {
    require_unshare!();
    let before = pseudo_mounts();
    let mut g = NamespacedGuest::spawn("forced", &["--init"]);
    // PID 1 setup fails, so it "powers off": in a PID namespace reboot(2)
    // only ends the namespace.
    let st = g
        .wait_exit(TEST_DEADLINE)
        .expect("ukload-guest --init did not end");
    let err = g.stderr();
    assert!(
        err.contains("refusing to mount proc on /proc: proc is already mounted"),
        "status {st}: {err}"
    );
    assert_host_proc_intact("after --init");
    assert_eq!(pseudo_mounts(), before, "--init mounted over the host");
}

#[test]
fn init_flag_outside_pid_1_is_a_usage_error() {
    let out = Command::new(common::guest_bin())
        .args(["--init", "--listen", "uds:/nonexistent/g.sock"])
        .stdin(Stdio::null())
        .output()
        .expect("running ukload-guest");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--init: this process is pid"), "{err}");
}
