//! `ukload mcp tools|call|bench` end to end: the real binary against
//! `examples/test_mcp_servers/echo_server.js` over stdio and against the real
//! `ukload-guest` (built-in tools) over hybrid vsock, asserting stdout, stderr
//! and the documented exit codes (0 ok, 1 tool error, 3 JSON-RPC error,
//! 4 transport failure, 64 usage).
//!
//! Tests that need Node.js print "skipped: node not found" without it, and fail under CI=true.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use ukload::vsock::{self, Endpoint};

/// Bound on one CLI run (generous: debug build, shared 2-core machine).
const RUN_BOUND: Duration = Duration::from_secs(60);
/// Bound on anything that must happen "soon".
const SOON: Duration = Duration::from_secs(15);
/// Pause between polls.
const POLL: Duration = Duration::from_millis(20);

use common::echo_server;

fn stdio_cmd() -> String {
    format!("node {}", echo_server().display())
}

/// Runs `ukload mcp ARGS...` to completion in an isolated dir.
fn mcp(args: &[&str]) -> Output {
    let dir = common::TempDir::new("mcpcli");
    let mut cmd = common::ukload(dir.path());
    cmd.arg("mcp").args(args);
    common::output_within(cmd, RUN_BOUND)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}; stderr: {}", o.status, stderr(o)))
}

#[test]
fn call_echo_prints_exactly_the_text() {
    require_node!();
    let stdio = stdio_cmd();
    let o = mcp(&["call", "echo", "--arg", "message=hi", "--stdio", &stdio]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "Echo: hi\n");
    assert_eq!(stderr(&o), "");
}

#[test]
fn call_add_types_arguments_by_the_schema() {
    require_node!();
    let stdio = stdio_cmd();
    // Without the schema "2" and "3" would be sent as JSON anyway; a string
    // property shows the schema wins: message=5 stays the string "5".
    let o = mcp(&[
        "call", "add", "--arg", "a=2", "--arg", "b=3", "--stdio", &stdio,
    ]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "2 + 3 = 5\n");
    let o = mcp(&["call", "echo", "--arg", "message=5", "--stdio", &stdio]);
    assert_eq!((code(&o), stdout(&o)), (0, "Echo: 5\n".to_string()));

    // --args plus --arg, raw result as JSON.
    let o = mcp(&[
        "call",
        "add",
        "--args",
        r#"{"a": 2.5}"#,
        "--arg",
        "b=-1",
        "--format",
        "json",
        "--stdio",
        &stdio,
    ]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let raw: Value = serde_json::from_str(&stdout(&o)).expect("--format json prints JSON");
    assert_eq!(raw["structuredContent"]["sum"], 1.5);
    assert_eq!(raw["content"][0]["text"], "2.5 + -1 = 1.5");

    // A value the schema cannot take is a usage error naming the flag.
    let o = mcp(&[
        "call", "add", "--arg", "a=two", "--arg", "b=3", "--stdio", &stdio,
    ]);
    assert_eq!(code(&o), 64);
    assert_eq!(
        stderr(&o),
        "ukload mcp: --arg a=two: the tool's schema wants number for a\n"
    );
}

#[test]
fn tool_failure_exits_1_and_rpc_error_exits_3() {
    require_node!();
    let stdio = stdio_cmd();
    let o = mcp(&["call", "error_test", "--stdio", &stdio]);
    assert_eq!(code(&o), 1, "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "Intentional error for testing\n");

    let o = mcp(&["call", "no_such_tool", "--stdio", &stdio]);
    assert_eq!(code(&o), 3);
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o), "error -32602: Unknown tool: no_such_tool\n");

    // SEP-1303: a missing argument is a tool execution error naming it.
    let o = mcp(&["call", "add", "--arg", "a=1", "--stdio", &stdio]);
    assert_eq!(code(&o), 1, "stderr: {}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Invalid arguments for tool add: missing required argument 'b'\n"
    );
}

