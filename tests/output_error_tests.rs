//! Output that cannot be written: stdout or stderr on a full
//! device or a pipe whose reader is gone. ukload must never panic, must finish
//! the run and its teardown as usual (SIGTERM first), and must say with its
//! exit code when the report was lost: 74 (EX_IOERR), distinct from verdicts.

#[macro_use]
mod common;

use common::*;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const EXIT_IOERR: i32 = 74;

/// `/dev/full`: every write fails with ENOSPC.
fn dev_full() -> Stdio {
    Stdio::from(
        File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

/// The write end of a pipe whose read end is already closed: every write
/// fails with EPIPE (or raises SIGPIPE where it is not ignored).
fn widowed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 just returned these two fds; each is owned exactly once here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// Runs `cmd` with the given stdout and stderr; whichever is not given is
/// captured. Kills it past `d` (by pid).
fn run_with(mut cmd: Command, stdout: Option<Stdio>, stderr: Option<Stdio>, d: Duration) -> Output {
    cmd.stdout(stdout.unwrap_or_else(Stdio::piped))
        .stderr(stderr.unwrap_or_else(Stdio::piped));
    let mut child = cmd.spawn().expect("spawn ukload");
    let pid = child.id() as i32;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let t = std::thread::spawn(move || {
            if let Some(err) = err.as_mut() {
                let _ = err.read_to_end(&mut e);
            }
            e
        });
        if let Some(out) = out.as_mut() {
            let _ = out.read_to_end(&mut o);
        }
        let e = t.join().unwrap_or_default();
        let status = child.wait();
        let _ = tx.send((status, o, e));
    });
    match rx.recv_timeout(d) {
        Ok((status, stdout, stderr)) => Output {
            status: status.unwrap(),
            stdout,
            stderr,
        },
        Err(_) => {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("ukload did not finish within {d:?}");
        }
    }
}

/// `ukload run 2` with the process launcher, JSON report, progress lines on
/// (so stderr is written during the run, not only at the end).
fn run_cmd(dir: &std::path::Path, range: &str) -> Command {
    let mut cmd = ukload(dir);
    cmd.args(["run", "2", "--format", "json", "--cid-range", range])
        .arg("--log-dir")
        .arg(dir.join("logs"));
    cmd
}

/// The run id from the first progress line: `phase 1: ... (run ID)`.
fn run_id_from_progress(stderr: &str) -> String {
    let start = stderr.find("(run ").expect("progress names the run") + 5;
    let end = stderr[start..].find(')').unwrap() + start;
    stderr[start..end].to_string()
}

fn assert_nothing_left(run_id: &str) {
    assert_run_gone(run_id, Duration::from_secs(2));
}

/// A report on stdout: PASS, exit 0, every instance ended by SIGTERM (not
/// SIGKILL), nothing left.
fn assert_normal_report(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "exit {:?}", out.status);
    let doc = json_of(out);
    assert_eq!(doc["verdict"], "PASS");
    for i in instances(&doc) {
        assert_eq!(
            i["teardown"], "terminated",
            "instance {} was not ended by SIGTERM: {i}",
            i["index"]
        );
    }
    assert_nothing_left(doc["run_id"].as_str().unwrap());
}

#[test]
fn report_lost_to_a_full_stdout_exits_74_after_the_teardown_and_says_so() {
    let _slot = shared_slot();
    let dir = TempDir::new("stdout-full");
    let out = run_with(
        run_cmd(dir.path(), &cid_block(5)),
        Some(dev_full()),
        None,
        DEADLINE,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let id = run_id_from_progress(&err);
    assert_nothing_left(&id);
    assert_eq!(out.status.code(), Some(EXIT_IOERR), "stderr: {err}");
    let failure = err
        .find("cannot write the report to stdout")
        .unwrap_or_else(|| panic!("stderr does not name the failure: {err}"));
    let cleanup = err.find("phase 5: cleanup").expect("cleanup ran");
    assert!(
        cleanup < failure,
        "report written before the teardown: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn stderr_on_a_full_device_changes_nothing_report_verdict_and_sigterm_teardown() {
    let _slot = shared_slot();
    let dir = TempDir::new("stderr-full");
    let out = run_with(
        run_cmd(dir.path(), &cid_block(5)),
        None,
        Some(dev_full()),
        DEADLINE,
    );
    assert_normal_report(&out);
}

#[test]
fn stderr_to_a_pipe_nobody_reads_changes_nothing_report_verdict_and_sigterm_teardown() {
    let _slot = shared_slot();
    let dir = TempDir::new("stderr-epipe");
    let out = run_with(
        run_cmd(dir.path(), &cid_block(5)),
        None,
        Some(widowed_pipe()),
        DEADLINE,
    );
    assert_normal_report(&out);
}

#[test]
fn stdout_and_stderr_both_closed_like_head_1_exits_74_and_leaves_nothing() {
    let _slot = shared_slot();
    let dir = TempDir::new("both-epipe");
    let rt = dir.path().join("rt");
    let out = run_with(
        run_cmd(dir.path(), &cid_block(5)),
        Some(widowed_pipe()),
        Some(widowed_pipe()),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(EXIT_IOERR));
    // No id on any output: find the run by its directory in the runtime dir.
    let runs: Vec<String> = std::fs::read_dir(rt.join("runs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for id in &runs {
        assert_nothing_left(id);
    }
    // Whatever the runs directory keeps, nothing started in this runtime dir lives.
    let want = format!("UKLOAD_RUNTIME_DIR={}", rt.display());
    let left: Vec<_> = marked_pids(&|_| true)
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| e.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
                .unwrap_or(false)
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn listings_help_and_image_info_that_stdout_cannot_take_exit_74() {
    let _slot = shared_slot();
    let dir = TempDir::new("listing-full");
    let cases: &[&[&str]] = &[
        &["ps"],
        &["ps", "--format", "json"],
        // One named run that does not exist: a bare `cleanup` would end
        // other tests' leftovers host-wide.
        &["cleanup", "--run", "no-such-run"],
        &["image", "info"],
        &["--help"],
        &["run", "--help"],
    ];
    for args in cases {
        let mut cmd = ukload(dir.path());
        cmd.args(*args);
        let out = run_with(cmd, Some(dev_full()), None, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_IOERR), "{args:?}: {err}");
        assert!(
            err.contains("cannot write") && err.contains("to stdout"),
            "{args:?}: stderr does not name the failure: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn mcp_result_that_stdout_cannot_take_exits_74_and_the_server_is_ended() {
    require_node!();
    let _slot = shared_slot();
    let dir = TempDir::new("mcp-full");
    let server = format!("node {}", echo_server().display());
    let cases: &[&[&str]] = &[
        &["mcp", "tools"],
        &["mcp", "call", "echo", "--arg", "message=hi"],
        &[
            "mcp",
            "bench",
            "echo",
            "--calls",
            "3",
            "--arg",
            "message=hi",
        ],
    ];
    for args in cases {
        let mut cmd = ukload(dir.path());
        cmd.args(*args).args(["--stdio", &server]);
        let out = run_with(cmd, Some(dev_full()), None, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_IOERR), "{args:?}: {err}");
        assert!(err.contains("cannot write the result"), "{args:?}: {err}");
    }
    // The stdio servers carried `mcp-<ukload pid>` markers; none is left.
    let left = marked_pids(&|v| v.starts_with("mcp-"))
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&*echo_server().to_string_lossy()))
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| {
                    let want = format!("TMPDIR={}", dir.path().display());
                    e.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect::<Vec<_>>();
    assert!(left.is_empty(), "MCP servers left: {left:?}");
}
