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
//! A server that dies is reported, not just dropped: every request it had not
//! answered gets a JSON-RPC error (−32603) naming what happened (exited with
//! status N, wrote more than [`MAX_FRAME_LEN`] bytes without a newline, or
//! wrote nothing within the start deadline after its first request) with the
//! end of its stderr, and so does every later request on the connection (the
//! connection stays open until the host closes it, so a client that falls
//! back from `server/discover` to `initialize` still reads why).
//!
//! Deadlines: reading the connection is bounded by the agent's
//! [`IDLE_TIMEOUT`] (counting the child's output as activity), writing to it by
//! [`WRITE_TIMEOUT`], writing to the child's stdin by [`CHILD_WRITE_TIMEOUT`];
//! the relay thread blocks on the child's stdout, which ends when the child's
//! process group is killed, and is waited for at most [`RELAY_EXIT_GRACE`].

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
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
/// How much of the child's stderr goes into the error sent to the host.
const STDERR_IN_REPLY: usize = 512;
/// Default of [`BridgeMode::start_timeout`]: how long a started server may
/// stay silent after its first request before it counts as never answering.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the connection's thread wakes to look at the child (its end,
/// the start deadline) while the host is silent.
const TICK: Duration = Duration::from_millis(200);
/// After the child is reaped elsewhere (a VM's PID-1 reaper), how long to
/// wait for the reaper to record its status.
const STATUS_WAIT: Duration = Duration::from_secs(1);

/// Bridges every connection to a fresh stdio MCP server (`argv`).
#[derive(Clone, Debug)]
pub struct BridgeMode {
    argv: Vec<String>,
    root: Option<PathBuf>,
    start_timeout: Duration,
    console: bool,
    spare: Spare,
}

/// A server started ahead of its connection ([`BridgeMode::start_spare`]).
#[derive(Clone, Default)]
struct Spare(Arc<Mutex<Option<StdioChild>>>);

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = lock(&self.0).as_ref().map(StdioChild::pid);
        f.debug_tuple("Spare").field(&pid).finish()
    }
}

impl BridgeMode {
    /// `argv`: the MCP server's command line (program first); must not be empty.
    pub fn new(argv: Vec<String>) -> Result<BridgeMode, String> {
        if argv.is_empty() {
            return Err("--mcp-server: empty command".to_string());
        }
        Ok(BridgeMode {
            argv,
            root: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            console: false,
            spare: Spare::default(),
        })
    }

    /// Starts one server now, ahead of its connection: the first connection
    /// that needs a server takes it (later ones start their own). Why: under
    /// TCG a Node server takes seconds to start (docs/microvm.md, "MCP
    /// servers in the VM"), and started at boot that time overlaps the rest
    /// of the boot and the host's probe. The server is as fresh as one
    /// started on demand (it has seen no message). Call it from a thread that
    /// lives as long as the agent (the child dies with the thread that
    /// spawned it).
    pub fn start_spare(&self) -> Result<(), String> {
        let child = self.spawn()?;
        *lock(&self.spare.0) = Some(child);
        Ok(())
    }

    fn take_spare(&self) -> Option<StdioChild> {
        lock(&self.spare.0).take()
    }

    /// Spawns the server, with stdio pipes, in its root if it has one.
    fn spawn(&self) -> Result<StdioChild, String> {
        let opts = SpawnOptions {
            // The spawning thread (a connection's, or the init's main thread for
            // the spare) outlives the child, so the signal only fires if the
            // whole agent dies first.
            die_with_parent: true,
            env: if self.root.is_some() {
                // The VM's init has no PATH of its own.
                vec![("PATH".into(), ROOTFS_PATH.into())]
            } else {
                Vec::new()
            },
            root: self.root.clone(),
            stderr_echo_prefix: self.console.then(|| "mcp-server: ".to_string()),
        };
        if let Some(root) = &self.root {
            program_in_root(root, &self.argv[0])?;
        }
        let argv = &self.argv;
        // Inside a VM, PID 1's reaper can collect a child whose exec failed
        // (a loader or library missing in the image) before std's spawn waits
        // for it, and std then panics; that must not take PID 1 down.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            spawn_stdio_child_with(argv, &opts)
        })) {
            Ok(spawned) => spawned.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "spawning {argv:?}: exec failed in the root filesystem image (is its \
                 loader or a library missing from the image?)"
            )),
        }
    }

    /// Runs the server in `root` (chroot), with its stderr copied to the
    /// agent's (the VM's console) prefixed by `mcp-server[PID]: `. For a
    /// microVM's init only: the root is the mounted root filesystem image.
    pub fn in_root(mut self, root: PathBuf) -> Self {
        self.root = Some(root);
        self.console = true;
        self
    }

    /// How long a started server may write nothing after its first request
    /// before it is ended as never answering ([`DEFAULT_START_TIMEOUT`]).
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
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
                log::warn!(
                    "connection {}: setting up the bridge: {e}; closing it",
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
    /// When the first message was written to it (the start deadline counts from there).
    first_request: Option<Instant>,
}