#[test]
fn transport_failures_exit_4() {
    require_node!();
    let o = mcp(&["call", "echo", "--stdio", "/nonexistent/mcp-server"]);
    assert_eq!(code(&o), 4);
    assert!(
        stderr(&o).contains("/nonexistent/mcp-server"),
        "{}",
        stderr(&o)
    );

    // A slow tool past --timeout-ms.
    let stdio = stdio_cmd();
    let o = mcp(&[
        "call",
        "echo",
        "--arg",
        "message=slow",
        "--arg",
        "delay_ms=5000",
        "--timeout-ms",
        "300",
        "--stdio",
        &stdio,
    ]);
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("no answer within"), "{}", stderr(&o));

    let dir = common::TempDir::new("nosock");
    let target = format!("{}:5252", dir.path().join("absent.sock").display());
    let o = mcp(&["tools", "--uds", &target, "--timeout-ms", "500"]);
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("absent.sock"), "{}", stderr(&o));
}

#[test]
fn tools_lists_the_four_tools() {
    require_node!();
    let stdio = stdio_cmd();
    let o = mcp(&["tools", "--stdio", &stdio]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let names: Vec<String> = stdout(&o)
        .lines()
        .map(|l| l.split('(').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo", "add", "get_timestamp", "error_test"]);
    assert!(
        stdout(&o).contains("add(a: number, b: number, [delay_ms: integer])  Adds two numbers"),
        "{}",
        stdout(&o)
    );

    let o = mcp(&["tools", "--format", "json", "--stdio", &stdio]);
    assert_eq!(code(&o), 0);
    let tools: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "add", "get_timestamp", "error_test"]);
    assert_eq!(tools[1]["inputSchema"]["required"][0], "a");
}

#[test]
fn bench_reports_latency_stats_and_throughput() {
    require_node!();
    let stdio = stdio_cmd();
    let o = mcp(&[
        "bench",
        "--stdio",
        &stdio,
        "--calls",
        "200",
        "--parallel",
        "8",
        "echo",
        "--arg",
        "message=x",
        "--format",
        "json",
    ]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).expect("bench JSON");
    assert_eq!(doc["count"], 200, "{doc}");
    assert_eq!(doc["calls"], 200);
    assert_eq!(doc["parallel"], 8);
    assert_eq!(doc["ok"], 200);
    assert_eq!(doc["failures"], 0);
    assert_eq!(doc["tool"], "echo");
    let l = &doc["latency_ms"];
    let get = |k: &str| {
        l[k].as_f64()
            .unwrap_or_else(|| panic!("latency_ms.{k} missing: {doc}"))
    };
    let (min, med, p95, p99, max) = (
        get("min"),
        get("median"),
        get("p95"),
        get("p99"),
        get("max"),
    );
    assert!(
        0.0 < min && min <= med && med <= p95 && p95 <= p99 && p99 <= max,
        "{l}"
    );
    assert!(max < RUN_BOUND.as_secs_f64() * 1e3);
    let rate = doc["calls_per_sec"].as_f64().unwrap();
    let elapsed = doc["elapsed_s"].as_f64().unwrap();
    assert!(rate > 0.0 && elapsed > 0.0);
    assert!(
        (rate * elapsed - 200.0).abs() < 1.0,
        "rate {rate} x {elapsed} s"
    );

    // Human report and a tool that always fails (exit 1, still measured).
    let o = mcp(&[
        "bench",
        "--stdio",
        &stdio,
        "--calls",
        "20",
        "--parallel",
        "4",
        "error_test",
    ]);
    assert_eq!(code(&o), 1, "stderr: {}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("20 calls of error_test (4 in parallel)"),
        "{text}"
    );
    assert!(text.contains("tool errors 20"), "{text}");
    for field in ["min", "median", "p95", "p99", "max", "calls/s"] {
        assert!(text.contains(field), "{field} missing: {text}");
    }
}

