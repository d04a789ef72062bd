//! `ukload-guest --mcp-server 'CMD ARGS'`: each vsock connection is relayed to a
//! fresh stdio MCP server child started for it.
//!
//! Host -> child: frames in the connection's framing are read on the
//! connection's thread; requests for the agent's own methods (`ukload/status`, so the
//! boot probe keeps working, and `shutdown`) are answered by the agent, every
//! other message is written to the child's stdin as one line. Child -> host: a
//! relay thread reads the child's stdout line by line and writes each message
//! to the connection in its framing.
//!
//! The child is started on the first message that is not the agent's, so a
//! connection that only asks for the status (the boot probe) costs no process. It runs in its
//! own process group, dies with the connection's thread (`PR_SET_PDEATHSIG`)
//! and so with the agent, and is ended and reaped when the connection closes
//! (stdin closed, SIGTERM, SIGKILL to the group; see
//! [`StdioChild::shutdown`]); when the child exits first, the connection is
//! closed so that the host sees end of file instead of silence.
//!
//! Deadlines: reading the connection is bounded by the agent's
//! [`IDLE_TIMEOUT`] (counting the child's output as activity), writing to it by
//! [`WRITE_TIMEOUT`], writing to the child's stdin by [`CHILD_WRITE_TIMEOUT`];
//! the relay thread blocks on the child's stdout, which ends when the child's
//! process group is killed, and is waited for at most [`RELAY_EXIT_GRACE`].

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::process::{ChildStdin, ChildStdout};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use serde_json::Value;

use super::agent::{AgentConn, ConnectionMode, IDLE_TIMEOUT, WRITE_TIMEOUT};
use crate::framing::{write_frame, FrameError, FrameReader, Framing, MAX_FRAME_LEN};
use crate::jsonrpc;
use crate::mcp::{spawn_stdio_child_with, SpawnOptions, StdioChild};
use crate::vsock::Stream;

/// Longest time one message may take to be written to the child's stdin; a
/// server that does not read its input for this long is stuck.
pub const CHILD_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the child is reaped, how long teardown waits for the relay thread
/// (it ends at the child's end of output; a process that left the group and
/// kept stdout open would keep it, and it is then left detached).
pub const RELAY_EXIT_GRACE: Duration = Duration::from_secs(2);
/// How much of the child's stderr is logged when it ends badly.
const STDERR_IN_LOG: usize = 1024;

/// Bridges every connection to a fresh stdio MCP server (`argv`).
#[derive(Clone, Debug)]
pub struct BridgeMode {
    argv: Vec<String>,
}

impl BridgeMode {
    /// `argv`: the MCP server's command line (program first); must not be empty.
    pub fn new(argv: Vec<String>) -> Result<BridgeMode, String> {
        if argv.is_empty() {
            return Err("--mcp-server: empty command".to_string());
        }
        Ok(BridgeMode { argv })
    }

    /// The server's command line.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }
}

impl ConnectionMode for BridgeMode {
    fn serve(&self, conn: &AgentConn<'_>, stream: Stream) {
        let mut bridge = match Bridge::new(conn, self, &stream) {
            Ok(b) => b,
            Err(e) => {
                crate::status!(
                    "ukload-guest: connection {}: setting up the bridge: {e}; closing it",
                    conn.id()
                );
                return;
            }
        };
        bridge.run(stream);
        bridge.teardown();
    }
}

/// The child of one connection, while it runs.
struct ChildLink {
    child: StdioChild,
    stdin: Option<ChildStdin>,
    relay: Option<(JoinHandle<()>, Receiver<()>)>,
}

/// One bridged connection.
struct Bridge<'a> {
    conn: &'a AgentConn<'a>,
    mode: &'a BridgeMode,
    framing: Framing,
    /// Write half of the connection, shared with the relay thread.
    writer: Arc<Mutex<Stream>>,
    /// When the child last wrote a message (counts as activity for the idle deadline).
    last_child_output: Arc<Mutex<Instant>>,
    child: Option<ChildLink>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What to do with one frame from the host.
