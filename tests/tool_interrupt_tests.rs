//! SIGTERM during the tool phase of `ukload run --tool-call` against guests
//! whose MCP server never answers: ukload must give the calls up within
//! ~100 ms, clean up and exit 143 within 2 s of the signal — not after the
//! tool timeout (30 s here) — and leave no process of the run behind.
//!
//! The guests are the real `ukload-guest` (process launcher) relaying to
//! `tests/fixtures/mcp/hostile_server.sh` with `--mcp-server`: in mode
//! `silent-call` it answers `initialize` but never `tools/call`; in `mute`
//! it answers nothing. The agent itself answers the readiness ping.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

/// The tool deadline the run is given: far longer than the test allows.
const TOOL_TIMEOUT_MS: &str = "30000";
/// Longest from SIGTERM to ukload's exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(2);
/// Longest wait for the tool phase to start (debug build, shared machine).
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// Time given to the calls after the phase starts, so that they are waiting
/// on the server (connected, and past `initialize` when it is answered).
const SETTLE: Duration = Duration::from_millis(500);
/// Progress line that starts the tool phase.
const TOOL_PHASE_LINE: &str = "tool calls:";
const POLL: Duration = Duration::from_millis(10);

fn hostile_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/hostile_server.sh")
}

/// Live processes whose environment holds `KEY=VALUE` (here: the test's TMPDIR,
/// which every process of the run inherits, found even without a report).
fn pids_with_env(kv: &str) -> Vec<i32> {
    let needle = kv.as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .map(str::trim)
                .map(|r| r.starts_with('Z'));
            zombie == Some(false)
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle))
        })
        .collect()
}

/// `ukload run 2 --tool-call echo:... --tool-timeout-ms 30000` with guests
/// relaying to `hostile_server.sh MODE`; killed by pid on drop if still running.
struct Run {
    child: Child,
    dir: TempDir,
    lines: crossbeam_channel::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Run {
    fn start(tag: &str, mode: &str) -> Run {
        let dir = TempDir::new(tag);
        let mut cmd = common::ukload(dir.path());
        cmd.args(["run", "2", "--format", "json", "--log-dir"])
            .arg(dir.path().join("logs"))
            .args(["--cid-range", &common::cid_block(10)])
            .args(["--max-boot-ms", "60000"])
            .args(["--tool-call", r#"echo:{"message":"x"}"#])
            .args(["--tool-timeout-ms", TOOL_TIMEOUT_MS])
            .arg("--guest-arg=--mcp-server")
            .arg(format!(
                "--guest-arg=/bin/sh {} {mode}",
                hostile_server().display()
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning ukload");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            dir,
            lines,
            stderr_seen: Vec::new(),
        }
    }

    fn tmpdir_env(&self) -> String {
        format!("TMPDIR={}", self.dir.path().display())
    }

    /// Waits for the progress line that starts the tool phase.
    fn wait_for_tool_phase(&mut self) {
        let end = Instant::now() + PHASE_DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(TOOL_PHASE_LINE);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no {TOOL_PHASE_LINE:?} line within {PHASE_DEADLINE:?}; stderr:\n{}",
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    /// Sends SIGTERM; returns the exit code and how long ukload took to exit.
    fn terminate(&mut self) -> (Option<i32>, Duration) {
        let pid = self.child.id() as libc::pid_t;
        let sent = Instant::now();
        // SAFETY: signalling the ukload process this test started, by pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), sent.elapsed());
            }
            if sent.elapsed() > PHASE_DEADLINE {
                panic!("ukload still running {PHASE_DEADLINE:?} after SIGTERM");
            }
            std::thread::sleep(POLL);
        }
    }

    fn report(&mut self) -> serde_json::Value {
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let rest: Vec<String> = self.lines.try_iter().collect();
        self.stderr_seen.extend(rest);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}):\n{out}\nstderr:\n{}",
                self.stderr_seen.join("\n")
            )
        })
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in pids_with_env(&self.tmpdir_env()) {
            // SAFETY: a process carrying this test's own TMPDIR, by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// SIGTERM once the calls wait on `mode`'s server: exit 143 within 2 s, every
/// call reported as interrupted during `step`, nothing of the run left.
fn sigterm_during_tool_phase(tag: &str, mode: &str, step: &str) {
    let _slot = common::exclusive_slot();
    let mut run = Run::start(tag, mode);
    run.wait_for_tool_phase();
    std::thread::sleep(SETTLE);
    let (code, took) = run.terminate();
    let doc = run.report();
    assert_eq!(
        code,
        Some(143),
        "{doc:#}\nstderr:\n{}",
        run.stderr_seen.join("\n")
    );
    assert!(
        took < EXIT_DEADLINE,
        "ukload took {took:?} to exit after SIGTERM (tool timeout {TOOL_TIMEOUT_MS} ms)\nstderr:\n{}",
        run.stderr_seen.join("\n")
    );
    let instances = common::instances(&doc);
    assert_eq!(instances.len(), 2, "{doc:#}");
    for i in instances {
        let err = i["tool_error"]
            .as_str()
            .unwrap_or_else(|| panic!("no tool_error: {i:#}"));
        assert!(
            err.starts_with(&format!("{} during {step}", ukload::toolcall::INTERRUPTED)),
            "{err}"
        );
        assert!(i["tool_ms"].is_null(), "{i:#}");
    }
    eprintln!(
        "{tag}: exit {code:?} after {took:?}: {:?}",
        instances
            .iter()
            .map(|i| i["tool_error"].clone())
            .collect::<Vec<_>>()
    );
    let run_id = doc["run_id"].as_str().expect("run_id in the report");
    let left = common::run_processes(run_id);
    assert!(left.is_empty(), "left behind by run {run_id}: {left:?}");
    // ukload's watchdog outlives it by its last sweep (milliseconds).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut left = pids_with_env(&run.tmpdir_env());
    while !left.is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = pids_with_env(&run.tmpdir_env());
    }
    assert!(left.is_empty(), "left behind (by TMPDIR): {left:?}");
}

#[test]
fn sigterm_while_tools_call_is_unanswered_exits_143_within_2_s_and_leaves_nothing() {
    sigterm_during_tool_phase("tool-int-call", "silent-call", "tools/call");
}

#[test]
fn sigterm_while_initialize_is_unanswered_exits_143_within_2_s_and_leaves_nothing() {
    sigterm_during_tool_phase("tool-int-init", "mute", "initialize");
}
