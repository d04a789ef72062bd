//! Real MCP tool execution: `examples/test_mcp_servers/echo_server.js` over stdio
//! through ukload's client, asserting exactly what comes back.
//!
//! Needs Node.js; without `node` on PATH each test prints "skipped: node not
//! found" and passes, except under CI=true (CI installs node), where it fails. The seed ran these with `-- --ignored`; they now run by
//! default (`cargo test --test real_mcp_execution_tests`), and `-- --ignored`
//! still works (it simply selects nothing extra).
//! `test_full_unikernel_mcp_integration` runs the whole path: the real
//! `ukload-guest --mcp-server` -> hybrid vsock -> bridge -> echo_server.js ->
//! result back, then checks no process carrying the test's marker is left.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ukload::framing::Framing;
use ukload::jsonrpc::PingInfo;
use ukload::mcp::{
    Content, McpError, Session, SessionOptions, Transport, LATEST_LEGACY_PROTOCOL_VERSION,
};
use ukload::vsock::{self, Endpoint};

/// Deadline of an ordinary tool call (generous: the machine is shared).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

use common::echo_server;

fn argv(extra: &[&str]) -> Vec<String> {
    let mut argv = vec!["node".to_string(), echo_server().display().to_string()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

fn start_with(extra: &[&str], options: SessionOptions) -> Session {
    let transport = Transport::stdio(&argv(extra), Framing::Line).expect("spawn echo_server.js");
    Session::initialize(transport, options).expect("initialize echo_server.js")
}

fn start_server(extra: &[&str]) -> Session {
    start_with(extra, SessionOptions::default())
}

/// Closes the session and checks the server was reaped and its process group is empty.
fn close_and_assert_reaped(session: Session) {
    let pid = session.server_pid().expect("stdio session has a pid");
    let outcome = session.close().expect("close");
    eprintln!("server pid {pid} closed: {outcome:?}");
    assert!(
        outcome.exit_status.is_some(),
        "server pid {pid} was not reaped: {outcome:?}"
    );
    assert_gone(pid);
}

fn assert_gone(pid: u32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    // SAFETY: signal 0 only checks whether the process group exists.
    let rc = unsafe { libc::kill(-(pid as libc::pid_t), 0) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        rc == -1 && errno == Some(libc::ESRCH),
        "process group {pid} still has members"
    );
}

fn rpc_error(e: McpError) -> (i64, String) {
    match e {
        McpError::Rpc { code, message, .. } => (code, message),
        other => panic!("expected a JSON-RPC error, got: {other}"),
    }
}

#[test]
fn test_echo_tool_execution() {
    require_node!();
    let session = start_server(&[]);
    assert_eq!(session.protocol_version(), LATEST_LEGACY_PROTOCOL_VERSION);
    assert_eq!(session.server().server_name, "ukload-echo-server");

    let result = session
        .call_tool("echo", json!({"message": "hi"}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(
        result.content,
        vec![Content::Text {
            text: "Echo: hi".into()
        }]
    );
    assert_eq!(result.text(), "Echo: hi");
    assert!(!result.is_error);
    assert_eq!(result.structured, None);

    // Unicode and JSON-special characters survive the round trip.
    let msg = "héllo \"quoted\"\n\ttab ✓";
    let result = session
        .call_tool("echo", json!({ "message": msg }), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(result.text(), format!("Echo: {msg}"));
    close_and_assert_reaped(session);
}

#[test]
fn test_add_tool_execution() {
    require_node!();
    let session = start_server(&[]);
    let result = session
        .call_tool("add", json!({"a": 2, "b": 3}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(result.text(), "2 + 3 = 5");
    assert_eq!(result.structured, Some(json!({"sum": 5})));
    assert!(!result.is_error);

    let result = session
        .call_tool("add", json!({"a": 2.5, "b": -1}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(result.text(), "2.5 + -1 = 1.5");
    assert_eq!(result.structured, Some(json!({"sum": 1.5})));
    close_and_assert_reaped(session);
}

#[test]
fn test_error_handling() {
    require_node!();
    let session = start_server(&[]);
    // A tool failure is a result with isError, not a JSON-RPC error.
    let result = session
        .call_tool(
            "error_test",
            json!({"error_message": "disk on fire"}),
            CALL_TIMEOUT,
        )
        .unwrap();
    assert!(result.is_error);
    assert_eq!(result.text(), "disk on fire");

    let result = session
        .call_tool("error_test", Value::Null, CALL_TIMEOUT)
        .unwrap();
    assert!(result.is_error);
    assert_eq!(result.text(), "Intentional error for testing");

    // Unknown methods are JSON-RPC errors -32601, and the session survives them.
    let (code, message) = rpc_error(
        session
            .request("resources/list", None, CALL_TIMEOUT)
            .unwrap_err(),
    );
    assert_eq!(code, -32601);
    assert_eq!(message, "Method not found: resources/list");
    assert!(session.ping(CALL_TIMEOUT).is_ok());
    close_and_assert_reaped(session);
}

/// The text of a tool result that must be a tool execution error.
fn tool_error_text(session: &Session, tool: &str, args: Value) -> String {
    let r = session
        .call_tool(tool, args.clone(), CALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("{tool} {args}: {e}"));
    assert!(r.is_error, "{tool} {args}: not an error: {:?}", r.raw);
    r.text()
}

#[test]
fn test_invalid_parameters_are_tool_execution_errors() {
    require_node!();
    let session = start_server(&[]);
    // SEP-1303 (2025-11-25): arguments that fail the input schema are a tool
    // result with isError true naming the argument, not JSON-RPC -32602.
    assert_eq!(
        tool_error_text(&session, "add", json!({"a": 2})),
        "Invalid arguments for tool add: missing required argument 'b'"
    );
    assert_eq!(
        tool_error_text(&session, "add", json!({"a": "2", "b": 3})),
        "Invalid arguments for tool add: argument 'a' must be a number, got string"
    );
    assert!(tool_error_text(&session, "echo", json!({})).contains("'message'"));
    assert!(tool_error_text(&session, "echo", json!({"message": 1})).contains("'message'"));
    // Arguments that are not an object are malformed params: still -32602.
    let err = session
        .call_tool("echo", json!(["x"]), CALL_TIMEOUT)
        .unwrap_err();
    assert_eq!(err.rpc_code(), Some(-32602), "{err}");
    close_and_assert_reaped(session);
}

#[test]
fn test_unknown_tool() {
    require_node!();
    let session = start_server(&[]);
    let (code, message) = rpc_error(
        session
            .call_tool("no_such_tool", json!({}), CALL_TIMEOUT)
            .unwrap_err(),
    );
    assert_eq!(code, -32602);
    assert_eq!(message, "Unknown tool: no_such_tool");
    // Still usable afterwards.
    assert_eq!(
        session
            .call_tool("echo", json!({"message": "after"}), CALL_TIMEOUT)
            .unwrap()
            .text(),
        "Echo: after"
    );
    close_and_assert_reaped(session);
}

#[test]
fn test_concurrent_tool_executions() {
    require_node!();
    const CALLS: usize = 100;
    const DELAY_MS: u64 = 200;
    let session = Arc::new(start_server(&[]));
    let start = Instant::now();
    let handles: Vec<_> = (0..CALLS)
        .map(|i| {
            let session = Arc::clone(&session);
            std::thread::spawn(move || {
                let msg = format!("call-{i}");
                let result = session
                    .call_tool(
                        "echo",
                        json!({"message": msg, "delay_ms": DELAY_MS}),
                        Duration::from_secs(30),
                    )
                    .unwrap_or_else(|e| panic!("call {i}: {e}"));
                assert_eq!(
                    result.text(),
                    format!("Echo: {msg}"),
                    "call {i} got someone else's answer"
                );
            })
        })
        .collect();
    for h in handles {
        h.join().expect("caller thread panicked");
    }
    let elapsed = start.elapsed();
    // One after another would take CALLS * DELAY_MS = 20 s; in flight together, about DELAY_MS.
    assert!(
        elapsed < Duration::from_millis(CALLS as u64 * DELAY_MS / 2),
        "100 delayed calls took {elapsed:?}: they were not in flight together"
    );
    let stats = session.stats();
    assert_eq!(stats.requests_sent, 1 + CALLS as u64);
    assert_eq!(stats.late_replies_dropped + stats.unknown_replies, 0);
    let session = Arc::try_unwrap(session).ok().expect("all callers finished");
    close_and_assert_reaped(session);
}

#[test]
fn test_tool_execution_timeout() {
    require_node!();
    let session = start_server(&[]);
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let err = session
        .call_tool(
            "echo",
            json!({"message": "slow", "delay_ms": 5000}),
            deadline,
        )
        .unwrap_err();
    let waited = start.elapsed();
    assert!(err.is_timeout(), "expected a timeout, got: {err}");
    assert!(
        waited >= deadline && waited < Duration::from_secs(4),
        "timed out after {waited:?}"
    );
    let McpError::Timeout { method, id, .. } = &err else {
        unreachable!()
    };
    assert_eq!(method, "tools/call");
    assert_eq!(session.stats().cancellations_sent, 1);

    // The session stays usable.
    let result = session
        .call_tool("echo", json!({"message": "next"}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(result.text(), "Echo: next");
    assert!(session.is_alive());

    // The server received the cancellation for that request id (it logs it on stderr).
    let expected = format!("cancelled request {id}");
    let wait_until = Instant::now() + CALL_TIMEOUT;
    while !session
        .server_stderr()
        .unwrap_or_default()
        .contains(&expected)
    {
        assert!(
            Instant::now() < wait_until,
            "server never logged {expected:?}; stderr:\n{}",
            session.server_stderr().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A server-wide --delay-ms makes every call slow the same way.
    close_and_assert_reaped(session);
    let session = start_server(&["--delay-ms", "3000"]);
    assert!(session
        .call_tool("get_timestamp", json!({}), deadline)
        .unwrap_err()
        .is_timeout());
    close_and_assert_reaped(session);
}

#[test]
fn test_list_tools() {
    require_node!();
    // One tool per page: the client must follow nextCursor through four pages.
    let session = start_server(&["--page-size", "1"]);
    let tools = session.list_tools().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["echo", "add", "get_timestamp", "error_test"]);
    assert_eq!(
        session.stats().requests_sent,
        1 + 4,
        "initialize + one request per page"
    );

    let add = &tools[1];
    assert_eq!(add.description.as_deref(), Some("Adds two numbers"));
    assert_eq!(add.input_schema["required"], json!(["a", "b"]));
    assert_eq!(add.input_schema["properties"]["a"]["type"], "number");
    assert_eq!(
        add.output_schema.as_ref().unwrap()["properties"]["sum"]["type"],
        "number"
    );
    assert_eq!(tools[0].input_schema["required"], json!(["message"]));
    assert!(tools[3].input_schema.get("required").is_none());
    close_and_assert_reaped(session);
}

#[test]
fn test_protocol_version_negotiation() {
    require_node!();
    for version in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        let options = SessionOptions {
            protocol_version: version.to_string(),
            ..SessionOptions::default()
        };
        let session = start_with(&[], options);
        assert_eq!(session.protocol_version(), version);
        assert_eq!(
            session
                .call_tool("echo", json!({"message": version}), CALL_TIMEOUT)
                .unwrap()
                .text(),
            format!("Echo: {version}")
        );
        close_and_assert_reaped(session);
    }
    // A revision the server does not know: it answers with its newest, which we accept.
    let options = SessionOptions {
        protocol_version: "2099-01-01".to_string(),
        ..SessionOptions::default()
    };
    let session = start_with(&[], options);
    assert_eq!(session.protocol_version(), LATEST_LEGACY_PROTOCOL_VERSION);
    close_and_assert_reaped(session);
}

/// Bound on anything that must happen "soon" on a shared, noisy machine.
const SOON: Duration = Duration::from_secs(15);
/// Pause between polls of the process table or of a not-yet-listening guest.
const POLL: Duration = Duration::from_millis(20);

/// A unique `UKLOAD_RUN` marker for one test's processes.
fn unique_marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("mcpit-{tag}-{}-{nanos}", std::process::id())
}

/// The real `ukload-guest` bridging to echo_server.js, marked with `marker`;
/// killed and reaped on drop whatever the test did (and anything else carrying
/// the marker killed by pid).
struct BridgedGuest {
    child: Option<Child>,
    sock: PathBuf,
    marker: String,
    _dir: common::TempDir,
}

impl BridgedGuest {
    fn start(marker: &str) -> BridgedGuest {
        BridgedGuest::start_with(marker, &format!("node {}", echo_server().display()))
    }

    fn start_with(marker: &str, server: &str) -> BridgedGuest {
        let dir = common::TempDir::new("bridge");
        let sock = dir.path().join("g.sock");
        let child = Command::new(common::guest_bin())
            .args(["--listen", &format!("uds:{}", sock.display())])
            .args(["--mcp-server", server])
            .env(ukload::ENV_RUN, marker)
            .env_remove(ukload::ENV_CID)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning ukload-guest");
        BridgedGuest {
            child: Some(child),
            sock,
            marker: marker.to_string(),
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("guest running").id()
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Hybrid {
            path: self.sock.clone(),
            port: ukload::DEFAULT_PORT,
        }
    }

    /// Connects through the hybrid handshake, retrying while the agent is not up.
    fn connect(&self) -> vsock::Stream {
        let deadline = Instant::now() + SOON;
        loop {
            match vsock::connect(&self.endpoint(), Duration::from_secs(2)) {
                Ok(s) => return s,
                Err(e) if e.is_retryable() && Instant::now() < deadline => std::thread::sleep(POLL),
                Err(e) => panic!("connecting to the guest: {e}"),
            }
        }
    }

    fn session(&self) -> Session {
        let transport = Transport::vsock_stream(self.connect(), Framing::Line, "bridged guest")
            .expect("transport over the guest's stream");
        Session::initialize(transport, SessionOptions::default())
            .expect("initialize through the bridge")
    }

    /// Processes carrying the marker other than the guest itself.
    fn servers(&self) -> Vec<(i32, String)> {
        let guest = self.child.as_ref().map(|c| c.id() as i32);
        common::run_processes(&self.marker)
            .into_iter()
            .filter(|(pid, _)| Some(*pid) != guest)
            .collect()
    }

    fn wait_servers(&self, want: usize) -> Vec<(i32, String)> {
        let deadline = Instant::now() + SOON;
        loop {
            let found = self.servers();
            if found.len() == want || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `sig` to the guest and reaps it.
    fn kill(&mut self, sig: libc::c_int) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("guest running");
        // SAFETY: signalling our own child by pid; it is not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(status) = child.try_wait().expect("waitpid(guest)") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "guest did not exit after signal {sig}"
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for BridgedGuest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        common::kill_run(&self.marker);
    }
}

fn status_info(session: &Session) -> PingInfo {
    let raw = session
        .request(ukload::jsonrpc::STATUS_METHOD, None, CALL_TIMEOUT)
        .expect("ukload/status");
    serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("ukload/status result {raw} is not PingInfo: {e}"))
}

#[test]
fn test_full_unikernel_mcp_integration() {
    require_node!();
    let marker = unique_marker("full");
    let mut guest = BridgedGuest::start(&marker);

    // A probe-style connection that only asks for the status is answered by
    // the agent and starts no server.
    let probe = {
        let mut stream = guest.connect();
        ukload::jsonrpc::call(
            &mut stream,
            ukload::framing::Framing::Line,
            1,
            ukload::jsonrpc::STATUS_METHOD,
            json!({}),
            Instant::now() + CALL_TIMEOUT,
        )
        .expect("probe status")
    };
    let probe: PingInfo = serde_json::from_value(probe).expect("probe status is PingInfo");
    assert_eq!(probe.pid, guest.pid());
    assert!(
        guest.servers().is_empty(),
        "a status-only connection started a server"
    );

    let session = guest.session();
    assert_eq!(session.server().server_name, "ukload-echo-server");
    assert_eq!(session.protocol_version(), LATEST_LEGACY_PROTOCOL_VERSION);

    // The connection got its own echo_server.js, a child of the guest.
    let servers = guest.wait_servers(1);
    assert_eq!(servers.len(), 1, "expected one bridged server: {servers:?}");
    assert!(servers[0].1.contains("echo_server.js"), "{servers:?}");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", servers[0].0)).unwrap();
    let ppid: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, guest.pid(), "the server is not the guest's child");

    let tools = session.list_tools().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["echo", "add", "get_timestamp", "error_test"]);

    let echo = session
        .call_tool("echo", json!({"message": "hi"}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(echo.text(), "Echo: hi");
    assert!(!echo.is_error);
    let add = session
        .call_tool("add", json!({"a": 2, "b": 3}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(add.text(), "2 + 3 = 5");
    assert_eq!(add.structured, Some(json!({"sum": 5})));
    let err = session
        .call_tool("no_such_tool", json!({}), CALL_TIMEOUT)
        .unwrap_err();
    assert_eq!(err.rpc_code(), Some(-32602), "{err}");

    // MCP ping goes to the server ({}) in the legacy era; ukload/status is the agent's.
    if session.era() == ukload::mcp::Era::Legacy {
        assert_eq!(
            session.request("ping", None, CALL_TIMEOUT).unwrap(),
            json!({})
        );
    }
    let info = status_info(&session);
    assert_eq!(info.pid, guest.pid());
    assert_eq!(info.port, ukload::DEFAULT_PORT);
    assert!(info.agent.starts_with("ukload-guest"), "{info:?}");
    assert!(info.now_mono_ns >= info.ready_mono_ns);

    // Closing the connection ends and reaps its server.
    session.close().expect("close");
    let left = guest.wait_servers(0);
    assert!(
        left.is_empty(),
        "server not reaped after the connection closed: {left:?}"
    );

    let status = guest.kill(libc::SIGTERM);
    eprintln!("guest ended: {status}");
    let left = common::wait_no_processes(&marker, SOON);
    assert!(
        left.is_empty(),
        "processes left with marker {marker}: {left:?}"
    );
}

/// `tests/fixtures/mcp/hostile_server.sh stubborn`: a server that, once its
/// stdin closes, ignores SIGTERM and never exits (POSIX sh, no Node.js needed).
/// Its stderr goes to /dev/null: writing to a stderr pipe whose reader died with
/// the guest would kill it with SIGPIPE and hide a missing parent-death signal.
fn stubborn_server() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/hostile_server.sh");
    format!(
        "/bin/sh -c 'exec /bin/sh \"$0\" stubborn 2>/dev/null' {}",
        script.display()
    )
}

#[test]
fn test_bridged_server_dies_with_the_guest() {
    // A server that outlives its stdin: only the kernel's parent-death signal
    // can end it when the guest is SIGKILLed and cleans nothing up.
    let marker = unique_marker("pdeath");
    let mut guest = BridgedGuest::start_with(&marker, &stubborn_server());
    let session = guest.session();
    assert_eq!(session.server().server_name, "hostile");
    assert_eq!(
        session
            .call_tool("anything", json!({}), CALL_TIMEOUT)
            .unwrap()
            .text(),
        "ok"
    );
    assert_eq!(guest.wait_servers(1).len(), 1);

    guest.kill(libc::SIGKILL);
    let left = common::wait_no_processes(&marker, SOON);
    assert!(
        left.is_empty(),
        "bridged server orphaned after SIGKILL of the guest: {left:?}"
    );

    // The session learns the connection is gone (no hang until a deadline).
    let start = Instant::now();
    let err = session.call_tool("anything", json!({}), SOON).unwrap_err();
    assert!(
        matches!(err, McpError::Closed { .. }),
        "expected Closed, got: {err}"
    );
    assert!(start.elapsed() < SOON);
}

#[test]
fn test_bridged_stubborn_server_is_killed_when_the_connection_closes() {
    let marker = unique_marker("stubborn");
    let guest = BridgedGuest::start_with(&marker, &stubborn_server());
    let session = guest.session();
    assert_eq!(guest.wait_servers(1).len(), 1);
    session.close().expect("close");
    // stdin closed, SIGTERM ignored: the bridge must escalate to SIGKILL and reap.
    let left = guest.wait_servers(0);
    assert!(
        left.is_empty(),
        "stubborn server survived its connection: {left:?}"
    );
    // The guest still serves new connections afterwards.
    let again = guest.session();
    assert_eq!(
        again
            .call_tool("anything", json!({}), CALL_TIMEOUT)
            .unwrap()
            .text(),
        "ok"
    );
}

#[test]
fn test_bridge_relays_length_framing_and_answers_ping_before_any_server() {
    require_node!();
    let marker = unique_marker("length");
    let dir = common::TempDir::new("bridge-len");
    let sock = dir.path().join("g.sock");
    let server = format!("node {}", echo_server().display());
    let mut child = Command::new(common::guest_bin())
        .args(["--listen", &format!("uds:{}", sock.display())])
        .args(["--framing", "length", "--mcp-server", &server])
        .env(ukload::ENV_RUN, &marker)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning ukload-guest");
    let guest = BridgedGuest {
        child: None,
        sock,
        marker: marker.clone(),
        _dir: dir,
    };
    let transport =
        Transport::vsock_stream(guest.connect(), Framing::Length, "guest (length)").unwrap();
    let session = Session::initialize(transport, SessionOptions::default()).unwrap();
    let echo = session
        .call_tool("echo", json!({"message": "framed"}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(echo.text(), "Echo: framed");
    assert_eq!(status_info(&session).pid, child.id());
    session.close().unwrap();
    // `shutdown` on a new connection stops the agent; it exits 0 and leaves nothing.
    let mut stream = guest.connect();
    ukload::jsonrpc::call(
        &mut stream,
        ukload::framing::Framing::Length,
        1,
        "shutdown",
        json!({}),
        Instant::now() + CALL_TIMEOUT,
    )
    .expect("shutdown");
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "guest did not stop after shutdown"
        );
        std::thread::sleep(POLL);
    };
    assert!(status.success(), "guest exited with {status}");
    let left = common::wait_no_processes(&marker, SOON);
    assert!(
        left.is_empty(),
        "processes left with marker {marker}: {left:?}"
    );
}

#[test]
fn test_bridged_server_exit_is_named_to_the_host_and_is_reaped() {
    // hostile_server.sh exit-mid-call: answers initialize, exits 3 on tools/call.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/hostile_server.sh");
    let marker = unique_marker("exit");
    let guest = BridgedGuest::start_with(
        &marker,
        &format!("/bin/sh {} exit-mid-call", script.display()),
    );
    let session = guest.session();
    let start = Instant::now();
    let err = session.call_tool("anything", json!({}), SOON).unwrap_err();
    // The bridge answers the call the server left unanswered, naming why.
    match &err {
        McpError::Rpc { code, message, .. } => {
            assert_eq!(*code, ukload::jsonrpc::INTERNAL_ERROR, "{err}");
            assert!(
                message.contains("exited") && message.contains("exit status: 3"),
                "{message}"
            );
        }
        other => panic!("expected the bridge's error naming the exit, got: {other}"),
    }
    assert!(start.elapsed() < SOON, "the host waited for its deadline");
    let left = guest.wait_servers(0);
    assert!(left.is_empty(), "exited server not reaped: {left:?}");
    // The agent keeps serving: a new connection gets a fresh server.
    let again = guest.session();
    assert_eq!(again.server().server_name, "hostile");
}

/// `ukload run --mcp-server` (process launcher) with a server that never
/// writes anything: the guest is given the tool call's deadline, ends the
/// server when it passes and the report names why (not the client's bare
/// timeout, which would come later); nothing of the run is left.
#[test]
fn test_run_names_a_bridged_server_that_never_answers() {
    let _slot = common::shared_slot();
    let dir = common::TempDir::new("mute-bridge");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/hostile_server.sh");
    let server = format!("/bin/sh {} mute", script.display());
    let start = Instant::now();
    let (out, doc) = common::run_report(
        dir.path(),
        1,
        &[
            "--mcp-server",
            &server,
            "--tool-call",
            r#"echo:{"message":"hi"}"#,
            "--tool-timeout-ms",
            "2000",
            "--max-boot-ms",
            "60000",
            "--cid-range",
            &common::cid_block(1),
        ],
        Duration::from_secs(60),
    );
    assert_ne!(out.status.code(), Some(0), "a silent server passed");
    let inst = &common::instances(&doc)[0];
    let err = inst["tool_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("never answered") && err.contains("within 2s"),
        "{inst}"
    );
    assert!(!err.contains("initialize: initialize"), "{err}");
    // The report says which server the instances ran.
    let want = json!(["/bin/sh", script.to_str().unwrap(), "mute"]);
    assert_eq!(doc["config"]["mcp_server"], want);
    assert!(start.elapsed() < Duration::from_secs(30));
    common::assert_run_gone(doc["run_id"].as_str().unwrap(), Duration::from_secs(5));
}

#[test]
fn test_bridged_concurrent_calls_return_to_their_callers() {
    require_node!();
    const CALLS: usize = 50;
    const DELAY_MS: u64 = 200;
    let marker = unique_marker("conc");
    let guest = BridgedGuest::start(&marker);
    let session = Arc::new(guest.session());
    let start = Instant::now();
    let handles: Vec<_> = (0..CALLS)
        .map(|i| {
            let session = Arc::clone(&session);
            std::thread::spawn(move || {
                let msg = format!("bridged-{i}");
                let r = session
                    .call_tool(
                        "echo",
                        json!({"message": msg, "delay_ms": DELAY_MS}),
                        Duration::from_secs(30),
                    )
                    .unwrap_or_else(|e| panic!("call {i}: {e}"));
                assert_eq!(
                    r.text(),
                    format!("Echo: {msg}"),
                    "call {i} got another's answer"
                );
            })
        })
        .collect();
    for h in handles {
        h.join().expect("caller thread panicked");
    }
    // One after another would take CALLS * DELAY_MS = 10 s.
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(CALLS as u64 * DELAY_MS / 2),
        "{CALLS} delayed calls through the bridge took {elapsed:?}: not in flight together"
    );
    // Exactly one server for the one connection.
    assert_eq!(guest.wait_servers(1).len(), 1);
}

/// The seed ran these tests with `-- --ignored`; here they run by default,
/// and these ignored twins keep the seed's commands working
/// (`cargo test --test real_mcp_execution_tests -- --ignored --nocapture`,
/// or one of them by name).
mod ignored {
    macro_rules! seed_twins {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            #[ignore = "the seed's `-- --ignored` invocation; the same test runs by default"]
            fn $name() {
                super::$name()
            }
        )*};
    }
    seed_twins!(
        test_echo_tool_execution,
        test_add_tool_execution,
        test_error_handling,
        test_invalid_parameters_are_tool_execution_errors,
        test_unknown_tool,
        test_concurrent_tool_executions,
        test_tool_execution_timeout,
        test_list_tools,
        test_full_unikernel_mcp_integration,
    );
}
