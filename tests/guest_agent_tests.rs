//! The real `ukload-guest` binary as a host process behind a hybrid-vsock
//! Unix socket, driven the way the host's boot probe drives it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ukload::framing::{write_frame, FrameError, FrameReader, Framing};
use ukload::jsonrpc::{self, CallError, Message, PingInfo};
use ukload::vsock::{self, ConnectError, Endpoint, Stream};

/// Generous: debug builds on a shared 2-core machine.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between connect attempts while the agent is not up yet.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
const BOOT_DELAY_MS: u64 = 150;
const PORT: u32 = ukload::DEFAULT_PORT;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A running `ukload-guest` in its own temp dir; killed, reaped and
/// cleaned up on drop whatever the test did.
struct Guest {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    stdout: Option<std::process::ChildStdout>,
}

impl Guest {
    fn spawn(extra: &[&str]) -> Guest {
        let dir = std::env::temp_dir().join(format!(
            "ukload-gt-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("g.sock");
        let listen = format!("uds:{}", sock.display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_ukload-guest"))
            .args([
                "--listen",
                &listen,
                "--boot-delay-ms",
                &BOOT_DELAY_MS.to_string(),
            ])
            .args(["--cid", "42"])
            .args(extra)
            .env_remove(ukload::ENV_CID)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning ukload-guest");
        let stdout = child.stdout.take();
        Guest {
            child,
            dir,
            sock,
            stdout,
        }
    }

    fn endpoint(&self, port: u32) -> Endpoint {
        Endpoint::Hybrid {
            path: self.sock.clone(),
            port,
        }
    }

    /// Connects, retrying while the agent is not up yet, until a deadline.
    fn connect(&mut self) -> Stream {
        let deadline = Instant::now() + TEST_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "agent not reachable before the deadline");
            match vsock::connect(&self.endpoint(PORT), left) {
                Ok(s) => return s,
                Err(e) if e.is_retryable() => {
                    if let Some(status) = self.child.try_wait().unwrap() {
                        panic!("agent exited early with {status} ({e})");
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => panic!("connect failed for good: {e}"),
            }
        }
    }

    /// Waits for the process to exit, at most until `deadline`.
    fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    /// The ready line from stdout, read on a helper thread so that the
    /// wait is bounded.
    fn ready_line(&mut self) -> String {
        let stdout = self.stdout.take().expect("ready line read once");
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        rx.recv_timeout(TEST_DEADLINE)
            .expect("no ready line before the deadline")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn deadline() -> Instant {
    Instant::now() + TEST_DEADLINE
}

fn ping(stream: &mut Stream, framing: Framing) -> PingInfo {
    let v = jsonrpc::call(
        stream,
        framing,
        1,
        jsonrpc::STATUS_METHOD,
        json!({}),
        deadline(),
    )
    .expect("ukload/status");
    serde_json::from_value(v).expect("ukload/status result is a PingInfo")
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn ping_reports_cid_pid_and_boot_timestamps() {
    let mut g = Guest::spawn(&[]);
    let mut s = g.connect();
    let info = ping(&mut s, Framing::Line);
    assert_eq!(info.cid, Some(42));
    assert_eq!(info.pid, g.child.id());
    assert_eq!(info.port, PORT);
    assert!(info.agent.starts_with("ukload-guest"), "{}", info.agent);
    let boot = info.ready_mono_ns - info.started_mono_ns;
    assert!(
        boot >= BOOT_DELAY_MS * 1_000_000,
        "ready {boot} ns after start, boot delay is {BOOT_DELAY_MS} ms"
    );
    assert!(info.now_mono_ns >= info.ready_mono_ns);
    assert!(info.ready_boottime_ns > 0);
    // The stamps are CLOCK_MONOTONIC, comparable with ours.
    assert!(info.now_mono_ns <= ukload::clock::monotonic_ns());

    let line = g.ready_line();
    assert!(line.starts_with("ukload-guest: ready "), "{line:?}");
    assert_eq!(field(&line, "cid"), "42");
    assert_eq!(field(&line, "port"), PORT.to_string());
    assert_eq!(field(&line, "pid"), g.child.id().to_string());
    assert_eq!(field(&line, "mono_ns"), info.ready_mono_ns.to_string());
    assert_eq!(
        field(&line, "boottime_ns"),
        info.ready_boottime_ns.to_string()
    );
}

#[test]
fn connect_for_another_port_is_refused_and_the_right_port_still_works() {
    let mut g = Guest::spawn(&[]);
    let mut s = g.connect();
    match vsock::connect(&g.endpoint(PORT + 1), TEST_DEADLINE) {
        Err(ConnectError::HandshakeClosed { .. }) => {}
        Ok(_) => panic!("CONNECT to a port nobody serves was accepted"),
        Err(e) => panic!("expected the handshake to be closed, got {e}"),
    }
    assert_eq!(ping(&mut s, Framing::Line).cid, Some(42));
    let mut again = g.connect();
    assert_eq!(ping(&mut again, Framing::Line).pid, g.child.id());
}

#[test]
fn unknown_method_is_method_not_found() {
    let mut g = Guest::spawn(&[]);
    let mut s = g.connect();
    match jsonrpc::call(
        &mut s,
        Framing::Line,
        7,
        "resources/list",
        json!({}),
        deadline(),
    ) {
        Err(CallError::Rpc { code, message }) => {
            assert_eq!(code, jsonrpc::METHOD_NOT_FOUND);
            assert!(message.contains("resources/list"), "{message}");
        }
        other => panic!("expected -32601, got {other:?}"),
    }
}

#[test]
fn non_json_line_gets_parse_error_and_the_connection_still_answers() {
    let mut g = Guest::spawn(&[]);
    let s = g.connect();
    s.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    let mut reader = FrameReader::new(s, Framing::Line);
    reader.get_mut().write_all(b"this is not json\n").unwrap();
    match jsonrpc::parse(&reader.read_frame().unwrap()).unwrap() {
        Message::Error { id, code, .. } => {
            assert_eq!(id, Value::Null);
            assert_eq!(code, jsonrpc::PARSE_ERROR);
        }
        other => panic!("expected a parse error reply, got {other:?}"),
    }
    let v = jsonrpc::call_on(
        &mut reader,
        2,
        jsonrpc::STATUS_METHOD,
        json!({}),
        deadline(),
    )
    .unwrap();
    assert_eq!(v["cid"], 42);
}

#[test]
fn notifications_get_no_reply() {
    let mut g = Guest::spawn(&[]);
    let s = g.connect();
    s.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    let mut reader = FrameReader::new(s, Framing::Line);
    let note = jsonrpc::notification("notifications/initialized", json!({}));
    write_frame(reader.get_mut(), Framing::Line, &jsonrpc::to_bytes(&note)).unwrap();
    let req = jsonrpc::request(5, jsonrpc::STATUS_METHOD, json!({}));
    write_frame(reader.get_mut(), Framing::Line, &jsonrpc::to_bytes(&req)).unwrap();
    // The first reply must be the ping's: nothing was sent for the notification.
    let reply = jsonrpc::parse(&reader.read_frame().unwrap()).unwrap();
    assert_eq!(reply.id(), Some(&json!(5)), "{reply:?}");
}

#[test]
fn length_framing_works_end_to_end() {
    let mut g = Guest::spawn(&["--framing", "length"]);
    let mut s = g.connect();
    let info = ping(&mut s, Framing::Length);
    assert_eq!(info.cid, Some(42));
    match jsonrpc::call(&mut s, Framing::Length, 9, "nope", json!({}), deadline()) {
        Err(CallError::Rpc { code, .. }) => assert_eq!(code, jsonrpc::METHOD_NOT_FOUND),
        other => panic!("expected -32601, got {other:?}"),
    }
}

#[test]
fn oversized_length_frame_closes_the_connection() {
    let mut g = Guest::spawn(&["--framing", "length"]);
    let mut s = g.connect();
    s.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    let too_big = (ukload::framing::MAX_FRAME_LEN as u32 + 1).to_le_bytes();
    s.write_all(&too_big).unwrap();
    let mut reader = FrameReader::new(s, Framing::Length);
    match jsonrpc::parse(&reader.read_frame().unwrap()).unwrap() {
        Message::Error { code, message, .. } => {
            assert_eq!(code, jsonrpc::INVALID_REQUEST);
            assert!(message.contains("exceeds"), "{message}");
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert!(matches!(reader.read_frame(), Err(FrameError::Eof)));
    // The agent itself is fine.
    let mut fresh = g.connect();
    assert_eq!(ping(&mut fresh, Framing::Length).cid, Some(42));
}

#[test]
fn shutdown_exits_zero_and_removes_the_socket() {
    let mut g = Guest::spawn(&[]);
    let mut idle = g.connect();
    let mut s = g.connect();
    let v = jsonrpc::call(&mut s, Framing::Line, 3, "shutdown", json!({}), deadline()).unwrap();
    assert_eq!(v, json!({}));
    let status = g
        .wait_exit(deadline())
        .expect("agent still running after shutdown");
    assert!(status.success(), "exit status {status}");
    assert!(!g.sock.exists(), "socket file left behind");
    // The other connection was closed, not left hanging.
    idle.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    let mut buf = [0u8; 1];
    match std::io::Read::read(&mut idle, &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("idle connection should be closed, read gave {other:?}"),
    }
    let pid = g.child.id();
    drop(g);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "agent {pid} left behind"
    );
}

#[test]
fn bad_arguments_exit_64_with_one_line_naming_the_flag() {
    let cases: [(&[&str], &str); 4] = [
        (&["--listen", "tcp:1"], "--listen"),
        (&["--listen", "vsock:1", "--framing", "xml"], "--framing"),
        (&["--listen", "uds:/tmp/x", "--port", "zero"], "--port"),
        // (Without --listen the agent serves on vsock, as a unikernel
        // started without arguments must: not a usage error any more.)
        (
            &["--listen", "vsock:1", "--boot-delay-ms", "soon"],
            "--boot-delay-ms",
        ),
    ];
    for (args, flag) in cases {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ukload-guest"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A usage error exits at once; anything still running after the
        // deadline failed the test (and is ended here, not left behind).
        let end = Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: still running after 5 s instead of a usage error");
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.contains(flag), "{args:?}: {err:?} should name {flag}");
    }
}

/// A handler like the MCP one will be: knows one method, declines others.
struct Echo;

impl ukload::guest::Handler for Echo {
    fn handle(&self, method: &str, params: Option<Value>) -> Option<Result<Value, (i64, String)>> {
        match method {
            "echo" => Some(Ok(params.unwrap_or(Value::Null))),
            "fail" => Some(Err((jsonrpc::INVALID_PARAMS, "bad arguments".into()))),
            "explode" => panic!("handler bug"),
            _ => None,
        }
    }
}

#[test]
fn handler_hook_answers_its_methods_in_process_and_shutdown_returns() {
    use ukload::guest::{run_agent_with, AgentConfig, ListenAddr};
    let dir = std::env::temp_dir().join(format!("ukload-gt-{}-inproc", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("h.sock");
    let cfg = AgentConfig {
        listen: ListenAddr::Uds {
            path: sock.clone(),
            port: PORT,
        },
        cid: Some(9),
        ready_marker: false,
        ..AgentConfig::default()
    };
    let agent = std::thread::spawn(move || run_agent_with(cfg, std::sync::Arc::new(Echo)));
    let ep = Endpoint::Hybrid {
        path: sock.clone(),
        port: PORT,
    };
    let end = deadline();
    let mut s = loop {
        match vsock::connect(&ep, TEST_DEADLINE) {
            Ok(s) => break s,
            Err(e) if e.is_retryable() && Instant::now() < end => std::thread::sleep(RETRY_PAUSE),
            Err(e) => panic!("{e}"),
        }
    };
    let call = |s: &mut Stream, id, method: &str| {
        jsonrpc::call(s, Framing::Line, id, method, json!({"k": id}), deadline())
    };
    assert_eq!(call(&mut s, 1, "echo").unwrap(), json!({"k": 1}));
    assert!(matches!(
        call(&mut s, 2, "fail"),
        Err(CallError::Rpc {
            code: jsonrpc::INVALID_PARAMS,
            ..
        })
    ));
    assert!(matches!(
        call(&mut s, 3, "explode"),
        Err(CallError::Rpc {
            code: jsonrpc::INTERNAL_ERROR,
            ..
        })
    ));
    assert!(matches!(
        call(&mut s, 4, "other"),
        Err(CallError::Rpc {
            code: jsonrpc::METHOD_NOT_FOUND,
            ..
        })
    ));
    assert_eq!(
        call(&mut s, 5, jsonrpc::STATUS_METHOD).unwrap()["cid"],
        9,
        "ukload/status stays the agent's"
    );
    assert_eq!(call(&mut s, 6, "shutdown").unwrap(), json!({}));
    agent
        .join()
        .unwrap()
        .expect("run_agent_with returns Ok after shutdown");
    assert!(!sock.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