enum Route {
    /// The agent answered; close afterwards if `close`.
    Answered { close: bool },
    /// Forward these bytes (one JSON message, no newline) to the child.
    Forward(Vec<u8>),
}

impl<'a> Bridge<'a> {
    fn new(conn: &'a AgentConn<'a>, mode: &'a BridgeMode, stream: &Stream) -> io::Result<Self> {
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Bridge {
            conn,
            mode,
            framing: conn.framing(),
            writer: Arc::new(Mutex::new(stream.try_clone()?)),
            last_child_output: Arc::new(Mutex::new(Instant::now())),
            child: None,
        })
    }

    fn log(&self, msg: &str) {
        crate::status!("ukload-guest: connection {}: {msg}", self.conn.id());
    }

    fn send_host(&self, msg: &Value) -> Result<(), FrameError> {
        write_frame(
            &mut *lock(&self.writer),
            self.framing,
            &jsonrpc::to_bytes(msg),
        )
    }

    /// Relays until the connection closes, idles out, misbehaves, asks for
    /// `shutdown`, or the child ends (the relay thread then shuts the stream down).
    fn run(&mut self, stream: Stream) {
        let mut reader = FrameReader::with_max(stream, self.framing, MAX_FRAME_LEN);
        loop {
            if self.conn.is_stopping() {
                return;
            }
            let frame = match reader.read_frame() {
                Ok(f) => f,
                Err(FrameError::Eof) => return,
                Err(FrameError::TimedOut) => {
                    let since_child = lock(&self.last_child_output).elapsed();
                    if since_child < IDLE_TIMEOUT {
                        continue;
                    }
                    if !self.conn.is_stopping() {
                        self.log(&format!("idle for {IDLE_TIMEOUT:?}; closing it"));
                    }
                    return;
                }
                Err(e @ (FrameError::TooLarge { .. } | FrameError::ZeroLength)) => {
                    // Best effort: tell the host why, then close (out of step).
                    let reply = jsonrpc::error_response(
                        Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        &format!("{e}; closing the connection"),
                    );
                    let _ = self.send_host(&reply);
                    return;
                }
                Err(_) => return,
            };
            let payload = match self.route(&frame) {
                Ok(Route::Answered { close: false }) => continue,
                Ok(Route::Answered { close: true }) => return,
                Ok(Route::Forward(payload)) => payload,
                Err(e) => {
                    if !self.conn.is_stopping() {
                        self.log(&format!("writing to the host: {e}; closing it"));
                    }
                    return;
                }
            };
            if let Err(e) = self.forward(&frame, payload) {
                self.log(&e);
                return;
            }
        }
    }

    /// Answers the agent's own requests and malformed frames the child could not
    /// take; everything else is forwarded.
    fn route(&self, frame: &[u8]) -> Result<Route, FrameError> {
        let msg = match serde_json::from_slice::<Value>(frame) {
            Ok(v) => v,
            // A line without newlines goes to the server, which answers -32700
            // itself; a frame with newlines cannot be one line: answer here.
            Err(_) if !frame.contains(&b'\n') => return Ok(Route::Forward(frame.to_vec())),
            Err(e) => {
                self.send_host(&jsonrpc::error_response(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    &format!("Parse error: {e}"),
                ))?;
                return Ok(Route::Answered { close: false });
            }
        };
        let id = msg.get("id").filter(|id| !id.is_null());
        let method = msg.get("method").and_then(Value::as_str);
        if let (Some(id), Some(method)) = (id, method) {
            if let Some(reply) = self.conn.agent_request(id, method) {
                self.send_host(&reply.response)?;
                return Ok(Route::Answered { close: reply.close });
            }
        }
        if frame.contains(&b'\n') {
            // Pretty-printed JSON (length framing allows it): one line for stdio.
            return Ok(Route::Forward(jsonrpc::to_bytes(&msg)));
        }
        Ok(Route::Forward(frame.to_vec()))
    }

    /// Writes one message to the child, starting it first if needed. `Err` says
    /// why the connection must close.
    fn forward(&mut self, frame: &[u8], payload: Vec<u8>) -> Result<(), String> {
        if self.child.is_none() {
            match self.start_child() {
                Ok(link) => self.child = Some(link),
                Err(e) => {
                    // A request deserves an answer saying why nothing will come.
                    if let Some(id) = request_id(frame) {
                        let _ = self.send_host(&jsonrpc::error_response(
                            id,
                            jsonrpc::INTERNAL_ERROR,
                            &format!("ukload-guest cannot start the MCP server: {e}"),
                        ));
                    }
                    return Err(format!("{e}; closing it"));
                }
            }
        }
        let link = self.child.as_mut().expect("started above");
        let pid = link.child.pid();
        let Some(stdin) = link.stdin.as_mut() else {
            return Err(format!("MCP server pid {pid} has no stdin; closing it"));
        };
        let mut line = payload;
        line.push(b'\n');
        write_all_deadline(stdin, &line, Instant::now() + CHILD_WRITE_TIMEOUT)
            .map_err(|e| format!("writing to MCP server pid {pid}: {e}; closing it"))
    }

    fn start_child(&self) -> Result<ChildLink, String> {
        let opts = SpawnOptions {
            // This thread reaps the child before it returns, so the signal only
            // fires if the whole agent dies first.
            die_with_parent: true,
            env: Vec::new(),
        };
        let child = spawn_stdio_child_with(&self.mode.argv, &opts).map_err(|e| e.to_string())?;
        let (stdin, stdout) = (child.take_stdin(), child.take_stdout());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            // Dropping `child` ends and reaps it.
            return Err(format!("{}: stdio pipes missing", child.describe()));
        };
        set_nonblocking(stdin.as_fd())
            .map_err(|e| format!("{}: O_NONBLOCK on its stdin: {e}", child.describe()))?;
        let (done_tx, done_rx) = bounded::<()>(0);
        let writer = Arc::clone(&self.writer);
        let activity = Arc::clone(&self.last_child_output);
        let framing = self.framing;
        let id = self.conn.id();
        let pid = child.pid();
        let relay = std::thread::Builder::new()
            .name(format!("bridge-{id}-{pid}"))
            .spawn(move || {
                let _done = done_tx;
                relay_child_output(stdout, &writer, framing, &activity, id, pid);
            })
            .map_err(|e| format!("starting the relay thread for pid {pid}: {e}"))?;
        Ok(ChildLink {
            child,
            stdin: Some(stdin),
            relay: Some((relay, done_rx)),
        })
    }

    /// Ends and reaps the child, waits (bounded) for the relay thread, and
    /// shuts the connection down.
    fn teardown(&mut self) {
        if let Some(mut link) = self.child.take() {
            // Closing stdin first lets a well-behaved server exit by itself.
            drop(link.stdin.take());
            let pid = link.child.pid();
            match link.child.shutdown() {
                Ok(outcome) => {
                    let clean = outcome.signal_sent.is_none()
                        && outcome.exit_status.is_none_or(|s| s.success());
                    if !clean && !self.conn.is_stopping() {
                        let how = match (outcome.exit_status, outcome.signal_sent) {
                            (_, Some(sig)) => format!("had to be ended with signal {sig}"),
                            (Some(status), None) => format!("ended: {status}"),
                            (None, None) => "ended (reaped by another process)".to_string(),
                        };
                        let tail = link.child.stderr_tail().last(STDERR_IN_LOG);
                        let tail = if tail.is_empty() {
                            "(empty)".to_string()
                        } else {
                            tail.replace('\n', "\n    ")
                        };
                        self.log(&format!(
                            "MCP server pid {pid} {how}; last stderr:\n    {tail}"
                        ));
                    }
                }
                Err(e) => self.log(&format!("ending MCP server pid {pid}: {e}")),
            }
            if let Some((handle, done)) = link.relay.take() {
                if !matches!(
                    done.recv_timeout(RELAY_EXIT_GRACE),
                    Err(RecvTimeoutError::Timeout)
                ) {
                    let _ = handle.join();
                } else {
                    self.log(&format!(
                        "relay of pid {pid} still blocked {RELAY_EXIT_GRACE:?} after it was reaped; leaving it"
                    ));
                }
            }
        }
        let _ = lock(&self.writer).shutdown(Shutdown::Both);
    }
}