/// The real `ukload-guest` serving its built-in tools on a hybrid socket.
struct Guest {
    child: Child,
    sock: PathBuf,
    _dir: common::TempDir,
}

impl Guest {
    fn start() -> Guest {
        let dir = common::TempDir::new("mcpcli-guest");
        let sock = dir.path().join("g.sock");
        let child = Command::new(common::guest_bin())
            .args(["--listen", &format!("uds:{}", sock.display())])
            .env_remove(ukload::ENV_RUN)
            .env_remove(ukload::ENV_CID)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawning ukload-guest");
        let guest = Guest {
            child,
            sock,
            _dir: dir,
        };
        // Up once a hybrid connect succeeds.
        let ep = Endpoint::Hybrid {
            path: guest.sock.clone(),
            port: ukload::DEFAULT_PORT,
        };
        let deadline = Instant::now() + SOON;
        loop {
            match vsock::connect(&ep, Duration::from_secs(2)) {
                Ok(_) => break,
                Err(e) if e.is_retryable() && Instant::now() < deadline => std::thread::sleep(POLL),
                Err(e) => panic!("guest not reachable: {e}"),
            }
        }
        guest
    }

    fn target(&self) -> String {
        format!("{}:{}", self.sock.display(), ukload::DEFAULT_PORT)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn call_against_the_guest_builtin_tools_over_uds() {
    let guest = Guest::start();
    let target = guest.target();
    let o = mcp(&["call", "echo", "--arg", "message=hi", "--uds", &target]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "Echo: hi\n");
    let o = mcp(&[
        "call", "add", "--arg", "a=2", "--arg", "b=3", "--uds", &target,
    ]);
    assert_eq!((code(&o), stdout(&o)), (0, "2 + 3 = 5\n".to_string()));
    let o = mcp(&["call", "error_test", "--uds", &target]);
    assert_eq!(code(&o), 1);
    let o = mcp(&["call", "nope", "--uds", &target]);
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).starts_with("error -32602: "), "{}", stderr(&o));
    let o = mcp(&["tools", "--uds", &target]);
    assert_eq!(code(&o), 0);
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));
    let o = mcp(&[
        "bench",
        "--uds",
        &target,
        "--calls",
        "50",
        "--parallel",
        "4",
        "get_timestamp",
        "--format",
        "json",
    ]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["count"], 50);
}