/// Why the relay of the child's output stopped.
#[derive(Clone, Debug)]
enum RelayEnd {
    /// End of file: the child closed its stdout (it exited, or was killed).
    Eof,
    /// The child wrote something the relay could not frame (too long a line).
    Output(String),
    /// Writing to the host failed: the connection is gone.
    Host,
}

/// What the child thread shares with the connection's thread.
#[derive(Default)]
struct RelayState {
    /// When the child last wrote a message (`None`: never).
    last_output: Option<Instant>,
    /// Ids (as JSON text) of requests forwarded and not answered yet.
    pending: HashSet<String>,
    /// Set when the relay stops.
    ended: Option<RelayEnd>,
}

/// One bridged connection.
struct Bridge<'a> {
    conn: &'a AgentConn<'a>,
    mode: &'a BridgeMode,
    framing: Framing,
    /// Write half of the connection, shared with the relay thread.
    writer: Arc<Mutex<Stream>>,
    /// Shared with the relay thread.
    relay: Arc<Mutex<RelayState>>,
    /// When the host last sent a frame.
    last_host_input: Instant,
    child: Option<ChildLink>,
    /// Set once the child is gone: why (every later request is answered with it).
    dead: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What to do with one frame from the host.
enum Route {
    /// The agent answered; close afterwards if `close`.
    Answered { close: bool },
    /// Forward `line` (one JSON message, no newline) to the child; `ids`
    /// are the ids of the requests in it (none for a frame that is not JSON).
    Forward { line: Vec<u8>, ids: Vec<Value> },
}

