//! Helpers shared by the integration tests: temp dirs, the binaries, and an
//! independent `/proc` scan for processes carrying a run's marker.
#![allow(dead_code)]

mod background;
#[allow(unused_imports)]
pub use background::{cid_block, cid_bounds, BackgroundRun};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ukt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn ukload_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ukload"))
}

pub fn guest_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ukload-guest"))
}

/// `target/<profile>/examples/<name>` (cargo test builds examples).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join("examples").join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --examples` (cargo test builds it)",
        p.display()
    );
    p
}

pub fn fixture_guest() -> PathBuf {
    example_bin("fixture_guest")
}

pub fn kraft_standin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kraft")
}

/// A `ukload` command isolated in `dir` (its own runtime dir, logs, TMPDIR).
pub fn ukload(dir: &Path) -> Command {
    let mut c = Command::new(ukload_bin());
    c.env("UKLOAD_RUNTIME_DIR", dir.join("rt"))
        .env("TMPDIR", dir)
        .env_remove("UKLOAD_RUN")
        .stdin(std::process::Stdio::null());
    c
}

/// Standard `run` arguments for tests: quiet, JSON, logs in `dir`.
pub fn run_args(dir: &Path, count: u32) -> Vec<String> {
    vec![
        "run".into(),
        count.to_string(),
        "--format".into(),
        "json".into(),
        "-q".into(),
        "--log-dir".into(),
        dir.join("logs").to_string_lossy().into_owned(),
    ]
}

pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Pids of live (non-zombie) processes whose environment has `UKLOAD_RUN=<value>`
/// with `pred(value)` true. Independent of the library's scanner.
pub fn marked_pids(pred: &dyn Fn(&str) -> bool) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !is_live(pid) {
            continue;
        }
        for kv in env.split(|&b| b == 0) {
            if let Some(val) = kv.strip_prefix(b"UKLOAD_RUN=") {
                let val = String::from_utf8_lossy(val).into_owned();
                if pred(&val) {
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    v.push((pid, cmd));
                }
            }
        }
    }
    v
}

/// Live processes of run `run_id`.
pub fn run_processes(run_id: &str) -> Vec<(i32, String)> {
    marked_pids(&|v| v == run_id)
}

/// Waits up to `d` for run `run_id` to have no live process; returns what is left.
pub fn wait_no_processes(run_id: &str, d: Duration) -> Vec<(i32, String)> {
    let end = Instant::now() + d;
    loop {
        let left = run_processes(run_id);
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that within `within` no process of run `run_id` is left;
/// anything left is SIGKILLed (by pid) before the panic names it.
pub fn assert_run_gone(run_id: &str, within: Duration) {
    let left = wait_no_processes(run_id, within);
    kill_run(run_id);
    assert!(
        left.is_empty(),
        "processes of run {run_id} left after {within:?}: {left:?}"
    );
}

/// Kills (by pid, never by name) anything a failed test left with this marker.
pub fn kill_run(run_id: &str) {
    for (pid, _) in run_processes(run_id) {
        // SAFETY: signalling a pid we just read with our own run's marker.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Runs `cmd` to completion with a deadline (kills it past the deadline).
pub fn output_within(mut cmd: Command, d: Duration) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(d) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("command did not finish within {d:?}");
        }
    }
}

pub fn instances(doc: &serde_json::Value) -> &Vec<serde_json::Value> {
    doc["instances"].as_array().expect("instances array")
}

/// Timing-sensitive tests take this exclusively; every other test in the same
/// binary takes it shared, so the timing test never shares the 2 cores with
/// another run of the same binary.
pub static EXCLUSIVE: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn shared_slot() -> std::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive_slot() -> std::sync::RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether a test's prerequisite is here: `missing` is `None` when it is,
/// else what is missing. CI installs every prerequisite (scripts/test.sh), so
/// under `CI=true` a missing one fails the test; elsewhere the test says
/// "skipped: ..." and the caller returns.
pub fn prerequisite(missing: Option<String>) -> bool {
    let Some(what) = missing else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but a prerequisite is missing (scripts/test.sh installs it): {what}"
    );
    eprintln!("skipped: {what}");
    false
}