#[test]
fn transport_flags_are_checked_before_connecting() {
    for (args, want) in [
        (vec!["call", "echo"], "(got none)"),
        (
            vec!["call", "echo", "--stdio", "x", "--uds", "/tmp/x.sock:5252"],
            "(got --stdio and --uds)",
        ),
        (
            vec!["tools", "--vsock", "200:1", "--uds", "/tmp/x.sock:5252"],
            "(got --vsock and --uds)",
        ),
        (
            vec!["tools", "--vsock", "2:5252"],
            "--vsock \"2:5252\": CID 2 is reserved",
        ),
        (
            vec!["tools", "--uds", "/tmp/x.sock"],
            "--uds \"/tmp/x.sock\": expected PATH:PORT",
        ),
        (
            vec!["tools", "--stdio", "x", "--framing", "bytes"],
            "--framing: unknown framing",
        ),
        (
            vec!["tools", "--stdio", "x", "--timeout-ms", "0"],
            "--timeout-ms",
        ),
        (
            vec!["bench", "echo", "--stdio", "x", "--calls", "0"],
            "--calls",
        ),
        (
            vec!["bench", "echo", "--stdio", "x", "--parallel", "-1"],
            "--parallel",
        ),
        (
            vec!["call", "echo", "--stdio", "x", "--args", "[1]"],
            "--args",
        ),
        (
            vec!["call", "echo", "--stdio", "x", "--arg", "novalue"],
            "--arg",
        ),
        (
            vec!["call", "echo", "--stdio", "x", "--format", "xml"],
            "--format",
        ),
    ] {
        let o = mcp(&args);
        assert_eq!(code(&o), 64, "{args:?}: stderr {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        if want.starts_with("(got") {
            for flag in ["--stdio", "--vsock", "--uds"] {
                assert!(err.contains(flag), "{args:?}: {err}");
            }
        }
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let o = mcp(&["--help"]);
    assert_eq!(code(&o), 0);
    let help = stdout(&o);
    for line in [
        "0 success",
        "1 the tool ran and returned isError: true",
        "3 the server answered with a JSON-RPC error",
        "4 transport, protocol or timeout failure",
        "64 bad usage",
    ] {
        assert!(help.contains(line), "{line:?} missing from:\n{help}");
    }
}

#[test]
fn sigkill_of_ukload_leaves_no_server_behind() {
    require_node!();
    // The server is wrapped in a shell that would outlive its stdin (`exec sleep`
    // after node exits): only the parent-death signal can end the shell when
    // ukload is SIGKILLed and cleans nothing up.
    let wrapped = format!(
        "/bin/sh -c 'node \"$0\" 2>/dev/null; exec sleep 60' {}",
        echo_server().display()
    );
    let dir = common::TempDir::new("mcpcli-kill");
    let mut cmd = common::ukload(dir.path());
    cmd.args([
        "mcp",
        "call",
        "echo",
        "--arg",
        "message=slow",
        "--arg",
        "delay_ms=30000",
        "--timeout-ms",
        "60000",
        "--stdio",
        &wrapped,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut ukload = cmd.spawn().expect("spawning ukload mcp call");
    let marker = format!("mcp-{}", ukload.id());

    // Wait until node runs under ukload's marker, then give the slow call time to start.
    let deadline = Instant::now() + SOON;
    while !common::run_processes(&marker)
        .iter()
        .any(|(_, cmd)| cmd.contains("echo_server.js"))
    {
        if Instant::now() >= deadline {
            let _ = ukload.kill();
            let _ = ukload.wait();
            common::kill_run(&marker);
            panic!("node never started under marker {marker}");
        }
        std::thread::sleep(POLL);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ukload.try_wait().unwrap().is_none(),
        "ukload finished before the slow call did"
    );

    ukload.kill().expect("SIGKILL ukload");
    ukload.wait().expect("reap ukload");
    let left = common::wait_no_processes(&marker, SOON);
    common::kill_run(&marker);
    assert!(
        left.is_empty(),
        "processes left with marker {marker}: {left:?}"
    );
}

#[test]
fn progress_on_a_terminal_is_one_line_redrawn_and_cleared() {
    require_node!();
    // util-linux `script` gives the command a terminal as stdout and stderr.
    let script = Command::new("script").arg("--version").output();
    if !common::prerequisite(
        script
            .is_err()
            .then(|| "script (bsdutils) not found".to_string()),
    ) {
        return;
    }
    let dir = common::TempDir::new("mcpcli-tty");
    let inner = format!(
        "{} mcp call echo --arg message=t --arg delay_ms=700 --stdio 'node {}'",
        common::ukload_bin().display(),
        echo_server().display()
    );
    // The same isolation as common::ukload, around `script`.
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &inner, "/dev/null"])
        .env("UKLOAD_RUNTIME_DIR", dir.path().join("rt"))
        .env("TMPDIR", dir.path())
        .env_remove("UKLOAD_RUN")
        .stdin(Stdio::null());
    let o = common::output_within(cmd, RUN_BOUND);
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}");
    // Each notification redraws the line in place; the line is cleared
    // before the result, which is then alone on its line.
    assert!(
        out.starts_with("\r\x1b[Kprogress ") && out.contains("/700 ("),
        "{out:?}"
    );
    assert!(out.ends_with("\r\x1b[KEcho: t\r\n"), "{out:?}");
    assert!(!out.trim_end().contains('\n'), "one line: {out:?}");
}