impl<'a> Bridge<'a> {
    fn new(conn: &'a AgentConn<'a>, mode: &'a BridgeMode, stream: &Stream) -> io::Result<Self> {
        stream.set_read_timeout(Some(TICK))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Bridge {
            conn,
            mode,
            framing: conn.framing(),
            writer: Arc::new(Mutex::new(stream.try_clone()?)),
            relay: Arc::new(Mutex::new(RelayState::default())),
            last_host_input: Instant::now(),
            child: None,
            dead: None,
        })
    }

    fn log(&self, msg: &str) {
        log::warn!("connection {}: {msg}", self.conn.id());
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
            if !self.watch_child() {
                return;
            }
            let frame = match reader.read_frame() {
                Ok(f) => {
                    self.last_host_input = Instant::now();
                    f
                }
                Err(FrameError::Eof) => return,
                Err(FrameError::TimedOut) => {
                    let since_child = lock(&self.relay).last_output.map(|t| t.elapsed());
                    let idle = since_child.map_or(self.last_host_input.elapsed(), |c| {
                        c.min(self.last_host_input.elapsed())
                    });
                    if idle < IDLE_TIMEOUT {
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
            let (payload, ids) = match self.route(&frame) {
                Ok(Route::Answered { close: false }) => continue,
                Ok(Route::Answered { close: true }) => return,
                Ok(Route::Forward { line, ids }) => (line, ids),
                Err(e) => {
                    if !self.conn.is_stopping() {
                        self.log(&format!("writing to the host: {e}; closing it"));
                    }
                    return;
                }
            };
            if let Err(e) = self.forward(ids, payload) {
                self.log(&e);
                return;
            }
        }
    }

    /// Looks at the child between frames: if its output ended or it missed
    /// its start deadline, it is ended and reaped and its unanswered requests
    /// get an error saying why. `false`: the connection must close.
    fn watch_child(&mut self) -> bool {
        let Some(link) = self.child.as_ref() else {
            return true;
        };
        let (ended, silent) = {
            let st = lock(&self.relay);
            (st.ended.clone(), st.last_output.is_none())
        };
        let cause = match ended {
            Some(RelayEnd::Host) => return false,
            Some(RelayEnd::Eof) => "exited".to_string(),
            Some(RelayEnd::Output(e)) => format!("{e}; it was ended"),
            None => match link.first_request {
                Some(t) if silent && t.elapsed() >= self.mode.start_timeout => format!(
                    "never answered: it wrote nothing within {:?} of its first request; it was ended",
                    self.mode.start_timeout
                ),
                _ => return true,
            },
        };
        self.bury(&cause);
        true
    }

    /// Ends and reaps the child, then answers every request it left
    /// unanswered with a JSON-RPC error naming `cause`, its exit status and
    /// the end of its stderr; later requests get the same answer.
    fn bury(&mut self, cause: &str) {
        let Some(link) = self.child.take() else {
            return;
        };
        let pid = link.child.pid();
        let what = format!("MCP server pid {pid} ({})", self.mode.argv.join(" "));
        let status = self.end_child(link);
        let tail = status.1;
        let mut reason = format!("{what} {cause}");
        if let Some(st) = status.0 {
            reason.push_str(&format!(" ({st})"));
        }
        if tail.is_empty() {
            reason.push_str("; its stderr is empty");
        } else {
            reason.push_str("; last stderr: ");
            reason.push_str(&tail);
        }
        self.log(&reason);
        let pending: Vec<String> = lock(&self.relay).pending.drain().collect();
        for id in pending {
            let id: Value = serde_json::from_str(&id).unwrap_or(Value::Null);
            let reply = jsonrpc::error_response(id, jsonrpc::INTERNAL_ERROR, &reason);
            if self.send_host(&reply).is_err() {
                break;
            }
        }
        self.dead = Some(reason);
    }

    /// Ends and reaps the child of `link` and waits (bounded) for its relay.
    /// Returns how it ended (`None` when it exited cleanly by itself at the
    /// end) and the end of its stderr on one line.
    fn end_child(&self, mut link: ChildLink) -> (Option<String>, String) {
        // Closing stdin first lets a well-behaved server exit by itself.
        drop(link.stdin.take());
        let pid = link.child.pid();
        let how = match link.child.shutdown() {
            Ok(outcome) => match (outcome.exit_status, outcome.signal_sent) {
                (_, Some(sig)) => Some(format!("had to be ended with signal {sig}")),
                (Some(status), None) if status.success() => None,
                (Some(status), None) => Some(status.to_string()),
                (None, None) => Some(
                    match super::pid1::wait_child(pid as i32, Instant::now() + STATUS_WAIT) {
                        Some(raw) => describe_wait_status(raw),
                        None => "exit status unknown".to_string(),
                    },
                ),
            },
            Err(e) => Some(format!("could not be ended: {e}")),
        };
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
        let tail = link.child.stderr_tail().last(STDERR_IN_REPLY);
        (how, tail.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// Answers the agent's own requests and malformed frames the child could not
    /// take; everything else is forwarded (the frame is parsed here, once).
    fn route(&self, frame: &[u8]) -> Result<Route, FrameError> {
        let msg = match serde_json::from_slice::<Value>(frame) {
            Ok(v) => v,
            // A line without newlines goes to the server, which answers -32700
            // itself; a frame with newlines cannot be one line: answer here.
            Err(_) if !frame.contains(&b'\n') => {
                return Ok(Route::Forward {
                    line: frame.to_vec(),
                    ids: Vec::new(),
                })
            }
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
        let line = if frame.contains(&b'\n') {
            // Pretty-printed JSON (length framing allows it): one line for stdio.
            jsonrpc::to_bytes(&msg)
        } else {
            frame.to_vec()
        };
        Ok(Route::Forward {
            line,
            ids: request_ids(&msg),
        })
    }

    /// Writes one message (with the request `ids` in it) to the child,
    /// starting it first if needed. `Err` says why the connection must close.
    fn forward(&mut self, ids: Vec<Value>, payload: Vec<u8>) -> Result<(), String> {
        if let Some(reason) = &self.dead {
            for id in ids {
                let reply = jsonrpc::error_response(id, jsonrpc::INTERNAL_ERROR, reason);
                self.send_host(&reply)
                    .map_err(|e| format!("writing to the host: {e}; closing it"))?;
            }
            return Ok(());
        }
        if self.child.is_none() {
            match self.start_child() {
                Ok(link) => self.child = Some(link),
                Err(e) => {
                    // A request deserves an answer saying why nothing will come;
                    // so do later ones (the connection stays open for them).
                    let reason = format!("ukload-guest cannot start the MCP server: {e}");
                    self.log(&reason);
                    self.dead = Some(reason);
                    return self.forward(ids, payload);
                }
            }
        }
        {
            let mut st = lock(&self.relay);
            for id in &ids {
                st.pending.insert(id.to_string());
            }
        }
        let link = self.child.as_mut().expect("started above");
        link.first_request.get_or_insert_with(Instant::now);
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
        // The server started ahead (if any) is as fresh as a new one: it has
        // seen no message yet. If it already died, the relay reports how.
        let child = match self.mode.take_spare() {
            Some(child) => child,
            None => self.mode.spawn()?,
        };
        let (stdin, stdout) = (child.take_stdin(), child.take_stdout());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            // Dropping `child` ends and reaps it.
            return Err(format!("{}: stdio pipes missing", child.describe()));
        };
        set_nonblocking(stdin.as_fd())
            .map_err(|e| format!("{}: O_NONBLOCK on its stdin: {e}", child.describe()))?;
        let (done_tx, done_rx) = bounded::<()>(0);
        let writer = Arc::clone(&self.writer);
        let state = Arc::clone(&self.relay);
        let framing = self.framing;
        let id = self.conn.id();
        let pid = child.pid();
        let relay = std::thread::Builder::new()
            .name(format!("bridge-{id}-{pid}"))
            .spawn(move || {
                let _done = done_tx;
                relay_child_output(stdout, &writer, framing, &state, id, pid);
            })
            .map_err(|e| format!("starting the relay thread for pid {pid}: {e}"))?;
        Ok(ChildLink {
            child,
            stdin: Some(stdin),
            relay: Some((relay, done_rx)),
            first_request: None,
        })
    }

    /// Ends and reaps the child, waits (bounded) for the relay thread, and
    /// shuts the connection down.
    fn teardown(&mut self) {
        if let Some(link) = self.child.take() {
            let pid = link.child.pid();
            let (how, tail) = self.end_child(link);
            if let Some(how) = how.filter(|_| !self.conn.is_stopping()) {
                let tail = if tail.is_empty() {
                    "(empty)".to_string()
                } else {
                    tail
                };
                let tail: String = tail.chars().take(STDERR_IN_LOG).collect();
                self.log(&format!("MCP server pid {pid} {how}; last stderr: {tail}"));
            }
        }
        let _ = lock(&self.writer).shutdown(Shutdown::Both);
    }
}

/// Whether `program` (as exec would find it with [`ROOTFS_PATH`] after
/// `chroot(root)`) exists in `root`. Symlinks count without being followed
/// (an absolute target means a path inside the image, not on this root).
fn program_in_root(root: &Path, program: &str) -> Result<(), String> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        ROOTFS_PATH
            .split(':')
            .map(|d| Path::new(d).join(program))
            .collect()
    };
    let found = candidates.iter().any(|c| {
        root.join(c.strip_prefix("/").unwrap_or(c))
            .symlink_metadata()
            .is_ok()
    });
    if found {
        Ok(())
    } else {
        Err(format!(
            "{program}: no such program in the root filesystem image (looked for {})",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// `PATH` of a server run in a root filesystem image (the VM's init has none).
pub const ROOTFS_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `pick` applied to `msg`, or to each member of a batch.
fn each_message<T>(msg: &Value, pick: impl Fn(&Value) -> Option<T>) -> Vec<T> {
    match msg {
        Value::Array(batch) => batch.iter().filter_map(pick).collect(),
        v => pick(v).into_iter().collect(),
    }
}

/// The ids of the requests in `msg`: one message, or each member of a batch.
fn request_ids(msg: &Value) -> Vec<Value> {
    each_message(msg, |v| {
        v.get("method")?;
        v.get("id").filter(|id| !id.is_null()).cloned()
    })
}

/// The ids of the responses in a message from the server (one, or a batch;
/// none for a frame that is not JSON).
fn response_ids(frame: &[u8]) -> Vec<String> {
    let Ok(msg) = serde_json::from_slice::<Value>(frame) else {
        return Vec::new();
    };
    each_message(&msg, |v| {
        if v.get("method").is_some() {
            return None;
        }
        v.get("id").filter(|id| !id.is_null()).map(Value::to_string)
    })
}

/// A raw wait status as a sentence, worded as std's `ExitStatus` is:
/// `exit status: 1`, `signal: 9`.
fn describe_wait_status(raw: i32) -> String {
    match crate::supervisor::Exit::from_raw(raw) {
        Some(crate::supervisor::Exit::Code(code)) => format!("exit status: {code}"),
        Some(crate::supervisor::Exit::Signal(sig)) => format!("signal: {sig}"),
        None => format!("wait status {raw:#x}"),
    }
}

/// Child -> host: every line the child writes goes to the connection in its
/// framing. When the child's output ends (it exited or was killed), it writes
/// a line too long to frame, or the host cannot be written, the relay records
/// why in `state` and stops; the connection's thread notices within [`TICK`].
fn relay_child_output(
    stdout: ChildStdout,
    writer: &Mutex<Stream>,
    framing: Framing,
    state: &Mutex<RelayState>,
    conn_id: u64,
    pid: u32,
) {
    let mut lines = FrameReader::with_max(stdout, Framing::Line, MAX_FRAME_LEN);
    let end = loop {
        let frame = match lines.read_frame() {
            Ok(f) => f,
            Err(FrameError::Eof) => break RelayEnd::Eof,
            Err(FrameError::TooLarge { .. }) => {
                break RelayEnd::Output(format!(
                    "wrote more than {} MiB without a newline (MCP over stdio is one \
                     JSON-RPC message a line)",
                    MAX_FRAME_LEN >> 20
                ))
            }
            Err(e) => break RelayEnd::Output(format!("its output could not be read: {e}")),
        };
        if frame.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        {
            let mut st = lock(state);
            st.last_output = Some(Instant::now());
            for id in response_ids(&frame) {
                st.pending.remove(&id);
            }
        }
        if let Err(e) = write_frame(&mut *lock(writer), framing, &frame) {
            log::warn!(
                "connection {conn_id}: relaying MCP server pid {pid} to the host: {e}; closing it"
            );
            let _ = lock(writer).shutdown(Shutdown::Both);
            break RelayEnd::Host;
        }
    };
    lock(state).ended = Some(end);
}

/// Sets `O_NONBLOCK` on `fd` (our write end of the child's stdin pipe: nobody
/// else shares its open file description).
fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
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
    use nix::poll::{poll, PollFd, PollFlags};
    let timeout = crate::clock::poll_timeout(timeout);
    match poll(&mut [PollFd::new(fd, PollFlags::POLLOUT)], timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
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
    fn request_and_response_ids_are_found_in_messages_and_batches() {
        use serde_json::json;
        assert_eq!(
            request_ids(&json!({"jsonrpc":"2.0","id":3,"method":"x"})),
            vec![Value::from(3)]
        );
        assert!(request_ids(&json!({"jsonrpc":"2.0","method":"x"})).is_empty());
        assert!(request_ids(&json!({"jsonrpc":"2.0","id":3,"result":{}})).is_empty());
        assert_eq!(
            request_ids(&json!([{"id":"a","method":"x"},{"method":"n"},{"id":2,"method":"y"}])),
            vec![Value::from("a"), Value::from(2)]
        );
        assert!(response_ids(b"garbage").is_empty());
        assert_eq!(
            response_ids(br#"[{"id":"a","result":{}},{"id":2,"error":{}}]"#),
            vec!["\"a\"".to_string(), "2".to_string()]
        );
        assert!(response_ids(br#"{"id":1,"method":"sampling"}"#).is_empty());
        assert_eq!(describe_wait_status(1 << 8), "exit status: 1");
        assert_eq!(describe_wait_status(9), "signal: 9");
        assert!(BridgeMode::new(Vec::new()).is_err());
        let root = std::env::temp_dir().join(format!("ukload-bridge-root-{}", std::process::id()));
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/node"), b"").unwrap();
        assert!(program_in_root(&root, "node").is_ok());
        assert!(program_in_root(&root, "/usr/bin/node").is_ok());
        let err = program_in_root(&root, "python3").unwrap_err();
        assert!(
            err.contains("no such program") && err.contains("/usr/bin/python3"),
            "{err}"
        );
        assert!(program_in_root(&root, "/opt/x").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
