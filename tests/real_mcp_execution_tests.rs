//! Real MCP tool execution: `examples/test_mcp_servers/echo_server.js` over stdio
//! through ukload's client, asserting exactly what comes back.
//!
//! Needs Node.js; without `node` on PATH each test prints "skipped: node not
//! found" and passes. The seed ran these with `-- --ignored`; they now run by
//! default (`cargo test --test real_mcp_execution_tests`), and `-- --ignored`
//! still works (it simply selects nothing extra).
//! `test_full_unikernel_mcp_integration` (launcher -> guest -> vsock -> bridge)
//! is added with the guest bridge.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ukload::mcp::{
    Content, McpError, McpFraming, Session, SessionOptions, Transport, LATEST_PROTOCOL_VERSION,
};

/// Deadline of an ordinary tool call (generous: the machine is shared).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

macro_rules! require_node {
    () => {
        if !node_available() {
            eprintln!("skipped: node not found");
            return;
        }
    };
}

fn echo_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/test_mcp_servers/echo_server.js")
}

fn argv(extra: &[&str]) -> Vec<String> {
    let mut argv = vec!["node".to_string(), echo_server().display().to_string()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

fn start_with(extra: &[&str], options: SessionOptions) -> Session {
    let transport = Transport::stdio(&argv(extra), McpFraming::Line).expect("spawn echo_server.js");
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
    assert_eq!(session.protocol_version(), LATEST_PROTOCOL_VERSION);
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

#[test]
fn test_invalid_parameters() {
    require_node!();
    let session = start_server(&[]);
    let (code, message) = rpc_error(
        session
            .call_tool("add", json!({"a": 2}), CALL_TIMEOUT)
            .unwrap_err(),
    );
    assert_eq!(code, -32602);
    assert_eq!(
        message,
        "Invalid arguments for tool add: missing required argument 'b'"
    );

    let (code, message) = rpc_error(
        session
            .call_tool("add", json!({"a": "2", "b": 3}), CALL_TIMEOUT)
            .unwrap_err(),
    );
    assert_eq!(code, -32602);
    assert_eq!(
        message,
        "Invalid arguments for tool add: argument 'a' must be a number, got string"
    );

    let (code, message) = rpc_error(
        session
            .call_tool("echo", json!({}), CALL_TIMEOUT)
            .unwrap_err(),
    );
    assert_eq!(code, -32602);
    assert!(message.contains("'message'"), "{message}");

    let err = session
        .call_tool("echo", json!({"message": 1}), CALL_TIMEOUT)
        .unwrap_err();
    assert_eq!(err.rpc_code(), Some(-32602));
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
    assert_eq!(session.protocol_version(), LATEST_PROTOCOL_VERSION);
    close_and_assert_reaped(session);
}
