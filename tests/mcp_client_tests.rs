//! The MCP client against hostile and unusual servers: each failure must be a
//! clear error, never a hang or a panic, and the server must be reaped.
//!
//! Servers are `tests/fixtures/mcp/hostile_server.sh MODE` (POSIX sh + sed, no
//! Node.js needed) and an in-process server over a Unix socket pair.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ukload::framing::Framing;
use ukload::mcp::{self, McpError, Session, SessionOptions, SessionStats, Transport};

/// Upper bound for anything that must not hang (generous: shared, noisy machine).
const NO_HANG_BOUND: Duration = Duration::from_secs(15);
/// Deadline of calls that are expected to be answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/hostile_server.sh")
}

fn hostile_transport(mode: &str) -> Transport {
    let argv = vec![
        "/bin/sh".to_string(),
        fixture().display().to_string(),
        mode.to_string(),
    ];
    Transport::stdio(&argv, Framing::Line).expect("spawn hostile_server.sh")
}

fn hostile(mode: &str) -> Session {
    Session::initialize(hostile_transport(mode), SessionOptions::default())
        .expect("initialize hostile server")
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

fn close_and_assert_reaped(session: Session) -> mcp::CloseOutcome {
    let pid = session.server_pid().expect("stdio session has a pid");
    let outcome = session.close().expect("close");
    assert!(
        outcome.exit_status.is_some(),
        "pid {pid} not reaped: {outcome:?}"
    );
    assert_gone(pid);
    outcome
}

/// Polls `cond` on the session's stats until it holds or `NO_HANG_BOUND` passes.
fn wait_for_stats(session: &Session, what: &str, cond: impl Fn(&SessionStats) -> bool) {
    let deadline = Instant::now() + NO_HANG_BOUND;
    while !cond(&session.stats()) {
        assert!(
            Instant::now() < deadline,
            "never saw {what}: {:?}",
            session.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn garbage_on_stdout_is_a_protocol_error_and_kills_the_session() {
    let session = hostile("garbage");
    let start = Instant::now();
    let err = session
        .call_tool("echo", json!({"message": "x"}), CALL_TIMEOUT)
        .unwrap_err();
    assert!(start.elapsed() < NO_HANG_BOUND);
    let McpError::Protocol { detail, .. } = &err else {
        panic!("expected a protocol error, got: {err}")
    };
    assert!(
        detail.contains("not valid JSON") && detail.contains("this is not JSON-RPC"),
        "{detail}"
    );
    assert!(!session.is_alive());
    // Later calls fail at once with the same reason.
    let start = Instant::now();
    let again = session.ping(CALL_TIMEOUT).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(again.to_string(), err.to_string());
    close_and_assert_reaped(session);
}

#[test]
fn reply_with_unknown_id_times_out_naming_the_stray_id() {
    let session = hostile("unknown-id");
    let err = session
        .call_tool("echo", json!({"message": "x"}), Duration::from_millis(500))
        .unwrap_err();
    let McpError::Timeout { id, hint, .. } = &err else {
        panic!("expected a timeout, got: {err}")
    };
    let hint = hint.as_deref().unwrap_or_default();
    assert!(
        hint.contains("never issued") && hint.contains(&(id + 1000).to_string()),
        "{err}"
    );
    assert_eq!(session.stats().unknown_replies, 1);
    // The stray reply did not break the session.
    assert!(session.is_alive());
    session
        .ping(CALL_TIMEOUT)
        .expect("ping after a stray reply");
    close_and_assert_reaped(session);
}

#[test]
fn server_exiting_mid_call_fails_the_call_with_its_stderr_and_status() {
    let session = hostile("exit-mid-call");
    let start = Instant::now();
    let err = session
        .call_tool("echo", json!({"message": "x"}), Duration::from_secs(30))
        .unwrap_err();
    assert!(start.elapsed() < NO_HANG_BOUND);
    let McpError::Closed { reason, .. } = &err else {
        panic!("expected closed, got: {err}")
    };
    assert!(reason.contains("closed its output"), "{reason}");
    assert!(
        reason.contains("crashing now"),
        "stderr tail missing: {reason}"
    );
    assert!(
        reason.contains("exit status: 3"),
        "exit status missing: {reason}"
    );
    assert!(!session.is_alive());
    let outcome = close_and_assert_reaped(session);
    assert_eq!(outcome.exit_status.unwrap().code(), Some(3));
    assert_eq!(outcome.signal_sent, None);
}

#[test]
fn a_20_mib_line_is_refused_without_buffering_it() {
    let session = hostile("huge-line");
    let start = Instant::now();
    let err = session
        .call_tool("echo", json!({"message": "x"}), Duration::from_secs(30))
        .unwrap_err();
    assert!(start.elapsed() < NO_HANG_BOUND);
    let McpError::Protocol { detail, .. } = &err else {
        panic!("expected a protocol error, got: {err}")
    };
    assert!(
        detail.contains(&format!("exceeds the {}-byte limit", mcp::MAX_FRAME_LEN)),
        "{detail}"
    );
    // The server is stuck writing the rest of its line; close must still end it.
    let start = Instant::now();
    close_and_assert_reaped(session);
    assert!(start.elapsed() < NO_HANG_BOUND);
}

#[test]
fn late_reply_after_timeout_is_dropped_and_the_session_goes_on() {
    let session = hostile("late-reply");
    let err = session
        .call_tool("echo", json!({"message": "x"}), Duration::from_millis(200))
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(session.stats().cancellations_sent, 1);
    // This server ignores the cancellation and answers after 1 s anyway.
    wait_for_stats(&session, "the late reply", |s| s.late_replies_dropped == 1);
    let result = session
        .call_tool("echo", json!({"message": "x"}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(result.text(), "late");
    assert_eq!(session.stats().unknown_replies, 0);
    close_and_assert_reaped(session);
}

#[test]
fn server_ping_is_answered_and_notifications_are_tolerated() {
    let session = hostile("ping-client");
    wait_for_stats(&session, "the server's ping", |s| {
        s.server_requests_answered == 1 && s.notifications_received == 1
    });
    // The server only says "pong seen" if our reply to its ping reached it.
    let result = session
        .call_tool("echo", json!({"message": "x"}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(result.text(), "pong seen");
    close_and_assert_reaped(session);
}

#[test]
fn unsupported_protocol_version_is_refused_by_name_and_the_server_reaped() {
    let transport = hostile_transport("version:1999-01-01");
    let pid = transport.pid().unwrap();
    let err = Session::initialize(transport, SessionOptions::default())
        .err()
        .expect("must refuse");
    let McpError::UnsupportedVersion { got, offered, .. } = &err else {
        panic!("got: {err}")
    };
    assert_eq!(got, "1999-01-01");
    assert_eq!(offered, mcp::LATEST_LEGACY_PROTOCOL_VERSION);
    assert!(err.to_string().contains("\"1999-01-01\""), "{err}");
    assert_gone(pid);
}

#[test]
fn older_protocol_version_chosen_by_the_server_is_accepted() {
    let session = hostile("version:2024-11-05");
    assert_eq!(session.protocol_version(), "2024-11-05");
    assert_eq!(
        session
            .call_tool("echo", json!({}), CALL_TIMEOUT)
            .unwrap()
            .text(),
        "ok"
    );
    close_and_assert_reaped(session);
}

#[test]
fn server_that_ignores_sigterm_is_killed_on_close() {
    let session = hostile("stubborn");
    let start = Instant::now();
    let outcome = close_and_assert_reaped(session);
    assert_eq!(outcome.signal_sent, Some(libc::SIGKILL));
    assert!(start.elapsed() < NO_HANG_BOUND);
}

#[test]
fn closing_fails_calls_in_flight_promptly() {
    let session = Arc::new(hostile("late-reply"));
    let caller = {
        let session = Arc::clone(&session);
        std::thread::spawn(move || {
            let start = Instant::now();
            (
                session.call_tool("echo", json!({"message": "x"}), Duration::from_secs(60)),
                start.elapsed(),
            )
        })
    };
    wait_for_stats(&session, "the call being sent", |s| s.requests_sent == 2);
    let pid = session.server_pid().unwrap();
    session.close().unwrap();
    let (result, waited) = caller.join().unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(&err, McpError::Closed { reason, .. } if reason.contains("session was closed")),
        "{err}"
    );
    assert!(waited < NO_HANG_BOUND);
    assert_gone(pid);
}

#[test]
fn server_that_dies_before_initialize_gives_its_stderr() {
    let argv: Vec<String> = [
        "/bin/sh",
        "-c",
        "echo 'cannot start: no config' >&2; exit 1",
    ]
    .map(String::from)
    .to_vec();
    let transport = Transport::stdio(&argv, Framing::Line).unwrap();
    let pid = transport.pid().unwrap();
    let start = Instant::now();
    let err = Session::initialize(transport, SessionOptions::default())
        .err()
        .expect("must fail");
    assert!(start.elapsed() < NO_HANG_BOUND);
    assert!(err.to_string().contains("cannot start: no config"), "{err}");
    assert_gone(pid);
}

#[test]
fn missing_server_binary_is_an_io_error_naming_it() {
    let err = Transport::stdio(&["/nonexistent/mcp-server".to_string()], Framing::Line)
        .err()
        .unwrap();
    assert!(matches!(err, McpError::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/mcp-server"), "{err}");
}

/// A server thread speaking the seed's length framing, answering with the built-in tools.
fn builtin_server(mut stream: UnixStream) {
    loop {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).is_err() {
            return;
        }
        let mut payload = vec![0u8; u32::from_le_bytes(prefix) as usize];
        if stream.read_exact(&mut payload).is_err() {
            return;
        }
        if let Some(reply) = mcp::server::handle_payload(&payload) {
            let bytes = serde_json::to_vec(&reply).unwrap();
            let mut frame = (bytes.len() as u32).to_le_bytes().to_vec();
            frame.extend(bytes);
            if stream.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

#[test]
fn length_framed_session_over_a_unix_socket_runs_the_builtin_tools() {
    let (client, server) = UnixStream::pair().unwrap();
    let server_thread = std::thread::spawn(move || builtin_server(server));
    let transport =
        Transport::unix_stream(client, Framing::Length, "in-process builtin server").unwrap();
    let session = Session::initialize(transport, SessionOptions::default()).unwrap();
    assert_eq!(session.server().server_name, mcp::server::SERVER_NAME);
    assert_eq!(session.server_pid(), None);

    let names: Vec<String> = session
        .list_tools()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["echo", "add", "get_timestamp", "error_test"]);
    assert_eq!(
        session
            .call_tool("echo", json!({"message": "hi"}), CALL_TIMEOUT)
            .unwrap()
            .text(),
        "Echo: hi"
    );
    let add = session
        .call_tool("add", json!({"a": 2, "b": 3}), CALL_TIMEOUT)
        .unwrap();
    assert_eq!(
        (add.text(), add.structured),
        ("2 + 3 = 5".to_string(), Some(json!({"sum": 5})))
    );
    assert!(
        session
            .call_tool("error_test", Value::Null, CALL_TIMEOUT)
            .unwrap()
            .is_error
    );
    assert_eq!(
        session
            .call_tool("nope", json!({}), CALL_TIMEOUT)
            .unwrap_err()
            .rpc_code(),
        Some(-32602)
    );
    session.ping(CALL_TIMEOUT).unwrap();

    let outcome = session.close().unwrap();
    assert_eq!(outcome, mcp::CloseOutcome::default());
    // Shutting the socket down ends the server's loop.
    server_thread.join().unwrap();
}

#[test]
fn args_from_the_command_line_follow_the_tool_schema() {
    let add = &mcp::tools::builtin_tools()[1];
    let pairs: Vec<(String, String)> = ["a=2", "b=0.5"]
        .iter()
        .map(|s| mcp::parse_arg_pair(s).unwrap())
        .collect();
    let args = mcp::coerce_args(&add["inputSchema"], &pairs).unwrap();
    assert_eq!(args, json!({"a": 2, "b": 0.5}));
    let result = mcp::tools::call_builtin("add", &args).unwrap();
    assert_eq!(result["content"][0]["text"], "2 + 0.5 = 2.5");
    let echo = &mcp::tools::builtin_tools()[0];
    let args = mcp::coerce_args(&echo["inputSchema"], &[("message".into(), "42".into())]).unwrap();
    assert_eq!(args, json!({"message": "42"}));
}

/// How soon after the stop flag is set an interruptible call must give up.
const STOP_LATENCY: Duration = Duration::from_millis(100);
/// When the tests set the stop flag, after the call started.
const STOP_AFTER: Duration = Duration::from_millis(300);

/// Runs `f(stop)` while another thread sets `stop` after [`STOP_AFTER`];
/// returns `f`'s result and how long after the flag was set `f` returned.
fn with_stop_set_later<T: Send>(
    f: impl FnOnce(&std::sync::atomic::AtomicBool) -> T + Send,
) -> (T, Duration) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let setter = s.spawn(|| {
            std::thread::sleep(STOP_AFTER);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            Instant::now()
        });
        let out = f(&stop);
        let ended = Instant::now();
        let set_at = setter.join().unwrap();
        (out, ended.saturating_duration_since(set_at))
    })
}

#[test]
fn a_stop_flag_ends_a_silent_tool_call_within_100_ms_and_cancels_it() {
    let session = hostile("silent-call");
    let (res, late) = with_stop_set_later(|stop| {
        session.call_tool_interruptible(
            "echo",
            json!({"message": "x"}),
            Duration::from_secs(30),
            stop,
        )
    });
    let err = res.unwrap_err();
    assert!(err.is_interrupted(), "{err}");
    assert!(err.to_string().contains("interrupted by signal"), "{err}");
    assert!(late < STOP_LATENCY, "gave up {late:?} after the flag");
    assert_eq!(session.stats().cancellations_sent, 1);
    // Already set: later calls give up before sending anything.
    let stop = std::sync::atomic::AtomicBool::new(true);
    let sent = session.stats().requests_sent;
    let err = session
        .call_tool_interruptible("echo", json!({}), CALL_TIMEOUT, &stop)
        .unwrap_err();
    assert!(err.is_interrupted(), "{err}");
    assert_eq!(session.stats().requests_sent, sent);
    let pid = session.server_pid().unwrap();
    let start = Instant::now();
    session.abort().expect("abort");
    assert!(start.elapsed() < NO_HANG_BOUND);
    assert_gone(pid);
}

#[test]
fn a_stop_flag_ends_an_unanswered_initialize_within_100_ms_and_reaps_the_server() {
    let transport = hostile_transport("mute");
    let pid = transport.pid().expect("a stdio transport has a pid");
    let (res, late) = with_stop_set_later(|stop| {
        Session::initialize_interruptible(transport, SessionOptions::default(), stop)
    });
    let err = res.err().expect("initialize must not succeed");
    assert!(err.is_interrupted(), "{err}");
    assert!(
        err.to_string().starts_with("initialize: interrupted"),
        "{err}"
    );
    assert!(late < STOP_LATENCY, "gave up {late:?} after the flag");
    assert_gone(pid);
}