/// The id of a request (a message with a method and a non-null id), if `frame` is one.
fn request_id(frame: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(frame).ok()?;
    v.get("method")?;
    v.get("id").filter(|id| !id.is_null()).cloned()
}

/// Child -> host: every line the child writes goes to the connection in its
/// framing. When the child's output ends (it exited or was killed) or the host
/// cannot be written, the connection is shut down so both sides end.
fn relay_child_output(
    stdout: ChildStdout,
    writer: &Mutex<Stream>,
    framing: Framing,
    activity: &Mutex<Instant>,
    conn_id: u64,
    pid: u32,
) {
    let mut lines = FrameReader::with_max(stdout, Framing::Line, MAX_FRAME_LEN);
    loop {
        let frame = match lines.read_frame() {
            Ok(f) => f,
            Err(FrameError::Eof) => break,
            Err(e) => {
                crate::status!(
                    "ukload-guest: connection {conn_id}: output of MCP server pid {pid}: {e}; closing it"
                );
                break;
            }
        };
        if frame.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        *lock(activity) = Instant::now();
        if let Err(e) = write_frame(&mut *lock(writer), framing, &frame) {
            crate::status!(
                "ukload-guest: connection {conn_id}: relaying MCP server pid {pid} to the host: {e}; closing it"
            );
            break;
        }
    }
    let _ = lock(writer).shutdown(Shutdown::Both);
}