/// Whether this test runs as root, as the tests that start a process as
/// another user (`setpriv`) need: a [`prerequisite`], so under `CI=true`
/// (which runs as root) its absence fails the test.
pub fn root_prerequisite() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    prerequisite((euid != 0).then(|| "needs root to start a process as another user".into()))
}

/// Whether Node.js (for the echo MCP server) is installed.
pub fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Returns from the test, saying why, when Node.js is missing.
#[allow(unused_macros)]
macro_rules! require_node {
    () => {
        if !common::prerequisite((!common::node_available()).then(|| "node not found".to_string()))
        {
            return;
        }
    };
}

/// Why microVMs cannot run here (each missing piece, with the command that
/// makes it), if they cannot.
pub fn microvm_missing() -> Option<String> {
    let why: Vec<String> = ukload::image::pieces()
        .into_iter()
        .filter(|p| !p.present)
        .map(|p| format!("{} ({})", p.name, p.how))
        .collect();
    (!why.is_empty()).then(|| why.join(", "))
}

/// One microVM test at a time in a test binary: each boots VMs that need
/// the machine's 2 cores.
pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    VM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Returns from the test, saying why, when the microVM pieces are missing.
#[allow(unused_macros)]
macro_rules! need_microvm {
    () => {
        if !common::prerequisite(
            common::microvm_missing().map(|why| format!("microVM pieces missing: {why}")),
        ) {
            return;
        }
    };
}

/// The echo MCP test server.
pub fn echo_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/test_mcp_servers/echo_server.js")
}

/// Runs `ukload run COUNT` isolated in `dir` (JSON, quiet, logs in `dir`)
/// with `extra` flags; returns the process output and the parsed report.
pub fn run_report(
    dir: &Path,
    count: u32,
    extra: &[&str],
    deadline: Duration,
) -> (Output, serde_json::Value) {
    let mut cmd = ukload(dir);
    cmd.args(run_args(dir, count)).args(extra);
    let out = output_within(cmd, deadline);
    let doc = json_of(&out);
    (out, doc)
}

/// Whether `pid` exists and is not a zombie (from `/proc/PID/stat`).
pub fn is_live(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.trim().chars().next());
    state.is_some_and(|s| s != 'Z')
}

/// Live (non-zombie) processes whose cmdline starts with `prefix`.
pub fn procs_named(prefix: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmd.starts_with(prefix.as_bytes()) {
            continue;
        }
        if is_live(pid) {
            v.push(pid);
        }
    }
    v
}

/// The fixture guest's escapees and fork-chain links of CIDs `lo..=hi`
/// (they name themselves `fixture-escapee-cid<CID>`, `fixture-forkchain-cid<CID>`).
pub fn fixture_leftovers(lo: u32, hi: u32) -> Vec<i32> {
    (lo..=hi)
        .flat_map(|c| {
            let mut v = procs_named(&format!("fixture-escapee-cid{c}\0"));
            v.extend(procs_named(&format!("fixture-forkchain-cid{c}\0")));
            v
        })
        .collect()
}

/// `--flag` names in the Options section of `BIN ARGS --help` (which must
/// exit 0).
pub fn help_flags(bin: &Path, args: &[&str]) -> std::collections::BTreeSet<String> {
    let out = Command::new(bin).args(args).arg("--help").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} {args:?} --help",
        bin.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            // Option lines start at column 2 ("  --flag"); descriptions are
            // indented further.
            if !l.starts_with("  --") {
                return None;
            }
            let w = l.split_whitespace().next()?;
            let w = w.trim_end_matches(',');
            (w.starts_with("--") && w != "--help").then(|| w.to_string())
        })
        .collect()
}