/// Sets `O_NONBLOCK` on `fd` (our write end of the child's stdin pipe: nobody
/// else shares its open file description).
fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl(F_GETFL) on a valid, borrowed fd only reads its flags.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl(F_SETFL) on a valid, borrowed fd only changes its status flags.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes all of `buf` to a non-blocking `w` before `deadline`, waiting in
/// poll(2) while the pipe is full.
fn write_all_deadline<W: Write + AsFd>(
    w: &mut W,
    mut buf: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    while !buf.is_empty() {
        match w.write(buf) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the server did not read its input within {CHILD_WRITE_TIMEOUT:?}"),
                    ));
                }
                poll_writable(w.as_fd(), left)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `fd` is writable (or in error, which the next write reports) or `timeout`.
fn poll_writable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // Round up so a sub-millisecond remainder does not become a busy loop.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: pfd is a valid pollfd for the duration of the call and nfds is 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn write_all_deadline_times_out_on_a_full_pipe_and_writes_otherwise() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        write_all_deadline(&mut a, b"hello\n", Instant::now() + Duration::from_secs(1)).unwrap();
        let mut got = [0u8; 6];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");
        // Nobody reads b: the buffer fills and the deadline must end the write.
        let big = vec![b'x'; 64 << 20];
        let start = Instant::now();
        let err = write_all_deadline(&mut a, &big, Instant::now() + Duration::from_millis(200))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn request_ids_are_found_only_on_requests() {
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":3,"method":"x"}"#),
            Some(Value::from(3))
        );
        assert_eq!(request_id(br#"{"jsonrpc":"2.0","method":"x"}"#), None);
        assert_eq!(request_id(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#), None);
        assert_eq!(request_id(b"garbage"), None);
        assert!(BridgeMode::new(Vec::new()).is_err());
    }
}
